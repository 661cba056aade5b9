//! The alerts API and the fleet summary, driven through `fleetwatch::http::router` with
//! `oneshot` against a fresh database per test. Alerts are made by the real lifecycle (fire,
//! reclassify, cover, resolve, at explicit times), devices and groups by plain SQL, and the
//! state's clock is a `ManualClock` so acknowledgement times are known.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderValue, Method, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, TimeDelta, Utc};
use common::alerts::{device_alert, group_alert};
use common::http::{
    assert_client_problem, assert_json_ok, assert_problem, bearer, get, get_ok, send, send_json, t,
    Resp, TestApp, NOW,
};
use fleetwatch::alerts::lifecycle::{self, AlertSpec, Fired};
use fleetwatch::domain::alert::Kind;
use serde_json::{json, Value};
use sqlx::PgPool;

const TOKEN: &str = "tok";

fn base() -> DateTime<Utc> {
    t("2026-11-27T10:00:00Z")
}

fn min(n: i64) -> DateTime<Utc> {
    base() + TimeDelta::minutes(n)
}

async fn ack(app: &TestApp, id: i64, body: &Value) -> Resp {
    let uri = format!("/api/v1/alerts/{id}/ack");
    send_json(app, Method::POST, &uri, &body.to_string()).await
}

async fn ack_ok(app: &TestApp, id: i64, body: &Value) -> Value {
    assert_json_ok(&ack(app, id, body).await, &format!("ack {id} {body}"))
}

async fn ticket(app: &TestApp, id: i64, body: &Value) -> Resp {
    let uri = format!("/api/v1/alerts/{id}/ticket");
    send_json(app, Method::PUT, &uri, &body.to_string()).await
}

async fn ticket_ok(app: &TestApp, id: i64, body: &Value) -> Value {
    assert_json_ok(&ticket(app, id, body).await, &format!("ticket {id} {body}"))
}

/// Percent-encode everything but unreserved characters.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A set timestamp field must be RFC 3339 in UTC with a `Z`.
fn utc(v: &Value, field: &str) -> Option<DateTime<Utc>> {
    match &v[field] {
        Value::Null => None,
        Value::String(s) => {
            assert!(s.ends_with('Z'), "{field}: {s:?} does not end in Z");
            Some(
                DateTime::parse_from_rfc3339(s)
                    .unwrap_or_else(|e| panic!("{field}: {s:?} is not RFC 3339: {e}"))
                    .to_utc(),
            )
        }
        other => panic!("{field}: expected a string or null, got {other}"),
    }
}

fn ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(|a| a["id"].as_i64().unwrap_or_else(|| panic!("id: {a}")))
        .collect()
}

fn event_types(alert: &Value) -> Vec<String> {
    alert["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {alert}"))
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

/// The alert fields DESIGN.md §4 names.
const ALERT_FIELDS: [&str; 12] = [
    "id",
    "kind",
    "device_id",
    "group",
    "severity",
    "status",
    "acknowledged_by",
    "ticket_ref",
    "opened_at",
    "resolved_at",
    "summary",
    "details",
];

/// Fields the acknowledgement and ticket endpoints fill in, beyond §4's.
const EXTRA_FIELDS: [&str; 3] = ["acknowledged_at", "ack_note", "ticket_url"];

fn assert_alert_shape(a: &Value) {
    for f in ALERT_FIELDS.iter().chain(&EXTRA_FIELDS) {
        assert!(a.get(*f).is_some(), "field {f} missing in {a}");
    }
    assert!(a["id"].as_i64().is_some_and(|i| i > 0), "{a}");
    assert!(a["kind"].as_str().unwrap().parse::<Kind>().is_ok(), "{a}");
    assert!(
        ["critical", "error", "warning", "info"].contains(&a["severity"].as_str().unwrap()),
        "{a}"
    );
    assert!(
        ["firing", "resolved"].contains(&a["status"].as_str().unwrap()),
        "{a}"
    );
    assert!(a["summary"].is_string(), "{a}");
    assert!(a["details"].is_object(), "{a}");
    assert!(utc(a, "opened_at").is_some(), "{a}");
    utc(a, "resolved_at");
    utc(a, "acknowledged_at");
    assert_eq!(
        a["status"] == "resolved",
        !a["resolved_at"].is_null(),
        "resolved_at set exactly when resolved: {a}"
    );
}

// ---------------------------------------------------------------------------------------------
// Seeding: the real lifecycle for alerts, plain SQL for devices and groups.

const REOPEN: TimeDelta = TimeDelta::hours(1);

async fn fire(pool: &PgPool, spec: &AlertSpec, now: DateTime<Utc>) -> Fired {
    let mut tx = pool.begin().await.unwrap();
    let fired = lifecycle::fire(&mut tx, spec, now, REOPEN).await.unwrap();
    tx.commit().await.unwrap();
    fired
}

/// Fire a new alert; its id.
async fn open(pool: &PgPool, spec: &AlertSpec, now: DateTime<Utc>) -> i64 {
    match fire(pool, spec, now).await {
        Fired::Opened(id) => id,
        other => panic!("expected a new alert for {spec:?}, got {other:?}"),
    }
}

async fn resolve(pool: &PgPool, id: i64, now: DateTime<Utc>, outcome: Value) -> bool {
    let mut tx = pool.begin().await.unwrap();
    let done = lifecycle::resolve(&mut tx, id, now, None, outcome)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    done
}

async fn insert_group(pool: &PgPool, id: &str) {
    sqlx::query("insert into groups (id, name) values ($1, $1) on conflict do nothing")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

async fn insert_device(pool: &PgPool, id: &str, group: Option<&str>, state: &str, retired: bool) {
    if let Some(g) = group {
        insert_group(pool, g).await;
    }
    sqlx::query(
        r#"insert into devices (id, group_id, state, retired_at)
           values ($1, $2, $3, case when $4 then now() end)"#,
    )
    .bind(id)
    .bind(group)
    .bind(state)
    .bind(retired)
    .execute(pool)
    .await
    .unwrap();
}

async fn event_count(pool: &PgPool, id: i64) -> i64 {
    sqlx::query_scalar("select count(*) from alert_events where alert_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// GET /alerts: fields

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn alert_fields_are_all_present_and_utc(pool: PgPool) {
    let opened = t("2026-11-27T10:00:00.123456Z");
    let resolved_at = t("2026-11-27T10:42:07Z");
    let gap = open(
        &pool,
        &AlertSpec {
            details: json!({"classification": "silent", "last_data": "2026-11-27T09:50:00Z"}),
            summary: "scr-1 silent for 10 min".into(),
            ..device_alert(Kind::HeartbeatGap, "scr-1", Some("bldg-a"))
        },
        opened,
    )
    .await;
    assert!(resolve(&pool, gap, resolved_at, json!({"covered": true})).await);
    let ingest = open(
        &pool,
        &AlertSpec {
            kind: Kind::IngestDown,
            subject: "ingest".into(),
            device_id: None,
            group_id: None,
            severity: Kind::IngestDown.default_severity(),
            summary: "MQTT ingest is down".into(),
            details: json!({}),
        },
        min(50),
    )
    .await;
    let app = TestApp::new(&pool, TOKEN);

    let page = get_ok(&app, "/api/v1/alerts").await;
    assert!(page["next_cursor"].is_null(), "{page}");
    assert_eq!(ids(&page), [ingest, gap], "newest first: {page}");
    let items = page["items"].as_array().unwrap();
    for a in items {
        assert_alert_shape(a);
    }

    let g = &items[1];
    assert_eq!(g["kind"], "heartbeat_gap");
    assert_eq!(g["device_id"], "scr-1");
    assert_eq!(g["group"], "bldg-a");
    assert_eq!(g["severity"], "error");
    assert_eq!(g["status"], "resolved");
    assert_eq!(g["summary"], "scr-1 silent for 10 min");
    assert_eq!(
        g["details"],
        json!({"classification": "silent", "last_data": "2026-11-27T09:50:00Z", "covered": true}),
        "the outcome is merged into the details"
    );
    assert_eq!(g["opened_at"], "2026-11-27T10:00:00.123456Z");
    assert_eq!(utc(g, "opened_at"), Some(opened));
    assert_eq!(g["resolved_at"], "2026-11-27T10:42:07Z");
    for f in [
        "acknowledged_by",
        "acknowledged_at",
        "ack_note",
        "ticket_ref",
        "ticket_url",
    ] {
        assert!(g[f].is_null(), "{f}: {g}");
    }

    let i = &items[0];
    assert_eq!(i["kind"], "ingest_down");
    assert_eq!(i["severity"], "critical");
    assert_eq!(i["status"], "firing");
    assert!(i["device_id"].is_null(), "{i}");
    assert!(i["group"].is_null(), "{i}");
    assert!(i["resolved_at"].is_null(), "{i}");
    assert_eq!(i["opened_at"], "2026-11-27T10:50:00Z");
    assert_eq!(i["details"], json!({}));

    // The single alert is the list's document plus its trail.
    for (n, id) in [(1, gap), (0, ingest)] {
        let mut one = get_ok(&app, &format!("/api/v1/alerts/{id}")).await;
        assert!(one["events"].is_array(), "{one}");
        one.as_object_mut().unwrap().remove("events");
        assert_eq!(one, items[n], "alert {id}");
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn an_empty_list(pool: PgPool) {
    let app = TestApp::new(&pool, TOKEN);
    let page = get_ok(&app, "/api/v1/alerts").await;
    assert_eq!(page, json!({"items": [], "next_cursor": null}));
    let page = get_ok(&app, "/api/v1/alerts?status=firing&limit=1").await;
    assert_eq!(page, json!({"items": [], "next_cursor": null}));
}

// ---------------------------------------------------------------------------------------------
// GET /alerts: filters, order, pagination

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn list_filters_alone_and_combined(pool: PgPool) {
    let a1 = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "d1", Some("g1")),
        min(0),
    )
    .await;
    let a2 = open(
        &pool,
        &device_alert(Kind::Flapping, "d1", Some("g1")),
        min(1),
    )
    .await;
    let a3 = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "d2", Some("g1")),
        min(2),
    )
    .await;
    let a4 = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "d3", Some("g2")),
        min(3),
    )
    .await;
    let a5 = open(
        &pool,
        &device_alert(Kind::AuthFailure, "d3", Some("g2")),
        min(4),
    )
    .await;
    let a6 = open(&pool, &group_alert(Kind::GroupOutage, "g1"), min(5)).await;
    let a7 = open(
        &pool,
        &AlertSpec {
            kind: Kind::IngestDown,
            subject: "ingest".into(),
            device_id: None,
            group_id: None,
            severity: Kind::IngestDown.default_severity(),
            summary: "ingest down".into(),
            details: json!({}),
        },
        min(6),
    )
    .await;
    for id in [a2, a3, a7] {
        assert!(resolve(&pool, id, min(30), json!({})).await);
    }
    let app = TestApp::new(&pool, TOKEN);

    let cases: Vec<(&str, Vec<i64>)> = vec![
        ("", vec![a7, a6, a5, a4, a3, a2, a1]),
        ("status=firing", vec![a6, a5, a4, a1]),
        ("status=resolved", vec![a7, a3, a2]),
        ("kind=heartbeat_gap", vec![a4, a3, a1]),
        ("kind=group_outage", vec![a6]),
        ("kind=metric_threshold", vec![]),
        ("device=d1", vec![a2, a1]),
        ("device=d3", vec![a5, a4]),
        ("device=nope", vec![]),
        // exact match, not a pattern
        ("device=d%25", vec![]),
        ("device=D1", vec![]),
        ("group=g1", vec![a6, a3, a2, a1]),
        ("group=g2", vec![a5, a4]),
        ("group=nope", vec![]),
        ("status=firing&kind=heartbeat_gap", vec![a4, a1]),
        ("status=resolved&group=g1", vec![a3, a2]),
        ("status=resolved&kind=ingest_down", vec![a7]),
        ("device=d3&kind=auth_failure", vec![a5]),
        ("device=d1&status=firing", vec![a1]),
        ("group=g1&kind=heartbeat_gap", vec![a3, a1]),
        (
            "status=firing&kind=heartbeat_gap&device=d1&group=g1",
            vec![a1],
        ),
        ("status=resolved&device=d3", vec![]),
        ("device=d1&group=g2", vec![]),
        ("kind=flapping&status=firing", vec![]),
        ("status=firing&limit=2", vec![a6, a5]),
    ];
    for (q, want) in cases {
        let page = get_ok(&app, &format!("/api/v1/alerts?{q}")).await;
        assert_eq!(ids(&page), want, "?{q}: {page}");
        for a in page["items"].as_array().unwrap() {
            assert_alert_shape(a);
            for (k, field) in [
                ("status=", "status"),
                ("kind=", "kind"),
                ("device=", "device_id"),
                ("group=", "group"),
            ] {
                if let Some(v) = q.split('&').find_map(|p| p.strip_prefix(k)) {
                    assert_eq!(a[field], v, "?{q}: {a}");
                }
            }
        }
    }
    // every kind is a valid filter
    for k in Kind::ALL {
        let page = get_ok(&app, &format!("/api/v1/alerts?kind={k}")).await;
        for a in page["items"].as_array().unwrap() {
            assert_eq!(a["kind"], k.as_str());
        }
    }
}

/// Alerts opened at deliberately unordered times (several at the very same instant): the
/// expected newest-first order by (opened_at, id), computed here.
async fn seed_unordered(pool: &PgPool, n: i64) -> Vec<i64> {
    let mut made = Vec::new();
    for i in 0..n {
        // 0, 3, 1, 4, 2, 0, 3, … minutes: ids and times disagree, and times repeat
        let at = min((i * 3) % 5);
        let kind = if i % 2 == 0 {
            Kind::HeartbeatGap
        } else {
            Kind::Flapping
        };
        let id = open(pool, &device_alert(kind, &format!("dev-{i:02}"), None), at).await;
        if i % 4 == 0 {
            assert!(resolve(pool, id, min(10), json!({})).await);
        }
        made.push((at, id));
    }
    made.sort_by(|a, b| b.cmp(a));
    made.into_iter().map(|(_, id)| id).collect()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn newest_first_ties_broken_by_id(pool: PgPool) {
    let want = seed_unordered(&pool, 10).await;
    let app = TestApp::new(&pool, TOKEN);
    let page = get_ok(&app, "/api/v1/alerts").await;
    assert_eq!(ids(&page), want, "{page}");
    let items = page["items"].as_array().unwrap();
    for w in items.windows(2) {
        let (a, b) = (utc(&w[0], "opened_at"), utc(&w[1], "opened_at"));
        assert!(a >= b, "{} before {}", w[0], w[1]);
        if a == b {
            assert!(w[0]["id"].as_i64() > w[1]["id"].as_i64(), "tie: {w:?}");
        }
    }
    // at least one tie exists, or this test proves nothing about the tie-break
    assert!(items
        .windows(2)
        .any(|w| w[0]["opened_at"] == w[1]["opened_at"]));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn cursor_pagination_sees_each_alert_once(pool: PgPool) {
    let all = seed_unordered(&pool, 25).await;
    let app = TestApp::new(&pool, TOKEN);

    let walk = |filter: &'static str, limit: usize| {
        let app = app.clone();
        async move {
            let mut seen = Vec::new();
            let mut pages = 0;
            let mut cursor: Option<String> = None;
            loop {
                let mut uri = format!("/api/v1/alerts?limit={limit}{filter}");
                if let Some(c) = &cursor {
                    uri.push_str(&format!("&cursor={}", enc(c)));
                }
                let page = get_ok(&app, &uri).await;
                pages += 1;
                let got = ids(&page);
                assert!(got.len() <= limit, "{uri}: {page}");
                seen.extend(got);
                match page["next_cursor"].as_str() {
                    Some(c) => {
                        assert_eq!(page["items"].as_array().unwrap().len(), limit, "{uri}");
                        cursor = Some(c.to_string());
                    }
                    None => break,
                }
                assert!(pages <= 30, "{uri}: pagination does not end");
            }
            (seen, pages)
        }
    };

    for limit in [1usize, 7, 24, 25, 26, 1000] {
        let (seen, pages) = walk("", limit).await;
        assert_eq!(seen, all, "limit {limit}: every alert once, in order");
        assert_eq!(pages, all.len().div_ceil(limit), "limit {limit}");
    }

    // With a filter, the cursor keeps to it.
    let firing = ids(&get_ok(&app, "/api/v1/alerts?status=firing").await);
    assert!(firing.len() > 10, "{firing:?}");
    let subsequence: Vec<i64> = all.iter().copied().filter(|i| firing.contains(i)).collect();
    assert_eq!(firing, subsequence);
    for limit in [1usize, 7, 25] {
        let (seen, _) = walk("&status=firing", limit).await;
        assert_eq!(seen, firing, "firing, limit {limit}");
        let (seen, _) = walk("&kind=flapping", limit).await;
        assert_eq!(seen.len(), 12, "flapping, limit {limit}");
        assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 12);
    }

    // A cursor stays valid when newer alerts arrive meanwhile: they are not on later pages.
    let first = get_ok(&app, "/api/v1/alerts?limit=5").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    open(
        &pool,
        &device_alert(Kind::Throttled, "late-comer", None),
        min(60),
    )
    .await;
    let rest = get_ok(
        &app,
        &format!("/api/v1/alerts?limit=100&cursor={}", enc(&cursor)),
    )
    .await;
    assert_eq!(ids(&rest), all[5..].to_vec());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn bad_list_parameters_are_400_never_500(pool: PgPool) {
    open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let app = TestApp::new(&pool, TOKEN);
    let b64 = |s: &str| enc(&URL_SAFE_NO_PAD.encode(s));
    let long = "x".repeat(1025);
    let cases = [
        "status=open".to_string(),
        "status=FIRING".into(),
        "status=".into(),
        "status=firing&status=resolved".into(),
        "status=%00".into(),
        "kind=nope".into(),
        "kind=HEARTBEAT_GAP".into(),
        "kind=".into(),
        "kind=heartbeat_gap%00".into(),
        "kind=%27%3B%20drop%20table%20alerts%3B%20--".into(),
        "limit=0".into(),
        "limit=-1".into(),
        "limit=1001".into(),
        "limit=abc".into(),
        "limit=1.5".into(),
        "limit=99999999999999999999".into(),
        "limit=1&limit=2".into(),
        "cursor=!!!".into(),
        "cursor=%25%25%25".into(),
        "cursor=a".into(),
        "cursor=".into(),
        "cursor=%00".into(),
        // valid base64url, not UTF-8
        "cursor=_w".into(),
        format!("cursor={}", b64("abc")),
        format!("cursor={}", b64("1:2:3")),
        format!("cursor={}", b64("x:1")),
        format!("cursor={}", b64("1:x")),
        format!("cursor={}", b64(":")),
        format!("cursor={}", b64("1\0:1")),
        format!("cursor={}", b64("-1:1")),
        format!("cursor={}", b64("9223372036854775807:1")),
        format!("cursor={}", b64("253402300800000000:1")),
        format!("cursor={}", b64("1:99999999999999999999")),
        format!("cursor={}", enc(&URL_SAFE_NO_PAD.encode("1:1".repeat(400)))),
        "device=%00".into(),
        "device=d1%00".into(),
        "group=%00".into(),
        format!("device={long}"),
        format!("group={long}"),
        "status=firing&device=%00".into(),
    ];
    for q in cases {
        let r = get(&app, &format!("/api/v1/alerts?{q}")).await;
        assert_problem(&r, 400, &format!("?{q}"));
    }
    for q in ["limit=1", "limit=1000", "status=firing", "device="] {
        let r = get(&app, &format!("/api/v1/alerts?{q}")).await;
        assert_eq!(r.status, StatusCode::OK, "?{q}: {}", r.text());
    }
}

// ---------------------------------------------------------------------------------------------
// GET /alerts/{id}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_trail_in_order(pool: PgPool) {
    let silent = AlertSpec {
        summary: "scr-1 silent".into(),
        details: json!({"classification": "silent"}),
        ..device_alert(Kind::HeartbeatGap, "scr-1", Some("g1"))
    };
    let id = open(&pool, &silent, min(0)).await;
    // refiring with nothing changed writes nothing
    assert_eq!(fire(&pool, &silent, min(1)).await, Fired::Unchanged(id));

    let mut tx = pool.begin().await.unwrap();
    lifecycle::reclassify(
        &mut tx,
        id,
        "scr-1 offline",
        &json!({"classification": "offline"}),
        min(5),
        json!({"from": "silent", "to": "offline"}),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let outage = open(&pool, &group_alert(Kind::GroupOutage, "g1"), min(6)).await;
    let mut tx = pool.begin().await.unwrap();
    let covered = lifecycle::cover(&mut tx, &[id, outage], outage, min(6))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(covered, [id], "an outage does not cover itself");

    assert!(resolve(&pool, id, min(30), json!({"covered": true})).await);
    assert!(!resolve(&pool, id, min(31), json!({})).await, "only once");
    // re-fires within the reopen window: the same id
    assert_eq!(fire(&pool, &silent, min(40)).await, Fired::Reopened(id));
    let louder = AlertSpec {
        summary: "scr-1 silent again".into(),
        ..silent.clone()
    };
    assert_eq!(fire(&pool, &louder, min(41)).await, Fired::Updated(id));

    let app = TestApp::new(&pool, TOKEN);
    let clock = app.clock.clone();
    clock.set(min(45));
    ack_ok(&app, id, &json!({"by": "alice", "note": "on it"})).await;
    clock.set(min(46));
    ticket_ok(&app, id, &json!({"ref": "OPS-7", "by": "bob"})).await;

    let a = get_ok(&app, &format!("/api/v1/alerts/{id}")).await;
    assert_alert_shape(&a);
    assert_eq!(a["id"], id);
    assert_eq!(a["status"], "firing", "reopened: {a}");
    assert!(a["resolved_at"].is_null(), "{a}");
    assert_eq!(a["opened_at"], "2026-11-27T10:00:00Z", "{a}");
    assert_eq!(a["summary"], "scr-1 silent again");
    assert_eq!(a["details"], json!({"classification": "silent"}));
    let want = [
        (
            "opened",
            "fleetwatch",
            min(0),
            json!({"summary": "scr-1 silent"}),
        ),
        (
            "reclassified",
            "fleetwatch",
            min(5),
            json!({"from": "silent", "to": "offline"}),
        ),
        ("covered", "fleetwatch", min(6), json!({"by": outage})),
        ("resolved", "fleetwatch", min(30), json!({"covered": true})),
        (
            "reopened",
            "fleetwatch",
            min(40),
            json!({"summary": "scr-1 silent"}),
        ),
        (
            "updated",
            "fleetwatch",
            min(41),
            json!({"summary": "scr-1 silent again"}),
        ),
        (
            "acknowledged",
            "token:0:bootstrap",
            min(45),
            json!({"note": "on it", "on_behalf_of": "alice"}),
        ),
        (
            "ticket_linked",
            "token:0:bootstrap",
            min(46),
            json!({"ref": "OPS-7", "url": null, "on_behalf_of": "bob"}),
        ),
    ];
    let events = a["events"].as_array().unwrap();
    assert_eq!(events.len(), want.len(), "{a}");
    for (e, (kind, actor, at, details)) in events.iter().zip(want) {
        for f in ["type", "at", "actor", "details"] {
            assert!(e.get(f).is_some(), "{f} missing in {e}");
        }
        assert_eq!(e["type"], kind, "{e}");
        assert_eq!(e["actor"], actor, "{e}");
        assert_eq!(utc(e, "at"), Some(at), "{e}");
        assert_eq!(e["details"], details, "{e}");
    }

    // The outage's own trail: opened only.
    let o = get_ok(&app, &format!("/api/v1/alerts/{outage}")).await;
    assert_eq!(event_types(&o), ["opened"]);
    assert_eq!(o["kind"], "group_outage");
    assert!(o["device_id"].is_null());
    assert_eq!(o["group"], "g1");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_resolve_outside_the_reopen_window_opens_a_new_alert(pool: PgPool) {
    let spec = device_alert(Kind::Flapping, "scr-2", None);
    let first = open(&pool, &spec, min(0)).await;
    assert!(resolve(&pool, first, min(10), json!({})).await);
    let second = open(&pool, &spec, min(10) + REOPEN + TimeDelta::seconds(1)).await;
    assert!(second > first, "ids are never reused");
    let app = TestApp::new(&pool, TOKEN);
    let page = get_ok(&app, "/api/v1/alerts?device=scr-2").await;
    assert_eq!(ids(&page), [second, first]);
    assert_eq!(page["items"][0]["status"], "firing");
    assert_eq!(page["items"][1]["status"], "resolved");
    let a = get_ok(&app, &format!("/api/v1/alerts/{first}")).await;
    assert_eq!(event_types(&a), ["opened", "resolved"]);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn unknown_alert_ids_are_404(pool: PgPool) {
    let id = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let app = TestApp::new(&pool, TOKEN);
    let unknown = [
        (id + 1).to_string(),
        "0".into(),
        "-1".into(),
        "abc".into(),
        "99999999999999999999".into(),
        "9223372036854775807".into(),
        "-9223372036854775808".into(),
        "1.5".into(),
        "1e3".into(),
        "%00".into(),
        format!("{id}%00"),
        "%20".into(),
        "%3Cscript%3E".into(),
        "x".repeat(5000),
    ];
    for raw in &unknown {
        let what = format!("alert {raw:.40}");
        assert_problem(
            &get(&app, &format!("/api/v1/alerts/{raw}")).await,
            404,
            &what,
        );
        let uri = format!("/api/v1/alerts/{raw}/ack");
        let r = send_json(&app, Method::POST, &uri, r#"{"by": "alice"}"#).await;
        assert_problem(&r, 404, &format!("ack {what}"));
        let uri = format!("/api/v1/alerts/{raw}/ticket");
        let r = send_json(&app, Method::PUT, &uri, r#"{"ref": "OPS-1"}"#).await;
        assert_problem(&r, 404, &format!("ticket {what}"));
    }
    // nothing was written
    assert_eq!(event_count(&pool, id).await, 1);
    let total: i64 = sqlx::query_scalar("select count(*) from alert_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 1);
    // and the real one is there
    assert_eq!(
        get_ok(&app, &format!("/api/v1/alerts/{id}")).await["id"],
        id
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn wrong_methods_are_405_problems(pool: PgPool) {
    let id = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let app = TestApp::new(&pool, TOKEN);
    for (method, uri) in [
        (Method::DELETE, format!("/api/v1/alerts/{id}")),
        (Method::POST, "/api/v1/alerts".to_string()),
        (Method::GET, format!("/api/v1/alerts/{id}/ack")),
        (Method::PUT, format!("/api/v1/alerts/{id}/ack")),
        (Method::POST, format!("/api/v1/alerts/{id}/ticket")),
        (Method::POST, "/api/v1/fleet/summary".to_string()),
    ] {
        let r = send(&app, method.clone(), &uri, bearer(TOKEN), None, Vec::new()).await;
        assert_problem(&r, 405, &format!("{method} {uri}"));
    }
    assert_eq!(event_count(&pool, id).await, 1);
}

// ---------------------------------------------------------------------------------------------
// POST /alerts/{id}/ack

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn ack_is_recorded_once(pool: PgPool) {
    let id = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let other = open(&pool, &device_alert(Kind::HeartbeatGap, "d2", None), min(1)).await;
    let app = TestApp::new(&pool, TOKEN);
    let clock = app.clock.clone();

    let a = ack_ok(&app, id, &json!({"by": "alice", "note": "on it"})).await;
    assert_alert_shape(&a);
    assert_eq!(a["id"], id);
    assert_eq!(a["status"], "firing");
    assert_eq!(a["acknowledged_by"], "token:0:bootstrap");
    assert_eq!(a["acknowledged_on_behalf_of"], "alice");
    assert_eq!(a["acknowledged_at"], NOW);
    assert_eq!(a["ack_note"], "on it");
    assert_eq!(event_types(&a), ["opened", "acknowledged"]);
    let e = &a["events"][1];
    assert_eq!(e["actor"], "token:0:bootstrap");
    assert_eq!(e["at"], NOW);
    assert_eq!(
        e["details"],
        json!({"note": "on it", "on_behalf_of": "alice"})
    );
    // the response is what GET shows
    assert_eq!(get_ok(&app, &format!("/api/v1/alerts/{id}")).await, a);

    // Again, even by someone else, later: 200 and nothing changes.
    clock.advance(TimeDelta::minutes(5));
    let again = ack_ok(&app, id, &json!({"by": "bob", "note": "mine now"})).await;
    assert_eq!(again, a);
    let again = ack_ok(&app, id, &json!({"by": "alice"})).await;
    assert_eq!(again, a);
    assert_eq!(event_count(&pool, id).await, 2);

    // The list shows it; the other alert is untouched.
    let page = get_ok(&app, "/api/v1/alerts").await;
    assert_eq!(ids(&page), [other, id]);
    assert_eq!(page["items"][1]["acknowledged_on_behalf_of"], "alice");
    assert!(page["items"][0]["acknowledged_by"].is_null());
    assert_eq!(event_count(&pool, other).await, 1);

    // Without a note.
    let b = ack_ok(&app, other, &json!({"by": "Zoë 🚀"})).await;
    assert_eq!(b["acknowledged_on_behalf_of"], "Zoë 🚀");
    assert_eq!(b["acknowledged_at"], "2026-11-27T12:05:00Z");
    assert!(b["ack_note"].is_null(), "{b}");
    assert_eq!(
        b["events"][1]["details"],
        json!({"note": null, "on_behalf_of": "Zoë 🚀"})
    );
    assert_eq!(b["events"][1]["actor"], "token:0:bootstrap");
}

/// Any write token could once act as "alice (CEO)": the trail and the alert took the body's
/// name. Now they record the authenticated token, and keep the body's name only beside it.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_trail_records_the_token_not_the_name_in_the_body(pool: PgPool) {
    let id = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let other = open(&pool, &device_alert(Kind::HeartbeatGap, "d2", None), min(1)).await;
    let app = TestApp::new(&pool, TOKEN);
    let script = fleetwatch::tokens::create(
        &pool,
        "ticketing",
        &[fleetwatch::tokens::Scope::Write],
        t(NOW),
    )
    .await
    .unwrap();
    let as_script = |method: Method, uri: String, body: Value| {
        let app = app.clone();
        let token = script.token.expose().to_string();
        async move {
            send(
                &app,
                method,
                &uri,
                bearer(&token),
                Some("application/json"),
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    let me = format!("token:{}:ticketing", script.id);

    let r = as_script(
        Method::POST,
        format!("/api/v1/alerts/{id}/ack"),
        json!({"by": "alice (CEO)", "note": "on it"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let a = r.json();
    assert_eq!(a["acknowledged_by"], me.as_str());
    assert_eq!(a["acknowledged_on_behalf_of"], "alice (CEO)");
    assert_eq!(a["events"][1]["actor"], me.as_str());
    assert_eq!(a["events"][1]["details"]["on_behalf_of"], "alice (CEO)");

    // `by` may be left out: the token alone is the actor.
    let r = as_script(
        Method::POST,
        format!("/api/v1/alerts/{other}/ack"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let b = r.json();
    assert_eq!(b["acknowledged_by"], me.as_str());
    assert!(b["acknowledged_on_behalf_of"].is_null(), "{b}");
    assert_eq!(b["events"][1]["details"], json!({"note": null}));

    let r = as_script(
        Method::PUT,
        format!("/api/v1/alerts/{id}/ticket"),
        json!({"ref": "OPS-9", "by": "alice (CEO)"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let e = &r.json()["events"][2];
    assert_eq!(e["type"], "ticket_linked");
    assert_eq!(e["actor"], me.as_str());
    assert_eq!(e["details"]["on_behalf_of"], "alice (CEO)");

    let ends = (t(NOW) + TimeDelta::hours(1)).to_rfc3339();
    let r = as_script(
        Method::POST,
        "/api/v1/silences".into(),
        json!({"device_id": "d1", "ends_at": ends, "comment": "panel swap",
               "created_by": "alice (CEO)"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let s = r.json();
    assert_eq!(s["created_by"], me.as_str());
    assert_eq!(s["on_behalf_of"], "alice (CEO)");
    let r = as_script(
        Method::DELETE,
        format!("/api/v1/silences/{}", s["id"]),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["deleted_by"], me.as_str());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn acking_a_resolved_alert_is_allowed_and_recorded(pool: PgPool) {
    let id = open(&pool, &device_alert(Kind::Throttled, "d1", None), min(0)).await;
    assert!(resolve(&pool, id, min(20), json!({})).await);
    let app = TestApp::new(&pool, TOKEN);
    let a = ack_ok(&app, id, &json!({"by": "carol", "note": "post-mortem"})).await;
    assert_eq!(a["status"], "resolved");
    assert_eq!(a["resolved_at"], "2026-11-27T10:20:00Z");
    assert_eq!(a["acknowledged_by"], "token:0:bootstrap");
    assert_eq!(a["acknowledged_on_behalf_of"], "carol");
    assert_eq!(a["ack_note"], "post-mortem");
    assert_eq!(event_types(&a), ["opened", "resolved", "acknowledged"]);
    assert_eq!(a["events"][2]["actor"], "token:0:bootstrap");
    let page = get_ok(&app, "/api/v1/alerts?status=resolved").await;
    assert_eq!(page["items"][0]["acknowledged_on_behalf_of"], "carol");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn concurrent_acks_record_one_event(pool: PgPool) {
    let id = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let app = TestApp::new(&pool, TOKEN);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let app = app.clone();
        tasks.spawn(async move {
            let r = ack(&app, id, &json!({"by": format!("op-{i}")})).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            r.json()["acknowledged_on_behalf_of"]
                .as_str()
                .unwrap()
                .to_string()
        });
    }
    let mut winners = BTreeSet::new();
    while let Some(who) = tasks.join_next().await {
        winners.insert(who.unwrap());
    }
    assert_eq!(
        winners.len(),
        1,
        "every response names the one winner: {winners:?}"
    );
    let a = get_ok(&app, &format!("/api/v1/alerts/{id}")).await;
    assert_eq!(event_types(&a), ["opened", "acknowledged"]);
    assert_eq!(
        a["acknowledged_on_behalf_of"],
        winners.first().unwrap().as_str()
    );
    assert_eq!(a["events"][1]["actor"], a["acknowledged_by"]);
    assert_eq!(
        a["events"][1]["details"]["on_behalf_of"],
        a["acknowledged_on_behalf_of"]
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn bad_ack_bodies_are_client_errors(pool: PgPool) {
    let id = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let app = TestApp::new(&pool, TOKEN);
    let uri = format!("/api/v1/alerts/{id}/ack");
    let long_by = format!(r#"{{"by": "{}"}}"#, "b".repeat(201));
    let long_note = format!(r#"{{"by": "alice", "note": "{}"}}"#, "n".repeat(4001));
    // well-formed JSON that the endpoint refuses: 422
    let refused = [
        r#"{"by": ""}"#,
        r#"{"by": "   "}"#,
        r#"{"by": 5}"#,
        r#"{"by": ["alice"]}"#,
        r#"{"by": "al\u0000ice"}"#,
        r#"{"by": "alice", "note": "\u0000"}"#,
        r#"{"by": "alice", "note": "on it\u0000"}"#,
        r#"{"by": "alice", "note": ""}"#,
        r#"{"by": "alice", "note": 5}"#,
        r#"{"by": "alice", "extra": 1}"#,
        r#"{"by": "alice", "acknowledged_by": "mallory"}"#,
        r#"{"by": "alice", "by": "bob"}"#,
        "[]",
        "null",
        r#""alice""#,
        long_by.as_str(),
        long_note.as_str(),
    ];
    for body in refused {
        let r = send_json(&app, Method::POST, &uri, body).await;
        assert_problem(&r, 422, &format!("body {body:.60}"));
    }
    // not JSON, or not declared as JSON: 4xx, axum's choice of which
    let raw: [(Option<&str>, &[u8]); 10] = [
        (Some("application/json"), b"{\"by\""),
        (Some("application/json"), b"{\"by\": \"alice\""),
        (Some("application/json"), b""),
        (Some("application/json"), b"not json"),
        (Some("application/json"), b"{\"by\": \"al\xffice\"}"),
        (Some("text/plain"), b"{\"by\": \"alice\"}"),
        (Some("application/x-www-form-urlencoded"), b"by=alice"),
        (Some("application/jsonx"), b"{\"by\": \"alice\"}"),
        (Some("application/json"), b"{\"by\": \"alice\"} trailing"),
        (None, b"{\"by\": \"alice\"}"),
    ];
    for (ct, body) in raw {
        let r = send(&app, Method::POST, &uri, bearer(TOKEN), ct, body.to_vec()).await;
        let what = format!("{ct:?} {:?}", String::from_utf8_lossy(body));
        assert_client_problem(&r, &[400, 415, 422], &what);
    }
    // far too big
    let huge = format!(r#"{{"by": "alice", "note": "{}"}}"#, "n".repeat(3 << 20));
    let r = send_json(&app, Method::POST, &uri, &huge).await;
    assert_client_problem(&r, &[400, 413, 422], "3 MiB body");

    // None of it did anything.
    let a = get_ok(&app, &format!("/api/v1/alerts/{id}")).await;
    assert!(a["acknowledged_by"].is_null(), "{a}");
    assert!(a["acknowledged_at"].is_null(), "{a}");
    assert_eq!(event_types(&a), ["opened"]);

    // The limits themselves are fine; JSON escapes are decoded.
    let by = "b".repeat(200);
    let note = "n".repeat(4000);
    let ok = ack_ok(&app, id, &json!({"by": by, "note": note})).await;
    assert_eq!(ok["acknowledged_on_behalf_of"], by.as_str());
    assert_eq!(ok["ack_note"], note.as_str());
}

// ---------------------------------------------------------------------------------------------
// PUT /alerts/{id}/ticket

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn ticket_link_and_relink(pool: PgPool) {
    let id = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let app = TestApp::new(&pool, TOKEN);
    let clock = app.clock.clone();
    let body = json!({"ref": "OPS-123", "url": "https://tickets/OPS-123"});

    let a = ticket_ok(&app, id, &body).await;
    assert_alert_shape(&a);
    assert_eq!(a["ticket_ref"], "OPS-123");
    assert_eq!(a["ticket_url"], "https://tickets/OPS-123");
    assert_eq!(a["status"], "firing");
    assert!(
        a["acknowledged_by"].is_null(),
        "a ticket is not an ack: {a}"
    );
    assert_eq!(event_types(&a), ["opened", "ticket_linked"]);
    let e = &a["events"][1];
    // the trail names the token that linked it
    assert_eq!(e["actor"], "token:0:bootstrap");
    assert_eq!(e["at"], NOW);
    assert_eq!(
        e["details"],
        json!({"ref": "OPS-123", "url": "https://tickets/OPS-123"})
    );
    assert_eq!(get_ok(&app, &format!("/api/v1/alerts/{id}")).await, a);

    // Same again: no new event.
    clock.advance(TimeDelta::minutes(1));
    assert_eq!(ticket_ok(&app, id, &body).await, a);
    assert_eq!(event_count(&pool, id).await, 2);

    // A different ref: a new event.
    clock.advance(TimeDelta::minutes(1));
    let b = ticket_ok(
        &app,
        id,
        &json!({"ref": "OPS-124", "url": "http://tickets/OPS-124", "by": "dave"}),
    )
    .await;
    assert_eq!(b["ticket_ref"], "OPS-124");
    assert_eq!(b["ticket_url"], "http://tickets/OPS-124");
    assert_eq!(
        event_types(&b),
        ["opened", "ticket_linked", "ticket_linked"]
    );
    assert_eq!(b["events"][2]["actor"], "token:0:bootstrap");
    assert_eq!(b["events"][2]["details"]["on_behalf_of"], "dave");
    assert_eq!(b["events"][2]["at"], "2026-11-27T12:02:00Z");

    // Only the url changes: also a new event. Without a url: the url goes.
    let c = ticket_ok(
        &app,
        id,
        &json!({"ref": "OPS-124", "url": "https://tickets/OPS-124"}),
    )
    .await;
    assert_eq!(c["ticket_url"], "https://tickets/OPS-124");
    assert_eq!(c["events"].as_array().unwrap().len(), 4);
    let d = ticket_ok(&app, id, &json!({"ref": "OPS-124"})).await;
    assert_eq!(d["ticket_ref"], "OPS-124");
    assert!(d["ticket_url"].is_null(), "{d}");
    assert_eq!(d["events"].as_array().unwrap().len(), 5);
    assert_eq!(
        d["events"][4]["details"],
        json!({"ref": "OPS-124", "url": null})
    );
    let e = ticket_ok(&app, id, &json!({"ref": "OPS-124", "url": null})).await;
    assert_eq!(e, d, "an explicit null url is no url");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn bad_ticket_bodies_are_client_errors(pool: PgPool) {
    let id = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let app = TestApp::new(&pool, TOKEN);
    let uri = format!("/api/v1/alerts/{id}/ticket");
    let refused = [
        "{}",
        r#"{"url": "https://tickets/OPS-1"}"#,
        r#"{"ref": ""}"#,
        r#"{"ref": "  "}"#,
        r#"{"ref": null}"#,
        r#"{"ref": 123}"#,
        r#"{"ref": "OPS\u0000-1"}"#,
        r#"{"ref": "OPS-1", "url": "ftp://tickets/OPS-1"}"#,
        r#"{"ref": "OPS-1", "url": "javascript:alert(1)"}"#,
        r#"{"ref": "OPS-1", "url": "tickets/OPS-1"}"#,
        r#"{"ref": "OPS-1", "url": "//tickets/OPS-1"}"#,
        r#"{"ref": "OPS-1", "url": "data:text/html,<script>alert(1)</script>"}"#,
        r#"{"ref": "OPS-1", "url": ""}"#,
        r#"{"ref": "OPS-1", "url": "https://t/\u0000"}"#,
        r#"{"ref": "OPS-1", "url": 5}"#,
        r#"{"ref": "OPS-1", "by": ""}"#,
        r#"{"ref": "OPS-1", "by": "\u0000"}"#,
        r#"{"ref": "OPS-1", "extra": true}"#,
        r#"{"reference": "OPS-1"}"#,
        "[]",
        "null",
    ];
    for body in refused {
        let r = send_json(&app, Method::PUT, &uri, body).await;
        assert_problem(&r, 422, &format!("body {body}"));
    }
    let raw: [(Option<&str>, &[u8]); 4] = [
        (Some("application/json"), b"{\"ref\": "),
        (Some("application/json"), b""),
        (Some("text/plain"), b"{\"ref\": \"OPS-1\"}"),
        (None, b"{\"ref\": \"OPS-1\"}"),
    ];
    for (ct, body) in raw {
        let r = send(&app, Method::PUT, &uri, bearer(TOKEN), ct, body.to_vec()).await;
        let what = format!("{ct:?} {:?}", String::from_utf8_lossy(body));
        assert_client_problem(&r, &[400, 415, 422], &what);
    }
    let a = get_ok(&app, &format!("/api/v1/alerts/{id}")).await;
    assert!(a["ticket_ref"].is_null(), "{a}");
    assert!(a["ticket_url"].is_null(), "{a}");
    assert_eq!(event_types(&a), ["opened"]);
}

// ---------------------------------------------------------------------------------------------
// The ticketing flow

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn ticketing_flow_end_to_end(pool: PgPool) {
    insert_device(&pool, "scr-1", Some("bldg-a"), "silent", false).await;
    insert_device(&pool, "scr-2", Some("bldg-a"), "offline", false).await;
    insert_device(&pool, "scr-3", None, "healthy", false).await;
    let gap = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "scr-1", Some("bldg-a")),
        min(0),
    )
    .await;
    let other = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "scr-2", Some("bldg-a")),
        min(1),
    )
    .await;
    let flap = open(&pool, &device_alert(Kind::Flapping, "scr-3", None), min(2)).await;
    let old = open(
        &pool,
        &device_alert(Kind::Throttled, "scr-3", None),
        min(-60),
    )
    .await;
    assert!(resolve(&pool, old, min(-50), json!({})).await);
    let app = TestApp::new(&pool, TOKEN);
    let clock = app.clock.clone();

    // 1. What is firing?
    let firing = get_ok(&app, "/api/v1/alerts?status=firing").await;
    assert_eq!(ids(&firing), [flap, other, gap]);
    let summary = get_ok(&app, "/api/v1/fleet/summary").await;
    assert_eq!(summary["firing_alerts"], 3);
    assert_eq!(summary["unacknowledged_alerts"], 3);

    // 2. Acknowledge, 3. attach a ticket.
    clock.set(min(5));
    ack_ok(&app, gap, &json!({"by": "alice", "note": "on it"})).await;
    clock.set(min(7));
    ticket_ok(
        &app,
        gap,
        &json!({"ref": "OPS-123", "url": "https://tickets/OPS-123"}),
    )
    .await;
    let summary = get_ok(&app, "/api/v1/fleet/summary").await;
    assert_eq!(summary["unacknowledged_alerts"], 2);

    // 4. The screen comes back: the detector resolves it.
    assert!(resolve(&pool, gap, min(20), json!({"covered": false})).await);

    // 5. It is among the resolved, with its acknowledgement and ticket.
    let resolved = get_ok(&app, "/api/v1/alerts?status=resolved").await;
    assert_eq!(ids(&resolved), [gap, old]);
    let a = &resolved["items"][0];
    assert_alert_shape(a);
    assert_eq!(a["status"], "resolved");
    assert_eq!(a["resolved_at"], "2026-11-27T10:20:00Z");
    assert_eq!(a["acknowledged_by"], "token:0:bootstrap");
    assert_eq!(a["acknowledged_on_behalf_of"], "alice");
    assert_eq!(a["acknowledged_at"], "2026-11-27T10:05:00Z");
    assert_eq!(a["ack_note"], "on it");
    assert_eq!(a["ticket_ref"], "OPS-123");
    assert_eq!(a["ticket_url"], "https://tickets/OPS-123");
    assert_eq!(a["details"]["covered"], false);
    assert_eq!(
        ids(&get_ok(&app, "/api/v1/alerts?status=firing").await),
        [flap, other]
    );
    let full = get_ok(&app, &format!("/api/v1/alerts/{gap}")).await;
    assert_eq!(
        event_types(&full),
        ["opened", "acknowledged", "ticket_linked", "resolved"]
    );
    let summary = get_ok(&app, "/api/v1/fleet/summary").await;
    assert_eq!(summary["firing_alerts"], 2);
    assert_eq!(summary["unacknowledged_alerts"], 2);
}

// ---------------------------------------------------------------------------------------------
// GET /fleet/summary

fn all_states() -> BTreeSet<String> {
    fleetwatch::http::api::devices::STATES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn all_kinds() -> BTreeSet<String> {
    Kind::ALL.iter().map(|k| k.as_str().to_string()).collect()
}

fn counts(v: &Value) -> BTreeMap<String, i64> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .iter()
        .map(|(k, n)| (k.clone(), n.as_i64().unwrap()))
        .collect()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn summary_of_an_empty_fleet_has_every_key(pool: PgPool) {
    let app = TestApp::new(&pool, TOKEN);
    let s = get_ok(&app, "/api/v1/fleet/summary").await;
    let by_state = counts(&s["devices_by_state"]);
    assert_eq!(
        by_state.keys().cloned().collect::<BTreeSet<_>>(),
        all_states()
    );
    assert!(by_state.values().all(|n| *n == 0), "{s}");
    let by_kind = counts(&s["firing_alerts_by_kind"]);
    assert_eq!(
        by_kind.keys().cloned().collect::<BTreeSet<_>>(),
        all_kinds()
    );
    assert!(by_kind.values().all(|n| *n == 0), "{s}");
    for f in [
        "devices",
        "firing_alerts",
        "covered_alerts",
        "unacknowledged_alerts",
    ] {
        assert_eq!(s[f], 0, "{f}: {s}");
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn summary_counts_a_seeded_mix(pool: PgPool) {
    for (id, group, state, retired) in [
        ("h1", Some("g1"), "healthy", false),
        ("h2", Some("g1"), "healthy", false),
        ("h3", None, "healthy", false),
        ("l1", None, "late", false),
        ("s1", Some("g1"), "silent", false),
        ("s2", Some("g1"), "silent", false),
        ("o1", Some("g2"), "offline", false),
        ("n1", None, "never_seen", false),
        // retired, whatever state it was left in
        ("r1", Some("g2"), "offline", true),
        ("r2", None, "retired", true),
        ("r3", None, "healthy", true),
    ] {
        insert_device(&pool, id, group, state, retired).await;
    }
    let s1 = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "s1", Some("g1")),
        min(0),
    )
    .await;
    let s2 = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "s2", Some("g1")),
        min(0),
    )
    .await;
    let o1 = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "o1", Some("g2")),
        min(1),
    )
    .await;
    let outage = open(&pool, &group_alert(Kind::GroupOutage, "g1"), min(2)).await;
    let mut tx = pool.begin().await.unwrap();
    let covered = lifecycle::cover(&mut tx, &[s1, s2], outage, min(2))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(covered.len(), 2);
    let thr = open(&pool, &device_alert(Kind::Throttled, "h3", None), min(3)).await;
    let flap = open(&pool, &device_alert(Kind::Flapping, "l1", None), min(4)).await;
    let old_gap = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "h1", Some("g1")),
        min(-90),
    )
    .await;
    assert!(resolve(&pool, flap, min(10), json!({})).await);
    assert!(resolve(&pool, old_gap, min(-80), json!({})).await);
    let app = TestApp::new(&pool, TOKEN);
    ack_ok(&app, o1, &json!({"by": "alice"})).await;
    ack_ok(&app, thr, &json!({"by": "alice"})).await;
    // acknowledging a resolved alert changes no firing count
    ack_ok(&app, old_gap, &json!({"by": "alice"})).await;

    let s = get_ok(&app, "/api/v1/fleet/summary").await;
    let want_states: BTreeMap<String, i64> = [
        ("never_seen", 1),
        ("healthy", 3),
        ("late", 1),
        ("silent", 2),
        ("offline", 1),
        ("quiet", 0),
        ("retired", 3),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(counts(&s["devices_by_state"]), want_states, "{s}");
    assert_eq!(s["devices"], 11, "{s}");

    let mut want_kinds: BTreeMap<String, i64> = all_kinds().into_iter().map(|k| (k, 0)).collect();
    want_kinds.insert("heartbeat_gap".into(), 3);
    want_kinds.insert("group_outage".into(), 1);
    want_kinds.insert("throttled".into(), 1);
    assert_eq!(counts(&s["firing_alerts_by_kind"]), want_kinds, "{s}");
    assert_eq!(s["firing_alerts"], 5, "{s}");
    assert_eq!(s["covered_alerts"], 2, "{s}");
    // s1, s2 and the outage
    assert_eq!(s["unacknowledged_alerts"], 3, "{s}");

    // The outage resolves and releases its cover; s1 comes back.
    let mut tx = pool.begin().await.unwrap();
    assert!(
        lifecycle::resolve(&mut tx, outage, min(20), None, json!({}))
            .await
            .unwrap()
    );
    lifecycle::uncover(&mut tx, outage, min(20)).await.unwrap();
    assert!(lifecycle::resolve(&mut tx, s1, min(20), None, json!({}))
        .await
        .unwrap());
    tx.commit().await.unwrap();
    let s = get_ok(&app, "/api/v1/fleet/summary").await;
    assert_eq!(s["firing_alerts"], 3, "{s}");
    assert_eq!(s["firing_alerts_by_kind"]["heartbeat_gap"], 2, "{s}");
    assert_eq!(s["firing_alerts_by_kind"]["group_outage"], 0, "{s}");
    assert_eq!(s["covered_alerts"], 0, "{s}");
    assert_eq!(s["unacknowledged_alerts"], 1, "{s}");
    let s2_trail = get_ok(&app, &format!("/api/v1/alerts/{s2}")).await;
    assert_eq!(event_types(&s2_trail), ["opened", "covered", "uncovered"]);
}

// ---------------------------------------------------------------------------------------------
// Authentication

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn every_alert_route_requires_a_token(pool: PgPool) {
    let id = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "secret-dev", None),
        min(0),
    )
    .await;
    let app = TestApp::new(&pool, TOKEN);
    let ack_body = r#"{"by": "mallory"}"#;
    let ticket_body = r#"{"ref": "EVIL-1"}"#;
    let routes: Vec<(Method, String, Option<&str>)> = vec![
        (Method::GET, "/api/v1/alerts".into(), None),
        (Method::GET, "/api/v1/alerts?status=firing".into(), None),
        (Method::GET, "/api/v1/alerts?status=bogus".into(), None),
        (Method::GET, format!("/api/v1/alerts/{id}"), None),
        (Method::GET, "/api/v1/alerts/999999".into(), None),
        (Method::GET, "/api/v1/alerts/abc".into(), None),
        (
            Method::POST,
            format!("/api/v1/alerts/{id}/ack"),
            Some(ack_body),
        ),
        (Method::POST, format!("/api/v1/alerts/{id}/ack"), Some("{")),
        (
            Method::POST,
            "/api/v1/alerts/999999/ack".into(),
            Some(ack_body),
        ),
        (
            Method::PUT,
            format!("/api/v1/alerts/{id}/ticket"),
            Some(ticket_body),
        ),
        (
            Method::PUT,
            format!("/api/v1/alerts/{id}/ticket"),
            Some("[]"),
        ),
        (Method::GET, "/api/v1/fleet/summary".into(), None),
    ];
    let creds: [(&str, Option<HeaderValue>); 5] = [
        ("no token", None),
        ("wrong token", bearer("nope")),
        ("empty bearer", Some(HeaderValue::from_static("Bearer "))),
        ("basic", Some(HeaderValue::from_static("Basic dG9rOg=="))),
        ("bare token", Some(HeaderValue::from_static("tok"))),
    ];
    for (method, uri, body) in &routes {
        for (what, auth) in &creds {
            let r = send(
                &app,
                method.clone(),
                uri,
                auth.clone(),
                body.map(|_| "application/json"),
                body.unwrap_or("").as_bytes().to_vec(),
            )
            .await;
            let what = format!("{method} {uri} with {what}");
            assert_problem(&r, 401, &what);
            assert_eq!(
                r.headers.get(WWW_AUTHENTICATE).map(|v| v.as_bytes()),
                Some(&b"Bearer"[..]),
                "{what}"
            );
            assert!(!r.text().contains("secret-dev"), "{what}: {}", r.text());
        }
    }
    // nothing was acknowledged or linked
    let a = get_ok(&app, &format!("/api/v1/alerts/{id}")).await;
    assert!(a["acknowledged_by"].is_null(), "{a}");
    assert!(a["ticket_ref"].is_null(), "{a}");
    assert_eq!(event_types(&a), ["opened"]);
}

// ---------------------------------------------------------------------------------------------
// Hostile strings

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hostile_strings_round_trip(pool: PgPool) {
    let group = "Bldg <1> \"Süd\" & 'Nord'";
    let hostile = [
        "<script>alert(\"x\")</script>",
        "O'Brien \"quoted\" & <b>bold</b>",
        "日本-スクリーン 🚀",
        "back\\slash\ttab\nnewline",
        "\u{2028}\u{2029}\u{feff}zero\u{200b}width",
        "a/b?c=d#e%20+f",
        "'; drop table alerts; --",
        "{\"json\": [1, 2]}",
        "\u{7f}\u{1}\u{1f}control",
    ];
    let mut made = Vec::new();
    for (i, dev) in hostile.iter().enumerate() {
        insert_device(&pool, dev, Some(group), "silent", false).await;
        let spec = AlertSpec {
            summary: format!("{dev} went silent — since {i} min"),
            details: json!({
                "device": dev,
                "nested": {"list": [dev, i, null, true], "<key>": dev},
                dev.to_string(): "as a key",
            }),
            ..device_alert(Kind::HeartbeatGap, dev, Some(group))
        };
        made.push((open(&pool, &spec, min(i as i64)).await, spec));
    }
    let app = TestApp::new(&pool, TOKEN);

    for (id, spec) in &made {
        let dev = spec.device_id.as_deref().unwrap();
        let page = get_ok(&app, &format!("/api/v1/alerts?device={}", enc(dev))).await;
        assert_eq!(ids(&page), [*id], "device={dev:?}: {page}");
        let one = get_ok(&app, &format!("/api/v1/alerts/{id}")).await;
        for a in [&page["items"][0], &one] {
            assert_eq!(a["device_id"], dev);
            assert_eq!(a["group"], group);
            assert_eq!(a["summary"], spec.summary.as_str());
            assert_eq!(a["details"], spec.details);
        }
        // acknowledgement and ticket texts round-trip too
        let by = format!("{dev} (on call)");
        let acked = ack_ok(&app, *id, &json!({"by": by, "note": dev})).await;
        assert_eq!(acked["acknowledged_on_behalf_of"], by.as_str());
        assert_eq!(acked["ack_note"], dev);
        assert_eq!(acked["events"][1]["details"]["on_behalf_of"], by.as_str());
        assert_eq!(acked["events"][1]["details"]["note"], dev);
        let url = format!("https://tickets/?q={}", enc(dev));
        let linked = ticket_ok(&app, *id, &json!({"ref": dev, "url": url, "by": dev})).await;
        assert_eq!(linked["ticket_ref"], dev);
        assert_eq!(linked["ticket_url"], url.as_str());
        assert_eq!(linked["events"][2]["details"]["on_behalf_of"], dev);
    }
    let page = get_ok(&app, &format!("/api/v1/alerts?group={}", enc(group))).await;
    let mut want: Vec<i64> = made.iter().map(|(id, _)| *id).collect();
    want.reverse();
    assert_eq!(ids(&page), want);
    let s = get_ok(&app, "/api/v1/fleet/summary").await;
    assert_eq!(s["devices_by_state"]["silent"], hostile.len() as i64);
    assert_eq!(
        s["firing_alerts_by_kind"]["heartbeat_gap"],
        hostile.len() as i64
    );
}
