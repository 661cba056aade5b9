//! Which devices exist, in memory, so that first sight of a device is cheap to recognise and the
//! device cap of DESIGN.md §2a can be enforced without a query per message. Rebuilt from
//! Postgres at start. With several replicas each keeps its own view, so the cap can be
//! overshot by at most what the others created since they started.
//!
//! [`UnknownFailures`] bounds what clients that are not devices can make us store: their
//! `connect_failed` events never create a device, but each one is a row, and a scanner cycling
//! through random client IDs once stored one row per attempt.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Known,
    /// Not seen before and under the cap: the caller creates it.
    New,
    /// Not seen before and the cap is reached: drop and count.
    OverCap,
}

pub struct DeviceRegistry {
    known: Mutex<HashSet<String>>,
    cap: usize,
}

impl DeviceRegistry {
    pub fn new(ids: impl IntoIterator<Item = String>, cap: i64) -> Self {
        Self {
            known: Mutex::new(ids.into_iter().collect()),
            cap: usize::try_from(cap).unwrap_or(0),
        }
    }

    pub async fn load(pool: &PgPool, cap: i64) -> sqlx::Result<Self> {
        Ok(Self::new(crate::db::devices::all_ids(pool).await?, cap))
    }

    pub fn is_known(&self, id: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Admit a device that an event names: known, new (and now known), or over the cap.
    pub fn admit(&self, id: &str) -> Admission {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.contains(id) {
            Admission::Known
        } else if known.len() < self.cap {
            known.insert(id.to_string());
            Admission::New
        } else {
            Admission::OverCap
        }
    }

    /// Make devices known whatever the cap: the IoT registry's things (`aws::inventory`),
    /// which exist in Postgres already. They occupy room under the cap like every known device,
    /// so the cap bounds the devices *outside* the registry that ingest may still create.
    pub fn learn<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if !known.contains(id) {
                known.insert(id.to_string());
            }
        }
    }

    /// The cap (`devices.max_devices`).
    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Admission of `connect_failed` events from clients that are not devices.
///
/// The contract:
/// - At most `per_window` *new* client IDs are admitted per window (fixed windows of
///   `window` on our clock, across the whole replica); beyond that a new client's events are
///   refused, to be counted and dropped.
/// - A client admitted before stays admitted while it keeps failing: as long as its previous
///   event was less than `window` ago. So a misconfigured unit that fails every few seconds
///   reaches the per-client `auth_failure` threshold even while a scanner floods us with random
///   IDs, and a scanner's IDs, each seen once, stop costing rows after `per_window` of them.
/// - Memory holds at most the clients admitted in the last two windows, plus those still
///   failing.
pub struct UnknownFailures {
    per_window: usize,
    window: TimeDelta,
    state: Mutex<UnknownState>,
}

#[derive(Default)]
struct UnknownState {
    window_start: Option<DateTime<Utc>>,
    admitted_in_window: usize,
    /// Admitted clients and when each last failed.
    last_seen: HashMap<String, DateTime<Utc>>,
}

impl UnknownFailures {
    pub fn new(per_window: usize, window: TimeDelta) -> Self {
        Self {
            per_window,
            window,
            state: Mutex::default(),
        }
    }

    /// Whether to store a `connect_failed` of unknown client `client` arriving at `now`.
    pub fn admit(&self, client: &str, now: DateTime<Utc>) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let roll = st
            .window_start
            .is_none_or(|start| now < start || now - start >= self.window);
        if roll {
            st.window_start = Some(now);
            st.admitted_in_window = 0;
            let window = self.window;
            st.last_seen.retain(|_, seen| now - *seen < window);
        }
        if let Some(seen) = st.last_seen.get_mut(client) {
            if now - *seen < self.window {
                *seen = (*seen).max(now);
                return true;
            }
        }
        if st.admitted_in_window < self.per_window {
            st.admitted_in_window += 1;
            st.last_seen.insert(client.to_string(), now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn unknown_failures_cap_new_clients_per_window_but_keep_failing_ones() {
        let g = UnknownFailures::new(3, TimeDelta::minutes(10));
        // a misconfigured unit fails every 30 s throughout
        assert!(g.admit("bad-cert", at(0)));
        // a scanner's random IDs: two more fit in this window, the rest do not
        let admitted = (0..1000)
            .filter(|i| g.admit(&format!("scan-{i}"), at(1 + i / 100)))
            .count();
        assert_eq!(admitted, 2);
        for k in 1..20 {
            assert!(
                g.admit("bad-cert", at(30 * k)),
                "still failing at {}s",
                30 * k
            );
        }
        // a new window admits new clients again; the scanner's old IDs are forgotten
        assert!(g.admit("scan-999", at(601)));
        assert!(
            g.admit("scan-0", at(602)),
            "seen once, 10 min ago: new again"
        );
        assert!(g.admit("scan-1", at(603)));
        assert!(!g.admit("scan-2", at(604)));
        // the window is full, and the failing unit is still let in
        assert!(g.admit("bad-cert", at(630)));
        let len = g.state.lock().unwrap().last_seen.len();
        assert_eq!(len, 4, "only recent clients are remembered");
        // a client that stopped failing for a whole window is new again, and must find room
        for i in 0..3 {
            assert!(g.admit(&format!("late-{i}"), at(1230)));
        }
        assert!(!g.admit("bad-cert", at(1231)));
    }

    #[test]
    fn cap_counts_new_devices_only() {
        let r = DeviceRegistry::new(["a".to_string()], 2);
        assert_eq!(r.admit("a"), Admission::Known);
        assert_eq!(r.admit("b"), Admission::New);
        assert_eq!(r.admit("b"), Admission::Known);
        assert_eq!(r.admit("c"), Admission::OverCap);
        assert_eq!(r.admit("a"), Admission::Known);
        assert_eq!(r.len(), 2);
    }
}
