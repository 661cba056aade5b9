//! `/api/v1`: one file per resource, plus the shared pieces (pagination cursors, limits).

pub mod alerts;
pub mod devices;
pub mod fleet;
pub mod silences;
pub mod webhooks;

use axum::routing::{delete, get, post, put};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;

use super::error::{ApiError, Problem};
use super::AppState;

/// The errors every list endpoint may answer (documented for the OpenAPI document).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ErrorsList {
    /// A query parameter is invalid.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// Missing or invalid bearer token.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// The token lacks the scope.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// Too many requests for this token; see `Retry-After`.
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Problem),
    /// Something failed on our side.
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(Problem),
    /// The database is unreachable; see `Retry-After`.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

/// The errors of an endpoint about one resource.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ErrorsOne {
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// No such resource.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Problem),
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(Problem),
    /// The database is unreachable; see `Retry-After`.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

/// The errors of an endpoint that changes a resource.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ErrorsWrite {
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// The body is not JSON or not the expected content type.
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// The body is over the server's size limit.
    #[response(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Problem),
    /// The body is JSON but invalid (missing fields, NUL characters, limits).
    #[response(status = 422, content_type = "application/problem+json")]
    Unprocessable(Problem),
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Problem),
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(Problem),
    /// The database is unreachable; see `Retry-After`.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/devices", get(devices::list))
        .route("/devices/{id}", get(devices::get))
        .route("/devices/{id}/events", get(devices::events))
        .route("/alerts", get(alerts::list))
        .route("/alerts/{id}", get(alerts::get))
        .route("/alerts/{id}/ack", post(alerts::ack))
        .route("/alerts/{id}/ticket", put(alerts::ticket))
        .route("/fleet/summary", get(fleet::summary))
        .route("/webhooks/deliveries", get(webhooks::list))
        .route("/webhooks/deliveries/{id}/redrive", post(webhooks::redrive))
        .route("/silences", get(silences::list).post(silences::create))
        .route("/silences/{id}", delete(silences::end))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// A path parameter, with axum's plain-text rejection turned into a problem document and NUL
/// refused before it reaches Postgres.
pub fn path_param(
    p: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, ApiError> {
    let axum::extract::Path(v) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(clean("id", Some(v))?.unwrap_or_default())
}

/// A page of a list endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "limit: expected 1 to {MAX_LIMIT}, got {n}"
        ))),
    }
}

/// Cursors are opaque to clients: base64url of our own position encoding.
pub fn encode_cursor(raw: &str) -> String {
    URL_SAFE_NO_PAD.encode(raw)
}

pub fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        // Postgres text cannot hold NUL: refuse it here rather than fail the query.
        .filter(|s| !s.contains('\0') && s.len() <= 1024)
        .ok_or_else(|| ApiError::BadRequest("cursor: not a cursor this API returned".into()))
}

/// Query parameters, with axum's plain-text rejection turned into a problem document.
pub fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|axum::extract::Query(v)| v)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// The cursor of a list ordered by (time, id), newest first.
pub fn encode_time_cursor(t: chrono::DateTime<chrono::Utc>, id: i64) -> String {
    encode_cursor(&format!("{}:{id}", t.timestamp_micros()))
}

pub fn decode_time_cursor(cursor: &str) -> Result<(chrono::DateTime<chrono::Utc>, i64), ApiError> {
    let raw = decode_cursor(cursor)?;
    let bad = || ApiError::BadRequest("cursor: not a cursor this API returned".into());
    let (micros, id) = raw.split_once(':').ok_or_else(bad)?;
    let ts = chrono::DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?)
        // Postgres' timestamptz range is narrower than chrono's; ours are never outside 1970-9999.
        .filter(|t| (1970..=9999).contains(&chrono::Datelike::year(t)))
        .ok_or_else(bad)?;
    Ok((ts, id.parse().map_err(|_| bad())?))
}

/// The cursor of a list ordered by id, newest first.
pub fn encode_id_cursor(id: i64) -> String {
    encode_cursor(&id.to_string())
}

pub fn decode_id_cursor(cursor: &str) -> Result<i64, ApiError> {
    decode_cursor(cursor)?
        .parse()
        .map_err(|_| ApiError::BadRequest("cursor: not a cursor this API returned".into()))
}

/// A numeric id from the path. Anything that is not a positive integer names nothing: 404.
pub fn numeric_id(
    p: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    what: &str,
) -> Result<i64, ApiError> {
    let axum::extract::Path(raw) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::NotFound(format!("no {what} {raw:?}")))
}

/// A JSON body, with axum's plain-text rejection turned into a problem document: 413 over the
/// body limit (`http.max_body_bytes`), 422 otherwise.
pub fn json_body<T>(
    b: Result<axum::Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    b.map(|axum::Json(v)| v).map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("the request body is over this server's limit".into())
        } else {
            ApiError::Unprocessable(e.body_text())
        }
    })
}

/// Text from a request body that goes into Postgres and onto pages: no NUL (Postgres `text`
/// refuses it), not blank, at most `max` characters. 422 otherwise.
pub fn body_text(name: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.contains('\0') {
        return Err(ApiError::Unprocessable(format!(
            "{name}: NUL characters are not allowed"
        )));
    }
    if v.trim().is_empty() {
        return Err(ApiError::Unprocessable(format!(
            "{name}: must not be empty"
        )));
    }
    if v.chars().count() > max {
        return Err(ApiError::Unprocessable(format!(
            "{name}: at most {max} characters"
        )));
    }
    Ok(())
}

/// Reject strings Postgres `text` cannot hold before they reach a query.
pub fn clean(name: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.contains('\0') => Err(ApiError::BadRequest(format!(
            "{name}: NUL characters are not allowed"
        ))),
        Some(s) if s.len() > 1024 => Err(ApiError::BadRequest(format!("{name}: too long"))),
        other => Ok(other),
    }
}

/// A filter whose values are a closed set (a state, a kind, a status): parsed into its enum, so
/// the accepted values are the enum's and the error lists them (`400`).
pub fn parse_filter<T>(name: &str, v: Option<&str>) -> Result<Option<T>, ApiError>
where
    T: std::str::FromStr<Err = String>,
{
    v.map(|s| s.parse::<T>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("{name}: {e}")))
}
