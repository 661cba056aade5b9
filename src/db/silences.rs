//! The `silences` table: the active-silence match (as a SQL fragment for the worker's queries,
//! and for one alert), the API's rows (create, list, get, end), the active count, and the
//! candidates of the "silence ended" pass. What a silence means for notifications is
//! `alerts::silences`.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::db::notifications;
use crate::domain::actor::Actor;
use crate::domain::alert::Kind;
use crate::domain::notification::Event;

/// SQL: whether silence `s` is active at `now_param` and matches the alert aliased `a`
/// (columns `device_id`, `group_id`, `kind`).
pub fn active_match(now_param: &str) -> String {
    format!(
        "s.deleted_at is null and s.starts_at <= {now_param} and s.ends_at > {now_param} \
         and (s.device_id is null or s.device_id = a.device_id) \
         and (s.group_id is null or s.group_id = a.group_id) \
         and (s.kind is null or s.kind = a.kind)"
    )
}

/// How many silences are in force at `now` (the `fleetwatch_silences_active` gauge).
pub async fn active_count(pool: &sqlx::PgPool, now: DateTime<Utc>) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        r#"select count(*) from silences
           where deleted_at is null and starts_at <= $1 and ends_at > $1"#,
    )
    .bind(now)
    .fetch_one(pool)
    .await
}

/// The silences in force at `now` for many alerts, in one statement: (alert id, the silence)
/// for each alert that a silence matches (by device, group and kind; null matches any), the
/// lowest silence id when several match.
pub async fn silenced_many(
    conn: &mut PgConnection,
    alert_ids: &[i64],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<(i64, i64)>> {
    let sql = format!(
        r#"select a.id, m.id from alerts a
           cross join lateral (
               select s.id from silences s where {} order by s.id limit 1
           ) m
           where a.id = any($2)"#,
        active_match("$1")
    );
    sqlx::query_as(&sql)
        .bind(now)
        .bind(alert_ids)
        .fetch_all(conn)
        .await
}

/// A silence as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Silence)]
pub struct SilenceRow {
    pub id: i64,
    /// Matches alerts of this device (null: any).
    pub device_id: Option<String>,
    /// Matches alerts of this group (null: any).
    pub group_id: Option<String>,
    /// Matches alerts of this kind (null: any).
    pub kind: Option<Kind>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// The principal that created it: `token:<id>:<name>` (or `user:<name>`).
    pub created_by: String,
    /// The name the creating request gave (`created_by` in the body), if any: shown, not
    /// authenticated.
    pub on_behalf_of: Option<String>,
    pub comment: String,
    pub created_at: DateTime<Utc>,
    /// When it was ended early with DELETE.
    pub deleted_at: Option<DateTime<Utc>>,
    /// The principal that ended it.
    pub deleted_by: Option<String>,
    /// Whether it mutes notifications now.
    pub active: bool,
}

const COLUMNS: &str = r#"id, device_id, group_id, kind, starts_at, ends_at, created_by,
    on_behalf_of, comment, created_at, deleted_at, deleted_by,
    (deleted_at is null and starts_at <= $1 and ends_at > $1) as active"#;

/// A new silence, validated by the caller.
#[derive(Debug, Clone)]
pub struct NewSilence {
    pub device_id: Option<String>,
    pub group_id: Option<String>,
    pub kind: Option<Kind>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub created_by: Actor,
    pub comment: String,
}

pub async fn create(pool: &PgPool, s: &NewSilence, now: DateTime<Utc>) -> sqlx::Result<SilenceRow> {
    let sql = format!(
        r#"insert into silences (device_id, group_id, kind, starts_at, ends_at, created_by,
                                 on_behalf_of, comment, created_at)
           values ($2, $3, $4, $5, $6, $7, $8, $9, $1)
           returning {COLUMNS}"#
    );
    sqlx::query_as(&sql)
        .bind(now)
        .bind(&s.device_id)
        .bind(&s.group_id)
        .bind(s.kind)
        .bind(s.starts_at)
        .bind(s.ends_at)
        .bind(&s.created_by.principal)
        .bind(&s.created_by.on_behalf_of)
        .bind(&s.comment)
        .fetch_one(pool)
        .await
}

/// Silences newest first, optionally only those (in)active at `now`, strictly before
/// `before_id`.
pub async fn list(
    pool: &PgPool,
    active: Option<bool>,
    now: DateTime<Utc>,
    before_id: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<SilenceRow>> {
    let sql = format!(
        r#"select {COLUMNS} from silences
           where ($2::boolean is null
                  or (deleted_at is null and starts_at <= $1 and ends_at > $1) = $2)
             and ($3::bigint is null or id < $3)
           order by id desc limit $4"#
    );
    sqlx::query_as(&sql)
        .bind(now)
        .bind(active)
        .bind(before_id)
        .bind(limit)
        .fetch_all(pool)
        .await
}

pub async fn get(pool: &PgPool, id: i64, now: DateTime<Utc>) -> sqlx::Result<Option<SilenceRow>> {
    let sql = format!("select {COLUMNS} from silences where id = $2");
    sqlx::query_as(&sql)
        .bind(now)
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// What [`end`] did.
#[derive(Debug)]
pub enum Ended {
    Ended(SilenceRow),
    /// Already deleted or past its `ends_at`.
    AlreadyOver(SilenceRow),
    NotFound,
}

/// End a silence now (kept, with `deleted_at`/`deleted_by`). A silence that has not started
/// yet can be ended too: it then never mutes anything.
pub async fn end(pool: &PgPool, id: i64, by: &str, now: DateTime<Utc>) -> sqlx::Result<Ended> {
    let sql = format!(
        r#"update silences set deleted_at = $1, deleted_by = $3
           where id = $2 and deleted_at is null and ends_at > $1
           returning {COLUMNS}"#
    );
    let ended: Option<SilenceRow> = sqlx::query_as(&sql)
        .bind(now)
        .bind(id)
        .bind(by)
        .fetch_optional(pool)
        .await?;
    Ok(match ended {
        Some(s) => Ended::Ended(s),
        None => match get(pool, id, now).await? {
            Some(s) => Ended::AlreadyOver(s),
            None => Ended::NotFound,
        },
    })
}

/// The (alert, endpoint, event) rows the "silence ended" pass (`alerts::silences::catch_up`)
/// should enqueue at `now`: pairs with a silenced row since the endpoint was last told
/// anything, no pending row and no active silence; resolved alerts only through silences that
/// ended within `horizon`.
pub async fn catch_up_due(
    conn: &mut PgConnection,
    endpoints: &[String],
    now: DateTime<Utc>,
    horizon: TimeDelta,
) -> sqlx::Result<Vec<(i64, String, Event)>> {
    let sql = format!(
        r#"with pairs as (
               -- firing alerts that were silenced (few: only firing alerts are looked at) ...
               select n.alert_id, n.endpoint from alerts a
               join notifications n on n.alert_id = a.id
               where a.status = 'firing' and n.silenced_by is not null and n.endpoint = any($1)
               union
               -- ... and whatever silences that ended lately held back (resolutions)
               select n.alert_id, n.endpoint from silences s
               join notifications n on n.silenced_by = s.id
               where least(s.ends_at, coalesce(s.deleted_at, s.ends_at)) <= $2
                 and least(s.ends_at, coalesce(s.deleted_at, s.ends_at)) > $2 - $3::interval
                 and n.endpoint = any($1)),
           told as (
               select p.alert_id, p.endpoint,
                      {last_event} as last_event,
                      {last_id} as last_id
               from pairs p)
           select a.id, t.endpoint,
                  case when a.status = 'firing' then 'alert.firing' else 'alert.resolved' end
           from told t
           join alerts a on a.id = t.alert_id
           join webhook_endpoints e on e.name = t.endpoint
           where exists (select 1 from notifications n
                         where n.alert_id = t.alert_id and n.endpoint = t.endpoint
                           and n.silenced_by is not null and n.id > t.last_id)
             and not exists (select 1 from notifications n
                             where n.alert_id = t.alert_id and n.endpoint = t.endpoint
                               and n.status = 'pending')
             and not exists (select 1 from silences s where {active})
             and ((a.status = 'firing' and a.covered_by is null
                   and t.last_event is distinct from 'alert.firing')
                  or (a.status = 'resolved' and t.last_event = 'alert.firing'
                      and e.send_resolved))
           order by a.id, t.endpoint"#,
        active = active_match("$2"),
        last_event = notifications::last_told("p.alert_id", "p.endpoint", None),
        last_id = notifications::last_told_id("p.alert_id", "p.endpoint"),
    );
    sqlx::query_as(&sql)
        .bind(endpoints)
        .bind(now)
        .bind(horizon)
        .fetch_all(conn)
        .await
}

/// The silences page (`http::web::silences`): silences that stopped muting within
/// (`since`, `now`], by expiry or by being ended early, the latest first, at most `limit`.
/// Not indexed for this read: the table holds maintenance windows (thousands over years, not
/// millions), and the undeleted part is served by `silences_active_idx`.
pub async fn recently_over(
    pool: &PgPool,
    now: DateTime<Utc>,
    since: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<SilenceRow>> {
    let sql = format!(
        r#"select {COLUMNS} from silences
           where least(ends_at, coalesce(deleted_at, ends_at)) <= $1
             and least(ends_at, coalesce(deleted_at, ends_at)) > $2
           order by least(ends_at, coalesce(deleted_at, ends_at)) desc, id desc
           limit $3"#
    );
    sqlx::query_as(&sql)
        .bind(now)
        .bind(since)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// The silences page: silences not ended that start after `now` (scheduled), soonest first,
/// at most `limit` (`silences_active_idx` holds every undeleted silence not yet over).
pub async fn upcoming(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<SilenceRow>> {
    let sql = format!(
        r#"select {COLUMNS} from silences
           where deleted_at is null and ends_at > $1 and starts_at > $1
           order by starts_at, id limit $2"#
    );
    sqlx::query_as(&sql)
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// The silences page's warning: which of `ids` match nothing at `now`. A silence matches
/// nothing when it has a device or group matcher, no device that is not retired has that id
/// and that group (both, when both are set), and no alert it matches (device, group and kind,
/// as [`active_match`]) is firing or resolved after `recent_since`. A kind-only silence is
/// never flagged: any device or the service itself may raise any kind. Few ids (the page's
/// active and scheduled silences); each check is an index probe (`devices` primary key or
/// `devices_group_idx`, `alerts_device_idx`) except a group-only silence of an empty group,
/// whose alert check reads the alerts table.
pub async fn matching_nothing(
    pool: &PgPool,
    ids: &[i64],
    recent_since: DateTime<Utc>,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        // Each existence test is split by which matcher leads, so that each uses an index
        // (devices: primary key or devices_group_idx; alerts: alerts_device_idx or
        // alerts_group_idx) instead of a scan per silence.
        r#"select s.id from silences s
           where s.id = any($1)
             and (s.device_id is not null or s.group_id is not null)
             and not exists (
                 select 1 from devices d
                 where s.device_id is not null and d.id = s.device_id
                   and d.retired_at is null
                   and (s.group_id is null or d.group_id = s.group_id))
             and not exists (
                 select 1 from devices d
                 where s.device_id is null and d.group_id = s.group_id
                   and d.retired_at is null)
             and not exists (
                 select 1 from alerts a
                 where s.device_id is not null and a.device_id = s.device_id
                   and (s.group_id is null or a.group_id = s.group_id)
                   and (s.kind is null or a.kind = s.kind)
                   and (a.status = 'firing' or a.resolved_at > $2))
             and not exists (
                 select 1 from alerts a
                 where s.device_id is null and a.group_id = s.group_id
                   and (s.kind is null or a.kind = s.kind)
                   and (a.status = 'firing' or a.resolved_at > $2))
           order by s.id"#,
    )
    .bind(ids)
    .bind(recent_since)
    .fetch_all(pool)
    .await
}

/// The new-silence preview's counts, each capped at `cap` (a bounded count: the page says
/// "1000+" rather than count a whole fleet): devices with the matcher's device id and group
/// (`None` when neither is set: a kind-only silence is about any device), and firing alerts
/// the matcher would silence now.
pub async fn preview_counts(
    pool: &PgPool,
    device_id: Option<&str>,
    group_id: Option<&str>,
    kind: Option<Kind>,
    cap: i64,
) -> sqlx::Result<(Option<i64>, i64)> {
    let devices = if device_id.is_none() && group_id.is_none() {
        None
    } else {
        Some(
            sqlx::query_scalar(
                r#"select count(*) from (
                       select 1 from devices
                       where ($1::text is null or id = $1) and ($2::text is null or group_id = $2)
                       limit $3) m"#,
            )
            .bind(device_id)
            .bind(group_id)
            .bind(cap)
            .fetch_one(pool)
            .await?,
        )
    };
    let firing = sqlx::query_scalar(
        r#"select count(*) from (
               select 1 from alerts a
               where a.status = 'firing'
                 and ($1::text is null or a.device_id = $1)
                 and ($2::text is null or a.group_id = $2)
                 and ($3::text is null or a.kind = $3)
               limit $4) m"#,
    )
    .bind(device_id)
    .bind(group_id)
    .bind(kind)
    .bind(cap)
    .fetch_one(pool)
    .await?;
    Ok((devices, firing))
}

/// The silences active at `now` that match alerts of device `device` in group `group`: those
/// naming this device or none, and this group or none (a kind-only silence matches every
/// device's alerts of its kind), newest first, at most `limit`. The device page's list; the
/// matching rule is [`active_match`]'s. Uses the partial index of undeleted silences by end.
pub async fn active_for_device(
    pool: &PgPool,
    device: &str,
    group: Option<&str>,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<SilenceRow>> {
    let sql = format!(
        r#"select {COLUMNS} from silences
           where deleted_at is null and starts_at <= $1 and ends_at > $1
             and (device_id is null or device_id = $2)
             and (group_id is null or group_id is not distinct from $3)
           order by id desc limit $4"#
    );
    sqlx::query_as(&sql)
        .bind(now)
        .bind(device)
        .bind(group)
        .bind(limit)
        .fetch_all(pool)
        .await
}
