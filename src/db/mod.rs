//! Postgres: the pool, database creation and migrations. Queries live in one file per table.

pub mod alerts;
pub mod anomaly;
pub mod cloudwatch;
pub mod detector;
pub mod devices;
pub mod fleet_counts;
pub mod inventory;
pub mod metric_series;
pub mod networks;
pub mod notifications;
pub mod presence;
pub mod retirement;
pub mod silences;
pub mod telemetry;
pub mod tokens;
pub mod users;
pub mod webhooks;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connect to `url`, creating the database if it does not exist.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let opts =
        PgConnectOptions::from_str(url).context("DATABASE_URL: expected a postgres:// URL")?;
    if !Postgres::database_exists(url)
        .await
        .with_context(|| format!("checking database {:?}", opts.get_database().unwrap_or("")))?
    {
        tracing::info!(database = opts.get_database(), "creating database");
        // Two replicas may race here; the loser's error is harmless if the database now exists.
        if let Err(e) = Postgres::create_database(url).await {
            if !Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(e).context("creating the database");
            }
        }
    }
    pool(opts, max_connections).await
}

/// A pool over already-parsed options.
///
/// Its sessions run with `jit = off` unless the URL's `options` set `jit` itself: every query
/// here is short, and a read the planner believes expensive (the detector's due devices after a
/// mass gap: thousands of rows) otherwise paid ≈ 100 ms of JIT compilation per execution, more
/// than the query itself (issue 12, benches/detector.rs).
pub async fn pool(opts: PgConnectOptions, max_connections: u32) -> anyhow::Result<PgPool> {
    let opts = if opts.get_options().is_some_and(|o| o.contains("jit")) {
        opts
    } else {
        opts.options([("jit", "off")])
    };
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await
        .context("connecting to Postgres")
}

/// One round trip to the database (readiness).
pub async fn ping(pool: &PgPool) -> sqlx::Result<i32> {
    sqlx::query_scalar::<_, i32>("select 1")
        .fetch_one(pool)
        .await
}

/// Apply pending migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// Whether an error may go away by itself (connection trouble, deadlock, serialization
/// failure, a read-only server: a connection that landed on a standby or a demoted primary
/// during a failover), so the write should be retried rather than the input skipped.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(
                db.code().as_deref(),
                Some("40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "53300" | "25006")
            ) || db.code().is_some_and(|c| c.starts_with("08"))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}
