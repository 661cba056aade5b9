//! The demo's pieces inside the service (`http::web::demo`, `demo::receiver`), through the
//! router: the receiver answers 204 to a signed request and 401 to anything else, keeps both,
//! and escapes what it shows; the banner is on every page; outside the demo all of it is 404.

mod common;

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use common::http::{t, TestApp, NOW};
use common::web::{escaped, send, Staff};
use fleetwatch::config::Secret;
use fleetwatch::demo::Shared;
use fleetwatch::http::router;
use sqlx::PgPool;

const SECRET: &str = "whsec-test";

fn demo_app(pool: &PgPool) -> (TestApp, Arc<Shared>) {
    let mut app = TestApp::new(pool, "t0ken");
    let shared = Arc::new(Shared::new(Secret::new(SECRET)));
    app.state.demo = Some(shared.clone());
    app.app = router(app.state.clone());
    (app, shared)
}

async fn post(app: &TestApp, sig: Option<&str>, body: &str) -> StatusCode {
    let mut h = vec![("content-type", "application/json")];
    if let Some(s) = sig {
        h.push(("fleetwatch-signature", s));
    }
    let req = {
        let mut b = axum::http::Request::builder()
            .method(Method::POST)
            .uri("/demo/receiver");
        for (k, v) in &h {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::from(body.to_string())).unwrap()
    };
    common::http::respond(&app.app, req).await.status
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_receiver_verifies_keeps_and_escapes(pool: PgPool) {
    let (app, shared) = demo_app(&pool);
    let body = r#"{"event":"alert.firing","delivery_id":"d-9","alert":{"id":1,"kind":"heartbeat_gap","severity":"error","subject":"<script>alert(1)</script>","summary":"silent"}}"#;
    let now = t(NOW).timestamp();
    let good = fleetwatch::alerts::formats::signature(&[Secret::new(SECRET)], now, body.as_bytes())
        .unwrap();
    assert_eq!(post(&app, Some(&good), body).await, StatusCode::NO_CONTENT);
    assert_eq!(post(&app, None, body).await, StatusCode::UNAUTHORIZED);
    let forged =
        fleetwatch::alerts::formats::signature(&[Secret::new("other")], now, body.as_bytes())
            .unwrap();
    assert_eq!(
        post(&app, Some(&forged), body).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&app, Some("t=1,v1=zz"), "not json").await,
        StatusCode::UNAUTHORIZED
    );
    // a huge body is refused before the receiver reads it (axum's limit here; the running
    // service's `http.max_body_bytes` is far lower)
    let huge = "x".repeat(3 * 1024 * 1024);
    assert_eq!(
        post(&app, Some(&good), &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(shared.inbox.counts(), (1, 3));

    let staff = Staff::new(&app, &pool, "ops", "viewer").await;
    let page = staff.html("/demo/webhooks").await;
    assert!(page.contains("<strong>1</strong> verified"), "{page}");
    assert!(page.contains("<strong>3</strong> refused"), "{page}");
    assert!(!page.contains("<script>alert(1)"), "escaped");
    assert!(
        page.contains(&escaped("<script>alert(1)</script>")),
        "{page}"
    );
    assert!(page.contains("no Fleetwatch-Signature header"), "{page}");
    // the banner, on this page and every other, and alone for htmx
    assert!(page.contains(r#"id="story""#), "{page}");
    assert!(staff.html("/").await.contains(r#"id="story""#));
    let banner = staff.get("/demo/story").await;
    assert_eq!(banner.status, StatusCode::OK);
    assert!(banner.text().contains("now:"), "{}", banner.text());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn outside_the_demo_there_is_no_receiver_and_no_banner(pool: PgPool) {
    let app = TestApp::new(&pool, "t0ken");
    assert_eq!(
        post(&app, Some("t=1,v1=00"), "{}").await,
        StatusCode::NOT_FOUND
    );
    let staff = Staff::new(&app, &pool, "ops", "viewer").await;
    assert_eq!(
        staff.get("/demo/webhooks").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(staff.get("/demo/story").await.status, StatusCode::NOT_FOUND);
    assert!(!staff.html("/").await.contains(r#"id="story""#));
    // the pages still need a session
    let anon = send(&app, Method::GET, "/demo/story", &[], None).await;
    assert_ne!(anon.status, StatusCode::OK);
}
