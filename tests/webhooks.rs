//! Webhook delivery against a real Postgres and a real HTTP receiver that fails on purpose
//! (down, slow, 500, 429 with Retry-After, 400, garbage), driven by an injected clock: nothing
//! lost, ordering per alert, retries on schedule, dead-lettering and re-drive, signatures
//! checked by an independent implementation (Python's `hmac`), one notification per group
//! outage, reopen suppression, reminders, and the PagerDuty and Slack bodies.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use fleetwatch::alerts::lifecycle::{self, AlertSpec};
use fleetwatch::alerts::outbox;
use fleetwatch::alerts::webhook::{Outcome, Worker};
use fleetwatch::clock::{Clock, ManualClock};
use fleetwatch::config::{Config, HumanDuration, Secret, WebhookConfig, WebhookFormat};
use fleetwatch::db::notifications;
use fleetwatch::domain::actor::Actor;
use fleetwatch::domain::alert::{Kind, Severity};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const SECRET: &str = "whsec-current";
const OLD_SECRET: &str = "whsec-previous";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()
}

fn secs(n: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(n))
}

// ---------------------------------------------------------------------------------------------
// The receiver

#[derive(Debug, Clone)]
enum Mode {
    Ok,
    Status(u16),
    /// 429 with this `Retry-After` value.
    TooMany(String),
    /// Answer 200 only after this long (beyond the worker's timeout).
    Slow(Duration),
}

#[derive(Debug, Clone)]
struct Captured {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// What the receiver answered; 0 when it was too slow for the client.
    answered: u16,
}

impl Captured {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap().to_str().unwrap()
    }
    fn delivery(&self) -> &str {
        self.header("fleetwatch-delivery")
    }
}

#[derive(Default)]
struct Shared {
    mode: Option<Mode>,
    captured: Vec<Captured>,
}

type Rx = Arc<Mutex<Shared>>;

/// An HTTP receiver on a fixed port that can be taken down and brought back.
struct Receiver {
    port: u16,
    shared: Rx,
    task: Option<JoinHandle<()>>,
}

async fn hook(State(rx): State<Rx>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mode = rx.lock().unwrap().mode.clone().unwrap_or(Mode::Ok);
    let answered = match &mode {
        Mode::Ok => 200,
        Mode::Status(s) => *s,
        Mode::TooMany(_) => 429,
        Mode::Slow(_) => 0,
    };
    rx.lock().unwrap().captured.push(Captured {
        path: uri.path().to_string(),
        headers,
        body,
        answered,
    });
    // Connection: close, so that "down" really refuses the next request (no pooled
    // keep-alive connection outlives the listener).
    let close = [("connection", "close")];
    match mode {
        Mode::Ok => (close, "ok").into_response(),
        Mode::Status(s) => (StatusCode::from_u16(s).unwrap(), close, "nope").into_response(),
        Mode::TooMany(ra) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("connection", "close"), ("retry-after", ra.as_str())],
            "slow down",
        )
            .into_response(),
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            (close, "late").into_response()
        }
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut r = Receiver {
            port,
            shared: Arc::default(),
            task: None,
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: TcpListener) {
        let app = axum::Router::new()
            .fallback(axum::routing::post(hook))
            .with_state(self.shared.clone());
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn set(&self, mode: Mode) {
        self.shared.lock().unwrap().mode = Some(mode);
    }

    /// Not listening: connections are refused.
    async fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn up(&mut self) {
        self.down().await;
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }

    /// Listening, but answering bytes that are not HTTP.
    async fn garbage(&mut self) {
        self.down().await;
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"\x00\x01\x02 this is not HTTP at all\r\n\r\n")
                    .await;
                let _ = s.shutdown().await;
            }
        }));
    }

    fn captured(&self) -> Vec<Captured> {
        self.shared.lock().unwrap().captured.clone()
    }

    /// The requests it accepted (answered 2xx).
    fn accepted(&self) -> Vec<Captured> {
        self.captured()
            .into_iter()
            .filter(|c| (200..300).contains(&c.answered))
            .collect()
    }
}

/// Verify a captured request's signature with Python's `hmac`, knowing only `secrets`.
fn python_verifies(c: &Captured, secrets: &[&str]) -> bool {
    const SCRIPT: &str = r#"
import hashlib, hmac, sys
header, secrets = sys.argv[1], sys.argv[2:]
body = sys.stdin.buffer.read()
pairs = [p.split("=", 1) for p in header.split(",")]
t = [v for k, v in pairs if k == "t"][0]
sigs = [v for k, v in pairs if k == "v1"]
ok = any(hmac.compare_digest(hmac.new(s.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest(), g)
         for s in secrets for g in sigs)
print("ok" if ok else "bad")
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(c.header("fleetwatch-signature"))
        .args(secrets)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&c.body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim() == "ok"
}

fn sig_t(c: &Captured) -> i64 {
    c.header("fleetwatch-signature")
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .unwrap()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The service side

fn endpoint(name: &str, url: String) -> WebhookConfig {
    WebhookConfig {
        name: Some(name.into()),
        url,
        secret: Some(Secret::new(SECRET)),
        secrets: vec![Secret::new(OLD_SECRET)],
        timeout: secs(1),
        backoff_min: secs(10),
        backoff_max: secs(60),
        ..WebhookConfig::default()
    }
}

async fn setup(pool: &PgPool, hooks: &[WebhookConfig]) -> (Worker, Arc<ManualClock>) {
    fleetwatch::logging::init_for_tests();
    outbox::sync_endpoints(pool, hooks).await.unwrap();
    (
        Worker::new(pool.clone(), hooks).unwrap(),
        ManualClock::new(t0()),
    )
}

/// Fire an alert as the detector would. `device` alerts wait group_wait.
async fn fire(
    pool: &PgPool,
    now: DateTime<Utc>,
    kind: Kind,
    subject: &str,
    device: Option<&str>,
    group: Option<&str>,
) -> i64 {
    let spec = AlertSpec {
        kind,
        subject: subject.into(),
        device_id: device.map(String::from),
        group_id: group.map(String::from),
        severity: kind.default_severity(),
        summary: format!("{subject} is in trouble"),
        details: json!({"state": "silent"}),
    };
    let mut tx = pool.begin().await.unwrap();
    let id = lifecycle::fire(&mut tx, &spec, now, TimeDelta::minutes(30))
        .await
        .unwrap()
        .id();
    tx.commit().await.unwrap();
    id
}

async fn resolve(pool: &PgPool, id: i64, now: DateTime<Utc>) {
    let mut tx = pool.begin().await.unwrap();
    assert!(lifecycle::resolve(&mut tx, id, now, None, json!({}))
        .await
        .unwrap());
    tx.commit().await.unwrap();
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: i64,
    alert_id: i64,
    endpoint: String,
    event: String,
    delivery_id: String,
    status: String,
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    last_error: Option<String>,
}

async fn rows(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        r#"select id, alert_id, endpoint, event, delivery_id, status, attempts, next_attempt_at,
                  last_error
           from notifications order by id"#,
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn row(pool: &PgPool, id: i64) -> Row {
    rows(pool).await.into_iter().find(|r| r.id == id).unwrap()
}

/// (status_code, error) of every attempt of a notification.
async fn attempts(pool: &PgPool, id: i64) -> Vec<(Option<i32>, Option<String>, i64)> {
    sqlx::query_as(
        r#"select status_code, error, latency_ms from delivery_attempts
           where notification_id = $1 order by id"#,
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn tick(w: &Worker, clock: &ManualClock) -> Outcome {
    w.tick(clock.now()).await.unwrap()
}

/// Move the clock to the earliest pending row and tick, until nothing is pending.
async fn drain(w: &Worker, clock: &ManualClock, pool: &PgPool, max_ticks: usize) {
    for _ in 0..max_ticks {
        let next: Option<DateTime<Utc>> = sqlx::query_scalar(
            "select min(next_attempt_at) from notifications where status = 'pending'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        let Some(next) = next else { return };
        if next > clock.now() {
            clock.set(next);
        }
        tick(w, clock).await;
    }
    panic!("notifications still pending after {max_ticks} ticks");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn firing_then_resolved_in_order_through_500_and_down_signed_afresh(pool: PgPool) {
    let mut rx = Receiver::start().await;
    let (w, clock) = setup(&pool, &[endpoint("ops", rx.url("/hook"))]).await;

    // a device alert: its firing waits group_wait (30s)
    let id = fire(
        &pool,
        t0(),
        Kind::HeartbeatGap,
        "screen-1",
        Some("screen-1"),
        Some("b1"),
    )
    .await;
    let r = rows(&pool).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].event, "alert.firing");
    assert_eq!(r[0].next_attempt_at, t0() + TimeDelta::seconds(30));
    assert_eq!(tick(&w, &clock).await, Outcome::default());
    assert!(rx.captured().is_empty());

    // first attempt: 500 → retried on the schedule (10s..10s for the first retry)
    rx.set(Mode::Status(500));
    clock.set(t0() + TimeDelta::seconds(30));
    let out = tick(&w, &clock).await;
    assert_eq!((out.claimed, out.retried), (1, 1), "{out:?}");
    let firing = row(&pool, r[0].id).await;
    assert_eq!(firing.status, "pending");
    assert_eq!(firing.attempts, 1);
    assert_eq!(firing.next_attempt_at, clock.now() + TimeDelta::seconds(10));
    assert!(firing.last_error.as_deref().unwrap().contains("HTTP 500"));

    // the alert resolves while its firing is still failing
    resolve(&pool, id, t0() + TimeDelta::seconds(35)).await;
    // the receiver goes down
    rx.down().await;
    clock.set(firing.next_attempt_at);
    let out = tick(&w, &clock).await;
    assert_eq!((out.claimed, out.retried), (1, 1), "{out:?}");
    let firing = row(&pool, firing.id).await;
    assert!(
        firing.last_error.as_deref().unwrap().contains("connection"),
        "{firing:?}"
    );
    // second retry: between 10s and 20s
    let wait = firing.next_attempt_at - clock.now();
    assert!(
        wait >= TimeDelta::seconds(10) && wait <= TimeDelta::seconds(20),
        "{wait}"
    );

    // well past the resolution's due time, the resolution still waits for its firing
    clock.set(firing.next_attempt_at - TimeDelta::milliseconds(1));
    let out = tick(&w, &clock).await;
    assert_eq!(
        out.claimed, 0,
        "head-of-line: the resolution must not overtake"
    );

    rx.up().await;
    rx.set(Mode::Ok);
    clock.set(firing.next_attempt_at);
    let firing_sent = clock.now();
    let out = tick(&w, &clock).await;
    assert_eq!((out.claimed, out.delivered), (1, 1), "{out:?}");
    // the resolution waits resolve_wait (30s) from when it resolved
    let resolved_due = t0() + TimeDelta::seconds(65);
    assert!(clock.now() < resolved_due);
    assert_eq!(tick(&w, &clock).await, Outcome::default());
    clock.set(resolved_due);
    let out = tick(&w, &clock).await;
    assert_eq!((out.claimed, out.delivered), (1, 1), "{out:?}");

    let r = rows(&pool).await;
    assert_eq!(
        r.iter()
            .map(|r| (r.event.as_str(), r.status.as_str()))
            .collect::<Vec<_>>(),
        [
            ("alert.firing", "delivered"),
            ("alert.resolved", "delivered")
        ]
    );
    let a = attempts(&pool, r[0].id).await;
    assert_eq!(
        a.iter().map(|a| a.0).collect::<Vec<_>>(),
        [Some(500), None, Some(200)]
    );
    assert!(a[1].1.as_deref().unwrap().contains("connection"));

    // what the receiver saw: the failed firing, then firing and resolved in order
    let seen = rx.captured();
    assert_eq!(seen.len(), 3);
    let accepted = rx.accepted();
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[0].json()["event"], "alert.firing");
    assert_eq!(accepted[1].json()["event"], "alert.resolved");
    // the same delivery id on every attempt, a new signature time per attempt
    assert_eq!(seen[0].delivery(), r[0].delivery_id);
    assert_eq!(seen[1].delivery(), r[0].delivery_id);
    assert_ne!(sig_t(&seen[0]), sig_t(&seen[1]));
    assert_eq!(sig_t(&seen[1]), firing_sent.timestamp());
    assert_eq!(sig_t(&seen[2]), clock.now().timestamp());
    assert_ne!(r[0].delivery_id, r[1].delivery_id);

    for c in &seen {
        assert_eq!(c.path, "/hook");
        assert_eq!(c.header("content-type"), "application/json");
        assert!(python_verifies(c, &[SECRET]), "current secret");
        assert!(python_verifies(c, &[OLD_SECRET]), "rotated-out secret");
        assert!(!python_verifies(c, &["wrong"]));
        assert_eq!(c.header("fleetwatch-signature").matches("v1=").count(), 2);
    }
    // the native body
    let b = accepted[0].json();
    assert_eq!(b["delivery_id"], r[0].delivery_id);
    assert_eq!(
        b["sent_at"],
        firing_sent.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "{b}"
    );
    assert_eq!(b["alert"]["id"], id);
    assert_eq!(b["alert"]["kind"], "heartbeat_gap");
    assert_eq!(b["alert"]["device_id"], "screen-1");
    assert_eq!(b["alert"]["group"], "b1");
    assert_eq!(b["alert"]["status"], "firing");
    for k in [
        "severity",
        "opened_at",
        "resolved_at",
        "summary",
        "details",
        "acknowledged_by",
        "ticket_ref",
    ] {
        assert!(b["alert"].get(k).is_some(), "alert.{k} missing: {b}");
    }
    let b = accepted[1].json();
    assert_eq!(b["alert"]["status"], "resolved");
    assert_eq!(b["alert"]["resolved_at"], "2026-11-27T10:00:35Z");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn slow_garbage_and_429_are_retried_honouring_retry_after(pool: PgPool) {
    let mut rx = Receiver::start().await;
    let (w, clock) = setup(&pool, &[endpoint("ops", rx.url("/"))]).await;
    fire(&pool, t0(), Kind::IngestDown, "ingest", None, None).await;
    let id = rows(&pool).await[0].id;

    // slow: beyond the 1s timeout
    rx.set(Mode::Slow(Duration::from_secs(3)));
    let out = tick(&w, &clock).await;
    assert_eq!(out.retried, 1, "{out:?}");
    let r = row(&pool, id).await;
    assert!(
        r.last_error.as_deref().unwrap().contains("timeout"),
        "{r:?}"
    );

    // garbage instead of HTTP
    rx.garbage().await;
    clock.set(r.next_attempt_at);
    let out = tick(&w, &clock).await;
    assert_eq!(out.retried, 1, "{out:?}");
    let r = row(&pool, id).await;

    // 429 with Retry-After in seconds: honoured exactly (it is above the backoff)
    rx.up().await;
    rx.set(Mode::TooMany("120".into()));
    clock.set(r.next_attempt_at);
    let out = tick(&w, &clock).await;
    assert_eq!(out.retried, 1, "{out:?}");
    let r = row(&pool, id).await;
    assert_eq!(r.next_attempt_at, clock.now() + TimeDelta::seconds(120));

    // 429 with Retry-After as an HTTP date
    // (HTTP dates have whole seconds)
    let at = DateTime::from_timestamp(clock.now().timestamp() + 121, 0).unwrap();
    let date = httpdate_of(at + TimeDelta::minutes(5));
    rx.set(Mode::TooMany(date));
    clock.set(at);
    assert_eq!(tick(&w, &clock).await.retried, 1);
    let r = row(&pool, id).await;
    assert_eq!(r.next_attempt_at, at + TimeDelta::minutes(5));

    // not yet due: nothing happens
    clock.set(r.next_attempt_at - TimeDelta::seconds(1));
    assert_eq!(tick(&w, &clock).await, Outcome::default());

    rx.set(Mode::Ok);
    clock.set(r.next_attempt_at);
    assert_eq!(tick(&w, &clock).await.delivered, 1);
    let a = attempts(&pool, id).await;
    assert_eq!(
        a.iter().map(|a| a.0).collect::<Vec<_>>(),
        [None, None, Some(429), Some(429), Some(200)]
    );
    assert!(
        a[0].2 >= 900,
        "latency of the timed-out attempt: {}ms",
        a[0].2
    );
    // every attempt the receiver saw carries the same delivery id and a valid signature
    let seen = rx.captured();
    assert_eq!(seen.len(), 4, "slow, 429, 429, ok");
    for c in &seen {
        assert_eq!(c.delivery(), row(&pool, id).await.delivery_id);
        assert!(python_verifies(c, &[SECRET]));
    }
}

fn httpdate_of(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_400_is_dead_at_once(pool: PgPool) {
    let rx = Receiver::start().await;
    let (w, clock) = setup(&pool, &[endpoint("ops", rx.url("/"))]).await;
    rx.set(Mode::Status(400));
    fire(&pool, t0(), Kind::IngestDown, "ingest", None, None).await;
    let out = tick(&w, &clock).await;
    assert_eq!((out.claimed, out.dead), (1, 1), "{out:?}");
    let r = &rows(&pool).await[0];
    assert_eq!((r.status.as_str(), r.attempts), ("dead", 1));
    assert!(r.last_error.as_deref().unwrap().contains("HTTP 400"));
    clock.advance(TimeDelta::hours(1));
    assert_eq!(tick(&w, &clock).await, Outcome::default());
    assert_eq!(rx.captured().len(), 1);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn dead_letter_after_max_attempt_age_then_redrive(pool: PgPool) {
    let mut rx = Receiver::start().await;
    let mut hook = endpoint("ops", rx.url("/"));
    hook.max_attempt_age = HumanDuration(Duration::from_secs(3600));
    hook.backoff_max = HumanDuration(Duration::from_secs(600));
    let (w, clock) = setup(&pool, &[hook]).await;
    rx.down().await;
    let alert = fire(&pool, t0(), Kind::IngestDown, "ingest", None, None).await;
    let id = rows(&pool).await[0].id;

    let mut ticks = 0;
    loop {
        let r = row(&pool, id).await;
        if r.status != "pending" {
            break;
        }
        assert!(r.next_attempt_at <= t0() + TimeDelta::hours(1), "{r:?}");
        clock.set(r.next_attempt_at);
        tick(&w, &clock).await;
        ticks += 1;
        assert!(ticks < 100);
    }
    let r = row(&pool, id).await;
    assert_eq!(r.status, "dead");
    // the last attempt was made at the deadline, not before giving up early
    assert_eq!(clock.now(), t0() + TimeDelta::hours(1));
    assert!(r.attempts >= 6, "{r:?}");
    assert_eq!(attempts(&pool, id).await.len() as i32, r.attempts);

    // listed as dead, then re-driven from the API's function: same delivery id
    let dead = notifications::list(&pool, Some(outbox::NotificationStatus::Dead), None, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    rx.up().await;
    assert!(notifications::redrive(&pool, id, clock.now(), "user:ops")
        .await
        .unwrap());
    assert!(!notifications::redrive(&pool, id, clock.now(), "user:ops")
        .await
        .unwrap());
    assert_eq!(tick(&w, &clock).await.delivered, 1);
    let seen = rx.accepted();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].delivery(), r.delivery_id);
    assert_eq!(seen[0].json()["alert"]["id"], alert);
}

async fn group_of_devices(pool: &PgPool, group: &str, n: usize) -> Vec<String> {
    sqlx::query("insert into groups (id, name) values ($1, $1)")
        .bind(group)
        .execute(pool)
        .await
        .unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("{group}-{i:02}")).collect();
    for id in &ids {
        sqlx::query("insert into devices (id, group_id, state) values ($1, $2, 'healthy')")
            .bind(id)
            .bind(group)
            .execute(pool)
            .await
            .unwrap();
    }
    ids
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_group_outage_is_one_notification_and_releases_the_still_failing(pool: PgPool) {
    let rx = Receiver::start().await;
    let (w, clock) = setup(&pool, &[endpoint("ops", rx.url("/"))]).await;
    let s = fleetwatch::detect::Settings::from_config(&Config::default());
    let devices = group_of_devices(&pool, "lobby", 4).await;
    let mut gaps = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let at = t0() + TimeDelta::seconds(5 * i as i64);
        gaps.push(fire(&pool, at, Kind::HeartbeatGap, d, Some(d), Some("lobby")).await);
    }
    clock.set(t0() + TimeDelta::seconds(20));
    let g = fleetwatch::detect::grouping::tick(&pool, &s, clock.now())
        .await
        .unwrap();
    assert_eq!(g.covered, 4);
    // the outage waits group_wait too (a network or fleet outage may still cover it); the
    // devices' firings are held by group_wait, then superseded
    let out = tick(&w, &clock).await;
    assert_eq!(out.delivered, 0, "{out:?}");
    clock.advance(TimeDelta::seconds(60));
    let out = tick(&w, &clock).await;
    assert_eq!((out.superseded, out.delivered), (4, 1), "{out:?}");
    let seen = rx.accepted();
    assert_eq!(seen.len(), 1, "one notification for the outage");
    let b = seen[0].json();
    assert_eq!(b["event"], "alert.firing");
    assert_eq!(b["alert"]["kind"], "group_outage");
    assert_eq!(b["alert"]["details"]["devices"], json!(devices));

    // three come back (their resolutions are superseded: nobody was told they fired), the
    // outage resolves, and the one still failing is notified on its own
    for id in &gaps[..3] {
        resolve(&pool, *id, clock.now()).await;
    }
    clock.advance(TimeDelta::minutes(1));
    let g = fleetwatch::detect::grouping::tick(&pool, &s, clock.now())
        .await
        .unwrap();
    assert_eq!((g.resolved.len(), g.uncovered), (1, 1), "{g:?}");
    drain(&w, &clock, &pool, 10).await;
    let seen = rx.accepted();
    let events: Vec<(String, String, Value)> = seen
        .iter()
        .map(|c| {
            let b = c.json();
            (
                b["event"].as_str().unwrap().to_string(),
                b["alert"]["kind"].as_str().unwrap().to_string(),
                b["alert"]["device_id"].clone(),
            )
        })
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events.contains(&("alert.resolved".into(), "group_outage".into(), Value::Null)));
    assert!(events.contains(&(
        "alert.firing".into(),
        "heartbeat_gap".into(),
        json!(devices[3])
    )));
    let statuses: Vec<(i64, String, String)> = rows(&pool)
        .await
        .into_iter()
        .filter(|r| gaps[..3].contains(&r.alert_id))
        .map(|r| (r.alert_id, r.event, r.status))
        .collect();
    assert!(
        statuses.iter().all(|(_, _, s)| s == "superseded"),
        "{statuses:?}"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn short_blips_and_reopens_do_not_page(pool: PgPool) {
    let rx = Receiver::start().await;
    let (w, clock) = setup(&pool, &[endpoint("ops", rx.url("/"))]).await;

    // a device alert resolved within group_wait is never sent
    let blip = fire(&pool, t0(), Kind::HeartbeatGap, "s1", Some("s1"), None).await;
    resolve(&pool, blip, t0() + TimeDelta::seconds(10)).await;
    clock.advance(TimeDelta::minutes(2));
    let out = tick(&w, &clock).await;
    assert_eq!(out.delivered, 0, "{out:?}");
    drain(&w, &clock, &pool, 5).await;
    assert!(rx.captured().is_empty());

    // a real one fires; it resolves and reopens within resolve_wait: neither is sent
    let id = fire(
        &pool,
        clock.now(),
        Kind::HeartbeatGap,
        "s2",
        Some("s2"),
        None,
    )
    .await;
    drain(&w, &clock, &pool, 5).await;
    assert_eq!(rx.accepted().len(), 1);
    clock.advance(TimeDelta::minutes(5));
    resolve(&pool, id, clock.now()).await;
    clock.advance(TimeDelta::seconds(20));
    assert_eq!(
        fire(
            &pool,
            clock.now(),
            Kind::HeartbeatGap,
            "s2",
            Some("s2"),
            None
        )
        .await,
        id,
        "reopened, same id"
    );
    clock.advance(TimeDelta::minutes(2));
    drain(&w, &clock, &pool, 5).await;
    assert_eq!(rx.accepted().len(), 1, "no resolve/fire pair");
    let last: Vec<(String, String)> = rows(&pool)
        .await
        .into_iter()
        .filter(|r| r.alert_id == id)
        .map(|r| (r.event, r.status))
        .collect();
    assert_eq!(
        last,
        [
            ("alert.firing".into(), "delivered".into()),
            ("alert.resolved".into(), "superseded".into()),
            ("alert.firing".into(), "superseded".into()),
        ]
    );

    // it resolves for good: the resolution is sent after resolve_wait
    resolve(&pool, id, clock.now()).await;
    clock.advance(TimeDelta::seconds(29));
    assert_eq!(tick(&w, &clock).await.delivered, 0);
    clock.advance(TimeDelta::seconds(1));
    assert_eq!(tick(&w, &clock).await.delivered, 1);
    let seen = rx.accepted();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].json()["event"], "alert.resolved");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn reminders_until_acknowledged(pool: PgPool) {
    let rx = Receiver::start().await;
    let mut hook = endpoint("ops", rx.url("/"));
    hook.repeat_interval = HumanDuration(Duration::from_secs(3600));
    let (w, clock) = setup(&pool, &[hook]).await;
    let id = fire(&pool, t0(), Kind::IngestDown, "ingest", None, None).await;
    assert_eq!(tick(&w, &clock).await.delivered, 1);
    clock.advance(TimeDelta::minutes(59));
    assert_eq!(tick(&w, &clock).await, Outcome::default());
    clock.advance(TimeDelta::minutes(1));
    let out = tick(&w, &clock).await;
    assert_eq!((out.reminders, out.delivered), (1, 1), "{out:?}");
    clock.advance(TimeDelta::minutes(30));
    assert_eq!(tick(&w, &clock).await, Outcome::default());
    clock.advance(TimeDelta::minutes(30));
    assert_eq!(tick(&w, &clock).await.reminders, 1);
    clock.advance(TimeDelta::minutes(10));
    assert_eq!(
        lifecycle::acknowledge(
            &pool,
            id,
            &Actor {
                principal: "token:1:alice".into(),
                on_behalf_of: None
            },
            Some("on it"),
            clock.now()
        )
        .await
        .unwrap(),
        Some(true)
    );
    assert_eq!(tick(&w, &clock).await.delivered, 1);
    clock.advance(TimeDelta::hours(3));
    assert_eq!(tick(&w, &clock).await, Outcome::default());
    let events: Vec<String> = rx
        .accepted()
        .iter()
        .map(|c| c.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events,
        [
            "alert.firing",
            "alert.reminder",
            "alert.reminder",
            "alert.acknowledged"
        ]
    );
    let ack = rx.accepted()[3].json();
    assert_eq!(ack["alert"]["acknowledged_by"], "token:1:alice");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn pagerduty_and_slack_bodies(pool: PgPool) {
    let rx = Receiver::start().await;
    let mut pd = endpoint("pd", rx.url("/pd"));
    pd.format = WebhookFormat::Pagerduty;
    pd.routing_key = Some(Secret::new("R0UTING"));
    pd.group_wait = secs(0);
    let mut slack = endpoint("slack", rx.url("/slack"));
    slack.format = WebhookFormat::Slack;
    slack.group_wait = secs(0);
    let (w, clock) = setup(&pool, &[pd, slack]).await;

    let id = fire(
        &pool,
        t0(),
        Kind::HeartbeatGap,
        "<!channel>",
        Some("<!channel>"),
        None,
    )
    .await;
    assert_eq!(tick(&w, &clock).await.delivered, 2);
    clock.advance(TimeDelta::minutes(1));
    resolve(&pool, id, clock.now()).await;
    clock.advance(TimeDelta::minutes(1));
    drain(&w, &clock, &pool, 5).await;

    let seen = rx.accepted();
    let at = |path: &str| -> Vec<Value> {
        seen.iter()
            .filter(|c| c.path == path)
            .map(Captured::json)
            .collect()
    };
    let pd = at("/pd");
    assert_eq!(pd.len(), 2);
    assert_eq!(pd[0]["routing_key"], "R0UTING");
    assert_eq!(pd[0]["event_action"], "trigger");
    assert_eq!(pd[0]["dedup_key"], format!("fleetwatch-alert-{id}"));
    assert_eq!(pd[0]["payload"]["summary"], "<!channel> is in trouble");
    assert_eq!(pd[0]["payload"]["source"], "<!channel>");
    assert_eq!(pd[0]["payload"]["severity"], "error");
    assert_eq!(pd[0]["payload"]["timestamp"], "2026-11-27T10:00:00Z");
    assert_eq!(pd[0]["payload"]["custom_details"]["id"], id);
    assert_eq!(pd[1]["event_action"], "resolve");
    assert_eq!(pd[1]["dedup_key"], format!("fleetwatch-alert-{id}"));

    let sl = at("/slack");
    assert_eq!(sl.len(), 2);
    let text = sl[0]["text"].as_str().unwrap();
    assert!(!text.contains("<!channel>"), "{text}");
    assert!(text.contains("&lt;!channel&gt; is in trouble"), "{text}");
    assert!(text.contains("FIRING"), "{text}");
    assert!(sl[1]["text"].as_str().unwrap().contains("RESOLVED"));
    for c in &seen {
        assert!(python_verifies(c, &[SECRET]));
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn endpoint_filters(pool: PgPool) {
    let rx = Receiver::start().await;
    let mut only_ingest = endpoint("ingest-only", rx.url("/a"));
    only_ingest.kinds = vec![Kind::IngestDown];
    let mut critical = endpoint("critical", rx.url("/b"));
    critical.min_severity = Some(Severity::Critical);
    let mut lobby = endpoint("lobby", rx.url("/c"));
    lobby.groups = vec!["lobby".into()];
    lobby.send_resolved = false;
    let (_w, _clock) = setup(&pool, &[only_ingest, critical, lobby]).await;

    let a = fire(&pool, t0(), Kind::IngestDown, "ingest", None, None).await;
    let b = fire(&pool, t0(), Kind::Flapping, "x", Some("x"), Some("lobby")).await;
    let c = fire(&pool, t0(), Kind::Flapping, "y", Some("y"), Some("hall")).await;
    resolve(&pool, b, t0()).await;
    let got: Vec<(i64, String, String)> = rows(&pool)
        .await
        .into_iter()
        .map(|r| (r.alert_id, r.endpoint, r.event))
        .collect();
    assert_eq!(
        got,
        [
            (a, "critical".into(), "alert.firing".into()),
            (a, "ingest-only".into(), "alert.firing".into()),
            (b, "lobby".into(), "alert.firing".into()),
        ],
        "c ({c}) matches nothing; lobby does not want resolutions"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn nothing_lost_under_a_flaky_receiver(pool: PgPool) {
    let mut rx = Receiver::start().await;
    let mut hook = endpoint("ops", rx.url("/"));
    // every due row in one pass, so that each receiver mode is met by all of them
    hook.max_in_flight = 32;
    let (w, clock) = setup(&pool, &[hook]).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let subject = format!("scr-{i}");
        let at = t0() + TimeDelta::seconds(i);
        let kind = if i % 2 == 0 {
            Kind::Flapping
        } else {
            Kind::ClientIdConflict
        };
        ids.push(fire(&pool, at, kind, &subject, Some(&subject), None).await);
    }
    clock.set(t0() + TimeDelta::minutes(1));
    for (i, id) in ids.iter().enumerate() {
        if i % 3 != 0 {
            resolve(&pool, *id, clock.now()).await;
        }
    }
    // the receiver cycles through its failures while the worker keeps ticking
    let mut step = 0;
    loop {
        match step % 6 {
            0 => rx.down().await,
            1 => {
                rx.up().await;
                rx.set(Mode::Status(503));
            }
            2 => rx.set(Mode::Slow(Duration::from_millis(1500))),
            3 => rx.garbage().await,
            4 => {
                rx.up().await;
                rx.set(Mode::TooMany("30".into()));
            }
            _ => rx.set(Mode::Ok),
        }
        step += 1;
        clock.advance(TimeDelta::seconds(70));
        tick(&w, &clock).await;
        let pending: i64 =
            sqlx::query_scalar("select count(*) from notifications where status = 'pending'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        assert!(step < 200, "still {pending} pending");
    }
    let r = rows(&pool).await;
    assert!(r.iter().all(|r| r.status == "delivered"), "{r:?}");
    assert_eq!(r.len(), 12 + 8);
    // per alert: the firing accepted before the resolution; duplicates only with one id
    let seen = rx.captured();
    for c in &seen {
        assert!(python_verifies(c, &[SECRET]));
    }
    let accepted = rx.accepted();
    for (i, id) in ids.iter().enumerate() {
        let mine: Vec<&Captured> = accepted
            .iter()
            .filter(|c| c.json()["alert"]["id"] == *id)
            .collect();
        let events: Vec<String> = mine
            .iter()
            .map(|c| c.json()["event"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<&str> = if i % 3 != 0 {
            vec!["alert.firing", "alert.resolved"]
        } else {
            vec!["alert.firing"]
        };
        assert_eq!(events, want, "alert {id}");
    }
    let mut by_delivery = std::collections::BTreeMap::<String, Vec<Value>>::new();
    for c in &seen {
        by_delivery
            .entry(c.delivery().to_string())
            .or_default()
            .push(c.json()["event"].clone());
    }
    assert_eq!(by_delivery.len(), 20);
    for (d, evs) in by_delivery {
        assert!(evs.windows(2).all(|w| w[0] == w[1]), "{d}: {evs:?}");
    }
}

#[test]
fn webhook_config_validates_with_key_names() {
    let err = |toml: &str| {
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(path.path(), toml).unwrap();
        Config::load_with_env(Some(path.path()), &Default::default())
            .unwrap_err()
            .to_string()
    };
    assert!(err("[[webhooks]]\nurl = \"ftp://x\"\n").contains("webhooks[0].url"));
    assert!(
        err("[[webhooks]]\nurl = \"http://x\"\nformat = \"pagerduty\"\n")
            .contains("webhooks[0].routing_key")
    );
    assert!(
        err("[[webhooks]]\nurl = \"http://x\"\nkinds = [\"nope\"]\n").contains("webhooks[0].kinds")
    );
    assert!(
        err("[[webhooks]]\nurl = \"http://x\"\nmin_severity = \"loud\"\n")
            .contains("webhooks[0].min_severity")
    );
    assert!(err(
        "[[webhooks]]\nurl = \"http://x\"\n[[webhooks]]\nurl = \"http://y\"\nname = \"webhook-0\"\n"
    )
    .contains("webhooks[1].name"));
    assert!(
        err("[[webhooks]]\nurl = \"http://x\"\nsecret_file = \"/nonexistent/s\"\n")
            .contains("webhooks[0].secret_file")
    );
    assert!(
        err("[[webhooks]]\nurl = \"http://x\"\nbackoff_min = \"2h\"\n")
            .contains("webhooks[0].backoff_min")
    );
    for n in [0, 65] {
        assert!(err(&format!(
            "[[webhooks]]\nurl = \"http://x\"\nmax_in_flight = {n}\n"
        ))
        .contains("webhooks[0].max_in_flight"));
    }
    // the URL may be the credential: a configuration error does not quote it
    let e = err("[[webhooks]]\nurl = \"hooks.example.com/services/T0/B0/secret-token\"\n");
    assert!(
        e.contains("webhooks[0].url") && !e.contains("secret-token"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s");
    std::fs::write(&secret, "from-file\n").unwrap();
    let c = Config::from_toml(&format!(
        r#"
        [[webhooks]]
        name = "pd"
        format = "pagerduty"
        routing_key = "rk"
        secret_file = "{}"
        secrets = ["old-1", "old-2"]
        kinds = ["heartbeat_gap", "group_outage"]
        min_severity = "error"
        groups = ["lobby"]
        timeout = "5s"
        send_resolved = false
        send_reminders = false
        repeat_interval = "1h"
        group_wait = "1m"
        max_attempt_age = "12h"
        backoff_min = "5s"
        backoff_max = "30m"
        max_in_flight = 8
        "#,
        secret.display()
    ))
    .unwrap();
    let w = &c.webhooks[0];
    assert_eq!(w.target_url(), "https://events.pagerduty.com/v2/enqueue");
    assert_eq!(w.max_in_flight, 8);
    let s: Vec<String> = w
        .signing_secrets()
        .unwrap()
        .iter()
        .map(|s| s.expose().to_string())
        .collect();
    assert_eq!(s, ["from-file", "old-1", "old-2"]);
    assert!(!format!("{c:?}").contains("old-1"));
    let d = WebhookConfig::default();
    assert_eq!(d.timeout, secs(10));
    assert_eq!(d.group_wait, secs(30));
    assert_eq!(d.repeat_interval, secs(4 * 3600));
    assert_eq!(d.max_attempt_age, secs(24 * 3600));
    assert_eq!((d.backoff_min, d.backoff_max), (secs(10), secs(3600)));
    assert!(d.send_resolved && d.send_reminders);
    assert_eq!(d.max_in_flight, 4);
    assert_eq!(d.format, WebhookFormat::Native);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_removed_endpoint_is_dead_lettered_and_others_keep_their_queue(pool: PgPool) {
    let rx = Receiver::start().await;
    let a = endpoint("a", rx.url("/a"));
    let b = endpoint("b", rx.url("/b"));
    let (_w, clock) = setup(&pool, &[a.clone(), b]).await;
    fire(&pool, t0(), Kind::IngestDown, "ingest", None, None).await;
    assert_eq!(rows(&pool).await.len(), 2);
    // the configuration is loaded again without "b": its pending row is dead-lettered
    let (w, _) = setup(&pool, std::slice::from_ref(&a)).await;
    let r = rows(&pool).await;
    let b_row = r.iter().find(|r| r.endpoint == "b").unwrap();
    assert_eq!(b_row.status, "dead");
    assert_eq!(
        b_row.last_error.as_deref(),
        Some("endpoint no longer configured")
    );
    let out = tick(&w, &clock).await;
    assert_eq!((out.claimed, out.delivered), (1, 1), "{out:?}");
    assert_eq!(rx.accepted().len(), 1);
    assert_eq!(rx.accepted()[0].path, "/a");
}

/// The worker as the service runs it: spawned by `App`, on the system clock.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_service_runs_the_worker(pool: PgPool) {
    let rx = Receiver::start().await;
    let mut cfg = Config::default();
    // no broker there: ingest keeps retrying, which does not concern the webhooks
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cfg.mqtt.url = format!("mqtt://127.0.0.1:{port}");
    cfg.http.addr = "127.0.0.1:0".into();
    cfg.webhooks = vec![endpoint("ops", rx.url("/live"))];
    let app = fleetwatch::app::App::build_with_pool(
        cfg,
        pool.clone(),
        Arc::new(fleetwatch::clock::SystemClock),
    )
    .await
    .unwrap();
    let id = fire(&pool, Utc::now(), Kind::Throttled, "c-1", None, None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rx.accepted().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "nothing delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = &rx.accepted()[0];
    assert_eq!(c.json()["alert"]["id"], id);
    assert!(python_verifies(c, &[SECRET]));
    let t = sig_t(c);
    assert!((Utc::now().timestamp() - t).abs() < 10);
    app.shutdown().await.unwrap();
}

/// A receiver that hangs holds only its own slots: another endpoint's deliveries go out within a
/// poll interval, as if the hanging one were not there (before: every pass waited for the
/// slowest send, so they waited for its 10 s timeout). At most `max_in_flight` requests hang at
/// once; on shutdown the hanging sends are dropped after the grace period and their rows stay
/// leased, to come back when the lease ends.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_hanging_receiver_delays_nobody_else(pool: PgPool) {
    let good = Receiver::start().await;
    let hanging = Receiver::start().await;
    hanging.set(Mode::Slow(Duration::from_secs(600)));
    let mut slow = endpoint("hanging", hanging.url("/"));
    slow.timeout = secs(10);
    slow.max_in_flight = 2;
    let hooks = [endpoint("good", good.url("/")), slow];
    let (mut w, _) = setup(&pool, &hooks).await;
    w.shutdown_grace = Duration::from_millis(200);
    let cancel = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(fleetwatch::alerts::webhook::run(
        Arc::new(w),
        Arc::new(fleetwatch::clock::SystemClock),
        cancel.clone(),
    ));

    let delivered_within = |ids: Vec<i64>| {
        let good = &good;
        async move {
            let fired = tokio::time::Instant::now();
            loop {
                let seen: Vec<Value> = good
                    .accepted()
                    .iter()
                    .map(|c| c.json()["alert"]["id"].clone())
                    .collect();
                if ids.iter().all(|id| seen.contains(&json!(id))) {
                    return fired.elapsed();
                }
                assert!(fired.elapsed() < Duration::from_secs(15), "never delivered");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // the first alert: both endpoints get it, the hanging one never answers
    let first = fire(&pool, Utc::now(), Kind::Throttled, "c-0", None, None).await;
    let took = delivered_within(vec![first]).await;
    assert!(took < Duration::from_secs(2), "alone: {took:?}");
    // more alerts while the hanging receiver holds the first one
    let mut more = Vec::new();
    for i in 1..4 {
        more.push(
            fire(
                &pool,
                Utc::now(),
                Kind::Throttled,
                &format!("c-{i}"),
                None,
                None,
            )
            .await,
        );
    }
    let took = delivered_within(more).await;
    assert!(
        took < Duration::from_secs(2),
        "beside a hanging receiver: {took:?}"
    );
    assert_eq!(good.accepted().len(), 4);

    // the hanging endpoint: max_in_flight requests open, the other rows waiting their turn
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hanging.captured().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "second slot unused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(hanging.captured().len(), 2, "at most max_in_flight at once");
    let hanging_rows = || async {
        rows(&pool)
            .await
            .into_iter()
            .filter(|r| r.endpoint == "hanging")
            .map(|r| (r.status, r.attempts))
            .collect::<Vec<_>>()
    };
    let p = || "pending".to_string();
    assert_eq!(
        hanging_rows().await,
        [(p(), 1), (p(), 1), (p(), 0), (p(), 0)]
    );

    // shutdown does not wait for the hanging sends beyond the grace period
    let stopping = tokio::time::Instant::now();
    cancel.cancel();
    worker.await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(2), "{stopping:?}");
    // the cut-short attempts are not recorded; their rows stay leased (attempts counted)
    assert_eq!(
        hanging_rows().await,
        [(p(), 1), (p(), 1), (p(), 0), (p(), 0)]
    );
    let recorded: i64 = sqlx::query_scalar(
        r#"select count(*) from delivery_attempts a join notifications n
           on n.id = a.notification_id where n.endpoint = 'hanging'"#,
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, 0);
}

/// Issue 12: a notification is sent when it is written, not at the worker's next one-second
/// poll (`NOTIFY fleetwatch_outbox` wakes the worker), and a `group_wait` is kept to the
/// moment it ends (the worker sleeps until the earliest row not yet due). Alerts fired at
/// seven phases of the poll all arrive well within it; with the poll alone, most would wait.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn new_notifications_wake_the_worker_and_group_wait_ends_on_time(pool: PgPool) {
    let rx = Receiver::start().await;
    let mut hook = endpoint("prompt", rx.url("/"));
    hook.group_wait = HumanDuration(Duration::from_millis(1500));
    let (w, _) = setup(&pool, &[hook]).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(fleetwatch::alerts::webhook::run(
        Arc::new(w),
        Arc::new(fleetwatch::clock::SystemClock),
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let arrival = |id: i64| {
        let rx = &rx;
        async move {
            let start = tokio::time::Instant::now();
            loop {
                if rx.accepted().iter().any(|c| c.json()["alert"]["id"] == id) {
                    return start.elapsed();
                }
                assert!(start.elapsed() < Duration::from_secs(10), "never delivered");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // due at once (no device: no group_wait), at every phase of the one-second poll
    for i in 0..7 {
        tokio::time::sleep(Duration::from_millis(170)).await;
        let id = fire(
            &pool,
            Utc::now(),
            Kind::Throttled,
            &format!("w-{i}"),
            None,
            None,
        )
        .await;
        let took = arrival(id).await;
        assert!(took < Duration::from_millis(600), "alert {i}: {took:?}");
    }
    // a device's alert waits group_wait (1.5 s), and not a poll longer
    sqlx::query("insert into devices (id) values ('d-1')")
        .execute(&pool)
        .await
        .unwrap();
    let id = fire(&pool, Utc::now(), Kind::Throttled, "d-1", Some("d-1"), None).await;
    let took = arrival(id).await;
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(2100),
        "group_wait 1.5 s: {took:?}"
    );
    cancel.cancel();
    worker.await.unwrap();
}
