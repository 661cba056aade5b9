//! The notification outbox: which endpoints an alert change is for, written in the caller's
//! transaction (the one that changed the alert), with the alert snapshotted as the API shows it.
//! The worker ([`super::webhook`]) delivers the rows; this module only decides and records.
//!
//! Rules (README "Webhooks"):
//! - `alert.firing` on open, reopen, and when a resolved outage releases a still-failing alert
//!   (uncover). A *device* alert's firing (one with a `device_id`), and a group or network
//!   outage's, is due only after the endpoint's `group_wait`, so that a larger outage can form
//!   and cover it ([`waits_for_grouping`]); so is its release by an outage that resolved, so
//!   that the screens of an outage's tail, back within seconds, do not page one by one.
//! - `alert.resolved` on resolve (if `send_resolved`), due after `resolve_wait`.
//! - `alert.acknowledged` on acknowledge, due at once.
//! - `alert.reminder` rows are written by the worker, not here.
//! - While a silence matches the alert, rows are written already `superseded` with
//!   `silenced_by` set: nothing is sent ([`super::silences`]).
//!
//! Whether a due row is still worth sending (covered, reopened, never announced...) is decided
//! by the worker when it claims the row, because only then is the outcome known.
//!
//! The endpoints' routing rules live in `webhook_endpoints`, written from the configuration at
//! start-up by [`sync_endpoints`]: the lifecycle runs inside the detector's transaction and
//! has nothing but a connection to decide with.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{PgConnection, PgPool};

use crate::config::WebhookConfig;
use crate::db::alerts::{body_of, snapshots};
use crate::db::notifications::{self, NewNotification};
use crate::db::webhooks;
use crate::domain::alert::{Kind, Severity};

pub use crate::domain::notification::{Event, NotificationStatus};

/// The alert change that may call for notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Opened or reopened: `alert.firing`, after `group_wait` for device alerts.
    Fired,
    /// Released by a resolved outage while still firing: `alert.firing` (the outage's
    /// notification spoke for it until now), after `group_wait` like its firing.
    Uncovered,
    /// `alert.resolved`, after `resolve_wait`.
    Resolved,
    /// `alert.acknowledged` at once.
    Acknowledged,
}

/// Rank of a severity: 0 critical … 3 info. An alert goes to an endpoint when its rank is at
/// most the endpoint's `max_severity_rank`.
pub fn severity_rank(s: Severity) -> i32 {
    match s {
        Severity::Critical => 0,
        Severity::Error => 1,
        Severity::Warning => 2,
        Severity::Info => 3,
    }
}

/// Whether an alert's firing waits `group_wait`: a device alert (a group, network or fleet
/// outage may form and cover it), and a group or network outage (a network or fleet outage may
/// form and cover it: a carrier's buildings go dark over a tick or two). A fleet outage covers
/// everything and our own alerts are never covered: they are due at once.
pub fn waits_for_grouping(alert: &crate::db::alerts::AlertRow) -> bool {
    alert.device_id.is_some() || matches!(alert.kind, Kind::GroupOutage | Kind::NetworkOutage)
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Write the configured endpoints' routing rules, forget endpoints no longer configured and
/// dead-letter their pending rows. Secrets and URLs are not stored.
pub async fn sync_endpoints(pool: &PgPool, hooks: &[WebhookConfig]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let mut names = Vec::with_capacity(hooks.len());
    for (i, w) in hooks.iter().enumerate() {
        let name = w.name_at(i);
        let rank = w.min_severity.map_or(3, severity_rank);
        let resolve_wait = w.resolve_wait.unwrap_or(w.group_wait);
        let rules = webhooks::EndpointRules {
            name: &name,
            kinds: &w.kinds,
            groups: &w.groups,
            max_severity_rank: rank,
            send_resolved: w.send_resolved,
            send_reminders: w.send_reminders,
            group_wait_ms: ms(w.group_wait.0),
            resolve_wait_ms: ms(resolve_wait.0),
            repeat_interval_ms: ms(w.repeat_interval.0).max(1),
        };
        webhooks::upsert(&mut tx, &rules).await?;
        names.push(name);
    }
    webhooks::delete_except(&mut tx, &names).await?;
    // A worker only claims rows of the endpoints it knows (a replica still on the previous
    // configuration must not dead-letter a new endpoint's rows); removal is decided here.
    notifications::dead_letter_unconfigured(&mut *tx, &names).await?;
    tx.commit().await
}

/// Record the notifications `change` of `alert_id` calls for, one per matching endpoint, in the
/// caller's transaction. Returns how many rows were written.
pub async fn notify(
    conn: &mut PgConnection,
    alert_id: i64,
    change: Change,
    now: DateTime<Utc>,
) -> sqlx::Result<usize> {
    notify_many(conn, &[alert_id], change, now).await
}

/// [`notify`] for many alerts with the same change, in a fixed number of statements whatever
/// their number (a mass gap opens thousands of alerts in one detector pass).
pub async fn notify_many(
    conn: &mut PgConnection,
    alert_ids: &[i64],
    change: Change,
    now: DateTime<Utc>,
) -> sqlx::Result<usize> {
    if alert_ids.is_empty() {
        return Ok(0);
    }
    let routes = webhooks::routes(&mut *conn).await?;
    if routes.is_empty() {
        return Ok(0);
    }
    let alerts = snapshots(&mut *conn, alert_ids).await?;
    let event = match change {
        Change::Fired | Change::Uncovered => Event::Firing,
        Change::Resolved => Event::Resolved,
        Change::Acknowledged => Event::Acknowledged,
    };
    // While a silence matches, the rows are still written (history: why nothing was sent)
    // but finished at once, `superseded` and naming the silence; the worker's "silence ended"
    // pass ([`super::silences::catch_up`]) brings the endpoint up to date afterwards.
    let silenced: HashMap<i64, i64> =
        crate::db::silences::silenced_many(&mut *conn, alert_ids, now)
            .await?
            .into_iter()
            .collect();
    let bodies = alerts
        .iter()
        .map(body_of)
        .collect::<sqlx::Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    for (alert, body) in alerts.iter().zip(&bodies) {
        let rank = severity_rank(alert.severity);
        for r in &routes {
            if !r.kinds.is_empty() && !r.kinds.iter().any(|k| k == alert.kind.as_str()) {
                continue;
            }
            if rank > r.max_severity_rank {
                continue;
            }
            if !r.groups.is_empty() && !alert.group.as_ref().is_some_and(|g| r.groups.contains(g)) {
                continue;
            }
            if change == Change::Resolved && !r.send_resolved {
                continue;
            }
            let wait_ms = match change {
                Change::Fired | Change::Uncovered if waits_for_grouping(alert) => r.group_wait_ms,
                Change::Resolved => r.resolve_wait_ms,
                _ => 0,
            };
            let n = NewNotification {
                alert_id: alert.id,
                endpoint: &r.name,
                event,
                body,
                due: now + TimeDelta::milliseconds(wait_ms),
            };
            rows.push((n, silenced.get(&alert.id).copied()));
        }
    }
    if !rows.is_empty() {
        notifications::insert_many(&mut *conn, &rows, now).await?;
    }
    Ok(rows.len())
}
