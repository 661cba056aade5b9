//! The overview page (`GET /`): devices per state linking to the filtered list, firing alerts
//! by kind and severity with the unacknowledged first, group tiles coloured by their worst
//! state, the feed of recent changes, our own health, the CloudWatch charts or the "AWS
//! polling is off" panel; each section also as a fragment (`HX-Target`), and hostile names
//! escaped. Router tests on a fresh database per test.

mod common;

use chrono::TimeDelta;
use common::http::{t, TestApp, NOW};
use common::web::{escaped, Staff};
use sqlx::PgPool;

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql).execute(pool).await.unwrap();
}

async fn alert(pool: &PgPool, kind: &str, subject: &str, severity: &str, acked: bool) -> i64 {
    sqlx::query_scalar(
        r#"insert into alerts (kind, subject, device_id, severity, status, opened_at, summary,
                               acknowledged_by, acknowledged_at, updated_at)
           values ($1, $2, $2, $3, 'firing', $4, 'test', $5, $6, $4) returning id"#,
    )
    .bind(kind)
    .bind(subject)
    .bind(severity)
    .bind(t(NOW))
    .bind(acked.then_some("user:bob"))
    .bind(acked.then_some(t(NOW)))
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn counts_link_to_the_filtered_list_and_match_the_summary(pool: PgPool) {
    exec(
        &pool,
        "insert into devices (id, state) values ('d1', 'healthy'), ('d2', 'healthy'), ('d3', 'silent')",
    )
    .await;
    let app = TestApp::new(&pool, "tok");
    let staff = Staff::new(&app, &pool, "alice", "viewer").await;
    let html = staff.html("/").await;
    let api = common::http::get_ok(&app, "/api/v1/fleet/summary").await;
    for (state, n) in api["devices_by_state"].as_object().unwrap() {
        let cell = format!(r#"<a href="/devices?state={state}">{n}</a>"#);
        assert!(html.contains(&cell), "{cell} in {html}");
    }
    assert!(
        html.contains("Devices <span class=\"muted\">(3)</span>"),
        "{html}"
    );
    assert!(html.contains("alice") && html.contains("viewer"));
    assert!(html.contains(r#"<a href="/" aria-current="page">Overview</a>"#));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn firing_alerts_by_kind_unacknowledged_first(pool: PgPool) {
    alert(&pool, "address_drift", "d1", "warning", true).await;
    alert(&pool, "heartbeat_gap", "d2", "error", false).await;
    alert(&pool, "heartbeat_gap", "d3", "error", true).await;
    alert(&pool, "flapping", "d4", "warning", false).await;
    let app = TestApp::new(&pool, "tok");
    let staff = Staff::new(&app, &pool, "alice", "viewer").await;
    let html = staff.html("/").await;
    let pos = |needle: &str| {
        html.find(needle)
            .unwrap_or_else(|| panic!("{needle} in {html}"))
    };
    // unacked error first, then unacked warning, then the acked-only kind
    let (gap, flap, drift) = (
        pos(">heartbeat_gap</a>"),
        pos(">flapping</a>"),
        pos(">address_drift</a>"),
    );
    assert!(gap < flap && flap < drift, "{gap} {flap} {drift}");
    assert!(
        html.contains(r#"href="/alerts?status=firing&#38;kind=heartbeat_gap""#),
        "{html}"
    );
    assert!(
        html.contains("<span data-firing-count>4</span>, 2 unacknowledged"),
        "{html}"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn group_tiles_worst_first_and_hostile_names_escaped(pool: PgPool) {
    exec(
        &pool,
        r#"insert into groups (id, name) values
               ('b1', 'Building 1'), ('b2', '<script>alert("x")</script> & co'), ('b3', 'Quiet one');
           insert into devices (id, state, group_id) values
               ('a', 'healthy', 'b1'), ('b', 'offline', 'b1'), ('c', 'healthy', 'b2'),
               ('d', 'late', 'b2');"#,
    )
    .await;
    let app = TestApp::new(&pool, "tok");
    let staff = Staff::new(&app, &pool, "alice", "viewer").await;
    let html = staff.html("/").await;
    assert!(!html.contains("<script>alert"), "unescaped group name");
    assert!(
        html.contains(&escaped(r#"<script>alert("x")</script> & co"#)),
        "{html}"
    );
    let b1 = html.find("tile worst-offline").expect("b1 is offline");
    let b2 = html.find("tile worst-late").expect("b2 is late");
    assert!(b1 < b2, "worst first");
    assert!(html.contains(r#"<a href="/devices?group=b1">"#), "{html}");
    assert!(html.contains("1 offline"), "{html}");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_feed_and_our_own_health(pool: PgPool) {
    let id = alert(&pool, "heartbeat_gap", "d<1>", "error", false).await;
    sqlx::query("insert into alert_events (alert_id, at, type, actor) values ($1, $2, 'opened', 'fleetwatch'), ($1, $3, 'acknowledged', 'user:bob')")
        .bind(id)
        .bind(t(NOW))
        .bind(t(NOW) + TimeDelta::minutes(1))
        .execute(&pool)
        .await
        .unwrap();
    let app = TestApp::new(&pool, "tok");
    let staff = Staff::new(&app, &pool, "alice", "viewer").await;
    let html = staff.html("/").await;
    let acked = html
        .find("<strong>acknowledged</strong> by user:bob")
        .expect(&html);
    let opened = html.find("<strong>opened</strong>").expect(&html);
    assert!(acked < opened, "newest first");
    assert!(
        html.contains(&format!(
            r#"href="/alerts/{id}">heartbeat_gap d&#60;1&#62;</a>"#
        )),
        "{html}"
    );
    // health: no MQTT connection in a router test, nothing pending
    assert!(html.contains("Ingest (MQTT)"), "{html}");
    assert!(html.contains("nothing pending"), "{html}");
    // AWS off by default: said plainly
    assert!(html.contains("AWS polling is off"), "{html}");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn cloudwatch_series_become_charts(pool: PgPool) {
    let now = t(NOW);
    let id: i64 = sqlx::query_scalar(
        r#"insert into cloudwatch_metrics (namespace, metric_name, dimensions, source, first_seen_at, last_listed_at)
           values ('AWS/IoT', 'Connect.Throttle', '{"Protocol":"MQTT"}', 'discovered', $1, $1) returning id"#,
    )
    .bind(now)
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query("insert into cloudwatch_samples (metric_id, period_start, period_seconds, value, fetched_at) values ($1, $2, 60, 7, $2), ($1, $3, 60, 12, $3)")
        .bind(id)
        .bind(now - TimeDelta::minutes(30))
        .bind(now - TimeDelta::minutes(10))
        .execute(&pool)
        .await
        .unwrap();
    let app = TestApp::new(&pool, "tok");
    let staff = Staff::new(&app, &pool, "alice", "viewer").await;
    let html = staff.html("/").await;
    assert!(!html.contains("AWS polling is off"), "{html}");
    assert!(
        html.contains(r#"aria-label="Connect.Throttle per 5 minutes""#),
        "{html}"
    );
    assert!(html.contains("Protocol=MQTT 12</title>"), "{html}");
    assert!(html.contains("<polyline"), "{html}");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_fragment_request_gets_only_its_section(pool: PgPool) {
    exec(
        &pool,
        "insert into devices (id, state) values ('d1', 'offline')",
    )
    .await;
    let app = TestApp::new(&pool, "tok");
    let staff = Staff::new(&app, &pool, "alice", "viewer").await;
    let r = staff.fragment("/", "counts").await;
    assert_eq!(r.status, 200);
    let html = r.text();
    assert!(html.contains(r#"id="counts""#), "{html}");
    for other in [
        r#"id="alerts""#,
        r#"id="groups""#,
        r#"id="feed""#,
        r#"id="health""#,
        r#"id="aws""#,
    ] {
        assert!(!html.contains(other), "{other} in a counts fragment");
    }
    // each section re-fetches this URL into itself on its topics
    let full = staff.html("/").await;
    assert!(full.contains(r##"id="counts" data-live="devices" hx-get="/" hx-trigger="fw-live" hx-select="#counts""##), "{full}");
    // an unknown target renders the whole page
    let all = staff.fragment("/", "bogus").await.text();
    assert!(all.contains(r#"id="feed""#));
    // not signed in: a fragment gets 401, not a redirect into a login form
    let anon = common::web::send(
        &app,
        axum::http::Method::GET,
        "/",
        &[("hx-request", "true")],
        None,
    )
    .await;
    assert_eq!(anon.status, 401);
}
