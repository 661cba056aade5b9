//! The telemetry coalescing buffer and its batch writer against a real Postgres: one row per
//! device per flush, greatest-wins and add-up merges across flushes, hourly buckets, groups
//! from topics and patterns, failed flushes that keep their batch, and concurrent writers.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use fleetwatch::clock::ManualClock;
use fleetwatch::config::Config;
use fleetwatch::domain::identity::Identity;
use fleetwatch::ingest::accept::accept_telemetry;
use fleetwatch::ingest::telemetry::flush;
use fleetwatch::ingest::{DeviceRegistry, IngestContext, TelemetryOutcome};
use fleetwatch::metrics::Metrics;
use sqlx::PgPool;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

/// 10:00 UTC on the test day; everything is placed relative to it.
fn base() -> DateTime<Utc> {
    t("2026-11-27T10:00:00Z")
}

fn min(n: i64) -> DateTime<Utc> {
    base() + TimeDelta::minutes(n)
}

fn context(cfg: &Config, pool: &PgPool) -> IngestContext {
    IngestContext::new(
        cfg,
        pool.clone(),
        Metrics::new(),
        ManualClock::new(base()),
        Arc::new(DeviceRegistry::new(vec![], 1_000_000)),
    )
}

/// Ingest's own telemetry path (admission, groups, metrics), minus the topic filters.
fn feed(ctx: &IngestContext, topic: &str, payload: &str, arrival: DateTime<Utc>) {
    let out = accept_telemetry(ctx, topic, payload.as_bytes(), arrival);
    assert!(
        matches!(out, TelemetryOutcome::Buffered { .. }),
        "{topic} {payload}: {out:?}"
    );
}

fn with_ts(ts: DateTime<Utc>) -> String {
    format!(r#"{{"timestamp":{},"count":1}}"#, ts.timestamp_millis())
}

fn topic(device: &str) -> String {
    format!("dt/{device}/impressions")
}

/// A device as the flush leaves it.
#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Dev {
    group_id: Option<String>,
    state: String,
    last_impression_at: Option<DateTime<Utc>>,
    last_device_ts: Option<DateTime<Utc>>,
}

async fn device(pool: &PgPool, id: &str) -> Dev {
    sqlx::query_as(
        "select group_id, state, last_impression_at, last_device_ts from devices where id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("no device {id:?}"))
}

/// Hour → count of one device.
async fn hours(pool: &PgPool, id: &str) -> BTreeMap<DateTime<Utc>, i64> {
    fleetwatch::db::telemetry::hourly_for_device(pool, id, t("2000-01-01T00:00:00Z"))
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn total(pool: &PgPool) -> i64 {
    scalar(
        pool,
        "select coalesce(sum(count), 0)::bigint from impressions_hourly",
    )
    .await
}

/// A sample of the metrics text (`name` including labels), or 0.
fn sample(ctx: &IngestContext, name: &str) -> f64 {
    let text = ctx.metrics.render();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn many_messages_for_few_devices_make_one_row_each(pool: PgPool) {
    let ctx = context(&Config::default(), &pool);
    let counts: Vec<(String, usize)> = (0..7)
        .map(|i| (format!("screen-{i}"), 40 + i * 13))
        .collect();
    let messages: usize = counts.iter().map(|c| c.1).sum();
    // interleaved the way a fleet sends: round-robin over the devices
    let mut last = BTreeMap::new();
    let mut k = 0;
    for round in 0..counts.iter().map(|c| c.1).max().unwrap() {
        for (id, _) in counts.iter().filter(|c| round < c.1) {
            let arrival = min(1) + TimeDelta::seconds(k);
            feed(
                &ctx,
                &topic(id),
                &with_ts(arrival - TimeDelta::seconds(2)),
                arrival,
            );
            last.insert(id.clone(), arrival);
            k += 1;
        }
    }
    assert_eq!(ctx.buffer.len(), 7);
    assert_eq!(sample(&ctx, "fleetwatch_telemetry_buffer_devices"), 7.0);

    assert_eq!(flush(&ctx).await.unwrap(), 7);
    assert!(ctx.buffer.is_empty());
    assert_eq!(sample(&ctx, "fleetwatch_telemetry_buffer_devices"), 0.0);
    assert_eq!(sample(&ctx, "fleetwatch_flush_batch_devices_count"), 1.0);
    assert_eq!(sample(&ctx, "fleetwatch_flush_batch_devices_sum"), 7.0);
    assert_eq!(sample(&ctx, "fleetwatch_flush_duration_seconds_count"), 1.0);
    assert_eq!(sample(&ctx, "fleetwatch_flush_errors_total"), 0.0);

    assert_eq!(scalar(&pool, "select count(*) from devices").await, 7);
    assert_eq!(total(&pool).await, messages as i64);
    // all messages within 10:00–10:59 by device time: one hourly row per device
    assert_eq!(
        scalar(&pool, "select count(*) from impressions_hourly").await,
        7
    );
    for (id, n) in &counts {
        assert_eq!(
            hours(&pool, id).await,
            BTreeMap::from([(base(), *n as i64)])
        );
        let d = device(&pool, id).await;
        assert_eq!(d.state, "healthy");
        assert_eq!(d.group_id, None);
        assert_eq!(d.last_impression_at, Some(last[id]), "{id}");
        assert_eq!(
            d.last_device_ts,
            Some(last[id] - TimeDelta::seconds(2)),
            "{id}"
        );
    }
    // the busiest device sent the very last message; the others stopped earlier
    assert_eq!(last["screen-6"], min(1) + TimeDelta::seconds(k - 1));
    assert!(last["screen-0"] < last["screen-5"]);

    // nothing buffered: nothing written, nothing observed
    assert_eq!(flush(&ctx).await.unwrap(), 0);
    assert_eq!(sample(&ctx, "fleetwatch_flush_batch_devices_count"), 1.0);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn greatest_wins_across_flushes(pool: PgPool) {
    let ctx = context(&Config::default(), &pool);
    let s1 = topic("s1");

    feed(&ctx, &s1, &with_ts(min(29)), min(30));
    assert_eq!(flush(&ctx).await.unwrap(), 1);
    let after_first = device(&pool, "s1").await;
    assert_eq!(after_first.last_impression_at, Some(min(30)));
    assert_eq!(after_first.last_device_ts, Some(min(29)));

    // an older arrival (another replica, a slow flush) flushed later moves nothing back
    feed(&ctx, &s1, &with_ts(min(9)), min(10));
    assert_eq!(flush(&ctx).await.unwrap(), 1);
    assert_eq!(device(&pool, "s1").await, after_first);

    // no device time, or an absurd one, does not erase the newest device time
    feed(&ctx, &s1, "{}", min(20));
    feed(&ctx, &s1, r#"{"timestamp":null}"#, min(21));
    feed(&ctx, &s1, r#"{"timestamp":1000}"#, min(22));
    assert_eq!(flush(&ctx).await.unwrap(), 1);
    assert_eq!(device(&pool, "s1").await, after_first);

    // a newer arrival with an older device time (a backlog flushed on reconnect) moves arrival
    // only
    feed(&ctx, &s1, &with_ts(min(5)), min(40));
    flush(&ctx).await.unwrap();
    let d = device(&pool, "s1").await;
    assert_eq!(d.last_impression_at, Some(min(40)));
    assert_eq!(d.last_device_ts, Some(min(29)));

    // and newer both move both
    feed(&ctx, &s1, &with_ts(min(44)), min(45));
    flush(&ctx).await.unwrap();
    let d = device(&pool, "s1").await;
    assert_eq!(d.last_impression_at, Some(min(45)));
    assert_eq!(d.last_device_ts, Some(min(44)));

    // the same orders from two replicas (separate buffers) converge too
    let other = context(&Config::default(), &pool);
    feed(&other, &topic("s2"), &with_ts(min(50)), min(51));
    feed(&ctx, &topic("s2"), &with_ts(min(30)), min(31));
    flush(&other).await.unwrap();
    flush(&ctx).await.unwrap();
    let d = device(&pool, "s2").await;
    assert_eq!(
        (d.last_impression_at, d.last_device_ts),
        (Some(min(51)), Some(min(50)))
    );
    assert_eq!(total(&pool).await, 9);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn first_data_makes_a_device_healthy_but_never_overrides_the_detector(pool: PgPool) {
    sqlx::query(
        r#"insert into devices (id, state, state_since) values
           ('seen-by-presence', 'never_seen', '2026-11-27T09:00:00Z'),
           ('silent-one', 'silent', '2026-11-27T09:00:00Z'),
           ('retired-one', 'retired', '2026-11-27T09:00:00Z')"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    let ctx = context(&Config::default(), &pool);
    for id in ["seen-by-presence", "silent-one", "retired-one", "brand-new"] {
        feed(&ctx, &topic(id), "{}", min(5));
    }
    assert_eq!(flush(&ctx).await.unwrap(), 4);
    let states: Vec<(String, String, DateTime<Utc>)> =
        sqlx::query_as("select id, state, state_since from devices order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        states,
        [
            ("brand-new".into(), "healthy".into(), min(5)),
            ("retired-one".into(), "retired".into(), min(-60)),
            ("seen-by-presence".into(), "healthy".into(), min(5)),
            ("silent-one".into(), "silent".into(), min(-60)),
        ]
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn counts_add_across_flushes(pool: PgPool) {
    let ctx = context(&Config::default(), &pool);
    let s1 = topic("s1");
    for i in 0..3 {
        feed(&ctx, &s1, "{}", min(i));
    }
    flush(&ctx).await.unwrap();
    for i in 0..4 {
        feed(&ctx, &s1, "{}", min(10 + i));
    }
    flush(&ctx).await.unwrap();
    for i in 0..2 {
        feed(&ctx, &s1, "{}", min(65 + i));
    }
    // the same device through another buffer (another replica) adds up as well
    let other = context(&Config::default(), &pool);
    feed(&other, &s1, "{}", min(70));
    flush(&ctx).await.unwrap();
    flush(&other).await.unwrap();
    assert_eq!(
        hours(&pool, "s1").await,
        BTreeMap::from([(min(0), 7), (min(60), 3)])
    );
    assert_eq!(device(&pool, "s1").await.last_impression_at, Some(min(70)));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hourly_buckets_by_device_time_else_arrival(pool: PgPool) {
    let ctx = context(&Config::default(), &pool);
    let arrival = t("2026-11-27T11:05:00Z");
    let ms = |s: &str| t(s).timestamp_millis();
    // (device, payload, expected bucket, expected device time)
    let cases: Vec<(&str, String, &str, Option<&str>)> = vec![
        (
            "edge",
            format!(r#"{{"timestamp":{}}}"#, ms("2026-11-27T10:59:59.999Z")),
            "2026-11-27T10:00:00Z",
            Some("2026-11-27T10:59:59.999Z"),
        ),
        (
            "rfc3339-offset",
            r#"{"timestamp":"2026-11-27T19:30:00+09:00"}"#.into(),
            "2026-11-27T10:00:00Z",
            Some("2026-11-27T10:30:00Z"),
        ),
        (
            "backlog",
            format!(r#"{{"timestamp":{}}}"#, ms("2026-11-25T08:15:00Z")),
            "2026-11-25T08:00:00Z",
            Some("2026-11-25T08:15:00Z"),
        ),
        (
            "ahead-but-plausible",
            format!(r#"{{"timestamp":{}}}"#, ms("2026-11-28T09:30:00Z")),
            "2026-11-28T09:00:00Z",
            Some("2026-11-28T09:30:00Z"),
        ),
        ("absent", "{}".into(), "2026-11-27T11:00:00Z", None),
        (
            "null",
            r#"{"timestamp":null}"#.into(),
            "2026-11-27T11:00:00Z",
            None,
        ),
        (
            "unparsable",
            r#"{"timestamp":"yesterday"}"#.into(),
            "2026-11-27T11:00:00Z",
            None,
        ),
        (
            "wrong-type",
            r#"{"timestamp":true}"#.into(),
            "2026-11-27T11:00:00Z",
            None,
        ),
        (
            "epoch-1970",
            r#"{"timestamp":1000}"#.into(),
            "2026-11-27T11:00:00Z",
            None,
        ),
        (
            "before-2020",
            format!(r#"{{"timestamp":{}}}"#, ms("2019-12-31T23:59:59Z")),
            "2026-11-27T11:00:00Z",
            None,
        ),
        (
            "days-ahead",
            format!(r#"{{"timestamp":{}}}"#, ms("2026-11-29T11:05:00Z")),
            "2026-11-27T11:00:00Z",
            None,
        ),
    ];
    for (id, payload, _, _) in &cases {
        feed(&ctx, &topic(id), payload, arrival);
    }
    assert_eq!(flush(&ctx).await.unwrap(), cases.len());
    for (id, _, bucket, dev_ts) in &cases {
        assert_eq!(
            hours(&pool, id).await,
            BTreeMap::from([(t(bucket), 1)]),
            "{id}"
        );
        let d = device(&pool, id).await;
        assert_eq!(d.last_device_ts, dev_ts.map(t), "{id}");
        assert_eq!(d.last_impression_at, Some(arrival), "{id}");
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn topic_level_group_creates_the_group_and_sets_the_device_group(pool: PgPool) {
    let mut cfg = Config::default();
    cfg.telemetry.group_level = Some(1);
    cfg.telemetry.device_id_level = 2;
    cfg.mqtt.telemetry_topics = vec!["dt/+/+/impressions".into()];
    cfg.fleet.time_zone = "Asia/Tokyo".parse().unwrap();
    let ctx = context(&cfg, &pool);
    feed(&ctx, "dt/bldg-7/s1/impressions", "{}", min(1));
    feed(&ctx, "dt/bldg-7/s2/impressions", "{}", min(2));
    feed(&ctx, "dt/bldg-9/s3/impressions", "{}", min(3));
    // an empty group level names no group; the message still counts
    feed(&ctx, "dt//s4/impressions", "{}", min(4));
    assert_eq!(flush(&ctx).await.unwrap(), 4);

    let groups: Vec<(String, String, String, String)> =
        sqlx::query_as("select id, name, time_zone, source from groups order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let topic_group = |id: &str| (id.into(), id.into(), "Asia/Tokyo".into(), "topic".into());
    assert_eq!(groups, [topic_group("bldg-7"), topic_group("bldg-9")]);
    for (id, group) in [
        ("s1", Some("bldg-7")),
        ("s2", Some("bldg-7")),
        ("s3", Some("bldg-9")),
        ("s4", None),
    ] {
        assert_eq!(device(&pool, id).await.group_id.as_deref(), group, "{id}");
    }
    assert_eq!(total(&pool).await, 4);

    // an existing group is left as it is
    sqlx::query("update groups set name = 'Building 7' where id = 'bldg-7'")
        .execute(&pool)
        .await
        .unwrap();
    feed(&ctx, "dt/bldg-7/s5/impressions", "{}", min(5));
    flush(&ctx).await.unwrap();
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from groups where name = 'Building 7'"
        )
        .await,
        1
    );
    assert_eq!(
        device(&pool, "s5").await.group_id.as_deref(),
        Some("bldg-7")
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn configured_pattern_group_wins_over_the_topic_group(pool: PgPool) {
    let cfg = Config::from_toml(
        r#"
        [telemetry]
        device_id_level = 2
        group_level = 1

        [groups.x]
        name = "Tokyo HQ"
        time_zone = "Asia/Tokyo"
        device_pattern = "^tky-"
        "#,
    )
    .unwrap();
    // as at start-up: configured groups are written first
    fleetwatch::db::devices::sync_config(&pool, &cfg, &Identity::from_config(&cfg))
        .await
        .unwrap();
    // a device that presence created before any telemetry, without a group
    sqlx::query("insert into devices (id) values ('tky-2')")
        .execute(&pool)
        .await
        .unwrap();
    let ctx = context(&cfg, &pool);
    feed(&ctx, "dt/bldg-7/tky-1/impressions", "{}", min(1));
    feed(&ctx, "dt/bldg-7/tky-2/impressions", "{}", min(2));
    feed(&ctx, "dt/bldg-7/osk-1/impressions", "{}", min(3));
    assert_eq!(flush(&ctx).await.unwrap(), 3);

    for (id, group) in [("tky-1", "x"), ("tky-2", "x"), ("osk-1", "bldg-7")] {
        assert_eq!(
            device(&pool, id).await.group_id.as_deref(),
            Some(group),
            "{id}"
        );
    }
    let groups: Vec<(String, String, String, String)> =
        sqlx::query_as("select id, name, time_zone, source from groups order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        groups,
        [
            (
                "bldg-7".into(),
                "bldg-7".into(),
                "UTC".into(),
                "topic".into()
            ),
            (
                "x".into(),
                "Tokyo HQ".into(),
                "Asia/Tokyo".into(),
                "config".into()
            ),
        ]
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn failed_flush_keeps_the_batch_for_a_later_one(pool: PgPool) {
    let ctx = context(&Config::default(), &pool);
    for d in 0..5 {
        for i in 0..10 {
            feed(&ctx, &topic(&format!("d{d}")), "{}", min(d * 10 + i));
        }
    }
    pool.close().await;
    let err = flush(&ctx).await.expect_err("the pool is closed");
    assert!(format!("{err:#}").contains("5 devices"), "{err:#}");
    assert_eq!(ctx.buffer.len(), 5);
    assert_eq!(sample(&ctx, "fleetwatch_flush_errors_total"), 1.0);
    assert_eq!(sample(&ctx, "fleetwatch_flush_batch_devices_count"), 0.0);
    assert_eq!(sample(&ctx, "fleetwatch_telemetry_buffer_devices"), 5.0);

    // messages keep arriving during the outage and merge with what was put back
    feed(&ctx, &topic("d0"), "{}", min(95));
    feed(&ctx, &topic("d9"), "{}", min(96));
    flush(&ctx).await.expect_err("still closed");
    assert_eq!(ctx.buffer.len(), 6);
    assert_eq!(sample(&ctx, "fleetwatch_flush_errors_total"), 2.0);

    // the database is back: a context sharing the buffer, on a new pool
    let pool2 = PgPool::connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let ctx2 = IngestContext {
        pool: pool2.clone(),
        ..ctx.clone()
    };
    assert_eq!(flush(&ctx2).await.unwrap(), 6);
    assert!(ctx.buffer.is_empty());
    assert_eq!(total(&pool2).await, 52);
    assert_eq!(
        hours(&pool2, "d0").await,
        BTreeMap::from([(base(), 10), (min(60), 1)])
    );
    assert_eq!(device(&pool2, "d0").await.last_impression_at, Some(min(95)));
    assert_eq!(device(&pool2, "d4").await.last_impression_at, Some(min(49)));
    assert_eq!(device(&pool2, "d9").await.last_impression_at, Some(min(96)));
    assert_eq!(flush(&ctx2).await.unwrap(), 0);
    pool2.close().await;
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_refused_batch_writes_nothing_and_is_retried_whole(pool: PgPool) {
    let ctx = context(&Config::default(), &pool);
    for id in ["a", "b", "poison", "z"] {
        feed(&ctx, &topic(id), "{}", min(1));
        feed(&ctx, &topic(id), "{}", min(2));
    }
    // make the write fail from the inside for one device of the batch
    sqlx::query("alter table devices add constraint test_refuse check (id <> 'poison')")
        .execute(&pool)
        .await
        .unwrap();
    flush(&ctx)
        .await
        .expect_err("the batch holds a refused row");
    // one statement: all or nothing
    assert_eq!(scalar(&pool, "select count(*) from devices").await, 0);
    assert_eq!(total(&pool).await, 0);
    assert_eq!(ctx.buffer.len(), 4);

    feed(&ctx, &topic("a"), "{}", min(3));
    sqlx::query("alter table devices drop constraint test_refuse")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(flush(&ctx).await.unwrap(), 4);
    assert_eq!(total(&pool).await, 9);
    assert_eq!(hours(&pool, "a").await, BTreeMap::from([(base(), 3)]));
    assert_eq!(device(&pool, "a").await.last_impression_at, Some(min(3)));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn concurrent_flushes_of_overlapping_devices_do_not_deadlock(pool: PgPool) {
    let mut cfg = Config::default();
    cfg.telemetry.group_level = Some(1);
    cfg.telemetry.device_id_level = 2;
    let a = context(&cfg, &pool);
    let b = context(&cfg, &pool);
    let rounds = 6;
    let msg = |ctx: &IngestContext, d: usize, round: i64| {
        let arrival = min(round) + TimeDelta::milliseconds(d as i64);
        // two hours per device, and groups shared by both writers
        let ts = if d % 2 == 0 { min(-30) } else { min(30) };
        feed(
            ctx,
            &format!("dt/g{}/dev-{d:05}/impressions", d % 17),
            &with_ts(ts),
            arrival,
        );
    };
    for round in 0..rounds {
        // a: devices 0..1500, b: 500..2000; 1000 devices in both batches
        for d in 0..1500 {
            msg(&a, d, round);
        }
        for d in (500..2000).rev() {
            msg(&b, d, round);
        }
        let (ra, rb) = tokio::join!(flush(&a), flush(&b));
        assert_eq!(ra.unwrap(), 1500, "round {round}");
        assert_eq!(rb.unwrap(), 1500, "round {round}");
    }
    assert_eq!(sample(&a, "fleetwatch_flush_errors_total"), 0.0);
    assert_eq!(sample(&b, "fleetwatch_flush_errors_total"), 0.0);
    assert_eq!(scalar(&pool, "select count(*) from devices").await, 2000);
    assert_eq!(scalar(&pool, "select count(*) from groups").await, 17);
    assert_eq!(total(&pool).await, rounds * 3000);
    let per_device: Vec<(String, i64)> = sqlx::query_as(
        "select device_id, sum(count)::bigint from impressions_hourly group by 1 order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (id, n) in per_device {
        let d: usize = id.trim_start_matches("dev-").parse().unwrap();
        let want = if (500..1500).contains(&d) {
            2 * rounds
        } else {
            rounds
        };
        assert_eq!(n, want, "{id}");
    }
    let last: DateTime<Utc> = sqlx::query_scalar("select min(last_impression_at) from devices")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(last, min(rounds - 1));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn thousands_of_devices_flush_in_one_call(pool: PgPool) {
    let ctx = context(&Config::default(), &pool);
    let n = 6000;
    for d in 0..n {
        let id = format!("screen-{d:05}");
        feed(&ctx, &topic(&id), &with_ts(min(10)), min(15));
        if d % 3 == 0 {
            feed(&ctx, &topic(&id), &with_ts(min(70)), min(71));
        }
    }
    assert_eq!(ctx.buffer.len(), n);
    assert_eq!(flush(&ctx).await.unwrap(), n);
    assert!(ctx.buffer.is_empty());
    assert_eq!(sample(&ctx, "fleetwatch_flush_batch_devices_count"), 1.0);
    assert_eq!(sample(&ctx, "fleetwatch_flush_batch_devices_sum"), n as f64);
    assert_eq!(
        scalar(&pool, "select count(*) from devices").await,
        n as i64
    );
    assert_eq!(
        scalar(&pool, "select count(*) from impressions_hourly").await,
        (n + n / 3) as i64
    );
    assert_eq!(total(&pool).await, (n + n / 3) as i64);
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from devices where last_impression_at = '2026-11-27T11:11:00Z'"
        )
        .await,
        (n / 3) as i64
    );
}

/// Retention trims the hourly counts by hour, in batches, and keeps the recent ones whole.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn retention_trims_hourly_counts_older_than_the_period(pool: PgPool) {
    sqlx::query(
        "insert into devices (id, state) values ('old-timer', 'healthy'), ('new', 'healthy')",
    )
    .execute(&pool)
    .await
    .unwrap();
    // 12,000 hours of one device (500 days back from `base()`), 3 of another
    sqlx::query(
        r#"insert into impressions_hourly (device_id, hour, count)
           select 'old-timer', $1 - h * interval '1 hour', 7 from generate_series(0, 11999) h
           union all
           select 'new', $1 - h * interval '1 hour', 1 from generate_series(0, 2) h"#,
    )
    .bind(base())
    .execute(&pool)
    .await
    .unwrap();
    let mut r = Config::default().retention;
    r.impressions_hourly =
        fleetwatch::config::HumanDuration(std::time::Duration::from_secs(10 * 86400));
    let clock: fleetwatch::clock::SharedClock = ManualClock::new(base());
    let d = fleetwatch::retention::tick(&pool, &clock, &r)
        .await
        .unwrap();
    let keep = 10 * 24 + 1; // hours 0..=240 are at most 10 days old
    assert_eq!(d.impressions_hourly, 12_000 - keep);
    let left = hours(&pool, "old-timer").await;
    assert_eq!(left.len() as u64, keep);
    assert!(left.keys().all(|h| *h >= base() - TimeDelta::days(10)));
    assert_eq!(hours(&pool, "new").await.len(), 3);
    // nothing more to do at the same time
    let again = fleetwatch::retention::tick(&pool, &clock, &r)
        .await
        .unwrap();
    assert_eq!(again.impressions_hourly, 0);
}
