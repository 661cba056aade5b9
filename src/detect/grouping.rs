//! Incident grouping (DESIGN.md §2 item 5): per-device heartbeat gaps that belong to one cause
//! become one `group_outage` (a building: power cut, the building's router) or one
//! `fleet_outage` (the carrier, IoT Core). The per-device alerts stay recorded, but are marked
//! `covered_by` the outage, so that notifications send one message per incident instead of one
//! per screen; when the outage resolves, the devices still failing are uncovered and stand on
//! their own.
//!
//! Runs after the heartbeat pass of each detector tick, in one transaction, with `now` injected.
//! The heartbeat pass asks first ([`fire_ahead`]) which group outages the gaps it is about to
//! open make or grow, and those fire just before the gaps, which open covered: the group pass
//! then finds them saying what it would say, and covers only what is not covered yet.
//!
//! Rules:
//! - A group outage fires when at least `group_outage_devices` firing gap alerts of one group
//!   started within `group_outage_window` of each other. The window slides over the alerts'
//!   start times rather than being pinned to `now`, so that a tick that ran late (leader
//!   failover, a heartbeat pass capped by `max_due_per_tick`) still recognises devices that
//!   went silent together. Once firing it covers every firing gap alert of the group, also
//!   ones opened later, and lists them.
//! - A network outage (issue 13: a carrier's outage, whose screens share a few egress prefixes
//!   across every building) fires when, among the reporting devices whose last connection came
//!   from one network (`devices.network`: `[networks]` or the /16 and /32 defaults, recorded by
//!   `detect::drift`), at least `network_outage_fraction` and at least
//!   `network_outage_min_devices` started gap alerts within `network_outage_window` of each
//!   other, in at least `network_outage_min_groups` groups (devices without a group count as
//!   one). Its subject is the network's name. Once firing it covers every firing gap alert of
//!   the network's devices, also ones opened later, and the group outages it *explains*: those
//!   of groups where most firing gaps (more than half) are the network's devices. A building
//!   whose screens are all on one carrier and dark on their own is a group outage: one group is
//!   never a network outage.
//! - A fleet outage fires when the firing gap alerts of reporting devices (not `never_seen`,
//!   not retired) reach `fleet_outage_fraction` of the reporting devices and at least
//!   `fleet_outage_min_devices`. It covers every firing gap alert and every firing group and
//!   network outage.
//! - All resolve with hysteresis, at half their firing threshold, so that an outage whose
//!   devices come back one by one does not resolve and re-fire around the threshold.
//! - Group and network outages are notified after the endpoint's `group_wait`, like device
//!   alerts (`alerts::outbox`): a carrier outage's buildings go dark over a tick or two, and the
//!   network outage that covers their group outages must form before any of them pages.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};

use super::{at, Settings};
use crate::alerts::lifecycle::{self, AlertSpec, Fired};
use crate::db::alerts::{self, FiringGap as Gap, FiringOutage as Outage};
use crate::db::{devices, fleet_counts};
use crate::domain::alert::Kind;

/// What one grouping tick did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Outages opened or reopened, as (kind, subject).
    pub fired: Vec<(Kind, String)>,
    /// Outages resolved, as (kind, subject).
    pub resolved: Vec<(Kind, String)>,
    /// Alerts newly marked as covered by an outage.
    pub covered: usize,
    /// Alerts released by a resolved outage.
    pub uncovered: usize,
}

impl Outcome {
    /// Add what another part of the same tick did (the outages [`fire_ahead`] fired, the gaps
    /// that opened covered).
    pub fn absorb(&mut self, other: Outcome) {
        self.fired.extend(other.fired);
        self.resolved.extend(other.resolved);
        self.covered += other.covered;
        self.uncovered += other.uncovered;
    }
}

/// The fleet outage's subject.
const FLEET: &str = "fleet";
/// Fleet outage details list at most this many devices; the rest is a count. Notification
/// bodies and the dashboard must stay small when thousands of screens are dark.
const MAX_LISTED: usize = 100;

/// Group per-device heartbeat gaps into group and fleet outages. Runs after the heartbeat pass
/// of each detector tick; `now` is injected. One transaction.
pub async fn tick(pool: &PgPool, s: &Settings, now: DateTime<Utc>) -> anyhow::Result<Outcome> {
    let mut tx = pool.begin().await?;
    let out = tick_in(&mut tx, s, now).await?;
    tx.commit().await?;
    Ok(out)
}

async fn tick_in(
    conn: &mut PgConnection,
    s: &Settings,
    now: DateTime<Utc>,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();

    // The common case is a healthy fleet with a few broken screens: one aggregate over the
    // partial index of firing alerts decides that nothing can fire or resolve.
    let (gaps, outages) = alerts::firing_gaps_and_outages(&mut *conn).await?;
    if outages == 0
        && gaps
            < s.group_outage_devices
                .min(s.fleet_outage_min_devices)
                .min(s.network_outage_min_devices)
                .max(1)
    {
        return Ok(out);
    }

    let gaps = alerts::firing_gaps(&mut *conn).await?;
    let firing = alerts::firing_outages(&mut *conn).await?;
    let mut group_outages: BTreeMap<String, Outage> = BTreeMap::new();
    let mut network_outages: BTreeMap<String, Outage> = BTreeMap::new();
    let mut fleet_outage: Option<Outage> = None;
    for o in firing {
        if o.kind == Kind::FleetOutage.as_str() {
            fleet_outage = Some(o);
        } else if o.kind == Kind::NetworkOutage.as_str() {
            network_outages.insert(o.subject.clone(), o);
        } else {
            group_outages.insert(o.subject.clone(), o);
        }
    }

    let reporting = fleet_counts::count_reporting(&mut *conn).await?;
    let fleet = FleetCount::new(&gaps, reporting, s);

    // A fleet outage that ends releases its alerts first, so that the group pass below can
    // take over the devices of buildings that are still dark in this same tick (otherwise they
    // would stand uncovered, and be notified one by one, until the next tick).
    if let Some(o) = &fleet_outage {
        if fleet.should_resolve() {
            resolve_outage(
                conn,
                o,
                Kind::FleetOutage,
                fleet.summary_resolved(),
                &fleet.still_failing,
                now,
                &mut out,
            )
            .await?;
            fleet_outage = None;
        }
    }

    let groups_dark = group_pass(conn, s, now, &gaps, &group_outages, &mut out).await?;
    network_pass(
        conn,
        s,
        now,
        &gaps,
        &network_outages,
        &groups_dark,
        &mut out,
    )
    .await?;

    if fleet_outage.is_some() || fleet.should_fire() {
        let since = kept_since(fleet_outage.as_ref()).unwrap_or(fleet.since);
        let spec = AlertSpec {
            kind: Kind::FleetOutage,
            subject: FLEET.to_string(),
            device_id: None,
            group_id: None,
            severity: s.severity(Kind::FleetOutage),
            summary: format!(
                "Fleet: {} of {} reporting devices silent since {}",
                fleet.count,
                fleet.reporting,
                since.format("%H:%MZ")
            ),
            details: fleet.details(since),
        };
        let id = fire(conn, &spec, s, now, &mut out).await?;
        // Building outages are covered too: a gap already covered by its building keeps that
        // cover (`cover` skips it) and the building is covered by the fleet, so one
        // notification still speaks for all of them.
        let mut ids = alerts::firing_group_and_network_outage_ids(&mut *conn).await?;
        ids.extend(uncovered(gaps.iter()));
        out.covered += lifecycle::cover(conn, &ids, id, now).await?.len();
    }
    Ok(out)
}

/// Fire, resolve and cover the group outages. Returns the group outages firing after it, by
/// group.
async fn group_pass(
    conn: &mut PgConnection,
    s: &Settings,
    now: DateTime<Utc>,
    gaps: &[Gap],
    firing: &BTreeMap<String, Outage>,
    out: &mut Outcome,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let by_group = by_group(gaps);
    // Groups whose outage is firing while none of their devices is in a gap any more must be
    // visited too, to resolve.
    let groups: BTreeSet<&str> = by_group
        .keys()
        .copied()
        .chain(firing.keys().map(String::as_str))
        .collect();
    let names = group_names(conn, &groups).await?;
    let plan = plan_groups(s, &by_group, &groups, firing, &names);
    for (o, summary, still) in plan.resolve {
        resolve_outage(conn, o, Kind::GroupOutage, summary, &still, now, out).await?;
    }
    let outages = fire_groups(conn, s, &plan.fire, now, out).await?;
    let mut covers: Vec<(i64, i64)> = Vec::new();
    for (spec, members) in &plan.fire {
        let id = outages[&spec.subject];
        covers.extend(
            uncovered(members.iter().copied())
                .into_iter()
                .map(|m| (m, id)),
        );
    }
    out.covered += lifecycle::cover_many(conn, &covers, now).await?.len();
    Ok(outages)
}

/// A gap alert the heartbeat pass is about to open in a group, for [`fire_ahead`].
#[derive(Debug, Clone, Copy)]
pub struct NewGap<'a> {
    pub device_id: &'a str,
    pub group_id: &'a str,
}

/// Fire, before the heartbeat pass opens `openings`, the group outages the group pass of this
/// tick would fire or update with them (their buildings are dark), so that the gaps open
/// covered: a mass gap's gaps are written once, not written and then covered (an update of
/// every new alert row that no index spares: a third of the tick, issue 12). Returns the
/// covering outage of each group that has one, which the gaps must name. The group pass that
/// follows the heartbeat pass finds the same outages saying the same, and writes nothing more.
///
/// The plan is the group pass's ([`plan_groups`]) over the firing gaps of these groups plus
/// the openings, each starting `now` (as the alerts opened `now` will). Resolving is left to
/// the group pass. One transaction, committed before the gaps are opened: a gap that then
/// fails to open (ingest moved its device meanwhile) leaves its outage listing it until the
/// group pass of the tick rewrites or resolves it.
pub async fn fire_ahead(
    pool: &PgPool,
    s: &Settings,
    openings: &[NewGap<'_>],
    now: DateTime<Utc>,
) -> anyhow::Result<(BTreeMap<String, i64>, Outcome)> {
    let mut out = Outcome::default();
    let groups: BTreeSet<&str> = openings.iter().map(|o| o.group_id).collect();
    if groups.is_empty() {
        return Ok((BTreeMap::new(), out));
    }
    let mut tx = pool.begin().await?;
    let list: Vec<&str> = groups.iter().copied().collect();
    let mut gaps = alerts::firing_gaps_in_groups(&mut *tx, &list).await?;
    let firing: BTreeMap<String, Outage> = alerts::firing_outages(&mut *tx)
        .await?
        .into_iter()
        .filter(|o| o.kind == Kind::GroupOutage.as_str() && groups.contains(o.subject.as_str()))
        .map(|o| (o.subject.clone(), o))
        .collect();
    // Openings stand in with ids no alert has: the plan's members are told apart by them.
    gaps.extend(openings.iter().zip(1..).map(|(o, i)| Gap {
        id: -i,
        device_id: Some(o.device_id.to_string()),
        group_id: Some(o.group_id.to_string()),
        since: now,
        reporting: true,
        network: None,
        covered: false,
    }));
    let by_group = by_group(&gaps);
    let names = group_names(&mut tx, &groups).await?;
    let mut plan = plan_groups(s, &by_group, &groups, &firing, &names);
    plan.fire
        .retain(|(_, members)| members.iter().any(|m| m.id < 0));
    if plan.fire.is_empty() {
        return Ok((BTreeMap::new(), out));
    }
    let covering = fire_groups(&mut tx, s, &plan.fire, now, &mut out).await?;
    tx.commit().await?;
    Ok((covering, out))
}

/// What the group rule makes of the firing gaps by group.
struct GroupPlan<'a> {
    /// Firing outages to resolve, with their summary and the devices still silent.
    resolve: Vec<(&'a Outage, String, Vec<String>)>,
    /// Outages that fire (open, reopen, update or stay), with the gap alerts each covers.
    fire: Vec<(AlertSpec, Vec<&'a Gap>)>,
}

/// The firing gaps of devices in a group, by group.
fn by_group(gaps: &[Gap]) -> BTreeMap<&str, Vec<&Gap>> {
    bucket(gaps.iter(), |g| g.group_id.as_deref())
}

/// `gaps` by `key`, leaving out those without one.
fn bucket<'a>(
    gaps: impl Iterator<Item = &'a Gap>,
    key: impl Fn(&'a Gap) -> Option<&'a str>,
) -> BTreeMap<&'a str, Vec<&'a Gap>> {
    let mut buckets: BTreeMap<&str, Vec<&Gap>> = BTreeMap::new();
    for g in gaps {
        if let Some(k) = key(g) {
            buckets.entry(k).or_default().push(g);
        }
    }
    buckets
}

/// The group rule (module doc) over `groups`, their firing gaps `by_group` and their firing
/// outages.
fn plan_groups<'a>(
    s: &Settings,
    by_group: &BTreeMap<&str, Vec<&'a Gap>>,
    groups: &BTreeSet<&str>,
    firing: &'a BTreeMap<String, Outage>,
    names: &BTreeMap<String, (String, String)>,
) -> GroupPlan<'a> {
    let mut plan = GroupPlan {
        resolve: Vec::new(),
        fire: Vec::new(),
    };
    for &group in groups {
        let members = by_group.get(group).map(Vec::as_slice).unwrap_or_default();
        let existing = firing.get(group);
        let count = members.len() as i64;
        let since = match existing {
            // Hysteresis: a building whose screens come back one by one stays one incident
            // until fewer than half of the threshold are still dark.
            Some(o) if count * 2 < s.group_outage_devices => {
                let still: Vec<String> = device_list(members);
                let name = display_name(names, group);
                let summary = format!(
                    "Building {name}: outage over, {} still silent",
                    plural(still.len(), "device")
                );
                plan.resolve.push((o, summary, still));
                continue;
            }
            Some(o) => kept_since(Some(o)).unwrap_or_else(|| earliest(members)),
            None => {
                match cluster_start(members, s.group_outage_devices, 1, s.group_outage_window) {
                    Some(t) => t,
                    None => continue,
                }
            }
        };
        let devices = device_list(members);
        let name = display_name(names, group);
        let group_json = match names.get(group) {
            Some((n, tz)) => json!({"id": group, "name": n, "time_zone": tz}),
            None => json!({"id": group, "name": group, "time_zone": null}),
        };
        let spec = AlertSpec {
            kind: Kind::GroupOutage,
            subject: group.to_string(),
            device_id: None,
            group_id: Some(group.to_string()),
            severity: s.severity(Kind::GroupOutage),
            summary: format!(
                "Building {name}: {} silent since {}",
                plural(devices.len(), "device"),
                since.format("%H:%MZ")
            ),
            details: json!({
                "group": group_json,
                "devices": devices,
                "count": devices.len(),
                "since": at(since),
            }),
        };
        plan.fire.push((spec, members.to_vec()));
    }
    plan
}

/// Fire the planned group outages together (a region going dark darkens hundreds of buildings
/// in one pass). Returns each one's id by group.
async fn fire_groups(
    conn: &mut PgConnection,
    s: &Settings,
    fire: &[(AlertSpec, Vec<&Gap>)],
    now: DateTime<Utc>,
    out: &mut Outcome,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let specs: Vec<AlertSpec> = fire.iter().map(|(spec, _)| spec.clone()).collect();
    let fired =
        lifecycle::fire_many(conn, Kind::GroupOutage, &specs, None, now, s.reopen_window).await?;
    Ok(specs
        .into_iter()
        .zip(fired)
        .map(|(spec, f)| {
            record_fired(&spec, f, out);
            (spec.subject, f.id())
        })
        .collect())
}

/// Fire, resolve and cover the network outages (carrier outages across buildings), after the
/// group pass (`group_outages`: the group outages firing after it, by group).
async fn network_pass(
    conn: &mut PgConnection,
    s: &Settings,
    now: DateTime<Utc>,
    gaps: &[Gap],
    firing: &BTreeMap<String, Outage>,
    group_outages: &BTreeMap<String, i64>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let by_network = bucket(gaps.iter().filter(|g| g.reporting), |g| {
        g.network.as_deref()
    });
    // Only networks that could fire, or are firing, are counted: one indexed count each.
    let candidates: BTreeSet<&str> = by_network
        .iter()
        .filter(|(_, m)| m.len() as i64 >= s.network_outage_min_devices)
        .map(|(n, _)| *n)
        .chain(firing.keys().map(String::as_str))
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let list: Vec<&str> = candidates.iter().copied().collect();
    let reporting: BTreeMap<String, i64> = devices::count_reporting_by_network(&mut *conn, &list)
        .await?
        .into_iter()
        .collect();
    let group_ids: BTreeSet<&str> = gaps.iter().filter_map(|g| g.group_id.as_deref()).collect();
    let names = group_names(conn, &group_ids).await?;

    for network in candidates {
        let members = by_network
            .get(network)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let count = NetworkCount::new(members, reporting.get(network).copied().unwrap_or(0), s);
        let existing = firing.get(network);
        let since = match existing {
            Some(o) if count.should_resolve() => {
                let still = device_list(members);
                let summary = format!(
                    "Network {network}: outage over, {} still silent",
                    plural(still.len(), "device")
                );
                resolve_outage(conn, o, Kind::NetworkOutage, summary, &still, now, out).await?;
                continue;
            }
            Some(o) => kept_since(Some(o)).unwrap_or_else(|| earliest(members)),
            None => match cluster_start(
                members,
                count.need,
                s.network_outage_min_groups,
                s.network_outage_window,
            ) {
                Some(t) => t,
                None => continue,
            },
        };
        let affected: BTreeMap<&str, i64> = count
            .per_group
            .iter()
            .map(|(g, n)| (g.as_str(), *n))
            .collect();
        let buildings: Vec<Value> = affected
            .iter()
            .map(|(g, n)| {
                let name = names.get(*g).map_or(*g, |(n, _)| n.as_str());
                json!({"id": g, "name": name, "silent": n})
            })
            .collect();
        let devices = device_list(members);
        let listed: Vec<&String> = devices.iter().take(MAX_LISTED).collect();
        let spec = AlertSpec {
            kind: Kind::NetworkOutage,
            subject: network.to_string(),
            device_id: None,
            group_id: None,
            severity: s.severity(Kind::NetworkOutage),
            summary: format!(
                "Network {network}: {} of {} reporting devices silent in {} since {}",
                count.count,
                count.reporting,
                plural(affected.len(), "building"),
                since.format("%H:%MZ")
            ),
            details: json!({
                "network": network,
                "prefixes": s.drift.networks.prefixes_of(network),
                "count": count.count,
                "reporting": count.reporting,
                "threshold": s.network_outage_fraction,
                "buildings": buildings,
                "devices": listed,
                "truncated": devices.len().saturating_sub(MAX_LISTED),
                "since": at(since),
            }),
        };
        let id = fire(conn, &spec, s, now, out).await?;
        // The group outages it explains are covered with their gaps (which they cover), the
        // network's other gaps directly; `cover` leaves alone what is covered already.
        let mut ids: Vec<i64> = explained_groups(gaps, network)
            .into_iter()
            .filter_map(|g| group_outages.get(g).copied())
            .collect();
        ids.extend(uncovered(members.iter().copied()));
        out.covered += lifecycle::cover(conn, &ids, id, now).await?.len();
    }
    Ok(())
}

/// The ids of the gaps no outage covers yet: only those need covering (a building's gaps
/// mostly open covered, and in a long outage the same gaps are looked at every tick).
fn uncovered<'a>(gaps: impl IntoIterator<Item = &'a Gap>) -> Vec<i64> {
    gaps.into_iter()
        .filter(|g| !g.covered)
        .map(|g| g.id)
        .collect()
}

/// The groups where more than half of the firing gaps are of `network`'s devices: a group
/// outage there is the network's outage seen from one building.
fn explained_groups<'a>(gaps: &'a [Gap], network: &str) -> BTreeSet<&'a str> {
    let mut tally: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for g in gaps {
        if let Some(group) = g.group_id.as_deref() {
            let t = tally.entry(group).or_default();
            t.1 += 1;
            if g.network.as_deref() == Some(network) {
                t.0 += 1;
            }
        }
    }
    tally
        .into_iter()
        .filter(|(_, (mine, all))| mine * 2 > *all)
        .map(|(g, _)| g)
        .collect()
}

/// One network's numbers.
struct NetworkCount {
    /// Firing gap alerts of the network's reporting devices.
    count: i64,
    /// The network's reporting devices.
    reporting: i64,
    /// Gaps needed to fire: the fraction of the reporting devices (rounded up), at least the
    /// minimum.
    need: i64,
    per_group: BTreeMap<String, i64>,
}

impl NetworkCount {
    fn new(members: &[&Gap], reporting: i64, s: &Settings) -> Self {
        let mut per_group = BTreeMap::new();
        for g in members {
            *per_group.entry(group_key(g)).or_insert(0) += 1;
        }
        // The epsilon as in `FleetCount::new`.
        let fraction = (s.network_outage_fraction * reporting as f64 - 1e-9)
            .ceil()
            .max(0.0) as i64;
        NetworkCount {
            count: members.len() as i64,
            reporting,
            need: fraction.max(s.network_outage_min_devices).max(1),
            per_group,
        }
    }

    /// Below half of the firing threshold (and always with nothing left failing).
    fn should_resolve(&self) -> bool {
        self.count == 0 || self.count * 2 < self.need
    }
}

/// A gap's group for counting buildings: devices without a group are one bucket.
fn group_key(g: &Gap) -> String {
    g.group_id.clone().unwrap_or_else(|| "(none)".to_string())
}

/// `fire`, recording opened and reopened outages in the outcome.
async fn fire(
    conn: &mut PgConnection,
    spec: &AlertSpec,
    s: &Settings,
    now: DateTime<Utc>,
    out: &mut Outcome,
) -> anyhow::Result<i64> {
    let fired = lifecycle::fire(conn, spec, now, s.reopen_window).await?;
    record_fired(spec, fired, out);
    Ok(fired.id())
}

/// Log and record an outage that opened or reopened.
fn record_fired(spec: &AlertSpec, fired: Fired, out: &mut Outcome) {
    if matches!(fired, Fired::Opened(_) | Fired::Reopened(_)) {
        tracing::warn!(kind = %spec.kind, subject = %spec.subject, summary = %spec.summary, "outage");
        out.fired.push((spec.kind, spec.subject.clone()));
    }
}

/// Resolve an outage and release what it covered.
async fn resolve_outage(
    conn: &mut PgConnection,
    o: &Outage,
    kind: Kind,
    summary: String,
    still_failing: &[String],
    now: DateTime<Utc>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    // Under its own key: merged into the details, `devices`/`count` must keep saying what the
    // outage was at its largest known state rather than be overwritten.
    let outcome = json!({"resolution": {"still_failing": still_failing}});
    if lifecycle::resolve(conn, o.id, now, Some(&summary), outcome).await? {
        tracing::info!(kind = %kind, subject = %o.subject, "outage resolved");
        out.resolved.push((kind, o.subject.clone()));
    }
    out.uncovered += lifecycle::uncover(conn, o.id, now).await?.len();
    Ok(())
}

/// The fleet-wide numbers.
struct FleetCount {
    /// Firing gap alerts of reporting devices.
    count: i64,
    reporting: i64,
    /// Gaps needed to fire: the fraction of the reporting devices, rounded up.
    need: i64,
    min_devices: i64,
    fraction: f64,
    per_group: BTreeMap<String, i64>,
    still_failing: Vec<String>,
    since: DateTime<Utc>,
}

impl FleetCount {
    fn new(gaps: &[Gap], reporting: i64, s: &Settings) -> Self {
        let counted: Vec<&Gap> = gaps.iter().filter(|g| g.reporting).collect();
        let mut per_group = BTreeMap::new();
        for g in &counted {
            // Devices without a building are one bucket: ops read this map to see whether the
            // outage is everywhere or a few big sites.
            let key = g.group_id.clone().unwrap_or_else(|| "(none)".to_string());
            *per_group.entry(key).or_insert(0) += 1;
        }
        // The epsilon keeps 0.3 × 10 = 3.0000000000000004 from demanding a fourth device.
        let need = (s.fleet_outage_fraction * reporting as f64 - 1e-9)
            .ceil()
            .max(0.0) as i64;
        FleetCount {
            count: counted.len() as i64,
            reporting,
            need,
            min_devices: s.fleet_outage_min_devices,
            fraction: s.fleet_outage_fraction,
            per_group,
            still_failing: device_list(&counted),
            since: earliest(&counted),
        }
    }

    fn should_fire(&self) -> bool {
        self.count > 0 && self.count >= self.need && self.count >= self.min_devices
    }

    /// Below half of the fraction threshold (and always with nothing left failing).
    fn should_resolve(&self) -> bool {
        self.count == 0 || self.count * 2 < self.need
    }

    fn summary_resolved(&self) -> String {
        format!(
            "Fleet: outage over, {} of {} reporting devices still silent",
            self.count, self.reporting
        )
    }

    fn details(&self, since: DateTime<Utc>) -> Value {
        let listed: Vec<&String> = self.still_failing.iter().take(MAX_LISTED).collect();
        let fraction = if self.reporting > 0 {
            // Rounded so that the details only change when the counts do.
            (self.count as f64 / self.reporting as f64 * 10_000.0).round() / 10_000.0
        } else {
            0.0
        };
        json!({
            "count": self.count,
            "reporting": self.reporting,
            "fraction": fraction,
            "threshold": self.fraction,
            "groups": self.per_group,
            "devices": listed,
            "truncated": self.still_failing.len().saturating_sub(MAX_LISTED),
            "since": at(since),
        })
    }
}

/// The start of the first run of at least `need` gap start times within `window` of each
/// other that spans at least `min_groups` groups (devices without a group are one, as
/// [`group_key`] counts them), if any: where the incident began. A building's outage asks for
/// one group, a carrier's for several.
fn cluster_start(
    members: &[&Gap],
    need: i64,
    min_groups: i64,
    window: TimeDelta,
) -> Option<DateTime<Utc>> {
    let need = usize::try_from(need.max(1)).unwrap_or(usize::MAX);
    let min_groups = usize::try_from(min_groups.max(1)).unwrap_or(usize::MAX);
    let mut sorted: Vec<&Gap> = members.to_vec();
    sorted.sort_by_key(|g| g.since);
    let mut first = 0;
    for last in 0..sorted.len() {
        while sorted[last].since - sorted[first].since > window {
            first += 1;
        }
        let run = &sorted[first..=last];
        if run.len() >= need
            && (min_groups == 1
                || run
                    .iter()
                    .map(|g| group_key(g))
                    .collect::<BTreeSet<_>>()
                    .len()
                    >= min_groups)
        {
            return Some(sorted[first].since);
        }
    }
    None
}

/// The `since` an outage already published: it must not move while the outage fires.
fn kept_since(o: Option<&Outage>) -> Option<DateTime<Utc>> {
    let s = o?.details.get("since")?.as_str()?;
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn earliest(members: &[&Gap]) -> DateTime<Utc> {
    members.iter().map(|g| g.since).min().unwrap_or_default()
}

/// Sorted, distinct device ids: the details must not change when only the row order does.
fn device_list(members: &[&Gap]) -> Vec<String> {
    let set: BTreeSet<&str> = members
        .iter()
        .filter_map(|g| g.device_id.as_deref())
        .collect();
    set.into_iter().map(str::to_string).collect()
}

/// Name and time zone of each group that has one.
async fn group_names(
    conn: &mut PgConnection,
    groups: &BTreeSet<&str>,
) -> sqlx::Result<BTreeMap<String, (String, String)>> {
    let ids: Vec<&str> = groups.iter().copied().collect();
    let rows = devices::group_names(conn, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, tz)| (id, (name, tz)))
        .collect())
}

fn display_name<'a>(names: &'a BTreeMap<String, (String, String)>, group: &'a str) -> &'a str {
    names.get(group).map_or(group, |(n, _)| n.as_str())
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(minute: i64) -> Gap {
        Gap {
            id: minute,
            device_id: Some(format!("d{minute}")),
            group_id: Some("g".into()),
            since: DateTime::<Utc>::UNIX_EPOCH + TimeDelta::minutes(minute),
            reporting: true,
            network: Some("carrier".into()),
            covered: false,
        }
    }

    /// A gap at `minute` of a device in `group` on `network`.
    fn on(minute: i64, group: &str, network: &str) -> Gap {
        Gap {
            group_id: Some(group.into()),
            network: Some(network.into()),
            ..gap(minute)
        }
    }

    #[test]
    fn a_carrier_cluster_needs_its_count_within_the_window_across_groups() {
        let w = TimeDelta::minutes(10);
        let refs = |v: &[Gap]| -> Vec<Gap> { v.to_vec() };
        // five in one building: a group outage's business, never a carrier's
        let one: Vec<Gap> = (0..5).map(|m| on(m, "a", "n")).collect();
        let r: Vec<&Gap> = one.iter().collect();
        assert_eq!(cluster_start(&r, 5, 2, w), None);
        assert_eq!(cluster_start(&r, 5, 1, w), Some(one[0].since));
        // five across two buildings within the window
        let two: Vec<Gap> = refs(&[
            on(0, "a", "n"),
            on(1, "b", "n"),
            on(2, "a", "n"),
            on(3, "b", "n"),
            on(9, "a", "n"),
        ]);
        let r: Vec<&Gap> = two.iter().collect();
        assert_eq!(cluster_start(&r, 5, 2, w), Some(two[0].since));
        assert_eq!(cluster_start(&r, 6, 2, w), None);
        // the same five spread over an hour: screens failing one by one are no outage
        let spread: Vec<Gap> = [0, 15, 30, 45, 60]
            .iter()
            .enumerate()
            .map(|(i, m)| on(*m, if i % 2 == 0 { "a" } else { "b" }, "n"))
            .collect();
        let r: Vec<&Gap> = spread.iter().collect();
        assert_eq!(cluster_start(&r, 2, 2, w), None);
        // a burst after a lone early gap starts at the burst, in any input order
        let mut late: Vec<Gap> = refs(&[
            on(50, "b", "n"),
            on(0, "a", "n"),
            on(52, "a", "n"),
            on(51, "c", "n"),
        ]);
        late.reverse();
        let r: Vec<&Gap> = late.iter().collect();
        assert_eq!(
            cluster_start(&r, 3, 2, w),
            Some(DateTime::<Utc>::UNIX_EPOCH + TimeDelta::minutes(50))
        );
    }

    #[test]
    fn a_group_outage_is_explained_by_the_network_of_most_of_its_gaps() {
        let gaps = vec![
            on(0, "a", "n"),
            on(0, "a", "n"),
            on(0, "a", "m"),
            on(0, "b", "n"),
            on(0, "b", "m"),
            on(0, "c", "m"),
            Gap {
                group_id: None,
                ..on(0, "x", "n")
            },
        ];
        assert_eq!(explained_groups(&gaps, "n"), BTreeSet::from(["a"]));
        assert_eq!(explained_groups(&gaps, "m"), BTreeSet::from(["c"]));
        assert!(explained_groups(&gaps, "other").is_empty());
    }

    #[test]
    fn clusters_slide_over_start_times() {
        let w = TimeDelta::minutes(10);
        let spread: Vec<Gap> = [0, 30, 60, 90].map(gap).into();
        let refs: Vec<&Gap> = spread.iter().collect();
        assert_eq!(cluster_start(&refs, 2, 1, w), None);

        let burst: Vec<Gap> = [0, 45, 50, 55, 58].map(gap).into();
        let refs: Vec<&Gap> = burst.iter().collect();
        assert_eq!(cluster_start(&refs, 3, 1, w), Some(burst[1].since));
        assert_eq!(cluster_start(&refs, 5, 1, w), None);
        // exactly the window apart still counts
        let edge: Vec<Gap> = [0, 10].map(gap).into();
        let refs: Vec<&Gap> = edge.iter().collect();
        assert_eq!(cluster_start(&refs, 2, 1, w), Some(edge[0].since));
    }
}
