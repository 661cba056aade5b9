//! Reads of `cloudwatch_metrics` and `cloudwatch_samples` for the metric rules
//! (`detect::metrics`) and the series API (`http::api::metrics`), plus the alert reads the rules
//! pass needs. The poller's writes are `db::cloudwatch`'s; nothing here writes those tables.
//! A period without a sample has no row: these functions never invent one.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

/// A metric row as the rules see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RuleMetric {
    pub id: i64,
    pub namespace: String,
    pub metric_name: String,
    pub dimensions: Value,
    pub polled_through: Option<DateTime<Utc>>,
}

/// The metric rows of these names that have been polled at least once (a metric never polled is
/// not judged). Empty when no rule's metric exists yet: the cheap path of the pass.
pub async fn polled_metrics(
    conn: impl PgExecutor<'_>,
    names: &[String],
) -> sqlx::Result<Vec<RuleMetric>> {
    sqlx::query_as(
        r#"select id, namespace, metric_name, dimensions, polled_through
           from cloudwatch_metrics
           where metric_name = any($1) and polled_through is not null
           order by id"#,
    )
    .bind(names)
    .fetch_all(conn)
    .await
}

/// Every sample of these metrics with `from <= period_start < to`, by metric then time.
pub async fn samples(
    conn: impl PgExecutor<'_>,
    ids: &[i64],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> sqlx::Result<Vec<(i64, DateTime<Utc>, f64)>> {
    sqlx::query_as(
        r#"select metric_id, period_start, value from cloudwatch_samples
           where metric_id = any($1) and period_start >= $2 and period_start < $3
           order by metric_id, period_start"#,
    )
    .bind(ids)
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await
}

/// A firing `metric_threshold` alert: (id, subject, severity, details).
pub async fn firing_metric_alerts(
    conn: impl PgExecutor<'_>,
) -> sqlx::Result<Vec<(i64, String, String, Value)>> {
    sqlx::query_as(
        r#"select id, subject, severity, details from alerts
           where kind = 'metric_threshold' and status = 'firing' order by id"#,
    )
    .fetch_all(conn)
    .await
}

/// Firing `client_id_conflict` and `throttled` alerts, oldest first, at most `limit`:
/// (kind, subject = client ID, device id).
pub async fn firing_client_alerts(
    conn: impl PgExecutor<'_>,
    limit: i64,
) -> sqlx::Result<Vec<(String, String, Option<String>)>> {
    sqlx::query_as(
        r#"select kind, subject, device_id from alerts
           where kind in ('client_id_conflict', 'throttled') and status = 'firing'
           order by opened_at, id limit $1"#,
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A known metric for the API's list, with its newest sample.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MetricListRow {
    pub id: i64,
    pub namespace: String,
    pub metric_name: String,
    pub dimensions: Value,
    pub source: String,
    pub first_seen_at: DateTime<Utc>,
    pub last_listed_at: DateTime<Utc>,
    pub polled_through: Option<DateTime<Utc>>,
    pub last_period_start: Option<DateTime<Utc>>,
    pub last_value: Option<f64>,
}

/// Known metrics by id after `after`, at most `limit`.
pub async fn list_metrics(
    conn: impl PgExecutor<'_>,
    after: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<MetricListRow>> {
    sqlx::query_as(
        r#"select m.id, m.namespace, m.metric_name, m.dimensions, m.source, m.first_seen_at,
                  m.last_listed_at, m.polled_through,
                  s.period_start as last_period_start, s.value as last_value
           from cloudwatch_metrics m
           left join lateral (
               select period_start, value from cloudwatch_samples
               where metric_id = m.id order by period_start desc limit 1
           ) s on true
           where m.id > coalesce($1, 0)
           order by m.id limit $2"#,
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The rows of a metric name, all of them or the one with exactly `dimensions`, by id, at most
/// `limit`.
pub async fn metrics_named(
    conn: impl PgExecutor<'_>,
    name: &str,
    dimensions: Option<&Value>,
    limit: i64,
) -> sqlx::Result<Vec<RuleMetric>> {
    sqlx::query_as(
        r#"select id, namespace, metric_name, dimensions, polled_through
           from cloudwatch_metrics
           where metric_name = $1 and ($2::jsonb is null or dimensions = $2::jsonb)
           order by id limit $3"#,
    )
    .bind(name)
    .bind(dimensions)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Samples re-bucketed to `step_secs`, buckets aligned on `from`: (metric id, bucket start, sum)
/// for `from <= period_start < to`. Buckets without a sample are absent.
pub async fn buckets(
    conn: impl PgExecutor<'_>,
    ids: &[i64],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step_secs: i64,
) -> sqlx::Result<Vec<(i64, DateTime<Utc>, f64)>> {
    sqlx::query_as(
        r#"select metric_id,
                  date_bin($4::bigint * interval '1 second', period_start, $2) as t,
                  sum(value) as value
           from cloudwatch_samples
           where metric_id = any($1) and period_start >= $2 and period_start < $3
           group by 1, 2 order by 1, 2"#,
    )
    .bind(ids)
    .bind(from)
    .bind(to)
    .bind(step_secs)
    .fetch_all(conn)
    .await
}
