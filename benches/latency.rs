//! Alert latency (issue 12, item 5): from a device's heartbeat deadline to the webhook at a
//! local receiver, under a steady telemetry load. `cargo bench --bench latency` with
//! `DATABASE_URL` pointing at a maintenance database (`scripts/bench` runs it).
//!
//! The service runs in-process against a private Mosquitto with second-scale settings
//! (detector tick `BENCH_TICK_MS`, 1 s; expected interval 2 s, grace 1 s, flush 1 s;
//! `group_wait` `BENCH_GROUP_WAIT_MS`, 1 s). A publisher sends `BENCH_RATE` (5,000)
//! impressions/s from 2,000 devices; `BENCH_VICTIMS` (40) of them stop one after another,
//! 250 ms apart, so that their deadlines fall at every phase of the tick. For each, the
//! deadline is when §2a opens its gap (`last impression + interval + flush allowance + grace`,
//! on our arrival clock, read back from Postgres) and the latency is the receiver's clock at
//! arrival minus that. Target: p99 ≤ tick + `group_wait` + 100 ms.

#[path = "../tests/common/mod.rs"]
mod common;

mod bench;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use bench::{arg, drop_db, fresh_db, row};
use chrono::{DateTime, Utc};
use common::*;
use fleetwatch::config::{HumanDuration, WebhookConfig};
use sqlx::PgPool;

type Arrivals = Arc<Mutex<HashMap<String, DateTime<Utc>>>>;

/// A receiver that notes when each victim's first `alert.firing` arrived.
async fn receiver(victims: Vec<String>) -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let seen = arrivals.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: String| {
            let at = Utc::now();
            let seen = seen.clone();
            let victims = victims.clone();
            async move {
                if body.contains("alert.firing") {
                    let mut seen = seen.lock().unwrap();
                    for v in victims
                        .iter()
                        .filter(|v| body.contains(&format!("\"{v}\"")))
                    {
                        seen.entry(v.clone()).or_insert(at);
                    }
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, arrivals)
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[((sorted.len() - 1) * p) / 100]
}

async fn last_impressions(pool: &PgPool, ids: &[String]) -> HashMap<String, DateTime<Utc>> {
    sqlx::query_as::<_, (String, DateTime<Utc>)>(
        "select id, last_impression_at from devices where id = any($1) and last_impression_at is not null",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::main]
async fn main() {
    let tick = Duration::from_millis(arg("BENCH_TICK_MS", 1000) as u64);
    let group_wait = Duration::from_millis(arg("BENCH_GROUP_WAIT_MS", 1000) as u64);
    let rate = arg("BENCH_RATE", 5_000);
    let victims_n = arg("BENCH_VICTIMS", 40);
    let devices = 2_000;
    let (pool, url) = fresh_db("latency").await;
    let broker = Broker::start().await;
    let victims: Vec<String> = (0..victims_n).map(|i| format!("lat-{i:05}")).collect();
    let (hook, arrivals) = receiver(victims.clone()).await;

    let mut cfg = config(&broker);
    cfg.mqtt.connections = 2;
    cfg.telemetry.flush_interval = HumanDuration(Duration::from_secs(1));
    cfg.detector.tick = HumanDuration(tick);
    cfg.detector.expected_interval = HumanDuration(Duration::from_secs(2));
    cfg.detector.grace = HumanDuration(Duration::from_secs(1));
    cfg.webhooks = vec![WebhookConfig {
        name: Some("bench".into()),
        url: hook,
        group_wait: HumanDuration(group_wait),
        send_reminders: false,
        ..WebhookConfig::default()
    }];
    // §2a: a gap opens at last data + interval + flush allowance + grace
    let interval = cfg.detector.expected_interval.delta()
        + cfg.telemetry.flush_interval.delta()
        + cfg.detector.grace.delta();
    let app = start_app(&pool, cfg).await;

    // The load: `rate` messages/s in 10 ms slices; victim k stops at 5 s + k × 250 ms.
    let p = Publisher::connect(broker.port, "bench-latency-pub").await;
    let others = devices - victims_n;
    let per_slice = (rate / 100).max(1);
    let started = Instant::now();
    let stop_of = |k: usize| Duration::from_secs(5) + Duration::from_millis(250 * k as u64);
    let run_for = stop_of(victims_n) + Duration::from_secs(8);
    let mut slice = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0usize;
    let mut i = 0usize;
    while started.elapsed() < run_for {
        slice.tick().await;
        let now = ms(Utc::now());
        let payload = format!(r#"{{"timestamp":{now},"count":1}}"#);
        for _ in 0..per_slice {
            i += 1;
            let n = i % devices;
            let topic = if n < victims_n {
                if started.elapsed() >= stop_of(n) {
                    continue;
                }
                format!("dt/{}/impressions", victims[n])
            } else {
                format!("dt/bg-{:05}/impressions", n % others)
            };
            if p.client
                .try_publish(topic, rumqttc::QoS::AtMostOnce, false, payload.clone())
                .is_ok()
            {
                sent += 1;
            }
        }
    }
    let offered = sent as f64 / started.elapsed().as_secs_f64();
    eventually(30, "every victim's alert reached the receiver", || async {
        arrivals.lock().unwrap().len() >= victims_n
    })
    .await;

    let last = last_impressions(&pool, &victims).await;
    let arrivals = arrivals.lock().unwrap().clone();
    let mut latencies: Vec<f64> = victims
        .iter()
        .map(|v| {
            let due = last[v] + interval;
            (arrivals[v] - due).num_microseconds().unwrap() as f64 / 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 50), percentile(&latencies, 99));
    let budget = (tick + group_wait).as_secs_f64() * 1000.0 + 100.0;
    println!(
        "latency: {victims_n} alerts under {offered:.0} msg/s offered: min {:.0} ms, p50 {p50:.0} ms, \
         p99 {p99:.0} ms, max {:.0} ms (tick {} ms, group_wait {} ms)",
        latencies[0],
        latencies[latencies.len() - 1],
        tick.as_millis(),
        group_wait.as_millis()
    );
    row(
        "alerts",
        &format!("deadline → webhook received, {offered:.0} msg/s of telemetry (p50 / p99)"),
        &format!("**{p50:.0} / {p99:.0} ms**"),
        &format!(
            "tick {} ms + group_wait {} ms",
            tick.as_millis(),
            group_wait.as_millis()
        ),
        "",
        &format!("p99 ≤ {budget:.0} ms"),
    );
    app.shutdown().await.unwrap();
    drop_db(pool, &url).await;
}
