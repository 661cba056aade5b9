//! Incident grouping against a real Postgres (DESIGN.md §2 item 5): fleet stories on an
//! injected clock, each with the exact outages, covers and releases expected. Per-device gap
//! alerts are opened through the alert lifecycle, as the heartbeat detector does.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use fleetwatch::alerts::lifecycle::{self, AlertSpec};
use fleetwatch::config::Config;
use fleetwatch::detect::grouping::{tick, Outcome};
use fleetwatch::detect::Settings;
use fleetwatch::domain::alert::{Kind, Severity};
use serde_json::{json, Value};
use sqlx::PgPool;

/// 2026-11-27 at `h:m` UTC.
fn t(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, h, m, 0).unwrap()
}

fn settings() -> Settings {
    Settings::from_config(&Config::default())
}

async fn group(pool: &PgPool, id: &str, name: &str, tz: &str) {
    sqlx::query("insert into groups (id, name, time_zone) values ($1, $2, $3)")
        .bind(id)
        .bind(name)
        .bind(tz)
        .execute(pool)
        .await
        .unwrap();
}

/// `n` reporting devices `{prefix}-00`… in `group`.
async fn devices(pool: &PgPool, group: &str, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:02}")).collect();
    for id in &ids {
        device(pool, id, Some(group), "healthy", false).await;
    }
    ids
}

async fn device(pool: &PgPool, id: &str, group: Option<&str>, state: &str, retired: bool) {
    sqlx::query(
        r#"insert into devices (id, group_id, state, retired_at)
           values ($1, $2, $3, case when $4 then now() end)"#,
    )
    .bind(id)
    .bind(group)
    .bind(state)
    .bind(retired)
    .execute(pool)
    .await
    .unwrap();
}

/// The heartbeat detector opening (or reopening) the gap alert of `device` at `at`.
async fn gap(pool: &PgPool, device: &str, at: DateTime<Utc>) -> i64 {
    let group: Option<String> = sqlx::query_scalar("select group_id from devices where id = $1")
        .bind(device)
        .fetch_one(pool)
        .await
        .unwrap();
    let spec = AlertSpec {
        kind: Kind::HeartbeatGap,
        subject: device.to_string(),
        device_id: Some(device.to_string()),
        group_id: group,
        severity: Severity::Error,
        summary: format!("{device} silent"),
        details: json!({"state": "silent"}),
    };
    let mut tx = pool.begin().await.unwrap();
    let id = lifecycle::fire(&mut tx, &spec, at, settings().reopen_window)
        .await
        .unwrap()
        .id();
    tx.commit().await.unwrap();
    id
}

/// Data came back for `device`: its gap alert resolves.
async fn recover(pool: &PgPool, device: &str, at: DateTime<Utc>) {
    let mut tx = pool.begin().await.unwrap();
    let id = fleetwatch::db::alerts::firing_id(&mut tx, Kind::HeartbeatGap, device)
        .await
        .unwrap()
        .expect("a firing gap alert");
    assert!(
        lifecycle::resolve(&mut tx, id, at, None, json!({"covered": false}))
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: i64,
    subject: String,
    status: String,
    summary: String,
    details: Value,
    covered_by: Option<i64>,
    group_id: Option<String>,
    device_id: Option<String>,
    severity: String,
}

async fn alerts(pool: &PgPool, kind: Kind) -> Vec<Row> {
    sqlx::query_as(
        r#"select id, subject, status, summary, details, covered_by, group_id, device_id, severity
           from alerts where kind = $1 order by id"#,
    )
    .bind(kind.as_str())
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The gap alert of a device (there is one per device in these stories).
async fn gap_of(pool: &PgPool, device: &str) -> Row {
    alerts(pool, Kind::HeartbeatGap)
        .await
        .into_iter()
        .find(|r| r.subject == device)
        .unwrap()
}

async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from alert_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn event_types(pool: &PgPool, id: i64) -> Vec<String> {
    sqlx::query_scalar("select type from alert_events where alert_id = $1 order by id")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    serde_json::from_value(v.clone()).unwrap()
}

fn fired(kind: Kind, subject: &str) -> (Kind, String) {
    (kind, subject.to_string())
}

/// A lobby power cut in one building of a fleet large enough that it is not a fleet outage.
async fn fleet_of_five_buildings(pool: &PgPool) -> Vec<String> {
    group(pool, "tokyo-hq", "Tokyo HQ", "Asia/Tokyo").await;
    let tokyo = devices(pool, "tokyo-hq", "tky", 12).await;
    for (g, name) in [
        ("osaka", "Osaka"),
        ("nagoya", "Nagoya"),
        ("sapporo", "Sapporo"),
        ("fukuoka", "Fukuoka"),
    ] {
        group(pool, g, name, "Asia/Tokyo").await;
        devices(pool, g, g, 12).await;
    }
    tokyo
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn nothing_wrong_does_nothing(pool: PgPool) {
    let s = settings();
    fleet_of_five_buildings(&pool).await;
    assert_eq!(tick(&pool, &s, t(10, 0)).await.unwrap(), Outcome::default());
    // a couple of broken screens is business as usual
    gap(&pool, "osaka-03", t(9, 0)).await;
    gap(&pool, "nagoya-07", t(9, 30)).await;
    assert_eq!(tick(&pool, &s, t(10, 0)).await.unwrap(), Outcome::default());
    assert!(alerts(&pool, Kind::GroupOutage).await.is_empty());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn building_power_cut_is_one_group_outage(pool: PgPool) {
    let s = settings();
    let tokyo = fleet_of_five_buildings(&pool).await;

    // 10 of the 12 lobby screens go dark within three minutes; the detector opens their gap
    // alerts one tick after another
    for (i, d) in tokyo.iter().take(10).enumerate() {
        gap(&pool, d, t(10, 2) + TimeDelta::seconds(20 * i as i64)).await;
    }
    // two unrelated screens elsewhere fail at the same time: not part of the incident
    gap(&pool, "osaka-01", t(10, 3)).await;
    gap(&pool, "nagoya-02", t(10, 4)).await;

    let out = tick(&pool, &s, t(10, 6)).await.unwrap();
    assert_eq!(out.fired, vec![fired(Kind::GroupOutage, "tokyo-hq")]);
    assert_eq!(out.resolved, vec![]);
    assert_eq!(out.covered, 10);
    assert_eq!(out.uncovered, 0);

    let outages = alerts(&pool, Kind::GroupOutage).await;
    assert_eq!(outages.len(), 1, "exactly one group outage");
    let o = &outages[0];
    assert_eq!(o.subject, "tokyo-hq");
    assert_eq!(o.group_id.as_deref(), Some("tokyo-hq"));
    assert_eq!(o.device_id, None);
    assert_eq!(o.status, "firing");
    assert_eq!(o.severity, "critical");
    assert_eq!(
        o.summary,
        "Building Tokyo HQ: 10 devices silent since 10:02Z"
    );
    assert_eq!(strings(&o.details["devices"]), tokyo[..10].to_vec());
    assert_eq!(o.details["count"], 10);
    assert_eq!(o.details["since"], "2026-11-27T10:02:00Z");
    assert_eq!(
        o.details["group"],
        json!({"id": "tokyo-hq", "name": "Tokyo HQ", "time_zone": "Asia/Tokyo"})
    );
    for d in &tokyo[..10] {
        let g = gap_of(&pool, d).await;
        assert_eq!(g.covered_by, Some(o.id), "{d}");
        assert_eq!(event_types(&pool, g.id).await, ["opened", "covered"]);
    }
    for d in ["osaka-01", "nagoya-02"] {
        assert_eq!(gap_of(&pool, d).await.covered_by, None, "{d}");
    }

    // the next tick finds nothing to do: no update, no event
    let events = event_count(&pool).await;
    assert_eq!(tick(&pool, &s, t(10, 7)).await.unwrap(), Outcome::default());
    assert_eq!(event_count(&pool).await, events);

    // 20 minutes later one more screen of the building dies (its UPS ran out): it joins
    gap(&pool, &tokyo[10], t(10, 26)).await;
    let out = tick(&pool, &s, t(10, 27)).await.unwrap();
    assert_eq!(
        out,
        Outcome {
            covered: 1,
            ..Outcome::default()
        }
    );
    let o = &alerts(&pool, Kind::GroupOutage).await[0];
    assert_eq!(o.id, outages[0].id);
    assert_eq!(o.details["count"], 11);
    assert_eq!(strings(&o.details["devices"]), tokyo[..11].to_vec());
    // the start of the incident does not move
    assert_eq!(
        o.summary,
        "Building Tokyo HQ: 11 devices silent since 10:02Z"
    );
    assert_eq!(gap_of(&pool, &tokyo[10]).await.covered_by, Some(o.id));
    assert_eq!(event_types(&pool, o.id).await, ["opened", "updated"]);
    assert!(alerts(&pool, Kind::FleetOutage).await.is_empty());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn gaps_spread_over_hours_are_not_an_outage(pool: PgPool) {
    let s = settings();
    let tokyo = fleet_of_five_buildings(&pool).await;
    // one screen fails every hour: each outside the 10-minute window of the others
    for (i, d) in tokyo.iter().take(6).enumerate() {
        let at = t(8 + i as u32, 15);
        gap(&pool, d, at).await;
        assert_eq!(
            tick(&pool, &s, at + TimeDelta::minutes(1)).await.unwrap(),
            Outcome::default()
        );
    }
    assert!(alerts(&pool, Kind::GroupOutage).await.is_empty());
    for d in &tokyo[..6] {
        assert_eq!(gap_of(&pool, d).await.covered_by, None);
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn unrelated_groups_do_not_add_up(pool: PgPool) {
    let s = settings();
    fleet_of_five_buildings(&pool).await;
    // five screens in five buildings within a minute: five problems, not one building's
    for (i, d) in [
        "tky-00",
        "osaka-00",
        "nagoya-00",
        "sapporo-00",
        "fukuoka-00",
    ]
    .iter()
    .enumerate()
    {
        gap(&pool, d, t(10, 0) + TimeDelta::seconds(10 * i as i64)).await;
    }
    assert_eq!(tick(&pool, &s, t(10, 2)).await.unwrap(), Outcome::default());
    assert!(alerts(&pool, Kind::GroupOutage).await.is_empty());
    assert!(alerts(&pool, Kind::HeartbeatGap)
        .await
        .iter()
        .all(|g| g.covered_by.is_none()));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn power_returns_with_hysteresis(pool: PgPool) {
    let mut s = settings();
    s.group_outage_devices = 6;
    let tokyo = fleet_of_five_buildings(&pool).await;
    for (i, d) in tokyo.iter().take(10).enumerate() {
        gap(&pool, d, t(10, 2) + TimeDelta::seconds(15 * i as i64)).await;
    }
    let out = tick(&pool, &s, t(10, 5)).await.unwrap();
    assert_eq!(out.fired, vec![fired(Kind::GroupOutage, "tokyo-hq")]);
    let id = alerts(&pool, Kind::GroupOutage).await[0].id;

    // power returns; screens boot and report one by one. Below the firing threshold (6) the
    // outage holds on while at least half of it (3) is still dark
    for (n, d) in tokyo[..7].iter().enumerate() {
        let at = t(11, 0) + TimeDelta::minutes(n as i64);
        recover(&pool, d, at).await;
        let out = tick(&pool, &s, at).await.unwrap();
        assert_eq!(out.resolved, vec![], "{} still dark", 9 - n);
        assert_eq!(out.uncovered, 0);
    }
    let o = &alerts(&pool, Kind::GroupOutage).await[0];
    assert_eq!(o.status, "firing");
    assert_eq!(o.details["count"], 3);
    assert_eq!(
        o.summary,
        "Building Tokyo HQ: 3 devices silent since 10:02Z"
    );

    recover(&pool, &tokyo[7], t(11, 10)).await;
    let out = tick(&pool, &s, t(11, 10)).await.unwrap();
    assert_eq!(
        out,
        Outcome {
            resolved: vec![fired(Kind::GroupOutage, "tokyo-hq")],
            uncovered: 2,
            ..Outcome::default()
        }
    );
    let o = &alerts(&pool, Kind::GroupOutage).await[0];
    assert_eq!(o.id, id);
    assert_eq!(o.status, "resolved");
    assert_eq!(
        o.summary,
        "Building Tokyo HQ: outage over, 2 devices still silent"
    );
    assert_eq!(
        strings(&o.details["resolution"]["still_failing"]),
        tokyo[8..10].to_vec()
    );
    // the two screens that stayed dark now stand on their own (they will be notified)
    for d in &tokyo[8..10] {
        let g = gap_of(&pool, d).await;
        assert_eq!(g.status, "firing");
        assert_eq!(g.covered_by, None, "{d}");
        assert_eq!(
            event_types(&pool, g.id).await,
            ["opened", "covered", "uncovered"]
        );
    }
    // the recovered ones keep the record of what covered them
    assert_eq!(gap_of(&pool, &tokyo[0]).await.covered_by, Some(id));

    let events = event_count(&pool).await;
    assert_eq!(
        tick(&pool, &s, t(11, 11)).await.unwrap(),
        Outcome::default()
    );
    assert_eq!(event_count(&pool).await, events);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn group_outage_refiring_within_reopen_window_reopens(pool: PgPool) {
    let s = settings();
    let tokyo = fleet_of_five_buildings(&pool).await;
    for d in &tokyo[..4] {
        gap(&pool, d, t(10, 0)).await;
    }
    tick(&pool, &s, t(10, 1)).await.unwrap();
    let id = alerts(&pool, Kind::GroupOutage).await[0].id;
    for d in &tokyo[..4] {
        recover(&pool, d, t(10, 10)).await;
    }
    let out = tick(&pool, &s, t(10, 10)).await.unwrap();
    assert_eq!(out.resolved, vec![fired(Kind::GroupOutage, "tokyo-hq")]);
    assert_eq!(out.uncovered, 0, "nothing left to release");

    // the breaker trips again 15 minutes later: same incident, same id
    for d in &tokyo[..5] {
        gap(&pool, d, t(10, 25)).await;
    }
    let out = tick(&pool, &s, t(10, 26)).await.unwrap();
    assert_eq!(out.fired, vec![fired(Kind::GroupOutage, "tokyo-hq")]);
    assert_eq!(out.covered, 5);
    let outages = alerts(&pool, Kind::GroupOutage).await;
    assert_eq!(outages.len(), 1);
    assert_eq!(outages[0].id, id);
    assert_eq!(outages[0].status, "firing");
    assert_eq!(outages[0].details["count"], 5);
    assert_eq!(outages[0].details["since"], "2026-11-27T10:25:00Z");
    assert_eq!(
        event_types(&pool, id).await,
        ["opened", "resolved", "reopened"]
    );
    for d in &tokyo[..5] {
        assert_eq!(gap_of(&pool, d).await.covered_by, Some(id));
    }

    // long after the reopen window it is a new incident
    for d in &tokyo[..5] {
        recover(&pool, d, t(11, 0)).await;
    }
    tick(&pool, &s, t(11, 0)).await.unwrap();
    for d in &tokyo[..3] {
        gap(&pool, d, t(13, 0)).await;
    }
    tick(&pool, &s, t(13, 1)).await.unwrap();
    let outages = alerts(&pool, Kind::GroupOutage).await;
    assert_eq!(outages.len(), 2);
    assert_ne!(outages[1].id, id);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_reopened_gap_counts_from_when_it_reopened(pool: PgPool) {
    let s = settings();
    let tokyo = fleet_of_five_buildings(&pool).await;
    // an LTE-flaky screen had a gap at 09:50 that closed at 10:00; the power cut at 10:10
    // reopens that alert (same id, opened_at still 09:50) along with two fresh ones
    gap(&pool, &tokyo[0], t(9, 50)).await;
    recover(&pool, &tokyo[0], t(10, 0)).await;
    assert_eq!(tick(&pool, &s, t(10, 0)).await.unwrap(), Outcome::default());
    gap(&pool, &tokyo[0], t(10, 10)).await;
    gap(&pool, &tokyo[1], t(10, 11)).await;
    gap(&pool, &tokyo[2], t(10, 12)).await;
    let out = tick(&pool, &s, t(10, 12)).await.unwrap();
    assert_eq!(out.fired, vec![fired(Kind::GroupOutage, "tokyo-hq")]);
    assert_eq!(out.covered, 3);
    let o = &alerts(&pool, Kind::GroupOutage).await[0];
    assert_eq!(o.details["since"], "2026-11-27T10:10:00Z");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_late_tick_still_groups_a_burst(pool: PgPool) {
    let s = settings();
    let tokyo = fleet_of_five_buildings(&pool).await;
    for d in &tokyo[..4] {
        gap(&pool, d, t(10, 0)).await;
    }
    // the leader failed over and grouping runs half an hour later: still one incident
    let out = tick(&pool, &s, t(10, 30)).await.unwrap();
    assert_eq!(out.fired, vec![fired(Kind::GroupOutage, "tokyo-hq")]);
    assert_eq!(out.covered, 4);
}

/// 50 reporting screens in five buildings, plus units that must not count as reporting.
async fn carrier_fleet(pool: &PgPool) -> Vec<Vec<String>> {
    let mut fleet = Vec::new();
    for g in 0..5 {
        let id = format!("b{g}");
        group(pool, &id, &format!("Building {g}"), "Asia/Tokyo").await;
        fleet.push(devices(pool, &id, &id, 10).await);
    }
    // installed but never switched on, and decommissioned: 10 more rows, none reporting
    for i in 0..5 {
        device(pool, &format!("new-{i}"), Some("b0"), "never_seen", false).await;
        device(pool, &format!("old-{i}"), Some("b1"), "healthy", true).await;
    }
    fleet
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn carrier_outage_is_one_fleet_outage(pool: PgPool) {
    let mut s = settings();
    // 40% of 50 reporting = 20; had the 10 non-reporting rows counted, 20 of 60 would not do
    s.fleet_outage_fraction = 0.4;
    let fleet = carrier_fleet(&pool).await;
    // the carrier drops: 8 + 6 screens in two buildings, 2 in each of the others, over 5 min
    let failing: Vec<&String> = fleet[0][..8]
        .iter()
        .chain(&fleet[1][..6])
        .chain(&fleet[2][..2])
        .chain(&fleet[3][..2])
        .chain(&fleet[4][..2])
        .collect();
    assert_eq!(failing.len(), 20);

    // 19 screens are not enough
    for (i, d) in failing[..19].iter().enumerate() {
        gap(&pool, d, t(3, 0) + TimeDelta::seconds(15 * i as i64)).await;
    }
    let out = tick(&pool, &s, t(3, 5)).await.unwrap();
    assert_eq!(
        out.fired,
        vec![
            fired(Kind::GroupOutage, "b0"),
            fired(Kind::GroupOutage, "b1")
        ]
    );
    assert!(alerts(&pool, Kind::FleetOutage).await.is_empty());

    gap(&pool, failing[19], t(3, 5)).await;
    let out = tick(&pool, &s, t(3, 5)).await.unwrap();
    assert_eq!(out.fired, vec![fired(Kind::FleetOutage, "fleet")]);
    // the two building outages and the 6 screens outside them
    assert_eq!(out.covered, 8);

    let f = alerts(&pool, Kind::FleetOutage).await;
    assert_eq!(f.len(), 1);
    let f = &f[0];
    assert_eq!(f.subject, "fleet");
    assert_eq!(f.group_id, None);
    assert_eq!(f.severity, "critical");
    assert_eq!(
        f.summary,
        "Fleet: 20 of 50 reporting devices silent since 03:00Z"
    );
    assert_eq!(f.details["count"], 20);
    assert_eq!(f.details["reporting"], 50);
    assert_eq!(f.details["fraction"], 0.4);
    assert_eq!(
        f.details["groups"],
        json!({"b0": 8, "b1": 6, "b2": 2, "b3": 2, "b4": 2})
    );
    let mut listed: Vec<String> = failing.iter().map(|d| d.to_string()).collect();
    listed.sort();
    assert_eq!(strings(&f.details["devices"]), listed);
    assert_eq!(f.details["truncated"], 0);

    // buildings are covered by the fleet, their screens stay with their building
    let groups = alerts(&pool, Kind::GroupOutage).await;
    assert_eq!(groups.len(), 2);
    for g in &groups {
        assert_eq!(g.covered_by, Some(f.id), "{}", g.subject);
    }
    for d in &fleet[0][..8] {
        assert_eq!(gap_of(&pool, d).await.covered_by, Some(groups[0].id));
    }
    for d in &fleet[1][..6] {
        assert_eq!(gap_of(&pool, d).await.covered_by, Some(groups[1].id));
    }
    for b in &fleet[2..] {
        for d in &b[..2] {
            assert_eq!(gap_of(&pool, d).await.covered_by, Some(f.id), "{d}");
        }
    }
    // every firing gap alert is spoken for
    assert!(alerts(&pool, Kind::HeartbeatGap)
        .await
        .iter()
        .all(|g| g.covered_by.is_some()));

    let events = event_count(&pool).await;
    assert_eq!(tick(&pool, &s, t(3, 6)).await.unwrap(), Outcome::default());
    assert_eq!(event_count(&pool).await, events);

    // the carrier recovers: the small buildings and b1 come back; b0 (8 dark) is below half of
    // the fleet threshold (10), so the fleet outage resolves and b0's outage stands alone
    for d in &failing[9..] {
        recover(&pool, d, t(4, 0)).await;
    }
    // 9 left: 8 in b0 and one in b1 (its outage holds by hysteresis: 1 × 2 < 3)
    let out = tick(&pool, &s, t(4, 0)).await.unwrap();
    assert_eq!(
        out.resolved,
        vec![
            fired(Kind::FleetOutage, "fleet"),
            fired(Kind::GroupOutage, "b1")
        ]
    );
    let f = &alerts(&pool, Kind::FleetOutage).await[0];
    assert_eq!(f.status, "resolved");
    let groups = alerts(&pool, Kind::GroupOutage).await;
    assert_eq!(groups[0].status, "firing");
    assert_eq!(groups[0].covered_by, None, "b0 stands on its own now");
    assert_eq!(
        event_types(&pool, groups[0].id).await,
        ["opened", "covered", "uncovered"]
    );
    // b1's remaining screen: released by its building, nobody covers it any more
    let last = gap_of(&pool, failing[8]).await;
    assert_eq!(last.status, "firing");
    assert_eq!(last.covered_by, None);
    for d in &fleet[0][..8] {
        assert_eq!(gap_of(&pool, d).await.covered_by, Some(groups[0].id));
    }
    // released: both building outages (b1's just before it resolved) and b1's screen
    assert_eq!(out.uncovered, 3);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn fleet_outage_lists_at_most_100_devices(pool: PgPool) {
    let s = settings();
    let mut all = Vec::new();
    for g in 0..3 {
        let id = format!("b{g}");
        group(&pool, &id, &id, "UTC").await;
        all.extend(devices(&pool, &id, &id, 50).await);
    }
    // no building sees a burst (one screen every 11 minutes each), but a third of the fleet is
    // dark: the fleet outage counts gaps, whenever they opened
    for k in 0..40 {
        for g in 0..3 {
            gap(
                &pool,
                &all[g * 50 + k],
                t(0, 0) + TimeDelta::minutes(11 * k as i64),
            )
            .await;
        }
    }
    let out = tick(&pool, &s, t(8, 0)).await.unwrap();
    assert_eq!(out.fired, vec![fired(Kind::FleetOutage, "fleet")]);
    assert_eq!(out.covered, 120);
    let f = &alerts(&pool, Kind::FleetOutage).await[0];
    assert_eq!(f.details["count"], 120);
    assert_eq!(f.details["devices"].as_array().unwrap().len(), 100);
    assert_eq!(f.details["truncated"], 20);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn small_fleets_never_have_fleet_outages(pool: PgPool) {
    let s = settings();
    group(&pool, "shop", "Corner shop", "Europe/Berlin").await;
    let all = devices(&pool, "shop", "shop", 8).await;
    // every screen of a fleet below fleet_outage_min_devices (10) dies: one building outage
    for d in &all {
        gap(&pool, d, t(12, 0)).await;
    }
    let out = tick(&pool, &s, t(12, 1)).await.unwrap();
    assert_eq!(out.fired, vec![fired(Kind::GroupOutage, "shop")]);
    assert_eq!(out.covered, 8);
    assert!(alerts(&pool, Kind::FleetOutage).await.is_empty());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn ungrouped_devices_only_count_for_the_fleet(pool: PgPool) {
    let s = settings();
    for i in 0..20 {
        device(&pool, &format!("loose-{i:02}"), None, "healthy", false).await;
    }
    for i in 0..5 {
        gap(&pool, &format!("loose-{i:02}"), t(12, 0)).await;
    }
    // 5 of 20 is below 30%, and below 10 devices; no group to speak of
    assert_eq!(tick(&pool, &s, t(12, 1)).await.unwrap(), Outcome::default());
    for i in 5..10 {
        gap(&pool, &format!("loose-{i:02}"), t(12, 2)).await;
    }
    let out = tick(&pool, &s, t(12, 3)).await.unwrap();
    assert_eq!(out.fired, vec![fired(Kind::FleetOutage, "fleet")]);
    let f = &alerts(&pool, Kind::FleetOutage).await[0];
    assert_eq!(f.details["groups"], json!({"(none)": 10}));
}

/// Make `ids` silent as of `now`: connected, last data 40 minutes ago, due now.
async fn go_dark(pool: &PgPool, ids: &[String], now: DateTime<Utc>) {
    sqlx::query(
        r#"update devices set connected = true, conn_event_ts = $2 - interval '50 minutes',
                              last_impression_at = $2 - interval '40 minutes',
                              last_device_ts = $2 - interval '40 minutes', deadline_at = $2
           where id = any($1)"#,
    )
    .bind(ids)
    .bind(now)
    .execute(pool)
    .await
    .unwrap();
}

/// Through the detector: gaps that open in a building that is dark open covered by its
/// outage, fired or updated just before them in the same tick (`grouping::fire_ahead`), so
/// that a mass gap writes each gap once (issue 12). The trails are what opening then covering
/// wrote before, the group pass after finds nothing to change, and a building below the
/// threshold stays uncovered.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn gaps_in_a_dark_building_open_covered(pool: PgPool) {
    use fleetwatch::detect::Detector;
    use fleetwatch::ingest::health::IngestStatus;
    let d = Detector::new(pool.clone(), settings(), TimeDelta::seconds(20));
    let b: Vec<Vec<String>> = {
        let mut b = Vec::new();
        for g in ["b1", "b2", "b3"] {
            group(&pool, g, &g.to_uppercase(), "UTC").await;
            b.push(devices(&pool, g, g, 5).await);
        }
        b
    };
    // a large building that stays fine: ten dark screens are no fleet outage
    group(&pool, "hq", "HQ", "UTC").await;
    devices(&pool, "hq", "hq", 40).await;
    d.tick(&IngestStatus::Healthy, t(9, 0)).await.unwrap();

    // 10:00, B2: three screens go dark, the threshold: an outage and its gaps in one tick
    go_dark(&pool, &b[1][..3], t(10, 0)).await;
    let out = d.tick(&IngestStatus::Healthy, t(10, 0)).await.unwrap();
    assert_eq!(out.heartbeat.opened.len(), 3);
    assert_eq!(out.grouping.fired, vec![fired(Kind::GroupOutage, "b2")]);
    assert_eq!(out.grouping.covered, 3);

    // 10:05, all of B1 and two more of B2 go dark, and two of B3 (below the threshold)
    let mut dark: Vec<String> = b[0].clone();
    dark.extend_from_slice(&b[1][3..]);
    dark.extend_from_slice(&b[2][..2]);
    go_dark(&pool, &dark, t(10, 5)).await;
    let before = event_count(&pool).await;
    let out = d.tick(&IngestStatus::Healthy, t(10, 5)).await.unwrap();
    assert_eq!(out.heartbeat.opened.len(), 9);
    assert_eq!(out.grouping.fired, vec![fired(Kind::GroupOutage, "b1")]);
    assert_eq!(out.grouping.covered, 7);

    let outages = alerts(&pool, Kind::GroupOutage).await;
    let id = |g: &str| outages.iter().find(|o| o.subject == g).unwrap().id;
    assert_eq!(outages.len(), 2);
    for (building, outage) in [(&b[0], Some(id("b1"))), (&b[1], Some(id("b2")))] {
        for dev in building {
            let gap = gap_of(&pool, dev).await;
            assert_eq!(gap.covered_by, outage, "{dev}");
            assert_eq!(
                event_types(&pool, gap.id).await,
                ["opened", "covered"],
                "{dev}"
            );
        }
    }
    // and each gap row was written once: the version its opening transaction wrote (the
    // transaction of its `opened` entry) is the one that stands, not rewritten by a cover
    let rewritten: Vec<String> = sqlx::query_scalar(
        r#"select a.subject from alerts a join alert_events e on e.alert_id = a.id
           where a.kind = 'heartbeat_gap' and e.type = 'opened' and a.xmin <> e.xmin"#,
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(rewritten.is_empty(), "{rewritten:?}");
    for dev in &b[2][..2] {
        let gap = gap_of(&pool, dev).await;
        assert_eq!(gap.covered_by, None, "{dev}");
        assert_eq!(event_types(&pool, gap.id).await, ["opened"], "{dev}");
    }
    // B2's outage was updated once, ahead of its two new gaps, and lists all five
    assert_eq!(event_types(&pool, id("b2")).await, ["opened", "updated"]);
    assert_eq!(event_types(&pool, id("b1")).await, ["opened"]);
    let b2 = outages.iter().find(|o| o.subject == "b2").unwrap();
    assert_eq!(strings(&b2.details["devices"]), b[1]);
    assert!(b2.summary.contains("5 devices"), "{}", b2.summary);
    // nine gaps opened (9 entries), seven covered (7), one outage opened, one updated
    assert_eq!(event_count(&pool).await - before, 9 + 7 + 2);

    // a tick later nothing new: the group pass writes nothing
    let before = event_count(&pool).await;
    let out = d.tick(&IngestStatus::Healthy, t(10, 6)).await.unwrap();
    assert_eq!(out.grouping, Outcome::default());
    assert_eq!(event_count(&pool).await, before);
}
