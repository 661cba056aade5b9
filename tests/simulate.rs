//! The simulator (`fleetwatch::sim`): repeatable from its seed, the incident mix's shapes and
//! counts, the rate, on a simulated clock without a broker; and `fleetwatch simulate`, the real
//! binary, against a private Mosquitto.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use fleetwatch::sim::{EventKind, IncidentKind, Mix, Outgoing, Settings, Simulator};
use serde_json::Value;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
        .unwrap()
        .to_utc()
}

fn settings(devices: usize, rate: f64, seed: u64, mix: &str) -> Settings {
    Settings {
        devices,
        rate,
        seed,
        mix: mix.parse().unwrap(),
        incidents_after: TimeDelta::seconds(10),
        incidents_within: TimeDelta::seconds(60),
        ..Settings::default()
    }
}

fn run(s: &Settings, for_: TimeDelta) -> (Simulator, Vec<Outgoing>) {
    let mut sim = Simulator::new(s, t0()).unwrap();
    let ev = sim.events_until(t0() + for_);
    (sim, ev)
}

fn json(o: &Outgoing) -> Value {
    serde_json::from_str(&o.payload).unwrap()
}

#[test]
fn the_same_seed_gives_the_same_events_and_another_seed_others() {
    let s = settings(300, 30.0, 42, "blip=3,crash=1,duplicate=1,power-cut=1");
    let (_, a) = run(&s, TimeDelta::minutes(10));
    let (_, b) = run(&s, TimeDelta::minutes(10));
    assert!(a.len() > 10_000, "{}", a.len());
    assert_eq!(a, b);
    // asked in small steps, the same stream
    let mut sim = Simulator::new(&s, t0()).unwrap();
    let mut c = Vec::new();
    for i in 1..=600 {
        c.extend(sim.events_until(t0() + TimeDelta::seconds(i)));
    }
    assert_eq!(a, c);
    let (_, d) = run(
        &settings(300, 30.0, 43, "blip=3,crash=1,duplicate=1,power-cut=1"),
        TimeDelta::minutes(10),
    );
    assert_ne!(a, d);
    // in time order
    assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
}

#[test]
fn every_screen_connects_in_aws_format_then_sends_impressions_at_the_rate() {
    let s = settings(600, 50.0, 1, "none");
    let (sim, ev) = run(&s, TimeDelta::seconds(80));
    let connects: Vec<&Outgoing> = ev
        .iter()
        .filter(|o| o.kind == EventKind::Connected)
        .collect();
    assert_eq!(connects.len(), 600);
    let ids: BTreeSet<&str> = connects.iter().map(|o| o.device.as_str()).collect();
    assert_eq!(ids.len(), 600);
    for o in &connects {
        assert!(o.at < t0() + TimeDelta::seconds(2));
        let j = json(o);
        assert_eq!(
            o.topic,
            format!(
                "$aws/events/presence/connected/{}",
                j["clientId"].as_str().unwrap()
            )
        );
        assert_eq!(j["eventType"], "connected");
        assert_eq!(j["timestamp"], o.at.timestamp_millis());
        assert!(j["versionNumber"].as_i64().unwrap() >= 1);
        assert!(j["sessionIdentifier"].as_str().unwrap().len() == 36);
        assert!(j["ipAddress"]
            .as_str()
            .unwrap()
            .parse::<std::net::Ipv4Addr>()
            .is_ok());
        assert!(j["principalIdentifier"].as_str().unwrap().len() == 64);
    }
    assert_eq!(sim.interval(), TimeDelta::seconds(12));
    // a simulated minute after the start-up: 50 per second, every screen once per 12 s
    let from = t0() + TimeDelta::seconds(15);
    let minute: Vec<&Outgoing> = ev
        .iter()
        .filter(|o| {
            o.kind == EventKind::Impression && o.at >= from && o.at < from + TimeDelta::seconds(60)
        })
        .collect();
    assert!((2990..=3010).contains(&minute.len()), "{}", minute.len());
    // spread evenly: every second of it has about 50
    let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
    for o in &minute {
        *per_second.entry((o.at - from).num_seconds()).or_default() += 1;
    }
    assert!(
        per_second.values().all(|n| (48..=52).contains(n)),
        "{per_second:?}"
    );
    let o = minute[0];
    let j = json(o);
    assert_eq!(o.topic, format!("dt/{}/impressions", o.device));
    assert_eq!(j["timestamp"], o.at.timestamp_millis());
}

#[test]
fn a_power_cut_disconnects_every_screen_of_one_building_within_seconds() {
    let s = settings(500, 20.0, 9, "power-cut=1");
    let (sim, ev) = run(&s, TimeDelta::minutes(5));
    let plan = &sim.plan()[0];
    assert_eq!(plan.kind, IncidentKind::PowerCut);
    let b = sim.fleet().screens[plan.screens[0]].building;
    let building: BTreeSet<String> = sim.fleet().buildings[b]
        .screens
        .iter()
        .map(|&s| sim.fleet().screens[s].device_id.clone())
        .collect();
    assert_eq!(plan.screens.len(), building.len());
    let cut: Vec<&Outgoing> = ev
        .iter()
        .filter(|o| o.incident == Some(IncidentKind::PowerCut))
        .collect();
    assert_eq!(cut.len(), building.len());
    assert_eq!(
        cut.iter()
            .map(|o| o.device.clone())
            .collect::<BTreeSet<_>>(),
        building
    );
    for o in &cut {
        assert_eq!(o.kind, EventKind::Disconnected);
        assert!(o.at >= plan.at && o.at < plan.at + TimeDelta::seconds(3));
        assert_eq!(json(o)["disconnectReason"], "MQTT_KEEP_ALIVE_TIMEOUT");
    }
    // and they stay silent
    let after = plan.at + TimeDelta::seconds(3);
    assert!(!ev
        .iter()
        .any(|o| o.at > after && building.contains(&o.device)));
    // the other screens go on
    assert!(ev
        .iter()
        .any(|o| o.at > after && o.kind == EventKind::Impression));
}

#[test]
fn a_duplicate_client_id_alternates_two_sessions_from_two_addresses() {
    let s = settings(100, 10.0, 5, "duplicate=1");
    let (sim, ev) = run(&s, TimeDelta::minutes(5));
    let plan = &sim.plan()[0];
    let (a, b) = (
        &sim.fleet().screens[plan.screens[0]],
        &sim.fleet().screens[plan.screens[1]],
    );
    assert_eq!(b.client_id, a.client_id);
    assert_ne!(b.device_id, a.device_id);
    let conflict: Vec<&Outgoing> = ev
        .iter()
        .filter(|o| o.incident == Some(IncidentKind::Duplicate))
        .collect();
    let kicked: Vec<Value> = conflict
        .iter()
        .filter(|o| o.kind == EventKind::Disconnected)
        .map(|o| json(o))
        .collect();
    assert_eq!(kicked.len(), 8);
    for k in &kicked {
        assert_eq!(k["disconnectReason"], "DUPLICATE_CLIENTID");
        assert_eq!(k["clientId"], a.client_id.as_str());
    }
    let sessions: Vec<&str> = kicked
        .iter()
        .map(|k| k["sessionIdentifier"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.iter().collect::<BTreeSet<_>>().len(), 2);
    assert!(
        sessions.windows(2).all(|w| w[0] != w[1]),
        "alternating: {sessions:?}"
    );
    let addresses: BTreeSet<String> = conflict
        .iter()
        .filter(|o| o.kind == EventKind::Connected)
        .map(|o| json(o)["ipAddress"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(addresses.len(), 2);
    // each disconnect ends the connection before it: same session and version as that connect
    let conns: Vec<Value> = conflict
        .iter()
        .filter(|o| o.kind == EventKind::Connected)
        .map(|o| json(o))
        .collect();
    for (i, k) in kicked.iter().enumerate().skip(1) {
        assert_eq!(k["versionNumber"], conns[i - 1]["versionNumber"]);
        assert_eq!(k["sessionIdentifier"], conns[i - 1]["sessionIdentifier"]);
    }
    // the clone was not installed before: no events of it before the incident
    assert!(!ev.iter().any(|o| o.device == b.device_id && o.at < plan.at));
    assert!(ev
        .iter()
        .any(|o| o.device == b.device_id && o.kind == EventKind::Impression));
}

#[test]
fn each_incident_has_its_shape_and_count() {
    let s = settings(
        400,
        40.0,
        3,
        "blip=4,crash=2,dead-modem=1,flapping=1,throttled=1,bad-cert=1,new-network=1",
    );
    let (sim, ev) = run(&s, TimeDelta::minutes(15));
    let count = |k: IncidentKind| sim.plan().iter().filter(|p| p.kind == k).count();
    assert_eq!(count(IncidentKind::Blip), 4);
    assert_eq!(count(IncidentKind::Crash), 2);
    assert_eq!(sim.plan().len(), 11);
    let all_screens: Vec<usize> = sim.plan().iter().flat_map(|p| p.screens.clone()).collect();
    assert_eq!(
        all_screens.iter().collect::<BTreeSet<_>>().len(),
        all_screens.len(),
        "each screen in one incident"
    );
    for p in sim.plan() {
        assert!(p.at >= t0() + TimeDelta::seconds(10) && p.at < t0() + TimeDelta::seconds(70));
        let dev = &sim.fleet().screens[p.screens[0]].device_id;
        let mine: Vec<&Outgoing> = ev
            .iter()
            .filter(|o| &o.device == dev && o.at >= p.at)
            .collect();
        let of_kind = |k: EventKind| mine.iter().filter(|o| o.kind == k).count();
        let reasons: Vec<String> = mine
            .iter()
            .filter(|o| o.kind == EventKind::Disconnected)
            .map(|o| json(o)["disconnectReason"].as_str().unwrap().to_string())
            .collect();
        match p.kind {
            IncidentKind::Blip => {
                assert_eq!(reasons, ["CONNECTION_LOST"]);
                assert_eq!(of_kind(EventKind::Connected), 1);
                let reconnect = mine
                    .iter()
                    .find(|o| o.kind == EventKind::Connected)
                    .unwrap()
                    .at;
                assert!(
                    reconnect - p.at >= TimeDelta::seconds(3)
                        && reconnect - p.at < TimeDelta::seconds(15)
                );
                // the backlog: old device times, sent just after the reconnect
                let backlog: Vec<&&Outgoing> = mine
                    .iter()
                    .filter(|o| {
                        o.kind == EventKind::Impression && o.incident == Some(IncidentKind::Blip)
                    })
                    .collect();
                assert!(backlog.len() >= 3);
                for o in backlog {
                    let ts = json(o)["timestamp"].as_i64().unwrap();
                    assert!(ts >= p.at.timestamp_millis() && ts < reconnect.timestamp_millis());
                    assert!(o.at >= reconnect && o.at < reconnect + TimeDelta::seconds(5));
                }
                // nothing between the disconnect and the reconnect
                assert!(!mine.iter().any(|o| o.at > p.at && o.at < reconnect));
            }
            IncidentKind::Crash => assert!(mine.is_empty(), "{mine:?}"),
            IncidentKind::DeadModem => {
                assert_eq!(mine.len(), 1);
                assert_eq!(reasons, ["MQTT_KEEP_ALIVE_TIMEOUT"]);
            }
            IncidentKind::Flapping => {
                assert_eq!(reasons.len(), 12);
                assert!(reasons.iter().all(|r| r == "CONNECTION_LOST"));
                let last = mine.iter().rfind(|o| o.incident.is_some()).unwrap();
                assert!(
                    last.at - p.at < TimeDelta::minutes(30),
                    "within the flapping window"
                );
            }
            IncidentKind::Throttled => {
                assert_eq!(reasons, ["THROTTLED"; 5]);
                assert_eq!(of_kind(EventKind::Connected), 5);
            }
            IncidentKind::BadCert => {
                assert_eq!(of_kind(EventKind::ConnectFailed), 8);
                assert_eq!(mine.len(), 8, "never connects, sends nothing else");
                let j = json(mine[0]);
                assert_eq!(j["connectFailureReason"], "AUTHORIZATION_FAILED");
                assert_eq!(
                    mine[0].topic,
                    format!("$aws/events/presence/connect_failed/{dev}")
                );
                assert!(!ev.iter().any(|o| &o.device == dev && o.at < p.at));
            }
            IncidentKind::NewNetwork => {
                let before = sim.fleet().screens[p.screens[0]].address.to_string();
                let conn = json(
                    mine.iter()
                        .find(|o| o.kind == EventKind::Connected)
                        .unwrap(),
                );
                let ip: std::net::Ipv4Addr = conn["ipAddress"].as_str().unwrap().parse().unwrap();
                assert_eq!(&ip.octets()[..2], &[192, 0]);
                assert!(!before.starts_with("192.0."));
            }
            _ => unreachable!(),
        }
        // versions grow per session; a disconnect carries its connection's version
        let mut version = 0;
        for o in mine
            .iter()
            .filter(|o| matches!(o.kind, EventKind::Connected | EventKind::Disconnected))
        {
            let v = json(o)["versionNumber"].as_i64().unwrap();
            assert!(v >= version);
            version = v;
        }
    }
}

/// A planned incident with an end is undone then (the demo's story relies on it): the crashed
/// player and the dead modem send again, the building's power returns, the clone goes quiet,
/// the unit on a new network comes home, the closed building opens; and a pace of 0.25 makes
/// the incidents' own spans four times shorter.
#[test]
fn planned_incidents_end_when_planned_and_pace_shortens_them() {
    use fleetwatch::sim::{Fleet, Planned};
    let s = Settings {
        pace: 0.25,
        ..settings(100, 100.0, 3, "none")
    };
    let fleet = Fleet::new(100, 3);
    let b0 = fleet.buildings[0].screens.clone();
    let b1 = fleet.buildings[1].screens.clone();
    let (crash, modem, orig, clone, roam) = (b1[0], b1[1], b1[2], b1[3], b1[4]);
    let at = t0() + TimeDelta::seconds(10);
    let until = at + TimeDelta::seconds(30);
    let plan = |kind, screens: Vec<usize>| Planned {
        kind,
        at,
        screens,
        until: Some(until),
    };
    let mut sim = Simulator::with_plan(
        &s,
        t0(),
        vec![
            plan(IncidentKind::Crash, vec![crash]),
            plan(IncidentKind::DeadModem, vec![modem]),
            plan(IncidentKind::PowerCut, b0.clone()),
            plan(IncidentKind::Duplicate, vec![orig, clone]),
            plan(IncidentKind::NewNetwork, vec![roam]),
            plan(IncidentKind::Closed, b1[5..].to_vec()),
        ],
    )
    .unwrap();
    let before = sim.events_until(until - TimeDelta::milliseconds(1));
    let after = sim.events_until(until + TimeDelta::seconds(20));
    let id = |i: usize| fleet.screens[i].device_id.clone();
    let impressions = |ev: &[Outgoing], i: usize, from: DateTime<Utc>| {
        ev.iter()
            .filter(|o| o.kind == EventKind::Impression && o.device == id(i) && o.at > from)
            .count()
    };
    // during: silent (the clone talks, as the original's twin); after: back, or quiet for the clone
    let quiet_from = at + TimeDelta::seconds(15); // the closing spreads over 60 s × pace
    for i in [crash, modem, b0[0], b1[5]] {
        assert_eq!(impressions(&before, i, quiet_from), 0, "{}", id(i));
        assert!(
            impressions(&after, i, until + TimeDelta::seconds(15)) > 0,
            "{}",
            id(i)
        );
    }
    assert!(impressions(&before, clone, at) > 0);
    assert_eq!(impressions(&after, clone, until), 0);
    // the modem and the building reconnect (within 5 s × pace)
    for i in [modem, b0[0]] {
        let back = after
            .iter()
            .find(|o| o.kind == EventKind::Connected && o.device == id(i))
            .unwrap_or_else(|| panic!("{} reconnects", id(i)));
        assert!(
            back.at - until <= TimeDelta::milliseconds(1250),
            "{:?}",
            back.at
        );
    }
    // the duplicate's takeovers are 3-8 s apart × pace
    let takeovers: Vec<DateTime<Utc>> = before
        .iter()
        .filter(|o| json(o)["disconnectReason"] == "DUPLICATE_CLIENTID")
        .map(|o| o.at)
        .collect();
    assert_eq!(
        takeovers.len(),
        fleetwatch::sim::incident::DUPLICATE_TAKEOVERS
    );
    assert!(takeovers
        .windows(2)
        .all(|w| w[1] - w[0] <= TimeDelta::seconds(2) + TimeDelta::milliseconds(40)));
    // the roaming unit came back from its home address
    let home = fleet.screens[roam].address.to_string();
    let connects: Vec<Value> = before
        .iter()
        .chain(&after)
        .filter(|o| o.kind == EventKind::Connected && o.device == id(roam) && o.at >= at)
        .map(json)
        .collect();
    assert_eq!(connects.len(), 2, "{connects:?}");
    assert_ne!(connects[0]["ipAddress"], home.as_str());
    assert_eq!(connects[1]["ipAddress"], home.as_str());
    // a plan naming a screen outside the fleet is refused
    assert!(Simulator::with_plan(&s, t0(), vec![plan(IncidentKind::Crash, vec![100])]).is_err());
}

#[test]
fn the_mix_and_bad_settings_are_refused_clearly() {
    assert_eq!(
        Mix::default().to_string(),
        "blip=5,crash=1,dead-modem=1,duplicate=1,flapping=1,throttled=1,bad-cert=1,power-cut=1,new-network=1,covered-camera=1"
    );
    assert_eq!(
        Mix::default().to_string().parse::<Mix>().unwrap(),
        Mix::default()
    );
    assert_eq!("none".parse::<Mix>().unwrap(), Mix::none());
    let e = "blip=x".parse::<Mix>().unwrap_err();
    assert!(e.contains("expected a count"), "{e}");
    let e = "meteor=1".parse::<Mix>().unwrap_err();
    assert!(
        e.contains("unknown incident \"meteor\"") && e.contains("power-cut"),
        "{e}"
    );
    assert!("blip".parse::<Mix>().unwrap_err().contains("KIND=COUNT"));
    assert!("blip=1,blip=2"
        .parse::<Mix>()
        .unwrap_err()
        .contains("twice"));
    let err = |s: Settings| Simulator::new(&s, t0()).err().unwrap();
    assert!(err(settings(0, 1.0, 1, "none")).contains("devices"));
    assert!(err(settings(10, 0.0, 1, "none")).contains("rate"));
    assert!(err(settings(10, f64::NAN, 1, "none")).contains("rate"));
    assert!(err(settings(10, 1.0, 1, "power-cut=2")).contains("power cuts"));
    assert!(err(settings(10, 1.0, 1, "crash=11")).contains("more screens"));
}

#[tokio::test]
async fn the_command_publishes_to_a_broker_in_real_time() {
    let broker = Broker::start().await;
    // a subscriber that keeps everything
    let mut o = rumqttc::MqttOptions::new("counter", "127.0.0.1", broker.port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 10_000);
    client
        .subscribe("demo/events/presence/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe("dt/+/impressions", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (up_tx, mut up) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = up_tx.send(true);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), up.wait_for(|u| *u))
        .await
        .unwrap()
        .unwrap();

    let out = tokio::task::spawn_blocking({
        let url = broker.url();
        move || {
            Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
                .args([
                    "simulate",
                    "--mqtt-url",
                    &url,
                    "--devices",
                    "300",
                    "--rate",
                    "100",
                ])
                .args([
                    "--duration",
                    "4s",
                    "--seed",
                    "7",
                    "--presence-prefix",
                    "demo/events/presence",
                ])
                .args([
                    "--incidents",
                    "blip=2,bad-cert=1",
                    "--incidents-within",
                    "1s",
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total_line = stdout
        .lines()
        .find(|l| l.starts_with("total: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let sent: usize = total_line["total: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        stdout
            .lines()
            .next()
            .unwrap()
            .starts_with("simulate: 300 screens in 10 buildings"),
        "{stdout}"
    );
    assert!(stdout.contains("incidents: blip 2 started"), "{stdout}");
    assert!(stdout.contains("bad-cert 1 started"), "{stdout}");

    let mut got: Vec<(String, Value)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < sent && tokio::time::Instant::now() < deadline {
        if let Ok(Some((topic, payload))) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            got.push((topic, serde_json::from_slice(&payload).expect("valid JSON")));
        }
    }
    assert_eq!(got.len(), sent, "{stdout}");
    let connected: Vec<&(String, Value)> = got
        .iter()
        .filter(|(t, _)| t.starts_with("demo/events/presence/connected/"))
        .collect();
    assert!(connected.len() >= 299, "{}", connected.len());
    for (t, j) in &got {
        if let Some(rest) = t.strip_prefix("demo/events/presence/") {
            let (kind, client) = rest.split_once('/').unwrap();
            assert_eq!(j["eventType"], kind);
            assert_eq!(j["clientId"], client);
        } else {
            assert!(
                t.starts_with("dt/screen-") && t.ends_with("/impressions"),
                "{t}"
            );
            assert!(j["timestamp"].is_i64());
        }
    }
    let impressions = got.iter().filter(|(t, _)| t.starts_with("dt/")).count();
    // 100 per second for about two seconds after the start-up's two seconds, plus backlogs
    assert!((150..=300).contains(&impressions), "{impressions}");
    assert!(got
        .iter()
        .any(|(t, _)| t.starts_with("demo/events/presence/connect_failed/")));
}

#[test]
fn bad_flags_give_a_clear_error() {
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
            .arg("simulate")
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    assert!(run(&["--incidents", "meteor=1"]).contains("unknown incident"));
    assert!(run(&["--duration", "soon"]).contains("expected a duration"));
    assert!(run(&["--mqtt-url", "http://x"]).contains("mqtt://"));
    assert!(run(&["--mqtt-url", "mqtts://127.0.0.1:1"]).contains("--ca-file"));
    assert!(run(&["--telemetry-topic", "dt/x"]).contains("{device}"));
    assert!(run(&["--rate", "0"]).contains("--rate: expected a positive number"));
    assert!(run(&["--devices", "10", "--incidents", "power-cut=2"])
        .contains("--incidents: 2 power cuts"));
    assert!(run(&["--cert-file", "c.pem"]).contains("--key-file"));
    assert!(run(&[
        "--mqtt-url",
        &format!("mqtt://127.0.0.1:{}", free_port()),
        "--duration",
        "1s"
    ])
    .contains("could not connect"));
}

/// The URL of the database `#[sqlx::test]` made for this test.
fn database_url(pool: &sqlx::PgPool) -> String {
    let master = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let db = pool.connect_options().get_database().unwrap().to_string();
    let (base, _) = master.rsplit_once('/').unwrap();
    format!("{base}/{db}")
}

/// Kills a child process when dropped (a failing test leaves no service behind).
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real service and the real simulator against one broker, on second-scale settings: an
/// expected interval of 20 s (longer than the longest blip, 15 s), a disconnect grace of 3 s and
/// one impression per screen per second; impressions carry the building in their topic. A
/// crashed player raises `heartbeat_gap` (silent), a power cut one `group_outage` for its
/// building, a duplicated client id `client_id_conflict`, throttled reconnects `throttled`, a
/// wrong certificate `auth_failure`; the blips raise nothing.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn with_the_service_each_incident_raises_its_alert_and_blips_nothing(pool: sqlx::PgPool) {
    let broker = Broker::start().await;
    let http_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("fleetwatch.toml");
    std::fs::write(
        &conf,
        "[mqtt]\ntelemetry_topics = [\"dt/+/+/impressions\"]\n\
         [telemetry]\ndevice_id_level = 2\ngroup_level = 1\n",
    )
    .unwrap();
    let _service = Guard(
        Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
            .arg("serve")
            .arg("--config")
            .arg(&conf)
            .env("DATABASE_URL", database_url(&pool))
            .env("FLEETWATCH_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("FLEETWATCH_MQTT_URL", broker.url())
            .env("FLEETWATCH_API_TOKEN", TOKEN)
            .env(
                "FLEETWATCH_INSTANCE_ID",
                format!("sim-{}", std::process::id()),
            )
            .env("FLEETWATCH_FLUSH_INTERVAL", "200ms")
            .env("FLEETWATCH_EXPECTED_INTERVAL", "20s")
            .env("FLEETWATCH_GRACE", "2s")
            // a disconnected screen is offline as soon as it is overdue (default: 10 minutes
            // after the disconnect), so a blip that lasted too long would alert
            .env("FLEETWATCH_DISCONNECT_GRACE", "3s")
            .env("FLEETWATCH_TICK", "250ms")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api = api(&format!("http://127.0.0.1:{http_port}"));
    eventually(30, "the service is connected to the broker", || async {
        match api.http.get(format!("{}/healthz", api.base)).send().await {
            Ok(r) => r.json::<Value>().await.unwrap()["mqtt"]["all_connected"] == true,
            Err(_) => false,
        }
    })
    .await;

    let sim = tokio::task::spawn_blocking({
        let url = broker.url();
        move || {
            Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
                .args(["simulate", "--mqtt-url", &url, "--seed", "11"])
                .args(["--devices", "100", "--rate", "100", "--duration", "40s"])
                .args([
                    "--incidents",
                    "blip=3,crash=1,power-cut=1,duplicate=1,throttled=1,bad-cert=1",
                ])
                .args(["--incidents-within", "2s"])
                .args(["--telemetry-topic", "dt/{building}/{device}/impressions"])
                .output()
                .unwrap()
        }
    });
    let out = sim.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planned = |kind: &str| -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix("plan: "))
            .filter_map(|l| {
                let mut w = l.split(' ');
                let (_, k, dev) = (w.next()?, w.next()?, w.next()?);
                (k == kind).then(|| dev.to_string())
            })
            .collect()
    };
    let crashed = planned("crash");
    let blipped = planned("blip");
    assert_eq!((crashed.len(), blipped.len()), (1, 3), "{stdout}");

    // the crash started 10–12 s in, due 20 s + 2 s after its last impression: by the end of
    // the run (40 s) it is firing, and a blip (10–12 s in, at most 15 s) that had been taken
    // for an outage would be too
    eventually(5, "heartbeat_gap for the crashed player", || async {
        let (_, a) = api.get("/api/v1/alerts?status=firing").await;
        a["items"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let building = planned("power-cut");
    assert_eq!(building.len(), 1, "{stdout}");
    let (_, a) = api.get("/api/v1/alerts?status=firing&limit=100").await;
    let items = a["items"].as_array().unwrap();
    let gaps: Vec<&Value> = items
        .iter()
        .filter(|i| i["kind"] == "heartbeat_gap")
        .collect();
    let crash = gaps
        .iter()
        .find(|i| i["device_id"] == crashed[0].as_str())
        .unwrap_or_else(|| panic!("{a}"));
    assert_eq!(crash["details"]["classification"], "silent");
    // the building's 25 screens, offline, and the crash; nothing else
    assert_eq!(gaps.len(), 26, "{a}");
    let outages: Vec<&Value> = items
        .iter()
        .filter(|i| i["kind"] == "group_outage")
        .collect();
    assert_eq!(outages.len(), 1, "{a}");
    assert_eq!(outages[0]["subject"], building[0].as_str(), "{a}");
    // the connection patterns, each for its screen's client id
    let of = |kind: &str| -> Vec<String> {
        items
            .iter()
            .filter(|i| i["kind"] == kind)
            .map(|i| i["subject"].as_str().unwrap().to_string())
            .collect()
    };
    let duplicate = planned("duplicate");
    assert_eq!(of("client_id_conflict"), [duplicate[0].clone()], "{a}");
    assert_eq!(of("throttled"), planned("throttled"), "{a}");
    assert_eq!(of("auth_failure"), planned("bad-cert"), "{a}");
    assert_eq!(items.len(), 30, "{a}");
    // nothing at all, ever, for the blips
    let (_, all) = api.get("/api/v1/alerts?limit=100").await;
    assert!(all["next_cursor"].is_null());
    for b in &blipped {
        assert!(
            !all["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["device_id"] == b.as_str()),
            "{b}: {all}"
        );
    }
    // the service saw the whole fleet
    let (_, d) = api.get("/api/v1/devices?limit=100").await;
    // all but the unit whose certificate is refused
    assert_eq!(d["items"].as_array().unwrap().len(), 99, "{d}");
}

/// `mqtts://` with a CA and a client certificate, against a Mosquitto that requires one.
#[tokio::test]
async fn the_command_publishes_over_tls_with_a_client_certificate() {
    let pki = common::pki::Pki::new();
    let broker = Broker::start_conf(false, &pki.mosquitto_conf()).await;
    let url = format!("mqtts://localhost:{}", broker.port);
    let file = |f: &str| pki.file(f).display().to_string();
    let run = |client_cert: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fleetwatch"));
        c.args(["simulate", "--mqtt-url", &url, "--ca-file", &file("ca.pem")])
            .args([
                "--devices",
                "20",
                "--rate",
                "20",
                "--duration",
                "2s",
                "--incidents",
                "none",
            ]);
        if client_cert {
            c.args([
                "--cert-file",
                &file("client.pem"),
                "--key-file",
                &file("client.key"),
            ]);
        }
        c.output().unwrap()
    };
    let out = run(true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = stdout.lines().find(|l| l.starts_with("total: ")).unwrap();
    assert!(total.contains("connected 20"), "{total}");
    // without the client certificate the broker refuses it, and it says so
    let out = run(false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not connect"));
}

/// A covered camera (issue 13): the screen keeps sending at its rate, each message counting 0
/// impressions, until the cover is taken off; everybody else counts 5 to 15 a message.
#[test]
fn a_covered_camera_keeps_sending_and_counts_nothing() {
    use fleetwatch::sim::Planned;
    let s = settings(40, 40.0, 3, "none");
    let (at, until) = (t0() + TimeDelta::seconds(10), t0() + TimeDelta::seconds(40));
    let mut sim = Simulator::with_plan(
        &s,
        t0(),
        vec![Planned {
            kind: IncidentKind::CoveredCamera,
            at,
            screens: vec![7],
            until: Some(until),
        }],
    )
    .unwrap();
    let covered = sim.fleet().screens[7].device_id.clone();
    let events = sim.events_until(t0() + TimeDelta::seconds(60));
    let counts = |from: DateTime<Utc>, to: DateTime<Utc>, who: &dyn Fn(&str) -> bool| {
        events
            .iter()
            .filter(|o| o.kind == EventKind::Impression && o.at >= from && o.at < to)
            .filter(|o| who(&o.device))
            .map(|o| {
                serde_json::from_str::<Value>(&o.payload).unwrap()["count"]
                    .as_i64()
                    .unwrap()
            })
            .collect::<Vec<i64>>()
    };
    let is = |d: &str| d == covered;
    let during = counts(at, until, &is);
    assert!(during.len() >= 25, "{during:?}");
    assert!(during.iter().all(|&c| c == 0), "{during:?}");
    let after = counts(until, t0() + TimeDelta::seconds(60), &is);
    assert!(
        after.len() >= 15 && after.iter().all(|c| (5..=15).contains(c)),
        "{after:?}"
    );
    let others = counts(t0(), t0() + TimeDelta::seconds(60), &|d: &str| d != covered);
    assert!(others.iter().all(|c| (5..=15).contains(c)));
    let distinct: BTreeSet<i64> = others.iter().copied().collect();
    assert!(distinct.len() > 5, "counts vary: {distinct:?}");
}
