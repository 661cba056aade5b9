//! The impressions-anomaly tables (migration `20261208004200`): bucket sums (`impression_buckets`,
//! written by the telemetry flush in `db::telemetry`), the pass's cursor (`anomaly_state`) and
//! the devices' runs of low buckets (`anomaly_streaks`). The rule is `domain::anomaly`; the pass
//! that applies it is `detect::anomaly`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

/// How far the pass has judged: (start of the newest judged bucket, the bucket length in ms it
/// was judged with).
pub async fn cursor(
    conn: impl PgExecutor<'_>,
) -> sqlx::Result<(Option<DateTime<Utc>>, Option<i64>)> {
    sqlx::query_as("select judged_through, bucket_ms from anomaly_state")
        .fetch_one(conn)
        .await
}

/// The cursor, locked for the caller's transaction (two leaders for a moment judge a bucket
/// once: the second waits, then sees the cursor moved).
pub async fn lock_cursor(
    conn: &mut PgConnection,
) -> sqlx::Result<(Option<DateTime<Utc>>, Option<i64>)> {
    sqlx::query_as("select judged_through, bucket_ms from anomaly_state for update")
        .fetch_one(conn)
        .await
}

/// Move the cursor to `bucket` (judged with buckets of `bucket_ms`).
pub async fn set_cursor(
    conn: &mut PgConnection,
    bucket: DateTime<Utc>,
    bucket_ms: i64,
) -> sqlx::Result<()> {
    sqlx::query("update anomaly_state set judged_through = $1, bucket_ms = $2")
        .bind(bucket)
        .bind(bucket_ms)
        .execute(conn)
        .await?;
    Ok(())
}

/// One device's closed bucket with what its baseline is made of.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BucketDevice {
    pub device_id: String,
    pub group_id: Option<String>,
    /// The group's stored time zone and quiet hours (configured groups are read from the
    /// configuration instead, as the heartbeat does).
    pub time_zone: Option<String>,
    pub quiet_hours: Option<String>,
    pub messages: i64,
    pub impressions: i64,
    /// Earlier buckets among the candidate sample starts with at least `min_messages`
    /// messages: their starts and sums, in the same order.
    pub sample_starts: Vec<DateTime<Utc>>,
    pub sample_sums: Vec<i64>,
}

/// Every non-retired device that sent something in bucket `bucket`, with its sums in the
/// candidate sample buckets `samples` (the union over the time zones in use; the caller keeps
/// each device's own) that had at least `min_messages` messages.
pub async fn bucket_devices(
    conn: impl PgExecutor<'_>,
    bucket: DateTime<Utc>,
    samples: &[DateTime<Utc>],
    min_messages: i64,
) -> sqlx::Result<Vec<BucketDevice>> {
    sqlx::query_as(
        r#"
        select c.device_id, d.group_id, g.time_zone, g.quiet_hours, c.messages, c.impressions,
               coalesce(h.starts, '{}') as sample_starts, coalesce(h.sums, '{}') as sample_sums
        from impression_buckets c
        join devices d on d.id = c.device_id and d.retired_at is null
        left join groups g on g.id = d.group_id
        left join lateral (
            select array_agg(p.bucket_start) as starts, array_agg(p.impressions) as sums
            from impression_buckets p
            where p.device_id = c.device_id and p.bucket_start = any($2)
              and p.messages >= $3
        ) h on true
        where c.bucket_start = $1
        order by c.device_id
        "#,
    )
    .bind(bucket)
    .bind(samples)
    .bind(min_messages)
    .fetch_all(conn)
    .await
}

/// Every device's current run of low buckets.
pub async fn lock_streaks(conn: &mut PgConnection) -> sqlx::Result<Vec<(String, i32)>> {
    sqlx::query_as("select device_id, low_buckets from anomaly_streaks for update")
        .fetch_all(conn)
        .await
}

/// Replace the runs of `devices`: a run of 0 deletes the row.
pub async fn set_streaks(
    conn: &mut PgConnection,
    devices: &[(String, i32)],
    bucket: DateTime<Utc>,
) -> sqlx::Result<()> {
    let (ended, going): (Vec<_>, Vec<_>) = devices.iter().partition(|(_, n)| *n == 0);
    let ended: Vec<&str> = ended.iter().map(|(d, _)| d.as_str()).collect();
    sqlx::query("delete from anomaly_streaks where device_id = any($1)")
        .bind(&ended)
        .execute(&mut *conn)
        .await?;
    let ids: Vec<&str> = going.iter().map(|(d, _)| d.as_str()).collect();
    let runs: Vec<i32> = going.iter().map(|(_, n)| *n).collect();
    sqlx::query(
        r#"
        insert into anomaly_streaks as s (device_id, low_buckets, last_low)
        select id, n, $3 from unnest($1::text[], $2::int[]) as u(id, n)
        order by id
        on conflict (device_id) do update set low_buckets = excluded.low_buckets,
                                              last_low = case when excluded.low_buckets > s.low_buckets
                                                              then excluded.last_low else s.last_low end
        "#,
    )
    .bind(&ids)
    .bind(&runs)
    .bind(bucket)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the device exists, and its group's stored time zone if it has a group.
pub async fn device_zone(
    conn: impl PgExecutor<'_>,
    device_id: &str,
) -> sqlx::Result<Option<Option<String>>> {
    sqlx::query_scalar(
        r#"select g.time_zone from devices d left join groups g on g.id = d.group_id
           where d.id = $1"#,
    )
    .bind(device_id)
    .fetch_optional(conn)
    .await
}

/// One bucket of a device's series, for the API and the device page.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SeriesBucket {
    pub bucket_start: DateTime<Utc>,
    pub messages: i64,
    pub impressions: i64,
}

/// A device's buckets from `since` (inclusive) to `until` (exclusive), oldest first.
pub async fn series(
    conn: impl PgExecutor<'_>,
    device_id: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> sqlx::Result<Vec<SeriesBucket>> {
    sqlx::query_as(
        r#"select bucket_start, messages, impressions from impression_buckets
           where device_id = $1 and bucket_start >= $2 and bucket_start < $3
           order by bucket_start"#,
    )
    .bind(device_id)
    .bind(since)
    .bind(until)
    .fetch_all(conn)
    .await
}

/// Retention: delete at most `limit` bucket rows that started before `cutoff`.
pub async fn delete_buckets_before(
    conn: impl PgExecutor<'_>,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        r#"
        delete from impression_buckets
        where (device_id, bucket_start) in (
            select device_id, bucket_start from impression_buckets
            where bucket_start < $1 limit $2)
        "#,
    )
    .bind(cutoff)
    .bind(limit)
    .execute(conn)
    .await?
    .rows_affected())
}
