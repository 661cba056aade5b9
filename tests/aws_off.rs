//! A service without AWS configuration runs as before: it says once in the log and always on
//! `/healthz` that the AWS pollers are off, and why; it never fails to start because of it.

mod common;

use common::*;
use fleetwatch::app::App;
use sqlx::PgPool;

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn without_aws_the_pollers_are_off_and_say_so_once(pool: PgPool) {
    let broker = Broker::start().await;
    let logs = fleetwatch::logging::Captured::default();
    let _guard = logs.install();
    let app = App::build_with_pool(config(&broker), pool, system_clock())
        .await
        .expect("the service starts without AWS");
    let api = api(&format!("http://{}", app.addr));
    let (status, h) = api.get("/healthz").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["aws"]["enabled"], false, "{h}");
    assert!(
        h["aws"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("aws.enabled")),
        "{h}"
    );
    assert_eq!(
        logs.text().matches("AWS pollers are off").count(),
        1,
        "{}",
        logs.text()
    );
    app.shutdown().await.unwrap();
}

/// Enabled, but no region anywhere (no `AWS_REGION`, no profile): still starts, pollers off,
/// and `/healthz` names what is missing.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn enabled_without_a_region_starts_with_the_pollers_off(pool: PgPool) {
    // nextest runs each test in its own process, so this environment is ours alone.
    let home = tempfile::tempdir().unwrap();
    for v in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_CONFIG_FILE",
    ] {
        std::env::remove_var(v);
    }
    std::env::set_var("AWS_CONFIG_FILE", home.path().join("config"));
    std::env::set_var(
        "AWS_SHARED_CREDENTIALS_FILE",
        home.path().join("credentials"),
    );
    // No instance metadata service here; do not wait for one.
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let broker = Broker::start().await;
    let mut cfg = config(&broker);
    cfg.aws.enabled = true;
    let app = App::build_with_pool(cfg, pool, system_clock())
        .await
        .expect("the service starts without a region");
    let (status, h) = api(&format!("http://{}", app.addr)).get("/healthz").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["aws"]["enabled"], false, "{h}");
    assert!(
        h["aws"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("region")),
        "{h}"
    );
    app.shutdown().await.unwrap();
}
