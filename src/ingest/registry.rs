//! Which devices exist, in memory, so that first sight of a device is cheap to recognise and the
//! device cap of DESIGN.md §2a can be enforced without a query per message. Rebuilt from
//! Postgres at start. With several replicas each keeps its own view, so the cap can be
//! overshot by at most what the others created since they started.

use std::collections::HashSet;
use std::sync::Mutex;

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

    pub fn len(&self) -> usize {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
