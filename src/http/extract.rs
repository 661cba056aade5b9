//! Extractors for `/api` handlers that reject with the problem+json [`ApiError`] themselves, so
//! a handler receives its values already checked: [`ApiJson`] (a JSON body), [`ApiQuery`] (query
//! parameters), [`ApiPath`] (path parameters, free of what Postgres `text` cannot hold) and
//! [`PathId`] (a numeric resource id).
//!
//! axum's own extractors answer in plain text, and a handler taking `Result<Json<T>, _>` has to
//! remember to convert; one forgotten conversion is a text/plain error in a problem+json API.

use std::marker::PhantomData;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body: `413` over the body limit (`http.max_body_bytes`), `422` for anything else
/// (not JSON, wrong content type, missing or unknown fields).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("the request body is over this server's limit".into())
    } else {
        ApiError::Unprocessable(e.body_text())
    }
}

/// Query parameters: `400` when they do not deserialize into `T`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// The longest path parameter we pass on to a query.
const MAX_PATH_PARAM: usize = 1024;

/// Path parameters: `400` when they do not deserialize into `T`, contain NUL (Postgres `text`
/// refuses it, so it would fail the query rather than find nothing) or are over 1024 bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        for (name, value) in &raw {
            if value.contains('\0') {
                return Err(ApiError::BadRequest(format!(
                    "{name}: NUL characters are not allowed"
                )));
            }
            if value.len() > MAX_PATH_PARAM {
                return Err(ApiError::BadRequest(format!("{name}: too long")));
            }
        }
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// What a numeric id names, for the `404` of an id that names nothing.
pub trait Resource {
    /// As in "no alert 12".
    const NAME: &'static str;
}

/// The one path parameter of a route, a numeric id of `R`. Anything that is not a positive
/// integer names nothing: `404`, like an id that does not exist (not `400`: to a client both are
/// "no such thing", and ids are opaque).
pub struct PathId<R>(pub i64, PhantomData<R>);

impl<R> PathId<R> {
    pub fn get(&self) -> i64 {
        self.0
    }
}

impl<R, S> FromRequestParts<S> for PathId<R>
where
    R: Resource,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        raw.parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(|id| PathId(id, PhantomData))
            .ok_or_else(|| ApiError::NotFound(format!("no {} {raw:?}", R::NAME)))
    }
}

/// Marker types naming the resources with numeric ids.
pub mod ids {
    use super::Resource;

    pub struct Alert;
    impl Resource for Alert {
        const NAME: &'static str = "alert";
    }

    pub struct Silence;
    impl Resource for Silence {
        const NAME: &'static str = "silence";
    }

    pub struct Delivery;
    impl Resource for Delivery {
        const NAME: &'static str = "delivery";
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::{get, post};
    use axum::Router;
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body1 {
        #[allow(dead_code)]
        n: i64,
    }

    #[derive(Deserialize)]
    struct Q {
        #[allow(dead_code)]
        limit: Option<i64>,
    }

    fn app() -> Router {
        Router::new()
            .route("/json", post(|ApiJson(_): ApiJson<Body1>| async { "ok" }))
            .route("/query", get(|ApiQuery(_): ApiQuery<Q>| async { "ok" }))
            .route(
                "/text/{id}",
                get(|ApiPath(id): ApiPath<String>| async move { id }),
            )
            .route(
                "/alerts/{id}",
                get(|id: PathId<ids::Alert>| async move { id.get().to_string() }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(64))
    }

    /// Status, content type and body of a request.
    async fn call(req: Request<Body>) -> (StatusCode, String, String) {
        let r = app().oneshot(req).await.unwrap();
        let status = r.status();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, ct, String::from_utf8_lossy(&body).into_owned())
    }

    fn json(body: &str, content_type: Option<&str>) -> Request<Body> {
        let mut r = Request::post("/json");
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        r.body(Body::from(body.to_string())).unwrap()
    }

    fn get_req(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    const PROBLEM: &str = "application/problem+json";

    #[tokio::test]
    async fn json_bodies() {
        assert_eq!(
            call(json(r#"{"n": 1}"#, Some("application/json"))).await.0,
            200
        );
        for (body, ct) in [
            (r#"{"n": "x"}"#, Some("application/json")),
            (r#"{"n": 1, "m": 2}"#, Some("application/json")),
            ("{", Some("application/json")),
            (r#"{"n": 1}"#, None),
            (r#"{"n": 1}"#, Some("text/plain")),
        ] {
            let (s, t, _) = call(json(body, ct)).await;
            assert_eq!(
                (s, t.as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, PROBLEM),
                "{body} {ct:?}"
            );
        }
        let big = format!(r#"{{"n": 1, "pad": "{}"}}"#, "x".repeat(100));
        let (s, t, _) = call(json(&big, Some("application/json"))).await;
        assert_eq!((s, t.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, PROBLEM));
    }

    #[tokio::test]
    async fn queries() {
        assert_eq!(call(get_req("/query?limit=5")).await.0, 200);
        let (s, t, _) = call(get_req("/query?limit=five")).await;
        assert_eq!((s, t.as_str()), (StatusCode::BAD_REQUEST, PROBLEM));
    }

    #[tokio::test]
    async fn text_paths() {
        let (s, _, b) = call(get_req("/text/a%20b")).await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "a b"));
        for bad in ["/text/a%00b", "/text/%FF"] {
            let (s, t, _) = call(get_req(bad)).await;
            assert_eq!((s, t.as_str()), (StatusCode::BAD_REQUEST, PROBLEM), "{bad}");
        }
        let long = format!("/text/{}", "x".repeat(1025));
        let (s, _, b) = call(get_req(&long)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(b.contains("id: too long"), "{b}");
        let ok = format!("/text/{}", "x".repeat(1024));
        assert_eq!(call(get_req(&ok)).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn numeric_ids() {
        let (s, _, b) = call(get_req("/alerts/42")).await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "42"));
        for bad in ["0", "-1", "x", "1.5", "99999999999999999999", "a%00"] {
            let (s, t, b) = call(get_req(&format!("/alerts/{bad}"))).await;
            assert_eq!((s, t.as_str()), (StatusCode::NOT_FOUND, PROBLEM), "{bad}");
            assert!(b.contains("no alert"), "{b}");
        }
    }
}
