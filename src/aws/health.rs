//! Our own health towards AWS: each poller's record, and the `aws_poll_failing` alert.
//!
//! The contract:
//! - Every poll of every poller ends in [`PollerHealth::record`]: a success clears the
//!   poller's consecutive-failure count, a failure adds one and keeps the error's text.
//! - A poller is *failing* once it failed `aws.failures_before_alert` times in a row (one
//!   failure is a blip; several are expired credentials, a denied policy or a dead endpoint).
//! - [`decide`] (pure) turns the records into what the one alert of subject `aws` should be:
//!   firing while any poller is failing, naming each failing poller with its error and since
//!   when; resolved when none is. [`sync_alert`] applies that through the alert lifecycle, so
//!   it is silenced, inhibited, reopened and notified like every alert.
//! - It concerns us, never a device: no device, no group, and nothing else is raised or
//!   resolved because AWS is unreachable (the metric rules keep their last verdict; the
//!   inventory keeps the devices it knew).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::alerts::lifecycle::{self, AlertSpec, Fired};
use crate::domain::alert::{Kind, Severity};

/// The subject of the one `aws_poll_failing` alert.
pub const SUBJECT: &str = "aws";

/// One poller's record, shared between its task and `/healthz`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PollerRecord {
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    /// The last failure's error chain (AWS error codes and messages carry no secrets).
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// When the current run of failures began.
    pub failing_since: Option<DateTime<Utc>>,
    /// What the poller wants an operator to know that is not a failure (e.g. "fleet indexing
    /// is off: connectivity is not reconciled").
    pub notes: Vec<String>,
}

/// A poller's record behind a lock.
#[derive(Debug)]
pub struct PollerHealth {
    pub name: String,
    record: Mutex<PollerRecord>,
}

impl PollerHealth {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            record: Mutex::new(PollerRecord::default()),
        }
    }

    /// Record how one poll ended.
    pub fn record<T>(&self, result: &anyhow::Result<T>, now: DateTime<Utc>) {
        let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
        r.last_attempt = Some(now);
        match result {
            Ok(_) => {
                r.last_success = Some(now);
                r.last_error = None;
                r.consecutive_failures = 0;
                r.failing_since = None;
            }
            Err(e) => {
                r.last_error = Some(format!("{e:#}"));
                r.consecutive_failures = r.consecutive_failures.saturating_add(1);
                r.failing_since.get_or_insert(now);
            }
        }
    }

    /// Replace the poller's notes (shown on `/healthz`).
    pub fn set_notes(&self, notes: Vec<String>) {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).notes = notes;
    }

    pub fn snapshot(&self) -> PollerRecord {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Whether the pollers run, and each one's record.
#[derive(Debug)]
pub struct AwsHealth {
    /// `Some(reason)` when the pollers are off.
    off: Option<String>,
    pollers: Mutex<BTreeMap<String, Arc<PollerHealth>>>,
}

impl AwsHealth {
    pub fn on() -> Arc<Self> {
        Arc::new(Self {
            off: None,
            pollers: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn off(reason: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            off: Some(reason.into()),
            pollers: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn is_on(&self) -> bool {
        self.off.is_none()
    }

    /// The record of the poller `name`, created on first use.
    pub fn poller(&self, name: &str) -> Arc<PollerHealth> {
        self.pollers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(PollerHealth::new(name)))
            .clone()
    }

    /// Every poller's record, by name.
    pub fn records(&self) -> BTreeMap<String, PollerRecord> {
        self.pollers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, p)| (n.clone(), p.snapshot()))
            .collect()
    }

    /// The `aws` object of `/healthz`.
    pub fn snapshot(&self, failures_before_alert: u32) -> Value {
        match &self.off {
            Some(reason) => json!({"enabled": false, "reason": reason}),
            None => {
                let pollers: BTreeMap<String, Value> = self
                    .records()
                    .into_iter()
                    .map(|(n, r)| {
                        let failing = r.consecutive_failures >= failures_before_alert;
                        let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
                        if let Value::Object(m) = &mut v {
                            m.insert("failing".into(), failing.into());
                        }
                        (n, v)
                    })
                    .collect();
                json!({"enabled": true, "pollers": pollers})
            }
        }
    }
}

/// What the `aws_poll_failing` alert should be.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// Firing, with this summary and these details.
    Firing { summary: String, details: Value },
    /// Not firing.
    Clear,
}

/// The alert's wanted state from the pollers' records (pure).
pub fn decide(records: &BTreeMap<String, PollerRecord>, failures_before_alert: u32) -> Want {
    let failing: Vec<(&String, &PollerRecord)> = records
        .iter()
        .filter(|(_, r)| r.consecutive_failures >= failures_before_alert)
        .collect();
    if failing.is_empty() {
        return Want::Clear;
    }
    let names: Vec<&str> = failing.iter().map(|(n, _)| n.as_str()).collect();
    let first_error = failing
        .iter()
        .find_map(|(_, r)| r.last_error.as_deref())
        .unwrap_or("unknown error");
    let summary = format!(
        "fleetwatch cannot poll AWS ({}): {}; CloudWatch metrics and the registry are not up to \
         date (devices are still monitored)",
        names.join(", "),
        first_line(first_error, 200),
    );
    let pollers: BTreeMap<&str, Value> = failing
        .iter()
        .map(|(n, r)| {
            (
                n.as_str(),
                json!({
                    "error": r.last_error,
                    "consecutive_failures": r.consecutive_failures,
                    "failing_since": r.failing_since,
                    "last_success": r.last_success,
                }),
            )
        })
        .collect();
    Want::Firing {
        summary,
        details: json!({ "pollers": pollers }),
    }
}

/// The first line of `s`, at most `max` characters.
fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() <= max {
        line.to_string()
    } else {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// Settings of [`sync_alert`].
#[derive(Debug, Clone, Copy)]
pub struct AlertSettings {
    pub failures_before_alert: u32,
    pub severity: Severity,
    pub reopen_window: TimeDelta,
}

/// Bring the `aws_poll_failing` alert in line with [`decide`]. Firing an unchanged alert writes
/// nothing; the details carry no attempt counts that change every poll, so a poller failing
/// the same way for hours does not rewrite the trail each minute.
pub async fn sync_alert(
    pool: &PgPool,
    health: &AwsHealth,
    s: AlertSettings,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<Fired>> {
    let records = health.records();
    let mut tx = pool.begin().await?;
    let out = match decide(&records, s.failures_before_alert) {
        Want::Firing {
            summary,
            mut details,
        } => {
            // Counts change every poll; the alert keeps what identifies the fault.
            if let Some(Value::Object(p)) = details.get_mut("pollers") {
                for v in p.values_mut() {
                    if let Value::Object(m) = v {
                        m.remove("consecutive_failures");
                    }
                }
            }
            let spec = AlertSpec {
                kind: Kind::AwsPollFailing,
                subject: SUBJECT.into(),
                device_id: None,
                group_id: None,
                severity: s.severity,
                summary,
                details,
            };
            Some(lifecycle::fire(&mut tx, &spec, now, s.reopen_window).await?)
        }
        Want::Clear => {
            if let Some(id) =
                crate::db::alerts::firing_id(&mut tx, Kind::AwsPollFailing, SUBJECT).await?
            {
                lifecycle::resolve(&mut tx, id, now, Some("AWS polling works again"), json!({}))
                    .await?;
            }
            None
        }
    };
    tx.commit().await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_poller_fails_only_after_the_threshold_in_a_row() {
        let h = AwsHealth::on();
        let p = h.poller("cloudwatch");
        let err: anyhow::Result<()> = Err(anyhow::anyhow!("AccessDenied: not authorized"));
        p.record(&err, t("2026-01-01T00:00:00Z"));
        p.record(&err, t("2026-01-01T00:01:00Z"));
        assert_eq!(decide(&h.records(), 3), Want::Clear);
        p.record(&Ok(()), t("2026-01-01T00:02:00Z"));
        for m in 3..6 {
            p.record(&err, t(&format!("2026-01-01T00:0{m}:00Z")));
        }
        let Want::Firing { summary, details } = decide(&h.records(), 3) else {
            panic!("three failures in a row must fire");
        };
        assert!(summary.contains("cloudwatch"), "{summary}");
        assert!(summary.contains("AccessDenied"), "{summary}");
        assert_eq!(
            details["pollers"]["cloudwatch"]["failing_since"],
            json!("2026-01-01T00:03:00Z")
        );
        p.record(&Ok(()), t("2026-01-01T00:07:00Z"));
        assert_eq!(decide(&h.records(), 3), Want::Clear);
    }

    #[test]
    fn healthz_says_why_the_pollers_are_off() {
        let h = AwsHealth::off("aws.enabled is off");
        assert_eq!(
            h.snapshot(3),
            json!({"enabled": false, "reason": "aws.enabled is off"})
        );
        let h = AwsHealth::on();
        h.poller("inventory").record(
            &Err::<(), _>(anyhow::anyhow!("x")),
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(
            h.snapshot(1)["pollers"]["inventory"]["failing"],
            json!(true)
        );
        assert_eq!(
            h.snapshot(2)["pollers"]["inventory"]["failing"],
            json!(false)
        );
    }

    #[test]
    fn long_errors_are_cut_in_the_summary() {
        let h = AwsHealth::on();
        let long = "e".repeat(1000);
        h.poller("cloudwatch").record(
            &Err::<(), _>(anyhow::anyhow!("{long}")),
            t("2026-01-01T00:00:00Z"),
        );
        let Want::Firing { summary, .. } = decide(&h.records(), 1) else {
            panic!()
        };
        assert!(summary.chars().count() < 400, "{summary}");
    }
}
