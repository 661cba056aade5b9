//! The `notifications` table: the one place a notification is written, "what was this endpoint
//! last told" (`told`, `last_told`, `last_told_id`), the deliveries list and re-drive, and the
//! dead-lettering of endpoints no longer configured.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgExecutor, PgPool};

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
}

/// Notifications newest first, optionally of one status, strictly before `before_id`.
pub async fn list(
    pool: &PgPool,
    status: Option<NotificationStatus>,
    before_id: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<DeliveryRow>> {
    sqlx::query_as(
        r#"select id, alert_id, endpoint, event, delivery_id, status, attempts, next_attempt_at,
                  created_at, delivered_at, finished_at, last_error
           from notifications
           where ($1::text is null or status = $1) and ($2::bigint is null or id < $2)
           order by id desc limit $3"#,
    )
    .bind(status)
    .bind(before_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One notification.
pub async fn get(pool: &PgPool, id: i64) -> sqlx::Result<Option<DeliveryRow>> {
    sqlx::query_as(
        r#"select id, alert_id, endpoint, event, delivery_id, status, attempts, next_attempt_at,
                  created_at, delivered_at, finished_at, last_error
           from notifications where id = $1"#,
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Re-drive a dead notification: pending again, due now, with a fresh retry schedule (its age
/// counts from now). The delivery id stays, so receivers can still drop a duplicate. Returns
/// false if it is not dead.
pub async fn redrive(pool: &PgPool, id: i64, now: DateTime<Utc>) -> sqlx::Result<bool> {
    let n = sqlx::query(
        r#"update notifications set status = 'pending', next_attempt_at = $2, retry_since = $2,
               finished_at = null
           where id = $1 and status = 'dead'"#,
    )
    .bind(id)
    .bind(now)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}
