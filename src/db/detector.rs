//! The detector's queries: the heartbeat pass's due devices and its conditional state update,
//! the fleet-wide restart point (`detector_state`), and what the heartbeat pass remembers about
//! an open gap (columns of `alerts` that only the detector reads; `details` is the API's).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::domain::device::Gap;

/// How an open gap is classified and what it is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapMemory {
    pub class: Gap,
    /// Arrival time of the last data when the gap opened: newer data means the device is back.
    pub last_data_at: Option<DateTime<Utc>>,
    /// The newest device timestamp when the gap opened: the backlog's coverage is judged by it.
    pub last_device_ts: Option<DateTime<Utc>>,
}

/// Remember `m` for the heartbeat-gap alert `alert_id`.
pub async fn remember_gap(
    conn: impl PgExecutor<'_>,
    alert_id: i64,
    m: &GapMemory,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"update alerts set gap_class = $2, gap_last_data_at = $3, gap_last_device_ts = $4
           where id = $1"#,
    )
    .bind(alert_id)
    .bind(m.class)
    .bind(m.last_data_at)
    .bind(m.last_device_ts)
    .execute(conn)
    .await?;
    Ok(())
}

/// A due device as read from Postgres: the facts the heartbeat rule needs, and the values its
/// conditional update is conditioned on.
#[derive(Debug, sqlx::FromRow)]
pub struct DueDevice {
    pub id: String,
    pub group_id: Option<String>,
    pub state: String,
    pub deadline_at: Option<DateTime<Utc>>,
    pub connected: Option<bool>,
    pub conn_event_ts: Option<DateTime<Utc>>,
    pub conn_received_at: Option<DateTime<Utc>>,
    pub last_impression_at: Option<DateTime<Utc>>,
    pub last_device_ts: Option<DateTime<Utc>>,
    pub gap_min_device_ts: Option<DateTime<Utc>>,
    pub last_disconnect_reason: Option<String>,
    pub last_ip: Option<String>,
    pub interval_ms: Option<i64>,
    pub grace_ms: Option<i64>,
    pub time_zone: Option<String>,
    pub quiet_hours: Option<String>,
    pub first_reconnect: Option<DateTime<Utc>>,
    pub alert_id: Option<i64>,
    pub alert_class: Option<Gap>,
    pub alert_last_data: Option<DateTime<Utc>>,
    pub alert_last_device_ts: Option<DateTime<Utc>>,
    /// A restart point of this device alone: it was returned to service then.
    pub unretired_at: Option<DateTime<Utc>>,
}

/// Devices whose deadline passed at `now` (retired ones never), oldest deadline first, at most
/// `limit`, with their group's settings, the first reconnect after their last data and their
/// open gap alert's memory.
pub async fn due_devices(
    conn: impl PgExecutor<'_>,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<DueDevice>> {
    sqlx::query_as(
        r#"
        select d.id, d.group_id, d.state, d.deadline_at, d.connected, d.conn_event_ts,
               d.conn_received_at,
               d.last_impression_at, d.last_device_ts, d.gap_min_device_ts,
               d.last_disconnect_reason, d.last_ip,
               coalesce(d.expected_interval_ms, g.expected_interval_ms) as interval_ms,
               coalesce(d.grace_ms, g.grace_ms) as grace_ms,
               g.time_zone, g.quiet_hours,
               (select min(e.received_at) from presence_events e
                 where e.device_id = d.id and e.event_type = 'connected'
                   and e.received_at > coalesce(d.last_impression_at, '-infinity')) as first_reconnect,
               a.id as alert_id,
               a.gap_class as alert_class,
               a.gap_last_data_at as alert_last_data,
               a.gap_last_device_ts as alert_last_device_ts,
               d.unretired_at
        from devices d
        left join groups g on g.id = d.group_id
        -- lateral: one probe of alerts_one_firing_idx per due device, whatever the planner
        -- believes of `alerts` (right after a mass gap its statistics say "no firing gap", and
        -- a plain join then compared every due device with every firing alert: 4.8 s a tick
        -- at 10,000 of each; issue 12, benches/detector.rs)
        left join lateral (
            select a.id, a.gap_class, a.gap_last_data_at, a.gap_last_device_ts from alerts a
            where a.kind = 'heartbeat_gap' and a.subject = d.id and a.status = 'firing'
            limit 1
        ) a on true
        where d.deadline_at <= $1 and d.retired_at is null
        order by d.deadline_at
        limit $2
        "#,
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A decision to write for a due device: its new `state` and `deadline`; `opening` (a gap alert
/// opens) restarts the backlog's device-timestamp watermark.
#[derive(Debug, Clone, Copy)]
pub struct StateWrite<'a> {
    pub row: &'a DueDevice,
    pub state: &'a str,
    pub deadline: Option<DateTime<Utc>>,
    pub opening: bool,
}

/// Write a decision's `state` and next `deadline` for `row`'s device, only if ingest did not
/// move the device since `row` was read (deadline, last data, connectivity and state as read):
/// [`set_states_if_unchanged`] of one. Returns the rows changed: 0 when the decision raced
/// ingest.
pub async fn set_state_if_unchanged(
    conn: &mut PgConnection,
    write: StateWrite<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    Ok(set_states_if_unchanged(conn, &[write], now).await?.len() as u64)
}

/// Write many decisions in one statement, each row only if ingest did not move it since it was
/// read. Rows are locked in id order (as the telemetry flush does), so the two never deadlock.
/// Returns the ids updated; the others raced and are decided next tick.
pub async fn set_states_if_unchanged(
    conn: impl PgExecutor<'_>,
    writes: &[StateWrite<'_>],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<String>> {
    let mut sorted: Vec<&StateWrite<'_>> = writes.iter().collect();
    sorted.sort_by(|a, b| a.row.id.cmp(&b.row.id));
    macro_rules! column {
        ($f:expr) => {
            sorted.iter().map($f).collect::<Vec<_>>()
        };
    }
    sqlx::query_scalar(
        r#"
        update devices d set
            state = u.state,
            state_since = case when d.state = u.state then d.state_since else $1 end,
            deadline_at = u.deadline,
            gap_min_device_ts = case when u.opening then null else d.gap_min_device_ts end
        from unnest($2::text[], $3::text[], $4::timestamptz[], $5::bool[], $6::timestamptz[],
                    $7::timestamptz[], $8::timestamptz[], $9::text[])
             as u(id, state, deadline, opening, read_deadline, read_last, read_conn, read_state)
        where d.id = u.id
          and d.deadline_at is not distinct from u.read_deadline
          and d.last_impression_at is not distinct from u.read_last
          and d.conn_event_ts is not distinct from u.read_conn
          and d.state = u.read_state
        returning d.id
        "#,
    )
    .bind(now)
    .bind(column!(|w| w.row.id.as_str()))
    .bind(column!(|w| w.state))
    .bind(column!(|w| w.deadline))
    .bind(column!(|w| w.opening))
    .bind(column!(|w| w.row.deadline_at))
    .bind(column!(|w| w.row.last_impression_at))
    .bind(column!(|w| w.row.conn_event_ts))
    .bind(column!(|w| w.row.state.as_str()))
    .fetch_all(conn)
    .await
}

/// Record a restart point for every device: our ingest recovered at `now`.
pub async fn set_restart(conn: impl PgExecutor<'_>, now: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query("update detector_state set restart_at = $1")
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// The last fleet-wide restart point (service start or ingest recovery), if any.
pub async fn restart_at(conn: impl PgExecutor<'_>) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("select restart_at from detector_state")
        .fetch_one(conn)
        .await
}

/// The connection pass's cursor over `presence_events`, its row locked for the caller's
/// transaction (so that concurrent passes take turns).
pub async fn lock_presence_cursor(conn: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("select presence_cursor from detector_state where id for update")
        .fetch_one(conn)
        .await
}

/// Move the connection pass's cursor to `id`.
pub async fn advance_presence_cursor(conn: impl PgExecutor<'_>, id: i64) -> sqlx::Result<()> {
    sqlx::query("update detector_state set presence_cursor = $1 where id")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
