//! The API harness: [`TestApp`] (the router over a test database, a manual clock and a
//! bootstrap token) and the request helpers every API test uses (send with a bearer token, read
//! the whole response, check problem+json).

use std::ops::Deref;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use chrono::{DateTime, Utc};
use fleetwatch::clock::{ManualClock, SharedClock};
use fleetwatch::config::{Config, Secret};
use fleetwatch::http::{router, AppState};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;

/// Where a [`TestApp`]'s clock starts unless told otherwise.
pub const NOW: &str = "2026-11-27T12:00:00Z";

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

/// The default configuration with `token` as the bootstrap token.
pub fn config_with_token(token: &str) -> Config {
    let mut c = Config::default();
    c.api.token = Some(Secret::new(token));
    c
}

/// [`AppState::for_tests`] on the system clock with `token` as the bootstrap token, for tests
/// that serve the router on a real socket.
pub fn state(pool: &PgPool, token: &str) -> AppState {
    let clock: SharedClock = Arc::new(fleetwatch::clock::SystemClock);
    AppState::for_tests(pool.clone(), config_with_token(token), clock)
}

/// The API over a test database, driven with `oneshot`. Derefs to its [`Router`].
#[derive(Clone)]
pub struct TestApp {
    pub app: Router,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    /// The bootstrap token (`None`: only stored tokens are let in).
    pub token: Option<String>,
}

impl TestApp {
    /// The clock at [`NOW`], `token` as the bootstrap token, the default configuration.
    pub fn new(pool: &PgPool, token: &str) -> TestApp {
        Self::build(pool, t(NOW), Some(token), |_| {})
    }

    /// Everything chosen: the clock's start, the bootstrap token, changes to the configuration.
    pub fn build(
        pool: &PgPool,
        now: DateTime<Utc>,
        token: Option<&str>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestApp {
        let mut config = Config::default();
        config.api.token = token.map(Secret::new);
        tweak(&mut config);
        let clock = ManualClock::new(now);
        let state = AppState::for_tests(pool.clone(), config, clock.clone());
        TestApp {
            app: router(state.clone()),
            state,
            clock,
            token: token.map(String::from),
        }
    }

    /// `Authorization: Bearer <the bootstrap token>`.
    pub fn auth(&self) -> Option<HeaderValue> {
        bearer(
            self.token
                .as_deref()
                .expect("this TestApp has no bootstrap token"),
        )
    }
}

impl Deref for TestApp {
    type Target = Router;
    fn deref(&self) -> &Router {
        &self.app
    }
}

/// A response, fully read.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn content_type(&self) -> &str {
        self.header(CONTENT_TYPE).unwrap_or("")
    }

    pub fn header(&self, name: impl axum::http::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn bearer(token: &str) -> Option<HeaderValue> {
    Some(HeaderValue::from_str(&format!("Bearer {token}")).unwrap())
}

/// Any request: the given `Authorization` and `Content-Type` (if any) and raw body.
pub async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    auth: Option<HeaderValue>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Resp {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header(AUTHORIZATION, a);
    }
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    respond(app, req.body(Body::from(body)).unwrap()).await
}

/// Run one built request through the router and collect the whole answer.
pub async fn respond(app: &Router, req: Request<Body>) -> Resp {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

/// A request with an optional JSON body (sent as `application/json`).
pub async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    auth: Option<HeaderValue>,
    body: Option<&Value>,
) -> Resp {
    match body {
        Some(b) => {
            let b = b.to_string().into_bytes();
            send(app, method, uri, auth, Some("application/json"), b).await
        }
        None => send(app, method, uri, auth, None, Vec::new()).await,
    }
}

/// GET with the bootstrap token.
pub async fn get(app: &TestApp, uri: &str) -> Resp {
    send(app, Method::GET, uri, app.auth(), None, Vec::new()).await
}

/// GET with `token`.
pub async fn get_with(app: &Router, uri: &str, token: &str) -> Resp {
    send(app, Method::GET, uri, bearer(token), None, Vec::new()).await
}

/// GET with the bootstrap token, expecting 200 JSON.
pub async fn get_ok(app: &TestApp, uri: &str) -> Value {
    assert_json_ok(&get(app, uri).await, uri)
}

/// A request with the bootstrap token and a JSON body given as raw text (so malformed JSON
/// can be sent too).
pub async fn send_json(app: &TestApp, method: Method, uri: &str, body: &str) -> Resp {
    let b = body.as_bytes().to_vec();
    send(app, method, uri, app.auth(), Some("application/json"), b).await
}

/// 200 with a JSON body; the body.
pub fn assert_json_ok(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
    assert!(
        r.content_type().starts_with("application/json"),
        "{what}: content-type {:?}",
        r.content_type()
    );
    r.json()
}

/// An RFC 9457 problem document with the given status.
pub fn assert_problem(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text());
    assert_problem_shape(r, what);
}

/// A problem document with one of the `allowed` statuses.
pub fn assert_client_problem(r: &Resp, allowed: &[u16], what: &str) {
    assert!(
        allowed.contains(&r.status.as_u16()),
        "{what}: status {} not in {allowed:?}: {}",
        r.status,
        r.text()
    );
    assert_problem_shape(r, what);
}

/// `application/problem+json` with `type`, `title`, `detail` and the response's `status`.
pub fn assert_problem_shape(r: &Resp, what: &str) {
    assert_eq!(r.content_type(), "application/problem+json", "{what}");
    let p = r.json();
    assert_eq!(p["status"], r.status.as_u16(), "{what}: {p}");
    assert!(p["title"].is_string(), "{what}: {p}");
    assert!(p["type"].is_string(), "{what}: {p}");
    assert!(p["detail"].is_string(), "{what}: {p}");
}

/// `401` problem with `WWW-Authenticate: Bearer`.
pub fn assert_unauthorized(r: &Resp, what: &str) {
    assert_problem(r, 401, what);
    assert_eq!(r.header(WWW_AUTHENTICATE), Some("Bearer"), "{what}");
}

/// A page holds nothing a CSP without `'unsafe-inline'` would block: every `<script>` has a
/// `src` and no body, no `<style>` element, no `style=` attribute, no `on…=` handler.
pub fn assert_no_inline_code(html: &str) {
    let lower = html.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(i) = rest.find("<script") {
        let tag_end = rest[i..]
            .find('>')
            .map(|e| i + e)
            .expect("script tag closes");
        let tag = &rest[i..=tag_end];
        assert!(tag.contains(" src="), "inline script: {tag}");
        assert!(
            rest[tag_end + 1..].starts_with("</script>"),
            "script with a body: {tag}"
        );
        rest = &rest[tag_end + 1..];
    }
    assert!(!lower.contains("<style"), "a <style> element");
    assert!(!lower.contains(" style="), "a style attribute");
    let handler = regex::Regex::new(r#"<[^>]*\son[a-z]+\s*="#).unwrap();
    assert!(!handler.is_match(&lower), "an inline event handler");
}
