//! `ingest::accept`, the transport-free entry point: classification by topic, the device cap,
//! groups, metrics and the canary, exactly as the MQTT dispatcher gets them, with no broker.

mod common;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use fleetwatch::clock::ManualClock;
use fleetwatch::config::Config;
use fleetwatch::db::presence::Stored;
use fleetwatch::domain::identity::Identity;
use fleetwatch::domain::DropReason;
use fleetwatch::ingest::{
    accept, presence, telemetry, Accepted, DeviceRegistry, IngestContext, TelemetryOutcome,
};
use fleetwatch::metrics::Metrics;
use sqlx::PgPool;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
        .unwrap()
        .to_utc()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn one_entry_point_applies_groups_the_cap_and_metrics(pool: PgPool) {
    let cfg = Config::from_toml(
        r#"
        [groups.lobby]
        name = "Lobby"
        device_pattern = "^lobby-"
        "#,
    )
    .unwrap();
    fleetwatch::db::devices::sync_config(&pool, &cfg, &Identity::from_config(&cfg))
        .await
        .unwrap();
    let clock = ManualClock::new(t0());
    let metrics = Metrics::new();
    let ctx = IngestContext::new(
        &cfg,
        pool.clone(),
        metrics.clone(),
        clock,
        Arc::new(DeviceRegistry::new(vec![], 2)),
    );
    let at = t0();

    // Telemetry: the first device is new, the second known, a third is over the cap of 2.
    let imp = |d: &str| format!("dt/{d}/impressions");
    assert_eq!(
        accept(&ctx, &imp("lobby-1"), b"{}", at).await,
        Accepted::Telemetry(TelemetryOutcome::Buffered { new_device: true })
    );
    assert_eq!(
        accept(&ctx, &imp("lobby-1"), b"{}", at).await,
        Accepted::Telemetry(TelemetryOutcome::Buffered { new_device: false })
    );
    assert_eq!(
        accept(&ctx, &imp("other-1"), b"{}", at).await,
        Accepted::Telemetry(TelemetryOutcome::Buffered { new_device: true })
    );
    assert_eq!(
        accept(&ctx, &imp("third"), b"{}", at).await,
        Accepted::Telemetry(TelemetryOutcome::Dropped(DropReason::DeviceCap))
    );
    assert_eq!(
        accept(&ctx, &imp("lobby-1"), b"not json", at).await,
        Accepted::Telemetry(TelemetryOutcome::Dropped(DropReason::MalformedJson))
    );
    assert_eq!(telemetry::flush(&ctx).await.unwrap(), 2);
    let groups: Vec<(String, Option<String>)> =
        sqlx::query_as("select id, group_id from devices order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        groups,
        [
            ("lobby-1".to_string(), Some("lobby".to_string())),
            ("other-1".to_string(), None)
        ]
    );

    // Presence: stored once, a redelivery is a duplicate, the cap holds here too, and our own
    // client IDs are never devices.
    let ev = connected("lobby-1", ms(at), "s1", 1, "198.51.100.1");
    let topic = "$aws/events/presence/connected/lobby-1";
    assert_eq!(
        accept(&ctx, topic, ev.as_bytes(), at).await,
        Accepted::Presence(presence::Outcome::Stored(Stored::New))
    );
    assert_eq!(
        accept(&ctx, topic, ev.as_bytes(), at).await,
        Accepted::Presence(presence::Outcome::Stored(Stored::Duplicate))
    );
    let over = connected("fourth", ms(at), "s4", 1, "198.51.100.4");
    assert_eq!(
        accept(
            &ctx,
            "$aws/events/presence/connected/fourth",
            over.as_bytes(),
            at
        )
        .await,
        Accepted::Presence(presence::Outcome::Dropped(DropReason::DeviceCap))
    );
    let own = connected("fleetwatch-x-0", ms(at), "s5", 1, "198.51.100.5");
    let out = accept(
        &ctx,
        "$aws/events/presence/connected/fleetwatch-x-0",
        own.as_bytes(),
        at,
    )
    .await;
    assert_eq!(
        out,
        Accepted::Presence(presence::Outcome::Dropped(DropReason::OwnClient))
    );
    assert!(out.ack(), "a dropped message is acknowledged");

    // Strays and the canary.
    assert_eq!(
        accept(&ctx, "somewhere/else", b"{}", at).await,
        Accepted::Unmatched
    );
    let canary = ctx.health.next_payload(at - TimeDelta::milliseconds(250));
    assert_eq!(
        accept(&ctx, &ctx.canary_topic.clone(), &canary, at).await,
        Accepted::Canary
    );
    assert_eq!(ctx.health.last_rtt(), Some(TimeDelta::milliseconds(250)));

    // The metrics production reports.
    let m = metrics.render();
    for line in [
        r#"fleetwatch_mqtt_messages_received_total{kind="telemetry"} 5"#,
        r#"fleetwatch_mqtt_messages_received_total{kind="presence"} 4"#,
        r#"fleetwatch_mqtt_messages_received_total{kind="unmatched"} 1"#,
    ] {
        assert!(m.contains(line), "{line} missing from\n{m}");
    }
    assert_eq!(metrics.dropped_count(DropReason::DeviceCap), 2);
    assert_eq!(metrics.dropped_count(DropReason::TopicMismatch), 1);
    assert_eq!(metrics.devices_created.get(), 2);
}
