//! Fleet stories on an injected clock: hours of behaviour in milliseconds, each with the exact
//! alerts expected. Ingest goes through the real code (presence processing, the telemetry
//! buffer and its flush) into a real Postgres; the detector is ticked by hand.

mod common;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use fleetwatch::clock::{Clock, ManualClock};
use fleetwatch::config::{Config, HumanDuration};
use fleetwatch::detect::{Detector, TickOutcome};
use fleetwatch::ingest::health::IngestStatus;
use fleetwatch::ingest::{accept, presence, telemetry, Accepted, IngestContext};
use serde_json::Value;
use sqlx::PgPool;

/// A fleet under test: interval 5m, grace 5m, disconnect grace 10m, 1 s flush allowance.
struct Fleet {
    pool: PgPool,
    clock: Arc<ManualClock>,
    ingest: IngestContext,
    detector: Detector,
}

fn t0() -> DateTime<Utc> {
    // A fixed Friday morning, so that quiet hours are deterministic.
    DateTime::parse_from_rfc3339("2026-11-27T09:00:00Z")
        .unwrap()
        .to_utc()
}

impl Fleet {
    async fn new(pool: PgPool) -> Fleet {
        Self::with_config(pool, Config::default()).await
    }

    async fn with_config(pool: PgPool, cfg: Config) -> Fleet {
        let fleet::Harness {
            pool,
            clock,
            ingest,
            detector,
        } = fleet::Harness::new(pool, &cfg, t0()).await;
        Fleet {
            pool,
            clock,
            ingest,
            detector,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn advance(&self, d: TimeDelta) {
        self.clock.advance(d);
    }

    async fn presence(&self, payload: String) {
        // The topic AWS publishes it on, as the dispatcher would see it.
        let v: Value = serde_json::from_str(&payload).unwrap();
        let topic = format!(
            "$aws/events/presence/{}/{}",
            v["eventType"].as_str().unwrap(),
            v["clientId"].as_str().unwrap()
        );
        let out = accept(&self.ingest, &topic, payload.as_bytes(), self.now()).await;
        assert!(
            matches!(out, Accepted::Presence(presence::Outcome::Stored(_))),
            "{out:?}"
        );
    }

    async fn connect(&self, device: &str, session: &str, version: i64) {
        self.presence(connected(
            device,
            ms(self.now()),
            session,
            version,
            "198.51.100.1",
        ))
        .await;
    }

    async fn disconnect(&self, device: &str, session: &str, version: i64, reason: &str) {
        self.presence(disconnected(
            device,
            ms(self.now()),
            session,
            version,
            reason,
        ))
        .await;
    }

    /// Impressions arriving now, with device timestamps `device_ts` (None: no timestamp).
    async fn data(&self, device: &str, device_ts: &[Option<DateTime<Utc>>]) {
        for ts in device_ts {
            let payload = match ts {
                Some(t) => format!(r#"{{"timestamp":{}}}"#, ms(*t)),
                None => "{}".to_string(),
            };
            self.impression(device, &payload).await;
        }
        telemetry::flush(&self.ingest).await.unwrap();
    }

    /// One impression message of `device` arriving now: buffered, not yet flushed.
    async fn impression(&self, device: &str, payload: &str) {
        fleet::impression(&self.ingest, device, payload, self.now()).await;
    }

    /// Data stamped now.
    async fn beat(&self, device: &str) {
        self.data(device, &[Some(self.now())]).await;
    }

    /// Data stamped now from each of `devices`, flushed once.
    async fn beat_many(&self, devices: &[&str]) {
        let payload = format!(r#"{{"timestamp":{}}}"#, ms(self.now()));
        for device in devices {
            self.impression(device, &payload).await;
        }
        telemetry::flush(&self.ingest).await.unwrap();
    }

    async fn tick(&self) -> TickOutcome {
        self.detector
            .tick(&IngestStatus::Healthy, self.now())
            .await
            .unwrap()
    }

    async fn tick_down(&self) -> TickOutcome {
        self.detector
            .tick(&IngestStatus::Down("broker unreachable".into()), self.now())
            .await
            .unwrap()
    }

    /// Run the clock forward in `step`s up to `total`, ticking each time, with `each` called
    /// before every tick (devices beating, etc.).
    async fn run(&self, total: TimeDelta, step: TimeDelta, beating: &[&str]) {
        let mut elapsed = TimeDelta::zero();
        while elapsed < total {
            self.advance(step);
            elapsed += step;
            for d in beating {
                self.beat(d).await;
            }
            self.tick().await;
        }
    }

    async fn state(&self, device: &str) -> String {
        sqlx::query_scalar("select state from devices where id = $1")
            .bind(device)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Every alert: (id, kind, subject, status, classification).
    async fn alerts(&self) -> Vec<(i64, String, String, String, Option<String>)> {
        sqlx::query_as(
            r#"select id, kind, subject, status, details->>'classification' from alerts order by id"#,
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn alert(&self, id: i64) -> (String, Value, Option<i64>) {
        sqlx::query_as("select summary, details, covered_by from alerts where id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn trail(&self, id: i64) -> Vec<String> {
        sqlx::query_scalar("select type from alert_events where alert_id = $1 order by id")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

fn min(n: i64) -> TimeDelta {
    TimeDelta::minutes(n)
}

fn sec(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

/// Start a healthy fleet: the service starts (first tick), devices connect and beat for a while.
async fn healthy_start(f: &Fleet, devices: &[&str]) {
    f.tick().await;
    for d in devices {
        f.connect(d, "s1", 1).await;
        f.beat(d).await;
    }
    f.run(min(20), min(1), devices).await;
    for d in devices {
        assert_eq!(f.state(d).await, "healthy", "{d}");
    }
    assert!(f.alerts().await.is_empty());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn lte_blips_with_backlog_flushes_raise_nothing(pool: PgPool) {
    let f = Fleet::new(pool).await;
    healthy_start(&f, &["a", "b", "c"]).await;

    // a: 3-minute blip, bridge flushes its backlog on reconnect
    f.disconnect("a", "s1", 1, "CONNECTION_LOST").await;
    let gone = f.now();
    f.run(min(3), sec(15), &["b", "c"]).await;
    f.connect("a", "s2", 2).await;
    let backlog: Vec<_> = (0..4).map(|i| Some(gone + min(i))).collect();
    f.data("a", &backlog).await;

    // b: 9-minute blip, just under disconnect_grace (10m) but past the 5m+5m due point
    f.disconnect("b", "s1", 1, "CONNECTION_LOST").await;
    let b_gone = f.now();
    f.run(min(9), sec(15), &["a", "c"]).await;
    f.connect("b", "s2", 2).await;
    let backlog: Vec<_> = (0..9).map(|i| Some(b_gone + min(i))).collect();
    f.data("b", &backlog).await;

    f.run(min(30), sec(15), &["a", "b", "c"]).await;
    assert!(f.alerts().await.is_empty(), "{:?}", f.alerts().await);
    for d in ["a", "b", "c"] {
        assert_eq!(f.state(d).await, "healthy");
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_long_outage_alerts_offline_once_and_resolves_saying_the_backlog_covered_it(
    pool: PgPool,
) {
    let f = Fleet::new(pool).await;
    healthy_start(&f, &["a", "b"]).await;
    let last = f.now();
    f.advance(sec(20));
    f.disconnect("a", "s1", 1, "CONNECTION_LOST").await;
    let gone = f.now();
    // due at last+10m (+1s flush allowance); disconnect_grace ends at gone+10m, later: that decides
    f.run(min(10), sec(15), &["b"]).await;
    assert_eq!(f.state("a").await, "offline");
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let (id, kind, subject, status, class) = alerts[0].clone();
    assert_eq!(
        (kind.as_str(), subject.as_str(), status.as_str()),
        ("heartbeat_gap", "a", "firing")
    );
    assert_eq!(class.as_deref(), Some("offline"));
    let (summary, details, _) = f.alert(id).await;
    assert!(
        summary.contains("offline") && summary.contains("CONNECTION_LOST"),
        "{summary}"
    );
    assert_eq!(details["last_disconnect_reason"], "CONNECTION_LOST");
    assert_eq!(details["last_ip"], "198.51.100.1");
    assert!(gone - last < min(1));

    // hours later it comes back with everything it buffered
    f.run(TimeDelta::hours(3), min(1), &["b"]).await;
    assert_eq!(f.alerts().await.len(), 1, "still one alert, never re-sent");
    f.connect("a", "s2", 2).await;
    let backlog: Vec<_> = (0..180).map(|i| Some(last + min(i))).collect();
    f.data("a", &backlog).await;
    f.advance(sec(15));
    f.tick().await;
    let alerts = f.alerts().await;
    assert_eq!(alerts[0].3, "resolved");
    let (summary, details, _) = f.alert(id).await;
    assert_eq!(details["backlog_covered"], true, "{details}");
    assert!(summary.contains("covered the gap"), "{summary}");
    assert_eq!(f.trail(id).await, ["opened", "resolved"]);
    assert_eq!(f.state("a").await, "healthy");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn data_returning_without_its_backlog_says_data_was_lost(pool: PgPool) {
    let f = Fleet::new(pool).await;
    healthy_start(&f, &["a"]).await;
    f.run(min(40), min(1), &[]).await;
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].4.as_deref(), Some("silent"));
    f.beat("a").await;
    f.advance(sec(15));
    f.tick().await;
    let (_, details, _) = f.alert(alerts[0].0).await;
    assert_eq!(details["backlog_covered"], false, "{details}");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_device_reconnecting_every_few_minutes_without_data_still_alerts(pool: PgPool) {
    let f = Fleet::new(pool).await;
    healthy_start(&f, &["a"]).await;
    let last = f.now();
    let mut alerted_at = None;
    for v in 2..22 {
        f.advance(min(3));
        f.disconnect(
            "a",
            &format!("s{}", v - 1),
            v - 1,
            "MQTT_KEEP_ALIVE_TIMEOUT",
        )
        .await;
        f.connect("a", &format!("s{v}"), v).await;
        f.tick().await;
        if alerted_at.is_none() && f.alerts().await.iter().any(|a| a.1 == "heartbeat_gap") {
            alerted_at = Some(f.now());
        }
    }
    // The first reconnect (at +3m) restarts the clock once: due at +3m + 10m (+1s), seen at the
    // next tick (every 3m here).
    let alerted_at = alerted_at.expect("must alert");
    assert!(
        alerted_at - last <= min(15),
        "alerted after {:?}",
        alerted_at - last
    );
    let alerts = f.alerts().await;
    let gaps: Vec<_> = alerts.iter().filter(|a| a.1 == "heartbeat_gap").collect();
    assert_eq!(gaps.len(), 1, "{alerts:?}");
    assert_eq!(gaps[0].4.as_deref(), Some("silent"));
    // twenty drops in an hour is also a flapping modem, its own alert
    assert!(
        alerts.iter().any(|a| a.1 == "flapping" && a.2 == "a"),
        "{alerts:?}"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn connected_but_silent_is_reclassified_offline_in_place(pool: PgPool) {
    let f = Fleet::new(pool).await;
    healthy_start(&f, &["a"]).await;
    // the player crashes; the modem stays connected
    f.run(min(11), sec(15), &[]).await;
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 1);
    let id = alerts[0].0;
    assert_eq!(alerts[0].4.as_deref(), Some("silent"));
    assert_eq!(f.state("a").await, "silent");
    // 20 minutes later IoT Core notices the dead link (1.5 x keep-alive)
    f.run(min(20), min(1), &[]).await;
    f.disconnect("a", "s1", 1, "MQTT_KEEP_ALIVE_TIMEOUT").await;
    f.advance(sec(15));
    f.tick().await;
    assert_eq!(
        f.state("a").await,
        "silent",
        "not offline before disconnect_grace"
    );
    f.run(min(10), sec(15), &[]).await;
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 1, "same alert, no new one: {alerts:?}");
    assert_eq!(alerts[0].0, id);
    assert_eq!(alerts[0].4.as_deref(), Some("offline"));
    assert_eq!(f.state("a").await, "offline");
    assert_eq!(f.trail(id).await, ["opened", "reclassified"]);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn our_own_outage_raises_one_ingest_down_and_no_device_alerts(pool: PgPool) {
    let f = Fleet::new(pool).await;
    healthy_start(&f, &["a", "b", "c"]).await;
    // the broker goes away for 40 minutes: no data reaches us from anyone
    for _ in 0..160 {
        f.advance(sec(15));
        let o = f.tick_down().await;
        assert!(o.ingest_down);
    }
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (alerts[0].1.as_str(), alerts[0].3.as_str()),
        ("ingest_down", "firing")
    );
    // it comes back; devices resume within an interval: nothing per device, ever
    f.advance(sec(15));
    f.tick().await;
    f.run(min(30), min(1), &["a", "b", "c"]).await;
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].3, "resolved");
    // a device that does NOT come back is alerted, counted from the recovery
    let recovered = f.now();
    f.run(min(12), min(1), &["a", "b"]).await;
    let gaps: Vec<_> = f
        .alerts()
        .await
        .into_iter()
        .filter(|a| a.1 == "heartbeat_gap")
        .collect();
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0].2, "c");
    let _ = recovered;
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_short_ingest_blip_evaluates_nothing_and_alerts_nothing(pool: PgPool) {
    let f = Fleet::new(pool).await;
    healthy_start(&f, &["a"]).await;
    f.advance(sec(15));
    let o = f.tick_down().await;
    assert!(o.ingest_down && o.heartbeat.evaluated == 0);
    f.advance(sec(5));
    f.tick().await;
    assert!(
        f.alerts().await.is_empty(),
        "shorter than ingest_down_after"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_service_restart_does_not_turn_into_device_alerts(pool: PgPool) {
    let f = Fleet::new(pool.clone()).await;
    healthy_start(&f, &["a", "b"]).await;
    // the service is down for an hour (nothing ticks, nothing arrives)
    f.advance(TimeDelta::hours(1));
    // a new process: new detector memory, same database
    let g = Fleet {
        clock: f.clock.clone(),
        ..Fleet::new(pool).await
    };
    g.clock.set(f.now());
    g.tick().await;
    // devices resume after the restart: no alerts
    g.run(min(20), min(1), &["a", "b"]).await;
    assert!(g.alerts().await.is_empty(), "{:?}", g.alerts().await);
    // one that doesn't resume alerts once, counted from the restart
    g.run(min(12), min(1), &["a"]).await;
    let alerts = g.alerts().await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].2, "b");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_refire_within_the_reopen_window_reopens_the_same_alert(pool: PgPool) {
    let f = Fleet::new(pool).await;
    healthy_start(&f, &["a"]).await;
    f.run(min(12), min(1), &[]).await;
    let id = f.alerts().await[0].0;
    f.beat("a").await;
    f.run(min(2), min(1), &["a"]).await;
    assert_eq!(f.alerts().await[0].3, "resolved");
    f.run(min(12), min(1), &[]).await;
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 1, "reopened, not new: {alerts:?}");
    assert_eq!((alerts[0].0, alerts[0].3.as_str()), (id, "firing"));
    assert_eq!(f.trail(id).await, ["opened", "resolved", "reopened"]);
    // beyond the window: a new id
    f.beat("a").await;
    f.run(min(40), min(1), &["a"]).await;
    f.run(min(12), min(1), &[]).await;
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 2);
    assert!(alerts[1].0 > id);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn per_device_and_group_expectations_override_the_fleet(pool: PgPool) {
    let mut cfg = Config::default();
    cfg.groups.insert(
        "slow-bldg".into(),
        fleetwatch::config::GroupConfig {
            device_pattern: Some("^slow-".parse().unwrap()),
            expected_interval: Some(HumanDuration(std::time::Duration::from_secs(3600))),
            ..Default::default()
        },
    );
    cfg.devices.overrides.insert(
        "slow-special".into(),
        fleetwatch::config::ExpectationOverride {
            expected_interval: Some(HumanDuration(std::time::Duration::from_secs(120))),
            grace: Some(HumanDuration(std::time::Duration::from_secs(60))),
        },
    );
    let f = Fleet::with_config(pool, cfg).await;
    healthy_start(&f, &["fast", "slow-1", "slow-special"]).await;
    f.run(min(4), sec(15), &[]).await;
    let subjects: Vec<String> = f.alerts().await.into_iter().map(|a| a.2).collect();
    assert_eq!(
        subjects,
        ["slow-special"],
        "2m + 1m for the device override"
    );
    f.run(min(8), sec(15), &[]).await;
    let subjects: Vec<String> = f.alerts().await.into_iter().map(|a| a.2).collect();
    assert_eq!(subjects, ["slow-special", "fast"]);
    f.run(min(60), min(1), &[]).await;
    assert_eq!(f.alerts().await.len(), 3, "slow-1 after its group's hour");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_tick_with_nothing_due_touches_nothing(pool: PgPool) {
    let f = Fleet::new(pool).await;
    healthy_start(&f, &["a", "b", "c"]).await;
    f.advance(sec(1));
    let o = f.tick().await;
    assert_eq!(o.heartbeat.evaluated, 0, "{o:?}");
}

fn tokyo_fleet_config() -> Config {
    let mut cfg = Config::default();
    cfg.groups.insert(
        "tokyo".into(),
        fleetwatch::config::GroupConfig {
            time_zone: Some("Asia/Tokyo".parse().unwrap()),
            device_pattern: Some("^tky-".parse().unwrap()),
            quiet_hours: Some("00:30-05:30".parse().unwrap()),
            ..Default::default()
        },
    );
    cfg
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn quiet_hours_across_midnight_pause_evaluation_and_keep_open_alerts_open(pool: PgPool) {
    let f = Fleet::with_config(pool, tokyo_fleet_config()).await;
    // 09:00Z is 18:00 in Tokyo; quiet hours are 00:30-05:30 JST = 15:30-20:30Z.
    healthy_start(&f, &["tky-a", "tky-b", "tky-c"]).await;
    // tky-a dies in the evening: alerted before the night
    f.run(min(15), min(1), &["tky-b", "tky-c"]).await;
    let open: Vec<_> = f.alerts().await;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].2, "tky-a");
    let id = open[0].0;
    // everyone beats until 15:25Z; tky-b goes dark five minutes before the quiet hours
    let until = t0() + TimeDelta::hours(6) + min(25);
    f.run(until - f.now(), min(1), &["tky-b", "tky-c"]).await;
    // through the night nobody sends anything; the screens are off
    f.run(TimeDelta::hours(5) + min(4), min(1), &[]).await; // 20:29Z
    for d in ["tky-a", "tky-b", "tky-c"] {
        assert_eq!(f.state(d).await, "quiet", "{d}");
    }
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 1, "nothing new at night: {alerts:?}");
    assert_eq!(
        (alerts[0].0, alerts[0].3.as_str()),
        (id, "firing"),
        "open through the night"
    );
    // 05:30 JST: morning; tky-c starts beating again, tky-b does not
    f.run(min(2), min(1), &["tky-c"]).await;
    assert_eq!(f.state("tky-c").await, "healthy");
    assert_eq!(
        f.state("tky-b").await,
        "healthy",
        "clock restarted at the end of quiet hours"
    );
    f.run(min(12), min(1), &["tky-c"]).await;
    let alerts = f.alerts().await;
    let subjects: Vec<&str> = alerts.iter().map(|a| a.2.as_str()).collect();
    assert_eq!(
        subjects,
        ["tky-a", "tky-b"],
        "tky-b alerted interval+grace after the morning"
    );
    assert_eq!(
        f.trail(id).await,
        ["opened"],
        "never resolved and re-fired overnight"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_building_power_cut_is_one_group_alert(pool: PgPool) {
    let f = Fleet::with_config(pool, {
        let mut c = tokyo_fleet_config();
        c.groups.get_mut("tokyo").unwrap().quiet_hours = None;
        c
    })
    .await;
    let tokyo: Vec<String> = (0..8).map(|i| format!("tky-{i}")).collect();
    let others = ["osaka-1", "osaka-2"];
    let mut all: Vec<&str> = tokyo.iter().map(String::as_str).collect();
    all.extend(others);
    healthy_start(&f, &all).await;
    // the building's power goes: every screen there drops at once, no disconnect grace reprieve
    for d in &tokyo {
        f.disconnect(d, "s1", 1, "CONNECTION_LOST").await;
    }
    f.run(min(15), min(1), &others).await;
    let alerts = f.alerts().await;
    let outages: Vec<_> = alerts.iter().filter(|a| a.1 == "group_outage").collect();
    assert_eq!(outages.len(), 1, "{alerts:?}");
    assert_eq!(outages[0].2, "tokyo");
    let gaps: Vec<_> = alerts.iter().filter(|a| a.1 == "heartbeat_gap").collect();
    assert_eq!(gaps.len(), 8, "still recorded per device");
    for g in &gaps {
        let (_, _, covered_by) = f.alert(g.0).await;
        assert_eq!(covered_by, Some(outages[0].0), "{} covered", g.2);
    }
    let (_, details, _) = f.alert(outages[0].0).await;
    assert_eq!(details["devices"].as_array().unwrap().len(), 8, "{details}");
    assert!(alerts.iter().all(|a| a.2 != "osaka-1" && a.2 != "osaka-2"));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn two_devices_sharing_a_client_id_are_named_by_their_addresses(pool: PgPool) {
    let f = Fleet::new(pool).await;
    f.tick().await;
    // the stock bridge config: both units use client ID "bridgeawsiot"; each connect kicks the
    // other off with DUPLICATE_CLIENTID
    for round in 0..6 {
        kicked_off(&f, round, round + 1).await;
    }
    f.tick().await;
    let alerts = f.alerts().await;
    let conflicts: Vec<_> = alerts
        .iter()
        .filter(|a| a.1 == "client_id_conflict")
        .collect();
    assert_eq!(conflicts.len(), 1, "{alerts:?}");
    let (summary, details, _) = f.alert(conflicts[0].0).await;
    let text = format!("{summary} {details}");
    assert!(
        text.contains("203.0.113.10") && text.contains("198.51.100.20"),
        "{text}"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_flapping_modem_is_one_alert(pool: PgPool) {
    let f = Fleet::new(pool).await;
    healthy_start(&f, &["a", "b"]).await;
    // a's modem drops every 2 minutes for 40 minutes but the bridge keeps data flowing
    for i in 0..20 {
        f.disconnect("a", &format!("s{}", i + 1), i + 1, "CONNECTION_LOST")
            .await;
        f.advance(sec(20));
        f.connect("a", &format!("s{}", i + 2), i + 2).await;
        f.beat("a").await;
        f.beat("b").await;
        f.advance(sec(100));
        f.tick().await;
    }
    let alerts = f.alerts().await;
    let kinds: Vec<(&str, &str)> = alerts
        .iter()
        .map(|a| (a.1.as_str(), a.2.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [("flapping", "a")],
        "no gap alert: data kept flowing"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_restart_in_the_middle_keeps_open_alerts_and_pending_clocks(pool: PgPool) {
    let f = Fleet::new(pool.clone()).await;
    healthy_start(&f, &["dead", "late", "fine", "blip"]).await;
    // "dead" stops and is alerted; "late" stops 6 minutes before the restart; "blip" drops
    f.run(min(12), min(1), &["late", "fine", "blip"]).await;
    f.disconnect("blip", "s1", 1, "CONNECTION_LOST").await;
    f.run(min(6), min(1), &["fine"]).await;
    let before = f.alerts().await;
    let subjects: Vec<&str> = before.iter().map(|a| a.2.as_str()).collect();
    assert_eq!(subjects, ["dead"]);
    assert_eq!(f.state("late").await, "late");

    // the service restarts (5 minutes away); the blip device reconnects with its backlog
    f.advance(min(5));
    let g = Fleet {
        clock: f.clock.clone(),
        ..Fleet::new(pool).await
    };
    g.tick().await;
    g.connect("blip", "s2", 2).await;
    let backlog: Vec<_> = (0..12).map(|i| Some(g.now() - min(12 - i))).collect();
    g.data("blip", &backlog).await;
    g.run(min(20), min(1), &["fine", "blip"]).await;
    let after = g.alerts().await;
    // "dead" is the same alert, still firing and never re-sent; "late" alerts once, counted
    // from the restart; "blip" raises nothing
    assert_eq!(after[0], before[0]);
    assert_eq!(g.trail(before[0].0).await, ["opened"]);
    let subjects: Vec<&str> = after.iter().map(|a| a.2.as_str()).collect();
    assert_eq!(subjects, ["dead", "late"]);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn disconnect_grace_runs_on_our_clock_not_on_event_timestamps(pool: PgPool) {
    let f = Fleet::new(pool).await;
    healthy_start(&f, &["a"]).await;
    let last = f.now();
    // the disconnect reaches us a minute later, stamped 20 minutes in the past (a skewed or
    // replayed feed); on its own timestamp it would already be older than disconnect_grace
    f.advance(min(1));
    f.presence(disconnected(
        "a",
        ms(f.now() - min(20)),
        "s1",
        1,
        "CONNECTION_LOST",
    ))
    .await;
    f.run(min(9) + sec(30), sec(15), &[]).await;
    // back after 10.5 minutes, with its backlog: to us the disconnect was 9.5 minutes old
    f.connect("a", "s2", 2).await;
    let backlog: Vec<_> = (0..10).map(|i| Some(last + min(i))).collect();
    f.data("a", &backlog).await;
    f.run(min(15), min(1), &["a"]).await;
    assert!(f.alerts().await.is_empty(), "{:?}", f.alerts().await);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_screen_that_connects_but_never_sends_is_silent_and_a_configured_one_is_not(
    pool: PgPool,
) {
    let mut cfg = Config::default();
    // known from configuration only: never connected, never sent
    cfg.devices
        .overrides
        .insert("spare-unit".into(), Default::default());
    let f = Fleet::with_config(pool, cfg).await;
    f.tick().await;
    f.advance(min(1));
    f.connect("new-screen", "s1", 1).await;
    let connected_at = f.now();
    f.run(min(9), sec(15), &[]).await;
    assert_eq!(f.state("new-screen").await, "never_seen");
    assert!(f.alerts().await.is_empty());
    f.run(min(2), sec(15), &[]).await;
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (alerts[0].2.as_str(), alerts[0].4.as_deref()),
        ("new-screen", Some("silent"))
    );
    let opened: DateTime<Utc> = sqlx::query_scalar("select opened_at from alerts where id = $1")
        .bind(alerts[0].0)
        .fetch_one(&f.pool)
        .await
        .unwrap();
    // due at first connect + interval + grace (+1 s flush allowance), seen at the next tick
    assert!(
        opened - connected_at <= min(10) + sec(16),
        "{:?}",
        opened - connected_at
    );
    f.run(TimeDelta::hours(3), min(5), &[]).await;
    assert_eq!(f.state("spare-unit").await, "never_seen");
    assert_eq!(f.alerts().await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// One incident, one page: inhibition (issue 8 part 12), seen at a real webhook receiver
// ---------------------------------------------------------------------------------------------

type Pages = Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A webhook receiver on a real socket and the delivery worker, ticked by hand.
struct Pager {
    worker: fleetwatch::alerts::webhook::Worker,
    pages: Pages,
}

async fn hook(
    axum::extract::State(pages): axum::extract::State<Pages>,
    body: axum::body::Bytes,
) -> &'static str {
    let v: Value = serde_json::from_slice(&body).unwrap();
    pages.lock().unwrap().push((
        v["event"].as_str().unwrap().to_string(),
        v["alert"]["kind"].as_str().unwrap().to_string(),
    ));
    "ok"
}

impl Pager {
    /// Adds one native endpoint to `cfg` (build the fleet from it afterwards).
    async fn start(pool: &PgPool, cfg: &mut Config) -> Pager {
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
            ..Default::default()
        }];
        fleetwatch::alerts::outbox::sync_endpoints(pool, &cfg.webhooks)
            .await
            .unwrap();
        Pager {
            worker: fleetwatch::alerts::webhook::Worker::new(pool.clone(), &cfg.webhooks).unwrap(),
            pages,
        }
    }

    async fn deliver(&self, now: DateTime<Utc>) {
        self.worker.tick(now).await.unwrap();
    }

    /// Kinds of the `alert.firing` pages received, in order.
    fn firing(&self) -> Vec<String> {
        self.pages
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| e == "alert.firing")
            .map(|(_, k)| k.clone())
            .collect()
    }
}

/// (kind, inhibited_by's kind) of every alert.
async fn inhibitions(pool: &PgPool) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        r#"select a.kind, s.kind from alerts a left join alerts s on s.id = a.inhibited_by
           order by a.id"#,
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// One round of two units sharing the stock bridge client ID "bridgeawsiot": unit A (even
/// rounds) or B (odd) connects with version `v` on a session of its own, and two seconds later
/// the other kicks it off with DUPLICATE_CLIENTID.
async fn kicked_off(f: &Fleet, round: i64, v: i64) {
    let (session, ip) = if round % 2 == 0 {
        ("sa", "203.0.113.10")
    } else {
        ("sb", "198.51.100.20")
    };
    let session = format!("{session}{v}");
    f.presence(connected("bridgeawsiot", ms(f.now()), &session, v, ip))
        .await;
    f.advance(sec(2));
    f.presence(disconnected(
        "bridgeawsiot",
        ms(f.now()),
        &session,
        v,
        "DUPLICATE_CLIENTID",
    ))
    .await;
    f.advance(sec(1));
}

/// The stock bridge config on two units: each connect kicks the other off with
/// DUPLICATE_CLIENTID, a dozen times in half a minute, then every 5 minutes for half an hour.
async fn duplicate_client_id_storm(f: &Fleet, pager: &Pager) {
    let mut v = 0;
    for burst in 0..7 {
        let rounds = if burst == 0 { 12 } else { 2 };
        for round in 0..rounds {
            v += 1;
            kicked_off(f, round, v).await;
        }
        for _ in 0..20 {
            f.advance(sec(15));
            f.tick().await;
            pager.deliver(f.now()).await;
        }
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_duplicate_client_id_storm_pages_once(pool: PgPool) {
    let mut cfg = Config::default();
    let pager = Pager::start(&pool, &mut cfg).await;
    let f = Fleet::with_config(pool.clone(), cfg).await;
    f.tick().await;
    duplicate_client_id_storm(&f, &pager).await;
    // both alerts exist, flapping linked to the conflict that explains it, one page
    assert_eq!(
        inhibitions(&pool).await,
        [
            (
                "flapping".to_string(),
                Some("client_id_conflict".to_string())
            ),
            ("client_id_conflict".to_string(), None)
        ]
    );
    assert_eq!(pager.firing(), ["client_id_conflict"]);
    let flapping: i64 = sqlx::query_scalar("select id from alerts where kind = 'flapping'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(f.trail(flapping).await.contains(&"inhibited".to_string()));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn without_inhibition_rules_the_storm_pages_twice(pool: PgPool) {
    let mut cfg = Config::from_toml("inhibit = []").unwrap();
    let pager = Pager::start(&pool, &mut cfg).await;
    let f = Fleet::with_config(pool.clone(), cfg).await;
    f.tick().await;
    duplicate_client_id_storm(&f, &pager).await;
    let mut firing = pager.firing();
    firing.sort();
    assert_eq!(firing, ["client_id_conflict", "flapping"]);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_device_reconnecting_in_a_loop_without_data_pages_heartbeat_gap_only(pool: PgPool) {
    let mut cfg = Config::default();
    let pager = Pager::start(&pool, &mut cfg).await;
    let f = Fleet::with_config(pool.clone(), cfg).await;
    healthy_start(&f, &["a"]).await;
    for v in 2..32 {
        f.advance(min(2));
        f.disconnect(
            "a",
            &format!("s{}", v - 1),
            v - 1,
            "MQTT_KEEP_ALIVE_TIMEOUT",
        )
        .await;
        f.connect("a", &format!("s{v}"), v).await;
        f.tick().await;
        pager.deliver(f.now()).await;
    }
    assert_eq!(
        inhibitions(&pool).await,
        [
            ("heartbeat_gap".to_string(), None),
            ("flapping".to_string(), Some("heartbeat_gap".to_string()))
        ]
    );
    assert_eq!(pager.firing(), ["heartbeat_gap"]);
}

/// Four buildings, two carriers (issue 13): `b1`…`b3` have four screens on carrier A
/// (198.51.100.x, the default network `198.51/16`) and one on carrier B (203.0.113.x,
/// `203.0/16`); `b4` has thirty on carrier B (so that carrier A's 12 screens are under the
/// fleet outage's 30 %: a carrier outage, not the fleet's). Returns the fleet, its pager and the screens of A
/// per building and of B.
async fn two_carrier_fleet(pool: &PgPool) -> (Fleet, Pager, Vec<Vec<String>>, Vec<String>) {
    let mut cfg = Config::default();
    for b in ["b1", "b2", "b3", "b4"] {
        cfg.groups.insert(
            b.into(),
            fleetwatch::config::GroupConfig {
                device_pattern: Some(format!("^{b}-").parse().unwrap()),
                ..Default::default()
            },
        );
    }
    let pager = Pager::start(pool, &mut cfg).await;
    let f = Fleet::with_config(pool.clone(), cfg).await;
    let on_a: Vec<Vec<String>> = ["b1", "b2", "b3"]
        .iter()
        .map(|b| (0..4).map(|i| format!("{b}-a{i}")).collect())
        .collect();
    let mut on_b: Vec<String> = ["b1", "b2", "b3"]
        .iter()
        .map(|b| format!("{b}-b0"))
        .collect();
    on_b.extend((0..30).map(|i| format!("b4-b{i:02}")));
    f.tick().await;
    for (k, d) in on_a.iter().flatten().enumerate() {
        f.presence(connected(
            d,
            ms(f.now()),
            "s1",
            1,
            &format!("198.51.100.{}", k % 3 + 1),
        ))
        .await;
        f.beat(d).await;
    }
    for (k, d) in on_b.iter().enumerate() {
        f.presence(connected(
            d,
            ms(f.now()),
            "s1",
            1,
            &format!("203.0.113.{}", k % 2 + 7),
        ))
        .await;
        f.beat(d).await;
    }
    let all: Vec<&str> = on_a
        .iter()
        .flatten()
        .chain(&on_b)
        .map(String::as_str)
        .collect();
    for _ in 0..20 {
        f.advance(min(1));
        f.beat_many(&all).await;
        f.tick().await;
    }
    assert!(f.alerts().await.is_empty());
    let networks: Vec<(String, i64)> =
        sqlx::query_as("select network, count(*) from devices group by network order by network")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        networks,
        [("198.51/16".to_string(), 12), ("203.0/16".to_string(), 33)],
        "the drift pass records each device's network"
    );
    (f, pager, on_a, on_b)
}

/// Ten-second steps for `total`, the screens in `beating` sending, the pager delivering.
async fn run_paging(f: &Fleet, pager: &Pager, total: TimeDelta, beating: &[&str]) {
    let mut elapsed = TimeDelta::zero();
    while elapsed < total {
        f.advance(sec(10));
        elapsed += sec(10);
        f.beat_many(beating).await;
        f.tick().await;
        pager.deliver(f.now()).await;
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_carrier_outage_across_three_buildings_pages_once(pool: PgPool) {
    let (f, pager, on_a, on_b) = two_carrier_fleet(&pool).await;
    let b_screens: Vec<&str> = on_b.iter().map(String::as_str).collect();
    // Carrier A fails: b1's screens lose it 20 s before the others (their gaps, and b1's
    // group outage, open a tick or two before the network's), carrier B carries on.
    let mut later: Vec<&str> = on_a[1].iter().chain(&on_a[2]).map(String::as_str).collect();
    later.extend(&b_screens);
    run_paging(&f, &pager, sec(20), &later).await;
    run_paging(&f, &pager, min(20), &b_screens).await;

    let alerts = f.alerts().await;
    let of = |kind: &str| -> Vec<_> { alerts.iter().filter(|a| a.1 == kind).collect() };
    let network = of("network_outage");
    assert_eq!(network.len(), 1, "{alerts:?}");
    assert_eq!(network[0].2, "198.51/16");
    assert_eq!(of("group_outage").len(), 3, "{alerts:?}");
    assert_eq!(of("heartbeat_gap").len(), 12, "{alerts:?}");
    assert!(of("fleet_outage").is_empty(), "12 of 45: {alerts:?}");
    for a in alerts.iter().filter(|a| a.1 != "network_outage") {
        let (_, _, covered_by) = f.alert(a.0).await;
        let top = match covered_by {
            Some(by) if a.1 == "heartbeat_gap" => f.alert(by).await.2.or(Some(by)),
            other => other,
        };
        assert_eq!(top, Some(network[0].0), "{a:?} under the network outage");
    }
    let (summary, details, _) = f.alert(network[0].0).await;
    assert_eq!(details["prefixes"], serde_json::json!(["198.51.0.0/16"]));
    assert_eq!(details["count"], 12);
    assert_eq!(details["reporting"], 12);
    let buildings: Vec<&str> = details["buildings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(buildings, ["b1", "b2", "b3"]);
    assert!(
        summary.contains("12 of 12") && summary.contains("3 buildings"),
        "{summary}"
    );
    // One page for the carrier, none for its buildings or screens.
    assert_eq!(pager.firing(), ["network_outage"]);

    // Carrier A comes back, b1's last two screens 20 s after the others: the network outage
    // ends first (2 dark is under half its threshold) and releases b1's group outage, which
    // still fires (2 dark is not under half of 3); released, it waits group_wait like a
    // firing, and b1's screens are back before it is due. Nothing pages as firing again.
    let all: Vec<&str> = on_a
        .iter()
        .flatten()
        .chain(&on_b)
        .map(String::as_str)
        .collect();
    let (tail, first): (Vec<&str>, Vec<&str>) = on_a
        .iter()
        .flatten()
        .map(String::as_str)
        .partition(|d| *d == "b1-a2" || *d == "b1-a3");
    for d in &first {
        f.presence(connected(d, ms(f.now()), "s2", 2, "198.51.100.1"))
            .await;
    }
    let mut back: Vec<&str> = first.clone();
    back.extend(&b_screens);
    run_paging(&f, &pager, sec(20), &back).await;
    let status = |kind: &str, subject: &str| {
        let a = alerts
            .iter()
            .find(|a| a.1 == kind && a.2 == subject)
            .unwrap()
            .0;
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("select status from alerts where id = $1")
                .bind(a)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(status("network_outage", "198.51/16").await, "resolved");
    assert_eq!(
        status("group_outage", "b1").await,
        "firing",
        "released, still dark"
    );
    for d in &tail {
        f.presence(connected(d, ms(f.now()), "s2", 2, "198.51.100.2"))
            .await;
    }
    run_paging(&f, &pager, min(3), &all).await;
    let firing: Vec<_> = f
        .alerts()
        .await
        .into_iter()
        .filter(|a| a.3 == "firing")
        .collect();
    assert!(firing.is_empty(), "{firing:?}");
    assert_eq!(pager.firing(), ["network_outage"]);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_building_outage_inside_one_carrier_is_the_group_outage(pool: PgPool) {
    let (f, pager, on_a, on_b) = two_carrier_fleet(&pool).await;
    // b2's four carrier-A screens lose power; A is fine elsewhere.
    let beating: Vec<&str> = on_a[0]
        .iter()
        .chain(&on_a[2])
        .chain(&on_b)
        .map(String::as_str)
        .collect();
    run_paging(&f, &pager, min(20), &beating).await;
    let alerts = f.alerts().await;
    let kinds: Vec<&str> = alerts
        .iter()
        .filter(|a| a.1 != "heartbeat_gap")
        .map(|a| a.1.as_str())
        .collect();
    assert_eq!(kinds, ["group_outage"], "{alerts:?}");
    assert_eq!(pager.firing(), ["group_outage"]);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn screens_failing_one_by_one_across_a_carrier_are_no_outage(pool: PgPool) {
    let (f, pager, on_a, on_b) = two_carrier_fleet(&pool).await;
    // one carrier-A screen per building goes dark, 15 minutes apart: three device pages
    let mut beating: Vec<&str> = on_a
        .iter()
        .flatten()
        .chain(&on_b)
        .map(String::as_str)
        .collect();
    for building in &on_a {
        let gone = building[0].as_str();
        beating.retain(|d| *d != gone);
        run_paging(&f, &pager, min(15), &beating).await;
    }
    run_paging(&f, &pager, min(15), &beating).await;
    let kinds: Vec<String> = f.alerts().await.into_iter().map(|a| a.1).collect();
    assert_eq!(kinds, ["heartbeat_gap"; 3]);
    assert_eq!(pager.firing(), ["heartbeat_gap"; 3]);
}
