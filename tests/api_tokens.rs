//! Stored API tokens end to end: the library (create, list, revoke, lookup), the
//! `fleetwatch token …` commands of the real binary, and the `/api` edge: a scope × route matrix
//! over every route `api::router` declares, `last_used_at` bookkeeping, immediate revocation,
//! per-token rate limits and hostile `Authorization` headers. Router tests run with `oneshot`
//! against a fresh database per test; a few run over real sockets and the real binary.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{TimeDelta, Utc};
use common::http::{assert_problem, assert_unauthorized, bearer, call, get_with, t, TestApp, NOW};
use fleetwatch::alerts::lifecycle::{self, AlertSpec, Fired};
use fleetwatch::config::Config;
use fleetwatch::domain::alert::Kind;
use fleetwatch::http::auth::Principal;
use fleetwatch::tokens::{self, Revoked, Scope};
use serde_json::{json, Value};
use sqlx::PgPool;
use tower::ServiceExt;

const BOOTSTRAP: &str = "bootstrap-token-for-tests";

/// The API with this rate limit for stored tokens.
fn api_with(pool: &PgPool, per_second: f64, burst: u32) -> TestApp {
    TestApp::build(pool, t(NOW), Some(BOOTSTRAP), |c| {
        c.api.rate_limit_per_second = per_second;
        c.api.rate_limit_burst = burst;
    })
}

/// A router whose rate limit no test here reaches by accident.
fn api(pool: &PgPool) -> TestApp {
    api_with(pool, 10_000.0, 10_000)
}

async fn create(pool: &PgPool, name: &str, scopes: &[Scope]) -> tokens::NewToken {
    tokens::create(pool, name, scopes, t(NOW)).await.unwrap()
}

/// A token with the right shape that was never issued.
fn never_issued() -> String {
    format!("fw_{}", "A".repeat(43))
}

async fn row(pool: &PgPool, id: i64) -> tokens::TokenRow {
    tokens::list(pool)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no token {id}"))
}

// ---------------------------------------------------------------------------------------------
// The library

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn create_list_and_revoke_through_the_library(pool: PgPool) {
    let a = create(
        &pool,
        "  ticketing-bot ",
        &[Scope::Write, Scope::Read, Scope::Write],
    )
    .await;
    let token = a.token.expose().to_string();
    assert!(tokens::looks_like_token(&token), "{token}");
    assert_eq!(a.name, "ticketing-bot");
    assert_eq!(a.scopes, [Scope::Read, Scope::Write]);
    assert_eq!(a.prefix, token[..9]);
    assert!(
        !format!("{a:?}").contains(&token[9..]),
        "Debug shows the token"
    );

    // Only the hash is stored: no column of the row holds the token or its secret part.
    let (hash, whole): (Vec<u8>, String) =
        sqlx::query_as("select token_hash, row_to_json(t)::text from api_tokens t where id = $1")
            .bind(a.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(hash, tokens::hash(&token));
    assert!(!whole.contains(&token[9..]), "{whole}");
    assert!(!whole.contains(&token[3..20]), "{whole}");

    let b = create(&pool, "チケット", &[Scope::Admin]).await;
    assert_ne!(a.token, b.token);
    let rows = tokens::list(&pool).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [a.id, b.id]);
    assert_eq!(rows[0].scopes, ["read", "write"]);
    assert_eq!(rows[0].prefix, a.prefix);
    assert_eq!(rows[0].created_at, t(NOW));
    assert_eq!(rows[0].last_used_at, None);
    assert_eq!(rows[0].revoked_at, None);
    assert_eq!(rows[1].name, "チケット");
    assert_eq!(rows[1].scopes, ["admin"]);

    let found = tokens::find_active(&pool, &tokens::hash(&token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.id, found.name.as_str(), found.scopes),
        (a.id, "ticketing-bot", vec![Scope::Read, Scope::Write])
    );

    let later = t(NOW) + TimeDelta::minutes(5);
    assert_eq!(
        tokens::revoke(&pool, a.id, later).await.unwrap(),
        Revoked::Now {
            name: "ticketing-bot".into()
        }
    );
    assert!(tokens::find_active(&pool, &tokens::hash(&token))
        .await
        .unwrap()
        .is_none());
    // Revoking again keeps the first time.
    assert_eq!(
        tokens::revoke(&pool, a.id, later + TimeDelta::hours(1))
            .await
            .unwrap(),
        Revoked::Already {
            name: "ticketing-bot".into(),
            at: later
        }
    );
    assert_eq!(row(&pool, a.id).await.revoked_at, Some(later));
    assert_eq!(
        tokens::revoke(&pool, 9999, later).await.unwrap(),
        Revoked::NotFound
    );
    // The other token is untouched.
    assert!(tokens::find_active(&pool, &tokens::hash(b.token.expose()))
        .await
        .unwrap()
        .is_some());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn invalid_names_and_scopes_create_nothing(pool: PgPool) {
    for name in [
        String::new(),
        "  ".into(),
        "x".repeat(101),
        "bell\u{7}".into(),
        "esc\u{1b}[2J".into(),
        "c1\u{9b}".into(),
        "nul\0".into(),
        "tab\there".into(),
    ] {
        let e = tokens::create(&pool, &name, &[Scope::Read], t(NOW))
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("name:"), "{name:?}: {e}");
    }
    let e = tokens::create(&pool, "ok", &[], t(NOW)).await.unwrap_err();
    assert!(e.to_string().contains("scopes"), "{e}");
    assert!(tokens::list(&pool).await.unwrap().is_empty());

    // The table holds the line too, for rows written by anything but the library.
    for (name, scopes) in [
        ("ok", vec!["root"]),
        ("ok", vec!["read", "root"]),
        ("ok", vec![]),
        ("bell\u{7}", vec!["read"]),
        ("", vec!["read"]),
    ] {
        let r = sqlx::query(
            "insert into api_tokens (name, scopes, token_hash, prefix) values ($1, $2, $3, 'fw_x')",
        )
        .bind(name)
        .bind(&scopes)
        .bind(&tokens::hash(&format!("{name}{scopes:?}"))[..])
        .execute(&pool)
        .await;
        assert!(r.is_err(), "{name:?} {scopes:?} accepted");
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary

fn database_url(pool: &PgPool) -> String {
    let master = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let db = pool.connect_options().get_database().unwrap().to_string();
    let (base, _) = master.rsplit_once('/').unwrap();
    format!("{base}/{db}")
}

fn fleetwatch(pool: &PgPool, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .env_remove("FLEETWATCH_CONFIG")
        .env_remove("FLEETWATCH_API_TOKEN")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn token_commands_through_the_binary(pool: PgPool) {
    // create: stdout is the token and a newline, nothing else, so scripts can capture it
    let o = fleetwatch(
        &pool,
        &[
            "token",
            "create",
            "--name",
            "ci bot",
            "--scopes",
            "write,read",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let token = out.strip_suffix('\n').expect("one line").to_string();
    assert!(!token.contains('\n'), "{out:?}");
    assert!(tokens::looks_like_token(&token), "{out:?}");
    assert!(
        stderr(&o).contains("shown only this once"),
        "{}",
        stderr(&o)
    );

    let found = tokens::find_active(&pool, &tokens::hash(&token))
        .await
        .unwrap()
        .expect("the printed token is the stored one");
    assert_eq!(found.name, "ci bot");
    assert_eq!(found.scopes, [Scope::Read, Scope::Write]);

    // it works against the API
    let api = api(&pool);
    let r = get_with(&api.app, "/api/v1/devices", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // a second one through --config, the way `migrate` reads its database
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleetwatch.toml");
    std::fs::write(
        &cfg,
        format!("[database]\nurl = \"{}\"\n", database_url(&pool)),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
        .arg("--config")
        .arg(&cfg)
        .args(["token", "create", "--name", "reader", "--scopes", "read"])
        .env_remove("DATABASE_URL")
        .env_remove("FLEETWATCH_CONFIG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let reader = stdout(&o).trim_end().to_string();
    assert!(tokens::looks_like_token(&reader));

    // list: every column but never a token
    let o = fleetwatch(&pool, &["token", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for col in [
        "ID",
        "NAME",
        "SCOPES",
        "PREFIX",
        "CREATED",
        "LAST USED",
        "REVOKED",
    ] {
        assert!(lines[0].contains(col), "{table}");
    }
    assert!(lines[1].contains("ci bot") && lines[1].contains("read,write"));
    assert!(lines[1].contains(&token[..9]), "{table}");
    assert!(lines[2].contains("reader") && lines[2].contains(&reader[..9]));
    for secret in [&token, &reader] {
        assert!(!table.contains(&secret[9..]), "{table}");
        assert!(!table.contains(&secret[3..15]), "{table}");
    }

    let o = fleetwatch(&pool, &["token", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "ci bot");
    assert_eq!(rows[0]["scopes"], json!(["read", "write"]));
    assert_eq!(rows[0]["prefix"], &token[..9]);
    assert!(
        rows[0]["last_used_at"].is_string(),
        "used above: {}",
        rows[0]
    );
    assert!(rows[1]["last_used_at"].is_null());
    assert!(rows[0]["revoked_at"].is_null());
    assert!(!stdout(&o).contains(&token[9..]));
    let id = rows[0]["id"].as_i64().unwrap();

    // revoke: refused from the next request on
    let o = fleetwatch(&pool, &["token", "revoke", &id.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("revoked token {id}")),
        "{}",
        stdout(&o)
    );
    let r = get_with(&api.app, "/api/v1/devices", &token).await;
    assert_unauthorized(&r, "revoked through the binary");
    let r = get_with(&api.app, "/api/v1/devices", &reader).await;
    assert_eq!(r.status, StatusCode::OK, "the other token: {}", r.text());

    let o = fleetwatch(&pool, &["token", "list", "--json"]);
    let rows: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(rows[0]["revoked_at"].is_string(), "{rows}");
    let o = fleetwatch(&pool, &["token", "list"]);
    assert!(!stdout(&o).lines().nth(1).unwrap().trim_end().ends_with('-'));

    // revoking twice is fine; an unknown id is an error
    let o = fleetwatch(&pool, &["token", "revoke", &id.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("already revoked"), "{}", stdout(&o));
    let o = fleetwatch(&pool, &["token", "revoke", "4242"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no token 4242"), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");

    // invalid input: an error on stderr, nothing on stdout, nothing stored
    for args in [
        &["--name", "", "--scopes", "read"][..],
        &["--name", "   ", "--scopes", "read"],
        &["--name", &"x".repeat(101), "--scopes", "read"],
        &["--name", "esc\u{1b}[31m", "--scopes", "read"],
        &["--name", "ok", "--scopes", ""],
        &["--name", "ok", "--scopes", "read,root"],
        &["--name", "ok"],
    ] {
        let mut full = vec!["token", "create"];
        full.extend_from_slice(args);
        let o = fleetwatch(&pool, &full);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert_eq!(stdout(&o), "", "{args:?}");
        assert!(!stderr(&o).is_empty(), "{args:?}");
    }
    assert_eq!(tokens::list(&pool).await.unwrap().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Scope × route matrix

/// The routes every version of the API has had; the matrix also covers any route declared
/// in `src/http/api/` that is not listed here (found by reading the source).
const KNOWN_ROUTES: [(&str, &str); 8] = [
    ("GET", "/devices"),
    ("GET", "/devices/{id}"),
    ("GET", "/devices/{id}/events"),
    ("GET", "/alerts"),
    ("GET", "/alerts/{id}"),
    ("POST", "/alerts/{id}/ack"),
    ("PUT", "/alerts/{id}/ticket"),
    ("GET", "/fleet/summary"),
];

/// Every `(method, path)` that a `.route("…", …)` call in `src/http/api/*.rs` declares.
fn declared_routes() -> BTreeSet<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/api");
    let method_re = regex::Regex::new(r"\b(get|post|put|patch|delete)\(").unwrap();
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let src: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut rest = src.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or(rest.len());
            let call = &rest[..end];
            let Some(route) = call.split('"').nth(1) else {
                continue;
            };
            for m in method_re.captures_iter(call) {
                routes.insert((m[1].to_uppercase(), route.to_string()));
            }
        }
    }
    routes
}

fn all_routes() -> BTreeSet<(String, String)> {
    let declared = declared_routes();
    for (m, p) in KNOWN_ROUTES {
        assert!(
            declared.contains(&(m.to_string(), p.to_string())),
            "the route reader missed {m} {p}; declared: {declared:?}"
        );
    }
    declared
}

/// The tokens of the matrix, by what they should be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Nobody,
    Wrong,
    Revoked,
    Read,
    Write,
    Admin,
    Bootstrap,
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn scope_matrix_over_every_api_route(pool: PgPool) {
    let api = api(&pool);
    sqlx::query("insert into devices (id, state) values ('d1', 'healthy')")
        .execute(&pool)
        .await
        .unwrap();
    let alert = {
        let mut tx = pool.begin().await.unwrap();
        let spec = AlertSpec {
            kind: Kind::HeartbeatGap,
            subject: "d1".into(),
            device_id: Some("d1".into()),
            group_id: None,
            severity: Kind::HeartbeatGap.default_severity(),
            summary: "d1 silent".into(),
            details: json!({}),
        };
        let fired = lifecycle::fire(&mut tx, &spec, t(NOW), TimeDelta::hours(1))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        match fired {
            Fired::Opened(id) => id,
            other => panic!("{other:?}"),
        }
    };

    let read = create(&pool, "read", &[Scope::Read]).await;
    let write = create(&pool, "write", &[Scope::Write]).await;
    let admin = create(&pool, "admin", &[Scope::Admin]).await;
    let revoked = create(&pool, "revoked", &[Scope::Admin]).await;
    tokens::revoke(&pool, revoked.id, t(NOW)).await.unwrap();

    let who: Vec<(Who, Option<HeaderValue>)> = vec![
        (Who::Nobody, None),
        (Who::Wrong, bearer(&never_issued())),
        (Who::Wrong, bearer("nope")),
        (Who::Wrong, bearer(&format!("{BOOTSTRAP}x"))),
        (Who::Revoked, bearer(revoked.token.expose())),
        (Who::Read, bearer(read.token.expose())),
        (Who::Write, bearer(write.token.expose())),
        (Who::Admin, bearer(admin.token.expose())),
        (Who::Bootstrap, bearer(BOOTSTRAP)),
    ];

    let routes = all_routes();
    let path_param = regex::Regex::new(r"\{[^}]*\}").unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (method, route) in &routes {
        let param = if route.starts_with("/devices") {
            "d1".to_string()
        } else if route.starts_with("/alerts") {
            alert.to_string()
        } else {
            "1".to_string()
        };
        let uri = format!("/api/v1{}", path_param.replace_all(route, param.as_str()));
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let body = if route.ends_with("/ack") {
            Some(json!({"by": "matrix"}))
        } else if route.ends_with("/ticket") {
            Some(json!({"ref": "OPS-1"}))
        } else if method == Method::GET {
            None
        } else {
            Some(json!({}))
        };
        let needs_write = method != Method::GET;
        let known = KNOWN_ROUTES.contains(&(method.as_str(), route.as_str()));
        for (w, auth) in &who {
            let r = call(&api.app, method.clone(), &uri, auth.clone(), body.as_ref()).await;
            checked += 1;
            let what = format!("{method} {uri} as {w:?}");
            let expect: u16 = match w {
                Who::Nobody | Who::Wrong | Who::Revoked => 401,
                Who::Read if needs_write => 403,
                _ => 0,
            };
            let ok = match expect {
                401 => {
                    r.status == 401
                        && r.header(WWW_AUTHENTICATE) == Some("Bearer")
                        && r.header(CONTENT_TYPE) == Some("application/problem+json")
                }
                403 => {
                    r.status == 403
                        && r.header(CONTENT_TYPE) == Some("application/problem+json")
                        && r.json()["status"] == 403
                }
                // allowed: anything but 401/403; the known routes, seeded, must succeed
                _ => {
                    r.status != 401
                        && r.status != 403
                        && r.status != 429
                        && (!known || r.status.is_success())
                }
            };
            if !ok {
                failures.push(format!("{what}: {} {}", r.status, r.text()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= KNOWN_ROUTES.len() * who.len());
}

/// Handlers see who called: the principal is in the request's extensions and extractable.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn handlers_see_the_principal(pool: PgPool) {
    let state = TestApp::new(&pool, BOOTSTRAP).state;
    let app = Router::new()
        .route(
            "/whoami",
            get(|p: Principal| async move {
                Json(
                    json!({"id": p.token_id, "name": p.name, "actor": p.actor().principal,
                            "scopes": p.scopes}),
                )
            })
            .post(|p: Principal| async move { p.actor().principal }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            fleetwatch::http::auth::require_token,
        ))
        .with_state(state);

    let w = create(&pool, "ops-script", &[Scope::Write]).await;
    let r = get_with(&app, "/whoami", w.token.expose()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"id": w.id, "name": "ops-script", "actor": format!("token:{}:ops-script", w.id),
               "scopes": ["write"]})
    );
    let r = get_with(&app, "/whoami", BOOTSTRAP).await;
    assert_eq!(
        r.json(),
        json!({"id": null, "name": "bootstrap", "actor": "token:0:bootstrap",
               "scopes": ["read", "write", "admin"]})
    );
    let r = call(
        &app,
        Method::POST,
        "/whoami",
        bearer(w.token.expose()),
        None,
    )
    .await;
    assert_eq!(r.text(), format!("token:{}:ops-script", w.id));
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping and revocation

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn last_used_at_is_recorded_at_most_once_a_minute(pool: PgPool) {
    let api = api(&pool);
    let a = create(&pool, "a", &[Scope::Read]).await;
    let b = create(&pool, "b", &[Scope::Read]).await;
    assert_eq!(row(&pool, a.id).await.last_used_at, None);

    let r = get_with(&api.app, "/api/v1/devices", a.token.expose()).await;
    assert_eq!(r.status, StatusCode::OK);
    let t0 = t(NOW);
    assert_eq!(row(&pool, a.id).await.last_used_at, Some(t0));
    assert_eq!(row(&pool, b.id).await.last_used_at, None, "only the caller");

    // Within the minute: no write (the value stays at the first use).
    api.clock.advance(TimeDelta::seconds(59));
    for _ in 0..5 {
        get_with(&api.app, "/api/v1/devices", a.token.expose()).await;
    }
    assert_eq!(row(&pool, a.id).await.last_used_at, Some(t0));

    // A minute on: written again.
    api.clock.advance(TimeDelta::seconds(1));
    get_with(&api.app, "/api/v1/fleet/summary", a.token.expose()).await;
    assert_eq!(
        row(&pool, a.id).await.last_used_at,
        Some(t0 + TimeDelta::minutes(1))
    );

    // Refused requests are not uses.
    let c = create(&pool, "c", &[Scope::Read]).await;
    let r = call(
        &api.app,
        Method::POST,
        "/api/v1/alerts/1/ack",
        bearer(c.token.expose()),
        Some(&json!({"by": "x"})),
    )
    .await;
    assert_problem(&r, 403, "read token acking");
    assert_eq!(
        r.header(WWW_AUTHENTICATE),
        Some("Bearer error=\"insufficient_scope\"")
    );
    // (a 403 still proves the token: it was used, just not allowed)
    assert!(row(&pool, c.id).await.last_used_at.is_some());
    tokens::revoke(&pool, b.id, t0).await.unwrap();
    let r = get_with(&api.app, "/api/v1/devices", b.token.expose()).await;
    assert_unauthorized(&r, "revoked");
    assert_eq!(row(&pool, b.id).await.last_used_at, None);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_revoked_token_is_refused_within_the_same_second(pool: PgPool) {
    let api = api(&pool);
    let tok = create(&pool, "soon-gone", &[Scope::Admin]).await;
    let r = get_with(&api.app, "/api/v1/devices", tok.token.expose()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(matches!(
        tokens::revoke(&pool, tok.id, Utc::now()).await.unwrap(),
        Revoked::Now { .. }
    ));
    let revoked = std::time::Instant::now();
    let r = get_with(&api.app, "/api/v1/devices", tok.token.expose()).await;
    assert_unauthorized(&r, "the first request after revocation");
    assert!(revoked.elapsed() < Duration::from_secs(1));
    for uri in ["/api/v1/alerts", "/api/v1/fleet/summary"] {
        let r = get_with(&api.app, uri, tok.token.expose()).await;
        assert_unauthorized(&r, &format!("{uri} after revocation"));
    }
    // Revoking a token does not touch the bootstrap token.
    let r = get_with(&api.app, "/api/v1/devices", BOOTSTRAP).await;
    assert_eq!(r.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// Rate limits

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn past_the_burst_429_with_retry_after_and_other_tokens_unaffected(pool: PgPool) {
    // One request every 2 s sustained, 5 at once: the refused requests below take far less
    // than those 2 s, so none of them is let in by the refill.
    let api = api_with(&pool, 0.5, 5);
    let busy = create(&pool, "busy", &[Scope::Read]).await;
    let calm = create(&pool, "calm", &[Scope::Read]).await;

    // Unauthenticated and wrong tokens are refused before they count (and never see 429).
    for _ in 0..50 {
        let r = get_with(&api.app, "/api/v1/devices", &never_issued()).await;
        assert_unauthorized(&r, "never issued");
        let r = call(&api.app, Method::GET, "/api/v1/devices", None, None).await;
        assert_unauthorized(&r, "no token");
    }

    for i in 0..5 {
        let r = get_with(&api.app, "/api/v1/devices", busy.token.expose()).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
    }
    let r = get_with(&api.app, "/api/v1/devices", busy.token.expose()).await;
    assert_problem(&r, 429, "past the burst");
    let retry: u64 = r
        .header(RETRY_AFTER)
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    // Refused requests keep being refused, and do not push the wait further out.
    for _ in 0..20 {
        let r = get_with(&api.app, "/api/v1/alerts", busy.token.expose()).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    }

    // Another token has its own budget, and the bootstrap token has none.
    for i in 0..5 {
        let r = get_with(&api.app, "/api/v1/devices", calm.token.expose()).await;
        assert_eq!(r.status, StatusCode::OK, "calm request {i}: {}", r.text());
    }
    for _ in 0..50 {
        let r = get_with(&api.app, "/api/v1/devices", BOOTSTRAP).await;
        assert_eq!(r.status, StatusCode::OK);
    }

    // Come back when told: let in again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = get_with(&api.app, "/api/v1/devices", busy.token.expose()).await;
    assert_eq!(r.status, StatusCode::OK, "after Retry-After: {}", r.text());
}

#[test]
fn rate_limits_are_configured_in_the_api_section() {
    let c = Config::default();
    assert_eq!(c.api.rate_limit_per_second, 20.0);
    assert_eq!(c.api.rate_limit_burst, 40);
    let c = Config::from_toml("[api]\nrate_limit_per_second = 5\nrate_limit_burst = 10\n").unwrap();
    assert_eq!(c.api.rate_limit_per_second, 5.0);
    assert_eq!(c.api.rate_limit_burst, 10);
    let c = Config::from_toml("[api]\nrate_limit_per_second = 0.5\n").unwrap();
    assert_eq!(c.api.rate_limit_per_second, 0.5);

    let dir = tempfile::tempdir().unwrap();
    for (toml, key) in [
        ("[api]\nrate_limit_burst = 0\n", "api.rate_limit_burst"),
        (
            "[api]\nrate_limit_per_second = 0\n",
            "api.rate_limit_per_second",
        ),
        (
            "[api]\nrate_limit_per_second = -1\n",
            "api.rate_limit_per_second",
        ),
    ] {
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml).unwrap();
        let e = Config::load_with_env(Some(&p), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{toml}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile tokens

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hostile_tokens_are_refused_never_500(pool: PgPool) {
    let api = api(&pool);
    let real = create(&pool, "real", &[Scope::Admin]).await;
    let real = real.token.expose().to_string();
    let mut hostile: Vec<Vec<u8>> = vec![
        b"Bearer "
            .iter()
            .chain(&vec![b'a'; 100_000])
            .copied()
            .collect(),
        format!("Bearer fw_{}", "A".repeat(100_000)).into_bytes(),
        format!("Bearer {}", "fw_".repeat(10_000)).into_bytes(),
        "Bearer fw_\u{e9}\u{6f22}\u{5b57}".as_bytes().to_vec(),
        b"Bearer \xff\xfe\xfd".to_vec(),
        b"Bearer fw_\x80\x81".to_vec(),
        [b"Bearer ".as_slice(), &real.as_bytes()[..45], b"\xe9"].concat(),
        b"Bearer a\tb".to_vec(),
        b"Bearer \t".to_vec(),
        b"Bearer\tfw_x".to_vec(),
        format!("Bearer {real}\t{real}").into_bytes(),
        format!("Bearer {}", &real[..45]).into_bytes(),
        format!("Bearer {real}A").into_bytes(),
        format!("Bearer {}", real.to_uppercase()).into_bytes(),
        format!("Bearer fw_{}", "/".repeat(43)).into_bytes(),
        format!("Bearer fw_{}", "%00".repeat(14)).into_bytes(),
        b"Bearer ' or 1=1 --".to_vec(),
        b"Bearer fw_'); drop table api_tokens; --".to_vec(),
        format!("Bearer fw_{}'--", "A".repeat(40)).into_bytes(),
        b"Bearer \\x00".to_vec(),
        b"Bearer null".to_vec(),
        format!("Basic {real}").into_bytes(),
        real.clone().into_bytes(),
        b"Bearer".to_vec(),
        b"".to_vec(),
    ];
    // The bootstrap token with every variation that must not pass for it.
    hostile.push(format!("Bearer {BOOTSTRAP}\u{e9}").into_bytes());
    hostile.push(format!("Bearer {}", &BOOTSTRAP[1..]).into_bytes());
    for raw in &hostile {
        let what = String::from_utf8_lossy(&raw[..raw.len().min(60)]).into_owned();
        let hv = HeaderValue::from_bytes(raw)
            .unwrap_or_else(|e| panic!("{what:?} is not a header value: {e}"));
        for (method, uri) in [
            (Method::GET, "/api/v1/devices"),
            (Method::POST, "/api/v1/alerts/1/ack"),
        ] {
            let r = call(&api.app, method.clone(), uri, Some(hv.clone()), None).await;
            assert_unauthorized(&r, &format!("{method} {uri} with {what:?}"));
        }
    }
    // Several Authorization headers: only the first counts, and a bad first one is refused.
    let req = Request::builder()
        .uri("/api/v1/devices")
        .header(AUTHORIZATION, "Bearer nope")
        .header(AUTHORIZATION, format!("Bearer {real}"))
        .body(Body::empty())
        .unwrap();
    let r = api.app.clone().oneshot(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        tokens::list(&pool).await.unwrap().len() == 1,
        "table intact"
    );
    // and the real one still works
    let r = get_with(&api.app, "/api/v1/devices", &real).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Over a real socket, bytes no `HeaderValue` would hold (control characters, NUL-free): the
/// HTTP layer or the auth layer refuses them, never with a 5xx.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hostile_raw_headers_over_a_socket(pool: PgPool) {
    let api = api(&pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = api.app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut cases: Vec<Vec<u8>> = (1u8..0x20)
        .filter(|b| !matches!(b, b'\t' | b'\n' | b'\r'))
        .map(|c| [b"Bearer fw_".as_slice(), &[c], b"x"].concat())
        .collect();
    cases.push(b"Bearer fw_\x7f".to_vec());
    cases.push(b"Bearer \x1b[2J\x1b[H".to_vec());
    cases.push(b"Bearer \xc3\xa9\xe6\xbc\xa2".to_vec());
    cases.push([b"Bearer ".as_slice(), &vec![b'x'; 200_000]].concat());
    for raw in cases {
        let what = String::from_utf8_lossy(&raw[..raw.len().min(40)]).into_owned();
        let status = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut req =
                b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: "
                    .to_vec();
            req.extend_from_slice(&raw);
            req.extend_from_slice(b"\r\n\r\n");
            // The server may answer and close before reading all of a huge header.
            let _ = s.write_all(&req);
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let head = String::from_utf8_lossy(&buf).into_owned();
            head.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok())
        })
        .await
        .unwrap();
        // hyper refuses what HTTP forbids (400/431) or closes the connection; what it passes on,
        // the auth layer refuses. Nothing gets in, nothing crashes.
        assert!(
            matches!(status, None | Some(400 | 401 | 431)),
            "{what:?}: {status:?}"
        );
    }
    // The server is still up and still refuses strangers.
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/devices"))
        .bearer_auth(never_issued())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// The whole binary: tokens created and revoked by the CLI while `serve` runs

struct Guard(Option<std::process::Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_served_api_honours_cli_tokens_scopes_limits_and_revocation(pool: PgPool) {
    let create = |name: &str, scopes: &str| {
        let o = fleetwatch(
            &pool,
            &["token", "create", "--name", name, "--scopes", scopes],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).trim_end().to_string()
    };
    let reader = create("reader", "read");
    let writer = create("writer", "write");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleetwatch.toml");
    std::fs::write(
        &cfg,
        "[api]\nrate_limit_per_second = 0.2\nrate_limit_burst = 3\n",
    )
    .unwrap();
    let port = common::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .env("DATABASE_URL", database_url(&pool))
        .env("FLEETWATCH_HTTP_ADDR", format!("127.0.0.1:{port}"))
        // no broker: the API serves while MQTT is away
        .env(
            "FLEETWATCH_MQTT_URL",
            format!("mqtt://127.0.0.1:{}", common::free_port()),
        )
        .env(
            "FLEETWATCH_INSTANCE_ID",
            format!("tok-{}", std::process::id()),
        )
        .env_remove("FLEETWATCH_API_TOKEN")
        .env_remove("FLEETWATCH_CONFIG")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(Some(child));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    common::eventually(30, "the binary serves /readyz", || async {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    let get = |tok: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            http.get(format!("{base}/api/v1/devices"))
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
        }
    };
    // no bootstrap token configured: stored tokens alone open the API
    assert_eq!(get(reader.clone()).await.status(), 200);
    let r = http
        .post(format!("{base}/api/v1/alerts/1/ack"))
        .bearer_auth(&reader)
        .json(&json!({"by": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = http
        .post(format!("{base}/api/v1/alerts/1/ack"))
        .bearer_auth(&writer)
        .json(&json!({"by": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "write passes auth; alert 1 does not exist");

    // the reader's burst of 3 is spent (two above); the third passes, the fourth waits
    assert_eq!(get(reader.clone()).await.status(), 200);
    let r = get(reader.clone()).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    assert_eq!(get(writer.clone()).await.status(), 200, "its own budget");

    // revoked by the CLI while the service runs: refused at once
    let o = fleetwatch(&pool, &["token", "list", "--json"]);
    let rows: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let writer_id = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "writer")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["last_used_at"].is_string()));
    let o = fleetwatch(&pool, &["token", "revoke", &writer_id.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = get(writer.clone()).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");

    let mut child = guard.0.take().unwrap();
    let _ = child.kill();
    let _ = child.wait();
}
