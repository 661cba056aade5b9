//! Leadership: one detector leads through a Postgres advisory lock on a dedicated connection;
//! a standby takes over when the leader's session ends.

use fleetwatch::detect::leader::Leader;
use sqlx::PgPool;

/// A session's locks go a moment after it ends (a close or pg_terminate_backend only starts
/// that), so a standby may need a few tries.
async fn becomes_leader(l: &mut Leader) -> bool {
    for _ in 0..100 {
        if l.ensure().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn one_leader_at_a_time_and_a_standby_takes_over(pool: PgPool) {
    let opts = (*pool.connect_options()).clone();
    let mut a = Leader::new(opts.clone());
    let mut b = Leader::new(opts.clone());
    assert!(a.ensure().await, "the first takes the lock");
    assert!(!b.ensure().await, "the second stands by");
    // re-checked every tick: still held, still refused
    for _ in 0..3 {
        assert!(a.ensure().await);
        assert!(!b.ensure().await);
    }
    // the leader's session ends (shutdown, crash, network): the standby takes over
    a.release().await;
    assert!(becomes_leader(&mut b).await);
    assert!(!a.ensure().await, "the old leader is now the standby");

    // a leader whose lock was lost behind its back notices on the next check
    kill_lock_holder(&pool).await;
    // pg_terminate_backend only signals: the session (and its lock) ends a moment later
    let mut took_over = false;
    for _ in 0..100 {
        if a.ensure().await {
            took_over = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        took_over,
        "the standby takes the lock the killed leader held"
    );
    assert!(!b.ensure().await, "the killed leader reconnects as standby");
}

mod leader_only_ticks {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use fleetwatch::app::tasks::{Leadership, Periodic, Supervisor};
    use fleetwatch::detect::leader::Leader;
    use fleetwatch::metrics::Metrics;
    use sqlx::PgPool;

    use super::kill_lock_holder;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    const PERIOD: Duration = Duration::from_millis(100);

    /// One replica's background tasks: a leader-only periodic task counting its ticks and the
    /// first ticks of its leaderships.
    struct Instance {
        cancel: CancellationToken,
        tracker: TaskTracker,
        leadership: Arc<Leadership>,
        ticks: Arc<AtomicUsize>,
        terms: Arc<AtomicUsize>,
    }

    impl Instance {
        fn start(pool: &PgPool) -> Instance {
            let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
            let leadership = Leadership::new(Leader::new((*pool.connect_options()).clone()));
            let tasks = Supervisor::new(
                cancel.clone(),
                tracker.clone(),
                Metrics::new(),
                std::sync::Arc::new(fleetwatch::clock::SystemClock),
                Some(leadership.clone()),
            );
            let (ticks, terms) = (Arc::default(), Arc::default());
            {
                let (ticks, terms): (Arc<AtomicUsize>, Arc<AtomicUsize>) =
                    (Arc::clone(&ticks), Arc::clone(&terms));
                tasks.periodic(
                    Periodic::new("leader_test", PERIOD).leader_only(),
                    move |t| {
                        ticks.fetch_add(1, Ordering::SeqCst);
                        if t.first_of_term {
                            terms.fetch_add(1, Ordering::SeqCst);
                        }
                        std::future::ready(Ok(()))
                    },
                );
            }
            Instance {
                cancel,
                tracker,
                leadership,
                ticks,
                terms,
            }
        }

        fn ticks(&self) -> usize {
            self.ticks.load(Ordering::SeqCst)
        }

        /// Shutdown as the app does it: tasks end, then the lock is given up.
        async fn stop(&self) {
            self.cancel.cancel();
            self.tracker.close();
            self.tracker.wait().await;
            self.leadership.release().await;
        }
    }

    async fn first_to_tick(a: &Instance, b: &Instance, within: Duration) -> Duration {
        let start = Instant::now();
        while a.ticks() == 0 && b.ticks() == 0 {
            assert!(start.elapsed() < within, "nobody ticked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start.elapsed()
    }

    /// Two instances on one database: only one runs leader ticks. Stop it and the other takes
    /// over within one tick plus the lock's detection time. Kill the new leader's session
    /// behind its back with a third instance standing by: from then on again exactly one of
    /// them ticks, and a lock retaken after a loss counts as a new leadership.
    #[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
    async fn only_the_leader_ticks_and_a_standby_takes_over(pool: PgPool) {
        let a = Instance::start(&pool);
        first_to_tick(&a, &a, Duration::from_secs(5)).await;
        let b = Instance::start(&pool);
        tokio::time::sleep(PERIOD * 8).await;
        assert!(a.ticks() >= 5, "the leader ticks every period");
        assert_eq!(b.ticks(), 0, "the standby never runs a leader tick");
        assert_eq!(a.terms.load(Ordering::SeqCst), 1, "one leadership");
        assert!(a.leadership.is_leader() && !b.leadership.is_leader());

        // stop the leader: the standby's next tick takes the lock
        let before = a.ticks();
        a.stop().await;
        let started = Instant::now();
        while b.ticks() == 0 {
            // one tick plus the time the server takes to drop a closed session's lock
            assert!(
                started.elapsed() < PERIOD + Duration::from_secs(2),
                "the standby did not take over"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(a.ticks(), before, "a stopped instance ticks no more");
        assert_eq!(b.terms.load(Ordering::SeqCst), 1);

        // the new leader's session is killed behind its back: its next tick notices and does
        // not run; another instance takes over
        let c = Instance::start(&pool);
        tokio::time::sleep(PERIOD * 3).await;
        assert_eq!(c.ticks(), 0);
        kill_lock_holder(&pool).await;
        let started = Instant::now();
        while c.ticks() == 0 && b.ticks() == 0 {
            assert!(started.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Whoever leads now, only one of them ticks from here on.
        tokio::time::sleep(PERIOD * 2).await;
        let (b1, c1) = (b.ticks(), c.ticks());
        tokio::time::sleep(PERIOD * 5).await;
        let (b2, c2) = (b.ticks(), c.ticks());
        assert!(
            (b2 > b1) != (c2 > c1),
            "exactly one instance ticks: b {b1}→{b2}, c {c1}→{c2}"
        );
        if b2 > b1 {
            // b got the lock back: that is a new leadership, a restart point
            assert_eq!(b.terms.load(Ordering::SeqCst), 2);
        } else {
            assert_eq!(c.terms.load(Ordering::SeqCst), 1);
        }
        b.stop().await;
        c.stop().await;
    }
}

/// End the session holding this database's advisory lock behind its holder's back (a crash, a
/// network cut). `pg_terminate_backend` only signals: the lock goes a moment later.
async fn kill_lock_holder(pool: &PgPool) {
    let pid: i32 = sqlx::query_scalar(
        "select pid from pg_locks where locktype = 'advisory' and granted and database = \
         (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let _: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap();
}
