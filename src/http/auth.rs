//! Bearer-token authentication, scopes and per-token rate limits for `/api`.
//!
//! A request is let in with `Authorization: Bearer <token>` where the token is either the
//! bootstrap `FLEETWATCH_API_TOKEN` (every scope) or a stored, unrevoked token
//! ([`crate::tokens`]). In order: no or unknown token → 401; over the token's rate → 429 (so
//! strangers never spend anyone's budget); a scope too small for the method → 403. GET and HEAD
//! need `read`, everything else `write`; `admin` implies `write`, which implies `read`.
//!
//! Nothing here depends on the secret's content by timing: the bootstrap token is compared as a
//! SHA-256 digest in constant time, and stored tokens are found by the SHA-256 of what was
//! presented (an index lookup on a digest reveals nothing about the preimage). There is no
//! cache, so a revoked token is refused from the next request on.

use std::time::Instant;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::rate_limit::retry_after_secs;
use super::AppState;
use crate::domain::actor::Actor;
use crate::tokens::{self, Scope};

/// SHA-256 of a token (the bootstrap token is held in memory as this).
pub fn digest(token: &str) -> [u8; 32] {
    tokens::hash(token)
}

/// Who made an authenticated request; in the request's extensions, and an extractor, so
/// handlers can name the actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The stored token's id; `None` for the bootstrap token.
    pub token_id: Option<i64>,
    /// The stored token's name, or `bootstrap`.
    pub name: String,
    pub scopes: Vec<Scope>,
}

impl Principal {
    fn bootstrap() -> Self {
        Principal {
            token_id: None,
            name: "bootstrap".into(),
            scopes: Scope::ALL.to_vec(),
        }
    }

    /// Whether this principal may do what `needed` stands for.
    pub fn allows(&self, needed: Scope) -> bool {
        tokens::grants(&self.scopes, needed)
    }

    /// How audit trails name this principal: `token:<id>:<name>`, and `token:0:bootstrap` for
    /// the bootstrap token ([`Actor::token`]). Every actor column and trail event holds this.
    pub fn actor(&self) -> Actor {
        self.acting_for(None)
    }

    /// This principal acting on behalf of the name a request body gave: the name is kept beside
    /// the principal, never instead of it.
    pub fn acting_for(&self, on_behalf_of: Option<String>) -> Actor {
        Actor::token(self.token_id, &self.name, on_behalf_of)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// The scope a request needs, by its method: reading is safe, anything else changes state.
pub fn required_scope(method: &Method) -> Scope {
    if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        Scope::Read
    } else {
        Scope::Write
    }
}

/// The token of an `Authorization: Bearer <token>` header (non-ASCII or empty: none).
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Who presented `token`, or `Unauthorized`.
async fn authenticate(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let presented = digest(token);
    if let Some(expected) = &state.api_token_digest {
        if bool::from(presented.ct_eq(expected.as_ref())) {
            return Ok(Principal::bootstrap());
        }
    }
    if !tokens::looks_like_token(token) {
        return Err(ApiError::Unauthorized);
    }
    let found = tokens::find_active(&state.pool, &presented)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let now = state.clock.now();
    if tokens::needs_touch(found.last_used_at, now) {
        // Bookkeeping: a failure to record the use must not refuse a valid request.
        if let Err(e) = tokens::touch(&state.pool, found.id, now).await {
            tracing::warn!(token_id = found.id, error = %e, "recording last_used_at failed");
        }
    }
    Ok(Principal {
        token_id: Some(found.id),
        name: found.name,
        scopes: found.scopes,
    })
}

pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(&req).ok_or(ApiError::Unauthorized)?;
    let principal = authenticate(&state, token).await?;
    // The bootstrap token belongs to whoever runs the service (their scripts, their tests) and
    // keeps its unlimited behaviour; stored tokens, handed to integrations, are limited.
    if let Some(id) = principal.token_id {
        state
            .rate_limiter
            .check(id, Instant::now())
            .map_err(|wait| ApiError::TooManyRequests {
                retry_after_secs: retry_after_secs(wait),
            })?;
    }
    let needed = required_scope(req.method());
    if !principal.allows(needed) {
        return Err(ApiError::Forbidden(format!(
            "this token lacks the {needed} scope, which {} requests need",
            req.method()
        )));
    }
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}
