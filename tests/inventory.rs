//! The IoT registry inventory and the connectivity reconciliation (`aws::inventory`), against a
//! real moto server (things, groups, attributes, paging, deletion and re-creation) and, for what
//! moto cannot produce (a failing second page, hostile data, access denied, the fleet index's
//! connectivity), through `aws-smithy-mocks` at the SDK boundary.

mod common;

use std::sync::Arc;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_iot::config::Credentials;
use aws_sdk_iot::operation::describe_thing_group::DescribeThingGroupOutput;
use aws_sdk_iot::operation::list_thing_groups::ListThingGroupsOutput;
use aws_sdk_iot::operation::list_things::{ListThingsError, ListThingsOutput};
use aws_sdk_iot::operation::search_index::{SearchIndexError, SearchIndexOutput};
use aws_sdk_iot::types::{
    AttributePayload, ThingAttribute, ThingConnectivity, ThingDocument, ThingGroupProperties,
};
use aws_sdk_iot::Client;
use aws_smithy_mocks::{mock, MockResponseInterceptor, Rule, RuleMode};
use chrono::{DateTime, TimeDelta, Utc};
use common::aws::AwsServer;
use fleetwatch::aws::inventory::{self, Connectivity, Inventory, PageSizes, ACTOR};
use fleetwatch::aws::{AwsHealth, PollerContext};
use fleetwatch::clock::{Clock, ManualClock, SharedClock};
use fleetwatch::config::Config;
use fleetwatch::ingest::{DeviceRegistry, IngestContext};
use sqlx::PgPool;

fn t0() -> DateTime<Utc> {
    "2026-12-01T10:00:00Z".parse().unwrap()
}

struct Env {
    clock: Arc<ManualClock>,
    ctx: PollerContext,
    ingest: IngestContext,
    cfg: Config,
}

async fn env(pool: &PgPool, cfg: Config) -> Env {
    let clock = ManualClock::new(t0());
    let shared: SharedClock = clock.clone();
    let identity = fleetwatch::domain::identity::Identity::from_config(&cfg);
    fleetwatch::db::devices::sync_config(pool, &cfg, &identity)
        .await
        .unwrap();
    let registry = Arc::new(
        DeviceRegistry::load(pool, cfg.devices.max_devices)
            .await
            .unwrap(),
    );
    let ingest = IngestContext::new(
        &cfg,
        pool.clone(),
        fleetwatch::metrics::Metrics::new(),
        shared.clone(),
        registry,
    );
    let ctx = PollerContext::new(
        &cfg,
        pool.clone(),
        shared,
        AwsHealth::on(),
        ingest.metrics.clone(),
    )
    .with_ingest(ingest.clone());
    Env {
        clock,
        ctx,
        ingest,
        cfg,
    }
}

impl Env {
    fn inventory(&self, client: Client) -> Inventory {
        let mut inv = Inventory::new(client, &self.cfg, &self.ctx);
        inv.pages = PageSizes {
            things: 2,
            groups: 2,
            search: 2,
        };
        inv
    }
    fn connectivity(&self, client: Client) -> Connectivity {
        let mut c = Connectivity::new(client, &self.ctx);
        c.pages.search = 2;
        c
    }
}

fn mocked(rules: &[&Rule]) -> Client {
    let interceptor = rules.iter().fold(
        MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny),
        |i, r| i.with_rule(r),
    );
    let conf = aws_sdk_iot::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .http_client(aws_smithy_mocks::create_mock_http_client())
        .interceptor(interceptor)
        .build();
    Client::from_conf(conf)
}

async fn moto_thing(c: &Client, name: &str, attrs: &[(&str, &str)]) {
    let mut p = AttributePayload::builder();
    for (k, v) in attrs {
        p = p.attributes(*k, *v);
    }
    c.create_thing()
        .thing_name(name)
        .attribute_payload(p.build())
        .send()
        .await
        .unwrap();
}

async fn moto_group(c: &Client, name: &str, parent: Option<&str>, attrs: &[(&str, &str)]) {
    let mut p = AttributePayload::builder();
    for (k, v) in attrs {
        p = p.attributes(*k, *v);
    }
    c.create_thing_group()
        .thing_group_name(name)
        .set_parent_group_name(parent.map(str::to_string))
        .thing_group_properties(
            ThingGroupProperties::builder()
                .attribute_payload(p.build())
                .build(),
        )
        .send()
        .await
        .unwrap();
}

async fn moto_add(c: &Client, group: &str, thing: &str) {
    c.add_thing_to_thing_group()
        .thing_group_name(group)
        .thing_name(thing)
        .send()
        .await
        .unwrap();
}

#[derive(Debug, sqlx::FromRow, PartialEq)]
struct Dev {
    id: String,
    group_id: Option<String>,
    state: String,
    expected_interval_ms: Option<i64>,
    grace_ms: Option<i64>,
    retired: bool,
    connected: Option<bool>,
}

async fn devices(pool: &PgPool) -> Vec<Dev> {
    sqlx::query_as(
        r#"select id, group_id, state, expected_interval_ms, grace_ms,
                  retired_at is not null as retired, connected
           from devices order by id"#,
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn dev(pool: &PgPool, id: &str) -> Dev {
    devices(pool)
        .await
        .into_iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("no device {id}"))
}

async fn group_row(pool: &PgPool, id: &str) -> (String, String, String) {
    sqlx::query_as("select time_zone, quiet_hours, source from groups where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn history(pool: &PgPool, id: &str) -> Vec<(String, String)> {
    fleetwatch::db::retirement::history(pool, id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.actor))
        .collect()
}

/// Things in nested groups, attributes and more than one page of things: every thing is a
/// `never_seen` device in its innermost group before it reports; a second sync changes nothing.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn registry_things_become_devices_in_their_groups(pool: PgPool) {
    let moto = AwsServer::moto().await;
    let iot = Client::new(&moto.sdk_config());
    moto_group(
        &iot,
        "tokyo",
        None,
        &[
            ("fleetwatch:time_zone", "Asia/Tokyo"),
            ("fleetwatch:quiet_hours", "01:00-05:00"),
        ],
    )
    .await;
    moto_group(&iot, "tokyo-b7", Some("tokyo"), &[]).await;
    moto_group(
        &iot,
        "osaka",
        None,
        &[("fleetwatch:time_zone", "Not/AZone")],
    )
    .await;
    for n in ["s-1", "s-2", "s-3", "s-4", "s-5"] {
        moto_thing(&iot, n, &[]).await;
    }
    moto_thing(
        &iot,
        "s-6",
        &[
            ("fleetwatch:expected_interval", "2m"),
            ("fleetwatch:grace", "30s"),
        ],
    )
    .await;
    moto_add(&iot, "tokyo", "s-1").await;
    moto_add(&iot, "tokyo-b7", "s-1").await; // innermost wins
    moto_add(&iot, "tokyo", "s-2").await;
    moto_add(&iot, "osaka", "s-3").await;
    moto_add(&iot, "tokyo-b7", "s-6").await;

    let e = env(&pool, Config::default()).await;
    let inv = e.inventory(iot.clone());
    let out = inv.sync().await.unwrap();
    assert_eq!(out.things, 6, "{out:?}");
    let ds = devices(&pool).await;
    let groups: Vec<(&str, Option<&str>)> = ds
        .iter()
        .map(|d| (d.id.as_str(), d.group_id.as_deref()))
        .collect();
    assert_eq!(
        groups,
        vec![
            ("s-1", Some("tokyo-b7")),
            ("s-2", Some("tokyo")),
            ("s-3", Some("osaka")),
            ("s-4", None),
            ("s-5", None),
            ("s-6", Some("tokyo-b7")),
        ]
    );
    assert!(ds.iter().all(|d| d.state == "never_seen" && !d.retired));
    let s6 = dev(&pool, "s-6").await;
    assert_eq!(
        (s6.expected_interval_ms, s6.grace_ms),
        (Some(120_000), Some(30_000))
    );
    assert_eq!(
        group_row(&pool, "tokyo").await,
        (
            "Asia/Tokyo".into(),
            "01:00-05:00".into(),
            "inventory".into()
        )
    );
    // a bad time zone is skipped and counted; the group still exists on the fleet's zone
    assert_eq!(group_row(&pool, "osaka").await.0, "UTC");
    assert_eq!(out.skipped.get("bad_group_attribute"), Some(&1), "{out:?}");
    // ingest knows them: their first report does not count as a new device
    assert!(e.ingest.registry.is_known("s-4"));

    let again = inv.sync().await.unwrap();
    assert_eq!(
        again.writes, 0,
        "an identical sync writes nothing: {again:?}"
    );
    assert_eq!(devices(&pool).await, ds);

    // s-2 leaves its group: the registry's group is taken away; s-4's group from its
    // telemetry topic is not the registry's to take
    iot.remove_thing_from_thing_group()
        .thing_group_name("tokyo")
        .thing_name("s-2")
        .send()
        .await
        .unwrap();
    sqlx::query("insert into groups (id, name, source) values ('b9', 'b9', 'topic')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("update devices set group_id = 'b9' where id = 's-4'")
        .execute(&pool)
        .await
        .unwrap();
    inv.sync().await.unwrap();
    assert_eq!(dev(&pool, "s-2").await.group_id, None);
    assert_eq!(dev(&pool, "s-4").await.group_id.as_deref(), Some("b9"));
}

/// Deleted things are retired (history kept, by the inventory), re-created ones come back; a
/// device retired by hand stays retired; a device that only reports over MQTT is never retired.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn deleted_things_are_retired_and_come_back(pool: PgPool) {
    let moto = AwsServer::moto().await;
    let iot = Client::new(&moto.sdk_config());
    for n in ["a", "b", "c", "d"] {
        moto_thing(&iot, n, &[]).await;
    }
    let e = env(&pool, Config::default()).await;
    // a device that only ever reported over MQTT
    let _ = fleetwatch::ingest::accept(
        &e.ingest,
        &common::presence_topic("connected", "mqtt-only"),
        common::connected("mqtt-only", common::ms(t0()), "s1", 1, "203.0.113.1").as_bytes(),
        t0(),
    )
    .await;
    let inv = e.inventory(iot.clone());
    inv.sync().await.unwrap();

    // a has a firing alert when its thing is deleted
    {
        let mut tx = pool.begin().await.unwrap();
        let spec = fleetwatch::alerts::lifecycle::AlertSpec {
            kind: fleetwatch::domain::alert::Kind::HeartbeatGap,
            subject: "a".into(),
            device_id: Some("a".into()),
            group_id: None,
            severity: fleetwatch::domain::alert::Severity::Warning,
            summary: "a is silent".into(),
            details: serde_json::json!({}),
        };
        fleetwatch::alerts::lifecycle::fire(&mut tx, &spec, t0(), TimeDelta::hours(1))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    // c is retired by hand while still listed
    e.clock.advance(TimeDelta::minutes(10));
    fleetwatch::retirement::retire(&pool, "c", "token:1:ops", e.clock.now())
        .await
        .unwrap();
    for n in ["a", "c"] {
        iot.delete_thing().thing_name(n).send().await.unwrap();
    }
    e.clock.advance(TimeDelta::minutes(10));
    let out = inv.sync().await.unwrap();
    assert_eq!(out.retired, vec!["a".to_string()], "{out:?}");
    assert!(dev(&pool, "a").await.retired);
    assert_eq!(dev(&pool, "a").await.state, "retired");
    assert!(!dev(&pool, "b").await.retired);
    assert!(!dev(&pool, "mqtt-only").await.retired);
    assert_eq!(
        history(&pool, "a").await,
        vec![("retired".into(), ACTOR.into())]
    );
    let firing: i64 = sqlx::query_scalar("select count(*) from alerts where status = 'firing'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(firing, 0, "retiring resolved a's alert");
    // a second sync retires nothing again
    assert_eq!(inv.sync().await.unwrap().writes, 0);

    // both come back: a (the inventory retired it) is unretired, c (retired by hand) is not
    moto_thing(&iot, "a", &[]).await;
    moto_thing(&iot, "c", &[]).await;
    e.clock.advance(TimeDelta::minutes(10));
    let out = inv.sync().await.unwrap();
    assert_eq!(out.unretired, vec!["a".to_string()], "{out:?}");
    assert!(!dev(&pool, "a").await.retired);
    assert_eq!(dev(&pool, "a").await.state, "never_seen");
    assert!(dev(&pool, "c").await.retired);
    assert_eq!(
        history(&pool, "a").await,
        vec![
            ("retired".into(), ACTOR.into()),
            ("unretired".into(), ACTOR.into())
        ]
    );
    assert_eq!(
        history(&pool, "c").await,
        vec![("retired".into(), "token:1:ops".into())]
    );

    // retired by the inventory, then unretired by hand while still deleted: left alone
    iot.delete_thing().thing_name("b").send().await.unwrap();
    inv.sync().await.unwrap();
    fleetwatch::retirement::unretire(&pool, "b", "token:1:ops", e.clock.now())
        .await
        .unwrap();
    inv.sync().await.unwrap();
    assert!(!dev(&pool, "b").await.retired, "the hand's unretire stands");
}

/// Configuration wins where both speak: a configured group keeps its settings and source, a
/// configured device override and a configured pattern group are not overwritten.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn configuration_wins_over_the_registry(pool: PgPool) {
    let moto = AwsServer::moto().await;
    let iot = Client::new(&moto.sdk_config());
    moto_group(
        &iot,
        "paris",
        None,
        &[("fleetwatch:time_zone", "Asia/Tokyo")],
    )
    .await;
    moto_group(&iot, "other", None, &[]).await;
    moto_thing(&iot, "p-1", &[("fleetwatch:expected_interval", "2m")]).await;
    moto_thing(&iot, "x-1", &[]).await;
    moto_add(&iot, "other", "p-1").await;
    moto_add(&iot, "paris", "x-1").await;
    let cfg = Config::from_toml(
        r#"
        [groups.paris]
        time_zone = "Europe/Paris"
        device_pattern = "^p-"
        [devices.overrides.p-1]
        expected_interval = "15m"
        "#,
    )
    .unwrap();
    let e = env(&pool, cfg).await;
    e.inventory(iot).sync().await.unwrap();
    assert_eq!(
        group_row(&pool, "paris").await,
        ("Europe/Paris".into(), "".into(), "config".into())
    );
    let p1 = dev(&pool, "p-1").await;
    assert_eq!(p1.group_id.as_deref(), Some("paris"), "the pattern wins");
    assert_eq!(
        p1.expected_interval_ms,
        Some(900_000),
        "the file's override wins"
    );
    // the registry's own membership still applies where the file says nothing
    assert_eq!(dev(&pool, "x-1").await.group_id.as_deref(), Some("paris"));
}

/// `inventory.client_id_attribute` and `group_attribute`: the client ID reaches ingest without
/// a restart, and the attribute names the group.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn client_id_and_group_attributes(pool: PgPool) {
    let moto = AwsServer::moto().await;
    let iot = Client::new(&moto.sdk_config());
    moto_thing(
        &iot,
        "screen-1",
        &[("mqtt_client", "bridgeawsiot-1"), ("building", "b-12")],
    )
    .await;
    moto_thing(&iot, "screen-2", &[("mqtt_client", "bridgeawsiot-1")]).await;
    let mut cfg = Config::default();
    cfg.inventory.client_id_attribute = Some("mqtt_client".into());
    cfg.inventory.group_attribute = Some("building".into());
    let e = env(&pool, cfg).await;
    let out = e.inventory(iot).sync().await.unwrap();
    assert_eq!(
        out.skipped.get("bad_client_id"),
        Some(&1),
        "claimed twice: {out:?}"
    );
    assert_eq!(
        dev(&pool, "screen-1").await.group_id.as_deref(),
        Some("b-12")
    );
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("select client_id, device_id, source from client_ids")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![(
            "bridgeawsiot-1".into(),
            "screen-1".into(),
            "inventory".into()
        )]
    );
    let _ = fleetwatch::ingest::accept(
        &e.ingest,
        &common::presence_topic("connected", "bridgeawsiot-1"),
        common::connected("bridgeawsiot-1", common::ms(t0()), "s1", 1, "203.0.113.1").as_bytes(),
        t0(),
    )
    .await;
    assert_eq!(dev(&pool, "screen-1").await.connected, Some(true));
    assert_eq!(
        devices(&pool).await.len(),
        2,
        "no device named after the client ID"
    );

    // another replica (or this one after a restart) learns it from Postgres, not from AWS
    let other = env(&pool, e.cfg.clone()).await;
    assert_eq!(
        other.ingest.identity.client("bridgeawsiot-1"),
        fleetwatch::domain::identity::ClientIdentity::Device("bridgeawsiot-1".into())
    );
    inventory::refresh_ingest(&pool, &other.ingest)
        .await
        .unwrap();
    assert_eq!(
        other.ingest.identity.client("bridgeawsiot-1"),
        fleetwatch::domain::identity::ClientIdentity::Device("screen-1".into())
    );
    assert!(other.ingest.registry.is_known("screen-2"));
}

fn things_page(names: &[&str], next: Option<&str>) -> ListThingsOutput {
    let mut b = ListThingsOutput::builder().set_next_token(next.map(str::to_string));
    for n in names {
        b = b.things(ThingAttribute::builder().thing_name(*n).build());
    }
    b.build()
}

fn no_groups() -> Rule {
    mock!(Client::list_thing_groups).then_output(|| ListThingGroupsOutput::builder().build())
}

/// A listing whose second page fails retires nothing and writes nothing.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_failing_page_retires_nothing(pool: PgPool) {
    let e = env(&pool, Config::default()).await;
    let groups = no_groups();
    let full_1 = mock!(Client::list_things)
        .match_requests(|r| r.next_token().is_none())
        .then_output(|| things_page(&["a", "b"], Some("p2")));
    let full_2 = mock!(Client::list_things)
        .match_requests(|r| r.next_token() == Some("p2"))
        .then_output(|| things_page(&["c"], None));
    e.inventory(mocked(&[&groups, &full_1, &full_2]))
        .sync()
        .await
        .unwrap();
    assert_eq!(devices(&pool).await.len(), 3);

    let page_1 = mock!(Client::list_things)
        .match_requests(|r| r.next_token().is_none())
        .then_output(|| things_page(&["a"], Some("p2")));
    let page_2 = mock!(Client::list_things)
        .match_requests(|r| r.next_token() == Some("p2"))
        .then_error(|| {
            ListThingsError::InvalidRequestException(
                aws_sdk_iot::types::error::InvalidRequestException::builder()
                    .message("page 2 broke")
                    .build(),
            )
        });
    let err = e
        .inventory(mocked(&[&groups, &page_1, &page_2]))
        .sync()
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("ListThings"), "{err:#}");
    assert!(
        devices(&pool).await.iter().all(|d| !d.retired),
        "b and c are missing from a partial listing only"
    );
}

/// Hostile registry data: control characters, 10,000-character values, bad durations and zones,
/// the same thing on two pages. Nothing panics, good things are stored, a second run is a no-op.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hostile_registry_data_is_skipped_and_counted(pool: PgPool) {
    let e = env(&pool, Config::default()).await;
    let long = "x".repeat(10_000);
    let (l1, l2) = (long.clone(), long.clone());
    let page_1 = mock!(Client::list_things)
        .match_requests(|r| r.next_token().is_none())
        .then_output(move || {
            ListThingsOutput::builder()
                .things(ThingAttribute::builder().thing_name("ok-1").build())
                .things(ThingAttribute::builder().thing_name("bell\u{7}\n").build())
                .things(ThingAttribute::builder().thing_name(&l1).build())
                .things(
                    ThingAttribute::builder()
                        .thing_name("ok-2")
                        .attributes("fleetwatch:expected_interval", &l1)
                        .attributes("fleetwatch:grace", "-5m")
                        .build(),
                )
                .next_token("p2")
                .build()
        });
    let page_2 = mock!(Client::list_things)
        .match_requests(|r| r.next_token() == Some("p2"))
        .then_output(|| things_page(&["ok-1", "<script>alert(1)</script>"], None));
    let groups = mock!(Client::list_thing_groups).then_output(|| {
        ListThingGroupsOutput::builder()
            .thing_groups(
                aws_sdk_iot::types::GroupNameAndArn::builder()
                    .group_name("g")
                    .build(),
            )
            .build()
    });
    let describe = mock!(Client::describe_thing_group).then_output(move || {
        DescribeThingGroupOutput::builder()
            .thing_group_name("g")
            .thing_group_properties(
                ThingGroupProperties::builder()
                    .attribute_payload(
                        AttributePayload::builder()
                            .attributes("fleetwatch:time_zone", &l2)
                            .attributes("fleetwatch:quiet_hours", "25:00-99:00")
                            .build(),
                    )
                    .build(),
            )
            .build()
    });
    let members = mock!(Client::list_things_in_thing_group).then_output(|| {
        aws_sdk_iot::operation::list_things_in_thing_group::ListThingsInThingGroupOutput::builder()
            .things("ok-1")
            .things("not-a-listed-thing")
            .build()
    });
    let client = mocked(&[&page_1, &page_2, &groups, &describe, &members]);
    let logs = fleetwatch::logging::Captured::default();
    let guard = logs.install();
    let inv = e.inventory(client);
    let out = inv.sync().await.unwrap();
    drop(guard);
    let ids: Vec<String> = devices(&pool).await.into_iter().map(|d| d.id).collect();
    assert_eq!(ids, vec!["<script>alert(1)</script>", "ok-1", "ok-2"]);
    assert_eq!(out.skipped.get("bad_thing_name"), Some(&2), "{out:?}");
    assert_eq!(out.skipped.get("duplicate_thing"), Some(&1), "{out:?}");
    assert_eq!(out.skipped.get("bad_thing_attribute"), Some(&2), "{out:?}");
    assert_eq!(out.skipped.get("bad_group_attribute"), Some(&2), "{out:?}");
    assert_eq!(dev(&pool, "ok-1").await.group_id.as_deref(), Some("g"));
    assert_eq!(
        group_row(&pool, "g").await,
        ("UTC".into(), "".into(), "inventory".into())
    );
    let ok2 = dev(&pool, "ok-2").await;
    assert_eq!((ok2.expected_interval_ms, ok2.grace_ms), (None, None));
    let text = logs.text();
    assert!(!text.contains(&long[..200]), "values are cut in the log");
    assert!(!text.contains('\u{7}'), "control characters are escaped");
    let notes = e.ctx.health.records()["inventory"].notes.clone();
    assert!(notes.iter().any(|n| n.contains("skipped")), "{notes:?}");
    assert_eq!(inv.sync().await.unwrap().writes, 0);
}

/// Access denied on ListThings: after `aws.failures_before_alert` polls one `aws_poll_failing`
/// alert, nothing retired, no device alert.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn access_denied_raises_our_own_alert_only(pool: PgPool) {
    let e = env(&pool, Config::default()).await;
    let groups = no_groups();
    let ok = mock!(Client::list_things).then_output(|| things_page(&["a", "b"], None));
    e.inventory(mocked(&[&groups, &ok])).sync().await.unwrap();
    let denied = mock!(Client::list_things).then_error(|| {
        ListThingsError::UnauthorizedException(
            aws_sdk_iot::types::error::UnauthorizedException::builder()
                .message("not authorized to perform iot:ListThings")
                .build(),
        )
    });
    let inv = e.inventory(mocked(&[&groups, &denied]));
    let poller = e.ctx.health.poller("inventory");
    for i in 0..e.cfg.aws.failures_before_alert {
        e.clock.advance(TimeDelta::minutes(10));
        let r = inv.sync().await;
        assert!(r.is_err());
        poller.record(&r, e.clock.now());
        fleetwatch::aws::health::sync_alert(&pool, &e.ctx.health, e.ctx.alert, e.clock.now())
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar("select count(*) from alerts")
            .fetch_one(&pool)
            .await
            .unwrap();
        let want = i64::from(i + 1 == e.cfg.aws.failures_before_alert);
        assert_eq!(n, want, "after {} failures", i + 1);
    }
    let (kind, device): (String, Option<String>) =
        sqlx::query_as("select kind, device_id from alerts")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), device), ("aws_poll_failing", None));
    assert!(devices(&pool).await.iter().all(|d| !d.retired));
}

fn doc(name: &str, connected: bool, at: DateTime<Utc>) -> ThingDocument {
    ThingDocument::builder()
        .thing_name(name)
        .connectivity(
            ThingConnectivity::builder()
                .connected(connected)
                .timestamp(at.timestamp_millis())
                .build(),
        )
        .build()
}

async fn presence(e: &Env, payload: String, client: &str, kind: &str, at: DateTime<Utc>) {
    let _ = fleetwatch::ingest::accept(
        &e.ingest,
        &common::presence_topic(kind, client),
        payload.as_bytes(),
        at,
    )
    .await;
}

/// The index corrects connectivity older than its timestamp (recorded in the history, not a
/// presence event); a presence event older than the index's timestamp does not undo it, a newer
/// one wins. Pages follow `nextToken`; a timestamp from the future counts as now.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_index_corrects_older_connectivity_and_later_presence_wins(pool: PgPool) {
    let e = env(&pool, Config::default()).await;
    let now = t0() + TimeDelta::hours(2);
    // a: connected at t0, the index says disconnected at t0+1h → corrected
    // b: disconnected at t0+90m, the index says connected at t0+1h → kept (ours is newer)
    // c: never reported, the index says connected, stamped a day ahead → corrected, as of now
    presence(
        &e,
        common::connected("a", common::ms(t0()), "sa", 5, "198.51.100.1"),
        "a",
        "connected",
        t0(),
    )
    .await;
    let b_at = t0() + TimeDelta::minutes(90);
    presence(
        &e,
        common::disconnected("b", common::ms(b_at), "sb", 2, "MQTT_KEEP_ALIVE_TIMEOUT"),
        "b",
        "disconnected",
        b_at,
    )
    .await;
    sqlx::query("insert into devices (id) values ('c')")
        .execute(&pool)
        .await
        .unwrap();
    e.clock.set(now);
    let idx = t0() + TimeDelta::hours(1);
    let future = now + TimeDelta::days(1);
    let t1 = mock!(Client::search_index)
        .match_requests(|r| {
            r.query_string() == Some("connectivity.connected:true") && r.next_token().is_none()
        })
        .then_output(move || {
            SearchIndexOutput::builder()
                .things(doc("b", true, idx))
                .things(doc("ghost", true, idx))
                .next_token("t2")
                .build()
        });
    let t2 = mock!(Client::search_index)
        .match_requests(|r| r.next_token() == Some("t2"))
        .then_output(move || {
            SearchIndexOutput::builder()
                .things(doc("c", true, future))
                .things(
                    ThingDocument::builder()
                        .thing_name("no-connectivity")
                        .build(),
                )
                .build()
        });
    let f = mock!(Client::search_index)
        .match_requests(|r| r.query_string() == Some("connectivity.connected:false"))
        .then_output(move || {
            SearchIndexOutput::builder()
                .things(doc("a", false, idx))
                .build()
        });
    let con = e.connectivity(mocked(&[&t1, &t2, &f]));
    let out = con.reconcile().await.unwrap();
    assert!(out.indexed);
    assert_eq!(
        out.corrected,
        vec!["a".to_string(), "c".to_string()],
        "{out:?}"
    );
    assert_eq!(out.skipped, 1);
    assert_eq!(dev(&pool, "a").await.connected, Some(false));
    assert_eq!(dev(&pool, "b").await.connected, Some(false));
    assert_eq!(dev(&pool, "c").await.connected, Some(true));
    let c_ts: DateTime<Utc> =
        sqlx::query_scalar("select conn_event_ts from devices where id = 'c'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(c_ts, now, "a future stamp counts as now");
    assert_eq!(
        history(&pool, "a").await,
        vec![("connectivity_corrected".into(), ACTOR.into())]
    );
    let events: i64 =
        sqlx::query_scalar("select count(*) from presence_events where device_id = 'a'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(events, 1, "a correction is not a presence event");
    // idempotent
    assert!(con.reconcile().await.unwrap().corrected.is_empty());

    // an older presence event (a higher version, 10 minutes before the index) does not undo it
    let older = idx - TimeDelta::minutes(10);
    presence(
        &e,
        common::connected("a", common::ms(older), "sa2", 9, "198.51.100.1"),
        "a",
        "connected",
        now,
    )
    .await;
    assert_eq!(
        dev(&pool, "a").await.connected,
        Some(false),
        "older event loses"
    );
    // a newer one (even with a lower version, within 30 minutes) wins
    let newer = idx + TimeDelta::minutes(5);
    presence(
        &e,
        common::connected("a", common::ms(newer), "sa3", 1, "198.51.100.1"),
        "a",
        "connected",
        now,
    )
    .await;
    assert_eq!(
        dev(&pool, "a").await.connected,
        Some(true),
        "newer event wins"
    );
}

/// No fleet index (or no connectivity in it): said once in the log and as a note on /healthz;
/// the poll succeeds.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn without_fleet_indexing_reconciliation_says_so_once(pool: PgPool) {
    let e = env(&pool, Config::default()).await;
    let missing = mock!(Client::search_index).then_error(|| {
        SearchIndexError::ResourceNotFoundException(
            aws_sdk_iot::types::error::ResourceNotFoundException::builder()
                .message("Index AWS_Things does not exist")
                .build(),
        )
    });
    let con = e.connectivity(mocked(&[&missing]));
    let logs = fleetwatch::logging::Captured::default();
    let guard = logs.install();
    for _ in 0..3 {
        let out = con.reconcile().await.unwrap();
        assert!(!out.indexed);
    }
    drop(guard);
    assert_eq!(
        logs.text()
            .matches("fleet indexing with connectivity is not enabled")
            .count(),
        1,
        "{}",
        logs.text()
    );
    let notes = e.ctx.health.records()["connectivity"].notes.clone();
    assert!(notes[0].contains("not enabled"), "{notes:?}");
}

/// Against moto: SearchIndex answers and the `nextToken` loop ends (moto does not page and
/// matches nothing for `connectivity.*` terms, so the paging itself is the mocked test's), and
/// a reconciliation against it is a successful poll that corrects nothing.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn search_index_against_moto(pool: PgPool) {
    let moto = AwsServer::moto().await;
    let iot = Client::new(&moto.sdk_config());
    for n in ["m-1", "m-2", "m-3"] {
        moto_thing(&iot, n, &[]).await;
    }
    // moto matches `connectivity.*` terms against nothing; `*` lists every thing
    let docs = inventory::search_all(&iot, "*", 2).await.unwrap();
    let mut names: Vec<&str> = docs.iter().filter_map(|d| d.thing_name()).collect();
    names.sort();
    assert_eq!(names, vec!["m-1", "m-2", "m-3"]);
    let e = env(&pool, Config::default()).await;
    e.inventory(iot.clone()).sync().await.unwrap();
    let out = e.connectivity(iot).reconcile().await.unwrap();
    assert!(out.indexed);
    assert!(out.corrected.is_empty(), "{out:?}");
}

/// A registry larger than `devices.max_devices` is kept whole (the registry is authoritative);
/// the log and /healthz say so, and ingest then creates no device outside the registry.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_registry_over_the_cap_is_kept_whole_and_said(pool: PgPool) {
    let mut cfg = Config::default();
    cfg.devices.max_devices = 2;
    let e = env(&pool, cfg).await;
    let groups = no_groups();
    let things = mock!(Client::list_things).then_output(|| things_page(&["a", "b", "c"], None));
    e.inventory(mocked(&[&groups, &things]))
        .sync()
        .await
        .unwrap();
    assert_eq!(devices(&pool).await.len(), 3);
    let notes = e.ctx.health.records()["inventory"].notes.clone();
    assert!(
        notes.iter().any(|n| n.contains("devices.max_devices = 2")),
        "{notes:?}"
    );
    // a registry device reports: known, stored
    presence(
        &e,
        common::connected("c", common::ms(t0()), "s", 1, "198.51.100.1"),
        "c",
        "connected",
        t0(),
    )
    .await;
    assert_eq!(dev(&pool, "c").await.connected, Some(true));
    // an unknown client is over the cap
    presence(
        &e,
        common::connected("stranger", common::ms(t0()), "s", 1, "198.51.100.1"),
        "stranger",
        "connected",
        t0(),
    )
    .await;
    assert_eq!(devices(&pool).await.len(), 3);
}

/// On a manual clock through the real detector: registry devices that never report stay
/// `never_seen` for hours without an alert (DESIGN §2a); one that reports is evaluated like any
/// device (its registry override applies), and once its thing is deleted it is retired and its
/// silence alerts nobody.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn registry_devices_through_the_detector(pool: PgPool) {
    use fleetwatch::detect::{Detector, Settings};
    use fleetwatch::ingest::health::IngestStatus;
    let e = env(&pool, Config::default()).await;
    let detector = Detector::new(
        pool.clone(),
        Settings::from_config(&e.cfg),
        TimeDelta::seconds(20),
    );
    let groups = no_groups();
    let both = mock!(Client::list_things).then_output(|| {
        ListThingsOutput::builder()
            .things(ThingAttribute::builder().thing_name("quiet").build())
            .things(
                ThingAttribute::builder()
                    .thing_name("talker")
                    .attributes("fleetwatch:expected_interval", "1h")
                    .build(),
            )
            .build()
    });
    e.inventory(mocked(&[&groups, &both])).sync().await.unwrap();
    let tick = |at: DateTime<Utc>| {
        let detector = &detector;
        async move { detector.tick(&IngestStatus::Healthy, at).await.unwrap() }
    };
    tick(e.clock.now()).await;
    // talker reports once; with a 1 h interval (+ 5 min grace) it is not due at 30 min
    presence(
        &e,
        common::connected("talker", common::ms(e.clock.now()), "s", 1, "198.51.100.1"),
        "talker",
        "connected",
        e.clock.now(),
    )
    .await;
    for _ in 0..6 {
        e.clock.advance(TimeDelta::minutes(5));
        tick(e.clock.now()).await;
    }
    let alerts = |pool: PgPool| async move {
        sqlx::query_scalar::<_, String>("select subject from alerts order by id")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    assert!(
        alerts(pool.clone()).await.is_empty(),
        "the registry's 1 h interval applies"
    );
    for _ in 0..12 {
        e.clock.advance(TimeDelta::minutes(10));
        tick(e.clock.now()).await;
    }
    assert_eq!(alerts(pool.clone()).await, vec!["talker".to_string()]);
    assert_eq!(dev(&pool, "quiet").await.state, "never_seen");

    // talker's thing is deleted: retired, its alert resolved, nothing new while it stays silent
    let only_quiet = mock!(Client::list_things).then_output(|| things_page(&["quiet"], None));
    e.inventory(mocked(&[&groups, &only_quiet]))
        .sync()
        .await
        .unwrap();
    for _ in 0..12 {
        e.clock.advance(TimeDelta::minutes(30));
        tick(e.clock.now()).await;
    }
    let firing: i64 = sqlx::query_scalar("select count(*) from alerts where status = 'firing'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(firing, 0);
    assert_eq!(alerts(pool.clone()).await.len(), 1);
    assert_eq!(dev(&pool, "quiet").await.state, "never_seen");
}
