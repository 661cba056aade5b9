//! The dashboard's pages (issue 10): server-rendered HTML from askama templates (`templates/`),
//! signed in with a session cookie, never with an API token.
//!
//! What this module owns, and its contract for every page added under it:
//! - [`router`] holds every route outside `/api`; pages are added to it.
//! - Every response here carries the security headers ([`security_headers`]): a
//!   Content-Security-Policy with no inline script or style (templates must use files under
//!   `static/`), `nosniff`, `Referrer-Policy: same-origin`, and `Cache-Control: no-store` unless
//!   the handler set its own (pages show live data and who is signed in).
//! - Every unsafe method (POST, PUT, PATCH, DELETE) passes the CSRF check ([`csrf`]) before its
//!   handler runs, `POST /login` included.
//! - Handlers name who acts with [`session::CurrentUser`] (any signed-in user) or
//!   [`session::Operator`] (refuses viewers with 403); the audit actor is
//!   [`session::CurrentUser::actor`] (`user:<name>`).
//! - askama escapes every `{{ }}` as HTML by default; no template may use `|safe` on text that
//!   came from a device or a user.

pub mod alerts;
pub mod assets;
pub mod chart;
pub mod csrf;
pub mod demo;
pub mod devices;
pub mod error;
pub mod live;
pub mod login;
pub mod overview;
pub mod session;
pub mod silences;
pub mod view;
pub mod webhooks;

use axum::extract::Request;
use axum::http::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use super::AppState;

/// The policy every page is served with: scripts, styles and images from this origin only (no
/// inline script or style, no `eval`), no framing (clickjacking), forms post only here.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; \
                       base-uri 'none'";

/// The dashboard's routes, with CSRF protection and the security headers.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(overview::page))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/live", get(live::stream))
        .route("/static/{*path}", get(assets::serve))
        .route("/silences", get(silences::page).post(silences::create))
        .route("/silences/new", get(silences::new_form))
        .route("/silences/{id}/end", post(silences::end))
        .route("/webhooks", get(webhooks::page))
        .route("/webhooks/redrive", post(webhooks::redrive))
        .route("/devices", get(devices::list))
        .route("/devices/{id}", get(devices::page))
        .route("/devices/{id}/retire", post(devices::retire))
        .route("/devices/{id}/unretire", post(devices::unretire))
        .route("/alerts", get(alerts::list))
        .route("/alerts/bulk", post(alerts::bulk))
        .route("/alerts/{id}", get(alerts::page))
        .route("/alerts/{id}/ack", post(alerts::ack))
        .route("/alerts/{id}/ticket", post(alerts::ticket))
        .route("/demo/webhooks", get(demo::receiver_page))
        .route("/demo/story", get(demo::story))
        .route_layer(axum::middleware::from_fn_with_state(state, csrf::guard))
        .layer(axum::middleware::from_fn(security_headers))
}

/// The main navigation: (href, label). A page names the entry it belongs to with [`Page::nav`].
pub const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/devices", "Devices"),
    ("/alerts", "Alerts"),
    ("/silences", "Silences"),
    ("/webhooks", "Webhooks"),
];

/// What `templates/base.html` asks of every page's struct.
pub trait Page {
    /// The page's title (before "· fleetwatch").
    fn title(&self) -> &str;
    /// Who is signed in and the fleet's zone; `None` on the login page.
    fn chrome(&self) -> Option<&view::Chrome>;
    /// The [`NAV`] entry this page belongs to (its href); `""` for none.
    fn nav(&self) -> &'static str {
        ""
    }
    /// Who is signed in, for the header (name, role, sign-out button).
    fn signed_in(&self) -> Option<&session::CurrentUser> {
        self.chrome().map(|c| &c.user)
    }
    /// In `fleetwatch demo`: what its story is doing (the banner).
    fn story(&self) -> Option<&demo::Banner> {
        self.chrome().and_then(|c| c.story.as_ref())
    }
    /// The fleet's configured time zone (one of the viewer's choices).
    fn fleet_tz(&self) -> &str {
        self.chrome().map_or("UTC", |c| c.fleet_tz.as_str())
    }
    fn nav_items(&self) -> &'static [(&'static str, &'static str)] {
        NAV
    }
    fn nav_current(&self, href: &str) -> bool {
        self.nav() == href
    }
    /// A static file's versioned URL.
    fn asset(&self, name: &str) -> String {
        assets::url(name)
    }
}

/// Add the headers of the module contract to a response.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    apply_security_headers(res.headers_mut());
    res
}

/// The headers of the module contract (also on error pages rendered outside this router).
pub fn apply_security_headers(h: &mut axum::http::HeaderMap) {
    let set = |h: &mut axum::http::HeaderMap, k: HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, CONTENT_SECURITY_POLICY, CSP);
    set(h, X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, REFERRER_POLICY, "same-origin");
    if !h.contains_key(CACHE_CONTROL) {
        set(h, CACHE_CONTROL, "no-store");
    }
}
