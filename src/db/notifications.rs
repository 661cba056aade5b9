//! The notification outbox's rows: the one place a notification is written.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

use crate::domain::notification::Event;

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
