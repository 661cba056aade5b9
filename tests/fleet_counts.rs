//! The fleet counts (`db::fleet_counts`, migration `20261203002001`) against real Postgres: the
//! triggers keep them equal to a recount through randomized histories of inserts, updates,
//! retirements, group deletions and deletes (devices and alerts); the migration seeds them
//! from existing rows; concurrent writers end exact; the self-check corrects a corrupted count
//! and says so on `/metrics`; and the summary and groups endpoints answer from them.

mod common;

use std::collections::BTreeMap;

use common::http::{assert_problem, get, get_ok, TestApp};
use fleetwatch::db::fleet_counts;
use fleetwatch::metrics::Metrics;
use serde_json::{json, Value};
use sqlx::PgPool;

const TOKEN: &str = "counts-token";
const STATES: [&str; 7] = [
    "never_seen",
    "healthy",
    "late",
    "silent",
    "offline",
    "quiet",
    "retired",
];
const KINDS: [&str; 4] = ["heartbeat_gap", "flapping", "group_outage", "throttled"];
const SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];

/// A tiny deterministic generator: each seed is one reproducible history.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

async fn group(pool: &PgPool, id: &str) {
    sqlx::query("insert into groups (id, name) values ($1, $1) on conflict do nothing")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

async fn device(pool: &PgPool, id: &str, group: Option<&str>, state: &str) {
    sqlx::query("insert into devices (id, group_id, state) values ($1, $2, $3)")
        .bind(id)
        .bind(group)
        .bind(state)
        .execute(pool)
        .await
        .unwrap();
}

async fn alert(pool: &PgPool, kind: &str, subject: &str, severity: &str, status: &str) -> i64 {
    sqlx::query_scalar(
        r#"insert into alerts (kind, subject, severity, status, opened_at, summary, updated_at)
           values ($1, $2, $3, $4, now(), 's', now()) returning id"#,
    )
    .bind(kind)
    .bind(subject)
    .bind(severity)
    .bind(status)
    .fetch_one(pool)
    .await
    .unwrap()
}

type FiringKey = (String, String, bool, bool);

async fn recount_firing(pool: &PgPool) -> BTreeMap<FiringKey, i64> {
    let rows: Vec<(String, String, bool, bool, i64)> = sqlx::query_as(
        r#"select kind, severity, acknowledged_by is not null, covered_by is not null, count(*)
           from alerts where status = 'firing' group by 1, 2, 3, 4"#,
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(k, s, a, c, n)| ((k, s, a, c), n))
        .collect()
}

async fn stored_firing(pool: &PgPool) -> BTreeMap<FiringKey, i64> {
    fleet_counts::firing(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|f| ((f.kind, f.severity, f.acknowledged, f.covered), f.n))
        .collect()
}

/// The stored counts equal a recount of both tables.
async fn assert_exact(pool: &PgPool, what: &str) {
    assert_eq!(
        fleet_counts::stored_devices(pool).await.unwrap(),
        fleet_counts::recount_devices(pool).await.unwrap(),
        "device counts after {what}"
    );
    assert_eq!(
        stored_firing(pool).await,
        recount_firing(pool).await,
        "firing alert counts after {what}"
    );
}

async fn fold(pool: &PgPool) -> u64 {
    let mut c = pool.acquire().await.unwrap();
    fleet_counts::fold(&mut c).await.unwrap()
}

async fn count_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select (select count(*) from device_state_counts) + (select count(*) from firing_alert_counts)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// One random step of a fleet's life, through plain SQL as any writer (detector, ingest,
/// inventory, retirement, retention, an operator in psql) would do it.
async fn step(pool: &PgPool, rng: &mut Rng, n: usize) -> String {
    let groups = ["g1", "g2", "g3"];
    let dev = format!("d{}", rng.below(12));
    let st = rng.pick(&STATES[..6]);
    match rng.below(17) {
        0 | 1 => {
            let g = if rng.below(4) == 0 {
                None
            } else {
                let g = rng.pick(&groups);
                group(pool, g).await;
                Some(g)
            };
            sqlx::query(
                "insert into devices (id, group_id, state) values ($1, $2, $3) on conflict do nothing",
            )
            .bind(&dev)
            .bind(g)
            .bind(st)
            .execute(pool)
            .await
            .unwrap();
            format!("insert {dev} {g:?} {st}")
        }
        2 | 3 => {
            sqlx::query("update devices set state = $2, state_since = now() where id = $1")
                .bind(&dev)
                .bind(st)
                .execute(pool)
                .await
                .unwrap();
            format!("state {dev} {st}")
        }
        4 => {
            let g = rng.pick(&groups);
            group(pool, g).await;
            sqlx::query("update devices set group_id = $2 where id = $1")
                .bind(&dev)
                .bind(g)
                .execute(pool)
                .await
                .unwrap();
            format!("move {dev} {g}")
        }
        5 => {
            // retirement as crate::retirement writes it
            sqlx::query(
                "update devices set retired_at = now(), state = 'retired', state_since = now() where id = $1",
            )
            .bind(&dev)
            .execute(pool)
            .await
            .unwrap();
            format!("retire {dev}")
        }
        6 => {
            // retired_at alone (the effective state is still `retired`), and back
            let on = rng.below(2) == 0;
            sqlx::query(
                "update devices set retired_at = case when $2 then now() end, unretired_at = now() where id = $1",
            )
            .bind(&dev)
            .bind(on)
            .execute(pool)
            .await
            .unwrap();
            format!("retired_at {dev} {on}")
        }
        7 => {
            sqlx::query("delete from devices where id = $1")
                .bind(&dev)
                .execute(pool)
                .await
                .unwrap();
            format!("delete {dev}")
        }
        8 => {
            // group deletion: devices.group_id is `on delete set null`
            let g = rng.pick(&groups);
            sqlx::query("delete from groups where id = $1")
                .bind(g)
                .execute(pool)
                .await
                .unwrap();
            format!("delete group {g}")
        }
        9 => {
            // the telemetry flusher's kind of update: several rows, no key changes
            sqlx::query("update devices set last_impression_at = now(), deadline_at = now()")
                .execute(pool)
                .await
                .unwrap();
            "telemetry".into()
        }
        10 => {
            let status = if rng.below(3) == 0 {
                "resolved"
            } else {
                "firing"
            };
            let (k, s) = (rng.pick(&KINDS), rng.pick(&SEVERITIES));
            alert(pool, k, &format!("s{n}"), s, status).await;
            format!("alert {k} {s} {status}")
        }
        11 => {
            // acknowledge, cover, re-severity, resolve or reopen one alert
            let id: Option<i64> =
                sqlx::query_scalar("select id from alerts order by random() limit 1")
                    .fetch_optional(pool)
                    .await
                    .unwrap();
            let Some(id) = id else {
                return "no alert".into();
            };
            let sql = match rng.below(5) {
                0 => "update alerts set acknowledged_by = 'token:1:t', acknowledged_at = now() where id = $1",
                1 => "update alerts set covered_by = (select min(id) from alerts) where id = $1",
                2 => "update alerts set severity = 'critical', covered_by = null where id = $1",
                3 => "update alerts set status = 'resolved', resolved_at = now() where id = $1",
                _ => {
                    "update alerts set status = 'firing', resolved_at = null where id = $1
                     and not exists (select 1 from alerts b where b.status = 'firing'
                                     and b.kind = alerts.kind and b.subject = alerts.subject)"
                }
            };
            sqlx::query(sql).bind(id).execute(pool).await.unwrap();
            format!("alert change {id}: {sql}")
        }
        12 => {
            // retention's delete of resolved alerts (with what references them)
            sqlx::query("update alerts set covered_by = null where covered_by in (select id from alerts where status = 'resolved')")
                .execute(pool)
                .await
                .unwrap();
            sqlx::query("delete from alerts where status = 'resolved'")
                .execute(pool)
                .await
                .unwrap();
            "retention".into()
        }
        13 => {
            // many devices' state in one statement (the detector's batched writes): the
            // statement-level triggers net a whole statement's rows per key
            let ids: Vec<String> = (0..12)
                .filter(|_| rng.below(2) == 0)
                .map(|i| format!("d{i}"))
                .collect();
            sqlx::query("update devices set state = $2, state_since = now() where id = any($1)")
                .bind(&ids)
                .bind(st)
                .execute(pool)
                .await
                .unwrap();
            format!("state {ids:?} {st}")
        }
        14 => {
            // an upsert: some rows inserted, some updated, in one statement
            let g = rng.pick(&groups);
            group(pool, g).await;
            let ids: Vec<String> = (0..12)
                .filter(|_| rng.below(3) == 0)
                .map(|i| format!("d{i}"))
                .collect();
            sqlx::query(
                r#"insert into devices (id, group_id, state) select unnest($1::text[]), $2, $3
                   on conflict (id) do update set state = excluded.state, group_id = excluded.group_id"#,
            )
            .bind(&ids)
            .bind(g)
            .bind(st)
            .execute(pool)
            .await
            .unwrap();
            format!("upsert {ids:?} {g} {st}")
        }
        15 => {
            // many alerts in one statement (the detector's `fire_many`), then many changed
            let (k, s) = (rng.pick(&KINDS), rng.pick(&SEVERITIES));
            sqlx::query(
                r#"insert into alerts (kind, subject, severity, status, opened_at, summary,
                                       details, updated_at)
                   select $1, 'm' || $3 || '-' || i, $2, 'firing', now(), 's', '{}', now()
                   from generate_series(1, 1 + $3 % 7) i"#,
            )
            .bind(k)
            .bind(s)
            .bind(n as i64)
            .execute(pool)
            .await
            .unwrap();
            let sql = [
                "update alerts set acknowledged_by = 'token:1:t' where id % 3 = 0",
                "update alerts set covered_by = (select max(id) from alerts) where id % 2 = 1",
                "update alerts set status = 'resolved', resolved_at = now() where id % 4 = 1",
                "update alerts set severity = 'info' where status = 'firing' and id % 5 = 2",
            ][rng.below(4)];
            sqlx::query(sql).execute(pool).await.unwrap();
            format!("alerts {k} {s}, then {sql}")
        }
        _ => {
            fold(pool).await;
            "fold".into()
        }
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn randomized_histories_keep_the_counts_equal_to_a_recount(pool: PgPool) {
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut trail = Vec::new();
        for n in 0..120 {
            trail.push(step(&pool, &mut rng, seed as usize * 1000 + n).await);
            if n % 10 == 9 {
                let what = format!("seed {seed}, steps {trail:#?}");
                assert_exact(&pool, &what).await;
            }
        }
        assert_exact(&pool, &format!("seed {seed}")).await;
        // the grouping pass's reporting devices, read from the counts, as counted from devices
        let counted: i64 = sqlx::query_scalar(
            "select count(*) from devices where retired_at is null and state not in ('never_seen', 'retired')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            fleet_counts::count_reporting(&pool).await.unwrap(),
            counted,
            "seed {seed}"
        );
        // and a self-check finds nothing to correct
        let checked = fleetwatch::fleet_counts::check(&pool, &Metrics::new())
            .await
            .unwrap();
        assert_eq!(checked, Default::default(), "seed {seed}");
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn updates_that_change_no_key_append_nothing_and_folds_stay_small(pool: PgPool) {
    group(&pool, "lobby").await;
    for i in 0..50 {
        device(&pool, &format!("d{i:02}"), Some("lobby"), "healthy").await;
    }
    fold(&pool).await;
    let before = count_rows(&pool).await;
    assert_eq!(before, 1, "one folded row for (lobby, healthy)");
    // the telemetry flusher, presence ingest and the detector's deadline pushes
    sqlx::query(
        "update devices set last_impression_at = now(), connected = true, deadline_at = now(), state = state",
    )
    .execute(&pool)
    .await
    .unwrap();
    // a retired device's state column changing under it changes no key either
    sqlx::query("update devices set retired_at = now(), state = 'retired' where id = 'd00'")
        .execute(&pool)
        .await
        .unwrap();
    let after_retire = count_rows(&pool).await;
    assert_eq!(after_retire, before + 2, "retiring moves one device: -1/+1");
    sqlx::query("update devices set state = 'healthy' where id = 'd00'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        count_rows(&pool).await,
        after_retire,
        "still retired: no key change"
    );
    // a firing alert's summary and details change no key
    let id = alert(&pool, "heartbeat_gap", "d01", "warning", "firing").await;
    let rows = count_rows(&pool).await;
    sqlx::query(
        "update alerts set summary = 'x', details = '{\"a\":1}', updated_at = now() where id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(count_rows(&pool).await, rows);
    // 500 moves fold back into a handful of rows
    for i in 0..500 {
        let st = if i % 2 == 0 { "late" } else { "healthy" };
        sqlx::query("update devices set state = $2 where id = $1")
            .bind(format!("d{:02}", 1 + i % 49))
            .bind(st)
            .execute(&pool)
            .await
            .unwrap();
    }
    let rows = count_rows(&pool).await;
    assert!(rows > 900, "{rows}");
    assert!(fold(&pool).await > 900);
    assert!(count_rows(&pool).await <= 4, "{}", count_rows(&pool).await);
    assert_exact(&pool, "folding").await;
    // a truncate (tests, a restore) empties the counts too
    sqlx::query("truncate devices cascade")
        .execute(&pool)
        .await
        .unwrap();
    assert!(fleet_counts::stored_devices(&pool)
        .await
        .unwrap()
        .is_empty());
    assert_exact(&pool, "truncate").await;
}

/// The migrations before the counts, data written under them, then the counts migration.
#[sqlx::test(migrations = false)]
async fn the_migration_seeds_the_counts_from_existing_rows(pool: PgPool) {
    const COUNTS: i64 = 20261203002001;
    let mut before = sqlx::migrate::Migrator {
        migrations: fleetwatch::db::MIGRATOR
            .migrations
            .iter()
            .filter(|m| m.version < COUNTS)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.set_locking(false);
    before.run(&pool).await.unwrap();
    let has_counts: bool = sqlx::query_scalar(
        "select exists (select 1 from pg_tables where tablename = 'device_state_counts')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!has_counts, "the counts migration is not applied yet");

    group(&pool, "east").await;
    group(&pool, "west").await;
    for i in 0..30 {
        let g = [Some("east"), Some("west"), None][i % 3];
        device(&pool, &format!("m{i}"), g, STATES[i % 6]).await;
    }
    sqlx::query("update devices set retired_at = now() where id in ('m0', 'm7')")
        .execute(&pool)
        .await
        .unwrap();
    let a = alert(&pool, "group_outage", "east", "critical", "firing").await;
    for i in 0..6 {
        let id = alert(
            &pool,
            "heartbeat_gap",
            &format!("m{i}"),
            "warning",
            "firing",
        )
        .await;
        if i % 2 == 0 {
            sqlx::query(
                "update alerts set covered_by = $2, acknowledged_by = 'token:1:t' where id = $1",
            )
            .bind(id)
            .bind(a)
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    alert(&pool, "flapping", "m1", "warning", "resolved").await;

    fleetwatch::db::MIGRATOR.run(&pool).await.unwrap();
    assert_exact(&pool, "the seeding migration").await;
    let stored = fleet_counts::stored_devices(&pool).await.unwrap();
    assert!(
        stored.contains(&(Some("east".into()), "retired".into(), 1)),
        "{stored:?}"
    );
    assert_eq!(stored.iter().map(|r| r.2).sum::<i64>(), 30);
    let firing = stored_firing(&pool).await;
    assert_eq!(
        firing.get(&("heartbeat_gap".into(), "warning".into(), true, true)),
        Some(&3)
    );
    assert_eq!(
        firing.values().sum::<i64>(),
        7,
        "resolved alerts are not counted"
    );
    // and the triggers work from there on
    sqlx::query("delete from groups where id = 'east'")
        .execute(&pool)
        .await
        .unwrap();
    assert_exact(&pool, "deleting a group after seeding").await;
}

/// Two writers move the same devices back and forth between the same states, in transactions
/// of several devices each (ids in one order, as the detector's batches would be), while a
/// third folds: no deadlock, no lost count. An upsert of one row per key deadlocks here: the
/// first transaction locks (g, healthy) then (g, late), the second the other way round.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn concurrent_writers_on_the_same_devices_end_exact(pool: PgPool) {
    group(&pool, "hot").await;
    for i in 0..20 {
        device(&pool, &format!("h{i:02}"), Some("hot"), "healthy").await;
    }
    let writer = |from: &'static str, to: &'static str, seed: u64| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut rng = Rng(seed);
            for _ in 0..150 {
                let mut tx = pool.begin().await.unwrap();
                let mut ids: Vec<String> =
                    (0..4).map(|_| format!("h{:02}", rng.below(20))).collect();
                ids.sort();
                ids.dedup();
                for id in ids {
                    let (a, b) = if rng.below(2) == 0 {
                        (from, to)
                    } else {
                        (to, from)
                    };
                    sqlx::query("update devices set state = $3 where id = $1 and state = $2")
                        .bind(&id)
                        .bind(a)
                        .bind(b)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
        })
    };
    let folder = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                let mut c = pool.acquire().await.unwrap();
                fleet_counts::fold(&mut c).await.unwrap();
                drop(c);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let checker = {
        let pool = pool.clone();
        tokio::spawn(async move {
            // a self-check racing the writers must find nothing to correct: it reads one
            // snapshot
            let mut corrected = Vec::new();
            for _ in 0..10 {
                corrected.extend(fleet_counts::check_devices(&pool).await.unwrap());
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            corrected
        })
    };
    let (a, b, c, d) = tokio::join!(
        writer("healthy", "late", 7),
        writer("late", "healthy", 11),
        folder,
        checker
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    assert_eq!(
        d.unwrap(),
        vec![],
        "the self-check raced the writers and saw drift"
    );
    assert_exact(&pool, "two concurrent writers").await;
    let total: i64 = fleet_counts::stored_devices(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.2)
        .sum();
    assert_eq!(total, 20);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_self_check_corrects_a_corrupted_count_and_counts_it(pool: PgPool) {
    group(&pool, "g").await;
    for i in 0..5 {
        device(&pool, &format!("c{i}"), Some("g"), "offline").await;
    }
    alert(&pool, "heartbeat_gap", "c0", "warning", "firing").await;
    // corruption: a write that bypassed the triggers, and a lost delta
    sqlx::query("insert into device_state_counts (group_id, state, n) values ('g', 'healthy', 3)")
        .execute(&pool)
        .await
        .unwrap();
    // a write the trigger never saw (what a restore or a replica-role session does); needs a
    // superuser, which the test cluster's user is
    sqlx::raw_sql(
        "set session_replication_role = replica; delete from devices where id = 'c4'; \
         set session_replication_role = origin",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("delete from firing_alert_counts")
        .execute(&pool)
        .await
        .unwrap();

    let metrics = Metrics::new();
    let log = fleetwatch::logging::Captured::default();
    let checked = {
        let _g = log.install();
        fleetwatch::fleet_counts::check(&pool, &metrics)
            .await
            .unwrap()
    };
    let mut devices: Vec<_> = checked
        .devices
        .iter()
        .map(|d| (d.key.as_str(), d.delta))
        .collect();
    devices.sort();
    assert_eq!(
        devices,
        vec![("group=g state=healthy", -3), ("group=g state=offline", -1)]
    );
    let alerts: Vec<_> = checked
        .alerts
        .iter()
        .map(|d| (d.key.as_str(), d.delta))
        .collect();
    assert_eq!(
        alerts,
        vec![(
            "kind=heartbeat_gap severity=warning acknowledged=false covered=false",
            1
        )]
    );
    assert_exact(&pool, "the self-check").await;
    let text = metrics.render();
    assert!(
        text.contains("fleetwatch_fleet_counts_drift_total{table=\"devices\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("fleetwatch_fleet_counts_drift_total{table=\"alerts\"} 1"),
        "{text}"
    );
    assert!(
        log.text().contains("fleet counts drifted"),
        "{}",
        log.text()
    );
    // corrected: the next check finds nothing, and the reads agree
    let again = fleetwatch::fleet_counts::check(&pool, &metrics)
        .await
        .unwrap();
    assert_eq!(again, Default::default());
    let app = TestApp::new(&pool, TOKEN);
    let s = get_ok(&app, "/api/v1/fleet/summary").await;
    assert_eq!(s["devices"], json!(4));
    assert_eq!(s["devices_by_state"]["offline"], json!(4));
    assert_eq!(s["devices_by_state"]["healthy"], json!(0));
    assert_eq!(s["firing_alerts"], json!(1));
}

/// The summary through the router equals the old whole-table count it replaces.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_summary_answers_from_the_counts_exactly_as_the_recount_did(pool: PgPool) {
    let app = TestApp::new(&pool, TOKEN);
    let empty = get_ok(&app, "/api/v1/fleet/summary").await;
    assert_eq!(empty["devices"], json!(0));
    assert_eq!(empty["devices_by_state"].as_object().unwrap().len(), 7);
    assert_eq!(empty["firing_alerts_by_kind"]["metric_threshold"], json!(0));

    let mut rng = Rng(42);
    for n in 0..200 {
        step(&pool, &mut rng, n).await;
    }
    let s = get_ok(&app, "/api/v1/fleet/summary").await;
    let mut by_state: BTreeMap<String, i64> = STATES.iter().map(|s| (s.to_string(), 0)).collect();
    for (st, n) in fleetwatch::db::devices::count_by_state(&pool)
        .await
        .unwrap()
    {
        by_state.insert(st, n);
    }
    assert_eq!(s["devices_by_state"], json!(by_state));
    assert_eq!(s["devices"], json!(by_state.values().sum::<i64>()));
    let (mut firing, mut covered, mut unacked) = (0, 0, 0);
    for (k, n, c, u) in fleetwatch::db::alerts::firing_by_kind(&pool).await.unwrap() {
        assert_eq!(s["firing_alerts_by_kind"][&k], json!(n), "{k}");
        firing += n;
        covered += c;
        unacked += u;
    }
    assert!(firing > 0, "the history fired some alerts");
    assert_eq!(s["firing_alerts"], json!(firing));
    assert_eq!(s["covered_alerts"], json!(covered));
    assert_eq!(s["unacknowledged_alerts"], json!(unacked));
}

fn tile(page: &Value, group: Value) -> &Value {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["group"] == group)
        .unwrap_or_else(|| panic!("no tile {group} in {page}"))
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_groups_endpoint_pages_tiles_with_their_worst_state(pool: PgPool) {
    let app = TestApp::new(&pool, TOKEN);
    let page = get_ok(&app, "/api/v1/fleet/groups").await;
    assert_eq!(page, json!({"items": [], "next_cursor": null}));

    // hostile ids: quotes, markup, unicode, a leading 'g' and '-' (the cursor's own prefixes)
    let hostile = [
        "-",
        "g",
        "<img src=x onerror=alert(1)>",
        "ロビー'; drop table devices;--",
    ];
    for g in ["a-lobby", "b-empty", "c-retired"]
        .iter()
        .chain(hostile.iter())
    {
        group(&pool, g).await;
    }
    device(&pool, "x1", Some("a-lobby"), "healthy").await;
    device(&pool, "x2", Some("a-lobby"), "late").await;
    device(&pool, "x3", Some("a-lobby"), "silent").await;
    device(&pool, "x4", Some("c-retired"), "offline").await;
    sqlx::query("update devices set retired_at = now(), state = 'retired' where id = 'x4'")
        .execute(&pool)
        .await
        .unwrap();
    device(&pool, "x5", None, "never_seen").await;
    device(&pool, "x6", None, "quiet").await;
    device(&pool, "x7", Some(hostile[3]), "offline").await;

    let all = get_ok(&app, "/api/v1/fleet/groups").await;
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 8, "{all}");
    assert_eq!(items[0]["group"], Value::Null, "ungrouped devices first");
    let none = tile(&all, Value::Null);
    assert_eq!(none["devices"], json!(2));
    assert_eq!(none["worst_state"], json!("never_seen"));
    let lobby = tile(&all, json!("a-lobby"));
    assert_eq!(lobby["devices"], json!(3));
    assert_eq!(lobby["worst_state"], json!("silent"));
    assert_eq!(lobby["name"], json!("a-lobby"));
    assert_eq!(lobby["devices_by_state"]["late"], json!(1));
    assert_eq!(lobby["devices_by_state"]["offline"], json!(0));
    let empty = tile(&all, json!("b-empty"));
    assert_eq!(
        (empty["devices"].clone(), empty["worst_state"].clone()),
        (json!(0), Value::Null)
    );
    let retired = tile(&all, json!("c-retired"));
    assert_eq!(retired["devices"], json!(1));
    assert_eq!(retired["devices_by_state"]["retired"], json!(1));
    assert_eq!(
        retired["worst_state"],
        Value::Null,
        "retired devices colour nothing"
    );
    assert_eq!(
        tile(&all, json!(hostile[3]))["worst_state"],
        json!("offline")
    );

    // paging one at a time visits every tile once, in the same order
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            None => "/api/v1/fleet/groups?limit=1".to_string(),
            Some(c) => format!("/api/v1/fleet/groups?limit=1&cursor={c}"),
        };
        let p = get_ok(&app, &uri).await;
        assert!(p["items"].as_array().unwrap().len() <= 1);
        seen.extend(p["items"].as_array().unwrap().iter().cloned());
        match p["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(seen.len() <= 8, "paging does not end: {seen:?}");
    }
    assert_eq!(&seen, items);

    // deleting a group moves its devices to the ungrouped tile
    sqlx::query("delete from groups where id = 'a-lobby'")
        .execute(&pool)
        .await
        .unwrap();
    let after = get_ok(&app, "/api/v1/fleet/groups").await;
    assert_eq!(tile(&after, Value::Null)["devices"], json!(5));
    assert_eq!(tile(&after, Value::Null)["worst_state"], json!("silent"));
    assert_eq!(after["items"].as_array().unwrap().len(), 7);

    // bad input
    for uri in [
        "/api/v1/fleet/groups?limit=0",
        "/api/v1/fleet/groups?limit=1001",
        "/api/v1/fleet/groups?limit=x",
        "/api/v1/fleet/groups?cursor=%%%",
        "/api/v1/fleet/groups?cursor=eHl6", // base64 of "xyz": not a groups cursor
    ] {
        assert_problem(&get(&app, uri).await, 400, uri);
    }
    let unauth = common::http::get_with(&app.app, "/api/v1/fleet/groups", "wrong").await;
    common::http::assert_unauthorized(&unauth, "groups without a token");
}

/// The real writers, not plain SQL: retirement through the API and an alert through
/// `alerts::lifecycle`, acknowledged through the API, move the summary and the tiles at once.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn retirement_and_acknowledgement_through_the_api_move_the_counts(pool: PgPool) {
    use axum::http::Method;
    use common::http::call;
    let app = TestApp::new(&pool, TOKEN);
    group(&pool, "lobby").await;
    device(&pool, "r1", Some("lobby"), "offline").await;
    device(&pool, "r2", Some("lobby"), "healthy").await;
    let spec = fleetwatch::alerts::AlertSpec {
        kind: fleetwatch::domain::alert::Kind::HeartbeatGap,
        subject: "r1".into(),
        device_id: Some("r1".into()),
        group_id: Some("lobby".into()),
        severity: fleetwatch::domain::alert::Severity::Error,
        summary: "r1 offline".into(),
        details: json!({}),
    };
    let mut tx = pool.begin().await.unwrap();
    let fired = fleetwatch::alerts::lifecycle::fire(
        &mut tx,
        &spec,
        chrono::Utc::now(),
        chrono::TimeDelta::hours(1),
    )
    .await
    .unwrap();
    let fleetwatch::alerts::lifecycle::Fired::Opened(id) = fired else {
        panic!("{fired:?}")
    };
    tx.commit().await.unwrap();
    let s = get_ok(&app, "/api/v1/fleet/summary").await;
    assert_eq!(s["firing_alerts_by_kind"]["heartbeat_gap"], json!(1));
    assert_eq!(s["unacknowledged_alerts"], json!(1));

    let r = call(
        &app.app,
        Method::POST,
        &format!("/api/v1/alerts/{id}/ack"),
        app.auth(),
        Some(&json!({"by": "alice"})),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let s = get_ok(&app, "/api/v1/fleet/summary").await;
    assert_eq!(s["unacknowledged_alerts"], json!(0));
    assert_eq!(s["firing_alerts"], json!(1));

    let r = call(
        &app.app,
        Method::POST,
        "/api/v1/devices/r1/retire",
        app.auth(),
        None,
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let s = get_ok(&app, "/api/v1/fleet/summary").await;
    assert_eq!(s["devices_by_state"]["retired"], json!(1));
    assert_eq!(s["devices_by_state"]["offline"], json!(0));
    assert_eq!(
        s["firing_alerts"],
        json!(0),
        "retiring resolves the device's alerts"
    );
    let tiles = get_ok(&app, "/api/v1/fleet/groups").await;
    assert_eq!(
        tile(&tiles, json!("lobby"))["worst_state"],
        json!("healthy")
    );

    let r = call(
        &app.app,
        Method::POST,
        "/api/v1/devices/r1/unretire",
        app.auth(),
        None,
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let s = get_ok(&app, "/api/v1/fleet/summary").await;
    assert_eq!(s["devices_by_state"]["retired"], json!(0));
    assert_eq!(s["devices"], json!(2));
    assert_exact(&pool, "retire, ack, unretire").await;
}
