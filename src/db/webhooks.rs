//! The `webhook_endpoints` table: each configured endpoint's routing rules, written from the
//! configuration at start-up (`alerts::outbox::sync_endpoints` decides what goes in) and read by
//! the outbox inside the alert change's transaction. Secrets and URLs are not stored.

use sqlx::PgConnection;

use crate::domain::alert::Kind;

/// One endpoint's routing rules, as written.
#[derive(Debug, Clone)]
pub struct EndpointRules<'a> {
    pub name: &'a str,
    pub kinds: &'a [Kind],
    pub groups: &'a [String],
    pub max_severity_rank: i32,
    pub send_resolved: bool,
    pub send_reminders: bool,
    pub group_wait_ms: i64,
    pub resolve_wait_ms: i64,
    pub repeat_interval_ms: i64,
}

/// Insert or replace endpoint `r.name`'s rules.
pub async fn upsert(conn: &mut PgConnection, r: &EndpointRules<'_>) -> sqlx::Result<()> {
    sqlx::query(
        r#"insert into webhook_endpoints (name, kinds, groups, max_severity_rank,
               send_resolved, send_reminders, group_wait_ms, resolve_wait_ms,
               repeat_interval_ms, updated_at)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
           on conflict (name) do update set kinds = excluded.kinds, groups = excluded.groups,
               max_severity_rank = excluded.max_severity_rank,
               send_resolved = excluded.send_resolved,
               send_reminders = excluded.send_reminders,
               group_wait_ms = excluded.group_wait_ms,
               resolve_wait_ms = excluded.resolve_wait_ms,
               repeat_interval_ms = excluded.repeat_interval_ms, updated_at = now()"#,
    )
    .bind(r.name)
    .bind(r.kinds)
    .bind(r.groups)
    .bind(r.max_severity_rank)
    .bind(r.send_resolved)
    .bind(r.send_reminders)
    .bind(r.group_wait_ms)
    .bind(r.resolve_wait_ms)
    .bind(r.repeat_interval_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forget every endpoint not named in `names`.
pub async fn delete_except(conn: &mut PgConnection, names: &[String]) -> sqlx::Result<()> {
    sqlx::query("delete from webhook_endpoints where not (name = any($1))")
        .bind(names)
        .execute(conn)
        .await?;
    Ok(())
}

/// An endpoint's routing rules, as the outbox reads them.
#[derive(Debug, sqlx::FromRow)]
pub struct Route {
    pub name: String,
    pub kinds: Vec<String>,
    pub groups: Vec<String>,
    pub max_severity_rank: i32,
    pub send_resolved: bool,
    pub group_wait_ms: i64,
    pub resolve_wait_ms: i64,
}

/// Every endpoint's routing rules, by name.
pub async fn routes(conn: &mut PgConnection) -> sqlx::Result<Vec<Route>> {
    sqlx::query_as(
        r#"select name, kinds, groups, max_severity_rank, send_resolved, group_wait_ms,
                  resolve_wait_ms
           from webhook_endpoints order by name"#,
    )
    .fetch_all(conn)
    .await
}
