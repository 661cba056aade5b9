//! Static files under `/static/…`, embedded in the binary at build time.
//!
//! Embedded rather than served from a directory (tower-http's `ServeDir`): the runtime image
//! holds only the binary, a directory would have to be found at run time, and a fixed table
//! cannot list a directory or be walked out of with `..` — a name is either in [`FILES`] or
//! `404`. Every file gets an `ETag` (its SHA-256) and, when requested with `?v=<that tag>` as
//! [`url`] writes it in templates, `Cache-Control: public, max-age=31536000, immutable`: a new
//! release changes the tag, so browsers never keep a stale stylesheet. Without the tag the
//! answer may be cached for 5 minutes.
//!
//! To add a file (e.g. vendored htmx), put it under `static/` and add a line to [`FILES`].

use std::sync::OnceLock;

use axum::extract::{Path, Query};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Every static file: its path under `/static/`, its content type, its bytes.
pub const FILES: &[(&str, &str, &[u8])] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../static/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../static/app.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../../static/favicon.svg"),
    ),
    // Vendored from the npm registry, unmodified (static/vendor/README.md says how).
    (
        "vendor/htmx-2.0.11.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../static/vendor/htmx-2.0.11.min.js"),
    ),
    (
        "vendor/idiomorph-ext-0.8.0.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../static/vendor/idiomorph-ext-0.8.0.min.js"),
    ),
];

/// The content tag of each file: 16 hex digits of its SHA-256.
fn tags() -> &'static Vec<String> {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        FILES
            .iter()
            .map(|(_, _, bytes)| hex::encode(&Sha256::digest(bytes)[..8]))
            .collect()
    })
}

/// `/static/<name>?v=<tag>`: the URL templates link a static file by. Panics on a name not in
/// [`FILES`] (a template bug, caught by every page test).
pub fn url(name: &str) -> String {
    let i = FILES
        .iter()
        .position(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("no static file {name:?}"));
    format!("/static/{name}?v={}", tags()[i])
}

#[derive(Debug, Deserialize)]
pub struct Version {
    v: Option<String>,
}

/// `GET /static/{*path}`
pub async fn serve(
    Path(path): Path<String>,
    Query(q): Query<Version>,
    headers: HeaderMap,
) -> Response {
    let Some(i) = FILES.iter().position(|(n, _, _)| *n == path) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let (_, content_type, bytes) = FILES[i];
    let tag = &tags()[i];
    let etag = format!("\"{tag}\"");
    let cache = if q.v.as_deref() == Some(tag.as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    };
    let common = [
        (ETAG, HeaderValue::from_str(&etag).expect("hex")),
        (CACHE_CONTROL, HeaderValue::from_static(cache)),
    ];
    let matched = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matched {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(CONTENT_TYPE, HeaderValue::from_static(content_type))],
        bytes,
    )
        .into_response()
}
