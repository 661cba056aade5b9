//! The IoT Core per-connection limit (issue 9 item 9), through a real Mosquitto broker and the
//! whole service: a publisher pushes more than a lowered `mqtt.per_connection_limit` through
//! our one connection, and the log (once), `/metrics` and `/healthz` say so, with the number of
//! connections needed. The arithmetic itself is unit-tested in `ingest::rate`.

mod common;

use common::*;
use fleetwatch::logging::Captured;
use sqlx::PgPool;

/// Publish `n` impressions of `devices` devices as fast as the broker acknowledges them.
async fn traffic(broker: &Broker, n: usize, devices: usize) {
    let mut p = Publisher::connect(broker.port, "screens").await;
    for i in 0..n {
        p.publish(
            &format!("dt/screen-{}/impressions", i % devices),
            r#"{"count":3}"#,
        )
        .await;
    }
    p.flush().await;
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_connection_near_the_limit_warns_on_log_metrics_and_healthz(pool: PgPool) {
    let broker = Broker::start().await;
    let mut cfg = config(&broker);
    // 20 publishes/s per connection, warn at 16/s: 400 messages within the 10 s window are
    // 40/s, which needs ⌈40 / 16⌉ = 3 connections.
    cfg.mqtt.per_connection_limit = 20.0;
    let logs = Captured::default();
    let _guard = logs.install();
    let app = start_app(&pool, cfg).await;
    let api = api(&format!("http://{}", app.addr));
    let client_id = app.state.mqtt[0].client_id.clone();

    traffic(&broker, 400, 20).await;
    eventually(5, "all 400 received", || async {
        app.state.mqtt[0].snapshot().messages >= 400
    })
    .await;

    let (status, h) = api.get("/healthz").await;
    assert_eq!(status, 200);
    let conn = &h["mqtt"]["connections"][0];
    let rate = conn["receive_rate"].as_f64().unwrap();
    assert!(rate >= 16.0, "{h}");
    let warning = conn["warning"].as_str().expect("a warning");
    assert!(warning.contains("per-connection limit"), "{warning}");
    assert!(warning.contains("mqtt.connections = 1"), "{warning}");
    assert_eq!(h["mqtt"]["per_connection_limit"], 20.0);
    assert_eq!(h["mqtt"]["warn_at"], 16.0);
    let needed = h["mqtt"]["connections_needed"].as_u64().unwrap();
    assert!(needed >= 2, "{h}");

    // the gauges, refreshed by the mqtt_rate task
    let label = format!("{{connection=\"{client_id}\"}}");
    eventually(8, "the gauges", || async {
        let text = api.text("/metrics").await;
        metric(&text, &format!("fleetwatch_mqtt_receive_rate{label}")) >= 16.0
            && metric(&text, "fleetwatch_mqtt_connections_needed") >= 2.0
    })
    .await;

    // the log: one warning naming the connection, however many checks saw it
    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("per-connection limit") && l.contains("WARN"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains(&client_id), "{}", lines[0]);

    // ten seconds later the burst has left the window: no warning any more
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    let (_, h) = api.get("/healthz").await;
    assert!(h["mqtt"]["connections"][0]["warning"].is_null(), "{h}");
    assert_eq!(h["mqtt"]["connections_needed"], 1);
    app.shutdown().await.unwrap();
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn traffic_under_the_default_limit_does_not_warn(pool: PgPool) {
    let broker = Broker::start().await;
    let app = start_app(&pool, config(&broker)).await;
    let api = api(&format!("http://{}", app.addr));
    traffic(&broker, 400, 20).await;
    eventually(5, "all 400 received", || async {
        app.state.mqtt[0].snapshot().messages >= 400
    })
    .await;
    let (_, h) = api.get("/healthz").await;
    let conn = &h["mqtt"]["connections"][0];
    // 400 messages within 10 s: about 40/s, under 80/s (0.8 × 100)
    assert!(conn["receive_rate"].as_f64().unwrap() >= 30.0, "{h}");
    assert!(conn["warning"].is_null(), "{h}");
    assert_eq!(h["mqtt"]["connections_needed"], 1);
    app.shutdown().await.unwrap();
}
