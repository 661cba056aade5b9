//! The CloudWatch poller: the `AWS/IoT` throttle, error and failure metrics into Postgres
//! (`cloudwatch_metrics`, `cloudwatch_samples`; writes in `db::cloudwatch`). Leader only,
//! registered by [`start`] through `aws::spawn_poller` as poller `"cloudwatch"`.
//!
//! The contract:
//! - **Discovery** (at start, at each new leadership, then every `cloudwatch.discovery`):
//!   `ListMetrics` on `cloudwatch.namespace`, paginated; every metric whose name contains
//!   `Throttle`, `Error` or `Failure` ([`is_wanted`]) is kept *with each of its dimension
//!   sets* (a query matches only an exact set): one row per name and set. `cloudwatch.metrics`
//!   adds explicit ones; with `cloudwatch.discover = false` only those are polled. Malformed
//!   listings (no name, over CloudWatch's own limits) are skipped and counted.
//! - **Reading** (every `cloudwatch.poll`): each metric is read over [`span`]: from its
//!   `polled_through` minus `cloudwatch.window` (data lands late), never before now minus
//!   `cloudwatch.backfill` (a metric never read starts there), up to now truncated to the
//!   period. [`plan`] puts metrics with the same start into `GetMetricData` calls of at most
//!   [`MAX_QUERIES`] queries (`Sum`, [`PERIOD_SECS`], ids `m<row id>`) and splits long spans so
//!   a call stays within [`MAX_DATAPOINTS`]. `NextToken` is followed to the end.
//! - **Storing**: datapoints are upserted by (metric, period start); a period without a
//!   datapoint has no row (never a zero). A result whose status is not `Complete` stores what
//!   came and does not advance `polled_through`, so the next poll reads it again; a metric's
//!   `polled_through` moves to the span's end only when every result for it completed.
//!   Datapoints outside the span (the future included), misaligned or not finite are skipped
//!   and counted.
//! - **Calls**: every call (discovery included) waits for the [`Limiter`]
//!   (`cloudwatch.max_calls_per_second`); SDK retries are off so nothing bypasses it. A
//!   throttled call ([`is_throttle`]) is retried after an exponential, jittered, capped
//!   [`backoff`], at most [`MAX_THROTTLE_RETRIES`] times. Any other failure ends the poll with
//!   an error naming the operation, the AWS error code and message; `spawn_poller` records it
//!   and keeps our own `aws_poll_failing` alert in line (never a device's).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use aws_config::SdkConfig;
use aws_sdk_cloudwatch::config::http::HttpResponse;
use aws_sdk_cloudwatch::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, StatusCode};
use aws_sdk_cloudwatch::Client;
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

use crate::clock::SharedClock;
use crate::config::CloudWatchConfig;
use crate::db::cloudwatch::{self as db, Sample, Source};
use crate::logging::RateLimitedWarn;
use crate::metrics::Metrics;

/// The poller's name in `/healthz`, the alert and the supervisor.
pub const NAME: &str = "cloudwatch";
/// The period read: CloudWatch's finest for AWS/IoT.
pub const PERIOD_SECS: i64 = 60;
/// GetMetricData's limit of queries per call.
pub const MAX_QUERIES: usize = 500;
/// GetMetricData's limit of datapoints per call (queries × periods).
pub const MAX_DATAPOINTS: i64 = 100_800;
/// Throttled retries of one call before the poll fails.
pub const MAX_THROTTLE_RETRIES: u32 = 6;
/// Metrics polled at most; a listing longer than this is cut (and said) rather than turned
/// into thousands of calls a minute.
pub const MAX_METRICS: usize = 10_000;

/// Whether discovery keeps a metric of this name.
pub fn is_wanted(name: &str) -> bool {
    ["Throttle", "Error", "Failure"]
        .iter()
        .any(|w| name.contains(w))
}

/// The CloudWatch error codes that mean "slow down".
const THROTTLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
];

/// Whether a failed call was throttled: a throttle code (whatever the HTTP status, 400 or
/// 503), or HTTP 429.
pub fn is_throttle(code: Option<&str>, status: Option<u16>) -> bool {
    code.is_some_and(|c| THROTTLE_CODES.contains(&c)) || status == Some(429)
}

/// The wait before throttled retry number `attempt` (0-based): 1 s doubling, capped at
/// 30 s, with "equal jitter" (between half and all of it) so replicas and other tools do not
/// retry in step.
pub fn backoff(attempt: u32) -> Duration {
    let full = Duration::from_secs(1)
        .saturating_mul(1u32 << attempt.min(16))
        .min(Duration::from_secs(30));
    let half = full / 2;
    half + half.mul_f64(rand::random::<f64>())
}

fn floor_period(t: DateTime<Utc>) -> DateTime<Utc> {
    let s = t.timestamp().div_euclid(PERIOD_SECS) * PERIOD_SECS;
    DateTime::from_timestamp(s, 0).unwrap_or(t)
}

fn ceil_period(t: DateTime<Utc>) -> DateTime<Utc> {
    let f = floor_period(t);
    if f == t {
        t
    } else {
        f + TimeDelta::seconds(PERIOD_SECS)
    }
}

/// The span `[start, end)` to read for a metric read completely up to `polled_through`, or
/// `None` when there is nothing to read yet. `end` is `now` truncated to the period; `start`
/// is `polled_through − window` (period-aligned), but never before `now − backfill` (rounded
/// up to a period, so nothing older than the horizon is read); a metric never read starts at
/// the horizon. A `polled_through` in the future (a clock set back) counts as `end`.
pub fn span(
    now: DateTime<Utc>,
    polled_through: Option<DateTime<Utc>>,
    window: TimeDelta,
    backfill: TimeDelta,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let end = floor_period(now);
    let horizon = ceil_period(now - backfill);
    let start = match polled_through {
        Some(p) => floor_period(p.min(end) - window).max(horizon),
        None => horizon,
    };
    (start < end).then_some((start, end))
}

/// One GetMetricData call: these metrics over `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub ids: Vec<i64>,
}

/// The calls that read each metric from its start to `end`: metrics sharing a start share
/// calls of at most [`MAX_QUERIES`] queries; a span longer than [`MAX_DATAPOINTS`] allows for
/// that many queries is split in time.
pub fn plan(starts: &[(i64, DateTime<Utc>)], end: DateTime<Utc>) -> Vec<Call> {
    let mut by_start: BTreeMap<DateTime<Utc>, Vec<i64>> = BTreeMap::new();
    for (id, start) in starts {
        if *start < end {
            by_start.entry(*start).or_default().push(*id);
        }
    }
    let mut calls = Vec::new();
    for (start, mut ids) in by_start {
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(MAX_QUERIES) {
            let periods = (MAX_DATAPOINTS / chunk.len() as i64).max(1);
            let step = TimeDelta::seconds(periods * PERIOD_SECS);
            let mut s = start;
            while s < end {
                let e = (s + step).min(end);
                calls.push(Call {
                    start: s,
                    end: e,
                    ids: chunk.to_vec(),
                });
                s = e;
            }
        }
    }
    calls
}

/// The time the limiter and the backoff wait on. [`TokioPace`] in the service;
/// [`VirtualPace`] in tests (tokio's paused clock needs its `test-util` feature, which this
/// build does not enable), so minutes of backoff and call spacing run instantly and are
/// measured exactly, never on the wall clock.
pub trait Pace: Send + Sync + 'static {
    /// Time since an arbitrary origin.
    fn elapsed(&self) -> Duration;
    /// Wait `d`.
    fn sleep(&self, d: Duration)
        -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

/// Real waiting, on tokio's clock.
pub struct TokioPace(tokio::time::Instant);

impl Default for TokioPace {
    fn default() -> Self {
        Self(tokio::time::Instant::now())
    }
}

impl Pace for TokioPace {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(
        &self,
        d: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Virtual time: sleeping moves it forward at once. Exact for one task making calls in
/// sequence (the poller); what the tests use to measure call spacing and backoff.
#[derive(Default)]
pub struct VirtualPace(Mutex<Duration>);

impl Pace for VirtualPace {
    fn elapsed(&self) -> Duration {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn sleep(
        &self,
        d: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += d;
        Box::pin(tokio::task::yield_now())
    }
}

/// A limiter of calls per second: calls are spaced at least `1 / rate` apart (no burst), so
/// no second ever holds more than `rate` of them.
pub struct Limiter {
    interval: Duration,
    next: Mutex<Option<Duration>>,
    pace: Arc<dyn Pace>,
}

impl Limiter {
    pub fn new(per_second: f64, pace: Arc<dyn Pace>) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next: Mutex::new(None),
            pace,
        }
    }

    /// Wait for the next free slot and take it.
    pub async fn acquire(&self) {
        let (now, at) = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = self.pace.elapsed();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + self.interval);
            (now, at)
        };
        if at > now {
            self.pace.sleep(at - now).await;
        }
    }
}

/// The client the poller uses: the SDK's retries off (every attempt must pass the
/// [`Limiter`], and throttling has its own backoff here), and an operation timeout so a dead
/// endpoint fails a poll instead of hanging it.
pub fn client(sdk: &SdkConfig) -> Client {
    let conf = aws_sdk_cloudwatch::config::Builder::from(sdk)
        .retry_config(aws_sdk_cloudwatch::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_cloudwatch::config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(60))
                .build(),
        )
        .build();
    Client::from_conf(conf)
}

/// A metric being polled.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Active {
    id: i64,
    name: String,
    dimensions: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    active: Vec<Active>,
    last_discovery: Option<DateTime<Utc>>,
}

/// What one poll did (for tests and the log).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Metrics found by a discovery this poll ran (`None`: no discovery was due).
    pub discovered: Option<usize>,
    pub calls: u32,
    pub samples: u64,
    /// Metric results that were not `Complete`.
    pub incomplete: u32,
    /// Metrics whose `polled_through` moved.
    pub advanced: usize,
}

/// The poller. One per process; its state is which metrics discovery found.
pub struct Poller {
    client: Client,
    cfg: CloudWatchConfig,
    pool: PgPool,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    limiter: Limiter,
    pace: Arc<dyn Pace>,
    state: Mutex<State>,
    warn: RateLimitedWarn,
}

/// A failed call: whether it was throttled, and its description (operation, code, message).
struct CallError {
    throttled: bool,
    text: String,
}

fn call_error<E>(op: &str, e: &SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let text = match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("CloudWatch {op}: {code}: {msg}"),
        (Some(code), None) => format!("CloudWatch {op}: {code}"),
        _ => format!("CloudWatch {op}: {}", DisplayErrorContext(e)),
    };
    let text = match status {
        Some(s) => format!("{text} (HTTP {s})"),
        None => text,
    };
    CallError {
        throttled: is_throttle(e.code(), status),
        text,
    }
}

/// What one call returned for one metric.
#[derive(Default)]
struct Collected {
    points: BTreeMap<DateTime<Utc>, f64>,
    /// The last status seen (`None`: not seen, or malformed).
    status: Option<StatusCode>,
    /// An `InternalError`, `Forbidden` or malformed result on some page.
    failed: bool,
}

impl Poller {
    pub fn new(
        client: Client,
        cfg: CloudWatchConfig,
        pool: PgPool,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_pace(
            client,
            cfg,
            pool,
            clock,
            metrics,
            Arc::new(TokioPace::default()),
        )
    }

    /// A poller whose waits (limiter, backoff) run on `pace`.
    pub fn with_pace(
        client: Client,
        cfg: CloudWatchConfig,
        pool: PgPool,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        pace: Arc<dyn Pace>,
    ) -> Self {
        Self {
            limiter: Limiter::new(cfg.max_calls_per_second, pace.clone()),
            pace,
            client,
            cfg,
            pool,
            clock,
            metrics,
            state: Mutex::new(State::default()),
            warn: RateLimitedWarn::new(Duration::from_secs(60)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn skipped(&self, reason: &'static str, detail: &dyn std::fmt::Display) {
        self.metrics
            .cloudwatch
            .skipped
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
        self.warn.warn(reason, detail);
    }

    fn count_call(&self, op: &'static str) {
        self.metrics
            .cloudwatch
            .calls
            .get_or_create(&vec![("operation", op.to_string())])
            .inc();
    }

    /// One poll: discovery when due (or `rediscover`), then every metric read and stored.
    pub async fn poll(&self, rediscover: bool) -> anyhow::Result<Report> {
        let r = self.poll_inner(rediscover).await;
        let outcome = if r.is_ok() { "ok" } else { "error" };
        self.metrics
            .cloudwatch
            .polls
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
        r
    }

    async fn poll_inner(&self, rediscover: bool) -> anyhow::Result<Report> {
        let mut report = Report::default();
        let now = self.clock.now();
        let due = {
            let s = self.state();
            rediscover
                || s.last_discovery
                    .is_none_or(|t| now - t >= self.cfg.discovery.delta() || now < t)
        };
        if due {
            report.discovered = Some(self.discover().await?);
        }
        self.read(&mut report).await?;
        Ok(report)
    }

    /// List the metrics to poll (discovery and configuration) and write their rows; returns
    /// how many there are.
    pub async fn discover(&self) -> anyhow::Result<usize> {
        let now = self.clock.now();
        let mut found: BTreeMap<(String, BTreeMap<String, String>), Source> = BTreeMap::new();
        if self.cfg.discover {
            for (name, dims) in self.list().await? {
                found.insert((name, dims), Source::Discovered);
            }
        }
        for m in &self.cfg.metrics {
            found.insert((m.name.clone(), m.dimensions.clone()), Source::Config);
        }
        if found.len() > MAX_METRICS {
            self.skipped(
                "too_many_metrics",
                &format_args!(
                    "cloudwatch: {} metrics listed; polling the first {MAX_METRICS}",
                    found.len()
                ),
            );
        }
        let mut active = Vec::with_capacity(found.len().min(MAX_METRICS));
        // Configured metrics first: a cut never drops what the operator named.
        let mut ordered: Vec<_> = found.into_iter().collect();
        ordered.sort_by_key(|(_, source)| *source != Source::Config);
        for ((name, dimensions), source) in ordered.into_iter().take(MAX_METRICS) {
            let json = serde_json::to_value(&dimensions)?;
            let id = db::upsert_metric(&self.pool, &self.cfg.namespace, &name, &json, source, now)
                .await?;
            active.push(Active {
                id,
                name,
                dimensions,
            });
        }
        let n = active.len();
        let mut s = self.state();
        s.active = active;
        s.last_discovery = Some(now);
        Ok(n)
    }

    /// The wanted metrics ListMetrics names in the namespace, each with its dimension set
    /// (what discovery writes; no database).
    pub async fn list_metrics(
        &self,
    ) -> anyhow::Result<BTreeSet<(String, BTreeMap<String, String>)>> {
        self.list().await
    }

    /// ListMetrics over the namespace (the SDK's paginator; each page waits for the limiter;
    /// after a throttled page the listing resumes from the last token it got, so steady
    /// throttling slows a long listing down but cannot keep it from finishing).
    async fn list(&self) -> anyhow::Result<BTreeSet<(String, BTreeMap<String, String>)>> {
        let mut out = BTreeSet::new();
        let mut resume: Option<String> = None;
        let mut attempt = 0;
        'again: loop {
            let mut pages = self
                .client
                .list_metrics()
                .namespace(&self.cfg.namespace)
                .set_next_token(resume.clone())
                .into_paginator()
                .send();
            loop {
                self.limiter.acquire().await;
                self.count_call("ListMetrics");
                let page = match pages.next().await {
                    None => return Ok(out),
                    Some(Ok(p)) => p,
                    Some(Err(e)) => {
                        let e = call_error("ListMetrics", &e);
                        self.retry_or_fail(e, &mut attempt).await?;
                        continue 'again;
                    }
                };
                // Consecutive throttles count towards giving up, not throttles in total.
                attempt = 0;
                for m in page.metrics() {
                    if let Some(k) = self.listed(m) {
                        out.insert(k);
                    }
                }
                resume = page.next_token().map(str::to_string);
                // The last page: no call (and no limiter slot) just to hear there is none.
                if resume.is_none() {
                    return Ok(out);
                }
            }
        }
    }

    /// A listed metric worth polling, or `None` (unwanted, or skipped as malformed).
    fn listed(&self, m: &Metric) -> Option<(String, BTreeMap<String, String>)> {
        // CloudWatch's own limits; a NUL cannot be stored in Postgres text at all.
        let ok_len =
            |s: &str| (1..=255).contains(&s.chars().count()) && !s.chars().any(char::is_control);
        let Some(name) = m.metric_name().filter(|n| ok_len(n)) else {
            self.skipped(
                "bad_metric",
                &format_args!("cloudwatch: ListMetrics returned a metric without a valid name"),
            );
            return None;
        };
        if !is_wanted(name) {
            return None;
        }
        let mut dims = BTreeMap::new();
        for d in m.dimensions() {
            match (d.name(), d.value()) {
                (Some(k), Some(v)) if ok_len(k) && ok_len(v) => {
                    dims.insert(k.to_string(), v.to_string());
                }
                _ => {
                    self.skipped(
                        "bad_metric",
                        &format_args!("cloudwatch: {name:?} has a malformed dimension; skipped"),
                    );
                    return None;
                }
            }
        }
        if dims.len() != m.dimensions().len() || dims.len() > 30 {
            self.skipped(
                "bad_metric",
                &format_args!("cloudwatch: {name:?} has repeated or too many dimensions; skipped"),
            );
            return None;
        }
        Some((name.to_string(), dims))
    }

    /// Wait out a throttled call, or turn the failure into the poll's error.
    async fn retry_or_fail(&self, e: CallError, attempt: &mut u32) -> anyhow::Result<()> {
        if e.throttled && *attempt < MAX_THROTTLE_RETRIES {
            self.metrics.cloudwatch.throttled.inc();
            let wait = backoff(*attempt);
            *attempt += 1;
            tracing::debug!(error = %e.text, ?wait, "cloudwatch: throttled; backing off");
            self.pace.sleep(wait).await;
            return Ok(());
        }
        if e.throttled {
            self.metrics.cloudwatch.throttled.inc();
            return Err(anyhow!(
                "{} (still throttled after {MAX_THROTTLE_RETRIES} retries)",
                e.text
            ));
        }
        Err(anyhow!(e.text))
    }

    /// Read every active metric over its span and store what came.
    async fn read(&self, report: &mut Report) -> anyhow::Result<()> {
        let active = self.state().active.clone();
        if active.is_empty() {
            return Ok(());
        }
        let by_id: HashMap<i64, &Active> = active.iter().map(|a| (a.id, a)).collect();
        let ids: Vec<i64> = active.iter().map(|a| a.id).collect();
        let now = self.clock.now();
        let (window, backfill) = (self.cfg.window.delta(), self.cfg.backfill.delta());
        let mut starts = Vec::new();
        let mut end = None;
        for (id, through) in db::polled_through(&self.pool, &ids).await? {
            if let Some((s, e)) = span(now, through, window, backfill) {
                starts.push((id, s));
                end = Some(e);
            }
        }
        let Some(end) = end else { return Ok(()) };
        let calls = plan(&starts, end);
        // A metric's polled_through moves once all its calls are done and all complete.
        let mut pending: HashMap<i64, usize> = HashMap::new();
        for c in &calls {
            for id in &c.ids {
                *pending.entry(*id).or_default() += 1;
            }
        }
        let mut incomplete: BTreeSet<i64> = BTreeSet::new();
        let mut done: Vec<i64> = Vec::new();
        let mut failure = None;
        for call in &calls {
            let collected = match self.get(call, &by_id, report).await {
                Ok(c) => c,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let mut samples = Vec::new();
            for id in &call.ids {
                let c = collected.get(id);
                let complete =
                    c.is_some_and(|c| !c.failed && matches!(c.status, Some(StatusCode::Complete)));
                if !complete {
                    let status = c
                        .and_then(|c| c.status.as_ref())
                        .map_or("Missing", |s| s.as_str());
                    self.metrics
                        .cloudwatch
                        .partial_results
                        .get_or_create(&vec![("status", status.to_string())])
                        .inc();
                    report.incomplete += 1;
                    incomplete.insert(*id);
                }
                if let Some(c) = c {
                    samples.extend(c.points.iter().map(|(t, v)| Sample {
                        metric_id: *id,
                        period_start: *t,
                        value: *v,
                    }));
                }
                let left = pending.get_mut(id).expect("planned");
                *left -= 1;
                if *left == 0 && !incomplete.contains(id) {
                    done.push(*id);
                }
            }
            let n = db::upsert_samples(&self.pool, &samples, PERIOD_SECS as i32, self.clock.now())
                .await?;
            self.metrics.cloudwatch.samples_written.inc_by(n);
            report.samples += n;
        }
        if !done.is_empty() {
            db::advance_polled_through(&self.pool, &done, end).await?;
            report.advanced = done.len();
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One planned call, following `NextToken`; each page waits for the limiter, a throttled
    /// page is retried after a backoff.
    async fn get(
        &self,
        call: &Call,
        by_id: &HashMap<i64, &Active>,
        report: &mut Report,
    ) -> anyhow::Result<HashMap<i64, Collected>> {
        let queries: Vec<MetricDataQuery> = call
            .ids
            .iter()
            .map(|id| query(&self.cfg.namespace, by_id[id]))
            .collect();
        let mut out: HashMap<i64, Collected> = HashMap::new();
        let mut token: Option<String> = None;
        let mut seen_tokens = BTreeSet::new();
        let mut attempt = 0;
        loop {
            self.limiter.acquire().await;
            self.count_call("GetMetricData");
            report.calls += 1;
            let sent = self
                .client
                .get_metric_data()
                .set_metric_data_queries(Some(queries.clone()))
                .start_time(to_aws(call.start))
                .end_time(to_aws(call.end))
                .scan_by(aws_sdk_cloudwatch::types::ScanBy::TimestampAscending)
                .set_next_token(token.clone())
                .send()
                .await;
            let page = match sent {
                Ok(p) => p,
                Err(e) => {
                    self.retry_or_fail(call_error("GetMetricData", &e), &mut attempt)
                        .await?;
                    continue;
                }
            };
            attempt = 0;
            for r in page.metric_data_results() {
                self.collect(call, r, &mut out);
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => {
                    // A token seen before would loop forever: the read is not trusted.
                    if !seen_tokens.insert(t.to_string()) {
                        self.skipped(
                            "repeated_token",
                            &format_args!("cloudwatch: GetMetricData repeated a NextToken"),
                        );
                        for c in out.values_mut() {
                            c.failed = true;
                        }
                        return Ok(out);
                    }
                    token = Some(t.to_string());
                }
                _ => return Ok(out),
            }
        }
    }

    /// Add one result's datapoints to what the call collected, skipping what cannot be a
    /// sample of this call.
    fn collect(
        &self,
        call: &Call,
        r: &aws_sdk_cloudwatch::types::MetricDataResult,
        out: &mut HashMap<i64, Collected>,
    ) {
        let Some(id) = r
            .id()
            .and_then(|i| i.strip_prefix('m'))
            .and_then(|i| i.parse::<i64>().ok())
            .filter(|i| call.ids.contains(i))
        else {
            self.skipped(
                "unknown_result_id",
                &format_args!(
                    "cloudwatch: a result with an id we did not ask for: {:?}",
                    r.id()
                ),
            );
            return;
        };
        let c = out.entry(id).or_default();
        // InternalError, Forbidden, a status this SDK does not know, or none: not stored as
        // complete whatever a later page says.
        if !matches!(
            r.status_code(),
            Some(StatusCode::Complete | StatusCode::PartialData)
        ) {
            c.failed = true;
        }
        c.status = r.status_code().cloned();
        if r.timestamps().len() != r.values().len() {
            self.skipped(
                "malformed_result",
                &format_args!(
                    "cloudwatch: m{id} has {} timestamps and {} values; not stored",
                    r.timestamps().len(),
                    r.values().len()
                ),
            );
            c.failed = true;
            return;
        }
        for (t, v) in r.timestamps().iter().zip(r.values()) {
            let Some(t) = from_aws(t) else {
                self.skipped("bad_timestamp", &format_args!("cloudwatch: m{id}: {t:?}"));
                continue;
            };
            if t < call.start || t >= call.end {
                self.skipped(
                    "out_of_span",
                    &format_args!(
                        "cloudwatch: m{id}: datapoint at {t} outside the span read [{}, {})",
                        call.start, call.end
                    ),
                );
                continue;
            }
            if floor_period(t) != t {
                self.skipped(
                    "misaligned",
                    &format_args!("cloudwatch: m{id}: datapoint at {t} is not on a period"),
                );
                continue;
            }
            if !v.is_finite() {
                self.skipped(
                    "not_finite",
                    &format_args!("cloudwatch: m{id}: value {v} at {t}"),
                );
                continue;
            }
            c.points.insert(t, *v);
        }
    }
}

fn query(namespace: &str, a: &Active) -> MetricDataQuery {
    let dims: Vec<Dimension> = a
        .dimensions
        .iter()
        .map(|(k, v)| Dimension::builder().name(k).value(v).build())
        .collect();
    MetricDataQuery::builder()
        .id(format!("m{}", a.id))
        .metric_stat(
            MetricStat::builder()
                .metric(
                    Metric::builder()
                        .namespace(namespace)
                        .metric_name(&a.name)
                        .set_dimensions(Some(dims))
                        .build(),
                )
                .period(PERIOD_SECS as i32)
                .stat("Sum")
                .build(),
        )
        .return_data(true)
        .build()
}

fn to_aws(t: DateTime<Utc>) -> aws_sdk_cloudwatch::primitives::DateTime {
    aws_sdk_cloudwatch::primitives::DateTime::from_secs(t.timestamp())
}

fn from_aws(t: &aws_sdk_cloudwatch::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// Register the poller (leader only) with `aws::spawn_poller`.
pub fn start(
    sdk: &SdkConfig,
    cfg: &CloudWatchConfig,
    tasks: &crate::app::tasks::Supervisor,
    ctx: &super::PollerContext,
) {
    let poller = Arc::new(Poller::new(
        client(sdk),
        cfg.clone(),
        ctx.pool.clone(),
        ctx.clock.clone(),
        ctx.metrics.clone(),
    ));
    super::spawn_poller(tasks, ctx, NAME, cfg.poll.0, move |tick| {
        let poller = poller.clone();
        async move {
            let r = poller.poll(tick.first_of_term).await?;
            tracing::debug!(?r, "cloudwatch: polled");
            Ok(())
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_wanted_names() {
        for n in [
            "Connect.ClientIDThrottle",
            "Connect.Throttle",
            "Connect.AuthError",
            "Connect.ClientError",
            "PublishIn.Throttle",
            "PublishOut.Throttle",
            "Subscribe.Throttle",
            "RuleMessageThrottled",
            "Failure",
            "TopicMatch.ServerError",
        ] {
            assert!(is_wanted(n), "{n}");
        }
        for n in [
            "Connect.Success",
            "PublishIn.Success",
            "Success",
            "throttle",
            "",
        ] {
            assert!(!is_wanted(n), "{n}");
        }
    }

    #[test]
    fn spans_follow_polled_through_window_and_horizon() {
        let (w, b) = (TimeDelta::minutes(15), TimeDelta::hours(3));
        let now = t("2026-01-01T12:00:30Z");
        // Never read: the horizon (rounded up to a period) to now truncated.
        assert_eq!(
            span(now, None, w, b),
            Some((t("2026-01-01T09:01:00Z"), t("2026-01-01T12:00:00Z")))
        );
        // Read through 11:59: the window before it.
        assert_eq!(
            span(now, Some(t("2026-01-01T11:59:00Z")), w, b),
            Some((t("2026-01-01T11:44:00Z"), t("2026-01-01T12:00:00Z")))
        );
        // Read through long ago (a restart after a day): the horizon.
        assert_eq!(
            span(now, Some(t("2025-12-31T00:00:00Z")), w, b),
            Some((t("2026-01-01T09:01:00Z"), t("2026-01-01T12:00:00Z")))
        );
        // A polled_through in the future still re-reads the window.
        assert_eq!(
            span(now, Some(t("2026-01-02T00:00:00Z")), w, b),
            Some((t("2026-01-01T11:45:00Z"), t("2026-01-01T12:00:00Z")))
        );
        // Nothing to read with no window and everything read.
        assert_eq!(
            span(now, Some(t("2026-01-01T12:00:00Z")), TimeDelta::zero(), b),
            None
        );
    }

    #[test]
    fn plans_split_queries_and_long_spans() {
        let end = t("2026-01-01T12:00:00Z");
        let a = t("2026-01-01T11:45:00Z");
        let b = t("2026-01-01T09:00:00Z");
        let mut starts: Vec<(i64, DateTime<Utc>)> = (1..=1200).map(|i| (i, a)).collect();
        starts.push((5000, b));
        let calls = plan(&starts, end);
        // 1200 at one start: 500 + 500 + 200; one at another: one call.
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[0].ids, vec![5000]);
        assert_eq!(calls[0].start, b);
        assert!(calls.iter().all(|c| c.ids.len() <= MAX_QUERIES));
        // 500 queries over 15 days: 201 periods per call at most.
        let long = t("2025-12-17T12:00:00Z");
        let starts: Vec<_> = (1..=500).map(|i| (i, long)).collect();
        let calls = plan(&starts, end);
        for c in &calls {
            let periods = (c.end - c.start).num_seconds() / PERIOD_SECS;
            assert!(periods * c.ids.len() as i64 <= MAX_DATAPOINTS);
        }
        assert_eq!(calls.first().unwrap().start, long);
        assert_eq!(calls.last().unwrap().end, end);
        assert!(calls.windows(2).all(|w| w[0].end == w[1].start));
    }

    proptest! {
        // Each case plans up to ~1,500 metrics; 64 cases keep this to a few seconds.
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn plans_cover_every_metric_span_exactly_once(
            n in 1usize..1500,
            groups in 1i64..4,
            hours in 1i64..120,
        ) {
            let end = t("2026-01-01T12:00:00Z");
            let starts: Vec<(i64, DateTime<Utc>)> = (0..n as i64)
                .map(|i| (i, end - TimeDelta::hours(1 + (i % groups) * hours)))
                .collect();
            let calls = plan(&starts, end);
            for (id, start) in &starts {
                let mut mine: Vec<&Call> = calls.iter().filter(|c| c.ids.contains(id)).collect();
                mine.sort_by_key(|c| c.start);
                prop_assert_eq!(mine.first().unwrap().start, *start);
                prop_assert_eq!(mine.last().unwrap().end, end);
                prop_assert!(mine.windows(2).all(|w| w[0].end == w[1].start));
            }
            for c in &calls {
                prop_assert!(c.ids.len() <= MAX_QUERIES);
                let periods = (c.end - c.start).num_seconds() / PERIOD_SECS;
                prop_assert!(periods * c.ids.len() as i64 <= MAX_DATAPOINTS);
            }
        }
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        for a in 0..20 {
            let d = backoff(a);
            let full = Duration::from_secs(1 << a.min(5)).min(Duration::from_secs(30));
            assert!(d >= full / 2 && d <= full, "{a}: {d:?}");
        }
    }

    #[test]
    fn throttles_are_told_from_other_errors() {
        assert!(is_throttle(Some("Throttling"), Some(400)));
        assert!(is_throttle(Some("ThrottlingException"), Some(503)));
        assert!(is_throttle(None, Some(429)));
        assert!(!is_throttle(Some("AccessDenied"), Some(403)));
        assert!(!is_throttle(Some("ExpiredToken"), Some(400)));
        assert!(!is_throttle(None, Some(503)));
    }

    #[tokio::test]
    async fn the_limiter_spaces_calls() {
        let pace = Arc::new(VirtualPace::default());
        let l = Limiter::new(5.0, pace.clone());
        let mut at = Vec::new();
        for _ in 0..11 {
            l.acquire().await;
            at.push(pace.elapsed());
        }
        assert_eq!(at[0], Duration::ZERO);
        assert!(at
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_millis(200)));
        assert_eq!(at[10], Duration::from_secs(2));
        // Idle time is not banked into a burst.
        pace.sleep(Duration::from_secs(10)).await;
        l.acquire().await;
        let t = pace.elapsed();
        l.acquire().await;
        assert_eq!(pace.elapsed() - t, Duration::from_millis(200));
    }
}
