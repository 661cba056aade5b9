//! Presence storage and ordering against a real Postgres (DESIGN.md §2a, "Presence ordering" and
//! "Identity"): realistic histories delivered in any order converge to the truth, concurrent
//! writers converge, the SQL ordering function agrees with the Rust one, the identity rules hold
//! at the storage boundary, and the retention job deletes only what is old.
//!
//! proptest strategies cannot run inside an async test, so the property tests draw their cases
//! up front from a deterministic `TestRunner` and then apply them against the database.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use fleetwatch::clock::{ManualClock, SharedClock, SystemClock};
use fleetwatch::config::{Config, HumanDuration, RetentionConfig};
use fleetwatch::db::presence::Stored;
use fleetwatch::domain::presence::{self, Ordering};
use fleetwatch::domain::DropReason;
use fleetwatch::ingest::presence::{prepare, store, Outcome, Prepared};
use fleetwatch::ingest::{accept, Accepted, DeviceRegistry, IngestContext};
use fleetwatch::metrics::Metrics;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::json;
use sqlx::PgPool;
use tokio::task::JoinSet;

// ---------------------------------------------------------------------------------------------
// Events and payloads
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connected,
    Disconnected,
    ConnectFailed,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Connected => "connected",
            Kind::Disconnected => "disconnected",
            Kind::ConnectFailed => "connect_failed",
        }
    }
}

/// One AWS lifecycle event as the test sends it.
#[derive(Debug, Clone)]
struct Ev {
    client: String,
    ts: DateTime<Utc>,
    kind: Kind,
    session: Option<String>,
    version: Option<i64>,
    /// Address of a connect (or of a failed attempt).
    ip: Option<String>,
    /// Disconnect reason, or connect failure reason.
    reason: Option<String>,
}

impl Ev {
    fn payload(&self) -> Vec<u8> {
        let mut v = json!({
            "clientId": self.client,
            "timestamp": self.ts.timestamp_millis(),
            "eventType": self.kind.as_str(),
        });
        if let Some(s) = &self.session {
            v["sessionIdentifier"] = json!(s);
        }
        if let Some(n) = self.version {
            v["versionNumber"] = json!(n);
        }
        match self.kind {
            Kind::Connected => {
                v["ipAddress"] = json!(self.ip);
                v["principalIdentifier"] = json!(principal_of(self.ip.as_deref()));
            }
            Kind::Disconnected => {
                v["disconnectReason"] = json!(self.reason);
                v["clientInitiatedDisconnect"] =
                    json!(self.reason.as_deref() == Some("CLIENT_INITIATED_DISCONNECT"));
                v["principalIdentifier"] = json!("principal-of-the-disconnect");
            }
            Kind::ConnectFailed => {
                v["connectFailureReason"] = json!(self.reason);
                v["ipAddress"] = json!(self.ip);
            }
        }
        v.to_string().into_bytes()
    }

    /// The natural key of §2a as stored: (client ID, session key, event type, version key).
    fn key(&self) -> (String, String, String, i64) {
        (
            self.client.clone(),
            self.session
                .clone()
                .unwrap_or_else(|| format!("ts:{}", self.ts.timestamp_millis())),
            self.kind.as_str().to_string(),
            self.version.unwrap_or(-1),
        )
    }

    fn ordering(&self) -> Ordering {
        Ordering {
            timestamp: self.ts,
            version: self.version.expect("connect/disconnect has a version"),
            connected: self.kind == Kind::Connected,
            session: self
                .session
                .clone()
                .expect("connect/disconnect has a session"),
        }
    }

    /// Compact form for failure messages.
    fn short(&self, base: DateTime<Utc>) -> String {
        format!(
            "{}:{}@{}s v{:?} {:?}",
            self.client,
            self.kind.as_str(),
            (self.ts - base).num_milliseconds() as f64 / 1000.0,
            self.version,
            self.session
        )
    }
}

fn principal_of(ip: Option<&str>) -> String {
    format!("principal-{}", ip.unwrap_or("none"))
}

fn conn(client: &str, ts: DateTime<Utc>, session: &str, version: i64, ip: &str) -> Ev {
    Ev {
        client: client.into(),
        ts,
        kind: Kind::Connected,
        session: Some(session.into()),
        version: Some(version),
        ip: Some(ip.into()),
        reason: None,
    }
}

fn disc(client: &str, ts: DateTime<Utc>, session: &str, version: i64, reason: &str) -> Ev {
    Ev {
        client: client.into(),
        ts,
        kind: Kind::Disconnected,
        session: Some(session.into()),
        version: Some(version),
        ip: None,
        reason: Some(reason.into()),
    }
}

fn failed(client: &str, ts: DateTime<Utc>, reason: &str) -> Ev {
    Ev {
        client: client.into(),
        ts,
        kind: Kind::ConnectFailed,
        session: None,
        version: None,
        ip: Some("203.0.113.9".into()),
        reason: Some(reason.into()),
    }
}

/// Now, to the millisecond (AWS timestamps are milliseconds; Postgres keeps microseconds).
fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

fn min(m: i64) -> TimeDelta {
    TimeDelta::minutes(m)
}

// ---------------------------------------------------------------------------------------------
// Database helpers
// ---------------------------------------------------------------------------------------------

/// The connectivity columns of a device row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct DeviceState {
    connected: Option<bool>,
    conn_event_ts: Option<DateTime<Utc>>,
    conn_version: Option<i64>,
    conn_session: Option<String>,
    last_connected_at: Option<DateTime<Utc>>,
    last_disconnected_at: Option<DateTime<Utc>>,
    last_disconnect_reason: Option<String>,
    last_ip: Option<String>,
    last_principal: Option<String>,
}

async fn device(pool: &PgPool, id: &str) -> Option<DeviceState> {
    sqlx::query_as::<_, DeviceState>(
        "select connected, conn_event_ts, conn_version, conn_session, last_connected_at,
                last_disconnected_at, last_disconnect_reason, last_ip, last_principal
         from devices where id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn device_ids(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select id from devices order by id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// A stored event: natural key, event time and the device it was attributed to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, sqlx::FromRow)]
struct StoredEvent {
    client_id: String,
    session_key: String,
    event_type: String,
    version_number: i64,
    event_ts: DateTime<Utc>,
    device_id: Option<String>,
    received_at: DateTime<Utc>,
}

async fn stored_events(pool: &PgPool, clients: &[String]) -> Vec<StoredEvent> {
    sqlx::query_as::<_, StoredEvent>(
        "select client_id, session_key, event_type, version_number, event_ts, device_id,
                received_at
         from presence_events where client_id = any($1)
         order by client_id, session_key, event_type, version_number",
    )
    .bind(clients)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn count_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from presence_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn ingest(pool: &PgPool, cfg: &Config, cap: i64) -> IngestContext {
    let clock: SharedClock = Arc::new(SystemClock);
    IngestContext::new(
        cfg,
        pool.clone(),
        Metrics::new(),
        clock,
        Arc::new(DeviceRegistry::new(vec![], cap)),
    )
}

async fn send(ctx: &IngestContext, ev: &Ev) -> Outcome {
    send_at(ctx, ev, Utc::now()).await
}

async fn send_at(ctx: &IngestContext, ev: &Ev, received_at: DateTime<Utc>) -> Outcome {
    // Through ingest's entry point, on the topic AWS publishes the event on.
    let topic = format!("$aws/events/presence/{}/{}", ev.kind.as_str(), ev.client);
    match accept(ctx, &topic, &ev.payload(), received_at).await {
        Accepted::Presence(out) => out,
        other => panic!("{topic}: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The truth of a history
// ---------------------------------------------------------------------------------------------

/// What the device row must say after `history` (of one client, mapped to itself): the
/// chronologically last connect/disconnect decides connectivity; the summaries come from the
/// newest connect and the newest disconnect. Computed without `Ordering::is_newer`.
fn truth(history: &[Ev]) -> DeviceState {
    let last = history
        .iter()
        .filter(|e| e.kind != Kind::ConnectFailed)
        .max_by_key(|e| e.ts)
        .expect("a history has a connect");
    let last_conn = history
        .iter()
        .filter(|e| e.kind == Kind::Connected)
        .max_by_key(|e| e.ts);
    let last_disc = history
        .iter()
        .filter(|e| e.kind == Kind::Disconnected)
        .max_by_key(|e| e.ts);
    DeviceState {
        connected: Some(last.kind == Kind::Connected),
        conn_event_ts: Some(last.ts),
        conn_version: last.version,
        conn_session: last.session.clone(),
        last_connected_at: last_conn.map(|e| e.ts),
        last_disconnected_at: last_disc.map(|e| e.ts),
        last_disconnect_reason: last_disc.and_then(|e| e.reason.clone()),
        last_ip: last_conn.and_then(|e| e.ip.clone()),
        last_principal: last_conn.map(|e| principal_of(e.ip.as_deref())),
    }
}

// ---------------------------------------------------------------------------------------------
// Realistic histories (the shape of `realistic_history` in src/domain/presence.rs, with real
// durations, addresses, reasons and failed attempts)
// ---------------------------------------------------------------------------------------------

const REASONS: [&str; 6] = [
    "CONNECTION_LOST",
    "MQTT_KEEP_ALIVE_TIMEOUT",
    "CLIENT_INITIATED_DISCONNECT",
    "SERVER_INITIATED_DISCONNECT",
    "CLIENT_ERROR",
    "THROTTLED",
];

#[derive(Debug, Clone)]
struct SessionSpec {
    /// Offline for more than an hour before this session: AWS resets versionNumber to 0.
    long_offline: bool,
    short_gap_ms: i64,
    long_gap_ms: i64,
    bump: i64,
    len_ms: i64,
    ends: bool,
    reason: usize,
    ip: u8,
    /// Failed connection attempts while offline before this session.
    failures: usize,
}

fn session_spec() -> impl Strategy<Value = SessionSpec> {
    (
        any::<bool>(),
        // up to 55 min offline: the version keeps counting
        1_000i64..3_300_000,
        // 65 min to 4 h offline: the version resets
        3_900_000i64..14_400_000,
        0i64..3,
        // sessions from a second to two hours (longer than the 30-minute window)
        1_000i64..7_200_000,
        prop::bool::weighted(0.85),
        0..REASONS.len(),
        any::<u8>(),
        0usize..3,
    )
        .prop_map(
            |(
                long_offline,
                short_gap_ms,
                long_gap_ms,
                bump,
                len_ms,
                ends,
                reason,
                ip,
                failures,
            )| {
                SessionSpec {
                    long_offline,
                    short_gap_ms,
                    long_gap_ms,
                    bump,
                    len_ms,
                    ends,
                    reason,
                    ip,
                    failures,
                }
            },
        )
}

/// Events of one client, chronological; connects and disconnects strictly increasing in time.
fn build_history(client: &str, start: DateTime<Utc>, specs: &[SessionSpec]) -> Vec<Ev> {
    let mut out = Vec::new();
    let mut t = 0i64; // ms since start
    let mut version = 0i64;
    for (i, s) in specs.iter().enumerate() {
        let reset = i > 0 && s.long_offline;
        if i > 0 {
            let gap = if reset { s.long_gap_ms } else { s.short_gap_ms };
            for f in 0..s.failures {
                let at = t + gap * (f as i64 + 1) / (s.failures as i64 + 1);
                out.push(failed(
                    client,
                    start + TimeDelta::milliseconds(at),
                    "AUTH_ERROR",
                ));
            }
            t += gap;
        }
        version = if i == 0 {
            s.bump
        } else if reset {
            0
        } else {
            version + 1 + s.bump
        };
        let session = format!("{client}/sess-{i:02}");
        let ip = format!("198.51.{}.{}", i, s.ip);
        out.push(conn(
            client,
            start + TimeDelta::milliseconds(t),
            &session,
            version,
            &ip,
        ));
        t += s.len_ms;
        if s.ends {
            out.push(disc(
                client,
                start + TimeDelta::milliseconds(t),
                &session,
                version,
                REASONS[s.reason],
            ));
        }
    }
    out
}

fn event_count(specs: &[SessionSpec]) -> usize {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| 1 + usize::from(s.ends) + if i > 0 { s.failures } else { 0 })
        .sum()
}

/// Several clients' histories, a permutation of all their events, and duplicates inserted at
/// random positions (a duplicate may arrive before its original).
#[derive(Debug, Clone)]
struct Case {
    histories: Vec<Vec<SessionSpec>>,
    order: Vec<usize>,
    dups: Vec<(usize, usize)>,
}

fn case_strategy(clients: std::ops::Range<usize>) -> impl Strategy<Value = Case> {
    prop::collection::vec(prop::collection::vec(session_spec(), 1..8), clients).prop_flat_map(
        |histories| {
            let n: usize = histories.iter().map(|h| event_count(h)).sum();
            (
                Just(histories),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                prop::collection::vec((0..n, 0..=n), 0..=n / 2),
            )
                .prop_map(|(histories, order, dups)| Case {
                    histories,
                    order,
                    dups,
                })
        },
    )
}

/// Draw `n` values of `strategy` deterministically.
fn draw<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// A case made concrete: the histories per client and the arrival sequence.
struct Concrete {
    histories: Vec<Vec<Ev>>,
    arrivals: Vec<Ev>,
}

fn concretize(case: &Case, prefix: &str, start: DateTime<Utc>) -> Concrete {
    let histories: Vec<Vec<Ev>> = case
        .histories
        .iter()
        .enumerate()
        .map(|(k, specs)| build_history(&format!("{prefix}-dev{k}"), start, specs))
        .collect();
    let all: Vec<&Ev> = histories.iter().flatten().collect();
    let mut arrivals: Vec<Ev> = case.order.iter().map(|&i| all[i].clone()).collect();
    for &(i, pos) in &case.dups {
        let pos = pos.min(arrivals.len());
        arrivals.insert(pos, all[i].clone());
    }
    Concrete {
        histories,
        arrivals,
    }
}

/// Store `evs` as one batch, the way the dispatcher's presence writers do (prepared one by one
/// in arrival order, stored in one transaction).
async fn send_batch(ctx: &IngestContext, evs: &[Ev]) -> Vec<Outcome> {
    let received_at = Utc::now();
    let batch: Vec<Prepared> = evs
        .iter()
        .map(|ev| {
            prepare(ctx, &ev.payload(), received_at)
                .unwrap_or_else(|r| panic!("{ev:?} was dropped: {r:?}"))
        })
        .collect();
    store(ctx, &batch, &ctx.stop).await
}

/// Send `arrivals` in order: one by one when `sizes` is empty, else in batches of these sizes
/// (cycled).
async fn send_all(ctx: &IngestContext, arrivals: &[Ev], sizes: &[usize]) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(arrivals.len());
    if sizes.is_empty() {
        for ev in arrivals {
            out.push(send(ctx, ev).await);
        }
        return out;
    }
    let mut rest = arrivals;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at(size.clamp(1, rest.len()));
        out.extend(send_batch(ctx, batch).await);
        rest = tail;
    }
    out
}

/// Apply the arrivals in order and check everything §2a promises about the result.
async fn apply_and_check(ctx: IngestContext, c: Concrete, label: String, base: DateTime<Utc>) {
    apply_in_batches_and_check(ctx, c, label, base, Vec::new()).await
}

/// [`apply_and_check`], the arrivals stored in batches of `sizes` (cycled; empty: one by one).
async fn apply_in_batches_and_check(
    ctx: IngestContext,
    c: Concrete,
    label: String,
    base: DateTime<Utc>,
    sizes: Vec<usize>,
) {
    let mut new = 0usize;
    let outcomes = send_all(&ctx, &c.arrivals, &sizes).await;
    for (ev, outcome) in c.arrivals.iter().zip(outcomes) {
        match outcome {
            Outcome::Stored(Stored::New) => new += 1,
            Outcome::Stored(Stored::Duplicate) => {}
            other => panic!("{label}: {} gave {other:?}", ev.short(base)),
        }
    }
    let arrivals: Vec<String> = c.arrivals.iter().map(|e| e.short(base)).collect();
    let mut distinct = 0;
    for history in &c.histories {
        let client = &history[0].client;
        let want = truth(history);
        let got = device(&ctx.pool, client).await;
        assert_eq!(
            got.as_ref(),
            Some(&want),
            "{label}: device {client} after arrivals {arrivals:#?}"
        );

        // Each distinct event is stored exactly once, attributed to the device unless it was a
        // connect_failed that arrived before the client was known.
        let got = stored_events(&ctx.pool, std::slice::from_ref(client)).await;
        let mut want: BTreeMap<_, (DateTime<Utc>, Option<String>)> = BTreeMap::new();
        for ev in history {
            let first = c.arrivals.iter().position(|a| a.key() == ev.key()).unwrap();
            let known_before = c.arrivals[..first]
                .iter()
                .any(|a| &a.client == client && a.kind != Kind::ConnectFailed);
            let attributed = ev.kind != Kind::ConnectFailed || known_before;
            want.insert(ev.key(), (ev.ts, attributed.then(|| client.clone())));
        }
        distinct += want.len();
        let got: BTreeMap<_, _> = got
            .into_iter()
            .map(|e| {
                (
                    (e.client_id, e.session_key, e.event_type, e.version_number),
                    (e.event_ts, e.device_id),
                )
            })
            .collect();
        assert_eq!(got, want, "{label}: stored events of {client}");
    }
    assert_eq!(
        new, distinct,
        "{label}: Stored::New once per distinct event"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Any arrival order converges to the truth
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn realistic_histories_in_any_order_converge_to_the_truth(pool: PgPool) {
    let cases = draw(case_strategy(2..5), 40);
    let start = now_ms() - TimeDelta::days(3);
    let ctx = ingest(&pool, &Config::default(), 1_000_000);

    let mut tasks = JoinSet::new();
    let mut total_events = 0;
    for (n, case) in cases.iter().enumerate() {
        // Random order with duplicates.
        let c = concretize(case, &format!("case{n:02}"), start);
        total_events += c.arrivals.len();
        tasks.spawn(apply_and_check(
            ctx.clone(),
            c,
            format!("case {n} (random order)"),
            start,
        ));
        // Newest first: the worst order for a rule that just takes the last arrival.
        let mut c = concretize(case, &format!("rev{n:02}"), start);
        c.arrivals = c.histories.iter().flatten().cloned().collect();
        c.arrivals.sort_by_key(|e| std::cmp::Reverse(e.ts));
        total_events += c.arrivals.len();
        tasks.spawn(apply_and_check(
            ctx.clone(),
            c,
            format!("case {n} (newest first)"),
            start,
        ));
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // The generator produced what the test is about, not something trivial.
    let resets: usize = cases
        .iter()
        .flat_map(|c| &c.histories)
        .map(|h| h.iter().skip(1).filter(|s| s.long_offline).count())
        .sum();
    let open: usize = cases
        .iter()
        .flat_map(|c| &c.histories)
        .filter(|h| !h.last().unwrap().ends)
        .count();
    assert!(resets > 20, "version resets covered: {resets}");
    assert!(open > 5, "devices left connected covered: {open}");
    assert!(total_events > 1000, "events applied: {total_events}");
}

/// Issue 12: the dispatcher stores presence in batches (one transaction each). Whatever the
/// batch boundaries, the result is the one of §2a: the same histories, random orders with
/// duplicates (some inside one batch), cut into batches of 1 to 40 events.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn realistic_histories_in_batches_converge_to_the_truth(pool: PgPool) {
    let cases = draw(
        (case_strategy(2..5), prop::collection::vec(1usize..40, 1..6)),
        40,
    );
    let start = now_ms() - TimeDelta::days(3);
    let ctx = ingest(&pool, &Config::default(), 1_000_000);
    let mut tasks = JoinSet::new();
    let mut batched = 0;
    for (n, (case, sizes)) in cases.iter().enumerate() {
        let c = concretize(case, &format!("batch{n:02}"), start);
        batched += c.arrivals.len();
        tasks.spawn(apply_in_batches_and_check(
            ctx.clone(),
            c,
            format!("case {n} (batches of {sizes:?})"),
            start,
            sizes.clone(),
        ));
        // every event of every client in one batch, newest first
        let mut c = concretize(case, &format!("whole{n:02}"), start);
        c.arrivals = c.histories.iter().flatten().cloned().collect();
        c.arrivals.sort_by_key(|e| std::cmp::Reverse(e.ts));
        let all = c.arrivals.len();
        tasks.spawn(apply_in_batches_and_check(
            ctx.clone(),
            c,
            format!("case {n} (one batch, newest first)"),
            start,
            vec![all],
        ));
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert!(batched > 1000, "events applied in batches: {batched}");
}

/// §2a's rule is not transitive (`domain::presence` `non_transitive_case`): a batch must give
/// what one-by-one arrival gives, which folding a device's batch in memory and applying only
/// the winner would not. Stored: `a`. Then `b` and `c` arrive together. One by one, `b` loses
/// to `a` (lower version within 30 minutes) and `c` beats `a` (more than 30 minutes later):
/// `c`. Folding first, `c` loses to `b` (lower version within 30 minutes) and then `b` loses to
/// `a`: the device would stay on `a`. The batch gives `c`.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_batch_gives_what_one_by_one_gives_where_the_rule_is_not_transitive(pool: PgPool) {
    let t = now_ms() - TimeDelta::hours(2);
    let ctx = ingest(&pool, &Config::default(), 1_000);
    let events = |client: &str| {
        [
            conn(client, t, "a", 3, "192.0.2.1"),
            conn(client, t + min(20), "b", 2, "192.0.2.2"),
            conn(client, t + min(40), "c", 1, "192.0.2.3"),
        ]
    };
    let [a, b, c] = events("one-by-one");
    for ev in [&a, &b, &c] {
        assert_eq!(send(&ctx, ev).await, Outcome::Stored(Stored::New));
    }
    let [a, b, c] = events("batched");
    assert_eq!(send(&ctx, &a).await, Outcome::Stored(Stored::New));
    assert_eq!(
        send_batch(&ctx, &[b, c]).await,
        vec![Outcome::Stored(Stored::New); 2]
    );
    let one_by_one = device(&pool, "one-by-one").await.unwrap();
    let batched = device(&pool, "batched").await.unwrap();
    assert_eq!(one_by_one.conn_session.as_deref(), Some("c"));
    assert_eq!(batched, one_by_one);
    // what an in-memory fold of the batch would have kept
    let [a, b, c] = events("x").map(|e| e.ordering());
    let winner = presence::fold([&b, &c]).unwrap();
    assert_eq!(winner, b);
    assert!(
        !winner.is_newer(&a),
        "the fold's winner would not replace `a`"
    );
}

/// A batch Postgres refuses as a whole is stored event by event: only the event it cannot
/// store is skipped (`store_failed`); the others, before and after it, are stored and
/// acknowledged.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_value_postgres_refuses_costs_only_its_own_event(pool: PgPool) {
    let t = now_ms() - TimeDelta::minutes(10);
    let ctx = ingest(&pool, &Config::default(), 1_000);
    let evs = [
        conn("left", t, "s1", 1, "192.0.2.1"),
        disc("bad", t, "s2", 1, "CONNECTION_LOST"),
        conn("right", t, "s3", 1, "192.0.2.3"),
    ];
    let mut batch: Vec<Prepared> = evs
        .iter()
        .map(|ev| prepare(&ctx, &ev.payload(), Utc::now()).unwrap())
        .collect();
    // Parsing refuses NUL; a value that got past it (a future parser bug) must cost one event.
    batch[1].event.disconnect_reason = Some("nul\0here".into());
    let outcomes = store(&ctx, &batch, &ctx.stop).await;
    assert_eq!(
        outcomes,
        vec![
            Outcome::Stored(Stored::New),
            Outcome::Dropped(DropReason::StoreFailed),
            Outcome::Stored(Stored::New),
        ]
    );
    assert_eq!(device_ids(&pool).await, vec!["left", "right"]);
    assert_eq!(count_events(&pool).await, 2);
}

/// During a failover a connection may land on a read-only server (a standby, a demoted
/// primary): Postgres answers `25006`. That must be retried like a lost connection, never be
/// taken as a refusal of the event (which would skip it for good).
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_read_only_server_is_transient_not_a_refusal(pool: PgPool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("set transaction read only")
        .execute(&mut *tx)
        .await
        .unwrap();
    let ev = conn("ro", now_ms(), "s1", 1, "192.0.2.1");
    let ctx = ingest(&pool, &Config::default(), 1_000);
    let p = prepare(&ctx, &ev.payload(), Utc::now()).unwrap();
    let e = sqlx::query("insert into presence_events (client_id, event_type, session_key, version_number, event_ts, received_at) values ($1, 'connected', 's1', 1, now(), now())")
        .bind(&p.event.client_id)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("25006")
    );
    assert!(fleetwatch::db::is_transient(&e));
}

// ---------------------------------------------------------------------------------------------
// 2. Concurrent writers converge
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn concurrent_writers_converge(pool: PgPool) {
    const WRITERS: usize = 6;
    const ROUNDS: usize = 4;
    let start = now_ms() - TimeDelta::days(3);
    // One case per round (its histories) plus one shuffle per writer.
    let rounds = draw(case_strategy(4..7), ROUNDS);
    for (round, case) in rounds.iter().enumerate() {
        let n: usize = case.histories.iter().map(|h| event_count(h)).sum();
        let orders = draw(
            (
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                prop::collection::vec((0..n, 0..=n), 0..=n / 3),
            ),
            WRITERS + round * WRITERS,
        );
        let base = concretize(case, &format!("round{round}"), start);
        let all: Vec<Ev> = base.histories.iter().flatten().cloned().collect();

        // Each writer is a replica: its own registry and context, one shared database.
        let mut tasks = JoinSet::new();
        for (w, (order, dups)) in orders.iter().skip(round * WRITERS).enumerate() {
            let mut arrivals: Vec<Ev> = order.iter().map(|&i| all[i].clone()).collect();
            for &(i, pos) in dups {
                let pos = pos.min(arrivals.len());
                arrivals.insert(pos, all[i].clone());
            }
            if w == 0 {
                arrivals.sort_by_key(|e| std::cmp::Reverse(e.ts));
            }
            let ctx = ingest(&pool, &Config::default(), 1_000_000);
            // Odd writers store in batches (issue 12), even ones one by one: both kinds of
            // replica side by side on one database.
            let sizes: Vec<usize> = if w % 2 == 1 {
                vec![w + 2, 3, 17]
            } else {
                vec![]
            };
            tasks.spawn(async move {
                let mut new = 0usize;
                let outcomes = send_all(&ctx, &arrivals, &sizes).await;
                for (ev, outcome) in arrivals.iter().zip(outcomes) {
                    match outcome {
                        Outcome::Stored(Stored::New) => new += 1,
                        Outcome::Stored(Stored::Duplicate) => {}
                        other => panic!("writer {w}: {ev:?} gave {other:?}"),
                    }
                }
                new
            });
        }
        let mut new = 0;
        while let Some(r) = tasks.join_next().await {
            new += r.unwrap();
        }

        let distinct: BTreeSet<_> = all.iter().map(Ev::key).collect();
        assert_eq!(
            new,
            distinct.len(),
            "round {round}: exactly one writer stores each event"
        );
        let clients: Vec<String> = base.histories.iter().map(|h| h[0].client.clone()).collect();
        let stored = stored_events(&pool, &clients).await;
        let stored_keys: BTreeSet<_> = stored
            .iter()
            .map(|e| {
                (
                    e.client_id.clone(),
                    e.session_key.clone(),
                    e.event_type.clone(),
                    e.version_number,
                )
            })
            .collect();
        assert_eq!(stored.len(), distinct.len(), "round {round}: rows");
        assert_eq!(stored_keys, distinct, "round {round}: keys");
        for history in &base.histories {
            let client = &history[0].client;
            assert_eq!(
                device(&pool, client).await,
                Some(truth(history)),
                "round {round}: device {client}, history {:#?}",
                history.iter().map(|e| e.short(start)).collect::<Vec<_>>()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The SQL ordering function is the Rust one
// ---------------------------------------------------------------------------------------------

fn fixed_base() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
        .unwrap()
        .to_utc()
}

fn ordering_pair() -> impl Strategy<Value = (Ordering, Ordering)> {
    const W: i64 = 30 * 60 * 1000;
    let delta = prop_oneof![
        2 => Just(0i64),
        1 => Just(1i64),
        1 => Just(-1i64),
        3 => Just(W),
        3 => Just(-W),
        2 => Just(W + 1),
        2 => Just(-W - 1),
        2 => Just(W - 1),
        2 => Just(-W + 1),
        4 => -3 * W..3 * W,
    ];
    let version = prop_oneof![4 => 0i64..4, 1 => 0i64..1_000_000];
    let session = prop::sample::select(vec!["s1", "s2", "s10", "a", "b", "9c3e-01", "9c3e-1"]);
    (
        0i64..86_400_000,
        delta,
        version.clone(),
        version,
        any::<bool>(),
        any::<bool>(),
        session.clone(),
        session,
        0u8..10,
    )
        .prop_map(|(off, d, va, vb, ca, cb, sa, sb, shape)| {
            let a = Ordering {
                timestamp: fixed_base() + TimeDelta::milliseconds(off),
                version: va,
                connected: ca,
                session: sa.into(),
            };
            let b = match shape {
                // equal everything (a redelivered event)
                0 => a.clone(),
                // the connect and disconnect of one session
                1 => Ordering {
                    timestamp: a.timestamp + TimeDelta::milliseconds(d),
                    connected: !a.connected,
                    ..a.clone()
                },
                // equal versions, other session
                2 => Ordering {
                    timestamp: a.timestamp + TimeDelta::milliseconds(d),
                    version: va,
                    connected: cb,
                    session: sb.into(),
                },
                _ => Ordering {
                    timestamp: a.timestamp + TimeDelta::milliseconds(d),
                    version: vb,
                    connected: cb,
                    session: sb.into(),
                },
            };
            (a, b)
        })
}

async fn sql_is_newer(pool: &PgPool, n: &Ordering, c: &Ordering) -> bool {
    sqlx::query_scalar("select presence_is_newer($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(n.timestamp)
        .bind(n.version)
        .bind(n.connected)
        .bind(&n.session)
        .bind(c.timestamp)
        .bind(c.version)
        .bind(c.connected)
        .bind(&c.session)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn sql_presence_is_newer_agrees_with_the_rust_rule(pool: PgPool) {
    let pairs = draw(ordering_pair(), 1500);
    let mut mismatches = Vec::new();
    let (mut yes, mut no, mut at_window, mut identical) = (0, 0, 0, 0);
    for (a, b) in &pairs {
        if (a.timestamp - b.timestamp).abs() == presence::VERSION_WINDOW {
            at_window += 1;
        }
        if a == b {
            identical += 1;
        }
        for (n, c) in [(a, b), (b, a)] {
            let rust = n.is_newer(c);
            let sql = sql_is_newer(&pool, n, c).await;
            if rust {
                yes += 1;
            } else {
                no += 1;
            }
            if rust != sql {
                mismatches.push(format!("is_newer({n:?}, {c:?}): rust {rust}, sql {sql}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    assert!(yes > 500 && no > 500, "both outcomes covered: {yes}/{no}");
    assert!(at_window > 50, "exactly 30 minutes apart: {at_window}");
    assert!(identical > 50, "identical events: {identical}");

    // Hand-picked cases of §2a, so a wrong pair of implementations cannot agree by accident.
    let o = |m: i64, ms: i64, version: i64, connected: bool, session: &str| Ordering {
        timestamp: fixed_base() + min(m) + TimeDelta::milliseconds(ms),
        version,
        connected,
        session: session.into(),
    };
    let cases = [
        // more than 30 min apart: the later wins, even with a reset version
        (o(30, 1, 0, true, "new"), o(0, 0, 7, false, "old"), true),
        (o(0, 0, 7, false, "old"), o(30, 1, 0, true, "new"), false),
        // exactly 30 min apart: the version decides
        (o(30, 0, 0, true, "new"), o(0, 0, 7, false, "old"), false),
        (o(0, 0, 7, false, "old"), o(30, 0, 0, true, "new"), true),
        // equal versions: the disconnect beats its connect, even if stamped earlier
        (o(0, 0, 4, false, "s"), o(1, 0, 4, true, "s"), true),
        (o(1, 0, 4, true, "s"), o(0, 0, 4, false, "s"), false),
        // complete tie but time: later; complete tie: larger session; identical: never newer
        (o(1, 0, 4, true, "a"), o(0, 0, 4, true, "b"), true),
        (o(0, 0, 4, true, "b"), o(0, 0, 4, true, "a"), true),
        (o(0, 0, 4, true, "a"), o(0, 0, 4, true, "b"), false),
        (o(0, 0, 4, true, "a"), o(0, 0, 4, true, "a"), false),
    ];
    for (n, c, want) in &cases {
        assert_eq!(n.is_newer(c), *want, "rust is_newer({n:?}, {c:?})");
        assert_eq!(
            sql_is_newer(&pool, n, c).await,
            *want,
            "sql is_newer({n:?}, {c:?})"
        );
    }
    // A device without connectivity yet takes any event.
    let first: bool =
        sqlx::query_scalar("select presence_is_newer(now(), 0, true, 's', null, null, null, null)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(first);
}

/// The complete-tie rule "larger session" is a byte (code point) comparison in Rust. In SQL,
/// `n_session > c_session` compares with the collation in effect, which is the database's
/// default for the `conn_session` column, e.g. `en_US.UTF-8`, the usual default of managed
/// Postgres. The arguments below carry an ICU `en-US` collation, which is exactly what such a
/// database does to every comparison; the function must give the same answer as in a `C`
/// database.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn sql_presence_is_newer_tie_break_does_not_depend_on_the_collation(pool: PgPool) {
    let collation: Option<String> = sqlx::query_scalar(
        "select collname::text from pg_collation
         where collprovider = 'i' and collname in ('en-US-x-icu', 'und-x-icu')
         order by collname limit 1",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    let Some(collation) = collation else {
        eprintln!("this Postgres has no ICU collations; nothing to compare");
        return;
    };
    let t = fixed_base();
    for (n_session, c_session) in [("B", "a"), ("a", "B"), ("S2", "s1"), ("s1", "S2")] {
        let n = Ordering {
            timestamp: t,
            version: 3,
            connected: true,
            session: n_session.into(),
        };
        let c = Ordering {
            session: c_session.into(),
            ..n.clone()
        };
        let sql: bool = sqlx::query_scalar(&format!(
            "select presence_is_newer($1, $2, $3, $4::text collate \"{collation}\",
                                      $5, $6, $7, $8::text collate \"{collation}\")"
        ))
        .bind(n.timestamp)
        .bind(n.version)
        .bind(n.connected)
        .bind(&n.session)
        .bind(c.timestamp)
        .bind(c.version)
        .bind(c.connected)
        .bind(&c.session)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            sql,
            n.is_newer(&c),
            "presence_is_newer(.., {n_session:?}, .., {c_session:?}) under collation \
             {collation} disagrees with Ordering::is_newer: the session tie-break needs \
             `collate \"C\"`"
        );
    }
}

/// A presence event dated far ahead (forged, or a broken clock: AWS stamps these itself) used to
/// win over every genuine event for up to a day ("more than 30 minutes apart: the later wins").
/// Its timestamp now counts as at most its arrival plus `presence.max_clock_skew`.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_presence_event_from_the_future_cannot_pin_connectivity(pool: PgPool) {
    let ctx = ingest(&pool, &Config::default(), 100);
    let sec = TimeDelta::seconds;
    let t = now_ms() - min(60);
    let c1 = conn("scr", t, "s1", 1, "198.51.100.1");
    assert_eq!(
        send_at(&ctx, &c1, t + sec(1)).await,
        Outcome::Stored(Stored::New)
    );
    // A disconnect of an old session, dated 23 hours ahead, arrives 5 minutes later.
    let forged = disc("scr", t + TimeDelta::hours(23), "old", 0, "FORGED");
    assert_eq!(
        send_at(&ctx, &forged, t + min(5)).await,
        Outcome::Stored(Stored::New)
    );
    // Bounded to t + 10 min, within 30 minutes of the connect: the higher version still wins.
    assert_eq!(device(&pool, "scr").await.unwrap().connected, Some(true));
    // The genuine history goes on: an LTE drop at t + 40 min and a new session a minute later.
    let d1 = disc("scr", t + min(40), "s1", 1, "MQTT_KEEP_ALIVE_TIMEOUT");
    let c2 = conn("scr", t + min(41), "s2", 2, "198.51.100.2");
    for ev in [&d1, &c2] {
        assert_eq!(
            send_at(&ctx, ev, ev.ts + sec(1)).await,
            Outcome::Stored(Stored::New)
        );
    }
    let d = device(&pool, "scr").await.unwrap();
    assert_eq!(
        d,
        DeviceState {
            connected: Some(true),
            conn_event_ts: Some(c2.ts),
            conn_version: Some(2),
            conn_session: Some("s2".into()),
            last_connected_at: Some(c2.ts),
            last_disconnected_at: Some(d1.ts),
            last_disconnect_reason: Some("MQTT_KEEP_ALIVE_TIMEOUT".into()),
            last_ip: Some("198.51.100.2".into()),
            last_principal: Some(principal_of(Some("198.51.100.2"))),
        },
        "the forged event pins nothing"
    );
    // The event itself is kept as AWS sent it (the timeline shows what arrived).
    let rows = stored_events(&pool, &["scr".to_string()]).await;
    let kept = rows.iter().find(|r| r.session_key == "old").unwrap();
    assert_eq!(kept.event_ts, forged.ts);

    // Within the skew nothing is bounded: AWS's clock 2 minutes ahead of ours is normal.
    let d2 = disc("scr", t + min(52), "s2", 2, "CONNECTION_LOST");
    assert_eq!(
        send_at(&ctx, &d2, t + min(50)).await,
        Outcome::Stored(Stored::New)
    );
    let d = device(&pool, "scr").await.unwrap();
    assert_eq!(d.connected, Some(false));
    assert_eq!(d.conn_event_ts, Some(d2.ts));
    assert_eq!(d.last_disconnected_at, Some(d2.ts));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn sql_presence_order_ts_agrees_with_the_rust_rule(pool: PgPool) {
    let base = fixed_base();
    let skews = [0i64, 1, 300_000, 3_600_000];
    let triples = draw(
        (
            -7_200_000i64..7_200_000,
            -7_200_000i64..7_200_000,
            0usize..skews.len(),
        ),
        400,
    );
    let (mut bounded, mut kept) = (0, 0);
    for (ts, rx, k) in triples {
        let (ts, rx) = (
            base + TimeDelta::milliseconds(ts),
            base + TimeDelta::milliseconds(rx),
        );
        let skew = TimeDelta::milliseconds(skews[k]);
        let rust = presence::order_timestamp(ts, rx, skew);
        let sql: DateTime<Utc> = sqlx::query_scalar("select presence_order_ts($1, $2, $3)")
            .bind(ts)
            .bind(rx)
            .bind(sqlx::postgres::types::PgInterval::try_from(skew).unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(sql, rust, "order_ts({ts}, {rx}, {skew})");
        if rust == ts {
            kept += 1;
        } else {
            bounded += 1;
        }
    }
    assert!(bounded > 50 && kept > 50, "both outcomes: {bounded}/{kept}");
    // Strict: a connect has no disconnect time, and that stays missing.
    let none: Option<DateTime<Utc>> =
        sqlx::query_scalar("select presence_order_ts(null, now(), interval '5 minutes')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(none, None);
}

/// A scanner cycling through random client IDs once stored one row per attempt (10,000 IDs,
/// 10,000 rows). Now only `presence.unknown_failed_clients` new unknown clients per window are
/// stored; the rest are counted. A unit that keeps failing is still stored and still alerts.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn connect_failed_of_unknown_clients_is_capped_globally(pool: PgPool) {
    let cfg = Config::default();
    assert_eq!(cfg.presence.unknown_failed_clients, 100);
    assert_eq!(cfg.presence.unknown_failed_window.delta(), min(10));
    let ctx = ingest(&pool, &cfg, 1000);
    let t = now_ms() - min(30);
    // A known device, and a misconfigured unit (not a device) failing every 20 s.
    let c = conn("screen-1", t, "s1", 1, "198.51.100.1");
    assert_eq!(send(&ctx, &c).await, Outcome::Stored(Stored::New));
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut bad_cert_stored = 0;
    for i in 0..10_000i64 {
        let at = t + TimeDelta::milliseconds(i * 60);
        if i % 333 == 0 {
            let ev = failed("bad-cert", at, "AUTH_ERROR");
            assert_eq!(
                send_at(&ctx, &ev, at).await,
                Outcome::Stored(Stored::New),
                "bad-cert at {i}"
            );
            bad_cert_stored += 1;
        }
        let ev = failed(&format!("scan-{i:05}"), at, "AUTH_ERROR");
        *outcomes
            .entry(format!("{:?}", send_at(&ctx, &ev, at).await))
            .or_default() += 1;
    }
    let stored = format!("{:?}", Outcome::Stored(Stored::New));
    let capped = format!("{:?}", Outcome::Dropped(DropReason::UnknownClientCap));
    // 100 new clients per 10-minute window: bad-cert took one slot of the first window.
    assert_eq!(outcomes.get(&stored), Some(&99), "{outcomes:?}");
    assert_eq!(outcomes.get(&capped), Some(&9_901), "{outcomes:?}");
    let rows: i64 =
        sqlx::query_scalar("select count(*) from presence_events where client_id like 'scan-%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, 99);
    // A known device's failures are never capped.
    let f = failed("screen-1", t + min(9), "THROTTLED");
    assert_eq!(
        send_at(&ctx, &f, t + min(9)).await,
        Outcome::Stored(Stored::New)
    );
    // The failing unit reaches the per-client auth_failure threshold (5 in 10 min).
    assert_eq!(bad_cert_stored, 31);
    let settings = fleetwatch::detect::Settings::from_config(&cfg);
    let end = t + min(12);
    fleetwatch::detect::connection::tick(&pool, &settings, end)
        .await
        .unwrap();
    let firing: Vec<(String, String)> =
        sqlx::query_as("select kind, subject from alerts where status = 'firing'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        firing.contains(&("auth_failure".to_string(), "bad-cert".to_string())),
        "{firing:?}"
    );
    assert!(
        firing.iter().all(|(_, s)| !s.starts_with("scan-")),
        "no scanner ID reaches a threshold: {firing:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Identity rules at the storage boundary
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn connect_failed_is_stored_but_never_creates_a_device(pool: PgPool) {
    let ctx = ingest(&pool, &Config::default(), 2);
    let t = now_ms() - TimeDelta::hours(2);

    // A scanner: many failures, all stored, none a device, and the cap is not used up.
    for i in 0..5 {
        let ev = failed(&format!("scanner-{i}"), t + min(i), "AUTH_ERROR");
        assert_eq!(send(&ctx, &ev).await, Outcome::Stored(Stored::New));
    }
    // Two failures of one client at different times are two events; a redelivery is not.
    let f1 = failed("scanner-0", t + min(10), "FORBIDDEN_ACCESS");
    assert_eq!(send(&ctx, &f1).await, Outcome::Stored(Stored::New));
    assert_eq!(send(&ctx, &f1).await, Outcome::Stored(Stored::Duplicate));
    assert!(device_ids(&pool).await.is_empty());
    let scanners: Vec<String> = (0..5).map(|i| format!("scanner-{i}")).collect();
    let rows = stored_events(&pool, &scanners).await;
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r.device_id.is_none()), "{rows:#?}");
    assert!(rows.iter().all(|r| r.event_type == "connect_failed"));

    // Known devices: the cap of 2 is still free for real devices.
    for (i, id) in ["screen-1", "screen-2"].iter().enumerate() {
        let ev = conn(id, t + min(20), &format!("s{i}"), 1, "198.51.100.1");
        assert_eq!(send(&ctx, &ev).await, Outcome::Stored(Stored::New));
    }
    let before = device(&pool, "screen-1").await.unwrap();
    assert_eq!(before.connected, Some(true));
    // A failure of a known, connected device is attributed to it and changes no connectivity,
    // even though it is the newest event.
    let f2 = failed("screen-1", t + min(30), "THROTTLED");
    assert_eq!(send(&ctx, &f2).await, Outcome::Stored(Stored::New));
    assert_eq!(device(&pool, "screen-1").await.unwrap(), before);
    let rows = stored_events(&pool, &["screen-1".to_string()]).await;
    let failure = rows
        .iter()
        .find(|r| r.event_type == "connect_failed")
        .unwrap();
    assert_eq!(failure.device_id.as_deref(), Some("screen-1"));
    assert_eq!(
        failure.session_key,
        format!("ts:{}", f2.ts.timestamp_millis())
    );

    // With the cap reached, a new client's failure is still stored (not dropped).
    let f3 = failed("screen-3", t + min(31), "AUTH_ERROR");
    assert_eq!(send(&ctx, &f3).await, Outcome::Stored(Stored::New));
    let rows = stored_events(&pool, &["screen-3".to_string()]).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].device_id, None);
    assert_eq!(device_ids(&pool).await, vec!["screen-1", "screen-2"]);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn own_clients_are_never_devices(pool: PgPool) {
    let ctx = ingest(&pool, &Config::default(), 100);
    let t = now_ms() - TimeDelta::hours(1);
    let own = [
        conn("fleetwatch-host-0", t, "s1", 1, "10.0.0.1"),
        disc("fleetwatch-host-0", t + min(1), "s1", 1, "CONNECTION_LOST"),
        failed("fleetwatch-canary", t + min(2), "AUTH_ERROR"),
    ];
    for ev in &own {
        assert_eq!(
            send(&ctx, ev).await,
            Outcome::Dropped(DropReason::OwnClient),
            "{ev:?}"
        );
    }
    assert_eq!(count_events(&pool).await, 0);
    assert!(device_ids(&pool).await.is_empty());
    // The prefix is a prefix, not a substring.
    let ev = conn("screen-fleetwatch-1", t, "s2", 1, "10.0.0.2");
    assert_eq!(send(&ctx, &ev).await, Outcome::Stored(Stored::New));
    assert_eq!(device_ids(&pool).await, vec!["screen-fleetwatch-1"]);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_device_cap_drops_new_clients_but_known_devices_still_update(pool: PgPool) {
    let ctx = ingest(&pool, &Config::default(), 2);
    let t = now_ms() - TimeDelta::hours(1);
    assert_eq!(
        send(&ctx, &conn("a", t, "sa", 1, "198.51.100.1")).await,
        Outcome::Stored(Stored::New)
    );
    // A disconnect may be the first sight of a device too.
    assert_eq!(
        send(&ctx, &disc("b", t, "sb", 1, "CONNECTION_LOST")).await,
        Outcome::Stored(Stored::New)
    );
    for ev in [
        conn("c", t, "sc", 1, "198.51.100.3"),
        disc("c", t + min(1), "sc", 1, "CONNECTION_LOST"),
        conn("d", t, "sd", 1, "198.51.100.4"),
    ] {
        assert_eq!(
            send(&ctx, &ev).await,
            Outcome::Dropped(DropReason::DeviceCap),
            "{ev:?}"
        );
    }
    assert_eq!(device_ids(&pool).await, vec!["a", "b"]);
    assert!(stored_events(&pool, &["c".into(), "d".into()])
        .await
        .is_empty());

    // Known devices keep updating beyond the cap.
    let d = disc("a", t + min(5), "sa", 1, "MQTT_KEEP_ALIVE_TIMEOUT");
    assert_eq!(send(&ctx, &d).await, Outcome::Stored(Stored::New));
    let a = device(&pool, "a").await.unwrap();
    assert_eq!(a.connected, Some(false));
    assert_eq!(
        a.last_disconnect_reason.as_deref(),
        Some("MQTT_KEEP_ALIVE_TIMEOUT")
    );
    let c = conn("b", t + min(6), "sb2", 2, "198.51.100.22");
    assert_eq!(send(&ctx, &c).await, Outcome::Stored(Stored::New));
    let b = device(&pool, "b").await.unwrap();
    assert_eq!(b.connected, Some(true));
    assert_eq!(b.last_ip.as_deref(), Some("198.51.100.22"));
    assert_eq!(count_events(&pool).await, 4);

    // A registry warmed from the database counts existing devices against the cap.
    let clock: SharedClock = Arc::new(SystemClock);
    let warm = IngestContext::new(
        &Config::default(),
        pool.clone(),
        Metrics::new(),
        clock,
        Arc::new(DeviceRegistry::load(&pool, 2).await.unwrap()),
    );
    assert_eq!(
        send(&warm, &conn("e", t + min(7), "se", 1, "198.51.100.5")).await,
        Outcome::Dropped(DropReason::DeviceCap)
    );
    assert_eq!(
        send(&warm, &conn("a", t + min(8), "sa2", 2, "198.51.100.11")).await,
        Outcome::Stored(Stored::New)
    );
    assert_eq!(device(&pool, "a").await.unwrap().connected, Some(true));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn client_ids_mapping_names_the_device(pool: PgPool) {
    let mut cfg = Config::default();
    cfg.client_ids
        .insert("bridgeawsiot-7".into(), "screen-7".into());
    let ctx = ingest(&pool, &cfg, 1);
    let t = now_ms() - TimeDelta::hours(1);

    let c = conn("bridgeawsiot-7", t, "s1", 3, "198.51.100.70");
    assert_eq!(send(&ctx, &c).await, Outcome::Stored(Stored::New));
    let f = failed("bridgeawsiot-7", t + min(1), "THROTTLED");
    assert_eq!(send(&ctx, &f).await, Outcome::Stored(Stored::New));
    assert_eq!(device_ids(&pool).await, vec!["screen-7"]);
    let s7 = device(&pool, "screen-7").await.unwrap();
    assert_eq!(s7.connected, Some(true));
    assert_eq!(s7.last_ip.as_deref(), Some("198.51.100.70"));
    assert_eq!(s7.conn_version, Some(3));

    // Events keep the client ID they came with and name the mapped device.
    let rows = stored_events(&pool, &["bridgeawsiot-7".into()]).await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.device_id.as_deref() == Some("screen-7")),
        "{rows:#?}"
    );

    // The mapped device is the one device the cap of 1 allows; it keeps updating.
    let d = disc("bridgeawsiot-7", t + min(2), "s1", 3, "CONNECTION_LOST");
    assert_eq!(send(&ctx, &d).await, Outcome::Stored(Stored::New));
    assert_eq!(
        device(&pool, "screen-7").await.unwrap().connected,
        Some(false)
    );
    assert_eq!(
        send(&ctx, &conn("bridgeawsiot-8", t, "s8", 1, "198.51.100.80")).await,
        Outcome::Dropped(DropReason::DeviceCap)
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn invalid_client_ids_are_dropped(pool: PgPool) {
    let ctx = ingest(&pool, &Config::default(), 100);
    let t = now_ms() - TimeDelta::hours(1);
    let bad = [
        "a\u{1}b".to_string(),
        "line\nbreak".to_string(),
        "tab\there".to_string(),
        "\u{7f}".to_string(),
        "   ".to_string(),
        "x".repeat(129),
        "x".repeat(200),
        "é".repeat(127) + "\u{1}",
    ];
    for id in &bad {
        for ev in [
            conn(id, t, "s1", 1, "198.51.100.1"),
            disc(id, t, "s1", 1, "CONNECTION_LOST"),
            failed(id, t, "AUTH_ERROR"),
        ] {
            assert_eq!(
                send(&ctx, &ev).await,
                Outcome::Dropped(DropReason::BadDeviceId),
                "{:?} {}",
                id,
                ev.kind.as_str()
            );
        }
    }
    assert_eq!(count_events(&pool).await, 0);
    assert!(device_ids(&pool).await.is_empty());
    // The longest valid ids still work (128 characters, also when they are 256 bytes).
    let longest = "y".repeat(128);
    let wide = "é".repeat(128);
    for id in [&longest, &wide] {
        assert_eq!(
            send(&ctx, &conn(id, t, "s1", 1, "198.51.100.1")).await,
            Outcome::Stored(Stored::New)
        );
    }
    assert_eq!(device_ids(&pool).await, vec![longest, wide]);
}

/// §2a/`validate_id`: more than 128 characters is a bad device id, also when the client ID is
/// longer than the parser's former 256-byte limit for text fields.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn an_overlong_client_id_is_a_bad_device_id(pool: PgPool) {
    let ctx = ingest(&pool, &Config::default(), 100);
    let t = now_ms() - TimeDelta::hours(1);
    for id in ["z".repeat(257), "z".repeat(1000), "é".repeat(129)] {
        assert_eq!(
            send(&ctx, &conn(&id, t, "s1", 1, "198.51.100.1")).await,
            Outcome::Dropped(DropReason::BadDeviceId),
            "client ID of {} characters, {} bytes",
            id.chars().count(),
            id.len()
        );
    }
    assert_eq!(count_events(&pool).await, 0);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_duplicate_changes_nothing(pool: PgPool) {
    let ctx = ingest(&pool, &Config::default(), 100);
    let t = now_ms() - TimeDelta::hours(1);
    let first_arrival = now_ms() - TimeDelta::minutes(50);
    let events = [
        conn("dev", t, "s1", 1, "198.51.100.1"),
        disc("dev", t + min(5), "s1", 1, "CONNECTION_LOST"),
        conn("dev", t + min(6), "s2", 2, "198.51.100.2"),
        failed("dev", t + min(7), "THROTTLED"),
    ];
    for ev in &events {
        assert_eq!(
            send_at(&ctx, ev, first_arrival).await,
            Outcome::Stored(Stored::New)
        );
    }
    let state = device(&pool, "dev").await.unwrap();
    let rows = stored_events(&pool, &["dev".into()]).await;
    assert_eq!(state.connected, Some(true));
    assert_eq!(rows.len(), 4);

    // Redeliveries, later and in another order, with another arrival time.
    for ev in events.iter().rev() {
        assert_eq!(
            send(&ctx, ev).await,
            Outcome::Stored(Stored::Duplicate),
            "{ev:?}"
        );
    }
    // A replay whose other fields differ is still the same event (natural key) and changes
    // nothing either.
    let mut replay = events[1].clone();
    replay.reason = Some("SERVER_INITIATED_DISCONNECT".into());
    replay.ts = t + min(20);
    assert_eq!(
        send(&ctx, &replay).await,
        Outcome::Stored(Stored::Duplicate)
    );

    assert_eq!(device(&pool, "dev").await.unwrap(), state);
    assert_eq!(stored_events(&pool, &["dev".into()]).await, rows);
    assert!(rows.iter().all(|r| r.received_at == first_arrival));
}

// ---------------------------------------------------------------------------------------------
// 5. versionNumber reset and session takeover
// ---------------------------------------------------------------------------------------------

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for pos in 0..=p.len() {
            let mut q = p.clone();
            q.insert(pos, n - 1);
            out.push(q);
        }
    }
    out
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn version_reset_after_an_hour_offline_follows_the_later_timestamp(pool: PgPool) {
    let ctx = ingest(&pool, &Config::default(), 1000);
    let t0 = now_ms() - TimeDelta::hours(5);

    // Connected with version 7, dropped, offline 70 minutes, back with version 0.
    let history = |id: &str| {
        vec![
            conn(id, t0, "old", 7, "198.51.100.7"),
            disc(id, t0 + min(20), "old", 7, "CONNECTION_LOST"),
            conn(id, t0 + min(90), "new", 0, "198.51.100.8"),
        ]
    };
    for (p, perm) in permutations(3).into_iter().enumerate() {
        let id = format!("reset-{p}");
        let h = history(&id);
        for &i in &perm {
            assert_eq!(send(&ctx, &h[i]).await, Outcome::Stored(Stored::New));
        }
        let got = device(&pool, &id).await.unwrap();
        assert_eq!(got, truth(&h), "arrival order {perm:?}");
        assert_eq!(got.connected, Some(true));
        assert_eq!(got.conn_version, Some(0));
        assert_eq!(got.conn_session.as_deref(), Some("new"));
        assert_eq!(got.last_ip.as_deref(), Some("198.51.100.8"));
    }

    // Explicitly: the old disconnect (higher version) arrives last, after the reconnect.
    let id = "reset-late-disconnect";
    let h = history(id);
    send(&ctx, &h[2]).await;
    send(&ctx, &h[0]).await;
    assert_eq!(device(&pool, id).await.unwrap().connected, Some(true));
    send(&ctx, &h[1]).await;
    let got = device(&pool, id).await.unwrap();
    assert_eq!(got.connected, Some(true), "{got:?}");
    assert_eq!(got.conn_event_ts, Some(t0 + min(90)));
    assert_eq!(got.last_disconnected_at, Some(t0 + min(20)));

    // The new session ends too: every order of four events leaves the new disconnect.
    for (p, perm) in permutations(4).into_iter().enumerate() {
        let id = format!("reset-ended-{p}");
        let mut h = history(&id);
        h.push(disc(&id, t0 + min(95), "new", 0, "MQTT_KEEP_ALIVE_TIMEOUT"));
        for &i in &perm {
            assert_eq!(send(&ctx, &h[i]).await, Outcome::Stored(Stored::New));
        }
        let got = device(&pool, &id).await.unwrap();
        assert_eq!(got, truth(&h), "arrival order {perm:?}");
        assert_eq!(got.connected, Some(false));
        assert_eq!(got.conn_session.as_deref(), Some("new"));
        assert_eq!(
            got.last_disconnect_reason.as_deref(),
            Some("MQTT_KEEP_ALIVE_TIMEOUT")
        );
    }
}

/// A second connection with the same client ID takes over: AWS disconnects the first session
/// (`DUPLICATE_CLIENTID`, its own lower version) a moment *after* the new connect. Within the
/// 30-minute window the version decides, so the device stays connected on the new session.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_session_takeover_leaves_the_device_connected(pool: PgPool) {
    let ctx = ingest(&pool, &Config::default(), 1000);
    let t = now_ms() - TimeDelta::hours(1);
    for (p, perm) in permutations(3).into_iter().enumerate() {
        let id = format!("takeover-{p}");
        let h = [
            conn(&id, t, "s1", 1, "198.51.100.1"),
            conn(&id, t + TimeDelta::seconds(5), "s2", 2, "198.51.100.2"),
            disc(
                &id,
                t + TimeDelta::milliseconds(5_200),
                "s1",
                1,
                "DUPLICATE_CLIENTID",
            ),
        ];
        for &i in &perm {
            assert_eq!(send(&ctx, &h[i]).await, Outcome::Stored(Stored::New));
        }
        let got = device(&pool, &id).await.unwrap();
        let want = DeviceState {
            connected: Some(true),
            conn_event_ts: Some(h[1].ts),
            conn_version: Some(2),
            conn_session: Some("s2".into()),
            last_connected_at: Some(h[1].ts),
            last_disconnected_at: Some(h[2].ts),
            last_disconnect_reason: Some("DUPLICATE_CLIENTID".into()),
            last_ip: Some("198.51.100.2".into()),
            last_principal: Some(principal_of(Some("198.51.100.2"))),
        };
        assert_eq!(got, want, "arrival order {perm:?}");
        // and the Rust fold agrees for this order
        let ords: Vec<Ordering> = perm.iter().map(|&i| h[i].ordering()).collect();
        assert_eq!(presence::fold(&ords).unwrap(), h[1].ordering());
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Retention
// ---------------------------------------------------------------------------------------------

async fn all_devices(pool: &PgPool) -> Vec<(String, DeviceState)> {
    let mut out = Vec::new();
    for id in device_ids(pool).await {
        let d = device(pool, &id).await.unwrap();
        out.push((id, d));
    }
    out
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn retention_deletes_only_old_events_and_leaves_devices(pool: PgPool) {
    let now = now_ms();
    let manual = ManualClock::new(now);
    let clock: SharedClock = manual.clone();
    let cfg = RetentionConfig {
        presence_events: HumanDuration(Duration::from_secs(7 * 86_400)),
        interval: HumanDuration(Duration::from_secs(3600)),
        ..RetentionConfig::default()
    };
    let keep = TimeDelta::days(7);
    let ctx = ingest(&pool, &Config::default(), 100);

    // (event, arrival)
    let t = now - TimeDelta::days(10);
    let rows = [
        (
            conn("a", t, "s1", 1, "198.51.100.1"),
            now - TimeDelta::days(10),
        ),
        (
            disc("a", t + min(1), "s1", 1, "CONNECTION_LOST"),
            now - keep - TimeDelta::milliseconds(1),
        ),
        // exactly at the cutoff: not older than the retention
        (conn("a", t + min(2), "s2", 2, "198.51.100.2"), now - keep),
        (
            failed("b", t + min(3), "AUTH_ERROR"),
            now - TimeDelta::days(6),
        ),
        // an old event replayed recently counts by its arrival
        (conn("c", t, "s3", 1, "198.51.100.3"), now),
    ];
    for (ev, at) in &rows {
        assert_eq!(send_at(&ctx, ev, *at).await, Outcome::Stored(Stored::New));
    }
    let devices = all_devices(&pool).await;
    assert_eq!(devices.len(), 2);

    let deleted = fleetwatch::retention::tick(&pool, &clock, &cfg)
        .await
        .unwrap()
        .presence_events;
    assert_eq!(deleted, 2);
    let left: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "select client_id, event_type, received_at from presence_events order by received_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        left,
        vec![
            ("a".to_string(), "connected".to_string(), now - keep),
            (
                "b".to_string(),
                "connect_failed".to_string(),
                now - TimeDelta::days(6)
            ),
            ("c".to_string(), "connected".to_string(), now),
        ]
    );
    assert_eq!(all_devices(&pool).await, devices, "devices are untouched");

    // Idempotent; then a day later the next ones go.
    assert_eq!(
        fleetwatch::retention::tick(&pool, &clock, &cfg)
            .await
            .unwrap()
            .presence_events,
        0
    );
    manual.advance(TimeDelta::days(1) + TimeDelta::milliseconds(1));
    assert_eq!(
        clock.now(),
        now + TimeDelta::days(1) + TimeDelta::milliseconds(1)
    );
    assert_eq!(
        fleetwatch::retention::tick(&pool, &clock, &cfg)
            .await
            .unwrap()
            .presence_events,
        2
    );
    assert_eq!(count_events(&pool).await, 1);
    assert_eq!(all_devices(&pool).await, devices, "devices are untouched");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn retention_deletes_in_batches_until_done(pool: PgPool) {
    let now = now_ms();
    let clock: SharedClock = ManualClock::new(now);
    let cfg = RetentionConfig::default(); // 90 days
    let old = now - TimeDelta::days(91);
    // Two full batches and a bit, plus young rows that must stay.
    sqlx::query(
        "insert into presence_events
             (client_id, event_type, session_key, version_number, event_ts, received_at)
         select 'bulk-' || (g % 7), 'connect_failed', 'ts:' || g, -1, $1,
                case when g <= 10001 then $1 else $2 end
         from generate_series(1, 10300) g",
    )
    .bind(old)
    .bind(now - TimeDelta::days(89))
    .execute(&pool)
    .await
    .unwrap();
    let deleted = fleetwatch::retention::tick(&pool, &clock, &cfg)
        .await
        .unwrap()
        .presence_events;
    assert_eq!(deleted, 10001);
    assert_eq!(count_events(&pool).await, 299);
}

/// Old resolved alerts go with their trail and notifications; firing ones and pending
/// notifications stay; delivery attempts are trimmed on their own schedule.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn retention_trims_old_alerts_and_deliveries_but_never_firing_or_pending(pool: PgPool) {
    use fleetwatch::alerts::{lifecycle, AlertSpec};
    use fleetwatch::domain::alert::{Kind, Severity};
    let t0 = chrono::Utc::now() - TimeDelta::days(400);
    let spec = |subject: &str| AlertSpec {
        kind: Kind::HeartbeatGap,
        subject: subject.into(),
        device_id: Some(subject.into()),
        group_id: None,
        severity: Severity::Error,
        summary: format!("{subject} silent"),
        details: serde_json::json!({}),
    };
    let mut tx = pool.begin().await.unwrap();
    let old = lifecycle::fire(&mut tx, &spec("old"), t0, TimeDelta::minutes(30))
        .await
        .unwrap()
        .id();
    let outage = lifecycle::fire(
        &mut tx,
        &AlertSpec {
            kind: Kind::GroupOutage,
            subject: "g".into(),
            device_id: None,
            ..spec("g")
        },
        t0,
        TimeDelta::minutes(30),
    )
    .await
    .unwrap()
    .id();
    let still = lifecycle::fire(&mut tx, &spec("still"), t0, TimeDelta::minutes(30))
        .await
        .unwrap()
        .id();
    lifecycle::cover(&mut tx, &[still], outage, t0)
        .await
        .unwrap();
    lifecycle::resolve(
        &mut tx,
        old,
        t0 + TimeDelta::hours(1),
        None,
        serde_json::json!({}),
    )
    .await
    .unwrap();
    lifecycle::resolve(
        &mut tx,
        outage,
        t0 + TimeDelta::hours(1),
        None,
        serde_json::json!({}),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    for (alert, status, finished) in [(old, "delivered", Some(t0)), (still, "pending", None)] {
        let n: i64 = sqlx::query_scalar(
            r#"insert into notifications (alert_id, endpoint, event, body, status, next_attempt_at,
                   created_at, retry_since, finished_at)
               values ($1, 'e', 'alert.firing', '{}', $2, $3, $3, $3, $4) returning id"#,
        )
        .bind(alert)
        .bind(status)
        .bind(t0)
        .bind(finished)
        .fetch_one(&pool)
        .await
        .unwrap();
        sqlx::query(
            "insert into delivery_attempts (notification_id, at, latency_ms) values ($1, $2, 5)",
        )
        .bind(n)
        .bind(t0)
        .execute(&pool)
        .await
        .unwrap();
    }
    let clock: fleetwatch::clock::SharedClock = std::sync::Arc::new(fleetwatch::clock::SystemClock);
    let d = fleetwatch::retention::tick(&pool, &clock, &RetentionConfig::default())
        .await
        .unwrap();
    assert_eq!(
        (d.alerts, d.delivery_attempts, d.notifications),
        (2, 2, 1),
        "{d:?}"
    );
    let left: Vec<(i64, String, Option<i64>)> =
        sqlx::query_as("select id, status, covered_by from alerts order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        left,
        [(still, "firing".to_string(), None)],
        "the firing alert stays, uncovered"
    );
    let events: i64 = sqlx::query_scalar("select count(*) from alert_events where alert_id <> $1")
        .bind(still)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
    let pending: i64 =
        sqlx::query_scalar("select count(*) from notifications where status = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, 1);
}
