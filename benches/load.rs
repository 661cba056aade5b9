//! The API and the dashboard under load over real HTTP (issue 12, item 6):
//! `cargo bench --bench load` with `DATABASE_URL` pointing at a maintenance database
//! (`scripts/bench` runs it). The service runs in-process (its real HTTP server and layers)
//! over a fresh database seeded like `benches/summary.rs` — `BENCH_DEVICES` (100,000) devices,
//! `BENCH_ALERTS` (10,000) alerts — with the counts folded as the service keeps them.
//!
//! Open loop: requests are *scheduled* at a fixed offered rate and each one's latency runs
//! from its scheduled time, so a slow server is charged for the requests queued behind it
//! (no coordinated omission). 64 connections (one HTTP/1.1 client each, keep-alive); the API
//! with the bootstrap token (no rate limit), the overview page with a signed-in session.
//! Each target gets `BENCH_SECONDS` (10) at 500 requests/s, then steps up (1,000, 2,000,
//! 4,000 requests/s, 5 s each) while its p99 meets the target, or, when 500 misses it, down
//! (250, 100, 50) until it meets it: the highest rate that met it is reported. Targets: API p99 ≤ 50 ms, pages p99 ≤ 100 ms.

#[path = "../tests/common/mod.rs"]
mod common;

mod bench;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::{arg, drop_db, fresh_db, row, seed};
use common::*;
use fleetwatch::app::App;
use fleetwatch::clock::SystemClock;
use tokio::sync::Mutex;

const CONNECTIONS: usize = 64;

/// Offer `rate` requests/s of `path` for `secs`; (p50, p99, errors) in milliseconds.
async fn offer(
    base: &str,
    path: &str,
    header: (&str, &str),
    rate: usize,
    secs: f64,
) -> (f64, f64, usize) {
    let total = (rate as f64 * secs) as usize;
    let start = Instant::now() + Duration::from_millis(50);
    let (tx, rx) = tokio::sync::mpsc::channel::<Instant>(total.max(1));
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        let (rx, url) = (rx.clone(), format!("{base}{path}"));
        let (name, value) = (header.0.to_string(), header.1.to_string());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut errors = 0;
            loop {
                let Some(scheduled) = rx.lock().await.recv().await else {
                    return (out, errors);
                };
                let r = client.get(&url).header(&name, &value).send().await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                    }
                    _ => errors += 1,
                }
                out.push(scheduled.elapsed());
            }
        }));
    }
    // the schedule: request k at start + k / rate
    for k in 0..total {
        let at = start + Duration::from_secs_f64(k as f64 / rate as f64);
        tokio::time::sleep_until(at.into()).await;
        tx.send(at).await.unwrap();
    }
    drop(tx);
    let mut all = Vec::with_capacity(total);
    let mut errors = 0;
    for w in workers {
        let (t, e) = w.await.unwrap();
        all.extend(t);
        errors += e;
    }
    all.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(all[all.len() / 2]),
        ms(all[(all.len() * 99) / 100]),
        errors,
    )
}

#[tokio::main]
async fn main() {
    let devices = arg("BENCH_DEVICES", 100_000);
    let alerts = arg("BENCH_ALERTS", 10_000);
    let secs = arg("BENCH_SECONDS", 10) as f64;
    let (pool, url) = fresh_db("load").await;
    seed(&pool, devices, 60, alerts).await;
    fleetwatch::fleet_counts::fold(&pool).await.unwrap();
    let broker = Broker::start().await;
    let cfg = config(&broker);
    let app = App::build_with_pool(cfg, pool.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let base = format!("http://{}", app.addr);

    // a signed-in operator for the page
    common::web::create_user(&pool, "bench", "operator").await;
    let login = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/login"))
        .header("sec-fetch-site", "same-origin")
        .form(&[("username", "bench"), ("password", common::web::PASSWORD)])
        .send()
        .await
        .unwrap();
    let cookie = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.split(';')
                .next()
                .filter(|c| c.starts_with("fleetwatch_session="))
        })
        .expect("a session cookie")
        .to_string();
    let bearer = format!("Bearer {TOKEN}");

    let targets: [(&str, (&str, &str), f64); 4] = [
        (
            "/api/v1/devices?state=offline",
            ("authorization", &bearer),
            50.0,
        ),
        (
            "/api/v1/alerts?status=firing",
            ("authorization", &bearer),
            50.0,
        ),
        ("/api/v1/fleet/summary", ("authorization", &bearer), 50.0),
        ("/", ("cookie", &cookie), 100.0),
    ];
    for (path, header, target) in targets {
        // warm-up
        offer(&base, path, header, 100, 1.0).await;
        let (p50, p99, errors) = offer(&base, path, header, 500, secs).await;
        // then up while the target holds, or down until it does
        let meets = |p99: f64, errors: usize| p99 <= target && errors == 0;
        let mut best = if meets(p99, errors) { 500 } else { 0 };
        let steps: &[usize] = if best == 500 {
            &[1_000, 2_000, 4_000]
        } else {
            &[250, 100, 50]
        };
        for &rate in steps {
            let (_, p99, errors) = offer(&base, path, header, rate, 5.0).await;
            if best == 500 && !meets(p99, errors) {
                break;
            }
            if meets(p99, errors) {
                best = best.max(rate);
                if rate < 500 {
                    break;
                }
            }
        }
        println!("{path}: 500 req/s: p50 {p50:.1} ms, p99 {p99:.1} ms, {errors} errors; highest rate meeting p99 ≤ {target} ms: {best} req/s");
        row(
            if path == "/" { "pages" } else { "api" },
            &format!("`GET {path}` at 500 req/s, 64 connections (p50 / p99)"),
            &format!("**{p50:.1} / {p99:.1} ms**"),
            &format!("highest rate meeting the target: {best} req/s"),
            "",
            &format!("p99 ≤ {target:.0} ms"),
        );
    }
    app.shutdown().await.unwrap();
    drop_db(pool, &url).await;
}
