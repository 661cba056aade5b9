//! `GET /api/v1/webhooks/deliveries` and `POST /api/v1/webhooks/deliveries/{id}/redrive`.

mod common;

use axum::http::StatusCode;
use chrono::{DateTime, TimeDelta, Utc};
use common::http::{send, t, TestApp, NOW};
use serde_json::Value;
use sqlx::PgPool;

const TOKEN: &str = "deliveries-token";

fn now() -> DateTime<Utc> {
    t(NOW)
}

/// (status, content type, JSON body or null) of a request with the bootstrap token.
async fn call(app: &TestApp, method: &str, uri: &str) -> (StatusCode, String, Value) {
    let method = method.parse().unwrap();
    let r = send(app, method, uri, app.auth(), None, Vec::new()).await;
    let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, r.content_type().to_string(), body)
}

/// An alert and three notifications of it: delivered, dead, pending.
async fn seed(pool: &PgPool) -> (i64, i64, i64) {
    let mut tx = pool.begin().await.unwrap();
    let spec = fleetwatch::alerts::AlertSpec {
        kind: fleetwatch::domain::alert::Kind::HeartbeatGap,
        subject: "d1".into(),
        device_id: Some("d1".into()),
        group_id: None,
        severity: fleetwatch::domain::alert::Severity::Error,
        summary: "d1 silent".into(),
        details: serde_json::json!({}),
    };
    let alert = fleetwatch::alerts::lifecycle::fire(&mut tx, &spec, now(), TimeDelta::minutes(30))
        .await
        .unwrap()
        .id();
    tx.commit().await.unwrap();
    let mut ids = Vec::new();
    for (status, event) in [
        ("delivered", "alert.firing"),
        ("dead", "alert.resolved"),
        ("pending", "alert.reminder"),
    ] {
        let id: i64 = sqlx::query_scalar(
            r#"insert into notifications (alert_id, endpoint, event, body, status, attempts,
                   next_attempt_at, created_at, retry_since, last_error)
               values ($1, 'pager', $2, '{}', $3, 3, $4, $4, $4, 'HTTP 500')
               returning id"#,
        )
        .bind(alert)
        .bind(event)
        .bind(status)
        .bind(now() - TimeDelta::hours(30))
        .fetch_one(pool)
        .await
        .unwrap();
        ids.push(id);
    }
    (ids[0], ids[1], ids[2])
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn deliveries_are_listed_filtered_and_paged(pool: PgPool) {
    let (delivered, dead, pending) = seed(&pool).await;
    let app = TestApp::new(&pool, TOKEN);
    let (s, _, all) = call(&app, "GET", "/api/v1/webhooks/deliveries").await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<i64> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [pending, dead, delivered], "newest first");
    assert!(all["items"][0]["delivery_id"].is_string());
    let (_, _, dead_only) = call(&app, "GET", "/api/v1/webhooks/deliveries?status=dead").await;
    assert_eq!(dead_only["items"].as_array().unwrap().len(), 1);
    assert_eq!(dead_only["items"][0]["id"], dead);
    assert_eq!(dead_only["items"][0]["last_error"], "HTTP 500");
    // paging
    let (_, _, p1) = call(&app, "GET", "/api/v1/webhooks/deliveries?limit=2").await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, _, p2) = call(
        &app,
        "GET",
        &format!("/api/v1/webhooks/deliveries?limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(p2["items"][0]["id"], delivered);
    assert!(p2["next_cursor"].is_null());
    for bad in ["?status=lost", "?limit=0", "?cursor=%%%", "?cursor=YWJj"] {
        let (s, ct, _) = call(&app, "GET", &format!("/api/v1/webhooks/deliveries{bad}")).await;
        assert_eq!(
            (s, ct.as_str()),
            (StatusCode::BAD_REQUEST, "application/problem+json"),
            "{bad}"
        );
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_dead_delivery_is_redriven_with_its_delivery_id_and_others_conflict(pool: PgPool) {
    let (delivered, dead, _) = seed(&pool).await;
    let app = TestApp::new(&pool, TOKEN);
    let before: String = sqlx::query_scalar("select delivery_id from notifications where id = $1")
        .bind(dead)
        .fetch_one(&pool)
        .await
        .unwrap();
    let (s, _, d) = call(
        &app,
        "POST",
        &format!("/api/v1/webhooks/deliveries/{dead}/redrive"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["status"], "pending");
    assert_eq!(d["delivery_id"], before.as_str(), "same idempotency key");
    // who did it is kept: the bootstrap token's principal
    assert!(
        d["redriven_by"]
            .as_str()
            .is_some_and(|b| b.starts_with("token:")),
        "{d}"
    );
    assert_eq!(d["redriven_at"], "2026-11-27T12:00:00Z");
    assert_eq!(
        d["next_attempt_at"], "2026-11-27T12:00:00Z",
        "due now, on the injected clock"
    );
    // not dead (any more): 409
    for id in [dead, delivered] {
        let (s, ct, _) = call(
            &app,
            "POST",
            &format!("/api/v1/webhooks/deliveries/{id}/redrive"),
        )
        .await;
        assert_eq!(
            (s, ct.as_str()),
            (StatusCode::CONFLICT, "application/problem+json")
        );
    }
    for id in ["999999", "0", "-3", "x"] {
        let (s, _, _) = call(
            &app,
            "POST",
            &format!("/api/v1/webhooks/deliveries/{id}/redrive"),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{id}");
    }
}
