//! Address drift as fleet stories on a `ManualClock` (issue 9 item 8): presence goes through the
//! real ingest (`ingest::accept`) into Postgres, the real detector is ticked by hand, and the
//! alerts, the `device_networks` history and a real webhook receiver say what happened.

mod common;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use fleetwatch::clock::{Clock, ManualClock};
use fleetwatch::config::{Config, NetworkConfig};
use fleetwatch::detect::{Detector, TickOutcome};
use fleetwatch::ingest::health::IngestStatus;
use fleetwatch::ingest::{accept, presence, Accepted, IngestContext};
use serde_json::{json, Value};
use sqlx::PgPool;

const CARRIER_A: &str = "203.0.113.10";
const CARRIER_A2: &str = "203.0.200.77"; // same /16 as CARRIER_A
const CARRIER_B: &str = "198.51.100.20";

static VERSION: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

struct Fleet {
    pool: PgPool,
    clock: Arc<ManualClock>,
    ingest: IngestContext,
    detector: Detector,
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-27T09:00:00Z")
        .unwrap()
        .to_utc()
}

fn min(n: i64) -> TimeDelta {
    TimeDelta::minutes(n)
}

fn hours(n: i64) -> TimeDelta {
    TimeDelta::hours(n)
}

fn enabled() -> Config {
    let mut cfg = Config::default();
    cfg.address_drift.enabled = true;
    cfg
}

impl Fleet {
    async fn new(pool: PgPool, cfg: Config) -> Fleet {
        let common::fleet::Harness {
            pool,
            clock,
            ingest,
            detector,
        } = common::fleet::Harness::new(pool, &cfg, t0()).await;
        let f = Fleet {
            pool,
            clock,
            ingest,
            detector,
        };
        f.tick().await;
        f
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn presence(&self, payload: &str) -> Accepted {
        let v: Value = serde_json::from_str(payload).unwrap();
        let topic = format!(
            "$aws/events/presence/{}/{}",
            v["eventType"].as_str().unwrap(),
            v["clientId"].as_str().unwrap()
        );
        accept(&self.ingest, &topic, payload.as_bytes(), self.now()).await
    }

    /// A connect of `device` from `ip` stamped `ts`, on a new session.
    async fn connect_at(&self, device: &str, ip: &str, ts: DateTime<Utc>) -> String {
        // One counter for every Fleet of the process, so two fleets over one database never
        // send the same (session, version) by accident.
        let v = VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = format!("{device}-s{v}");
        let payload = connected(device, ms(ts), &session, v, ip);
        let out = self.presence(&payload).await;
        assert!(
            matches!(out, Accepted::Presence(presence::Outcome::Stored(_))),
            "{out:?}"
        );
        payload
    }

    async fn connect(&self, device: &str, ip: &str) -> String {
        self.connect_at(device, ip, self.now()).await
    }

    /// Let the events settle (the pattern cursor passes events older than a minute) and tick.
    async fn settle(&self) -> TickOutcome {
        self.clock.advance(min(2));
        self.tick().await
    }

    async fn tick(&self) -> TickOutcome {
        self.detector
            .tick(&IngestStatus::Healthy, self.now())
            .await
            .unwrap()
    }

    /// (kind, subject, status) of every address_drift alert.
    async fn drift_alerts(&self) -> Vec<(i64, String, String)> {
        sqlx::query_as(
            "select id, subject, status from alerts where kind = 'address_drift' order by id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn alert(&self, id: i64) -> (String, Value, String) {
        sqlx::query_as("select summary, details, severity from alerts where id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn networks(&self, device: &str) -> Vec<String> {
        let mut conn = self.pool.acquire().await.unwrap();
        fleetwatch::db::networks::of_device(&mut conn, device)
            .await
            .unwrap()
            .into_iter()
            .map(|(n, ..)| n)
            .collect()
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn moving_from_carrier_a_to_carrier_b_raises_one_alert(pool: PgPool) {
    let f = Fleet::new(pool, enabled()).await;
    f.connect("screen-1", CARRIER_A).await;
    let out = f.settle().await;
    assert_eq!(
        out.connection.drift.baselines, 1,
        "first connection: baseline"
    );
    assert!(f.drift_alerts().await.is_empty());

    // a reconnect through the same carrier NAT (another address of its /16): nothing
    f.clock.advance(hours(3));
    f.connect("screen-1", CARRIER_A2).await;
    f.settle().await;
    assert!(f.drift_alerts().await.is_empty());

    // the SIM shows up behind another carrier
    f.clock.advance(hours(3));
    f.connect("screen-1", CARRIER_B).await;
    let out = f.settle().await;
    assert_eq!(out.connection.drift.fired, vec!["screen-1".to_string()]);
    let alerts = f.drift_alerts().await;
    assert_eq!(alerts.len(), 1);
    let (id, subject, status) = &alerts[0];
    assert_eq!((subject.as_str(), status.as_str()), ("screen-1", "firing"));
    let (summary, details, severity) = f.alert(*id).await;
    assert_eq!(severity, "warning");
    assert!(
        summary.contains("198.51/16") && summary.contains("203.0/16"),
        "{summary}"
    );
    assert_eq!(details["network"], "198.51/16");
    assert_eq!(details["address"], CARRIER_B);
    assert_eq!(details["network_named"], false);
    assert!(details["session"]
        .as_str()
        .unwrap()
        .starts_with("screen-1-s"));
    assert_eq!(details["seen_before"][0]["network"], "203.0/16");
    assert_eq!(details["history_seconds"], 30 * 86400);

    // it keeps connecting from B: no second alert, and the alert resolves a day after the move
    for _ in 0..5 {
        f.clock.advance(hours(4));
        f.connect("screen-1", CARRIER_B).await;
        f.settle().await;
    }
    f.clock.advance(hours(5));
    let out = f.tick().await;
    assert_eq!(out.connection.drift.resolved, vec!["screen-1".to_string()]);
    let alerts = f.drift_alerts().await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].2, "resolved");
    let mut n = f.networks("screen-1").await;
    n.sort();
    assert_eq!(n, ["198.51/16", "203.0/16"]);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_late_old_event_from_the_old_network_raises_nothing(pool: PgPool) {
    let f = Fleet::new(pool, enabled()).await;
    let early = f.now();
    f.connect("screen-1", CARRIER_A).await;
    f.settle().await;
    f.clock.advance(hours(2));
    f.connect("screen-1", CARRIER_B).await;
    f.settle().await;
    assert_eq!(f.drift_alerts().await.len(), 1, "the move itself is drift");

    // a connect from A stamped an hour after the first one arrives now, late
    f.clock.advance(hours(30));
    f.tick().await; // the move's alert resolves
    f.connect_at("screen-1", CARRIER_A2, early + hours(1)).await;
    let out = f.settle().await;
    assert!(out.connection.drift.fired.is_empty());
    let alerts = f.drift_alerts().await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].2, "resolved", "nothing reopened");

    // a late connect from before anything we knew of the device: no baseline then, nothing
    let g = Fleet::new(f.pool.clone(), enabled()).await;
    g.clock.set(f.now());
    g.connect("screen-2", CARRIER_B).await;
    g.settle().await;
    g.connect_at("screen-2", CARRIER_A, g.now() - hours(5))
        .await;
    g.settle().await;
    assert_eq!(
        f.drift_alerts().await.len(),
        1,
        "{:?}",
        f.drift_alerts().await
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn reordered_arrivals_judge_by_event_time(pool: PgPool) {
    // A then B happened in that order but arrive B first, in one batch: the move is still seen
    // once, and the old A event raises nothing.
    let f = Fleet::new(pool, enabled()).await;
    let t = f.now();
    f.connect_at("screen-1", CARRIER_B, t + min(30)).await;
    f.connect_at("screen-1", CARRIER_A, t).await;
    f.clock.advance(min(31));
    f.settle().await;
    let alerts = f.drift_alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let (_, details, _) = f.alert(alerts[0].0).await;
    assert_eq!(details["address"], CARRIER_B);
}

/// A drift alert shows the newest move: a late event of an older move, arriving in a later
/// pass while the alert fires, is recorded but does not rewrite what the alert tells.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_late_older_drift_does_not_rewrite_the_firing_alert(pool: PgPool) {
    let f = Fleet::new(pool, enabled()).await;
    let t = f.now();
    f.connect_at("screen-1", CARRIER_A, t).await;
    f.clock.advance(min(61));
    f.settle().await;
    f.connect_at("screen-1", CARRIER_B, t + min(60)).await;
    f.clock.advance(min(2));
    f.settle().await;
    let alerts = f.drift_alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    // from a third network, at t + 30 min, delivered only now
    f.connect_at("screen-1", "192.0.2.1", t + min(30)).await;
    f.clock.advance(min(2));
    f.settle().await;
    let (_, details, _) = f.alert(alerts[0].0).await;
    assert_eq!(details["address"], CARRIER_B, "{details}");
    assert_eq!(
        f.networks("screen-1").await.len(),
        3,
        "the late one is recorded"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn disabled_by_default_raises_nothing_but_keeps_the_history(pool: PgPool) {
    let f = Fleet::new(pool.clone(), Config::default()).await;
    f.connect("screen-1", CARRIER_A).await;
    f.settle().await;
    f.connect("screen-1", CARRIER_B).await;
    f.settle().await;
    assert!(f.drift_alerts().await.is_empty());
    assert_eq!(f.networks("screen-1").await.len(), 2);

    // switched on later, the recorded history is the baseline: a third network drifts
    let g = Fleet::new(pool, enabled()).await;
    g.clock.set(f.now() + hours(1));
    g.connect("screen-1", "192.0.2.1").await;
    g.settle().await;
    assert_eq!(g.drift_alerts().await.len(), 1);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn named_networks_group_prefixes_and_ipv6(pool: PgPool) {
    let mut cfg = enabled();
    let prefixes = |ps: &[&str]| NetworkConfig {
        prefixes: ps.iter().map(|p| p.parse().unwrap()).collect(),
    };
    cfg.networks.insert(
        "carrier-a".into(),
        prefixes(&["203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32"]),
    );
    cfg.networks
        .insert("carrier-b".into(), prefixes(&["192.0.2.0/24"]));
    let f = Fleet::new(pool, cfg).await;
    f.connect("screen-1", CARRIER_A).await;
    f.settle().await;
    // other prefixes of carrier A, v4 with a port and v6, v4-mapped: all the same network
    for ip in [
        CARRIER_B,
        "198.51.100.99:40123",
        "2001:db8:1::7",
        "[2001:db8:2::9]:8883",
        "::ffff:203.0.113.44",
    ] {
        f.clock.advance(hours(1));
        f.connect("screen-1", ip).await;
        f.settle().await;
    }
    assert!(
        f.drift_alerts().await.is_empty(),
        "{:?}",
        f.drift_alerts().await
    );
    assert_eq!(f.networks("screen-1").await, ["carrier-a"]);

    // carrier B by its v4 prefix: drift, named
    f.connect("screen-1", "192.0.2.5").await;
    f.settle().await;
    let alerts = f.drift_alerts().await;
    assert_eq!(alerts.len(), 1);
    let (summary, details, _) = f.alert(alerts[0].0).await;
    assert_eq!(details["network"], "carrier-b");
    assert_eq!(details["network_named"], true);
    assert!(summary.contains("carrier-a"), "{summary}");

    // an unnamed v6 network: its /32
    f.connect("screen-2", "2001:db8::1").await;
    f.settle().await;
    f.connect("screen-2", "2001:db9:5::1").await;
    f.settle().await;
    let (_, details, _) = f.alert(f.drift_alerts().await[1].0).await;
    assert_eq!(details["network"], "2001:db9::/32");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hostile_addresses_are_counted_and_never_panic(pool: PgPool) {
    let f = Fleet::new(pool, enabled()).await;
    f.connect("screen-1", CARRIER_A).await;
    f.settle().await;
    let hostile = [
        "not an address".to_string(),
        "203.0.113.1\u{0007}\r\n".to_string(),
        "\u{1b}[2J".to_string(),
        "9".repeat(1000),
        "203.0.113.300".to_string(),
        String::new(),
    ];
    for ip in &hostile {
        f.clock.advance(min(1));
        let out = f.connect("screen-1", ip).await;
        assert!(!out.is_empty());
    }
    // non-string ipAddress values and one over the stored-field limit are refused by parsing
    for bad in [json!(42), json!(["203.0.113.1"]), json!("1".repeat(5000))] {
        let payload = json!({
            "clientId": "screen-1", "timestamp": ms(f.now()), "eventType": "connected",
            "sessionIdentifier": "x", "versionNumber": 99, "ipAddress": bad,
        })
        .to_string();
        assert!(
            matches!(
                f.presence(&payload).await,
                Accepted::Presence(presence::Outcome::Dropped(_))
            ),
            "{bad}"
        );
    }
    let out = f.settle().await;
    assert_eq!(out.connection.drift.bad_addresses, hostile.len());
    assert!(f.drift_alerts().await.is_empty());
    assert_eq!(f.networks("screen-1").await, ["203.0/16"]);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn duplicates_and_replays_raise_one_alert(pool: PgPool) {
    let f = Fleet::new(pool, enabled()).await;
    f.connect("screen-1", CARRIER_A).await;
    f.settle().await;
    let moved = f.connect("screen-1", CARRIER_B).await;
    // QoS 1 redelivery: the same event twice before the pass, and again after it
    f.presence(&moved).await;
    f.settle().await;
    f.presence(&moved).await;
    f.settle().await;
    f.settle().await;
    let alerts = f.drift_alerts().await;
    assert_eq!(alerts.len(), 1);
    let trail: Vec<String> =
        sqlx::query_scalar("select type from alert_events where alert_id = $1 order by id")
            .bind(alerts[0].0)
            .fetch_all(&f.pool)
            .await
            .unwrap();
    assert_eq!(trail, ["opened"]);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn retired_devices_never_alert(pool: PgPool) {
    let f = Fleet::new(pool.clone(), enabled()).await;
    f.connect("screen-1", CARRIER_A).await;
    f.settle().await;
    sqlx::query("update devices set retired_at = $1 where id = 'screen-1'")
        .bind(f.now())
        .execute(&pool)
        .await
        .unwrap();
    f.connect("screen-1", CARRIER_B).await;
    f.settle().await;
    assert!(f.drift_alerts().await.is_empty());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn history_is_bounded_and_a_lost_history_is_a_new_baseline(pool: PgPool) {
    let mut cfg = enabled();
    cfg.address_drift.history = "2d".parse().unwrap();
    let f = Fleet::new(pool, cfg).await;
    f.connect("screen-1", CARRIER_A).await;
    f.settle().await;
    // silent for three days: the history ages out and is deleted
    f.clock.advance(hours(72));
    let out = f.tick().await;
    assert_eq!(out.connection.drift.expired, 1);
    assert!(f.networks("screen-1").await.is_empty());
    // back from another carrier: a new baseline, no alert
    f.connect("screen-1", CARRIER_B).await;
    let out = f.settle().await;
    assert_eq!(out.connection.drift.baselines, 1);
    assert!(f.drift_alerts().await.is_empty());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_connect_stamped_in_the_future_cannot_pin_a_network(pool: PgPool) {
    let f = Fleet::new(pool, enabled()).await;
    f.connect("screen-1", CARRIER_A).await;
    f.settle().await;
    // a forged connect from B stamped 20 h ahead (parsing allows up to a day): it counts as at
    // most arrival + max_clock_skew (5 min), so it drifts now and B does not look recent later
    f.connect_at("screen-1", CARRIER_B, f.now() + hours(20))
        .await;
    f.settle().await;
    let mut conn = f.pool.acquire().await.unwrap();
    let rows = fleetwatch::db::networks::of_device(&mut conn, "screen-1")
        .await
        .unwrap();
    let b = rows.iter().find(|r| r.0 == "198.51/16").unwrap();
    assert!(b.2 <= f.now() + min(5), "{b:?}");
}

// ---------------------------------------------------------------------------------------------
// Silences and inhibition apply: seen at a real webhook receiver
// ---------------------------------------------------------------------------------------------

type Pages = Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

async fn hook(
    axum::extract::State(pages): axum::extract::State<Pages>,
    body: axum::body::Bytes,
) -> &'static str {
    let v: Value = serde_json::from_slice(&body).unwrap();
    pages.lock().unwrap().push((
        v["event"].as_str().unwrap().to_string(),
        v["alert"]["kind"].as_str().unwrap().to_string(),
        v["alert"]["device_id"].as_str().unwrap_or("").to_string(),
    ));
    "ok"
}

async fn receiver(pool: &PgPool, cfg: &mut Config) -> (fleetwatch::alerts::webhook::Worker, Pages) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let pages: Pages = Arc::default();
    let app = axum::Router::new()
        .fallback(axum::routing::post(hook))
        .with_state(pages.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    cfg.webhooks = vec![fleetwatch::config::WebhookConfig {
        name: Some("oncall".into()),
        url: format!("http://127.0.0.1:{port}/hook"),
        group_wait: "0s".parse().unwrap(),
        ..Default::default()
    }];
    fleetwatch::alerts::outbox::sync_endpoints(pool, &cfg.webhooks)
        .await
        .unwrap();
    let worker = fleetwatch::alerts::webhook::Worker::new(pool.clone(), &cfg.webhooks).unwrap();
    (worker, pages)
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn silences_and_inhibition_apply(pool: PgPool) {
    let mut cfg = enabled();
    // a flapping device's new address is a symptom of the flapping (illustrative rule)
    cfg.inhibit = Some(vec![serde_json::from_value(json!({
        "source": "flapping", "target": "address_drift"
    }))
    .unwrap()]);
    let (worker, pages) = receiver(&pool, &mut cfg).await;
    let f = Fleet::new(pool.clone(), cfg).await;
    for d in ["silenced", "paged", "flappy"] {
        f.connect(d, CARRIER_A).await;
    }
    f.settle().await;

    fleetwatch::db::silences::create(
        &pool,
        &fleetwatch::db::silences::NewSilence {
            device_id: Some("silenced".into()),
            group_id: None,
            kind: Some(fleetwatch::domain::alert::Kind::AddressDrift),
            starts_at: f.now(),
            ends_at: f.now() + hours(2),
            created_by: fleetwatch::domain::actor::Actor::token(None, "test", None),
            comment: "SIM swap planned".into(),
        },
        f.now(),
    )
    .await
    .unwrap();

    // flappy disconnects over and over (flapping fires) and comes back through carrier B
    for v in 100..112 {
        f.presence(&disconnected(
            "flappy",
            ms(f.now()),
            "flap",
            v,
            "CONNECTION_LOST",
        ))
        .await;
        f.clock.advance(TimeDelta::seconds(20));
    }
    for d in ["silenced", "paged", "flappy"] {
        f.connect(d, CARRIER_B).await;
    }
    f.settle().await;
    assert_eq!(f.drift_alerts().await.len(), 3);
    worker.tick(f.now()).await.unwrap();
    f.clock.advance(min(1));
    worker.tick(f.now()).await.unwrap();

    let firing: Vec<(String, String)> = pages
        .lock()
        .unwrap()
        .iter()
        .filter(|(e, _, _)| e == "alert.firing")
        .map(|(_, k, d)| (k.clone(), d.clone()))
        .collect();
    assert!(
        firing.contains(&("address_drift".into(), "paged".into())),
        "{firing:?}"
    );
    assert!(
        !firing
            .iter()
            .any(|(k, d)| k == "address_drift" && d != "paged"),
        "silenced and inhibited drifts must not page: {firing:?}"
    );
    assert!(
        firing.contains(&("flapping".into(), "flappy".into())),
        "{firing:?}"
    );
}
