//! End to end: the real `fleetwatch` binary, configured only through its environment, against a
//! private Mosquitto and its own database; driven by a real MQTT client and read back over HTTP.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::*;
use sqlx::PgPool;

/// The URL of the database `#[sqlx::test]` made for this test.
fn database_url(pool: &PgPool) -> String {
    let master = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let db = pool.connect_options().get_database().unwrap().to_string();
    let (base, _) = master.rsplit_once('/').unwrap();
    format!("{base}/{db}")
}

/// Kills the child if the test fails half-way, so no stray service holds the test database.
struct Guard(Option<std::process::Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start the real binary on `http_port` against `broker` and this test's database, with the
/// settings every run shares plus `settings`; killed when the guard drops.
fn service(
    pool: &PgPool,
    broker: &Broker,
    http_port: u16,
    name: &str,
    settings: &[(&str, String)],
) -> Guard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetwatch"));
    configure(&mut cmd, pool, broker, http_port, name, settings);
    Guard(Some(cmd.spawn().unwrap()))
}

/// Like [`service`], with soft and hard open-files limits of `nofile` (util-linux `prlimit`
/// sets them and executes the binary in its place).
fn service_with_nofile(
    pool: &PgPool,
    broker: &Broker,
    http_port: u16,
    name: &str,
    settings: &[(&str, String)],
    nofile: u64,
) -> Guard {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg(env!("CARGO_BIN_EXE_fleetwatch"));
    configure(&mut cmd, pool, broker, http_port, name, settings);
    Guard(Some(cmd.spawn().unwrap()))
}

fn configure(
    cmd: &mut Command,
    pool: &PgPool,
    broker: &Broker,
    http_port: u16,
    name: &str,
    settings: &[(&str, String)],
) {
    cmd.arg("serve")
        .env("DATABASE_URL", database_url(pool))
        .env("FLEETWATCH_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("FLEETWATCH_MQTT_URL", broker.url())
        .env("FLEETWATCH_API_TOKEN", TOKEN)
        .env(
            "FLEETWATCH_INSTANCE_ID",
            format!("{name}-{}", std::process::id()),
        )
        .env("RUST_LOG", "warn")
        // The service logs to stdout: shown only when asked, like the in-process tests.
        .stdout(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    for (k, v) in settings {
        cmd.env(k, v);
    }
}

/// Settings for second-scale detection.
fn fast(interval: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FLEETWATCH_FLUSH_INTERVAL", "200ms".into()),
        ("FLEETWATCH_EXPECTED_INTERVAL", interval.into()),
        ("FLEETWATCH_GRACE", "1s".into()),
        ("FLEETWATCH_TICK", "250ms".into()),
        ("FLEETWATCH_CANARY_INTERVAL", "250ms".into()),
        ("FLEETWATCH_CANARY_TIMEOUT", "2s".into()),
    ]
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_binary_ingests_serves_and_stops_cleanly(pool: PgPool) {
    let broker = Broker::start().await;
    let http_port = free_port();
    let mut guard = service(
        &pool,
        &broker,
        http_port,
        "e2e",
        &[
            (
                "FLEETWATCH_TELEMETRY_TOPICS",
                "dt/+/impressions,dt/+/heartbeat".into(),
            ),
            ("FLEETWATCH_FLUSH_INTERVAL", "200ms".into()),
            ("FLEETWATCH_EXPECTED_INTERVAL", "2s".into()),
            ("FLEETWATCH_GRACE", "1s".into()),
        ],
    );
    let api = api(&format!("http://127.0.0.1:{http_port}"));
    eventually(
        30,
        "binary serves /healthz with a connected broker",
        || async {
            let r = api.http.get(format!("{}/healthz", api.base)).send().await;
            match r {
                Ok(r) => {
                    r.json::<serde_json::Value>().await.unwrap()["mqtt"]["all_connected"] == true
                }
                Err(_) => false,
            }
        },
    )
    .await;

    // 401 without the token
    let r = api
        .http
        .get(format!("{}/api/v1/devices", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    let mut p = Publisher::connect(broker.port, "e2e-sim").await;
    let t0 = Utc::now() - TimeDelta::minutes(5);
    let at = |m: i64| ms(t0 + TimeDelta::minutes(m));
    // out of order and duplicated, as AWS delivers them
    let script = [
        (
            "disconnected",
            disconnected("lobby-7", at(2), "a", 5, "DUPLICATE_CLIENTID"),
        ),
        (
            "connected",
            connected("lobby-7", at(1), "a", 5, "203.0.113.5"),
        ),
        (
            "connected",
            connected("lobby-7", at(3), "b", 6, "203.0.113.6"),
        ),
        (
            "disconnected",
            disconnected("lobby-7", at(2), "a", 5, "DUPLICATE_CLIENTID"),
        ),
        (
            "connect_failed",
            connect_failed("scanner-1", at(1), "AUTH_ERROR"),
        ),
    ];
    for (kind, payload) in &script {
        let client = if *kind == "connect_failed" {
            "scanner-1"
        } else {
            "lobby-7"
        };
        p.publish(&presence_topic(kind, client), payload.clone())
            .await;
    }
    p.publish(
        "dt/lobby-7/impressions",
        format!(r#"{{"timestamp":{}}}"#, at(4)),
    )
    .await;
    p.publish("dt/lobby-8/heartbeat", b"{}".to_vec()).await;
    p.publish("dt/lobby-7/impressions", b"{{{{garbage".to_vec())
        .await;
    p.flush().await;

    eventually(10, "lobby-7 connected with its impressions", || async {
        let (s, d) = api.get("/api/v1/devices/lobby-7").await;
        s == 200 && d["connected"] == true && d["last_impression_at"].is_string()
    })
    .await;
    let d = api.get("/api/v1/devices/lobby-7").await.1;
    assert_eq!(d["last_ip"], "203.0.113.6");
    assert_eq!(d["last_disconnect_reason"], "DUPLICATE_CLIENTID");
    assert_eq!(d["state"], "healthy");
    // the second filter counts too
    eventually(10, "second topic ingested", || async {
        api.get("/api/v1/devices/lobby-8").await.0 == 200
    })
    .await;
    // connect_failed never creates a device
    assert_eq!(api.get("/api/v1/devices/scanner-1").await.0, 404);
    let (_, list) = api.get("/api/v1/devices?limit=1").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(list["next_cursor"].is_string());

    let metrics = api.text("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            r#"fleetwatch_ingest_dropped_total{reason="malformed_json"}"#
        ),
        1.0
    );
    assert_eq!(
        api.http
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // SIGTERM: exits 0, and what it held is flushed
    p.publish("dt/lobby-9/impressions", b"{}".to_vec()).await;
    p.flush().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut child = guard.0.take().unwrap();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let flushed: bool = sqlx::query_scalar(
        "select exists(select 1 from impressions_hourly where device_id = 'lobby-9')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(flushed);
}

#[test]
fn a_wrong_setting_stops_the_binary_with_the_key_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetwatch"))
        .arg("serve")
        .env("FLEETWATCH_GRACE", "a while")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FLEETWATCH_GRACE"), "{err}");
}

async fn beat(p: &mut Publisher, device: &str) {
    let payload = format!(r#"{{"timestamp":{}}}"#, ms(Utc::now()));
    p.publish(&format!("dt/{device}/impressions"), payload)
        .await;
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_binary_alerts_a_silent_device_within_a_tick_and_resolves_it(pool: PgPool) {
    let broker = Broker::start().await;
    let http_port = free_port();
    let mut settings = fast("2s");
    settings.push(("FLEETWATCH_DISCONNECT_GRACE", "3s".into()));
    let _guard = service(&pool, &broker, http_port, "e2e-det", &settings);
    let api = api(&format!("http://127.0.0.1:{http_port}"));
    eventually(30, "serving", || async {
        api.http
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .is_ok()
    })
    .await;

    let mut p = Publisher::connect(broker.port, "e2e-det-sim").await;
    // both beat for 3 s
    for _ in 0..12 {
        beat(&mut p, "steady").await;
        beat(&mut p, "crashy").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // crashy's player dies; steady keeps going
    let stopped = std::time::Instant::now();
    let mut alerted = None;
    while stopped.elapsed() < Duration::from_secs(10) {
        beat(&mut p, "steady").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_, alerts) = api.get("/api/v1/alerts?status=firing").await;
        if alerts["items"].as_array().is_some_and(|a| !a.is_empty()) {
            alerted = Some((stopped.elapsed(), alerts));
            break;
        }
    }
    let (after, alerts) = alerted.expect("crashy must be alerted");
    // due at 2 s + 0.2 s flush allowance + 1 s grace after its last data; one 250 ms tick late at most
    assert!(after >= Duration::from_millis(2900), "too early: {after:?}");
    assert!(after <= Duration::from_millis(4500), "too late: {after:?}");
    let items = alerts["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{alerts}");
    assert_eq!(items[0]["kind"], "heartbeat_gap");
    assert_eq!(items[0]["device_id"], "crashy");
    assert_eq!(items[0]["details"]["classification"], "silent");
    assert_eq!(items[0]["severity"], "error");
    let id = items[0]["id"].as_i64().unwrap();

    // it comes back
    beat(&mut p, "crashy").await;
    eventually(5, "resolved", || async {
        api.get(&format!("/api/v1/alerts/{id}")).await.1["status"] == "resolved"
    })
    .await;
    let (_, alert) = api.get(&format!("/api/v1/alerts/{id}")).await;
    let trail: Vec<&str> = alert["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(trail, ["opened", "resolved"]);
    let (_, summary) = api.get("/api/v1/fleet/summary").await;
    assert_eq!(summary["devices"], 2);
    assert_eq!(summary["firing_alerts"], 0, "{summary}");
    // the canary kept ingest healthy all along: no ingest_down
    let (_, all) = api.get("/api/v1/alerts?kind=ingest_down").await;
    assert!(all["items"].as_array().unwrap().is_empty(), "{all}");
}

/// What the receiver got: (headers of interest, body).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String, serde_json::Value)>>>;

async fn receiver(port: u16, got: Received) -> tokio::task::JoinHandle<()> {
    use axum::http::HeaderMap;
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let got = got.clone();
            async move {
                let h = |k: &str| {
                    headers
                        .get(k)
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default()
                };
                let sig = h("fleetwatch-signature");
                let delivery = h("fleetwatch-delivery");
                // verify as a receiver would: HMAC-SHA256 of "<t>.<body>"
                use hmac::Mac;
                let t = sig
                    .split(',')
                    .find_map(|p| p.strip_prefix("t="))
                    .unwrap_or("")
                    .to_string();
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"e2e-secret").unwrap();
                mac.update(format!("{t}.{body}").as_bytes());
                let expected = hex::encode(mac.finalize().into_bytes());
                let ok = sig.split(',').any(|p| p == format!("v1={expected}"));
                let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                got.lock()
                    .unwrap()
                    .push((delivery, if ok { "valid".into() } else { sig }, json));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() })
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_binary_notifies_a_receiver_that_was_down_signed_and_in_order(pool: PgPool) {
    let broker = Broker::start().await;
    let http_port = free_port();
    let hook_port = free_port();
    let mut settings = fast("1s");
    settings.extend([
        (
            "FLEETWATCH_WEBHOOK_URL",
            format!("http://127.0.0.1:{hook_port}/hook"),
        ),
        ("FLEETWATCH_WEBHOOK_SECRET", "e2e-secret".into()),
        ("FLEETWATCH_WEBHOOK_GROUP_WAIT", "500ms".into()),
        ("FLEETWATCH_WEBHOOK_BACKOFF_MIN", "300ms".into()),
    ]);
    let _guard = service(&pool, &broker, http_port, "e2e-hook", &settings);
    let api = api(&format!("http://127.0.0.1:{http_port}"));
    eventually(30, "serving", || async {
        api.http
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .is_ok()
    })
    .await;
    let mut p = Publisher::connect(broker.port, "e2e-hook-sim").await;
    for _ in 0..6 {
        beat(&mut p, "lobby-1").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // lobby-1 goes silent while the receiver is down
    eventually(10, "alert fires", || async {
        let (_, a) = api.get("/api/v1/alerts?status=firing").await;
        a["items"].as_array().is_some_and(|i| !i.is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, deliveries) = api.get("/api/v1/webhooks/deliveries").await;
    let attempts = deliveries["items"][0]["attempts"].as_i64().unwrap_or(0);
    assert!(
        attempts >= 1,
        "tried while the receiver was down: {deliveries}"
    );
    // the receiver comes back
    let got: Received = Default::default();
    let server = receiver(hook_port, got.clone()).await;
    eventually(15, "firing delivered", || async {
        !got.lock().unwrap().is_empty()
    })
    .await;
    // lobby-1 comes back
    beat(&mut p, "lobby-1").await;
    eventually(15, "resolution delivered", || async {
        got.lock().unwrap().len() >= 2
    })
    .await;
    let got = got.lock().unwrap().clone();
    server.abort();
    let events: Vec<&str> = got
        .iter()
        .map(|(_, _, b)| b["event"].as_str().unwrap())
        .collect();
    assert_eq!(&events[..2], ["alert.firing", "alert.resolved"], "in order");
    for (delivery, sig, body) in &got {
        assert_eq!(sig, "valid", "signature verifies");
        assert_eq!(delivery, body["delivery_id"].as_str().unwrap());
        assert_eq!(body["alert"]["device_id"], "lobby-1");
    }
    assert_ne!(got[0].0, got[1].0, "one delivery id per notification");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn under_1024_descriptors_1500_idle_sockets_starve_neither_health_nor_ingest(pool: PgPool) {
    // This test holds 1,600 sockets itself.
    let own = fleetwatch::http::server::raise_open_files_limit().unwrap();
    assert!(
        own.soft >= 2048,
        "the test needs an open-files hard limit of at least 2048: {own:?}"
    );
    let mut broker = Broker::start().await;
    let http_port = free_port();
    let _guard = service_with_nofile(
        &pool,
        &broker,
        http_port,
        "e2e-fd",
        &[
            ("FLEETWATCH_FLUSH_INTERVAL", "200ms".into()),
            ("FLEETWATCH_HTTP_HEADER_READ_TIMEOUT", "2s".into()),
        ],
        1024,
    );
    let api = api(&format!("http://127.0.0.1:{http_port}"));
    let health = || async {
        let r = api
            .http
            .get(format!("{}/healthz", api.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.json::<serde_json::Value>().await.ok()
    };
    eventually(30, "serving with the broker connected", || async {
        health()
            .await
            .is_some_and(|h| h["mqtt"]["all_connected"] == true)
    })
    .await;
    let h = health().await.unwrap();
    assert_eq!(h["http"]["open_files_limit"], 1024, "{h}");
    let cap = h["http"]["max_connections"].as_i64().unwrap();
    assert!((64..1024).contains(&cap), "{h}");

    // 1,500 idle sockets (idle timeout: the default minute), then 100 half-open requests
    let addr = format!("127.0.0.1:{http_port}");
    let mut idle = Vec::new();
    for _ in 0..1500 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut half_open = Vec::new();
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        half_open.push(s);
    }
    // each watched from now on: when does the server close it?
    let opened = std::time::Instant::now();
    let half_open: Vec<_> = half_open
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::io::AsyncReadExt::read(&mut s, &mut buf),
                )
                .await;
                (opened.elapsed(), matches!(r, Ok(Ok(0)) | Ok(Err(_))))
            })
        })
        .collect();

    // /healthz answers at once
    let h = health().await.expect("/healthz answers during the flood");
    assert_eq!(h["status"], "ok");
    assert!(h["http"]["connections"].as_i64().unwrap() <= cap, "{h}");

    // ingest continues, through a broker restart: MQTT can reconnect
    let mut p = Publisher::connect(broker.port, "e2e-fd-sim").await;
    beat(&mut p, "during-flood").await;
    p.flush().await;
    broker.restart().await;
    eventually(20, "MQTT reconnected during the flood", || async {
        health().await.is_some_and(|h| {
            h["mqtt"]["connections"][0]["reconnects"].as_u64() >= Some(1)
                && h["mqtt"]["all_connected"] == true
        })
    })
    .await;
    let mut p = Publisher::connect(broker.port, "e2e-fd-sim2").await;
    beat(&mut p, "after-restart").await;
    p.flush().await;
    eventually(10, "both impressions stored", || async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from devices where id in ('during-flood', 'after-restart') \
             and last_impression_at is not null",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        n == 2
    })
    .await;
    // and the API reads them back
    assert_eq!(api.get("/api/v1/devices/after-restart").await.0, 200);

    // every half-open request was closed within the header-read timeout (2 s, plus slack)
    for watcher in half_open {
        let (after, closed) = watcher.await.unwrap();
        assert!(closed, "a half-open request got an answer or stayed open");
        assert!(
            after <= Duration::from_millis(3500),
            "a half-open request was closed only {after:?} after it began"
        );
    }
    let metrics = api.text("/metrics").await;
    assert_eq!(metric(&metrics, "fleetwatch_http_accept_errors_total"), 0.0);
    assert!(
        metric(
            &metrics,
            r#"fleetwatch_http_connections_closed_total{reason="evicted"}"#
        ) > 0.0
    );
    drop(idle);
}

/// With `FLEETWATCH_AWS_ENABLED=true` and `AWS_ENDPOINT_URL_IOT` at a moto holding things in
/// groups, the binary lists the registry at start: the devices are there, in their groups and
/// `never_seen`, before any of them reports; `/healthz` shows the inventory poller. CloudWatch
/// at a LocalStack polls beside it: both pollers succeed and our own alert stays quiet.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_binary_knows_the_registry_before_any_report(pool: PgPool) {
    let moto = common::aws::AwsServer::moto().await;
    let iot = aws_sdk_iot::Client::new(&moto.sdk_config());
    iot.create_thing_group()
        .thing_group_name("lobby-7")
        .send()
        .await
        .unwrap();
    for n in ["screen-1", "screen-2", "screen-3"] {
        iot.create_thing().thing_name(n).send().await.unwrap();
    }
    for n in ["screen-1", "screen-2"] {
        iot.add_thing_to_thing_group()
            .thing_group_name("lobby-7")
            .thing_name(n)
            .send()
            .await
            .unwrap();
    }
    let home = tempfile::tempdir().unwrap();
    let broker = Broker::start().await;
    let http_port = free_port();
    let mut settings: Vec<(&str, String)> = vec![
        ("FLEETWATCH_AWS_ENABLED", "true".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        (
            "AWS_CONFIG_FILE",
            home.path().join("config").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            home.path().join("credentials").display().to_string(),
        ),
    ];
    // Both AWS pollers, each at its own server: the registry at moto, CloudWatch at LocalStack
    // (an empty namespace of its own: polls that succeed and find nothing).
    let ls = common::aws::AwsServer::localstack().await;
    let mut env = moto.env();
    env.extend(ls.env());
    env.push((
        "FLEETWATCH_CLOUDWATCH_NAMESPACE".into(),
        format!("Test/e2e-inv/{}", std::process::id()),
    ));
    env.push(("FLEETWATCH_CLOUDWATCH_POLL".into(), "1s".into()));
    for (k, v) in &env {
        settings.push((k.as_str(), v.clone()));
    }
    let _guard = service(&pool, &broker, http_port, "e2e-inv", &settings);
    let api = api(&format!("http://127.0.0.1:{http_port}"));
    eventually(30, "the registry's devices listed", || async {
        match api.http.get(format!("{}/readyz", api.base)).send().await {
            Ok(_) => api.get("/api/v1/devices").await.1["items"]
                .as_array()
                .is_some_and(|a| a.len() == 3),
            Err(_) => false,
        }
    })
    .await;
    let (_, devices) = api.get("/api/v1/devices").await;
    let got: Vec<(String, serde_json::Value, String)> = devices["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["group"].clone(),
                d["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("screen-1".into(), "lobby-7".into(), "never_seen".into()),
            ("screen-2".into(), "lobby-7".into(), "never_seen".into()),
            (
                "screen-3".into(),
                serde_json::Value::Null,
                "never_seen".into()
            ),
        ]
    );
    let (_, health) = api.get("/healthz").await;
    let inv = &health["aws"]["pollers"]["inventory"];
    assert!(inv["last_success"].is_string(), "{health}");
    assert_eq!(inv["failing"], false, "{health}");
    eventually(30, "the CloudWatch poller succeeded too", || async {
        let (_, h) = api.get("/healthz").await;
        h["aws"]["pollers"]["cloudwatch"]["last_success"].is_string()
    })
    .await;
    let (_, alerts) = api.get("/api/v1/alerts?kind=aws_poll_failing").await;
    assert_eq!(alerts["items"], serde_json::json!([]), "{alerts}");
}

/// The real binary with the AWS pollers on, CloudWatch at a LocalStack holding a seeded
/// namespace: discovery and polling run on the leader and samples arrive in the database.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_binary_polls_cloudwatch_into_the_database(pool: PgPool) {
    let ls = common::aws::AwsServer::localstack().await;
    let seed = aws_sdk_cloudwatch::Client::new(&ls.sdk_config());
    let namespace = format!("Test/e2e/{}", std::process::id());
    let at = Utc::now() - TimeDelta::minutes(5);
    for (name, value) in [("Connect.ClientIDThrottle", 3.0), ("Connect.Success", 50.0)] {
        seed.put_metric_data()
            .namespace(&namespace)
            .metric_data(
                aws_sdk_cloudwatch::types::MetricDatum::builder()
                    .metric_name(name)
                    .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                        at.timestamp(),
                    ))
                    .value(value)
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    let broker = Broker::start().await;
    let http_port = free_port();
    let mut settings = fast("2s");
    settings.push(("FLEETWATCH_AWS_ENABLED", "true".into()));
    settings.push(("FLEETWATCH_CLOUDWATCH_POLL", "1s".into()));
    settings.push(("FLEETWATCH_CLOUDWATCH_NAMESPACE", namespace.clone()));
    // No IoT server here: the registry side stays off (the test above runs both).
    settings.push(("FLEETWATCH_INVENTORY_ENABLED", "false".into()));
    let env = ls.env();
    for (k, v) in &env {
        settings.push((k.as_str(), v.clone()));
    }
    let _guard = service(&pool, &broker, http_port, "e2e-cw", &settings);
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    eventually(60, "CloudWatch samples in the database", || {
        let (pool, got) = (pool.clone(), got.clone());
        async move {
            let rows: Vec<(String, f64)> = sqlx::query_as(
                "select m.metric_name, s.value from cloudwatch_samples s \
                 join cloudwatch_metrics m on m.id = s.metric_id",
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            let found = !rows.is_empty();
            *got.lock().unwrap() = rows;
            found
        }
    })
    .await;
    assert_eq!(
        *got.lock().unwrap(),
        vec![("Connect.ClientIDThrottle".to_string(), 3.0)],
        "the throttle metric only"
    );
    let api = api(&format!("http://127.0.0.1:{http_port}"));
    // The poll's record is written when the poll returns, just after its samples.
    eventually(10, "/healthz shows the poller's success", || async {
        let (_, h) = api.get("/healthz").await;
        h["aws"]["pollers"]["cloudwatch"]["last_success"].is_string()
    })
    .await;
}

/// Credentials that do not work, as the real binary meets them: the IoT endpoint refuses every
/// call (`403 AccessDeniedException`) and the CloudWatch endpoint is down. After
/// `aws.failures_before_alert` polls each, exactly one alert is open, our own
/// `aws_poll_failing`, naming both pollers and the cause; `/healthz` shows them failing;
/// nothing else is raised (no device alert, no ingest alert).
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn refused_credentials_raise_our_own_alert_and_nothing_else(pool: PgPool) {
    use axum::response::IntoResponse;
    let iot = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let iot_url = format!("http://{}", iot.local_addr().unwrap());
    tokio::spawn(async move {
        let refuse = axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::FORBIDDEN,
                [
                    ("x-amzn-ErrorType", "AccessDeniedException"),
                    ("content-type", "application/json"),
                ],
                r#"{"message":"User: arn:aws:iam::123456789012:user/ops is not authorized to perform: iot:ListThings"}"#,
            )
                .into_response()
        });
        axum::serve(iot, refuse).await.unwrap();
    });
    let closed = format!("http://127.0.0.1:{}", free_port());
    let home = tempfile::tempdir().unwrap();
    let broker = Broker::start().await;
    let http_port = free_port();
    let mut settings = fast("1h");
    settings.extend([
        ("FLEETWATCH_AWS_ENABLED", "true".into()),
        ("FLEETWATCH_CLOUDWATCH_POLL", "1s".into()),
        ("FLEETWATCH_INVENTORY_SYNC", "1s".into()),
        ("AWS_ENDPOINT_URL_IOT", iot_url),
        ("AWS_ENDPOINT_URL_CLOUDWATCH", closed),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "AKIAEXPIRED".into()),
        ("AWS_SECRET_ACCESS_KEY", "expired".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        (
            "AWS_CONFIG_FILE",
            home.path().join("config").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            home.path().join("credentials").display().to_string(),
        ),
    ]);
    let _guard = service(&pool, &broker, http_port, "e2e-denied", &settings);
    let api = api(&format!("http://127.0.0.1:{http_port}"));
    let mut p = Publisher::connect(broker.port, "screen-ok").await;
    eventually(30, "the binary serving", || async {
        api.http
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .is_ok()
    })
    .await;
    // The device keeps reporting throughout: its health must not depend on AWS.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        beat(&mut p, "screen-ok").await;
        let (_, body) = api.get("/api/v1/alerts?kind=aws_poll_failing").await;
        let named_both = body["items"].as_array().is_some_and(|a| {
            a.len() == 1
                && a[0]["details"]["pollers"]["inventory"].is_object()
                && a[0]["details"]["pollers"]["cloudwatch"].is_object()
        });
        if named_both {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no aws_poll_failing naming both pollers within 60 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, all) = api.get("/api/v1/alerts").await;
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only our own alert: {all}");
    let a = &items[0];
    assert_eq!(
        (
            a["kind"].as_str(),
            a["device_id"].is_null(),
            a["status"].as_str()
        ),
        (Some("aws_poll_failing"), true, Some("firing"))
    );
    let inventory_error = a["details"]["pollers"]["inventory"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        inventory_error.contains("AccessDenied"),
        "the cause is named: {a}"
    );
    let (_, h) = api.get("/healthz").await;
    for poller in ["inventory", "cloudwatch"] {
        assert_eq!(h["aws"]["pollers"][poller]["failing"], true, "{h}");
    }
    let (_, device) = api.get("/api/v1/devices/screen-ok").await;
    assert_eq!(
        device["state"], "healthy",
        "the fleet is not blamed: {device}"
    );
}
