//! Ingest against a real Postgres and a private Mosquitto, each figure beside a baseline
//! measured in the same run (issue 12, items 2 and 3): `cargo bench --bench ingest` with
//! `DATABASE_URL` pointing at a maintenance database (`scripts/bench` runs it). Prints
//! `row |…|` lines that `scripts/bench` gathers into one table, with details above them.
//!
//! Telemetry (`BENCH_MESSAGES` impressions from `BENCH_DEVICES` devices, QoS 1, one publisher):
//! 1. `mosquitto_sub` draining the same stream to /dev/null: what the broker can hand out;
//! 2. the service (4 connections, `$share`), until every message is counted in Postgres;
//!    that includes the wait for the last flush (up to `telemetry.flush_interval`, 1 s), a
//!    latency rather than a rate, so the stream is long enough (300,000 messages, ≈ 8 s) for
//!    the figure to be the sustained rate: at 100,000 (≈ 3 s) the tail alone held it at
//!    ≈ 33,700 msg/s whatever the service or the broker did;
//! 3. a naive consumer: one connection, one `insert` per message (`BENCH_NAIVE` messages).
//!    Postgres commits per second are shown for each.
//!
//! Presence (`BENCH_PRESENCE` events of `BENCH_DEVICES` devices, then a storm):
//! 4. one transaction per event, 8 concurrent writers: the service before issue 12;
//! 5. batched as the dispatcher does (`ingest::presence::store`, 4 writers by device);
//! 6. a reconnect storm end to end: `BENCH_STORM` connected devices each disconnect and
//!    reconnect (2 events each) through the broker, until every event is stored and every device is
//!    connected. Presence as a large fleet receives it: republished by an IoT rule to a topic
//!    of our own, shared over 4 connections (`share_presence`).

#[path = "../tests/common/mod.rs"]
mod common;

mod bench;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::{arg, drop_db, fresh_db, row};
use chrono::{TimeDelta, Utc};
use common::*;
use fleetwatch::clock::SystemClock;
use fleetwatch::ingest::dispatch::{shard_of, PRESENCE_BATCH, PRESENCE_WRITERS};
use fleetwatch::ingest::presence::{prepare, store, Prepared};
use fleetwatch::ingest::{telemetry, DeviceRegistry, IngestContext};
use fleetwatch::metrics::Metrics;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

async fn counted(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>("select sum(count)::bigint from impressions_hourly")
        .fetch_one(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Transactions committed in this database so far. The statistics reach the view within a
/// second of a backend going idle, so callers wait that long before reading.
async fn commits(pool: &PgPool) -> i64 {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sqlx::query_scalar(
        "select xact_commit from pg_stat_database where datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_until(what: &str, secs: u64, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not done after {secs} s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn publish_impressions(p: &mut Publisher, prefix: &str, messages: usize, devices: usize) {
    let now = ms(Utc::now());
    let payload = format!(r#"{{"timestamp":{now},"count":3,"dwell_ms":1200}}"#);
    for i in 0..messages {
        p.publish(
            &format!("dt/{prefix}-{:05}/impressions", i % devices),
            payload.clone(),
        )
        .await;
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let messages = arg("BENCH_MESSAGES", 300_000);
    let devices = arg("BENCH_DEVICES", 2_000);
    let naive = arg("BENCH_NAIVE", 10_000);
    let presence = arg("BENCH_PRESENCE", 20_000);
    let storm = arg("BENCH_STORM", 100_000);
    let (pool, url) = fresh_db("").await;
    // A queue deep enough for the whole storm: Mosquitto drops what does not fit.
    let broker = Broker::start_conf(false, "max_queued_messages 1000000").await;
    let mut p = Publisher::connect(broker.port, "bench-pub").await;

    // 1. mosquitto_sub: the broker's own pace for this stream
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args(["-i", "bench-mosquitto-sub", "-t", "dt/+/impressions"])
        .args(["-C", &messages.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (Debian's mosquitto-clients)");
    tokio::time::sleep(Duration::from_millis(500)).await; // subscribed
    let t = Instant::now();
    publish_impressions(&mut p, "sub", messages, devices).await;
    tokio::time::timeout(Duration::from_secs(120), sub.wait())
        .await
        .expect("mosquitto_sub receives every message")
        .unwrap();
    let sub_rate = rate(messages, t.elapsed());
    p.flush().await;
    println!(
        "mosquitto_sub: {messages} msgs in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // 2. the service
    let mut cfg = config(&broker);
    cfg.mqtt.connections = 4;
    cfg.telemetry.flush_interval = fleetwatch::config::HumanDuration(Duration::from_secs(1));
    let app = start_app(&pool, cfg).await;
    let c0 = commits(&pool).await;
    let t = Instant::now();
    publish_impressions(&mut p, "screen", messages, devices).await;
    let published = t.elapsed();
    wait_until("service counts every message", 120, async || {
        counted(&pool).await >= messages as i64
    })
    .await;
    let took = t.elapsed();
    let service_rate = rate(messages, took);
    let service_commits = (commits(&pool).await - c0) as f64 / took.as_secs_f64();
    p.flush().await;
    println!(
        "service: {messages} msgs from {devices} devices over 4 connections: published in {:.2} s \
         ({:.0} msg/s), all counted in Postgres after {:.2} s",
        published.as_secs_f64(),
        rate(messages, published),
        took.as_secs_f64(),
    );
    app.shutdown().await.unwrap();

    // 3. the naive consumer: one insert per message
    sqlx::query(
        "create table naive_impressions (topic text, payload jsonb, received_at timestamptz)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (client, mut events) = {
        let mut o = rumqttc::MqttOptions::new("bench-naive", "127.0.0.1", broker.port);
        o.set_keep_alive(Duration::from_secs(30));
        rumqttc::AsyncClient::new(o, 1000)
    };
    client
        .subscribe("dt/+/impressions", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let naive_pool = pool.clone();
    let consumer = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(m))) => {
                    sqlx::query("insert into naive_impressions values ($1, $2::jsonb, now())")
                        .bind(&m.topic)
                        .bind(std::str::from_utf8(&m.payload).unwrap_or("{}"))
                        .execute(&naive_pool)
                        .await
                        .unwrap();
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c0 = commits(&pool).await;
    let t = Instant::now();
    publish_impressions(&mut p, "naive", naive, devices).await;
    wait_until("naive consumer stores every message", 300, async || {
        sqlx::query_scalar::<_, i64>("select count(*) from naive_impressions")
            .fetch_one(&pool)
            .await
            .unwrap()
            >= naive as i64
    })
    .await;
    let took = t.elapsed();
    let naive_rate = rate(naive, took);
    let naive_commits = (commits(&pool).await - c0) as f64 / took.as_secs_f64();
    consumer.abort();
    p.flush().await;

    row(
        "telemetry",
        "drained from Mosquitto, QoS 1, 2,000 devices (msg/s)",
        &format!("**{service_rate:.0}**"),
        &format!("mosquitto_sub {sub_rate:.0}"),
        &format!("{:.2}×", service_rate / sub_rate),
        "≥ 0.8×",
    );
    row(
        "telemetry",
        "the same vs one insert per message (msg/s)",
        &format!("**{service_rate:.0}**"),
        &format!("naive {naive_rate:.0}"),
        &format!("{:.1}×", service_rate / naive_rate),
        "≥ 10×",
    );
    row(
        "telemetry",
        "Postgres commits/s meanwhile",
        &format!("{service_commits:.0}"),
        &format!("naive {naive_commits:.0}; mosquitto_sub 0"),
        "",
        "",
    );

    // one flush of `devices` devices, the statement the flusher runs every second
    let ctx = IngestContext::new(
        &fleetwatch::config::Config::default(),
        pool.clone(),
        Metrics::new(),
        Arc::new(SystemClock),
        Arc::new(DeviceRegistry::new(Vec::new(), 10_000_000)),
    );
    let mut best = Duration::MAX;
    for round in 0..5 {
        let arrival = Utc::now();
        for d in 0..devices {
            let imp = ctx
                .format
                .parse(&format!("dt/flush-{d:05}/impressions"), b"{}", arrival)
                .unwrap();
            ctx.buffer
                .add(imp, None, arrival + TimeDelta::milliseconds(round));
        }
        let t = Instant::now();
        telemetry::flush(&ctx).await.unwrap();
        best = best.min(t.elapsed());
    }
    println!(
        "flush: {devices} devices in one statement: best of 5 {:.1} ms",
        best.as_secs_f64() * 1e3
    );

    // 4. and 5. presence stored directly: one transaction per event vs batches
    let payloads = |prefix: &str| -> Vec<String> {
        let t0 = Utc::now() - TimeDelta::hours(3);
        (0..presence)
            .map(|i| {
                let dev = format!("{prefix}-{:05}", i % devices);
                let v = (i / devices) as i64;
                let ts = ms(t0 + TimeDelta::milliseconds(i as i64));
                if i % 2 == 0 {
                    connected(&dev, ts, &format!("s{v}"), v, "192.0.2.1")
                } else {
                    disconnected(&dev, ts, &format!("s{v}"), v, "CONNECTION_LOST")
                }
            })
            .collect()
    };
    let cancel = CancellationToken::new();
    let one = Arc::new(payloads("one"));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (ctx, one, cancel) = (ctx.clone(), one.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            for p in one.iter().skip(w).step_by(8) {
                fleetwatch::ingest::presence::process(&ctx, p.as_bytes(), Utc::now(), &cancel)
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let one_rate = rate(presence, t.elapsed());

    let batched = payloads("batch");
    let t = Instant::now();
    let mut shards: Vec<Vec<Prepared>> = vec![Vec::new(); PRESENCE_WRITERS];
    for p in &batched {
        let prepared = prepare(&ctx, p.as_bytes(), Utc::now()).unwrap();
        shards[shard_of(prepared.shard_key())].push(prepared);
    }
    let mut tasks = Vec::new();
    for shard in shards {
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            for batch in shard.chunks(PRESENCE_BATCH) {
                store(&ctx, batch, &cancel).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let batch_rate = rate(presence, t.elapsed());
    row(
        "presence",
        &format!("{presence} events stored, batched, 4 writers (events/s)"),
        &format!("**{batch_rate:.0}**"),
        &format!("one transaction per event, 8 writers: {one_rate:.0}"),
        &format!("{:.1}×", batch_rate / one_rate),
        "",
    );

    // 6. a reconnect storm through the broker
    // As README "Running against AWS IoT Core" advises large fleets: presence republished by an
    // IoT rule to a topic of our own and shared over the connections like telemetry.
    let mut cfg = config(&broker);
    cfg.mqtt.connections = 4;
    cfg.mqtt.presence_topics = vec!["republished/presence/+/+".into()];
    cfg.mqtt.share_presence = true;
    cfg.devices.max_devices = 10_000_000;
    let republished = |kind: &str, dev: &str| format!("republished/presence/{kind}/{dev}");
    // The fleet exists and is connected (session s0) when its region's LTE goes down.
    sqlx::query(
        r#"insert into devices (id, state, connected, conn_event_ts, conn_version, conn_session,
                                conn_received_at, last_connected_at)
           select 'storm-' || lpad(i::text, 6, '0'), 'healthy', true, $2, 0, 's0', $2, $2
           from generate_series(0, $1 - 1) i"#,
    )
    .bind(storm as i64)
    .bind(Utc::now() - TimeDelta::hours(1))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("vacuum analyze devices")
        .execute(&pool)
        .await
        .unwrap();
    let app = start_app(&pool, cfg).await;
    let events_before: i64 = sqlx::query_scalar("select count(*) from presence_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let c0 = commits(&pool).await;
    let t1 = Utc::now() - TimeDelta::minutes(10);
    let t = Instant::now();
    for i in 0..storm {
        let dev = format!("storm-{i:06}");
        let lost = ms(t1 + TimeDelta::milliseconds((i % 60_000) as i64));
        p.publish(
            &republished("disconnected", &dev),
            disconnected(&dev, lost, "s0", 0, "CONNECTION_LOST"),
        )
        .await;
    }
    for i in 0..storm {
        let dev = format!("storm-{i:06}");
        let back = ms(t1 + TimeDelta::seconds(90) + TimeDelta::milliseconds((i % 60_000) as i64));
        p.publish(
            &republished("connected", &dev),
            connected(&dev, back, "s1", 1, "198.51.100.7"),
        )
        .await;
    }
    let published = t.elapsed();
    wait_until("the storm is stored", 300, async || {
        let n: i64 = sqlx::query_scalar("select count(*) from presence_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        n - events_before >= 2 * storm as i64
    })
    .await;
    let stored = t.elapsed();
    let connected_now: i64 = sqlx::query_scalar(
        "select count(*) from devices where id like 'storm-%' and connected and conn_session = 's1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let storm_commits = (commits(&pool).await - c0) as f64 / stored.as_secs_f64();
    let m = app.state.metrics.render();
    let batch_sum = metric(&m, "fleetwatch_presence_batch_events_sum");
    let batch_count = metric(&m, "fleetwatch_presence_batch_events_count");
    println!(
        "storm: {} events of {storm} devices published in {:.2} s; all stored after {:.2} s; \
         {connected_now} devices connected on their new session; {:.0} events per transaction",
        2 * storm,
        published.as_secs_f64(),
        stored.as_secs_f64(),
        batch_sum / batch_count.max(1.0)
    );
    assert_eq!(connected_now, storm as i64, "every device converged");
    let storm_rate = rate(2 * storm, stored);
    row(
        "presence",
        &format!(
            "reconnect storm end to end: {storm} devices, {} events (events/s)",
            2 * storm
        ),
        &format!("**{storm_rate:.0}**"),
        &format!("before batching: ≈ {one_rate:.0} (row above)"),
        &format!("{:.1}×", storm_rate / one_rate),
        "≥ 20,000",
    );
    row(
        "presence",
        "Postgres commits/s during the storm",
        &format!("{storm_commits:.0}"),
        "one per event before",
        "",
        "",
    );
    app.shutdown().await.unwrap();
    drop_db(pool, &url).await;
}
