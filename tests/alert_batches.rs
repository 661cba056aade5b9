//! `alerts::lifecycle::fire_many` (issue 12: a mass gap opens thousands of heartbeat alerts in
//! one pass) must write exactly what calling `fire` for each spec writes: the alerts, their
//! trail, and the outbox rows for every endpoint, silenced or not, including the specs that
//! update a firing alert or reopen a recently resolved one.
//!
//! Both run in one database over two copies of the same story, subjects `one-…` (one `fire`
//! each) and `many-…` (one `fire_many`), and the rows are compared with the prefix taken out.

mod common;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::alerts::{device_alert, group_alert};
use fleetwatch::alerts::lifecycle::{self, AlertSpec, Fired, GapOpening};
use fleetwatch::alerts::outbox;
use fleetwatch::config::{HumanDuration, WebhookConfig};
use fleetwatch::domain::alert::Kind;
use serde_json::{json, Value};
use sqlx::PgPool;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap()
}

const REOPEN: TimeDelta = TimeDelta::minutes(30);

fn hook(name: &str, kinds: &[Kind], groups: &[&str]) -> WebhookConfig {
    WebhookConfig {
        name: Some(name.into()),
        url: format!("http://127.0.0.1:9/{name}"),
        kinds: kinds.to_vec(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        group_wait: HumanDuration(std::time::Duration::from_secs(30)),
        ..WebhookConfig::default()
    }
}

/// The devices of one copy of the story: `n` devices in groups `g0`…`g3` (`g3` is silenced).
fn specs(prefix: &str, n: usize) -> Vec<AlertSpec> {
    (0..n)
        .map(|i| {
            let group = format!("g{}", i % 4);
            device_alert(
                Kind::HeartbeatGap,
                &format!("{prefix}-{i:03}"),
                Some(&group),
            )
        })
        .collect()
}

/// Before the pass: device 0 has a firing alert (its spec updates it), device 1 the same alert
/// unchanged, device 2 one resolved 10 minutes ago (reopened), device 3 one resolved two hours
/// ago (a new alert opens beside it).
async fn history(pool: &PgPool, specs: &[AlertSpec]) {
    let mut tx = pool.begin().await.unwrap();
    let earlier = t0() - TimeDelta::hours(3);
    for (i, spec) in specs.iter().take(4).enumerate() {
        let mut old = spec.clone();
        if i == 0 {
            old.summary = "an older summary".into();
        }
        let id = lifecycle::fire(&mut tx, &old, earlier, REOPEN)
            .await
            .unwrap()
            .id();
        let resolved_at = match i {
            2 => Some(t0() - TimeDelta::minutes(10)),
            3 => Some(t0() - TimeDelta::hours(2)),
            _ => None,
        };
        if let Some(at) = resolved_at {
            assert!(lifecycle::resolve(&mut tx, id, at, None, json!({}))
                .await
                .unwrap());
        }
    }
    tx.commit().await.unwrap();
}

/// What happened to each spec, by name.
fn kinds(fired: &[Fired]) -> Vec<&'static str> {
    fired
        .iter()
        .map(|f| match f {
            Fired::Opened(_) => "opened",
            Fired::Reopened(_) => "reopened",
            Fired::Updated(_) => "updated",
            Fired::Unchanged(_) => "unchanged",
        })
        .collect()
}

/// `fire_many` of heartbeat gaps with what the heartbeat pass writes beside each, committed.
async fn fire_gaps(pool: &PgPool, specs: &[AlertSpec], gaps: &[GapOpening]) -> Vec<Fired> {
    let mut tx = pool.begin().await.unwrap();
    let fired = lifecycle::fire_many(&mut tx, Kind::HeartbeatGap, specs, Some(gaps), t0(), REOPEN)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    fired
}

/// Every row the pass wrote for `prefix`, with the prefix and the ids taken out.
async fn written(pool: &PgPool, prefix: &str) -> Value {
    let like = format!("{prefix}-%");
    let alerts: Vec<Value> = sqlx::query_scalar(
        r#"select to_jsonb(a) - 'id' from (
               select kind, subject, device_id, group_id, severity, status, opened_at,
                      resolved_at, summary, details, updated_at
               from alerts where subject like $1 order by subject, opened_at) a"#,
    )
    .bind(&like)
    .fetch_all(pool)
    .await
    .unwrap();
    let events: Vec<Value> = sqlx::query_scalar(
        r#"select jsonb_build_array(a.subject, e.at, e.type, e.actor, e.details)
           from alert_events e join alerts a on a.id = e.alert_id
           where a.subject like $1 order by a.subject, e.id"#,
    )
    .bind(&like)
    .fetch_all(pool)
    .await
    .unwrap();
    let notifications: Vec<Value> = sqlx::query_scalar(
        r#"select jsonb_build_array(a.subject, o.endpoint, o.event, o.status, o.next_attempt_at,
                                    o.finished_at, o.last_error, o.silenced_by,
                                    o.body - 'id' - 'updated_at')
           from notifications o join alerts a on a.id = o.alert_id
           where a.subject like $1 order by a.subject, o.endpoint, o.id"#,
    )
    .bind(&like)
    .fetch_all(pool)
    .await
    .unwrap();
    let text = json!({"alerts": alerts, "events": events, "notifications": notifications})
        .to_string()
        .replace(&format!("{prefix}-"), "X-");
    serde_json::from_str(&text).unwrap()
}

#[sqlx::test(migrations = "./migrations")]
async fn fire_many_writes_what_fire_one_by_one_writes(pool: PgPool) {
    fleetwatch::logging::init_for_tests();
    let hooks = [
        hook("all", &[], &[]),
        hook("gaps-g1", &[Kind::HeartbeatGap], &["g1"]),
        hook("outages", &[Kind::GroupOutage], &[]),
    ];
    outbox::sync_endpoints(&pool, &hooks).await.unwrap();
    sqlx::query(
        r#"insert into silences (group_id, starts_at, ends_at, created_by, comment, created_at)
           values ('g3', $1, $2, 'test', 'building works', $1)"#,
    )
    .bind(t0() - TimeDelta::hours(1))
    .bind(t0() + TimeDelta::hours(1))
    .execute(&pool)
    .await
    .unwrap();

    let one = specs("one", 40);
    let many = specs("many", 40);
    history(&pool, &one).await;
    history(&pool, &many).await;

    let mut tx = pool.begin().await.unwrap();
    let mut by_one = Vec::new();
    for spec in &one {
        by_one.push(lifecycle::fire(&mut tx, spec, t0(), REOPEN).await.unwrap());
    }
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let by_many = lifecycle::fire_many(&mut tx, Kind::HeartbeatGap, &many, None, t0(), REOPEN)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(kinds(&by_many), kinds(&by_one));
    assert_eq!(
        &kinds(&by_many)[..5],
        ["updated", "unchanged", "reopened", "opened", "opened"]
    );

    let a = written(&pool, "one").await;
    let b = written(&pool, "many").await;
    assert_eq!(a, b);
    // The story is not vacuous: new alerts opened, routed by kind and group, some silenced.
    let n = a["notifications"].as_array().unwrap();
    assert!(n.iter().any(|r| r[1] == "gaps-g1"));
    assert!(!n.iter().any(|r| r[1] == "outages"));
    assert!(n.iter().any(|r| r[3] == "superseded" && !r[7].is_null()));
    assert!(n.iter().any(|r| r[3] == "pending"));
    assert_eq!(a["alerts"].as_array().unwrap().len(), 41);
}

#[sqlx::test(migrations = "./migrations")]
async fn fire_many_of_nothing_writes_nothing(pool: PgPool) {
    let mut tx = pool.begin().await.unwrap();
    let fired = lifecycle::fire_many(&mut tx, Kind::HeartbeatGap, &[], None, t0(), REOPEN)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(fired.is_empty());
    let n: i64 = sqlx::query_scalar("select count(*) from alerts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

/// A heartbeat pass's gap memory goes with each alert it fires, whichever way it fired: the
/// new ones in the insert, the updated, unchanged and reopened ones beside `fire`.
#[sqlx::test(migrations = "./migrations")]
async fn fire_many_writes_each_gap_memory_new_or_not(pool: PgPool) {
    use fleetwatch::db::detector::GapMemory;
    use fleetwatch::domain::device::Gap;
    let many = specs("gap", 6);
    history(&pool, &many).await;
    let memory: Vec<GapMemory> = (0..many.len() as i64)
        .map(|i| GapMemory {
            class: if i % 2 == 0 {
                Gap::Silent
            } else {
                Gap::Offline
            },
            last_data_at: Some(t0() - TimeDelta::minutes(10 + i)),
            last_device_ts: (i != 5).then(|| t0() - TimeDelta::minutes(20 + i)),
        })
        .collect();
    let gaps: Vec<GapOpening> = memory
        .iter()
        .map(|m| GapOpening {
            memory: *m,
            covered_by: None,
        })
        .collect();
    let fired = fire_gaps(&pool, &many, &gaps).await;
    assert!(matches!(fired[2], Fired::Reopened(_)));
    assert!(matches!(fired[4], Fired::Opened(_)));
    for (f, m) in fired.iter().zip(&memory) {
        let (class, data, device): (Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
            sqlx::query_as(
                "select gap_class, gap_last_data_at, gap_last_device_ts from alerts where id = $1",
            )
            .bind(f.id())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(class.as_deref(), Some(m.class.as_str()), "{f:?}");
        assert_eq!((data, device), (m.last_data_at, m.last_device_ts), "{f:?}");
    }
}

/// A gap that names its covering outage (`GapOpening::covered_by`: its building is dark) is
/// covered whichever way it fired, with one `covered` entry after its `opened`, `reopened` or
/// `updated` one, as `fire` then `cover` would write; a gap that names none is not.
#[sqlx::test(migrations = "./migrations")]
async fn fire_many_covers_each_gap_that_names_its_outage(pool: PgPool) {
    use fleetwatch::db::detector::GapMemory;
    use fleetwatch::domain::device::Gap;
    let many = specs("gap", 6);
    history(&pool, &many).await;
    let mut tx = pool.begin().await.unwrap();
    let outage = group_alert(Kind::GroupOutage, "g0");
    let outage = lifecycle::fire(&mut tx, &outage, t0(), REOPEN)
        .await
        .unwrap()
        .id();
    tx.commit().await.unwrap();
    let gaps: Vec<GapOpening> = (0..many.len())
        .map(|i| GapOpening {
            memory: GapMemory {
                class: Gap::Silent,
                last_data_at: None,
                last_device_ts: None,
            },
            covered_by: (i != 5).then_some(outage),
        })
        .collect();
    let fired = fire_gaps(&pool, &many, &gaps).await;
    let how = kinds(&fired);
    assert_eq!(
        how,
        [
            "updated",
            "unchanged",
            "reopened",
            "opened",
            "opened",
            "opened"
        ]
    );
    for (i, f) in fired.iter().enumerate() {
        let covered_by: Option<i64> =
            sqlx::query_scalar("select covered_by from alerts where id = $1")
                .bind(f.id())
                .fetch_one(&pool)
                .await
                .unwrap();
        let trail: Vec<(String, Value)> = sqlx::query_as(
            "select type, details from alert_events where alert_id = $1 and at = $2 order by id",
        )
        .bind(f.id())
        .bind(t0())
        .fetch_all(&pool)
        .await
        .unwrap();
        let types: Vec<&str> = trail.iter().map(|(t, _)| t.as_str()).collect();
        let first = match how[i] {
            "unchanged" => vec![],
            k => vec![k],
        };
        if i == 5 {
            assert_eq!(covered_by, None);
            assert_eq!(types, first, "{i}");
        } else {
            assert_eq!(covered_by, Some(outage), "{i}");
            let mut expected = first;
            expected.push("covered");
            assert_eq!(types, expected, "{i}");
            assert_eq!(trail.last().unwrap().1, json!({"by": outage}));
        }
    }
}
