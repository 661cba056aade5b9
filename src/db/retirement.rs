//! The retirement columns of `devices` (`retired_at`, `unretired_at`) and the per-device event
//! history that records who retired or unretired a device and when (`device_events`). A
//! retired device keeps its rows (presence, telemetry, alerts) and keeps being ingested; the
//! detector skips it (`retired_at is not null`). The transaction that retires a device and
//! resolves its alerts is `crate::retirement`.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

/// One entry of a device's history.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = DeviceEvent)]
pub struct DeviceEventRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `retired`, `unretired`, or `connectivity_corrected` (the fleet index corrected stored
    /// connectivity; actor `fleetwatch:inventory`).
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    /// The principal that made the change: `token:<id>:<name>`.
    pub actor: String,
    #[schema(value_type = Object)]
    pub details: Value,
}

/// Append an entry to `device`'s history, in the caller's transaction.
pub async fn record(
    conn: &mut PgConnection,
    device: &str,
    at: DateTime<Utc>,
    kind: &str,
    actor: &str,
    details: Value,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"insert into device_events (device_id, at, type, actor, details)
           values ($1, $2, $3, $4, $5)"#,
    )
    .bind(device)
    .bind(at)
    .bind(kind)
    .bind(actor)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// Lock `device`'s row and read its `retired_at`: `None` if there is no such device.
pub async fn lock_retired_at(
    conn: &mut PgConnection,
    device: &str,
) -> sqlx::Result<Option<Option<DateTime<Utc>>>> {
    let row: Option<(Option<DateTime<Utc>>,)> =
        sqlx::query_as("select retired_at from devices where id = $1 for update")
            .bind(device)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(r,)| r))
}

/// State `retired` from `now`, out of evaluation (no deadline).
pub async fn mark_retired(
    conn: &mut PgConnection,
    device: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"update devices set retired_at = $2, state = 'retired', state_since = $2,
               deadline_at = null
           where id = $1"#,
    )
    .bind(device)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Back to evaluation on a fresh clock: `unretired_at` is a restart point, a deadline of `now`
/// makes the next detector tick evaluate it.
pub async fn mark_unretired(
    conn: &mut PgConnection,
    device: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    // A device that never reported goes back to never_seen; any other starts healthy on its
    // fresh clock and the detector takes it from there.
    sqlx::query(
        r#"update devices set retired_at = null, unretired_at = $2, state_since = $2,
               state = case when last_impression_at is null and conn_event_ts is null
                            then 'never_seen' else 'healthy' end,
               deadline_at = $2
           where id = $1"#,
    )
    .bind(device)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A device's history, oldest first.
pub async fn history(pool: &PgPool, device: &str) -> sqlx::Result<Vec<DeviceEventRow>> {
    sqlx::query_as(
        r#"select id, at, type, actor, details from device_events
           where device_id = $1 order by id"#,
    )
    .bind(device)
    .fetch_all(pool)
    .await
}

/// Which of `ids` are retired devices.
pub async fn retired_among(
    conn: &mut PgConnection,
    ids: &[String],
) -> sqlx::Result<BTreeSet<String>> {
    if ids.is_empty() {
        return Ok(BTreeSet::new());
    }
    let rows: Vec<String> =
        sqlx::query_scalar("select id from devices where id = any($1) and retired_at is not null")
            .bind(ids)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}
