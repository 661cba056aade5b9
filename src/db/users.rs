//! The `users` and `sessions` tables (dashboard access): create, list and disable users, find a
//! user by name for login, and create, find, touch and delete sessions. What a user or a
//! session is, and the rules over them (roles, expiry, rotation), are `crate::users`.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// A row of `fleetwatch user list` (everything but the password hash).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// What login needs of a user.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Credentials {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub password_hash: String,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// A live session joined with its (enabled) user.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub user_id: i64,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// Insert a user. `Ok(None)`: the name (case-insensitively) is taken.
pub async fn insert(
    pool: &PgPool,
    name: &str,
    role: &str,
    password_hash: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        r#"insert into users (name, role, password_hash, created_at)
           values ($1, $2, $3, $4)
           on conflict ((lower(name))) do nothing
           returning id"#,
    )
    .bind(name)
    .bind(role)
    .bind(password_hash)
    .bind(now)
    .fetch_optional(pool)
    .await
}

/// Insert a user, or replace the role and password of the one with that name (case-insensitively)
/// and enable it again; its sessions end (the password they were opened with is gone).
pub async fn upsert(
    pool: &PgPool,
    name: &str,
    role: &str,
    password_hash: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<i64> {
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        r#"insert into users (name, role, password_hash, created_at)
           values ($1, $2, $3, $4)
           on conflict ((lower(name))) do update
               set role = excluded.role, password_hash = excluded.password_hash,
                   disabled_at = null
           returning id"#,
    )
    .bind(name)
    .bind(role)
    .bind(password_hash)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("delete from sessions where user_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Every user, disabled ones included, oldest first.
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<UserRow>> {
    sqlx::query_as::<_, UserRow>(
        r#"select id, name, role, created_at, last_login_at, disabled_at
           from users order by id"#,
    )
    .fetch_all(pool)
    .await
}

/// The user named `name` (case-insensitively), disabled or not.
pub async fn credentials(pool: &PgPool, name: &str) -> sqlx::Result<Option<Credentials>> {
    sqlx::query_as::<_, Credentials>(
        r#"select id, name, role, password_hash, disabled_at
           from users where lower(name) = lower($1)"#,
    )
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// What [`disable`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disabled {
    /// Disabled now; this many sessions ended with it.
    Now {
        name: String,
        sessions: u64,
    },
    /// It already was, since then (disabling is idempotent; the first time is kept).
    Already {
        name: String,
        at: DateTime<Utc>,
    },
    NotFound,
}

/// Disable the user named `name` (case-insensitively) and delete their sessions, in one
/// transaction, so no request can slip in between with a session of a disabled user.
pub async fn disable(pool: &PgPool, name: &str, now: DateTime<Utc>) -> sqlx::Result<Disabled> {
    let mut tx = pool.begin().await?;
    let row: Option<(i64, String, Option<DateTime<Utc>>)> = sqlx::query_as(
        r#"select id, name, disabled_at from users where lower(name) = lower($1) for update"#,
    )
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, name, disabled_at)) = row else {
        return Ok(Disabled::NotFound);
    };
    if let Some(at) = disabled_at {
        // Sessions cannot exist for a disabled user (login refuses them), but delete any
        // anyway: this command is how an operator makes sure.
        sqlx::query(r#"delete from sessions where user_id = $1"#)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(Disabled::Already { name, at });
    }
    sqlx::query(r#"update users set disabled_at = $2 where id = $1"#)
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let sessions = sqlx::query(r#"delete from sessions where user_id = $1"#)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Disabled::Now { name, sessions })
}

/// Start a session for `user_id` (at login) and record the login; `replaces` (the session
/// cookie the browser came with, if any) is deleted in the same transaction: rotation.
pub async fn start_session(
    pool: &PgPool,
    user_id: i64,
    digest: &[u8; 32],
    replaces: Option<&[u8; 32]>,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    if let Some(old) = replaces {
        sqlx::query(r#"delete from sessions where token_hash = $1"#)
            .bind(&old[..])
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        r#"insert into sessions (token_hash, user_id, created_at, last_seen_at, expires_at)
           values ($1, $2, $3, $3, $4)"#,
    )
    .bind(&digest[..])
    .bind(user_id)
    .bind(now)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query(r#"update users set last_login_at = $2 where id = $1"#)
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The session whose cookie hashes to `digest`, if its user is enabled. Expiry is decided by
/// the caller (`users::session_state`), against the current configuration.
pub async fn find_session(pool: &PgPool, digest: &[u8; 32]) -> sqlx::Result<Option<SessionRow>> {
    sqlx::query_as::<_, SessionRow>(
        r#"select s.user_id, u.name, u.role, s.created_at, s.last_seen_at
           from sessions s join users u on u.id = s.user_id
           where s.token_hash = $1 and u.disabled_at is null"#,
    )
    .bind(&digest[..])
    .fetch_optional(pool)
    .await
}

/// Record a request on session `digest` at `now`, at most once per `every`: conditional on the
/// stored `last_seen_at`, so concurrent requests (and replicas) write once between them.
pub async fn touch_session(
    pool: &PgPool,
    digest: &[u8; 32],
    now: DateTime<Utc>,
    every: TimeDelta,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        r#"update sessions set last_seen_at = $2, expires_at = $4
           where token_hash = $1 and last_seen_at <= $2 - $3"#,
    )
    .bind(&digest[..])
    .bind(now)
    .bind(every)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Delete one session (logout, or an expired one met on a request).
pub async fn delete_session(pool: &PgPool, digest: &[u8; 32]) -> sqlx::Result<bool> {
    let r = sqlx::query(r#"delete from sessions where token_hash = $1"#)
        .bind(&digest[..])
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Delete at most `limit` sessions that expired before `before` (the retention task).
pub async fn delete_sessions_expired_before(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    let r = sqlx::query(
        r#"delete from sessions where token_hash in (
               select token_hash from sessions where expires_at < $1 limit $2)"#,
    )
    .bind(before)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}
