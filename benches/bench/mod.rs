//! What the benchmarks share: their sizes from the environment, and a fresh database of their
//! own made from `DATABASE_URL` (a maintenance database) and dropped at the end.
#![allow(dead_code)]

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
