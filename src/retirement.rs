//! Retiring and unretiring devices (`POST /devices/{id}/retire`, `/unretire`): one
//! transaction each, so the device row, its history (`device_events`) and its alerts agree.
//! The queries are in `db::retirement`; retiring resolves the device's firing alerts through
//! `alerts::lifecycle`, which is why this lives above both.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

use crate::alerts::lifecycle;
use crate::db::{alerts, retirement};

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
    match retirement::lock_retired_at(&mut tx, device).await? {
        None => return Ok(Change::NoSuchDevice),
        Some(Some(_)) => return Ok(Change::Unchanged),
        Some(None) => {}
    }
    retirement::mark_retired(&mut tx, device, now).await?;
    let firing = alerts::lock_firing_of_device(&mut tx, device).await?;
    let mut resolved = Vec::new();
    for id in firing {
        let outcome = json!({"resolution": "device_retired", "retired_by": actor});
        if lifecycle::resolve(&mut tx, id, now, None, outcome).await? {
            resolved.push(id);
        }
    }
    retirement::record(
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
    match retirement::lock_retired_at(&mut tx, device).await? {
        None => return Ok(Change::NoSuchDevice),
        Some(None) => return Ok(Change::Unchanged),
        Some(Some(_)) => {}
    }
    retirement::mark_unretired(&mut tx, device, now).await?;
    retirement::record(&mut tx, device, now, "unretired", actor, json!({})).await?;
    tx.commit().await?;
    Ok(Change::Changed {
        resolved_alerts: vec![],
    })
}
