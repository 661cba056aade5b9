//! Fleet counts benchmark (`cargo bench --bench summary`; needs `DATABASE_URL` pointing at a
//! maintenance database). Prints the figures recorded in BENCHMARKS.md.
//!
//! A fresh database is seeded with `BENCH_DEVICES` (100,000) devices in `BENCH_GROUPS` (60)
//! groups with a realistic state mix and `BENCH_ALERTS` (10,000) alerts (half firing). Then:
//! 1. the baseline: the whole-table recount the summary used to run (kept here), p50/p99;
//! 2. `GET /api/v1/fleet/summary` and `GET /api/v1/fleet/groups` through the real router
//!    in-process, from the counts tables, folded and with 5,000 unfolded deltas;
//! 3. the write side: concurrent transactions moving devices between states (the detector's
//!    shape: a few devices per transaction, ids sorted), with the append-only delta triggers,
//!    with no trigger at all, and with the rejected alternative (an upsert of one row per key),
//!    counting deadlocks.

#[path = "../tests/common/mod.rs"]
mod common;

mod bench;

use std::time::Instant;

use bench::{arg, drop_db, fresh_db, measure, seed};
use common::http::{get, TestApp};
use sqlx::PgPool;

const TOKEN: &str = "bench-token";

/// The summary's old reads: the whole-table recount, and the per-group recount the overview
/// would need without the counts tables.
async fn baseline(pool: &PgPool) {
    fleetwatch::db::devices::count_by_state(pool).await.unwrap();
    fleetwatch::db::alerts::firing_by_kind(pool).await.unwrap();
}

async fn baseline_groups(pool: &PgPool) {
    fleetwatch::db::fleet_counts::recount_devices(pool)
        .await
        .unwrap();
}

async fn call(app: &TestApp, uri: &str) {
    let r = get(app, uri).await;
    assert_eq!(r.status.as_u16(), 200, "{uri}: {}", r.text());
}

/// `writers` tasks, each `txs` transactions moving 4 random devices (ids sorted) to a random
/// state. Returns (state changes per second, deadlocks).
async fn write_load(pool: &PgPool, devices: usize, writers: usize, txs: usize) -> (f64, usize) {
    let states = ["healthy", "late", "silent", "offline", "quiet"];
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..writers {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1);
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let (mut done, mut deadlocks) = (0usize, 0usize);
            for _ in 0..txs {
                // a hot spot: most moves are in the first 200 devices, as in an outage
                let mut ids: Vec<String> = (0..4)
                    .map(|_| {
                        let i = if next() % 4 == 0 {
                            next() % devices as u64
                        } else {
                            next() % 200
                        };
                        format!("screen-{:06}", i + 1)
                    })
                    .collect();
                ids.sort();
                ids.dedup();
                let mut tx = pool.begin().await.unwrap();
                let mut failed = false;
                for id in &ids {
                    let st = states[(next() % states.len() as u64) as usize];
                    let r = sqlx::query(
                        "update devices set state = $2, state_since = now() where id = $1",
                    )
                    .bind(id)
                    .bind(st)
                    .execute(&mut *tx)
                    .await;
                    match r {
                        Ok(r) => done += r.rows_affected() as usize,
                        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40P01") => {
                            deadlocks += 1;
                            failed = true;
                            break;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                if failed {
                    tx.rollback().await.unwrap();
                } else {
                    match tx.commit().await {
                        Ok(()) => {}
                        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40P01") => {
                            deadlocks += 1
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            (done, deadlocks)
        }));
    }
    let (mut done, mut deadlocks) = (0, 0);
    for h in handles {
        let (d, l) = h.await.unwrap();
        done += d;
        deadlocks += l;
    }
    (done as f64 / started.elapsed().as_secs_f64(), deadlocks)
}

#[tokio::main]
async fn main() {
    let devices = arg("BENCH_DEVICES", 100_000);
    let groups = arg("BENCH_GROUPS", 60);
    let alerts = arg("BENCH_ALERTS", 10_000);
    let runs = arg("BENCH_RUNS", 200);
    let (pool, url) = fresh_db("summary_").await;
    let t = Instant::now();
    seed(&pool, devices, groups, alerts).await;
    println!(
        "seeded {devices} devices in {groups} groups and {alerts} alerts in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    fleetwatch::fleet_counts::fold(&pool).await.unwrap();
    let app = TestApp::new(&pool, TOKEN);

    let (p50, p99) = measure(runs.min(50), || baseline(&pool)).await;
    println!("baseline: summary recount (devices by state + firing by kind): p50 {p50:.2} ms, p99 {p99:.2} ms");
    let (p50, p99) = measure(runs.min(50), || baseline_groups(&pool)).await;
    println!("baseline: per-group recount: p50 {p50:.2} ms, p99 {p99:.2} ms");

    let (p50, p99) = measure(runs, || call(&app, "/api/v1/fleet/summary")).await;
    println!("GET /api/v1/fleet/summary (folded): p50 {p50:.2} ms, p99 {p99:.2} ms");
    let (p50, p99) = measure(runs, || call(&app, "/api/v1/fleet/groups")).await;
    println!("GET /api/v1/fleet/groups (all {groups} groups + ungrouped, folded): p50 {p50:.2} ms, p99 {p99:.2} ms");

    // 5,000 state changes not yet folded (≈ what a fold period sees in a bad minute)
    sqlx::query(
        r#"update devices set state = case when state = 'healthy' then 'late' else 'healthy' end
           where id in (select id from devices where retired_at is null order by id limit 2500)"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    let rows: i64 = sqlx::query_scalar("select count(*) from device_state_counts")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (p50, p99) = measure(runs, || call(&app, "/api/v1/fleet/summary")).await;
    println!(
        "GET /api/v1/fleet/summary ({rows} count rows, unfolded): p50 {p50:.2} ms, p99 {p99:.2} ms"
    );
    let (p50, p99) = measure(runs, || call(&app, "/api/v1/fleet/groups")).await;
    println!(
        "GET /api/v1/fleet/groups ({rows} count rows, unfolded): p50 {p50:.2} ms, p99 {p99:.2} ms"
    );
    let t = Instant::now();
    let removed = fleetwatch::fleet_counts::fold(&pool).await.unwrap();
    println!(
        "fold of {removed} rows: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let t = Instant::now();
    let checked = fleetwatch::fleet_counts::check(&pool, &fleetwatch::metrics::Metrics::new())
        .await
        .unwrap();
    assert_eq!(
        checked,
        Default::default(),
        "drift after the bench's writes"
    );
    println!(
        "self-check (recount + compare, no drift): {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );

    // 3. the write side
    let (writers, txs) = (arg("BENCH_WRITERS", 8), arg("BENCH_TXS", 400));
    let (rate, deadlocks) = write_load(&pool, devices, writers, txs).await;
    println!("writes, delta triggers: {writers} writers x {txs} tx: {rate:.0} state changes/s, {deadlocks} deadlocks");
    sqlx::query("alter table devices disable trigger devices_count_update")
        .execute(&pool)
        .await
        .unwrap();
    let (rate, deadlocks) = write_load(&pool, devices, writers, txs).await;
    println!("writes, no trigger: {rate:.0} state changes/s, {deadlocks} deadlocks");
    sqlx::raw_sql(
        r#"create table upsert_counts (group_id text, state text, n bigint not null,
                                       unique nulls not distinct (group_id, state));
           insert into upsert_counts select group_id, device_count_state(state, retired_at), count(*)
             from devices group by 1, 2;
           create function upsert_count() returns trigger language plpgsql as $$
           begin
               insert into upsert_counts values (old.group_id, device_count_state(old.state, old.retired_at), -1)
                 on conflict (group_id, state) do update set n = upsert_counts.n + excluded.n;
               insert into upsert_counts values (new.group_id, device_count_state(new.state, new.retired_at), 1)
                 on conflict (group_id, state) do update set n = upsert_counts.n + excluded.n;
               return null;
           end $$;
           create trigger upsert_count after update of state, group_id, retired_at on devices
             for each row execute function upsert_count();"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    let (rate, deadlocks) = write_load(&pool, devices, writers, txs).await;
    println!("writes, upsert one row per key (rejected): {rate:.0} state changes/s, {deadlocks} deadlocks");

    drop_db(pool, &url).await;
}
