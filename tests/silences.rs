//! Silences (maintenance windows): the API (`GET|POST /api/v1/silences`,
//! `DELETE /api/v1/silences/{id}`, validation as 422 problem documents, 404/409, auth), and
//! what they do to notifications, with the webhook worker on an injected clock and a real HTTP
//! receiver: nothing is sent while silenced; afterwards each endpoint is brought up to date
//! once (a firing if still firing and never sent, a resolution if it was sent firing and has
//! resolved since).

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::http::{bearer, send, TestApp};
use fleetwatch::alerts::lifecycle::{self, AlertSpec};
use fleetwatch::alerts::outbox;
use fleetwatch::alerts::webhook::{Outcome, Worker};
use fleetwatch::clock::{Clock, ManualClock};
use fleetwatch::config::{HumanDuration, Secret, WebhookConfig};
use fleetwatch::domain::actor::Actor;
use fleetwatch::domain::alert::Kind;
use fleetwatch::tokens::{self, Scope};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::net::TcpListener;

const TOKEN: &str = "silences-bootstrap-token";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ---------------------------------------------------------------------------------------------
// A receiver that accepts everything and remembers it

type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

async fn hook(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> &'static str {
    seen.lock()
        .unwrap()
        .push((headers, serde_json::from_slice(&body).unwrap()));
    "ok"
}

struct Receiver {
    port: u16,
    seen: Seen,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Seen = Arc::default();
        let app = axum::Router::new()
            .fallback(axum::routing::post(hook))
            .with_state(seen.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// (event, alert id) of everything received, in order.
    fn events(&self) -> Vec<(String, i64)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| {
                (
                    b["event"].as_str().unwrap().to_string(),
                    b["alert"]["id"].as_i64().unwrap(),
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The service side: the API and the worker on one manual clock

struct Env {
    pool: PgPool,
    app: TestApp,
    clock: Arc<ManualClock>,
    worker: Worker,
    rx: Receiver,
}

struct Resp {
    status: StatusCode,
    content_type: String,
    json: Value,
}

impl Env {
    async fn new(pool: PgPool) -> Env {
        Self::with(pool, |_| {}).await
    }

    async fn with(pool: PgPool, tweak: impl FnOnce(&mut WebhookConfig)) -> Env {
        fleetwatch::logging::init_for_tests();
        let rx = Receiver::start().await;
        let mut hook = WebhookConfig {
            name: Some("ops".into()),
            url: rx.url(),
            secret: Some(Secret::new("whsec")),
            timeout: HumanDuration(std::time::Duration::from_secs(2)),
            ..WebhookConfig::default()
        };
        tweak(&mut hook);
        let hooks = [hook];
        outbox::sync_endpoints(&pool, &hooks).await.unwrap();
        let app = TestApp::build(&pool, t0(), Some(TOKEN), |_| {});
        let clock = app.clock.clone();
        Env {
            worker: Worker::new(pool.clone(), &hooks).unwrap(),
            pool,
            app,
            clock,
            rx,
        }
    }

    async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        uri: &str,
        body: Option<&str>,
    ) -> Resp {
        let auth = token.and_then(bearer);
        let (ct, body) = match body {
            Some(b) => (Some("application/json"), b.as_bytes().to_vec()),
            None => (None, Vec::new()),
        };
        let r = send(&self.app, method.parse().unwrap(), uri, auth, ct, body).await;
        Resp {
            status: r.status,
            content_type: r.content_type().to_string(),
            json: serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        }
    }

    async fn call(&self, method: &str, uri: &str, body: Option<&str>) -> Resp {
        self.call_as(Some(TOKEN), method, uri, body).await
    }

    /// Create a silence through the API; its id.
    async fn silence(&self, body: Value) -> i64 {
        let r = self
            .call("POST", "/api/v1/silences", Some(&body.to_string()))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        r.json["id"].as_i64().unwrap()
    }

    async fn tick(&self) -> Outcome {
        self.worker.tick(self.clock.now()).await.unwrap()
    }

    /// Tick at every minute for `minutes` minutes.
    async fn run_for(&self, minutes: i64) {
        for _ in 0..minutes {
            self.clock.advance(TimeDelta::minutes(1));
            self.tick().await;
        }
    }

    async fn fire(
        &self,
        kind: Kind,
        subject: &str,
        device: Option<&str>,
        group: Option<&str>,
    ) -> i64 {
        let spec = AlertSpec {
            kind,
            subject: subject.into(),
            device_id: device.map(String::from),
            group_id: group.map(String::from),
            severity: kind.default_severity(),
            summary: format!("{subject} is in trouble"),
            details: json!({}),
        };
        let mut tx = self.pool.begin().await.unwrap();
        let id = lifecycle::fire(&mut tx, &spec, self.clock.now(), TimeDelta::minutes(30))
            .await
            .unwrap()
            .id();
        tx.commit().await.unwrap();
        id
    }

    async fn resolve(&self, id: i64) {
        let mut tx = self.pool.begin().await.unwrap();
        assert!(
            lifecycle::resolve(&mut tx, id, self.clock.now(), None, json!({}))
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
    }

    /// (event, status, silenced_by) of every notification of an alert.
    async fn rows(&self, alert: i64) -> Vec<(String, String, Option<i64>)> {
        sqlx::query_as(
            "select event, status, silenced_by from notifications where alert_id = $1 order by id",
        )
        .bind(alert)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

fn ev(event: &str, id: i64) -> (String, i64) {
    (event.to_string(), id)
}

// ---------------------------------------------------------------------------------------------
// The API

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn create_list_page_and_end(pool: PgPool) {
    let env = Env::new(pool).await;
    let now = env.clock.now();

    // starts_at defaults to now; created_by is the token
    let r = env
        .call(
            "POST",
            "/api/v1/silences",
            Some(
                &json!({"device_id": "screen-1", "ends_at": rfc(now + TimeDelta::hours(2)),
                        "comment": "replacing the panel"})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let s = &r.json;
    let first = s["id"].as_i64().unwrap();
    assert_eq!(s["device_id"], "screen-1");
    assert_eq!(s["group_id"], Value::Null);
    assert_eq!(s["kind"], Value::Null);
    assert_eq!(s["starts_at"], "2026-11-27T10:00:00Z");
    assert_eq!(s["ends_at"], "2026-11-27T12:00:00Z");
    assert_eq!(s["created_by"], "token:0:bootstrap");
    assert_eq!(s["on_behalf_of"], Value::Null);
    assert_eq!(s["comment"], "replacing the panel");
    assert_eq!(s["active"], true);
    assert_eq!(s["deleted_at"], Value::Null);

    // a future one, by group and kind, with an explicit creator
    let future = env
        .silence(json!({"group_id": "tokyo", "kind": "heartbeat_gap",
                        "starts_at": rfc(now + TimeDelta::days(1)),
                        "ends_at": rfc(now + TimeDelta::days(2)),
                        "comment": "office move", "created_by": "alice"}))
        .await;
    // a stored token is named by id and name
    let bot = tokens::create(&env.pool, "ci-bot", &[Scope::Write], now)
        .await
        .unwrap();
    let r = env
        .call_as(
            Some(bot.token.expose()),
            "POST",
            "/api/v1/silences",
            Some(
                &json!({"kind": "ingest_down", "ends_at": rfc(now + TimeDelta::minutes(30)),
                        "comment": "broker upgrade"})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(r.json["created_by"], format!("token:{}:ci-bot", bot.id));
    let third = r.json["id"].as_i64().unwrap();

    let ids = |v: &Value| -> Vec<i64> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_i64().unwrap())
            .collect()
    };
    let r = env.call("GET", "/api/v1/silences", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(ids(&r.json), [third, future, first], "newest first");
    assert_eq!(r.json["next_cursor"], Value::Null);
    let r = env.call("GET", "/api/v1/silences?active=true", None).await;
    assert_eq!(ids(&r.json), [third, first]);
    let r = env.call("GET", "/api/v1/silences?active=false", None).await;
    assert_eq!(ids(&r.json), [future]);
    let r = env.call("GET", "/api/v1/silences?active=maybe", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.content_type, "application/problem+json");

    // paging
    let p1 = env.call("GET", "/api/v1/silences?limit=2", None).await.json;
    assert_eq!(ids(&p1), [third, future]);
    let cursor = p1["next_cursor"].as_str().unwrap();
    let p2 = env
        .call(
            "GET",
            &format!("/api/v1/silences?limit=2&cursor={cursor}"),
            None,
        )
        .await
        .json;
    assert_eq!(ids(&p2), [first]);
    assert_eq!(p2["next_cursor"], Value::Null);
    let r = env
        .call("GET", "/api/v1/silences?cursor=garbage!", None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // end one early: kept, no longer active
    env.clock.advance(TimeDelta::minutes(10));
    let r = env
        .call("DELETE", &format!("/api/v1/silences/{first}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["active"], false);
    assert_eq!(r.json["deleted_at"], "2026-11-27T10:10:00Z");
    assert_eq!(r.json["deleted_by"], "token:0:bootstrap");
    assert_eq!(r.json["ends_at"], "2026-11-27T12:00:00Z", "history kept");
    // again: 409
    let r = env
        .call("DELETE", &format!("/api/v1/silences/{first}"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.json["status"], 409);
    // one that has not started yet can be ended (it will never mute anything)
    let r = env
        .call("DELETE", &format!("/api/v1/silences/{future}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // one that expired by itself: 409
    env.clock.advance(TimeDelta::minutes(30));
    let r = env
        .call("DELETE", &format!("/api/v1/silences/{third}"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    // unknown: 404
    for uri in [
        "/api/v1/silences/999999",
        "/api/v1/silences/abc",
        "/api/v1/silences/-1",
    ] {
        let r = env.call("DELETE", uri, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(r.content_type, "application/problem+json");
    }
    let r = env.call("GET", "/api/v1/silences?active=true", None).await;
    assert!(ids(&r.json).is_empty());
    let r = env.call("GET", "/api/v1/silences", None).await;
    assert_eq!(ids(&r.json).len(), 3, "ended silences stay listed");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn invalid_bodies_are_422_problems(pool: PgPool) {
    let env = Env::new(pool).await;
    let now = env.clock.now();
    let end = rfc(now + TimeDelta::hours(1));
    let long = "x".repeat(4001);
    let cases: Vec<(&str, String)> =
        vec![
        ("no matcher", json!({"ends_at": end, "comment": "c"}).to_string()),
        (
            "ends before it starts",
            json!({"device_id": "d", "starts_at": rfc(now + TimeDelta::hours(2)),
                   "ends_at": end, "comment": "c"})
            .to_string(),
        ),
        (
            "ends when it starts",
            json!({"device_id": "d", "starts_at": end, "ends_at": end, "comment": "c"}).to_string(),
        ),
        (
            "ends in the past",
            json!({"device_id": "d", "starts_at": rfc(now - TimeDelta::hours(3)),
                   "ends_at": rfc(now - TimeDelta::hours(1)), "comment": "c"})
            .to_string(),
        ),
        (
            "unknown kind",
            json!({"kind": "cosmic_rays", "ends_at": end, "comment": "c"}).to_string(),
        ),
        (
            "NUL in comment",
            json!({"device_id": "d", "ends_at": end, "comment": "a\u{0}b"}).to_string(),
        ),
        (
            "NUL in device_id",
            json!({"device_id": "d\u{0}", "ends_at": end, "comment": "c"}).to_string(),
        ),
        (
            "NUL in created_by",
            json!({"group_id": "g", "ends_at": end, "comment": "c", "created_by": "\u{0}"})
                .to_string(),
        ),
        (
            "over-long comment",
            json!({"device_id": "d", "ends_at": end, "comment": long}).to_string(),
        ),
        (
            "over-long group",
            json!({"group_id": "g".repeat(201), "ends_at": end, "comment": "c"}).to_string(),
        ),
        (
            "empty comment",
            json!({"device_id": "d", "ends_at": end, "comment": "  "}).to_string(),
        ),
        (
            "empty device",
            json!({"device_id": "", "ends_at": end, "comment": "c"}).to_string(),
        ),
        (
            "more than 90 days",
            json!({"device_id": "d", "ends_at": rfc(now + TimeDelta::days(91)), "comment": "c"})
                .to_string(),
        ),
        (
            "starts more than a year ahead",
            json!({"device_id": "d", "starts_at": rfc(now + TimeDelta::days(400)),
                   "ends_at": rfc(now + TimeDelta::days(401)), "comment": "c"})
            .to_string(),
        ),
        ("missing ends_at", json!({"device_id": "d", "comment": "c"}).to_string()),
        ("missing comment", json!({"device_id": "d", "ends_at": end}).to_string()),
        (
            "unknown field",
            json!({"device_id": "d", "ends_at": end, "comment": "c", "matchers": []}).to_string(),
        ),
        (
            "not a time",
            json!({"device_id": "d", "ends_at": "tomorrow", "comment": "c"}).to_string(),
        ),
        ("not JSON", "{\"device_id\": ".to_string()),
        ("not an object", "[]".to_string()),
    ];
    for (what, body) in &cases {
        let r = env.call("POST", "/api/v1/silences", Some(body)).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {}",
            r.json
        );
        assert_eq!(r.content_type, "application/problem+json", "{what}");
        assert_eq!(r.json["status"], 422, "{what}");
    }
    // exactly 90 days is fine
    env.silence(
        json!({"device_id": "d", "ends_at": rfc(now + TimeDelta::days(90)),
                       "comment": "c"}),
    )
    .await;
    let n: i64 = sqlx::query_scalar("select count(*) from silences")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "nothing invalid was stored");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn every_silence_route_needs_a_token_and_writes_need_write(pool: PgPool) {
    let env = Env::new(pool).await;
    let id = env
        .silence(
            json!({"device_id": "d", "ends_at": rfc(env.clock.now() + TimeDelta::hours(1)),
                        "comment": "c"}),
        )
        .await;
    let reader = tokens::create(&env.pool, "reader", &[Scope::Read], env.clock.now())
        .await
        .unwrap();
    let body = json!({"device_id": "d", "ends_at": rfc(env.clock.now() + TimeDelta::hours(1)),
                      "comment": "c"})
    .to_string();
    let del = format!("/api/v1/silences/{id}");
    for (method, uri, body) in [
        ("GET", "/api/v1/silences", None),
        ("POST", "/api/v1/silences", Some(body.as_str())),
        ("DELETE", del.as_str(), None),
    ] {
        for token in [None, Some("wrong-token")] {
            let r = env.call_as(token, method, uri, body).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} {token:?}"
            );
            assert_eq!(r.content_type, "application/problem+json");
        }
        let r = env
            .call_as(Some(reader.token.expose()), method, uri, body)
            .await;
        let want = if method == "GET" {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(r.status, want, "{method} {uri} as reader");
    }
}

// ---------------------------------------------------------------------------------------------
// Notifications

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_silenced_device_alert_is_visible_not_sent_and_sent_once_when_the_silence_ends(
    pool: PgPool,
) {
    let env = Env::new(pool).await;
    let silence = env
        .silence(
            json!({"device_id": "screen-1", "ends_at": rfc(t0() + TimeDelta::hours(1)),
                        "comment": "maintenance"}),
        )
        .await;
    env.clock.advance(TimeDelta::minutes(5));
    let id = env
        .fire(Kind::HeartbeatGap, "screen-1", Some("screen-1"), Some("b1"))
        .await;
    // another device of the same group is not silenced
    let other = env
        .fire(Kind::HeartbeatGap, "screen-2", Some("screen-2"), Some("b1"))
        .await;

    // recorded and visible
    let r = env
        .call("GET", "/api/v1/alerts?device=screen-1", None)
        .await;
    assert_eq!(r.json["items"][0]["id"], id);
    assert_eq!(r.json["items"][0]["status"], "firing");
    // the notification is recorded as silenced, not pending
    assert_eq!(
        env.rows(id).await,
        [("alert.firing".into(), "superseded".into(), Some(silence))]
    );
    let r = env
        .call("GET", "/api/v1/webhooks/deliveries?status=superseded", None)
        .await;
    assert_eq!(r.json["items"][0]["alert_id"], id);
    assert_eq!(
        r.json["items"][0]["last_error"],
        format!("silenced by silence {silence}")
    );

    // well past group_wait, during the silence: only the other device was sent
    env.run_for(50).await;
    assert_eq!(env.rx.events(), [ev("alert.firing", other)]);

    // the silence ends while the alert still fires: notified then, once
    env.clock.set(t0() + TimeDelta::hours(1));
    let out = env.tick().await;
    assert_eq!((out.caught_up, out.delivered), (1, 1), "{out:?}");
    env.run_for(30).await;
    assert_eq!(
        env.rx.events(),
        [ev("alert.firing", other), ev("alert.firing", id)]
    );
    let seen = env.rx.seen.lock().unwrap().clone();
    assert_eq!(seen[1].1["alert"]["status"], "firing");
    assert!(seen[1].0.get("fleetwatch-signature").is_some());

    // from now on it behaves like any alert: its resolution is sent
    env.resolve(id).await;
    env.run_for(2).await;
    assert_eq!(
        env.rx.events(),
        [
            ev("alert.firing", other),
            ev("alert.firing", id),
            ev("alert.resolved", id)
        ]
    );
    env.run_for(10).await;
    assert_eq!(env.rx.events().len(), 3, "nothing more");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn deleting_a_group_silence_sends_what_it_held_back(pool: PgPool) {
    let env = Env::new(pool).await;
    let silence = env
        .silence(
            json!({"group_id": "tokyo", "ends_at": rfc(t0() + TimeDelta::hours(4)),
                        "comment": "office move"}),
        )
        .await;
    let dev = env
        .fire(Kind::HeartbeatGap, "tky-1", Some("tky-1"), Some("tokyo"))
        .await;
    let outage = env
        .fire(Kind::GroupOutage, "tokyo", None, Some("tokyo"))
        .await;
    let osaka = env
        .fire(Kind::GroupOutage, "osaka", None, Some("osaka"))
        .await;
    env.run_for(10).await;
    assert_eq!(env.rx.events(), [ev("alert.firing", osaka)]);

    env.clock.advance(TimeDelta::minutes(1));
    let r = env
        .call("DELETE", &format!("/api/v1/silences/{silence}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let out = env.tick().await;
    assert_eq!((out.caught_up, out.delivered), (2, 2), "{out:?}");
    env.run_for(10).await;
    let mut events = env.rx.events();
    events[1..].sort_by_key(|e| e.1);
    assert_eq!(
        events,
        [
            ev("alert.firing", osaka),
            ev("alert.firing", dev),
            ev("alert.firing", outage)
        ]
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_kind_silence_and_a_combined_matcher(pool: PgPool) {
    let env = Env::new(pool).await;
    let end = rfc(t0() + TimeDelta::hours(1));
    env.silence(json!({"kind": "ingest_down", "ends_at": end, "comment": "broker upgrade"}))
        .await;
    // device AND kind: only that device's flapping is muted
    env.silence(
        json!({"device_id": "d1", "kind": "flapping", "ends_at": end,
                       "comment": "loose cable"}),
    )
    .await;
    let ingest = env.fire(Kind::IngestDown, "ingest", None, None).await;
    let flap = env.fire(Kind::Flapping, "d1", Some("d1"), None).await;
    let gap = env.fire(Kind::HeartbeatGap, "d1", Some("d1"), None).await;
    let flap2 = env.fire(Kind::Flapping, "d2", Some("d2"), None).await;
    env.run_for(5).await;
    let mut events = env.rx.events();
    events.sort_by_key(|e| e.1);
    assert_eq!(events, [ev("alert.firing", gap), ev("alert.firing", flap2)]);
    for id in [ingest, flap] {
        assert_eq!(env.rows(id).await[0].1, "superseded");
    }
    // after the hour, both muted alerts are sent, once
    env.run_for(70).await;
    let mut events = env.rx.events();
    events.sort_by_key(|e| e.1);
    assert_eq!(
        events,
        [
            ev("alert.firing", ingest),
            ev("alert.firing", flap),
            ev("alert.firing", gap),
            ev("alert.firing", flap2)
        ]
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn an_alert_that_fires_and_resolves_inside_a_silence_sends_nothing(pool: PgPool) {
    let env = Env::new(pool).await;
    env.silence(
        json!({"device_id": "d1", "ends_at": rfc(t0() + TimeDelta::hours(1)),
                       "comment": "firmware update"}),
    )
    .await;
    env.clock.advance(TimeDelta::minutes(1));
    let id = env.fire(Kind::HeartbeatGap, "d1", Some("d1"), None).await;
    env.run_for(10).await;
    assert!(lifecycle::acknowledge(
        &env.pool,
        id,
        &Actor {
            principal: "token:1:bob".into(),
            on_behalf_of: None
        },
        None,
        env.clock.now()
    )
    .await
    .unwrap()
    .unwrap());
    env.run_for(10).await;
    env.resolve(id).await;
    env.run_for(120).await;
    assert!(env.rx.events().is_empty(), "{:?}", env.rx.events());
    let rows = env.rows(id).await;
    assert_eq!(
        rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["alert.firing", "alert.acknowledged", "alert.resolved"]
    );
    assert!(rows.iter().all(|r| r.1 == "superseded" && r.2.is_some()));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_resolution_during_a_silence_is_sent_after_it_and_an_ack_is_not_replayed(pool: PgPool) {
    let env = Env::with(pool, |h| {
        h.repeat_interval = HumanDuration(std::time::Duration::from_secs(3600));
    })
    .await;
    // notified before the silence
    let id = env.fire(Kind::IngestDown, "ingest", None, None).await;
    let still = env.fire(Kind::FleetOutage, "fleet", None, None).await;
    assert_eq!(env.tick().await.delivered, 2);
    env.clock.advance(TimeDelta::minutes(10));
    env.silence(
        json!({"kind": "ingest_down", "ends_at": rfc(t0() + TimeDelta::hours(3)),
                       "comment": "planned broker migration"}),
    )
    .await;
    env.silence(
        json!({"kind": "fleet_outage", "ends_at": rfc(t0() + TimeDelta::hours(3)),
                       "comment": "planned broker migration"}),
    )
    .await;
    // during the silence: no reminder (repeat_interval 1h), no ack, no resolution
    env.run_for(30).await;
    assert!(lifecycle::acknowledge(
        &env.pool,
        still,
        &Actor {
            principal: "token:1:carol".into(),
            on_behalf_of: None
        },
        None,
        env.clock.now()
    )
    .await
    .unwrap()
    .unwrap());
    env.run_for(30).await;
    env.resolve(id).await;
    env.run_for(100).await;
    assert!(env.clock.now() < t0() + TimeDelta::hours(3));
    assert_eq!(
        env.rx.events(),
        [ev("alert.firing", id), ev("alert.firing", still)]
    );

    // after it: the resolution once; the still-firing one was told already, so nothing (its
    // acknowledgement is not replayed, and acknowledged alerts get no reminders)
    env.clock.set(t0() + TimeDelta::hours(3));
    let out = env.tick().await;
    assert_eq!((out.caught_up, out.delivered), (1, 1), "{out:?}");
    env.run_for(120).await;
    assert_eq!(
        env.rx.events(),
        [
            ev("alert.firing", id),
            ev("alert.firing", still),
            ev("alert.resolved", id)
        ]
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn reminders_pause_during_a_silence_and_resume_after(pool: PgPool) {
    let env = Env::with(pool, |h| {
        h.repeat_interval = HumanDuration(std::time::Duration::from_secs(3600));
    })
    .await;
    let id = env.fire(Kind::IngestDown, "ingest", None, None).await;
    assert_eq!(env.tick().await.delivered, 1);
    env.silence(
        json!({"kind": "ingest_down", "ends_at": rfc(t0() + TimeDelta::hours(3)),
                       "comment": "c"}),
    )
    .await;
    env.run_for(170).await;
    assert_eq!(env.rx.events(), [ev("alert.firing", id)]);
    env.run_for(12).await;
    assert_eq!(
        env.rx.events(),
        [ev("alert.firing", id), ev("alert.reminder", id)],
        "one reminder once the silence is over, no replayed firing"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_silence_created_during_group_wait_holds_the_pending_firing(pool: PgPool) {
    let env = Env::new(pool).await;
    let id = env.fire(Kind::HeartbeatGap, "d1", Some("d1"), None).await;
    assert_eq!(env.rows(id).await[0].1, "pending");
    env.clock.advance(TimeDelta::seconds(10));
    let silence = env
        .silence(
            json!({"device_id": "d1", "ends_at": rfc(t0() + TimeDelta::minutes(20)),
                        "comment": "c"}),
        )
        .await;
    env.clock.advance(TimeDelta::seconds(25));
    let out = env.tick().await;
    assert_eq!(
        (out.claimed, out.superseded, out.delivered),
        (1, 1, 0),
        "{out:?}"
    );
    assert_eq!(
        env.rows(id).await,
        [("alert.firing".into(), "superseded".into(), Some(silence))]
    );
    env.run_for(30).await;
    assert_eq!(env.rx.events(), [ev("alert.firing", id)]);
}
