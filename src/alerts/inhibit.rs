//! Inhibition in Postgres: links firing target alerts to a firing source alert of the same
//! device (rules in `domain::inhibit`). The link is all there is: the webhook worker's `decide`
//! supersedes an inhibited alert's first notification, as it does for an outage's `covered_by`,
//! and reminders skip it. Only alerts no endpoint has been told about are linked, so nothing
//! already paged is taken back.
//!
//! The link stays for the target's firing life (until it resolves): a client-ID storm or a
//! reconnect loop ends its source alert and its `flapping` at different times (their windows
//! differ), and releasing the target when the source resolves would page the tail of the same
//! incident.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;

use crate::domain::inhibit::InhibitRule;

/// Link every firing, not yet notified target alert to a firing source alert under `rules`.
/// Returns (target, source) pairs newly linked; each gets an `inhibited` trail event. Runs in
/// the caller's transaction, so the link commits with the alert changes that caused it, before
/// the worker can claim the target's notification.
pub async fn apply(
    conn: &mut PgConnection,
    rules: &[InhibitRule],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<(i64, i64)>> {
    if rules.is_empty() {
        return Ok(vec![]);
    }
    let sources: Vec<&str> = rules.iter().map(|r| r.source.as_str()).collect();
    let targets: Vec<&str> = rules.iter().map(|r| r.target.as_str()).collect();
    let equal: Vec<&str> = rules.iter().map(|r| r.equal.as_str()).collect();
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
    .bind(&sources)
    .bind(&targets)
    .bind(&equal)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    for (target, source) in &linked {
        sqlx::query(
            r#"insert into alert_events (alert_id, at, type, actor, details)
               values ($1, $2, 'inhibited', 'fleetwatch', $3)"#,
        )
        .bind(target)
        .bind(now)
        .bind(json!({"by": source}))
        .execute(&mut *conn)
        .await?;
    }
    Ok(linked)
}
