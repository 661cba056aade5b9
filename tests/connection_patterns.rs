//! Connection-pattern alerts against a real Postgres (DESIGN.md §2 item 4, issue 3 item 6):
//! fleet stories on an injected clock, each with the exact alerts it must (and must not) raise.
//! Presence events are stored as ingest stores them, each no earlier than it happened, and the
//! detector pass runs at explicit instants, so hours of fleet behaviour take milliseconds.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{connect_failed, connected, disconnected};
use fleetwatch::config::Config;
use fleetwatch::db::alerts::{self as alert_rows, AlertFilter, AlertRow};
use fleetwatch::detect::connection::{tick, Outcome};
use fleetwatch::detect::Settings;
use fleetwatch::domain::alert::Kind;
use fleetwatch::domain::presence::{self, EventType};
use serde_json::{json, Value};
use sqlx::PgPool;

/// Midnight UTC on the test day; everything is placed relative to it.
fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-27T00:00:00Z")
        .unwrap()
        .to_utc()
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The defaults of the configuration: flapping 10 in 30m, conflict 3 in 10m, throttled 3 in
/// 10m, auth 5 in 10m, reopen window 30m. Asserted so that a changed default fails loudly here.
fn settings() -> Settings {
    let s = Settings::from_config(&Config::default());
    assert_eq!(
        (s.flapping_disconnects, s.flapping_window),
        (10, TimeDelta::minutes(30))
    );
    assert_eq!(
        (s.conflict_disconnects, s.conflict_window),
        (3, TimeDelta::minutes(10))
    );
    assert_eq!(
        (s.throttled_disconnects, s.throttled_window),
        (3, TimeDelta::minutes(10))
    );
    assert_eq!(
        (s.auth_failures, s.auth_window),
        (5, TimeDelta::minutes(10))
    );
    assert_eq!(s.reopen_window, TimeDelta::minutes(30));
    s
}

/// A payload with another principal (the shared builders use one for every client).
fn principal(payload: String, p: &str) -> String {
    let mut v: Value = serde_json::from_str(&payload).unwrap();
    v["principalIdentifier"] = json!(p);
    v.to_string()
}

/// A fleet's presence feed and the detector, on one clock.
struct Sim {
    pool: PgPool,
    s: Settings,
    /// (arrival, payload, group), stored in arrival order once the clock passes them.
    feed: Vec<(DateTime<Utc>, String, Option<&'static str>)>,
    next: usize,
}

impl Sim {
    fn new(pool: &PgPool) -> Sim {
        Sim {
            pool: pool.clone(),
            s: settings(),
            feed: Vec::new(),
            next: 0,
        }
    }

    /// Queue an event; it arrives 300 ms after AWS stamped it.
    fn push(&mut self, payload: String, group: Option<&'static str>) {
        let v: Value = serde_json::from_str(&payload).unwrap();
        let ts = DateTime::from_timestamp_millis(v["timestamp"].as_i64().unwrap()).unwrap();
        self.push_at(payload, ts + TimeDelta::milliseconds(300), group);
    }

    /// Queue an event arriving at `arrival` by our clock.
    fn push_at(&mut self, payload: String, arrival: DateTime<Utc>, group: Option<&'static str>) {
        self.feed.push((arrival, payload, group));
        self.feed[self.next..].sort_by_key(|(at, _, _)| *at);
    }

    /// Store what has arrived by `now` as ingest would (connect_failed never creates a device),
    /// then run one detector pass at `now`.
    async fn tick(&mut self, now: DateTime<Utc>) -> Outcome {
        while let Some((arrival, payload, group)) = self.feed.get(self.next).cloned() {
            if arrival > now {
                break;
            }
            self.next += 1;
            let ev = presence::parse(payload.as_bytes(), arrival).unwrap();
            let known: bool =
                sqlx::query_scalar("select exists(select 1 from devices where id = $1)")
                    .bind(&ev.client_id)
                    .fetch_one(&self.pool)
                    .await
                    .unwrap();
            let device = (ev.event_type != EventType::ConnectFailed || known)
                .then_some(ev.client_id.as_str());
            fleetwatch::db::presence::store(
                &self.pool,
                &ev,
                device,
                group,
                arrival,
                TimeDelta::minutes(5),
            )
            .await
            .unwrap();
        }
        tick(&self.pool, &self.s, now).await.unwrap()
    }

    /// A pass with no new events at the same instant must change nothing at all. (It may read
    /// again the events younger than `SETTLE`, which the cursor does not pass yet.)
    async fn assert_repeat_is_quiet(&mut self, now: DateTime<Utc>) {
        let before = snapshot(&self.pool).await;
        let o = tick(&self.pool, &self.s, now).await.unwrap();
        assert!(o.fired.is_empty() && o.resolved.is_empty(), "{o:?}");
        assert_eq!(snapshot(&self.pool).await, before);
    }
}

/// Everything a pass may write: alerts, their trail, the cursor.
async fn snapshot(pool: &PgPool) -> (Value, Value, i64) {
    let alerts =
        sqlx::query_scalar("select coalesce(jsonb_agg(a order by id), '[]') from alerts a")
            .fetch_one(pool)
            .await
            .unwrap();
    let events =
        sqlx::query_scalar("select coalesce(jsonb_agg(e order by id), '[]') from alert_events e")
            .fetch_one(pool)
            .await
            .unwrap();
    (alerts, events, cursor(pool).await)
}

async fn cursor(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select presence_cursor from detector_state")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Nothing fired or resolved (a pass may still read events younger than `SETTLE` again).
fn quiet(o: &Outcome) -> bool {
    o.fired.is_empty() && o.resolved.is_empty()
}

async fn max_event_id(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select coalesce(max(id), 0) from presence_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn alerts(pool: &PgPool, kind: Option<Kind>) -> Vec<AlertRow> {
    let mut rows = alert_rows::list(
        pool,
        &AlertFilter {
            kind,
            limit: 1000,
            ..AlertFilter::default()
        },
    )
    .await
    .unwrap();
    rows.sort_by_key(|a| a.id);
    rows
}

async fn trail(pool: &PgPool, id: i64) -> Vec<String> {
    alert_rows::events(pool, id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

async fn device_exists(pool: &PgPool, id: &str) -> bool {
    sqlx::query_scalar("select exists(select 1 from devices where id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn group(pool: &PgPool, id: &str) {
    sqlx::query("insert into groups (id, name) values ($1, $1)")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

fn fired(kind: Kind, subject: &str) -> Vec<(Kind, String)> {
    vec![(kind, subject.to_string())]
}

/// A modem that keeps dropping: connection `i` (session `s{i}`) ends `100 s × (i + 1)` after
/// t0 and the next starts 10 s later, alternating the two reasons an LTE link dies with.
fn flapping_modem(sim: &mut Sim, dev: &str, from: usize, to: usize) {
    for i in from..=to {
        let ts = t0() + secs(100 * i as i64);
        let reason = if i % 2 == 1 {
            "CONNECTION_LOST"
        } else {
            "MQTT_KEEP_ALIVE_TIMEOUT"
        };
        let prev = format!("s{}", i - 1);
        let next = format!("s{i}");
        sim.push(
            disconnected(dev, ms(ts), &prev, i as i64 - 1, reason),
            Some("lobby"),
        );
        sim.push(
            connected(dev, ms(ts + secs(10)), &next, i as i64, "198.51.100.7"),
            Some("lobby"),
        );
    }
}

/// Quick bursts of `n` disconnects, one a minute, starting at `start`, with sessions named from
/// `tag` so that bursts never collide on the natural key.
fn burst(sim: &mut Sim, dev: &str, tag: &str, start: DateTime<Utc>, n: usize) {
    for j in 0..n {
        let ts = start + secs(60 * j as i64);
        let prev = format!("{tag}-{j}");
        let next = format!("{tag}-{}", j + 1);
        if j == 0 {
            sim.push(
                connected(dev, ms(ts - secs(30)), &prev, 0, "198.51.100.7"),
                Some("lobby"),
            );
        }
        sim.push(
            disconnected(dev, ms(ts), &prev, j as i64, "CONNECTION_LOST"),
            Some("lobby"),
        );
        sim.push(
            connected(dev, ms(ts + secs(10)), &next, j as i64 + 1, "198.51.100.7"),
            Some("lobby"),
        );
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_flapping_modem_fires_once_updates_resolves_and_reopens(pool: PgPool) {
    group(&pool, "lobby").await;
    let mut sim = Sim::new(&pool);
    let dev = "lobby-7";
    sim.push(
        connected(dev, ms(t0()), "s0", 0, "198.51.100.7"),
        Some("lobby"),
    );
    flapping_modem(&mut sim, dev, 1, 13);

    // Nine disconnects: below the threshold of ten.
    let o = sim.tick(t0() + secs(915)).await;
    assert_eq!(o.examined_events, 19);
    assert!(o.fired.is_empty(), "{o:?}");
    // the cursor passes only events older than SETTLE: the last two are read again next pass
    assert_eq!(cursor(&pool).await, max_event_id(&pool).await - 2);

    // Eleven disconnects in 20 minutes: one alert.
    let now = t0() + secs(1115);
    let o = sim.tick(now).await;
    assert_eq!(o.fired, fired(Kind::Flapping, dev));
    assert!(o.resolved.is_empty());
    let all = alerts(&pool, None).await;
    assert_eq!(all.len(), 1, "only flapping: {all:#?}");
    let a = &all[0];
    let id = a.id;
    assert_eq!(a.kind, "flapping");
    assert_eq!(a.subject, dev);
    assert_eq!(a.device_id.as_deref(), Some(dev));
    assert_eq!(a.group.as_deref(), Some("lobby"));
    assert_eq!(a.severity, "warning");
    assert_eq!(a.status, "firing");
    assert_eq!(a.opened_at, now);
    assert_eq!(a.summary, "lobby-7 flapping: 11 disconnects in 30m");
    assert_eq!(a.details["count"], 11);
    assert_eq!(a.details["threshold"], 10);
    assert_eq!(a.details["window_seconds"], 1800);
    assert_eq!(
        a.details["reasons"],
        json!({"CONNECTION_LOST": 6, "MQTT_KEEP_ALIVE_TIMEOUT": 5})
    );
    assert_eq!(a.details["addresses"], json!(["198.51.100.7"]));
    assert_eq!(a.details["first_event_at"], "2026-11-27T00:01:40Z");
    assert_eq!(a.details["last_event_at"], "2026-11-27T00:18:20Z");
    sim.assert_repeat_is_quiet(now).await;

    // Two more disconnects update the same alert in place.
    let o = sim.tick(t0() + secs(1315)).await;
    assert!(o.fired.is_empty() && o.resolved.is_empty(), "{o:?}");
    let a = &alerts(&pool, None).await[0];
    assert_eq!((a.id, a.status.as_str()), (id, "firing"));
    assert_eq!(a.summary, "lobby-7 flapping: 13 disconnects in 30m");
    assert_eq!(trail(&pool, id).await, ["opened", "updated"]);

    // The window drains (disconnects at 100 s … 1300 s, window 1800 s). Hysteresis: it stays
    // firing at 6 and at 5 (5 × 2 is not below 10), and resolves at 4.
    for (at, n) in [(2450, 7), (2550, 6), (2650, 5)] {
        let o = sim.tick(t0() + secs(at)).await;
        assert!(quiet(&o), "{n} disconnects left at {at} s: {o:?}");
        assert_eq!(alerts(&pool, None).await[0].status, "firing");
    }
    let resolved_at = t0() + secs(2750);
    let o = sim.tick(resolved_at).await;
    assert_eq!(o.resolved, fired(Kind::Flapping, dev));
    assert!(o.fired.is_empty());
    let a = &alerts(&pool, None).await[0];
    assert_eq!(a.status, "resolved");
    assert_eq!(a.resolved_at, Some(resolved_at));
    assert_eq!(a.details["resolved_count"], 4);
    assert_eq!(
        a.details["count"], 13,
        "the details keep the last firing count"
    );
    let events = alert_rows::events(&pool, id).await.unwrap();
    assert_eq!(
        events.last().unwrap().details,
        json!({"resolved_count": 4, "window_seconds": 1800})
    );
    sim.assert_repeat_is_quiet(resolved_at).await;

    // Flapping again 11 minutes after the resolution: the same alert reopens.
    burst(&mut sim, dev, "b2", t0() + secs(2860), 10);
    for at in [3100, 3300] {
        assert_eq!(sim.tick(t0() + secs(at)).await.fired, vec![]);
    }
    let o = sim.tick(t0() + secs(3500)).await;
    assert_eq!(o.fired, fired(Kind::Flapping, dev));
    let all = alerts(&pool, None).await;
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].id, all[0].status.as_str()), (id, "firing"));
    assert_eq!(all[0].summary, "lobby-7 flapping: 10 disconnects in 30m");
    assert_eq!(
        trail(&pool, id).await,
        ["opened", "updated", "resolved", "reopened"]
    );

    // It drains again (last disconnect at 3400 s) ...
    let second_resolution = t0() + secs(3400 + 1801);
    let o = sim.tick(second_resolution).await;
    assert_eq!(o.resolved, fired(Kind::Flapping, dev));

    // ... and flapping more than the reopen window later is a new incident with a new id.
    let later = second_resolution + TimeDelta::minutes(31);
    burst(&mut sim, dev, "b3", later, 10);
    let o = sim.tick(later + secs(600)).await;
    assert_eq!(o.fired, fired(Kind::Flapping, dev));
    let all = alerts(&pool, None).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, id);
    assert_eq!(all[0].status, "resolved");
    assert!(all[1].id > id);
    assert_eq!(all[1].status, "firing");
    assert_eq!(trail(&pool, all[1].id).await, ["opened"]);
    assert_eq!(
        trail(&pool, id).await,
        ["opened", "updated", "resolved", "reopened", "resolved"]
    );
    // everything but the events of the last SETTLE is behind the cursor
    assert!(cursor(&pool).await <= max_event_id(&pool).await);
    sim.assert_repeat_is_quiet(later + secs(600)).await;
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn an_lte_device_with_three_drops_an_hour_never_fires(pool: PgPool) {
    group(&pool, "lobby").await;
    let mut sim = Sim::new(&pool);
    let dev = "lte-3";
    sim.push(connected(dev, ms(t0()), "c0", 0, "100.64.0.1"), None);
    let mut v = 0;
    for hour in 0..8 {
        for minute in [5, 25, 45] {
            let ts = t0() + TimeDelta::hours(hour) + TimeDelta::minutes(minute);
            sim.push(
                disconnected(dev, ms(ts), &format!("c{v}"), v, "CONNECTION_LOST"),
                None,
            );
            v += 1;
            // CGNAT hands out another address after most drops: not a pattern either.
            let ip = format!("100.64.0.{}", v % 7 + 1);
            sim.push(
                connected(dev, ms(ts + secs(90)), &format!("c{v}"), v, &ip),
                None,
            );
        }
    }
    let mut examined = 0;
    for step in 0..=(8 * 12) {
        let o = sim.tick(t0() + TimeDelta::minutes(5 * step)).await;
        assert!(o.fired.is_empty() && o.resolved.is_empty(), "{o:?}");
        examined += o.examined_events;
    }
    assert_eq!(examined, 1 + 8 * 3 * 2);
    assert!(alerts(&pool, None).await.is_empty());
}

/// Two bridges with the stock Mosquitto config (`clientid bridgeawsiot`) kick each other off
/// on every connect: sessions alternate between two addresses and two certificates.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn two_devices_sharing_a_client_id_fire_one_conflict_naming_both(pool: PgPool) {
    let mut sim = Sim::new(&pool);
    let client = "bridgeawsiot";
    let who = [("198.51.100.10", "cert-a"), ("203.0.113.20", "cert-b")];
    let start = t0() + TimeDelta::hours(1);
    for k in 0..=6i64 {
        let (ip, cert) = who[k as usize % 2];
        let ts = start + secs(5 * k);
        sim.push(
            principal(connected(client, ms(ts), &format!("sess-{k}"), k, ip), cert),
            None,
        );
        if k > 0 {
            // IoT Core ends the previous session right after the new connect.
            let (_, prev_cert) = who[(k as usize - 1) % 2];
            sim.push(
                principal(
                    disconnected(
                        client,
                        ms(ts + TimeDelta::milliseconds(200)),
                        &format!("sess-{}", k - 1),
                        k - 1,
                        "DUPLICATE_CLIENTID",
                    ),
                    prev_cert,
                ),
                None,
            );
        }
    }

    // Two kick-offs: below the threshold of three.
    let o = sim.tick(start + secs(11)).await;
    assert!(o.fired.is_empty(), "{o:?}");

    let now = start + secs(40);
    let o = sim.tick(now).await;
    assert_eq!(o.fired, fired(Kind::ClientIdConflict, client));
    let all = alerts(&pool, None).await;
    assert_eq!(all.len(), 1, "six disconnects are no flapping: {all:#?}");
    let a = &all[0];
    assert_eq!(a.kind, "client_id_conflict");
    assert_eq!(a.subject, client);
    assert_eq!(a.device_id.as_deref(), Some(client));
    assert_eq!(a.severity, "error");
    assert_eq!(a.details["count"], 6);
    assert_eq!(a.details["sessions"], 6);
    assert_eq!(
        a.details["addresses"],
        json!(["198.51.100.10", "203.0.113.20"])
    );
    assert_eq!(a.details["principals"], json!(["cert-a", "cert-b"]));
    assert_eq!(a.details["reasons"], json!({"DUPLICATE_CLIENTID": 6}));
    assert!(a.summary.contains(client), "{}", a.summary);
    assert!(
        a.summary.contains("198.51.100.10") && a.summary.contains("203.0.113.20"),
        "{}",
        a.summary
    );
    sim.assert_repeat_is_quiet(now).await;

    // The owner fixes one bridge; ten minutes later the window is empty and it resolves.
    let o = sim.tick(start + TimeDelta::minutes(11)).await;
    assert_eq!(o.resolved, fired(Kind::ClientIdConflict, client));
    assert_eq!(
        trail(&pool, a.id).await,
        ["opened", "resolved"],
        "one update-free incident"
    );
}

/// One device reconnecting with a persistent session takes over its own stale connection:
/// `DUPLICATE_CLIENTID` every time, but always the same session. Not a conflict.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn one_device_taking_over_its_own_session_is_no_conflict(pool: PgPool) {
    let mut sim = Sim::new(&pool);
    let client = "solo";
    let start = t0() + TimeDelta::hours(1);
    sim.push(
        connected(client, ms(start), "persist-1", 1, "100.64.1.1"),
        None,
    );
    for v in 2..=6i64 {
        let ts = start + secs(60 * v);
        sim.push(
            connected(client, ms(ts), "persist-1", v, "100.64.1.1"),
            None,
        );
        sim.push(
            disconnected(
                client,
                ms(ts + TimeDelta::milliseconds(200)),
                "persist-1",
                v - 1,
                "DUPLICATE_CLIENTID",
            ),
            None,
        );
    }
    for m in 1..=20 {
        let o = sim.tick(start + TimeDelta::minutes(m)).await;
        assert!(o.fired.is_empty(), "{o:?}");
    }
    assert!(alerts(&pool, None).await.is_empty());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn throttling_past_the_threshold_fires(pool: PgPool) {
    group(&pool, "lobby").await;
    let mut sim = Sim::new(&pool);
    let dev = "thr-1";
    let start = t0() + TimeDelta::hours(2);
    sim.push(
        connected(dev, ms(start), "t0", 0, "198.51.100.30"),
        Some("lobby"),
    );
    for j in 1..=3i64 {
        let ts = start + TimeDelta::minutes(2 * j);
        sim.push(
            disconnected(dev, ms(ts), &format!("t{}", j - 1), j - 1, "THROTTLED"),
            Some("lobby"),
        );
        sim.push(
            connected(dev, ms(ts + secs(2)), &format!("t{j}"), j, "198.51.100.30"),
            Some("lobby"),
        );
    }
    let o = sim.tick(start + TimeDelta::minutes(5)).await;
    assert!(o.fired.is_empty(), "two THROTTLED: {o:?}");
    let now = start + TimeDelta::minutes(7);
    let o = sim.tick(now).await;
    assert_eq!(o.fired, fired(Kind::Throttled, dev));
    let all = alerts(&pool, None).await;
    assert_eq!(all.len(), 1, "{all:#?}");
    let a = &all[0];
    assert_eq!(a.summary, "thr-1 throttled: 3 THROTTLED disconnects in 10m");
    assert_eq!(a.severity, "warning");
    assert_eq!(a.device_id.as_deref(), Some(dev));
    assert_eq!(a.group.as_deref(), Some("lobby"));
    assert_eq!(a.details["addresses"], json!(["198.51.100.30"]));
    sim.assert_repeat_is_quiet(now).await;

    // Disconnects at 2, 4 and 6 minutes: two left at 13 minutes (2 × 2 is not below 3), one
    // at 15 (1 × 2 < 3).
    assert!(quiet(&sim.tick(start + TimeDelta::minutes(13)).await));
    let o = sim.tick(start + TimeDelta::minutes(15)).await;
    assert_eq!(o.resolved, fired(Kind::Throttled, dev));
}

/// A scanner or a unit with revoked credentials: connect_failed only, never a device.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn auth_failures_of_an_unknown_client_fire_without_a_device(pool: PgPool) {
    let mut sim = Sim::new(&pool);
    let client = "scanner-9";
    let start = t0() + TimeDelta::hours(3);
    for j in 0..5 {
        sim.push(
            connect_failed(client, ms(start + secs(30 * j)), "AUTH_ERROR"),
            None,
        );
    }
    let o = sim.tick(start + secs(100)).await;
    assert_eq!(o.examined_events, 4);
    assert!(o.fired.is_empty(), "four failures: {o:?}");

    let now = start + secs(130);
    let o = sim.tick(now).await;
    assert_eq!(o.fired, fired(Kind::AuthFailure, client));
    let all = alerts(&pool, None).await;
    assert_eq!(all.len(), 1, "{all:#?}");
    let a = &all[0];
    assert_eq!(a.kind, "auth_failure");
    assert_eq!(a.subject, client);
    assert_eq!(a.device_id, None);
    assert_eq!(a.group, None);
    assert_eq!(a.severity, "warning");
    assert_eq!(a.details["count"], 5);
    assert_eq!(a.details["connect_failed"], 5);
    assert_eq!(a.details["disconnects"], 0);
    assert_eq!(a.details["reasons"], json!({"AUTH_ERROR": 5}));
    assert_eq!(a.details["addresses"], json!(["203.0.113.9"]));
    assert!(
        a.summary.contains(client) && a.summary.contains("203.0.113.9"),
        "{}",
        a.summary
    );
    assert!(!device_exists(&pool, client).await, "no device was created");
    sim.assert_repeat_is_quiet(now).await;
}

/// A known device whose certificate was revoked: refused disconnects and failed connects both
/// count, the device is named, and the addresses come from the sessions and the failures.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn auth_failures_of_a_device_mix_disconnects_and_failed_connects(pool: PgPool) {
    group(&pool, "lobby").await;
    let mut sim = Sim::new(&pool);
    let dev = "kiosk-2";
    let start = t0() + TimeDelta::hours(4);
    sim.push(
        connected(dev, ms(start), "k0", 0, "198.51.100.40"),
        Some("lobby"),
    );
    for (j, reason) in ["FORBIDDEN_ACCESS", "AUTH_ERROR", "FORBIDDEN_ACCESS"]
        .into_iter()
        .enumerate()
    {
        let j = j as i64;
        let ts = start + secs(60 * (j + 1));
        sim.push(
            disconnected(dev, ms(ts), &format!("k{j}"), j, reason),
            Some("lobby"),
        );
        sim.push(
            connected(
                dev,
                ms(ts + secs(5)),
                &format!("k{}", j + 1),
                j + 1,
                "198.51.100.40",
            ),
            Some("lobby"),
        );
    }
    // A plain network drop is no credential failure.
    sim.push(
        disconnected(dev, ms(start + secs(250)), "k3", 3, "CONNECTION_LOST"),
        Some("lobby"),
    );
    sim.push(
        connect_failed(dev, ms(start + secs(260)), "AUTH_ERROR"),
        Some("lobby"),
    );
    let o = sim.tick(start + secs(265)).await;
    assert!(o.fired.is_empty(), "four failures: {o:?}");
    sim.push(
        connect_failed(dev, ms(start + secs(270)), "AUTH_ERROR"),
        Some("lobby"),
    );
    let o = sim.tick(start + secs(275)).await;
    assert_eq!(o.fired, fired(Kind::AuthFailure, dev));
    let a = &alerts(&pool, Some(Kind::AuthFailure)).await[0];
    assert_eq!(a.device_id.as_deref(), Some(dev));
    assert_eq!(a.group.as_deref(), Some("lobby"));
    assert_eq!(a.details["count"], 5);
    assert_eq!(a.details["connect_failed"], 2);
    assert_eq!(a.details["disconnects"], 3);
    assert_eq!(
        a.details["reasons"],
        json!({"AUTH_ERROR": 3, "FORBIDDEN_ACCESS": 2})
    );
    assert_eq!(
        a.details["addresses"],
        json!(["198.51.100.40", "203.0.113.9"])
    );
    assert_eq!(alerts(&pool, None).await.len(), 1);
}

/// Every kind one below its threshold in every window, for hours: nothing, ever.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn counts_below_the_thresholds_never_fire(pool: PgPool) {
    group(&pool, "lobby").await;
    let mut sim = Sim::new(&pool);
    let start = t0() + TimeDelta::hours(5);
    for b in 0..5 {
        // Nine quick drops every 40 minutes: no 30-minute window holds two bursts.
        burst(
            &mut sim,
            "near-flap",
            &format!("nf{b}"),
            start + TimeDelta::minutes(40 * b),
            9,
        );
    }
    for b in 0..12i64 {
        // Every 15 minutes (windows are 10): two THROTTLED, two kick-offs of a shared client
        // id from two sessions, four failed connects.
        let at = start + TimeDelta::minutes(15 * b);
        for j in 0..2i64 {
            let ts = at + secs(60 * j);
            let s = format!("th{b}-{j}");
            sim.push(
                connected("near-thr", ms(ts - secs(20)), &s, j, "198.51.100.50"),
                None,
            );
            sim.push(disconnected("near-thr", ms(ts), &s, j, "THROTTLED"), None);
            let s = format!("dup{b}-{j}");
            let ip = if j == 0 {
                "198.51.100.60"
            } else {
                "203.0.113.60"
            };
            sim.push(connected("near-dup", ms(ts - secs(20)), &s, j, ip), None);
            sim.push(
                disconnected("near-dup", ms(ts), &s, j, "DUPLICATE_CLIENTID"),
                None,
            );
        }
        for j in 0..4 {
            sim.push(
                connect_failed("near-auth", ms(at + secs(20 * j)), "AUTH_ERROR"),
                None,
            );
        }
    }
    // An old event replayed now is outside every window.
    sim.push(
        disconnected(
            "near-thr",
            ms(start - TimeDelta::hours(3)),
            "old",
            0,
            "THROTTLED",
        ),
        None,
    );
    let mut examined = 0;
    for m in 0..=(4 * 60) {
        let o = sim.tick(start + TimeDelta::minutes(m)).await;
        assert!(
            o.fired.is_empty() && o.resolved.is_empty(),
            "minute {m}: {o:?}"
        );
        examined += o.examined_events;
    }
    // events younger than SETTLE are read again by the next pass
    assert!(examined >= sim.feed.len());
    assert!(alerts(&pool, None).await.is_empty());
}

/// After an outage of the detector the backlog is read in batches of 10 000, one per pass,
/// and every burst in it is still found.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_backlog_is_worked_off_in_batches(pool: PgPool) {
    let s = settings();
    let now = t0() + TimeDelta::hours(6);
    // 10 050 THROTTLED disconnects of 50 clients that are not devices, all in the last minute.
    sqlx::query(
        r#"insert into presence_events
               (client_id, event_type, session_key, session_identifier, version_number,
                event_ts, received_at, disconnect_reason)
           select 'bulk-' || (g % 50), 'disconnected', 's' || g, 's' || g, g,
                  $1 - make_interval(secs => g / 1000.0), $1, 'THROTTLED'
           from generate_series(1, 10050) g"#,
    )
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();

    let o = tick(&pool, &s, now).await.unwrap();
    assert_eq!(o.examined_events, 10_000);
    // Every client is past both thresholds already (about 200 disconnects each).
    assert_eq!(o.fired.len(), 100);
    assert_eq!(
        o.fired
            .iter()
            .filter(|(k, _)| *k == Kind::Throttled)
            .count(),
        50
    );
    // once they have settled, the cursor moves over the first batch, then on to the rest
    let later = now + fleetwatch::detect::connection::SETTLE;
    let o = tick(&pool, &s, later).await.unwrap();
    assert_eq!(o.examined_events, 10_000);
    assert!(quiet(&o));
    let o = tick(&pool, &s, later).await.unwrap();
    assert_eq!(o.examined_events, 50);
    assert!(o.fired.is_empty());
    assert_eq!(cursor(&pool).await, max_event_id(&pool).await);
    assert_eq!(tick(&pool, &s, later).await.unwrap(), Outcome::default());
    let all = alerts(&pool, None).await;
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|a| a.device_id.is_none()));
    let bulk7 = all
        .iter()
        .find(|a| a.kind == "throttled" && a.subject == "bulk-7")
        .unwrap();
    assert_eq!(bulk7.details["count"], 201);

    // A pass later everything has drained: all resolve in one pass with no new events.
    let o = tick(&pool, &s, now + TimeDelta::hours(1)).await.unwrap();
    assert_eq!(o.examined_events, 0);
    assert_eq!(o.resolved.len(), 100);
    assert!(alerts(&pool, None)
        .await
        .iter()
        .all(|a| a.status == "resolved"));
}

/// AWS stamps events with its own clock. The last THROTTLED disconnect is stamped two seconds
/// ahead of ours and already stored when the pass runs: the cursor passes it now, so it must
/// count now (and keep counting while it is in the window).
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn an_event_stamped_ahead_of_our_clock_still_counts(pool: PgPool) {
    let mut sim = Sim::new(&pool);
    let dev = "skewed";
    let now = t0() + TimeDelta::hours(7);
    sim.push(
        connected(dev, ms(now - secs(200)), "k0", 0, "198.51.100.90"),
        None,
    );
    for (j, ts) in [now - secs(100), now - secs(50), now + secs(2)]
        .into_iter()
        .enumerate()
    {
        let j = j as i64;
        let ev = disconnected(dev, ms(ts), &format!("k{j}"), j, "THROTTLED");
        sim.push_at(ev, now - secs(90) + secs(40 * j), None);
        let ev = connected(
            dev,
            ms(ts + secs(1)),
            &format!("k{}", j + 1),
            j + 1,
            "198.51.100.90",
        );
        sim.push_at(ev, now - secs(80) + secs(40 * j), None);
    }
    let o = sim.tick(now).await;
    assert_eq!(o.examined_events, 7);
    assert_eq!(o.fired, fired(Kind::Throttled, dev));
    assert_eq!(alerts(&pool, None).await[0].details["count"], 3);
    sim.assert_repeat_is_quiet(now).await;
}
