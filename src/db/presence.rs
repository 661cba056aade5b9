//! Presence events and the connectivity they decide.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::postgres::types::PgInterval;
use sqlx::{PgPool, Postgres, Transaction};

use crate::domain::presence::{EventType, PresenceEvent};

/// What storing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// First time we saw this event.
    New,
    /// Already stored (redelivery or replay); nothing changed.
    Duplicate,
}

/// Store `ev` once and, if it is a connect or disconnect of `device_id`, apply it to the
/// device's connectivity with the ordering rule. `create_device` says whether an unknown device
/// may be created (the caller enforces the device cap; connect_failed never creates).
/// Timestamps count for ordering as at most `received_at + max_skew` (`presence_order_ts()`).
pub async fn store(
    pool: &PgPool,
    ev: &PresenceEvent,
    device_id: Option<&str>,
    group_id: Option<&str>,
    received_at: DateTime<Utc>,
    max_skew: TimeDelta,
) -> sqlx::Result<Stored> {
    let mut tx = pool.begin().await?;
    let inserted = insert_event(&mut tx, ev, device_id, received_at).await?;
    // Applying a duplicate again would be harmless (the upsert is idempotent), but skipping it
    // saves a row lock on the hot device row during redelivery storms.
    if inserted {
        if let Some(device_id) = device_id {
            apply_to_device(&mut tx, ev, device_id, group_id, received_at, max_skew).await?;
        }
    }
    tx.commit().await?;
    Ok(if inserted {
        Stored::New
    } else {
        Stored::Duplicate
    })
}

async fn insert_event(
    tx: &mut Transaction<'_, Postgres>,
    ev: &PresenceEvent,
    device_id: Option<&str>,
    received_at: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        r#"
        insert into presence_events (
            client_id, device_id, event_type, session_key, version_number, event_ts, received_at,
            session_identifier, thing_name, principal_identifier, ip_address,
            client_initiated_disconnect, disconnect_reason, connect_failure_reason)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
        on conflict (client_id, session_key, event_type, version_number) do nothing
        "#,
    )
    .bind(&ev.client_id)
    .bind(device_id)
    .bind(ev.event_type.as_str())
    .bind(ev.session_key())
    .bind(ev.version_key())
    .bind(ev.timestamp)
    .bind(received_at)
    .bind(&ev.session_identifier)
    .bind(&ev.thing_name)
    .bind(&ev.principal_identifier)
    .bind(&ev.ip_address)
    .bind(ev.client_initiated_disconnect)
    .bind(&ev.disconnect_reason)
    .bind(&ev.connect_failure_reason)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

async fn apply_to_device(
    tx: &mut Transaction<'_, Postgres>,
    ev: &PresenceEvent,
    device_id: &str,
    group_id: Option<&str>,
    received_at: DateTime<Utc>,
    max_skew: TimeDelta,
) -> sqlx::Result<()> {
    // The SQL below bounds the timestamps itself (presence_order_ts), so the rule is whole in
    // one statement; the Rust ordering only supplies the other fields.
    let Some(ord) = ev.ordering(received_at, max_skew) else {
        return Ok(());
    };
    let is_connect = ev.event_type == EventType::Connected;
    let connected_at = is_connect.then_some(ev.timestamp);
    let disconnected_at = (!is_connect).then_some(ev.timestamp);
    // One conditional upsert: the row lock taken by `on conflict do update` serialises
    // concurrent writers, and each re-evaluates the rule against the row it finally sees.
    // Every right-hand side reads the old row, so the four connectivity columns move together.
    sqlx::query(
        r#"
        insert into devices as d (
            id, group_id, connected, conn_event_ts, conn_version, conn_session,
            last_connected_at, last_disconnected_at, last_disconnect_reason, last_ip, last_principal,
            conn_received_at, deadline_at)
        values ($1, $2, $3, presence_order_ts($4, $12, $13), $5, $6,
                presence_order_ts($7, $12, $13), presence_order_ts($8, $12, $13),
                $9, $10, $11, $12, $12)
        on conflict (id) do update set
            connected     = case when presence_is_newer(excluded.conn_event_ts, $5, $3, $6, d.conn_event_ts, d.conn_version, d.connected, d.conn_session)
                                 then $3 else d.connected end,
            conn_version  = case when presence_is_newer(excluded.conn_event_ts, $5, $3, $6, d.conn_event_ts, d.conn_version, d.connected, d.conn_session)
                                 then $5 else d.conn_version end,
            conn_session  = case when presence_is_newer(excluded.conn_event_ts, $5, $3, $6, d.conn_event_ts, d.conn_version, d.connected, d.conn_session)
                                 then $6 else d.conn_session end,
            conn_event_ts = case when presence_is_newer(excluded.conn_event_ts, $5, $3, $6, d.conn_event_ts, d.conn_version, d.connected, d.conn_session)
                                 then excluded.conn_event_ts else d.conn_event_ts end,
            conn_received_at = case when presence_is_newer(excluded.conn_event_ts, $5, $3, $6, d.conn_event_ts, d.conn_version, d.connected, d.conn_session)
                                 then $12 else d.conn_received_at end,
            group_id               = coalesce(d.group_id, excluded.group_id),
            last_connected_at      = greatest(d.last_connected_at, excluded.last_connected_at),
            last_disconnected_at   = greatest(d.last_disconnected_at, excluded.last_disconnected_at),
            last_disconnect_reason = case when excluded.last_disconnected_at >= coalesce(d.last_disconnected_at, '-infinity')
                                          then excluded.last_disconnect_reason else d.last_disconnect_reason end,
            last_ip        = case when excluded.last_connected_at >= coalesce(d.last_connected_at, '-infinity')
                                  then excluded.last_ip else d.last_ip end,
            last_principal = case when excluded.last_connected_at >= coalesce(d.last_connected_at, '-infinity')
                                  then excluded.last_principal else d.last_principal end,
            -- a device in a gap is looked at again when its connectivity changes (an open
            -- alert is reclassified silent <-> offline), and one without data yet starts its
            -- clock; healthy ones wait for their deadline
            deadline_at = case when d.state in ('never_seen', 'late', 'silent', 'offline')
                                    and presence_is_newer(excluded.conn_event_ts, $5, $3, $6, d.conn_event_ts, d.conn_version, d.connected, d.conn_session)
                               then least(coalesce(d.deadline_at, $12), $12) else d.deadline_at end
        "#,
    )
    .bind(device_id)
    .bind(group_id)
    .bind(ord.connected)
    .bind(ev.timestamp)
    .bind(ord.version)
    .bind(&ord.session)
    .bind(connected_at)
    .bind(disconnected_at)
    .bind(if is_connect { None } else { ev.disconnect_reason.as_deref() })
    .bind(if is_connect { ev.ip_address.as_deref() } else { None })
    .bind(if is_connect { ev.principal_identifier.as_deref() } else { None })
    .bind(received_at)
    .bind(PgInterval::try_from(max_skew).unwrap_or_default())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One presence event as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = PresenceEvent)]
pub struct EventRow {
    pub id: i64,
    pub client_id: String,
    pub event_type: String,
    pub timestamp: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub session_identifier: Option<String>,
    pub version_number: Option<i64>,
    /// For disconnects, the address of the session's connect event (joined on the session).
    pub ip_address: Option<String>,
    pub principal_identifier: Option<String>,
    pub client_initiated_disconnect: Option<bool>,
    pub disconnect_reason: Option<String>,
    pub connect_failure_reason: Option<String>,
}

/// A device's presence timeline, newest first, strictly before the `(ts, id)` cursor.
pub async fn list_for_device(
    pool: &PgPool,
    device_id: &str,
    before: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> sqlx::Result<Vec<EventRow>> {
    let (ts, id) = before.unzip();
    sqlx::query_as::<_, EventRow>(
        r#"
        select e.id, e.client_id, e.event_type, e.event_ts as timestamp, e.received_at,
               e.session_identifier,
               nullif(e.version_number, -1) as version_number,
               coalesce(e.ip_address, (
                   select c.ip_address from presence_events c
                   where c.session_identifier = e.session_identifier
                     and c.event_type = 'connected' and c.ip_address is not null
                   limit 1)) as ip_address,
               e.principal_identifier, e.client_initiated_disconnect, e.disconnect_reason,
               e.connect_failure_reason
        from presence_events e
        where e.device_id = $1
          and ($2::timestamptz is null or (e.event_ts, e.id) < ($2, $3))
        order by e.event_ts desc, e.id desc
        limit $4
        "#,
    )
    .bind(device_id)
    .bind(ts)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Delete presence events that arrived before `cutoff`, in bounded batches so the job never
/// holds long locks. Returns how many rows went.
pub async fn delete_older_than(pool: &PgPool, cutoff: DateTime<Utc>) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let n = sqlx::query(
            r#"
            delete from presence_events
            where id in (select id from presence_events where received_at < $1 limit 5000)
            "#,
        )
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected();
        total += n;
        if n < 5000 {
            return Ok(total);
        }
    }
}

/// The columns of a new presence event that decide which subjects it touches.
#[derive(Debug, sqlx::FromRow)]
pub struct NewPresenceEvent {
    pub id: i64,
    pub client_id: String,
    pub device_id: Option<String>,
    pub event_type: String,
    pub disconnect_reason: Option<String>,
    pub event_ts: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// For address drift (`detect::drift`): the connect's address and session.
    pub ip_address: Option<String>,
    pub session_identifier: Option<String>,
}

/// Presence events stored after id `cursor`, in id order, at most `limit`.
pub async fn events_after(
    conn: impl sqlx::PgExecutor<'_>,
    cursor: i64,
    limit: i64,
) -> sqlx::Result<Vec<NewPresenceEvent>> {
    sqlx::query_as(
        r#"select id, client_id, device_id, event_type, disconnect_reason, event_ts, received_at,
                  ip_address, session_identifier
           from presence_events where id > $1 order by id limit $2"#,
    )
    .bind(cursor)
    .bind(limit)
    .fetch_all(conn)
    .await
}
