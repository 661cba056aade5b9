//! Inhibition: links firing target alerts to a firing source alert of the same
//! device (rules in `domain::inhibit`). The link is all there is: the webhook worker's `decide`
//! supersedes an inhibited alert's first notification, as it does for an outage's `covered_by`,
//! and reminders skip it. Only alerts no endpoint has been told about are linked, so nothing
//! already paged is taken back.
//!
//! The link stays for the target's firing life (until it resolves): a client-ID storm or a
//! reconnect loop ends its source alert and its `flapping` at different times (their windows
//! differ), and releasing the target when the source resolves would page the tail of the same
//! incident.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;

use crate::db::alerts;
use crate::domain::inhibit::InhibitRule;

/// Link every firing, not yet notified target alert to a firing source alert under `rules`.
/// Returns (target, source) pairs newly linked; each gets an `inhibited` trail event. Runs in
/// the caller's transaction, so the link commits with the alert changes that caused it, before
/// the worker can claim the target's notification.
pub async fn apply(
    conn: &mut PgConnection,
    rules: &[InhibitRule],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<(i64, i64)>> {
    if rules.is_empty() {
        return Ok(vec![]);
    }
    let sources: Vec<&str> = rules.iter().map(|r| r.source.as_str()).collect();
    let targets: Vec<&str> = rules.iter().map(|r| r.target.as_str()).collect();
    let equal: Vec<&str> = rules.iter().map(|r| r.equal.as_str()).collect();
    let linked = alerts::link_inhibited(&mut *conn, &sources, &targets, &equal, now).await?;
    for (target, source) in &linked {
        alerts::insert_event(
            &mut *conn,
            *target,
            now,
            "inhibited",
            "fleetwatch",
            json!({"by": source}),
        )
        .await?;
    }
    Ok(linked)
}
