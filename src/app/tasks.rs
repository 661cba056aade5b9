//! The supervisor: every background task starts here, with a name and a policy, and its state
//! is on `/healthz` and its restarts on `/metrics`.
//!
//! **Policies.**
//! - *Restart with backoff* ([`Supervisor::restartable`], [`Supervisor::periodic`]): tasks that
//!   keep no state of their own between runs, everything they need being in Postgres or in a
//!   shared handle that outlives the run: the detector, the canary, the telemetry flusher (the
//!   buffer it drains belongs to the ingest context, not to the loop), retention, the active
//!   silences gauge, the webhook worker (a send cut short keeps its lease and comes back) and
//!   the database gate. A panic, an error or an unexpected end of such a run is logged with the
//!   task's name (rate-limited per task), counted (`fleetwatch_task_restarts_total{task}`),
//!   shown as `restarting` with the error, and the task starts again after a backoff (1 s
//!   doubling to 60 s, and for a periodic task never more than its period, so that it retries
//!   at least as often as it used to tick; a run that lasted a minute resets it).
//! - *Vital* ([`Supervisor::vital`]): tasks whose restart could lose data or hide a broken
//!   process: the MQTT poll loops (each owns its event loop, its persistent session and a
//!   sender of the channel whose last drop is what lets the dispatcher drain and flush), the
//!   dispatcher (it owns the receiving end: a new one could not get the channel back) and the
//!   HTTP server. Their failure, or their end before shutdown, is reported to
//!   [`App::run_until`](super::App::run_until), which stops everything and returns the error,
//!   so the binary exits non-zero and the orchestrator restarts it whole.
//!
//! **Periodic tasks** are one cancellable loop, [`every`]: a tick per period (and, if given,
//! whenever a wake-up future resolves), never two ticks at once, a missed tick delayed rather
//! than bursted. A tick that returns an error or panics ends the run, which the policy above
//! restarts: the restarted loop ticks at once, so a database blink costs one backoff, never
//! more than one period.
//!
//! **Leader-only** periodic tasks tick only on the replica that holds the advisory lock
//! ([`Leadership`]): the lock is re-checked before each of their ticks, so a replica that lost
//! it stops at its next tick and a standby starts at its next tick after the old session ended.
//! Each tick is told whether it is the first of a new leadership ([`Tick::first_of_term`]),
//! which the detector treats as a restart point; the term each task saw last outlives a
//! restart of its loop, so a crash does not count as a new leadership.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::clock::SharedClock;
use crate::detect::leader::Leader;
use crate::logging::RateLimitedWarn;
use crate::metrics::Metrics;

/// The first restart waits this long; each further one twice as long, up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run that lasted this long was healthy: the next failure starts the backoff afresh.
const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// One task's failures are logged at most this often (the count is in the metrics): a
/// telemetry flusher failing every second through a database outage says nothing new after
/// its first line.
const FAILURE_WARN_PERIOD: Duration = Duration::from_secs(60);

/// What a task is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Running,
    /// Failed; waiting out its backoff before the next run.
    Restarting,
    /// A vital task that failed: the process is stopping.
    Failed,
    /// Ended by shutdown.
    Stopped,
}

/// How the supervisor treats a task's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    Restart,
    Vital,
}

/// One task as `/healthz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    pub policy: Policy,
    pub leader_only: bool,
    pub state: TaskState,
    /// Since when it is in this state.
    pub since: DateTime<Utc>,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// Every task's status, by name.
#[derive(Default)]
pub struct TaskBoard {
    tasks: Mutex<BTreeMap<String, TaskStatus>>,
}

impl TaskBoard {
    /// A copy of every task's status, by name.
    pub fn snapshot(&self) -> BTreeMap<String, TaskStatus> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One task's status.
    pub fn get(&self, name: &str) -> Option<TaskStatus> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut TaskStatus)) {
        if let Some(s) = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(name)
        {
            f(s);
        }
    }

    fn register(&self, name: &str, policy: Policy, leader_only: bool, now: DateTime<Utc>) {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(
            name.to_string(),
            TaskStatus {
                policy,
                leader_only,
                state: TaskState::Running,
                since: now,
                restarts: 0,
                last_error: None,
                last_error_at: None,
            },
        );
    }

    fn set_state(&self, name: &str, state: TaskState, now: DateTime<Utc>) {
        self.update(name, |s| {
            if s.state != state {
                s.state = state;
                s.since = now;
            }
        });
    }

    fn failed(&self, name: &str, state: TaskState, error: &str, now: DateTime<Utc>) {
        self.update(name, |s| {
            if state == TaskState::Restarting {
                s.restarts += 1;
            }
            s.state = state;
            s.since = now;
            s.last_error = Some(error.to_string());
            s.last_error_at = Some(now);
        });
    }
}

/// The advisory-lock leadership as a service of the app: one lock per process, consulted by
/// every leader-only tick. Terms number the times this process took the lock (a lock lost and
/// retaken between two ticks is a new term), so a tick can tell the first of a leadership.
pub struct Leadership {
    lock: tokio::sync::Mutex<Leader>,
    /// Whether the last check found the lock held (for `/healthz`).
    leading: std::sync::atomic::AtomicBool,
}

impl Leadership {
    pub fn new(lock: Leader) -> Arc<Self> {
        Arc::new(Self {
            lock: tokio::sync::Mutex::new(lock),
            leading: Default::default(),
        })
    }

    /// The current term if we hold the lock now (taking it if free), `None` if not.
    pub async fn check(&self) -> Option<u64> {
        let mut lock = self.lock.lock().await;
        let held = lock.ensure().await;
        self.leading.store(held, Ordering::Relaxed);
        held.then(|| lock.acquisitions())
    }

    /// Whether the last check found the lock held.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// Give the lock up (shutdown), so that a standby takes over at its next tick.
    pub async fn release(&self) {
        self.lock.lock().await.release().await;
        self.leading.store(false, Ordering::Relaxed);
    }
}

/// What a periodic task's tick is told.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tick {
    /// The first tick of a leadership this task sees (leader-only tasks; always false for
    /// the others).
    pub first_of_term: bool,
}

/// An extra reason to tick early: makes a future that resolves when it is time.
pub type Wake = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A periodic task's schedule.
pub struct Periodic {
    pub name: String,
    pub period: Duration,
    /// Tick only on the replica that holds the leader lock.
    pub leader_only: bool,
    /// Tick also whenever this resolves (the telemetry buffer filling up).
    pub wake: Option<Wake>,
}

impl Periodic {
    pub fn new(name: impl Into<String>, period: Duration) -> Self {
        Self {
            name: name.into(),
            period,
            leader_only: false,
            wake: None,
        }
    }

    pub fn leader_only(mut self) -> Self {
        self.leader_only = true;
        self
    }

    /// Also tick whenever the future `wake` makes resolves (a fresh one after each tick).
    pub fn wake_on<F, Fut>(mut self, wake: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.wake = Some(Arc::new(move || Box::pin(wake())));
        self
    }
}

/// Call `tick` every `period` (and whenever `wake`'s future resolves) until `cancel` (then
/// `Ok`) or until a tick fails (then its error). The first tick is immediate; a tick that
/// overruns delays the next rather than bunching them up. Cancellation is noticed between
/// ticks, never inside one.
pub async fn every<F, Fut>(
    period: Duration,
    wake: Option<Wake>,
    cancel: &CancellationToken,
    mut tick: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let early = async {
            match &wake {
                Some(w) => w().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
            _ = early => {}
        }
        tick().await?;
    }
}

/// Starts and watches background tasks (see the module doc). A cheap handle.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    cancel: CancellationToken,
    tracker: TaskTracker,
    board: Arc<TaskBoard>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    leadership: Option<Arc<Leadership>>,
    /// The first vital failure; `failed` is cancelled when it is set.
    fatal: Mutex<Option<anyhow::Error>>,
    failed: CancellationToken,
}

impl Supervisor {
    /// Tasks run on `tracker` until `cancel`; leader-only ones consult `leadership` (without
    /// one, they never tick).
    pub fn new(
        cancel: CancellationToken,
        tracker: TaskTracker,
        metrics: Arc<Metrics>,
        clock: SharedClock,
        leadership: Option<Arc<Leadership>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cancel,
                tracker,
                board: Arc::default(),
                metrics,
                clock,
                leadership,
                fatal: Mutex::new(None),
                failed: CancellationToken::new(),
            }),
        }
    }

    pub fn board(&self) -> &Arc<TaskBoard> {
        &self.inner.board
    }

    pub fn leadership(&self) -> Option<&Arc<Leadership>> {
        self.inner.leadership.as_ref()
    }

    /// Resolves with the first vital task's failure.
    pub async fn failure(&self) -> anyhow::Error {
        self.inner.failed.cancelled().await;
        self.inner
            .fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| anyhow::anyhow!("a vital task failed"))
    }

    /// Start a vital task. Its error, panic, or end before shutdown is a failure of the
    /// process ([`Supervisor::failure`]). With `tracked`, shutdown waits for it with the other
    /// tasks (the MQTT loops); otherwise the caller awaits the handle in its own order (the
    /// dispatcher, the HTTP server).
    pub fn vital<Fut>(
        &self,
        name: impl Into<String>,
        tracked: bool,
        fut: Fut,
    ) -> JoinHandle<anyhow::Result<()>>
    where
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.into();
        let inner = self.inner.clone();
        inner
            .board
            .register(&name, Policy::Vital, false, inner.clock.now());
        let watched = async move {
            let joined = tokio::spawn(fut).await;
            let cancelled = inner.cancel.is_cancelled();
            let result = match joined {
                Ok(Ok(())) if cancelled => Ok(()),
                Ok(Ok(())) => Err(anyhow::anyhow!("{name} stopped unexpectedly")),
                Ok(Err(e)) => Err(e.context(format!("{name} failed"))),
                Err(e) => Err(anyhow::anyhow!("{name} panicked: {}", panic_text(e))),
            };
            let now = inner.clock.now();
            match &result {
                Ok(()) => inner.board.set_state(&name, TaskState::Stopped, now),
                Err(e) => {
                    let text = format!("{e:#}");
                    inner.board.failed(&name, TaskState::Failed, &text, now);
                    let mut fatal = inner.fatal.lock().unwrap_or_else(|e| e.into_inner());
                    if fatal.is_none() {
                        *fatal = Some(anyhow::anyhow!("{text}"));
                    }
                    drop(fatal);
                    inner.failed.cancel();
                }
            }
            result
        };
        if tracked {
            self.inner.tracker.spawn(watched)
        } else {
            tokio::spawn(watched)
        }
    }

    /// Start a restartable task: `run` is called for every run with the shutdown token; a run
    /// that panics, errs or returns before shutdown is restarted after a backoff.
    pub fn restartable<F, Fut>(&self, name: impl Into<String>, run: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.supervise(name.into(), false, BACKOFF_MAX, run);
    }

    /// Start a periodic task: `tick` every `spec.period` through [`every`], under the restart
    /// policy (a failed tick restarts the loop after at most one period).
    pub fn periodic<F, Fut>(&self, spec: Periodic, tick: F)
    where
        F: Fn(Tick) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let Periodic {
            name,
            period,
            leader_only,
            wake,
        } = spec;
        let inner = self.inner.clone();
        let tick = Arc::new(tick);
        // Outlives the runs: a restarted loop is not a new leadership.
        let seen_term = Arc::new(AtomicU64::new(0));
        let task = name.clone();
        let max_backoff = period.clamp(BACKOFF_MIN, BACKOFF_MAX);
        self.supervise(name, leader_only, max_backoff, move |cancel| {
            let (inner, tick, seen_term, wake) =
                (inner.clone(), tick.clone(), seen_term.clone(), wake.clone());
            let name = task.clone();
            async move {
                every(period, wake, &cancel, || async {
                    let mut t = Tick::default();
                    if leader_only {
                        let Some(term) = (match &inner.leadership {
                            Some(l) => l.check().await,
                            None => None,
                        }) else {
                            return Ok(());
                        };
                        t.first_of_term = seen_term.swap(term, Ordering::Relaxed) != term;
                    }
                    let started = Instant::now();
                    let result = tick(t)
                        .instrument(tracing::info_span!("task.tick", task = %name))
                        .await;
                    inner
                        .metrics
                        .tasks
                        .tick_seconds
                        .get_or_create(&vec![("task", name.clone())])
                        .observe(started.elapsed().as_secs_f64());
                    result
                })
                .await
            }
        });
    }

    fn supervise<F, Fut>(&self, name: String, leader_only: bool, max_backoff: Duration, run: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let inner = self.inner.clone();
        inner
            .board
            .register(&name, Policy::Restart, leader_only, inner.clock.now());
        // Show the series from the start: zero restarts is worth seeing.
        let _ = inner
            .metrics
            .tasks
            .restarts
            .get_or_create(&vec![("task", name.clone())]);
        let warn = RateLimitedWarn::new(FAILURE_WARN_PERIOD);
        self.inner.tracker.spawn(async move {
            let mut backoff = BACKOFF_MIN.min(max_backoff);
            loop {
                inner
                    .board
                    .set_state(&name, TaskState::Running, inner.clock.now());
                let started = Instant::now();
                let joined = tokio::spawn(run(inner.cancel.clone())).await;
                if inner.cancel.is_cancelled() {
                    inner
                        .board
                        .set_state(&name, TaskState::Stopped, inner.clock.now());
                    return;
                }
                let why = match joined {
                    Ok(Ok(())) => "stopped unexpectedly".to_string(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(e) => format!("panicked: {}", panic_text(e)),
                };
                if started.elapsed() >= BACKOFF_RESET {
                    backoff = BACKOFF_MIN.min(max_backoff);
                }
                warn.warn(
                    "task_failed",
                    &format_args!(
                        "background task {name} failed; restarting in {backoff:?}: {why}"
                    ),
                );
                inner.metrics.tasks.restarted(&name);
                inner
                    .board
                    .failed(&name, TaskState::Restarting, &why, inner.clock.now());
                tokio::select! {
                    _ = inner.cancel.cancelled() => {
                        inner.board.set_state(&name, TaskState::Stopped, inner.clock.now());
                        return;
                    }
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        });
    }
}

/// The message of a panic (or why the task ended otherwise).
fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let p = e.into_panic();
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
