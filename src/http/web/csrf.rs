//! Cross-site request forgery: every unsafe method (POST, PUT, PATCH, DELETE) on the cookie
//! routes is refused with `403` unless the browser says the request came from this origin.
//!
//! The rule, in order ([`decide`]):
//! 1. `Sec-Fetch-Site: same-origin` or `none` (typed into the address bar) → allowed; any other
//!    value (`same-site`, `cross-site`, garbage) → refused. Every current browser sends it.
//! 2. No Fetch-Metadata (older browsers): the `Origin` header must equal this request's own
//!    origin (scheme from `dashboard.public_url` / a trusted `X-Forwarded-Proto`, host from
//!    `Host`), or the origin of `dashboard.public_url`. `Origin: null` is refused.
//! 3. Neither header → refused (a browser always sends one of them on a POST; a script without
//!    them is not a browser and should use the API with a token).
//!
//! No token in forms is needed: `SameSite=Strict` cookies plus this check cover login CSRF and
//! forged actions; a page can never be framed (`frame-ancestors 'none'`).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::DashboardConfig;
use crate::http::AppState;

/// Whether a request may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused, and why (for the log and the 403 body).
    Refuse(&'static str),
}

/// The scheme this request reached us over, as far as we may believe: `https` when the
/// configured public URL says so, or a trusted proxy says so.
pub fn scheme(cfg: &DashboardConfig, headers: &HeaderMap) -> &'static str {
    let forwarded_https = cfg.trust_proxy_headers
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    if cfg.https() || forwarded_https {
        "https"
    } else {
        "http"
    }
}

/// The pure rule of the module doc.
pub fn decide(cfg: &DashboardConfig, method: &Method, headers: &HeaderMap) -> Verdict {
    if matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) {
        return Verdict::Allow;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.to_str().unwrap_or("") {
            "same-origin" | "none" => Verdict::Allow,
            _ => Verdict::Refuse("the request came from another site (Sec-Fetch-Site)"),
        };
    }
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return Verdict::Refuse("the request carries neither Sec-Fetch-Site nor Origin");
    };
    let origin = origin.trim_end_matches('/');
    if let Some(host) = headers.get("host").and_then(|v| v.to_str().ok()) {
        let own = format!("{}://{}", scheme(cfg, headers), host);
        if origin.eq_ignore_ascii_case(&own) {
            return Verdict::Allow;
        }
    }
    if let Some(public) = cfg.public_url.as_deref().and_then(origin_of) {
        if origin.eq_ignore_ascii_case(public) {
            return Verdict::Allow;
        }
    }
    Verdict::Refuse("the request's Origin is not this site")
}

/// `https://host:port` of a URL (its scheme and authority, without path).
fn origin_of(url: &str) -> Option<&str> {
    let rest = url.find("://").map(|i| i + 3)?;
    let end = url[rest..].find('/').map_or(url.len(), |i| rest + i);
    Some(&url[..end])
}

/// The middleware: refuse what [`decide`] refuses with a plain `403`.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match decide(&state.config.dashboard, req.method(), req.headers()) {
        Verdict::Allow => next.run(req).await,
        Verdict::Refuse(why) => {
            tracing::info!(method = %req.method(), path = %req.uri().path(), why, "CSRF check refused a request");
            (
                StatusCode::FORBIDDEN,
                format!("refused: {why}. Reload the page and try again.\n"),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn fetch_metadata_then_origin_then_refuse() {
        let cfg = DashboardConfig::default();
        let post = Method::POST;
        let allow = |hs: &[(&'static str, &str)]| decide(&cfg, &post, &h(hs)) == Verdict::Allow;
        assert!(allow(&[("sec-fetch-site", "same-origin")]));
        assert!(allow(&[("sec-fetch-site", "none")]));
        assert!(!allow(&[("sec-fetch-site", "same-site")]));
        assert!(!allow(&[("sec-fetch-site", "cross-site")]));
        // Fetch-Metadata wins over a matching Origin
        assert!(!allow(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://fw.local:8080"),
            ("host", "fw.local:8080")
        ]));
        assert!(allow(&[
            ("origin", "http://fw.local:8080"),
            ("host", "fw.local:8080")
        ]));
        assert!(!allow(&[
            ("origin", "https://fw.local:8080"),
            ("host", "fw.local:8080")
        ]));
        assert!(!allow(&[
            ("origin", "http://evil.example"),
            ("host", "fw.local:8080")
        ]));
        assert!(!allow(&[("origin", "null"), ("host", "fw.local:8080")]));
        assert!(!allow(&[("host", "fw.local:8080")]));
        assert!(!allow(&[]));
        // safe methods are never refused
        assert_eq!(decide(&cfg, &Method::GET, &h(&[])), Verdict::Allow);
        for m in [Method::PUT, Method::PATCH, Method::DELETE] {
            assert_ne!(decide(&cfg, &m, &h(&[])), Verdict::Allow, "{m}");
        }
    }

    #[test]
    fn the_scheme_comes_from_config_or_a_trusted_proxy() {
        let mut cfg = DashboardConfig::default();
        let fwd = h(&[
            ("origin", "https://fw.example"),
            ("host", "fw.example"),
            ("x-forwarded-proto", "https"),
        ]);
        // an untrusted X-Forwarded-Proto is ignored
        assert_ne!(decide(&cfg, &Method::POST, &fwd), Verdict::Allow);
        cfg.trust_proxy_headers = true;
        assert_eq!(decide(&cfg, &Method::POST, &fwd), Verdict::Allow);
        let mut cfg = DashboardConfig {
            public_url: Some("https://fw.example/".into()),
            ..DashboardConfig::default()
        };
        let proxied = h(&[("origin", "https://fw.example"), ("host", "10.0.0.5:8080")]);
        assert_eq!(decide(&cfg, &Method::POST, &proxied), Verdict::Allow);
        cfg.public_url = Some("https://other.example".into());
        assert_ne!(decide(&cfg, &Method::POST, &proxied), Verdict::Allow);
    }
}
