//! The dashboard in a real browser (headless Chromium through chromedriver): sign-in through
//! the form, the scripts load under the CSP, the live stream connects, a change in the
//! database reaches the open page without a reload (NOTIFY → /live → htmx fragment morph) and
//! the tab title, the time-zone and theme switches, and the keyboard help.

mod common;

use common::browser::{Browser, Served};
use common::http::{t, TestApp, NOW};
use fantoccini::Locator;
use sqlx::PgPool;

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_overview_lives_in_a_browser(pool: PgPool) {
    if common::browser::skipped() {
        return;
    }
    common::web::create_user(&pool, "alice", "operator").await;
    let app = TestApp::build(&pool, t(NOW), Some("tok"), |c| {
        c.fleet.time_zone = fleetwatch::config::TimeZone(chrono_tz::Asia::Tokyo);
    });
    sqlx::raw_sql(
        "insert into devices (id, state) values ('d1', 'healthy'), ('d2', 'healthy');
         insert into alerts (kind, subject, device_id, severity, status, opened_at, summary, updated_at)
         values ('flapping', 'd2', 'd2', 'warning', 'firing', '2026-11-27T12:00:00Z', 'x', now());
         insert into alert_events (alert_id, at, type) select id, opened_at, 'opened' from alerts;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let served = Served::start(&app, &pool).await;
    let b = Browser::start().await;
    b.login(&served, "alice").await;
    let c = &b.client;

    // the scripts ran (they are only loaded from /static under the CSP)
    assert_eq!(b.js("return typeof htmx;").await, "object");
    assert_eq!(b.js("return typeof Idiomorph;").await, "object");
    b.wait_for("the live stream", || async {
        b.text("#live-status").await == "live"
    })
    .await;
    b.wait_for("the firing count in the title", || async {
        c.title().await.unwrap().starts_with("(1 firing) Overview")
    })
    .await;

    // a change in the database reaches the open page without a reload
    b.js("window.__same_page = true; return 1;").await;
    sqlx::raw_sql(
        "insert into alerts (kind, subject, device_id, severity, status, opened_at, summary, updated_at)
         values ('heartbeat_gap', 'd1', 'd1', 'error', 'firing', now(), 'x', now());
         update devices set state = 'offline' where id = 'd1';",
    )
    .execute(&pool)
    .await
    .unwrap();
    b.wait_for("the alerts section to update", || async {
        b.text("#alerts [data-firing-count]").await == "2"
    })
    .await;
    b.wait_for("the counts section to update", || async {
        b.text("#counts a[href='/devices?state=offline']").await == "1"
    })
    .await;
    assert!(c.title().await.unwrap().starts_with("(2 firing)"));
    assert_eq!(
        b.js("return window.__same_page === true;").await,
        true,
        "no reload"
    );

    // times: UTC, then the fleet's zone, named on the page
    let feed_time = "#feed time";
    c.find(Locator::Css("#tz-select option[value=utc]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_for("UTC times", || async {
        b.text("[data-zone-name]").await == "UTC" && b.text(feed_time).await.starts_with("12:00:00")
    })
    .await;
    c.find(Locator::Css("#tz-select option[value=fleet]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_for("Tokyo times", || async {
        b.text("[data-zone-name]").await == "Asia/Tokyo"
            && b.text(feed_time).await.starts_with("21:00:00")
    })
    .await;
    let hover = c
        .find(Locator::Css(feed_time))
        .await
        .unwrap()
        .attr("title")
        .await
        .unwrap();
    assert_eq!(hover.as_deref(), Some("2026-11-27T12:00:00Z (UTC)"));

    // theme override
    c.find(Locator::Css("#theme-select option[value=dark]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        b.js("return document.documentElement.getAttribute('data-theme');")
            .await,
        "dark"
    );
    // … remembered across pages
    c.goto(&served.url("/")).await.unwrap();
    assert_eq!(
        b.js("return document.documentElement.getAttribute('data-theme');")
            .await,
        "dark"
    );

    // keyboard: "?" shows the help
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("?")
        .await
        .unwrap();
    assert_eq!(
        b.js("return document.querySelector('[data-keys-help]').hidden;")
            .await,
        false
    );
    b.close().await;
}

/// The alerts list by keyboard: `/` searches, `j`/`k` move, `x` selects (and a selection
/// pauses live refreshes, said on the page, until it is cleared), `a` acknowledges the row;
/// and every page fits a phone's width.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn alerts_by_keyboard_and_pages_at_phone_width(pool: PgPool) {
    if common::browser::skipped() {
        return;
    }
    common::web::create_user(&pool, "alice", "operator").await;
    let app = TestApp::build(&pool, t(NOW), Some("tok"), |_| {});
    sqlx::raw_sql(
        "insert into devices (id, state) values ('d1', 'offline'), ('d2', 'silent'), ('d3', 'healthy');
         insert into alerts (kind, subject, device_id, severity, status, opened_at, summary, updated_at)
         values ('heartbeat_gap', 'd1', 'd1', 'error', 'firing', '2026-11-27T11:00:00Z', 'gap d1', now()),
                ('heartbeat_gap', 'd2', 'd2', 'error', 'firing', '2026-11-27T11:30:00Z', 'gap d2', now());",
    )
    .execute(&pool)
    .await
    .unwrap();
    let served = Served::start(&app, &pool).await;
    let b = Browser::start().await;
    b.login(&served, "alice").await;
    let c = &b.client;
    c.goto(&served.url("/alerts?status=firing")).await.unwrap();
    b.wait_for("the live stream", || async {
        b.text("#live-status").await == "live"
    })
    .await;
    let body = c.find(Locator::Css("body")).await.unwrap();

    // "/" focuses the search box
    body.send_keys("/").await.unwrap();
    assert_eq!(
        b.js("return document.activeElement.hasAttribute('data-search');")
            .await,
        true
    );
    b.js("document.activeElement.blur(); return 1;").await;

    // j moves to the first row (the newest: d2), x selects it: live refreshes pause (keys go
    // to the focused element, as a user's would)
    body.send_keys("j").await.unwrap();
    assert_eq!(
        b.js("return document.activeElement.matches('tr[data-row]') && document.activeElement.textContent.includes('d2');").await,
        true
    );
    c.active_element()
        .await
        .unwrap()
        .send_keys("x")
        .await
        .unwrap();
    b.wait_for("the pause to be said", || async {
        b.text("#live-status").await.contains("paused")
    })
    .await;
    // a change meanwhile does not disturb the table (the checked box stays checked) …
    sqlx::raw_sql(
        "insert into alerts (kind, subject, device_id, severity, status, opened_at, summary, updated_at)
         values ('flapping', 'd3', 'd3', 'warning', 'firing', now(), 'flap d3', now());",
    )
    .execute(&pool)
    .await
    .unwrap();
    b.wait_for("changes waiting", || async {
        b.text("#live-status").await.contains("changes waiting")
    })
    .await;
    assert!(!b.text("#alerts-table").await.contains("flap d3"));
    assert_eq!(
        b.js("return document.querySelectorAll('input[data-select]:checked').length;")
            .await,
        1
    );
    // … and it arrives once the selection is cleared
    c.active_element()
        .await
        .unwrap()
        .send_keys("x")
        .await
        .unwrap();
    b.wait_for("the refresh after the pause", || async {
        b.text("#alerts-table").await.contains("flap d3")
    })
    .await;

    // "a" on a row acknowledges it, recorded under the user
    b.js("document.querySelector('tr[data-row]').focus(); return 1;")
        .await;
    let focused_subject = b
        .js("return document.activeElement.textContent.includes('d3') ? 'd3' : 'other';")
        .await;
    assert_eq!(focused_subject, "d3", "the newest alert is first");
    c.active_element()
        .await
        .unwrap()
        .send_keys("a")
        .await
        .unwrap();
    let acked = || async {
        sqlx::query_scalar::<_, Option<String>>(
            "select acknowledged_by from alerts where subject = 'd3'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    b.wait_for("the acknowledgement", || async {
        acked().await.as_deref() == Some("user:alice")
    })
    .await;

    // phone width: nothing wider than the screen; and many navigations in a row each load
    // (every page holds an event stream: each must be closed when its page goes away)
    c.set_window_size(390, 844).await.unwrap();
    for path in [
        "/",
        "/devices",
        "/alerts",
        "/devices/d1",
        "/silences",
        "/webhooks",
        "/",
        "/alerts",
    ] {
        c.goto(&served.url(path)).await.unwrap();
        let overflow = b
            .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
            .await;
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{path} is {overflow} px wider than a phone"
        );
    }
    b.close().await;
}
