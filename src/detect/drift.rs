//! Address drift (`address_drift`, issue 9 item 8): a device connecting from a network not seen
//! for it within `address_drift.history` (networks: `domain::network`; the rule:
//! `domain::drift::judge`).
//!
//! Runs inside the connection-pattern pass (`detect::connection::tick`), in its transaction,
//! over the same presence cursor: ingest only stores events (§2a: ingest never decides health),
//! and this pass both records the history (`device_networks`) and judges. Only the *settled*
//! part of the batch is handled (the events the cursor advances over in the same transaction),
//! so every stored `connected` event is judged exactly once; duplicates and replays never get
//! here twice because presence events are unique on their natural key.
//!
//! Per pass:
//! 1. each settled `connected` event of a device with an `ipAddress` is classified into a
//!    network; an address that is not one (hostile, malformed) is counted in the outcome and
//!    logged rate-limited, and the event adds nothing to the history;
//! 2. the events are judged in event-time order per device against the history as it stood at
//!    their time (a late old event is judged in its own past, so it cannot raise drift from a
//!    network the device used before it); the sighting time is the event's ordering timestamp
//!    (`domain::presence::order_timestamp`), so a stamp from the future cannot make a network
//!    look recent;
//! 3. a drift of a device that is not retired fires `address_drift` (subject: the device id)
//!    through `alerts::lifecycle`, so reopening, silences, inhibition and webhooks apply as to
//!    every alert; the history is recorded whether or not the rule is enabled, so enabling it
//!    starts with a baseline instead of a month of "first connections";
//! 4. a firing `address_drift` resolves `address_drift.resolve_after` (default 24 h) after the
//!    latest connection judged drift for its device (`device_networks.drift_at`, our clock).
//!    Why time and not acknowledgement: drift is a one-off hint (a unit or its SIM left the
//!    carrier), not a condition that ends; acknowledging in this service records who looked
//!    and never resolves anything, for every kind. A new network within that day updates the
//!    open alert and pushes its resolution out; one after it reopens (within the reopen
//!    window) or opens a new alert;
//! 5. sightings last seen longer than `history` ago are deleted (bounded per pass): they can no
//!    longer make a network "seen". A device silent for longer than `history` therefore comes
//!    back without a baseline: its next connection establishes one and does not alert.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use sqlx::PgConnection;

use super::{at, Settings};
use crate::alerts::lifecycle::{self, AlertSpec, Fired};
use crate::db::networks::{self, NewSighting};
use crate::db::presence::NewPresenceEvent;
use crate::domain::alert::Kind;
use crate::domain::drift::{judge, Sighting, Verdict};
use crate::domain::network::Networks;

/// Sightings deleted per pass at most (retention keeps up over passes without long locks).
const DELETE_BATCH: i64 = 5000;

/// The drift rule's settings, resolved from the configuration once.
#[derive(Clone)]
pub struct DriftSettings {
    pub enabled: bool,
    pub history: TimeDelta,
    pub resolve_after: TimeDelta,
    pub networks: Networks,
    /// `presence.max_clock_skew`: how far past arrival an event's own timestamp is trusted.
    pub max_skew: TimeDelta,
    /// Malformed addresses are logged at most once a minute.
    pub warn: Arc<crate::logging::RateLimitedWarn>,
}

impl std::fmt::Debug for DriftSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriftSettings")
            .field("enabled", &self.enabled)
            .field("history", &self.history)
            .field("resolve_after", &self.resolve_after)
            .field("networks", &self.networks)
            .field("max_skew", &self.max_skew)
            .finish_non_exhaustive()
    }
}

impl DriftSettings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let networks = cfg.network_map().unwrap_or_else(|e| {
            // `Config::load` refuses this; only a hand-built config gets here.
            tracing::error!(error = %e, "networks: ignoring the invalid configuration");
            Networks::default()
        });
        Self {
            enabled: cfg.address_drift.enabled,
            history: cfg.address_drift.history.delta(),
            resolve_after: cfg.address_drift.resolve_after.delta(),
            networks,
            max_skew: cfg.presence.max_clock_skew.delta(),
            warn: Arc::new(crate::logging::RateLimitedWarn::new(
                std::time::Duration::from_secs(60),
            )),
        }
    }
}

/// What a drift pass did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// `connected` events of devices with an address, recorded into the history.
    pub sightings: usize,
    /// Addresses that are not IP addresses (skipped, counted, logged rate-limited).
    pub bad_addresses: usize,
    /// Devices whose connection established a baseline (no history within `history`).
    pub baselines: usize,
    /// Device ids whose `address_drift` became firing this pass (opened or reopened).
    pub fired: Vec<String>,
    pub resolved: Vec<String>,
    /// Sightings deleted by age.
    pub expired: u64,
}

/// One classified connect.
struct Connect<'a> {
    ev: &'a NewPresenceEvent,
    device: &'a str,
    address: &'a str,
    network: crate::domain::network::Network,
    at: DateTime<Utc>,
}

/// Record and judge the settled `connected` events of `events` (see the module doc).
pub async fn pass(
    tx: &mut PgConnection,
    events: &[NewPresenceEvent],
    s: &Settings,
    now: DateTime<Utc>,
) -> anyhow::Result<Outcome> {
    let d = &s.drift;
    let mut out = Outcome::default();
    let mut connects: Vec<Connect> = Vec::new();
    for ev in events {
        if ev.event_type != "connected" {
            continue;
        }
        let (Some(device), Some(address)) = (ev.device_id.as_deref(), ev.ip_address.as_deref())
        else {
            continue;
        };
        match d.networks.classify(address) {
            Ok((_, network)) => connects.push(Connect {
                ev,
                device,
                address,
                network,
                at: crate::domain::presence::order_timestamp(
                    ev.event_ts,
                    ev.received_at,
                    d.max_skew,
                ),
            }),
            Err(e) => {
                out.bad_addresses += 1;
                d.warn.warn(
                    "presence_bad_address",
                    &format_args!(
                        "presence event {} of device {:?}: skipping the address for networks: {e}",
                        ev.id,
                        device.escape_debug().to_string()
                    ),
                );
            }
        }
    }
    out.sightings = connects.len();
    connects.sort_by(|a, b| (a.device, a.at, a.ev.id).cmp(&(b.device, b.at, b.ev.id)));

    let devices: Vec<String> = connects
        .iter()
        .map(|c| c.device.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut history = if devices.is_empty() {
        BTreeMap::new()
    } else {
        networks::history_of(tx, &devices)
            .await
            .context("address drift: reading history")?
    };
    let retired = crate::db::retirement::retired_among(tx, &devices)
        .await
        .context("address drift: reading retired devices")?;

    let mut sightings = Vec::with_capacity(connects.len());
    let mut drifts: Vec<(&Connect, BTreeMap<String, Sighting>)> = Vec::new();
    for c in &connects {
        let h = history.entry(c.device.to_string()).or_default();
        let mut drift_at = None;
        if d.enabled {
            match judge(h, &c.network.name, c.at, d.history) {
                Verdict::Baseline => out.baselines += 1,
                Verdict::Known => {}
                Verdict::Drift { seen } if !retired.contains(c.device) => {
                    drift_at = Some(now);
                    drifts.push((c, seen));
                }
                Verdict::Drift { .. } => {}
            }
        }
        h.entry(c.network.name.clone())
            .and_modify(|x| x.merge(Sighting::at(c.at)))
            .or_insert(Sighting::at(c.at));
        sightings.push(NewSighting {
            device_id: c.device.to_string(),
            network: c.network.name.clone(),
            at: c.at,
            address: c.address.to_string(),
            session: c.ev.session_identifier.clone(),
            drift_at,
        });
    }
    networks::record(tx, &sightings)
        .await
        .context("address drift: recording history")?;
    // Each device's newest connect of the pass is its current network (carrier outages group
    // by it); `connects` is sorted by device, then time.
    let mut current: Vec<(&str, &str, DateTime<Utc>)> = Vec::new();
    for c in &connects {
        match current.last_mut() {
            Some(last) if last.0 == c.device => *last = (c.device, &c.network.name, c.at),
            _ => current.push((c.device, &c.network.name, c.at)),
        }
    }
    if !current.is_empty() {
        networks::set_current(tx, &current)
            .await
            .context("address drift: recording current networks")?;
    }

    if !drifts.is_empty() {
        let ids: Vec<String> = drifts.iter().map(|(c, _)| c.device.to_string()).collect();
        let groups: BTreeMap<String, Option<String>> =
            crate::db::devices::groups_of(&mut *tx, &ids)
                .await
                .context("address drift: reading devices")?
                .into_iter()
                .collect();
        for (c, seen) in drifts {
            if shows_a_later_drift(tx, c).await? {
                continue;
            }
            let spec = spec(c, &seen, groups.get(c.device).cloned().flatten(), s);
            let fired = lifecycle::fire(tx, &spec, now, s.reopen_window)
                .await
                .with_context(|| format!("address drift: firing {}", c.device))?;
            if matches!(fired, Fired::Opened(_) | Fired::Reopened(_)) {
                tracing::info!(
                    device = %c.device,
                    network = %c.network.name,
                    id = fired.id(),
                    "address drift alert firing"
                );
                out.fired.push(c.device.to_string());
            }
        }
    }

    resolve(tx, s, now, &mut out).await?;

    let cutoff = now
        .checked_sub_signed(d.history)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    out.expired = networks::delete_older_than(tx, cutoff, DELETE_BATCH)
        .await
        .context("address drift: deleting old history")?;
    Ok(out)
}

/// Resolve firing `address_drift` alerts `resolve_after` past their device's latest drift.
/// Runs whether or not the rule is enabled, so turning it off lets open alerts end.
async fn resolve(
    tx: &mut PgConnection,
    s: &Settings,
    now: DateTime<Utc>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let firing: Vec<String> =
        crate::db::alerts::firing_subjects(&mut *tx, &[Kind::AddressDrift.as_str()])
            .await
            .context("address drift: reading firing alerts")?
            .into_iter()
            .map(|(_, subject)| subject)
            .collect();
    if firing.is_empty() {
        return Ok(());
    }
    let last = networks::last_drift_of(tx, &firing)
        .await
        .context("address drift: reading last drifts")?;
    for device in firing {
        let last_drift = last.get(&device).copied();
        if last_drift.is_some_and(|t| now - t < s.drift.resolve_after) {
            continue;
        }
        let Some(id) = crate::db::alerts::firing_id(tx, Kind::AddressDrift, &device).await? else {
            continue;
        };
        let outcome = json!({
            "last_drift_at": last_drift.map(at),
            "resolve_after_seconds": s.drift.resolve_after.num_seconds(),
        });
        if lifecycle::resolve(tx, id, now, None, outcome).await? {
            tracing::info!(%device, id, "address drift alert resolved");
            out.resolved.push(device);
        }
    }
    Ok(())
}

/// Whether the device's firing drift alert already shows a later connection than `c`: a late
/// event of an older move (or several moves in one pass) must not overwrite the newest drift
/// the alert tells about. It is still recorded in the history.
async fn shows_a_later_drift(tx: &mut PgConnection, c: &Connect<'_>) -> anyhow::Result<bool> {
    let Some(id) = crate::db::alerts::firing_id(tx, Kind::AddressDrift, c.device)
        .await
        .context("address drift: reading the firing alert")?
    else {
        return Ok(false);
    };
    let shown = crate::db::alerts::snapshot(tx, id)
        .await
        .context("address drift: reading the firing alert")?
        .and_then(|a| {
            a.details
                .get("connected_at")
                .and_then(|v| v.as_str())
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        });
    Ok(shown.is_some_and(|t| t > c.ev.event_ts))
}

fn spec(
    c: &Connect,
    seen: &BTreeMap<String, Sighting>,
    group_id: Option<String>,
    s: &Settings,
) -> AlertSpec {
    let mut before: Vec<(&String, &Sighting)> = seen.iter().collect();
    before.sort_by(|a, b| b.1.last_seen.cmp(&a.1.last_seen).then(a.0.cmp(b.0)));
    let listed = before
        .iter()
        .take(5)
        .map(|(n, x)| format!("{n} (last {})", at(x.last_seen)))
        .collect::<Vec<_>>()
        .join(", ");
    let more = if before.len() > 5 {
        format!(" and {} more", before.len() - 5)
    } else {
        String::new()
    };
    let summary = format!(
        "{} connected from network {} ({}), not seen for it in the last {}; seen before: {listed}{more}",
        c.device,
        c.network.name,
        c.address,
        super::connection::span(s.drift.history),
    );
    let details = json!({
        "network": c.network.name,
        "network_named": c.network.named,
        "address": c.address,
        "session": c.ev.session_identifier,
        "client_id": c.ev.client_id,
        "connected_at": at(c.ev.event_ts),
        "history_seconds": s.drift.history.num_seconds(),
        "seen_before": before.iter().map(|(n, x)| json!({
            "network": n,
            "first_seen": at(x.first_seen),
            "last_seen": at(x.last_seen),
        })).collect::<Vec<_>>(),
    });
    AlertSpec {
        kind: Kind::AddressDrift,
        subject: c.device.to_string(),
        device_id: Some(c.device.to_string()),
        group_id,
        severity: s.severity(Kind::AddressDrift),
        summary,
        details,
    }
}
