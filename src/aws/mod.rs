//! The AWS pollers (issue 9): what connects us to AWS, and how their failures are told apart
//! from the fleet's.
//!
//! - [`connect`] builds one [`SdkConfig`] from `aws-config`'s standard chain (environment,
//!   profile, web identity, container or instance role; region likewise), with endpoints
//!   overridable by `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_<SERVICE>` as the SDK reads them.
//!   It never fails the start: with `aws.enabled` off, or no region anywhere, the pollers are
//!   off, which the log says once and `/healthz` says always ([`AwsHealth`]). Credentials are
//!   resolved lazily by the SDK, so missing or expired ones show as failed polls.
//! - [`health`] keeps each poller's record (last success, last error, consecutive failures)
//!   and turns "keeps failing" into our own `aws_poll_failing` alert, never a device's.
//!
//! The pollers themselves (CloudWatch metrics, the IoT registry) run leader-only through the
//! supervisor (`app::tasks`); each tick records its result in [`health`] before returning it.

pub mod cloudwatch;
pub mod health;
pub mod inventory;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use crate::config::AwsConfig;
pub use health::{AwsHealth, PollerHealth};

/// The HTTP client every AWS call goes through: hyper with rustls on ring, the TLS provider
/// the rest of the service uses (the SDK's default would bring aws-lc, a second C-built stack).
pub fn http_client() -> aws_sdk_cloudwatch::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Whether the pollers can run, and with what.
pub enum Connection {
    On(Box<SdkConfig>),
    /// Why not, in words for the log and `/healthz`.
    Off(String),
}

/// Resolve the AWS configuration. Never an error: what is missing turns the pollers off.
pub async fn connect(cfg: &AwsConfig) -> Connection {
    if !cfg.enabled {
        return Connection::Off(
            "aws.enabled is off (FLEETWATCH_AWS_ENABLED=true to poll CloudWatch and the IoT \
             registry)"
                .into(),
        );
    }
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client());
    if let Some(r) = &cfg.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(p) = &cfg.profile {
        loader = loader.profile_name(p);
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Connection::Off(
            "no AWS region configured (aws.region, AWS_REGION or a profile's region)".into(),
        );
    }
    Connection::On(Box::new(sdk))
}

/// What a poller needs from the running service.
#[derive(Clone)]
pub struct PollerContext {
    pub pool: sqlx::PgPool,
    pub clock: crate::clock::SharedClock,
    pub health: std::sync::Arc<AwsHealth>,
    pub alert: health::AlertSettings,
    /// Ingest's in-memory identity and device registry, which the inventory keeps up to date
    /// (client-ID mappings, registry devices); `None` where no ingest runs (some tests).
    pub ingest: Option<crate::ingest::IngestContext>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl PollerContext {
    pub fn new(
        cfg: &crate::config::Config,
        pool: sqlx::PgPool,
        clock: crate::clock::SharedClock,
        health: std::sync::Arc<AwsHealth>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        let severity = cfg
            .detector
            .severities
            .get(&crate::domain::alert::Kind::AwsPollFailing)
            .copied()
            .unwrap_or(crate::domain::alert::Kind::AwsPollFailing.default_severity());
        Self {
            pool,
            clock,
            health,
            alert: health::AlertSettings {
                failures_before_alert: cfg.aws.failures_before_alert,
                severity,
                reopen_window: cfg.detector.reopen_window.delta(),
            },
            ingest: None,
            metrics,
        }
    }

    /// With ingest's identity and registry, for the inventory to keep up to date.
    pub fn with_ingest(mut self, ingest: crate::ingest::IngestContext) -> Self {
        self.ingest = Some(ingest);
        self
    }
}

/// Start a leader-only poller: every `period`, `poll` runs; its result is recorded in the
/// poller's health and the `aws_poll_failing` alert is brought in line, then the result goes to
/// the supervisor (a failed poll is retried after the supervisor's backoff, at most `period`).
pub fn spawn_poller<F, Fut>(
    tasks: &crate::app::tasks::Supervisor,
    ctx: &PollerContext,
    name: &str,
    period: std::time::Duration,
    poll: F,
) where
    F: Fn(crate::app::tasks::Tick) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let poller = ctx.health.poller(name);
    let (ctx, poll) = (ctx.clone(), std::sync::Arc::new(poll));
    tasks.periodic(
        crate::app::tasks::Periodic::new(name, period).leader_only(),
        move |tick| {
            let (ctx, poller, poll) = (ctx.clone(), poller.clone(), poll.clone());
            async move {
                let result = poll(tick).await;
                let now = ctx.clock.now();
                poller.record(&result, now);
                if let Err(e) = health::sync_alert(&ctx.pool, &ctx.health, ctx.alert, now).await
                {
                    tracing::warn!(error = %format!("{e:#}"), "aws_poll_failing: writing the alert");
                }
                result
            }
        },
    );
}

/// Start every AWS poller that is switched on. Each poller's module adds itself here.
pub fn start(
    sdk: &SdkConfig,
    cfg: &crate::config::Config,
    tasks: &crate::app::tasks::Supervisor,
    ctx: &PollerContext,
) {
    inventory::start(sdk, cfg, tasks, ctx);
    if cfg.cloudwatch.enabled {
        cloudwatch::start(sdk, &cfg.cloudwatch, tasks, ctx);
    }
}
