//! Retiring and unretiring devices, and the per-device event history that records who did it
//! and when (`device_events`). A retired device keeps its rows (presence, telemetry, alerts) and
//! keeps being ingested; the detector skips it (`retired_at is not null`).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};

use crate::alerts::lifecycle;

/// One entry of a device's history.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = DeviceEvent)]
pub struct DeviceEventRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `retired` or `unretired`.
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    /// The principal that made the change: `token:<id>:<name>`.
    pub actor: String,
    #[schema(value_type = Object)]
    pub details: Value,
}

/// What a retire or unretire request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    NoSuchDevice,
    /// Already in the requested state: nothing written.
    Unchanged,
    /// Changed; for a retirement, the firing alerts it resolved.
    Changed {
        resolved_alerts: Vec<i64>,
    },
}

async fn record(
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

/// Retire a device: state `retired` from now, out of evaluation (no deadline), and its firing
/// alerts resolved (with their resolutions sent to whoever was told they fire): retiring says
/// "we know, nobody will fix it". One transaction, so history, device and alerts agree.
pub async fn retire(
    pool: &PgPool,
    device: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Change> {
    let mut tx = pool.begin().await?;
    let row: Option<(Option<DateTime<Utc>>,)> =
        sqlx::query_as("select retired_at from devices where id = $1 for update")
            .bind(device)
            .fetch_optional(&mut *tx)
            .await?;
    match row {
        None => return Ok(Change::NoSuchDevice),
        Some((Some(_),)) => return Ok(Change::Unchanged),
        Some((None,)) => {}
    }
    sqlx::query(
        r#"update devices set retired_at = $2, state = 'retired', state_since = $2,
               deadline_at = null
           where id = $1"#,
    )
    .bind(device)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let firing: Vec<i64> = sqlx::query_scalar(
        r#"select id from alerts where device_id = $1 and status = 'firing' order by id
           for update"#,
    )
    .bind(device)
    .fetch_all(&mut *tx)
    .await?;
    let mut resolved = Vec::new();
    for id in firing {
        let outcome = json!({"resolution": "device_retired", "retired_by": actor});
        if lifecycle::resolve(&mut tx, id, now, None, outcome).await? {
            resolved.push(id);
        }
    }
    record(
        &mut tx,
        device,
        now,
        "retired",
        actor,
        json!({"resolved_alerts": resolved}),
    )
    .await?;
    tx.commit().await?;
    Ok(Change::Changed {
        resolved_alerts: resolved,
    })
}

/// Return a retired device to evaluation with a fresh clock: `unretired_at` is a restart point,
/// and a deadline of now makes the next detector tick evaluate it.
pub async fn unretire(
    pool: &PgPool,
    device: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Change> {
    let mut tx = pool.begin().await?;
    let row: Option<(Option<DateTime<Utc>>,)> =
        sqlx::query_as("select retired_at from devices where id = $1 for update")
            .bind(device)
            .fetch_optional(&mut *tx)
            .await?;
    match row {
        None => return Ok(Change::NoSuchDevice),
        Some((None,)) => return Ok(Change::Unchanged),
        Some((Some(_),)) => {}
    }
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
    .execute(&mut *tx)
    .await?;
    record(&mut tx, device, now, "unretired", actor, json!({})).await?;
    tx.commit().await?;
    Ok(Change::Changed {
        resolved_alerts: vec![],
    })
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
