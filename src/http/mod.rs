//! The HTTP server: REST API under `/api/v1` (bearer tokens with scopes), health and metrics
//! endpoints, and the dashboard's pages (`web`, session cookies; never the API's tokens).
//! [`router`] is a pure function of the state, so tests drive it with `oneshot`.

pub mod api;
pub mod auth;
pub mod db_gate;
pub mod error;
pub mod extract;
pub mod health;
pub mod openapi;
pub mod rate_limit;
pub mod server;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use sqlx::PgPool;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::ingest::mqtt::ConnectionStatus;
use crate::metrics::Metrics;

/// Everything a request handler may need; every field is a cheap handle.
#[derive(Clone)]
pub struct AppState {
    /// The configuration, parsed and validated once at start.
    pub config: Arc<Config>,
    /// Postgres, the one source of truth.
    pub pool: PgPool,
    /// The service's own metrics, rendered on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The MQTT connections, for `/healthz`.
    pub mqtt: Arc<[Arc<ConnectionStatus>]>,
    /// Time, injected.
    pub clock: SharedClock,
    /// SHA-256 of the bootstrap API token (every scope); `None`: only stored tokens are let in.
    pub api_token_digest: Option<Arc<[u8; 32]>>,
    /// Per-token request budgets for `/api` (`[api] rate_limit_*`).
    pub rate_limiter: Arc<rate_limit::RateLimiter>,
    /// Failed dashboard logins per user name and client address (`[dashboard] login_*`).
    pub login_limiter: Arc<web::login::LoginLimiter>,
    /// Failed logins are logged at most once a minute.
    pub login_warn: Arc<crate::logging::RateLimitedWarn>,
    /// The dashboard's live updates of this replica (`web::live`); fed by the `live_listener`
    /// task of a running service, by nothing in router tests (which may publish to it).
    pub live: Arc<web::live::Hub>,
    /// The overview's sections shared between requests while nothing changed
    /// (`web::overview::Cache`).
    pub overview: Arc<web::overview::Cache>,
    /// `fleetwatch demo`'s story banner and webhook inbox; `None` outside the demo (its routes
    /// answer 404 then).
    pub demo: Option<Arc<crate::demo::Shared>>,
}

impl AppState {
    /// The state of a running service: the bootstrap token's digest and the rate limiter are
    /// derived from `config` (`[api]`).
    pub fn new(
        config: Arc<Config>,
        pool: PgPool,
        metrics: Arc<Metrics>,
        mqtt: Arc<[Arc<ConnectionStatus>]>,
        clock: SharedClock,
    ) -> Self {
        // Compute the dummy password hash now, off this thread, so the first sign-in with an
        // unknown name does not take twice as long as any other (a timing tell).
        std::thread::spawn(|| {
            crate::users::dummy_hash();
        });
        AppState {
            api_token_digest: config
                .api
                .token
                .as_ref()
                .map(|t| Arc::new(auth::digest(t.expose()))),
            rate_limiter: Arc::new(rate_limit::RateLimiter::from_config(&config.api)),
            login_limiter: Arc::new(web::login::LoginLimiter::new(&config.dashboard)),
            login_warn: Arc::new(crate::logging::RateLimitedWarn::new(Duration::from_secs(
                60,
            ))),
            live: Arc::new(web::live::Hub::new()),
            overview: Arc::default(),
            demo: None,
            config,
            pool,
            metrics,
            mqtt,
            clock,
        }
    }

    /// A state for tests that drive [`router`] without the rest of the service: `config`
    /// (e.g. `Config::default()` with `api.token` set), no MQTT connections, fresh metrics.
    pub fn for_tests(pool: PgPool, config: Config, clock: SharedClock) -> Self {
        Self::new(
            Arc::new(config),
            pool,
            Metrics::new(),
            Vec::new().into(),
            clock,
        )
    }
}

/// The router as served: [`router`] plus the edge settings that come from the configuration
/// (the body limit) and from running tasks (the database gate).
pub fn edge(router: Router, max_body_bytes: usize, gate: Arc<db_gate::DbGate>) -> Router {
    router
        .layer(axum::middleware::from_fn_with_state(gate, db_gate::guard))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
}

pub fn router(state: AppState) -> Router {
    let api = api::router()
        .method_not_allowed_fallback(api::method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/api/openapi.json", get(openapi::document))
        // the demo's webhook receiver: the caller is the webhook worker (no session, no CSRF)
        .route(
            "/demo/receiver",
            axum::routing::post(crate::demo::receiver::receive),
        )
        .method_not_allowed_fallback(api::method_not_allowed)
        .nest("/api/v1", api)
        .merge(web::router(state.clone()))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn(web::error::html_errors))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            state.config.http.request_timeout.0,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// A request's span, named by the route that matched (`/api/v1/devices/{id}`), never by the
/// raw path: ids in paths would give every device its own span name in a tracing backend.
fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str())
        .unwrap_or("unmatched");
    tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{} {route}", req.method()),
        method = %req.method(),
        route = %route,
    )
}
