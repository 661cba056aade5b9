//! Dashboard page benchmark (`cargo bench --bench pages`; needs `DATABASE_URL` pointing at a
//! maintenance database). Prints the table recorded in BENCHMARKS.md.
//!
//! Issue 10's target: every page ≤ 100 ms and every fragment ≤ 50 ms of server time at
//! 100,000 devices and 10,000 alerts. A fresh database is seeded like the summary benchmark
//! (`BENCH_DEVICES` 100,000 devices in `BENCH_GROUPS` 60 groups, `BENCH_ALERTS` 10,000 alerts,
//! half firing; the counts' deltas folded, as the service's `counts_fold` keeps them) plus what
//! the pages read: an opened event per alert, 2,000 presence events and
//! a week of hourly counts for the device shown, 200 silences, 10,000 notifications (a tenth
//! dead). Each page is requested through the real router in-process with a signed-in
//! operator's session cookie — server time, without a network or a browser — `BENCH_RUNS` (50)
//! times after 5 warm-ups; the table gives p50 and p99 and whether p99 meets the target.
//! Fragments are requested as htmx does (`HX-Request`, `HX-Target`).

#[path = "../tests/common/mod.rs"]
mod common;

mod bench;

use axum::body::Body;
use axum::http::Request;
use bench::{arg, drop_db, fresh_db, measure, seed};
use common::http::{respond, TestApp};
use common::web::Staff;
use sqlx::PgPool;

const TOKEN: &str = "bench-token";

async fn seed_pages(pool: &PgPool) {
    sqlx::raw_sql(
        r#"
        insert into alert_events (alert_id, at, type, actor)
            select id, opened_at, 'opened', 'fleetwatch' from alerts;
        insert into alert_events (alert_id, at, type, actor)
            select id, now() - interval '1 hour', 'acknowledged', 'user:ops'
            from alerts where acknowledged_by is not null;
        insert into presence_events (client_id, device_id, event_type, session_key,
                                     version_number, event_ts, ip_address, disconnect_reason)
            select 'screen-000123', 'screen-000123',
                   case when i % 2 = 0 then 'connected' else 'disconnected' end,
                   's' || (i / 2), i, now() - (i * interval '5 minutes'), '10.1.2.3',
                   case when i % 2 = 1 then 'CONNECTION_LOST' end
            from generate_series(1, 2000) i;
        insert into impressions_hourly (device_id, hour, count)
            select 'screen-000123', date_trunc('hour', now()) - (h * interval '1 hour'), 40 + h % 7
            from generate_series(0, 167) h;
        insert into silences (device_id, group_id, kind, starts_at, ends_at, created_by, comment,
                              created_at)
            select case when i % 3 = 0 then 'screen-' || lpad(i::text, 6, '0') end,
                   case when i % 3 = 1 then 'building-' || lpad((1 + i % 60)::text, 3, '0') end,
                   case when i % 3 = 2 then 'flapping' end,
                   now() - interval '1 hour',
                   now() + case when i % 2 = 0 then interval '2 hours' else interval '-30 minutes' end,
                   'user:ops', 'maintenance ' || i, now() - interval '1 hour'
            from generate_series(1, 200) i;
        insert into notifications (alert_id, endpoint, event, body, status, attempts,
                                   next_attempt_at, created_at, retry_since, last_error)
            select id, 'pagerduty', 'alert.firing', '{}',
                   case when id % 10 = 0 then 'dead' when id % 10 = 1 then 'pending'
                        else 'delivered' end,
                   1 + id % 5, now(), now() - interval '1 hour', now() - interval '1 hour',
                   case when id % 10 = 0 then 'HTTP 410' end
            from alerts;
        analyze;
        "#,
    )
    .execute(pool)
    .await
    .unwrap();
}

/// One row of the table: what was requested, p50, p99, the target, whether met.
struct Row {
    what: String,
    p50: f64,
    p99: f64,
    target: f64,
}

#[tokio::main]
async fn main() {
    let devices = arg("BENCH_DEVICES", 100_000);
    let groups = arg("BENCH_GROUPS", 60);
    let alerts = arg("BENCH_ALERTS", 10_000);
    let runs = arg("BENCH_RUNS", 50);
    let (pool, url) = fresh_db("pages").await;
    seed(&pool, devices, groups, alerts).await;
    seed_pages(&pool).await;
    // A running service folds the counts' deltas every `counts.fold` (60 s): measure that state.
    let mut conn = pool.acquire().await.unwrap();
    fleetwatch::db::fleet_counts::fold(&mut conn).await.unwrap();
    drop(conn);
    let app = TestApp::new(&pool, TOKEN);
    let staff = Staff::new(&app, &pool, "bench", "operator").await;
    let alert_id: i64 = sqlx::query_scalar("select max(id) from alerts where status = 'firing'")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!(
        "pages: {devices} devices in {groups} groups, {alerts} alerts; {runs} runs each \
         (server time through the router, in-process)"
    );

    // (path, fragment target or "" for the whole page)
    let alert_page = format!("/alerts/{alert_id}");
    let cases: Vec<(&str, &str)> = vec![
        ("/", ""),
        ("/", "counts"),
        ("/", "alerts"),
        ("/", "groups"),
        ("/", "feed"),
        ("/", "health"),
        ("/", "aws"),
        ("/devices", ""),
        ("/devices?state=offline", ""),
        ("/devices?group=building-007&connected=no", ""),
        ("/devices?q=0123", ""),
        ("/devices?state=offline", "devices-table"),
        ("/devices/screen-000123", ""),
        ("/devices/screen-000123?range=7d", ""),
        ("/devices/screen-000123", "device-alerts"),
        ("/alerts", ""),
        ("/alerts?status=firing", ""),
        ("/alerts?status=firing", "alerts-table"),
        ("/alerts?group=building-007&acked=no", ""),
        ("/alerts?status=firing&kind=heartbeat_gap", ""),
        (alert_page.as_str(), ""),
        ("/silences", ""),
        ("/silences/new?group=building-001", ""),
        ("/webhooks", ""),
        ("/webhooks?status=dead", ""),
    ];
    let mut rows = Vec::new();
    for (path, target) in cases {
        // A route this build does not have yet is left out, not measured as an error page.
        let probe = if target.is_empty() {
            staff.get(path).await
        } else {
            staff.fragment(path, target).await
        };
        if probe.status.as_u16() != 200 {
            eprintln!("skipped {path} {target}: {}", probe.status);
            continue;
        }
        let cookie = format!("fleetwatch_session={}", staff.token);
        let (p50, p99) = measure(runs, || {
            let mut b = Request::get(path).header("cookie", cookie.as_str());
            if !target.is_empty() {
                b = b.header("hx-request", "true").header("hx-target", target);
            }
            let req = b.body(Body::empty()).unwrap();
            let app = &app.app;
            async move {
                let r = respond(app, req).await;
                assert_eq!(r.status.as_u16(), 200);
            }
        })
        .await;
        rows.push(Row {
            what: if target.is_empty() {
                format!("`GET {path}`")
            } else {
                format!("`GET {path}` fragment `#{target}`")
            },
            p50,
            p99,
            target: if target.is_empty() { 100.0 } else { 50.0 },
        });
    }
    println!("| request | p50 ms | p99 ms | target (p99) | met |");
    println!("|---|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | ≤ {:.0} ms | {} |",
            r.what,
            r.p50,
            r.p99,
            r.target,
            if r.p99 <= r.target { "yes" } else { "**no**" }
        );
    }
    drop(staff);
    drop(app);
    drop_db(pool, &url).await;
}
