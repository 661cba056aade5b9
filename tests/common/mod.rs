//! Shared test harness: a private Mosquitto per test on a free port, an MQTT publisher that
//! waits for acknowledgements, AWS lifecycle payload builders, a configured service, and (in
//! [`http`]) the API harness and request helpers.
#![allow(dead_code)]

pub mod alerts;
pub mod aws;
pub mod browser;
pub mod fleet;
pub mod http;
pub mod pki;
pub mod web;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetwatch::config::{Config, HumanDuration, Secret};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::sync::watch;

pub const TOKEN: &str = "test-token-0123456789";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosquitto of our own: a test that restarts a broker must not disturb the others.
pub struct Broker {
    pub port: u16,
    /// Whether sessions and queued messages survive a restart.
    pub persistence: bool,
    /// Extra lines for the listener (TLS settings).
    extra: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    pub async fn start() -> Broker {
        Self::start_with(true).await
    }

    pub async fn start_with(persistence: bool) -> Broker {
        Self::start_conf(persistence, "").await
    }

    /// A broker whose listener gets `extra` configuration lines.
    pub async fn start_conf(persistence: bool, extra: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto started as root drops to the `mosquitto` user, which must be able to write
        // its persistence file here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut b = Broker {
            port: free_port(),
            persistence,
            extra: extra.to_string(),
            dir,
            child: None,
        };
        b.spawn().await;
        b
    }

    fn conf(&self) -> PathBuf {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence {persistence}\n\
                 persistence_location {dir}/\nautosave_interval 1\nmax_queued_messages 100000\n\
                 max_inflight_messages 100\n{extra}\n",
                port = self.port,
                persistence = self.persistence,
                extra = self.extra,
                dir = self.dir.path().display()
            ),
        )
        .unwrap();
        conf
    }

    async fn spawn(&mut self) {
        let conf = self.conf();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (scripts/test installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("mosquitto did not start on port {}", self.port);
    }

    /// Stop with SIGTERM, so that Mosquitto saves its persistence file (sessions, queues).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_sigterm(c.id());
            for _ in 0..200 {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// The broker's private directory (for certificates).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// A configuration for tests: the given broker, a free HTTP port, fast flushes and backoff.
pub fn config(broker: &Broker) -> Config {
    fleetwatch::logging::init_for_tests();
    let mut c = Config::default();
    c.mqtt.url = broker.url();
    c.mqtt.instance_id = Some(format!(
        "t{}-{}",
        std::process::id(),
        INSTANCE.fetch_add(1, Ordering::Relaxed)
    ));
    c.mqtt.backoff_min = HumanDuration(Duration::from_millis(100));
    c.mqtt.backoff_max = HumanDuration(Duration::from_millis(500));
    c.http.addr = "127.0.0.1:0".into();
    c.telemetry.flush_interval = HumanDuration(Duration::from_millis(100));
    c.api.token = Some(Secret::new(TOKEN));
    c
}

/// An MQTT client that publishes QoS 1 and can wait until the broker acknowledged everything.
pub struct Publisher {
    pub client: AsyncClient,
    acked: watch::Receiver<usize>,
    sent: usize,
}

impl Publisher {
    pub async fn connect(port: u16, client_id: &str) -> Publisher {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        // Large enough for the poison-message tests (10 MB payloads), which Mosquitto accepts.
        o.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        o.set_inflight(1000);
        let (client, mut eventloop) = AsyncClient::new(o, 10_000);
        let (tx, acked) = watch::channel(0usize);
        let (up_tx, mut up) = watch::channel(false);
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        n += 1;
                        let _ = tx.send(n);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = up_tx.send(true);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), up.wait_for(|u| *u))
            .await
            .expect("publisher connects")
            .unwrap();
        Publisher {
            client,
            acked,
            sent: 0,
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
        self.sent += 1;
    }

    /// Publish at QoS 0 (nothing to wait for: the broker handles a connection's packets in
    /// order, so a later `flush` still means this one reached it).
    pub async fn publish_qos0(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtMostOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Wait until the broker acknowledged every publish so far.
    pub async fn flush(&mut self) {
        let want = self.sent;
        tokio::time::timeout(Duration::from_secs(20), self.acked.wait_for(|n| *n >= want))
            .await
            .expect("broker acknowledges publishes")
            .unwrap();
    }
}

/// The service on `pool` with `cfg`, once every MQTT connection is up.
pub async fn start_app(pool: &sqlx::PgPool, cfg: Config) -> fleetwatch::app::App {
    let app = fleetwatch::app::App::build_with_pool(cfg, pool.clone(), system_clock())
        .await
        .unwrap();
    eventually(10, "mqtt connected", || async {
        app.state.mqtt.iter().all(|c| c.snapshot().connected)
    })
    .await;
    app
}

pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// An AWS `connected` lifecycle payload.
pub fn connected(client: &str, ts: i64, session: &str, version: i64, ip: &str) -> String {
    json!({
        "clientId": client, "timestamp": ts, "eventType": "connected",
        "sessionIdentifier": session, "principalIdentifier": "principal-1",
        "ipAddress": ip, "versionNumber": version
    })
    .to_string()
}

/// An AWS `disconnected` lifecycle payload.
pub fn disconnected(client: &str, ts: i64, session: &str, version: i64, reason: &str) -> String {
    json!({
        "clientId": client, "timestamp": ts, "eventType": "disconnected",
        "clientInitiatedDisconnect": reason == "CLIENT_INITIATED_DISCONNECT",
        "sessionIdentifier": session, "principalIdentifier": "principal-1",
        "disconnectReason": reason, "versionNumber": version
    })
    .to_string()
}

/// An AWS `connect_failed` lifecycle payload.
pub fn connect_failed(client: &str, ts: i64, reason: &str) -> String {
    json!({
        "clientId": client, "timestamp": ts, "eventType": "connect_failed",
        "connectFailureReason": reason, "principalIdentifier": "principal-x", "ipAddress": "203.0.113.9"
    })
    .to_string()
}

pub fn presence_topic(kind: &str, client: &str) -> String {
    format!("$aws/events/presence/{kind}/{client}")
}

/// Poll `check` until it returns true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reqwest client with the bootstrap token.
pub fn api(base: &str) -> Api {
    Api {
        base: base.to_string(),
        http: reqwest::Client::new(),
    }
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    pub async fn text(&self, path: &str) -> String {
        self.http
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The value of a counter/gauge sample line in Prometheus text, or 0.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

pub fn system_clock() -> fleetwatch::clock::SharedClock {
    Arc::new(fleetwatch::clock::SystemClock)
}
