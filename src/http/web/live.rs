//! Live updates for the dashboard (issue 10, item 6): one server-sent-events stream per tab,
//! `GET /live`, fed by Postgres `LISTEN/NOTIFY`.
//!
//! The contract:
//! - **What is announced.** Every write that changes what a page shows notifies the channel
//!   `fleetwatch_live` with a [`Topic`] as payload, from triggers (migration
//!   20261204001000), so a change made through any replica, the detector, the webhook worker
//!   or the CLI reaches every replica's browsers. Presence and telemetry are deliberately not
//!   announced (they would serialise ingest on the notify lock); a device's *state* is.
//! - **One listener per replica.** [`listen`] holds one `LISTEN` connection, gathers the
//!   topics that arrive within [`GATHER`], reads the firing count once, and hands one
//!   [`Change`] to the [`Hub`], which fans it out to every stream of the replica. When the
//!   connection is lost, notifications may have been missed: after reconnecting it announces
//!   every topic, so pages re-fetch rather than stay stale.
//! - **One stream per tab.** A stream sends `event: change` with
//!   `data: {"topics":[…],"firing":N}` at most once per [`THROTTLE`] (changes meanwhile are
//!   merged into the next event), a `hello` event with the firing count when it opens, and a
//!   comment every [`KEEPALIVE`] so proxies and the browser keep it open. The page decides what
//!   to re-fetch (`static/app.js`); the stream carries no data of its own beyond the count.
//! - **Ends cleanly.** A stream ends when the service shuts down ([`Hub::close`]); the browser
//!   reconnects by itself (`EventSource`) and gets a fresh `hello`. It is not subject to the
//!   request timeout (the response is returned at once; only its body streams) and counts as
//!   a request in flight for the connection's idle timeout (`http::server`).
//! - **Signed-in only.** `/live` needs a session like every page ([`CurrentUser`]).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::Stream;
use serde::Serialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::session::CurrentUser;
use crate::http::AppState;

/// The Postgres channel the triggers notify.
pub const CHANNEL: &str = "fleetwatch_live";
/// How long the listener gathers notifications before announcing them.
pub const GATHER: Duration = Duration::from_millis(200);
/// The least time between two events of one stream.
pub const THROTTLE: Duration = Duration::from_secs(1);
/// A comment line this often keeps idle streams open.
pub const KEEPALIVE: Duration = Duration::from_secs(20);

/// What changed: the payloads the triggers send, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Alerts,
    Devices,
    Silences,
    Webhooks,
}

impl Topic {
    pub const ALL: [Topic; 4] = [
        Topic::Alerts,
        Topic::Devices,
        Topic::Silences,
        Topic::Webhooks,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Alerts => "alerts",
            Topic::Devices => "devices",
            Topic::Silences => "silences",
            Topic::Webhooks => "webhooks",
        }
    }

    pub fn parse(s: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of topics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Topics(u8);

impl Topics {
    pub fn all() -> Topics {
        Topic::ALL.into_iter().fold(Topics::default(), Topics::with)
    }
    pub fn with(self, t: Topic) -> Topics {
        Topics(self.0 | t.bit())
    }
    pub fn union(self, o: Topics) -> Topics {
        Topics(self.0 | o.0)
    }
    pub fn contains(self, t: Topic) -> bool {
        self.0 & t.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn names(self) -> Vec<&'static str> {
        Topic::ALL
            .into_iter()
            .filter(|t| self.contains(*t))
            .map(Topic::as_str)
            .collect()
    }
}

/// One announcement to the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub topics: Topics,
    /// Firing alerts, for the tab title.
    pub firing: i64,
}

/// The event data a stream sends.
#[derive(Debug, Serialize)]
struct Data {
    topics: Vec<&'static str>,
    firing: i64,
}

/// The replica's fan-out of changes to its streams.
pub struct Hub {
    tx: broadcast::Sender<Change>,
    closed: CancellationToken,
    listening: AtomicBool,
    /// Bumped by every notification the listener receives (and every publish): what was read
    /// under an older generation may be stale (`overview::Cache`).
    generation: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            tx: broadcast::channel(64).0,
            closed: CancellationToken::new(),
            listening: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }
    }

    /// Announce a change to every open stream.
    pub fn publish(&self, change: Change) {
        self.touch();
        // No receiver is fine: no tab is open.
        let _ = self.tx.send(change);
    }

    /// End every stream (shutdown); new streams end at once.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Whether the listener holds its `LISTEN` (for `/healthz`-style displays).
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Something changed (a notification arrived; its announcement follows after [`GATHER`]).
    fn touch(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The current generation of what pages show, while changes are announced (the listener
    /// holds its `LISTEN`); `None` otherwise: then no read may be reused.
    pub fn generation(&self) -> Option<u64> {
        self.listening()
            .then(|| self.generation.load(Ordering::SeqCst))
    }

    /// A receiver of every change published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}

/// Firing alerts, from the trigger-kept counts (cheap at any size).
pub async fn firing(pool: &PgPool) -> sqlx::Result<i64> {
    Ok(crate::db::fleet_counts::firing(pool)
        .await?
        .iter()
        .map(|c| c.n)
        .sum())
}

/// The replica's listener: runs until `cancel`, then closes the hub. An error (the first
/// connection refused) returns for the supervisor to restart the task.
pub async fn listen(hub: Arc<Hub>, pool: PgPool, cancel: CancellationToken) -> anyhow::Result<()> {
    let result = tokio::select! {
        r = listen_loop(&hub, &pool) => r,
        _ = cancel.cancelled() => Ok(()),
    };
    hub.listening.store(false, Ordering::Relaxed);
    if cancel.is_cancelled() {
        hub.close();
    }
    result
}

async fn listen_loop(hub: &Hub, pool: &PgPool) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut listener = PgListener::connect_with(pool)
        .await
        .context("live updates: LISTEN connection")?;
    listener
        .listen(CHANNEL)
        .await
        .context("live updates: LISTEN")?;
    // Whatever was read before we listened may be stale.
    hub.touch();
    hub.listening.store(true, Ordering::Relaxed);
    // Whatever happened before we listened is unknown to the open pages.
    announce(hub, pool, Topics::all()).await;
    loop {
        let mut topics = Topics::default();
        match listener.try_recv().await.context("live updates: receive")? {
            Some(n) => {
                hub.touch();
                topics = topics.with_payload(n.payload());
            }
            None => {
                // The connection was lost; the next try_recv reconnects. Missed notifications
                // are unknowable: announce everything once we hear again.
                hub.listening.store(false, Ordering::Relaxed);
                tracing::warn!("live updates: LISTEN connection lost; reconnecting");
                topics = Topics::all();
            }
        }
        // Gather what arrives shortly after, so that a burst is one announcement.
        let deadline = tokio::time::Instant::now() + GATHER;
        while let Ok(r) = tokio::time::timeout_at(deadline, listener.try_recv()).await {
            match r.context("live updates: receive")? {
                Some(n) => {
                    hub.touch();
                    topics = topics.with_payload(n.payload());
                }
                None => topics = Topics::all(),
            }
        }
        // After a lost connection, what was read meanwhile may be stale.
        hub.touch();
        hub.listening.store(true, Ordering::Relaxed);
        announce(hub, pool, topics).await;
    }
}

impl Topics {
    fn with_payload(self, payload: &str) -> Topics {
        match Topic::parse(payload) {
            Some(t) => self.with(t),
            None => self,
        }
    }
}

async fn announce(hub: &Hub, pool: &PgPool, topics: Topics) {
    if topics.is_empty() {
        return;
    }
    match firing(pool).await {
        Ok(firing) => hub.publish(Change { topics, firing }),
        Err(e) => tracing::warn!(error = %e, "live updates: reading the firing count"),
    }
}

/// `GET /live`
pub async fn stream(
    _user: CurrentUser,
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let firing = firing(&state.pool).await.unwrap_or(0);
    Sse::new(events(state.live.clone(), firing)).keep_alive(KeepAlive::new().interval(KEEPALIVE))
}

fn event(name: &str, topics: Topics, firing: i64) -> Event {
    let data = Data {
        topics: topics.names(),
        firing,
    };
    Event::default()
        .event(name)
        .data(serde_json::to_string(&data).expect("plain data"))
}

/// A stream's events: `hello`, then merged changes at most once per [`THROTTLE`], until the
/// hub closes.
fn events(hub: Arc<Hub>, firing: i64) -> impl Stream<Item = Result<Event, Infallible>> {
    struct S {
        hub: Arc<Hub>,
        rx: broadcast::Receiver<Change>,
        hello: Option<i64>,
        last_sent: Option<tokio::time::Instant>,
    }
    let rx = hub.subscribe();
    let s = S {
        hub,
        rx,
        hello: Some(firing),
        last_sent: None,
    };
    futures_util::stream::unfold(s, |mut s| async move {
        if let Some(firing) = s.hello.take() {
            return Some((Ok(event("hello", Topics::default(), firing)), s));
        }
        let closed = s.hub.closed.clone();
        let mut pending: Option<Change> = None;
        loop {
            // Wait for a change (or more changes while throttled).
            let wait_until = match (&pending, s.last_sent) {
                (Some(_), Some(t)) => Some(t + THROTTLE),
                (Some(_), None) => Some(tokio::time::Instant::now()),
                (None, _) => None,
            };
            let due = async {
                match wait_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = closed.cancelled() => return None,
                _ = due => {
                    let c = pending.take().expect("due only with a pending change");
                    s.last_sent = Some(tokio::time::Instant::now());
                    return Some((Ok(event("change", c.topics, c.firing)), s));
                }
                r = s.rx.recv() => {
                    let c = match r {
                        Ok(c) => c,
                        // Missed some: everything may have changed.
                        Err(broadcast::error::RecvError::Lagged(_)) => Change {
                            topics: Topics::all(),
                            firing: pending.map_or(0, |p| p.firing),
                        },
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    pending = Some(match pending {
                        Some(p) => Change { topics: p.topics.union(c.topics), firing: c.firing },
                        None => c,
                    });
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn topics_round_trip_and_merge() {
        for t in Topic::ALL {
            assert_eq!(Topic::parse(t.as_str()), Some(t));
        }
        assert_eq!(Topic::parse("nonsense"), None);
        let s = Topics::default().with(Topic::Alerts).with(Topic::Webhooks);
        assert_eq!(s.names(), vec!["alerts", "webhooks"]);
        assert!(!s.contains(Topic::Devices));
        assert_eq!(Topics::all().names().len(), 4);
        assert_eq!(Topics::default().with_payload("bogus"), Topics::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_says_hello_then_merges_changes_within_the_throttle() {
        let hub = Arc::new(Hub::new());
        let mut s = Box::pin(events(hub.clone(), 7));
        let hello = format!("{:?}", s.next().await.unwrap().unwrap());
        assert!(
            hello.contains("hello") && hello.contains("\\\"firing\\\":7"),
            "{hello}"
        );

        let a = Topics::default().with(Topic::Alerts);
        let d = Topics::default().with(Topic::Devices);
        hub.publish(Change {
            topics: a,
            firing: 8,
        });
        let first = format!("{:?}", s.next().await.unwrap().unwrap());
        assert!(first.contains("[\\\"alerts\\\"]"), "{first}");
        let sent = tokio::time::Instant::now();

        // Two changes inside the throttle: one event, both topics, the latest count.
        hub.publish(Change {
            topics: d,
            firing: 9,
        });
        hub.publish(Change {
            topics: a,
            firing: 10,
        });
        let second = format!("{:?}", s.next().await.unwrap().unwrap());
        assert!(tokio::time::Instant::now() >= sent + THROTTLE);
        assert!(
            second.contains("[\\\"alerts\\\",\\\"devices\\\"]") && second.contains("10"),
            "{second}"
        );

        hub.close();
        assert!(
            s.next().await.is_none(),
            "the stream ends when the hub closes"
        );
    }
}
