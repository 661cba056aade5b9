//! Bearer-token authentication for `/api`. Until stored tokens exist, the one accepted token is
//! the bootstrap `FLEETWATCH_API_TOKEN`; without it every `/api` request is refused. Tokens are
//! compared as SHA-256 digests in constant time, so neither content nor length leaks by timing.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let expected = state
        .api_token_digest
        .as_ref()
        .ok_or(ApiError::Unauthorized)?;
    let presented = bearer(&req).ok_or(ApiError::Unauthorized)?;
    if bool::from(digest(presented).ct_eq(expected.as_ref())) {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}
