//! Ingest benchmarks against a real Postgres and a private Mosquitto (`cargo bench --bench
//! ingest`; needs `DATABASE_URL` pointing at a maintenance database, e.g. from
//! `FLEETWATCH_DB=postgres scripts/services`). Prints the figures recorded in BENCHMARKS.md.
//!
//! 1. telemetry end to end: N messages from D devices through the broker until counted in Postgres;
//! 2. one telemetry flush of D devices (the statement the flusher runs every second);
//! 3. presence events stored directly (parse + transaction), 8 writers as in the service;
//! 4. presence end to end through the broker.

#[path = "../tests/common/mod.rs"]
mod common;

mod bench;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::{arg, drop_db, fresh_db};
use chrono::{TimeDelta, Utc};
use common::*;
use fleetwatch::app::App;
use fleetwatch::clock::SystemClock;
use fleetwatch::ingest::{telemetry, DeviceRegistry, IngestContext};
use fleetwatch::metrics::Metrics;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>("select sum(count)::bigint from impressions_hourly")
        .fetch_one(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let messages = arg("BENCH_MESSAGES", 100_000);
    let devices = arg("BENCH_DEVICES", 2_000);
    let presence = arg("BENCH_PRESENCE", 10_000);
    let (pool, url) = fresh_db("").await;
    let broker = Broker::start().await;

    // 1. telemetry end to end
    let mut cfg = config(&broker);
    cfg.mqtt.connections = 4;
    cfg.telemetry.flush_interval = fleetwatch::config::HumanDuration(Duration::from_secs(1));
    let app = App::build_with_pool(cfg, pool.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    eventually(10, "connected", || async {
        app.state.mqtt.iter().all(|c| c.snapshot().connected)
    })
    .await;
    let mut p = Publisher::connect(broker.port, "bench-pub").await;
    let now = ms(Utc::now());
    let payload = format!(r#"{{"timestamp":{now},"count":3,"dwell_ms":1200}}"#);
    let started = Instant::now();
    for i in 0..messages {
        p.publish(
            &format!("dt/screen-{:05}/impressions", i % devices),
            payload.clone(),
        )
        .await;
    }
    p.flush().await;
    let published = started.elapsed();
    while count(&pool).await < messages as i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed();
    println!(
        "telemetry e2e: {messages} msgs from {devices} devices over 4 connections: \
         published in {:.2}s ({:.0} msg/s), all counted in Postgres after {:.2}s ({:.0} msg/s)",
        published.as_secs_f64(),
        messages as f64 / published.as_secs_f64(),
        total.as_secs_f64(),
        messages as f64 / total.as_secs_f64()
    );
    let m = app.state.metrics.render();
    for l in m.lines().filter(|l| {
        l.starts_with("fleetwatch_flush_duration_seconds_sum")
            || l.starts_with("fleetwatch_flush_duration_seconds_count")
            || l.starts_with("fleetwatch_flush_batch_devices_sum")
            || l.starts_with("fleetwatch_ingest_channel_full_total")
    }) {
        println!("  {l}");
    }
    app.shutdown().await.unwrap();

    // 2. one flush of `devices` devices
    let ctx = IngestContext::new(
        &fleetwatch::config::Config::default(),
        pool.clone(),
        Metrics::new(),
        Arc::new(SystemClock),
        Arc::new(DeviceRegistry::new(Vec::new(), 1_000_000)),
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

    // 3. presence stored directly, 8 concurrent writers
    let cancel = CancellationToken::new();
    let t0 = Utc::now() - TimeDelta::hours(3);
    let payloads: Vec<String> = (0..presence)
        .map(|i| {
            let dev = format!("p-{:05}", i % devices);
            let v = (i / devices) as i64;
            let ts = ms(t0 + TimeDelta::seconds(i as i64));
            if i % 2 == 0 {
                connected(&dev, ts, &format!("s{v}"), v, "192.0.2.1")
            } else {
                disconnected(&dev, ts, &format!("s{v}"), v, "CONNECTION_LOST")
            }
        })
        .collect();
    let payloads = Arc::new(payloads);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (ctx, payloads, cancel) = (ctx.clone(), payloads.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            for p in payloads.iter().skip(w).step_by(8) {
                fleetwatch::ingest::presence::process(&ctx, p.as_bytes(), Utc::now(), &cancel)
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let e = t.elapsed();
    println!(
        "presence store: {presence} events, 8 writers: {:.2}s ({:.0} events/s)",
        e.as_secs_f64(),
        presence as f64 / e.as_secs_f64()
    );

    // 4. presence end to end through the broker
    let app = App::build_with_pool(config(&broker), pool.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    eventually(10, "connected", || async {
        app.state.mqtt.iter().all(|c| c.snapshot().connected)
    })
    .await;
    let before: i64 = sqlx::query_scalar("select count(*) from presence_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let t = Instant::now();
    let t1 = Utc::now() - TimeDelta::hours(1);
    for i in 0..presence {
        let dev = format!("q-{:05}", i % devices);
        let ts = ms(t1 + TimeDelta::milliseconds(i as i64 * 100));
        p.publish(
            &presence_topic("connected", &dev),
            connected(&dev, ts, &format!("q{i}"), i as i64, "192.0.2.2"),
        )
        .await;
    }
    p.flush().await;
    loop {
        let n: i64 = sqlx::query_scalar("select count(*) from presence_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        if n - before >= presence as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = t.elapsed();
    println!(
        "presence e2e: {presence} events through the broker: {:.2}s ({:.0} events/s)",
        e.as_secs_f64(),
        presence as f64 / e.as_secs_f64()
    );
    app.shutdown().await.unwrap();
    drop_db(pool, &url).await;
}
