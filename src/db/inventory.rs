//! The IoT registry's writes (`aws::inventory`): registry groups, registry devices and their
//! overrides, registry client-ID mappings, the `inventory_things` bookkeeping of what the
//! registry listed, and the fleet index's connectivity corrections.
//!
//! Contract: every write is conditional on the stored value differing, so applying the same
//! plan twice writes nothing the second time (the returned counts are rows changed). Nothing
//! here writes a group whose `source` is `config`, nor a `client_ids` row of source `config`:
//! configuration wins (the plan already leaves those out; the SQL holds the line too).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

use crate::domain::inventory::{IndexEntry, Plan, StoredConnectivity, ACTOR};

/// Every device the registry ever listed, with whether it is marked gone.
pub async fn listed(pool: &PgPool) -> sqlx::Result<BTreeMap<String, bool>> {
    let rows: Vec<(String, bool)> =
        sqlx::query_as("select device_id, gone_at is not null from inventory_things")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Write `plan` in one transaction; returns the number of rows changed.
pub async fn apply(pool: &PgPool, plan: &Plan, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let mut n = 0;
    for g in &plan.groups {
        n += sqlx::query(
            r#"
            insert into groups as g (id, name, time_zone, source, quiet_hours, created_at, updated_at)
            values ($1, $1, $2, 'inventory', $3, $4, $4)
            on conflict (id) do update set time_zone = excluded.time_zone,
                quiet_hours = excluded.quiet_hours, source = 'inventory', updated_at = $4
            where g.source <> 'config'
              and (g.time_zone, g.quiet_hours, g.source)
                  is distinct from (excluded.time_zone, excluded.quiet_hours, 'inventory')
            "#,
        )
        .bind(&g.id)
        .bind(&g.time_zone)
        .bind(&g.quiet_hours)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    // Sorted by id (the plan's order): concurrent writers lock rows in one order.
    for d in &plan.devices {
        // A new device is never_seen until it reports (DESIGN §2a); no deadline: the detector
        // has nothing to evaluate before data or a presence event arrives.
        n += sqlx::query(
            r#"insert into devices (id, created_at, state, state_since) values ($1, $2, 'never_seen', $2)
               on conflict (id) do nothing"#,
        )
        .bind(&d.id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if let Some(group) = &d.group {
            n += sqlx::query(
                "update devices set group_id = $2 where id = $1 and group_id is distinct from $2",
            )
            .bind(&d.id)
            .bind(group)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if d.clear_registry_group {
            n += sqlx::query(
                r#"update devices set group_id = null
                   where id = $1 and group_id in (select id from groups where source = 'inventory')"#,
            )
            .bind(&d.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if let Some((interval, grace)) = d.overrides {
            n += sqlx::query(
                r#"update devices set expected_interval_ms = $2, grace_ms = $3
                   where id = $1
                     and (expected_interval_ms, grace_ms) is distinct from ($2::bigint, $3::bigint)"#,
            )
            .bind(&d.id)
            .bind(interval)
            .bind(grace)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        n += sqlx::query(
            r#"insert into inventory_things (device_id, first_listed_at) values ($1, $2)
               on conflict (device_id) do nothing"#,
        )
        .bind(&d.id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    let clients: Vec<&String> = plan.clients.keys().collect();
    n += sqlx::query("delete from client_ids where source = 'inventory' and client_id <> all($1)")
        .bind(&clients)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    for (client, device) in &plan.clients {
        n += sqlx::query(
            r#"insert into client_ids as c (client_id, device_id, source, updated_at)
               values ($1, $2, 'inventory', $3)
               on conflict (client_id) do update set device_id = excluded.device_id, updated_at = $3
               where c.source = 'inventory' and c.device_id <> excluded.device_id"#,
        )
        .bind(client)
        .bind(device)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    tx.commit().await?;
    Ok(n)
}

/// What ingest keeps in memory of the registry: (client ID → device id of source
/// `inventory`, ids of the devices the registry lists).
pub async fn ingest_view(pool: &PgPool) -> sqlx::Result<(Vec<(String, String)>, Vec<String>)> {
    let clients = sqlx::query_as(
        "select client_id, device_id from client_ids where source = 'inventory' order by client_id",
    )
    .fetch_all(pool)
    .await?;
    let devices =
        sqlx::query_scalar("select device_id from inventory_things where gone_at is null")
            .fetch_all(pool)
            .await?;
    Ok((clients, devices))
}

/// Mark a registry device gone (`Some(at)`) or listed again (`None`).
pub async fn mark_gone(pool: &PgPool, device: &str, at: Option<DateTime<Utc>>) -> sqlx::Result<()> {
    sqlx::query("update inventory_things set gone_at = $2 where device_id = $1")
        .bind(device)
        .bind(at)
        .execute(pool)
        .await?;
    Ok(())
}

/// Who retired `device` last (the actor of its latest `retired` event), if it is retired.
pub async fn retired_by(pool: &PgPool, device: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        r#"select e.actor from devices d
           join device_events e on e.device_id = d.id and e.type = 'retired'
           where d.id = $1 and d.retired_at is not null
           order by e.id desc limit 1"#,
    )
    .bind(device)
    .fetch_optional(pool)
    .await
}

/// The stored connectivity of those of `ids` that are devices.
pub async fn connectivity_of(
    pool: &PgPool,
    ids: &[String],
) -> sqlx::Result<Vec<StoredConnectivity>> {
    sqlx::query_as(
        "select id, connected, conn_event_ts from devices where id = any($1) order by id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Apply a correction decided on `read`, only if the row still holds what was read; records it
/// in the device's history. Stored with `conn_version` null: only a presence event later than
/// the index's timestamp replaces it (`presence_is_newer`). Returns whether it was applied.
pub async fn correct_connectivity(
    pool: &PgPool,
    read: &StoredConnectivity,
    index: &IndexEntry,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    // A device in a gap is looked at again at once (its open alert may be reclassified), as a
    // presence change would do.
    let changed = sqlx::query(
        r#"update devices set connected = $2, conn_event_ts = $3, conn_version = null,
               conn_session = null, conn_received_at = $4,
               deadline_at = case when state in ('never_seen', 'late', 'silent', 'offline')
                                  then least(coalesce(deadline_at, $4), $4) else deadline_at end
           where id = $1 and connected is not distinct from $5
             and conn_event_ts is not distinct from $6"#,
    )
    .bind(&read.id)
    .bind(index.connected)
    .bind(index.at)
    .bind(now)
    .bind(read.connected)
    .bind(read.conn_event_ts)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if changed {
        crate::db::retirement::record(
            &mut tx,
            &read.id,
            now,
            "connectivity_corrected",
            ACTOR,
            json!({
                "connected": index.connected,
                "index_timestamp": index.at,
                "was_connected": read.connected,
                "was_as_of": read.conn_event_ts,
                "disconnect_reason": index.disconnect_reason,
            }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(changed)
}
