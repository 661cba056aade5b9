//! The detector and the device registry at a million devices (issue 12, item 4):
//! `cargo bench --bench detector` with `DATABASE_URL` pointing at a maintenance database.
//! Makes a fresh database, seeds `BENCH_DEVICES` (1,000,000) healthy devices in 1,000 groups,
//! and prints:
//!
//! 1. Postgres bytes per device (table, indexes, the whole database);
//! 2. the detector tick when nothing is due (p50/p99 of `BENCH_RUNS` ticks);
//! 3. the tick when 1 % of the devices are due: with a gap each (every one opens a
//!    `heartbeat_gap`), 1,000 in each of 10 buildings and 10 in each of the 1,000 (every
//!    building an outage), three runs each from a healthy fleet; then due but with fresh data
//!    (each is rescheduled, nothing opens); how many ticks and how long until none is due
//!    (`detector.max_due_per_tick` per tick);
//! 4. the device registry: resident memory per device and the time to load it at start.
//!
//! Targets: tick ≤ 100 ms with nothing due, ≤ 1 s with 1 % due; registry ≤ 1 KiB per device.

mod bench;

use std::time::Instant;

use bench::{arg, drop_db, fresh_db, measure, row};
use chrono::{DateTime, TimeDelta, Utc};
use fleetwatch::config::Config;
use fleetwatch::detect::{Detector, Settings};
use fleetwatch::ingest::health::IngestStatus;
use fleetwatch::ingest::DeviceRegistry;
use sqlx::PgPool;

/// Resident memory of this process, in bytes (`/proc/self/statm`).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The devices of a 1 % story, as a condition on a device's number `n` (`screen-n`, in
/// `building-(1 + n % 1000)`).
#[derive(Clone, Copy)]
enum Story {
    /// `n % 100 = r`: 1,000 screens in each of 10 buildings.
    Clustered(i64),
    /// `n / 1000 % 100 = r`: 10 screens in each of the 1,000 buildings.
    Spread(i64),
}

impl Story {
    fn condition(self) -> String {
        match self {
            Story::Clustered(r) => format!("n % 100 = {r}"),
            Story::Spread(r) => format!("n / 1000 % 100 = {r}"),
        }
    }
}

/// Make the devices of `story` due at `now`: with a 30-minute-old last impression (a gap),
/// or with fresh data (due, but healthy: rescheduled).
async fn make_due(pool: &PgPool, story: Story, now: DateTime<Utc>, gap: bool) {
    let last = if gap {
        now - TimeDelta::minutes(30)
    } else {
        now - TimeDelta::seconds(5)
    };
    let sql = format!(
        r#"update devices set deadline_at = $1 - interval '1 second', last_impression_at = $2,
                  last_device_ts = $2
           from (select id as device, substr(id, 8)::bigint as n from devices) d
           where devices.id = d.device and {}"#,
        story.condition()
    );
    sqlx::query(&sql)
        .bind(now)
        .bind(last)
        .execute(pool)
        .await
        .unwrap();
}

/// Back to a healthy fleet without alerts, between runs of a story: what the run opened is
/// forgotten, its devices report again and are due in 15 minutes.
async fn reset(pool: &PgPool, now: DateTime<Utc>) {
    sqlx::query("truncate alerts cascade")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        r#"update devices set state = 'healthy', state_since = $1, last_impression_at = $1,
                  last_device_ts = $1, gap_min_device_ts = null,
                  deadline_at = $1 + interval '15 minutes'
           where state <> 'healthy'"#,
    )
    .bind(now)
    .execute(pool)
    .await
    .unwrap();
    settle(pool).await;
}

/// Vacuum the devices: every run starts from the table the first one had, not from the dead
/// rows of the runs before (which autovacuum clears in a live fleet over minutes).
async fn settle(pool: &PgPool) {
    sqlx::query("vacuum devices").execute(pool).await.unwrap();
}

async fn due(pool: &PgPool, now: DateTime<Utc>) -> i64 {
    sqlx::query_scalar(
        "select count(*) from devices where deadline_at <= $1 and retired_at is null",
    )
    .bind(now)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The grouping and connection passes alone, with the alerts now firing.
async fn where_a_tick_goes(pool: &PgPool, settings: &Settings, now: DateTime<Utc>) {
    let t = Instant::now();
    fleetwatch::detect::grouping::tick(pool, settings, now)
        .await
        .unwrap();
    let grouping = t.elapsed();
    let t = Instant::now();
    fleetwatch::detect::connection::tick(pool, settings, now)
        .await
        .unwrap();
    println!(
        "  with {} alerts firing: grouping pass {:.0} ms, connection pass {:.0} ms",
        scalar(pool, "select count(*) from alerts where status = 'firing'").await,
        grouping.as_secs_f64() * 1000.0,
        t.elapsed().as_secs_f64() * 1000.0
    );
}

/// Tick until nothing is due; (ticks, seconds, alerts opened).
async fn drain(
    d: &Detector,
    pool: &PgPool,
    now: DateTime<Utc>,
    per_tick: i64,
) -> (usize, f64, i64) {
    let before = scalar(pool, "select count(*) from alerts").await;
    let mut ticks = 0;
    let (mut reading, mut ticking) = (0.0, 0.0);
    while due(pool, now).await > 0 && ticks < 100 {
        // the due pass's read alone (not counted in the tick), then the tick
        let t = Instant::now();
        fleetwatch::db::detector::due_devices(pool, now, per_tick)
            .await
            .unwrap();
        reading += t.elapsed().as_secs_f64();
        let t = Instant::now();
        d.tick(&IngestStatus::Healthy, now).await.unwrap();
        ticking += t.elapsed().as_secs_f64();
        ticks += 1;
    }
    println!(
        "  reading the due devices alone: {:.0} ms per tick",
        reading * 1000.0 / ticks.max(1) as f64
    );
    (
        ticks,
        ticking,
        scalar(pool, "select count(*) from alerts").await - before,
    )
}

/// The plan of the due pass's read (`BENCH_EXPLAIN=1`, a copy of `db::detector::due_devices`'s
/// joins), to see where its time goes.
async fn explain_due(pool: &PgPool, now: DateTime<Utc>) {
    let plan: Vec<String> = sqlx::query_scalar(
        r#"explain (analyze, buffers)
        select d.id, g.time_zone,
               (select min(e.received_at) from presence_events e
                 where e.device_id = d.id and e.event_type = 'connected'
                   and e.received_at > coalesce(d.last_impression_at, '-infinity')) as first_reconnect,
               a.id as alert_id
        from devices d
        left join groups g on g.id = d.group_id
        left join lateral (
            select a.id from alerts a
            where a.kind = 'heartbeat_gap' and a.subject = d.id and a.status = 'firing'
            limit 1
        ) a on true
        where d.deadline_at <= $1 and d.retired_at is null
        order by d.deadline_at
        limit 5000"#,
    )
    .bind(now)
    .fetch_all(pool)
    .await
    .unwrap();
    println!("{}", plan.join("\n"));
}

#[tokio::main]
async fn main() {
    let devices = arg("BENCH_DEVICES", 1_000_000) as i64;
    let runs = arg("BENCH_RUNS", 50);
    let (pool, url) = fresh_db("detector").await;
    let now = Utc::now();

    let t = Instant::now();
    sqlx::query(
        r#"insert into groups (id, name)
           select 'building-' || lpad(g::text, 4, '0'), 'Building ' || g
           from generate_series(1, 1000) g"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        r#"insert into devices (id, group_id, state, connected, conn_event_ts, last_connected_at,
                                last_ip, last_impression_at, last_device_ts, deadline_at)
           select 'screen-' || lpad(i::text, 7, '0'),
                  'building-' || lpad((1 + i % 1000)::text, 4, '0'),
                  'healthy', true, $2 - interval '1 day', $2 - interval '1 day',
                  '10.' || (i % 250) || '.' || (i / 250 % 250) || '.1', $2, $2,
                  $2 + interval '15 minutes' + (i % 600) * interval '1 second'
           from generate_series(1, $1) i"#,
    )
    .bind(devices)
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("vacuum analyze devices")
        .execute(&pool)
        .await
        .unwrap();
    println!(
        "seeded {devices} devices in 1,000 groups in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // 1. Postgres size per device
    let table = scalar(&pool, "select pg_table_size('devices')").await;
    let indexes = scalar(&pool, "select pg_indexes_size('devices')").await;
    let database = scalar(&pool, "select pg_database_size(current_database())").await;
    println!(
        "postgres per device: devices table {} B, its indexes {} B, whole database {} B",
        table / devices,
        indexes / devices,
        database / devices
    );

    // 2. nothing due
    let d = Detector::new(
        pool.clone(),
        Settings::from_config(&Config::default()),
        TimeDelta::seconds(20),
    );
    // The service started an hour ago (a restart point restarts every clock: a gap must be
    // older than the start to open).
    d.tick(&IngestStatus::Healthy, now - TimeDelta::hours(1))
        .await
        .unwrap();
    let (p50, p99) = measure(runs, || async {
        d.tick(&IngestStatus::Healthy, now).await.unwrap();
    })
    .await;
    println!("detector tick, nothing due, {devices} devices: p50 {p50:.1} ms, p99 {p99:.1} ms");
    row(
        "detector",
        &format!("tick at {devices} devices, nothing due (p50 / p99)"),
        &format!("**{p50:.1} / {p99:.1} ms**"),
        "",
        "",
        "≤ 100 ms",
    );

    // 3. 1 % due. Each gap story runs three times over other devices, each run from a healthy
    // fleet without alerts: one tick is one sample, and samples vary on a shared machine. No
    // checkpoint is forced before a run: it would make the tick pay the full-page image of
    // every page it touches first, which in a live fleet the telemetry flush, touching every
    // reporting device's row each second, pays first.
    let per_tick = Config::default().detector.max_due_per_tick;
    let settings = Settings::from_config(&Config::default());
    let stories = [
        (
            "10 buildings, 1,000 screens each",
            [
                Story::Clustered(0),
                Story::Clustered(2),
                Story::Clustered(3),
            ],
        ),
        (
            "10 screens in each of the 1,000 buildings",
            [Story::Spread(5), Story::Spread(6), Story::Spread(7)],
        ),
    ];
    for (name, runs) in stories {
        let mut samples = Vec::new();
        let (mut n, mut ticks, mut opened) = (0, 0, 0);
        for story in runs {
            reset(&pool, now).await;
            make_due(&pool, story, now, true).await;
            n = due(&pool, now).await;
            let run = drain(&d, &pool, now, per_tick).await;
            (ticks, opened) = (run.0, run.2);
            samples.push(run.1);
        }
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        println!(
            "detector, 1 % due ({n} devices, {name}, each with a gap): {ticks} ticks of at most \
             {per_tick}; three runs {}; {opened} alerts opened",
            samples
                .iter()
                .map(|s| format!("{s:.2} s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        where_a_tick_goes(&pool, &settings, now).await;
        row(
            "detector",
            &format!("1 % due ({n} devices; {name}; each opens a gap): until none is due"),
            &format!(
                "**{median:.2} s** in {ticks} ticks (median of 3; {:.2}–{:.2} s)",
                samples[0],
                samples[samples.len() - 1]
            ),
            &format!("{opened} alerts opened"),
            "",
            "≤ 1 s",
        );
    }
    // Rescheduled, with the last gap story's alerts still firing.
    settle(&pool).await;
    make_due(&pool, Story::Clustered(1), now, false).await;
    let n = due(&pool, now).await;
    if std::env::var("BENCH_EXPLAIN").is_ok() {
        explain_due(&pool, now).await;
    }
    let (ticks, secs, opened) = drain(&d, &pool, now, per_tick).await;
    println!(
        "detector, 1 % due ({n} devices, fresh data, rescheduled): {ticks} ticks of at most \
         {per_tick}, {secs:.2} s in all ({:.0} ms per tick), {opened} alerts opened",
        secs * 1000.0 / ticks.max(1) as f64
    );
    where_a_tick_goes(&pool, &settings, now).await;
    row(
        "detector",
        &format!("1 % due ({n} devices, fresh data, rescheduled): until none is due"),
        &format!("**{secs:.2} s** in {ticks} ticks"),
        &format!("{opened} alerts opened"),
        "",
        "≤ 1 s",
    );

    // 4. the registry
    let before = rss();
    let t = Instant::now();
    let registry = DeviceRegistry::load(&pool, devices).await.unwrap();
    let load = t.elapsed();
    let after = rss();
    println!(
        "device registry: {} devices loaded in {:.2} s, resident memory +{:.1} MiB \
         ({} B per device)",
        registry.len(),
        load.as_secs_f64(),
        (after.saturating_sub(before)) as f64 / (1024.0 * 1024.0),
        after.saturating_sub(before) / registry.len().max(1) as u64
    );
    row(
        "detector",
        &format!(
            "device registry, {} devices: resident memory per device",
            registry.len()
        ),
        &format!(
            "**{} B**",
            after.saturating_sub(before) / registry.len().max(1) as u64
        ),
        &format!("loaded in {:.2} s", load.as_secs_f64()),
        "",
        "≤ 1 KiB",
    );
    row(
        "detector",
        "Postgres per device (devices table + indexes; whole database)",
        &format!(
            "{} + {} B; {} B",
            table / devices,
            indexes / devices,
            database / devices
        ),
        "",
        "",
        "reported",
    );
    drop(registry);
    drop(d);
    drop_db(pool, &url).await;
}
