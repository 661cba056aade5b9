//! The alerts pages (issue 10 item 3) through the router: the list with its filters, order and
//! paging in the URL, bulk and single actions recorded under `user:<name>`, the alert page with
//! its trail, links and notifications, viewers refused, bad input, escaping, fragments.
//! Alerts are made by the real lifecycle, as `tests/alerts_api.rs` makes them.

mod common;

use axum::http::header::LOCATION;
use axum::http::{Method, StatusCode};
use chrono::{DateTime, TimeDelta, Utc};
use common::alerts::{device_alert, group_alert};
use common::http::{t, Resp, TestApp, NOW};
use common::web::{form, send, Staff};
use fleetwatch::alerts::lifecycle::{self, AlertSpec, Fired};
use fleetwatch::db::notifications::{self, NewNotification};
use fleetwatch::domain::actor::Actor;
use fleetwatch::domain::alert::Kind;
use fleetwatch::domain::notification::Event;
use serde_json::json;
use sqlx::PgPool;

fn app(pool: &PgPool) -> TestApp {
    TestApp::build(pool, t(NOW), Some("tok"), |_| {})
}

fn min(n: i64) -> DateTime<Utc> {
    t("2026-11-27T10:00:00Z") + TimeDelta::minutes(n)
}

/// Fire a new alert at `at`; its id.
async fn open(pool: &PgPool, spec: &AlertSpec, at: DateTime<Utc>) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    let fired = lifecycle::fire(&mut tx, spec, at, TimeDelta::hours(1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    match fired {
        Fired::Opened(id) => id,
        other => panic!("expected a new alert, got {other:?}"),
    }
}

async fn resolve(pool: &PgPool, id: i64, at: DateTime<Utc>) {
    let mut tx = pool.begin().await.unwrap();
    assert!(lifecycle::resolve(&mut tx, id, at, None, json!({}))
        .await
        .unwrap());
    tx.commit().await.unwrap();
}

/// (type, actor) of alert `id`'s trail, oldest first.
async fn trail(pool: &PgPool, id: i64) -> Vec<(String, String)> {
    sqlx::query_as("select type, actor from alert_events where alert_id = $1 order by id")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn acked_ids(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("select id from alerts where acknowledged_by is not null order by id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The alert ids of the list's rows, in order (each row's checkbox or first link).
fn row_ids(html: &str) -> Vec<i64> {
    let re = regex::Regex::new(r#"<tr data-row[^>]*>(?s:.*?)<a href="/alerts/(\d+)""#).unwrap();
    re.captures_iter(html)
        .map(|c| c[1].parse().unwrap())
        .collect()
}

/// The `href` of the list's "next" link, unescaped.
fn next_link(html: &str) -> Option<String> {
    let re = regex::Regex::new(r#"<a href="([^"]+)" rel="next">"#).unwrap();
    re.captures(html).map(|c| c[1].replace("&#38;", "&"))
}

/// `s` as askama escapes it in HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&#38;")
        .replace('<', "&#60;")
        .replace('>', "&#62;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

fn location(r: &Resp) -> String {
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    r.header(LOCATION).expect("a Location").to_string()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_list_shows_firing_unacknowledged_first_with_state_and_links(pool: PgPool) {
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let old = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "d1", Some("g1")),
        min(0),
    )
    .await;
    let acked = open(
        &pool,
        &device_alert(Kind::Flapping, "d2", Some("g1")),
        min(5),
    )
    .await;
    let gone = open(&pool, &device_alert(Kind::Flapping, "d3", None), min(10)).await;
    let outage = open(&pool, &group_alert(Kind::GroupOutage, "g1"), min(20)).await;
    let newest = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "d4", None),
        min(30),
    )
    .await;
    resolve(&pool, gone, min(40)).await;
    let bot = Actor::token(Some(3), "pager", None);
    lifecycle::acknowledge(&pool, acked, &bot, None, min(41))
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    lifecycle::cover(&mut tx, &[old], outage, min(21))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let html = alice.html("/alerts").await;
    // firing unacknowledged newest first, then firing acknowledged, then resolved
    assert_eq!(row_ids(&html), vec![newest, outage, old, acked, gone]);
    assert!(html.contains("acked by token:3:pager"), "{html}");
    assert!(
        html.contains(&format!("covered by <a href=\"/alerts/{outage}\">")),
        "{html}"
    );
    assert!(html.contains(r#"<a href="/devices/d1">d1</a>"#));
    assert!(html.contains(r#"group <a href="/alerts?group=g1">g1</a>"#));
    assert!(html.contains(r#"<span class="badge sev-critical">critical</span>"#));
    assert!(html.contains("d4: heartbeat_gap"));
    // operators: checkboxes joined to the bulk form, an ack button per firing unacked row
    assert_eq!(html.matches(r#"form="bulk" data-select"#).count(), 5);
    assert_eq!(html.matches(r#"data-key="ack""#).count(), 3);
    assert!(html.contains(r#"<form id="bulk""#));
    // the live fragment
    assert!(html.contains(r#"id="alerts-table" data-live="alerts" hx-get="/alerts""#));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn filters_and_paging_live_in_the_url(pool: PgPool) {
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let mut all = Vec::new();
    for i in 0..60 {
        all.push(
            open(
                &pool,
                &device_alert(Kind::HeartbeatGap, &format!("d{i}"), Some("g1")),
                min(i),
            )
            .await,
        );
    }
    for i in 0..50 {
        let id = open(
            &pool,
            &device_alert(Kind::Flapping, &format!("f{i}"), Some("g2")),
            min(i),
        )
        .await;
        if i % 2 == 0 {
            resolve(&pool, id, min(100)).await;
        }
        all.push(id);
    }
    let bot = Actor::token(Some(3), "pager", None);
    for id in &all[..10] {
        lifecycle::acknowledge(&pool, *id, &bot, None, min(101))
            .await
            .unwrap();
    }

    // every alert once over the pages, in the page's order
    let mut seen = Vec::new();
    let mut uri = "/alerts".to_string();
    let mut pages = 0;
    loop {
        let html = alice.html(&uri).await;
        let ids = row_ids(&html);
        assert!(ids.len() <= 50);
        seen.extend(ids);
        pages += 1;
        match next_link(&html) {
            Some(n) => {
                assert!(n.starts_with("/alerts?cursor="), "{n}");
                uri = n;
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "each alert exactly once");
    // firing unacked (50 + 25 - 10 acked heartbeat gaps) come first, then the 10 acked
    let unacked_firing = 60 - 10 + 25;
    assert!(seen[..unacked_firing]
        .iter()
        .all(|id| !all[..10].contains(id)));
    assert!(seen[unacked_firing..unacked_firing + 10]
        .iter()
        .all(|id| all[..10].contains(id)));

    let flapping = row_ids(&alice.html("/alerts?kind=flapping&status=firing").await);
    assert_eq!(flapping.len(), 25);
    let resolved = row_ids(&alice.html("/alerts?status=resolved&group=g2").await);
    assert_eq!(resolved.len(), 25);
    let acked = row_ids(&alice.html("/alerts?acked=yes").await);
    let mut expect = all[..10].to_vec();
    expect.reverse();
    assert_eq!(acked, expect);
    assert_eq!(
        row_ids(
            &alice
                .html("/alerts?severity=warning&acked=no&status=firing")
                .await
        )
        .len(),
        25
    );
    assert_eq!(
        row_ids(&alice.html("/alerts?device=d7").await),
        vec![all[7]]
    );
    assert!(alice
        .html("/alerts?device=nobody")
        .await
        .contains("No alerts match."));
    // the filter is kept in the next link, the cursor dropped by filter links
    let html = alice.html("/alerts?kind=heartbeat_gap").await;
    let next = next_link(&html).expect("a second page");
    assert!(
        next.starts_with("/alerts?kind=heartbeat_gap&cursor="),
        "{next}"
    );
    let page2 = row_ids(&alice.html(&next).await);
    assert_eq!(page2.len(), 10);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn bad_input_gets_error_pages(pool: PgPool) {
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let id = open(&pool, &device_alert(Kind::Flapping, "d1", None), min(0)).await;
    for uri in [
        "/alerts?status=open",
        "/alerts?kind=heartbeat",
        "/alerts?severity=loud",
        "/alerts?acked=maybe",
        "/alerts?cursor=garbage",
        "/alerts?device=%00",
    ] {
        let r = alice.get(uri).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(r.content_type().starts_with("text/html"), "{uri}");
    }
    for uri in ["/alerts/999999", "/alerts/abc"] {
        let r = alice.get(uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(r.content_type().starts_with("text/html"), "{uri}");
    }
    let r = alice.post("/alerts/999999/ack", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = alice
        .post("/alerts/bulk", &[("action", "ack"), ("id", "x1")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = alice
        .post(
            "/alerts/bulk",
            &[("action", "delete"), ("id", &id.to_string())],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // a ticket URL that is not http(s): the API's 422, as a page; nothing written
    let r = alice
        .post(
            &format!("/alerts/{id}/ticket"),
            &[("ref", "OPS-1"), ("url", "javascript:alert(1)")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.text().contains("url: expected an http(s) URL"),
        "{}",
        r.text()
    );
    assert_eq!(trail(&pool, id).await.len(), 1);
    // nothing selected: back with a message, nothing done
    let to = location(
        &alice
            .post(
                "/alerts/bulk",
                &[("action", "ack"), ("back", "/alerts?kind=flapping")],
            )
            .await,
    );
    assert_eq!(to, "/alerts?kind=flapping&done=none");
    assert!(alice.html(&to).await.contains("No alerts selected"));
    // an off-site back is not followed
    let to = location(
        &alice
            .post(
                &format!("/alerts/{id}/ack"),
                &[("back", "//evil.example/x")],
            )
            .await,
    );
    assert!(to.starts_with(&format!("/alerts/{id}?")), "{to}");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn bulk_ack_of_checked_rows_is_recorded_under_the_user(pool: PgPool) {
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            open(
                &pool,
                &device_alert(Kind::HeartbeatGap, &format!("d{i}"), None),
                min(i),
            )
            .await,
        );
    }
    let (a, b, c) = (ids[0].to_string(), ids[1].to_string(), ids[2].to_string());
    let back = "/alerts?status=firing";
    let r = alice
        .post(
            "/alerts/bulk",
            &[
                ("back", back),
                ("scope", "selected"),
                ("id", &a),
                ("id", &b),
                ("id", &c),
                ("note", "on it"),
                ("action", "ack"),
            ],
        )
        .await;
    let to = location(&r);
    assert_eq!(to, "/alerts?status=firing&done=ack&n=3");
    assert_eq!(acked_ids(&pool).await, ids[..3].to_vec());
    for id in &ids[..3] {
        assert_eq!(
            trail(&pool, *id).await.last().unwrap(),
            &("acknowledged".to_string(), "user:alice".to_string())
        );
    }
    let by: Vec<String> =
        sqlx::query_scalar("select actor from alert_events where type = 'acknowledged'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(by, vec!["user:alice"; 3]);
    let html = alice.html(&to).await;
    assert!(html.contains("3 alerts acknowledged."), "{html}");
    assert_eq!(html.matches("acked by user:alice").count(), 3);
    // again with one new: the already-acknowledged are counted apart and get no new event
    let d = ids[3].to_string();
    let to = location(
        &alice
            .post(
                "/alerts/bulk",
                &[("back", back), ("id", &a), ("id", &d), ("action", "ack")],
            )
            .await,
    );
    assert!(alice
        .html(&to)
        .await
        .contains("1 alert acknowledged; 1 already acknowledged."));
    assert_eq!(trail(&pool, ids[0]).await.len(), 2);
    let note: Option<String> = sqlx::query_scalar("select ack_note from alerts where id = $1")
        .bind(ids[0])
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(note.as_deref(), Some("on it"));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn bulk_ack_of_everything_the_filter_matches_touches_nothing_else(pool: PgPool) {
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let mut g1 = Vec::new();
    for i in 0..4 {
        g1.push(
            open(
                &pool,
                &device_alert(Kind::HeartbeatGap, &format!("a{i}"), Some("g1")),
                min(i),
            )
            .await,
        );
    }
    let g1_flap = open(
        &pool,
        &device_alert(Kind::Flapping, "a0", Some("g1")),
        min(5),
    )
    .await;
    let mut others = vec![g1_flap];
    for i in 0..3 {
        others.push(
            open(
                &pool,
                &device_alert(Kind::HeartbeatGap, &format!("b{i}"), Some("g2")),
                min(i),
            )
            .await,
        );
    }
    let back = "/alerts?group=g1&kind=heartbeat_gap";
    let to = location(
        &alice
            .post(
                "/alerts/bulk",
                &[("back", back), ("scope", "filter"), ("action", "ack")],
            )
            .await,
    );
    assert_eq!(to, format!("{back}&done=ack&n=4"));
    assert_eq!(acked_ids(&pool).await, g1);
    assert!(alice.html(&to).await.contains("4 alerts acknowledged."));
    for id in &g1 {
        assert_eq!(trail(&pool, *id).await.last().unwrap().1, "user:alice");
    }
    for id in &others {
        assert_eq!(trail(&pool, *id).await.len(), 1, "alert {id} untouched");
    }
    // a filter scope needs the list's own URL
    let r = alice
        .post(
            "/alerts/bulk",
            &[
                ("back", "/devices?group=g2"),
                ("scope", "filter"),
                ("action", "ack"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(acked_ids(&pool).await, g1);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn an_attached_ticket_shows_on_the_list_and_in_the_trail(pool: PgPool) {
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let a = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let b = open(&pool, &device_alert(Kind::HeartbeatGap, "d2", None), min(1)).await;
    let c = open(&pool, &device_alert(Kind::HeartbeatGap, "d3", None), min(2)).await;
    let (sa, sb) = (a.to_string(), b.to_string());
    let to = location(
        &alice
            .post(
                "/alerts/bulk",
                &[
                    ("back", "/alerts"),
                    ("id", &sa),
                    ("id", &sb),
                    ("ref", "OPS-7"),
                    ("url", "https://t.example/OPS-7?a=1&b=2"),
                    ("action", "ticket"),
                ],
            )
            .await,
    );
    assert_eq!(to, "/alerts?done=ticket&n=2");
    let html = alice.html(&to).await;
    assert!(html.contains("Ticket attached to 2 alerts."));
    assert_eq!(
        html.matches(&format!(
            r#"<a href="{}" rel="noopener noreferrer">OPS-7</a>"#,
            esc("https://t.example/OPS-7?a=1&b=2")
        ))
        .count(),
        2,
        "{html}"
    );
    assert_eq!(
        trail(&pool, a).await.last().unwrap(),
        &("ticket_linked".to_string(), "user:alice".to_string())
    );
    assert_eq!(trail(&pool, c).await.len(), 1);
    // from the alert page, without a URL
    let to = location(
        &alice
            .post(
                &format!("/alerts/{c}/ticket"),
                &[
                    ("ref", "OPS-8"),
                    ("url", ""),
                    ("back", &format!("/alerts/{c}")),
                ],
            )
            .await,
    );
    assert_eq!(to, format!("/alerts/{c}?done=ticket&n=1"));
    let page = alice.html(&to).await;
    assert!(page.contains("Ticket attached to 1 alert."));
    assert!(page.contains("OPS-8"));
    assert!(page.contains("ticket_linked"));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn viewers_read_but_cannot_act(pool: PgPool) {
    let app = app(&pool);
    let vic = Staff::new(&app, &pool, "vic", "viewer").await;
    let id = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let html = vic.html("/alerts").await;
    assert_eq!(row_ids(&html), vec![id]);
    assert!(!html.contains("data-select"), "{html}");
    assert!(!html.contains(r#"data-key="ack""#));
    assert!(!html.contains(r#"action="/alerts/bulk""#));
    let page = vic.html(&format!("/alerts/{id}")).await;
    assert!(!page.contains(&format!(r#"action="/alerts/{id}/ack""#)));
    assert!(!page.contains("Attach ticket"));
    let s = id.to_string();
    for (uri, body) in [
        (
            "/alerts/bulk".to_string(),
            vec![("action", "ack"), ("id", s.as_str())],
        ),
        (format!("/alerts/{id}/ack"), vec![]),
        (format!("/alerts/{id}/ticket"), vec![("ref", "OPS-1")]),
    ] {
        let r = vic.post(&uri, &body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}");
    }
    assert_eq!(trail(&pool, id).await.len(), 1);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_cross_site_post_is_refused(pool: PgPool) {
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let id = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let cookie = format!("fleetwatch_session={}", alice.token);
    let s = id.to_string();
    for uri in ["/alerts/bulk".to_string(), format!("/alerts/{id}/ack")] {
        let r = send(
            &app,
            Method::POST,
            &uri,
            &[("cookie", &cookie), ("sec-fetch-site", "cross-site")],
            Some(form(&[("action", "ack"), ("id", &s)])),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}");
    }
    assert!(acked_ids(&pool).await.is_empty());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn single_acks_answer_as_the_api_does(pool: PgPool) {
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let id = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let done = open(&pool, &device_alert(Kind::HeartbeatGap, "d2", None), min(0)).await;
    resolve(&pool, done, min(3)).await;
    let back = "/alerts?status=firing";
    let to = location(
        &alice
            .post(&format!("/alerts/{id}/ack"), &[("back", back)])
            .await,
    );
    assert_eq!(to, "/alerts?status=firing&done=ack&n=1");
    assert!(alice.html(&to).await.contains("1 alert acknowledged."));
    // again: left alone, no new event, and said so
    let to = location(
        &alice
            .post(&format!("/alerts/{id}/ack"), &[("back", back)])
            .await,
    );
    assert!(alice
        .html(&to)
        .await
        .contains("0 alerts acknowledged; 1 already acknowledged."));
    assert_eq!(
        trail(&pool, id).await,
        vec![
            ("opened".into(), "fleetwatch".into()),
            ("acknowledged".into(), "user:alice".into())
        ]
    );
    // a resolved alert may be acknowledged, as through the API; back to its page by default
    let to = location(
        &alice
            .post(&format!("/alerts/{done}/ack"), &[("note", "seen")])
            .await,
    );
    assert_eq!(to, format!("/alerts/{done}?done=ack&n=1"));
    let page = alice.html(&to).await;
    assert!(page.contains("by user:alice"), "{page}");
    assert!(page.contains("<q>seen</q>"));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_alert_page_shows_covers_inhibits_and_notification_attempts(pool: PgPool) {
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let d1 = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "d1", Some("g1")),
        min(0),
    )
    .await;
    let d2 = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "d2", Some("g1")),
        min(1),
    )
    .await;
    let flap = open(
        &pool,
        &device_alert(Kind::Flapping, "d1", Some("g1")),
        min(2),
    )
    .await;
    let outage = open(&pool, &group_alert(Kind::GroupOutage, "g1"), min(3)).await;
    let mut tx = pool.begin().await.unwrap();
    lifecycle::cover(&mut tx, &[d1, d2], outage, min(3))
        .await
        .unwrap();
    let linked = fleetwatch::alerts::inhibit::apply(
        &mut tx,
        &fleetwatch::domain::inhibit::defaults(),
        min(3),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(linked, vec![(flap, d1)]);

    let page = alice.html(&format!("/alerts/{outage}")).await;
    let covers = &page[page.find("<h2>Covers</h2>").expect("a Covers section")..];
    assert!(covers.contains(&format!(
        r#"<a href="/alerts/{d1}">#{d1} heartbeat_gap</a>"#
    )));
    assert!(covers.contains(&format!(
        r#"<a href="/alerts/{d2}">#{d2} heartbeat_gap</a>"#
    )));

    let page = alice.html(&format!("/alerts/{d1}")).await;
    assert!(
        page.contains(&format!(
            r#"<a href="/alerts/{outage}">#{outage} group_outage</a>"#
        )),
        "{page}"
    );
    let inhibits = &page[page.find("<h2>Inhibits</h2>").expect("an Inhibits section")..];
    assert!(inhibits.contains(&format!(r#"<a href="/alerts/{flap}">#{flap} flapping</a>"#)));
    let page = alice.html(&format!("/alerts/{flap}")).await;
    assert!(page.contains(&format!(
        r#"<a href="/alerts/{d1}">#{d1} heartbeat_gap</a>"#
    )));
    assert!(page.contains("inhibited"), "the trail names the link");

    // notifications of d2, with attempts
    let body = json!({"id": d2});
    let mut conn = pool.acquire().await.unwrap();
    notifications::insert(
        &mut *conn,
        &NewNotification {
            alert_id: d2,
            endpoint: "pagerduty-ops",
            event: Event::Firing,
            body: &body,
            due: min(4),
        },
        None,
        min(4),
    )
    .await
    .unwrap();
    let nid: i64 = sqlx::query_scalar("select max(id) from notifications")
        .fetch_one(&pool)
        .await
        .unwrap();
    notifications::insert_attempt(
        &mut conn,
        nid,
        min(5),
        Some(503),
        120,
        Some("HTTP 503 from receiver"),
    )
    .await
    .unwrap();
    notifications::insert_attempt(&mut conn, nid, min(6), None, 10_000, Some("timed out"))
        .await
        .unwrap();
    drop(conn);
    let page = alice.html(&format!("/alerts/{d2}")).await;
    let notes = &page[page.find("<h2>Notifications</h2>").unwrap()..];
    assert!(notes.contains("pagerduty-ops"));
    assert!(notes.contains("alert.firing"));
    assert!(notes.contains("HTTP 503"));
    assert!(notes.contains("HTTP 503 from receiver"));
    assert!(notes.contains("no response"));
    assert!(notes.contains("timed out"));
    assert_eq!(notes.matches(r#"<tr class="attempt">"#).count(), 2);
    let page = alice.html(&format!("/alerts/{flap}")).await;
    assert!(page.contains("No notifications for this alert."));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hostile_device_ids_are_escaped(pool: PgPool) {
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let evil = r#"<script>alert(1)</script>"'&x"#;
    let id = open(
        &pool,
        &device_alert(
            Kind::HeartbeatGap,
            evil,
            Some("<img src=x onerror=alert(1)>"),
        ),
        min(0),
    )
    .await;
    for uri in ["/alerts".to_string(), format!("/alerts/{id}")] {
        let html = alice.html(&uri).await;
        assert!(!html.contains("<script>alert(1)"), "{uri}");
        assert!(!html.contains("<img src=x"), "{uri}");
        assert!(html.contains(&esc(evil)), "{uri}");
        assert!(
            html.contains("/devices/%3Cscript%3Ealert%281%29%3C%2Fscript%3E%22%27%26x"),
            "{uri}: the device link is encoded"
        );
    }
    // a hostile filter value comes back escaped in the form and encoded in links
    let html = alice.html("/alerts?device=%22%3E%3Cscript%3Ex").await;
    assert!(!html.contains("\"><script>x"));
    assert!(html.contains("device=%22%3E%3Cscript%3Ex"));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn fragments_answer_only_the_live_part(pool: PgPool) {
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let id = open(&pool, &device_alert(Kind::HeartbeatGap, "d1", None), min(0)).await;
    let r = alice
        .fragment("/alerts?status=firing", "alerts-table")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let html = r.text();
    assert!(
        html.trim_start().starts_with(r#"<div id="alerts-table""#),
        "{html}"
    );
    assert!(html.contains(r#"hx-get="/alerts?status=firing""#));
    assert_eq!(row_ids(&html), vec![id]);
    assert!(!html.contains("<html"));
    assert!(!html.contains(r#"id="bulk""#));
    let r = alice
        .fragment(&format!("/alerts/{id}"), "alert-detail")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let html = r.text();
    assert!(
        html.trim_start().starts_with(r#"<div id="alert-detail""#),
        "{html}"
    );
    assert!(html.contains("<h2>Trail</h2>"));
    assert!(!html.contains("<html"));
    // another target gets the whole page
    let r = alice.fragment("/alerts", "main").await;
    assert!(r.text().contains("<html"));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn silencing_opens_the_silence_form_with_shared_matchers(pool: PgPool) {
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let a = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "d1", Some("g1")),
        min(0),
    )
    .await;
    let b = open(
        &pool,
        &device_alert(Kind::HeartbeatGap, "d2", Some("g1")),
        min(1),
    )
    .await;
    let c = open(&pool, &device_alert(Kind::Flapping, "d3", None), min(2)).await;
    let (sa, sb, sc) = (a.to_string(), b.to_string(), c.to_string());
    let to = location(
        &alice
            .post(
                "/alerts/bulk",
                &[("id", &sa), ("id", &sb), ("action", "silence")],
            )
            .await,
    );
    assert_eq!(to, "/silences/new?kind=heartbeat_gap&group_id=g1");
    let to = location(
        &alice
            .post("/alerts/bulk", &[("id", &sa), ("action", "silence")])
            .await,
    );
    assert_eq!(
        to,
        "/silences/new?kind=heartbeat_gap&device_id=d1&group_id=g1"
    );
    let to = location(
        &alice
            .post(
                "/alerts/bulk",
                &[
                    ("back", "/alerts"),
                    ("id", &sa),
                    ("id", &sc),
                    ("action", "silence"),
                ],
            )
            .await,
    );
    assert_eq!(to, "/alerts?done=silence-none");
    let to = location(
        &alice
            .post(
                "/alerts/bulk",
                &[
                    ("back", "/alerts?device=d3&status=firing"),
                    ("scope", "filter"),
                    ("action", "silence"),
                ],
            )
            .await,
    );
    assert_eq!(to, "/silences/new?device_id=d3");
    // nothing was written
    for id in [a, b, c] {
        assert_eq!(trail(&pool, id).await.len(), 1);
    }
}
