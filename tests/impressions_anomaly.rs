//! Impressions anomaly (issue 13): fleet stories on a manual clock with weeks of synthetic
//! history. History is written straight through the flush's statement (`db::telemetry::
//! write_batch`); the live part goes through the real ingest path (`accept`, the buffer, its
//! flush) and the detector is ticked by hand.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use fleetwatch::clock::{Clock, ManualClock};
use fleetwatch::config::{Config, GroupConfig, HumanDuration};
use fleetwatch::db::telemetry::{write_batch, BucketRow, DeviceRow};
use fleetwatch::detect::{Detector, TickOutcome};
use fleetwatch::ingest::health::IngestStatus;
use fleetwatch::ingest::{telemetry, IngestContext};
use sqlx::PgPool;

/// Monday 2026-11-30 00:00 UTC.
fn monday() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-30T00:00:00Z")
        .unwrap()
        .to_utc()
}

fn h(n: i64) -> TimeDelta {
    TimeDelta::hours(n)
}

fn min(n: i64) -> TimeDelta {
    TimeDelta::minutes(n)
}

/// Impressions per hour of a lobby screen at local time `t`: a daily shape (busy by day,
/// nearly nothing at night), a weekly one (quieter at weekends) and a per-device scale.
fn usual(t: DateTime<Utc>, tz: Tz, scale: f64) -> i64 {
    let l = t.with_timezone(&tz);
    let hour = l.hour();
    let base = match hour {
        0..=5 => 2.0,
        6..=7 => 40.0,
        8..=19 => 120.0 + 10.0 * f64::from(hour % 4),
        _ => 50.0,
    };
    let week = if l.weekday().num_days_from_monday() >= 5 {
        0.7
    } else {
        1.0
    };
    (base * week * scale).round() as i64
}

/// A fleet under test: messages every 5 minutes, 1 s flush allowance.
struct Fleet {
    pool: PgPool,
    clock: Arc<ManualClock>,
    ingest: IngestContext,
    detector: Detector,
    /// (device, group, scale)
    devices: Vec<(String, Option<String>, f64)>,
}

fn two_buildings() -> Config {
    let mut cfg = Config::default();
    for (g, p) in [("bldg-a", "^a"), ("bldg-b", "^b")] {
        cfg.groups.insert(
            g.into(),
            GroupConfig {
                device_pattern: Some(p.parse().unwrap()),
                ..Default::default()
            },
        );
    }
    cfg
}

const TWO_BUILDINGS: [(&str, &str, f64); 7] = [
    ("a1", "bldg-a", 1.0),
    ("a2", "bldg-a", 0.8),
    ("a3", "bldg-a", 1.2),
    ("a4", "bldg-a", 1.0),
    ("b1", "bldg-b", 0.9),
    ("b2", "bldg-b", 1.1),
    ("b3", "bldg-b", 1.0),
];

impl Fleet {
    async fn new(pool: PgPool, cfg: Config, start: DateTime<Utc>) -> Fleet {
        cfg.validate().unwrap();
        let common::fleet::Harness {
            pool,
            clock,
            ingest,
            detector,
        } = common::fleet::Harness::new(pool, &cfg, start).await;
        Fleet {
            pool,
            clock,
            ingest,
            detector,
            devices: Vec::new(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn bucket(&self) -> TimeDelta {
        self.detector.settings.anomaly.cadence.bucket()
    }

    /// Buckets of history from `from` up to the clock, for `devices` (device, group, scale):
    /// `sum(device, bucket start, scale)` gives (messages, impressions) or nothing.
    async fn history(
        &mut self,
        devices: &[(&str, &str, f64)],
        from: DateTime<Utc>,
        sum: impl Fn(&str, DateTime<Utc>, f64) -> Option<(i64, i64)>,
    ) {
        let mut rows = Vec::new();
        let mut dev_rows = Vec::new();
        for (d, g, scale) in devices {
            self.devices.push((
                d.to_string(),
                (!g.is_empty()).then(|| g.to_string()),
                *scale,
            ));
            let mut b = from;
            while b < self.now() {
                if let Some((messages, impressions)) = sum(d, b, *scale) {
                    rows.push(BucketRow {
                        device_id: d.to_string(),
                        bucket_start: b,
                        messages,
                        impressions,
                    });
                }
                b += self.bucket();
            }
            dev_rows.push(DeviceRow {
                device_id: d.to_string(),
                group_id: (!g.is_empty()).then(|| g.to_string()),
                last_arrival: self.now() - TimeDelta::seconds(1),
                max_device_ts: None,
                min_device_ts: None,
            });
        }
        dev_rows.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        rows.sort_by(|a, b| (&a.device_id, a.bucket_start).cmp(&(&b.device_id, b.bucket_start)));
        write_batch(&self.pool, &dev_rows, &[], &rows, "UTC")
            .await
            .unwrap();
    }

    /// One message from `device` that arrived at `arrival`, through the real ingest path.
    async fn send_at(&self, device: &str, payload: &str, arrival: DateTime<Utc>) {
        common::fleet::impression(&self.ingest, device, payload, arrival).await;
    }

    async fn tick(&self) -> TickOutcome {
        self.detector
            .tick(&IngestStatus::Healthy, self.now())
            .await
            .unwrap()
    }

    /// Run until `until` in steps of `step`: at the end of each step every device whose
    /// `count` says so sends one message (arriving a second before the step ends, so it lands
    /// in the step's bucket) with that many impressions, then a flush and, with `tick`, a
    /// detector tick. Returns every tick that judged something.
    async fn run(
        &self,
        until: DateTime<Utc>,
        step: TimeDelta,
        count: impl Fn(&str, DateTime<Utc>, f64) -> Option<i64>,
        tick: bool,
    ) -> Vec<(DateTime<Utc>, fleetwatch::detect::anomaly::Outcome)> {
        let mut seen = Vec::new();
        while self.now() < until {
            self.clock.advance(step);
            let arrival = self.now() - TimeDelta::seconds(1);
            for (d, _, scale) in &self.devices {
                if let Some(n) = count(d, arrival, *scale) {
                    self.send_at(d, &format!(r#"{{"count":{n}}}"#), arrival)
                        .await;
                }
            }
            telemetry::flush(&self.ingest).await.unwrap();
            if tick {
                let o = self.tick().await;
                if !o.anomaly.buckets.is_empty() {
                    seen.push((self.now(), o.anomaly));
                }
            }
        }
        seen
    }

    async fn live(
        &self,
        until: DateTime<Utc>,
        step: TimeDelta,
        count: impl Fn(&str, DateTime<Utc>, f64) -> Option<i64>,
    ) -> Vec<(DateTime<Utc>, fleetwatch::detect::anomaly::Outcome)> {
        self.run(until, step, count, true).await
    }

    async fn alerts(&self) -> Vec<(String, String, Option<String>, DateTime<Utc>)> {
        sqlx::query_as(
            r#"select subject, status, group_id, opened_at from alerts
               where kind = 'impressions_anomaly' order by id"#,
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

/// The usual impressions of an hour spread over 12 messages.
fn per_message(t: DateTime<Utc>, tz: Tz, scale: f64) -> i64 {
    (usual(t, tz, scale) as f64 / 12.0).round() as i64
}

fn usual_hour(t: DateTime<Utc>, tz: Tz, scale: f64) -> Option<(i64, i64)> {
    Some((12, per_message(t, tz, scale) * 12))
}

async fn with_history(pool: PgPool) -> Fleet {
    let mut f = Fleet::new(pool, two_buildings(), monday()).await;
    f.history(&TWO_BUILDINGS, monday() - TimeDelta::days(28), |_, b, s| {
        usual_hour(b, chrono_tz::UTC, s)
    })
    .await;
    f
}

fn fired(
    seen: &[(DateTime<Utc>, fleetwatch::detect::anomaly::Outcome)],
) -> Vec<(DateTime<Utc>, String)> {
    seen.iter()
        .flat_map(|(t, o)| o.fired.iter().map(move |d| (*t, d.clone())))
        .collect()
}

fn resolved(
    seen: &[(DateTime<Utc>, fleetwatch::detect::anomaly::Outcome)],
) -> Vec<(DateTime<Utc>, String)> {
    seen.iter()
        .flat_map(|(t, o)| o.resolved.iter().map(move |d| (*t, d.clone())))
        .collect()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_covered_camera_alerts_within_two_buckets_and_resolves_when_back(pool: PgPool) {
    let f = with_history(pool).await;
    let utc = chrono_tz::UTC;
    // Monday 09:00 the camera of a1 is covered; at 14:00 it is uncovered.
    let covered = monday() + h(9);
    let uncovered = monday() + h(14);
    let count = |d: &str, t: DateTime<Utc>, s: f64| {
        Some(if d == "a1" && t >= covered && t < uncovered {
            0
        } else {
            per_message(t, utc, s)
        })
    };
    let seen = f.live(monday() + h(18), min(5), count).await;
    let fired = fired(&seen);
    assert_eq!(fired.len(), 1, "{fired:?}");
    let (at, who) = &fired[0];
    assert_eq!(who, "a1");
    // two buckets low (09:00, 10:00), judged once 11:00 is a flush allowance behind us
    assert!(
        *at > covered + h(2) && *at <= covered + h(2) + min(5),
        "{at}"
    );
    let resolved = resolved(&seen);
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert!(resolved[0].0 > uncovered + h(1) && resolved[0].0 <= uncovered + h(1) + min(5));
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (
            alerts[0].0.as_str(),
            alerts[0].1.as_str(),
            alerts[0].2.as_deref()
        ),
        ("a1", "resolved", Some("bldg-a"))
    );
    let (summary, d): (String, serde_json::Value) =
        sqlx::query_as("select summary, details from alerts where kind = 'impressions_anomaly'")
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert!(summary.starts_with("a1 counts again"), "{summary}");
    assert!(d["baseline"].as_f64().unwrap() > 100.0, "{d}");
    // the alert went through the lifecycle: it has a trail and a notification was queued
    let trail: Vec<String> = sqlx::query_scalar("select type from alert_events order by id")
        .fetch_all(&f.pool)
        .await
        .unwrap();
    assert_eq!(trail, ["opened", "resolved"]);
    let queued: i64 = sqlx::query_scalar("select count(*) from notifications")
        .fetch_one(&f.pool)
        .await
        .unwrap();
    let _ = queued; // no endpoint is configured here: routing decides, not this rule
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_holiday_lowering_every_screen_raises_nothing(pool: PgPool) {
    let f = with_history(pool).await;
    let utc = chrono_tz::UTC;
    // the whole fleet at 10 % of its usual all Monday (a public holiday)
    let seen = f
        .live(monday() + h(20), min(5), |_, t, s| {
            Some((per_message(t, utc, s) / 10).max(0))
        })
        .await;
    assert!(
        seen.iter().map(|(_, o)| o.judged).sum::<usize>() > 50,
        "{seen:?}"
    );
    assert_eq!(fired(&seen), vec![]);
    assert!(f.alerts().await.is_empty());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_closed_building_raises_nothing(pool: PgPool) {
    let f = with_history(pool).await;
    let utc = chrono_tz::UTC;
    // building A is closed (screens on, nobody passes); building B as usual
    let seen = f
        .live(monday() + h(20), min(5), |d, t, s| {
            Some(if d.starts_with('a') {
                0
            } else {
                per_message(t, utc, s)
            })
        })
        .await;
    assert_eq!(fired(&seen), vec![]);
    assert!(f.alerts().await.is_empty());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_slowly_drifting_device_raises_nothing(pool: PgPool) {
    let mut f = Fleet::new(pool, two_buildings(), monday()).await;
    let utc = chrono_tz::UTC;
    let start = monday() - TimeDelta::days(28);
    // a2 loses 2 % a day (a lens slowly clouding over): 43 % lower than a month ago
    let drift = move |d: &str, t: DateTime<Utc>| {
        if d == "a2" {
            0.98f64.powf((t - start).num_hours() as f64 / 24.0)
        } else {
            1.0
        }
    };
    f.history(&TWO_BUILDINGS, start, |d, b, s| {
        usual_hour(b, utc, s * drift(d, b))
    })
    .await;
    let seen = f
        .live(monday() + h(24), min(5), |d, t, s| {
            Some(per_message(t, utc, s * drift(d, t)))
        })
        .await;
    assert!(seen.iter().map(|(_, o)| o.judged).sum::<usize>() > 100);
    assert_eq!(fired(&seen), vec![]);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn too_few_messages_and_quiet_hours_are_not_judged(pool: PgPool) {
    let mut cfg = two_buildings();
    // building B is quiet 08:00-12:00 (UTC)
    cfg.groups.get_mut("bldg-b").unwrap().quiet_hours = Some("08:00-12:00".parse().unwrap());
    let mut f = Fleet::new(pool, cfg, monday()).await;
    f.history(&TWO_BUILDINGS, monday() - TimeDelta::days(28), |_, b, s| {
        usual_hour(b, chrono_tz::UTC, s)
    })
    .await;
    let utc = chrono_tz::UTC;
    // From 08:00: b1's camera is covered during B's quiet hours; a1 stops counting but also
    // sends only 2 messages an hour (heartbeat territory, not this rule's).
    let seen = f
        .live(monday() + h(12), min(5), |d, t, s| match d {
            "b1" if t >= monday() + h(8) => Some(0),
            "a1" if t >= monday() + h(8) => (t.minute() < 10).then_some(0),
            _ => Some(per_message(t, utc, s)),
        })
        .await;
    assert_eq!(fired(&seen), vec![]);
    let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, o) in &seen {
        for (k, n) in &o.not_judged {
            *skipped.entry(k).or_default() += n;
        }
    }
    // 08:00, 09:00, 10:00 closed before 12:00: three buckets of three B devices, and of a1
    assert_eq!(skipped.get("quiet_hours"), Some(&9), "{skipped:?}");
    assert_eq!(skipped.get("few_messages"), Some(&3), "{skipped:?}");
    // the night is small-baseline: nothing judged from a couple of impressions
    assert!(
        skipped.get("small_baseline").copied().unwrap_or(0) >= 7 * 6,
        "{skipped:?}"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn repeated_ticks_and_a_new_leader_judge_each_bucket_once(pool: PgPool) {
    let f = with_history(pool).await;
    let utc = chrono_tz::UTC;
    let count = |d: &str, t: DateTime<Utc>, s: f64| {
        Some(if d == "b2" && t >= monday() + h(9) {
            0
        } else {
            per_message(t, utc, s)
        })
    };
    f.live(monday() + h(10) + min(30), min(5), count).await;
    // 09:00 was judged once (low: a run of 1); tick again and again at the same instant
    for _ in 0..3 {
        assert!(f.tick().await.anomaly.buckets.is_empty());
    }
    // a new leader (fresh memory, same database) at the same instant judges nothing either
    let other = Detector::new(
        f.pool.clone(),
        f.detector.settings.clone(),
        TimeDelta::seconds(20),
    );
    assert!(other
        .tick(&IngestStatus::Healthy, f.now())
        .await
        .unwrap()
        .anomaly
        .buckets
        .is_empty());
    // the old leader is gone; the rest of the hour arrives; the new leader judges 10:00 and
    // the run survived the failover: the second low bucket fires
    f.run(monday() + h(11), min(5), count, false).await;
    f.clock.set(monday() + h(11) + TimeDelta::seconds(2));
    let o = other.tick(&IngestStatus::Healthy, f.now()).await.unwrap();
    assert_eq!(o.anomaly.buckets, vec![monday() + h(10)]);
    assert_eq!(o.anomaly.fired, vec!["b2".to_string()]);
    let again = f.tick().await;
    assert!(again.anomaly.buckets.is_empty() && again.anomaly.fired.is_empty());
    assert_eq!(f.alerts().await.len(), 1);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn nothing_to_judge_is_one_read(pool: PgPool) {
    let f = with_history(pool).await;
    // the first tick judges the newest closed bucket (Sunday 23:00), the next ones nothing
    f.clock.set(monday() + TimeDelta::seconds(2));
    assert_eq!(f.tick().await.anomaly.buckets, vec![monday() - h(1)]);
    f.clock.set(monday() + min(59));
    assert_eq!(f.tick().await.anomaly, Default::default());
    // disabled: nothing at all
    let mut s = f.detector.settings.clone();
    s.anomaly.enabled = false;
    let off = Detector::new(f.pool.clone(), s, TimeDelta::seconds(20));
    f.clock.set(monday() + h(3));
    assert_eq!(
        off.tick(&IngestStatus::Healthy, f.now())
            .await
            .unwrap()
            .anomaly,
        Default::default()
    );
}

/// Second scale: buckets of 10 s, a "week" of 60 s, a baseline of 3 "weeks".
fn second_scale() -> Config {
    let env: BTreeMap<String, String> = [
        ("FLEETWATCH_ANOMALY_BUCKET", "10s"),
        ("FLEETWATCH_ANOMALY_SEASON", "60s"),
        ("FLEETWATCH_ANOMALY_BASELINE", "180s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut cfg = Config::load_with_env(None, &env).unwrap();
    cfg.telemetry.flush_interval = HumanDuration(std::time::Duration::from_secs(1));
    cfg.groups = two_buildings().groups;
    cfg
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_new_device_is_judged_only_once_it_has_a_baseline(pool: PgPool) {
    let mut f = Fleet::new(pool, second_scale(), monday()).await;
    // an established fleet with three "weeks" of history; new device a9 joins now
    f.history(
        &TWO_BUILDINGS,
        monday() - TimeDelta::seconds(180),
        |_, _, s| Some((5, (50.0 * s) as i64)),
    )
    .await;
    f.history(&[("a9", "bldg-a", 1.0)], monday(), |_, _, _| None)
        .await;
    // a9's camera never worked: 0 from its first message. Others send 10 per message (2 s).
    let count =
        |d: &str, _: DateTime<Utc>, s: f64| Some(if d == "a9" { 0 } else { (10.0 * s) as i64 });
    // one "week": a9 has no baseline anywhere
    let seen = f
        .live(
            monday() + TimeDelta::seconds(60),
            TimeDelta::seconds(2),
            count,
        )
        .await;
    assert_eq!(fired(&seen), vec![]);
    let no_baseline: usize = seen
        .iter()
        .filter_map(|(_, o)| o.not_judged.get("no_baseline"))
        .sum();
    assert!(no_baseline >= 5, "{seen:?}");
    // a9 learns a usual of ~50 over two "weeks", then its camera breaks
    let working =
        |d: &str, _: DateTime<Utc>, s: f64| Some(if d == "a9" { 10 } else { (10.0 * s) as i64 });
    let seen = f
        .live(
            monday() + TimeDelta::seconds(180),
            TimeDelta::seconds(2),
            working,
        )
        .await;
    assert_eq!(fired(&seen), vec![]);
    let broken_at = f.now();
    let seen = f
        .live(
            broken_at + TimeDelta::seconds(40),
            TimeDelta::seconds(2),
            count,
        )
        .await;
    let fired = fired(&seen);
    assert_eq!(
        fired.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>(),
        ["a9"]
    );
    assert!(
        fired[0].0 <= broken_at + TimeDelta::seconds(22),
        "{fired:?}"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_week_after_dst_compares_the_same_wall_clock_hour(pool: PgPool) {
    let ny: Tz = chrono_tz::America::New_York;
    let mut cfg = Config::default();
    cfg.groups.insert(
        "nyc".into(),
        GroupConfig {
            time_zone: Some("America/New_York".parse().unwrap()),
            device_pattern: Some("^ny".parse().unwrap()),
            ..Default::default()
        },
    );
    // Monday 2026-11-02 00:00 EST: DST ended the day before. The lobby opens at 08:00 local
    // sharp: 07:00-08:00 sees almost nobody, 08:00-09:00 is busy.
    let start = DateTime::parse_from_rfc3339("2026-11-02T05:00:00Z")
        .unwrap()
        .to_utc();
    let lobby = move |t: DateTime<Utc>| -> i64 {
        match t.with_timezone(&ny).hour() {
            8..=18 => 240,
            _ => 6,
        }
    };
    // one low bucket is enough here, so that a wrong slot (one hour off) would show
    cfg.anomaly.buckets = 1;
    let mut f = Fleet::new(pool, cfg, start).await;
    // one screen alone: nothing to compare with but itself
    f.history(
        &[("ny1", "nyc", 1.0)],
        start - TimeDelta::days(28),
        |_, b, _| Some((12, lobby(b))),
    )
    .await;
    // a normal Monday: with hour-of-week in UTC, 07:00 EST would be compared with 08:00 EDT
    // (busy) and alert
    let seen = f
        .live(start + h(24), min(5), |_, t, _| Some(lobby(t) / 12))
        .await;
    assert!(
        seen.iter().map(|(_, o)| o.judged).sum::<usize>() >= 11,
        "{seen:?}"
    );
    assert_eq!(fired(&seen), vec![]);
    // and a covered camera on Tuesday morning is still caught
    let tuesday_9 = start + h(24 + 9);
    let seen = f
        .live(tuesday_9 + h(3), min(5), |_, t, _| {
            Some(if t >= tuesday_9 { 0 } else { lobby(t) / 12 })
        })
        .await;
    assert_eq!(fired(&seen).len(), 1);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn unusable_impressions_values_count_one_and_never_corrupt_sums(pool: PgPool) {
    let f = Fleet::new(pool, Config::default(), monday() + min(1)).await;
    for p in [
        r#"{"count":5}"#,
        r#"{"count":"lots"}"#,
        r#"{"count":-5}"#,
        r#"{"count":1e300}"#,
        r#"{"count":9223372036854775807}"#,
        r#"{"count":null}"#,
        r#"{}"#,
        r#"{"count":2.4}"#,
    ] {
        f.send_at("s1", p, f.now()).await;
    }
    telemetry::flush(&f.ingest).await.unwrap();
    let (messages, impressions): (i64, i64) = sqlx::query_as(
        "select messages, impressions from impression_buckets where device_id = 's1' and bucket_start = $1",
    )
    .bind(monday())
    .fetch_one(&f.pool)
    .await
    .unwrap();
    // 5 + 1 + 1 + 1 + 1 + 1 + 1 + 2
    assert_eq!((messages, impressions), (8, 13));
    assert_eq!(f.ingest.metrics.impressions_invalid.get(), 4);
    // the hourly message counts are unchanged by the values
    let hourly: i64 =
        sqlx::query_scalar("select count from impressions_hourly where device_id = 's1'")
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(hourly, 8);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_api_shows_the_series_against_its_baseline(pool: PgPool) {
    use common::http::{assert_problem, get, get_ok, TestApp};
    // the API's clock: Monday 02:30; s1 has three weeks of 100 per hour, then a covered camera
    let app = TestApp::build(&pool, monday() + h(2) + min(30), Some("tok"), |_| {});
    let mut f = Fleet::new(pool.clone(), Config::default(), monday() + h(2) + min(30)).await;
    f.history(
        &[("s1", "", 1.0)],
        monday() - TimeDelta::days(21),
        |_, b, _| Some((12, if b >= monday() { 0 } else { 100 })),
    )
    .await;
    let since = "2026-11-29T23:00:00Z";
    let v = get_ok(
        &app,
        &format!("/api/v1/devices/s1/impressions?since={since}"),
    )
    .await;
    assert_eq!(v["device_id"], "s1");
    assert_eq!(v["bucket_seconds"], 3600);
    assert_eq!(v["season_seconds"], 7 * 86400);
    let items = v["items"].as_array().unwrap();
    // Sunday 23:00, Monday 00:00, 01:00, 02:00 (the current bucket too)
    assert_eq!(items.len(), 4, "{v}");
    assert_eq!(items[0]["impressions"], 100);
    assert_eq!(items[0]["baseline"], 100.0);
    assert_eq!(items[0]["below"], false);
    assert_eq!(items[1]["impressions"], 0);
    assert_eq!(items[1]["messages"], 12);
    assert_eq!(items[1]["baseline"], 100.0);
    assert_eq!(items[1]["ratio"], 0.0);
    assert_eq!(items[1]["judged"], true);
    assert_eq!(items[1]["below"], true);
    // three weeks of history: the oldest buckets have no earlier sample
    let v = get_ok(
        &app,
        "/api/v1/devices/s1/impressions?since=2026-11-10T00:00:00Z",
    )
    .await;
    let first = &v["items"][0];
    assert_eq!(first["bucket_start"], "2026-11-10T00:00:00Z");
    assert!(first["baseline"].is_null(), "{v}");
    assert_eq!(first["judged"], false);
    // the default window is one season back
    let v = get_ok(&app, "/api/v1/devices/s1/impressions").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 7 * 24 + 1, "{v}");
    // errors
    assert_problem(
        &get(&app, "/api/v1/devices/nope/impressions").await,
        404,
        "unknown device",
    );
    assert_problem(
        &get(&app, "/api/v1/devices/s1/impressions?since=yesterday").await,
        400,
        "bad since",
    );
    assert_problem(
        &get(
            &app,
            "/api/v1/devices/s1/impressions?since=2030-01-01T00:00:00Z",
        )
        .await,
        400,
        "future since",
    );
    assert_problem(
        &get(
            &app,
            "/api/v1/devices/s1/impressions?since=2020-01-01T00:00:00Z",
        )
        .await,
        400,
        "too far back",
    );
}
