//! Dashboard access end to end: users created through the CLI code (and the real binary), login
//! and its cookie, rotation, logout, idle and absolute expiry on a manual clock, the login rate
//! limit, CSRF refusals, open redirects, escaping, security headers, static files, and the API
//! staying bearer-only. Router tests run with `oneshot` against a fresh database per test; one
//! runs over a real socket through the service's own accept loop.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, LOCATION, RETRY_AFTER, SET_COOKIE,
};
use axum::http::{Method, StatusCode};
use chrono::TimeDelta;
use common::http::{t, Resp, TestApp, NOW};
use common::web::{create_user, database_url, form, PASSWORD};
use fleetwatch::config::{Config, Secret};
use fleetwatch::http::web;
use fleetwatch::users::{self, UserCommand};
use sqlx::PgPool;

const TOKEN: &str = "bootstrap-token-for-tests";

fn app(pool: &PgPool) -> TestApp {
    TestApp::build(pool, t(NOW), Some(TOKEN), |_| {})
}

fn app_with(pool: &PgPool, tweak: impl FnOnce(&mut Config)) -> TestApp {
    TestApp::build(pool, t(NOW), Some(TOKEN), tweak)
}

/// A request as a browser on this site would send it: same-origin Fetch-Metadata on unsafe
/// methods, `headers` added.
async fn req(
    app: &TestApp,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Resp {
    common::web::send(app, method, uri, headers, body).await
}

const SAME: (&str, &str) = ("sec-fetch-site", "same-origin");

async fn login_as(app: &TestApp, name: &str, password: &str, extra: &[(&str, &str)]) -> Resp {
    let mut h = vec![SAME];
    h.extend_from_slice(extra);
    req(
        app,
        Method::POST,
        "/login",
        &h,
        Some(form(&[("username", name), ("password", password)])),
    )
    .await
}

/// The session token a login response set.
fn session_of(r: &Resp) -> String {
    let c = r.header(SET_COOKIE).expect("a Set-Cookie");
    let v = c
        .strip_prefix("fleetwatch_session=")
        .expect("the session cookie");
    v.split(';').next().unwrap().to_string()
}

fn cookie(token: &str) -> String {
    format!("fleetwatch_session={token}")
}

async fn page(app: &TestApp, uri: &str, token: &str) -> Resp {
    req(app, Method::GET, uri, &[("cookie", &cookie(token))], None).await
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn login_sets_a_strict_http_only_cookie_and_rotates_it(pool: PgPool) {
    create_user(&pool, "alice", "operator").await;
    let app = app(&pool);

    // the form
    let r = req(&app, Method::GET, "/login?next=/devices", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.content_type().starts_with("text/html"),
        "{}",
        r.content_type()
    );
    let html = r.text();
    assert!(html.contains(r#"action="/login""#), "{html}");
    assert!(html.contains(r#"name="username""#) && html.contains(r#"name="password""#));
    assert!(html.contains(r#"name="next" value="/devices""#), "{html}");

    // not signed in: the overview sends to the form, remembering where it was going
    let r = req(&app, Method::GET, "/?x=1", &[], None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header(LOCATION), Some("/login?next=/%3Fx%3D1"));

    let r = req(
        &app,
        Method::POST,
        "/login",
        &[SAME],
        Some(form(&[
            ("username", "ALICE"),
            ("password", PASSWORD),
            ("next", "/devices?state=silent"),
        ])),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.header(LOCATION), Some("/devices?state=silent"));
    let set = r.header(SET_COOKIE).unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=604800"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} missing: {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: not Secure: {set}");
    let first = session_of(&r);
    assert!(fleetwatch::tokens::looks_like_token(&first));
    // only the digest is stored
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("select token_hash from sessions")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![fleetwatch::tokens::hash(&first).to_vec()]);

    let r = page(&app, "/", &first).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("alice"), "{}", r.text());

    // logging in again with the old cookie: a new token, the old one dead (rotation)
    let r = login_as(&app, "alice", PASSWORD, &[("cookie", &cookie(&first))]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header(LOCATION), Some("/"));
    let second = session_of(&r);
    assert_ne!(first, second);
    assert_eq!(page(&app, "/", &first).await.status, StatusCode::SEE_OTHER);
    assert_eq!(page(&app, "/", &second).await.status, StatusCode::OK);

    // last login recorded for `user list`
    let rows = fleetwatch::db::users::list(&pool).await.unwrap();
    assert_eq!(rows[0].last_login_at, Some(t(NOW)));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_cookie_is_secure_over_tls(pool: PgPool) {
    create_user(&pool, "alice", "viewer").await;
    let app = app_with(&pool, |c| {
        c.dashboard.public_url = Some("https://fleet.example.com".into())
    });
    let r = login_as(&app, "alice", PASSWORD, &[]).await;
    assert!(r.header(SET_COOKIE).unwrap().contains("; Secure"));

    // X-Forwarded-Proto counts only when trusted
    let app = self::app(&pool);
    let r = login_as(&app, "alice", PASSWORD, &[("x-forwarded-proto", "https")]).await;
    assert!(!r.header(SET_COOKIE).unwrap().contains("Secure"));
    let app = app_with(&pool, |c| c.dashboard.trust_proxy_headers = true);
    let r = login_as(&app, "alice", PASSWORD, &[("x-forwarded-proto", "https")]).await;
    assert!(r.header(SET_COOKIE).unwrap().contains("; Secure"));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn every_failure_gets_the_same_answer(pool: PgPool) {
    create_user(&pool, "alice", "operator").await;
    create_user(&pool, "bob", "viewer").await;
    let mut out = Vec::new();
    let mut cfg = Config::default();
    cfg.database.url = Secret::new(database_url(&pool));
    users::run_cli(
        &cfg,
        UserCommand::Disable { name: "bob".into() },
        &mut std::io::empty(),
        &mut out,
        &mut Vec::new(),
    )
    .await
    .unwrap();
    let app = app(&pool);
    let mut answers = Vec::new();
    for (name, password) in [
        ("alice", "wrong password!!"),
        ("nobody", PASSWORD),
        ("bob", PASSWORD),
        ("", ""),
        (&"x".repeat(5000), PASSWORD),
        ("alice", &"p".repeat(100_000)),
    ] {
        let r = login_as(&app, name, password, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{name:.20}");
        assert!(r.header(SET_COOKIE).is_none());
        let html = r.text();
        assert!(html.contains(web::login::FAILED), "{html}");
        // the name typed is kept (escaped) in its field; the rest of the page is identical
        let rest: Vec<&str> = html
            .lines()
            .filter(|l| !l.contains(r#"id="username""#))
            .collect();
        answers.push(rest.join("\n"));
    }
    for a in &answers[1..] {
        assert_eq!(a, &answers[0]);
    }
    let n: i64 = sqlx::query_scalar("select count(*) from sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn failed_logins_are_rate_limited_per_name_and_address(pool: PgPool) {
    create_user(&pool, "alice", "operator").await;
    let app = app(&pool);
    for _ in 0..5 {
        let r = login_as(&app, "alice", "not the password", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // the right password is not even checked now
    let r = login_as(&app, "alice", PASSWORD, &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.header(RETRY_AFTER), Some("900"));
    assert!(r.header(SET_COOKIE).is_none());
    assert!(r.text().contains("Try again in 15 minutes"), "{}", r.text());
    // the window slides on the injected clock
    app.clock.advance(TimeDelta::minutes(15));
    let r = login_as(&app, "alice", PASSWORD, &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // each outcome is counted on /metrics
    let metrics = common::http::get(&app, "/metrics").await.text();
    for line in [
        r#"dashboard_logins_total{outcome="failed"} 5"#,
        r#"dashboard_logins_total{outcome="limited"} 1"#,
        r#"dashboard_logins_total{outcome="ok"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

/// Malformed and hostile login bodies: refused or failed, never a 5xx, never a session.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hostile_login_bodies(pool: PgPool) {
    create_user(&pool, "alice", "operator").await;
    let app = app(&pool);
    let correct = form(&[("username", "alice"), ("password", PASSWORD)]);
    for body in [
        String::new(),
        "username=alice".into(),
        "password=x".into(),
        "username=%ZZ&password=%".into(),
        "username=alice&username=bob&password=x".into(),
        format!("{correct}&password=wrong"),
        "username=ali%00ce&password=correct+horse+battery".into(),
        "username=%E2%80%AEecila&password=x".into(),
        "\u{0}\u{1}garbage==&&==".into(),
        format!("username={}&password=x", "a".repeat(1_000_000)),
    ] {
        let r = req(&app, Method::POST, "/login", &[SAME], Some(body.clone())).await;
        assert!(
            r.status.is_client_error() || r.status == StatusCode::OK,
            "{} for {:.60}",
            r.status,
            body
        );
        assert!(r.header(SET_COOKIE).is_none(), "{body:.60}");
    }
    // a JSON body where a form is expected
    let r = req(
        &app,
        Method::POST,
        "/login",
        &[SAME, ("content-type", "application/json")],
        None,
    )
    .await;
    assert!(r.status.is_client_error(), "{}", r.status);
    // nothing signed anyone in
    let n: i64 = sqlx::query_scalar("select count(*) from sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn logout_ends_the_session(pool: PgPool) {
    create_user(&pool, "alice", "operator").await;
    let app = app(&pool);
    let token = session_of(&login_as(&app, "alice", PASSWORD, &[]).await);
    let r = req(
        &app,
        Method::POST,
        "/logout",
        &[SAME, ("cookie", &cookie(&token))],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header(LOCATION), Some("/login"));
    assert!(r.header(SET_COOKIE).unwrap().contains("Max-Age=0"));
    // a copy of the old cookie no longer works
    let r = page(&app, "/", &token).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // fragments get a 401 problem, not a redirect
    let r = req(
        &app,
        Method::GET,
        "/",
        &[("cookie", &cookie(&token)), ("hx-request", "true")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.content_type(), "application/problem+json");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn sessions_expire_when_idle_and_at_their_maximum_age(pool: PgPool) {
    create_user(&pool, "alice", "operator").await;
    let app = app(&pool);
    // idle: 12 h without a request
    let idle = session_of(&login_as(&app, "alice", PASSWORD, &[]).await);
    app.clock
        .advance(TimeDelta::hours(12) - TimeDelta::seconds(1));
    assert_eq!(page(&app, "/", &idle).await.status, StatusCode::OK);
    app.clock
        .advance(TimeDelta::hours(12) - TimeDelta::seconds(1));
    assert_eq!(
        page(&app, "/", &idle).await.status,
        StatusCode::OK,
        "a request renews the idle time"
    );
    app.clock.advance(TimeDelta::hours(12));
    assert_eq!(page(&app, "/", &idle).await.status, StatusCode::SEE_OTHER);

    // maximum: active every hour, still ends 7 days after login
    let busy = session_of(&login_as(&app, "alice", PASSWORD, &[]).await);
    for _ in 0..167 {
        app.clock.advance(TimeDelta::hours(1));
        assert_eq!(page(&app, "/", &busy).await.status, StatusCode::OK);
    }
    app.clock.advance(TimeDelta::hours(1));
    assert_eq!(page(&app, "/", &busy).await.status, StatusCode::SEE_OTHER);

    // the retention task deletes what expired without being seen again
    let left = session_of(&login_as(&app, "alice", PASSWORD, &[]).await);
    app.clock.advance(TimeDelta::days(1));
    let d = fleetwatch::retention::tick(
        &pool,
        &(app.clock.clone() as fleetwatch::clock::SharedClock),
        &Config::default().retention,
    )
    .await
    .unwrap();
    assert_eq!(d.sessions, 1);
    assert_eq!(page(&app, "/", &left).await.status, StatusCode::SEE_OTHER);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn cross_site_unsafe_requests_are_refused(pool: PgPool) {
    create_user(&pool, "alice", "operator").await;
    let app = app(&pool);
    let token = session_of(&login_as(&app, "alice", PASSWORD, &[]).await);
    let c = cookie(&token);
    let login = form(&[("username", "alice"), ("password", PASSWORD)]);
    let refused: [&[(&str, &str)]; 6] = [
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
        &[("origin", "http://evil.example"), ("host", "fleet.local")],
        &[("origin", "null"), ("host", "fleet.local")],
        &[("host", "fleet.local")],
        &[],
    ];
    for h in refused {
        // logout (a cookie action) and login (login CSRF)
        let mut with_cookie = h.to_vec();
        with_cookie.push(("cookie", &c));
        let r = req(&app, Method::POST, "/logout", &with_cookie, None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{h:?}");
        let r = req(&app, Method::POST, "/login", h, Some(login.clone())).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{h:?}");
        assert!(r.header(SET_COOKIE).is_none());
        assert!(r.header(CONTENT_SECURITY_POLICY).is_some());
    }
    // the session survived every refused logout
    assert_eq!(page(&app, "/", &token).await.status, StatusCode::OK);
    // an older browser: no Fetch-Metadata, its own Origin
    let r = req(
        &app,
        Method::POST,
        "/login",
        &[("origin", "http://fleet.local"), ("host", "fleet.local")],
        Some(login),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn next_never_leaves_the_site(pool: PgPool) {
    create_user(&pool, "alice", "operator").await;
    let app = app(&pool);
    for next in [
        "https://evil.example",
        "//evil.example/x",
        "/\\evil.example",
        "javascript:alert(1)",
    ] {
        let r = req(
            &app,
            Method::POST,
            "/login",
            &[SAME],
            Some(form(&[
                ("username", "alice"),
                ("password", PASSWORD),
                ("next", next),
            ])),
        )
        .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{next}");
        assert_eq!(r.header(LOCATION), Some("/"), "{next}");
        // nor is it echoed into the form
        let r = req(
            &app,
            Method::GET,
            &format!("/login?next={}", web::session::percent_encode(next)),
            &[],
            None,
        )
        .await;
        assert!(r.text().contains(r#"name="next" value="/""#), "{next}");
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hostile_names_are_escaped(pool: PgPool) {
    let evil = "<img src=x onerror=alert(1)>";
    create_user(&pool, evil, "viewer").await;
    let app = app(&pool);
    let r = login_as(&app, evil, PASSWORD, &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let html = page(&app, "/", &session_of(&r)).await.text();
    assert!(!html.contains("<img"), "{html}");
    assert!(
        html.contains("&#60;img src=x onerror=alert(1)&#62;")
            || html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    // and in the form, where a failed login echoes the name
    let r = login_as(&app, "\"><script>alert(1)</script>", "nope nope nope", &[]).await;
    assert!(!r.text().contains("<script>"), "{}", r.text());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn pages_carry_the_security_headers(pool: PgPool) {
    create_user(&pool, "alice", "operator").await;
    let app = app(&pool);
    let token = session_of(&login_as(&app, "alice", PASSWORD, &[]).await);
    for r in [
        req(&app, Method::GET, "/login", &[], None).await,
        page(&app, "/", &token).await,
        req(&app, Method::GET, "/", &[], None).await,
    ] {
        assert_eq!(
            r.header(CONTENT_SECURITY_POLICY),
            Some(
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
            )
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("same-origin"));
        assert_eq!(r.header(CACHE_CONTROL), Some("no-store"));
        // no inline script or style anywhere a CSP would have to allow
        common::http::assert_no_inline_code(&r.text());
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn static_files_are_cached_and_nothing_else_is_served(pool: PgPool) {
    let app = app(&pool);
    let url = web::assets::url("app.css");
    let r = req(&app, Method::GET, &url, &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_type(), "text/css; charset=utf-8");
    assert_eq!(
        r.header(CACHE_CONTROL),
        Some("public, max-age=31536000, immutable")
    );
    assert!(r.text().contains("prefers-color-scheme: dark"));
    let etag = r.header("etag").unwrap().to_string();
    let r = req(&app, Method::GET, &url, &[("if-none-match", &etag)], None).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    // an old or missing version tag: cached briefly only
    let r = req(&app, Method::GET, "/static/app.css?v=old", &[], None).await;
    assert_eq!(r.header(CACHE_CONTROL), Some("public, max-age=300"));
    for bad in [
        "/static/",
        "/static",
        "/static/../Cargo.toml",
        "/static/..%2FCargo.toml",
        "/static/%2e%2e/%2e%2e/Cargo.toml",
        "/static//etc/passwd",
        "/static/app.css/",
        "/static/APP.CSS",
    ] {
        let r = req(&app, Method::GET, bad, &[], None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{bad}");
        assert!(!r.text().contains("[package]"), "{bad}");
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_session_never_authenticates_the_api(pool: PgPool) {
    create_user(&pool, "alice", "operator").await;
    let app = app(&pool);
    let token = session_of(&login_as(&app, "alice", PASSWORD, &[]).await);
    let r = page(&app, "/api/v1/devices", &token).await;
    common::http::assert_unauthorized(&r, "cookie on the API");
    // nor as a bearer token
    let r = common::http::get_with(&app.app, "/api/v1/devices", &token).await;
    common::http::assert_unauthorized(&r, "session token as bearer");
    // and the API is not subject to the cookie CSRF rule: bearer POSTs work cross-site
    let r = common::http::get_with(&app.app, "/api/v1/devices", TOKEN).await;
    assert_eq!(r.status, StatusCode::OK);
    // an API token does not open the dashboard
    let r = req(
        &app,
        Method::GET,
        "/",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn viewers_are_not_operators(pool: PgPool) {
    use axum::routing::post;
    use fleetwatch::http::web::session::{CurrentUser, Operator};
    create_user(&pool, "val", "viewer").await;
    create_user(&pool, "otto", "operator").await;
    let base = app(&pool);
    // a probe route standing in for the page actions to come
    let probe = axum::Router::new()
        .route(
            "/act",
            post(|Operator(u): Operator| async move { u.actor().principal }),
        )
        .route(
            "/who",
            post(|u: CurrentUser| async move { u.actor().principal }),
        )
        .with_state(base.state.clone());
    let app = TestApp {
        app: probe,
        ..base.clone()
    };
    let val = session_of(&login_as(&base, "val", PASSWORD, &[]).await);
    let otto = session_of(&login_as(&base, "otto", PASSWORD, &[]).await);
    let r = req(
        &app,
        Method::POST,
        "/act",
        &[("cookie", &cookie(&val))],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.content_type(), "application/problem+json");
    let r = req(
        &app,
        Method::POST,
        "/who",
        &[("cookie", &cookie(&val))],
        None,
    )
    .await;
    assert_eq!(r.text(), "user:val");
    let r = req(
        &app,
        Method::POST,
        "/act",
        &[("cookie", &cookie(&otto))],
        None,
    )
    .await;
    assert_eq!(r.text(), "user:otto");
}

/// Over a real socket, through the service's accept loop: the client address reaches the rate
/// limit, and a browser-like client can log in and out.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn over_a_socket_the_address_is_rate_limited(pool: PgPool) {
    create_user(&pool, "alice", "operator").await;
    let app = app(&pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(fleetwatch::http::server::serve(
        listener,
        app.app.clone(),
        fleetwatch::http::server::Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(1),
        },
        fleetwatch::metrics::Metrics::new(),
        cancel.clone(),
    ));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |name: String| {
        client
            .post(format!("http://{addr}/login"))
            .header("sec-fetch-site", "same-origin")
            .form(&[
                ("username", name.as_str()),
                ("password", "wrong wrong wrong"),
            ])
            .send()
    };
    // five different names from one address: the address is spent
    for i in 0..5 {
        assert_eq!(post(format!("user{i}")).await.unwrap().status(), 200);
    }
    let r = post("alice".into()).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    cancel.cancel();
    let _ = server.await;
}

// ---------------------------------------------------------------------------------------------
// The real binary

fn fleetwatch(pool: &PgPool, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .env_remove("FLEETWATCH_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn user_commands_through_the_binary(pool: PgPool) {
    let o = fleetwatch(
        &pool,
        &["user", "create", "--name", "alice", "--role", "operator"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("created user"),
        "{}",
        text(&o.stdout)
    );
    // the password is nowhere in the output, and only a hash is stored
    assert!(!text(&o.stdout).contains(PASSWORD) && !text(&o.stderr).contains(PASSWORD));
    let hash: String = sqlx::query_scalar("select password_hash from users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");

    // duplicate name, in any case
    let o = fleetwatch(
        &pool,
        &["user", "create", "--name", "Alice", "--role", "viewer"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("already exists"),
        "{}",
        text(&o.stderr)
    );

    // bad role, short and empty passwords, no password argument at all
    for (args, stdin, says) in [
        (
            vec!["--name", "bob", "--role", "admin"],
            PASSWORD,
            "expected viewer or operator",
        ),
        (
            vec!["--name", "bob", "--role", "viewer"],
            "short\n",
            "too short",
        ),
        (vec!["--name", "bob", "--role", "viewer"], "", "no password"),
        (
            vec!["--name", "bob", "--role", "viewer", "--password", PASSWORD],
            PASSWORD,
            "unexpected argument",
        ),
    ] {
        let mut a = vec!["user", "create"];
        a.extend(args.iter());
        let o = fleetwatch(&pool, &a, Some(stdin));
        assert!(!o.status.success(), "{args:?}");
        assert!(
            text(&o.stderr).contains(says),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }

    // list
    let o = fleetwatch(&pool, &["user", "list"], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for col in ["NAME", "ROLE", "CREATED", "LAST LOGIN", "DISABLED"] {
        assert!(lines[0].contains(col), "{out}");
    }
    assert!(
        lines[1].starts_with("alice") && lines[1].contains("operator"),
        "{out}"
    );

    // a signed-in user is disabled: the session ends at once, login is refused
    let app = app(&pool);
    let token = session_of(&login_as(&app, "alice", PASSWORD, &[]).await);
    assert_eq!(page(&app, "/", &token).await.status, StatusCode::OK);
    let o = fleetwatch(&pool, &["user", "disable", "--name", "alice"], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("1 session(s) ended"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(page(&app, "/", &token).await.status, StatusCode::SEE_OTHER);
    let r = login_as(&app, "alice", PASSWORD, &[]).await;
    assert!(r.text().contains(web::login::FAILED));
    let o = fleetwatch(&pool, &["user", "disable", "--name", "alice"], None);
    assert!(
        text(&o.stdout).contains("already disabled"),
        "{}",
        text(&o.stdout)
    );
    let o = fleetwatch(&pool, &["user", "disable", "--name", "nobody"], None);
    assert!(!o.status.success());
    let o = fleetwatch(&pool, &["user", "list"], None);
    assert!(
        !text(&o.stdout).lines().nth(1).unwrap().ends_with(" -"),
        "disabled shows a time"
    );
}
