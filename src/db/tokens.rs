//! The `api_tokens` table: insert, list, revoke, find an unrevoked token by its hash, record
//! use. What a token is (scopes, shape, hashing) and the commands over it are `crate::tokens`.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// A row of `fleetwatch token list`: everything but the secret, which is not stored anyway.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<String>,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Store a new token's hash. Returns its id.
pub async fn insert(
    pool: &PgPool,
    name: &str,
    scopes: &[&str],
    digest: &[u8; 32],
    prefix: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        r#"insert into api_tokens (name, scopes, token_hash, prefix, created_at)
           values ($1, $2, $3, $4, $5)
           returning id"#,
    )
    .bind(name)
    .bind(scopes)
    .bind(&digest[..])
    .bind(prefix)
    .bind(now)
    .fetch_one(pool)
    .await
}

/// Every token, revoked ones included, oldest first.
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<TokenRow>> {
    sqlx::query_as::<_, TokenRow>(
        r#"select id, name, scopes, prefix, created_at, last_used_at, revoked_at
           from api_tokens order by id"#,
    )
    .fetch_all(pool)
    .await
}

/// Revoke token `id` if it is not yet revoked. Returns its name if this revoked it.
pub async fn revoke(pool: &PgPool, id: i64, now: DateTime<Utc>) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        r#"update api_tokens set revoked_at = $2
           where id = $1 and revoked_at is null
           returning name"#,
    )
    .bind(id)
    .bind(now)
    .fetch_optional(pool)
    .await
}

/// Token `id`'s name and when it was revoked (if it was); None if there is no such token.
pub async fn revoked_at(
    pool: &PgPool,
    id: i64,
) -> sqlx::Result<Option<(String, Option<DateTime<Utc>>)>> {
    sqlx::query_as(r#"select name, revoked_at from api_tokens where id = $1"#)
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// An unrevoked token's row, scopes as stored.
#[derive(Debug, sqlx::FromRow)]
pub struct ActiveRow {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<String>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The unrevoked token whose SHA-256 is `digest`, if any.
pub async fn find_active(pool: &PgPool, digest: &[u8; 32]) -> sqlx::Result<Option<ActiveRow>> {
    sqlx::query_as(
        r#"select id, name, scopes, last_used_at from api_tokens
           where token_hash = $1 and revoked_at is null"#,
    )
    .bind(&digest[..])
    .fetch_optional(pool)
    .await
}

/// Record that token `id` was used at `now`, unless that was recorded less than `every` ago.
/// Returns whether the row was written.
pub async fn touch(
    pool: &PgPool,
    id: i64,
    now: DateTime<Utc>,
    every: TimeDelta,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        r#"update api_tokens set last_used_at = $2
           where id = $1 and (last_used_at is null or last_used_at <= $2 - $3::interval)"#,
    )
    .bind(id)
    .bind(now)
    .bind(every)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}
