//! The `alerts` and `alert_events` tables: the trail insert, the alert as the API shows it
//! (`AlertRow`, read in a transaction or from the pool), lists, counts, the inhibition link and
//! the firing gaps and outages the grouping pass reads.
//! The state machine that decides what to write is `alerts::lifecycle`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::domain::alert::{Kind, Severity, Status};

/// Append an entry to alert `alert_id`'s trail (`alert_events`), in the caller's transaction.
pub async fn insert_event(
    conn: &mut PgConnection,
    alert_id: i64,
    at: DateTime<Utc>,
    kind: &str,
    actor: &str,
    details: Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into alert_events (alert_id, at, type, actor, details) values ($1, $2, $3, $4, $5)",
    )
    .bind(alert_id)
    .bind(at)
    .bind(kind)
    .bind(actor)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// The JSON snapshot stored in `notifications.body`.
pub fn body_of(alert: &AlertRow) -> sqlx::Result<Value> {
    serde_json::to_value(alert).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// The alert as the API shows it, read inside the caller's transaction.
pub async fn snapshot(conn: &mut PgConnection, alert_id: i64) -> sqlx::Result<Option<AlertRow>> {
    let sql = format!("select {ALERT_COLUMNS} from alerts where id = $1");
    sqlx::query_as::<_, AlertRow>(&sql)
        .bind(alert_id)
        .fetch_optional(conn)
        .await
}

/// An alert as the API shows it (DESIGN.md §4).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Alert)]
pub struct AlertRow {
    pub id: i64,
    pub kind: Kind,
    pub subject: String,
    pub device_id: Option<String>,
    pub group: Option<String>,
    pub severity: Severity,
    pub status: Status,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub summary: String,
    #[schema(value_type = Object)]
    pub details: Value,
    pub covered_by: Option<i64>,
    /// The firing alert that speaks for this one (inhibition rules): recorded, not notified.
    pub inhibited_by: Option<i64>,
    /// The principal that acknowledged: `token:<id>:<name>` (or `user:<name>`).
    pub acknowledged_by: Option<String>,
    /// The name the acknowledging request gave (`by`), if any: shown, not authenticated.
    pub acknowledged_on_behalf_of: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub ack_note: Option<String>,
    pub ticket_ref: Option<String>,
    pub ticket_url: Option<String>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) const ALERT_COLUMNS: &str = r#"
    id, kind, subject, device_id, group_id as "group", severity, status, opened_at, resolved_at,
    summary, details, covered_by, inhibited_by, acknowledged_by, ack_on_behalf_of as acknowledged_on_behalf_of,
    acknowledged_at, ack_note, ticket_ref, ticket_url, updated_at
"#;

/// One entry of an alert's trail.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = AlertEvent)]
pub struct EventRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    pub actor: String,
    #[schema(value_type = Object)]
    pub details: Value,
}

/// Filters of `GET /alerts`.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub status: Option<Status>,
    pub kind: Option<Kind>,
    pub device: Option<String>,
    pub group: Option<String>,
    /// Only alerts strictly before this (opened_at, id), newest first.
    pub before: Option<(DateTime<Utc>, i64)>,
    pub limit: i64,
}

pub async fn list(pool: &PgPool, f: &AlertFilter) -> sqlx::Result<Vec<AlertRow>> {
    let (ts, id) = f.before.unzip();
    let sql = format!(
        r#"select {ALERT_COLUMNS} from alerts
           where ($1::text is null or status = $1)
             and ($2::text is null or kind = $2)
             and ($3::text is null or device_id = $3)
             and ($4::text is null or group_id = $4)
             and ($5::timestamptz is null or (opened_at, id) < ($5, $6))
           order by opened_at desc, id desc
           limit $7"#
    );
    sqlx::query_as::<_, AlertRow>(&sql)
        .bind(f.status)
        .bind(f.kind)
        .bind(&f.device)
        .bind(&f.group)
        .bind(ts)
        .bind(id)
        .bind(f.limit)
        .fetch_all(pool)
        .await
}

pub async fn get(pool: &PgPool, id: i64) -> sqlx::Result<Option<AlertRow>> {
    let sql = format!("select {ALERT_COLUMNS} from alerts where id = $1");
    sqlx::query_as::<_, AlertRow>(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn events(pool: &PgPool, id: i64) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as::<_, EventRow>(
        "select id, at, type, actor, details from alert_events where alert_id = $1 order by id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// Link every firing target alert that no endpoint was (possibly) told about to a firing
/// source alert under the rules given as parallel arrays (`sources[i]` inhibits `targets[i]`
/// where `equal[i]` matches: `subject`, or the device). Returns the (target, source) pairs
/// newly linked. The caller writes their trail.
pub async fn link_inhibited(
    conn: &mut PgConnection,
    sources: &[&str],
    targets: &[&str],
    equal: &[&str],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<(i64, i64)>> {
    let linked: Vec<(i64, i64)> = sqlx::query_as(
        r#"with rules (source, target, equal) as (
               select * from unnest($1::text[], $2::text[], $3::text[])),
           hits as (
               select distinct on (t.id) t.id as target_id, s.id as source_id
               from alerts t
               join rules r on r.target = t.kind
               join alerts s on s.kind = r.source and s.status = 'firing' and s.id <> t.id
                 and case r.equal
                       when 'subject' then s.subject = t.subject
                       else coalesce(s.device_id, s.subject) = coalesce(t.device_id, t.subject)
                     end
               where t.status = 'firing' and t.inhibited_by is null
                 -- told, or possibly told (an attempt was made): not taken back
                 and not exists (select 1 from notifications n
                                 where n.alert_id = t.id and n.event = 'alert.firing'
                                   and (n.status in ('delivered', 'dead') or n.attempts > 0))
               order by t.id, s.id)
           update alerts a set inhibited_by = h.source_id, updated_at = $4
           from hits h
           -- re-checked on the row the update locks, should a concurrent change have won
           where a.id = h.target_id and a.status = 'firing' and a.inhibited_by is null
           returning a.id, h.source_id"#,
    )
    .bind(sources)
    .bind(targets)
    .bind(equal)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    Ok(linked)
}

/// Firing alerts per kind: (kind, firing, covered by an outage, unacknowledged).
pub async fn firing_by_kind(
    conn: impl sqlx::PgExecutor<'_>,
) -> sqlx::Result<Vec<(String, i64, i64, i64)>> {
    sqlx::query_as(
        r#"select kind, count(*), count(covered_by), count(*) filter (where acknowledged_by is null)
           from alerts where status = 'firing' group by kind"#,
    )
    .fetch_all(conn)
    .await
}

/// The ids of `device`'s firing alerts, locked for the caller's transaction, oldest first.
pub async fn lock_firing_of_device(
    conn: &mut PgConnection,
    device: &str,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        r#"select id from alerts where device_id = $1 and status = 'firing' order by id
           for update"#,
    )
    .bind(device)
    .fetch_all(conn)
    .await
}

/// A firing heartbeat-gap alert, as grouping sees it.
#[derive(Debug, sqlx::FromRow)]
pub struct FiringGap {
    pub id: i64,
    pub device_id: Option<String>,
    pub group_id: Option<String>,
    /// When it last became firing: a reopened alert keeps its original `opened_at`, and a
    /// device whose short gap was reopened in the power cut went silent with the others.
    pub since: DateTime<Utc>,
    /// Whether its device counts towards the fleet's reporting devices.
    pub reporting: bool,
}

/// A firing group or fleet outage.
#[derive(Debug, sqlx::FromRow)]
pub struct FiringOutage {
    pub id: i64,
    pub kind: String,
    pub subject: String,
    pub details: Value,
}

/// Firing alerts that grouping looks at: (heartbeat gaps, group and fleet outages). One
/// aggregate over the partial index of firing alerts.
pub async fn firing_gaps_and_outages(conn: impl PgExecutor<'_>) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        r#"select count(*) filter (where kind = 'heartbeat_gap'),
                  count(*) filter (where kind <> 'heartbeat_gap')
           from alerts
           where status = 'firing' and kind in ('heartbeat_gap', 'group_outage', 'fleet_outage')"#,
    )
    .fetch_one(conn)
    .await
}

/// Every firing heartbeat gap, oldest first, with when it last became firing and whether its
/// device counts as reporting.
pub async fn firing_gaps(conn: impl PgExecutor<'_>) -> sqlx::Result<Vec<FiringGap>> {
    sqlx::query_as(
        r#"select a.id, a.device_id, a.group_id,
                  coalesce((select max(e.at) from alert_events e
                            where e.alert_id = a.id and e.type = 'reopened'),
                           a.opened_at) as since,
                  coalesce(d.retired_at is null and d.state not in ('never_seen', 'retired'),
                           false) as reporting
           from alerts a left join devices d on d.id = a.device_id
           where a.kind = 'heartbeat_gap' and a.status = 'firing'
           order by a.id"#,
    )
    .fetch_all(conn)
    .await
}

/// Every firing group or fleet outage, oldest first.
pub async fn firing_outages(conn: impl PgExecutor<'_>) -> sqlx::Result<Vec<FiringOutage>> {
    sqlx::query_as(
        r#"select id, kind, subject, details from alerts
           where status = 'firing' and kind in ('group_outage', 'fleet_outage')
           order by id"#,
    )
    .fetch_all(conn)
    .await
}

/// The ids of the firing group outages, oldest first.
pub async fn firing_group_outage_ids(conn: impl PgExecutor<'_>) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "select id from alerts where kind = 'group_outage' and status = 'firing' order by id",
    )
    .fetch_all(conn)
    .await
}

/// (kind, subject) of the firing alerts of `kinds`, in that order.
pub async fn firing_subjects(
    conn: impl PgExecutor<'_>,
    kinds: &[&str],
) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        r#"select kind, subject from alerts
           where status = 'firing' and kind = any($1) order by kind, subject"#,
    )
    .bind(kinds)
    .fetch_all(conn)
    .await
}
