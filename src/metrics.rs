//! Prometheus metrics of the service itself, served on `/metrics`. One registry per process,
//! held in `AppState` (no global recorder), so tests can read the counters of their own
//! instance.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::domain::DropReason;

type Labels = Vec<(&'static str, String)>;

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// MQTT messages received, by kind (`presence`, `telemetry`, `unmatched`).
    pub received: Family<Labels, Counter>,
    /// Messages skipped, by reason.
    pub drops: Family<Labels, Counter>,
    /// Presence events by outcome (`new`, `duplicate`).
    pub presence_stored: Family<Labels, Counter>,
    /// Impression device timestamps that were absurd and dropped from their message.
    pub device_ts_dropped: Counter,
    /// Devices per telemetry flush.
    pub flush_batch_devices: Histogram,
    /// Seconds per telemetry flush.
    pub flush_seconds: Histogram,
    /// Failed telemetry flushes (the batch is kept and retried).
    pub flush_errors: Counter,
    /// MQTT connection losses, by connection.
    pub mqtt_reconnects: Family<Labels, Counter>,
    /// 1 while a connection is up, by connection.
    pub mqtt_connected: Family<Labels, Gauge>,
    /// Messages waiting between the poll loops and the processing side.
    pub channel_depth: Gauge,
    /// Times a poll loop found the channel full and had to wait.
    pub channel_full: Counter,
    /// Devices waiting in the coalescing buffer.
    pub buffer_devices: Gauge,
    /// Devices created from first sight.
    pub devices_created: Counter,
    /// The HTTP server's connections.
    pub http: HttpMetrics,
}

/// The HTTP server's connections (`http::server`).
pub struct HttpMetrics {
    /// Connections open now.
    pub connections: Gauge,
    /// The connection cap in force.
    pub max_connections: Gauge,
    /// The process's open-files limit (soft, after raising it to the hard one).
    pub open_files_limit: Gauge,
    /// Connections we closed, by reason (`idle_timeout`, `header_timeout`, `evicted`,
    /// `shutdown`).
    pub closed: Family<Labels, Counter>,
    /// Failed `accept` calls (e.g. out of descriptors).
    pub accept_errors: Counter,
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            connections: Gauge::default(),
            max_connections: Gauge::default(),
            open_files_limit: Gauge::default(),
            closed: Family::default(),
            accept_errors: Counter::default(),
        };
        registry.register(
            "http_connections",
            "HTTP connections open",
            m.connections.clone(),
        );
        registry.register(
            "http_connections_max",
            "The HTTP connection cap",
            m.max_connections.clone(),
        );
        registry.register(
            "open_files_limit",
            "The process's open-files limit",
            m.open_files_limit.clone(),
        );
        registry.register(
            "http_connections_closed",
            "HTTP connections closed by the server, by reason",
            m.closed.clone(),
        );
        registry.register(
            "http_accept_errors",
            "Failed accepts of HTTP connections",
            m.accept_errors.clone(),
        );
        for r in ["idle_timeout", "header_timeout", "evicted", "shutdown"] {
            let _ = m.closed.get_or_create(&vec![("reason", r.to_string())]);
        }
        m
    }

    /// Count a connection we closed.
    pub fn closed(&self, reason: &'static str) {
        self.closed
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("fleetwatch");
        let received = Family::<Labels, Counter>::default();
        registry.register(
            "mqtt_messages_received",
            "MQTT messages received, by kind",
            received.clone(),
        );
        let drops = Family::<Labels, Counter>::default();
        registry.register("ingest_dropped", "Input skipped, by reason", drops.clone());
        let presence_stored = Family::<Labels, Counter>::default();
        registry.register(
            "presence_events",
            "Presence events processed, by outcome",
            presence_stored.clone(),
        );
        let device_ts_dropped = Counter::default();
        registry.register(
            "device_timestamps_dropped",
            "Absurd or unparsable device timestamps dropped from messages that still counted",
            device_ts_dropped.clone(),
        );
        let flush_batch_devices = Histogram::new(exponential_buckets(1.0, 4.0, 9));
        registry.register(
            "flush_batch_devices",
            "Devices per telemetry flush",
            flush_batch_devices.clone(),
        );
        let flush_seconds = Histogram::new(exponential_buckets(0.0005, 2.5, 12));
        registry.register(
            "flush_duration_seconds",
            "Duration of telemetry flushes",
            flush_seconds.clone(),
        );
        let flush_errors = Counter::default();
        registry.register(
            "flush_errors",
            "Failed telemetry flushes (kept and retried)",
            flush_errors.clone(),
        );
        let mqtt_reconnects = Family::<Labels, Counter>::default();
        registry.register(
            "mqtt_reconnects",
            "MQTT connection losses, by connection",
            mqtt_reconnects.clone(),
        );
        let mqtt_connected = Family::<Labels, Gauge>::default();
        registry.register(
            "mqtt_connected",
            "1 while the MQTT connection is up",
            mqtt_connected.clone(),
        );
        let channel_depth = Gauge::default();
        registry.register(
            "ingest_channel_depth",
            "Messages waiting for processing",
            channel_depth.clone(),
        );
        let channel_full = Counter::default();
        registry.register(
            "ingest_channel_full",
            "Times a poll loop waited on a full channel",
            channel_full.clone(),
        );
        let buffer_devices = Gauge::default();
        registry.register(
            "telemetry_buffer_devices",
            "Devices waiting in the coalescing buffer",
            buffer_devices.clone(),
        );
        let devices_created = Counter::default();
        registry.register(
            "devices_created",
            "Devices created on first sight",
            devices_created.clone(),
        );

        let http = HttpMetrics::register(&mut registry);

        // Show every drop reason from the start, so a dashboard sees zeros, not gaps.
        for r in DropReason::ALL {
            let _ = drops.get_or_create(&vec![("reason", r.as_str().to_string())]);
        }
        Arc::new(Self {
            registry,
            received,
            drops,
            presence_stored,
            device_ts_dropped,
            flush_batch_devices,
            flush_seconds,
            flush_errors,
            mqtt_reconnects,
            mqtt_connected,
            channel_depth,
            channel_full,
            buffer_devices,
            devices_created,
            http,
        })
    }

    pub fn dropped(&self, reason: DropReason) {
        self.drops
            .get_or_create(&vec![("reason", reason.as_str().to_string())])
            .inc();
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.drops
            .get_or_create(&vec![("reason", reason.as_str().to_string())])
            .get()
    }

    pub fn received(&self, kind: &'static str) {
        self.received
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
