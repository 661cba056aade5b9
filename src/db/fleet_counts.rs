//! The fleet's counts tables (`device_state_counts`, `firing_alert_counts`, migration
//! `20261203002001`): devices per (group, effective state) and firing alerts per (kind,
//! severity, acknowledged, covered), kept by triggers on `devices` and `alerts` in the writing
//! transaction. Reads here cost the same at 100 devices and at 100,000.
//!
//! Contract: the count of a key is the sum of its rows' `n`; the triggers append `+1`/`-1`
//! deltas and nothing else, so writers never wait on each other here (see the migration for why
//! not an upsert per key). [`fold`] collapses the rows into one per non-zero key;
//! [`check_devices`]/[`check_alerts`] recount from the source tables and append the difference,
//! each in one statement (one snapshot), so a correction is exact whatever commits meanwhile.
//! The effective state is `retired` when `retired_at` is set, as everywhere else.

use sqlx::PgExecutor;

/// Devices per effective state, over all groups (states without devices are absent).
pub async fn devices_by_state(conn: impl PgExecutor<'_>) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        r#"select state, sum(n)::bigint from device_state_counts
           group by state having sum(n) <> 0"#,
    )
    .fetch_all(conn)
    .await
}

/// One key of the firing alert counts.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FiringCount {
    pub kind: String,
    pub severity: String,
    pub acknowledged: bool,
    pub covered: bool,
    pub n: i64,
}

/// Devices that count as reporting (for the fleet outage's share): not retired, seen at least
/// once. Read from the trigger-kept counts (the same definition, exact in every
/// snapshot), not by counting `devices`: the grouping pass asks every tick while gaps
/// are firing, and the count read the whole table, ≈ 95 ms a tick at a million devices
/// (issue 12, benches/detector.rs).
pub async fn count_reporting(conn: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        r#"select coalesce(sum(n), 0)::bigint from device_state_counts
           where state not in ('never_seen', 'retired')"#,
    )
    .fetch_one(conn)
    .await
}

/// Firing alerts per (kind, severity, acknowledged, covered); keys without alerts are absent.
pub async fn firing(conn: impl PgExecutor<'_>) -> sqlx::Result<Vec<FiringCount>> {
    sqlx::query_as(
        r#"select kind, severity, acknowledged, covered, sum(n)::bigint as n
           from firing_alert_counts
           group by kind, severity, acknowledged, covered having sum(n) <> 0
           order by kind, severity, acknowledged, covered"#,
    )
    .fetch_all(conn)
    .await
}

/// Where a page of groups starts: after the devices without a group (`Some(None)`) or after a
/// group id. The ungrouped devices come first, then groups by id in byte order.
pub type GroupAfter = Option<Option<String>>;

/// One (group, state) count of a page of groups; a group without devices has one row with
/// `state` null.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupStateCount {
    /// Null for the devices without a group.
    pub group_id: Option<String>,
    pub name: Option<String>,
    pub state: Option<String>,
    pub n: i64,
}

/// Per-group counts for up to `limit` groups after `after`: every configured or registry group
/// (with or without devices) and, first, the devices without a group when there are any.
/// Rows of one group are adjacent, in page order.
pub async fn groups_page(
    conn: impl PgExecutor<'_>,
    after: &GroupAfter,
    limit: i64,
) -> sqlx::Result<Vec<GroupStateCount>> {
    let (started, after_id) = match after {
        None => (false, None),
        Some(id) => (true, id.clone()),
    };
    sqlx::query_as(
        r#"with c as (
               select group_id, state, sum(n)::bigint as n from device_state_counts
               group by group_id, state having sum(n) <> 0
           ), keys as (
               select null::text as id, null::text as name
               where exists (select 1 from c where group_id is null)
               union all
               select id, name from groups
           ), page as (
               select id, name from keys
               where not $1 or (id is not null and ($2::text is null or id collate "C" > $2))
               order by id collate "C" nulls first
               limit $3
           )
           select p.id as group_id, p.name, c.state, coalesce(c.n, 0)::bigint as n
           from page p left join c on c.group_id is not distinct from p.id
           order by p.id collate "C" nulls first, c.state"#,
    )
    .bind(started)
    .bind(after_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Collapse both counts tables into one row per non-zero key; returns the rows removed.
/// Safe to run anywhere and concurrently: each statement deletes the rows its snapshot sees
/// and inserts their sums, atomically to every reader; a concurrent fold finds those rows
/// already deleted and skips them, and deltas committed meanwhile are left for the next fold.
pub async fn fold(conn: &mut sqlx::PgConnection) -> sqlx::Result<u64> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    // The rows are rewritten, no count changes: no live `devices` event (migration
    // 20261204001000).
    sqlx::query("set local fleetwatch.live_quiet = 'on'")
        .execute(&mut *tx)
        .await?;
    let devices: i64 = sqlx::query_scalar(
        r#"with gone as (delete from device_state_counts returning group_id, state, n),
                kept as (
                    insert into device_state_counts (group_id, state, n)
                    select group_id, state, sum(n) from gone
                    group by group_id, state having sum(n) <> 0
                    returning 1
                )
           select (select count(*) from gone) - (select count(*) from kept)"#,
    )
    .fetch_one(&mut *tx)
    .await?;
    let alerts: i64 = sqlx::query_scalar(
        r#"with gone as (
                    delete from firing_alert_counts
                    returning kind, severity, acknowledged, covered, n
                ),
                kept as (
                    insert into firing_alert_counts (kind, severity, acknowledged, covered, n)
                    select kind, severity, acknowledged, covered, sum(n) from gone
                    group by kind, severity, acknowledged, covered having sum(n) <> 0
                    returning 1
                )
           select (select count(*) from gone) - (select count(*) from kept)"#,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((devices.max(0) + alerts.max(0)) as u64)
}

/// A key whose stored count differed from a recount, and by how much (`recount - stored`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub key: String,
    pub delta: i64,
}

/// Recount devices per (group, effective state), append the difference to the stored counts
/// and return it (empty when they agree, which is what should always happen).
pub async fn check_devices(conn: impl PgExecutor<'_>) -> sqlx::Result<Vec<Drift>> {
    let rows: Vec<(Option<String>, String, i64)> = sqlx::query_as(
        r#"with drift as (
               select group_id, state, sum(n)::bigint as n from (
                   select group_id, device_count_state(state, retired_at) as state,
                          count(*) as n
                   from devices group by 1, 2
                   union all
                   select group_id, state, -n from device_state_counts
               ) x
               group by group_id, state having sum(n) <> 0
           )
           insert into device_state_counts (group_id, state, n)
           select group_id, state, n from drift
           returning group_id, state, n"#,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(g, s, n)| Drift {
            key: format!("group={} state={s}", g.as_deref().unwrap_or("-")),
            delta: n,
        })
        .collect())
}

/// Recount firing alerts per (kind, severity, acknowledged, covered), append the difference to
/// the stored counts and return it.
pub async fn check_alerts(conn: impl PgExecutor<'_>) -> sqlx::Result<Vec<Drift>> {
    let rows: Vec<(String, String, bool, bool, i64)> = sqlx::query_as(
        r#"with drift as (
               select kind, severity, acknowledged, covered, sum(n)::bigint as n from (
                   select kind, severity, acknowledged_by is not null as acknowledged,
                          covered_by is not null as covered, count(*) as n
                   from alerts where status = 'firing' group by 1, 2, 3, 4
                   union all
                   select kind, severity, acknowledged, covered, -n from firing_alert_counts
               ) x
               group by kind, severity, acknowledged, covered having sum(n) <> 0
           )
           insert into firing_alert_counts (kind, severity, acknowledged, covered, n)
           select kind, severity, acknowledged, covered, n from drift
           returning kind, severity, acknowledged, covered, n"#,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(k, s, a, c, n)| Drift {
            key: format!("kind={k} severity={s} acknowledged={a} covered={c}"),
            delta: n,
        })
        .collect())
}

/// Devices per (group, effective state) counted from `devices` itself: the slow recount the
/// counts replace, kept for tests and the benchmark's baseline.
pub async fn recount_devices(
    conn: impl PgExecutor<'_>,
) -> sqlx::Result<Vec<(Option<String>, String, i64)>> {
    sqlx::query_as(
        r#"select group_id, device_count_state(state, retired_at), count(*)
           from devices group by 1, 2 order by group_id collate "C" nulls first, 2"#,
    )
    .fetch_all(conn)
    .await
}

/// The stored device counts per (group, state), non-zero keys only, in [`recount_devices`]'s
/// order.
pub async fn stored_devices(
    conn: impl PgExecutor<'_>,
) -> sqlx::Result<Vec<(Option<String>, String, i64)>> {
    sqlx::query_as(
        r#"select group_id, state, sum(n)::bigint from device_state_counts
           group by 1, 2 having sum(n) <> 0 order by group_id collate "C" nulls first, 2"#,
    )
    .fetch_all(conn)
    .await
}
