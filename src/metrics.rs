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
    /// Impressions values that were unusable; their messages counted as 1.
    pub impressions_invalid: Counter,
    /// Presence events per transaction (`ingest::dispatch`).
    pub presence_batch: Histogram,
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
    /// Messages per second over the last 10 s, by connection (`ingest::rate`).
    pub mqtt_receive_rate: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Connections the total receive rate needs under the per-connection limit's warning
    /// threshold (`ingest::rate::connections_needed`).
    pub mqtt_connections_needed: Gauge,
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
    /// The background tasks, the detector, the alerts and their deliveries.
    pub tasks: TaskMetrics,
    /// The CloudWatch poller (`aws::cloudwatch`).
    pub cloudwatch: CloudWatchMetrics,
}

/// The CloudWatch poller's counters.
pub struct CloudWatchMetrics {
    /// Polls, by outcome (`ok`, `error`).
    pub polls: Family<Labels, Counter>,
    /// Calls made, by operation (`ListMetrics`, `GetMetricData`), throttled ones included.
    pub calls: Family<Labels, Counter>,
    /// Calls CloudWatch refused as throttled (each is backed off and retried).
    pub throttled: Counter,
    /// Samples upserted.
    pub samples_written: Counter,
    /// Metric results that were not `Complete` (kept for the next poll to read again), by
    /// status code.
    pub partial_results: Family<Labels, Counter>,
    /// Datapoints or listed metrics skipped as malformed, by reason.
    pub skipped: Family<Labels, Counter>,
}

impl CloudWatchMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            polls: Family::default(),
            calls: Family::default(),
            throttled: Counter::default(),
            samples_written: Counter::default(),
            partial_results: Family::default(),
            skipped: Family::default(),
        };
        registry.register(
            "cloudwatch_polls",
            "CloudWatch polls, by outcome",
            m.polls.clone(),
        );
        registry.register(
            "cloudwatch_calls",
            "CloudWatch API calls, by operation",
            m.calls.clone(),
        );
        registry.register(
            "cloudwatch_throttled_calls",
            "CloudWatch calls refused as throttled (backed off and retried)",
            m.throttled.clone(),
        );
        registry.register(
            "cloudwatch_samples_written",
            "CloudWatch samples upserted",
            m.samples_written.clone(),
        );
        registry.register(
            "cloudwatch_partial_results",
            "CloudWatch metric results not Complete (read again next poll), by status",
            m.partial_results.clone(),
        );
        registry.register(
            "cloudwatch_skipped",
            "CloudWatch datapoints or metrics skipped as malformed, by reason",
            m.skipped.clone(),
        );
        for o in ["ok", "error"] {
            let _ = m.polls.get_or_create(&label("outcome", o));
        }
        for op in ["ListMetrics", "GetMetricData"] {
            let _ = m.calls.get_or_create(&label("operation", op));
        }
        m
    }
}

/// Histograms in a labelled family need a constructor; a plain `fn` keeps the type nameable.
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Background tasks (`app::tasks`), the detector, alerts and webhook deliveries.
pub struct TaskMetrics {
    /// Restarts of a restartable task after a panic, an error (a failed tick included) or an
    /// unexpected end, by task.
    pub restarts: Family<Labels, Counter>,
    /// Seconds per tick of a periodic task, by task (the detector's is `task="detector"`).
    pub tick_seconds: HistogramFamily,
    /// Devices whose deadline had passed, evaluated by detector ticks (a counter: its rate is
    /// the detector's load, which a last-tick gauge would show only by chance).
    pub devices_due: Counter,
    /// Alerts the detector opened or reopened, by kind.
    pub alerts_opened: Family<Labels, Counter>,
    /// Webhook delivery attempts, by outcome (`delivered`, `retried`, `dead`, `unrecorded`).
    pub deliveries: Family<Labels, Counter>,
    /// Seconds per webhook request, by outcome.
    pub delivery_seconds: HistogramFamily,
    /// Silences in force now (refreshed by the `silences_gauge` task).
    pub silences_active: Gauge,
    /// Devices or firing alerts by which the fleet counts differed from a recount and were
    /// corrected, by table (`devices`, `alerts`); should stay zero (`crate::fleet_counts`).
    pub counts_drift: Family<Labels, Counter>,
}

fn tick_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.5, 12))
}

fn delivery_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.5, 10))
}

impl TaskMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            restarts: Family::default(),
            tick_seconds: Family::new_with_constructor(tick_histogram),
            devices_due: Counter::default(),
            alerts_opened: Family::default(),
            deliveries: Family::default(),
            delivery_seconds: Family::new_with_constructor(delivery_histogram),
            silences_active: Gauge::default(),
            counts_drift: Family::default(),
        };
        registry.register(
            "task_restarts",
            "Restarts of background tasks after a failure, by task",
            m.restarts.clone(),
        );
        registry.register(
            "task_tick_duration_seconds",
            "Duration of periodic task ticks, by task",
            m.tick_seconds.clone(),
        );
        registry.register(
            "detector_devices_due",
            "Devices past their deadline evaluated by detector ticks",
            m.devices_due.clone(),
        );
        registry.register(
            "alerts_opened",
            "Alerts opened or reopened by the detector, by kind",
            m.alerts_opened.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by outcome",
            m.deliveries.clone(),
        );
        registry.register(
            "webhook_delivery_duration_seconds",
            "Duration of webhook requests, by outcome",
            m.delivery_seconds.clone(),
        );
        registry.register(
            "silences_active",
            "Silences in force",
            m.silences_active.clone(),
        );
        registry.register(
            "fleet_counts_drift",
            "Devices or firing alerts by which the fleet counts differed from a recount (corrected), by table",
            m.counts_drift.clone(),
        );
        for t in ["devices", "alerts"] {
            let _ = m.counts_drift.get_or_create(&label("table", t));
        }
        // Zeros from the start, so a dashboard sees a flat line rather than no data.
        for kind in crate::domain::alert::Kind::ALL {
            let _ = m.alerts_opened.get_or_create(&label("kind", kind.as_str()));
        }
        for outcome in ["delivered", "retried", "dead", "unrecorded"] {
            let _ = m.deliveries.get_or_create(&label("outcome", outcome));
        }
        m
    }

    /// Count a restart of `task`.
    pub fn restarted(&self, task: &str) {
        self.restarts.get_or_create(&label("task", task)).inc();
    }

    /// Count an alert the detector opened.
    pub fn opened(&self, kind: crate::domain::alert::Kind) {
        self.alerts_opened
            .get_or_create(&label("kind", kind.as_str()))
            .inc();
    }

    /// Count a webhook attempt and its request's duration.
    pub fn delivered(&self, outcome: &'static str, seconds: f64) {
        self.deliveries
            .get_or_create(&label("outcome", outcome))
            .inc();
        self.delivery_seconds
            .get_or_create(&label("outcome", outcome))
            .observe(seconds);
    }
}

fn label(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_string())]
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
    /// Dashboard sign-ins by outcome: `ok`, `failed` (wrong name or password, disabled user),
    /// `limited` (refused by the login rate limit). A rising `failed` is someone guessing.
    pub logins: Family<Labels, Counter>,
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            connections: Gauge::default(),
            max_connections: Gauge::default(),
            open_files_limit: Gauge::default(),
            closed: Family::default(),
            accept_errors: Counter::default(),
            logins: Family::default(),
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
        registry.register(
            "dashboard_logins",
            "Dashboard sign-ins, by outcome (ok, failed, limited)",
            m.logins.clone(),
        );
        for r in ["idle_timeout", "header_timeout", "evicted", "shutdown"] {
            let _ = m.closed.get_or_create(&vec![("reason", r.to_string())]);
        }
        for o in ["ok", "failed", "limited"] {
            let _ = m.logins.get_or_create(&vec![("outcome", o.to_string())]);
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
        let impressions_invalid = Counter::default();
        registry.register(
            "impressions_values_invalid",
            "Unusable impressions values (not a number from 0 to the per-message maximum); the message counted as 1",
            impressions_invalid.clone(),
        );
        let presence_batch = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "presence_batch_events",
            "Presence events stored per transaction",
            presence_batch.clone(),
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
        let mqtt_receive_rate =
            Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "mqtt_receive_rate",
            "MQTT messages per second received over the last 10 s, by connection (AWS IoT Core delivers at most mqtt.per_connection_limit to one)",
            mqtt_receive_rate.clone(),
        );
        let mqtt_connections_needed = Gauge::default();
        registry.register(
            "mqtt_connections_needed",
            "MQTT connections the total receive rate needs to stay under mqtt.per_connection_warn of the per-connection limit",
            mqtt_connections_needed.clone(),
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
        let tasks = TaskMetrics::register(&mut registry);
        let cloudwatch = CloudWatchMetrics::register(&mut registry);

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
            impressions_invalid,
            presence_batch,
            flush_batch_devices,
            flush_seconds,
            flush_errors,
            mqtt_reconnects,
            mqtt_connected,
            mqtt_receive_rate,
            mqtt_connections_needed,
            channel_depth,
            channel_full,
            buffer_devices,
            devices_created,
            http,
            tasks,
            cloudwatch,
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
