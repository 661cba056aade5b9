//! The session cookie and the signed-in user.
//!
//! The cookie is `fleetwatch_session=<256-bit random token>; HttpOnly; SameSite=Strict; Path=/`
//! with `Max-Age` = `dashboard.session_max`, plus `Secure` when the dashboard is served over
//! TLS (`dashboard.public_url` is `https://`, or a trusted proxy says `X-Forwarded-Proto:
//! https`). Only the token's SHA-256 is stored (`users::start_session`).
//!
//! [`CurrentUser`] finds the user of a live session or refuses: a page request is redirected
//! (`303`) to `/login?next=<where it was going>`; a fragment or XHR request (`HX-Request`) gets
//! a `401` problem, since following a redirect into a login form inside a fragment would be
//! worse than useless. [`Operator`] additionally refuses viewers with `403`.

use axum::extract::FromRequestParts;
use axum::http::header::{COOKIE, LOCATION};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::csrf;
use crate::config::DashboardConfig;
use crate::domain::actor::Actor;
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::users::{self, Role, SessionUser};

/// The cookie's name.
pub const COOKIE_NAME: &str = "fleetwatch_session";

/// The session token the request's cookies carry, if any (the first `fleetwatch_session`).
pub fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the cookie must be `Secure` for this request.
fn secure(cfg: &DashboardConfig, headers: &HeaderMap) -> bool {
    csrf::scheme(cfg, headers) == "https"
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(cfg: &DashboardConfig, headers: &HeaderMap, token: &str) -> HeaderValue {
    let max_age = cfg.session_max.0.as_secs();
    let secure = if secure(cfg, headers) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .expect("a token is base64url")
}

/// `Set-Cookie` that makes the browser forget the session.
pub fn clear_cookie(cfg: &DashboardConfig, headers: &HeaderMap) -> HeaderValue {
    let secure = if secure(cfg, headers) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"
    ))
    .expect("ASCII")
}

/// The signed-in user of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentUser(pub SessionUser);

impl CurrentUser {
    /// How audit trails name this user: `user:<name>`.
    pub fn actor(&self) -> Actor {
        Actor::user(&self.0.name)
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn role(&self) -> Role {
        self.0.role
    }
}

/// The signed-in user, who is an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator(pub CurrentUser);

/// Why a request has no usable user.
#[derive(Debug)]
pub enum Refusal {
    /// Not signed in, page request: go to the login form, then come back to `next`.
    Login {
        next: String,
    },
    /// Not signed in, fragment / XHR request.
    Unauthorized,
    /// Signed in as a viewer where an operator is needed.
    NotOperator,
    Error(ApiError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Login { next } => {
                let to = format!("/login?next={}", percent_encode(&next));
                (
                    StatusCode::SEE_OTHER,
                    [(
                        LOCATION,
                        HeaderValue::from_str(&to).expect("percent-encoded"),
                    )],
                )
                    .into_response()
            }
            Refusal::Unauthorized => problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "not signed in, or the session ended; reload the page to sign in",
            ),
            Refusal::NotOperator => problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                "this needs the operator role; viewers can only read",
            ),
            Refusal::Error(e) => e.into_response(),
        }
    }
}

fn problem(status: StatusCode, kind: &str, title: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": format!("https://fleetwatch.dev/problems/{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// Percent-encode everything but unreserved characters (RFC 3986), for a query value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refusal> {
        if let Some(u) = parts.extensions.get::<CurrentUser>() {
            return Ok(u.clone());
        }
        let found = match cookie_token(&parts.headers) {
            Some(token) => users::session_user(
                &state.pool,
                &state.config.dashboard,
                token,
                state.clock.now(),
            )
            .await
            .map_err(|e| Refusal::Error(e.into()))?,
            None => None,
        };
        match found {
            Some(u) => {
                let u = CurrentUser(u);
                parts.extensions.insert(u.clone());
                Ok(u)
            }
            None if parts.headers.contains_key("hx-request") => Err(Refusal::Unauthorized),
            None => Err(Refusal::Login {
                next: parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string(),
            }),
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refusal> {
        let u = CurrentUser::from_request_parts(parts, state).await?;
        if u.role() == Role::Operator {
            Ok(Operator(u))
        } else {
            Err(Refusal::NotOperator)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        assert_eq!(cookie_token(&h), None);
        h.append(COOKIE, "a=1; fleetwatch_sessionx=no".parse().unwrap());
        assert_eq!(cookie_token(&h), None);
        h.append(
            COOKIE,
            "b=2;fleetwatch_session=fw_abc ; c=3".parse().unwrap(),
        );
        assert_eq!(cookie_token(&h), Some("fw_abc"));
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "fleetwatch_session=".parse().unwrap());
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn next_is_percent_encoded() {
        assert_eq!(
            percent_encode("/devices?state=silent&q=a b"),
            "/devices%3Fstate%3Dsilent%26q%3Da%20b"
        );
        assert_eq!(percent_encode("/é"), "/%C3%A9");
    }
}
