//! The heartbeat detector's memory of an open gap (its classification and the baseline it is
//! measured from) lives in its own columns: what the API shows in `details` can be renamed or
//! reshaped without changing detection (issue 8, part 5).

use chrono::{DateTime, TimeDelta, Utc};
use fleetwatch::config::Config;
use fleetwatch::detect::{Detector, Settings};
use fleetwatch::ingest::health::IngestStatus;
use serde_json::Value;
use sqlx::PgPool;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-27T09:00:00Z")
        .unwrap()
        .to_utc()
}

fn min(n: i64) -> DateTime<Utc> {
    t0() + TimeDelta::minutes(n)
}

async fn tick(d: &Detector, pool: &PgPool, now: DateTime<Utc>) {
    // make the device due now, so that this tick looks at it
    sqlx::query("update devices set deadline_at = $1")
        .bind(now)
        .execute(pool)
        .await
        .unwrap();
    d.tick(&IngestStatus::Healthy, now).await.unwrap();
}

async fn alert(pool: &PgPool) -> (i64, String, Value) {
    sqlx::query_as("select id, status, details from alerts where kind = 'heartbeat_gap'")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn trail(pool: &PgPool, id: i64) -> Vec<String> {
    sqlx::query_scalar("select type from alert_events where alert_id = $1 order by id")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn renaming_the_api_fields_of_a_gap_changes_no_decision(pool: PgPool) {
    let d = Detector::new(
        pool.clone(),
        Settings::from_config(&Config::default()),
        TimeDelta::seconds(20),
    );
    // the service starts (a restart point) with a device that stopped sending at -40m and
    // dropped off at -30m
    sqlx::query(
        r#"insert into devices (id, state, connected, conn_event_ts, conn_received_at,
               last_impression_at, last_device_ts)
           values ('a', 'healthy', false, $1, $1, $2, $2)"#,
    )
    .bind(min(-30))
    .bind(min(-40))
    .execute(&pool)
    .await
    .unwrap();
    d.tick(&IngestStatus::Healthy, t0()).await.unwrap();
    tick(&d, &pool, min(60)).await;
    let (id, status, details) = alert(&pool).await;
    assert_eq!(status, "firing");
    assert_eq!(details["classification"], "offline", "{details}");

    // the API's details are renamed: nothing the detector needs is left there
    sqlx::query(
        r#"update alerts set details = jsonb_build_object('gap', details - 'classification'
               - 'last_impression_at' - 'last_device_ts' - 'since')"#,
    )
    .execute(&pool)
    .await
    .unwrap();

    // still offline: no reclassification out of thin air
    tick(&d, &pool, min(61)).await;
    assert_eq!(trail(&pool, id).await, ["opened"]);

    // data returns with a backlog reaching back to the last data before the gap: covered
    sqlx::query(
        r#"update devices set connected = true, last_impression_at = $1, last_device_ts = $1,
               gap_min_device_ts = $2"#,
    )
    .bind(min(62))
    .bind(min(-38))
    .execute(&pool)
    .await
    .unwrap();
    tick(&d, &pool, min(62)).await;
    let (_, status, details) = alert(&pool).await;
    assert_eq!(status, "resolved");
    assert_eq!(details["backlog_covered"], true, "{details}");
    assert_eq!(details["gap_seconds"], 102 * 60, "{details}");
    assert_eq!(trail(&pool, id).await, ["opened", "resolved"]);
}

/// Gaps open when the service upgrades keep their classification and baseline: the migration
/// copies them out of `details`.
#[sqlx::test(migrations = false)]
async fn the_migration_carries_open_gaps_over(pool: PgPool) {
    const VERSION: i64 = 20261130120500;
    let all = &fleetwatch::db::MIGRATOR;
    let before = sqlx::migrate::Migrator {
        migrations: all
            .iter()
            .filter(|m| m.version < VERSION)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&pool).await.unwrap();
    sqlx::query(
        r#"insert into alerts (kind, subject, device_id, severity, status, opened_at, summary,
               details, updated_at)
           values ('heartbeat_gap', 'a', 'a', 'error', 'firing', $1, 'a offline',
                   jsonb_build_object('classification', 'offline', 'last_impression_at', $2,
                                      'last_device_ts', $3), $1),
                  ('heartbeat_gap', 'b', 'b', 'error', 'firing', $1, 'b silent',
                   jsonb_build_object('classification', 'silent', 'last_impression_at', $2,
                                      'last_device_ts', null), $1),
                  ('flapping', 'c', 'c', 'warning', 'firing', $1, 'c flaps', '{}', $1)"#,
    )
    .bind(t0())
    .bind(min(-40))
    .bind(min(-41))
    .execute(&pool)
    .await
    .unwrap();
    all.run(&pool).await.unwrap();
    type Memory = (
        String,
        Option<String>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Memory> = sqlx::query_as(
        "select subject, gap_class, gap_last_data_at, gap_last_device_ts from alerts order by subject",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (
                "a".into(),
                Some("offline".into()),
                Some(min(-40)),
                Some(min(-41))
            ),
            ("b".into(), Some("silent".into()), Some(min(-40)), None),
            ("c".into(), None, None, None),
        ]
    );
}

/// A mass gap bigger than one opening transaction (several chunks, opened a few at once on
/// their own connections): every device's gap opens exactly once, with its memory, its trail
/// entry and its state, and the next tick finds nothing left to open.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_mass_gap_over_many_chunks_opens_each_gap_once_with_its_memory(pool: PgPool) {
    let d = Detector::new(
        pool.clone(),
        Settings::from_config(&Config::default()),
        TimeDelta::seconds(20),
    );
    d.tick(&IngestStatus::Healthy, min(-60)).await.unwrap();
    // 4,321 screens that last sent at -40m and are still connected (silent); one that is fine
    sqlx::query(
        r#"insert into devices (id, state, connected, conn_event_ts, last_impression_at,
                                last_device_ts)
           select 'mass-' || lpad(i::text, 5, '0'), 'healthy', true, $1, $2, $2
           from generate_series(1, 4321) i
           union all select 'fine', 'healthy', true, $1, $3, $3"#,
    )
    .bind(min(-50))
    .bind(min(-40))
    .bind(t0())
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("update devices set deadline_at = $1 where id <> 'fine'")
        .bind(t0())
        .execute(&pool)
        .await
        .unwrap();
    let out = d.tick(&IngestStatus::Healthy, t0()).await.unwrap();
    assert_eq!(out.heartbeat.opened.len(), 4321);
    assert_eq!(out.heartbeat.raced, 0);
    let (alerts, subjects, remembered, trails, silent): (i64, i64, i64, i64, i64) = sqlx::query_as(
        r#"select (select count(*) from alerts where kind = 'heartbeat_gap'),
                      (select count(distinct subject) from alerts where kind = 'heartbeat_gap'),
                      (select count(*) from alerts where gap_class = 'silent'
                          and gap_last_data_at = $1 and gap_last_device_ts = $1),
                      (select count(*) from alert_events e join alerts a on a.id = e.alert_id
                       where e.type = 'opened' and a.kind = 'heartbeat_gap'),
                      (select count(*) from devices where state = 'silent')"#,
    )
    .bind(min(-40))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((alerts, subjects, remembered), (4321, 4321, 4321));
    assert_eq!((trails, silent), (4321, 4321));
    let again = d.tick(&IngestStatus::Healthy, min(1)).await.unwrap();
    assert!(again.heartbeat.opened.is_empty(), "{:?}", again.heartbeat);
}
