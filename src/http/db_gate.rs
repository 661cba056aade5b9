//! Prompt `503`s during a database outage. A probe on a dedicated connection (so a busy pool
//! is not taken for an outage) checks Postgres every second; while it fails, API requests are
//! answered `503` with `Retry-After` at once instead of each waiting out the pool's 5 s acquire
//! timeout, and requests already waiting are answered the moment the probe fails.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;

/// How often the probe runs, and how long one check may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the database answers, as the probe last saw it.
pub struct DbGate {
    up: watch::Sender<bool>,
}

impl DbGate {
    /// A gate that lets requests through until a probe says otherwise.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            up: watch::Sender::new(true),
        })
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    fn set(&self, up: bool) {
        self.up.send_if_modified(|v| {
            let changed = *v != up;
            *v = up;
            changed
        });
    }

    /// Resolves when the database is (or becomes) unavailable.
    async fn down(&self) {
        let mut rx = self.up.subscribe();
        let _ = rx.wait_for(|up| !*up).await;
    }

    /// Probe Postgres until `cancel`: one dedicated connection, `select 1` every second.
    pub async fn run(self: Arc<Self>, opts: PgConnectOptions, cancel: CancellationToken) {
        let mut conn: Option<PgConnection> = None;
        loop {
            let ok = tokio::time::timeout(PROBE_TIMEOUT, async {
                if conn.is_none() {
                    conn = Some(opts.connect().await?);
                }
                match conn.as_mut() {
                    Some(c) => c.ping().await,
                    None => Ok(()),
                }
            })
            .await;
            let up = matches!(ok, Ok(Ok(())));
            if !up {
                // A broken or half-made connection is not reused.
                conn = None;
                if self.is_up() {
                    let why = match ok {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer within 1 s".into(),
                    };
                    tracing::warn!(error = %why, "database unavailable; the API answers 503");
                }
            } else if !self.is_up() {
                tracing::info!("database available again");
            }
            self.set(up);
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

/// Middleware for the API: `503` while the database is unavailable, also for a request that
/// was waiting on it when the probe failed (its transaction is dropped, so rolled back).
pub async fn guard(State(gate): State<Arc<DbGate>>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/api/v1/") {
        return next.run(req).await;
    }
    if !gate.is_up() {
        return ApiError::Unavailable.into_response();
    }
    tokio::select! {
        r = next.run(req) => r,
        _ = gate.down() => ApiError::Unavailable.into_response(),
    }
}
