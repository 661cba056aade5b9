//! Detection: turns what ingest stored into device health states and alerts.
//!
//! The supervisor (`app::tasks`) runs [`Detector::tick`] every `detector.tick` as a leader-only
//! periodic task (a Postgres advisory lock on a dedicated connection, [`leader`]): first our
//! own ingest health (`ingest_down`, from the verdict `ingest::health` gives), then the heartbeat
//! deadlines that are due, then connection patterns and address drift from new presence events, then grouping into group and
//! fleet outages, then the impressions anomaly of newly closed buckets ([`anomaly`]). Every decision takes `now` as an argument; tests drive `tick` with any clock.

pub mod anomaly;
pub mod connection;
pub mod drift;
pub mod grouping;
pub mod heartbeat;
pub mod leader;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use sqlx::PgPool;

use crate::alerts::lifecycle::{self, AlertSpec};
use crate::config::Config;
use crate::db;
use crate::domain::alert::{Kind, Severity};
use crate::ingest::health::IngestStatus;

/// Detection settings resolved from the configuration once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub expected_interval: TimeDelta,
    pub grace: TimeDelta,
    pub disconnect_grace: TimeDelta,
    /// Data reaches Postgres up to one flush interval after it arrived: allowed for before a
    /// device is called late.
    pub flush_allowance: TimeDelta,
    pub reopen_window: TimeDelta,
    pub max_due_per_tick: i64,
    pub fleet_time_zone: chrono_tz::Tz,
    pub flapping_disconnects: i64,
    pub flapping_window: TimeDelta,
    pub conflict_disconnects: i64,
    pub conflict_window: TimeDelta,
    pub throttled_disconnects: i64,
    pub throttled_window: TimeDelta,
    pub auth_failures: i64,
    pub auth_window: TimeDelta,
    pub group_outage_devices: i64,
    pub group_outage_window: TimeDelta,
    pub fleet_outage_fraction: f64,
    pub fleet_outage_min_devices: i64,
    pub network_outage_fraction: f64,
    pub network_outage_min_devices: i64,
    pub network_outage_min_groups: i64,
    pub network_outage_window: TimeDelta,
    /// Address drift (`detect::drift`), run inside the connection-pattern pass.
    pub drift: drift::DriftSettings,
    /// Impressions anomaly (`detect::anomaly`), judged after grouping.
    pub anomaly: anomaly::AnomalySettings,
    /// Inhibition rules, applied at the end of each connection-pattern pass.
    pub inhibit: Vec<crate::domain::inhibit::InhibitRule>,
    severities: BTreeMap<Kind, Severity>,
    /// The configured groups' time zones and quiet hours, parsed at load.
    pub groups: BTreeMap<String, heartbeat::GroupSchedule>,
    /// What a device without a group (or a group without quiet hours) has.
    pub no_quiet_hours: crate::domain::schedule::QuietHours,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Self {
        let d = &cfg.detector;
        Self {
            expected_interval: d.expected_interval.delta(),
            grace: d.grace.delta(),
            disconnect_grace: d.disconnect_grace.delta(),
            flush_allowance: cfg.telemetry.flush_interval.delta(),
            reopen_window: d.reopen_window.delta(),
            inhibit: cfg.inhibit_rules(),
            drift: drift::DriftSettings::from_config(cfg),
            anomaly: anomaly::AnomalySettings::from_config(cfg),
            max_due_per_tick: d.max_due_per_tick,
            fleet_time_zone: cfg.fleet.time_zone.0,
            flapping_disconnects: d.flapping_disconnects,
            flapping_window: d.flapping_window.delta(),
            conflict_disconnects: d.conflict_disconnects,
            conflict_window: d.conflict_window.delta(),
            throttled_disconnects: d.throttled_disconnects,
            throttled_window: d.throttled_window.delta(),
            auth_failures: d.auth_failures,
            auth_window: d.auth_window.delta(),
            group_outage_devices: d.group_outage_devices,
            group_outage_window: d.group_outage_window.delta(),
            fleet_outage_fraction: d.fleet_outage_fraction,
            fleet_outage_min_devices: d.fleet_outage_min_devices,
            network_outage_fraction: d.network_outage_fraction,
            network_outage_min_devices: d.network_outage_min_devices,
            network_outage_min_groups: d.network_outage_min_groups,
            network_outage_window: d.network_outage_window.delta(),
            severities: d.severities.clone(),
            groups: cfg
                .groups
                .iter()
                .map(|(id, g)| {
                    let schedule = heartbeat::GroupSchedule {
                        time_zone: g.time_zone.unwrap_or(cfg.fleet.time_zone).0,
                        quiet_hours: g.quiet_hours.clone().unwrap_or_default(),
                    };
                    (id.clone(), schedule)
                })
                .collect(),
            no_quiet_hours: Default::default(),
        }
    }

    /// The configured severity of a kind.
    pub fn severity(&self, kind: Kind) -> Severity {
        self.severities
            .get(&kind)
            .copied()
            .unwrap_or_else(|| kind.default_severity())
    }
}

/// Format an instant for summaries: RFC 3339 UTC to the second.
pub fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TickOutcome {
    /// Devices were not evaluated: our own ingest is unhealthy.
    pub ingest_down: bool,
    /// This tick opened (or reopened) the `ingest_down` alert.
    pub ingest_down_opened: bool,
    pub heartbeat: heartbeat::Outcome,
    pub connection: connection::Outcome,
    pub grouping: grouping::Outcome,
    pub anomaly: anomaly::Outcome,
}

/// The detector's memory between ticks; everything else is in Postgres.
#[derive(Debug, Default)]
struct Memory {
    /// False until the first tick of this leadership: that tick is a restart point.
    started: bool,
    /// Since when our ingest has been unhealthy.
    down_since: Option<DateTime<Utc>>,
}

/// The decision-maker. Tests call [`Detector::tick`] with any `now` and ingest status.
pub struct Detector {
    pub pool: PgPool,
    pub settings: Settings,
    /// How long ingest must be unhealthy before `ingest_down` fires (devices are not evaluated
    /// from the first unhealthy tick on).
    pub ingest_down_after: TimeDelta,
    memory: Mutex<Memory>,
}

impl Detector {
    pub fn new(pool: PgPool, settings: Settings, ingest_down_after: TimeDelta) -> Self {
        Self {
            pool,
            settings,
            ingest_down_after,
            memory: Mutex::new(Memory::default()),
        }
    }

    /// Forget leadership state: the next tick counts as a service start.
    pub fn reset(&self) {
        *self.memory.lock().unwrap_or_else(|e| e.into_inner()) = Memory::default();
    }

    /// One pass: our own health, due heartbeats, connection patterns, grouping, impressions
    /// anomaly.
    pub async fn tick(
        &self,
        ingest: &IngestStatus,
        now: DateTime<Utc>,
    ) -> anyhow::Result<TickOutcome> {
        let mut out = TickOutcome::default();
        let (recovered, fire_down) = {
            let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            match ingest {
                IngestStatus::Down(_) => {
                    let since = *m.down_since.get_or_insert(now);
                    (false, now - since >= self.ingest_down_after)
                }
                IngestStatus::Healthy => {
                    // Service start (first tick) and the end of an outage restart every clock.
                    let recovered = !m.started || m.down_since.is_some();
                    m.started = true;
                    m.down_since = None;
                    (recovered, false)
                }
            }
        };
        if let IngestStatus::Down(reason) = ingest {
            out.ingest_down = true;
            if fire_down {
                let mut tx = self.pool.begin().await?;
                let spec = AlertSpec {
                    kind: Kind::IngestDown,
                    subject: "ingest".into(),
                    device_id: None,
                    group_id: None,
                    severity: self.settings.severity(Kind::IngestDown),
                    summary: "fleetwatch ingest is down: device health is not being evaluated"
                        .into(),
                    details: json!({"reason": reason}),
                };
                let fired =
                    lifecycle::fire(&mut tx, &spec, now, self.settings.reopen_window).await?;
                tx.commit().await?;
                out.ingest_down_opened = matches!(
                    fired,
                    lifecycle::Fired::Opened(_) | lifecycle::Fired::Reopened(_)
                );
            }
            return Ok(out);
        }
        if recovered {
            let mut tx = self.pool.begin().await?;
            db::detector::set_restart(&mut *tx, now).await?;
            if let Some(id) =
                crate::db::alerts::firing_id(&mut tx, Kind::IngestDown, "ingest").await?
            {
                lifecycle::resolve(
                    &mut tx,
                    id,
                    now,
                    Some("fleetwatch ingest recovered"),
                    json!({}),
                )
                .await?;
            }
            tx.commit().await?;
        }
        let restart = db::detector::restart_at(&self.pool).await?;
        out.heartbeat = heartbeat::run_due(&self.pool, &self.settings, restart, now).await?;
        out.connection = connection::tick(&self.pool, &self.settings, now).await?;
        out.grouping = grouping::tick(&self.pool, &self.settings, now).await?;
        out.grouping
            .absorb(std::mem::take(&mut out.heartbeat.grouping));
        out.anomaly = anomaly::tick(&self.pool, &self.settings, now).await?;
        Ok(out)
    }
}
