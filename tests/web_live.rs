//! Live updates end to end: the triggers of migration 20261204001000 notify
//! `fleetwatch_live`, the replica's listener (`web::live::listen`) turns them into changes on
//! its hub, and `/live` streams them to a signed-in browser as server-sent events — and what
//! must *not* wake browsers (the counts fold, the detector's gap bookkeeping) does not.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::http::TestApp;
use common::web::Staff;
use fleetwatch::http::web::live::{self, Change, Topic};
use futures_util::StreamExt;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Start the listener on the app's hub; returns a receiver and the token that stops it.
async fn listening(
    app: &TestApp,
    pool: &PgPool,
) -> (broadcast::Receiver<Change>, CancellationToken) {
    let hub = app.state.live.clone();
    let mut rx = hub.subscribe();
    let cancel = CancellationToken::new();
    tokio::spawn(live::listen(hub.clone(), pool.clone(), cancel.clone()));
    // The listener announces every topic once it listens: from then on nothing is missed.
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the listener starts")
        .unwrap();
    assert_eq!(first.topics, live::Topics::all());
    (rx, cancel)
}

/// The next change within `secs`, if any.
async fn next(rx: &mut broadcast::Receiver<Change>, secs: f64) -> Option<Change> {
    tokio::time::timeout(Duration::from_secs_f64(secs), rx.recv())
        .await
        .ok()
        .map(|r| r.unwrap())
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql).execute(pool).await.unwrap();
}

/// Read the stream into `text` until it holds `needle`.
async fn read_until<S>(body: &mut S, text: &mut String, needle: &str, secs: u64)
where
    S: futures_util::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(secs), async {
        while !text.contains(needle) {
            let chunk = body.next().await.expect("stream open").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} within {secs}s in {text:?}"));
}

const ALERT: &str = "insert into alerts (kind, subject, device_id, severity, status, opened_at, summary, updated_at)
     values ('heartbeat_gap', 'd1', 'd1', 'error', 'firing', now(), 'x', now())";

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn writes_are_announced_by_topic_with_the_firing_count(pool: PgPool) {
    let app = TestApp::new(&pool, "tok");
    let (mut rx, cancel) = listening(&app, &pool).await;

    exec(&pool, ALERT).await;
    let c = next(&mut rx, 5.0)
        .await
        .expect("an alert insert is announced");
    assert!(c.topics.contains(Topic::Alerts), "{c:?}");
    assert_eq!(c.firing, 1);

    exec(
        &pool,
        "insert into devices (id, state) values ('d1', 'healthy')",
    )
    .await;
    let c = next(&mut rx, 5.0).await.expect("a new device is announced");
    assert_eq!(c.topics.names(), vec!["devices"]);

    // ingest's bookkeeping on devices (last seen) changes no state: nothing
    exec(
        &pool,
        "update devices set last_impression_at = now() where id = 'd1'",
    )
    .await;
    assert_eq!(
        next(&mut rx, 1.0).await,
        None,
        "telemetry columns must not wake pages"
    );
    // a state change is announced
    exec(&pool, "update devices set state = 'late' where id = 'd1'").await;
    assert!(next(&mut rx, 5.0)
        .await
        .unwrap()
        .topics
        .contains(Topic::Devices));

    // the detector's gap memory on a firing alert: nothing; an acknowledgement: alerts
    exec(
        &pool,
        "update alerts set gap_class = 'silent', updated_at = now()",
    )
    .await;
    assert_eq!(
        next(&mut rx, 1.0).await,
        None,
        "gap bookkeeping must not wake pages"
    );
    exec(
        &pool,
        "update alerts set acknowledged_by = 'user:a', acknowledged_at = now()",
    )
    .await;
    assert!(next(&mut rx, 5.0)
        .await
        .unwrap()
        .topics
        .contains(Topic::Alerts));

    // the counts fold rewrites device_state_counts without changing a count: nothing
    let mut conn = pool.acquire().await.unwrap();
    fleetwatch::db::fleet_counts::fold(&mut conn).await.unwrap();
    assert_eq!(
        next(&mut rx, 1.0).await,
        None,
        "the fold must not wake pages"
    );

    // many statements inside the gather window: one announcement
    exec(&pool, "insert into devices (id, state) values ('d2', 'healthy'); insert into devices (id, state) values ('d3', 'healthy')").await;
    let c = next(&mut rx, 5.0).await.unwrap();
    assert!(c.topics.contains(Topic::Devices));
    assert_eq!(next(&mut rx, 0.6).await, None, "one burst, one change");

    cancel.cancel();
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_signed_in_tab_gets_a_stream_that_outlives_the_request_timeout(pool: PgPool) {
    let app = TestApp::build(
        &pool,
        common::http::t(common::http::NOW),
        Some("tok"),
        |c| {
            c.http.request_timeout = fleetwatch::config::HumanDuration(Duration::from_secs(1));
        },
    );
    let staff = Staff::new(&app, &pool, "alice", "viewer").await;
    let (_rx, cancel) = listening(&app, &pool).await;

    // not signed in: refused
    let anon = common::web::send(&app, axum::http::Method::GET, "/live", &[], None).await;
    assert_eq!(
        anon.status, 303,
        "a page request without a session goes to the login form"
    );

    let req = Request::get("/live")
        .header("cookie", format!("fleetwatch_session={}", staff.token))
        .body(Body::empty())
        .unwrap();
    let res = app.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body().into_data_stream();
    let mut text = String::new();
    read_until(&mut body, &mut text, "event: hello", 5).await;
    assert!(text.contains(r#"data: {"topics":[],"firing":0}"#), "{text}");
    // past the request timeout, the stream is still open and carries changes
    tokio::time::sleep(Duration::from_millis(1500)).await;
    exec(&pool, ALERT).await;
    read_until(&mut body, &mut text, "event: change", 5).await;
    assert!(text.contains(r#""firing":1"#), "{text}");

    // shutdown ends the stream
    cancel.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(c) = body.next().await {
            c.unwrap();
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ends when the listener stops");
}

/// The overview's shared read (`web::overview::Cache`, issue 12): while the listener listens,
/// pages within a second of each other share one read — but a write is never hidden behind
/// it: once its notification has arrived, the next page reads afresh, before the announcement.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_overview_is_shared_until_a_change_arrives(pool: PgPool) {
    exec(
        &pool,
        "insert into devices (id, state) values ('d1', 'healthy')",
    )
    .await;
    let app = TestApp::new(&pool, "tok");
    let staff = Staff::new(&app, &pool, "alice", "viewer").await;
    let cell = |n: i64| format!(r#"<a href="/devices?state=silent">{n}</a>"#);

    // No listener: nothing is shared, a write shows at once.
    assert!(staff.html("/").await.contains(&cell(0)));
    exec(&pool, "update devices set state = 'silent' where id = 'd1'").await;
    assert!(staff.html("/").await.contains(&cell(1)));
    exec(
        &pool,
        "update devices set state = 'healthy' where id = 'd1'",
    )
    .await;

    let (mut rx, cancel) = listening(&app, &pool).await;
    let before = staff.html("/").await;
    assert!(before.contains(&cell(0)), "{before}");
    // A write that notifies nothing (the trigger on the counts table announces inserts; an
    // update behind its back is invisible to the listener): the page within the second is the
    // shared read, not a new one.
    exec(
        &pool,
        "update device_state_counts set n = n + 5 where state = 'healthy'",
    )
    .await;
    let shared = staff.html("/").await;
    assert!(
        shared.contains(r#"<a href="/devices?state=healthy">1</a>"#),
        "{shared}"
    );

    // A device goes silent: its notification invalidates the shared read, and the page shows
    // the change as soon as the notification is in (at most the gather time later).
    exec(&pool, "update devices set state = 'silent' where id = 'd1'").await;
    let fresh = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let html = staff.html("/").await;
            if html.contains(&cell(1)) {
                return html;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the change shows within the gather time");
    assert!(fresh.contains(&cell(1)));
    let change = next(&mut rx, 3.0).await.expect("announced");
    assert!(change.topics.contains(Topic::Devices));
    cancel.cancel();
}
