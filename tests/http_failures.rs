//! Failure answers at the HTTP edge, through the router as served (`http::edge`): a database
//! outage answers a prompt `503` with `Retry-After` (not a `500` after the pool's 5 s acquire
//! timeout), and a body over `http.max_body_bytes` gets `413` on every JSON-body route.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use fleetwatch::http::db_gate::DbGate;
use fleetwatch::http::server::{serve, Limits};
use fleetwatch::http::{edge, router};
use fleetwatch::metrics::Metrics;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const TOKEN: &str = "tok";

/// Serve `pool`'s API on a real socket, its gate probing what the pool connects to.
async fn start(pool: PgPool, cancel: &CancellationToken) -> String {
    let gate = DbGate::new();
    tokio::spawn(
        gate.clone()
            .run((*pool.connect_options()).clone(), cancel.clone()),
    );
    let app = edge(router(common::http::state(&pool, TOKEN)), 64 * 1024, gate);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        app,
        Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(1),
        },
        Metrics::new(),
        cancel.clone(),
    ));
    format!("http://{addr}")
}

#[tokio::test]
async fn a_database_outage_answers_a_prompt_503_with_retry_after() {
    // A pool to a port nobody listens on, with the production acquire timeout.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let opts = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("fleetwatch")
        .database("fleetwatch");
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(opts);
    let cancel = CancellationToken::new();
    let base = start(pool, &cancel).await;
    let http = reqwest::Client::new();

    let get = |path: &'static str| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let started = Instant::now();
            let r = http.get(url).bearer_auth(TOKEN).send().await.unwrap();
            (started.elapsed(), r)
        }
    };
    // the first request may be waiting when the probe notices; well under 5 s either way
    let (took, r) = get("/api/v1/devices").await;
    assert_eq!(r.status(), 503, "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body = r.text().await.unwrap();
    assert!(body.contains("\"status\":503"), "{body}");
    assert!(
        !body.contains(&port.to_string()),
        "no driver detail: {body}"
    );
    assert!(!body.to_lowercase().contains("refused"), "{body}");

    // once known, every API request is answered at once, writes too
    for path in [
        "/api/v1/alerts",
        "/api/v1/devices/x",
        "/api/v1/fleet/summary",
    ] {
        let (took, r) = get(path).await;
        assert_eq!(r.status(), 503, "{path}");
        assert!(took < Duration::from_millis(300), "{path}: {took:?}");
    }
    let started = Instant::now();
    let r = http
        .post(format!("{base}/api/v1/alerts/1/ack"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"by": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(300));

    // the process is up, but not ready
    assert_eq!(get("/healthz").await.1.status(), 200);
    assert_eq!(get("/readyz").await.1.status(), 503);
    cancel.cancel();
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_reachable_database_is_served_as_usual(pool: PgPool) {
    let cancel = CancellationToken::new();
    let base = start(pool, &cancel).await;
    // past the first probes
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = reqwest::Client::new()
        .get(format!("{base}/api/v1/devices"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cancel.cancel();
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_body_over_the_limit_is_413_on_every_json_route(pool: PgPool) {
    let app = edge(
        router(common::http::state(&pool, TOKEN)),
        1024,
        DbGate::new(),
    );
    let big = serde_json::json!({
        "by": "a".repeat(2000), "note": "n",
        "ref": "OPS-1", "kind": "flapping", "ends_at": "2099-01-01T00:00:00Z", "comment": "c"
    })
    .to_string();
    let routes = [
        (Method::POST, "/api/v1/alerts/1/ack"),
        (Method::PUT, "/api/v1/alerts/1/ticket"),
        (Method::POST, "/api/v1/silences"),
    ];
    for (method, path) in routes {
        let req = |body: String| {
            Request::builder()
                .method(method.clone())
                .uri(path)
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap()
        };
        let r = app.clone().oneshot(req(big.clone())).await.unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "{method} {path}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(p["status"], 413, "{p}");
        // a small body still reaches the handler: refused as incomplete (422), or, for an ack,
        // whose fields are all optional, answered for the alert that does not exist (404)
        let r = app.clone().oneshot(req("{}".into())).await.unwrap();
        assert!(
            [StatusCode::UNPROCESSABLE_ENTITY, StatusCode::NOT_FOUND].contains(&r.status()),
            "{method} {path}: {}",
            r.status()
        );
    }
}
