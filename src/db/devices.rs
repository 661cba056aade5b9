//! Devices, groups and client-ID mappings: configuration sync at start and the read side of the
//! device API.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::config::Config;
use crate::domain::device::DeviceState;
use crate::domain::identity::Identity;

/// A device as the API shows it (DESIGN.md §4).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Device)]
pub struct DeviceRow {
    pub id: String,
    pub group: Option<String>,
    pub state: DeviceState,
    pub state_since: DateTime<Utc>,
    pub connected: Option<bool>,
    pub last_connected_at: Option<DateTime<Utc>>,
    pub last_disconnected_at: Option<DateTime<Utc>>,
    pub last_disconnect_reason: Option<String>,
    pub last_impression_at: Option<DateTime<Utc>>,
    pub last_device_ts: Option<DateTime<Utc>>,
    pub last_ip: Option<String>,
    pub last_principal: Option<String>,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

const DEVICE_COLUMNS: &str = r#"
    id, group_id as "group", state, state_since, connected, last_connected_at,
    last_disconnected_at, last_disconnect_reason, last_impression_at, last_device_ts, last_ip,
    last_principal, created_at, retired_at
"#;

/// Filters of `GET /devices`.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub state: Option<DeviceState>,
    pub group: Option<String>,
    /// Substring of the id, case-insensitive.
    pub q: Option<String>,
    /// `Some(true)`: connected now; `Some(false)`: not connected (disconnected, or never seen
    /// connecting: connectivity unknown counts as not connected).
    pub connected: Option<bool>,
    /// Only ids strictly after this (cursor).
    pub after: Option<String>,
    pub limit: i64,
}

fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

pub async fn list(pool: &PgPool, f: &DeviceFilter) -> sqlx::Result<Vec<DeviceRow>> {
    let sql = format!(
        r#"
        select {DEVICE_COLUMNS} from devices
        where ($1::text is null or state = $1)
          and ($2::text is null or group_id = $2)
          and ($3::text is null or id ilike $3)
          and ($4::text is null or id > $4)
          and ($6::boolean is null or (connected is true) = $6)
        order by id
        limit $5
        "#
    );
    sqlx::query_as::<_, DeviceRow>(&sql)
        .bind(f.state)
        .bind(&f.group)
        .bind(f.q.as_deref().map(like_escape))
        .bind(&f.after)
        .bind(f.limit)
        .bind(f.connected)
        .fetch_all(pool)
        .await
}

pub async fn get(pool: &PgPool, id: &str) -> sqlx::Result<Option<DeviceRow>> {
    let sql = format!("select {DEVICE_COLUMNS} from devices where id = $1");
    sqlx::query_as::<_, DeviceRow>(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn exists(pool: &PgPool, id: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("select exists(select 1 from devices where id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// Every device id, to warm the in-memory registry at start.
pub async fn all_ids(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("select id from devices")
        .fetch_all(pool)
        .await
}

fn ms(d: crate::config::HumanDuration) -> i64 {
    i64::try_from(d.0.as_millis()).unwrap_or(i64::MAX)
}

/// Write the configured groups and client-ID mappings, and put devices matching a group's
/// pattern into that group (rules may have changed since the devices were created).
pub async fn sync_config(pool: &PgPool, cfg: &Config, identity: &Identity) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    for (id, g) in &cfg.groups {
        sqlx::query(
            r#"
            insert into groups (id, name, time_zone, source, expected_interval_ms, grace_ms, quiet_hours)
            values ($1, $2, $3, 'config', $4, $5, $6)
            on conflict (id) do update set name = excluded.name, time_zone = excluded.time_zone,
                source = 'config', expected_interval_ms = excluded.expected_interval_ms,
                grace_ms = excluded.grace_ms, quiet_hours = excluded.quiet_hours, updated_at = now()
            "#,
        )
        .bind(id)
        .bind(g.name.as_deref().unwrap_or(id))
        .bind(g.time_zone.unwrap_or(cfg.fleet.time_zone).name())
        .bind(g.expected_interval.map(ms))
        .bind(g.grace.map(ms))
        .bind(g.quiet_hours.as_ref().map(|q| q.to_string()).unwrap_or_default())
        .execute(&mut *tx)
        .await?;
    }
    // Matched in Rust, not with Postgres' `~`: the two regex dialects differ.
    let current: Vec<(String, Option<String>)> =
        sqlx::query_as("select id, group_id from devices order by id")
            .fetch_all(&mut *tx)
            .await?;
    for (device, group) in current {
        if let Some(rule_group) = identity.group_for(&device, None) {
            if group.as_deref() != Some(rule_group.as_str()) {
                sqlx::query("update devices set group_id = $1 where id = $2")
                    .bind(&rule_group)
                    .bind(&device)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    // Device overrides: configured devices exist even before they report (that is the point
    // of configuring them); overrides removed from the file are cleared, except on devices the
    // IoT registry lists (their overrides are the registry's, rewritten by each sync).
    let overridden: Vec<&String> = cfg.devices.overrides.keys().collect();
    sqlx::query(
        r#"update devices set expected_interval_ms = null, grace_ms = null
           where (expected_interval_ms is not null or grace_ms is not null) and id <> all($1)
             and id not in (select device_id from inventory_things where gone_at is null)"#,
    )
    .bind(&overridden)
    .execute(&mut *tx)
    .await?;
    for (id, o) in &cfg.devices.overrides {
        sqlx::query(
            r#"insert into devices (id, group_id, expected_interval_ms, grace_ms) values ($1, $2, $3, $4)
               on conflict (id) do update set expected_interval_ms = excluded.expected_interval_ms,
                   grace_ms = excluded.grace_ms"#,
        )
        .bind(id)
        .bind(identity.group_for(id, None))
        .bind(o.expected_interval.map(ms))
        .bind(o.grace.map(ms))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("delete from client_ids where source = 'config'")
        .execute(&mut *tx)
        .await?;
    let mut pairs: Vec<(&String, &String)> = identity.client_map().iter().collect();
    pairs.sort();
    for (client, device) in pairs {
        sqlx::query(
            r#"insert into client_ids (client_id, device_id, source) values ($1, $2, 'config')
               on conflict (client_id) do update set device_id = excluded.device_id, updated_at = now()"#,
        )
        .bind(client)
        .bind(device)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Devices per state, retired devices counted as `retired` whatever their last state, by
/// counting the whole table: the summary reads `db::fleet_counts` instead; this stays as the
/// reference the tests and `benches/summary.rs` compare the counts with.
pub async fn count_by_state(conn: impl sqlx::PgExecutor<'_>) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        r#"select case when retired_at is not null then 'retired' else state end, count(*)
           from devices group by 1"#,
    )
    .fetch_all(conn)
    .await
}

/// The reporting devices (as [`super::fleet_counts::count_reporting`] counts them) whose last
/// connection came from each of `networks`: (network, count) for each with any.
pub async fn count_reporting_by_network(
    conn: impl sqlx::PgExecutor<'_>,
    networks: &[&str],
) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        r#"select network, count(*) from devices
           where network = any($1) and retired_at is null
             and state not in ('never_seen', 'retired')
           group by network"#,
    )
    .bind(networks)
    .fetch_all(conn)
    .await
}

/// (id, name, time zone) of each of the groups `ids` that exists.
pub async fn group_names(
    conn: impl sqlx::PgExecutor<'_>,
    ids: &[&str],
) -> sqlx::Result<Vec<(String, String, String)>> {
    sqlx::query_as("select id, name, time_zone from groups where id = any($1)")
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// (id, group) of each of the devices `ids` that exists.
pub async fn groups_of(
    conn: impl sqlx::PgExecutor<'_>,
    ids: &[String],
) -> sqlx::Result<Vec<(String, Option<String>)>> {
    sqlx::query_as("select id, group_id from devices where id = any($1)")
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// (id, name) of the first `limit` groups by id, for the device list's group filter. The
/// groups table is small next to devices (buildings, not screens); the caller asks for one more
/// than it shows to know whether the list is whole.
pub async fn group_choices(
    conn: impl sqlx::PgExecutor<'_>,
    limit: i64,
) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as("select id, name from groups order by id limit $1")
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// The client IDs mapped to `device` (`client_ids`: configuration and registry mappings whose
/// client ID differs from the device id), at most `limit`, for the device page. No index on
/// `device_id`: the table holds only the exceptions, not one row per device.
pub async fn client_ids_of(
    conn: impl sqlx::PgExecutor<'_>,
    device: &str,
    limit: i64,
) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "select client_id, source from client_ids where device_id = $1 order by client_id limit $2",
    )
    .bind(device)
    .bind(limit)
    .fetch_all(conn)
    .await
}
