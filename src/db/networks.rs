//! `device_networks`: which networks each device connected from, and when (address drift,
//! `detect::drift`). Upserts are commutative (least first_seen, greatest last_seen and
//! drift_at), so replays and reordering leave the same rows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::drift::Sighting;

/// One connect's contribution to a device's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSighting {
    pub device_id: String,
    pub network: String,
    pub at: DateTime<Utc>,
    pub address: String,
    pub session: Option<String>,
    /// Set when the connect was judged drift (the pass's `now`).
    pub drift_at: Option<DateTime<Utc>>,
}

/// Record each device's current network: `(device, network, at)` of its newest connect in a
/// pass, written only where no newer one is stored (a late old connect changes nothing).
pub async fn set_current(
    conn: &mut PgConnection,
    current: &[(&str, &str, DateTime<Utc>)],
) -> sqlx::Result<()> {
    let mut sorted: Vec<&(&str, &str, DateTime<Utc>)> = current.iter().collect();
    // Row locks in id order, as every batch writer of `devices` takes them.
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let ids: Vec<&str> = sorted.iter().map(|c| c.0).collect();
    let networks: Vec<&str> = sorted.iter().map(|c| c.1).collect();
    let at: Vec<DateTime<Utc>> = sorted.iter().map(|c| c.2).collect();
    sqlx::query(
        r#"update devices d set network = u.network, network_at = u.at
           from unnest($1::text[], $2::text[], $3::timestamptz[]) as u(id, network, at)
           where d.id = u.id and (d.network_at is null or d.network_at <= u.at)"#,
    )
    .bind(ids)
    .bind(networks)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The history of `devices`: device → network → sighting.
pub async fn history_of(
    conn: &mut PgConnection,
    devices: &[String],
) -> sqlx::Result<BTreeMap<String, BTreeMap<String, Sighting>>> {
    let rows: Vec<(String, String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        r#"select device_id, network, first_seen, last_seen
           from device_networks where device_id = any($1)"#,
    )
    .bind(devices)
    .fetch_all(conn)
    .await?;
    let mut out: BTreeMap<String, BTreeMap<String, Sighting>> = BTreeMap::new();
    for (device, network, first_seen, last_seen) in rows {
        out.entry(device).or_default().insert(
            network,
            Sighting {
                first_seen,
                last_seen,
            },
        );
    }
    Ok(out)
}

/// Merge `sightings` into the table in one statement. Keys are merged and sorted first:
/// Postgres refuses to update one row twice in a statement, and unsorted batches deadlock.
pub async fn record(conn: &mut PgConnection, sightings: &[NewSighting]) -> sqlx::Result<()> {
    let mut merged: BTreeMap<(&str, &str), NewSighting> = BTreeMap::new();
    for s in sightings {
        merged
            .entry((&s.device_id, &s.network))
            .and_modify(|m| {
                if (s.at, &s.address) > (m.at, &m.address) {
                    m.address = s.address.clone();
                    m.session = s.session.clone();
                }
                m.at = m.at.max(s.at);
                m.drift_at = m.drift_at.max(s.drift_at);
            })
            .or_insert_with(|| s.clone());
    }
    if merged.is_empty() {
        return Ok(());
    }
    // first_seen of the merged row: the least of the batch's
    let mut first: BTreeMap<(&str, &str), DateTime<Utc>> = BTreeMap::new();
    for s in sightings {
        first
            .entry((&s.device_id, &s.network))
            .and_modify(|f| *f = (*f).min(s.at))
            .or_insert(s.at);
    }
    let mut devices = Vec::new();
    let mut networks = Vec::new();
    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    let mut addresses = Vec::new();
    let mut sessions: Vec<Option<String>> = Vec::new();
    let mut drifts: Vec<Option<DateTime<Utc>>> = Vec::new();
    for (key, s) in &merged {
        devices.push(s.device_id.clone());
        networks.push(s.network.clone());
        firsts.push(first[key]);
        lasts.push(s.at);
        addresses.push(s.address.clone());
        sessions.push(s.session.clone());
        drifts.push(s.drift_at);
    }
    sqlx::query(
        r#"
        insert into device_networks as d
            (device_id, network, first_seen, last_seen, last_address, last_session, drift_at)
        select * from unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                             $5::text[], $6::text[], $7::timestamptz[])
        on conflict (device_id, network) do update set
            first_seen = least(d.first_seen, excluded.first_seen),
            last_seen = greatest(d.last_seen, excluded.last_seen),
            -- the address and session of the latest connect; ties break by address so that
            -- the result does not depend on the order of writes
            last_address = case
                when (excluded.last_seen, excluded.last_address) > (d.last_seen, d.last_address)
                then excluded.last_address else d.last_address end,
            last_session = case
                when (excluded.last_seen, excluded.last_address) > (d.last_seen, d.last_address)
                then excluded.last_session else d.last_session end,
            drift_at = greatest(d.drift_at, excluded.drift_at)
        "#,
    )
    .bind(&devices)
    .bind(&networks)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&addresses)
    .bind(&sessions)
    .bind(&drifts)
    .execute(conn)
    .await?;
    Ok(())
}

/// The latest `drift_at` of each of `devices` (absent: never judged drift, or aged out).
pub async fn last_drift_of(
    conn: &mut PgConnection,
    devices: &[String],
) -> sqlx::Result<BTreeMap<String, DateTime<Utc>>> {
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        r#"select device_id, max(drift_at) from device_networks
           where device_id = any($1) and drift_at is not null group by device_id"#,
    )
    .bind(devices)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Delete at most `limit` sightings last seen before `cutoff`; returns how many went.
pub async fn delete_older_than(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        r#"
        delete from device_networks
        where (device_id, network) in (
            select device_id, network from device_networks where last_seen < $1 limit $2)
        "#,
    )
    .bind(cutoff)
    .bind(limit)
    .execute(conn)
    .await?
    .rows_affected())
}

/// A device's networks for the API and tests, most recently seen first:
/// (network, first_seen, last_seen, last_address).
pub async fn of_device(
    conn: &mut PgConnection,
    device_id: &str,
) -> sqlx::Result<Vec<(String, DateTime<Utc>, DateTime<Utc>, String)>> {
    sqlx::query_as(
        r#"select network, first_seen, last_seen, last_address from device_networks
           where device_id = $1 order by last_seen desc, network"#,
    )
    .bind(device_id)
    .fetch_all(conn)
    .await
}
