//! The devices pages (issue 10, item 2) through the router: the list with its filters, search
//! and keyset paging in the URL; the device page (facts, connectivity and heartbeat strips,
//! messages per hour, presence timeline with paging, alerts, silences, history); retire and
//! unretire as an operator (audited under `user:<name>`), refused to viewers and cross-site
//! posts; unknown, malformed and hostile input; fragments for live refresh.
//!
//! Seeding goes through the real writers where the page reads what they write (presence
//! store, telemetry batch, alert lifecycle, silences), plain SQL for devices and groups.

mod common;

use axum::http::header::LOCATION;
use axum::http::{Method, StatusCode};
use chrono::{DateTime, TimeDelta, Utc};
use common::http::{get, t, Resp, TestApp, NOW};
use common::web::{form, send, Staff};
use fleetwatch::alerts::lifecycle::{self, AlertSpec, Fired};
use fleetwatch::db;
use fleetwatch::db::presence;
use fleetwatch::db::telemetry::{self, HourRow};
use fleetwatch::domain::actor::Actor;
use fleetwatch::domain::alert::{Kind, Severity};
use fleetwatch::domain::presence::{EventType, PresenceEvent};
use serde_json::json;
use sqlx::PgPool;

const TOKEN: &str = "bootstrap-token-for-tests";

fn app(pool: &PgPool) -> TestApp {
    TestApp::new(pool, TOKEN)
}

fn now() -> DateTime<Utc> {
    t(NOW)
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
    sqlx::query(
        r#"insert into devices (id, group_id, state, state_since, created_at)
           values ($1, $2, $3, $4, $4 - interval '10 days')"#,
    )
    .bind(id)
    .bind(group)
    .bind(state)
    .bind(now() - TimeDelta::hours(1))
    .execute(pool)
    .await
    .unwrap();
}

fn presence_event(
    client: &str,
    kind: EventType,
    ts: DateTime<Utc>,
    session: &str,
    v: i64,
) -> PresenceEvent {
    PresenceEvent {
        client_id: client.into(),
        thing_name: Some(client.into()),
        timestamp: ts,
        event_type: kind,
        session_identifier: Some(session.into()),
        principal_identifier: Some("principal-1".into()),
        ip_address: None,
        version_number: Some(v),
        client_initiated_disconnect: (kind == EventType::Disconnected).then_some(false),
        disconnect_reason: None,
        connect_failure_reason: None,
    }
}

async fn store(pool: &PgPool, ev: &PresenceEvent, device: &str) {
    presence::store(
        pool,
        ev,
        Some(device),
        None,
        ev.timestamp + TimeDelta::seconds(1),
        TimeDelta::minutes(5),
    )
    .await
    .unwrap();
}

/// A connect from `ip` at `at` and, `for_min` minutes later, a disconnect with `reason`.
async fn session(pool: &PgPool, device: &str, n: i64, at: DateTime<Utc>, ip: &str, reason: &str) {
    let s = format!("sess-{n}");
    let c = PresenceEvent {
        ip_address: Some(ip.into()),
        ..presence_event(device, EventType::Connected, at, &s, n)
    };
    store(pool, &c, device).await;
    let d = PresenceEvent {
        disconnect_reason: Some(reason.into()),
        ..presence_event(
            device,
            EventType::Disconnected,
            at + TimeDelta::minutes(30),
            &s,
            n,
        )
    };
    store(pool, &d, device).await;
}

async fn fire(pool: &PgPool, spec: &AlertSpec, at: DateTime<Utc>) -> i64 {
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

fn gap_alert(device: &str, class: &str) -> AlertSpec {
    AlertSpec {
        kind: Kind::HeartbeatGap,
        subject: device.into(),
        device_id: Some(device.into()),
        group_id: None,
        severity: Severity::Error,
        summary: format!("{device} {class}: connected but no impressions"),
        details: json!({"classification": class}),
    }
}

/// `href="…"` values of links with `rel`, HTML-unescaped.
fn rel_link(html: &str, rel: &str) -> Option<String> {
    let marker = format!("rel=\"{rel}\"");
    let i = html.find(&marker)?;
    let start = html[..i].rfind("href=\"")? + 6;
    let end = start + html[start..].find('"')?;
    Some(html[start..end].replace("&#38;", "&").replace("&amp;", "&"))
}

/// The device ids linked from the list's rows, in order.
fn listed(html: &str) -> Vec<String> {
    html.split("<a href=\"/devices/")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect()
}

fn assert_html_error(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text());
    assert!(
        r.content_type().starts_with("text/html"),
        "{what}: {}",
        r.content_type()
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn list_filters_search_and_pages_through_the_url(pool: PgPool) {
    let app = app(&pool);
    for i in 0..130 {
        let state = ["healthy", "offline", "silent"][i % 3];
        let group = ["b-north", "b-south"][i % 2];
        insert_device(&pool, &format!("dev-{i:03}"), Some(group), state).await;
    }
    insert_group(&pool, "b-empty").await;
    sqlx::query("update devices set connected = true where id in ('dev-003', 'dev-006')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("update devices set connected = false where id = 'dev-009'")
        .execute(&pool)
        .await
        .unwrap();
    let staff = Staff::new(&app, &pool, "vera", "viewer").await;

    // Page one: 100 devices by id, a next link; the groups in the select; the search box.
    let html = staff.html("/devices").await;
    let ids = listed(&html);
    assert_eq!(ids.len(), 100, "{ids:?}");
    assert_eq!(ids[0], "dev-000");
    assert!(html.contains("data-search"));
    assert!(html.contains("<option value=\"b-empty\""), "groups listed");
    assert!(html.contains("data-live=\"devices alerts\""));
    assert!(html.contains("<tr data-row tabindex=\"-1\">"));
    let next = rel_link(&html, "next").expect("a next link");
    assert!(rel_link(&html, "first").is_none());
    // Page two: the remaining 30, a link back to the first page, none further.
    let html2 = staff.html(&next).await;
    let ids2 = listed(&html2);
    assert_eq!(ids2.len(), 30);
    assert_eq!(ids2[0], "dev-100");
    assert!(rel_link(&html2, "next").is_none());
    assert_eq!(rel_link(&html2, "first").as_deref(), Some("/devices"));

    // Filters in the URL: state and text on the id, combined; the select shows the state.
    let html = staff.html("/devices?state=offline&q=DEV-01").await;
    assert_eq!(
        listed(&html),
        vec!["dev-010", "dev-013", "dev-016", "dev-019"]
    );
    assert!(html.contains("<option value=\"offline\" selected>"));
    assert!(
        html.contains("value=\"DEV-01\""),
        "the search box keeps its text"
    );
    // the state badge of a row links to this view filtered by it (other filters kept)
    assert!(html.contains("href=\"/devices?q=DEV-01&#38;state=offline\""));
    // group
    let html = staff.html("/devices?group=b-south&q=dev-00").await;
    assert_eq!(
        listed(&html),
        vec!["dev-001", "dev-003", "dev-005", "dev-007", "dev-009"]
    );
    // connected: yes, and no (disconnected or never seen connecting)
    let html = staff.html("/devices?connected=yes").await;
    assert_eq!(listed(&html), vec!["dev-003", "dev-006"]);
    let html = staff.html("/devices?connected=no&q=dev-00").await;
    assert_eq!(
        listed(&html),
        vec![
            "dev-000", "dev-001", "dev-002", "dev-004", "dev-005", "dev-007", "dev-008", "dev-009"
        ]
    );
    // an empty filter form's fields are no filter at all
    assert_eq!(
        listed(&staff.html("/devices?state=&group=&connected=&q=").await).len(),
        100
    );
    // nothing matches: said plainly
    let html = staff.html("/devices?q=zzz").await;
    assert!(html.contains("No devices match these filters"));

    // The API has the same connected filter.
    let r = get(&app, "/api/v1/devices?connected=true").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let items: Vec<String> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(items, vec!["dev-003", "dev-006"]);

    // Malformed values: a 400 page, never a 500.
    for bad in [
        "/devices?state=broken",
        "/devices?connected=maybe",
        "/devices?cursor=%25%25%25",
        "/devices?q=a%00b",
    ] {
        assert_html_error(&staff.get(bad).await, 400, bad);
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_device_page_shows_its_history_charts_alerts_and_silences(pool: PgPool) {
    let app = app(&pool);
    insert_device(&pool, "d1", Some("b-north"), "healthy").await;
    sqlx::query("update devices set last_impression_at = $1")
        .bind(now() - TimeDelta::minutes(10))
        .execute(&pool)
        .await
        .unwrap();
    // Two sessions today: the second ended by a keep-alive timeout.
    session(
        &pool,
        "d1",
        1,
        now() - TimeDelta::hours(5),
        "10.0.0.1",
        "CONNECTION_LOST",
    )
    .await;
    session(
        &pool,
        "d1",
        2,
        now() - TimeDelta::hours(2),
        "10.0.0.2",
        "MQTT_KEEP_ALIVE_TIMEOUT",
    )
    .await;
    // Messages: 42 three hours ago, 7 yesterday.
    let hour = |h: i64| {
        (now() - TimeDelta::hours(h))
            .duration_trunc(TimeDelta::hours(1))
            .unwrap()
    };
    use chrono::DurationRound;
    telemetry::write_batch(
        &pool,
        &[],
        &[
            HourRow {
                device_id: "d1".into(),
                hour: hour(30),
                count: 7,
            },
            HourRow {
                device_id: "d1".into(),
                hour: hour(3),
                count: 42,
            },
        ],
        &[telemetry::BucketRow {
            device_id: "d1".into(),
            bucket_start: hour(3),
            messages: 42,
            impressions: 57,
        }],
        "UTC",
    )
    .await
    .unwrap();
    // A heartbeat gap that fired and resolved, and another alert still firing.
    let gap = fire(
        &pool,
        &gap_alert("d1", "silent"),
        now() - TimeDelta::hours(4),
    )
    .await;
    let mut tx = pool.begin().await.unwrap();
    lifecycle::resolve(
        &mut tx,
        gap,
        now() - TimeDelta::hours(3),
        None,
        json!({"backlog_covered": true}),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let flapping = fire(
        &pool,
        &AlertSpec {
            kind: Kind::Flapping,
            summary: "d1 flapping: 12 disconnects in 1h".into(),
            details: json!({}),
            ..gap_alert("d1", "silent")
        },
        now() - TimeDelta::minutes(20),
    )
    .await;
    // A silence for the building, one for another device (not shown).
    let silence =
        |device: Option<&str>, group: Option<&str>, comment: &str| db::silences::NewSilence {
            device_id: device.map(Into::into),
            group_id: group.map(Into::into),
            kind: None,
            starts_at: now() - TimeDelta::hours(1),
            ends_at: now() + TimeDelta::hours(2),
            created_by: Actor::user("sam"),
            comment: comment.into(),
        };
    let s = db::silences::create(
        &pool,
        &silence(None, Some("b-north"), "OPS-7 power work"),
        now(),
    )
    .await
    .unwrap();
    db::silences::create(&pool, &silence(Some("d2"), None, "other device"), now())
        .await
        .unwrap();

    let staff = Staff::new(&app, &pool, "vera", "viewer").await;
    let html = staff.html("/devices/d1").await;
    // facts
    assert!(html.contains("Device <span class=\"device-id\">d1</span>"));
    assert!(html.contains("href=\"/devices?group=b-north\""));
    assert!(html.contains("10.0.0.2"), "the last address");
    // the timeline: reasons and addresses (the disconnect's joined from its session)
    assert!(html.contains("MQTT_KEEP_ALIVE_TIMEOUT"));
    assert!(html.contains("CONNECTION_LOST"));
    let timeline = &html[html.find("id=\"device-timeline\"").unwrap()..];
    assert_eq!(
        timeline.matches("10.0.0.2").count(),
        2,
        "connect and disconnect"
    );
    // the connectivity strip: connected and disconnected intervals with their tooltips
    assert!(html.contains("class=\"seg connected\""));
    assert!(html.contains("class=\"seg disconnected\""));
    assert!(html.contains("connected from 10.0.0.1"));
    assert!(html.contains("disconnected: MQTT_KEEP_ALIVE_TIMEOUT"));
    // messages per hour: 168 bars, the counts in their titles
    let hourly = &html[html.find("Messages per hour, last 7 days").unwrap()..];
    let hourly = &hourly[..hourly.find("</section>").unwrap()];
    assert_eq!(hourly.matches("<rect").count(), 168);
    assert!(
        hourly.contains(&format!(
            "{} · 42 messages",
            hour(3).format("%Y-%m-%d %H:%M:%S UTC")
        )),
        "{hourly}"
    );
    assert!(hourly.contains("· 7 messages"));
    // impressions per anomaly bucket against the usual (none yet: no earlier weeks)
    let imp = &html[html.find("id=\"device-impressions\"").unwrap()..];
    let imp = &imp[..imp.find("</section>").unwrap()];
    assert!(
        imp.contains("Impressions per 1h, last 7d, against its usual"),
        "{imp}"
    );
    assert!(
        imp.contains(&format!(
            "{} · impressions 57",
            hour(3).format("%Y-%m-%d %H:%M:%S UTC")
        )),
        "{imp}"
    );
    assert!(!imp.contains("· usual (baseline)"), "{imp}");
    // the heartbeat strip: the resolved silent gap between stretches without one
    let hb = &html[html.find("id=\"device-heartbeat\"").unwrap()..];
    let hb = &hb[..hb.find("</div>").unwrap()];
    assert!(hb.contains("class=\"seg silent\""), "{hb}");
    assert!(hb.contains(&format!("silent: no impressions (alert {gap})")));
    assert!(hb.contains("class=\"seg healthy\""));
    // alerts: firing first, linking to their pages
    let alerts = &html[html.find("id=\"device-alerts\"").unwrap()..];
    let (f, g) = (
        alerts
            .find(&format!("href=\"/alerts/{flapping}\""))
            .unwrap(),
        alerts.find(&format!("href=\"/alerts/{gap}\"")).unwrap(),
    );
    assert!(f < g, "firing first");
    assert!(alerts.contains("href=\"/alerts?device=d1\""));
    // silences: the group's, not the other device's
    let silences = &html[html.find("id=\"device-silences\"").unwrap()..];
    let silences = &silences[..silences.find("</section>").unwrap()];
    assert!(silences.contains(&format!("#{}", s.id)));
    assert!(silences.contains("OPS-7 power work"));
    assert!(silences.contains("group b-north, all alerts"));
    assert!(!silences.contains("other device"));
    // a viewer sees no actions
    assert!(!html.contains("/devices/d1/retire"));
    assert!(!html.contains("/devices/d1/unretire"));

    // The range: a week, from the URL; anything else is a 400 page.
    let week = staff.html("/devices/d1?range=7d").await;
    assert!(week.contains("of d1, last 7d"));
    assert!(week.contains("aria-current=\"true\">last 7d"));
    assert_html_error(&staff.get("/devices/d1?range=1y").await, 400, "range");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_timeline_pages_newest_first(pool: PgPool) {
    let app = app(&pool);
    insert_device(&pool, "d1", None, "healthy").await;
    // 30 sessions = 60 events, one an hour apart
    for n in 1..=30 {
        session(
            &pool,
            "d1",
            n,
            now() - TimeDelta::hours(31 - n),
            &format!("10.0.{n}.1"),
            &format!("REASON_{n}"),
        )
        .await;
    }
    let staff = Staff::new(&app, &pool, "vera", "viewer").await;
    let html = staff.html("/devices/d1").await;
    let timeline = &html[html.find("id=\"device-timeline\"").unwrap()..];
    assert_eq!(timeline.matches("<td class=\"ev-").count(), 50);
    assert!(timeline.contains("REASON_30"));
    let next = rel_link(timeline, "next").expect("a next page of events");
    let html = staff.html(&next).await;
    let timeline = &html[html.find("id=\"device-timeline\"").unwrap()..];
    assert_eq!(timeline.matches("<td class=\"ev-").count(), 10);
    assert!(timeline.contains("REASON_1<"));
    assert!(!timeline.contains("REASON_30"));
    assert!(rel_link(timeline, "next").is_none());
    assert_html_error(
        &staff.get("/devices/d1?cursor=bm9wZQ").await,
        400,
        "a cursor we did not hand out",
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn operators_retire_and_unretire_under_their_name(pool: PgPool) {
    let app = app(&pool);
    insert_device(&pool, "d1", None, "silent").await;
    let firing = fire(
        &pool,
        &gap_alert("d1", "silent"),
        now() - TimeDelta::hours(1),
    )
    .await;
    let alice = Staff::new(&app, &pool, "alice", "operator").await;

    let html = alice.html("/devices/d1?range=7d").await;
    assert!(html.contains("action=\"/devices/d1/retire\""));
    assert!(html.contains("name=\"back\" value=\"/devices/d1?range=7d\""));

    let r = alice
        .post("/devices/d1/retire", &[("back", "/devices/d1?range=7d")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(
        r.header(LOCATION),
        Some("/devices/d1?range=7d&done=retired")
    );
    // the audit trail: device_events under user:alice, the alert resolved by her
    let (kind, actor): (String, String) =
        sqlx::query_as("select type, actor from device_events where device_id = 'd1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), actor.as_str()), ("retired", "user:alice"));
    let (status, by): (String, serde_json::Value) =
        sqlx::query_as("select status, details->'retired_by' from alerts where id = $1")
            .bind(firing)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "resolved");
    assert_eq!(by, "user:alice");
    // visible afterwards: the confirmation, the state, the history, the unretire button
    let html = alice.html("/devices/d1?range=7d&done=retired").await;
    assert!(html.contains("Device retired: it is no longer evaluated"));
    assert!(html.contains("badge state-retired"));
    let history = &html[html.find("id=\"device-history\"").unwrap()..];
    assert!(history.contains("<td>retired</td>"));
    assert!(history.contains("user:alice"));
    assert!(html.contains("action=\"/devices/d1/unretire\""));
    assert!(!html.contains("action=\"/devices/d1/retire\""));
    // the API agrees
    let api = get(&app, "/api/v1/devices/d1").await.json();
    assert!(api["retired_at"].is_string(), "{api}");
    // a confirmation the server did not write is not shown
    let html = alice.html("/devices/d1?done=%3Cb%3Eowned").await;
    assert!(!html.contains("class=\"notice\""));
    assert!(!html.contains("owned"), "nor carried on in links");

    // Again: nothing changes, and the page says so.
    let r = alice
        .post("/devices/d1/retire", &[("back", "/devices/d1")])
        .await;
    assert_eq!(r.header(LOCATION), Some("/devices/d1?done=already-retired"));

    // Unretire; a back that leaves the site is ignored.
    let r = alice
        .post("/devices/d1/unretire", &[("back", "//evil.example/x")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header(LOCATION), Some("/devices/d1?done=unretired"));
    let events: Vec<(String, String)> =
        sqlx::query_as("select type, actor from device_events where device_id = 'd1' order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        events,
        vec![
            ("retired".to_string(), "user:alice".to_string()),
            ("unretired".to_string(), "user:alice".to_string())
        ]
    );
    let html = alice.html("/devices/d1?done=unretired").await;
    assert!(html.contains("Device returned to evaluation"));
    assert!(!html.contains("badge state-retired"));

    // Unknown device: a 404 page.
    let r = alice.post("/devices/nope/retire", &[]).await;
    assert_html_error(&r, 404, "retire an unknown device");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn viewers_and_other_sites_cannot_retire(pool: PgPool) {
    let app = app(&pool);
    insert_device(&pool, "d1", None, "healthy").await;
    let vera = Staff::new(&app, &pool, "vera", "viewer").await;
    let r = vera
        .post("/devices/d1/retire", &[("back", "/devices/d1")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let r = vera.post("/devices/d1/unretire", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // An operator's browser tricked by another site: refused by the CSRF guard.
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let cookie = format!("fleetwatch_session={}", alice.token);
    let r = send(
        &app,
        Method::POST,
        "/devices/d1/retire",
        &[("cookie", &cookie), ("sec-fetch-site", "cross-site")],
        Some(form(&[("back", "/devices/d1")])),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());

    let retired: i64 = sqlx::query_scalar(
        "select count(*) from devices where id = 'd1' and retired_at is not null",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(retired, 0);
    let events: i64 = sqlx::query_scalar("select count(*) from device_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 0);

    // Not signed in: to the login form, and back here afterwards.
    let r = send(
        &app,
        Method::GET,
        "/devices?state=offline",
        &[("accept", "text/html")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.header(LOCATION),
        Some("/login?next=/devices%3Fstate%3Doffline")
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn unknown_malformed_and_hostile_ids(pool: PgPool) {
    let app = app(&pool);
    let hostile = "<script>alert(1)</script>\"'&x";
    insert_device(&pool, hostile, Some("<b>grp</b>"), "offline").await;
    sqlx::query(
        "update devices set last_disconnect_reason = '<img src=x onerror=alert(1)>', \
         last_disconnected_at = now(), connected = false",
    )
    .execute(&pool)
    .await
    .unwrap();
    let staff = Staff::new(&app, &pool, "alice", "operator").await;

    let list = staff.html("/devices").await;
    assert!(!list.contains("<script>alert"), "raw script in the list");
    assert!(!list.contains("<img src=x"), "raw reason in the list");
    assert!(!list.contains("<b>grp"));
    assert!(list.contains(">&#60;script&#62;alert(1)&#60;/script&#62;&#34;&#39;&#38;x</a>"));
    assert!(list.contains("&#60;img src=x onerror=alert(1)&#62;"));
    // the row links to the device by its encoded id, and that page renders it escaped
    let href = format!("/devices/{}", fleetwatch::http::web::view::encode(hostile));
    assert!(list.contains(&format!("href=\"{href}\"")), "{list}");
    let page = staff.html(&href).await;
    assert!(!page.contains("<script>alert"));
    assert!(!page.contains("<img src=x"));
    assert!(page.contains("&#60;img src=x onerror=alert(1)&#62;"));
    assert!(page.contains("&#60;script&#62;alert(1)&#60;/script&#62;&#34;&#39;&#38;x"));
    // its retire form posts to the encoded path, and that works
    assert!(page.contains(&format!("action=\"{href}/retire\"")));
    let r = staff
        .post(&format!("{href}/retire"), &[("back", &href)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    // a search for the hostile text is a filter like any other
    let found = staff
        .html(&format!(
            "/devices?q={}",
            fleetwatch::http::web::view::encode("<script>")
        ))
        .await;
    assert_eq!(listed(&found).len(), 1);

    // Unknown: 404 page. Too long or NUL: 400 page. Never a 500.
    assert_html_error(&staff.get("/devices/nope").await, 404, "unknown");
    let long = format!("/devices/{}", "x".repeat(2000));
    assert_html_error(&staff.get(&long).await, 400, "very long id");
    assert_html_error(&staff.get("/devices/a%00b").await, 400, "NUL");
    assert_html_error(
        &staff.post("/devices/a%00b/retire", &[]).await,
        400,
        "NUL on post",
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn fragments_answer_only_their_section(pool: PgPool) {
    let app = app(&pool);
    insert_device(&pool, "d1", None, "offline").await;
    insert_device(&pool, "d2", None, "healthy").await;
    let id = fire(
        &pool,
        &gap_alert("d1", "offline"),
        now() - TimeDelta::hours(1),
    )
    .await;
    let staff = Staff::new(&app, &pool, "vera", "viewer").await;

    let r = staff
        .fragment("/devices?state=offline", "devices-table")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let body = r.text();
    assert!(
        body.trim_start().starts_with("<div id=\"devices-table\""),
        "{body}"
    );
    assert!(!body.contains("<html"));
    assert!(!body.contains("class=\"filters\""));
    assert_eq!(listed(&body), vec!["d1"]);
    assert!(body.contains("hx-get=\"/devices?state=offline\""));

    let r = staff.fragment("/devices/d1", "device-alerts").await;
    assert_eq!(r.status, StatusCode::OK);
    let body = r.text();
    assert!(
        body.trim_start()
            .starts_with("<section id=\"device-alerts\""),
        "{body}"
    );
    assert!(body.contains(&format!("href=\"/alerts/{id}\"")));
    assert!(!body.contains("device-summary"));
    assert!(!body.contains("<html"));

    for target in [
        "device-summary",
        "device-heartbeat",
        "device-silences",
        "device-history",
    ] {
        let r = staff.fragment("/devices/d1", target).await;
        assert_eq!(r.status, StatusCode::OK, "{target}");
        let body = r.text();
        assert!(
            body.contains(&format!("id=\"{target}\"")),
            "{target}: {body}"
        );
        assert!(!body.contains("<html"), "{target}");
        assert!(!body.contains("id=\"device-timeline\""), "{target}");
    }
    // an unknown target gets the whole page
    let r = staff.fragment("/devices/d1", "nonsense").await;
    assert!(r.text().contains("<html"));
    // a fragment of an unknown device: 404 (problem JSON for htmx, not an HTML page)
    let r = staff.fragment("/devices/nope", "device-alerts").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
