//! Group time zones and quiet hours reach the detector parsed once (issue 8, part 4): a
//! configured group's values are those parsed at load, whatever its stored row says; a stored
//! group's unusable values are an explicit, counted decision, not a silent fallback.

use chrono::{DateTime, TimeDelta, Utc};
use fleetwatch::config::{Config, GroupConfig};
use fleetwatch::detect::{Detector, Settings};
use fleetwatch::domain::identity::Identity;
use fleetwatch::ingest::health::IngestStatus;
use sqlx::PgPool;

/// 02:00 in Tokyo: inside its quiet hours.
fn night() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-27T17:00:00Z")
        .unwrap()
        .to_utc()
}

async fn device(pool: &PgPool, id: &str, group: &str) {
    sqlx::query(
        r#"insert into devices (id, group_id, state, connected, last_impression_at, deadline_at)
           values ($1, $2, 'healthy', true, $3, $4)"#,
    )
    .bind(id)
    .bind(group)
    .bind(night() - TimeDelta::hours(3))
    .bind(night())
    .execute(pool)
    .await
    .unwrap();
}

async fn state(pool: &PgPool, id: &str) -> String {
    sqlx::query_scalar("select state from devices where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn configured_groups_use_their_parsed_values_and_stored_ones_fall_back_visibly(pool: PgPool) {
    let mut cfg = Config::default();
    cfg.groups.insert(
        "tokyo".into(),
        GroupConfig {
            time_zone: Some("Asia/Tokyo".parse().unwrap()),
            quiet_hours: Some("00:30-05:30".parse().unwrap()),
            ..Default::default()
        },
    );
    fleetwatch::db::devices::sync_config(&pool, &cfg, &Identity::from_config(&cfg))
        .await
        .unwrap();
    // The stored row says otherwise (edited, or written by an older version): the
    // configuration, parsed at load, decides.
    sqlx::query("update groups set time_zone = 'UTC', quiet_hours = '' where id = 'tokyo'")
        .execute(&pool)
        .await
        .unwrap();
    // A group that is not configured, with values nobody can read.
    sqlx::query(
        r#"insert into groups (id, name, time_zone, quiet_hours, source)
           values ('lobby', 'lobby', 'Mars/Olympus', 'whenever', 'topic')"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    device(&pool, "tky-1", "tokyo").await;
    device(&pool, "lobby-1", "lobby").await;
    device(&pool, "lobby-2", "lobby").await;

    let d = Detector::new(
        pool.clone(),
        Settings::from_config(&cfg),
        TimeDelta::seconds(20),
    );
    // the service started hours ago
    d.tick(&IngestStatus::Healthy, night() - TimeDelta::hours(4))
        .await
        .unwrap();
    let out = d.tick(&IngestStatus::Healthy, night()).await.unwrap();
    assert_eq!(out.heartbeat.evaluated, 3, "{out:?}");
    assert_eq!(state(&pool, "tky-1").await, "quiet");
    // never quiet, in the fleet's time zone: the gap alerts, and the fallback is counted once
    // per group
    assert_eq!(state(&pool, "lobby-1").await, "silent");
    assert_eq!(state(&pool, "lobby-2").await, "silent");
    assert_eq!(out.heartbeat.unusable_group_settings, ["lobby"]);
    assert_eq!(out.heartbeat.opened.len(), 2, "{out:?}");
}
