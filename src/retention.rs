//! The retention job: presence events are append-only, so old ones are deleted on a schedule
//! (by arrival time, in bounded batches). Idempotent, so it may run on every replica.

use chrono::TimeDelta;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::RetentionConfig;

/// Delete what is older than the retention period at `clock.now()`.
pub async fn tick(
    pool: &PgPool,
    clock: &SharedClock,
    cfg: &RetentionConfig,
) -> anyhow::Result<u64> {
    let keep = TimeDelta::from_std(cfg.presence_events.0).unwrap_or(TimeDelta::MAX);
    let cutoff = clock
        .now()
        .checked_sub_signed(keep)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    Ok(crate::db::presence::delete_older_than(pool, cutoff).await?)
}

pub async fn run(
    pool: PgPool,
    clock: SharedClock,
    cfg: RetentionConfig,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(cfg.interval.0);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match tick(&pool, &clock, &cfg).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention: old presence events deleted"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "retention job failed; will retry"),
        }
    }
}
