//! Writing coalesced telemetry: per-device last arrival and newest device time, and hourly
//! counts, and messages and impressions per anomaly bucket, for a whole batch in one statement.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

/// One device's share of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    pub device_id: String,
    pub group_id: Option<String>,
    pub last_arrival: DateTime<Utc>,
    pub max_device_ts: Option<DateTime<Utc>>,
    pub min_device_ts: Option<DateTime<Utc>>,
}

/// One (device, hour) count of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct HourRow {
    pub device_id: String,
    pub hour: DateTime<Utc>,
    pub count: i64,
}

/// One (device, anomaly bucket) share of a batch: messages and the sum of their impressions.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketRow {
    pub device_id: String,
    pub bucket_start: DateTime<Utc>,
    pub messages: i64,
    pub impressions: i64,
}

/// Write a batch. `devices`, `hours` and `buckets` must be sorted by key with no duplicates: Postgres
/// refuses to update one row twice in a statement, and unsorted batches from two replicas can
/// deadlock each other. Topic-named groups are created on the way.
pub async fn write_batch(
    pool: &PgPool,
    devices: &[DeviceRow],
    hours: &[HourRow],
    buckets: &[BucketRow],
    fleet_time_zone: &str,
) -> sqlx::Result<()> {
    debug_assert!(buckets
        .windows(2)
        .all(|w| (&w[0].device_id, w[0].bucket_start) < (&w[1].device_id, w[1].bucket_start)));
    debug_assert!(devices.windows(2).all(|w| w[0].device_id < w[1].device_id));
    debug_assert!(hours
        .windows(2)
        .all(|w| (&w[0].device_id, w[0].hour) < (&w[1].device_id, w[1].hour)));
    let ids: Vec<&str> = devices.iter().map(|d| d.device_id.as_str()).collect();
    let groups: Vec<Option<&str>> = devices.iter().map(|d| d.group_id.as_deref()).collect();
    let arrivals: Vec<DateTime<Utc>> = devices.iter().map(|d| d.last_arrival).collect();
    let dev_ts: Vec<Option<DateTime<Utc>>> = devices.iter().map(|d| d.max_device_ts).collect();
    let min_ts: Vec<Option<DateTime<Utc>>> = devices.iter().map(|d| d.min_device_ts).collect();
    let h_ids: Vec<&str> = hours.iter().map(|h| h.device_id.as_str()).collect();
    let h_hours: Vec<DateTime<Utc>> = hours.iter().map(|h| h.hour).collect();
    let h_counts: Vec<i64> = hours.iter().map(|h| h.count).collect();
    let b_ids: Vec<&str> = buckets.iter().map(|b| b.device_id.as_str()).collect();
    let b_starts: Vec<DateTime<Utc>> = buckets.iter().map(|b| b.bucket_start).collect();
    let b_messages: Vec<i64> = buckets.iter().map(|b| b.messages).collect();
    let b_impressions: Vec<i64> = buckets.iter().map(|b| b.impressions).collect();
    sqlx::query(
        r#"
        with new_groups as (
            insert into groups (id, name, time_zone, source)
            select distinct g, g, $8, 'topic' from unnest($2::text[]) as g where g is not null
            order by 1
            on conflict (id) do nothing
        ), upserted as (
            -- gap_min_device_ts carries this batch's earliest device time into `excluded`;
            -- on a new device it means nothing (the detector clears it when a gap opens)
            insert into devices as d (id, group_id, last_impression_at, last_device_ts, state,
                                      state_since, deadline_at, gap_min_device_ts)
            select id, grp, arrival, dev_ts, 'healthy', arrival, arrival, min_ts
            from unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                        $9::timestamptz[]) as u(id, grp, arrival, dev_ts, min_ts)
            on conflict (id) do update set
                last_impression_at = greatest(d.last_impression_at, excluded.last_impression_at),
                last_device_ts     = greatest(d.last_device_ts, excluded.last_device_ts),
                group_id           = coalesce(d.group_id, excluded.group_id),
                -- until the detector has looked, first data makes a device healthy
                state       = case when d.state = 'never_seen' then 'healthy' else d.state end,
                state_since = case when d.state = 'never_seen' then excluded.state_since else d.state_since end,
                -- a healthy device keeps its deadline (the detector pushes it on when it
                -- passes); any other state is looked at now, so a returning device resolves
                -- within one tick
                deadline_at = case when d.state = 'healthy'
                                   then coalesce(d.deadline_at, excluded.deadline_at)
                                   else least(coalesce(d.deadline_at, excluded.deadline_at), excluded.deadline_at) end,
                gap_min_device_ts = case when d.state in ('silent', 'offline')
                                         then least(d.gap_min_device_ts, excluded.gap_min_device_ts)
                                         else d.gap_min_device_ts end
        ), anomaly_buckets as (
            -- the sums saturate rather than fail the whole flush (a flush that fails is
            -- retried forever)
            insert into impression_buckets as b (device_id, bucket_start, messages, impressions)
            select * from unnest($10::text[], $11::timestamptz[], $12::bigint[], $13::bigint[])
            on conflict (device_id, bucket_start) do update set
                messages    = b.messages + excluded.messages,
                impressions = least(b.impressions::numeric + excluded.impressions,
                                    9223372036854775807)::bigint
        )
        insert into impressions_hourly as h (device_id, hour, count)
        select * from unnest($5::text[], $6::timestamptz[], $7::bigint[])
        on conflict (device_id, hour) do update set count = h.count + excluded.count
        "#,
    )
    .bind(&ids)
    .bind(&groups)
    .bind(&arrivals)
    .bind(&dev_ts)
    .bind(&h_ids)
    .bind(&h_hours)
    .bind(&h_counts)
    .bind(fleet_time_zone)
    .bind(&min_ts)
    .bind(&b_ids)
    .bind(&b_starts)
    .bind(&b_messages)
    .bind(&b_impressions)
    .execute(pool)
    .await?;
    Ok(())
}

/// Impression counts of one device by hour, newest first.
pub async fn hourly_for_device(
    pool: &PgPool,
    device_id: &str,
    since: DateTime<Utc>,
) -> sqlx::Result<Vec<(DateTime<Utc>, i64)>> {
    sqlx::query_as(
        r#"select hour, count from impressions_hourly
           where device_id = $1 and hour >= $2 order by hour desc"#,
    )
    .bind(device_id)
    .bind(since)
    .fetch_all(pool)
    .await
}

/// Delete at most `limit` hourly counts of hours before `cutoff` (retention). Returns how many.
pub async fn delete_hourly_before(
    conn: impl PgExecutor<'_>,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        r#"delete from impressions_hourly
           where (device_id, hour) in (
               select device_id, hour from impressions_hourly where hour < $1 limit $2)"#,
    )
    .bind(cutoff)
    .bind(limit)
    .execute(conn)
    .await?
    .rows_affected())
}
