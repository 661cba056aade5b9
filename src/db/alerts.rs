//! The `alerts` and `alert_events` tables: the trail insert, the alert as the API shows it
//! (`AlertRow`, read in a transaction or from the pool), lists, counts, the inhibition link and
//! the firing gaps and outages the grouping pass reads, and the state machine's writes (fire,
//! reopen, resolve, cover, acknowledge, ticket). The state machine that decides what to write,
//! and which trail and outbox rows go with it, is `alerts::lifecycle`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::db::detector::GapMemory;
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
    /// Only alerts of this severity (the dashboard's filter; the API does not offer it).
    pub severity: Option<Severity>,
    /// Only acknowledged (`true`) or unacknowledged (`false`) alerts (the dashboard's filter).
    pub acked: Option<bool>,
}

/// The `where` of [`list`] and [`ids_matching`]: one definition of what a filter matches.
const LIST_WHERE: &str = r#"($1::text is null or status = $1)
             and ($2::text is null or kind = $2)
             and ($3::text is null or device_id = $3)
             and ($4::text is null or group_id = $4)
             and ($5::timestamptz is null or (opened_at, id) < ($5, $6))
             and ($8::text is null or severity = $8)
             and ($9::bool is null or (acknowledged_by is not null) = $9)"#;

pub async fn list(pool: &PgPool, f: &AlertFilter) -> sqlx::Result<Vec<AlertRow>> {
    let (ts, id) = f.before.unzip();
    let sql = format!(
        r#"select {ALERT_COLUMNS} from alerts
           where {LIST_WHERE}
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
        .bind(f.severity)
        .bind(f.acked)
        .fetch_all(pool)
        .await
}

/// The ids [`list`] would return for `f` (newest first, at most `f.limit`): what the
/// dashboard's "everything this filter matches" actions go through, without reading rows.
pub async fn ids_matching(pool: &PgPool, f: &AlertFilter) -> sqlx::Result<Vec<i64>> {
    let (ts, id) = f.before.unzip();
    let sql = format!(
        r#"select id from alerts
           where {LIST_WHERE}
           order by opened_at desc, id desc
           limit $7"#
    );
    sqlx::query_scalar(&sql)
        .bind(f.status)
        .bind(f.kind)
        .bind(&f.device)
        .bind(&f.group)
        .bind(ts)
        .bind(id)
        .bind(f.limit)
        .bind(f.severity)
        .bind(f.acked)
        .fetch_all(pool)
        .await
}

/// The alerts among `ids` (the dashboard's selected rows), in id order; unknown ids are
/// skipped. The caller bounds `ids`.
pub async fn get_many(pool: &PgPool, ids: &[i64]) -> sqlx::Result<Vec<AlertRow>> {
    let sql = format!("select {ALERT_COLUMNS} from alerts where id = any($1) order by id");
    sqlx::query_as::<_, AlertRow>(&sql)
        .bind(ids)
        .fetch_all(pool)
        .await
}

/// Up to `limit` alerts that alert `id` covers (`covered_by`, an outage speaking for device
/// alerts), newest first: the alert page. Index `alerts_covered_idx`.
pub async fn covered_by(pool: &PgPool, id: i64, limit: i64) -> sqlx::Result<Vec<AlertRow>> {
    linked_to(pool, "covered_by", id, limit).await
}

/// Up to `limit` alerts that alert `id` inhibits (`inhibited_by`), newest first: the alert
/// page. Index `alerts_inhibited_idx` (migration 20261205000300).
pub async fn inhibited_by(pool: &PgPool, id: i64, limit: i64) -> sqlx::Result<Vec<AlertRow>> {
    linked_to(pool, "inhibited_by", id, limit).await
}

async fn linked_to(
    pool: &PgPool,
    column: &'static str,
    id: i64,
    limit: i64,
) -> sqlx::Result<Vec<AlertRow>> {
    let sql = format!(
        "select {ALERT_COLUMNS} from alerts where {column} = $1
         order by opened_at desc, id desc limit $2"
    );
    sqlx::query_as::<_, AlertRow>(&sql)
        .bind(id)
        .bind(limit)
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
/// A scan of the firing alerts: the summary reads `db::fleet_counts` instead; this stays as the
/// reference the tests and `benches/summary.rs` compare the counts with.
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
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FiringGap {
    pub id: i64,
    pub device_id: Option<String>,
    pub group_id: Option<String>,
    /// When it last became firing: a reopened alert keeps its original `opened_at`, and a
    /// device whose short gap was reopened in the power cut went silent with the others.
    pub since: DateTime<Utc>,
    /// Whether its device counts towards the fleet's reporting devices.
    pub reporting: bool,
    /// The network its device's last connection came from (`devices.network`), if known.
    pub network: Option<String>,
    /// Whether an outage covers it already.
    pub covered: bool,
}

/// A firing group or fleet outage.
#[derive(Debug, sqlx::FromRow)]
pub struct FiringOutage {
    pub id: i64,
    pub kind: String,
    pub subject: String,
    pub details: Value,
}

/// Firing alerts that grouping looks at: (heartbeat gaps, group, network and fleet outages).
/// One aggregate over the partial index of firing alerts.
pub async fn firing_gaps_and_outages(conn: impl PgExecutor<'_>) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        r#"select count(*) filter (where kind = 'heartbeat_gap'),
                  count(*) filter (where kind <> 'heartbeat_gap')
           from alerts
           where status = 'firing'
             and kind in ('heartbeat_gap', 'group_outage', 'network_outage', 'fleet_outage')"#,
    )
    .fetch_one(conn)
    .await
}

/// Every firing heartbeat gap, oldest first, with when it last became firing and whether its
/// device counts as reporting.
pub async fn firing_gaps(conn: impl PgExecutor<'_>) -> sqlx::Result<Vec<FiringGap>> {
    firing_gaps_where(conn, None).await
}

/// [`firing_gaps`] of the devices in `groups` only (the groups a tick's openings fall in).
pub async fn firing_gaps_in_groups(
    conn: impl PgExecutor<'_>,
    groups: &[&str],
) -> sqlx::Result<Vec<FiringGap>> {
    firing_gaps_where(conn, Some(groups)).await
}

async fn firing_gaps_where(
    conn: impl PgExecutor<'_>,
    groups: Option<&[&str]>,
) -> sqlx::Result<Vec<FiringGap>> {
    sqlx::query_as(
        r#"select a.id, a.device_id, a.group_id,
                  coalesce((select max(e.at) from alert_events e
                            where e.alert_id = a.id and e.type = 'reopened'),
                           a.opened_at) as since,
                  coalesce(d.retired_at is null and d.state not in ('never_seen', 'retired'),
                           false) as reporting,
                  d.network, a.covered_by is not null as covered
           from alerts a left join devices d on d.id = a.device_id
           where a.kind = 'heartbeat_gap' and a.status = 'firing'
             and ($1::text[] is null or a.group_id = any($1))
           order by a.id"#,
    )
    .bind(groups)
    .fetch_all(conn)
    .await
}

/// Every firing group, network or fleet outage, oldest first.
pub async fn firing_outages(conn: impl PgExecutor<'_>) -> sqlx::Result<Vec<FiringOutage>> {
    sqlx::query_as(
        r#"select id, kind, subject, details from alerts
           where status = 'firing' and kind in ('group_outage', 'network_outage', 'fleet_outage')
           order by id"#,
    )
    .fetch_all(conn)
    .await
}

/// The ids of the firing group and network outages (what a fleet outage covers besides the
/// gaps), oldest first.
pub async fn firing_group_and_network_outage_ids(
    conn: impl PgExecutor<'_>,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        r#"select id from alerts
           where kind in ('group_outage', 'network_outage') and status = 'firing' order by id"#,
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

// The writes of the alert state machine (`alerts::lifecycle`), each in the caller's
// transaction. The decisions (which of these, and the trail and outbox rows that go with them)
// stay in `lifecycle`.

/// The firing alert of a (kind, subject) with what `fire` compares (summary, details,
/// severity), locked for the caller's transaction.
pub async fn lock_firing(
    conn: &mut PgConnection,
    kind: Kind,
    subject: &str,
) -> sqlx::Result<Option<(i64, String, Value, String)>> {
    sqlx::query_as(
        r#"select id, summary, details, severity from alerts
           where kind = $1 and subject = $2 and status = 'firing' for update"#,
    )
    .bind(kind.as_str())
    .bind(subject)
    .fetch_optional(conn)
    .await
}

/// The last alert of a (kind, subject) that resolved at or after `since`, locked.
pub async fn lock_resolved_since(
    conn: &mut PgConnection,
    kind: Kind,
    subject: &str,
    since: DateTime<Utc>,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        r#"select id from alerts
           where kind = $1 and subject = $2 and status = 'resolved' and resolved_at >= $3
           order by resolved_at desc limit 1 for update"#,
    )
    .bind(kind.as_str())
    .bind(subject)
    .bind(since)
    .fetch_optional(conn)
    .await
}

/// Make an existing alert firing with new text: an update of a firing alert or the reopening
/// of a resolved one (which drops the outage cover and inhibition it had when it resolved).
pub async fn refire(
    conn: &mut PgConnection,
    id: i64,
    summary: &str,
    details: &Value,
    severity: Severity,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"update alerts set status = 'firing', resolved_at = null, summary = $2, details = $3,
               severity = $4, updated_at = $5,
               covered_by = case when status = 'resolved' then null else covered_by end,
               inhibited_by = case when status = 'resolved' then null else inhibited_by end
           where id = $1"#,
    )
    .bind(id)
    .bind(summary)
    .bind(details)
    .bind(severity.as_str())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A new firing alert. Returns its id.
#[allow(clippy::too_many_arguments)]
pub async fn insert_firing(
    conn: &mut PgConnection,
    kind: Kind,
    subject: &str,
    device_id: Option<&str>,
    group_id: Option<&str>,
    severity: Severity,
    now: DateTime<Utc>,
    summary: &str,
    details: &Value,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        r#"insert into alerts (kind, subject, device_id, group_id, severity, status, opened_at,
                               summary, details, updated_at)
           values ($1, $2, $3, $4, $5, 'firing', $6, $7, $8, $6)
           returning id"#,
    )
    .bind(kind.as_str())
    .bind(subject)
    .bind(device_id)
    .bind(group_id)
    .bind(severity.as_str())
    .bind(now)
    .bind(summary)
    .bind(details)
    .fetch_one(conn)
    .await
}

/// A new firing alert for [`insert_firing_many`].
#[derive(Debug, Clone, Copy)]
pub struct NewFiring<'a> {
    pub subject: &'a str,
    pub device_id: Option<&'a str>,
    pub group_id: Option<&'a str>,
    pub severity: Severity,
    pub summary: &'a str,
    pub details: &'a Value,
    /// A heartbeat gap's memory, written with the alert (a separate update of thousands of
    /// fresh rows cost a fifth of a mass gap's tick).
    pub gap: Option<GapMemory>,
    /// The outage that covers it from the start (a gap opening in a building that is dark).
    pub covered_by: Option<i64>,
}

/// [`insert_firing`] for many alerts of one kind in one statement. Returns (subject, id) of
/// each, in no particular order: subjects must be distinct.
pub async fn insert_firing_many(
    conn: &mut PgConnection,
    kind: Kind,
    alerts: &[NewFiring<'_>],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<(String, i64)>> {
    macro_rules! column {
        ($f:expr) => {
            alerts.iter().map($f).collect::<Vec<_>>()
        };
    }
    sqlx::query_as(
        r#"insert into alerts (kind, subject, device_id, group_id, severity, status, opened_at,
                               summary, details, updated_at, gap_class, gap_last_data_at,
                               gap_last_device_ts, covered_by)
           select $1, subject, device_id, group_id, severity, 'firing', $2, summary, details, $2,
                  gap_class, gap_last_data_at, gap_last_device_ts, covered_by
           from unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[],
                       $9::text[], $10::timestamptz[], $11::timestamptz[], $12::bigint[])
                as u(subject, device_id, group_id, severity, summary, details, gap_class,
                     gap_last_data_at, gap_last_device_ts, covered_by)
           returning subject, id"#,
    )
    .bind(kind.as_str())
    .bind(now)
    .bind(column!(|a| a.subject))
    .bind(column!(|a| a.device_id))
    .bind(column!(|a| a.group_id))
    .bind(column!(|a| a.severity.as_str()))
    .bind(column!(|a| a.summary))
    .bind(column!(|a| a.details))
    .bind(column!(|a| a.gap.map(|g| g.class.as_str())))
    .bind(column!(|a| a.gap.and_then(|g| g.last_data_at)))
    .bind(column!(|a| a.gap.and_then(|g| g.last_device_ts)))
    .bind(column!(|a| a.covered_by))
    .fetch_all(conn)
    .await
}

/// [`insert_event`] for many alerts in one statement: one entry of type `kind` by `actor` on
/// each alert's trail, with its own details.
pub async fn insert_events_many(
    conn: &mut PgConnection,
    entries: &[(i64, Value)],
    at: DateTime<Utc>,
    kind: &str,
    actor: &str,
) -> sqlx::Result<()> {
    let ids: Vec<i64> = entries.iter().map(|e| e.0).collect();
    let details: Vec<&Value> = entries.iter().map(|e| &e.1).collect();
    sqlx::query(
        r#"insert into alert_events (alert_id, at, type, actor, details)
           select id, $1, $2, $3, details from unnest($4::bigint[], $5::jsonb[]) as u(id, details)"#,
    )
    .bind(at)
    .bind(kind)
    .bind(actor)
    .bind(ids)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// A firing alert's (id, summary, details, severity): what [`crate::alerts::lifecycle::fire`]
/// compares a spec with.
pub type FiringSpec = (i64, String, Value, String);

/// The subjects among `subjects` that have an alert of `kind` firing, or one that resolved at
/// or after `since`: [`crate::alerts::lifecycle::fire`] must update or reopen those, not open.
/// Each with its firing alert, if it has one (read, not locked).
pub async fn recent_subjects(
    conn: &mut PgConnection,
    kind: Kind,
    subjects: &[&str],
    since: DateTime<Utc>,
) -> sqlx::Result<Vec<(String, Option<FiringSpec>)>> {
    type Row = (
        String,
        Option<i64>,
        Option<String>,
        Option<Value>,
        Option<String>,
    );
    // One index probe per subject (`alerts_subject_idx`), whatever the statistics say: a
    // filter of the kind's every alert by a thousand-subject array, chosen when the table
    // looked small, cost a mass gap's chunks up to 180 ms each.
    let rows: Vec<Row> = sqlx::query_as(
        r#"select s.subject, a.id, a.summary, a.details, a.severity
           from unnest($2::text[]) as s(subject)
           cross join lateral (
               select case when status = 'firing' then id end as id,
                      case when status = 'firing' then summary end as summary,
                      case when status = 'firing' then details end as details,
                      case when status = 'firing' then severity end as severity
               from alerts
               where kind = $1 and subject = s.subject
                 and (status = 'firing' or resolved_at >= $3)
               order by status = 'firing' desc
               limit 1
           ) as a"#,
    )
    .bind(kind.as_str())
    .bind(subjects)
    .bind(since)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(subject, id, summary, details, severity)| {
            let firing = match (id, summary, details, severity) {
                (Some(id), Some(summary), Some(details), Some(severity)) => {
                    Some((id, summary, details, severity))
                }
                _ => None,
            };
            (subject, firing)
        })
        .collect())
}

/// [`snapshot`] of many alerts, in one statement (missing ids are left out).
pub async fn snapshots(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<Vec<AlertRow>> {
    let sql = format!("select {ALERT_COLUMNS} from alerts where id = any($1) order by id");
    sqlx::query_as::<_, AlertRow>(&sql)
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// Replace an alert's summary and details (a reclassification).
pub async fn set_summary(
    conn: &mut PgConnection,
    id: i64,
    summary: &str,
    details: &Value,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query("update alerts set summary = $2, details = $3, updated_at = $4 where id = $1")
        .bind(id)
        .bind(summary)
        .bind(details)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Resolve a firing alert, merging `outcome` into its details. Returns false if it was not
/// firing.
pub async fn resolve(
    conn: &mut PgConnection,
    id: i64,
    now: DateTime<Utc>,
    summary: Option<&str>,
    outcome: &Value,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        r#"update alerts set status = 'resolved', resolved_at = $2,
               summary = coalesce($3, summary), details = details || $4, updated_at = $2
           where id = $1 and status = 'firing'"#,
    )
    .bind(id)
    .bind(now)
    .bind(summary)
    .bind(outcome)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The firing alert of a (kind, subject), if any.
pub async fn firing_id(
    conn: &mut PgConnection,
    kind: Kind,
    subject: &str,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "select id from alerts where kind = $1 and subject = $2 and status = 'firing'",
    )
    .bind(kind.as_str())
    .bind(subject)
    .fetch_optional(conn)
    .await
}

/// Cover each firing alert of `(alert, outage)` pairs not yet covered by the outage (never
/// itself), in one statement. Returns the pairs newly covered.
pub async fn cover_many(
    conn: &mut PgConnection,
    pairs: &[(i64, i64)],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<(i64, i64)>> {
    let mut sorted = pairs.to_vec();
    // Row locks in id order.
    sorted.sort_unstable();
    let ids: Vec<i64> = sorted.iter().map(|p| p.0).collect();
    let by: Vec<i64> = sorted.iter().map(|p| p.1).collect();
    sqlx::query_as(
        r#"update alerts a set covered_by = u.by, updated_at = $3
           from unnest($1::bigint[], $2::bigint[]) as u(id, by)
           where a.id = u.id and a.covered_by is null and a.status = 'firing' and a.id <> u.by
           returning a.id, u.by"#,
    )
    .bind(ids)
    .bind(by)
    .bind(now)
    .fetch_all(conn)
    .await
}

/// Release the still-firing alerts outage `by` covered. Returns their ids.
pub async fn uncover(
    conn: &mut PgConnection,
    by: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        r#"update alerts set covered_by = null, updated_at = $2
           where covered_by = $1 and status = 'firing' returning id"#,
    )
    .bind(by)
    .bind(now)
    .fetch_all(conn)
    .await
}

/// Who acknowledged alert `id` (None inside: nobody yet), locked; None for an unknown alert.
pub async fn lock_acknowledged_by(
    conn: &mut PgConnection,
    id: i64,
) -> sqlx::Result<Option<Option<String>>> {
    sqlx::query_scalar("select acknowledged_by from alerts where id = $1 for update")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Record an acknowledgement.
pub async fn set_acknowledged(
    conn: &mut PgConnection,
    id: i64,
    principal: &str,
    now: DateTime<Utc>,
    note: Option<&str>,
    on_behalf_of: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"update alerts set acknowledged_by = $2, acknowledged_at = $3, ack_note = $4,
               ack_on_behalf_of = $5, updated_at = $3 where id = $1"#,
    )
    .bind(id)
    .bind(principal)
    .bind(now)
    .bind(note)
    .bind(on_behalf_of)
    .execute(conn)
    .await?;
    Ok(())
}

/// Alert `id`'s ticket (reference, URL), locked; None for an unknown alert.
pub async fn lock_ticket(
    conn: &mut PgConnection,
    id: i64,
) -> sqlx::Result<Option<(Option<String>, Option<String>)>> {
    sqlx::query_as("select ticket_ref, ticket_url from alerts where id = $1 for update")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Attach (or replace) alert `id`'s ticket.
pub async fn set_ticket(
    conn: &mut PgConnection,
    id: i64,
    reference: &str,
    url: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "update alerts set ticket_ref = $2, ticket_url = $3, updated_at = $4 where id = $1",
    )
    .bind(id)
    .bind(reference)
    .bind(url)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Retention: delete at most `limit` alerts resolved before `before`, with their trail and
/// notifications; a firing alert, however old, is kept whole. Alerts they covered forget the
/// cover first (the reference would dangle). Returns how many alerts.
pub async fn delete_resolved_before(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "with old as (
             select id from alerts where status = 'resolved' and resolved_at < $1 limit $2
         ), uncover as (
             update alerts set covered_by = null
             where covered_by in (select id from old) and id not in (select id from old)
         ), events as (
             delete from alert_events where alert_id in (select id from old)
         ), notes as (
             delete from notifications where alert_id in (select id from old)
         )
         delete from alerts where id in (select id from old)",
    )
    .bind(before)
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}

/// One entry of the overview's feed: an alert event with what the alert is about.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeedRow {
    pub at: DateTime<Utc>,
    #[sqlx(rename = "type")]
    pub event: String,
    pub actor: String,
    pub alert_id: i64,
    pub kind: String,
    pub subject: String,
    pub device_id: Option<String>,
    pub severity: String,
}

/// The newest `limit` alert events of the whole fleet (the overview's feed of state changes),
/// newest first: a backward scan of `alert_events_at_idx`, so it costs the same at any size.
pub async fn recent_events(conn: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<FeedRow>> {
    sqlx::query_as(
        r#"select e.at, e.type, e.actor, a.id as alert_id, a.kind, a.subject, a.device_id,
                  a.severity
           from (select * from alert_events order by at desc limit $1) e
           join alerts a on a.id = e.alert_id
           order by e.at desc, e.id desc"#,
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The trail entries of `ids` that change whether and how an alert fires (`opened`,
/// `reopened`, `reclassified`, `resolved`), by alert then in order: the device page draws its
/// heartbeat strip from them in one query (the callers bound `ids`).
pub async fn firing_trail_of(pool: &PgPool, ids: &[i64]) -> sqlx::Result<Vec<(i64, EventRow)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        alert_id: i64,
        #[sqlx(flatten)]
        event: EventRow,
    }
    let rows: Vec<Row> = sqlx::query_as(
        r#"select alert_id, id, at, type, actor, details from alert_events
           where alert_id = any($1)
             and type in ('opened', 'reopened', 'reclassified', 'resolved')
           order by alert_id, id"#,
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.alert_id, r.event)).collect())
}
