//! Typed configuration: a TOML file (every key optional) plus the environment overrides of
//! DESIGN.md §4. Validation happens once, here, so that a wrong value stops the service at
//! start-up with a message naming the key and what it expected, instead of surfacing later as
//! odd behaviour. Values with a syntax of their own (durations, time zones, quiet hours, group
//! patterns, alert kinds and severities) are kept parsed, so nothing downstream parses them a
//! second time or needs a fallback. Secrets are wrapped in [`Secret`] so neither `Debug` nor logs can show them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer};

use crate::domain::alert::{Kind, Severity};
use crate::domain::schedule::QuietHours;

/// A string that must never appear in logs or `Debug` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A duration written like `500ms`, `30s`, `5m`, `2h` or `90d`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// As a `chrono` span (saturating: a duration too long for it is "forever").
    pub fn delta(self) -> chrono::TimeDelta {
        chrono::TimeDelta::from_std(self.0).unwrap_or(chrono::TimeDelta::MAX)
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("expected a duration like 500ms, 30s, 5m or 2h, got {s:?} ({e})"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An IANA time zone, parsed at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(pub chrono_tz::Tz);

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone(chrono_tz::Tz::UTC)
    }
}

impl TimeZone {
    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

impl FromStr for TimeZone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_tz(s).map(TimeZone)
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A regular expression on device ids, compiled at load.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        regex::Regex::new(s)
            .map(Pattern)
            .map_err(|e| format!("expected a regular expression ({e})"))
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[detector.severities]`: kind = severity. By hand so that an error names the kind (serde
/// cannot report a map key that is itself an enum).
fn severities<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Kind, Severity>, D::Error> {
    BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| {
            let kind = k.parse::<Kind>().map_err(|e| format!("{k}: {e}"))?;
            let severity = v.parse::<Severity>().map_err(|e| format!("{k}: {e}"))?;
            Ok((kind, severity))
        })
        .collect::<Result<_, String>>()
        .map_err(serde::de::Error::custom)
}

fn dur(s: &str) -> HumanDuration {
    s.parse().expect("built-in default duration parses")
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub telemetry: TelemetryConfig,
    pub devices: DevicesConfig,
    pub detector: DetectorConfig,
    pub fleet: FleetConfig,
    pub api: ApiConfig,
    pub retention: RetentionConfig,
    pub counts: CountsConfig,
    /// Groups (buildings, sites), keyed by group id.
    pub groups: BTreeMap<String, GroupConfig>,
    /// Client ID → device id, for bridges whose MQTT client ID is not the device id.
    pub client_ids: BTreeMap<String, String>,
    pub webhooks: Vec<WebhookConfig>,
    pub presence: PresenceConfig,
    /// `[[inhibit]]` rules; absent means the defaults (`domain::inhibit::defaults`), an empty
    /// list (`inhibit = []`) means none.
    pub inhibit: Option<Vec<crate::domain::inhibit::InhibitRule>>,
    pub aws: AwsConfig,
    pub cloudwatch: CloudWatchConfig,
    pub inventory: InventoryConfig,
    /// `[networks.<name>] prefixes = [...]`: named carrier networks (`domain::network`).
    pub networks: BTreeMap<String, NetworkConfig>,
    pub address_drift: AddressDriftConfig,
    pub dashboard: DashboardConfig,
    pub anomaly: AnomalyConfig,
}

/// `[anomaly]`: impressions anomaly, a device that keeps reporting but stopped counting
/// (README "Impressions anomaly"; the rule and its contract are `domain::anomaly`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Judge at all (env `FLEETWATCH_ANOMALY_ENABLED`). Sums are kept either way, so turning
    /// it on starts with a baseline.
    pub enabled: bool,
    /// Length of a bucket, epoch-aligned, of arrival time (env `FLEETWATCH_ANOMALY_BUCKET`).
    pub bucket: HumanDuration,
    /// Seasonal period: a bucket is compared with the same slot of earlier seasons (env
    /// `FLEETWATCH_ANOMALY_SEASON`); whole days follow the group's wall clock; equal to
    /// `bucket` means no seasonality.
    pub season: HumanDuration,
    /// How far back the baseline looks (env `FLEETWATCH_ANOMALY_BASELINE`); also how long
    /// bucket sums are kept (plus one season).
    pub baseline: HumanDuration,
    /// A judged bucket is low when its sum is under this fraction of the baseline.
    pub below_fraction: f64,
    /// Fire after this many consecutive low judged buckets.
    pub buckets: u32,
    /// An open alert resolves after a judged bucket at or above this fraction (hysteresis).
    pub resolve_fraction: f64,
    /// The group is low (a holiday, a closed building: nothing fires) when the median ratio of
    /// the device's judged peers is under this.
    pub group_normal_fraction: f64,
    /// A bucket with fewer messages is not judged (a silent device is the heartbeat's case).
    pub min_messages: i64,
    /// A baseline needs at least this many earlier samples of the same slot.
    pub min_baseline_samples: usize,
    /// A baseline under this many impressions is not judged (chance alone empties it).
    pub min_baseline: f64,
    /// Fewer judged peers than this in the group: compare with the fleet instead.
    pub min_peers: usize,
    /// Most closed buckets one tick judges; after a longer pause older ones are skipped.
    pub max_buckets_per_tick: u32,
}

impl AnomalyConfig {
    /// The rule's thresholds.
    pub fn rule(&self) -> crate::domain::anomaly::Rule {
        crate::domain::anomaly::Rule {
            below_fraction: self.below_fraction,
            buckets: self.buckets,
            resolve_fraction: self.resolve_fraction,
            group_normal_fraction: self.group_normal_fraction,
            min_messages: self.min_messages,
            min_baseline_samples: self.min_baseline_samples,
            min_baseline: self.min_baseline,
            min_peers: self.min_peers,
        }
    }

    /// Bucket, season and baseline, checked.
    pub fn cadence(&self) -> Result<crate::domain::anomaly::Cadence, String> {
        crate::domain::anomaly::Cadence::new(
            self.bucket.delta(),
            self.season.delta(),
            self.baseline.delta(),
        )
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.cadence().map_err(anyhow::Error::msg)?;
        self.rule().validate().map_err(anyhow::Error::msg)?;
        if self.max_buckets_per_tick == 0 {
            bail!("anomaly.max_buckets_per_tick: expected at least 1");
        }
        Ok(())
    }
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        let rule = crate::domain::anomaly::Rule::default();
        Self {
            enabled: true,
            bucket: dur("1h"),
            season: dur("7d"),
            baseline: dur("28d"),
            below_fraction: rule.below_fraction,
            buckets: rule.buckets,
            resolve_fraction: rule.resolve_fraction,
            group_normal_fraction: rule.group_normal_fraction,
            min_messages: rule.min_messages,
            min_baseline_samples: rule.min_baseline_samples,
            min_baseline: rule.min_baseline,
            min_peers: rule.min_peers,
            max_buckets_per_tick: 24,
        }
    }
}

/// `[dashboard]`: staff access to the web pages (README "Dashboard access").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// A session with no request for this long ends (`FLEETWATCH_DASHBOARD_SESSION_IDLE`).
    pub session_idle: HumanDuration,
    /// A session ends this long after login however active (`FLEETWATCH_DASHBOARD_SESSION_MAX`).
    pub session_max: HumanDuration,
    /// The address staff open the dashboard at (`FLEETWATCH_DASHBOARD_PUBLIC_URL`). When it
    /// starts with `https://` the session cookie is `Secure`.
    pub public_url: Option<String>,
    /// Believe `X-Forwarded-Proto: https` (a TLS-terminating proxy in front) for the cookie's
    /// `Secure` flag and the CSRF origin check, and the first `X-Forwarded-For` address for
    /// the login rate limit. Off by default: without a proxy, any client could send them.
    pub trust_proxy_headers: bool,
    /// Failed logins allowed per user name, and per client address, within `login_window`.
    pub login_failures: u32,
    /// The window failed logins are counted in; the answer after too many is `429`.
    pub login_window: HumanDuration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            session_idle: dur("12h"),
            session_max: dur("7d"),
            public_url: None,
            trust_proxy_headers: false,
            login_failures: 5,
            login_window: dur("15m"),
        }
    }
}

impl DashboardConfig {
    /// Whether the dashboard is served over TLS as configured (`public_url` is `https://`).
    pub fn https(&self) -> bool {
        self.public_url.as_deref().is_some_and(|u| {
            u.get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: String,
    /// Most HTTP connections open at once; default: what the open-files limit leaves after the
    /// reserve for Postgres, MQTT and webhooks (README "Connections and timeouts").
    pub max_connections: Option<usize>,
    /// A request head must be complete this long after its first byte arrived.
    pub header_read_timeout: HumanDuration,
    /// A connection with no request in flight (and no request begun) is closed after this.
    pub idle_timeout: HumanDuration,
    /// A handler that has not answered within this gets `408` (`FLEETWATCH_HTTP_REQUEST_TIMEOUT`).
    /// The dashboard's event stream (`/live`) answers at once and then streams: not bounded.
    pub request_timeout: HumanDuration,
    /// Largest request body accepted; larger ones get `413`.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// How many connections to open; telemetry is spread over them with `$share`.
    pub connections: usize,
    /// Prefix of our own client IDs; any client ID starting with it is never a device.
    pub client_id_prefix: String,
    /// Stable name of this replica inside the client ID (default: the host name).
    pub instance_id: Option<String>,
    /// `$share/<group>/…` group name; used when `connections > 1` or when set explicitly.
    pub shared_group: Option<String>,
    /// Also subscribe the presence topics through `$share` (only for rule-republished topics:
    /// AWS's own `$aws/events/…` topics cannot be shared). Without it, presence is subscribed on
    /// the first connection only, so events are not received N times.
    pub share_presence: bool,
    pub presence_topics: Vec<String>,
    pub telemetry_topics: Vec<String>,
    pub keep_alive: HumanDuration,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Largest payload we process (AWS IoT Core's limit is 128 KB); larger ones are counted and
    /// skipped. The Maximum Packet Size we announce to the broker is set well above this
    /// (`ingest::mqtt::packet_limit`); the broker drops anything larger before we see it.
    pub max_payload_bytes: usize,
    /// MQTT 5 Session Expiry Interval: how long the broker keeps our session (subscriptions and
    /// queued QoS 1 messages) after we disconnect. Under MQTT 5 zero would mean no persistent
    /// session at all; AWS IoT Core caps it at its account limit (1 h unless raised).
    pub session_expiry: HumanDuration,
    /// Capacity of the channel between the MQTT poll loops and the processing side.
    pub channel_capacity: usize,
    pub backoff_min: HumanDuration,
    pub backoff_max: HumanDuration,
    /// A connection that stayed up this long resets the reconnect backoff to `backoff_min`; one
    /// that fails sooner keeps it growing, so no failure mode reconnects at a fast fixed rate.
    pub backoff_reset_after: HumanDuration,
    /// Publishes per second IoT Core delivers to one connection at most (its documented
    /// per-connection limit; beyond it messages are throttled, not queued).
    pub per_connection_limit: f64,
    /// Warn when a connection's receive rate reaches this fraction of `per_connection_limit`:
    /// `$share` spreads messages at random, so one connection hits the limit before the average
    /// does.
    pub per_connection_warn: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// 0-based topic level holding the device id (used when `device_id_field` is unset).
    pub device_id_level: usize,
    /// JSON field holding the device id; overrides the topic level when set.
    pub device_id_field: Option<String>,
    /// JSON field with the device's own time (epoch ms or RFC 3339); empty disables it.
    pub device_ts_field: String,
    /// 0-based topic level naming the device's group (building), if the topics carry one.
    pub group_level: Option<usize>,
    /// JSON field with the message's impressions count (env `FLEETWATCH_IMPRESSIONS_FIELD`);
    /// a message without it, or with an unusable value, counts as 1; empty means every
    /// message counts as 1.
    pub impressions_field: String,
    /// How often the coalescing buffer is written to Postgres.
    pub flush_interval: HumanDuration,
    /// Flush early when this many devices are buffered.
    pub flush_max_devices: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// Devices created from unknown clients beyond this number are counted and dropped.
    pub max_devices: i64,
    /// Per-device expectation overrides, keyed by device id.
    pub overrides: BTreeMap<String, ExpectationOverride>,
}

/// Expected interval and grace for one device or group.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExpectationOverride {
    pub expected_interval: Option<HumanDuration>,
    pub grace: Option<HumanDuration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Fleet default for the time between impressions (groups and devices override it).
    pub expected_interval: HumanDuration,
    /// Extra time after `late` before a gap alerts.
    pub grace: HumanDuration,
    /// A disconnect younger than this never alerts: the LTE blip allowance.
    pub disconnect_grace: HumanDuration,
    /// Detector period; an alert comes at most one tick after its deadline.
    pub tick: HumanDuration,
    /// A re-fire within this of the resolution reopens the same alert id.
    pub reopen_window: HumanDuration,
    /// Most devices evaluated per tick (the rest wait for the next one).
    pub max_due_per_tick: i64,
    /// Our canary message: published this often on our own topic...
    pub canary_interval: HumanDuration,
    /// ...and ingest is unhealthy when none came back within this.
    pub canary_timeout: HumanDuration,
    /// Topic of the canary (`{instance}` is replaced by the instance id).
    pub canary_topic: String,
    /// `flapping`: at least this many disconnects within `flapping_window`.
    pub flapping_disconnects: i64,
    pub flapping_window: HumanDuration,
    /// `client_id_conflict`: this many DUPLICATE_CLIENTID disconnects from 2+ sessions.
    pub conflict_disconnects: i64,
    pub conflict_window: HumanDuration,
    /// `throttled`: this many THROTTLED disconnects.
    pub throttled_disconnects: i64,
    pub throttled_window: HumanDuration,
    /// `auth_failure`: this many AUTH_ERROR/FORBIDDEN_ACCESS disconnects and connect_failed.
    pub auth_failures: i64,
    pub auth_window: HumanDuration,
    /// `group_outage`: at least this many devices of one group entering a gap within the window.
    pub group_outage_devices: i64,
    pub group_outage_window: HumanDuration,
    /// `fleet_outage`: at least this fraction of reporting devices in a gap...
    pub fleet_outage_fraction: f64,
    /// ...and at least this many of them.
    pub fleet_outage_min_devices: i64,
    /// `network_outage`: at least this fraction of one network's reporting devices (the network
    /// of their last connection, `[networks]` or the /16 and /32 defaults)...
    pub network_outage_fraction: f64,
    /// ...and at least this many of them...
    pub network_outage_min_devices: i64,
    /// ...in at least this many groups (one building is a `group_outage`, not a carrier's)...
    pub network_outage_min_groups: i64,
    /// ...went into a gap within this window of each other.
    pub network_outage_window: HumanDuration,
    /// Severity per alert kind, overriding the defaults.
    #[serde(deserialize_with = "severities")]
    pub severities: BTreeMap<Kind, Severity>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// IANA time zone for devices without a group.
    pub time_zone: TimeZone,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Bootstrap token with every scope (`FLEETWATCH_API_TOKEN`); not rate-limited.
    pub token: Option<Secret>,
    /// Sustained requests per second allowed to each stored token.
    pub rate_limit_per_second: f64,
    /// Requests a stored token may make at once after a quiet spell.
    pub rate_limit_burst: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            token: None,
            rate_limit_per_second: 20.0,
            rate_limit_burst: 40,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Presence events older than this (by arrival) are deleted.
    pub presence_events: HumanDuration,
    /// Webhook delivery attempts, and finished notifications, older than this are deleted.
    pub deliveries: HumanDuration,
    /// Alerts resolved longer ago than this are deleted with their trail.
    pub alerts: HumanDuration,
    /// CloudWatch samples older than this (by period start) are deleted; the metric rows stay.
    pub cloudwatch_samples: HumanDuration,
    /// Impression bucket sums (`impression_buckets`) older than this are deleted. Never less
    /// than `anomaly.baseline` + `anomaly.season` + 1 day whatever is set here
    /// ([`Config::retention`]): the baseline needs them.
    pub impression_buckets: HumanDuration,
    /// Hourly impression counts (`impressions_hourly`: the device page's chart) older than this
    /// are deleted.
    pub impressions_hourly: HumanDuration,
    /// How often the retention job runs.
    pub interval: HumanDuration,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupConfig {
    /// Human name (defaults to the id).
    pub name: Option<String>,
    /// IANA time zone, e.g. `Asia/Tokyo` (defaults to `fleet.time_zone`).
    pub time_zone: Option<TimeZone>,
    /// Regular expression on the device id; a matching device belongs to this group.
    pub device_pattern: Option<Pattern>,
    /// Overrides of the fleet's expected interval and grace.
    pub expected_interval: Option<HumanDuration>,
    pub grace: Option<HumanDuration>,
    /// Daily local-time windows without expectations, e.g. `"00:30-05:30"`.
    pub quiet_hours: Option<QuietHours>,
}

/// One `[[webhooks]]` endpoint (README "Webhooks").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Stable name: notifications are queued per endpoint name, so renaming an endpoint (or,
    /// without a name, reordering the list: the default is `webhook-<index>`) orphans its queue.
    pub name: Option<String>,
    /// Where to POST. For `format = "pagerduty"` it defaults to PagerDuty's Events API v2.
    pub url: String,
    pub format: WebhookFormat,
    /// The signing secret (`Fleetwatch-Signature`); `secret_file` reads it from a file instead.
    pub secret: Option<Secret>,
    pub secret_file: Option<PathBuf>,
    /// More secrets that also sign every request (one `v1=` each), for rotation.
    pub secrets: Vec<Secret>,
    /// PagerDuty integration key (required for `format = "pagerduty"`).
    pub routing_key: Option<Secret>,
    /// Only these alert kinds (empty: all).
    pub kinds: Vec<Kind>,
    /// Only alerts at least this severe.
    pub min_severity: Option<Severity>,
    /// Only alerts of these groups (empty: all, including alerts without a group).
    pub groups: Vec<String>,
    /// Per-request timeout.
    pub timeout: HumanDuration,
    pub send_resolved: bool,
    pub send_reminders: bool,
    /// `alert.reminder` this often while an alert stays firing and unacknowledged.
    pub repeat_interval: HumanDuration,
    /// Device alerts wait this long before their firing notification, so that a group or fleet
    /// outage can form and speak for them.
    pub group_wait: HumanDuration,
    /// `alert.resolved` waits this long (default: `group_wait`); if the alert reopens meanwhile
    /// neither the resolution nor the re-fire is sent.
    pub resolve_wait: Option<HumanDuration>,
    /// Retry schedule: give up (dead-letter) once a notification is this old...
    pub max_attempt_age: HumanDuration,
    /// ...retrying after a delay drawn between `backoff_min` and an exponentially growing cap
    /// of at most `backoff_max`.
    pub backoff_min: HumanDuration,
    pub backoff_max: HumanDuration,
    /// Requests in flight to this endpoint at once, at most. Endpoints are independent: a slow
    /// or hanging receiver ties up only its own.
    pub max_in_flight: usize,
}

/// The body format of a webhook endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// DESIGN.md §4: `{"event", "alert", "delivery_id", "sent_at"}`.
    #[default]
    Native,
    /// PagerDuty Events API v2.
    Pagerduty,
    /// Slack-compatible incoming webhook: `{"text": …}`.
    Slack,
}

impl WebhookConfig {
    /// The endpoint's name, `webhook-<index>` when not configured.
    pub fn name_at(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("webhook-{index}"))
    }

    /// Every signing secret, current first: `secret`, `secret_file`, then `secrets`.
    pub fn signing_secrets(&self) -> anyhow::Result<Vec<Secret>> {
        let mut out: Vec<Secret> = self.secret.iter().cloned().collect();
        if let Some(p) = &self.secret_file {
            let s = std::fs::read_to_string(p)
                .with_context(|| format!("reading secret_file {}", p.display()))?;
            out.push(Secret::new(s.trim_end_matches(['\r', '\n'])));
        }
        out.extend(self.secrets.iter().cloned());
        Ok(out)
    }

    /// The URL requests go to.
    pub fn target_url(&self) -> &str {
        if self.url.is_empty() && self.format == WebhookFormat::Pagerduty {
            "https://events.pagerduty.com/v2/enqueue"
        } else {
            &self.url
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            name: None,
            url: String::new(),
            format: WebhookFormat::Native,
            secret: None,
            secret_file: None,
            secrets: Vec::new(),
            routing_key: None,
            kinds: Vec::new(),
            min_severity: None,
            groups: Vec::new(),
            timeout: dur("10s"),
            send_resolved: true,
            send_reminders: true,
            repeat_interval: dur("4h"),
            group_wait: dur("30s"),
            resolve_wait: None,
            max_attempt_age: dur("24h"),
            backoff_min: dur("10s"),
            backoff_max: dur("1h"),
            max_in_flight: 4,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://localhost/fleetwatch"),
            max_connections: 16,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            max_connections: None,
            header_read_timeout: dur("10s"),
            idle_timeout: dur("60s"),
            request_timeout: dur("30s"),
            // The largest body the API takes is a silence (comment ≤ 4000 characters).
            max_body_bytes: 64 * 1024,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            connections: 1,
            client_id_prefix: "fleetwatch-".into(),
            instance_id: None,
            shared_group: None,
            share_presence: false,
            presence_topics: vec![
                "$aws/events/presence/connected/+".into(),
                "$aws/events/presence/disconnected/+".into(),
                "$aws/events/presence/connect_failed/+".into(),
            ],
            telemetry_topics: vec!["dt/+/impressions".into()],
            keep_alive: dur("30s"),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
            max_payload_bytes: 128 * 1024,
            session_expiry: dur("1h"),
            channel_capacity: 8192,
            backoff_min: dur("1s"),
            backoff_max: dur("60s"),
            backoff_reset_after: dur("30s"),
            per_connection_limit: 100.0,
            per_connection_warn: 0.8,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            device_id_level: 1,
            device_id_field: None,
            device_ts_field: "timestamp".into(),
            group_level: None,
            impressions_field: "count".into(),
            flush_interval: dur("1s"),
            flush_max_devices: 5000,
        }
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            max_devices: 50_000,
            overrides: BTreeMap::new(),
        }
    }
}

/// `[aws]`: the AWS pollers (CloudWatch metrics, the IoT registry). Off unless enabled; region
/// and credentials come from the standard chain (environment, profile, web identity, container
/// or instance role), endpoints from `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_CLOUDWATCH`,
/// `AWS_ENDPOINT_URL_IOT`. Nothing here ever stops the service from starting.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// Poll AWS at all (env `FLEETWATCH_AWS_ENABLED`).
    pub enabled: bool,
    /// Overrides the chain's region (`AWS_REGION`, the profile, instance metadata).
    pub region: Option<String>,
    /// A named profile of `~/.aws/config` instead of the chain's (`AWS_PROFILE`, `default`).
    pub profile: Option<String>,
    /// Consecutive failed polls of one poller before our own `aws_poll_failing` alert fires:
    /// one failure is a blip (a timeout, a deploy of the endpoint), several are a fault.
    pub failures_before_alert: u32,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            region: None,
            profile: None,
            failures_before_alert: 3,
        }
    }
}

/// `[cloudwatch]`: the `AWS/IoT` throttle and error metrics (only with `aws.enabled`).
/// The poller (`aws::cloudwatch`) documents what each key does to a poll.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudWatchConfig {
    /// Switches this poller off alone.
    pub enabled: bool,
    /// How often GetMetricData runs (env `FLEETWATCH_CLOUDWATCH_POLL`); the metric rules are
    /// judged at the same period.
    pub poll: HumanDuration,
    /// The namespace listed and polled (`AWS/IoT`; tests and demos use their own).
    pub namespace: String,
    /// List the namespace's throttle/error/failure metrics (every dimension set); off, only
    /// `metrics` is polled.
    pub discover: bool,
    /// How often discovery runs again (it also runs at start): new dimension sets appear
    /// when a new rule or protocol starts being used, rarely.
    pub discovery: HumanDuration,
    /// Metrics polled in addition to discovery's (or instead, with `discover = false`).
    pub metrics: Vec<CloudWatchMetricEntry>,
    /// Each poll re-reads this much before the last complete read: CloudWatch data lands
    /// minutes late, and re-reading replaces a sample with the latest figure.
    pub window: HumanDuration,
    /// Never read further back than this (after a restart, the gap is filled up to here).
    pub backfill: HumanDuration,
    /// Calls per second to CloudWatch at most, discovery included (the account's
    /// GetMetricData quota is 50/s, shared with dashboards and other tools).
    pub max_calls_per_second: f64,
    /// `[[cloudwatch.rules]]`: threshold rules on the polled metrics. Absent means the defaults
    /// (`domain::metric_rule::defaults`), an empty list (`rules = []`) means none. Judged
    /// whether or not the AWS poller runs (a simulator may fill the tables).
    pub rules: Option<Vec<crate::domain::metric_rule::MetricRule>>,
}

impl CloudWatchConfig {
    /// The metric rules in force: the configured ones, else the defaults.
    pub fn metric_rules(&self) -> Vec<crate::domain::metric_rule::MetricRule> {
        self.rules
            .clone()
            .unwrap_or_else(crate::domain::metric_rule::defaults)
    }
}

/// One explicitly configured metric: `{name = "Connect.AuthError", dimensions = {Protocol = "MQTT"}}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchMetricEntry {
    pub name: String,
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
}

impl Default for CloudWatchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll: dur("60s"),
            namespace: "AWS/IoT".into(),
            discover: true,
            discovery: dur("1h"),
            metrics: Vec::new(),
            window: dur("15m"),
            backfill: dur("3h"),
            max_calls_per_second: 5.0,
            rules: None,
        }
    }
}

impl CloudWatchConfig {
    /// The `cloudwatch.*` checks (CloudWatch's own limits: names 1..=255 characters, at most
    /// 30 dimensions, each name and value 1..=255 characters).
    fn validate(&self) -> anyhow::Result<()> {
        if self.poll.0 < Duration::from_secs(1) {
            bail!("cloudwatch.poll: expected at least 1s");
        }
        let ok_len = |s: &str| (1..=255).contains(&s.chars().count());
        if !ok_len(&self.namespace) {
            bail!("cloudwatch.namespace: expected 1 to 255 characters");
        }
        if self.discovery.0 < Duration::from_secs(1) {
            bail!("cloudwatch.discovery: expected at least 1s");
        }
        if self.backfill.0 < Duration::from_secs(60) {
            bail!("cloudwatch.backfill: expected at least 60s (one period)");
        }
        if self.backfill.0 > Duration::from_secs(15 * 86400) {
            bail!("cloudwatch.backfill: expected at most 15d (CloudWatch keeps 1-minute data 15 days)");
        }
        if self.window > self.backfill {
            bail!("cloudwatch.window: expected no more than cloudwatch.backfill");
        }
        if !(self.max_calls_per_second.is_finite()
            && (0.01..=50.0).contains(&self.max_calls_per_second))
        {
            bail!(
                "cloudwatch.max_calls_per_second: expected 0.01 to 50 (CloudWatch's quota), got {}",
                self.max_calls_per_second
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, m) in self.metrics.iter().enumerate() {
            let key = format!("cloudwatch.metrics[{i}]");
            if !ok_len(&m.name) {
                bail!("{key}.name: expected 1 to 255 characters, got {:?}", m.name);
            }
            if m.dimensions.len() > 30 {
                bail!("{key}.dimensions: expected at most 30 dimensions");
            }
            for (k, v) in &m.dimensions {
                if !ok_len(k) || !ok_len(v) {
                    bail!("{key}.dimensions: names and values must be 1 to 255 characters, got {k:?} = {v:?}");
                }
            }
            if !seen.insert((&m.name, &m.dimensions)) {
                bail!("{key}: {} with these dimensions is listed twice", m.name);
            }
        }
        if !self.discover && self.metrics.is_empty() && self.enabled {
            bail!("cloudwatch.metrics: expected at least one metric when cloudwatch.discover is off (or set cloudwatch.enabled = false)");
        }
        Ok(())
    }
}

/// `[inventory]`: the IoT registry (things, thing groups, attributes; only with `aws.enabled`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventoryConfig {
    /// Switches this poller off alone.
    pub enabled: bool,
    /// How often the registry is listed (env `FLEETWATCH_INVENTORY_SYNC`).
    pub sync: HumanDuration,
    /// A thing attribute naming the device's group instead of its thing groups (unset: thing
    /// groups decide).
    pub group_attribute: Option<String>,
    /// A thing attribute holding the device's MQTT client ID when it differs from the thing
    /// name (unset: client ID = thing name).
    pub client_id_attribute: Option<String>,
    /// Reconcile stored connectivity with the fleet index (`SearchIndex`); switches the
    /// `connectivity` poller off alone.
    pub reconcile_enabled: bool,
    /// How often the fleet index is read (env `FLEETWATCH_INVENTORY_RECONCILE`).
    pub reconcile: HumanDuration,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sync: dur("10m"),
            group_attribute: None,
            client_id_attribute: None,
            reconcile_enabled: true,
            reconcile: dur("10m"),
        }
    }
}

/// `[networks.<name>]`: one named network (a carrier's egress), as a list of prefixes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub prefixes: Vec<crate::domain::network::Prefix>,
}

/// `[address_drift]`: alert when a device connects from a network not seen for it within
/// `history` (README "Networks and address drift").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AddressDriftConfig {
    /// Off by default: on fleets without a single carrier every roaming device would alert
    /// (env `FLEETWATCH_ADDRESS_DRIFT_ENABLED`). History is recorded either way, so turning it
    /// on starts with a baseline.
    pub enabled: bool,
    /// A network counts as seen for a device if it connected from it within this; older
    /// history is deleted.
    pub history: HumanDuration,
    /// An `address_drift` alert resolves this long after the last connection judged drift.
    pub resolve_after: HumanDuration,
}

impl Default for AddressDriftConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            history: dur("30d"),
            resolve_after: dur("24h"),
        }
    }
}

/// Presence ingest: how far an event's own timestamp is trusted, and how many unknown clients'
/// failed connection attempts are stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// An event's timestamp counts for ordering as at most its arrival time plus this. AWS stamps
    /// lifecycle events itself, so one far ahead is forged or broken and must not pin a device's
    /// connectivity (with the "more than 30 minutes apart" rule it would, for up to a day).
    pub max_clock_skew: HumanDuration,
    /// `connect_failed` of clients that are not devices: at most this many *new* client IDs per
    /// window are stored (a client already stored keeps being stored while it keeps failing);
    /// the rest are counted (`fleetwatch_ingest_dropped_total{reason="unknown_client_cap"}`).
    pub unknown_failed_clients: usize,
    pub unknown_failed_window: HumanDuration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            max_clock_skew: dur("5m"),
            unknown_failed_clients: 100,
            unknown_failed_window: dur("10m"),
        }
    }
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            expected_interval: dur("5m"),
            grace: dur("5m"),
            disconnect_grace: dur("10m"),
            tick: dur("15s"),
            reopen_window: dur("30m"),
            max_due_per_tick: 10_000,
            canary_interval: dur("5s"),
            canary_timeout: dur("20s"),
            canary_topic: "fleetwatch/canary/{instance}".into(),
            // EMQX's 15 disconnects a minute catches reconnect loops; an LTE modem that drops
            // ten times in half an hour is already broken for viewers while 2-3 drops an hour
            // is ordinary churn, so the window is longer and the count lower.
            flapping_disconnects: 10,
            flapping_window: dur("30m"),
            conflict_disconnects: 3,
            conflict_window: dur("10m"),
            throttled_disconnects: 3,
            throttled_window: dur("10m"),
            auth_failures: 5,
            auth_window: dur("10m"),
            group_outage_devices: 3,
            group_outage_window: dur("10m"),
            fleet_outage_fraction: 0.3,
            fleet_outage_min_devices: 10,
            network_outage_fraction: 0.3,
            network_outage_min_devices: 5,
            network_outage_min_groups: 2,
            network_outage_window: dur("10m"),
            severities: BTreeMap::new(),
        }
    }
}

/// `[counts]`: upkeep of the fleet counts (`crate::fleet_counts`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CountsConfig {
    /// How often the appended count deltas are folded into one row per key (every replica;
    /// keeps the summary's read to a few hundred rows).
    pub fold: HumanDuration,
    /// How often the leader recounts the devices and firing alerts and corrects any drift (a
    /// full scan: about half a second at 100,000 devices).
    pub check: HumanDuration,
}

impl Default for CountsConfig {
    fn default() -> Self {
        Self {
            fold: dur("10s"),
            check: dur("10m"),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            presence_events: dur("90d"),
            deliveries: dur("30d"),
            alerts: dur("365d"),
            cloudwatch_samples: dur("30d"),
            impression_buckets: dur("36d"),
            impressions_hourly: dur("90d"),
            interval: dur("1h"),
        }
    }
}

/// Where the TLS material and address of the broker come from, parsed from `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerAddr {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!(
                "expected mqtt://host:port or mqtts://host:port, got {url:?}"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("expected a port number in {url:?}, got {p:?}"))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(format!("expected a host name in {url:?}"));
        }
        Ok(Self {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }
}

impl Config {
    /// The inhibition rules in force: the configured ones, else the defaults.
    pub fn inhibit_rules(&self) -> Vec<crate::domain::inhibit::InhibitRule> {
        self.inhibit
            .clone()
            .unwrap_or_else(crate::domain::inhibit::defaults)
    }

    /// The configured networks, checked (validation already refused bad ones; an error here
    /// only reaches a caller that skipped `load`).
    pub fn network_map(&self) -> Result<crate::domain::network::Networks, String> {
        crate::domain::network::Networks::new(
            self.networks
                .iter()
                .map(|(name, n)| (name.as_str(), n.prefixes.as_slice())),
        )
    }

    /// The retention periods in force: as configured, with `impression_buckets` raised to what
    /// the anomaly baseline reads (the baseline window, one more season for the oldest slot,
    /// and a day for DST shifts and the bucket being judged).
    pub fn retention(&self) -> RetentionConfig {
        let mut r = self.retention.clone();
        let needed = self.anomaly.baseline.0 + self.anomaly.season.0 + Duration::from_secs(86_400);
        if r.impression_buckets.0 < needed {
            r.impression_buckets = HumanDuration(needed);
        }
        r
    }

    /// Load from the file (if any) and the process environment, then validate.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    /// Like [`Config::load`] with an explicit environment (tests use this).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| env.get("FLEETWATCH_CONFIG").map(PathBuf::from));
        let mut cfg = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                Self::from_toml(&text)
                    .map_err(|e| anyhow::anyhow!("{e} (in config file {})", p.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse a TOML document. Errors name the key (`groups.tokyo.time_zone: …`): values are
    /// parsed here, not in a later validation pass that could say where.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                // a syntax error: where in the file is what helps
                anyhow::anyhow!("{inner}")
            } else {
                // a value: the key and what was wrong, without quoting the line (which may
                // hold a secret)
                anyhow::anyhow!("{path}: {}", inner.message())
            }
        })
    }

    fn apply_env(&mut self, env: &BTreeMap<String, String>) -> anyhow::Result<()> {
        fn duration(
            env: &BTreeMap<String, String>,
            key: &str,
        ) -> anyhow::Result<Option<HumanDuration>> {
            match env.get(key) {
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|e: String| anyhow::anyhow!("{key}: {e}")),
                None => Ok(None),
            }
        }
        if let Some(v) = env.get("DATABASE_URL") {
            self.database.url = Secret::new(v.clone());
        }
        if let Some(v) = env.get("FLEETWATCH_HTTP_ADDR") {
            self.http.addr = v.clone();
        }
        if let Some(v) = env.get("FLEETWATCH_HTTP_MAX_CONNECTIONS") {
            self.http.max_connections = Some(v.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "FLEETWATCH_HTTP_MAX_CONNECTIONS: expected a positive number, got {v:?}"
                )
            })?);
        }
        if let Some(v) = env.get("FLEETWATCH_MAX_DEVICES") {
            self.devices.max_devices = v.trim().parse().map_err(|_| {
                anyhow::anyhow!("FLEETWATCH_MAX_DEVICES: expected a number, got {v:?}")
            })?;
        }
        if let Some(d) = duration(env, "FLEETWATCH_HTTP_HEADER_READ_TIMEOUT")? {
            self.http.header_read_timeout = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_HTTP_IDLE_TIMEOUT")? {
            self.http.idle_timeout = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_HTTP_REQUEST_TIMEOUT")? {
            self.http.request_timeout = d;
        }
        if let Some(v) = env.get("FLEETWATCH_AWS_ENABLED") {
            self.aws.enabled = parse_bool(v).ok_or_else(|| {
                anyhow::anyhow!("FLEETWATCH_AWS_ENABLED: expected true or false, got {v:?}")
            })?;
        }
        if let Some(v) = env.get("FLEETWATCH_ADDRESS_DRIFT_ENABLED") {
            self.address_drift.enabled = parse_bool(v).ok_or_else(|| {
                anyhow::anyhow!(
                    "FLEETWATCH_ADDRESS_DRIFT_ENABLED: expected true or false, got {v:?}"
                )
            })?;
        }
        for (key, slot) in [
            (
                "FLEETWATCH_CLOUDWATCH_ENABLED",
                &mut self.cloudwatch.enabled,
            ),
            ("FLEETWATCH_INVENTORY_ENABLED", &mut self.inventory.enabled),
        ] {
            if let Some(v) = env.get(key) {
                *slot = parse_bool(v)
                    .ok_or_else(|| anyhow::anyhow!("{key}: expected true or false, got {v:?}"))?;
            }
        }
        if let Some(d) = duration(env, "FLEETWATCH_CLOUDWATCH_POLL")? {
            self.cloudwatch.poll = d;
        }
        if let Some(v) = env.get("FLEETWATCH_CLOUDWATCH_NAMESPACE") {
            self.cloudwatch.namespace = v.clone();
        }
        if let Some(d) = duration(env, "FLEETWATCH_CLOUDWATCH_WINDOW")? {
            self.cloudwatch.window = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_CLOUDWATCH_BACKFILL")? {
            self.cloudwatch.backfill = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_INVENTORY_SYNC")? {
            self.inventory.sync = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_INVENTORY_RECONCILE")? {
            self.inventory.reconcile = d;
        }
        if let Some(v) = env.get("FLEETWATCH_MQTT_URL") {
            self.mqtt.url = v.clone();
        }
        if let Some(v) = env.get("FLEETWATCH_TELEMETRY_TOPICS") {
            self.mqtt.telemetry_topics = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = env.get("FLEETWATCH_DEVICE_ID_LEVEL") {
            self.telemetry.device_id_level = v.trim().parse().map_err(|_| {
                anyhow::anyhow!("FLEETWATCH_DEVICE_ID_LEVEL: expected a topic level number (0-based), got {v:?}")
            })?;
        }
        if let Some(v) = env.get("FLEETWATCH_IMPRESSIONS_FIELD") {
            self.telemetry.impressions_field = v.clone();
        }
        if let Some(v) = env.get("FLEETWATCH_ANOMALY_ENABLED") {
            self.anomaly.enabled = v.trim().parse().map_err(|_| {
                anyhow::anyhow!("FLEETWATCH_ANOMALY_ENABLED: expected true or false, got {v:?}")
            })?;
        }
        if let Some(d) = duration(env, "FLEETWATCH_ANOMALY_BUCKET")? {
            self.anomaly.bucket = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_ANOMALY_SEASON")? {
            self.anomaly.season = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_ANOMALY_BASELINE")? {
            self.anomaly.baseline = d;
        }
        if let Some(v) = env.get("FLEETWATCH_DEVICE_TS_FIELD") {
            self.telemetry.device_ts_field = v.clone();
        }
        if let Some(d) = duration(env, "FLEETWATCH_EXPECTED_INTERVAL")? {
            self.detector.expected_interval = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_GRACE")? {
            self.detector.grace = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_PRESENCE_MAX_SKEW")? {
            self.presence.max_clock_skew = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_DISCONNECT_GRACE")? {
            self.detector.disconnect_grace = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_TICK")? {
            self.detector.tick = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_REOPEN_WINDOW")? {
            self.detector.reopen_window = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_CANARY_INTERVAL")? {
            self.detector.canary_interval = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_CANARY_TIMEOUT")? {
            self.detector.canary_timeout = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_FLUSH_INTERVAL")? {
            self.telemetry.flush_interval = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_DASHBOARD_SESSION_IDLE")? {
            self.dashboard.session_idle = d;
        }
        if let Some(d) = duration(env, "FLEETWATCH_DASHBOARD_SESSION_MAX")? {
            self.dashboard.session_max = d;
        }
        if let Some(v) = env.get("FLEETWATCH_DASHBOARD_PUBLIC_URL") {
            self.dashboard.public_url = (!v.is_empty()).then(|| v.clone());
        }
        if let Some(v) = env.get("FLEETWATCH_API_TOKEN") {
            if !v.is_empty() {
                self.api.token = Some(Secret::new(v.clone()));
            }
        }
        if let Some(v) = env.get("FLEETWATCH_MQTT_CONNECTIONS") {
            self.mqtt.connections = v.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "FLEETWATCH_MQTT_CONNECTIONS: expected a positive number, got {v:?}"
                )
            })?;
        }
        if let Some(v) = env.get("FLEETWATCH_INSTANCE_ID") {
            self.mqtt.instance_id = Some(v.clone());
        }
        if let Some(v) = env.get("FLEETWATCH_PRESENCE_TOPICS") {
            self.mqtt.presence_topics = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(url) = env.get("FLEETWATCH_WEBHOOK_URL") {
            let mut hook = WebhookConfig {
                name: Some("env".into()),
                url: url.clone(),
                secret: env
                    .get("FLEETWATCH_WEBHOOK_SECRET")
                    .map(|s| Secret::new(s.clone())),
                secret_file: env.get("FLEETWATCH_WEBHOOK_SECRET_FILE").map(PathBuf::from),
                ..WebhookConfig::default()
            };
            // Second-scale runs (tests, demos) need the env endpoint's timings too.
            if let Some(d) = duration(env, "FLEETWATCH_WEBHOOK_GROUP_WAIT")? {
                hook.group_wait = d;
            }
            if let Some(d) = duration(env, "FLEETWATCH_WEBHOOK_RESOLVE_WAIT")? {
                hook.resolve_wait = Some(d);
            }
            if let Some(d) = duration(env, "FLEETWATCH_WEBHOOK_REPEAT_INTERVAL")? {
                hook.repeat_interval = d;
            }
            if let Some(d) = duration(env, "FLEETWATCH_WEBHOOK_BACKOFF_MIN")? {
                hook.backoff_min = d;
            }
            self.webhooks.push(hook);
        }
        Ok(())
    }

    /// Every cross-field check ([`Config::load`] runs it; so does the demo on its own TOML).
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(u) = &self.dashboard.public_url {
            let lower = u.to_ascii_lowercase();
            if !(lower.starts_with("https://") || lower.starts_with("http://")) {
                bail!("dashboard.public_url: expected an http:// or https:// URL, got {u:?}");
            }
        }
        if self.dashboard.login_failures == 0 {
            bail!("dashboard.login_failures: expected a positive number");
        }
        BrokerAddr::parse(&self.mqtt.url).map_err(|e| anyhow::anyhow!("mqtt.url: {e}"))?;
        if self.mqtt.connections == 0 || self.mqtt.connections > 256 {
            bail!(
                "mqtt.connections: expected a number from 1 to 256, got {}",
                self.mqtt.connections
            );
        }
        if self.mqtt.telemetry_topics.is_empty() {
            bail!("mqtt.telemetry_topics: expected at least one topic filter");
        }
        for t in self
            .mqtt
            .telemetry_topics
            .iter()
            .chain(&self.mqtt.presence_topics)
        {
            validate_filter(t).map_err(|e| anyhow::anyhow!("mqtt topic filter {t:?}: {e}"))?;
        }
        if self.mqtt.client_id_prefix.is_empty() {
            bail!("mqtt.client_id_prefix: expected a non-empty prefix (our own clients must be recognisable)");
        }
        if self.mqtt.max_payload_bytes == 0 || self.mqtt.max_payload_bytes > 1024 * 1024 {
            bail!(
                "mqtt.max_payload_bytes: expected 1 to 1048576 bytes, got {}",
                self.mqtt.max_payload_bytes
            );
        }
        self.cloudwatch.validate()?;
        self.anomaly.validate()?;
        if self.inventory.sync.0 < Duration::from_secs(1) {
            bail!("inventory.sync: expected at least 1s");
        }
        if self.inventory.reconcile.0 < Duration::from_secs(1) {
            bail!("inventory.reconcile: expected at least 1s");
        }
        for (key, a) in [
            ("group_attribute", &self.inventory.group_attribute),
            ("client_id_attribute", &self.inventory.client_id_attribute),
        ] {
            if a.as_deref().is_some_and(|a| a.trim().is_empty()) {
                bail!("inventory.{key}: expected an attribute name (or leave it unset)");
            }
        }
        self.network_map().map_err(|e| anyhow::anyhow!("{e}"))?;
        if self.address_drift.history.0.is_zero() {
            bail!("address_drift.history: expected a positive duration");
        }
        if self.address_drift.resolve_after.0.is_zero() {
            bail!("address_drift.resolve_after: expected a positive duration");
        }
        let limit = self.mqtt.per_connection_limit;
        if !(limit.is_finite() && limit > 0.0) {
            bail!("mqtt.per_connection_limit: expected a positive number of publishes per second, got {limit}");
        }
        let warn = self.mqtt.per_connection_warn;
        if !(warn > 0.0 && warn <= 1.0) {
            bail!(
                "mqtt.per_connection_warn: expected a fraction above 0 and at most 1, got {warn}"
            );
        }
        if self.aws.failures_before_alert == 0 {
            bail!("aws.failures_before_alert: expected at least 1");
        }
        if self.mqtt.channel_capacity == 0 {
            bail!("mqtt.channel_capacity: expected a positive number");
        }
        if self.mqtt.backoff_min.0.is_zero() || self.mqtt.backoff_min > self.mqtt.backoff_max {
            bail!("mqtt.backoff_min: expected a positive duration no larger than mqtt.backoff_max");
        }
        if self.mqtt.backoff_reset_after.0.is_zero() {
            bail!("mqtt.backoff_reset_after: expected a positive duration");
        }
        // Zero would silently turn the persistent session off; u32::MAX seconds means "never"
        // in MQTT 5, which no broker should be asked for.
        let expiry = self.mqtt.session_expiry.0.as_secs();
        if expiry == 0 || expiry >= u64::from(u32::MAX) {
            bail!(
                "mqtt.session_expiry: expected at least 1s and under 136 years, got {:?}",
                self.mqtt.session_expiry
            );
        }
        if self.mqtt.keep_alive.0 < Duration::from_secs(5) {
            bail!(
                "mqtt.keep_alive: expected at least 5s, got {:?}",
                self.mqtt.keep_alive
            );
        }
        match (&self.mqtt.cert_file, &self.mqtt.key_file) {
            (Some(_), None) | (None, Some(_)) => {
                bail!("mqtt.cert_file and mqtt.key_file: expected both or neither")
            }
            _ => {}
        }
        for (k, d) in [
            (
                "detector.expected_interval",
                self.detector.expected_interval,
            ),
            ("detector.tick", self.detector.tick),
            ("telemetry.flush_interval", self.telemetry.flush_interval),
            ("retention.interval", self.retention.interval),
            ("counts.fold", self.counts.fold),
            ("counts.check", self.counts.check),
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("http.idle_timeout", self.http.idle_timeout),
            ("dashboard.session_idle", self.dashboard.session_idle),
            ("dashboard.session_max", self.dashboard.session_max),
            ("dashboard.login_window", self.dashboard.login_window),
        ] {
            if d.0.is_zero() {
                bail!("{k}: expected a positive duration");
            }
        }
        crate::domain::inhibit::validate(&self.inhibit_rules()).map_err(anyhow::Error::msg)?;
        crate::domain::metric_rule::validate(&self.cloudwatch.metric_rules())
            .map_err(anyhow::Error::msg)?;
        for (k, n) in [
            (
                "detector.flapping_disconnects",
                self.detector.flapping_disconnects,
            ),
            (
                "detector.conflict_disconnects",
                self.detector.conflict_disconnects,
            ),
            (
                "detector.throttled_disconnects",
                self.detector.throttled_disconnects,
            ),
            ("detector.auth_failures", self.detector.auth_failures),
            (
                "detector.group_outage_devices",
                self.detector.group_outage_devices,
            ),
            (
                "detector.fleet_outage_min_devices",
                self.detector.fleet_outage_min_devices,
            ),
            (
                "detector.network_outage_min_devices",
                self.detector.network_outage_min_devices,
            ),
            (
                "detector.network_outage_min_groups",
                self.detector.network_outage_min_groups,
            ),
            ("detector.max_due_per_tick", self.detector.max_due_per_tick),
        ] {
            if n < 1 {
                bail!("{k}: expected a positive number, got {n}");
            }
        }
        for (k, f) in [
            (
                "detector.fleet_outage_fraction",
                self.detector.fleet_outage_fraction,
            ),
            (
                "detector.network_outage_fraction",
                self.detector.network_outage_fraction,
            ),
        ] {
            if !(f > 0.0 && f <= 1.0) {
                bail!("{k}: expected a fraction in (0, 1], got {f}");
            }
        }
        if self.detector.canary_timeout <= self.detector.canary_interval {
            bail!("detector.canary_timeout: expected more than detector.canary_interval");
        }
        if !(self.api.rate_limit_per_second.is_finite() && self.api.rate_limit_per_second > 0.0) {
            bail!(
                "api.rate_limit_per_second: expected a positive number, got {}",
                self.api.rate_limit_per_second
            );
        }
        if self.api.rate_limit_burst == 0 {
            bail!("api.rate_limit_burst: expected a positive number");
        }
        if self.http.max_connections == Some(0) {
            bail!("http.max_connections: expected a positive number");
        }
        if self.http.max_body_bytes == 0 || self.http.max_body_bytes > 16 * 1024 * 1024 {
            bail!(
                "http.max_body_bytes: expected 1 to 16777216 bytes, got {}",
                self.http.max_body_bytes
            );
        }
        if self.telemetry.flush_max_devices == 0 {
            bail!("telemetry.flush_max_devices: expected a positive number");
        }
        if self.devices.max_devices < 0 {
            bail!("devices.max_devices: expected a non-negative number");
        }
        if self.presence.unknown_failed_window.0.is_zero() {
            bail!("presence.unknown_failed_window: expected a positive duration");
        }
        for (id, g) in &self.groups {
            crate::domain::identity::validate_id(id)
                .map_err(|e| anyhow::anyhow!("groups.{id}: {e}"))?;
            if g.expected_interval.is_some_and(|d| d.0.is_zero()) {
                bail!("groups.{id}.expected_interval: expected a positive duration");
            }
        }
        for (id, o) in &self.devices.overrides {
            if o.expected_interval.is_some_and(|d| d.0.is_zero()) {
                bail!("devices.overrides.{id}.expected_interval: expected a positive duration");
            }
        }
        for (client, device) in &self.client_ids {
            crate::domain::identity::validate_id(device)
                .map_err(|e| anyhow::anyhow!("client_ids.{client}: {e}"))?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let target = w.target_url();
            if !(target.starts_with("http://") || target.starts_with("https://")) {
                // Not quoting it: the URL is often the endpoint's credential.
                bail!("webhooks[{i}].url: expected an http:// or https:// URL");
            }
            let name = w.name_at(i);
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                bail!("webhooks[{i}].name: expected 1 to 64 letters, digits, '-', '_' or '.', got {name:?}");
            }
            if !names.insert(name.clone()) {
                bail!("webhooks[{i}].name: {name:?} is used by another endpoint");
            }
            w.signing_secrets()
                .map_err(|e| anyhow::anyhow!("webhooks[{i}].secret_file: {e:#}"))?;
            if w.format == WebhookFormat::Pagerduty
                && w.routing_key.as_ref().is_none_or(|k| k.expose().is_empty())
            {
                bail!("webhooks[{i}].routing_key: expected a PagerDuty integration key for format = \"pagerduty\"");
            }
            for (k, d) in [
                ("timeout", w.timeout),
                ("repeat_interval", w.repeat_interval),
                ("max_attempt_age", w.max_attempt_age),
                ("backoff_min", w.backoff_min),
            ] {
                if d.0.is_zero() {
                    bail!("webhooks[{i}].{k}: expected a positive duration");
                }
            }
            if !(1..=64).contains(&w.max_in_flight) {
                bail!(
                    "webhooks[{i}].max_in_flight: expected a number from 1 to 64, got {}",
                    w.max_in_flight
                );
            }
            if w.backoff_min > w.backoff_max {
                bail!("webhooks[{i}].backoff_min: expected no more than webhooks[{i}].backoff_max");
            }
        }
        Ok(())
    }

    /// The stable instance name used inside our client IDs.
    pub fn instance_id(&self) -> String {
        self.mqtt.instance_id.clone().unwrap_or_else(|| {
            gethostname::gethostname()
                .to_string_lossy()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect()
        })
    }
}

impl crate::domain::identity::Identity {
    /// The identity rules of this configuration; group patterns are tried in group-id order.
    pub fn from_config(cfg: &Config) -> Self {
        Self::new(
            cfg.mqtt.client_id_prefix.clone(),
            cfg.client_ids.clone().into_iter().collect(),
            cfg.groups
                .iter()
                .filter_map(|(id, g)| Some((id.clone(), g.device_pattern.as_ref()?.0.clone()))),
        )
    }
}

/// Parse an IANA time zone name.
pub fn parse_tz(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>()
        .map_err(|_| format!("expected an IANA time zone such as UTC or Asia/Tokyo, got {name:?}"))
}

/// An on/off environment value: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("empty".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i != levels.len() - 1) {
            return Err("'#' must be a whole level and the last one".into());
        }
        if l.contains('+') && *l != "+" {
            return Err("'+' must be a whole level".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn counts_keys_parse_and_refuse_zero() {
        let d = Config::default();
        assert_eq!(d.counts.fold.0, Duration::from_secs(10));
        assert_eq!(d.counts.check.0, Duration::from_secs(600));
        let c = Config::from_toml("[counts]\nfold = \"2s\"\ncheck = \"1h\"").unwrap();
        assert_eq!(c.counts.fold.0, Duration::from_secs(2));
        assert_eq!(c.counts.check.0, Duration::from_secs(3600));
        c.validate().unwrap();
        let zero = Config::from_toml("[counts]\ncheck = \"0s\"").unwrap();
        assert!(zero
            .validate()
            .unwrap_err()
            .to_string()
            .contains("counts.check"));
        assert!(Config::from_toml("[counts]\nrecount = \"1m\"").is_err());
    }

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let c = Config::load_with_env(None, &env(&[])).unwrap();
        assert_eq!(c.http.addr, "127.0.0.1:8080");
        assert_eq!(c.mqtt.url, "mqtt://127.0.0.1:1883");
        assert_eq!(c.mqtt.telemetry_topics, vec!["dt/+/impressions"]);
        assert_eq!(c.telemetry.device_id_level, 1);
        assert_eq!(c.telemetry.device_ts_field, "timestamp");
        assert_eq!(c.detector.expected_interval.0, Duration::from_secs(300));
        assert_eq!(c.detector.grace.0, Duration::from_secs(300));
        assert_eq!(c.detector.disconnect_grace.0, Duration::from_secs(600));
        assert_eq!(c.detector.tick.0, Duration::from_secs(15));
        assert_eq!(c.database.url.expose(), "postgres://localhost/fleetwatch");
        assert_eq!(c.http.max_connections, None);
        assert_eq!(c.http.header_read_timeout, dur("10s"));
        assert_eq!(c.http.idle_timeout, dur("60s"));
        assert_eq!(c.http.max_body_bytes, 65536);
    }

    #[test]
    fn the_device_cap_takes_a_million_from_env_and_refuses_nonsense() {
        let c =
            Config::load_with_env(None, &env(&[("FLEETWATCH_MAX_DEVICES", "1000000")])).unwrap();
        assert_eq!(c.devices.max_devices, 1_000_000);
        for bad in ["lots", "-1"] {
            let e = Config::load_with_env(None, &env(&[("FLEETWATCH_MAX_DEVICES", bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("max_devices") || e.contains("MAX_DEVICES"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn http_limits_from_env() {
        let c = Config::load_with_env(
            None,
            &env(&[
                ("FLEETWATCH_HTTP_MAX_CONNECTIONS", "64"),
                ("FLEETWATCH_HTTP_HEADER_READ_TIMEOUT", "2s"),
                ("FLEETWATCH_HTTP_IDLE_TIMEOUT", "500ms"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http.max_connections, Some(64));
        assert_eq!(c.http.header_read_timeout, dur("2s"));
        assert_eq!(c.http.idle_timeout, dur("500ms"));
        let e = Config::load_with_env(None, &env(&[("FLEETWATCH_HTTP_MAX_CONNECTIONS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.max_connections"), "{e}");
        let e = Config::load_with_env(None, &env(&[("FLEETWATCH_HTTP_IDLE_TIMEOUT", "0s")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.idle_timeout"), "{e}");
    }

    #[test]
    fn dashboard_keys_defaults_env_and_validation() {
        let c = Config::load_with_env(None, &env(&[])).unwrap();
        assert_eq!(c.dashboard.session_idle.0, Duration::from_secs(12 * 3600));
        assert_eq!(c.dashboard.session_max.0, Duration::from_secs(7 * 86400));
        assert_eq!(c.dashboard.login_failures, 5);
        assert_eq!(c.dashboard.login_window.0, Duration::from_secs(900));
        assert!(!c.dashboard.https() && !c.dashboard.trust_proxy_headers);
        let c = Config::load_with_env(
            None,
            &env(&[
                ("FLEETWATCH_DASHBOARD_SESSION_IDLE", "30m"),
                ("FLEETWATCH_DASHBOARD_SESSION_MAX", "1d"),
                (
                    "FLEETWATCH_DASHBOARD_PUBLIC_URL",
                    "HTTPS://fleet.example.com",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.dashboard.session_idle.0, Duration::from_secs(1800));
        assert_eq!(c.dashboard.session_max.0, Duration::from_secs(86400));
        assert!(c.dashboard.https());
        let c = Config::from_toml(
            "[dashboard]\ntrust_proxy_headers = true\nlogin_failures = 3\nlogin_window = \"1h\"\n",
        )
        .unwrap();
        assert!(c.dashboard.trust_proxy_headers);
        assert_eq!(c.dashboard.login_failures, 3);
        for (vars, key) in [
            (
                ("FLEETWATCH_DASHBOARD_SESSION_IDLE", "0s"),
                "dashboard.session_idle",
            ),
            (
                ("FLEETWATCH_DASHBOARD_SESSION_MAX", "soon"),
                "FLEETWATCH_DASHBOARD_SESSION_MAX",
            ),
            (
                ("FLEETWATCH_DASHBOARD_PUBLIC_URL", "fleet.example.com"),
                "dashboard.public_url",
            ),
        ] {
            let e = Config::load_with_env(None, &env(&[vars]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
        assert!(Config::from_toml("[dashboard]\nsession = \"1h\"\n").is_err());
    }

    #[test]
    fn env_overrides_apply() {
        let c = Config::load_with_env(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://u:pw@db/x"),
                ("FLEETWATCH_HTTP_ADDR", "0.0.0.0:9"),
                ("FLEETWATCH_MQTT_URL", "mqtts://iot.example:8883"),
                ("FLEETWATCH_TELEMETRY_TOPICS", "a/+/b, c/#"),
                ("FLEETWATCH_DEVICE_ID_LEVEL", "2"),
                ("FLEETWATCH_DEVICE_TS_FIELD", "ts"),
                ("FLEETWATCH_EXPECTED_INTERVAL", "500ms"),
                ("FLEETWATCH_GRACE", "2h"),
                ("FLEETWATCH_DISCONNECT_GRACE", "30s"),
                ("FLEETWATCH_TICK", "1s"),
                ("FLEETWATCH_API_TOKEN", "tok"),
                ("FLEETWATCH_WEBHOOK_URL", "http://hook"),
                ("FLEETWATCH_WEBHOOK_SECRET", "s3cret"),
                ("FLEETWATCH_WEBHOOK_GROUP_WAIT", "1s"),
                ("FLEETWATCH_WEBHOOK_RESOLVE_WAIT", "2s"),
                ("FLEETWATCH_WEBHOOK_REPEAT_INTERVAL", "1m"),
                ("FLEETWATCH_WEBHOOK_BACKOFF_MIN", "200ms"),
            ]),
        )
        .unwrap();
        assert_eq!(c.database.url.expose(), "postgres://u:pw@db/x");
        assert_eq!(c.http.addr, "0.0.0.0:9");
        assert_eq!(c.mqtt.telemetry_topics, vec!["a/+/b", "c/#"]);
        assert_eq!(c.telemetry.device_id_level, 2);
        assert_eq!(c.telemetry.device_ts_field, "ts");
        assert_eq!(c.detector.expected_interval.0, Duration::from_millis(500));
        assert_eq!(c.detector.grace.0, Duration::from_secs(7200));
        assert_eq!(c.detector.disconnect_grace.0, Duration::from_secs(30));
        assert_eq!(c.detector.tick.0, Duration::from_secs(1));
        assert_eq!(c.api.token.as_ref().unwrap().expose(), "tok");
        assert_eq!(c.webhooks.len(), 1);
        let w = &c.webhooks[0];
        assert_eq!(w.group_wait, dur("1s"));
        assert_eq!(w.resolve_wait, Some(dur("2s")));
        assert_eq!(w.repeat_interval, dur("1m"));
        assert_eq!(w.backoff_min, dur("200ms"));
    }

    #[test]
    fn aws_switches_from_the_environment() {
        let c = Config::load_with_env(
            None,
            &env(&[
                ("FLEETWATCH_AWS_ENABLED", "true"),
                ("FLEETWATCH_CLOUDWATCH_ENABLED", "false"),
                ("FLEETWATCH_INVENTORY_ENABLED", "0"),
                ("FLEETWATCH_CLOUDWATCH_POLL", "5s"),
                ("FLEETWATCH_INVENTORY_SYNC", "30s"),
            ]),
        )
        .unwrap();
        assert!(c.aws.enabled && !c.cloudwatch.enabled && !c.inventory.enabled);
        assert_eq!(c.cloudwatch.poll, dur("5s"));
        assert_eq!(c.inventory.sync, dur("30s"));
        let d = Config::default();
        assert!(!d.aws.enabled && d.cloudwatch.enabled && d.inventory.enabled);
        let e = Config::load_with_env(None, &env(&[("FLEETWATCH_INVENTORY_ENABLED", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("FLEETWATCH_INVENTORY_ENABLED"), "{e}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = Config::load_with_env(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://u:hunter2@db/x"),
                ("FLEETWATCH_API_TOKEN", "supersecrettoken"),
                ("FLEETWATCH_WEBHOOK_URL", "http://hook"),
                ("FLEETWATCH_WEBHOOK_SECRET", "whsecret"),
            ]),
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("supersecrettoken"));
        assert!(!dbg.contains("whsecret"));
        assert!(dbg.contains("[redacted]"));
    }

    #[test]
    fn wrong_values_name_the_key() {
        let e = Config::load_with_env(None, &env(&[("FLEETWATCH_GRACE", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLEETWATCH_GRACE") && e.contains("duration"),
            "{e}"
        );

        let e = Config::load_with_env(None, &env(&[("FLEETWATCH_MQTT_URL", "http://x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.url"), "{e}");

        let e = Config::from_toml("[detector]\ngrace = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("grace"), "{e}");

        let e = Config::from_toml("[detector]\ngrace = \"five minutes please\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("grace") && e.contains("duration"), "{e}");

        let e = Config::from_toml("[mqtt]\nnot_a_key = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not_a_key"), "{e}");

        // under MQTT 5 a zero expiry would silently drop the persistent session
        let c = Config::from_toml("[mqtt]\nsession_expiry = \"0s\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("mqtt.session_expiry"), "{e}");
        let c = Config::from_toml("[mqtt]\nbackoff_reset_after = \"0s\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("mqtt.backoff_reset_after"), "{e}");

        // values with a syntax of their own are parsed at load, the error naming the key
        for (toml, key, says) in [
            (
                "[groups.tokyo]\ntime_zone = \"Mars/Olympus\"\n",
                "groups.tokyo.time_zone",
                "IANA time zone",
            ),
            (
                "[fleet]\ntime_zone = \"Nowhere\"\n",
                "fleet.time_zone",
                "IANA",
            ),
            (
                "[groups.b1]\ndevice_pattern = \"([\"\n",
                "groups.b1.device_pattern",
                "regular expression",
            ),
            (
                "[groups.b1]\nquiet_hours = \"25:00-03:00\"\n",
                "groups.b1.quiet_hours",
                "25:00",
            ),
            (
                "[detector.severities]\nflapping = \"loud\"\n",
                "detector.severities",
                "flapping: expected one of critical,",
            ),
            (
                "[detector.severities]\nflappy = \"info\"\n",
                "detector.severities",
                "flappy: expected one of heartbeat_gap,",
            ),
            (
                "[[webhooks]]\nurl = \"http://x\"\nmin_severity = \"loud\"\n",
                "webhooks[0].min_severity",
                "critical",
            ),
            (
                "[[webhooks]]\nurl = \"http://x\"\nkinds = [\"nope\"]\n",
                "webhooks[0].kinds",
                "heartbeat_gap",
            ),
        ] {
            let e = format!("{:#}", Config::from_toml(toml).unwrap_err());
            assert!(e.contains(key) && e.contains(says), "{toml}: {e}");
        }
        let c = Config::from_toml(
            "[detector.severities]\nflapping = \"info\"\n[groups.t]\nquiet_hours = \"22:00-06:00\"\ntime_zone = \"Asia/Tokyo\"\n",
        )
        .unwrap();
        assert_eq!(c.detector.severities[&Kind::Flapping], Severity::Info);
        assert_eq!(
            c.groups["t"].time_zone,
            Some(TimeZone(chrono_tz::Tz::Asia__Tokyo))
        );
        assert_eq!(
            c.groups["t"].quiet_hours,
            Some("22:00-06:00".parse().unwrap())
        );

        let c = Config::from_toml("[mqtt]\ntelemetry_topics = [\"a/b#\"]\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("a/b#"));
    }

    #[test]
    fn full_file_parses() {
        let c = Config::from_toml(
            r#"
            [mqtt]
            url = "mqtts://abc-ats.iot.eu-west-1.amazonaws.com:443"
            connections = 4
            instance_id = "eu1"
            ca_file = "/etc/ca.pem"
            cert_file = "/etc/cert.pem"
            key_file = "/etc/key.pem"

            [telemetry]
            device_id_field = "device"
            group_level = 2

            [groups.tokyo-hq]
            name = "Tokyo HQ"
            time_zone = "Asia/Tokyo"
            device_pattern = "^tky-"

            [client_ids]
            bridgeawsiot-7 = "screen-7"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.mqtt.connections, 4);
        assert_eq!(c.client_ids["bridgeawsiot-7"], "screen-7");
        assert_eq!(
            c.groups["tokyo-hq"].time_zone.map(TimeZone::name),
            Some("Asia/Tokyo")
        );
        assert_eq!(c.instance_id(), "eu1");
    }

    #[test]
    fn broker_addr_parses() {
        assert_eq!(
            BrokerAddr::parse("mqtts://a.b:443").unwrap(),
            BrokerAddr {
                tls: true,
                host: "a.b".into(),
                port: 443
            }
        );
        assert_eq!(BrokerAddr::parse("mqtt://h").unwrap().port, 1883);
        assert!(BrokerAddr::parse("tcp://h:1").is_err());
        assert!(BrokerAddr::parse("mqtt://h:notaport").is_err());
    }

    #[test]
    fn networks_address_drift_and_the_connection_limit() {
        let c = Config::default();
        assert!(!c.address_drift.enabled);
        assert_eq!(c.address_drift.history.0, Duration::from_secs(30 * 86400));
        assert_eq!(c.address_drift.resolve_after.0, Duration::from_secs(86400));
        assert_eq!(c.mqtt.per_connection_limit, 100.0);
        assert_eq!(c.mqtt.per_connection_warn, 0.8);
        assert!(c.network_map().unwrap().is_empty());

        let c = Config::from_toml(
            "[networks.carrier-a]\nprefixes = [\"203.0.113.0/24\", \"2001:db8::/32\"]\n\
             [address_drift]\nenabled = true\nhistory = \"7d\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let n = c.network_map().unwrap();
        assert_eq!(n.classify("203.0.113.9").unwrap().1.name, "carrier-a");
        assert_eq!(c.address_drift.history.0, Duration::from_secs(7 * 86400));

        // a bad prefix names its key at parse time
        let e = Config::from_toml(
            "[networks.carrier-a]\nprefixes = [\"203.0.113.0/24\", \"203.0.113.5/24\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("networks.carrier-a.prefixes[1]") && e.contains("host bits"),
            "{e}"
        );
        // an overlap across networks names both keys at validation
        let c = Config::from_toml(
            "[networks.a]\nprefixes = [\"203.0.113.0/24\"]\n[networks.b]\nprefixes = [\"203.0.113.0/24\"]\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("networks.b.prefixes[0]") && e.contains("networks.a"),
            "{e}"
        );
        let e = Config::from_toml("[networks.a]\nprefix = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefix"), "{e}");

        for (toml, key) in [
            (
                "[mqtt]\nper_connection_limit = 0.0\n",
                "mqtt.per_connection_limit",
            ),
            (
                "[mqtt]\nper_connection_warn = 1.5\n",
                "mqtt.per_connection_warn",
            ),
            (
                "[mqtt]\nper_connection_warn = 0.0\n",
                "mqtt.per_connection_warn",
            ),
            (
                "[address_drift]\nhistory = \"0s\"\n",
                "address_drift.history",
            ),
            (
                "[address_drift]\nresolve_after = \"0s\"\n",
                "address_drift.resolve_after",
            ),
        ] {
            let e = Config::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
        // as the README writes them: an integer limit is a number of publishes per second
        let c =
            Config::from_toml("[mqtt]\nper_connection_limit = 100\nper_connection_warn = 0.8\n")
                .unwrap();
        assert_eq!(c.mqtt.per_connection_limit, 100.0);
        let c = Config::load_with_env(None, &env(&[("FLEETWATCH_ADDRESS_DRIFT_ENABLED", "true")]))
            .unwrap();
        assert!(c.address_drift.enabled);
        assert!(Config::load_with_env(
            None,
            &env(&[("FLEETWATCH_ADDRESS_DRIFT_ENABLED", "maybe")])
        )
        .unwrap_err()
        .to_string()
        .contains("FLEETWATCH_ADDRESS_DRIFT_ENABLED"));
    }
}

#[cfg(test)]
mod metric_rule_tests {
    use super::*;

    #[test]
    fn cloudwatch_rules_parse_default_and_name_the_bad_key() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(
            c.cloudwatch.metric_rules(),
            crate::domain::metric_rule::defaults()
        );
        let none = Config::from_toml("[cloudwatch]\nrules = []").unwrap();
        assert!(none.cloudwatch.metric_rules().is_empty());
        let c = Config::from_toml(
            r#"
            [[cloudwatch.rules]]
            metric = "Connect.ClientIDThrottle"
            dimensions = { Protocol = "MQTT" }
            window = "10m"
            warning = 5
            critical = 100.5
            resolve_below = 1
            clear_for = "3m"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let r = &c.cloudwatch.metric_rules()[0];
        assert_eq!(r.window, Duration::from_secs(600));
        assert_eq!(r.clear_for, Duration::from_secs(180));
        assert_eq!(
            (r.warning, r.critical, r.resolve_below),
            (Some(5.0), Some(100.5), Some(1.0))
        );
        assert_eq!(r.key(), "Connect.ClientIDThrottle{Protocol=MQTT}/10m");

        let c = Config::from_toml(
            "[[cloudwatch.rules]]\nmetric = \"Connect.Throttle\"\nwindow = \"5m\"\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("cloudwatch.rules[0].warning"), "{e}");
        let e = Config::from_toml(
            "[[cloudwatch.rules]]\nmetric = \"X\"\nwindow = \"soon\"\nwarning = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cloudwatch.rules[0].window"), "{e}");
        let e = Config::from_toml(
            "[[cloudwatch.rules]]\nmetric = \"X\"\nwindow = \"5m\"\nwarning = 1\nbogus = 2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}

#[cfg(test)]
mod inventory_config_tests {
    use super::*;

    #[test]
    fn inventory_keys_defaults_env_and_validation() {
        let c = Config::default();
        assert_eq!(c.inventory.reconcile.0, Duration::from_secs(600));
        assert!(c.inventory.reconcile_enabled);
        assert!(c.inventory.group_attribute.is_none());
        let env: BTreeMap<String, String> = [(
            "FLEETWATCH_INVENTORY_RECONCILE".to_string(),
            "30s".to_string(),
        )]
        .into();
        let c = Config::load_with_env(None, &env).unwrap();
        assert_eq!(c.inventory.reconcile.0, Duration::from_secs(30));
        let c = Config::from_toml(
            "[inventory]\ngroup_attribute = \"building\"\nclient_id_attribute = \"mqtt_client\"",
        )
        .unwrap();
        assert_eq!(c.inventory.group_attribute.as_deref(), Some("building"));
        let mut bad = Config::default();
        bad.inventory.group_attribute = Some(" ".into());
        assert!(format!("{:#}", bad.validate().unwrap_err()).contains("inventory.group_attribute"));
        let mut bad = Config::default();
        bad.inventory.reconcile = "100ms".parse().unwrap();
        assert!(format!("{:#}", bad.validate().unwrap_err()).contains("inventory.reconcile"));
    }
}

#[cfg(test)]
mod anomaly_config_tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        Config::load_with_env(None, &env(pairs))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_and_env_overrides() {
        let c = Config::load_with_env(None, &env(&[])).unwrap();
        assert_eq!(c.telemetry.impressions_field, "count");
        assert!(c.anomaly.enabled);
        assert_eq!(c.anomaly.bucket.0, Duration::from_secs(3600));
        assert_eq!(c.anomaly.season.0, Duration::from_secs(7 * 86400));
        assert_eq!(c.anomaly.baseline.0, Duration::from_secs(28 * 86400));
        assert_eq!(c.anomaly.rule(), crate::domain::anomaly::Rule::default());
        assert_eq!(c.anomaly.cadence().unwrap().seasons(), 4);
        assert_eq!(
            c.retention().impression_buckets.0,
            Duration::from_secs(36 * 86400)
        );
        let c = Config::load_with_env(
            None,
            &env(&[
                ("FLEETWATCH_IMPRESSIONS_FIELD", "people"),
                ("FLEETWATCH_ANOMALY_BUCKET", "2s"),
                ("FLEETWATCH_ANOMALY_SEASON", "10s"),
                ("FLEETWATCH_ANOMALY_BASELINE", "40s"),
                ("FLEETWATCH_ANOMALY_ENABLED", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(c.telemetry.impressions_field, "people");
        assert!(!c.anomaly.enabled);
        assert_eq!(c.anomaly.cadence().unwrap().seasons(), 4);
        let c = Config::from_toml(
            "[anomaly]\nbucket = \"15m\"\nseason = \"1d\"\nbaseline = \"14d\"\nbelow_fraction = 0.1\nbuckets = 3\nmin_peers = 4\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.anomaly.rule().buckets, 3);
        let c = Config::from_toml(
            "[anomaly]\nbaseline = \"56d\"\n[retention]\nimpression_buckets = \"1d\"\n",
        )
        .unwrap();
        assert_eq!(
            c.retention().impression_buckets.0,
            Duration::from_secs(64 * 86400)
        );
        assert!(Config::from_toml("[anomaly]\nbukket = \"1h\"\n")
            .unwrap_err()
            .to_string()
            .contains("bukket"));
    }

    #[test]
    fn bad_settings_name_the_key() {
        assert!(err(&[("FLEETWATCH_ANOMALY_BUCKET", "soon")]).contains("FLEETWATCH_ANOMALY_BUCKET"));
        assert!(
            err(&[("FLEETWATCH_ANOMALY_ENABLED", "maybe")]).contains("FLEETWATCH_ANOMALY_ENABLED")
        );
        assert!(err(&[("FLEETWATCH_ANOMALY_BUCKET", "500ms")]).starts_with("anomaly.bucket"));
        assert!(err(&[("FLEETWATCH_ANOMALY_SEASON", "90m")]).starts_with("anomaly.season"));
        assert!(err(&[("FLEETWATCH_ANOMALY_BASELINE", "6d")]).starts_with("anomaly.baseline"));
        for (toml, key) in [
            ("below_fraction = 1.5", "anomaly.below_fraction"),
            ("below_fraction = 0.6", "anomaly.resolve_fraction"),
            ("buckets = 0", "anomaly.buckets"),
            ("min_messages = 0", "anomaly.min_messages"),
            ("max_buckets_per_tick = 0", "anomaly.max_buckets_per_tick"),
        ] {
            let c = Config::from_toml(&format!("[anomaly]\n{toml}\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{toml}: {e}");
        }
    }
}
