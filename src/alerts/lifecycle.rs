//! The alert state machine in Postgres. Every change writes an `alert_events` row in the same
//! transaction, so the trail can never disagree with the alert. The detector calls these inside
//! its own transaction (with the device state change that caused them); later the notification
//! outbox rows ([`super::outbox`]) are written in that same transaction too.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};

use super::outbox::{self, Change};
use crate::db::alerts::insert_event as event;
use crate::domain::actor::Actor;
use crate::domain::alert::{Kind, Severity};

/// What the detector wants to be firing.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSpec {
    pub kind: Kind,
    pub subject: String,
    pub device_id: Option<String>,
    pub group_id: Option<String>,
    pub severity: Severity,
    pub summary: String,
    pub details: Value,
}

/// What [`fire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// A new alert.
    Opened(i64),
    /// A resolved alert re-fired within the reopen window: same id, firing again.
    Reopened(i64),
    /// Already firing; summary, details or severity changed.
    Updated(i64),
    /// Already firing, nothing changed.
    Unchanged(i64),
}

impl Fired {
    pub fn id(self) -> i64 {
        match self {
            Fired::Opened(i) | Fired::Reopened(i) | Fired::Updated(i) | Fired::Unchanged(i) => i,
        }
    }
}

/// Write `spec` over an existing alert and make it firing: an update of a firing alert, or the
/// reopening of a resolved one (which also drops the outage cover it had when it resolved).
/// `trail` names the event.
async fn refire(
    conn: &mut PgConnection,
    id: i64,
    spec: &AlertSpec,
    now: DateTime<Utc>,
    trail: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"update alerts set status = 'firing', resolved_at = null, summary = $2, details = $3,
               severity = $4, updated_at = $5,
               covered_by = case when status = 'resolved' then null else covered_by end,
               inhibited_by = case when status = 'resolved' then null else inhibited_by end
           where id = $1"#,
    )
    .bind(id)
    .bind(&spec.summary)
    .bind(&spec.details)
    .bind(spec.severity.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    event(
        conn,
        id,
        now,
        trail,
        "fleetwatch",
        json!({"summary": spec.summary}),
    )
    .await
}

/// Make `spec` firing: keep the firing alert of its (kind, subject), or reopen the last one if it
/// resolved within `reopen_window`, or open a new one.
pub async fn fire(
    conn: &mut PgConnection,
    spec: &AlertSpec,
    now: DateTime<Utc>,
    reopen_window: TimeDelta,
) -> sqlx::Result<Fired> {
    let firing: Option<(i64, String, Value, String)> = sqlx::query_as(
        r#"select id, summary, details, severity from alerts
           where kind = $1 and subject = $2 and status = 'firing' for update"#,
    )
    .bind(spec.kind.as_str())
    .bind(&spec.subject)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((id, summary, details, severity)) = firing {
        if summary == spec.summary && details == spec.details && severity == spec.severity.as_str()
        {
            return Ok(Fired::Unchanged(id));
        }
        refire(conn, id, spec, now, "updated").await?;
        return Ok(Fired::Updated(id));
    }

    let recent: Option<i64> = sqlx::query_scalar(
        r#"select id from alerts
           where kind = $1 and subject = $2 and status = 'resolved' and resolved_at >= $3
           order by resolved_at desc limit 1 for update"#,
    )
    .bind(spec.kind.as_str())
    .bind(&spec.subject)
    .bind(now - reopen_window)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = recent {
        refire(conn, id, spec, now, "reopened").await?;
        outbox::notify(conn, id, Change::Fired, now).await?;
        return Ok(Fired::Reopened(id));
    }

    let id: i64 = sqlx::query_scalar(
        r#"insert into alerts (kind, subject, device_id, group_id, severity, status, opened_at,
                               summary, details, updated_at)
           values ($1, $2, $3, $4, $5, 'firing', $6, $7, $8, $6)
           returning id"#,
    )
    .bind(spec.kind.as_str())
    .bind(&spec.subject)
    .bind(&spec.device_id)
    .bind(&spec.group_id)
    .bind(spec.severity.as_str())
    .bind(now)
    .bind(&spec.summary)
    .bind(&spec.details)
    .fetch_one(&mut *conn)
    .await?;
    event(
        conn,
        id,
        now,
        "opened",
        "fleetwatch",
        json!({"summary": spec.summary}),
    )
    .await?;
    outbox::notify(conn, id, Change::Fired, now).await?;
    Ok(Fired::Opened(id))
}

/// Change a firing alert's classification in place (e.g. silent → offline): same id, no new
/// alert, one `reclassified` event.
pub async fn reclassify(
    conn: &mut PgConnection,
    id: i64,
    summary: &str,
    details: &Value,
    now: DateTime<Utc>,
    change: Value,
) -> sqlx::Result<()> {
    sqlx::query("update alerts set summary = $2, details = $3, updated_at = $4 where id = $1")
        .bind(id)
        .bind(summary)
        .bind(details)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    event(conn, id, now, "reclassified", "fleetwatch", change).await
}

/// Resolve a firing alert, merging `outcome` into its details (and the event). Returns false if
/// it was not firing.
pub async fn resolve(
    conn: &mut PgConnection,
    id: i64,
    now: DateTime<Utc>,
    summary: Option<&str>,
    outcome: Value,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        r#"update alerts set status = 'resolved', resolved_at = $2,
               summary = coalesce($3, summary), details = details || $4, updated_at = $2
           where id = $1 and status = 'firing'"#,
    )
    .bind(id)
    .bind(now)
    .bind(summary)
    .bind(&outcome)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n == 1 {
        event(conn, id, now, "resolved", "fleetwatch", outcome).await?;
        outbox::notify(conn, id, Change::Resolved, now).await?;
    }
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

/// Mark firing alerts as covered by a group or fleet outage (their notification speaks for
/// them). Alerts already covered keep their cover. Returns the ids newly covered.
pub async fn cover(
    conn: &mut PgConnection,
    ids: &[i64],
    by: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<i64>> {
    let covered: Vec<i64> = sqlx::query_scalar(
        r#"update alerts set covered_by = $2, updated_at = $3
           where id = any($1) and covered_by is null and status = 'firing' and id <> $2
           returning id"#,
    )
    .bind(ids)
    .bind(by)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    for id in &covered {
        event(conn, *id, now, "covered", "fleetwatch", json!({"by": by})).await?;
    }
    Ok(covered)
}

/// Release the alerts an outage covered (when it resolves): the still-firing ones stand on
/// their own again.
pub async fn uncover(
    conn: &mut PgConnection,
    by: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<i64>> {
    let ids: Vec<i64> = sqlx::query_scalar(
        r#"update alerts set covered_by = null, updated_at = $2
           where covered_by = $1 and status = 'firing' returning id"#,
    )
    .bind(by)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    for id in &ids {
        event(conn, *id, now, "uncovered", "fleetwatch", json!({"by": by})).await?;
        outbox::notify(conn, *id, Change::Uncovered, now).await?;
    }
    Ok(ids)
}

/// Acknowledge. Re-acknowledging changes nothing and writes no event (returns false);
/// acknowledging a resolved alert is allowed and recorded.
pub async fn acknowledge(
    pool: &PgPool,
    id: i64,
    by: &Actor,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<bool>> {
    let mut tx = pool.begin().await?;
    let current: Option<Option<String>> =
        sqlx::query_scalar("select acknowledged_by from alerts where id = $1 for update")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(already) = current else {
        return Ok(None);
    };
    if already.is_some() {
        return Ok(Some(false));
    }
    sqlx::query(
        r#"update alerts set acknowledged_by = $2, acknowledged_at = $3, ack_note = $4,
               ack_on_behalf_of = $5, updated_at = $3 where id = $1"#,
    )
    .bind(id)
    .bind(&by.principal)
    .bind(now)
    .bind(note)
    .bind(&by.on_behalf_of)
    .execute(&mut *tx)
    .await?;
    let mut details = serde_json::Map::new();
    details.insert("note".into(), json!(note));
    event(
        &mut tx,
        id,
        now,
        "acknowledged",
        &by.principal,
        by.details(details),
    )
    .await?;
    outbox::notify(&mut tx, id, Change::Acknowledged, now).await?;
    tx.commit().await?;
    Ok(Some(true))
}

/// Attach (or replace) a ticket reference. Returns None for an unknown alert.
pub async fn link_ticket(
    pool: &PgPool,
    id: i64,
    reference: &str,
    url: Option<&str>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<bool>> {
    let mut tx = pool.begin().await?;
    let current: Option<(Option<String>, Option<String>)> =
        sqlx::query_as("select ticket_ref, ticket_url from alerts where id = $1 for update")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((r, u)) = current else {
        return Ok(None);
    };
    if r.as_deref() == Some(reference) && u.as_deref() == url {
        return Ok(Some(false));
    }
    sqlx::query(
        "update alerts set ticket_ref = $2, ticket_url = $3, updated_at = $4 where id = $1",
    )
    .bind(id)
    .bind(reference)
    .bind(url)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let mut details = serde_json::Map::new();
    details.insert("ref".into(), json!(reference));
    details.insert("url".into(), json!(url));
    event(
        &mut tx,
        id,
        now,
        "ticket_linked",
        &actor.principal,
        actor.details(details),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(true))
}
