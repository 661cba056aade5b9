//! Retiring devices (issue 8 part 11) through the real router, real Postgres, the real ingest
//! entry point and the real detector on a manual clock: who and when in the device's history,
//! idempotence, open alerts resolved, no evaluation and no alerts while retired, history and
//! data still recorded, and a fresh clock on return.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use fleetwatch::clock::{Clock, ManualClock};
use fleetwatch::config::Config;
use fleetwatch::detect::{Detector, Settings};
use fleetwatch::http::{router, AppState};
use fleetwatch::ingest::health::IngestStatus;
use fleetwatch::ingest::{accept, telemetry, DeviceRegistry, IngestContext};
use fleetwatch::metrics::Metrics;
use fleetwatch::tokens::{self, Scope};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;

const TOKEN: &str = "retirement-bootstrap-token";

struct Env {
    pool: PgPool,
    clock: Arc<ManualClock>,
    ingest: IngestContext,
    detector: Detector,
    app: axum::Router,
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-27T09:00:00Z")
        .unwrap()
        .to_utc()
}

fn min(n: i64) -> TimeDelta {
    TimeDelta::minutes(n)
}

impl Env {
    async fn new(pool: PgPool) -> Env {
        let cfg = Config::default();
        let clock = ManualClock::new(t0());
        let ingest = IngestContext::new(
            &cfg,
            pool.clone(),
            Metrics::new(),
            clock.clone(),
            Arc::new(DeviceRegistry::load(&pool, 1000).await.unwrap()),
        );
        let detector = Detector::new(pool.clone(), Settings::from_config(&cfg), min(1));
        let mut api_cfg = cfg.clone();
        api_cfg.api.token = Some(fleetwatch::config::Secret::new(TOKEN.to_string()));
        let app = router(AppState::for_tests(pool.clone(), api_cfg, clock.clone()));
        Env {
            pool,
            clock,
            ingest,
            detector,
            app,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn call(&self, token: &str, method: &str, uri: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let r = self.app.clone().oneshot(req).await.unwrap();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn beat(&self, device: &str) {
        let payload = format!(r#"{{"timestamp":{}}}"#, ms(self.now()));
        accept(
            &self.ingest,
            &format!("dt/{device}/impressions"),
            payload.as_bytes(),
            self.now(),
        )
        .await;
        telemetry::flush(&self.ingest).await.unwrap();
    }

    async fn presence(&self, payload: String, kind: &str, device: &str) {
        accept(
            &self.ingest,
            &presence_topic(kind, device),
            payload.as_bytes(),
            self.now(),
        )
        .await;
    }

    async fn tick(&self) {
        self.detector
            .tick(&IngestStatus::Healthy, self.now())
            .await
            .unwrap();
    }

    /// (kind, status) of every alert.
    async fn alerts(&self) -> Vec<(String, String)> {
        sqlx::query_as("select kind, status from alerts order by id")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_retired_device_never_alerts_keeps_its_history_and_returns_with_a_fresh_clock(
    pool: PgPool,
) {
    let env = Env::new(pool.clone()).await;
    env.tick().await;
    env.presence(
        connected("a", ms(env.now()), "s1", 1, "198.51.100.1"),
        "connected",
        "a",
    )
    .await;
    env.beat("a").await;
    env.tick().await;
    // the player dies: a heartbeat gap opens
    for _ in 0..12 {
        env.clock.advance(min(1));
        env.tick().await;
    }
    assert_eq!(
        env.alerts().await,
        [("heartbeat_gap".to_string(), "firing".to_string())]
    );

    // a stored token with write scope retires it
    let bot = tokens::create(&pool, "ops-bot", &[Scope::Write], env.now())
        .await
        .unwrap();
    let retired_at = env.now();
    let (status, dev) = env
        .call(bot.token.expose(), "POST", "/api/v1/devices/a/retire")
        .await;
    assert_eq!(status, StatusCode::OK, "{dev}");
    assert_eq!(dev["state"], "retired");
    assert_eq!(
        dev["retired_at"],
        retired_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    // its open alert resolved, saying why, in the alert's trail
    assert_eq!(
        env.alerts().await,
        [("heartbeat_gap".to_string(), "resolved".to_string())]
    );
    let (resolution,): (Option<String>,) =
        sqlx::query_as("select details->>'resolution' from alerts where kind = 'heartbeat_gap'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(resolution.as_deref(), Some("device_retired"));

    // idempotent: 200, nothing new recorded
    env.clock.advance(min(1));
    let (status, dev) = env.call(TOKEN, "POST", "/api/v1/devices/a/retire").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dev["state"], "retired");
    let (_, history) = env.call(TOKEN, "GET", "/api/v1/devices/a/history").await;
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{history}");
    assert_eq!(items[0]["type"], "retired");
    assert_eq!(items[0]["actor"], format!("token:{}:ops-bot", bot.id));

    // while retired: a flapping modem and silence alert nothing, but data is still stored
    for v in 2..30 {
        env.clock.advance(min(1));
        env.presence(
            disconnected(
                "a",
                ms(env.now()),
                &format!("s{}", v - 1),
                v - 1,
                "MQTT_KEEP_ALIVE_TIMEOUT",
            ),
            "disconnected",
            "a",
        )
        .await;
        env.presence(
            connected("a", ms(env.now()), &format!("s{v}"), v, "198.51.100.1"),
            "connected",
            "a",
        )
        .await;
        env.tick().await;
    }
    env.clock.advance(min(30));
    env.tick().await;
    assert_eq!(env.alerts().await.len(), 1, "{:?}", env.alerts().await);
    let last_data = env.now();
    env.beat("a").await;
    let (status, dev) = env.call(TOKEN, "GET", "/api/v1/devices/a").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dev["state"], "retired");
    assert_eq!(
        dev["last_impression_at"],
        last_data.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    let (_, events) = env
        .call(TOKEN, "GET", "/api/v1/devices/a/events?limit=1000")
        .await;
    assert!(events["items"].as_array().unwrap().len() >= 56, "{events}");

    // back in service, long after its last data: a fresh clock, no instant alert
    env.clock.advance(min(30));
    let (status, dev) = env.call(TOKEN, "POST", "/api/v1/devices/a/unretire").await;
    assert_eq!(status, StatusCode::OK, "{dev}");
    assert_eq!(dev["state"], "healthy");
    assert_eq!(dev["retired_at"], Value::Null);
    let back = env.now();
    for _ in 0..9 {
        env.clock.advance(min(1));
        env.tick().await;
    }
    assert_eq!(env.alerts().await.len(), 1, "fresh clock: nothing due yet");
    for _ in 0..3 {
        env.clock.advance(min(1));
        env.tick().await;
    }
    assert_eq!(
        env.alerts().await,
        [
            ("heartbeat_gap".to_string(), "resolved".to_string()),
            ("heartbeat_gap".to_string(), "firing".to_string())
        ],
        "evaluated again: silent since {back} + interval + grace"
    );
    let (_, history) = env.call(TOKEN, "GET", "/api/v1/devices/a/history").await;
    let types: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["retired", "unretired"]);
    assert_eq!(history["items"][1]["actor"], "token:0:bootstrap");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn retirement_needs_write_scope_and_a_known_device(pool: PgPool) {
    let env = Env::new(pool.clone()).await;
    sqlx::query("insert into devices (id) values ('b')")
        .execute(&pool)
        .await
        .unwrap();
    let reader = tokens::create(&pool, "reader", &[Scope::Read], env.now())
        .await
        .unwrap();
    for uri in ["/api/v1/devices/b/retire", "/api/v1/devices/b/unretire"] {
        let (status, body) = env.call(reader.token.expose(), "POST", uri).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {body}");
    }
    for (method, uri) in [
        ("POST", "/api/v1/devices/nope/retire"),
        ("POST", "/api/v1/devices/nope/unretire"),
        ("GET", "/api/v1/devices/nope/history"),
    ] {
        let (status, body) = env.call(TOKEN, method, uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
        assert_eq!(body["status"], 404);
    }
    // unretiring an active device changes nothing and records nothing
    let (status, dev) = env.call(TOKEN, "POST", "/api/v1/devices/b/unretire").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dev["state"], "never_seen");
    let (_, history) = env.call(TOKEN, "GET", "/api/v1/devices/b/history").await;
    assert_eq!(history["items"], serde_json::json!([]));
    // the API filter finds retired devices
    env.call(TOKEN, "POST", "/api/v1/devices/b/retire").await;
    let (_, list) = env
        .call(TOKEN, "GET", "/api/v1/devices?state=retired")
        .await;
    assert_eq!(list["items"][0]["id"], "b");
}
