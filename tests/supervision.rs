//! The supervisor: a failure injected into a task through the same API the service uses is
//! restarted after a backoff, counted on `/metrics` and shown on `/healthz`; a failed tick
//! restarts its loop within a period; a vital task's failure ends `run_until` with an error; a
//! real task (the detector) whose ticks fail shows it within a tick and is back once the cause
//! is gone.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fleetwatch::app::tasks::{Periodic, Supervisor, TaskState};
use fleetwatch::app::App;
use fleetwatch::config::HumanDuration;
use fleetwatch::metrics::Metrics;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

async fn healthz(api: &Api) -> Value {
    let (status, body) = api.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    body
}

fn fast(broker: &Broker) -> fleetwatch::config::Config {
    let mut cfg = config(broker);
    cfg.detector.tick = HumanDuration(Duration::from_millis(200));
    cfg.detector.canary_interval = HumanDuration(Duration::from_millis(200));
    cfg
}

/// A task that fails with an error on its first run and panics on its second is restarted each
/// time after a backoff, and each failure is on `/healthz` (restarting, the error) and in
/// `fleetwatch_task_restarts_total` while it happens; its third run stays up.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn an_injected_failure_is_restarted_counted_and_shown(pool: PgPool) {
    let broker = Broker::start().await;
    let app = App::build_with_pool(fast(&broker), pool, system_clock())
        .await
        .unwrap();
    let api = api(&format!("http://{}", app.addr));
    let runs = Arc::new(AtomicUsize::new(0));
    let up = Arc::new(AtomicUsize::new(0));
    {
        let (runs, up) = (runs.clone(), up.clone());
        app.tasks.restartable("test_fault", move |cancel| {
            let (runs, up) = (runs.clone(), up.clone());
            async move {
                match runs.fetch_add(1, Ordering::SeqCst) {
                    0 => anyhow::bail!("injected error"),
                    1 => panic!("injected panic"),
                    _ => {
                        up.fetch_add(1, Ordering::SeqCst);
                        cancel.cancelled().await;
                        Ok(())
                    }
                }
            }
        });
    }

    // The first failure shows at once, while the task waits out its backoff.
    eventually(5, "restarting after the injected error", || async {
        let h = healthz(&api).await;
        let t = &h["tasks"]["test_fault"];
        t["state"] == "restarting"
            && t["restarts"] == 1
            && t["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("injected error"))
    })
    .await;
    let text = api.text("/metrics").await;
    assert_eq!(
        metric(
            &text,
            r#"fleetwatch_task_restarts_total{task="test_fault"}"#
        ),
        1.0,
        "{text}"
    );

    eventually(10, "back after the panic", || async {
        up.load(Ordering::SeqCst) == 1
    })
    .await;
    let h = healthz(&api).await;
    let t = &h["tasks"]["test_fault"];
    assert_eq!(t["state"], "running", "{h}");
    assert_eq!(t["restarts"], 2, "{h}");
    assert_eq!(t["policy"], "restart", "{h}");
    assert!(
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("panicked: injected panic")),
        "{h}"
    );
    let text = api.text("/metrics").await;
    assert_eq!(
        metric(
            &text,
            r#"fleetwatch_task_restarts_total{task="test_fault"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(&text, r#"fleetwatch_task_restarts_total{task="detector"}"#),
        0.0
    );
    assert!(text.contains(r#"fleetwatch_task_restarts_total{task="detector"} 0"#));

    // Every task of the service is on the board, with its policy, and running.
    for (name, policy) in [
        ("detector", "restart"),
        ("canary", "restart"),
        ("telemetry_flusher", "restart"),
        ("retention", "restart"),
        ("silences_gauge", "restart"),
        ("counts_fold", "restart"),
        ("counts_check", "restart"),
        ("db_gate", "restart"),
        ("dispatcher", "vital"),
        ("http_server", "vital"),
    ] {
        assert_eq!(h["tasks"][name]["state"], "running", "{name}: {h}");
        assert_eq!(h["tasks"][name]["policy"], policy, "{name}: {h}");
    }
    assert_eq!(h["tasks"]["detector"]["leader_only"], true);
    assert_eq!(h["tasks"]["counts_check"]["leader_only"], true);
    assert_eq!(h["tasks"]["counts_fold"]["leader_only"], false);
    let mqtt: Vec<&String> = h["tasks"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("mqtt:"))
        .collect();
    assert_eq!(mqtt.len(), 1, "{h}");
    assert_eq!(h["tasks"][mqtt[0].as_str()]["policy"], "vital");
    // and the canary's last round trip
    eventually(10, "a canary round trip on /healthz", || async {
        let h = healthz(&api).await;
        h["canary"]["sent"].as_u64().unwrap_or(0) > 0
            && h["canary"]["last_round_trip_ms"].as_f64().is_some()
            && h["canary"]["last_returned_at"].is_string()
            && h["leader"] == true
    })
    .await;
    app.shutdown().await.unwrap();
}

/// A vital task that fails makes `run_until` stop everything and return the error (the binary
/// then exits non-zero).
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_vital_failure_ends_run_until_with_an_error(pool: PgPool) {
    let broker = Broker::start().await;
    let app = App::build_with_pool(config(&broker), pool, system_clock())
        .await
        .unwrap();
    app.tasks.vital("test_vital", true, async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        anyhow::bail!("injected vital failure")
    });
    let board = app.tasks.board().clone();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        app.run_until(std::future::pending()),
    )
    .await
    .expect("run_until returns after a vital failure");
    let e = format!("{:#}", result.unwrap_err());
    assert!(e.contains("test_vital failed"), "{e}");
    assert!(e.contains("injected vital failure"), "{e}");
    assert_eq!(board.get("test_vital").unwrap().state, TaskState::Failed);
    // everything else was stopped, not failed
    assert_eq!(board.get("detector").unwrap().state, TaskState::Stopped);
}

/// A real task whose ticks fail (the detector, its table gone) shows it within a tick on
/// `/healthz` and `/metrics`, is restarted within a tick period, and is fine once the cause is
/// gone.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn detector_tick_failures_are_visible_and_it_comes_back(pool: PgPool) {
    let broker = Broker::start().await;
    let app = App::build_with_pool(fast(&broker), pool.clone(), system_clock())
        .await
        .unwrap();
    let api = api(&format!("http://{}", app.addr));
    eventually(10, "ingest healthy", || async {
        healthz(&api).await["canary"]["last_returned_at"].is_string()
    })
    .await;
    sqlx::query("alter table detector_state rename to detector_state_away")
        .execute(&pool)
        .await
        .unwrap();
    eventually(5, "the detector's failure is visible", || async {
        let h = healthz(&api).await;
        let d = &h["tasks"]["detector"];
        let text = api.text("/metrics").await;
        d["restarts"].as_u64().unwrap_or(0) >= 1
            && d["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("detector_state"))
            && metric(&text, r#"fleetwatch_task_restarts_total{task="detector"}"#) >= 1.0
    })
    .await;
    // It keeps coming back (backoff capped at its 200 ms period) and failing.
    eventually(5, "restarted again", || async {
        healthz(&api).await["tasks"]["detector"]["restarts"]
            .as_u64()
            .unwrap_or(0)
            >= 3
    })
    .await;
    sqlx::query("alter table detector_state_away rename to detector_state")
        .execute(&pool)
        .await
        .unwrap();
    // Once the table is back, its ticks succeed: running, and the restarts stop.
    eventually(5, "running again", || async {
        healthz(&api).await["tasks"]["detector"]["state"] == "running"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarts = healthz(&api).await["tasks"]["detector"]["restarts"].clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let h = healthz(&api).await;
    assert_eq!(h["tasks"]["detector"]["restarts"], restarts, "{h}");
    assert_eq!(h["tasks"]["detector"]["state"], "running", "{h}");
    app.shutdown().await.unwrap();
}

fn supervisor(cancel: &CancellationToken, tracker: &TaskTracker) -> Supervisor {
    Supervisor::new(
        cancel.clone(),
        tracker.clone(),
        Metrics::new(),
        system_clock(),
        None,
    )
}

/// A periodic tick that panics ends that run; the loop is restarted after the backoff and
/// ticks on.
#[tokio::test]
async fn a_panicking_tick_restarts_its_loop() {
    let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
    let tasks = supervisor(&cancel, &tracker);
    let ticks = Arc::new(AtomicUsize::new(0));
    {
        let ticks = ticks.clone();
        tasks.periodic(
            Periodic::new("panicky", Duration::from_millis(20)),
            move |_| {
                let n = ticks.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert_ne!(n, 2, "injected panic on the third tick");
                    Ok(())
                }
            },
        );
    }
    eventually(5, "ticking again after the restart", || async {
        ticks.load(Ordering::SeqCst) >= 6
    })
    .await;
    let s = tasks.board().get("panicky").unwrap();
    assert_eq!(s.restarts, 1);
    assert_eq!(s.state, TaskState::Running);
    assert!(s.last_error.unwrap().contains("injected panic"));
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    assert_eq!(
        tasks.board().get("panicky").unwrap().state,
        TaskState::Stopped
    );
}

/// A tick that returns an error ends the run: restarted after a backoff no longer than the
/// period (at least the 1 s minimum), counted, shown; the loop then ticks on.
#[tokio::test]
async fn a_failing_tick_restarts_its_loop() {
    let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
    let metrics = Metrics::new();
    let tasks = Supervisor::new(
        cancel.clone(),
        tracker.clone(),
        metrics.clone(),
        system_clock(),
        None,
    );
    let ticks = Arc::new(AtomicUsize::new(0));
    {
        let ticks = ticks.clone();
        tasks.periodic(
            Periodic::new("flaky", Duration::from_millis(20)),
            move |_| {
                let n = ticks.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        anyhow::bail!("injected tick error {n}");
                    }
                    Ok(())
                }
            },
        );
    }
    eventually(1, "the first failure is visible", || async {
        let s = tasks.board().get("flaky").unwrap();
        s.state == TaskState::Restarting && s.restarts == 1
    })
    .await;
    let started = std::time::Instant::now();
    eventually(5, "ticks go on", || async {
        ticks.load(Ordering::SeqCst) >= 5
    })
    .await;
    // two backoffs, both the 1 s minimum: a 20 ms period caps the doubling
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let s = tasks.board().get("flaky").unwrap();
    assert_eq!((s.restarts, s.state), (2, TaskState::Running));
    assert_eq!(s.last_error.as_deref(), Some("injected tick error 1"));
    let text = metrics.render();
    assert_eq!(
        metric(&text, r#"fleetwatch_task_restarts_total{task="flaky"}"#),
        2.0
    );
    assert!(
        metric(
            &text,
            r#"fleetwatch_task_tick_duration_seconds_count{task="flaky"}"#
        ) >= 5.0
    );
    cancel.cancel();
}

/// Leader-only ticks never run without a leadership service to consult.
#[tokio::test]
async fn leader_only_ticks_need_a_leader() {
    let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
    let tasks = supervisor(&cancel, &tracker);
    let ticks = Arc::new(AtomicUsize::new(0));
    {
        let ticks = ticks.clone();
        tasks.periodic(
            Periodic::new("lead", Duration::from_millis(10)).leader_only(),
            move |_| {
                ticks.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Ok(()))
            },
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ticks.load(Ordering::SeqCst), 0);
    cancel.cancel();
}
