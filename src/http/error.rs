//! The one error type at the HTTP edge: RFC 9457 `application/problem+json`. Database and
//! internal errors are logged with their detail and shown to clients only as a generic 500,
//! or as a `503` with `Retry-After` when the database is unreachable (it may come back).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// A valid token whose scopes do not cover the request.
    #[error("{0}")]
    Forbidden(String),
    /// Over the token's request rate; `Retry-After` says when to come back.
    #[error("too many requests with this token; retry after {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The request body is over `http.max_body_bytes`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The database cannot be reached now; `Retry-After` says when to try again.
    #[error("the database is unavailable; retry later")]
    Unavailable,
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// An RFC 9457 problem document, the body of every error.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too Many Requests",
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not Found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad Request"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "Unprocessable Content",
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method Not Allowed",
            ),
            ApiError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Content Too Large",
            ),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service Unavailable",
            ),
            // Connection trouble, not a bug: the client may retry.
            ApiError::Database(e) if is_unreachable(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service Unavailable",
            ),
            ApiError::Database(_) | ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal Server Error",
            ),
        }
    }
}

/// Seconds a client is told to wait when the database is unavailable.
pub const RETRY_AFTER_UNAVAILABLE: u64 = 5;

/// Errors that say the database cannot be reached (rather than a query being wrong).
fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // connection exceptions, admin shutdown, cannot connect now, too many connections
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let detail = match &self {
            // Never the driver's words: they can name hosts, users and queries.
            ApiError::Database(_) if status == StatusCode::SERVICE_UNAVAILABLE => {
                ApiError::Unavailable.to_string()
            }
            other => other.to_string(),
        };
        match &self {
            ApiError::Database(e) if status == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(error = %e, "database unavailable in request")
            }
            ApiError::Database(e) => tracing::error!(error = %e, "database error in request"),
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error in request")
            }
            _ => {}
        }
        let body = Problem {
            kind: format!("https://fleetwatch.dev/problems/{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail,
        };
        let mut resp = (status, axum::Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::Forbidden(_) = self {
            // RFC 6750 §3.1: the token is fine, its scope is not.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER_UNAVAILABLE),
            );
        }
        if let ApiError::TooManyRequests { retry_after_secs } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        resp
    }
}

/// A domain rule refused what the client sent: `422`, with the rule's message.
impl From<crate::domain::input::Invalid> for ApiError {
    fn from(e: crate::domain::input::Invalid) -> Self {
        ApiError::Unprocessable(e.0)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
