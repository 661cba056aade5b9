//! The CloudWatch poller's writes (`aws::cloudwatch`): metric rows (`cloudwatch_metrics`),
//! sample upserts (`cloudwatch_samples`), `polled_through`, and retention's batch delete.
//!
//! Contract (the migration `20261202000001_cloudwatch.sql` explains the columns):
//! - A metric is one (namespace, name, exact dimension set); [`upsert_metric`] finds or
//!   creates its row and is idempotent (jsonb equality ignores key order).
//! - [`upsert_samples`] writes one row per (metric, period start), replacing the value read
//!   before: a replayed read changes nothing, a late datapoint corrects a sample.
//! - [`advance_polled_through`] only moves forward, and only for the metrics named (the
//!   caller names those whose read completed).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

/// Where a metric row comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Discovered,
    Config,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Discovered => "discovered",
            Self::Config => "config",
        }
    }
}

/// Find or create the row of `name` with exactly `dimensions` (a JSON object) in
/// `namespace`, marking it listed at `now`; returns its id. A metric both configured and
/// discovered stays `config` (the operator named it; discovery only confirms it).
pub async fn upsert_metric(
    pool: &PgPool,
    namespace: &str,
    name: &str,
    dimensions: &Value,
    source: Source,
    now: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        r#"
        insert into cloudwatch_metrics
            (namespace, metric_name, dimensions, source, first_seen_at, last_listed_at)
        values ($1, $2, $3, $4, $5, $5)
        on conflict (namespace, metric_name, dimensions) do update
            set last_listed_at = greatest(cloudwatch_metrics.last_listed_at, excluded.last_listed_at),
                source = case when excluded.source = 'config' then 'config'
                              else cloudwatch_metrics.source end
        returning id
        "#,
    )
    .bind(namespace)
    .bind(name)
    .bind(dimensions)
    .bind(source.as_str())
    .bind(now)
    .fetch_one(pool)
    .await
}

/// `polled_through` of each of `ids` (rows that do not exist are left out).
pub async fn polled_through(
    pool: &PgPool,
    ids: &[i64],
) -> sqlx::Result<Vec<(i64, Option<DateTime<Utc>>)>> {
    sqlx::query_as(
        r#"
        select id, polled_through from cloudwatch_metrics where id = any($1) order by id
        "#,
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// One sample to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub metric_id: i64,
    pub period_start: DateTime<Utc>,
    pub value: f64,
}

/// Upsert `samples` (at most one per (metric, period start): the caller dedupes, Postgres
/// refuses to update one row twice in a statement); returns how many rows were written.
pub async fn upsert_samples(
    pool: &PgPool,
    samples: &[Sample],
    period_seconds: i32,
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let mut written = 0;
    // Bounded statements: a 3 h backfill of 500 metrics is 90,000 rows.
    for chunk in samples.chunks(5000) {
        let ids: Vec<i64> = chunk.iter().map(|s| s.metric_id).collect();
        let starts: Vec<DateTime<Utc>> = chunk.iter().map(|s| s.period_start).collect();
        let values: Vec<f64> = chunk.iter().map(|s| s.value).collect();
        written += sqlx::query(
            r#"
            insert into cloudwatch_samples (metric_id, period_start, period_seconds, value, fetched_at)
            select m, p, $4, v, $5 from unnest($1::bigint[], $2::timestamptz[], $3::float8[]) as u(m, p, v)
            on conflict (metric_id, period_start) do update
                set value = excluded.value, period_seconds = excluded.period_seconds,
                    fetched_at = excluded.fetched_at
            "#,
        )
        .bind(&ids)
        .bind(&starts)
        .bind(&values)
        .bind(period_seconds)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok(written)
}

/// Move `polled_through` of `ids` to `through`, never backwards.
pub async fn advance_polled_through(
    pool: &PgPool,
    ids: &[i64],
    through: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"
        update cloudwatch_metrics set polled_through = $2
        where id = any($1) and (polled_through is null or polled_through < $2)
        "#,
    )
    .bind(ids)
    .bind(through)
    .execute(pool)
    .await?;
    Ok(())
}

/// Delete at most `limit` samples whose period started before `before`; returns how many
/// (retention's bounded batch).
pub async fn delete_samples_before(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        r#"
        delete from cloudwatch_samples
        where (metric_id, period_start) in (
            select metric_id, period_start from cloudwatch_samples
            where period_start < $1 limit $2)
        "#,
    )
    .bind(before)
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}
