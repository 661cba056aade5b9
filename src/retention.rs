//! The retention job. Append-only tables grow forever unless trimmed: presence events (by
//! arrival), webhook delivery attempts and finished notifications, and alerts resolved long ago
//! together with their trail and notifications. Deletes go in bounded batches so the job never
//! holds long locks; everything is idempotent, so it may run on every replica. The supervisor
//! (`app::tasks`) runs [`tick`] every `retention.interval`.

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

use crate::clock::SharedClock;
use crate::config::{HumanDuration, RetentionConfig};

/// Rows per delete statement.
const BATCH: i64 = 5000;

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub presence_events: u64,
    pub delivery_attempts: u64,
    pub notifications: u64,
    pub alerts: u64,
}

fn cutoff(now: DateTime<Utc>, keep: HumanDuration) -> DateTime<Utc> {
    let keep = TimeDelta::from_std(keep.0).unwrap_or(TimeDelta::MAX);
    now.checked_sub_signed(keep)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Run `sql` (a delete of at most `$2` rows older than `$1`) until it deletes less than a batch.
async fn drain(pool: &PgPool, sql: &str, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let n = sqlx::query(sql)
            .bind(before)
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
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
        presence_events: crate::db::presence::delete_older_than(
            pool,
            cutoff(now, cfg.presence_events),
        )
        .await?,
        ..Deleted::default()
    };
    let deliveries = cutoff(now, cfg.deliveries);
    d.delivery_attempts = drain(
        pool,
        "delete from delivery_attempts where id in
            (select id from delivery_attempts where at < $1 limit $2)",
        deliveries,
    )
    .await?;
    // Pending rows are never trimmed: they are work still to do.
    d.notifications = drain(
        pool,
        "delete from notifications where id in
            (select id from notifications where status <> 'pending' and finished_at < $1 limit $2)",
        deliveries,
    )
    .await?;
    // Alerts resolved long ago go with their trail and notifications; a firing alert, however
    // old, is kept whole. Alerts they covered forget the cover first (the reference would dangle).
    d.alerts = drain(
        pool,
        "with old as (
             select id from alerts where status = 'resolved' and resolved_at < $1 limit $2
         ), uncover as (
             update alerts set covered_by = null
             where covered_by in (select id from old) and id not in (select id from old)
         ), events as (
             delete from alert_events where alert_id in (select id from old)
         ), notes as (
             delete from notifications where alert_id in (select id from old)
         )
         delete from alerts where id in (select id from old)",
        cutoff(now, cfg.alerts),
    )
    .await?;
    Ok(d)
}
