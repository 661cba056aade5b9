//! Three replicas on one database and one broker (issue 12, item 7), as ARCHITECTURE.md's
//! production deployment runs them: telemetry spread over the replicas by shared subscriptions,
//! presence on every replica (each stores every event; the natural key makes the copies
//! duplicates), one detector leader by the advisory lock, a webhook worker on each.
//!
//! The story, on second-scale settings: a building's screens report; one goes silent (one
//! alert, one webhook); the leader is stopped and another replica leads within a tick plus the
//! lock's detection; presence events published while it is away are stored; a second screen
//! goes silent under the new leader (one alert, one webhook); the stopped replica comes back
//! and receives what its session queued. No alert is raised twice, no notification is sent
//! twice, no presence event is lost.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::post;
use chrono::{TimeDelta, Utc};
use common::*;
use fleetwatch::app::App;
use fleetwatch::config::{Config, HumanDuration, WebhookConfig};
use sqlx::PgPool;

/// Deliveries by `Fleetwatch-Delivery` id, with the body of the first.
type Deliveries = Arc<Mutex<HashMap<String, (usize, String)>>>;

async fn receiver() -> (String, Deliveries) {
    let got: Deliveries = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let id = headers
                    .get("fleetwatch-delivery")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_string();
                let mut seen = seen.lock().unwrap();
                seen.entry(id).or_insert((0, body)).0 += 1;
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn replica_config(broker: &Broker, hook: &str) -> Config {
    let mut cfg = config(broker);
    cfg.mqtt.connections = 2;
    cfg.telemetry.flush_interval = HumanDuration(Duration::from_millis(200));
    cfg.detector.tick = HumanDuration(Duration::from_millis(500));
    cfg.detector.expected_interval = HumanDuration(Duration::from_secs(1));
    cfg.detector.grace = HumanDuration(Duration::from_secs(1));
    cfg.webhooks = vec![WebhookConfig {
        name: Some("oncall".into()),
        url: hook.into(),
        group_wait: HumanDuration(Duration::from_millis(200)),
        send_reminders: false,
        ..WebhookConfig::default()
    }];
    cfg
}

/// A replica, connected: its own pool on the test's database, as a separate process would have.
async fn replica(cfg: &Config, pool: &PgPool) -> App {
    let own = fleetwatch::db::connect(&common::web::database_url(pool), 8)
        .await
        .unwrap();
    start_app(&own, cfg.clone()).await
}

fn is_leader(app: &App) -> bool {
    app.tasks.leadership().is_some_and(|l| l.is_leader())
}

fn received(app: &App, kind: &str) -> f64 {
    metric(
        &app.state.metrics.render(),
        &format!("fleetwatch_mqtt_messages_received_total{{kind=\"{kind}\"}}"),
    )
}

async fn firing_webhooks(got: &Deliveries, device: &str) -> Vec<usize> {
    got.lock()
        .unwrap()
        .values()
        .filter(|(_, body)| {
            body.contains("alert.firing") && body.contains(&format!("\"{device}\""))
        })
        .map(|(n, _)| *n)
        .collect()
}

async fn alerts_of(pool: &PgPool, device: &str) -> i64 {
    sqlx::query_scalar("select count(*) from alerts where kind = 'heartbeat_gap' and subject = $1")
        .bind(device)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn presence_stored(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from presence_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn three_replicas_one_leader_failover_nothing_twice_nothing_lost(pool: PgPool) {
    let broker = Broker::start_with(true).await;
    let (hook, got) = receiver().await;
    let configs: Vec<Config> = (0..3).map(|_| replica_config(&broker, &hook)).collect();
    let mut replicas: Vec<Option<App>> = Vec::new();
    for cfg in &configs {
        replicas.push(Some(replica(cfg, &pool).await));
    }
    eventually(10, "one leader", || async {
        replicas.iter().flatten().filter(|a| is_leader(a)).count() == 1
    })
    .await;

    // Ten screens report every 200 ms; `quiet` stops the ones that went silent.
    let mut p = Publisher::connect(broker.port, "replicas-pub").await;
    let screens: Vec<String> = (0..10).map(|i| format!("screen-{i}")).collect();
    let mut silent: Vec<&str> = Vec::new();
    let report = async |p: &mut Publisher, silent: &[&str], rounds: usize| {
        for _ in 0..rounds {
            let now = ms(Utc::now());
            for s in screens.iter().filter(|s| !silent.contains(&s.as_str())) {
                p.publish(
                    &format!("dt/{s}/impressions"),
                    format!(r#"{{"timestamp":{now},"count":1}}"#),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    report(&mut p, &silent, 10).await;
    // telemetry spread by the shared subscription: every replica took part
    for (i, a) in replicas.iter().flatten().enumerate() {
        assert!(
            received(a, "telemetry") > 0.0,
            "replica {i} received no telemetry"
        );
    }

    // 1. screen-0 goes silent: one alert, one webhook
    silent.push("screen-0");
    report(&mut p, &silent, 20).await;
    assert_eq!(alerts_of(&pool, "screen-0").await, 1);
    eventually(10, "screen-0's webhook", || async {
        firing_webhooks(&got, "screen-0").await.len() == 1
    })
    .await;

    // 2. the leader stops; another leads within a tick plus the lock's detection
    let leader = replicas
        .iter()
        .position(|a| a.as_ref().is_some_and(is_leader))
        .unwrap();
    let t = Instant::now();
    replicas[leader].take().unwrap().shutdown().await.unwrap();
    let stopped = t.elapsed();
    eventually(10, "a new leader", || async {
        replicas.iter().flatten().filter(|a| is_leader(a)).count() == 1
    })
    .await;
    let takeover = t.elapsed() - stopped;
    assert!(
        takeover <= Duration::from_millis(500 + 1500),
        "took over {takeover:?} after the leader stopped (tick 500 ms)"
    );

    // presence while the old leader is away: a disconnect and a reconnect of screen-5
    let before = presence_stored(&pool).await;
    let t0 = ms(Utc::now() - TimeDelta::seconds(1));
    p.publish(
        &presence_topic("disconnected", "screen-5"),
        disconnected("screen-5", t0, "s1", 1, "CONNECTION_LOST"),
    )
    .await;
    p.publish(
        &presence_topic("connected", "screen-5"),
        connected("screen-5", t0 + 500, "s2", 2, "192.0.2.5"),
    )
    .await;
    p.flush().await;

    // 3. screen-1 goes silent under the new leader: one alert, one webhook
    silent.push("screen-1");
    report(&mut p, &silent, 20).await;
    assert_eq!(alerts_of(&pool, "screen-1").await, 1);
    eventually(10, "screen-1's webhook", || async {
        firing_webhooks(&got, "screen-1").await.len() == 1
    })
    .await;

    // 4. the stopped replica is back (same client IDs: its persistent session kept what
    // arrived meanwhile) and receives the presence events it missed
    let presence_before = 0.0;
    let back = replica(&configs[leader], &pool).await;
    eventually(
        10,
        "the stopped replica received what its session queued",
        || async { received(&back, "presence") > presence_before },
    )
    .await;
    replicas[leader] = Some(back);
    assert_eq!(
        presence_stored(&pool).await - before,
        2,
        "each presence event stored once, by whichever replica came first"
    );
    let connected_now: (bool, String) =
        sqlx::query_as("select connected, conn_session from devices where id = 'screen-5'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(connected_now, (true, "s2".to_string()));
    report(&mut p, &silent, 5).await;
    assert_eq!(
        replicas.iter().flatten().filter(|a| is_leader(a)).count(),
        1,
        "still one leader with the old one back"
    );

    // nothing twice: one alert each, every notification delivered once
    assert_eq!(alerts_of(&pool, "screen-0").await, 1);
    assert_eq!(alerts_of(&pool, "screen-1").await, 1);
    let alerts: i64 = sqlx::query_scalar("select count(*) from alerts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        alerts, 2,
        "no other alert (the failover is no outage of ours)"
    );
    for (id, (n, _)) in got.lock().unwrap().iter() {
        assert_eq!(*n, 1, "delivery {id} arrived {n} times");
    }
    let sent: i64 =
        sqlx::query_scalar("select count(*) from notifications where status = 'delivered'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(sent as usize, got.lock().unwrap().len());

    for a in replicas.into_iter().flatten() {
        a.shutdown().await.unwrap();
    }
}
