//! The pool of MQTT connections. Each connection speaks MQTT 5, has a unique client ID
//! (`<prefix><instance_id>-<n>`), a persistent session (clean start off and a Session Expiry
//! Interval above zero, so QoS 1 messages sent while we were briefly away are still delivered),
//! and a poll loop that never blocks on anything but the bounded channel to the processing side.
//!
//! No message may stop ingest. A packet over the client's own size limit is a fatal connection
//! error, and a persistent session redelivers it after every reconnect, for ever. So we announce
//! a Maximum Packet Size in CONNECT equal to that limit: the broker then drops larger messages
//! for us, unseen (MQTT 5 §3.1.2.11.4). Below it, payloads over `max_payload_bytes` (128 KB) are
//! skipped and counted here.
//!
//! rumqttc reconnects as soon as `poll` is called again after an error; AWS IoT Core allows one
//! CONNECT per second per client ID, so after every error we wait a capped exponential backoff
//! with jitter first, reset only by a connection that stayed up for `backoff_reset_after`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use rand::Rng;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Incoming;
use crate::clock::SharedClock;
use crate::config::{BrokerAddr, Config};
use crate::domain::DropReason;
use crate::logging::RateLimitedWarn;
use crate::metrics::Metrics;

/// The smallest packet limit we use: well above AWS IoT Core's 128 KB payload limit, so that
/// what a device may legitimately send always reaches us, and what is a little larger is seen,
/// counted and skipped rather than dropped unseen by the broker.
pub const MIN_PACKET_LIMIT: usize = 256 * 1024;

/// Our packet limit: announced to the broker as the MQTT 5 Maximum Packet Size and, through the
/// same option, rumqttc's own limit on incoming packets, so the two cannot disagree. The broker
/// compares it with the whole packet, rumqttc with the packet minus its fixed header: whatever
/// the broker lets through, the client accepts.
pub fn packet_limit(cfg: &Config) -> u32 {
    let limit = MIN_PACKET_LIMIT.max(cfg.mqtt.max_payload_bytes.saturating_mul(2));
    u32::try_from(limit).unwrap_or(u32::MAX)
}

/// State of one connection, shown on `/healthz`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnState {
    pub connected: bool,
    /// When `connected` last changed.
    pub since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Connection losses since start.
    pub reconnects: u64,
    /// Messages received on this connection since start.
    pub messages: u64,
    /// The receive rate (`ingest::rate`; shown through `ConnectionStatus::rate`).
    #[serde(skip)]
    pub meter: super::rate::RateMeter,
}

/// One connection of the pool, as the rest of the service sees it.
pub struct ConnectionStatus {
    pub index: usize,
    pub client_id: String,
    pub subscriptions: Vec<String>,
    /// To publish on this connection (the canary); never blocks.
    pub client: AsyncClient,
    state: Mutex<ConnState>,
}

impl std::fmt::Debug for ConnectionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionStatus")
            .field("client_id", &self.client_id)
            .field("state", &self.snapshot())
            .finish()
    }
}

impl ConnectionStatus {
    pub fn snapshot(&self) -> ConnState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Messages per second received over the last ten seconds (`ingest::rate`).
    pub fn rate(&self, now: DateTime<Utc>) -> f64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .meter
            .rate(now)
    }
    fn update(&self, f: impl FnOnce(&mut ConnState)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// What one connection is: its client ID and what it subscribes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionPlan {
    pub index: usize,
    pub client_id: String,
    pub subscriptions: Vec<String>,
}

/// Plan the pool: unique client IDs; telemetry through `$share/<group>/…` when there is more
/// than one connection (or a group is configured); presence on the first connection only,
/// unless it is shareable (a rule-republished topic), so each event is received once.
pub fn plan(cfg: &Config) -> Vec<ConnectionPlan> {
    let n = cfg.mqtt.connections;
    let instance = cfg.instance_id();
    let group = cfg
        .mqtt
        .shared_group
        .clone()
        .filter(|g| !g.is_empty())
        .or_else(|| (n > 1).then(|| "fleetwatch".to_string()));
    let shared = |f: &String| match &group {
        Some(g) => format!("$share/{g}/{f}"),
        None => f.clone(),
    };
    (0..n)
        .map(|i| {
            let mut subscriptions: Vec<String> = Vec::new();
            if cfg.mqtt.share_presence {
                subscriptions.extend(cfg.mqtt.presence_topics.iter().map(shared));
            } else if i == 0 {
                subscriptions.extend(cfg.mqtt.presence_topics.iter().cloned());
            }
            subscriptions.extend(cfg.mqtt.telemetry_topics.iter().map(shared));
            if i == 0 {
                // Our canary comes back on the connection that sends it.
                subscriptions.push(canary_topic(cfg));
            }
            ConnectionPlan {
                index: i,
                client_id: format!("{}{}-{}", cfg.mqtt.client_id_prefix, instance, i),
                subscriptions,
            }
        })
        .collect()
}

/// This replica's canary topic.
pub fn canary_topic(cfg: &Config) -> String {
    cfg.detector
        .canary_topic
        .replace("{instance}", &cfg.instance_id())
}

fn read(path: &std::path::Path, key: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{key}: reading {}", path.display()))
}

/// Client options for one connection (MQTT 5).
pub fn options(cfg: &Config, client_id: &str) -> anyhow::Result<MqttOptions> {
    let addr = BrokerAddr::parse(&cfg.mqtt.url).map_err(|e| anyhow::anyhow!("mqtt.url: {e}"))?;
    let mut o = MqttOptions::new(client_id, addr.host.clone(), addr.port);
    // Validated to fit: zero would make the session end with the connection.
    let expiry = u32::try_from(cfg.mqtt.session_expiry.0.as_secs()).unwrap_or(u32::MAX - 1);
    o.set_keep_alive(cfg.mqtt.keep_alive.0)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(expiry))
        .set_manual_acks(true)
        .set_max_packet_size(Some(packet_limit(cfg)))
        // Under MQTT 5 the broker's in-flight window towards us is ours to set (the default
        // is 65,535): no more unacknowledged messages than the channel can hold, so a stalled
        // processing side makes the broker hold messages back while we keep answering pings.
        .set_receive_maximum(Some(
            u16::try_from(cfg.mqtt.channel_capacity).unwrap_or(u16::MAX),
        ));
    if let Some(user) = &cfg.mqtt.username {
        let pw = cfg
            .mqtt
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        o.set_credentials(user.clone(), pw);
    }
    if addr.tls {
        let ca = match &cfg.mqtt.ca_file {
            Some(p) => read(p, "mqtt.ca_file")?,
            None => anyhow::bail!(
                "mqtt.ca_file: required for mqtts:// (AWS IoT Core: AmazonRootCA1.pem)"
            ),
        };
        let client_auth = match (&cfg.mqtt.cert_file, &cfg.mqtt.key_file) {
            (Some(c), Some(k)) => Some((read(c, "mqtt.cert_file")?, read(k, "mqtt.key_file")?)),
            _ => None,
        };
        // AWS IoT Core serves MQTT with client certificates on 443 only with this ALPN name.
        let alpn = (addr.port == 443).then(|| vec![b"x-amzn-mqtt-ca".to_vec()]);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn,
            client_auth,
        }));
    }
    Ok(o)
}

/// Capped exponential backoff with jitter: a random delay in `[d/2, d]` where
/// `d = min(max, min * 2^attempt)`, never below `min` (one CONNECT per second per client ID).
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let d = min
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(max);
    let half = d / 2;
    (half + Duration::from_secs_f64(rand::rng().random::<f64>() * half.as_secs_f64())).max(min)
}

/// One connection's reconnect backoff. Every failure (a lost connection or a failed attempt)
/// grows it; only a connection that stayed up for `reset_after` brings it back to `min`.
/// Resetting on every CONNACK would let any failure that strikes soon after connecting (a
/// message the client cannot take, a duplicate client ID taking the session over, a broker or
/// proxy that accepts and then drops us) reconnect at `min` for ever.
#[derive(Debug, Clone)]
pub struct Reconnect {
    min: Duration,
    max: Duration,
    reset_after: Duration,
    attempt: u32,
    up_since: Option<Instant>,
}

impl Reconnect {
    pub fn new(min: Duration, max: Duration, reset_after: Duration) -> Self {
        Self {
            min,
            max,
            reset_after,
            attempt: 0,
            up_since: None,
        }
    }

    /// A connection came up at `at`.
    pub fn connected(&mut self, at: Instant) {
        self.up_since = Some(at);
    }

    /// The connection (or an attempt) failed at `at`: how long to wait before the next one.
    pub fn failed(&mut self, at: Instant) -> Duration {
        if let Some(up) = self.up_since.take() {
            if at.saturating_duration_since(up) >= self.reset_after {
                self.attempt = 0;
            }
        }
        let wait = backoff(self.attempt, self.min, self.max);
        self.attempt = self.attempt.saturating_add(1);
        wait
    }

    /// Failures since the backoff was last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// Everything a poll loop needs.
#[derive(Clone)]
struct LoopCtx {
    tx: mpsc::Sender<Incoming>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    /// For the oversized and non-UTF-8 skips (the ingest context's, shared with the rest).
    warn: Arc<RateLimitedWarn>,
    max_payload: usize,
    backoff_min: Duration,
    backoff_max: Duration,
    backoff_reset_after: Duration,
    request_capacity: usize,
}

/// One connection's poll loop, for the caller to run (the app runs each as a vital task).
pub struct PollLoop {
    /// `mqtt:<client id>`.
    pub name: String,
    pub run: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// Set up every connection of the pool and return their poll loops. Each loop ends on
/// `cancel`, disconnecting cleanly (the session is kept), and drops its sender so the
/// dispatcher can drain and finish.
pub fn start(
    cfg: &Config,
    tx: mpsc::Sender<Incoming>,
    ingest: &super::IngestContext,
    cancel: CancellationToken,
) -> anyhow::Result<(Vec<Arc<ConnectionStatus>>, Vec<PollLoop>)> {
    let lc = LoopCtx {
        tx,
        metrics: ingest.metrics.clone(),
        clock: ingest.clock.clone(),
        warn: ingest.warn.clone(),
        max_payload: cfg.mqtt.max_payload_bytes,
        backoff_min: cfg.mqtt.backoff_min.0,
        backoff_max: cfg.mqtt.backoff_max.0,
        backoff_reset_after: cfg.mqtt.backoff_reset_after.0,
        // Large enough that acks and subscribes never find it full in practice.
        request_capacity: cfg.mqtt.channel_capacity.max(1024) * 2,
    };
    let mut statuses = Vec::new();
    let mut loops = Vec::new();
    for p in plan(cfg) {
        let opts = options(cfg, &p.client_id)?;
        let (client, eventloop) = AsyncClient::new(opts, lc.request_capacity);
        let status = Arc::new(ConnectionStatus {
            index: p.index,
            client_id: p.client_id.clone(),
            subscriptions: p.subscriptions.clone(),
            client,
            state: Mutex::new(ConnState::default()),
        });
        statuses.push(status.clone());
        let (lc, cancel) = (lc.clone(), cancel.clone());
        loops.push(PollLoop {
            name: format!("mqtt:{}", p.client_id),
            run: Box::pin(run_connection(eventloop, status, lc, cancel)),
        });
    }
    Ok((statuses, loops))
}

async fn run_connection(
    mut eventloop: EventLoop,
    status: Arc<ConnectionStatus>,
    lc: LoopCtx,
    cancel: CancellationToken,
) {
    let conn_label = vec![("connection", status.client_id.clone())];
    let client = status.client.clone();
    let acks = super::ack::AckOrder::new(client.clone());
    let subscriptions: Vec<Filter> = status
        .subscriptions
        .iter()
        .map(|t| Filter::new(t.clone(), QoS::AtLeastOnce))
        .collect();
    let mut reconnect = Reconnect::new(lc.backoff_min, lc.backoff_max, lc.backoff_reset_after);
    // Subscribe on our first session even if the broker kept one: the configured topics may
    // have changed since it was created.
    let mut subscribed_once = false;
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                reconnect.connected(Instant::now());
                acks.reset();
                let now = lc.clock.now();
                status.update(|s| {
                    s.connected = true;
                    s.since = Some(now);
                });
                lc.metrics.mqtt_connected.get_or_create(&conn_label).set(1);
                tracing::info!(client_id = %status.client_id, session_present = ack.session_present, "MQTT connected");
                if (!ack.session_present || !subscribed_once) && !subscriptions.is_empty() {
                    if let Err(e) = client.try_subscribe_many(subscriptions.clone()) {
                        tracing::error!(error = %e, "could not queue the subscription");
                    }
                    subscribed_once = true;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let ticket = acks.ticket();
                let now = lc.clock.now();
                status.update(|s| {
                    s.messages += 1;
                    s.meter.record(now, 1);
                });
                // MQTT requires UTF-8 topics and brokers check them; a broker that did not must
                // still not get a panic or a lossy device id out of us.
                let Ok(topic) = std::str::from_utf8(&publish.topic).map(str::to_owned) else {
                    lc.metrics.dropped(DropReason::NotUtf8);
                    lc.warn.warn(
                        DropReason::NotUtf8.as_str(),
                        &"skipping a message whose topic is not UTF-8",
                    );
                    ticket.ack(&publish);
                    continue;
                };
                if publish.payload.len() > lc.max_payload {
                    lc.metrics.dropped(DropReason::Oversized);
                    lc.warn.warn(
                        DropReason::Oversized.as_str(),
                        &format_args!(
                            "skipping a {}-byte message on {:?}: over mqtt.max_payload_bytes ({})",
                            publish.payload.len(),
                            super::presence::truncate(&topic),
                            lc.max_payload
                        ),
                    );
                    ticket.ack(&publish);
                    continue;
                }
                let msg = Incoming {
                    topic,
                    publish,
                    ticket,
                    received_at: lc.clock.now(),
                };
                lc.metrics.channel_depth.inc();
                let msg = match lc.tx.try_send(msg) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Full(m)) => m,
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                };
                lc.metrics.channel_full.inc();
                // Back-pressure: stop polling until the processing side catches up; the broker
                // holds further messages back (its in-flight window) meanwhile.
                tokio::select! {
                    _ = cancel.cancelled() => {
                        lc.metrics.channel_depth.dec();
                        break;
                    }
                    r = lc.tx.send(msg) => if r.is_err() { break },
                }
            }
            Ok(_) => {}
            Err(e) => {
                let now = lc.clock.now();
                let was_connected = status.snapshot().connected;
                status.update(|s| {
                    if s.connected {
                        s.reconnects += 1;
                        s.since = Some(now);
                    }
                    s.connected = false;
                    s.last_error = Some(e.to_string());
                });
                lc.metrics.mqtt_connected.get_or_create(&conn_label).set(0);
                if was_connected {
                    lc.metrics.mqtt_reconnects.get_or_create(&conn_label).inc();
                    tracing::warn!(client_id = %status.client_id, error = %e, "MQTT connection lost");
                } else {
                    tracing::debug!(client_id = %status.client_id, error = %e, "MQTT connect failed");
                }
                let wait = reconnect.failed(Instant::now());
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    // Leave cleanly: the broker keeps the persistent session and queues for us meanwhile.
    if status.snapshot().connected && client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while eventloop.poll().await.is_ok() {}
        })
        .await;
    }
    status.update(|s| s.connected = false);
    lc.metrics.mqtt_connected.get_or_create(&conn_label).set(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_unique_and_ours() {
        let mut cfg = Config::default();
        cfg.mqtt.connections = 4;
        cfg.mqtt.instance_id = Some("host-a".into());
        let p = plan(&cfg);
        let ids: std::collections::HashSet<_> = p.iter().map(|c| c.client_id.clone()).collect();
        assert_eq!(ids.len(), 4);
        assert!(p
            .iter()
            .all(|c| c.client_id.starts_with("fleetwatch-host-a-")));
        // telemetry shared across the pool, presence once, our canary on the first
        assert_eq!(p[0].subscriptions.len(), 5);
        assert!(p[0]
            .subscriptions
            .contains(&"fleetwatch/canary/host-a".to_string()));
        assert_eq!(
            p[1].subscriptions,
            vec!["$share/fleetwatch/dt/+/impressions"]
        );
        assert!(p[0]
            .subscriptions
            .contains(&"$aws/events/presence/connected/+".to_string()));
    }

    #[test]
    fn single_connection_subscribes_plainly() {
        let p = plan(&Config::default());
        assert_eq!(p.len(), 1);
        assert!(p[0].subscriptions.contains(&"dt/+/impressions".to_string()));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 0..40 {
            let d = backoff(attempt, min, max);
            let cap = min
                .saturating_mul(2u32.saturating_pow(attempt.min(16)))
                .min(max);
            assert!(d >= (cap / 2).max(min) && d <= cap, "{attempt}: {d:?}");
        }
        assert_eq!(backoff(0, min, max), min);
        assert!(backoff(30, min, max) >= Duration::from_secs(30));
    }

    #[test]
    fn only_a_connection_that_stayed_up_resets_the_backoff() {
        let (min, max, reset) = (
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(30),
        );
        let mut r = Reconnect::new(min, max, reset);
        let t0 = Instant::now();
        // connect attempts that fail: growing
        assert_eq!(r.failed(t0), min);
        assert_eq!(r.attempt(), 1);
        r.failed(t0);
        assert_eq!(r.attempt(), 2);
        // connections that come up but drop within reset_after: still growing
        for i in 0..8u32 {
            let up = t0 + Duration::from_secs(u64::from(i) * 100);
            r.connected(up);
            let wait = r.failed(up + reset - Duration::from_millis(1));
            assert!(
                wait >= max.min(min * 2u32.pow((2 + i).min(16))) / 2,
                "{i}: {wait:?}"
            );
        }
        assert_eq!(r.attempt(), 10);
        assert!(r.failed(t0) >= max / 2, "capped but high");
        // a connection that stayed up long enough: back to the minimum
        let up = t0 + Duration::from_secs(5000);
        r.connected(up);
        assert_eq!(r.failed(up + reset), min);
        assert_eq!(r.attempt(), 1);
        // an old connection does not reset later failures of connect attempts
        assert!(r.failed(up + reset * 10) >= min);
        assert_eq!(r.attempt(), 2);
    }

    #[test]
    fn mqtt5_persistent_session_and_a_packet_limit_the_broker_enforces() {
        let mut cfg = Config::default();
        let o = options(&cfg, "x").unwrap();
        assert!(!o.clean_start());
        assert_eq!(o.session_expiry_interval(), Some(3600));
        assert!(o.manual_acks());
        // announced to the broker and, through the same option, rumqttc's own incoming limit
        assert_eq!(o.max_packet_size(), Some(256 * 1024));
        assert_eq!(o.receive_maximum(), Some(8192));
        cfg.mqtt.max_payload_bytes = 1024 * 1024;
        cfg.mqtt.channel_capacity = 1_000_000;
        let o = options(&cfg, "x").unwrap();
        assert_eq!(o.max_packet_size(), Some(2 * 1024 * 1024));
        assert_eq!(o.receive_maximum(), Some(u16::MAX));
    }

    #[test]
    fn tls_needs_a_ca_and_port_443_gets_alpn() {
        let mut cfg = Config::default();
        cfg.mqtt.url = "mqtts://example.iot:443".into();
        assert!(options(&cfg, "x")
            .unwrap_err()
            .to_string()
            .contains("mqtt.ca_file"));
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a real ca").unwrap();
        cfg.mqtt.ca_file = Some(ca);
        let o = options(&cfg, "x").unwrap();
        match o.transport() {
            Transport::Tls(TlsConfiguration::Simple { alpn, .. }) => {
                assert_eq!(alpn, Some(vec![b"x-amzn-mqtt-ca".to_vec()]))
            }
            _ => panic!("expected TLS"),
        }
    }
}
