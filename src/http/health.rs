//! `/healthz` (the process is up; the state of each MQTT connection, each background task
//! and the canary), `/readyz` (Postgres
//! answers: the API can serve even while the broker is away) and Prometheus `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::AppState;

/// What the running service adds to `/healthz`: an object whose fields (`tasks`, `canary`,
/// `leader`) are merged in. A function, so that `http` need not know the supervisor; absent
/// when the router runs without the service (router tests).
#[derive(Clone)]
pub struct Liveness(pub Arc<dyn Fn() -> Value + Send + Sync>);

pub async fn healthz(
    State(state): State<AppState>,
    liveness: Option<Extension<Liveness>>,
) -> impl IntoResponse {
    Json(report(&state, liveness.as_ref().map(|Extension(l)| l)))
}

/// What `/healthz` says: the MQTT connections and their rates, HTTP connections, and (in a
/// running service) leadership, the canary, the tasks and the AWS pollers. The dashboard's
/// overview shows the same report.
pub fn report(state: &AppState, liveness: Option<&Liveness>) -> Value {
    // The per-connection limit (`ingest::rate`): each connection's receive rate, a warning
    // when it nears IoT Core's limit, and what the total rate needs.
    let limits = crate::ingest::rate::Limits::from_config(&state.config);
    let rates = crate::ingest::rate::assess_pool(&state.mqtt, &limits, state.clock.now());
    let connections: Vec<_> = state
        .mqtt
        .iter()
        .zip(&rates.connections)
        .map(|(c, r)| {
            let s = c.snapshot();
            json!({
                "client_id": c.client_id,
                "connected": s.connected,
                "since": s.since,
                "last_error": s.last_error,
                "reconnects": s.reconnects,
                "messages": s.messages,
                "subscriptions": c.subscriptions,
                "receive_rate": r.rate,
                "warning": r.warning,
            })
        })
        .collect();
    let all_up = state.mqtt.iter().all(|c| c.snapshot().connected);
    let mut body = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "mqtt": {
            "all_connected": all_up,
            "connections": connections,
            "receive_rate": rates.total_rate,
            "per_connection_limit": rates.limit,
            "warn_at": rates.warn_at,
            "connections_needed": rates.connections_needed,
        },
        "http": {
            "connections": state.metrics.http.connections.get(),
            "max_connections": state.metrics.http.max_connections.get(),
            "open_files_limit": state.metrics.http.open_files_limit.get(),
        },
    });
    if let (Some(l), Value::Object(body)) = (liveness, &mut body) {
        if let Value::Object(extra) = (l.0)() {
            body.extend(extra);
        }
    }
    body
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let ping = crate::db::ping(&state.pool);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "database": "ok"})),
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check: database error");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "database": "error"})),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "database": "timeout"})),
        ),
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
