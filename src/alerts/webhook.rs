//! The webhook worker: delivers the outbox ([`super::outbox`]) at least once, in order per
//! (alert, endpoint), signed afresh at every attempt, retried from the endpoint's schedule and
//! dead-lettered when too old. It also writes `alert.reminder` rows.
//!
//! A tick:
//! 1. **Reminders.** For each endpoint with `send_reminders`: every alert that is firing,
//!    unacknowledged and not covered by an outage, whose firing this endpoint was told about
//!    (its last delivered or dead firing/resolved row is a firing), that has no pending row on
//!    the endpoint, and whose last delivered firing or reminder is `repeat_interval` old, gets
//!    an `alert.reminder`. The worker writes them (not the detector) because only the worker
//!    knows what each endpoint was actually told and when. Silenced alerts get none.
//!    **Silences ended.** Endpoints that a silence kept uninformed are brought up to date once
//!    ([`super::silences::catch_up`]): a firing, or a resolution, due at once.
//! 2. **Claim**, per endpoint, as many due rows as the endpoint has free slots (at most its
//!    `max_in_flight` sends are in flight at once), with `for update skip locked`, oldest first,
//!    each the oldest pending row of its (alert, endpoint): a resolution can never overtake its
//!    firing, even while the firing is being retried. Only rows of endpoints this worker is
//!    configured with are claimed (during a rolling deploy an old replica leaves a new
//!    endpoint's rows alone). Each claimed row is first checked against what happened since it
//!    was written (see [`decide`]; a row never attempted whose alert a silence now matches is
//!    superseded, naming the silence); rows still worth sending get a lease (their
//!    `next_attempt_at` moves past the request timeout) and `attempts + 1`, and the claiming
//!    transaction commits before any HTTP request, so no transaction stays open across the
//!    network and a crashed worker's rows come back when their lease ends. Superseded and dead
//!    rows take no slot: the endpoint claims again until its slots are taken or nothing is due.
//! 3. **Deliver** each leased row on its own task, which holds one of its endpoint's slots until
//!    the attempt is recorded in `delivery_attempts` and the row moved on: 2xx → delivered;
//!    timeout, connection error, 408, 429 and 5xx → retried; other statuses (3xx included:
//!    redirects are not followed) → dead. A retry is due after a delay drawn uniformly between
//!    `backoff_min` and `min(backoff_max, backoff_min × 2^(attempts−1))` (jitter, so that
//!    endpoints coming back are not hit by every row at once), or after `Retry-After` (seconds
//!    or an HTTP date) when a 429/503 gives one, whichever is later; never after the
//!    dead-letter deadline (`retry_since + max_attempt_age`), where the last attempt is made,
//!    and a failure at or past the deadline is dead. Error texts name the endpoint, never its
//!    URL ([`super::redact`]): a Slack-style path or a `?key=` query is a credential, and
//!    `last_error` is served to read-only tokens.
//!
//! **Prompt.** A row that becomes pending is announced on the Postgres channel
//! `fleetwatch_outbox` (a trigger; whichever replica or CLI wrote it), and [`run`] claims for
//! every endpoint as soon as it hears one; after each such pass it sleeps until the earliest
//! row not yet due (`group_wait`, a retry) rather than until the next poll. So an alert reaches
//! its receiver one detector tick plus `group_wait` after its deadline, plus milliseconds
//! (issue 12; `benches/latency.rs`), and the poll only catches what the announcements missed.
//!
//! **Endpoints are independent.** [`run`] never waits for a send: it claims again for an
//! endpoint as soon as one of its sends ends, and for every endpoint at least every [`POLL`]. A
//! receiver that hangs holds only its own `max_in_flight` slots (each until its `timeout`);
//! every other endpoint's deliveries go on as if it were not there. [`Worker::tick`] (tests,
//! tools) is one pass of all three steps that waits for the sends it started. On shutdown
//! [`run`] stops claiming and gives the sends in flight [`Worker::shutdown_grace`] to end; the
//! rest are dropped and their rows come back when their lease ends (same delivery id: a
//! receiver that got the request drops the duplicate).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::formats::{self, Notification};
use super::redact::UrlRedactor;
use super::silences;
use crate::clock::SharedClock;
use crate::config::{Secret, WebhookConfig, WebhookFormat};
use crate::db::alerts;
use crate::db::notifications::{self, Claimed, NewNotification};
use crate::domain::notification::Event;
use crate::logging::RateLimitedWarn;
use crate::metrics::Metrics;

/// How often the worker looks for due rows of every endpoint (and writes reminders, and
/// catches up after silences); an endpoint whose send ends is looked at again at once.
pub const POLL: Duration = Duration::from_secs(1);
/// How long [`run`] lets sends in flight finish after it was cancelled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A claimed row's lease beyond its request timeout.
const LEASE_MARGIN: TimeDelta = TimeDelta::seconds(60);
/// Response bodies kept in `last_error`, at most (characters; bytes read: four times that).
const ERROR_BODY_MAX: usize = 300;
/// The reminder pass runs at most this often: it looks at every firing alert.
const REMINDER_PASS: TimeDelta = TimeDelta::seconds(60);

/// One configured endpoint, ready to send.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    /// A credential as often as not (Slack-style paths, `?key=`): never logged or stored.
    url: Secret,
    /// Cuts the URL out of error texts.
    redactor: UrlRedactor,
    pub format: WebhookFormat,
    secrets: Vec<Secret>,
    routing_key: Option<Secret>,
    pub timeout: Duration,
    pub send_reminders: bool,
    pub repeat_interval: TimeDelta,
    pub max_attempt_age: TimeDelta,
    pub backoff_min: TimeDelta,
    pub backoff_max: TimeDelta,
    /// Sends in flight at once, at most.
    pub max_in_flight: usize,
}

fn td(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

impl Endpoint {
    pub fn from_config(index: usize, w: &WebhookConfig) -> anyhow::Result<Self> {
        let name = w.name_at(index);
        Ok(Self {
            redactor: UrlRedactor::new(&name, w.target_url()),
            name,
            url: Secret::new(w.target_url()),
            format: w.format,
            secrets: w
                .signing_secrets()
                .with_context(|| format!("webhooks[{index}]"))?,
            routing_key: w.routing_key.clone(),
            timeout: w.timeout.0,
            send_reminders: w.send_reminders,
            repeat_interval: w.repeat_interval.delta(),
            max_attempt_age: w.max_attempt_age.delta(),
            backoff_min: w.backoff_min.delta(),
            backoff_max: w.backoff_max.delta(),
            max_in_flight: w.max_in_flight.max(1),
        })
    }

    /// The delay before retry number `attempts` (1 after the first failure): uniform between
    /// `backoff_min` and the exponential cap.
    pub fn backoff(&self, attempts: i32) -> TimeDelta {
        let exp = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let cap = self
            .backoff_min
            .checked_mul(1 << exp)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
            .max(self.backoff_min);
        let lo = self.backoff_min.num_milliseconds();
        let hi = cap.num_milliseconds().max(lo);
        TimeDelta::milliseconds(rand::rng().random_range(lo..=hi))
    }
}

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reminders: usize,
    /// Rows written because a silence ended ([`super::silences::catch_up`]).
    pub caught_up: usize,
    pub claimed: usize,
    pub delivered: usize,
    pub retried: usize,
    pub dead: usize,
    pub superseded: usize,
}

impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, o: Outcome) {
        self.reminders += o.reminders;
        self.caught_up += o.caught_up;
        self.claimed += o.claimed;
        self.delivered += o.delivered;
        self.retried += o.retried;
        self.dead += o.dead;
        self.superseded += o.superseded;
    }
}

/// The worker's handles: the pool, the endpoints and one shared HTTP client.
pub struct Worker {
    pool: PgPool,
    /// One per configured endpoint, by name.
    lanes: BTreeMap<String, Lane>,
    client: reqwest::Client,
    /// How long [`run`] lets sends in flight finish once cancelled ([`SHUTDOWN_GRACE`]).
    pub shutdown_grace: Duration,
    /// When the last reminder pass ran.
    reminded_at: std::sync::Mutex<Option<DateTime<Utc>>>,
    /// Where deliveries are counted (`with_metrics`); tests that build a bare worker count
    /// nothing.
    metrics: Option<Arc<Metrics>>,
}

/// An endpoint and its slots: one permit per send in flight, `max_in_flight` in all. The
/// slots are what keeps endpoints independent: a hanging receiver exhausts its own, nobody
/// else's.
struct Lane {
    endpoint: Arc<Endpoint>,
    slots: Arc<Semaphore>,
}

/// A leased row on its way out, holding one of its endpoint's slots until it is recorded.
struct Leased {
    row: Claimed,
    endpoint: Arc<Endpoint>,
    _slot: OwnedSemaphorePermit,
}

/// What to do with a claimed row before sending.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Send,
    Supersede(String),
    /// Not sent: a silence is active (superseded, naming it).
    Silenced(i64),
    Dead(String),
}

/// Whether a claimed row is still worth sending. The first-attempt rules only apply before
/// anything was sent: once an attempt was made the receiver may have it, so the row runs to
/// delivered or dead.
fn decide(c: &Claimed) -> Decision {
    let told_firing = c.last_told.as_deref() == Some(Event::Firing.as_str());
    let first = c.attempts == 0;
    if let (true, Some(silence), Some(_)) = (first, c.silenced_by, c.event.parse::<Event>().ok()) {
        return Decision::Silenced(silence);
    }
    match c.event.parse::<Event>().ok() {
        Some(Event::Firing) => {
            if first {
                if let Some(by) = c.covered_by {
                    return Decision::Supersede(format!("covered by outage alert {by}"));
                }
                if let Some(by) = c.inhibited_by {
                    return Decision::Supersede(format!("inhibited by alert {by}"));
                }
                if c.alert_status != "firing"
                    && c.resolved_at.is_some_and(|r| r <= c.next_attempt_at)
                {
                    return Decision::Supersede("resolved within group_wait".into());
                }
                if told_firing {
                    return Decision::Supersede(
                        "the endpoint was told it fires and never that it resolved".into(),
                    );
                }
            }
            Decision::Send
        }
        Some(Event::Resolved) => {
            if !told_firing {
                return Decision::Supersede("the endpoint was never told it fires".into());
            }
            if first && c.alert_status == "firing" {
                return Decision::Supersede("reopened within resolve_wait".into());
            }
            Decision::Send
        }
        Some(Event::Acknowledged) => {
            if !told_firing {
                return Decision::Supersede("the endpoint was not told it fires".into());
            }
            Decision::Send
        }
        Some(Event::Reminder) => {
            if !told_firing
                || c.alert_status != "firing"
                || c.acknowledged
                || c.covered_by.is_some()
                || c.inhibited_by.is_some()
            {
                return Decision::Supersede(
                    "no longer firing, acknowledged, covered or inhibited".into(),
                );
            }
            Decision::Send
        }
        None => Decision::Dead(format!("unknown event {:?}", c.event)),
    }
}

/// How one attempt ended.
#[derive(Debug)]
enum Attempt {
    Delivered(u16),
    /// Worth retrying: timeouts, connection errors, 408, 429, 5xx; with the receiver's
    /// `Retry-After`, if any.
    Retry {
        status: Option<u16>,
        error: String,
        retry_after: Option<TimeDelta>,
    },
    /// Never worth retrying: other 4xx, 3xx.
    Fatal {
        status: u16,
        error: String,
    },
}

/// `Retry-After` as delay-seconds or an HTTP date, relative to `now`.
pub fn parse_retry_after(v: &str, now: DateTime<Utc>) -> Option<TimeDelta> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(TimeDelta::seconds(
            i64::try_from(secs.min(i64::MAX as u64 / 1000)).ok()?,
        ));
    }
    let at: DateTime<Utc> = httpdate::parse_http_date(v).ok()?.into();
    Some((at - now).max(TimeDelta::zero()))
}

impl Worker {
    /// Build from the configured endpoints; one HTTP client for all of them (connections are
    /// pooled per host). Redirects are not followed: a webhook URL that redirects is a
    /// configuration error to see, not to paper over.
    pub fn new(pool: PgPool, hooks: &[WebhookConfig]) -> anyhow::Result<Self> {
        let mut lanes = BTreeMap::new();
        for (i, w) in hooks.iter().enumerate() {
            let e = Endpoint::from_config(i, w)?;
            let slots = Arc::new(Semaphore::new(e.max_in_flight));
            lanes.insert(
                e.name.clone(),
                Lane {
                    endpoint: Arc::new(e),
                    slots,
                },
            );
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fleetwatch/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the webhook HTTP client")?;
        Ok(Self {
            pool,
            lanes,
            client,
            shutdown_grace: SHUTDOWN_GRACE,
            reminded_at: std::sync::Mutex::new(None),
            metrics: None,
        })
    }

    /// Count deliveries (by outcome, with their latency) in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Whether any endpoint is configured (without one, [`run`] has nothing to do).
    pub fn has_endpoints(&self) -> bool {
        !self.lanes.is_empty()
    }

    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.lanes.get(name).map(|l| &*l.endpoint)
    }

    /// One pass: reminders, claim, deliver, record; it waits for the sends it started (the
    /// service runs [`run`] instead, which never does). `now` is injected.
    pub async fn tick(&self, now: DateTime<Utc>) -> anyhow::Result<Outcome> {
        let mut out = self.housekeeping(now).await?;
        let mut set = JoinSet::new();
        for lane in self.lanes.values() {
            for leased in self.claim(lane, now, &mut out).await.context("claiming")? {
                set.spawn(deliver(
                    self.pool.clone(),
                    self.client.clone(),
                    self.metrics.clone(),
                    leased,
                    now,
                ));
            }
        }
        while let Some(joined) = set.join_next().await {
            let (_, recorded) = joined.context("a delivery task panicked")?;
            out += recorded.context("recording an attempt")?;
        }
        Ok(out)
    }

    /// Reminders and the "silence ended" catch-up: rows for the claims to find.
    async fn housekeeping(&self, now: DateTime<Utc>) -> anyhow::Result<Outcome> {
        Ok(Outcome {
            reminders: self.reminders(now).await.context("writing reminders")?,
            caught_up: self
                .silences_ended(now)
                .await
                .context("catching up after silences")?,
            ..Outcome::default()
        })
    }

    async fn reminders(&self, now: DateTime<Utc>) -> sqlx::Result<usize> {
        let due: Vec<&Arc<Endpoint>> = self
            .lanes
            .values()
            .map(|l| &l.endpoint)
            .filter(|e| e.send_reminders)
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        {
            let mut last = self.reminded_at.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|l| now >= l && now - l < REMINDER_PASS) {
                return Ok(0);
            }
            *last = Some(now);
        }
        let mut tx = self.pool.begin().await?;
        // Replicas all run the worker: one writes the reminders, the others skip this pass.
        let locked = notifications::try_lock_reminders(&mut tx).await?;
        if !locked {
            return Ok(0);
        }
        let mut written = 0;
        for e in due {
            let ids = notifications::reminders_due(&mut tx, &e.name, now - e.repeat_interval, now)
                .await?;
            for id in ids {
                let Some(alert) = alerts::snapshot(&mut tx, id).await? else {
                    continue;
                };
                let n = NewNotification {
                    alert_id: id,
                    endpoint: &e.name,
                    event: Event::Reminder,
                    body: &alerts::body_of(&alert)?,
                    due: now,
                };
                notifications::insert(&mut *tx, &n, None, now).await?;
                written += 1;
            }
        }
        tx.commit().await?;
        Ok(written)
    }

    /// The "silence ended" pass ([`silences::catch_up`]), by one replica at a time.
    async fn silences_ended(&self, now: DateTime<Utc>) -> sqlx::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let locked = notifications::try_lock_silences(&mut tx).await?;
        if !locked {
            return Ok(0);
        }
        let names: Vec<String> = self.lanes.keys().cloned().collect();
        let n = silences::catch_up(&mut tx, &names, now).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Claim one endpoint's due rows: supersede or dead-letter those no longer worth sending,
    /// lease as many of the others as the endpoint has free slots.
    async fn claim(
        &self,
        lane: &Lane,
        now: DateTime<Utc>,
        out: &mut Outcome,
    ) -> sqlx::Result<Vec<Leased>> {
        let mut leased = Vec::new();
        loop {
            let free = lane.slots.available_permits();
            if free == 0 {
                return Ok(leased);
            }
            match self.claim_once(lane, free, now, out).await {
                Ok((more, full)) => {
                    leased.extend(more);
                    // Superseded and dead rows took no slot: there may be more behind them.
                    if !full {
                        return Ok(leased);
                    }
                }
                // What an earlier round leased is committed: send it rather than leave it to
                // come back after its lease.
                Err(e) if !leased.is_empty() => {
                    tracing::warn!(endpoint = %lane.endpoint.name, error = %e, "claiming more webhook notifications failed");
                    return Ok(leased);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One claiming transaction of at most `free` rows, committed before anything is sent;
    /// whether it was full.
    async fn claim_once(
        &self,
        lane: &Lane,
        free: usize,
        now: DateTime<Utc>,
        out: &mut Outcome,
    ) -> sqlx::Result<(Vec<Leased>, bool)> {
        let e = &lane.endpoint;
        let mut leased = Vec::new();
        let mut tx = self.pool.begin().await?;
        let rows = notifications::claim_due(&mut tx, &e.name, free as i64, now).await?;
        out.claimed += rows.len();
        let full = rows.len() >= free;
        for c in rows {
            match decide(&c) {
                Decision::Send => {
                    // Only this task takes a lane's slots, so there are `free` of them; should
                    // one be missing after all, the row stays due, untouched.
                    let Ok(slot) = lane.slots.clone().try_acquire_owned() else {
                        continue;
                    };
                    let lease = now + td(e.timeout) + LEASE_MARGIN;
                    notifications::lease(&mut tx, c.id, lease).await?;
                    leased.push(Leased {
                        row: c,
                        endpoint: e.clone(),
                        _slot: slot,
                    });
                }
                Decision::Supersede(why) => {
                    tracing::debug!(id = c.id, alert = c.alert_id, endpoint = %c.endpoint, event = %c.event, %why, "notification superseded");
                    notifications::finish(&mut tx, c.id, "superseded", &why, now).await?;
                    out.superseded += 1;
                }
                Decision::Silenced(silence) => {
                    tracing::debug!(id = c.id, alert = c.alert_id, endpoint = %c.endpoint, event = %c.event, silence, "notification silenced");
                    notifications::finish(
                        &mut tx,
                        c.id,
                        "superseded",
                        &format!("silenced by silence {silence}"),
                        now,
                    )
                    .await?;
                    notifications::set_silenced_by(&mut tx, c.id, silence).await?;
                    out.superseded += 1;
                }
                Decision::Dead(why) => {
                    tracing::warn!(id = c.id, alert = c.alert_id, endpoint = %c.endpoint, %why, "notification dead-lettered");
                    notifications::finish(&mut tx, c.id, "dead", &why, now).await?;
                    out.dead += 1;
                }
            }
        }
        tx.commit().await?;
        Ok((leased, full))
    }
}

/// Send one leased row and record the attempt; the endpoint's slot is held until then.
/// Returns the endpoint's name, so that [`run`] knows whose slot came free.
async fn deliver(
    pool: PgPool,
    client: reqwest::Client,
    metrics: Option<Arc<Metrics>>,
    leased: Leased,
    now: DateTime<Utc>,
) -> (String, sqlx::Result<Outcome>) {
    let Leased { row, endpoint, .. } = &leased;
    let span = tracing::info_span!(
        "webhook.deliver",
        endpoint = %endpoint.name,
        notification = row.id,
        alert = row.alert_id,
        outcome = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        let result = send(&client, endpoint, row, now).await;
        let latency = started.elapsed();
        let recorded = record(&pool, row, endpoint, result, latency, now).await;
        let outcome = match &recorded {
            Ok(o) if o.delivered > 0 => "delivered",
            Ok(o) if o.dead > 0 => "dead",
            Ok(_) => "retried",
            Err(_) => "unrecorded",
        };
        tracing::Span::current().record("outcome", outcome);
        if let Some(m) = &metrics {
            m.tasks.delivered(outcome, latency.as_secs_f64());
        }
        (endpoint.name.clone(), recorded)
    }
    .instrument(span)
    .await
}

/// Record an attempt and move the row on.
async fn record(
    pool: &PgPool,
    c: &Claimed,
    e: &Endpoint,
    result: Attempt,
    latency: Duration,
    now: DateTime<Utc>,
) -> sqlx::Result<Outcome> {
    let mut out = Outcome::default();
    let mut tx = pool.begin().await?;
    let (status, error) = match &result {
        Attempt::Delivered(s) => (Some(*s), None),
        Attempt::Retry { status, error, .. } => (*status, Some(error.clone())),
        Attempt::Fatal { status, error } => (Some(*status), Some(error.clone())),
    };
    notifications::insert_attempt(
        &mut tx,
        c.id,
        now,
        status.map(i32::from),
        i64::try_from(latency.as_millis()).unwrap_or(i64::MAX),
        error.as_deref(),
    )
    .await?;
    match result {
        Attempt::Delivered(_) => {
            notifications::mark_delivered(&mut tx, c.id, now).await?;
            out.delivered += 1;
        }
        Attempt::Fatal { error, .. } => {
            tracing::warn!(id = c.id, endpoint = %e.name, %error, "webhook refused; dead-lettered");
            notifications::finish(&mut tx, c.id, "dead", &error, now).await?;
            out.dead += 1;
        }
        Attempt::Retry {
            error, retry_after, ..
        } => {
            let deadline = c.retry_since + e.max_attempt_age;
            if now >= deadline {
                tracing::warn!(id = c.id, endpoint = %e.name, %error, "webhook failing past max_attempt_age; dead-lettered");
                notifications::finish(&mut tx, c.id, "dead", &error, now).await?;
                out.dead += 1;
            } else {
                let delay = e
                    .backoff(c.attempts + 1)
                    .max(retry_after.unwrap_or(TimeDelta::zero()));
                let next = (now + delay).min(deadline);
                tracing::debug!(id = c.id, endpoint = %e.name, %error, %next, "webhook failed; will retry");
                notifications::schedule_retry(&mut tx, c.id, next, &error).await?;
                out.retried += 1;
            }
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// One signed POST. Every error text in the result is redacted: it names the endpoint, never
/// its URL.
async fn send(client: &reqwest::Client, e: &Endpoint, c: &Claimed, now: DateTime<Utc>) -> Attempt {
    match attempt(client, e, c, now).await {
        Attempt::Retry {
            status,
            error,
            retry_after,
        } => Attempt::Retry {
            status,
            error: e.redactor.redact(&error),
            retry_after,
        },
        Attempt::Fatal { status, error } => Attempt::Fatal {
            status,
            error: e.redactor.redact(&error),
        },
        delivered => delivered,
    }
}

async fn attempt(
    client: &reqwest::Client,
    e: &Endpoint,
    c: &Claimed,
    now: DateTime<Utc>,
) -> Attempt {
    let body = formats::render(
        e.format,
        &Notification {
            event: &c.event,
            alert: &c.body,
            delivery_id: &c.delivery_id,
            sent_at: now,
        },
        e.routing_key.as_ref().map(Secret::expose),
    );
    let mut req = client
        .post(e.url.expose())
        .timeout(e.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Fleetwatch-Delivery", &c.delivery_id)
        .header("Fleetwatch-Event", &c.event);
    if let Some(sig) = formats::signature(&e.secrets, now.timestamp(), &body) {
        req = req.header("Fleetwatch-Signature", sig);
    }
    let resp = match req.body(body).send().await {
        Ok(r) => r,
        Err(err) => {
            let kind = if err.is_timeout() {
                "timeout"
            } else if err.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            // reqwest's message carries the URL: drop it, name the endpoint instead (the
            // causes go through the redactor like every error text, in case one repeats it).
            let causes = sources(&err);
            return Attempt::Retry {
                status: None,
                error: format!(
                    "{kind}: {} to endpoint {}{causes}",
                    err.without_url(),
                    e.name,
                ),
                retry_after: None,
            };
        }
    };
    let status = resp.status();
    let code = status.as_u16();
    if status.is_success() {
        return Attempt::Delivered(code);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    // The body says why, usually; bounded, and reading it must not outlast the timeout.
    let text = match tokio::time::timeout(e.timeout, head_of_body(resp, ERROR_BODY_MAX * 4)).await {
        Ok(bytes) => {
            formats::truncate_chars(String::from_utf8_lossy(&bytes).trim(), ERROR_BODY_MAX)
        }
        Err(_) => String::new(),
    };
    let error = if text.is_empty() {
        format!("HTTP {code}")
    } else {
        format!("HTTP {code}: {text}")
    };
    if code == 408 || code == 429 || status.is_server_error() {
        Attempt::Retry {
            status: Some(code),
            error,
            retry_after,
        }
    } else {
        Attempt::Fatal {
            status: code,
            error,
        }
    }
}

/// At most `max` bytes of a response body: a receiver's error page can be arbitrarily large.
async fn head_of_body(mut resp: reqwest::Response, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < max {
        match resp.chunk().await {
            Ok(Some(c)) => out.extend_from_slice(&c[..c.len().min(max - out.len())]),
            _ => break,
        }
    }
    out
}

/// `: source: its source…`, the causes below an error.
fn sources(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The worker task. Every endpoint is claimed for every [`POLL`] (after the reminders and the
/// silence catch-up), and an endpoint again as soon as one of its sends ends, so a backlog
/// drains at `max_in_flight` requests at a time; sends run on their own tasks and this loop
/// never waits for one. Errors (Postgres blinking) are logged, rate-limited, and retried on
/// the next pass; a row whose attempt could not be recorded comes back when its lease ends.
/// Every replica may run it: claims use `skip locked`.
pub async fn run(worker: Arc<Worker>, clock: SharedClock, cancel: CancellationToken) {
    if worker.lanes.is_empty() {
        return;
    }
    let warn = RateLimitedWarn::new(Duration::from_secs(10));
    let mut in_flight = JoinSet::new();
    // What happened since the last log line: one line per POLL at most.
    let mut done = Outcome::default();
    let mut next_pass = tokio::time::Instant::now();
    // The endpoint whose send just ended: it gets a claim before the next full pass.
    let mut freed: Option<String> = None;
    // New work was announced (`fleetwatch_outbox`), or a row we waited for fell due: every
    // endpoint claims before the next full pass.
    let wake = Arc::new(tokio::sync::Notify::new());
    let listener = tokio::spawn(listen(worker.pool.clone(), wake.clone(), cancel.clone()));
    let mut claim_all = false;
    let mut next_due: Option<tokio::time::Instant> = None;
    let endpoints: Vec<String> = worker.lanes.keys().cloned().collect();
    loop {
        let now = clock.now();
        let full_pass = tokio::time::Instant::now() >= next_pass;
        if full_pass {
            next_pass = tokio::time::Instant::now() + POLL;
            match worker.housekeeping(now).await {
                Ok(o) => done += o,
                Err(e) => warn.warn("webhook_housekeeping", &format_args!("{e:#}; retrying")),
            }
            log_outcome(&std::mem::take(&mut done));
        }
        for lane in worker.lanes.values() {
            if !full_pass && !claim_all && freed.as_deref() != Some(lane.endpoint.name.as_str()) {
                continue;
            }
            match worker.claim(lane, now, &mut done).await {
                Ok(leased) => {
                    for l in leased {
                        in_flight.spawn(deliver(
                            worker.pool.clone(),
                            worker.client.clone(),
                            worker.metrics.clone(),
                            l,
                            now,
                        ));
                    }
                }
                Err(e) => warn.warn(
                    "webhook_claim",
                    &format_args!("claiming webhook notifications failed: {e}; retrying"),
                ),
            }
        }
        if full_pass || claim_all {
            // The earliest row not yet due: wake for it rather than at the next poll.
            next_due = match notifications::next_due(&worker.pool, &endpoints, now).await {
                Ok(due) => due.map(|at| {
                    let wait = (at - now).to_std().unwrap_or_default();
                    tokio::time::Instant::now() + wait
                }),
                Err(_) => None,
            };
        }
        freed = None;
        claim_all = false;
        let due = next_due.filter(|d| *d < next_pass);
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                freed = delivered(joined, &mut done, &warn);
            }
            _ = wake.notified() => claim_all = true,
            _ = tokio::time::sleep_until(due.unwrap_or(next_pass)), if due.is_some() => {
                next_due = None;
                claim_all = true;
            }
            _ = tokio::time::sleep_until(next_pass) => {}
        }
    }
    listener.abort();
    // Shutdown: no more claims; the sends in flight get a grace period, then are dropped (their
    // rows keep the lease and come back when it ends).
    let drained = tokio::time::timeout(worker.shutdown_grace, async {
        while let Some(joined) = in_flight.join_next().await {
            delivered(joined, &mut done, &warn);
        }
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            sends = in_flight.len(),
            "webhook sends cut short by shutdown; their notifications return when their lease ends"
        );
        in_flight.abort_all();
    }
    log_outcome(&done);
}

/// The Postgres channel on which new outbox rows are announced (migration
/// 20261206000100_outbox_notify).
pub const OUTBOX_CHANNEL: &str = "fleetwatch_outbox";

/// Wake the worker whenever a row becomes pending, whichever replica wrote it. Without a
/// LISTEN connection the worker still polls every [`POLL`]; this only makes it prompt, so a
/// failure here is retried quietly (and every reconnect wakes the worker once, for what was
/// missed meanwhile).
async fn listen(pool: PgPool, wake: Arc<tokio::sync::Notify>, cancel: CancellationToken) {
    // Its own connection, outside the pool: a listener holds its connection for good, and the
    // pool's are for queries (`http::server::budget` reserves the descriptor).
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut delay = Duration::from_secs(1);
    while !cancel.is_cancelled() {
        if let Ok(mut listener) = sqlx::postgres::PgListener::connect_with(&own).await {
            if listener.listen(OUTBOX_CHANNEL).await.is_ok() {
                delay = Duration::from_secs(1);
                wake.notify_one();
                // `try_recv` reconnects by itself after a loss (it returns None once).
                while let Ok(n) = listener.try_recv().await {
                    if n.is_none() {
                        tracing::debug!("webhook wake-up: LISTEN connection lost; reconnecting");
                    }
                    wake.notify_one();
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(POLL * 30);
    }
}

/// Account for a finished delivery task; the endpoint whose slot came free, if known.
fn delivered(
    joined: Result<(String, sqlx::Result<Outcome>), tokio::task::JoinError>,
    done: &mut Outcome,
    warn: &RateLimitedWarn,
) -> Option<String> {
    match joined {
        Ok((endpoint, Ok(o))) => {
            *done += o;
            Some(endpoint)
        }
        Ok((endpoint, Err(e))) => {
            warn.warn(
                "webhook_record",
                &format_args!(
                    "recording a webhook attempt to endpoint {endpoint} failed: {e}; \
                     the notification returns when its lease ends"
                ),
            );
            Some(endpoint)
        }
        Err(e) => {
            warn.warn(
                "webhook_task",
                &format_args!("a webhook delivery task failed: {e}"),
            );
            None
        }
    }
}

fn log_outcome(o: &Outcome) {
    if o.delivered + o.dead + o.retried > 0 {
        tracing::info!(
            delivered = o.delivered,
            retried = o.retried,
            dead = o.dead,
            superseded = o.superseded,
            reminders = o.reminders,
            "webhook deliveries"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::Value;

    fn endpoint() -> Endpoint {
        Endpoint::from_config(0, &WebhookConfig::default()).unwrap()
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let e = endpoint();
        for attempts in 1..40 {
            let cap = (TimeDelta::seconds(10) * 2i32.pow((attempts as u32 - 1).min(20)))
                .min(TimeDelta::hours(1));
            for _ in 0..50 {
                let d = e.backoff(attempts);
                assert!(d >= TimeDelta::seconds(10) && d <= cap, "{attempts}: {d}");
            }
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap();
        assert_eq!(parse_retry_after("120", now), Some(TimeDelta::seconds(120)));
        assert_eq!(
            parse_retry_after("Fri, 27 Nov 2026 10:05:00 GMT", now),
            Some(TimeDelta::minutes(5))
        );
        assert_eq!(
            parse_retry_after("Fri, 27 Nov 2026 09:00:00 GMT", now),
            Some(TimeDelta::zero())
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    fn claimed(event: &str) -> Claimed {
        Claimed {
            id: 1,
            alert_id: 1,
            endpoint: "e".into(),
            event: event.into(),
            delivery_id: "d".into(),
            body: Value::Null,
            attempts: 0,
            next_attempt_at: Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 30).unwrap(),
            retry_since: Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap(),
            alert_status: "firing".into(),
            resolved_at: None,
            covered_by: None,
            inhibited_by: None,
            acknowledged: false,
            last_told: None,
            silenced_by: None,
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(&claimed("alert.firing")), Decision::Send);
        assert!(matches!(
            decide(&claimed("alert.nonsense")),
            Decision::Dead(_)
        ));
        let mut c = claimed("alert.firing");
        c.covered_by = Some(9);
        assert!(matches!(decide(&c), Decision::Supersede(_)));
        c.attempts = 1;
        assert_eq!(decide(&c), Decision::Send, "once tried, it runs to the end");

        // inhibited: the first firing is held back, a paged alert is not taken back
        let mut c = claimed("alert.firing");
        c.inhibited_by = Some(8);
        assert_eq!(
            decide(&c),
            Decision::Supersede("inhibited by alert 8".into())
        );
        c.attempts = 1;
        assert_eq!(decide(&c), Decision::Send);
        let mut c = claimed("alert.reminder");
        c.last_told = Some("alert.firing".into());
        c.inhibited_by = Some(8);
        assert!(matches!(decide(&c), Decision::Supersede(_)));

        let mut c = claimed("alert.firing");
        c.alert_status = "resolved".into();
        c.resolved_at = Some(c.next_attempt_at - TimeDelta::seconds(5));
        assert!(matches!(decide(&c), Decision::Supersede(_)));
        // resolved only after the firing was due (worker was down): still sent
        c.resolved_at = Some(c.next_attempt_at + TimeDelta::seconds(5));
        assert_eq!(decide(&c), Decision::Send);

        let mut c = claimed("alert.resolved");
        assert!(matches!(decide(&c), Decision::Supersede(_)));
        c.last_told = Some("alert.firing".into());
        c.alert_status = "resolved".into();
        assert_eq!(decide(&c), Decision::Send);
        c.alert_status = "firing".into();
        assert!(matches!(decide(&c), Decision::Supersede(_)));

        let mut c = claimed("alert.firing");
        c.last_told = Some("alert.firing".into());
        assert!(matches!(decide(&c), Decision::Supersede(_)));
        c.last_told = Some("alert.resolved".into());
        assert_eq!(decide(&c), Decision::Send);

        let mut c = claimed("alert.reminder");
        c.last_told = Some("alert.firing".into());
        assert_eq!(decide(&c), Decision::Send);
        c.acknowledged = true;
        assert!(matches!(decide(&c), Decision::Supersede(_)));

        // silenced: nothing is sent before a first attempt; once tried, it runs to the end
        for event in [
            "alert.firing",
            "alert.resolved",
            "alert.acknowledged",
            "alert.reminder",
        ] {
            let mut c = claimed(event);
            c.last_told = Some("alert.firing".into());
            c.silenced_by = Some(7);
            assert_eq!(decide(&c), Decision::Silenced(7), "{event}");
        }
        let mut c = claimed("alert.firing");
        c.silenced_by = Some(7);
        c.attempts = 1;
        assert_eq!(decide(&c), Decision::Send);
    }
}
