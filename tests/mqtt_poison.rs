//! Poison messages and reconnect storms, through real Mosquitto brokers into real Postgres: no
//! message of any size the broker carries may stop ingest, and no failure mode may make us
//! reconnect at a fixed fast rate (AWS IoT Core allows one CONNECT per second per client ID).

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use fleetwatch::app::App;
use fleetwatch::config::HumanDuration;
use fleetwatch::domain::DropReason;
use sqlx::PgPool;

const KB: usize = 1024;

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Ordinary messages queued behind a poison message: `n` devices with an impression each and
/// `n` devices with a connect event each, named after `tag`.
async fn ordinary(p: &mut Publisher, tag: &str, n: usize) {
    let now = ms(Utc::now());
    for i in 0..n {
        p.publish(
            &format!("dt/ok-{tag}-{i}/impressions"),
            format!(r#"{{"timestamp":{now}}}"#),
        )
        .await;
        let client = format!("okp-{tag}-{i}");
        p.publish(
            &presence_topic("connected", &client),
            connected(&client, now, "s", 1, "192.0.2.7"),
        )
        .await;
    }
}

/// Wait until every ordinary message published so far (`expected` of each kind) is stored.
async fn all_ordinary_stored(pool: &PgPool, expected: i64) {
    eventually(20, "every ordinary message stored", || async {
        count(
            pool,
            "select count(*) from devices where id like 'ok-%' and last_impression_at is not null",
        )
        .await
            == expected
            && count(
                pool,
                "select count(distinct client_id) from presence_events where client_id like 'okp-%'",
            )
            .await
                == expected
    })
    .await;
}

fn oversized(app: &App) -> u64 {
    app.state.metrics.dropped_count(DropReason::Oversized)
}

/// The issue's case: 300 KB and 10 MB messages, at QoS 0 and 1, on telemetry and presence
/// topics, each followed by ordinary messages, while we are connected. Before the fix the first
/// 300 KB message made the client drop the connection and the broker redeliver it, for ever.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn poison_messages_are_dropped_and_everything_behind_them_is_stored(pool: PgPool) {
    let broker = Broker::start().await;
    let app = start_app(&pool, config(&broker)).await;
    let mut p = Publisher::connect(broker.port, "poisoner").await;

    let mut expected = 0;
    for size in [300 * KB, 10 * KB * KB] {
        for qos1 in [false, true] {
            for topic in [
                "dt/poison/impressions".to_string(),
                presence_topic("connected", "poison"),
            ] {
                let payload = vec![b'x'; size];
                if qos1 {
                    p.publish(&topic, payload).await;
                } else {
                    p.publish_qos0(&topic, payload).await;
                }
                ordinary(&mut p, &format!("{size}-{qos1}-{}", topic.len()), 2).await;
                expected += 2;
            }
        }
    }
    // Between our payload limit (128 KB) and the packet limit we announce: received, skipped
    // and counted by us.
    p.publish("dt/mid/impressions", vec![b'7'; 200 * KB]).await;
    p.publish(&presence_topic("connected", "mid"), vec![b' '; 200 * KB])
        .await;
    ordinary(&mut p, "after-mid", 2).await;
    expected += 2;
    p.flush().await;

    all_ordinary_stored(&pool, expected).await;
    // The two mid-sized ones were seen and counted; the larger ones never reached us.
    assert_eq!(oversized(&app), 2);
    assert_eq!(
        count(
            &pool,
            "select count(*) from devices where id in ('poison', 'mid')"
        )
        .await,
        0
    );
    let s = app.state.mqtt[0].snapshot();
    assert!(s.connected && s.reconnects == 0, "no reconnect: {s:?}");
    app.shutdown().await.unwrap();
}

/// Poison queued for our persistent session while we were away (QoS 1: the case a restart did
/// not cure): dropped by the broker on delivery, and the session, with everything queued
/// behind the poison, survives our disconnect.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn poison_queued_for_our_session_while_away_does_not_wedge_the_restart(pool: PgPool) {
    let broker = Broker::start().await;
    let cfg = config(&broker);
    let app = start_app(&pool, cfg.clone()).await;
    app.shutdown().await.unwrap();

    let mut p = Publisher::connect(broker.port, "poisoner").await;
    for size in [300 * KB, 10 * KB * KB] {
        p.publish("dt/poison/impressions", vec![b'x'; size]).await;
        p.publish(&presence_topic("connected", "poison"), vec![b'x'; size])
            .await;
        ordinary(&mut p, &size.to_string(), 3).await;
    }
    p.flush().await;

    // Same configuration, so the same client IDs: only the kept session can deliver these.
    let app = start_app(&pool, cfg).await;
    all_ordinary_stored(&pool, 6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = app.state.mqtt[0].snapshot();
    assert!(s.connected && s.reconnects == 0, "no reconnect: {s:?}");
    assert_eq!(oversized(&app), 0, "the broker dropped them, unseen");
    app.shutdown().await.unwrap();
}

/// Collects what a `tracing` subscriber writes, for asserting on log lines.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A device spewing oversized messages gets one warning per period, like every other kind of
/// bad input, not one line per message.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_oversized_warning_is_rate_limited(pool: PgPool) {
    let broker = Broker::start().await;
    let cfg = config(&broker);
    let logs = Captured::default();
    let writer = logs.clone();
    // The test runtime is single-threaded, so every task of the service logs through this.
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let app = start_app(&pool, cfg).await;
    let mut p = Publisher::connect(broker.port, "spewer").await;
    for _ in 0..20 {
        p.publish("dt/spewer/impressions", vec![b'7'; 200 * KB])
            .await;
    }
    p.flush().await;
    eventually(10, "all counted", || async { oversized(&app) == 20 }).await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines = text.lines().filter(|l| l.contains("oversized")).count();
    assert_eq!(lines, 1, "{text}");
    app.shutdown().await.unwrap();
}

/// Two replicas misconfigured with one instance id share client IDs and take each other's
/// connection over every time one connects. Every connection succeeds, briefly: if a
/// successful CONNACK reset the backoff, both would reconnect at `backoff_min` for ever.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_connection_that_keeps_being_taken_over_backs_off(pool: PgPool) {
    let broker = Broker::start().await;
    let mut a = config(&broker);
    a.mqtt.backoff_min = HumanDuration(Duration::from_millis(100));
    a.mqtt.backoff_max = HumanDuration(Duration::from_secs(2));
    let mut b = a.clone();
    b.mqtt.instance_id = a.mqtt.instance_id.clone();
    let app_a = start_app(&pool, a).await;
    let app_b = App::build_with_pool(b, pool.clone(), system_clock())
        .await
        .unwrap();
    let losses =
        || app_a.state.mqtt[0].snapshot().reconnects + app_b.state.mqtt[0].snapshot().reconnects;
    eventually(5, "the two take each other over", || async {
        losses() >= 2
    })
    .await;
    // Give the backoff time to grow, then measure the steady rate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = losses();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = losses() - before;
    // With the backoff grown to 1-2 s each, at most a handful in 2 s; at backoff_min
    // (100 ms) it would be about forty.
    assert!(during <= 6, "{during} takeovers in 2 s");
    app_a.shutdown().await.unwrap();
    app_b.shutdown().await.unwrap();
}
