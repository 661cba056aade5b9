//! `/api/v1`: one file per resource, plus the shared pieces: the documented error responses,
//! [`Paging`] (limits, opaque cursors, the over-fetch that tells whether a next page exists)
//! and [`clean`] for text filters.

pub mod alerts;
pub mod devices;
pub mod fleet;
pub mod metrics;
pub mod silences;
pub mod webhooks;

use axum::routing::{delete, get, post, put};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Datelike, Utc};
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
        .route("/devices/{id}/history", get(devices::history))
        .route("/devices/{id}/impressions", get(devices::impressions))
        .route("/devices/{id}/retire", post(devices::retire))
        .route("/devices/{id}/unretire", post(devices::unretire))
        .route("/alerts", get(alerts::list))
        .route("/alerts/{id}", get(alerts::get))
        .route("/alerts/{id}/ack", post(alerts::ack))
        .route("/alerts/{id}/ticket", put(alerts::ticket))
        .route("/fleet/summary", get(fleet::summary))
        .route("/fleet/groups", get(fleet::groups))
        .route("/metrics/cloudwatch", get(metrics::cloudwatch))
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

/// A page of a list endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// A position in a list, as a client passes it back in `cursor`. Cursors are opaque to clients:
/// base64url of our own encoding of the last item's sort key.
pub trait Cursor: Sized {
    fn encode(&self) -> String;
    /// `400` for anything this API did not hand out.
    fn decode(cursor: &str) -> Result<Self, ApiError>;
}

fn not_a_cursor() -> ApiError {
    ApiError::BadRequest("cursor: not a cursor this API returned".into())
}

fn decode_raw(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        // Postgres text cannot hold NUL: refuse it here rather than fail the query.
        .filter(|s| !s.contains('\0') && s.len() <= 1024)
        .ok_or_else(not_a_cursor)
}

/// A list ordered by a text key (device ids), ascending.
impl Cursor for String {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self)
    }
    fn decode(cursor: &str) -> Result<Self, ApiError> {
        decode_raw(cursor)
    }
}

/// A list ordered by (time, id), newest first.
impl Cursor for (DateTime<Utc>, i64) {
    fn encode(&self) -> String {
        format!("{}:{}", self.0.timestamp_micros(), self.1).encode()
    }
    fn decode(cursor: &str) -> Result<Self, ApiError> {
        let raw = decode_raw(cursor)?;
        let (micros, id) = raw.split_once(':').ok_or_else(not_a_cursor)?;
        let ts = DateTime::from_timestamp_micros(micros.parse().map_err(|_| not_a_cursor())?)
            // Postgres' timestamptz range is narrower than chrono's; ours are never outside 1970-9999.
            .filter(|t| (1970..=9999).contains(&t.year()))
            .ok_or_else(not_a_cursor)?;
        Ok((ts, id.parse().map_err(|_| not_a_cursor())?))
    }
}

/// A list ordered by id, newest first.
impl Cursor for i64 {
    fn encode(&self) -> String {
        self.to_string().encode()
    }
    fn decode(cursor: &str) -> Result<Self, ApiError> {
        decode_raw(cursor)?.parse().map_err(|_| not_a_cursor())
    }
}

/// The paging of one list request: the page size asked for and where the previous page ended.
/// A query fetches [`Paging::fetch`] rows (one more than the page) so that [`Paging::page`]
/// knows, without a count, whether another page follows.
#[derive(Debug, Clone)]
pub struct Paging<C> {
    /// Rows on a page, 1 to [`MAX_LIMIT`].
    pub limit: i64,
    /// The sort key of the previous page's last item: the list continues after it.
    pub after: Option<C>,
}

impl<C: Cursor> Paging<C> {
    /// From the `limit` and `cursor` query parameters; `400` if either is invalid.
    pub fn new(limit: Option<i64>, cursor: Option<&str>) -> Result<Self, ApiError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(n) => {
                return Err(ApiError::BadRequest(format!(
                    "limit: expected 1 to {MAX_LIMIT}, got {n}"
                )))
            }
        };
        let after = cursor.map(C::decode).transpose()?;
        Ok(Paging { limit, after })
    }

    /// How many rows to fetch: one more than a page.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// The page of `rows` (fetched with [`Paging::fetch`]), with a cursor after its last item
    /// when more follow. `key` is the item's sort key, the one the query orders by.
    pub fn page<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> C) -> Page<T> {
        let next_cursor = if rows.len() as i64 > self.limit {
            rows.truncate(self.limit as usize);
            rows.last().map(|r| key(r).encode())
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn cursors_round_trip_and_refuse_what_we_did_not_hand_out() {
        let time = (t("2026-11-27T12:00:00.123456Z"), 42);
        assert_eq!(
            <(DateTime<Utc>, i64)>::decode(&time.encode()).unwrap(),
            time
        );
        assert_eq!(i64::decode(&7i64.encode()).unwrap(), 7);
        let id = "日本語/<x>".to_string();
        assert_eq!(String::decode(&id.encode()).unwrap(), id);
        for bad in ["%%%", "YWJj", ""] {
            assert!(i64::decode(bad).is_err(), "{bad}");
            assert!(<(DateTime<Utc>, i64)>::decode(bad).is_err(), "{bad}");
        }
        // NUL cannot reach Postgres
        assert!(String::decode(&URL_SAFE_NO_PAD.encode("a\0b")).is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(Paging::<i64>::new(None, None).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(Paging::<i64>::new(Some(1), None).unwrap().limit, 1);
        assert_eq!(
            Paging::<i64>::new(Some(MAX_LIMIT), None).unwrap().limit,
            MAX_LIMIT
        );
        for bad in [0, -1, MAX_LIMIT + 1] {
            assert!(Paging::<i64>::new(Some(bad), None).is_err(), "{bad}");
        }
        assert!(Paging::<i64>::new(None, Some("YWJj")).is_err());
        let p = Paging::<i64>::new(Some(2), Some(&5i64.encode())).unwrap();
        assert_eq!((p.after, p.fetch()), (Some(5), 3));
    }

    #[test]
    fn a_page_has_a_cursor_only_when_more_follow() {
        let p = Paging::<i64>::new(Some(2), None).unwrap();
        let full = p.page(vec![9, 8, 7], |n| *n);
        assert_eq!(full.items, [9, 8]);
        assert_eq!(
            full.next_cursor
                .as_deref()
                .map(i64::decode)
                .unwrap()
                .unwrap(),
            8
        );
        let last = p.page(vec![9, 8], |n| *n);
        assert_eq!((last.items, last.next_cursor), (vec![9, 8], None));
        let empty = p.page(Vec::<i64>::new(), |n| *n);
        assert!(empty.items.is_empty() && empty.next_cursor.is_none());
    }
}
