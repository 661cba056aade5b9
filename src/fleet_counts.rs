//! Upkeep of the fleet counts (`db::fleet_counts`): the fold that keeps them a few hundred
//! rows, and the self-check that proves them against a recount.
//!
//! Contract: the triggers keep the counts exact in the writing transaction; nothing here is
//! needed for correctness of a read. [`fold`] (every replica, every `counts.fold`) only keeps
//! reads small. [`check`] (leader only, every `counts.check`) recounts `devices` and firing
//! `alerts`, appends any difference as a correcting delta, logs each drifting key and counts it
//! on `/metrics` (`fleetwatch_fleet_counts_drift{table}`): there should never be any, so one is
//! a bug in a trigger or a write that bypassed them (e.g. `session_replication_role = replica`).

use anyhow::Context;
use sqlx::PgPool;

use crate::db::fleet_counts::{self, Drift};
use crate::metrics::Metrics;

/// What a check found: the keys corrected in each table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub devices: Vec<Drift>,
    pub alerts: Vec<Drift>,
}

/// Collapse the deltas appended since the last fold; returns the rows removed.
pub async fn fold(pool: &PgPool) -> anyhow::Result<u64> {
    let mut conn = pool
        .acquire()
        .await
        .context("fleet counts fold: connection")?;
    fleet_counts::fold(&mut conn)
        .await
        .context("fleet counts fold")
}

/// Recount, correct, log and count any drift.
pub async fn check(pool: &PgPool, metrics: &Metrics) -> anyhow::Result<Checked> {
    let devices = fleet_counts::check_devices(pool)
        .await
        .context("fleet counts check: devices")?;
    let alerts = fleet_counts::check_alerts(pool)
        .await
        .context("fleet counts check: alerts")?;
    for (table, drift) in [("devices", &devices), ("alerts", &alerts)] {
        for d in drift {
            // Rare by construction (and at most one line per key per check period), so each
            // is worth its own line rather than a rate-limited summary.
            tracing::error!(table, key = %d.key, delta = d.delta,
                "fleet counts drifted from a recount; corrected");
            metrics
                .tasks
                .counts_drift
                .get_or_create(&vec![("table", table.to_string())])
                .inc_by(d.delta.unsigned_abs());
        }
    }
    Ok(Checked { devices, alerts })
}
