//! The retention job. Append-only tables grow forever unless trimmed: presence events (by
//! arrival), webhook delivery attempts and finished notifications, and alerts resolved long ago
//! together with their trail and notifications. Deletes go in bounded batches so the job never
//! holds long locks; everything is idempotent, so it may run on every replica. The supervisor
//! (`app::tasks`) runs [`tick`] every `retention.interval`. The deletes themselves are in
//! `db::{presence, notifications, alerts, cloudwatch, users, anomaly, telemetry}`; expired dashboard
//! sessions go too, impression bucket sums older than the anomaly baseline needs
//! (`Config::retention`), and hourly impression counts.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::clock::SharedClock;
use crate::config::{HumanDuration, RetentionConfig};
use crate::db;

/// Rows per delete statement.
const BATCH: i64 = 5000;

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub presence_events: u64,
    pub delivery_attempts: u64,
    pub notifications: u64,
    pub alerts: u64,
    pub cloudwatch_samples: u64,
    /// Dashboard sessions past their idle or absolute expiry.
    pub sessions: u64,
    /// Impression bucket sums (`impression_buckets`).
    pub impression_buckets: u64,
    /// Hourly impression counts (`impressions_hourly`).
    pub impressions_hourly: u64,
}

fn cutoff(now: DateTime<Utc>, keep: HumanDuration) -> DateTime<Utc> {
    now.checked_sub_signed(keep.delta())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Run `batch` (a delete of at most `limit` rows older than `before`, returning how many) until
/// it deletes less than a batch.
async fn drain<'p, F, Fut>(pool: &'p PgPool, before: DateTime<Utc>, batch: F) -> sqlx::Result<u64>
where
    F: Fn(&'p PgPool, DateTime<Utc>, i64) -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<u64>>,
{
    let mut total = 0;
    loop {
        let n = batch(pool, before, BATCH).await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Delete what is older than each retention period at `clock.now()`.
pub async fn tick(
    pool: &PgPool,
    clock: &SharedClock,
    cfg: &RetentionConfig,
) -> anyhow::Result<Deleted> {
    let now = clock.now();
    let mut d = Deleted {
        presence_events: db::presence::delete_older_than(pool, cutoff(now, cfg.presence_events))
            .await?,
        ..Deleted::default()
    };
    let deliveries = cutoff(now, cfg.deliveries);
    d.delivery_attempts =
        drain(pool, deliveries, db::notifications::delete_attempts_before).await?;
    // Pending rows are never trimmed: they are work still to do.
    d.notifications = drain(pool, deliveries, db::notifications::delete_finished_before).await?;
    // Alerts resolved long ago go with their trail and notifications; a firing alert, however
    // old, is kept whole. Alerts they covered forget the cover first (the reference would dangle).
    d.alerts = drain(
        pool,
        cutoff(now, cfg.alerts),
        db::alerts::delete_resolved_before,
    )
    .await?;
    d.cloudwatch_samples = drain(
        pool,
        cutoff(now, cfg.cloudwatch_samples),
        db::cloudwatch::delete_samples_before,
    )
    .await?;
    // Expired sessions are already refused on every request; this only keeps the table small.
    d.sessions = drain(pool, now, db::users::delete_sessions_expired_before).await?;
    d.impression_buckets = drain(
        pool,
        cutoff(now, cfg.impression_buckets),
        db::anomaly::delete_buckets_before,
    )
    .await?;
    d.impressions_hourly = drain(
        pool,
        cutoff(now, cfg.impressions_hourly),
        db::telemetry::delete_hourly_before,
    )
    .await?;
    Ok(d)
}
