//! Errors as pages: a browser that asks for HTML (`Accept: text/html`) outside `/api` gets an
//! error page instead of the problem document every handler answers with. The status, the
//! title and the detail are the problem's; `Retry-After` is kept. Fragment requests
//! (`HX-Request`) and API clients keep the JSON: htmx does not swap error answers, and scripts
//! want something to parse.

use askama::Template;
use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::view::Chrome;
use super::Page;

/// The error page.
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub status: u16,
    pub title: String,
    pub detail: String,
}

impl Page for ErrorPage {
    fn title(&self) -> &str {
        &self.title
    }
    fn chrome(&self) -> Option<&Chrome> {
        None
    }
}

#[derive(Deserialize)]
struct Problem {
    title: String,
    detail: String,
}

/// Whether a request is a browser navigation that should see an HTML error.
fn wants_html(req: &Request) -> bool {
    let path = req.uri().path();
    if path.starts_with("/api/") || path == "/live" {
        return false;
    }
    if req.headers().contains_key("hx-request") {
        return false;
    }
    req.headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// Middleware: problem documents become error pages for browsers.
pub async fn html_errors(req: Request, next: Next) -> Response {
    let html = wants_html(&req);
    let res = next.run(req).await;
    let is_problem = res
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !html || !is_problem {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    // Problem documents are a few hundred bytes; anything larger is not one of ours.
    let bytes = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => b,
        Err(_) => return (parts.status, "error\n").into_response(),
    };
    let Ok(p) = serde_json::from_slice::<Problem>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let page = ErrorPage {
        status: parts.status.as_u16(),
        title: p.title,
        detail: p.detail,
    };
    let Ok(text) = page.render() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "error\n").into_response();
    };
    parts.headers.remove(WWW_AUTHENTICATE);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    super::apply_security_headers(&mut parts.headers);
    Response::from_parts(parts, Body::from(text))
}
