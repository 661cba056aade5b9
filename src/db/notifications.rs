//! The `notifications` table: the one place a notification is written, "what was this endpoint
//! last told" (`told`, `last_told`, `last_told_id`), the deliveries list and re-drive, and the
//! dead-lettering of endpoints no longer configured, and the delivery worker's queries (the
//! reminder and silence-ended pass locks, reminders due, the `for update skip locked` claim, the
//! lease, attempts and outcomes). What to do with a claimed row (`decide`) stays in
//! `alerts::webhook`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::domain::notification::{Event, NotificationStatus};

/// A notification to queue for one endpoint.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    pub alert_id: i64,
    pub endpoint: &'a str,
    pub event: Event,
    /// The alert as the receiver will see it (a snapshot taken now).
    pub body: &'a Value,
    /// When it may first be sent (after `group_wait` / `resolve_wait`, or now).
    pub due: DateTime<Utc>,
}

/// Queue `n`: pending, its retry schedule counting from `now`. With `silenced_by`, the row is
/// written all the same (the history says why nothing was sent) but finished at once,
/// `superseded`, naming the silence.
pub async fn insert(
    conn: impl PgExecutor<'_>,
    n: &NewNotification<'_>,
    silenced_by: Option<i64>,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"insert into notifications (alert_id, endpoint, event, body, next_attempt_at,
                                      created_at, retry_since, status, finished_at,
                                      last_error, silenced_by)
           values ($1, $2, $3, $4, case when $7::bigint is null then $5 else $6 end, $6, $6,
                   case when $7::bigint is null then 'pending' else 'superseded' end,
                   case when $7::bigint is null then null else $6 end,
                   'silenced by silence ' || $7::bigint, $7)"#,
    )
    .bind(n.alert_id)
    .bind(n.endpoint)
    .bind(n.event)
    .bind(n.body)
    .bind(n.due)
    .bind(now)
    .bind(silenced_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// [`insert`] for many rows in one statement, each with its own `silenced_by`.
pub async fn insert_many(
    conn: impl PgExecutor<'_>,
    rows: &[(NewNotification<'_>, Option<i64>)],
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    macro_rules! column {
        ($f:expr) => {
            rows.iter().map($f).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        r#"insert into notifications (alert_id, endpoint, event, body, next_attempt_at,
                                      created_at, retry_since, status, finished_at,
                                      last_error, silenced_by)
           select alert_id, endpoint, event,  body,
                  case when silenced_by is null then due else $1 end, $1, $1,
                  case when silenced_by is null then 'pending' else 'superseded' end,
                  case when silenced_by is null then null else $1 end,
                  'silenced by silence ' || silenced_by, silenced_by
           from unnest($2::bigint[], $3::text[], $4::text[], $5::jsonb[], $6::timestamptz[],
                       $7::bigint[]) as u(alert_id, endpoint, event, body, due, silenced_by)"#,
    )
    .bind(now)
    .bind(column!(|r| r.0.alert_id))
    .bind(column!(|r| r.0.endpoint))
    .bind(column!(|r| r.0.event.as_str()))
    .bind(column!(|r| r.0.body))
    .bind(column!(|r| r.0.due))
    .bind(column!(|r| r.1))
    .execute(conn)
    .await?;
    Ok(())
}

/// SQL: the rows of `notifications` aliased `o` that told endpoint `endpoint` something about
/// alert `alert` (both SQL expressions), restricted to `events`: rows delivered, or given up
/// on (`dead`: the receiver may well have seen it, so it counts as told). Superseded and
/// pending rows told nothing. This is the one definition of "what an endpoint was told"; the
/// fragments below and the reminder pass build on it.
pub fn told(alert: &str, endpoint: &str, events: &[Event]) -> String {
    let events = events
        .iter()
        .map(|e| format!("'{}'", e.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "o.alert_id = {alert} and o.endpoint = {endpoint} \
         and o.status in ('delivered', 'dead') and o.event in ({events})"
    )
}

/// The events that change what an endpoint believes about an alert (firing or not).
const STATE_EVENTS: &[Event] = &[Event::Firing, Event::Resolved];

/// SQL scalar subquery: the last state event (`alert.firing` or `alert.resolved`) endpoint
/// `endpoint` was told about alert `alert`, null if none; with `before`, among rows whose id
/// is below it (what the endpoint knew when that row was written).
pub fn last_told(alert: &str, endpoint: &str, before: Option<&str>) -> String {
    let before = before
        .map(|b| format!(" and o.id < {b}"))
        .unwrap_or_default();
    format!(
        "(select o.event from notifications o where {told}{before} order by o.id desc limit 1)",
        told = told(alert, endpoint, STATE_EVENTS)
    )
}

/// SQL scalar subquery: the id of the row behind [`last_told`] (without `before`), 0 if none.
pub fn last_told_id(alert: &str, endpoint: &str) -> String {
    format!(
        "(select coalesce(max(o.id), 0) from notifications o where {told})",
        told = told(alert, endpoint, STATE_EVENTS)
    )
}

/// Dead-letter the pending rows of endpoints not named in `names` (no longer configured).
pub async fn dead_letter_unconfigured(
    conn: impl PgExecutor<'_>,
    names: &[String],
) -> sqlx::Result<()> {
    sqlx::query(
        r#"update notifications set status = 'dead', finished_at = now(),
               last_error = 'endpoint no longer configured'
           where status = 'pending' and not (endpoint = any($1))"#,
    )
    .bind(names)
    .execute(conn)
    .await?;
    Ok(())
}

/// A notification as the deliveries list shows it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Delivery)]
pub struct DeliveryRow {
    pub id: i64,
    pub alert_id: i64,
    pub endpoint: String,
    pub event: Event,
    pub delivery_id: String,
    pub status: NotificationStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Who last sent it again after it died (`token:…` or `user:<name>`), and when.
    pub redriven_by: Option<String>,
    pub redriven_at: Option<DateTime<Utc>>,
}

/// Notifications newest first, optionally of one status, strictly before `before_id`.
pub async fn list(
    pool: &PgPool,
    status: Option<NotificationStatus>,
    before_id: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<DeliveryRow>> {
    list_of_endpoint(pool, status, None, before_id, limit).await
}

/// [`list`], optionally of one endpoint too (the dashboard's webhooks page filters by
/// endpoint). With an endpoint, the newest-first walk (`notifications_status_idx`, or the
/// primary key) skips other endpoints' rows: endpoints are few, so a page is found quickly.
pub async fn list_of_endpoint(
    pool: &PgPool,
    status: Option<NotificationStatus>,
    endpoint: Option<&str>,
    before_id: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<DeliveryRow>> {
    sqlx::query_as(
        r#"select id, alert_id, endpoint, event, delivery_id, status, attempts, next_attempt_at,
                  created_at, delivered_at, finished_at, last_error,
                  redriven_by, redriven_at
           from notifications
           where ($1::text is null or status = $1) and ($2::bigint is null or id < $2)
             and ($4::text is null or endpoint = $4)
           order by id desc limit $3"#,
    )
    .bind(status)
    .bind(before_id)
    .bind(limit)
    .bind(endpoint)
    .fetch_all(pool)
    .await
}

/// The webhook backlog (the dashboard's webhooks page): how many notifications are pending,
/// counted up to `cap` (a bounded count), and when the oldest pending one was written (lowest
/// id: `notifications_status_idx`).
pub async fn backlog(pool: &PgPool, cap: i64) -> sqlx::Result<(i64, Option<DateTime<Utc>>)> {
    sqlx::query_as(
        r#"select (select count(*) from (select 1 from notifications
                                         where status = 'pending' limit $1) p),
                  (select created_at from notifications where status = 'pending'
                   order by id limit 1)"#,
    )
    .bind(cap)
    .fetch_one(pool)
    .await
}

/// Up to `limit` notifications of alert `alert_id`, newest first: the dashboard's alert page.
/// Index `notifications_alert_idx` (alert_id leads it); an alert has a handful of rows per
/// endpoint (its changes and reminders), so the sort is over few rows.
pub async fn of_alert(pool: &PgPool, alert_id: i64, limit: i64) -> sqlx::Result<Vec<DeliveryRow>> {
    sqlx::query_as(
        r#"select id, alert_id, endpoint, event, delivery_id, status, attempts, next_attempt_at,
                  created_at, delivered_at, finished_at, last_error,
                  redriven_by, redriven_at
           from notifications where alert_id = $1
           order by id desc limit $2"#,
    )
    .bind(alert_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One delivery attempt of a notification (`delivery_attempts`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub notification_id: i64,
    pub at: DateTime<Utc>,
    /// None: no HTTP response came back.
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    /// As stored: scrubbed of secrets when written.
    pub error: Option<String>,
}

/// The last `per` attempts of each notification in `ids`, newest first within each: the
/// alert page. Index `delivery_attempts_notification_idx`, one bounded look-up per id.
pub async fn attempts_of(pool: &PgPool, ids: &[i64], per: i64) -> sqlx::Result<Vec<AttemptRow>> {
    sqlx::query_as(
        r#"select a.notification_id, a.at, a.status_code, a.latency_ms, a.error
           from unnest($1::bigint[]) as n(id)
           cross join lateral (
               select * from delivery_attempts d where d.notification_id = n.id
               order by d.id desc limit $2) a
           order by a.notification_id desc, a.id desc"#,
    )
    .bind(ids)
    .bind(per)
    .fetch_all(pool)
    .await
}

/// One notification.
pub async fn get(pool: &PgPool, id: i64) -> sqlx::Result<Option<DeliveryRow>> {
    sqlx::query_as(
        r#"select id, alert_id, endpoint, event, delivery_id, status, attempts, next_attempt_at,
                  created_at, delivered_at, finished_at, last_error,
                  redriven_by, redriven_at
           from notifications where id = $1"#,
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Re-drive a dead notification: pending again, due now, with a fresh retry schedule (its age
/// counts from now). The delivery id stays, so receivers can still drop a duplicate. Returns
/// false if it is not dead.
pub async fn redrive(pool: &PgPool, id: i64, now: DateTime<Utc>, by: &str) -> sqlx::Result<bool> {
    let n = sqlx::query(
        r#"update notifications set status = 'pending', next_attempt_at = $2, retry_since = $2,
               finished_at = null, redriven_by = $3, redriven_at = $2
           where id = $1 and status = 'dead'"#,
    )
    .bind(id)
    .bind(now)
    .bind(by)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// A claimed row, with what the worker needs to decide and send.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub alert_id: i64,
    pub endpoint: String,
    pub event: String,
    pub delivery_id: String,
    pub body: Value,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub retry_since: DateTime<Utc>,
    pub alert_status: String,
    pub resolved_at: Option<DateTime<Utc>>,
    pub covered_by: Option<i64>,
    /// Another alert inhibits this one (`alerts::inhibit`).
    pub inhibited_by: Option<i64>,
    pub acknowledged: bool,
    /// What this endpoint was last told about the alert: the event of its last delivered or
    /// dead firing/resolved row before this one.
    pub last_told: Option<String>,
    /// An active silence matching the alert now, if any.
    pub silenced_by: Option<i64>,
}

/// When the earliest pending row of these endpoints falls due, if after `now` (rows already
/// due are the claim's business): the webhook worker sleeps until then (`group_wait`,
/// retries). Served by `notifications_due_idx`.
pub async fn next_due(
    pool: &PgPool,
    endpoints: &[String],
    now: DateTime<Utc>,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        r#"select min(next_attempt_at) from notifications
           where status = 'pending' and next_attempt_at > $2 and endpoint = any($1)"#,
    )
    .bind(endpoints)
    .bind(now)
    .fetch_one(pool)
    .await
}

/// Take the reminder pass's lock for the caller's transaction: replicas all run the worker,
/// one writes the reminders. False if another holds it.
pub async fn try_lock_reminders(conn: &mut PgConnection) -> sqlx::Result<bool> {
    sqlx::query_scalar("select pg_try_advisory_xact_lock(hashtext('fleetwatch.webhook.reminders'))")
        .fetch_one(conn)
        .await
}

/// The alerts endpoint `endpoint` is due a reminder about at `now`: firing, unacknowledged,
/// neither covered, inhibited nor silenced, no pending row on the endpoint, last told it fires,
/// and last pinged (firing or reminder) at or before `since`.
pub async fn reminders_due(
    conn: &mut PgConnection,
    endpoint: &str,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(&format!(
        r#"select a.id from alerts a
           where a.status = 'firing' and a.acknowledged_by is null
             and a.covered_by is null and a.inhibited_by is null
             and not exists (select 1 from silences s where {silenced})
             and not exists (select 1 from notifications p
                             where p.alert_id = a.id and p.endpoint = $1
                               and p.status = 'pending')
             and {last_told} = 'alert.firing'
             and (select max(o.finished_at) from notifications o
                  where {pinged}) <= $2
           order by a.id"#,
        silenced = super::silences::active_match("$3"),
        last_told = last_told("a.id", "$1", None),
        pinged = told("a.id", "$1", &[Event::Firing, Event::Reminder]),
    ))
    .bind(endpoint)
    .bind(since)
    .bind(now)
    .fetch_all(conn)
    .await
}

/// Take the "silence ended" pass's lock for the caller's transaction. False if another
/// replica holds it.
pub async fn try_lock_silences(conn: &mut PgConnection) -> sqlx::Result<bool> {
    sqlx::query_scalar("select pg_try_advisory_xact_lock(hashtext('fleetwatch.webhook.silences'))")
        .fetch_one(conn)
        .await
}

/// Claim up to `limit` of endpoint `endpoint`'s due rows in the caller's transaction: each the
/// oldest pending row of its (alert, endpoint), oldest due first, `for update skip locked` so
/// that replicas never claim the same row, with what the worker decides on (the alert's state,
/// what the endpoint was last told, an active silence). The caller leases or finishes each and
/// commits before sending.
pub async fn claim_due(
    conn: &mut PgConnection,
    endpoint: &str,
    limit: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<Claimed>> {
    sqlx::query_as(&format!(
        r#"with due as (
               select n.id from notifications n
               where n.status = 'pending' and n.next_attempt_at <= $1
                 and n.endpoint = $3
                 and not exists (select 1 from notifications o
                                 where o.alert_id = n.alert_id and o.endpoint = n.endpoint
                                   and o.status = 'pending' and o.id < n.id)
               order by n.next_attempt_at, n.id
               limit $2
               for update of n skip locked)
           select n.id, n.alert_id, n.endpoint, n.event, n.delivery_id, n.body, n.attempts,
                  n.next_attempt_at, n.retry_since, a.status as alert_status,
                  a.resolved_at, a.covered_by, a.inhibited_by,
                  a.acknowledged_by is not null as acknowledged,
                  {last_told} as last_told,
                  (select s.id from silences s where {silenced}
                   order by s.id limit 1) as silenced_by
           from due join notifications n on n.id = due.id
                    join alerts a on a.id = n.alert_id
           order by n.next_attempt_at, n.id"#,
        silenced = super::silences::active_match("$1"),
        last_told = last_told("n.alert_id", "n.endpoint", Some("n.id")),
    ))
    .bind(now)
    .bind(limit)
    .bind(endpoint)
    .fetch_all(conn)
    .await
}

/// Lease a claimed row until `until`: one more attempt, not due again before then.
pub async fn lease(conn: &mut PgConnection, id: i64, until: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query(
        r#"update notifications set attempts = attempts + 1,
               next_attempt_at = $2 where id = $1"#,
    )
    .bind(id)
    .bind(until)
    .execute(conn)
    .await?;
    Ok(())
}

/// Name the silence that superseded a row.
pub async fn set_silenced_by(conn: &mut PgConnection, id: i64, silence: i64) -> sqlx::Result<()> {
    sqlx::query("update notifications set silenced_by = $2 where id = $1")
        .bind(id)
        .bind(silence)
        .execute(conn)
        .await?;
    Ok(())
}

/// Record one delivery attempt of notification `id`.
pub async fn insert_attempt(
    conn: &mut PgConnection,
    id: i64,
    at: DateTime<Utc>,
    status_code: Option<i32>,
    latency_ms: i64,
    error: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"insert into delivery_attempts (notification_id, at, status_code, latency_ms, error)
           values ($1, $2, $3, $4, $5)"#,
    )
    .bind(id)
    .bind(at)
    .bind(status_code)
    .bind(latency_ms)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Notification `id` was delivered at `now`.
pub async fn mark_delivered(
    conn: &mut PgConnection,
    id: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"update notifications set status = 'delivered', delivered_at = $2,
               finished_at = $2, last_error = null where id = $1"#,
    )
    .bind(id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Notification `id` failed with `error`: due again at `next`.
pub async fn schedule_retry(
    conn: &mut PgConnection,
    id: i64,
    next: DateTime<Utc>,
    error: &str,
) -> sqlx::Result<()> {
    sqlx::query("update notifications set next_attempt_at = $2, last_error = $3 where id = $1")
        .bind(id)
        .bind(next)
        .bind(error)
        .execute(conn)
        .await?;
    Ok(())
}

/// Finish notification `id` as `status` (`superseded` or `dead`), saying why.
pub async fn finish(
    conn: &mut PgConnection,
    id: i64,
    status: &str,
    why: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "update notifications set status = $2, finished_at = $3, last_error = $4 where id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(now)
    .bind(why)
    .execute(conn)
    .await?;
    Ok(())
}

/// Retention: delete at most `limit` delivery attempts made before `before`. Returns how many.
pub async fn delete_attempts_before(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "delete from delivery_attempts where id in
            (select id from delivery_attempts where at < $1 limit $2)",
    )
    .bind(before)
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Retention: delete at most `limit` notifications finished before `before` (pending rows are
/// never trimmed: they are work still to do). Returns how many.
pub async fn delete_finished_before(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "delete from notifications where id in
            (select id from notifications where status <> 'pending' and finished_at < $1 limit $2)",
    )
    .bind(before)
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}
