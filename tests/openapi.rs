//! The OpenAPI document: it describes every route, and a property-based fuzzer (schemathesis,
//! installed by scripts/test into .venv) run against the live service finds no 5xx and no
//! response that breaks the document.

mod common;

use fleetwatch::http::router;
use sqlx::PgPool;

const TOKEN: &str = "openapi-test-token";

async fn serve(pool: &PgPool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(common::http::state(pool, TOKEN));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn seed(pool: &PgPool) {
    sqlx::raw_sql(
        r#"insert into groups (id, name, time_zone) values ('tokyo', 'Tokyo HQ', 'Asia/Tokyo');
           insert into devices (id, group_id, state, connected, last_impression_at)
           values ('tky-1', 'tokyo', 'silent', true, now() - interval '1 hour'),
                  ('tky-2', 'tokyo', 'healthy', true, now()),
                  ('<script>x</script>', null, 'never_seen', null, null)"#,
    )
    .execute(pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let spec = fleetwatch::alerts::AlertSpec {
        kind: fleetwatch::domain::alert::Kind::HeartbeatGap,
        subject: "tky-1".into(),
        device_id: Some("tky-1".into()),
        group_id: Some("tokyo".into()),
        severity: fleetwatch::domain::alert::Severity::Error,
        summary: "tky-1 silent".into(),
        details: serde_json::json!({"classification": "silent"}),
    };
    fleetwatch::alerts::lifecycle::fire(
        &mut tx,
        &spec,
        chrono::Utc::now(),
        chrono::TimeDelta::minutes(30),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_document_describes_every_route_and_the_auth_scheme(pool: PgPool) {
    let base = serve(&pool).await;
    // no token needed for the document itself
    let doc: serde_json::Value = reqwest::get(format!("{base}/api/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/devices", "get"),
        ("/api/v1/devices/{id}", "get"),
        ("/api/v1/devices/{id}/events", "get"),
        ("/api/v1/devices/{id}/impressions", "get"),
        ("/api/v1/alerts", "get"),
        ("/api/v1/alerts/{id}", "get"),
        ("/api/v1/alerts/{id}/ack", "post"),
        ("/api/v1/alerts/{id}/ticket", "put"),
        ("/api/v1/fleet/summary", "get"),
        ("/api/v1/fleet/groups", "get"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} missing");
        assert!(op["responses"]["200"].is_object(), "{method} {path}");
        assert!(op["responses"]["401"].is_object(), "{method} {path}");
    }
    // every route the router serves under /api/v1 is documented
    let sources: String = ["devices", "alerts", "fleet", "mod"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(format!(
                "{}/src/http/api/{f}.rs",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        })
        .collect();
    for line in sources
        .lines()
        .filter(|l| l.trim_start().starts_with(".route(\""))
    {
        let route = line.split('"').nth(1).unwrap();
        assert!(
            paths.contains_key(&format!("/api/v1{route}")),
            "{route} is not documented"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["Device"].is_object());
    assert!(doc["components"]["schemas"]["Alert"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

/// schemathesis from `.venv` (scripts/test installs it) or `$SCHEMATHESIS`.
fn schemathesis() -> std::path::PathBuf {
    std::env::var_os("SCHEMATHESIS")
        .map(Into::into)
        .unwrap_or_else(|| format!("{}/.venv/bin/schemathesis", env!("CARGO_MANIFEST_DIR")).into())
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_fuzzer_finds_no_server_error_and_no_schema_violation(pool: PgPool) {
    seed(&pool).await;
    let base = serve(&pool).await;
    let bin = schemathesis();
    assert!(
        bin.exists(),
        "{} missing: run scripts/test, which installs it",
        bin.display()
    );
    let out = tokio::process::Command::new(&bin)
        .args([
            "run",
            &format!("{base}/api/openapi.json"),
            "--header",
            &format!("Authorization: Bearer {TOKEN}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
}
