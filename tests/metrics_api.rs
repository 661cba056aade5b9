//! `GET /api/v1/metrics/cloudwatch` through the router (`TestApp`) over a test database whose
//! CloudWatch tables are filled with plain SQL, as the poller would: the metric list, series
//! re-bucketed to a step with absent periods absent, and bad input as `400` problem documents.

mod common;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use common::http::{assert_problem, assert_unauthorized, get, get_ok, get_with, t, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

const TOKEN: &str = "metrics-api-token";
const URI: &str = "/api/v1/metrics/cloudwatch";

async fn metric(pool: &PgPool, name: &str, dims: Value, polled: Option<&str>) -> i64 {
    sqlx::query_scalar(
        "insert into cloudwatch_metrics (namespace, metric_name, dimensions, source,
             first_seen_at, last_listed_at, polled_through)
         values ('AWS/IoT', $1, $2, 'discovered', $3, $3, $4) returning id",
    )
    .bind(name)
    .bind(dims)
    .bind(t("2026-11-27T08:00:00Z"))
    .bind(polled.map(t))
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn sample(pool: &PgPool, id: i64, at: DateTime<Utc>, v: f64) {
    sqlx::query(
        "insert into cloudwatch_samples (metric_id, period_start, period_seconds, value, fetched_at)
         values ($1, $2, 60, $3, $2)",
    )
    .bind(id)
    .bind(at)
    .bind(v)
    .execute(pool)
    .await
    .unwrap();
}

/// The app's clock is at 12:00; two dimension sets of one metric and another metric.
async fn fixture(pool: &PgPool) -> (TestApp, i64, i64, i64) {
    let app = TestApp::new(pool, TOKEN);
    let mqtt = metric(
        pool,
        "Connect.ClientIDThrottle",
        json!({"Protocol": "MQTT"}),
        Some("2026-11-27T11:58:00Z"),
    )
    .await;
    let none = metric(pool, "Connect.ClientIDThrottle", json!({}), None).await;
    let auth = metric(
        pool,
        "Connect.AuthError",
        json!({}),
        Some("2026-11-27T11:58:00Z"),
    )
    .await;
    for (m, v) in [(10, 1.0), (11, 2.0), (12, 4.0), (16, 8.0)] {
        sample(pool, mqtt, t(&format!("2026-11-27T11:{m:02}:00Z")), v).await;
    }
    sample(pool, auth, t("2026-11-27T11:30:00Z"), 3.0).await;
    (app, mqtt, none, auth)
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn lists_the_known_metrics_with_their_newest_sample(pool: PgPool) {
    let (app, mqtt, none, auth) = fixture(&pool).await;
    let body = get_ok(&app, URI).await;
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["id"], mqtt);
    assert_eq!(items[0]["metric"], "Connect.ClientIDThrottle");
    assert_eq!(items[0]["dimensions"], json!({"Protocol": "MQTT"}));
    assert_eq!(items[0]["source"], "discovered");
    assert_eq!(items[0]["first_seen_at"], "2026-11-27T08:00:00Z");
    assert_eq!(items[0]["polled_through"], "2026-11-27T11:58:00Z");
    assert_eq!(items[0]["last_value"], 8.0);
    assert_eq!(items[0]["last_period_start"], "2026-11-27T11:16:00Z");
    assert_eq!(items[1]["id"], none);
    assert!(items[1]["polled_through"].is_null() && items[1]["last_value"].is_null());
    assert_eq!(items[2]["id"], auth);
    assert!(body["next_cursor"].is_null());

    let p1 = get_ok(&app, &format!("{URI}?limit=2")).await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    let cursor = p1["next_cursor"].as_str().unwrap();
    let p2 = get_ok(&app, &format!("{URI}?limit=2&cursor={cursor}")).await;
    assert_eq!(p2["items"][0]["id"], auth);
    assert!(p2["next_cursor"].is_null());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn series_are_rebucketed_and_absent_periods_stay_absent(pool: PgPool) {
    let (app, mqtt, none, _) = fixture(&pool).await;
    // Default span: the last 3 h, 60 s steps; every dimension set of the name.
    let body = get_ok(&app, &format!("{URI}?metric=Connect.ClientIDThrottle")).await;
    assert_eq!(body["from"], "2026-11-27T09:00:00Z");
    assert_eq!(body["to"], "2026-11-27T12:00:00Z");
    assert_eq!(body["step_seconds"], 60);
    assert_eq!(body["truncated"], false);
    let series = body["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0]["metric_id"], mqtt);
    assert_eq!(
        series[0]["points"],
        json!([
            {"t": "2026-11-27T11:10:00Z", "value": 1.0},
            {"t": "2026-11-27T11:11:00Z", "value": 2.0},
            {"t": "2026-11-27T11:12:00Z", "value": 4.0},
            {"t": "2026-11-27T11:16:00Z", "value": 8.0},
        ]),
        "no zeros invented"
    );
    assert_eq!(series[0]["polled_through"], "2026-11-27T11:58:00Z");
    assert_eq!(series[1]["metric_id"], none);
    assert_eq!(series[1]["points"], json!([]));

    // 5 min steps aligned on `from`; one exact dimension set.
    let body = get_ok(
        &app,
        &format!(
            "{URI}?metric=Connect.ClientIDThrottle&dimensions=Protocol:MQTT\
             &from=2026-11-27T11:00:00Z&to=2026-11-27T11:30:00Z&step=5m"
        ),
    )
    .await;
    let series = body["series"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(
        series[0]["points"],
        json!([
            {"t": "2026-11-27T11:10:00Z", "value": 7.0},
            {"t": "2026-11-27T11:15:00Z", "value": 8.0},
        ])
    );
    // `dimensions=` is the set without dimensions.
    let body = get_ok(
        &app,
        &format!("{URI}?metric=Connect.ClientIDThrottle&dimensions="),
    )
    .await;
    assert_eq!(body["series"][0]["metric_id"], none);
    assert_eq!(body["series"].as_array().unwrap().len(), 1);

    // An unknown metric, or one with an unknown dimension set: an empty answer, not an error.
    for q in [
        "metric=Nope",
        "metric=Connect.ClientIDThrottle&dimensions=Protocol:HTTP",
        "metric=%3Cscript%3E%27%3B%20drop%20table%20alerts%3B--",
        "metric=%F0%9F%92%A5&dimensions=%E2%80%AE:x",
    ] {
        let body = get_ok(&app, &format!("{URI}?{q}")).await;
        assert_eq!(body["series"], json!([]), "{q}");
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn bad_input_is_a_clear_400(pool: PgPool) {
    let (app, _, _, _) = fixture(&pool).await;
    let long = "x".repeat(2000);
    let m = "metric=Connect.ClientIDThrottle";
    for (q, says) in [
        (format!("{m}&step=30s"), "step"),
        (format!("{m}&step=90s"), "step"),
        (format!("{m}&step=soon"), "step"),
        (
            format!("{m}&step=1m&from=2026-11-01T00:00:00Z&to=2026-11-27T00:00:00Z"),
            "step",
        ),
        (
            format!("{m}&from=2025-01-01T00:00:00Z&to=2026-11-27T00:00:00Z&step=1h"),
            "days apart",
        ),
        (
            format!("{m}&from=2026-11-27T12:00:00Z&to=2026-11-27T11:00:00Z"),
            "before to",
        ),
        (format!("{m}&from=yesterday"), "RFC 3339"),
        (format!("{m}&to=2026-13-45T99:00:00Z"), "RFC 3339"),
        (format!("{m}&from=-262144-01-01T00:00:00Z"), "from"),
        (format!("{m}&dimensions=Protocol"), "dimensions"),
        (format!("{m}&dimensions=A:1,A:2"), "twice"),
        (format!("{m}&dimensions=a%00b:c"), "NUL"),
        (format!("metric={long}"), "too long"),
        ("metric=a%00b".to_string(), "NUL"),
        ("metric=".to_string(), "metric"),
        ("step=5m".to_string(), "need metric"),
        (format!("{m}&limit=5"), "limit"),
        ("limit=0".to_string(), "limit"),
        ("cursor=garbage!".to_string(), "cursor"),
        ("limit=abc".to_string(), "limit"),
    ] {
        let r = get(&app, &format!("{URI}?{q}")).await;
        assert_problem(&r, 400, &q[..q.len().min(80)]);
        let detail = r.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(says), "{q:.80}: {detail}");
    }
    // The largest span and the finest step still allowed.
    let ok = get(
        &app,
        &format!("{URI}?{m}&from=2026-10-27T12:00:00Z&to=2026-11-27T12:00:00Z&step=31m"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let ok = get(
        &app,
        &format!("{URI}?{m}&from=2026-11-26T12:00:00Z&to=2026-11-27T12:00:00Z&step=1m"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "1440 points: {}", ok.text());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn needs_a_token_and_bounds_the_series_count(pool: PgPool) {
    let app = TestApp::new(&pool, TOKEN);
    assert_unauthorized(&get_with(&app, URI, "wrong").await, "bad token");
    for i in 0..105 {
        metric(
            &pool,
            "PublishIn.Throttle",
            json!({"RuleName": format!("r{i}")}),
            None,
        )
        .await;
    }
    let body = get_ok(&app, &format!("{URI}?metric=PublishIn.Throttle")).await;
    assert_eq!(body["series"].as_array().unwrap().len(), 100);
    assert_eq!(body["truncated"], true);
}

/// The whole service on real sockets, AWS off: the `metric_rules` task still runs (a simulator
/// may feed the tables), its alert shows in the alerts API, and the series answers over HTTP.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn served_with_aws_off_the_rules_run_and_the_series_answers(pool: PgPool) {
    let broker = common::Broker::start().await;
    let mut cfg = common::config(&broker);
    cfg.cloudwatch.poll = fleetwatch::config::HumanDuration(std::time::Duration::from_secs(1));
    let now = Utc::now();
    let period = fleetwatch::domain::metric_rule::floor_period(now);
    let m = metric(&pool, "Connect.ClientIDThrottle", json!({}), None).await;
    sqlx::query("update cloudwatch_metrics set polled_through = $2 where id = $1")
        .bind(m)
        .bind(now)
        .execute(&pool)
        .await
        .unwrap();
    sample(&pool, m, period - chrono::TimeDelta::minutes(2), 60.0).await;
    let app = fleetwatch::app::App::build_with_pool(cfg, pool, common::system_clock())
        .await
        .unwrap();
    let api = common::api(&format!("http://{}", app.addr));
    let mut alert = Value::Null;
    for _ in 0..100 {
        let (s, body) = api
            .get("/api/v1/alerts?kind=metric_threshold&status=firing")
            .await;
        assert_eq!(s, 200, "{body}");
        if let Some(a) = body["items"].as_array().and_then(|i| i.first()) {
            alert = a.clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(alert["details"]["value"], 60.0, "{alert}");
    assert!(alert["device_id"].is_null());
    let (s, h) = api.get("/healthz").await;
    assert_eq!(s, 200);
    assert!(h["tasks"].to_string().contains("metric_rules"), "{h}");
    let (s, body) = api
        .get("/api/v1/metrics/cloudwatch?metric=Connect.ClientIDThrottle&step=5m")
        .await;
    assert_eq!(s, 200, "{body}");
    let points = body["series"][0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{body}");
    assert_eq!(points[0]["value"], 60.0);
    let (s, body) = api.get("/api/v1/metrics/cloudwatch?step=0").await;
    assert_eq!(s, 400, "{body}");
    app.shutdown().await.unwrap();
}
