//! Presence events and the connectivity they decide.

use std::collections::HashMap;

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

/// One event to store with [`store_batch`]: the event, the device it belongs to (`None` for a
/// `connect_failed` of an unknown client), the device's group when it is created, and when the
/// event arrived.
#[derive(Debug, Clone, Copy)]
pub struct Pending<'a> {
    pub event: &'a PresenceEvent,
    pub device_id: Option<&'a str>,
    pub group_id: Option<&'a str>,
    pub received_at: DateTime<Utc>,
}

/// Store `ev` once and, if it is a connect or disconnect of `device_id`, apply it to the
/// device's connectivity with the ordering rule: [`store_batch`] of one.
pub async fn store(
    pool: &PgPool,
    ev: &PresenceEvent,
    device_id: Option<&str>,
    group_id: Option<&str>,
    received_at: DateTime<Utc>,
    max_skew: TimeDelta,
) -> sqlx::Result<Stored> {
    let one = Pending {
        event: ev,
        device_id,
        group_id,
        received_at,
    };
    Ok(store_batch(pool, &[one], max_skew).await?[0])
}

/// Store a batch of events, in arrival order, in one transaction, and say for each whether it
/// was new. The result is the same as storing them one by one in that order (issue 12):
///
/// - the events go in with one `insert … on conflict do nothing`; an event whose natural key
///   is already stored, or came earlier in the batch, is a [`Stored::Duplicate`] and changes
///   nothing;
/// - the new connects and disconnects are applied to their devices in *rounds*: round k holds
///   the k-th new event of every device in the batch, and each round is one conditional upsert
///   (the §2a rule in SQL, exactly as for a single event). A device therefore sees its events
///   in arrival order, each compared with the row as the previous one left it.
///
/// Rounds rather than folding a device's events in memory first and applying only the winner:
/// §2a's rule is not transitive (`domain::presence` `non_transitive_case`), so a winner picked
/// among the batch without the stored row can differ from what arrival order gives; rounds
/// cost one statement per event of the busiest device (one or two in a reconnect storm).
///
/// Timestamps count for ordering as at most `received_at + max_skew` (`presence_order_ts()`).
/// A batch fails or commits whole; the caller retries it, or stores its events one by one to
/// find the one Postgres refuses.
pub async fn store_batch(
    pool: &PgPool,
    batch: &[Pending<'_>],
    max_skew: TimeDelta,
) -> sqlx::Result<Vec<Stored>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    let new = insert_events(&mut tx, batch).await?;
    // Applying a duplicate again would be harmless (the upsert is idempotent), but skipping it
    // saves a row lock on the hot device row during redelivery storms.
    let mut rounds: Vec<Vec<(&Pending<'_>, &str)>> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (p, _) in batch.iter().zip(&new).filter(|(_, &n)| n) {
        let Some(device_id) = p.device_id else {
            continue;
        };
        if p.event.event_type == EventType::ConnectFailed {
            continue;
        }
        let k = seen.entry(device_id).or_insert(0);
        if rounds.len() <= *k {
            rounds.push(Vec::new());
        }
        rounds[*k].push((p, device_id));
        *k += 1;
    }
    for round in &rounds {
        apply_to_devices(&mut tx, round, max_skew).await?;
    }
    tx.commit().await?;
    Ok(new
        .into_iter()
        .map(|n| if n { Stored::New } else { Stored::Duplicate })
        .collect())
}

/// The natural key of a stored event (the unique index of `presence_events`).
type Key = (String, String, &'static str, i64);

fn key_of(ev: &PresenceEvent) -> Key {
    (
        ev.client_id.clone(),
        ev.session_key(),
        ev.event_type.as_str(),
        ev.version_key(),
    )
}

/// Insert the batch's events (each distinct key once, in arrival order); for each event,
/// whether it was stored now.
async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[Pending<'_>],
) -> sqlx::Result<Vec<bool>> {
    let mut first: HashMap<Key, usize> = HashMap::with_capacity(batch.len());
    let mut rows = Vec::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        if let std::collections::hash_map::Entry::Vacant(e) = first.entry(key_of(p.event)) {
            e.insert(i);
            rows.push(p);
        }
    }
    macro_rules! column {
        ($f:expr) => {
            rows.iter().map($f).collect::<Vec<_>>()
        };
    }
    let inserted: Vec<(String, String, String, i64)> = sqlx::query_as(
        r#"
        insert into presence_events (
            client_id, device_id, event_type, session_key, version_number, event_ts, received_at,
            session_identifier, thing_name, principal_identifier, ip_address,
            client_initiated_disconnect, disconnect_reason, connect_failure_reason)
        select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
                             $6::timestamptz[], $7::timestamptz[], $8::text[], $9::text[],
                             $10::text[], $11::text[], $12::bool[], $13::text[], $14::text[])
        on conflict (client_id, session_key, event_type, version_number) do nothing
        returning client_id, session_key, event_type, version_number
        "#,
    )
    .bind(column!(|p| p.event.client_id.as_str()))
    .bind(column!(|p| p.device_id))
    .bind(column!(|p| p.event.event_type.as_str()))
    .bind(column!(|p| p.event.session_key()))
    .bind(column!(|p| p.event.version_key()))
    .bind(column!(|p| p.event.timestamp))
    .bind(column!(|p| p.received_at))
    .bind(column!(|p| p.event.session_identifier.as_deref()))
    .bind(column!(|p| p.event.thing_name.as_deref()))
    .bind(column!(|p| p.event.principal_identifier.as_deref()))
    .bind(column!(|p| p.event.ip_address.as_deref()))
    .bind(column!(|p| p.event.client_initiated_disconnect))
    .bind(column!(|p| p.event.disconnect_reason.as_deref()))
    .bind(column!(|p| p.event.connect_failure_reason.as_deref()))
    .fetch_all(&mut **tx)
    .await?;
    let mut new = vec![false; batch.len()];
    for (client_id, session_key, event_type, version) in inserted {
        let Some(ty) = EventType::parse(&event_type) else {
            continue;
        };
        if let Some(&i) = first.get(&(client_id, session_key, ty.as_str(), version)) {
            new[i] = true;
        }
    }
    Ok(new)
}

/// One round of [`store_batch`]: at most one event per device, applied with the §2a rule.
async fn apply_to_devices(
    tx: &mut Transaction<'_, Postgres>,
    round: &[(&Pending<'_>, &str)],
    max_skew: TimeDelta,
) -> sqlx::Result<()> {
    let mut rows: Vec<(&Pending<'_>, &str, crate::domain::presence::Ordering)> = round
        .iter()
        .filter_map(|&(p, d)| Some((p, d, p.event.ordering(p.received_at, max_skew)?)))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    // Row locks in one order in every transaction: fewer deadlocks between replicas that
    // store the same events.
    rows.sort_by(|a, b| a.1.cmp(b.1));
    macro_rules! column {
        ($f:expr) => {
            rows.iter().map($f).collect::<Vec<_>>()
        };
    }
    let connect = |p: &Pending<'_>| p.event.event_type == EventType::Connected;
    // The SQL bounds the timestamps itself (presence_order_ts), so the rule is whole in one
    // statement; the Rust ordering only supplies the other fields. One conditional upsert: the
    // row lock taken by `on conflict do update` serialises concurrent writers, and each
    // re-evaluates the rule against the row it finally sees. Every right-hand side reads the
    // old row, so the four connectivity columns move together.
    sqlx::query(
        r#"
        insert into devices as d (
            id, group_id, connected, conn_event_ts, conn_version, conn_session,
            last_connected_at, last_disconnected_at, last_disconnect_reason, last_ip, last_principal,
            conn_received_at, deadline_at)
        select id, group_id, connected, presence_order_ts(ts, received_at, $13), version, session,
               presence_order_ts(connected_at, received_at, $13),
               presence_order_ts(disconnected_at, received_at, $13),
               reason, ip, principal, received_at, received_at
        from unnest($1::text[], $2::text[], $3::bool[], $4::timestamptz[], $5::int8[], $6::text[],
                    $7::timestamptz[], $8::timestamptz[], $9::text[], $10::text[], $11::text[],
                    $12::timestamptz[])
             as u(id, group_id, connected, ts, version, session, connected_at, disconnected_at,
                  reason, ip, principal, received_at)
        on conflict (id) do update set
            connected     = case when presence_is_newer(excluded.conn_event_ts, excluded.conn_version, excluded.connected, excluded.conn_session, d.conn_event_ts, d.conn_version, d.connected, d.conn_session)
                                 then excluded.connected else d.connected end,
            conn_version  = case when presence_is_newer(excluded.conn_event_ts, excluded.conn_version, excluded.connected, excluded.conn_session, d.conn_event_ts, d.conn_version, d.connected, d.conn_session)
                                 then excluded.conn_version else d.conn_version end,
            conn_session  = case when presence_is_newer(excluded.conn_event_ts, excluded.conn_version, excluded.connected, excluded.conn_session, d.conn_event_ts, d.conn_version, d.connected, d.conn_session)
                                 then excluded.conn_session else d.conn_session end,
            conn_event_ts = case when presence_is_newer(excluded.conn_event_ts, excluded.conn_version, excluded.connected, excluded.conn_session, d.conn_event_ts, d.conn_version, d.connected, d.conn_session)
                                 then excluded.conn_event_ts else d.conn_event_ts end,
            conn_received_at = case when presence_is_newer(excluded.conn_event_ts, excluded.conn_version, excluded.connected, excluded.conn_session, d.conn_event_ts, d.conn_version, d.connected, d.conn_session)
                                 then excluded.conn_received_at else d.conn_received_at end,
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
                                    and presence_is_newer(excluded.conn_event_ts, excluded.conn_version, excluded.connected, excluded.conn_session, d.conn_event_ts, d.conn_version, d.connected, d.conn_session)
                               then least(coalesce(d.deadline_at, excluded.conn_received_at), excluded.conn_received_at) else d.deadline_at end
        "#,
    )
    .bind(column!(|r| r.1))
    .bind(column!(|r| r.0.group_id))
    .bind(column!(|r| r.2.connected))
    .bind(column!(|r| r.0.event.timestamp))
    .bind(column!(|r| r.2.version))
    .bind(column!(|r| r.2.session.as_str()))
    .bind(column!(|r| connect(r.0).then_some(r.0.event.timestamp)))
    .bind(column!(|r| (!connect(r.0)).then_some(r.0.event.timestamp)))
    .bind(column!(|r| if connect(r.0) { None } else { r.0.event.disconnect_reason.as_deref() }))
    .bind(column!(|r| if connect(r.0) { r.0.event.ip_address.as_deref() } else { None }))
    .bind(column!(|r| if connect(r.0) { r.0.event.principal_identifier.as_deref() } else { None }))
    .bind(column!(|r| r.0.received_at))
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
