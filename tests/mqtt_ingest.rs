//! Ingest through a real Mosquitto into a real Postgres, read back through the real HTTP API.

mod common;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::*;
use fleetwatch::app::App;
use sqlx::PgPool;

async fn device(api: &Api, id: &str) -> serde_json::Value {
    let (status, body) = api.get(&format!("/api/v1/devices/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn presence_and_impressions_reach_the_api(pool: PgPool) {
    let broker = Broker::start().await;
    let app = App::build_with_pool(config(&broker), pool.clone(), system_clock())
        .await
        .unwrap();
    let api = api(&format!("http://{}", app.addr));
    eventually(10, "mqtt connected", || async {
        app.state.mqtt.iter().all(|c| c.snapshot().connected)
    })
    .await;

    let mut p = Publisher::connect(broker.port, "device-sim").await;
    let t0 = Utc::now() - TimeDelta::minutes(10);
    let at = |m: i64| ms(t0 + TimeDelta::minutes(m));
    // screen-1: connect, drop, reconnect — delivered reordered and duplicated.
    let events = [
        (
            "disconnected",
            disconnected("screen-1", at(2), "s1", 1, "CONNECTION_LOST"),
        ),
        (
            "connected",
            connected("screen-1", at(3), "s2", 2, "198.51.100.7"),
        ),
        (
            "connected",
            connected("screen-1", at(0), "s1", 1, "198.51.100.6"),
        ),
        (
            "disconnected",
            disconnected("screen-1", at(2), "s1", 1, "CONNECTION_LOST"),
        ),
        (
            "connected",
            connected("screen-1", at(3), "s2", 2, "198.51.100.7"),
        ),
    ];
    for (kind, payload) in &events {
        p.publish(&presence_topic(kind, "screen-1"), payload.clone())
            .await;
    }
    // screen-2: connected then disconnected, delivered disconnect first.
    p.publish(
        &presence_topic("disconnected", "screen-2"),
        disconnected("screen-2", at(5), "s9", 4, "MQTT_KEEP_ALIVE_TIMEOUT"),
    )
    .await;
    p.publish(
        &presence_topic("connected", "screen-2"),
        connected("screen-2", at(1), "s9", 4, "198.51.100.9"),
    )
    .await;
    for i in 0..5 {
        p.publish(
            "dt/screen-1/impressions",
            format!(r#"{{"timestamp":{},"count":{i}}}"#, at(4)),
        )
        .await;
    }
    p.flush().await;

    eventually(10, "screen-1 stored and flushed", || async {
        let (s, d) = api.get("/api/v1/devices/screen-1").await;
        s == 200 && d["last_impression_at"].is_string() && d["connected"] == true
    })
    .await;
    let s1 = device(&api, "screen-1").await;
    assert_eq!(s1["connected"], true);
    assert_eq!(s1["last_ip"], "198.51.100.7");
    assert_eq!(s1["last_disconnect_reason"], "CONNECTION_LOST");
    assert_eq!(s1["state"], "healthy");
    assert!(s1["last_device_ts"].as_str().unwrap().ends_with('Z'));

    eventually(10, "screen-2 stored", || async {
        let (s, d) = api.get("/api/v1/devices/screen-2").await;
        s == 200 && d["last_connected_at"].is_string()
    })
    .await;
    let s2 = device(&api, "screen-2").await;
    assert_eq!(s2["connected"], false);
    assert_eq!(s2["last_disconnect_reason"], "MQTT_KEEP_ALIVE_TIMEOUT");
    assert_eq!(s2["state"], "never_seen");

    // each event stored once
    let stored: i64 =
        sqlx::query_scalar("select count(*) from presence_events where client_id = 'screen-1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 3);
    let count: i64 = sqlx::query_scalar(
        "select sum(count)::bigint from impressions_hourly where device_id = 'screen-1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(count, 5);

    let (status, events) = api.get("/api/v1/devices/screen-1/events?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(events["items"].as_array().unwrap().len(), 2);
    assert_eq!(events["items"][0]["event_type"], "connected");
    assert_eq!(events["items"][1]["event_type"], "disconnected");
    // the disconnect has no address of its own: joined from its session's connect
    assert_eq!(events["items"][1]["ip_address"], "198.51.100.6");
    let cursor = events["next_cursor"].as_str().unwrap();
    let (_, rest) = api
        .get(&format!(
            "/api/v1/devices/screen-1/events?limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());

    app.shutdown().await.unwrap();
    let _ = Duration::ZERO;
}
