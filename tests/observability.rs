//! Observability: request spans named by the matched route, and the detector, alert, delivery
//! and silence series on `/metrics` existing from the start and moving when things happen.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::*;
use fleetwatch::app::App;
use fleetwatch::config::{HumanDuration, WebhookConfig};
use fleetwatch::http::{router, AppState};
use sqlx::PgPool;
use tower::ServiceExt;

/// A request's span carries the route that matched, not the raw path: ids in paths must not
/// become span names.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn request_spans_are_named_by_the_matched_route(pool: PgPool) {
    let logs = fleetwatch::logging::Captured::default();
    let _guard = logs.install();
    let mut cfg = fleetwatch::config::Config::default();
    cfg.api.token = Some(fleetwatch::config::Secret::new(TOKEN));
    let app = router(AppState::for_tests(pool, cfg, system_clock()));
    for path in [
        "/api/v1/devices/screen-42",
        "/api/v1/devices/screen-42/events",
    ] {
        let r = app
            .clone()
            .oneshot(
                Request::get(path)
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let text = logs.text();
    assert!(
        text.contains("http.request{otel.name=GET /api/v1/devices/{id} method=GET route=/api/v1/devices/{id}}"),
        "{text}"
    );
    assert!(
        text.contains("route=/api/v1/devices/{id}/events}"),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("http.request{") && l.contains("screen-42")),
        "{text}"
    );
}

/// A receiver that accepts every webhook.
async fn receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::post(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/")
}

/// The new series are there from the start (at zero) and move: a device that goes silent opens
/// a `heartbeat_gap` (alerts opened by kind, devices due), its webhook is delivered (deliveries
/// by outcome, with latency), a silence is counted, and every detector tick is timed.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_new_series_exist_and_move(pool: PgPool) {
    let broker = Broker::start().await;
    let mut cfg = config(&broker);
    cfg.detector.tick = HumanDuration(Duration::from_millis(200));
    cfg.detector.canary_interval = HumanDuration(Duration::from_millis(200));
    cfg.detector.expected_interval = HumanDuration(Duration::from_secs(1));
    cfg.detector.grace = HumanDuration(Duration::from_millis(500));
    cfg.webhooks = vec![WebhookConfig {
        name: Some("ops".into()),
        url: receiver().await,
        group_wait: HumanDuration(Duration::ZERO),
        ..WebhookConfig::default()
    }];
    let app = App::build_with_pool(cfg, pool.clone(), system_clock())
        .await
        .unwrap();
    let api = api(&format!("http://{}", app.addr));
    let text = api.text("/metrics").await;
    for series in [
        r#"fleetwatch_alerts_opened_total{kind="heartbeat_gap"} 0"#,
        r#"fleetwatch_alerts_opened_total{kind="ingest_down"} 0"#,
        r#"fleetwatch_webhook_deliveries_total{outcome="delivered"} 0"#,
        r#"fleetwatch_webhook_deliveries_total{outcome="dead"} 0"#,
        "fleetwatch_silences_active 0",
        "fleetwatch_detector_devices_due_total 0",
        r#"fleetwatch_task_restarts_total{task="detector"} 0"#,
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }

    eventually(10, "mqtt connected", || async {
        app.state.mqtt.iter().all(|c| c.snapshot().connected)
    })
    .await;
    let mut p = Publisher::connect(broker.port, "beats").await;
    p.publish("dt/screen-1/impressions", b"{}".to_vec()).await;
    p.flush().await;
    // screen-1 then stays silent past interval + grace
    eventually(15, "heartbeat_gap opened and delivered", || async {
        let text = api.text("/metrics").await;
        metric(
            &text,
            r#"fleetwatch_alerts_opened_total{kind="heartbeat_gap"}"#,
        ) == 1.0
            && metric(
                &text,
                r#"fleetwatch_webhook_deliveries_total{outcome="delivered"}"#,
            ) >= 1.0
            && metric(
                &text,
                r#"fleetwatch_webhook_delivery_duration_seconds_count{outcome="delivered"}"#,
            ) >= 1.0
    })
    .await;
    let text = api.text("/metrics").await;
    assert!(
        metric(
            &text,
            r#"fleetwatch_task_tick_duration_seconds_count{task="detector"}"#
        ) >= 3.0,
        "{text}"
    );

    sqlx::query(
        "insert into silences (device_id, starts_at, ends_at, created_by, comment, created_at)
         values ('screen-1', now() - interval '1 minute', now() + interval '1 hour', 't', 't', now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    eventually(5, "the silence is counted", || async {
        metric(&api.text("/metrics").await, "fleetwatch_silences_active") == 1.0
    })
    .await;
    p.flush().await;
    app.shutdown().await.unwrap();
}

/// The detector's devices-due counter counts the devices past their deadline it evaluated.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn devices_due_moves(pool: PgPool) {
    let broker = Broker::start().await;
    let mut cfg = config(&broker);
    cfg.detector.tick = HumanDuration(Duration::from_millis(200));
    cfg.detector.canary_interval = HumanDuration(Duration::from_millis(200));
    let app = App::build_with_pool(cfg, pool.clone(), system_clock())
        .await
        .unwrap();
    let api = api(&format!("http://{}", app.addr));
    eventually(10, "mqtt connected", || async {
        app.state.mqtt.iter().all(|c| c.snapshot().connected)
    })
    .await;
    // Three devices whose deadline has passed, seen at the next healthy tick.
    let mut p = Publisher::connect(broker.port, "beats").await;
    for d in ["a", "b", "c"] {
        p.publish(&format!("dt/{d}/impressions"), b"{}".to_vec())
            .await;
    }
    p.flush().await;
    eventually(10, "devices created", || async {
        sqlx::query_scalar::<_, i64>("select count(*) from devices")
            .fetch_one(&pool)
            .await
            .unwrap()
            == 3
    })
    .await;
    let before = metric(
        &api.text("/metrics").await,
        "fleetwatch_detector_devices_due_total",
    );
    sqlx::query("update devices set deadline_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    eventually(10, "three more devices due", || async {
        metric(
            &api.text("/metrics").await,
            "fleetwatch_detector_devices_due_total",
        ) >= before + 3.0
    })
    .await;
    app.shutdown().await.unwrap();
}
