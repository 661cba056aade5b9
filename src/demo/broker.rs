//! The demo's embedded MQTT broker: rumqttd (MQTT 5, plain TCP) on a free port of 127.0.0.1,
//! in threads of its own (it runs its own runtimes). It lives as long as the process: rumqttd
//! has no way to stop it.
//!
//! rumqttd keeps a log per topic; its segments are kept small ([`SEGMENT_BYTES`]) so that a
//! demo left running for days holds a bounded amount of memory (a few KB per screen).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};

/// One segment of a topic's log; two are kept per topic.
pub const SEGMENT_BYTES: usize = 256 * 1024;

/// A running embedded broker.
pub struct Embedded {
    pub addr: SocketAddr,
}

/// `addr` with a free port in place of port 0 (the demo needs its own address before it binds:
/// the webhook it configures points at it).
pub fn resolve_port(addr: &str) -> anyhow::Result<SocketAddr> {
    let a = addr
        .to_socket_addrs()
        .with_context(|| format!("expected host:port, got {addr:?}"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))?;
    if a.port() != 0 {
        return Ok(a);
    }
    let l = TcpListener::bind(a).with_context(|| format!("binding {a}"))?;
    Ok(l.local_addr()?)
}

impl Embedded {
    /// Start rumqttd on a free local port and wait until it accepts connections.
    pub async fn start() -> anyhow::Result<Embedded> {
        let addr = resolve_port("127.0.0.1:0")?;
        let connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            // AWS IoT Core's limit
            max_payload_size: 128 * 1024,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let server = rumqttd::ServerSettings {
            name: "demo".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 1,
            connections,
        };
        let config = rumqttd::Config {
            id: 0,
            router: rumqttd::RouterConfig {
                max_connections: 10_010,
                max_outgoing_packet_count: 200,
                max_segment_size: SEGMENT_BYTES,
                max_segment_count: 2,
                ..Default::default()
            },
            v5: Some(HashMap::from([("1".to_string(), server)])),
            ..Default::default()
        };
        std::thread::Builder::new()
            .name("demo-broker".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "demo: the embedded broker stopped");
                }
            })
            .context("starting the embedded broker")?;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                tracing::info!(%addr, "demo: embedded MQTT broker (rumqttd) listening");
                return Ok(Embedded { addr });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the embedded broker did not listen on {addr} within 5 s")
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}
