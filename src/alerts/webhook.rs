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
//! 2. **Claim** with `for update skip locked` the due pending rows that are the oldest pending
//!    row of their (alert, endpoint): a resolution can never overtake its firing, even while
//!    the firing is being retried. Only rows of endpoints this worker is configured with are
//!    claimed (during a rolling deploy an old replica leaves a new endpoint's rows alone). Each claimed row is first checked against what happened
//!    since it was written (see [`decide`]; a row never attempted whose alert a silence
//!    now matches is superseded, naming the silence); rows still worth sending get a lease (their
//!    `next_attempt_at` moves past the request timeout) and `attempts + 1`, and the claiming
//!    transaction commits before any HTTP request, so no transaction stays open across the
//!    network and a crashed worker's rows come back when their lease ends.
//! 3. **Deliver** concurrently (one request per claimed row), then record each attempt in
//!    `delivery_attempts` and move the row on: 2xx → delivered; timeout, connection error,
//!    408, 429 and 5xx → retried; other statuses (3xx included: redirects are not followed)
//!    → dead. A retry is due after a delay drawn uniformly between `backoff_min` and
//!    `min(backoff_max, backoff_min × 2^(attempts−1))` (jitter, so that endpoints coming back
//!    are not hit by every row at once), or after `Retry-After` (seconds or an HTTP date) when
//!    a 429/503 gives one, whichever is later; never after the dead-letter deadline
//!    (`retry_since + max_attempt_age`), where the last attempt is made, and a failure at or
//!    past the deadline is dead. Error texts name the endpoint, never its URL
//!    ([`super::redact`]): a Slack-style path or a `?key=` query is a credential, and
//!    `last_error` is served to read-only tokens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::formats::{self, Notification};
use super::outbox::{self, Event};
use super::redact::UrlRedactor;
use super::silences;
use crate::clock::SharedClock;
use crate::config::{Secret, WebhookConfig, WebhookFormat};

/// Most rows claimed per tick.
pub const BATCH: i64 = 64;
/// How often an idle worker looks for due rows.
pub const POLL: Duration = Duration::from_secs(1);
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
            repeat_interval: td(w.repeat_interval.0),
            max_attempt_age: td(w.max_attempt_age.0),
            backoff_min: td(w.backoff_min.0),
            backoff_max: td(w.backoff_max.0),
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

/// The worker's handles: the pool, the endpoints and one shared HTTP client.
pub struct Worker {
    pool: PgPool,
    endpoints: BTreeMap<String, Arc<Endpoint>>,
    client: reqwest::Client,
    pub batch: i64,
    /// When the last reminder pass ran.
    reminded_at: std::sync::Mutex<Option<DateTime<Utc>>>,
}

/// A claimed row, with what the worker needs to decide and send.
#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: i64,
    alert_id: i64,
    endpoint: String,
    event: String,
    delivery_id: String,
    body: Value,
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    retry_since: DateTime<Utc>,
    alert_status: String,
    resolved_at: Option<DateTime<Utc>>,
    covered_by: Option<i64>,
    acknowledged: bool,
    /// What this endpoint was last told about the alert: the event of its last delivered or
    /// dead firing/resolved row before this one.
    last_told: Option<String>,
    /// An active silence matching the alert now, if any.
    silenced_by: Option<i64>,
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
    if let (true, Some(silence), Some(_)) = (first, c.silenced_by, Event::parse(&c.event)) {
        return Decision::Silenced(silence);
    }
    match Event::parse(&c.event) {
        Some(Event::Firing) => {
            if first {
                if let Some(by) = c.covered_by {
                    return Decision::Supersede(format!("covered by outage alert {by}"));
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
            {
                return Decision::Supersede("no longer firing, acknowledged or covered".into());
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
        let mut endpoints = BTreeMap::new();
        for (i, w) in hooks.iter().enumerate() {
            let e = Endpoint::from_config(i, w)?;
            endpoints.insert(e.name.clone(), Arc::new(e));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fleetwatch/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the webhook HTTP client")?;
        Ok(Self {
            pool,
            endpoints,
            client,
            batch: BATCH,
            reminded_at: std::sync::Mutex::new(None),
        })
    }

    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.get(name).map(|e| &**e)
    }

    /// One pass: reminders, claim, deliver, record. `now` is injected.
    pub async fn tick(&self, now: DateTime<Utc>) -> anyhow::Result<Outcome> {
        let mut out = Outcome {
            reminders: self.reminders(now).await.context("writing reminders")?,
            caught_up: self
                .silences_ended(now)
                .await
                .context("catching up after silences")?,
            ..Outcome::default()
        };
        let to_send = self.claim(now, &mut out).await.context("claiming")?;
        let mut set = tokio::task::JoinSet::new();
        for (c, e) in to_send {
            let client = self.client.clone();
            set.spawn(async move {
                let started = Instant::now();
                let result = send(&client, &e, &c, now).await;
                (c, e, result, started.elapsed())
            });
        }
        while let Some(joined) = set.join_next().await {
            let (c, e, result, latency) = joined.context("a delivery task panicked")?;
            self.record(&c, &e, result, latency, now, &mut out)
                .await
                .context("recording an attempt")?;
        }
        Ok(out)
    }

    async fn reminders(&self, now: DateTime<Utc>) -> sqlx::Result<usize> {
        let due: Vec<&Arc<Endpoint>> = self
            .endpoints
            .values()
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
        let locked: bool = sqlx::query_scalar(
            "select pg_try_advisory_xact_lock(hashtext('fleetwatch.webhook.reminders'))",
        )
        .fetch_one(&mut *tx)
        .await?;
        if !locked {
            return Ok(0);
        }
        let mut written = 0;
        for e in due {
            let ids: Vec<i64> = sqlx::query_scalar(&format!(
                r#"select a.id from alerts a
                   where a.status = 'firing' and a.acknowledged_by is null
                     and a.covered_by is null
                     and not exists (select 1 from silences s where {silenced})
                     and not exists (select 1 from notifications p
                                     where p.alert_id = a.id and p.endpoint = $1
                                       and p.status = 'pending')
                     and (select o.event from notifications o
                          where o.alert_id = a.id and o.endpoint = $1
                            and o.status in ('delivered', 'dead')
                            and o.event in ('alert.firing', 'alert.resolved')
                          order by o.id desc limit 1) = 'alert.firing'
                     and (select max(o.finished_at) from notifications o
                          where o.alert_id = a.id and o.endpoint = $1
                            and o.status in ('delivered', 'dead')
                            and o.event in ('alert.firing', 'alert.reminder')) <= $2
                   order by a.id"#,
                silenced = silences::active_match("$3")
            ))
            .bind(&e.name)
            .bind(now - e.repeat_interval)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            for id in ids {
                let Some(alert) = outbox::snapshot(&mut tx, id).await? else {
                    continue;
                };
                sqlx::query(
                    r#"insert into notifications (alert_id, endpoint, event, body,
                                                  next_attempt_at, created_at, retry_since)
                       values ($1, $2, 'alert.reminder', $3, $4, $4, $4)"#,
                )
                .bind(id)
                .bind(&e.name)
                .bind(outbox::body_of(&alert)?)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                written += 1;
            }
        }
        tx.commit().await?;
        Ok(written)
    }

    /// The "silence ended" pass ([`silences::catch_up`]), by one replica at a time.
    async fn silences_ended(&self, now: DateTime<Utc>) -> sqlx::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar(
            "select pg_try_advisory_xact_lock(hashtext('fleetwatch.webhook.silences'))",
        )
        .fetch_one(&mut *tx)
        .await?;
        if !locked {
            return Ok(0);
        }
        let names: Vec<String> = self.endpoints.keys().cloned().collect();
        let n = silences::catch_up(&mut tx, &names, now).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn claim(
        &self,
        now: DateTime<Utc>,
        out: &mut Outcome,
    ) -> sqlx::Result<Vec<(Claimed, Arc<Endpoint>)>> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<Claimed> = sqlx::query_as(&format!(
            r#"with due as (
                   select n.id from notifications n
                   where n.status = 'pending' and n.next_attempt_at <= $1
                     and n.endpoint = any($3)
                     and not exists (select 1 from notifications o
                                     where o.alert_id = n.alert_id and o.endpoint = n.endpoint
                                       and o.status = 'pending' and o.id < n.id)
                   order by n.next_attempt_at, n.id
                   limit $2
                   for update of n skip locked)
               select n.id, n.alert_id, n.endpoint, n.event, n.delivery_id, n.body, n.attempts,
                      n.next_attempt_at, n.retry_since, a.status as alert_status,
                      a.resolved_at, a.covered_by,
                      a.acknowledged_by is not null as acknowledged,
                      (select o.event from notifications o
                       where o.alert_id = n.alert_id and o.endpoint = n.endpoint
                         and o.id < n.id and o.status in ('delivered', 'dead')
                         and o.event in ('alert.firing', 'alert.resolved')
                       order by o.id desc limit 1) as last_told,
                      (select s.id from silences s where {silenced}
                       order by s.id limit 1) as silenced_by
               from due join notifications n on n.id = due.id
                        join alerts a on a.id = n.alert_id
               order by n.next_attempt_at, n.id"#,
            silenced = silences::active_match("$1")
        ))
        .bind(now)
        .bind(self.batch)
        .bind(self.endpoints.keys().collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        out.claimed = rows.len();
        let mut to_send = Vec::new();
        for c in rows {
            let Some(e) = self.endpoints.get(&c.endpoint).cloned() else {
                continue;
            };
            match decide(&c) {
                Decision::Send => {
                    let lease = now + td(e.timeout) + LEASE_MARGIN;
                    sqlx::query(
                        r#"update notifications set attempts = attempts + 1,
                               next_attempt_at = $2 where id = $1"#,
                    )
                    .bind(c.id)
                    .bind(lease)
                    .execute(&mut *tx)
                    .await?;
                    to_send.push((c, e));
                }
                Decision::Supersede(why) => {
                    tracing::debug!(id = c.id, alert = c.alert_id, endpoint = %c.endpoint, event = %c.event, %why, "notification superseded");
                    finish(&mut tx, c.id, "superseded", &why, now).await?;
                    out.superseded += 1;
                }
                Decision::Silenced(silence) => {
                    tracing::debug!(id = c.id, alert = c.alert_id, endpoint = %c.endpoint, event = %c.event, silence, "notification silenced");
                    finish(
                        &mut tx,
                        c.id,
                        "superseded",
                        &format!("silenced by silence {silence}"),
                        now,
                    )
                    .await?;
                    sqlx::query("update notifications set silenced_by = $2 where id = $1")
                        .bind(c.id)
                        .bind(silence)
                        .execute(&mut *tx)
                        .await?;
                    out.superseded += 1;
                }
                Decision::Dead(why) => {
                    tracing::warn!(id = c.id, alert = c.alert_id, endpoint = %c.endpoint, %why, "notification dead-lettered");
                    finish(&mut tx, c.id, "dead", &why, now).await?;
                    out.dead += 1;
                }
            }
        }
        tx.commit().await?;
        Ok(to_send)
    }

    async fn record(
        &self,
        c: &Claimed,
        e: &Endpoint,
        result: Attempt,
        latency: Duration,
        now: DateTime<Utc>,
        out: &mut Outcome,
    ) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        let (status, error) = match &result {
            Attempt::Delivered(s) => (Some(*s), None),
            Attempt::Retry { status, error, .. } => (*status, Some(error.clone())),
            Attempt::Fatal { status, error } => (Some(*status), Some(error.clone())),
        };
        sqlx::query(
            r#"insert into delivery_attempts (notification_id, at, status_code, latency_ms, error)
               values ($1, $2, $3, $4, $5)"#,
        )
        .bind(c.id)
        .bind(now)
        .bind(status.map(i32::from))
        .bind(i64::try_from(latency.as_millis()).unwrap_or(i64::MAX))
        .bind(&error)
        .execute(&mut *tx)
        .await?;
        match result {
            Attempt::Delivered(_) => {
                sqlx::query(
                    r#"update notifications set status = 'delivered', delivered_at = $2,
                           finished_at = $2, last_error = null where id = $1"#,
                )
                .bind(c.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                out.delivered += 1;
            }
            Attempt::Fatal { error, .. } => {
                tracing::warn!(id = c.id, endpoint = %e.name, %error, "webhook refused; dead-lettered");
                finish(&mut tx, c.id, "dead", &error, now).await?;
                out.dead += 1;
            }
            Attempt::Retry {
                error, retry_after, ..
            } => {
                let deadline = c.retry_since + e.max_attempt_age;
                if now >= deadline {
                    tracing::warn!(id = c.id, endpoint = %e.name, %error, "webhook failing past max_attempt_age; dead-lettered");
                    finish(&mut tx, c.id, "dead", &error, now).await?;
                    out.dead += 1;
                } else {
                    let delay = e
                        .backoff(c.attempts + 1)
                        .max(retry_after.unwrap_or(TimeDelta::zero()));
                    let next = (now + delay).min(deadline);
                    tracing::debug!(id = c.id, endpoint = %e.name, %error, %next, "webhook failed; will retry");
                    sqlx::query(
                        "update notifications set next_attempt_at = $2, last_error = $3 where id = $1",
                    )
                    .bind(c.id)
                    .bind(next)
                    .bind(&error)
                    .execute(&mut *tx)
                    .await?;
                    out.retried += 1;
                }
            }
        }
        tx.commit().await
    }
}

async fn finish(
    conn: &mut sqlx::PgConnection,
    id: i64,
    status: &str,
    why: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "update notifications set status = $2, finished_at = $3, last_error = $4 where id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(now)
    .bind(why)
    .execute(conn)
    .await?;
    Ok(())
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

/// The worker task: tick, and when a tick found a full batch go again at once, otherwise sleep
/// [`POLL`]. Tick errors (Postgres blinking) are logged and retried; the sleep is cancellable.
/// Every replica may run it: claims use `skip locked`.
pub async fn run(worker: Arc<Worker>, clock: SharedClock, cancel: CancellationToken) {
    if worker.endpoints.is_empty() {
        return;
    }
    loop {
        let full = match worker.tick(clock.now()).await {
            Ok(o) => {
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
                o.claimed as i64 >= worker.batch
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "webhook tick failed; retrying");
                false
            }
        };
        if full && !cancel.is_cancelled() {
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

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
