//! What a fleet story on a manual clock stands on (`tests/detector_scenarios.rs`,
//! `tests/impressions_anomaly.rs`, `tests/address_drift.rs`): the configuration synced into a
//! real Postgres, the real ingest context and a detector, on one injected clock; and one
//! impression message through the real ingest path.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use fleetwatch::clock::ManualClock;
use fleetwatch::config::Config;
use fleetwatch::detect::{Detector, Settings};
use fleetwatch::ingest::{accept, Accepted, DeviceRegistry, IngestContext, TelemetryOutcome};
use fleetwatch::metrics::Metrics;
use sqlx::PgPool;

pub struct Harness {
    pub pool: PgPool,
    pub clock: Arc<ManualClock>,
    pub ingest: IngestContext,
    pub detector: Detector,
}

impl Harness {
    /// `cfg`'s groups and devices written to `pool`, and ingest and a detector configured by
    /// it, with the clock at `start`.
    pub async fn new(pool: PgPool, cfg: &Config, start: DateTime<Utc>) -> Harness {
        let clock = ManualClock::new(start);
        let identity = fleetwatch::domain::identity::Identity::from_config(cfg);
        fleetwatch::db::devices::sync_config(&pool, cfg, &identity)
            .await
            .unwrap();
        let ingest = IngestContext::new(
            cfg,
            pool.clone(),
            Metrics::new(),
            clock.clone(),
            Arc::new(DeviceRegistry::load(&pool, 1000).await.unwrap()),
        );
        let detector = Detector::new(
            pool.clone(),
            Settings::from_config(cfg),
            TimeDelta::seconds(20),
        );
        Harness {
            pool,
            clock,
            ingest,
            detector,
        }
    }
}

/// One impression message of `device` that arrived at `arrival`, through the real ingest path:
/// buffered, not yet flushed.
pub async fn impression(
    ingest: &IngestContext,
    device: &str,
    payload: &str,
    arrival: DateTime<Utc>,
) {
    let topic = format!("dt/{device}/impressions");
    let out = accept(ingest, &topic, payload.as_bytes(), arrival).await;
    assert!(
        matches!(out, Accepted::Telemetry(TelemetryOutcome::Buffered { .. })),
        "{out:?}"
    );
}
