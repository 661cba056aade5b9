//! Silences (maintenance windows): by device, group or kind (any combination; every field set
//! must equal the alert's), from `starts_at` until `ends_at` or until deleted.
//!
//! Rules (README "Silences"):
//! - Nothing is sent about an alert while a silence matching it is active. The alert itself is
//!   recorded, changes and shows in the API as usual. The notification rows it would have had
//!   are written `superseded` with `silenced_by` set ([`super::outbox::notify`]; rows written
//!   before the silence began are superseded the same way when the worker claims them, unless
//!   an attempt was already made).
//! - After the silence, each endpoint is brought up to date once ([`catch_up`], run by the
//!   worker's tick): an `alert.firing` if the alert still fires (uncovered) and the endpoint was
//!   never told it fires; an `alert.resolved` if the endpoint was told it fires and it has
//!   resolved since (and the endpoint sends resolutions). Acknowledgements and reminders missed
//!   during the silence are not replayed. An alert that fired and resolved inside the silence
//!   sends nothing.
//!
//! The queries (the silence rows, the active match, the pass's candidates) are `db::silences`;
//! this module keeps what the pass writes.

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgConnection;

use crate::db::alerts;
use crate::db::notifications::{self, NewNotification};
use crate::db::silences;

/// How long after a silence ended its held-back resolutions are still sent. The pass looks
/// at every firing alert that was silenced, but at resolved ones only through silences that
/// ended within this horizon, so its cost does not grow with history; a worker down for longer
/// than this (resolutions dead-letter after `max_attempt_age` anyway) does not send them.
pub const RESOLUTION_HORIZON: TimeDelta = TimeDelta::days(7);

/// The "silence ended" pass: for every (alert, endpoint) pair that has a silenced row since
/// the endpoint was last told anything (delivered or dead firing/resolution), no pending row,
/// and no active silence now, enqueue what brings the endpoint up to date (module docs), due
/// at `now`. Idempotent: once enqueued, the pending row and then the delivered one take the
/// pair out of the candidates. Returns how many rows were written.
pub async fn catch_up(
    conn: &mut PgConnection,
    endpoints: &[String],
    now: DateTime<Utc>,
) -> sqlx::Result<usize> {
    let due = silences::catch_up_due(conn, endpoints, now, RESOLUTION_HORIZON).await?;
    let mut written = 0;
    for (alert_id, endpoint, event) in due {
        let Some(alert) = alerts::snapshot(&mut *conn, alert_id).await? else {
            continue;
        };
        let n = NewNotification {
            alert_id,
            endpoint: &endpoint,
            event,
            body: &alerts::body_of(&alert)?,
            due: now,
        };
        notifications::insert(&mut *conn, &n, None, now).await?;
        tracing::info!(alert = alert_id, %endpoint, %event, "silence over: endpoint brought up to date");
        written += 1;
    }
    Ok(written)
}
