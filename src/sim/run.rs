//! The `fleetwatch simulate` command: the [`Simulator`]'s schedule published in real time over
//! MQTT 5 at QoS 1, with a summary line every 10 s and final totals per event kind and per
//! incident on standard output. The connection options (TLS with a CA and client certificates,
//! ALPN on port 443 for AWS IoT Core) are the service's own (`ingest::mqtt::options`), turned
//! into a clean publishing session.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};

use super::{IncidentKind, Mix, Settings, Simulator, Tally, Topics};
use crate::clock::SharedClock;
use crate::config::{Config, HumanDuration};

/// `fleetwatch simulate` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Broker: mqtt://host:port or mqtts://host:port (then --ca-file, and client certificates).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub mqtt_url: String,
    /// CA certificate (PEM) for mqtts:// (AWS IoT Core: AmazonRootCA1.pem).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mqtts://.
    #[arg(long, requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM) for mqtts://.
    #[arg(long, requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Number of screens.
    #[arg(long, default_value_t = 2000)]
    pub devices: usize,
    /// Impressions per second over the whole fleet.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// How long to run (500ms, 30s, 5m, 2h).
    #[arg(long, default_value = "60s")]
    pub duration: HumanDuration,
    /// Seed: the same seed gives the same fleet and the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Incident mix, KIND=COUNT,… or `none`. Kinds: blip, crash, dead-modem, duplicate,
    /// flapping, throttled, bad-cert, power-cut, new-network, closed.
    #[arg(
        long,
        default_value = "blip=5,crash=1,dead-modem=1,duplicate=1,flapping=1,throttled=1,bad-cert=1,power-cut=1,new-network=1"
    )]
    pub incidents: Mix,
    /// Incidents start at random times within this span after the first 10 s (default: half
    /// of --duration).
    #[arg(long)]
    pub incidents_within: Option<HumanDuration>,
    /// Lifecycle events go to PREFIX/<connected|disconnected|connect_failed>/<clientId>; use a
    /// non-`$` mirror such as demo/events/presence for brokers that refuse `$` topics.
    #[arg(long, default_value = "$aws/events/presence")]
    pub presence_prefix: String,
    /// Impression topic; {device} is replaced by the device id, {building} by its building.
    #[arg(long, default_value = "dt/{device}/impressions")]
    pub telemetry_topic: String,
}

/// One MQTT 5 connection publishing a simulation at QoS 1: the connection options (TLS with a
/// CA and client certificates, ALPN on port 443 for AWS IoT Core) are the service's own
/// (`ingest::mqtt::options`), turned into a clean publishing session. A lost connection is
/// retried every second; what is published meanwhile waits in the client's queue.
pub struct Publisher {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    poller: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Connect with `cfg.mqtt`'s broker and TLS settings as `client_id` (which must start with
    /// the service's `fleetwatch-` prefix, so the service never takes it for a device); fails
    /// when the broker has not accepted the connection within 10 s.
    pub async fn connect(cfg: &Config, client_id: &str) -> anyhow::Result<Publisher> {
        Self::start(Self::options(cfg, client_id)?, &cfg.mqtt.url).await
    }

    /// The connection options of [`Publisher::connect`]; errors name the `mqtt.*` setting.
    pub fn options(cfg: &Config, client_id: &str) -> anyhow::Result<rumqttc::v5::MqttOptions> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut opts = crate::ingest::mqtt::options(cfg, client_id)?;
        opts.set_clean_start(true)
            .set_session_expiry_interval(None)
            .set_manual_acks(false)
            .set_outgoing_inflight_upper_limit(1000);
        Ok(opts)
    }

    /// Connect with `opts` to the broker at `url` (named in errors).
    pub async fn start(opts: rumqttc::v5::MqttOptions, url: &str) -> anyhow::Result<Publisher> {
        let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let (up_tx, mut up) = tokio::sync::watch::channel(false);
        let last_error = Arc::new(Mutex::new(None::<String>));
        let poller = {
            let (acked, last_error) = (acked.clone(), last_error.clone());
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = up_tx.send(true);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let _ = up_tx.send(false);
                            *last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(e.to_string());
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            })
        };
        if tokio::time::timeout(Duration::from_secs(10), up.wait_for(|u| *u))
            .await
            .is_err()
        {
            poller.abort();
            let e = last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
            bail!(
                "could not connect to {url} within 10 s: {}",
                e.unwrap_or_else(|| "no answer".into())
            );
        }
        Ok(Publisher {
            client,
            acked,
            poller,
        })
    }

    /// Queue one message (QoS 1).
    pub async fn publish(&self, o: &super::Outgoing) -> anyhow::Result<()> {
        self.client
            .publish(o.topic.clone(), QoS::AtLeastOnce, false, o.payload.clone())
            .await
            .context("publishing")
    }

    /// Messages the broker acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Wait (at most `wait`) until `sent` messages are acknowledged, disconnect, and return
    /// how many were.
    pub async fn close(self, sent: u64, wait: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + wait;
        while self.acked() < sent && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let acknowledged = self.acked();
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.poller.abort();
        acknowledged
    }
}

/// Check what clap cannot, and build the simulator's settings.
pub fn settings(a: &SimulateArgs) -> anyhow::Result<Settings> {
    for (flag, t) in [
        ("--presence-prefix", &a.presence_prefix),
        ("--telemetry-topic", &a.telemetry_topic),
    ] {
        if t.is_empty() || t.contains(['+', '#', '\0']) {
            bail!("{flag}: expected a topic without wildcards, got {t:?}");
        }
    }
    if !a.telemetry_topic.contains("{device}") {
        bail!(
            "--telemetry-topic: expected {{device}} in the topic, got {:?}",
            a.telemetry_topic
        );
    }
    if a.duration.0.is_zero() {
        bail!("--duration: expected more than zero");
    }
    let within = a
        .incidents_within
        .map(|d| d.delta())
        .unwrap_or_else(|| a.duration.delta() / 2);
    Ok(Settings {
        devices: a.devices,
        rate: a.rate,
        seed: a.seed,
        mix: a.incidents.clone(),
        topics: Topics {
            presence_prefix: a.presence_prefix.trim_end_matches('/').to_string(),
            telemetry: a.telemetry_topic.clone(),
        },
        incidents_after: chrono::TimeDelta::seconds(10).min(a.duration.delta() / 4),
        incidents_within: within.max(chrono::TimeDelta::milliseconds(1)),
        pace: 1.0,
    })
}

/// Run the simulation against the broker for `--duration`, printing to `out`.
pub async fn run(
    a: SimulateArgs,
    clock: SharedClock,
    out: &mut (dyn std::io::Write + Send),
) -> anyhow::Result<()> {
    let settings = settings(&a)?;
    let start = clock.now();
    // Its errors start with the setting they are about, which is the flag of the same name.
    let mut sim = Simulator::new(&settings, start).map_err(|e| anyhow::anyhow!("--{e}"))?;
    let end = start + a.duration.delta();

    let mut cfg = Config::default();
    cfg.mqtt.url = a.mqtt_url.clone();
    cfg.mqtt.ca_file = a.ca_file.clone();
    cfg.mqtt.cert_file = a.cert_file.clone();
    cfg.mqtt.key_file = a.key_file.clone();
    let client_id = format!("fleetwatch-simulate-{}", std::process::id());
    // The service's settings are this command's flags of the same names.
    let opts = Publisher::options(&cfg, &client_id).map_err(|e| {
        anyhow::anyhow!("{}", e.to_string().replace("mqtt.", "--").replace('_', "-"))
    })?;
    let publisher = Publisher::start(opts, &a.mqtt_url).await?;
    writeln!(
        out,
        "simulate: {} screens in {} buildings, {} impressions/s (one per screen every {} ms), \
         seed {}, incidents {}, to {}",
        settings.devices,
        sim.fleet().buildings.len(),
        settings.rate,
        sim.interval().num_milliseconds(),
        settings.seed,
        settings.mix,
        a.mqtt_url
    )?;

    // What will happen to whom, so that a run can be checked against what the service saw.
    for p in sim.plan() {
        let fleet = sim.fleet();
        let who = match p.kind {
            k if k.takes_building() => {
                let b = &fleet.buildings[fleet.screens[p.screens[0]].building];
                format!("{} ({} screens)", b.name, p.screens.len())
            }
            IncidentKind::CarrierOutage => {
                let mut names: Vec<&str> = p
                    .screens
                    .iter()
                    .map(|&s| fleet.buildings[fleet.screens[s].building].name.as_str())
                    .collect();
                names.dedup();
                format!("{} ({} screens)", names.join(" "), p.screens.len())
            }
            _ => p
                .screens
                .iter()
                .map(|&s| fleet.screens[s].device_id.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        };
        let secs = (p.at - start).num_milliseconds() as f64 / 1000.0;
        writeln!(out, "plan: +{secs:.1}s {} {who}", p.kind)?;
    }
    let mut tally = Tally::default();
    let mut next_summary = start + chrono::TimeDelta::seconds(10);
    loop {
        let now = clock.now().min(end);
        for o in sim.events_until(now) {
            publisher.publish(&o).await?;
            tally.add(&o);
        }
        if now >= next_summary {
            writeln!(
                out,
                "{}s: sent {tally}, acknowledged {}",
                (now - start).num_seconds(),
                publisher.acked()
            )?;
            next_summary += chrono::TimeDelta::seconds(10);
        }
        if now >= end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Everything sent must have reached the broker before we say so.
    let acknowledged = publisher.close(tally.total, Duration::from_secs(30)).await;
    writeln!(out, "total: {tally}, acknowledged {acknowledged}")?;
    let started: Vec<String> = IncidentKind::ALL
        .into_iter()
        .filter(|k| settings.mix.count(*k) > 0)
        .map(|k| {
            let n = sim
                .plan()
                .iter()
                .filter(|p| p.kind == k && p.at <= end)
                .count();
            let msgs = tally.by_incident.get(&k).copied().unwrap_or(0);
            format!("{k} {n} started ({msgs} messages)")
        })
        .collect();
    writeln!(
        out,
        "incidents: {}",
        if started.is_empty() {
            "none".to_string()
        } else {
            started.join(", ")
        }
    )?;
    out.flush()?;
    if acknowledged < tally.total {
        bail!(
            "the broker acknowledged {acknowledged} of {} messages within 30 s",
            tally.total
        );
    }
    Ok(())
}
