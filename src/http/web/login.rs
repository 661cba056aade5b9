//! `GET /login`, `POST /login`, `POST /logout`, and the login rate limit.
//!
//! Login answers a failure the same way whatever failed (unknown name, wrong password,
//! disabled user) and in about the same time: an unknown name is verified against a dummy
//! Argon2id hash, a disabled user's password is verified before the refusal. Success starts a
//! fresh session (the cookie the browser came with, if any, is deleted: rotation) and
//! redirects (`303`) to `next` when it is a local path ([`safe_next`]), else to `/`.
//!
//! The rate limit ([`LoginLimiter`]): after `dashboard.login_failures` failed logins within
//! `dashboard.login_window` for one user name (case-insensitive), or from one client address,
//! further attempts for it get `429` with `Retry-After` and the form saying so, without a
//! password check. Counts live in memory, per replica: behind a load balancer with N replicas
//! an attacker gets up to N times the budget, and a restart forgets the counts. Acceptable for
//! a staff screen with 12-character passwords hashed with Argon2id; a shared limit would need a
//! table written on every failed attempt.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::header::{LOCATION, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Form;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;

use super::session::{self, cookie_token};
use super::Page;
use crate::config::{DashboardConfig, Secret};
use crate::db;
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::users;

/// The one message for every failed login.
pub const FAILED: &str = "Wrong user name or password.";

/// The login page.
#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
pub struct LoginPage {
    /// Where to go after signing in (already checked by [`safe_next`]).
    pub next: String,
    /// The name typed last time, so a typo in the password does not cost retyping it.
    pub username: String,
    pub error: Option<String>,
}

impl Page for LoginPage {
    fn title(&self) -> &str {
        "Sign in"
    }
    fn chrome(&self) -> Option<&super::view::Chrome> {
        None
    }
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Count a sign-in's outcome (`dashboard_logins` on `/metrics`).
fn login_outcome(state: &AppState, outcome: &str) {
    state
        .metrics
        .http
        .logins
        .get_or_create(&vec![("outcome", outcome.to_string())])
        .inc();
}

/// `GET /login`
pub async fn form(Query(q): Query<NextQuery>) -> LoginPage {
    LoginPage {
        next: safe_next(q.next.as_deref()).to_string(),
        username: String::new(),
        error: None,
    }
}

/// `next` if it is a path on this site, else `/`. Refused: anything not starting with a
/// single `/` (absolute URLs, `//host` and `/\host`, which browsers treat as another host),
/// backslashes and control characters anywhere, and anything over 2,000 bytes.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.len() <= 2000
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n
        }
        _ => "/",
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// The client's address: the connection's peer, or with `dashboard.trust_proxy_headers` the
/// last `X-Forwarded-For` entry (the one the proxy itself appended; earlier ones are whatever
/// the client claimed). `None` in handler tests without a socket.
fn client_ip(
    cfg: &DashboardConfig,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Option<IpAddr> {
    if cfg.trust_proxy_headers {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|a| a.trim().parse::<IpAddr>().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer.map(|p| p.ip())
}

/// `POST /login`
pub async fn submit(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, ApiError> {
    let cfg = &state.config.dashboard;
    let now = state.clock.now();
    let next = safe_next(f.next.as_deref()).to_string();
    // Names longer than any stored one cannot match; keep the key (and the log) bounded.
    let name: String = f
        .username
        .trim()
        .chars()
        .take(users::MAX_NAME_CHARS + 1)
        .collect();
    let ip = client_ip(cfg, &headers, peer.map(|Extension(ConnectInfo(p))| p));
    let keys = LoginLimiter::keys(&name, ip);
    let page = |error: &str, status: StatusCode| {
        (
            status,
            LoginPage {
                next: next.clone(),
                username: name.clone(),
                error: Some(error.to_string()),
            },
        )
    };
    if let Err(wait) = state.login_limiter.check(&keys, now) {
        let secs = wait.num_seconds().max(1) as u64;
        login_outcome(&state, "limited");
        let minutes = secs.div_ceil(60);
        let (status, page) = page(
            &format!(
                "Too many failed sign-ins for this user or from this address. Try again in {minutes} minute{}.",
                if minutes == 1 { "" } else { "s" }
            ),
            StatusCode::TOO_MANY_REQUESTS,
        );
        return Ok((status, [(RETRY_AFTER, HeaderValue::from(secs))], page).into_response());
    }
    // A name no user can have (too long, control characters: a NUL would even make Postgres
    // refuse the query) is an unknown user, without a lookup.
    let found = if crate::tokens::validate_name(&name).is_ok() {
        db::users::credentials(&state.pool, &name).await?
    } else {
        None
    };
    let password = Secret::new(if f.password.chars().count() <= users::MAX_PASSWORD_CHARS {
        f.password
    } else {
        // Cannot be anyone's password; hash something of bounded size so the time is the same.
        String::new()
    });
    let hash = found.as_ref().map_or_else(
        || users::dummy_hash().to_string(),
        |c| c.password_hash.clone(),
    );
    let matches = users::verify_password(password, hash).await;
    let user = match found {
        Some(c) if matches && c.disabled_at.is_none() => c,
        _ => {
            state.login_limiter.fail(&keys, now);
            login_outcome(&state, "failed");
            state.login_warn.warn(
                "login_failed",
                // Not the name typed: people type their password into the name field.
                &format_args!("a dashboard sign-in failed (client address {ip:?})"),
            );
            let (status, page) = page(FAILED, StatusCode::OK);
            return Ok((status, page).into_response());
        }
    };
    state.login_limiter.succeed(&keys);
    login_outcome(&state, "ok");
    let token =
        users::start_session(&state.pool, cfg, user.id, cookie_token(&headers), now).await?;
    tracing::info!(user = %user.name, "dashboard login");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (
                LOCATION,
                HeaderValue::from_str(&next).unwrap_or(HeaderValue::from_static("/")),
            ),
            (
                SET_COOKIE,
                session::set_cookie(cfg, &headers, token.expose()),
            ),
        ],
    )
        .into_response())
}

/// `POST /logout`: the session is deleted (its cookie stops working at once, wherever it was
/// copied), the browser told to forget it, and sent to the login form.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = cookie_token(&headers) {
        users::end_session(&state.pool, token).await?;
    }
    Ok((
        StatusCode::SEE_OTHER,
        [
            (LOCATION, HeaderValue::from_static("/login")),
            (
                SET_COOKIE,
                session::clear_cookie(&state.config.dashboard, &headers),
            ),
        ],
    )
        .into_response())
}

/// Failed logins per key in a sliding window, in memory (see the module doc).
#[derive(Debug)]
pub struct LoginLimiter {
    max: usize,
    window: TimeDelta,
    failures: Mutex<HashMap<String, VecDeque<DateTime<Utc>>>>,
}

/// Most keys kept: beyond it, keys whose failures all left the window are dropped first, then
/// arbitrary ones (a flood of invented names must not grow memory without bound; losing the
/// count of one name only restores its full budget).
const MAX_KEYS: usize = 50_000;

impl LoginLimiter {
    pub fn new(cfg: &DashboardConfig) -> Self {
        LoginLimiter {
            max: cfg.login_failures as usize,
            window: cfg.login_window.delta(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The keys one attempt counts against: the user name (lowercase) and the address.
    pub fn keys(name: &str, ip: Option<IpAddr>) -> Vec<String> {
        let mut k = vec![format!("user:{}", name.to_lowercase())];
        if let Some(ip) = ip {
            k.push(format!("addr:{ip}"));
        }
        k
    }

    /// `Err(wait)` when any key is over its budget at `now`.
    pub fn check(&self, keys: &[String], now: DateTime<Utc>) -> Result<(), TimeDelta> {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let mut wait = TimeDelta::zero();
        for k in keys {
            if let Some(q) = map.get_mut(k) {
                while q.front().is_some_and(|t| *t <= now - self.window) {
                    q.pop_front();
                }
                if q.len() >= self.max {
                    let oldest = q[q.len() - self.max];
                    wait = wait.max(oldest + self.window - now);
                }
            }
        }
        if wait > TimeDelta::zero() {
            Err(wait)
        } else {
            Ok(())
        }
    }

    /// Count a failed attempt against every key.
    pub fn fail(&self, keys: &[String], now: DateTime<Utc>) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_KEYS {
            let cutoff = now - self.window;
            map.retain(|_, q| q.back().is_some_and(|t| *t > cutoff));
            while map.len() >= MAX_KEYS {
                let Some(k) = map.keys().next().cloned() else {
                    break;
                };
                map.remove(&k);
            }
        }
        for k in keys {
            let q = map.entry(k.clone()).or_default();
            q.push_back(now);
            // only the newest `max` matter
            while q.len() > self.max {
                q.pop_front();
            }
        }
    }

    /// A successful login clears the user name's count (not the address's: one good password
    /// must not reset a guessing run from that address against other names).
    pub fn succeed(&self, keys: &[String]) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = keys.first() {
            map.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_must_be_a_local_path() {
        for ok in ["/", "/devices?state=silent", "/alerts/3#trail"] {
            assert_eq!(safe_next(Some(ok)), ok);
        }
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "javascript:alert(1)",
            "devices",
            "",
            "/a\nb",
            "/\tevil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
        assert_eq!(safe_next(Some(&format!("/{}", "a".repeat(2000)))), "/");
    }

    #[test]
    fn the_limiter_counts_per_key_in_a_sliding_window() {
        let cfg = DashboardConfig::default(); // 5 per 15 min
        let l = LoginLimiter::new(&cfg);
        let t0 = DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .to_utc();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let alice = LoginLimiter::keys("Alice", Some(ip));
        for i in 0..5 {
            assert!(l.check(&alice, t0 + TimeDelta::minutes(i)).is_ok(), "{i}");
            l.fail(&alice, t0 + TimeDelta::minutes(i));
        }
        // the sixth is refused until the first failure leaves the window
        assert_eq!(
            l.check(&alice, t0 + TimeDelta::minutes(5)),
            Err(TimeDelta::minutes(10))
        );
        // the same name in other case, from elsewhere: the name is what counts
        let other = LoginLimiter::keys("ALICE", Some("198.51.100.7".parse().unwrap()));
        assert!(l.check(&other, t0 + TimeDelta::minutes(5)).is_err());
        // another name from the same address: the address counts
        let bob = LoginLimiter::keys("bob", Some(ip));
        assert!(l.check(&bob, t0 + TimeDelta::minutes(5)).is_err());
        // a third party is untouched
        assert!(l.check(&LoginLimiter::keys("carol", None), t0).is_ok());
        assert!(l.check(&alice, t0 + TimeDelta::minutes(15)).is_ok());
    }
}
