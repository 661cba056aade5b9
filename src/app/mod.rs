//! Wiring: builds every part from the configuration, binds the HTTP listener, starts every
//! background task through the supervisor ([`tasks`]) and shuts down in order (MQTT loops stop
//! → the dispatcher drains the channel and flushes the buffer → the HTTP server finishes its
//! requests). A restartable task that fails is restarted after a backoff and shows on
//! `/healthz` and `/metrics`; a vital one that fails stops the process with an error.

pub mod tasks;

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
use crate::detect::leader::Leader;
use crate::http::{self, AppState};
use crate::ingest::{self, DeviceRegistry, IngestContext};
use crate::metrics::Metrics;
use tasks::{Leadership, Periodic, Supervisor};

/// A built, running service.
pub struct App {
    /// The bound HTTP address (port 0 in the config gives a free port).
    pub addr: SocketAddr,
    pub state: AppState,
    pub ingest: IngestContext,
    /// The detector (it only acts where the leader lock is held).
    pub detector: Arc<crate::detect::Detector>,
    /// The supervisor: every task's state, and where further tasks are started.
    pub tasks: Supervisor,
    /// The AWS pollers' health (off, or each poller's record).
    pub aws: Arc<crate::aws::AwsHealth>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    dispatcher: JoinHandle<anyhow::Result<()>>,
    server: JoinHandle<anyhow::Result<()>>,
}

impl App {
    /// Connect to Postgres (creating the database), migrate, and start everything.
    pub async fn build(cfg: Config, clock: SharedClock) -> anyhow::Result<App> {
        Self::build_with(cfg, clock, None).await
    }

    /// [`App::build`], for `fleetwatch demo`: its story banner and webhook receiver in the pages.
    pub async fn build_with(
        cfg: Config,
        clock: SharedClock,
        demo: Option<Arc<crate::demo::Shared>>,
    ) -> anyhow::Result<App> {
        let pool =
            crate::db::connect(cfg.database.url.expose(), cfg.database.max_connections).await?;
        crate::db::migrate(&pool).await?;
        Self::start(cfg, pool, clock, demo).await
    }

    /// Start everything on an existing, migrated pool (tests pass `#[sqlx::test]`'s pool).
    pub async fn build_with_pool(
        cfg: Config,
        pool: PgPool,
        clock: SharedClock,
    ) -> anyhow::Result<App> {
        Self::start(cfg, pool, clock, None).await
    }

    async fn start(
        cfg: Config,
        pool: PgPool,
        clock: SharedClock,
        demo: Option<Arc<crate::demo::Shared>>,
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
        let leadership = Leadership::new(Leader::new((*pool.connect_options()).clone()));
        let tasks = Supervisor::new(
            cancel.clone(),
            tracker.clone(),
            metrics.clone(),
            clock.clone(),
            Some(leadership.clone()),
        );

        let (tx, rx) = mpsc::channel(cfg.mqtt.channel_capacity);
        let (statuses, loops) = ingest::mqtt::start(&cfg, tx, &ingest, cancel.clone())?;
        for l in loops {
            tasks.vital(l.name, true, async move {
                l.run.await;
                Ok(())
            });
        }
        let dispatcher = tasks.vital(
            "dispatcher",
            false,
            ingest::dispatch::run(ingest.clone(), rx, cancel.clone()),
        );
        {
            let (ctx, buffer) = (ingest.clone(), ingest.buffer.clone());
            tasks.periodic(
                Periodic::new("telemetry_flusher", cfg.telemetry.flush_interval.0).wake_on(
                    move || {
                        let buffer = buffer.clone();
                        async move { buffer.filled().await }
                    },
                ),
                move |_| {
                    let ctx = ctx.clone();
                    async move { ingest::telemetry::flush(&ctx).await.map(|_| ()) }
                },
            );
        }
        let settings = crate::detect::Settings::from_config(&cfg);
        let detector = Arc::new(crate::detect::Detector::new(
            pool.clone(),
            settings,
            cfg.detector.canary_timeout.delta(),
        ));
        let statuses: Arc<[Arc<crate::ingest::mqtt::ConnectionStatus>]> = statuses.into();
        {
            let (detector, health, connections, clock, metrics) = (
                detector.clone(),
                ingest.health.clone(),
                statuses.clone(),
                clock.clone(),
                metrics.clone(),
            );
            tasks.periodic(
                Periodic::new("detector", cfg.detector.tick.0).leader_only(),
                move |tick| {
                    let (detector, health, connections, clock, metrics) = (
                        detector.clone(),
                        health.clone(),
                        connections.clone(),
                        clock.clone(),
                        metrics.clone(),
                    );
                    async move {
                        // The first tick of a leadership is a restart point (detect::Memory).
                        if tick.first_of_term {
                            detector.reset();
                        }
                        let now = clock.now();
                        let status = health.status(&connections, now);
                        let o = detector.tick(&status, now).await?;
                        observe_tick(&metrics, &o);
                        Ok(())
                    }
                },
            );
        }
        {
            // Metric rules run whether or not the AWS poller does: the tables may be fed by a
            // simulator, and with nothing polled a pass is two small queries.
            let clock = clock.clone();
            let pass = Arc::new(crate::detect::metrics::MetricRules::new(
                pool.clone(),
                cfg.cloudwatch.metric_rules(),
                cfg.detector.reopen_window.delta(),
            ));
            tasks.periodic(
                Periodic::new("metric_rules", cfg.cloudwatch.poll.0).leader_only(),
                move |_| {
                    let (pass, clock) = (pass.clone(), clock.clone());
                    async move { pass.tick(clock.now()).await.map(|_| ()) }
                },
            );
        }
        if let Some(first) = statuses.first() {
            let (health, first, topic, clock) = (
                ingest.health.clone(),
                first.clone(),
                ingest.canary_topic.to_string(),
                clock.clone(),
            );
            tasks.periodic(
                Periodic::new("canary", cfg.detector.canary_interval.0),
                move |_| {
                    crate::ingest::health::publish_canary(&health, &first, &topic, clock.now());
                    std::future::ready(Ok(()))
                },
            );
        }
        {
            let (pool, clock, retention) = (pool.clone(), clock.clone(), cfg.retention());
            tasks.periodic(
                Periodic::new("retention", cfg.retention.interval.0),
                move |_| {
                    let (pool, clock, retention) = (pool.clone(), clock.clone(), retention.clone());
                    async move {
                        let d = crate::retention::tick(&pool, &clock, &retention).await?;
                        if d != crate::retention::Deleted::default() {
                            tracing::info!(?d, "retention: old rows deleted");
                        }
                        Ok(())
                    }
                },
            );
        }
        {
            // Fleet counts: every replica folds (safe concurrently), the leader self-checks.
            let pool2 = pool.clone();
            tasks.periodic(Periodic::new("counts_fold", cfg.counts.fold.0), move |_| {
                let pool = pool2.clone();
                async move { crate::fleet_counts::fold(&pool).await.map(drop) }
            });
            let (pool, metrics) = (pool.clone(), metrics.clone());
            tasks.periodic(
                Periodic::new("counts_check", cfg.counts.check.0).leader_only(),
                move |_| {
                    let (pool, metrics) = (pool.clone(), metrics.clone());
                    async move { crate::fleet_counts::check(&pool, &metrics).await.map(drop) }
                },
            );
        }
        {
            // The IoT Core per-connection limit: gauges and a rate-limited warning (every
            // replica: each measures its own connections).
            let (connections, clock, metrics) = (statuses.clone(), clock.clone(), metrics.clone());
            let limits = ingest::rate::Limits::from_config(&cfg);
            let warn = Arc::new(crate::logging::RateLimitedWarn::new(
                std::time::Duration::from_secs(60),
            ));
            tasks.periodic(
                Periodic::new("mqtt_rate", std::time::Duration::from_secs(5)),
                move |_| {
                    let (connections, clock, metrics, warn) = (
                        connections.clone(),
                        clock.clone(),
                        metrics.clone(),
                        warn.clone(),
                    );
                    async move {
                        ingest::rate::tick(&connections, &limits, &metrics, &warn, clock.now());
                        Ok(())
                    }
                },
            );
        }
        {
            let (pool, clock, metrics) = (pool.clone(), clock.clone(), metrics.clone());
            tasks.periodic(
                Periodic::new("silences_gauge", cfg.detector.tick.0),
                move |_| {
                    let (pool, clock, metrics) = (pool.clone(), clock.clone(), metrics.clone());
                    async move {
                        let n = crate::db::silences::active_count(&pool, clock.now())
                            .await
                            .context("counting active silences")?;
                        metrics.tasks.silences_active.set(n);
                        Ok(())
                    }
                },
            );
        }
        // Every replica runs the webhook worker: claims use SKIP LOCKED, reminders an advisory
        // lock. The routing rules go to Postgres first: the lifecycle reads them there.
        crate::alerts::outbox::sync_endpoints(&pool, &cfg.webhooks)
            .await
            .context("writing the webhook endpoints")?;
        let webhooks = Arc::new(
            crate::alerts::webhook::Worker::new(pool.clone(), &cfg.webhooks)?
                .with_metrics(metrics.clone()),
        );
        if webhooks.has_endpoints() {
            let clock = clock.clone();
            tasks.restartable("webhook_worker", move |cancel| {
                let (webhooks, clock) = (webhooks.clone(), clock.clone());
                async move {
                    crate::alerts::webhook::run(webhooks, clock, cancel).await;
                    Ok(())
                }
            });
        }

        let mut state = AppState::new(Arc::new(cfg.clone()), pool, metrics, statuses, clock);
        state.demo = demo;
        let limits = http_limits(&cfg, &state.metrics)?;
        let gate = http::db_gate::DbGate::new();
        {
            let (gate, options) = (gate.clone(), (*state.pool.connect_options()).clone());
            tasks.restartable("db_gate", move |cancel| {
                let (gate, options) = (gate.clone(), options.clone());
                async move {
                    gate.run(options, cancel).await;
                    Ok(())
                }
            });
        }
        {
            // The dashboard's live updates: one LISTEN per replica (http::web::live).
            let (hub, pool) = (state.live.clone(), state.pool.clone());
            tasks.restartable("live_listener", move |cancel| {
                crate::http::web::live::listen(hub.clone(), pool.clone(), cancel)
            });
        }
        let aws = match crate::aws::connect(&cfg.aws).await {
            // The demo has no AWS account: its CloudWatch series are simulated (demo::cloudwatch).
            crate::aws::Connection::Off(_) if state.demo.is_some() => crate::aws::AwsHealth::off(
                "the demo simulates CloudWatch (no AWS account); the IoT registry is not polled",
            ),
            crate::aws::Connection::Off(reason) => {
                tracing::info!(%reason, "AWS pollers are off");
                crate::aws::AwsHealth::off(reason)
            }
            crate::aws::Connection::On(sdk) => {
                let health = crate::aws::AwsHealth::on();
                let ctx = crate::aws::PollerContext::new(
                    &cfg,
                    state.pool.clone(),
                    state.clock.clone(),
                    health.clone(),
                    state.metrics.clone(),
                )
                .with_ingest(ingest.clone());
                crate::aws::start(&sdk, &cfg, &tasks, &ctx);
                health
            }
        };
        let listener = TcpListener::bind(&cfg.http.addr)
            .await
            .with_context(|| format!("http.addr: binding {}", cfg.http.addr))?;
        let addr = listener.local_addr()?;
        let liveness = {
            let (board, health, aws) = (tasks.board().clone(), ingest.health.clone(), aws.clone());
            let failures_before_alert = cfg.aws.failures_before_alert;
            http::health::Liveness(Arc::new(move || {
                serde_json::json!({
                    "leader": leadership.is_leader(),
                    "canary": health.canary(),
                    "tasks": board.snapshot(),
                    "aws": aws.snapshot(failures_before_alert),
                })
            }))
        };
        let served = http::server::serve(
            listener,
            http::edge(http::router(state.clone()), cfg.http.max_body_bytes, gate)
                .layer(axum::Extension(liveness)),
            limits,
            state.metrics.clone(),
            cancel.clone(),
        );
        let server = tasks.vital("http_server", false, async move {
            served.await.context("HTTP server")
        });
        tracing::info!(%addr, "fleetwatch listening");
        Ok(App {
            addr,
            state,
            ingest,
            detector,
            tasks,
            aws,
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

    /// Run until `shutdown` completes or a vital task fails; then stop in order. A vital
    /// failure is returned (the binary exits non-zero).
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let failure = tokio::select! {
            _ = shutdown => None,
            e = self.tasks.failure() => Some(e),
        };
        match failure {
            None => self.shutdown().await,
            Some(e) => {
                tracing::error!(error = %format!("{e:#}"), "a vital task failed; shutting down");
                self.cancel.cancel();
                self.tracker.close();
                self.tracker.wait().await;
                if let Some(l) = self.tasks.leadership() {
                    l.release().await;
                }
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
        // The leader-only ticks have stopped: a standby may take over at once.
        if let Some(l) = self.tasks.leadership() {
            l.release().await;
        }
        let dispatched = self
            .dispatcher
            .await
            .context("ingest dispatcher panicked")?;
        let served = self.server.await.context("HTTP server panicked")?;
        dispatched?;
        served?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Count what a detector tick did (`/metrics`).
fn observe_tick(metrics: &Metrics, o: &crate::detect::TickOutcome) {
    use crate::domain::alert::Kind;
    let m = &metrics.tasks;
    m.devices_due.inc_by(o.heartbeat.evaluated as u64);
    if o.ingest_down_opened {
        m.opened(Kind::IngestDown);
    }
    for _ in &o.heartbeat.opened {
        m.opened(Kind::HeartbeatGap);
    }
    for (kind, _) in o.connection.fired.iter().chain(&o.grouping.fired) {
        m.opened(*kind);
    }
    for _ in &o.connection.drift.fired {
        m.opened(Kind::AddressDrift);
    }
    // The event itself is stored; only its address is unusable for networks.
    if o.connection.drift.bad_addresses > 0 {
        metrics
            .drops
            .get_or_create(&vec![("reason", "bad_ip_address".to_string())])
            .inc_by(o.connection.drift.bad_addresses as u64);
    }
    if !o.heartbeat.opened.is_empty() || !o.heartbeat.resolved.is_empty() {
        tracing::info!(
            opened = o.heartbeat.opened.len(),
            resolved = o.heartbeat.resolved.len(),
            reclassified = o.heartbeat.reclassified.len(),
            "heartbeat gaps"
        );
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
