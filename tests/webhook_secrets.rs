//! Webhook URLs are credentials (Slack-style paths, `?key=` queries): a failing endpoint's
//! URL must appear in no stored error (`notifications.last_error`, `delivery_attempts.error`),
//! no API answer and no log line, whichever way it fails (connection refused, timeout, a
//! 500 or a 400 whose body echoes the URL); and the migration scrubs rows stored before.
//!
//! Its own test binary: the log test captures everything at TRACE, the `log` crate's records
//! from reqwest included, which a subscriber installed by another test would get in the way of.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, Uri};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::http::TestApp;
use fleetwatch::alerts::lifecycle::{self, AlertSpec};
use fleetwatch::alerts::outbox;
use fleetwatch::alerts::webhook::Worker;
use fleetwatch::config::{HumanDuration, Secret, WebhookConfig};
use fleetwatch::domain::alert::Kind;
use fleetwatch::tokens::{self, Scope};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// What each endpoint's URL hides; none of it may come out.
const SECRETS: [&str; 4] = [
    "T0SECRET",
    "B0SECRET",
    "XsecretPathToken123",
    "SecretKeyValue456",
];
const SECRET_PATH: &str = "/services/T0SECRET/B0SECRET/XsecretPathToken123";
const SECRET_QUERY: &str = "key=SecretKeyValue456";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0).unwrap()
}

fn leaks(text: &str) -> Vec<&'static str> {
    SECRETS.into_iter().filter(|s| text.contains(s)).collect()
}

/// A receiver that answers with a body echoing the request's URL every way a careless one
/// might: the path and query, the absolute URL, JSON-escaped, and the key on its own.
async fn echo(uri: Uri) -> (StatusCode, String) {
    let status = if uri.path().starts_with("/e500") {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    };
    let pq = uri.path_and_query().unwrap().as_str().to_string();
    let abs = format!("https://hooks.example.com{pq}");
    let body = json!({
        "error": format!("Cannot POST {pq}"),
        "url": abs,
        "hint": format!("key {} unknown", pq.rsplit('=').next().unwrap()),
    });
    (status, format!("{body} see {abs}"))
}

fn hook(name: &str, base: &str, timeout: Duration) -> WebhookConfig {
    WebhookConfig {
        name: Some(name.into()),
        url: format!("{base}{SECRET_PATH}?{SECRET_QUERY}"),
        secret: Some(Secret::new("whsec")),
        timeout: HumanDuration(timeout),
        backoff_min: HumanDuration(Duration::from_secs(10)),
        backoff_max: HumanDuration(Duration::from_secs(20)),
        max_attempt_age: HumanDuration(Duration::from_secs(40)),
        ..WebhookConfig::default()
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_failing_endpoint_url_is_in_no_error_no_answer_and_no_log(pool: PgPool) {
    // The `#[sqlx::test]` runtime is single-threaded, so the worker's spawned sends log here too.
    let logs = fleetwatch::logging::Captured::default();
    let _guard = logs.install();

    // refused: a port nobody listens on any more
    let refused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused_base = format!("http://127.0.0.1:{}", refused.local_addr().unwrap().port());
    drop(refused);
    // hanging: accepts, reads, never answers
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_base = format!("http://{}", hang.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    // echoing: a 500 (retried) and a 400 (dead at once)
    let echoing = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_base = format!("http://{}", echoing.local_addr().unwrap());
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(axum::routing::post(echo));
        let _ = axum::serve(echoing, app).await;
    });

    let hooks = [
        hook("refused", &refused_base, Duration::from_secs(1)),
        hook("hang", &hang_base, Duration::from_millis(300)),
        hook("e500", &format!("{echo_base}/e500"), Duration::from_secs(1)),
        hook("e400", &format!("{echo_base}/e400"), Duration::from_secs(1)),
    ];
    outbox::sync_endpoints(&pool, &hooks).await.unwrap();
    let worker = Worker::new(pool.clone(), &hooks).unwrap();

    let mut tx = pool.begin().await.unwrap();
    let spec = AlertSpec {
        kind: Kind::IngestDown,
        subject: "ingest".into(),
        device_id: None,
        group_id: None,
        severity: Kind::IngestDown.default_severity(),
        summary: "ingest is down".into(),
        details: json!({}),
    };
    lifecycle::fire(&mut tx, &spec, t0(), TimeDelta::minutes(30))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // every failure path: first attempts, retries, and the dead letter at max_attempt_age
    let mut now = t0();
    for _ in 0..20 {
        worker.tick(now).await.unwrap();
        let next: Option<DateTime<Utc>> = sqlx::query_scalar(
            "select min(next_attempt_at) from notifications where status = 'pending'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        match next {
            Some(next) => now = next.max(now),
            None => break,
        }
    }

    let rows: Vec<(String, String, i32, Option<String>)> = sqlx::query_as(
        "select endpoint, status, attempts, last_error from notifications order by endpoint",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 4);
    for (endpoint, status, attempts, error) in &rows {
        assert_eq!(status, "dead", "{endpoint}");
        let error = error.as_deref().unwrap();
        assert_eq!(leaks(error), [] as [&str; 0], "{endpoint}: {error}");
        let want = match endpoint.as_str() {
            "refused" => "connection failed",
            "hang" => "timeout",
            "e500" => "HTTP 500",
            _ => "HTTP 400",
        };
        assert!(error.contains(want), "{endpoint}: {error}");
        if endpoint == "e400" {
            assert_eq!(*attempts, 1);
        } else {
            assert!(*attempts >= 3, "{endpoint} retried until max_attempt_age");
            // the endpoint is named where its URL was
            assert!(error.contains(endpoint.as_str()), "{endpoint}: {error}");
        }
    }
    let attempts: Vec<(String, Option<String>)> = sqlx::query_as(
        r#"select n.endpoint, a.error from delivery_attempts a
           join notifications n on n.id = a.notification_id"#,
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(attempts.len() >= 10, "{attempts:?}");
    for (endpoint, error) in &attempts {
        let error = error.as_deref().unwrap();
        assert_eq!(leaks(error), [] as [&str; 0], "{endpoint}: {error}");
    }

    // what a read-only token sees
    let token = tokens::create(&pool, "reader", &[Scope::Read], now)
        .await
        .unwrap();
    let app = TestApp::build(&pool, now, None, |_| {}).app;
    let r = app
        .oneshot(
            Request::get("/api/v1/webhooks/deliveries")
                .header("authorization", format!("Bearer {}", token.token.expose()))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("HTTP 500"), "{body}");
    assert_eq!(leaks(&body), [] as [&str; 0], "{body}");

    // the logs, every level, every crate
    let text = logs.text();
    assert!(
        text.contains("dead-lettered"),
        "the worker's warnings were captured: {text}"
    );
    assert!(
        text.contains("will retry"),
        "the worker's debug lines were captured: {text}"
    );
    assert!(
        text.contains("reqwest"),
        "reqwest's own log lines were captured: {text}"
    );
    for line in text.lines() {
        assert_eq!(leaks(line), [] as [&str; 0], "{line}");
    }
}

/// The migration, applied as in production: to a database holding rows from before it.
#[sqlx::test(migrations = false)]
async fn the_migration_scrubs_urls_from_stored_errors(pool: PgPool) {
    const SCRUB: i64 = 20261130000001;
    let before = sqlx::migrate::Migrator {
        migrations: fleetwatch::db::MIGRATOR
            .migrations
            .iter()
            .filter(|m| m.version < SCRUB)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&pool).await.unwrap();

    let alert: i64 = sqlx::query_scalar(
        r#"insert into alerts (kind, subject, severity, status, opened_at, summary, updated_at)
           values ('ingest_down', 'ingest', 'critical', 'firing', now(), 'down', now())
           returning id"#,
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let slack = "https://hooks.slack.com/services/T0SECRET/B0SECRET/XsecretPathToken123";
    let keyed = "https://chat.example.com/v1/spaces/AAA/messages?key=SecretKeyValue456&token=x";
    let old = [
        // reqwest's message, as the worker stored it until now
        format!("connection failed: error sending request for url ({slack}): client error (Connect): tcp connect error: Connection refused (os error 111)"),
        format!("timeout: error sending request for url ({keyed}): operation timed out"),
        // a receiver's body echoing the URL, plain and JSON-escaped
        format!(
            "HTTP 500: {{\"error\":\"no hook\",\"url\":\"{}\"}} see {keyed}\nthen {slack}",
            slack.replace('/', "\\/")
        ),
        "HTTP 400: nope".to_string(),
    ];
    let mut ids = Vec::new();
    for e in &old {
        let id: i64 = sqlx::query_scalar(
            r#"insert into notifications (alert_id, endpoint, event, body, status, attempts,
                   next_attempt_at, created_at, retry_since, last_error)
               values ($1, 'ops', 'alert.firing', '{}', 'dead', 1, now(), now(), now(), $2)
               returning id"#,
        )
        .bind(alert)
        .bind(e)
        .fetch_one(&pool)
        .await
        .unwrap();
        sqlx::query(
            r#"insert into delivery_attempts (notification_id, at, latency_ms, error)
               values ($1, now(), 5, $2)"#,
        )
        .bind(id)
        .bind(e)
        .execute(&pool)
        .await
        .unwrap();
        ids.push(id);
    }

    fleetwatch::db::MIGRATOR.run(&pool).await.unwrap();

    for (id, e) in ids.iter().zip(&old) {
        let (last_error, attempt_error): (String, String) = sqlx::query_as(
            r#"select n.last_error, a.error from notifications n
               join delivery_attempts a on a.notification_id = n.id where n.id = $1"#,
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(leaks(&last_error), [] as [&str; 0], "{last_error}");
        assert_eq!(last_error, attempt_error);
        // the same pattern as the worker's own scrub: what is left to read is the same
        assert_eq!(last_error, fleetwatch::alerts::redact::redact_urls(e));
        if e.contains("://") {
            assert!(last_error.contains("<url redacted>"), "{last_error}");
        } else {
            assert_eq!(&last_error, e, "no URL, no change");
        }
    }
    assert_eq!(
        sqlx::query_scalar::<_, String>("select last_error from notifications where id = $1")
            .bind(ids[1])
            .fetch_one(&pool)
            .await
            .unwrap(),
        "timeout: error sending request for url (<url redacted> operation timed out"
    );
}
