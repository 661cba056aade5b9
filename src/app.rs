//! Wiring: builds every part from the configuration, binds the HTTP listener, supervises the
//! background tasks and shuts down in order (MQTT loops stop → the dispatcher drains the
//! channel and flushes the buffer → the HTTP server finishes its requests). A task that dies
//! takes the whole process down, loudly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::ingest::{self, DeviceRegistry, IngestContext};
use crate::metrics::Metrics;

/// A built, running service.
pub struct App {
    /// The bound HTTP address (port 0 in the config gives a free port).
    pub addr: SocketAddr,
    pub state: AppState,
    pub ingest: IngestContext,
    /// The detector (it only acts where the leader lock is held).
    pub detector: Arc<crate::detect::Detector>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    dispatcher: JoinHandle<anyhow::Result<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl App {
    /// Connect to Postgres (creating the database), migrate, and start everything.
    pub async fn build(cfg: Config, clock: SharedClock) -> anyhow::Result<App> {
        let pool =
            crate::db::connect(cfg.database.url.expose(), cfg.database.max_connections).await?;
        crate::db::migrate(&pool).await?;
        Self::build_with_pool(cfg, pool, clock).await
    }

    /// Start everything on an existing, migrated pool (tests pass `#[sqlx::test]`'s pool).
    pub async fn build_with_pool(
        cfg: Config,
        pool: PgPool,
        clock: SharedClock,
    ) -> anyhow::Result<App> {
        // rustls needs one process-wide crypto provider; a second install is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let metrics = Metrics::new();
        let identity = crate::domain::identity::Identity::from_config(&cfg);
        crate::db::devices::sync_config(&pool, &cfg, &identity)
            .await
            .context("writing configured groups and client IDs")?;
        let registry = Arc::new(DeviceRegistry::load(&pool, cfg.devices.max_devices).await?);
        let ingest =
            IngestContext::new(&cfg, pool.clone(), metrics.clone(), clock.clone(), registry);

        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();

        let (tx, rx) = mpsc::channel(cfg.mqtt.channel_capacity);
        let statuses = ingest::mqtt::start(&cfg, tx, &ingest, &tracker, cancel.clone())?;
        let dispatcher = tokio::spawn(ingest::dispatch::run(ingest.clone(), rx, cancel.clone()));
        tracker.spawn(ingest::telemetry::run_flusher(
            ingest.clone(),
            cfg.telemetry.flush_interval.0,
            cancel.clone(),
        ));
        let settings = crate::detect::Settings::from_config(&cfg);
        let detector = Arc::new(crate::detect::Detector::new(
            pool.clone(),
            settings,
            chrono::TimeDelta::from_std(cfg.detector.canary_timeout.0)
                .unwrap_or(chrono::TimeDelta::MAX),
        ));
        let statuses: Arc<[Arc<crate::ingest::mqtt::ConnectionStatus>]> = statuses.into();
        tracker.spawn(crate::detect::run(
            detector.clone(),
            crate::detect::leader::Leader::new((*pool.connect_options()).clone()),
            ingest.health.clone(),
            statuses.clone(),
            clock.clone(),
            cfg.detector.tick.0,
            cancel.clone(),
        ));
        if let Some(first) = statuses.first() {
            tracker.spawn(crate::detect::health::run_canary(
                ingest.health.clone(),
                first.clone(),
                ingest.canary_topic.to_string(),
                clock.clone(),
                cfg.detector.canary_interval.0,
                cancel.clone(),
            ));
        }
        tracker.spawn(crate::retention::run(
            pool.clone(),
            clock.clone(),
            cfg.retention.clone(),
            cancel.clone(),
        ));
        // Every replica runs the webhook worker: claims use SKIP LOCKED, reminders an advisory
        // lock. The routing rules go to Postgres first: the lifecycle reads them there.
        crate::alerts::outbox::sync_endpoints(&pool, &cfg.webhooks)
            .await
            .context("writing the webhook endpoints")?;
        let webhooks = Arc::new(crate::alerts::webhook::Worker::new(
            pool.clone(),
            &cfg.webhooks,
        )?);
        tracker.spawn(crate::alerts::webhook::run(
            webhooks,
            clock.clone(),
            cancel.clone(),
        ));

        let state = AppState::new(Arc::new(cfg.clone()), pool, metrics, statuses, clock);
        let limits = http_limits(&cfg, &state.metrics)?;
        let gate = http::db_gate::DbGate::new();
        tracker.spawn(
            gate.clone()
                .run((*state.pool.connect_options()).clone(), cancel.clone()),
        );
        let listener = TcpListener::bind(&cfg.http.addr)
            .await
            .with_context(|| format!("http.addr: binding {}", cfg.http.addr))?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(http::server::serve(
            listener,
            http::edge(http::router(state.clone()), cfg.http.max_body_bytes, gate),
            limits,
            state.metrics.clone(),
            cancel.clone(),
        ));
        tracing::info!(%addr, "fleetwatch listening");
        Ok(App {
            addr,
            state,
            ingest,
            detector,
            cancel,
            tracker,
            dispatcher,
            server,
        })
    }

    /// A token that stops the service when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Run until `shutdown` completes or a vital task fails, then stop in order.
    pub async fn run_until(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let failure: Option<anyhow::Error> = tokio::select! {
            _ = shutdown => None,
            r = &mut self.dispatcher => Some(match r {
                Ok(Ok(())) => anyhow::anyhow!("the ingest dispatcher stopped unexpectedly"),
                Ok(Err(e)) => e.context("ingest dispatcher failed"),
                Err(e) => anyhow::Error::new(e).context("ingest dispatcher panicked"),
            }),
            r = &mut self.server => Some(match r {
                Ok(Ok(())) => anyhow::anyhow!("the HTTP server stopped unexpectedly"),
                Ok(Err(e)) => anyhow::Error::new(e).context("HTTP server failed"),
                Err(e) => anyhow::Error::new(e).context("HTTP server panicked"),
            }),
        };
        match failure {
            None => self.shutdown().await,
            Some(e) => {
                tracing::error!(error = %format!("{e:#}"), "a vital task failed; shutting down");
                self.cancel.cancel();
                self.tracker.close();
                self.tracker.wait().await;
                Err(e)
            }
        }
    }

    /// Stop everything, flushing what was received.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        self.cancel.cancel();
        self.tracker.close();
        // The MQTT loops end first; their senders drop, so the dispatcher can drain and flush.
        self.tracker.wait().await;
        let dispatched = self
            .dispatcher
            .await
            .context("ingest dispatcher panicked")?;
        let served = self.server.await.context("HTTP server panicked")?;
        dispatched?;
        served.context("HTTP server")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Raise the open-files limit and size the HTTP connection cap from it (README "Connections and
/// timeouts").
fn http_limits(cfg: &Config, metrics: &Metrics) -> anyhow::Result<http::server::Limits> {
    let files = http::server::raise_open_files_limit().context("reading the open-files limit")?;
    let budget = http::server::budget(cfg, files.soft)?;
    metrics.http.open_files_limit.set(files.soft as i64);
    tracing::info!(
        open_files = files.soft,
        hard_limit = files.hard,
        reserved = budget.reserve,
        max_connections = budget.max_connections,
        "HTTP connection cap"
    );
    if budget.max_connections < 64 {
        tracing::warn!(
            max_connections = budget.max_connections,
            "fewer than 64 HTTP connections fit; raise the open-files limit"
        );
    }
    Ok(http::server::Limits {
        max_connections: budget.max_connections,
        header_read_timeout: cfg.http.header_read_timeout.0,
        idle_timeout: cfg.http.idle_timeout.0,
        // As long as an ordinary request may take (the router's timeout).
        shutdown_grace: Duration::from_secs(30),
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
