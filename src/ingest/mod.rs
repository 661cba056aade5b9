//! Ingest: MQTT connections → bounded channel → processing (presence stored in batches by
//! device, each message acknowledged once stored; telemetry coalesced in memory and flushed in
//! batches).
//!
//! ```text
//! mqtt.rs (N poll loops) ──Incoming──► dispatch.rs ──► accept.rs ──► presence.rs ──► Postgres
//!                          (ack, concurrency)              └────────► telemetry.rs buffer ──flush──► Postgres
//! ```
//!
//! `accept(ctx, topic, payload, received_at)` is the one entry point that needs no broker.
//! `health` is our own ingest health (connections up, canary round trip), which the detector
//! reads; ingest depends on no detector code.

pub mod accept;
pub mod ack;
pub mod dispatch;
pub mod health;
pub mod mqtt;
pub mod presence;
pub mod rate;
pub mod registry;
pub mod telemetry;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::domain::identity::Identity;
use crate::domain::telemetry::TelemetryFormat;
use crate::logging::RateLimitedWarn;
use crate::metrics::Metrics;

pub use accept::{accept, Accepted, TelemetryOutcome};
pub use registry::DeviceRegistry;
pub use telemetry::TelemetryBuffer;

/// One message handed from a poll loop to the processing side.
pub struct Incoming {
    /// `publish.topic`, checked to be UTF-8 by the poll loop (MQTT 5 carries it as bytes).
    pub topic: String,
    pub publish: rumqttc::v5::mqttbytes::v5::Publish,
    /// Its place in the acknowledgement order of the connection it came on.
    pub ticket: ack::Ticket,
    pub received_at: DateTime<Utc>,
}

impl Incoming {
    /// Acknowledge (QoS 1), once every message that arrived before it on its connection is
    /// acknowledged too ([`ack`]). Never blocks.
    pub fn ack(&self) {
        self.ticket.ack(&self.publish);
    }
}

/// What the processing side needs; cheap to clone.
#[derive(Clone)]
pub struct IngestContext {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    pub identity: Arc<Identity>,
    pub registry: Arc<DeviceRegistry>,
    /// Admission of unknown clients' `connect_failed` events (`presence.unknown_failed_*`).
    pub unknown_failures: Arc<registry::UnknownFailures>,
    /// How far ahead of arrival a presence timestamp counts (`presence.max_clock_skew`).
    pub presence_max_skew: chrono::TimeDelta,
    pub buffer: Arc<TelemetryBuffer>,
    pub format: Arc<TelemetryFormat>,
    pub presence_filters: Arc<[String]>,
    pub telemetry_filters: Arc<[String]>,
    pub fleet_time_zone: Arc<str>,
    pub warn: Arc<RateLimitedWarn>,
    /// Our canary's topic and where its return is recorded.
    pub canary_topic: Arc<str>,
    pub health: Arc<health::IngestHealth>,
    /// Ends retries of presence writes that cannot succeed (their messages are then left
    /// unacknowledged for redelivery). A fresh token by default; the dispatcher puts in the
    /// process's shutdown token.
    pub stop: tokio_util::sync::CancellationToken,
}

impl IngestContext {
    pub fn new(
        cfg: &Config,
        pool: PgPool,
        metrics: Arc<Metrics>,
        clock: SharedClock,
        registry: Arc<DeviceRegistry>,
    ) -> Self {
        let format = TelemetryFormat {
            device_id_level: cfg.telemetry.device_id_level,
            device_id_field: cfg.telemetry.device_id_field.clone(),
            device_ts_field: Some(cfg.telemetry.device_ts_field.clone()).filter(|f| !f.is_empty()),
            group_level: cfg.telemetry.group_level,
            impressions_field: Some(cfg.telemetry.impressions_field.clone())
                .filter(|f| !f.is_empty()),
        };
        let health = health::IngestHealth::new(clock.now(), cfg.detector.canary_timeout.0);
        Self {
            pool,
            buffer: Arc::new(TelemetryBuffer::new(
                cfg.telemetry.flush_max_devices,
                cfg.anomaly.bucket.delta(),
                metrics.clone(),
            )),
            metrics,
            clock,
            identity: Arc::new(Identity::from_config(cfg)),
            registry,
            unknown_failures: Arc::new(registry::UnknownFailures::new(
                cfg.presence.unknown_failed_clients,
                cfg.presence.unknown_failed_window.delta(),
            )),
            presence_max_skew: cfg.presence.max_clock_skew.delta(),
            format: Arc::new(format),
            presence_filters: cfg.mqtt.presence_topics.clone().into(),
            telemetry_filters: cfg.mqtt.telemetry_topics.clone().into(),
            fleet_time_zone: cfg.fleet.time_zone.name().into(),
            warn: Arc::new(RateLimitedWarn::new(std::time::Duration::from_secs(10))),
            canary_topic: mqtt::canary_topic(cfg).into(),
            health,
            stop: tokio_util::sync::CancellationToken::new(),
        }
    }
}
