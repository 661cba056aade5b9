//! What the benchmarks share: their sizes from the environment, and a fresh database of their
//! own made from `DATABASE_URL` (a maintenance database) and dropped at the end.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use sqlx::PgPool;

/// A size from the environment, else `default`.
pub fn arg(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A new, migrated database `fleetwatch_bench_<tag><pid>`; its URL is for [`drop_db`].
pub async fn fresh_db(tag: &str) -> (PgPool, String) {
    let master = std::env::var("DATABASE_URL").expect("DATABASE_URL (maintenance database)");
    let (base, _) = master.rsplit_once('/').unwrap();
    let url = format!("{base}/fleetwatch_bench_{tag}{}", std::process::id());
    let pool = fleetwatch::db::connect(&url, 16).await.unwrap();
    fleetwatch::db::migrate(&pool).await.unwrap();
    (pool, url)
}

pub async fn drop_db(pool: PgPool, url: &str) {
    pool.close().await;
    let (base, name) = url.rsplit_once('/').unwrap();
    let admin = PgPool::connect(&format!("{base}/postgres")).await.unwrap();
    let _ = sqlx::query(&format!("drop database if exists {name} with (force)"))
        .execute(&admin)
        .await;
}

/// p50 and p99 in milliseconds of `n` runs of `f` (after 5 warm-up runs).
pub async fn measure<F, Fut>(n: usize, mut f: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..5 {
        f().await;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(times[n / 2]), ms(times[(n * 99) / 100]))
}

/// A fleet of `devices` in `groups` groups (90 % healthy, the rest spread over the other
/// states, 5 % without a group, 1 % retired) and `alerts` alerts, half firing.
pub async fn seed(pool: &PgPool, devices: usize, groups: usize, alerts: usize) {
    sqlx::query(
        r#"insert into groups (id, name)
           select 'building-' || lpad(g::text, 3, '0'), 'Building ' || g
           from generate_series(1, $1) g"#,
    )
    .bind(groups as i32)
    .execute(pool)
    .await
    .unwrap();
    // A fleet in mild trouble: 90 % healthy, the rest spread over the other states; 5 % of
    // devices without a group, 1 % retired.
    sqlx::query(
        r#"insert into devices (id, group_id, state, retired_at, last_impression_at)
           select 'screen-' || lpad(i::text, 6, '0'),
                  case when i % 20 = 0 then null
                       else 'building-' || lpad((1 + i % $2)::text, 3, '0') end,
                  case when i % 100 < 90 then 'healthy' when i % 100 < 93 then 'late'
                       when i % 100 < 95 then 'silent' when i % 100 < 97 then 'offline'
                       when i % 100 < 98 then 'quiet' when i % 100 < 99 then 'never_seen'
                       else 'retired' end,
                  case when i % 100 = 99 then now() end,
                  now()
           from generate_series(1, $1) i"#,
    )
    .bind(devices as i32)
    .bind(groups as i32)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        r#"insert into alerts (kind, subject, device_id, severity, status, opened_at,
                               resolved_at, summary, updated_at, acknowledged_by)
           select (array['heartbeat_gap', 'flapping', 'client_id_conflict', 'throttled'])[1 + i % 4],
                  'screen-' || lpad(i::text, 6, '0'), 'screen-' || lpad(i::text, 6, '0'),
                  (array['critical', 'error', 'warning', 'info'])[1 + i % 4],
                  case when i % 2 = 0 then 'firing' else 'resolved' end,
                  now() - interval '1 day',
                  case when i % 2 = 1 then now() end,
                  'bench', now(),
                  case when i % 6 = 0 then 'token:1:ops' end
           from generate_series(1, $1) i"#,
    )
    .bind(alerts as i32)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("analyze").execute(pool).await.unwrap();
}

/// One row of the table `scripts/bench` prints: `row |area|what|result|baseline|ratio|target|`.
pub fn row(area: &str, what: &str, result: &str, baseline: &str, ratio: &str, target: &str) {
    println!("row |{area}|{what}|{result}|{baseline}|{ratio}|{target}|");
}
