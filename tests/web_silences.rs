//! The Silences and Webhooks pages (issue 10, item 4): `/silences` (active, scheduled, recently
//! ended, the "matches nothing" warning, End), `/silences/new` (prefill, preview, create with the
//! API's validation), `/webhooks` (backlog, deliveries filtered and paged from the URL,
//! redrive), their fragments, permissions, CSRF, bad input and hostile text.

mod common;

use axum::http::header::LOCATION;
use axum::http::{Method, StatusCode};
use chrono::{DateTime, TimeDelta, Utc};
use common::http::{t, TestApp, NOW};
use common::web::{form, send, Staff};
use fleetwatch::alerts::lifecycle;
use fleetwatch::alerts::AlertSpec;
use fleetwatch::db::silences::{self, NewSilence};
use fleetwatch::domain::actor::Actor;
use fleetwatch::domain::alert::{Kind, Severity};
use sqlx::PgPool;

const HOSTILE: &str = "<script>alert(1)</script>\"'&x";

fn app(pool: &PgPool) -> TestApp {
    TestApp::build(pool, t(NOW), None, |_| {})
}

fn now() -> DateTime<Utc> {
    t(NOW)
}

async fn device(pool: &PgPool, id: &str, group: Option<&str>) {
    if let Some(g) = group {
        sqlx::query("insert into groups (id, name) values ($1, $1) on conflict do nothing")
            .bind(g)
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::query("insert into devices (id, group_id) values ($1, $2)")
        .bind(id)
        .bind(group)
        .execute(pool)
        .await
        .unwrap();
}

/// A firing heartbeat-gap alert of `device` in `group`.
async fn firing(pool: &PgPool, device: &str, group: Option<&str>) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    let spec = AlertSpec {
        kind: Kind::HeartbeatGap,
        subject: device.into(),
        device_id: Some(device.into()),
        group_id: group.map(String::from),
        severity: Severity::Error,
        summary: format!("{device} silent"),
        details: serde_json::json!({}),
    };
    let id = lifecycle::fire(&mut tx, &spec, now(), TimeDelta::minutes(30))
        .await
        .unwrap()
        .id();
    tx.commit().await.unwrap();
    id
}

/// A silence written as the API writes one (by a token).
async fn silence(
    pool: &PgPool,
    device: Option<&str>,
    group: Option<&str>,
    kind: Option<Kind>,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    comment: &str,
) -> i64 {
    let new = NewSilence {
        device_id: device.map(String::from),
        group_id: group.map(String::from),
        kind,
        starts_at: from,
        ends_at: until,
        created_by: Actor::token(Some(3), "ops-script", None),
        comment: comment.into(),
    };
    silences::create(pool, &new, from.min(now()))
        .await
        .unwrap()
        .id
}

/// The `<tr>` of silence `id` (panics if absent).
fn row<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no row {id} in {html}"));
    let end = html[start..].find("</tr>").unwrap() + start;
    &html[start..end]
}

/// The part of the page after heading `h2` (up to the next `<h2>`).
fn section<'a>(html: &'a str, h2: &str) -> &'a str {
    let start = html
        .find(&format!("<h2>{h2}</h2>"))
        .unwrap_or_else(|| panic!("no section {h2}"));
    let rest = &html[start + 4..];
    let end = rest.find("<h2>").unwrap_or(rest.len());
    &rest[..end]
}

fn location(r: &common::http::Resp) -> &str {
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    r.header(LOCATION).unwrap()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_silences_page_shows_active_scheduled_and_recently_ended_and_warns_on_typos(
    pool: PgPool,
) {
    device(&pool, "d1", Some("b1")).await;
    device(&pool, "old", Some("b2")).await;
    sqlx::query("update devices set retired_at = $1, state = 'retired' where id = 'old'")
        .bind(now())
        .execute(&pool)
        .await
        .unwrap();
    let alerting = firing(&pool, "ghost", Some("b3")).await;
    let h = TimeDelta::hours(1);
    let ok = silence(&pool, Some("d1"), None, None, now() - h, now() + h, "OPS-1").await;
    let group = silence(
        &pool,
        None,
        Some("b1"),
        None,
        now() - h,
        now() + h,
        "b1 work",
    )
    .await;
    let typo = silence(
        &pool,
        Some("d11"),
        None,
        None,
        now() - h,
        now() + h * 2,
        "OPS-2",
    )
    .await;
    let retired = silence(&pool, Some("old"), None, None, now() - h, now() + h, "old").await;
    let kind_only = silence(
        &pool,
        None,
        None,
        Some(Kind::Flapping),
        now() - h,
        now() + h,
        "k",
    )
    .await;
    // a device that is not in the table but has a firing alert: not "nothing"
    let unknown_but_alerting =
        silence(&pool, Some("ghost"), None, None, now() - h, now() + h, "g").await;
    let later = silence(
        &pool,
        Some("d12"),
        None,
        None,
        now() + h * 3,
        now() + h * 5,
        "OPS-3 tonight",
    )
    .await;
    let expired = silence(
        &pool,
        Some("d1"),
        None,
        None,
        now() - TimeDelta::days(3),
        now() - TimeDelta::days(2),
        "last week's",
    )
    .await;
    let too_old = silence(
        &pool,
        Some("d1"),
        None,
        None,
        now() - TimeDelta::days(12),
        now() - TimeDelta::days(10),
        "ancient",
    )
    .await;
    assert!(alerting > 0);
    let app = app(&pool);
    let viewer = Staff::new(&app, &pool, "victor", "viewer").await;
    let html = viewer.html("/silences").await;
    let active = section(&html, "Active");
    for id in [ok, group, typo, retired, kind_only, unknown_but_alerting] {
        assert!(active.contains(&format!("id=\"silence-{id}\"")), "{id}");
    }
    assert!(active.contains("OPS-1") && active.contains("token:3:ops-script"));
    assert!(
        row(&html, &format!("silence-{ok}")).contains("1h"),
        "time left"
    );
    // its first link: the firing alerts it matches
    assert!(row(&html, &format!("silence-{ok}"))
        .contains("href=\"/alerts?status=firing&#38;device=d1\""));
    let scheduled = section(&html, "Scheduled");
    assert!(scheduled.contains(&format!("id=\"silence-{later}\"")));
    assert!(scheduled.contains("3h"), "starts in");
    let ended = section(&html, "Ended in the last 7 days");
    assert!(ended.contains(&format!("id=\"silence-{expired}\"")));
    assert!(ended.contains("expired") && ended.contains("2d"));
    assert!(!html.contains(&format!("id=\"silence-{too_old}\"")));
    // the warning: the typo, the retired device's and tonight's typo; not the others
    assert!(html.contains("3 silences match nothing"), "{html}");
    for id in [typo, retired, later] {
        assert!(
            row(&html, &format!("silence-{id}")).contains("matches nothing"),
            "{id} is warned about"
        );
    }
    for id in [ok, group, kind_only, unknown_but_alerting, expired] {
        assert!(
            !row(&html, &format!("silence-{id}")).contains("matches nothing"),
            "{id} matches something"
        );
    }
    // viewers see no End button; operators do, on active and scheduled ones only
    assert!(!html.contains("/end\""));
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let html = alice.html("/silences").await;
    assert!(row(&html, &format!("silence-{ok}")).contains(&format!("/silences/{ok}/end")));
    assert!(row(&html, &format!("silence-{later}")).contains(&format!("/silences/{later}/end")));
    assert!(!row(&html, &format!("silence-{expired}")).contains("/end"));
    assert!(html.contains("data-live=\"silences alerts\""));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn ending_a_silence_records_the_user_and_moves_it_to_recently_ended(pool: PgPool) {
    device(&pool, "d1", Some("b1")).await;
    let h = TimeDelta::hours(1);
    let id = silence(&pool, Some("d1"), None, None, now() - h, now() + h, "OPS-1").await;
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let end = format!("/silences/{id}/end");
    let r = alice.post(&end, &[("back", "/silences?cursor=x")]).await;
    assert_eq!(location(&r), "/silences?done=ended");
    let (deleted_by, deleted_at): (Option<String>, Option<DateTime<Utc>>) =
        sqlx::query_as("select deleted_by, deleted_at from silences where id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(deleted_by.as_deref(), Some("user:alice"));
    assert_eq!(deleted_at, Some(now()));
    // the API shows who ended it, like a token's DELETE
    let api = silences::get(&pool, id, now()).await.unwrap().unwrap();
    assert!(!api.active);
    app.clock.advance(TimeDelta::minutes(5));
    let html = alice.html("/silences?done=ended").await;
    assert!(html.contains("Silence ended."));
    assert!(section(&html, "Active").contains("No silence is active"));
    let ended = row(&html, &format!("silence-{id}"));
    assert!(ended.contains("ended by user:alice") && ended.contains("5m"));
    // again: already over, said so; the record is unchanged
    let r = alice.post(&end, &[]).await;
    assert_eq!(location(&r), "/silences?done=already");
    assert!(alice
        .html("/silences?done=already")
        .await
        .contains("That silence had already ended."));
    // the confirmation text is the server's, never the parameter
    let html = alice.html(&format!("/silences?done={}", "%3Cb%3E")).await;
    assert!(!html.contains("<b>") && !html.contains("class=\"notice\""));
    // unknown or malformed ids: 404 pages
    for bad in [
        "/silences/999999/end",
        "/silences/abc/end",
        "/silences/-1/end",
    ] {
        let r = alice.post(bad, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{bad}");
        assert!(r.content_type().starts_with("text/html"), "{bad}");
    }
    // a `back` off the site is not followed
    let other = silence(&pool, Some("d1"), None, None, now(), now() + h, "x").await;
    let r = alice
        .post(
            &format!("/silences/{other}/end"),
            &[("back", "https://evil.example/")],
        )
        .await;
    assert_eq!(location(&r), "/silences?done=ended");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_preview_lists_what_the_matchers_match_and_only_that(pool: PgPool) {
    device(&pool, "d1", Some("b1")).await;
    device(&pool, "d2", Some("b1")).await;
    device(&pool, "d3", Some("b2")).await;
    let a1 = firing(&pool, "d1", Some("b1")).await;
    let a3 = firing(&pool, "d3", Some("b2")).await;
    for i in 0..55 {
        device(&pool, &format!("big-{i:02}"), Some("big")).await;
    }
    let app = app(&pool);
    let viewer = Staff::new(&app, &pool, "victor", "viewer").await;
    // prefilled as the alert list links here, with the preview
    let html = viewer
        .html("/silences/new?kind=heartbeat_gap&group=b1&device=")
        .await;
    assert!(html.contains("name=\"group\" value=\"b1\""));
    assert!(html.contains("<option value=\"heartbeat_gap\" selected>"));
    assert!(html.contains("data-pause-live"));
    assert!(html.contains("value=\"2h\""), "a default duration");
    let preview = &html[html.find("What it would match now").expect("a preview")..];
    assert!(preview.contains("/devices/d1") && preview.contains("/devices/d2"));
    assert!(!preview.contains("/devices/d3"));
    assert!(preview.contains(&format!("/alerts/{a1}")));
    assert!(!preview.contains(&format!("/alerts/{a3}")));
    // viewers preview but cannot create
    assert!(!html.contains("formaction=\"/silences\""));
    // one device
    let html = viewer.html("/silences/new?device=d3").await;
    let preview = &html[html.find("What it would match now").unwrap()..];
    assert!(preview.contains("/devices/d3") && !preview.contains("/devices/d1"));
    assert!(preview.contains(&format!("/alerts/{a3}")));
    // a device and a group that do not go together: nothing
    let html = viewer.html("/silences/new?device=d3&group=b1").await;
    assert!(html.contains("No device matches"));
    assert!(html.contains("No firing alert matches now"));
    // kind only: any device
    let html = viewer.html("/silences/new?kind=heartbeat_gap").await;
    assert!(html.contains("Any device"));
    assert!(html.contains(&format!("/alerts/{a1}")) && html.contains(&format!("/alerts/{a3}")));
    // bounded: 50 listed, the rest counted
    let html = viewer.html("/silences/new?group=big").await;
    assert!(html.contains("/devices/big-49") && !html.contains("/devices/big-50"));
    assert!(html.contains("and 5 more"));
    // the API body's names are accepted too
    let html = viewer.html("/silences/new?device_id=d3").await;
    assert!(html.contains("name=\"device\" value=\"d3\""));
    // no matcher: the form alone
    let html = viewer.html("/silences/new").await;
    assert!(!html.contains("What it would match now"));
    // an unknown kind: the form says so (not an error page)
    let html = viewer.html("/silences/new?kind=heartbeat").await;
    assert!(html.contains("kind: expected one of"));
    assert!(!html.contains("What it would match now"));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn creating_a_silence_stores_it_under_the_user_through_the_api_rules(pool: PgPool) {
    device(&pool, "d1", Some("b1")).await;
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let html = alice.html("/silences/new?device=d1").await;
    assert!(html.contains("formaction=\"/silences\""));
    let r = alice
        .post(
            "/silences",
            &[
                ("device", "d1"),
                ("group", ""),
                ("kind", "heartbeat_gap"),
                ("duration", "2h"),
                ("ends_at", ""),
                ("starts_at", ""),
                ("comment", "OPS-7 firmware"),
            ],
        )
        .await;
    assert_eq!(location(&r), "/silences?done=created");
    let rows = silences::list(&pool, Some(true), now(), None, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let s = &rows[0];
    assert_eq!(s.created_by, "user:alice");
    assert_eq!(s.on_behalf_of, None);
    assert_eq!(s.device_id.as_deref(), Some("d1"));
    assert_eq!(s.group_id, None);
    assert_eq!(s.kind, Some(Kind::HeartbeatGap));
    assert_eq!(
        (s.starts_at, s.ends_at),
        (now(), now() + TimeDelta::hours(2))
    );
    let html = alice.html("/silences?done=created").await;
    assert!(html.contains("Silence created."));
    let active = section(&html, "Active");
    assert!(active.contains("OPS-7 firmware") && active.contains("user:alice"));
    // an end time (UTC) instead of a duration
    let r = alice
        .post(
            "/silences",
            &[
                ("group", "b1"),
                ("ends_at", "2026-11-27T20:00"),
                ("comment", "until eight"),
            ],
        )
        .await;
    assert_eq!(location(&r), "/silences?done=created");
    let ends: DateTime<Utc> =
        sqlx::query_scalar("select ends_at from silences where comment = 'until eight'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(ends, t("2026-11-27T20:00:00Z"));
    // invalid drafts re-show the form with the API's message, keep what was typed, store nothing
    for (pairs, message) in [
        (
            vec![("device", "d1"), ("duration", "2h"), ("comment", " ")],
            "comment: must not be empty",
        ),
        (
            vec![("duration", "2h"), ("comment", "x")],
            "a silence needs at least one of device_id, group_id, kind",
        ),
        (
            vec![("device", "d1"), ("duration", "91d"), ("comment", "x")],
            "a silence lasts at most 90 days",
        ),
        (
            vec![
                ("device", "d1"),
                ("ends_at", "2026-11-27T11:00"),
                ("comment", "x"),
            ],
            "ends_at: must be after starts_at",
        ),
        (
            vec![("device", "d1"), ("duration", "soon"), ("comment", "x")],
            "duration: expected a duration",
        ),
        (
            vec![("kind", "nope"), ("duration", "1h"), ("comment", "x")],
            "kind: expected one of",
        ),
        (
            vec![("device", "d\0"), ("duration", "1h"), ("comment", "x")],
            "device_id: NUL characters are not allowed",
        ),
    ] {
        let r = alice.post("/silences", &pairs).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{pairs:?}");
        assert!(r.content_type().starts_with("text/html"));
        let html = r.text();
        assert!(html.contains(message), "{message}: {html}");
        assert!(html.contains("<form method=\"get\" action=\"/silences/new\""));
    }
    let n: i64 = sqlx::query_scalar("select count(*) from silences")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 2, "nothing stored by the refused drafts");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hostile_text_is_escaped_everywhere(pool: PgPool) {
    device(&pool, HOSTILE, Some(HOSTILE)).await;
    let alert = firing(&pool, HOSTILE, Some(HOSTILE)).await;
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let r = alice
        .post(
            "/silences",
            &[
                ("device", HOSTILE),
                ("group", HOSTILE),
                ("duration", "1h"),
                ("comment", HOSTILE),
            ],
        )
        .await;
    assert_eq!(location(&r), "/silences?done=created");
    let escaped = "&#60;script&#62;alert(1)&#60;/script&#62;";
    for uri in [
        "/silences".to_string(),
        format!(
            "/silences/new?device={0}&group={0}&comment={0}",
            fleetwatch::http::web::view::encode(HOSTILE)
        ),
    ] {
        let html = alice.html(&uri).await;
        assert!(!html.contains("<script>alert(1)"), "{uri}");
        assert!(html.contains(escaped), "{uri}: {html}");
    }
    sqlx::query(
        r#"insert into notifications (alert_id, endpoint, event, body, status, next_attempt_at,
               created_at, retry_since, last_error)
           values ($1, $2, 'alert.firing', '{}', 'dead', $3, $3, $3, $2)"#,
    )
    .bind(alert)
    .bind(HOSTILE)
    .bind(now())
    .execute(&pool)
    .await
    .unwrap();
    let html = alice.html("/webhooks").await;
    assert!(!html.contains("<script>alert(1)"));
    assert!(html.contains(escaped));
    let html = alice
        .html(&format!(
            "/webhooks?endpoint={}",
            fleetwatch::http::web::view::encode(HOSTILE)
        ))
        .await;
    assert!(!html.contains("<script>alert(1)"));
    assert!(
        html.contains(&format!("/alerts/{alert}")),
        "the filter matches"
    );
}

/// An alert and notifications of it: `n` delivered to `pager`, then one dead and one pending
/// for `pager`, one dead for `slack`. Returns (dead pager, pending, dead slack).
async fn deliveries(pool: &PgPool, n: i64) -> (i64, i64, i64) {
    let alert = firing(pool, "d1", None).await;
    let insert = |endpoint: &'static str, status: &'static str, at: DateTime<Utc>| async move {
        sqlx::query_scalar::<_, i64>(
            r#"insert into notifications (alert_id, endpoint, event, body, status, attempts,
                   next_attempt_at, created_at, retry_since, last_error)
               values ($1, $2, 'alert.firing', '{}', $3, 4, $4, $4, $4,
                       case when $3 = 'dead' then 'HTTP 500: from endpoint ' || $2 end)
               returning id"#,
        )
        .bind(alert)
        .bind(endpoint)
        .bind(status)
        .bind(at)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    for _ in 0..n {
        insert("pager", "delivered", now() - TimeDelta::hours(5)).await;
    }
    let dead = insert("pager", "dead", now() - TimeDelta::hours(3)).await;
    let pending = insert("pager", "pending", now() - TimeDelta::minutes(90)).await;
    let slack = insert("slack", "dead", now() - TimeDelta::hours(1)).await;
    (dead, pending, slack)
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_webhooks_page_lists_filters_and_pages_from_the_url_with_the_backlog(pool: PgPool) {
    device(&pool, "d1", None).await;
    let (dead, pending, slack) = deliveries(&pool, 105).await;
    let app = app(&pool);
    let viewer = Staff::new(&app, &pool, "victor", "viewer").await;
    let html = viewer.html("/webhooks").await;
    assert!(html.contains("1 pending"), "{html}");
    assert!(html.contains("2026-11-27T10:30:00Z") && html.contains("1h 30m ago"));
    assert!(html.contains("data-live=\"webhooks\""));
    for id in [dead, pending, slack] {
        assert!(html.contains(&format!("id=\"delivery-{id}\"")));
    }
    assert!(html.contains("HTTP 500: from endpoint slack"));
    assert!(row(&html, &format!("delivery-{dead}")).contains("/alerts/"));
    assert!(html.contains("100 shown"));
    // viewers have no redrive
    assert!(!html.contains("/webhooks/redrive"));
    // next page, by the link the page wrote
    let next = html
        .split("rel=\"next\"")
        .next()
        .and_then(|h| h.rsplit("href=\"").next())
        .and_then(|h| h.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    assert!(next.starts_with("/webhooks?cursor="), "{next}");
    let page2 = viewer.html(&next).await;
    assert!(page2.contains("8 shown") && page2.contains("rel=\"first\""));
    assert!(!page2.contains(&format!("id=\"delivery-{dead}\"")));
    // filters
    let html = viewer.html("/webhooks?status=dead").await;
    assert!(html.contains(&format!("id=\"delivery-{dead}\"")));
    assert!(html.contains(&format!("id=\"delivery-{slack}\"")));
    assert!(!html.contains(&format!("id=\"delivery-{pending}\"")));
    assert!(html.contains("<option value=\"dead\" selected>"));
    let html = viewer.html("/webhooks?status=dead&endpoint=slack").await;
    assert!(html.contains(&format!("id=\"delivery-{slack}\"")));
    assert!(!html.contains(&format!("id=\"delivery-{dead}\"")));
    assert!(html.contains("name=\"endpoint\" value=\"slack\""));
    let html = viewer.html("/webhooks?endpoint=nobody").await;
    assert!(html.contains("No notification matches these filters"));
    // malformed values: 400 pages
    for bad in [
        "?status=lost",
        "?cursor=YWJj",
        "?cursor=%%%",
        "?endpoint=a%00b",
    ] {
        let r = viewer.get(&format!("/webhooks{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.content_type().starts_with("text/html"), "{bad}");
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn dead_notifications_are_redriven_one_or_many_as_the_api_does(pool: PgPool) {
    device(&pool, "d1", None).await;
    let (dead, pending, slack) = deliveries(&pool, 1).await;
    let delivery_id = |id: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, String, DateTime<Utc>, DateTime<Utc>)>(
                "select delivery_id, status, next_attempt_at, retry_since from notifications where id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let before = delivery_id(dead).await;
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let html = alice.html("/webhooks?status=dead").await;
    // a row button and a checkbox for each dead row only
    assert!(row(&html, &format!("delivery-{dead}")).contains("action=\"/webhooks/redrive\""));
    assert!(row(&html, &format!("delivery-{dead}")).contains("data-select"));
    let html_all = alice.html("/webhooks").await;
    assert!(!row(&html_all, &format!("delivery-{pending}")).contains("redrive"));
    app.clock.advance(TimeDelta::minutes(1));
    // one, from its row
    let r = alice
        .post(
            "/webhooks/redrive",
            &[("id", &dead.to_string()), ("back", "/webhooks?status=dead")],
        )
        .await;
    assert_eq!(location(&r), "/webhooks?status=dead&done=redriven&n=1");
    let after = delivery_id(dead).await;
    assert_eq!(after.0, before.0, "same delivery id");
    assert_eq!(after.1, "pending");
    let t1 = now() + TimeDelta::minutes(1);
    assert_eq!((after.2, after.3), (t1, t1), "due now, fresh schedule");
    let html = alice.html("/webhooks?status=dead&done=redriven&n=1").await;
    assert!(html.contains("1 redriven."));
    // recorded under the user, and shown
    let by: Option<String> =
        sqlx::query_scalar("select redriven_by from notifications where id = $1")
            .bind(dead)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(by.as_deref(), Some("user:alice"));
    assert!(alice
        .html("/webhooks")
        .await
        .contains("redriven by user:alice"));
    // many, checked: the one still dead is redriven, the pending one skipped
    let body = form(&[
        ("id", &slack.to_string()),
        ("id", &pending.to_string()),
        ("back", "/webhooks"),
    ]);
    let r = send(
        &app,
        Method::POST,
        "/webhooks/redrive",
        &[
            ("cookie", &format!("fleetwatch_session={}", alice.token)),
            ("sec-fetch-site", "same-origin"),
        ],
        Some(body),
    )
    .await;
    assert_eq!(location(&r), "/webhooks?done=redriven&n=1&skipped=1");
    assert_eq!(delivery_id(slack).await.1, "pending");
    assert!(alice
        .html("/webhooks?done=redriven&n=1&skipped=1")
        .await
        .contains("1 redriven. 1 skipped: not dead any more."));
    // the same result as the API's redrive: the API now refuses it as not dead
    let api = fleetwatch::db::notifications::redrive(&pool, dead, now(), "token:1:ops")
        .await
        .unwrap();
    assert!(!api);
    // bad input
    let r = alice.post("/webhooks/redrive", &[("id", "999999")]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.content_type().starts_with("text/html"));
    for bad in [
        vec![("id", "x")],
        vec![("back", "/webhooks")],
        vec![("id", "-3")],
    ] {
        let r = alice.post("/webhooks/redrive", &bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}");
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn viewers_are_refused_every_action_and_cross_site_posts_are_refused(pool: PgPool) {
    device(&pool, "d1", None).await;
    let (dead, _, _) = deliveries(&pool, 0).await;
    let h = TimeDelta::hours(1);
    let id = silence(&pool, Some("d1"), None, None, now() - h, now() + h, "x").await;
    let app = app(&pool);
    let viewer = Staff::new(&app, &pool, "victor", "viewer").await;
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    let create = [
        ("device", "d1"),
        ("duration", "1h"),
        ("comment", "viewer's"),
    ];
    let end = format!("/silences/{id}/end");
    let dead_s = dead.to_string();
    let redrive = [("id", dead_s.as_str())];
    let actions: [(&str, &[(&str, &str)]); 3] = [
        ("/silences", &create),
        (&end, &[]),
        ("/webhooks/redrive", &redrive),
    ];
    for (uri, pairs) in actions {
        let r = viewer.post(uri, pairs).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "viewer {uri}");
        // cross-site, as the operator
        for site in ["cross-site", "same-site"] {
            let r = send(
                &app,
                Method::POST,
                uri,
                &[
                    ("cookie", &format!("fleetwatch_session={}", alice.token)),
                    ("sec-fetch-site", site),
                ],
                Some(form(pairs)),
            )
            .await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{site} {uri}");
        }
    }
    let (silences, ended, dead_now): (i64, i64, String) = sqlx::query_as(
        r#"select (select count(*) from silences),
                  (select count(*) from silences where deleted_at is not null),
                  (select status from notifications where id = $1)"#,
    )
    .bind(dead)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((silences, ended, dead_now.as_str()), (1, 0, "dead"));
    // not signed in: to the login form
    let r = send(&app, Method::GET, "/webhooks", &[], None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.header(LOCATION).unwrap().starts_with("/login?next="));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn fragments_are_the_live_regions_alone(pool: PgPool) {
    device(&pool, "d1", None).await;
    deliveries(&pool, 0).await;
    let h = TimeDelta::hours(1);
    silence(&pool, Some("d1"), None, None, now() - h, now() + h, "OPS-9").await;
    let app = app(&pool);
    let alice = Staff::new(&app, &pool, "alice", "operator").await;
    for (uri, id, has) in [
        ("/silences", "silences-live", "OPS-9"),
        ("/webhooks?status=dead", "webhooks-live", "HTTP 500"),
    ] {
        let full = alice.html(uri).await;
        assert!(full.contains(&format!("id=\"{id}\"")));
        assert!(full.contains(&format!("hx-get=\"{}\"", uri.replace('&', "&amp;"))));
        let r = alice.fragment(uri, id).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        let f = r.text();
        assert!(
            f.trim_start().starts_with(&format!("<div id=\"{id}\"")),
            "{f}"
        );
        assert!(f.contains(has));
        assert!(
            !f.contains("<html") && !f.contains("<header"),
            "{uri}: the region only"
        );
        // another target: the whole page
        let r = alice.fragment(uri, "elsewhere").await;
        assert!(r.text().contains("<html"));
    }
}
