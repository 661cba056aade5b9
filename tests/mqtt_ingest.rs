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
}

async fn start(pool: &PgPool, cfg: fleetwatch::config::Config) -> App {
    let app = App::build_with_pool(cfg, pool.clone(), system_clock())
        .await
        .unwrap();
    eventually(10, "mqtt connected", || async {
        app.state.mqtt.iter().all(|c| c.snapshot().connected)
    })
    .await;
    app
}

fn received(app: &App, kind: &str) -> u64 {
    app.state
        .metrics
        .received
        .get_or_create(&vec![("kind", kind.to_string())])
        .get()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn bad_input_is_counted_and_never_corrupts_or_disconnects(pool: PgPool) {
    let broker = Broker::start().await;
    let app = start(&pool, config(&broker)).await;
    let api = api(&format!("http://{}", app.addr));
    let mut p = Publisher::connect(broker.port, "hostile").await;
    let now = ms(Utc::now());

    // good state first
    p.publish(
        &presence_topic("connected", "good-1"),
        connected("good-1", now - 60_000, "g", 3, "192.0.2.1"),
    )
    .await;
    p.publish("dt/good-1/impressions", format!(r#"{{"timestamp":{now}}}"#))
        .await;
    p.flush().await;
    eventually(10, "good-1 flushed", || async {
        api.get("/api/v1/devices/good-1").await.1["last_impression_at"].is_string()
    })
    .await;
    let before = api.get("/api/v1/devices/good-1").await.1;

    let c = presence_topic("connected", "x");
    let garbage: Vec<(String, Vec<u8>)> = vec![
        (c.clone(), b"{not json".to_vec()),
        (c.clone(), vec![0xff, 0xfe, 0x00]),
        (c.clone(), br#"{"clientId":"good-1"}"#.to_vec()),
        (c.clone(), b"[]".to_vec()),
        (c.clone(), format!("{}1{}", "[".repeat(5000), "]".repeat(5000)).into_bytes()),
        // a far-future disconnect that would otherwise win for good-1
        (c.clone(), disconnected("good-1", now + 30 * 86_400_000, "g", 99, "CONNECTION_LOST").into_bytes()),
        (c.clone(), br#"{"clientId":"good-1","timestamp":1764244800000,"eventType":"exploded","sessionIdentifier":"s","versionNumber":1}"#.to_vec()),
        (c.clone(), connected("bad\u{7}id", now, "s", 1, "192.0.2.9").into_bytes()),
        (c.clone(), connected(&"y".repeat(300), now, "s", 1, "192.0.2.9").into_bytes()),
        (c.clone(), connected("fleetwatch-someone-0", now, "s", 1, "192.0.2.9").into_bytes()),
        // over the 128 KB limit but under the client's packet limit
        (c.clone(), vec![b' '; 200 * 1024]),
        ("dt/good-1/impressions".into(), b"nope".to_vec()),
        ("dt/good-1/impressions".into(), b"\"string\"".to_vec()),
        ("dt/good-1/impressions".into(), vec![b'7'; 129 * 1024]),
    ];
    for (topic, payload) in garbage {
        p.publish(&topic, payload).await;
    }
    // a hostile but valid device name, and an absurd device timestamp that still counts
    p.publish("dt/<script>alert(1)</impressions", b"{}".to_vec())
        .await;
    p.publish("dt/good-1/impressions", br#"{"timestamp":1000}"#.to_vec())
        .await;
    p.flush().await;

    eventually(10, "all garbage processed", || async {
        let m = api.text("/metrics").await;
        metric(&m, r#"fleetwatch_ingest_dropped_total{reason="oversized"}"#) >= 2.0
            && metric(&m, "fleetwatch_device_timestamps_dropped_total") >= 1.0
            && metric(
                &m,
                r#"fleetwatch_ingest_dropped_total{reason="own_client"}"#,
            ) >= 1.0
    })
    .await;
    let m = api.text("/metrics").await;
    for (reason, n) in [
        ("malformed_json", 5.0),
        ("not_utf8", 1.0),
        ("missing_field", 1.0),
        ("bad_timestamp", 1.0),
        ("unknown_event_type", 1.0),
        ("bad_device_id", 2.0),
        ("own_client", 1.0),
        ("oversized", 2.0),
    ] {
        let got = metric(
            &m,
            &format!(r#"fleetwatch_ingest_dropped_total{{reason="{reason}"}}"#),
        );
        assert_eq!(got, n, "{reason}: {m}");
    }
    eventually(10, "hostile device stored", || async {
        api.get("/api/v1/devices/%3Cscript%3Ealert(1)%3C").await.0 == 200
    })
    .await;

    let after = api.get("/api/v1/devices/good-1").await.1;
    assert_eq!(after["connected"], true, "{after}");
    assert_eq!(after["last_ip"], before["last_ip"]);
    assert_eq!(after["last_device_ts"], before["last_device_ts"]);
    // the session survived all of it: no reconnect
    assert_eq!(app.state.mqtt[0].snapshot().reconnects, 0);
    let count: i64 = sqlx::query_scalar("select count(*) from devices")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 2, "only good-1 and the hostile-but-valid name");
    app.shutdown().await.unwrap();
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn shared_subscription_spreads_telemetry_over_the_pool(pool: PgPool) {
    let broker = Broker::start().await;
    let mut cfg = config(&broker);
    cfg.mqtt.connections = 3;
    let app = start(&pool, cfg).await;
    let ids: std::collections::HashSet<_> =
        app.state.mqtt.iter().map(|c| c.client_id.clone()).collect();
    assert_eq!(ids.len(), 3, "unique client IDs");

    let mut p = Publisher::connect(broker.port, "fleet-sim").await;
    let now = ms(Utc::now());
    for i in 0..300 {
        p.publish(
            &format!("dt/screen-{}/impressions", i % 30),
            format!(r#"{{"timestamp":{now}}}"#),
        )
        .await;
    }
    p.flush().await;
    eventually(10, "all impressions counted", || async {
        let n: Option<i64> =
            sqlx::query_scalar("select sum(count)::bigint from impressions_hourly")
                .fetch_one(&pool)
                .await
                .unwrap();
        n == Some(300)
    })
    .await;
    let per_conn: Vec<u64> = app
        .state
        .mqtt
        .iter()
        .map(|c| c.snapshot().messages)
        .collect();
    // each message delivered once (connection 0 also gets our canary every 5 s)
    assert_eq!(received(&app, "telemetry"), 300);
    let total: u64 = per_conn.iter().sum();
    assert!((300..=303).contains(&total), "{per_conn:?}");
    assert!(
        per_conn.iter().all(|&n| n > 0),
        "every connection got a share: {per_conn:?}"
    );
    let devices: i64 = sqlx::query_scalar("select count(*) from devices")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(devices, 30);
    app.shutdown().await.unwrap();
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn two_replicas_have_distinct_client_ids_and_do_not_kick_each_other(pool: PgPool) {
    let broker = Broker::start().await;
    let mut a = config(&broker);
    a.mqtt.connections = 2;
    let mut b = config(&broker);
    b.mqtt.connections = 2;
    let app_a = start(&pool, a).await;
    let app_b = start(&pool, b).await;
    let ids: std::collections::HashSet<_> = app_a
        .state
        .mqtt
        .iter()
        .chain(app_b.state.mqtt.iter())
        .map(|c| c.client_id.clone())
        .collect();
    assert_eq!(ids.len(), 4);
    // Two clients with one ID would take each other's session over and over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for c in app_a.state.mqtt.iter().chain(app_b.state.mqtt.iter()) {
        let s = c.snapshot();
        assert!(s.connected && s.reconnects == 0, "{}: {s:?}", c.client_id);
    }
    app_a.shutdown().await.unwrap();
    app_b.shutdown().await.unwrap();
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn shutdown_flushes_the_buffer(pool: PgPool) {
    let broker = Broker::start().await;
    let mut cfg = config(&broker);
    // never flushes on its own: only the shutdown flush can write these
    cfg.telemetry.flush_interval = fleetwatch::config::HumanDuration(Duration::from_secs(3600));
    let app = start(&pool, cfg).await;
    let mut p = Publisher::connect(broker.port, "sim").await;
    for i in 0..50 {
        p.publish(&format!("dt/s{}/impressions", i % 5), b"{}".to_vec())
            .await;
    }
    p.flush().await;
    eventually(10, "all received", || async {
        received(&app, "telemetry") == 50
    })
    .await;
    let before: i64 = sqlx::query_scalar("select count(*) from impressions_hourly")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(before, 0, "nothing flushed yet");
    app.shutdown().await.unwrap();
    let total: Option<i64> =
        sqlx::query_scalar("select sum(count)::bigint from impressions_hourly")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(total, Some(50));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn broker_restart_mid_stream_loses_no_presence_event(pool: PgPool) {
    let mut broker = Broker::start().await;
    let mut cfg = config(&broker);
    // Slow enough to come back that the device publishes while we are away: only our
    // persistent session, kept by the broker across its restart, can deliver those events.
    cfg.mqtt.backoff_min = fleetwatch::config::HumanDuration(Duration::from_millis(1500));
    cfg.mqtt.backoff_max = fleetwatch::config::HumanDuration(Duration::from_millis(2000));
    let app = start(&pool, cfg).await;
    let t0 = Utc::now() - TimeDelta::hours(2);
    let at = |i: i64| ms(t0 + TimeDelta::seconds(i));

    let mut p = Publisher::connect(broker.port, "sim-a").await;
    for i in 0..40 {
        let d = format!("d{i}");
        p.publish(
            &presence_topic("connected", &d),
            connected(&d, at(i), "s", 1, "192.0.2.1"),
        )
        .await;
    }
    p.flush().await;
    eventually(10, "first half stored", || async {
        let n: i64 = sqlx::query_scalar("select count(*) from presence_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        n == 40
    })
    .await;

    // Restart the broker; while our service backs off, a device publishes more events that the
    // broker must queue for our persistent session.
    broker.restart().await;
    let mut p = Publisher::connect(broker.port, "sim-b").await;
    for i in 0..40 {
        let d = format!("d{i}");
        p.publish(
            &presence_topic("disconnected", &d),
            disconnected(&d, at(100 + i), "s", 1, "CONNECTION_LOST"),
        )
        .await;
    }
    p.flush().await;

    eventually(20, "second half stored after reconnect", || async {
        let n: i64 = sqlx::query_scalar("select count(*) from presence_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        n == 80
    })
    .await;
    let still_connected: i64 = sqlx::query_scalar("select count(*) from devices where connected")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(still_connected, 0);
    assert!(app.state.mqtt[0].snapshot().reconnects >= 1);
    app.shutdown().await.unwrap();
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn resubscribes_when_the_broker_lost_the_session(pool: PgPool) {
    let mut broker = Broker::start_with(false).await;
    let app = start(&pool, config(&broker)).await;
    broker.restart().await;
    eventually(10, "reconnected", || async {
        let s = app.state.mqtt[0].snapshot();
        s.connected && s.reconnects == 1
    })
    .await;
    // The new broker knows nothing of us; only a fresh subscription delivers this.
    let mut p = Publisher::connect(broker.port, "sim").await;
    eventually(10, "delivered after resubscribing", || {
        let (pool, client) = (pool.clone(), p.client.clone());
        async move {
            client
                .publish(
                    "dt/late-1/impressions",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    b"{}".to_vec(),
                )
                .await
                .unwrap();
            sqlx::query_scalar::<_, bool>(
                "select exists(select 1 from devices where id = 'late-1')",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    p.flush().await;
    app.shutdown().await.unwrap();
}

/// Our own broker connection drops: one `ingest_down`, no device alert, resolved on recovery.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_broker_outage_is_one_ingest_down_and_no_device_alerts(pool: PgPool) {
    use fleetwatch::config::HumanDuration;
    let mut broker = Broker::start().await;
    let mut cfg = config(&broker);
    cfg.detector.tick = HumanDuration(Duration::from_millis(200));
    cfg.detector.canary_interval = HumanDuration(Duration::from_millis(200));
    cfg.detector.canary_timeout = HumanDuration(Duration::from_secs(1));
    cfg.detector.expected_interval = HumanDuration(Duration::from_secs(1));
    cfg.detector.grace = HumanDuration(Duration::from_millis(500));
    cfg.mqtt.backoff_min = HumanDuration(Duration::from_millis(300));
    let app = start(&pool, cfg).await;
    let mut p = Publisher::connect(broker.port, "beats").await;
    for _ in 0..5 {
        p.publish("dt/screen-1/impressions", b"{}".to_vec()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.flush().await;
    let kinds = |pool: PgPool| async move {
        sqlx::query_as::<_, (String, String)>("select kind, status from alerts order by id")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    assert!(kinds(pool.clone()).await.is_empty());

    // the broker is gone for 4 s: far longer than screen-1's interval + grace
    broker.stop().await;
    eventually(10, "ingest_down fires", || async {
        kinds(pool.clone()).await == [("ingest_down".to_string(), "firing".to_string())]
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart().await;
    let mut p = Publisher::connect(broker.port, "beats-2").await;
    eventually(15, "ingest_down resolves", || {
        let client = p.client.clone();
        let pool = pool.clone();
        async move {
            client
                .publish(
                    "dt/screen-1/impressions",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    b"{}".to_vec(),
                )
                .await
                .unwrap();
            kinds(pool).await == [("ingest_down".to_string(), "resolved".to_string())]
        }
    })
    .await;
    for _ in 0..10 {
        p.publish("dt/screen-1/impressions", b"{}".to_vec()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        kinds(pool.clone()).await,
        [("ingest_down".to_string(), "resolved".to_string())],
        "no device alert"
    );
    app.shutdown().await.unwrap();
}
