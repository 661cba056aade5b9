//! The HTTP edge: `fleetwatch::http::router` driven with `oneshot` against a fresh database per
//! test (authentication, the device API, error shapes, health endpoints), plus a few tests over
//! a real socket with reqwest.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use axum::http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, TimeDelta, Utc};
use common::http::{
    assert_problem, assert_unauthorized, bearer, call, get, get_ok, t, TestApp, NOW,
};
use fleetwatch::db::presence::{self, Stored};
use fleetwatch::domain::presence::{EventType, PresenceEvent};
use fleetwatch::domain::DropReason;
use fleetwatch::http::{router, AppState};
use serde_json::Value;
use sqlx::PgPool;

const TOKEN: &str = "tok";

/// Percent-encode everything but unreserved characters (usable in a path segment or a query).
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

async fn insert_group(pool: &PgPool, id: &str) {
    sqlx::query("insert into groups (id, name) values ($1, $1) on conflict do nothing")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

async fn insert_device(pool: &PgPool, id: &str, group: Option<&str>, state: &str) {
    if let Some(g) = group {
        insert_group(pool, g).await;
    }
    sqlx::query("insert into devices (id, group_id, state) values ($1, $2, $3)")
        .bind(id)
        .bind(group)
        .bind(state)
        .execute(pool)
        .await
        .unwrap();
}

fn event(
    client: &str,
    kind: EventType,
    ts: DateTime<Utc>,
    session: Option<&str>,
    version: Option<i64>,
) -> PresenceEvent {
    PresenceEvent {
        client_id: client.into(),
        thing_name: Some(client.into()),
        timestamp: ts,
        event_type: kind,
        session_identifier: session.map(str::to_string),
        principal_identifier: Some("principal-1".into()),
        ip_address: None,
        version_number: version,
        client_initiated_disconnect: (kind == EventType::Disconnected).then_some(false),
        disconnect_reason: None,
        connect_failure_reason: None,
    }
}

fn connect(client: &str, ts: DateTime<Utc>, session: &str, v: i64, ip: &str) -> PresenceEvent {
    PresenceEvent {
        ip_address: Some(ip.into()),
        ..event(client, EventType::Connected, ts, Some(session), Some(v))
    }
}

fn disconnect(
    client: &str,
    ts: DateTime<Utc>,
    session: &str,
    v: i64,
    reason: &str,
) -> PresenceEvent {
    PresenceEvent {
        disconnect_reason: Some(reason.into()),
        ..event(client, EventType::Disconnected, ts, Some(session), Some(v))
    }
}

async fn store(pool: &PgPool, ev: &PresenceEvent, device: &str) -> Stored {
    presence::store(
        pool,
        ev,
        Some(device),
        None,
        ev.timestamp + TimeDelta::seconds(1),
        TimeDelta::minutes(5),
    )
    .await
    .unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Every timestamp field that is set must be RFC 3339 in UTC with a `Z`.
fn assert_utc(v: &Value, field: &str) -> Option<DateTime<Utc>> {
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

// ---------------------------------------------------------------------------------------------
// Authentication

/// Every route under `/api/v1` (with an existing device, so a 401 is not a 404 in disguise).
const API_ROUTES: [&str; 6] = [
    "/api/v1/devices",
    "/api/v1/devices?limit=1",
    "/api/v1/devices/known",
    "/api/v1/devices/known/events",
    "/api/v1/devices/unknown",
    "/api/v1/devices?limit=0&state=bogus",
];

fn bad_credentials() -> Vec<(&'static str, Option<HeaderValue>)> {
    let hv = |s: &'static str| Some(HeaderValue::from_static(s));
    vec![
        ("missing", None),
        ("wrong token", hv("Bearer nope")),
        ("empty token", hv("Bearer ")),
        ("scheme only", hv("Bearer")),
        ("token without scheme", hv("tok")),
        ("basic scheme", hv("Basic dG9rOg==")),
        ("basic scheme with the token", hv("Basic tok")),
        ("extra chars after", hv("Bearer tokk")),
        ("extra chars before", hv("Bearer xtok")),
        ("token twice", hv("Bearer tok tok")),
        ("prefix of the token", hv("Bearer to")),
        ("wrong case", hv("Bearer TOK")),
        ("other scheme", hv("Token tok")),
        (
            "non-ascii",
            Some(HeaderValue::from_bytes(b"Bearer tok\xe9").unwrap()),
        ),
    ]
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn every_api_route_refuses_bad_credentials(pool: PgPool) {
    insert_device(&pool, "known", None, "healthy").await;
    let app = TestApp::new(&pool, TOKEN);
    for route in API_ROUTES {
        for (what, auth) in bad_credentials() {
            let r = call(&app, Method::GET, route, auth, None).await;
            assert_unauthorized(&r, &format!("{route} with {what}"));
            let body = r.text();
            assert!(!body.contains("known"), "{route}: {body}");
        }
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_right_token_works(pool: PgPool) {
    insert_device(&pool, "known", None, "healthy").await;
    let app = TestApp::new(&pool, TOKEN);
    for auth in ["Bearer tok", "bearer tok", "BEARER tok"] {
        let r = call(
            &app,
            Method::GET,
            "/api/v1/devices",
            Some(HeaderValue::from_static(auth)),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{auth}: {}", r.text());
        assert_eq!(ids(&r.json()), ["known"]);
    }
    assert_eq!(get_ok(&app, "/api/v1/devices/known").await["id"], "known");
    let ev = get_ok(&app, "/api/v1/devices/known/events").await;
    assert_eq!(ev["items"], serde_json::json!([]));
    assert!(ev["next_cursor"].is_null());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn no_configured_token_refuses_everything(pool: PgPool) {
    insert_device(&pool, "known", None, "healthy").await;
    let app = TestApp::build(&pool, t(NOW), None, |_| {});
    let mut creds = bad_credentials();
    creds.push(("the usual token", bearer(TOKEN)));
    creds.push(("an empty bearer", Some(HeaderValue::from_static("Bearer "))));
    for route in API_ROUTES {
        for (what, auth) in &creds {
            let r = call(&app, Method::GET, route, auth.clone(), None).await;
            assert_unauthorized(&r, &format!("{route} with {what}, no token configured"));
        }
    }
    // The unauthenticated endpoints still answer.
    let r = call(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// GET /devices

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn device_fields_are_all_present_and_utc(pool: PgPool) {
    insert_group(&pool, "g1").await;
    sqlx::query(
        r#"insert into devices (id, group_id, state, state_since, connected, last_connected_at,
               last_disconnected_at, last_disconnect_reason, last_impression_at, last_device_ts,
               last_ip)
           values ('full', 'g1', 'offline', '2026-11-27T12:00:00+09:00', false,
               '2026-11-27T02:30:00.123456Z', '2026-11-27T11:45:00+09:00', 'CONNECTION_LOST',
               '2026-11-26T23:59:59-05:00', '2026-11-27T04:00:00Z', '198.51.100.7')"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    insert_device(&pool, "bare", None, "never_seen").await;
    let app = TestApp::new(&pool, TOKEN);

    let page = get_ok(&app, "/api/v1/devices").await;
    assert!(page["next_cursor"].is_null(), "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    let fields = [
        "id",
        "group",
        "state",
        "state_since",
        "connected",
        "last_connected_at",
        "last_disconnected_at",
        "last_disconnect_reason",
        "last_impression_at",
        "last_device_ts",
        "last_ip",
    ];
    for d in items {
        for f in fields {
            assert!(d.get(f).is_some(), "field {f} missing in {d}");
        }
    }
    let full = items.iter().find(|d| d["id"] == "full").unwrap();
    assert_eq!(full["group"], "g1");
    assert_eq!(full["state"], "offline");
    assert_eq!(full["connected"], false);
    assert_eq!(full["last_disconnect_reason"], "CONNECTION_LOST");
    assert_eq!(full["last_ip"], "198.51.100.7");
    let expect = [
        ("state_since", "2026-11-27T03:00:00Z"),
        ("last_connected_at", "2026-11-27T02:30:00.123456Z"),
        ("last_disconnected_at", "2026-11-27T02:45:00Z"),
        ("last_impression_at", "2026-11-27T04:59:59Z"),
        ("last_device_ts", "2026-11-27T04:00:00Z"),
    ];
    for (f, want) in expect {
        assert_eq!(assert_utc(full, f), Some(t(want)), "{f}");
        assert_eq!(full[f], want, "{f} as written on the wire");
    }

    let bare = items.iter().find(|d| d["id"] == "bare").unwrap();
    assert_eq!(bare["state"], "never_seen");
    assert!(assert_utc(bare, "state_since").is_some());
    for f in [
        "group",
        "connected",
        "last_connected_at",
        "last_disconnected_at",
        "last_disconnect_reason",
        "last_impression_at",
        "last_device_ts",
        "last_ip",
    ] {
        assert!(bare[f].is_null(), "{f}: {bare}");
    }

    // The single-device endpoint shows the same document.
    let one = get_ok(&app, "/api/v1/devices/full").await;
    assert_eq!(&one, full);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn device_connectivity_from_presence_events(pool: PgPool) {
    let t0 = t("2026-11-27T10:00:00Z");
    let m = |n: i64| t0 + TimeDelta::minutes(n);
    // delivered out of order: reconnect, drop, first connect
    store(&pool, &connect("s-1", m(3), "b", 2, "198.51.100.8"), "s-1").await;
    store(
        &pool,
        &disconnect("s-1", m(2), "a", 1, "CONNECTION_LOST"),
        "s-1",
    )
    .await;
    store(&pool, &connect("s-1", m(0), "a", 1, "198.51.100.7"), "s-1").await;
    store(&pool, &connect("s-2", m(1), "c", 5, "203.0.113.1"), "s-2").await;
    store(
        &pool,
        &disconnect("s-2", m(4), "c", 5, "MQTT_KEEP_ALIVE_TIMEOUT"),
        "s-2",
    )
    .await;
    let app = TestApp::new(&pool, TOKEN);

    let s1 = get_ok(&app, "/api/v1/devices/s-1").await;
    assert_eq!(s1["connected"], true, "{s1}");
    assert_eq!(s1["last_ip"], "198.51.100.8");
    assert_eq!(s1["last_disconnect_reason"], "CONNECTION_LOST");
    assert_eq!(assert_utc(&s1, "last_connected_at"), Some(m(3)));
    assert_eq!(assert_utc(&s1, "last_disconnected_at"), Some(m(2)));
    assert_eq!(s1["state"], "never_seen");

    let s2 = get_ok(&app, "/api/v1/devices/s-2").await;
    assert_eq!(s2["connected"], false, "{s2}");
    assert_eq!(s2["last_ip"], "203.0.113.1");
    assert_eq!(s2["last_disconnect_reason"], "MQTT_KEEP_ALIVE_TIMEOUT");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn device_filters(pool: PgPool) {
    for (id, group, state) in [
        ("alpha-1", Some("g1"), "healthy"),
        ("ALPHA-2", Some("g1"), "silent"),
        ("beta_1", Some("g2"), "healthy"),
        ("beta%1", Some("g2"), "offline"),
        ("betaX1", None, "healthy"),
        ("back\\slash", None, "late"),
        ("plain", None, "never_seen"),
    ] {
        insert_device(&pool, id, group, state).await;
    }
    let app = TestApp::new(&pool, TOKEN);
    let list = |query: String| {
        let app = app.clone();
        async move {
            let page = get_ok(&app, &format!("/api/v1/devices?{query}")).await;
            assert!(page["next_cursor"].is_null(), "{query}: {page}");
            ids(&page).into_iter().collect::<BTreeSet<_>>()
        }
    };

    assert_eq!(
        list("state=healthy".into()).await,
        set(&["alpha-1", "beta_1", "betaX1"])
    );
    assert_eq!(list("state=silent".into()).await, set(&["ALPHA-2"]));
    assert_eq!(list("state=retired".into()).await, set(&[]));
    for s in fleetwatch::http::api::devices::STATES {
        let r = get(&app, &format!("/api/v1/devices?state={s}")).await;
        assert_eq!(r.status, StatusCode::OK, "state={s}");
    }
    assert_eq!(list("group=g1".into()).await, set(&["alpha-1", "ALPHA-2"]));
    assert_eq!(list("group=nope".into()).await, set(&[]));
    assert_eq!(
        list("group=g1&state=healthy".into()).await,
        set(&["alpha-1"])
    );

    // q: case-insensitive substring of the id
    assert_eq!(list("q=alpha".into()).await, set(&["alpha-1", "ALPHA-2"]));
    assert_eq!(list("q=ALPHA".into()).await, set(&["alpha-1", "ALPHA-2"]));
    assert_eq!(list("q=Ha-2".into()).await, set(&["ALPHA-2"]));
    assert_eq!(list("q=alpha&group=g2".into()).await, set(&[]));
    // LIKE metacharacters are literal
    assert_eq!(list(format!("q={}", enc("_"))).await, set(&["beta_1"]));
    assert_eq!(list(format!("q={}", enc("a_1"))).await, set(&["beta_1"]));
    assert_eq!(list(format!("q={}", enc("%"))).await, set(&["beta%1"]));
    assert_eq!(list(format!("q={}", enc("a%1"))).await, set(&["beta%1"]));
    assert_eq!(
        list(format!("q={}", enc("\\"))).await,
        set(&["back\\slash"])
    );
    assert_eq!(
        list(format!("q={}", enc("k\\s"))).await,
        set(&["back\\slash"])
    );
    assert_eq!(list(format!("q={}", enc("%%"))).await, set(&[]));
    assert_eq!(list(format!("q={}", enc("x"))).await, set(&["betaX1"]));
    assert_eq!(list("q=".into()).await.len(), 7);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn cursor_pagination_walks_every_device_once(pool: PgPool) {
    let mut all = BTreeSet::new();
    for i in 0..23 {
        let id = match i {
            0 => "日本-スクリーン".to_string(),
            1 => "<script>".to_string(),
            2 => "with space".to_string(),
            3 => "a/b".to_string(),
            4 => "Z-upper".to_string(),
            _ => format!("screen-{i:03}"),
        };
        let group = if i % 3 == 0 { Some("g") } else { None };
        insert_device(&pool, &id, group, "healthy").await;
        all.insert(id);
    }
    let app = TestApp::new(&pool, TOKEN);

    for limit in [1usize, 2, 5, 7, 22, 23, 24, 1000] {
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut cursor: Option<String> = None;
        loop {
            let uri = match &cursor {
                Some(c) => format!("/api/v1/devices?limit={limit}&cursor={}", enc(c)),
                None => format!("/api/v1/devices?limit={limit}"),
            };
            let page = get_ok(&app, &uri).await;
            pages += 1;
            let got = ids(&page);
            assert!(got.len() <= limit, "limit {limit}: {page}");
            seen.extend(got);
            match page["next_cursor"].as_str() {
                Some(c) => {
                    assert_eq!(page["items"].as_array().unwrap().len(), limit);
                    cursor = Some(c.to_string());
                }
                None => break,
            }
            assert!(
                pages <= all.len() + 1,
                "limit {limit}: pagination does not end"
            );
        }
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "limit {limit}: duplicates {seen:?}"
        );
        assert_eq!(unique, all, "limit {limit}");
        assert_eq!(pages, all.len().div_ceil(limit).max(1), "limit {limit}");
    }

    // with a filter
    let mut seen = Vec::new();
    let mut uri = "/api/v1/devices?group=g&limit=2".to_string();
    loop {
        let page = get_ok(&app, &uri).await;
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/v1/devices?group=g&limit=2&cursor={}", enc(c)),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 8);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn bad_list_parameters_are_400_never_500(pool: PgPool) {
    insert_device(&pool, "d1", None, "healthy").await;
    let app = TestApp::new(&pool, TOKEN);
    let long = "x".repeat(1025);
    let cases = [
        "limit=0".to_string(),
        "limit=1001".into(),
        "limit=-1".into(),
        "limit=abc".into(),
        "limit=".into(),
        "limit=1.5".into(),
        "limit=99999999999999999999".into(),
        "limit=1&limit=2".into(),
        "state=bogus".into(),
        "state=HEALTHY".into(),
        "state=".into(),
        "cursor=!!!".into(),
        "cursor=%25%25%25".into(),
        "cursor=a".into(),
        // valid base64url, not UTF-8
        "cursor=_w".into(),
        "q=%00".into(),
        "q=a%00b".into(),
        "group=%00".into(),
        format!("q={long}"),
        format!("group={long}"),
    ];
    for q in cases {
        let r = get(&app, &format!("/api/v1/devices?{q}")).await;
        assert_problem(&r, 400, &format!("?{q}"));
    }
    // the limits themselves are fine
    for q in ["limit=1", "limit=1000"] {
        assert_eq!(
            ids(&get_ok(&app, &format!("/api/v1/devices?{q}")).await),
            ["d1"]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// GET /devices/{id}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hostile_ids_round_trip(pool: PgPool) {
    let hostile = [
        "<script>alert(1)</script>",
        "with space",
        "日本語-スクリーン",
        "emoji-🚀",
        "a/b",
        "a/../b",
        "..",
        "100%",
        "%2F",
        "a?b=c",
        "a#b",
        "a+b",
        "'; drop table devices; --",
        "\"quoted\"",
        "back\\slash",
    ];
    for id in hostile {
        insert_device(&pool, id, None, "healthy").await;
        store(
            &pool,
            &connect(id, t("2026-11-27T10:00:00Z"), "s", 1, "198.51.100.1"),
            id,
        )
        .await;
    }
    let app = TestApp::new(&pool, TOKEN);
    for id in hostile {
        let d = get_ok(&app, &format!("/api/v1/devices/{}", enc(id))).await;
        assert_eq!(d["id"], id, "{d}");
        assert_eq!(d["connected"], true, "{d}");
        let ev = get_ok(&app, &format!("/api/v1/devices/{}/events", enc(id))).await;
        assert_eq!(ev["items"].as_array().unwrap().len(), 1, "{id}: {ev}");
        assert_eq!(ev["items"][0]["client_id"], id);
    }
    let all = get_ok(&app, "/api/v1/devices").await;
    assert_eq!(
        ids(&all).into_iter().collect::<BTreeSet<_>>(),
        set(&hostile)
    );
    // exact match only, not a pattern
    assert_problem(&get(&app, "/api/v1/devices/a%25").await, 404, "a%");
    assert_problem(
        &get(&app, "/api/v1/devices/%3Cscript%3E").await,
        404,
        "<script>",
    );
    // the unencoded slash is another route
    assert_problem(
        &get(&app, "/api/v1/devices/a/b").await,
        404,
        "a/b unencoded",
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn unknown_and_invalid_device_ids(pool: PgPool) {
    insert_device(&pool, "d1", None, "healthy").await;
    let app = TestApp::new(&pool, TOKEN);
    for id in ["nope", "D1", "d1%20", "%20d1", &"x".repeat(200)] {
        assert_problem(&get(&app, &format!("/api/v1/devices/{id}")).await, 404, id);
        assert_problem(
            &get(&app, &format!("/api/v1/devices/{id}/events")).await,
            404,
            id,
        );
    }
    let long = "x".repeat(1025);
    for id in ["a%00b", "%00", long.as_str()] {
        assert_problem(&get(&app, &format!("/api/v1/devices/{id}")).await, 400, id);
        assert_problem(
            &get(&app, &format!("/api/v1/devices/{id}/events")).await,
            400,
            id,
        );
    }
    // invalid UTF-8 in the path
    let r = get(&app, "/api/v1/devices/%FF").await;
    assert_eq!(r.status.as_u16() / 100, 4, "{}", r.text());
}

// ---------------------------------------------------------------------------------------------
// GET /devices/{id}/events

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn events_page_newest_first_with_cursor(pool: PgPool) {
    let t0 = t("2026-11-27T10:00:00Z");
    let m = |n: i64| t0 + TimeDelta::minutes(n);
    let d = "d1";
    let timeline = [
        connect(d, m(0), "s1", 1, "198.51.100.1"),
        disconnect(d, m(5), "s1", 1, "CONNECTION_LOST"),
        connect(d, m(10), "s2", 2, "198.51.100.2"),
        disconnect(d, m(20), "s2", 2, "DUPLICATE_CLIENTID"),
        // same timestamp as the previous one: the id breaks the tie
        connect(d, m(20), "s3", 3, "198.51.100.3"),
        PresenceEvent {
            connect_failure_reason: Some("AUTHORIZATION_FAILED".into()),
            ip_address: Some("203.0.113.9".into()),
            ..event(d, EventType::ConnectFailed, m(25), None, None)
        },
        disconnect(d, m(30), "s3", 3, "MQTT_KEEP_ALIVE_TIMEOUT"),
    ];
    // stored in a scrambled order, one of them twice
    for i in [3, 0, 6, 1, 5, 2, 4] {
        assert_eq!(store(&pool, &timeline[i], d).await, Stored::New);
    }
    assert_eq!(store(&pool, &timeline[1], d).await, Stored::Duplicate);
    // another device's events never show
    store(&pool, &connect("d2", m(7), "x1", 1, "192.0.2.1"), "d2").await;
    let app = TestApp::new(&pool, TOKEN);

    let all = get_ok(&app, "/api/v1/devices/d1/events").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 7, "{all}");
    assert!(all["next_cursor"].is_null());

    let mut seen: Vec<Value> = Vec::new();
    let mut pages = 0;
    let mut uri = "/api/v1/devices/d1/events?limit=2".to_string();
    loop {
        let page = get_ok(&app, &uri).await;
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/v1/devices/d1/events?limit=2&cursor={}", enc(c)),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, *all["items"].as_array().unwrap());
    let keys: Vec<(DateTime<Utc>, i64)> = seen
        .iter()
        .map(|e| {
            assert_utc(e, "received_at").unwrap();
            (
                assert_utc(e, "timestamp").unwrap(),
                e["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {keys:?}"
    );
    let times: Vec<DateTime<Utc>> = keys.iter().map(|k| k.0).collect();
    assert_eq!(
        times,
        [m(30), m(25), m(20), m(20), m(10), m(5), m(0)],
        "{seen:?}"
    );
    let kinds: Vec<&str> = seen
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "disconnected");
    assert_eq!(kinds[1], "connect_failed");
    assert!(seen.iter().all(|e| e["client_id"] == "d1"));
    // disconnects carry the address of their session's connect
    assert_eq!(seen[0]["ip_address"], "198.51.100.3");
    assert_eq!(seen[0]["disconnect_reason"], "MQTT_KEEP_ALIVE_TIMEOUT");
    assert_eq!(seen[5]["ip_address"], "198.51.100.1");
    assert_eq!(seen[1]["version_number"], Value::Null);
    assert_eq!(seen[1]["connect_failure_reason"], "AUTHORIZATION_FAILED");
    assert_eq!(seen[6]["version_number"], 1);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn bad_event_parameters_are_400_never_500(pool: PgPool) {
    insert_device(&pool, "d1", None, "healthy").await;
    let app = TestApp::new(&pool, TOKEN);
    let c = |raw: &str| URL_SAFE_NO_PAD.encode(raw);
    let cases = [
        "limit=0".to_string(),
        "limit=1001".into(),
        "limit=abc".into(),
        "cursor=!!!".into(),
        "cursor=_w".into(),
        format!("cursor={}", c("abc")),
        format!("cursor={}", c("1:2:3")),
        format!("cursor={}", c(":1")),
        format!("cursor={}", c("1:")),
        format!("cursor={}", c("1:99999999999999999999")),
        format!("cursor={}", c("9223372036854775807:1")),
        format!("cursor={}", c("a\0b:1")),
    ];
    for q in cases {
        let r = get(&app, &format!("/api/v1/devices/d1/events?{q}")).await;
        assert_problem(&r, 400, &format!("events?{q}"));
    }
    // a cursor built the way the API builds them is accepted
    let r = get_ok(
        &app,
        &format!(
            "/api/v1/devices/d1/events?cursor={}",
            c("1764237600000000:5")
        ),
    )
    .await;
    assert_eq!(r["items"], serde_json::json!([]));
}

/// BUG (src/http/api/mod.rs `decode_cursor`, used by `devices::list`): a device-list cursor is
/// base64url of any UTF-8 string; one holding NUL reaches Postgres as the `id > $4` bound, which
/// `text` cannot hold (SQLSTATE 22021), and the client gets 500 instead of 400. `clean()` guards
/// `q`, `group` and ids against NUL, but not the decoded cursor.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn device_cursor_holding_nul_is_400_not_500(pool: PgPool) {
    insert_device(&pool, "d1", None, "healthy").await;
    // the cause, at the database layer
    let filter = fleetwatch::db::devices::DeviceFilter {
        after: Some("a\0b".into()),
        limit: 10,
        ..Default::default()
    };
    let err = fleetwatch::db::devices::list(&pool, &filter)
        .await
        .expect_err("Postgres text cannot hold NUL");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("22021"),
        "{err}"
    );
    // what a client sees
    let app = TestApp::new(&pool, TOKEN);
    let cursor = URL_SAFE_NO_PAD.encode("a\0b");
    let r = get(&app, &format!("/api/v1/devices?cursor={cursor}")).await;
    assert_problem(
        &r,
        400,
        &format!("?cursor={cursor} (base64url of \"a\\0b\")"),
    );
}

/// BUG (src/http/api/devices.rs `parse_event_cursor`): an events cursor whose microseconds are
/// inside chrono's range (±262,000 years) but outside Postgres' timestamptz range (4713 BC to
/// 294276 AD) is accepted and makes Postgres fail with "timestamp out of range" (SQLSTATE
/// 22008), so the client gets 500 instead of 400.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn event_cursor_outside_postgres_time_range_is_400_not_500(pool: PgPool) {
    insert_device(&pool, "d1", None, "healthy").await;
    let micros = -8_000_000_000_000_000_000_i64;
    let ts = DateTime::from_timestamp_micros(micros).expect("inside chrono's range");
    // the cause, at the database layer
    let err = presence::list_for_device(&pool, "d1", Some((ts, 1)), 10)
        .await
        .expect_err("outside Postgres' timestamp range");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("22008"),
        "{err}"
    );
    // what a client sees
    let app = TestApp::new(&pool, TOKEN);
    for raw in [format!("{micros}:1"), "8000000000000000000:1".to_string()] {
        let cursor = URL_SAFE_NO_PAD.encode(&raw);
        let r = get(&app, &format!("/api/v1/devices/d1/events?cursor={cursor}")).await;
        assert_problem(
            &r,
            400,
            &format!("events?cursor={cursor} (base64url of {raw:?})"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Routes, health, readiness, metrics

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn unknown_routes_are_404_problem_json(pool: PgPool) {
    let app = TestApp::new(&pool, TOKEN);
    // `/` is the dashboard (tests/web_access.rs)
    for uri in [
        "/nope",
        "/api",
        "/api/v2/devices",
        "/api/v1/nope",
        "/api/v1/devices/x/y/z",
        "/healthz/extra",
    ] {
        assert_problem(&get(&app, uri).await, 404, uri);
    }
    // without a token an unknown /api route is refused or not found, never served
    let r = call(&app, Method::GET, "/api/v1/nope", None, None).await;
    assert!(matches!(r.status.as_u16(), 401 | 404), "{}", r.status);
    assert_eq!(r.content_type(), "application/problem+json");
}

/// BUG (src/http/mod.rs `router`): DESIGN.md §4 says errors are `application/problem+json`,
/// but rejections produced by axum itself bypass `ApiError`: a known path with a method it does
/// not serve answers 405 with an empty body and no content type (the router has a `fallback`
/// but no `method_not_allowed_fallback`), and a path parameter that is not valid UTF-8 answers
/// axum's plain-text 400 (`devices::get`/`events` take `Path<String>` without mapping the
/// rejection, unlike `Query`).
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn framework_rejections_are_problem_documents(pool: PgPool) {
    insert_device(&pool, "d1", None, "healthy").await;
    let app = TestApp::new(&pool, TOKEN);
    let mut failures = Vec::new();
    for (method, uri, status) in [
        (Method::POST, "/api/v1/devices", 405),
        (Method::DELETE, "/api/v1/devices/d1", 405),
        (Method::POST, "/healthz", 405),
        (Method::GET, "/api/v1/devices/%FF", 400),
        (Method::GET, "/api/v1/devices/%FF/events", 400),
    ] {
        let r = call(&app, method.clone(), uri, bearer(TOKEN), None).await;
        if r.status.as_u16() != status || r.content_type() != "application/problem+json" {
            failures.push(format!(
                "{method} {uri}: {} {:?} {:?}",
                r.status,
                r.content_type(),
                r.text()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "not problem documents:\n{}",
        failures.join("\n")
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn healthz_reports_mqtt_connections(pool: PgPool) {
    let app = TestApp::new(&pool, TOKEN);
    let r = call(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.content_type().starts_with("application/json"));
    let h = r.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["mqtt"]["connections"], serde_json::json!([]), "{h}");
    // healthz does not depend on the database
    pool.close().await;
    let r = call(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn readyz_follows_the_database(pool: PgPool) {
    let app = TestApp::new(&pool, TOKEN);
    let r = call(&app, Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["database"], "ok");

    pool.close().await;
    let r = call(&app, Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.json()["status"], "unavailable");

    // the API says "unavailable, retry" without leaking the database error
    let r = get(&app, "/api/v1/devices").await;
    assert_problem(&r, 503, "devices with the pool closed");
    assert_eq!(r.headers["retry-after"], "5");
    let body = r.text().to_lowercase();
    assert!(!body.contains("pool"), "{body}");
    assert!(!body.contains("closed"), "{body}");
}

/// The state holds the parsed configuration, and what the edge derives from it (the bootstrap
/// token, stored tokens' rate limits) follows it.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_state_is_built_from_the_configuration(pool: PgPool) {
    let app = TestApp::build(&pool, t(NOW), Some("configured"), |c| {
        c.api.rate_limit_burst = 2;
        c.api.rate_limit_per_second = 0.001;
        c.devices.max_devices = 7;
    });
    assert_eq!(app.state.config.api.rate_limit_burst, 2);
    assert_eq!(app.state.config.devices.max_devices, 7);
    assert_eq!(get(&app, "/api/v1/devices").await.status, StatusCode::OK);
    let r = call(&app, Method::GET, "/api/v1/devices", bearer(TOKEN), None).await;
    assert_unauthorized(&r, "a token other than the configured one");

    let stored =
        fleetwatch::tokens::create(&pool, "ci", &[fleetwatch::tokens::Scope::Read], t(NOW))
            .await
            .unwrap();
    let secret = stored.token.expose();
    for i in 0..2 {
        let r = common::http::get_with(&app, "/api/v1/devices", secret).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "request {i} within the configured burst"
        );
    }
    let r = common::http::get_with(&app, "/api/v1/devices", secret).await;
    assert_problem(&r, 429, "past the configured burst of 2");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn metrics_are_served_from_this_instance(pool: PgPool) {
    let app = TestApp::new(&pool, TOKEN);
    let metrics = app.state.metrics.clone();
    let r = call(&app, Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.content_type().contains("text"), "{}", r.content_type());
    let text = r.text();
    assert!(
        text.contains("fleetwatch_ingest_dropped_total{reason=\"malformed_json\"} 0"),
        "{text}"
    );
    for reason in DropReason::ALL {
        assert!(
            text.contains(&format!(
                "fleetwatch_ingest_dropped_total{{reason=\"{}\"}}",
                reason.as_str()
            )),
            "{reason}"
        );
    }
    metrics.dropped(DropReason::MalformedJson);
    metrics.dropped(DropReason::MalformedJson);
    let text = call(&app, Method::GET, "/metrics", None, None).await.text();
    assert!(
        text.contains("fleetwatch_ingest_dropped_total{reason=\"malformed_json\"} 2"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Over a real socket

async fn serve(state: AppState) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, router(state)).await.unwrap();
    });
    (addr, server)
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn real_socket_auth_devices_and_health(pool: PgPool) {
    let hostile = ["<script>", "with space", "日本語", "a/b", "100%", "a?b#c"];
    for id in hostile {
        insert_device(&pool, id, Some("g"), "healthy").await;
    }
    let (addr, server) = serve(TestApp::new(&pool, TOKEN).state).await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    let r = http
        .get(format!("{base}/api/v1/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()[WWW_AUTHENTICATE.as_str()], "Bearer");
    assert_eq!(
        r.headers()[CONTENT_TYPE.as_str()],
        "application/problem+json"
    );
    let r = http
        .get(format!("{base}/api/v1/devices"))
        .basic_auth("tok", Some("tok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = http
        .get(format!("{base}/api/v1/devices?group=g&limit=1000"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(
        ids(&page).into_iter().collect::<BTreeSet<_>>(),
        set(&hostile)
    );
    for id in hostile {
        let r = http
            .get(format!("{base}/api/v1/devices/{}", enc(id)))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{id}");
        let d: Value = r.json().await.unwrap();
        assert_eq!(d["id"], id);
    }
    let r = http
        .get(format!("{base}/api/v1/devices/nope"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.headers()[CONTENT_TYPE.as_str()],
        "application/problem+json"
    );
    let r = http
        .get(format!("{base}/api/v1/devices?q=%00"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let h: Value = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(h["mqtt"]["connections"].is_array(), "{h}");
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("fleetwatch_ingest_dropped_total{reason=\"malformed_json\"}"));
    server.abort();
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn real_socket_concurrent_requests(pool: PgPool) {
    for i in 0..20 {
        insert_device(&pool, &format!("d{i:02}"), None, "healthy").await;
    }
    let (addr, server) = serve(TestApp::new(&pool, TOKEN).state).await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (http, base) = (http.clone(), base.clone());
        tasks.spawn(async move {
            let uri = match i % 3 {
                0 => format!("{base}/api/v1/devices?limit=5"),
                1 => format!("{base}/api/v1/devices/d{:02}", i % 20),
                _ => format!("{base}/api/v1/devices/d{:02}/events", i % 20),
            };
            http.get(&uri)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    server.abort();
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn real_socket_readyz_after_the_database_goes(pool: PgPool) {
    let (addr, server) = serve(TestApp::new(&pool, TOKEN).state).await;
    let url = format!("http://{addr}/readyz");
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    pool.close().await;
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    // the process is still up
    let r = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.abort();
}
