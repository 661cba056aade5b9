//! The heartbeat clock of DESIGN.md §2a: per device, when it is late, when a gap alerts, and
//! whether it is `silent` (still connected) or `offline`.
//!
//! All deadlines run on our arrival clock. `base = max(last data, restart points)` where the
//! restart points are the first reconnect after the last data (so a device reconnecting every
//! few minutes without data still alerts), the end of quiet hours, and service start / ingest
//! recovery. `late` at `base + interval (+ flush allowance)`, `due` at `late + grace`. At `due` a
//! connected device is `silent`; a device disconnected since `d` is `offline` at
//! `max(due, d + disconnect_grace)`. An open alert stays open until data returns (also through
//! quiet hours); meanwhile presence changes reclassify it silent ⇄ offline in place.
//!
//! [`evaluate`] (the pure rule, in `domain::health`) decides; [`run_due`] takes the devices whose
//! deadline passed (`db::detector::due_devices`), evaluates them and applies each decision
//! with a conditional update: a decision that reclassifies or resolves an alert in its own
//! transaction with the alert's change; the openings in transactions of up to [`OPEN_CHUNK`]
//! devices, a few statements each (a mass gap opens thousands at once), covered from the start
//! by their building's outage where one fires or grows with them ([`grouping::fire_ahead`],
//! just before); all the others (a device rescheduled, or late) in one statement per pass,
//! still conditional per row (issue 12: at a million devices, healthy devices come due by the
//! thousand every second). The queries are in `db::detector`.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::join_all;
use serde_json::json;
use sqlx::PgPool;

use super::{at, grouping, Settings};
use crate::alerts::lifecycle::{self, AlertSpec, GapOpening};
use crate::db::detector::{self, DueDevice, GapMemory, StateWrite};
use crate::domain::alert::Kind;
use crate::domain::schedule::QuietHours;

pub use crate::domain::health::{
    evaluate, Action, Decision, Expectations, Facts, Gap, OpenGap, State,
};

/// What a heartbeat pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub evaluated: usize,
    pub opened: Vec<String>,
    pub reclassified: Vec<String>,
    pub resolved: Vec<String>,
    /// Decisions skipped because ingest changed the device meanwhile (looked at next tick).
    pub raced: usize,
    /// Groups (not from the configuration) whose stored time zone or quiet hours did not
    /// parse, each with what it fell back to: the fleet's time zone, no quiet hours.
    pub unusable_group_settings: Vec<String>,
    /// The group outages fired ahead of the openings ([`grouping::fire_ahead`]) and the gaps
    /// that opened covered by them: the grouping's part of the tick, which
    /// [`super::Detector::tick`] moves into its grouping outcome.
    pub grouping: grouping::Outcome,
}

/// A group's time zone and quiet hours, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupSchedule {
    pub time_zone: chrono_tz::Tz,
    pub quiet_hours: QuietHours,
}

/// The schedule of a group that is not in the configuration (created from a telemetry topic,
/// or left from an earlier configuration), from its stored row. Those values were valid when
/// written, but nothing guarantees it: an unparsable one is a decision made here, on purpose,
/// counted in the outcome and logged: the fleet's time zone, never quiet (alerting rather than
/// silence when in doubt).
fn stored_schedule(
    group: &str,
    row: &DueDevice,
    s: &Settings,
    unusable: &mut Vec<String>,
) -> GroupSchedule {
    let mut problems = Vec::new();
    let time_zone = match row.time_zone.as_deref() {
        None => s.fleet_time_zone,
        Some(t) => crate::config::parse_tz(t).unwrap_or_else(|e| {
            problems.push(format!("time_zone: {e}"));
            s.fleet_time_zone
        }),
    };
    let quiet_hours = row
        .quiet_hours
        .as_deref()
        .unwrap_or_default()
        .parse::<QuietHours>()
        .unwrap_or_else(|e| {
            problems.push(format!("quiet_hours: {e}"));
            QuietHours::default()
        });
    if !problems.is_empty() {
        tracing::warn!(
            group,
            problems = problems.join("; "),
            "stored group settings unusable: evaluating with the fleet's time zone and no quiet hours"
        );
        unusable.push(group.to_string());
    }
    GroupSchedule {
        time_zone,
        quiet_hours,
    }
}

fn ms(v: Option<i64>, default: TimeDelta) -> TimeDelta {
    v.map(TimeDelta::milliseconds).unwrap_or(default)
}

fn describe(row: &DueDevice, class: Gap) -> String {
    let last = row
        .last_impression_at
        .map(|t| format!("last impression {}", at(t)))
        .unwrap_or_else(|| "no impression yet".into());
    match class {
        Gap::Silent => format!("{} silent: connected but no impressions ({last})", row.id),
        Gap::Offline => format!(
            "{} offline: disconnected since {} ({}), {last}",
            row.id,
            row.conn_event_ts.map(at).unwrap_or_else(|| "?".into()),
            row.last_disconnect_reason
                .as_deref()
                .unwrap_or("unknown reason"),
        ),
    }
}

fn gap_details(row: &DueDevice, class: Gap, e: &Expectations) -> serde_json::Value {
    json!({
        "classification": class.as_str(),
        "since": row.last_impression_at,
        "last_impression_at": row.last_impression_at,
        "last_device_ts": row.last_device_ts,
        "connected": row.connected,
        "disconnected_at": if row.connected == Some(false) { row.conn_event_ts } else { None },
        "last_disconnect_reason": row.last_disconnect_reason,
        "last_ip": row.last_ip,
        "expected_interval_seconds": e.interval.num_seconds(),
        "grace_seconds": e.grace.num_seconds(),
    })
}

/// Evaluate every device whose deadline is at or before `now` (at most `max_due_per_tick`).
pub async fn run_due(
    pool: &PgPool,
    s: &Settings,
    service_restart: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> anyhow::Result<Outcome> {
    let rows = detector::due_devices(pool, now, s.max_due_per_tick).await?;
    let mut stored: HashMap<String, GroupSchedule> = HashMap::new();
    let mut out = Outcome::default();
    let mut plain: Vec<(DueDevice, Decision)> = Vec::new();
    let mut opening: Vec<Opening> = Vec::new();
    for row in rows {
        out.evaluated += 1;
        let e = Expectations {
            interval: ms(row.interval_ms, s.expected_interval),
            grace: ms(row.grace_ms, s.grace),
            disconnect_grace: s.disconnect_grace,
            flush_allowance: s.flush_allowance,
        };
        let schedule = match row.group_id.as_deref() {
            None => None,
            // configured groups: the values parsed at load, whatever the row says
            Some(g) => match s.groups.get(g) {
                Some(c) => Some(c),
                None => Some(&*stored.entry(g.to_string()).or_insert_with(|| {
                    stored_schedule(g, &row, s, &mut out.unusable_group_settings)
                })),
            },
        };
        let (tz, quiet) = match schedule {
            Some(c) => (c.time_zone, &c.quiet_hours),
            None => (s.fleet_time_zone, &s.no_quiet_hours),
        };
        let facts = Facts {
            last_data: row.last_impression_at,
            connected: row.connected,
            // on our clock: a disconnect that reaches us late is young to us
            disconnected_at: (row.connected == Some(false))
                .then_some(row.conn_received_at.or(row.conn_event_ts))
                .flatten(),
            first_reconnect: row.first_reconnect,
            // unretiring restarts this device's clock like a service start
            service_restart: service_restart.max(row.unretired_at),
            quiet_until: quiet.quiet_until(tz, now),
            last_quiet_end: quiet.last_end(tz, now),
            next_quiet_start: quiet.next_start(tz, now),
            open: row.alert_id.map(|id| OpenGap {
                id,
                class: row.alert_class.unwrap_or(Gap::Silent),
                last_data_before: row.alert_last_data,
                last_device_ts_before: row.alert_last_device_ts,
            }),
            gap_min_device_ts: row.gap_min_device_ts,
        };
        let decision = evaluate(&facts, &e, now);
        let change = match decision.action {
            Action::None => {
                // Most due devices: rescheduled (or late), no alert touched; written together
                // below.
                plain.push((row, decision));
                continue;
            }
            Action::Open(class) => {
                // Opened together below: a mass gap opens thousands at once.
                opening.push(Opening {
                    row,
                    decision,
                    class,
                    e,
                });
                continue;
            }
            Action::Reclassify { from, to } => AlertChange::Reclassify { from, to },
            Action::Resolve { covered } => AlertChange::Resolve { covered },
        };
        match apply(pool, &row, &facts, &e, &decision, change, now).await? {
            true => match change {
                AlertChange::Reclassify { .. } => out.reclassified.push(row.id.clone()),
                AlertChange::Resolve { .. } => out.resolved.push(row.id.clone()),
            },
            false => out.raced += 1,
        }
    }
    // One statement for every decision without an alert action, conditional per row on what
    // was read, exactly as `apply` would write each (a healthy device comes due once per
    // expected interval: at a million devices these are thousands a second).
    if !plain.is_empty() {
        let writes: Vec<StateWrite<'_>> = plain
            .iter()
            .map(|(row, d)| StateWrite {
                row,
                state: d.state.as_str(),
                deadline: d.deadline,
                opening: false,
            })
            .collect();
        let updated = detector::set_states_if_unchanged(pool, &writes, now).await?;
        out.raced += plain.len() - updated.len();
    }
    // Gaps opening in a dark building open covered by its outage, fired first.
    let new_gaps: Vec<grouping::NewGap<'_>> = opening
        .iter()
        .filter_map(|o| {
            Some(grouping::NewGap {
                device_id: &o.row.id,
                group_id: o.row.group_id.as_deref()?,
            })
        })
        .collect();
    let (covering, ahead) = grouping::fire_ahead(pool, s, &new_gaps, now).await?;
    out.grouping = ahead;
    // Chunks are disjoint sets of devices and of new alerts, so two transactions never wait
    // on each other, and each locks its devices in id order as ingest does.
    let size = chunk_size(opening.len());
    for round in opening.chunks(size * OPEN_CONCURRENCY) {
        let mut at_once = Vec::with_capacity(OPEN_CONCURRENCY);
        for chunk in round.chunks(size) {
            at_once.push(open_gaps(pool, s, chunk, &covering, now));
        }
        for done in join_all(at_once).await {
            let (opened, raced, covered) = done?;
            out.opened.extend(opened);
            out.raced += raced;
            out.grouping.covered += covered;
        }
    }
    Ok(out)
}

/// Gap alerts opened in one transaction, at most: big enough that a mass gap costs a few
/// statements per thousand devices, small enough that one transaction's locks and WAL stay
/// modest and ingest's flush waits briefly on them.
const OPEN_CHUNK: usize = 1_000;

/// The size of the chunks `n` openings are cut into: at most [`OPEN_CHUNK`], and equal across
/// the rounds of [`OPEN_CONCURRENCY`] chunks, so that no round waits on one big chunk beside a
/// small one (10,000 openings: 4 rounds of 3 × 834, not 3 rounds of 3 × 1,000 and one of 1,000).
fn chunk_size(n: usize) -> usize {
    let rounds = n.div_ceil(OPEN_CHUNK * OPEN_CONCURRENCY).max(1);
    n.div_ceil(rounds * OPEN_CONCURRENCY).max(1)
}

/// Chunks opened at once, each in its own transaction on its own connection: a mass gap's
/// tick waits on Postgres, one statement at a time per connection. On the 2-core development
/// machine 10,000 openings took ≈ 770 ms one chunk at a time, ≈ 620 ms two at once and
/// ≈ 520 ms three (issue 12, benches/detector.rs); the pool's other connections stay for
/// ingest and the API.
const OPEN_CONCURRENCY: usize = 3;

/// A due device whose decision opens a gap alert.
struct Opening {
    row: DueDevice,
    decision: Decision,
    class: Gap,
    e: Expectations,
}

/// Open the gap alerts of `chunk` in one transaction: the devices' conditional state writes in
/// one statement, then for those ingest did not move meanwhile the alerts
/// ([`lifecycle::fire_many`]: trail and outbox rows too, and what each gap is measured from).
/// What opening one device in its own transaction would write, for a few statements per chunk.
/// A gap in a group of `covering` (group → outage) opens covered by its outage. Returns the
/// devices whose gap opened, how many raced ingest and how many opened covered.
async fn open_gaps(
    pool: &PgPool,
    s: &Settings,
    chunk: &[Opening],
    covering: &BTreeMap<String, i64>,
    now: DateTime<Utc>,
) -> anyhow::Result<(Vec<String>, usize, usize)> {
    let mut tx = pool.begin().await?;
    let writes: Vec<StateWrite<'_>> = chunk
        .iter()
        .map(|o| StateWrite {
            row: &o.row,
            state: o.decision.state.as_str(),
            deadline: o.decision.deadline,
            opening: true,
        })
        .collect();
    let updated: HashSet<String> = detector::set_states_if_unchanged(&mut *tx, &writes, now)
        .await?
        .into_iter()
        .collect();
    let raced = chunk.len() - updated.len();
    let opened: Vec<&Opening> = chunk
        .iter()
        .filter(|o| updated.contains(&o.row.id))
        .collect();
    let specs: Vec<AlertSpec> = opened
        .iter()
        .map(|o| AlertSpec {
            kind: Kind::HeartbeatGap,
            subject: o.row.id.clone(),
            device_id: Some(o.row.id.clone()),
            group_id: o.row.group_id.clone(),
            severity: s.severity(Kind::HeartbeatGap),
            summary: describe(&o.row, o.class),
            details: gap_details(&o.row, o.class, &o.e),
        })
        .collect();
    // What each gap is measured from until it resolves (a reopened alert starts anew), and
    // the outage that covers it.
    let gaps: Vec<GapOpening> = opened
        .iter()
        .map(|o| GapOpening {
            memory: GapMemory {
                class: o.class,
                last_data_at: o.row.last_impression_at,
                last_device_ts: o.row.last_device_ts,
            },
            covered_by: o
                .row
                .group_id
                .as_ref()
                .and_then(|g| covering.get(g).copied()),
        })
        .collect();
    let covered = gaps.iter().filter(|g| g.covered_by.is_some()).count();
    lifecycle::fire_many(
        &mut tx,
        Kind::HeartbeatGap,
        &specs,
        Some(&gaps),
        now,
        s.reopen_window,
    )
    .await?;
    tx.commit().await?;
    let opened = opened.iter().map(|o| o.row.id.clone()).collect();
    Ok((opened, raced, covered))
}

/// What a decision does to its device's open gap alert, one device at a time ([`apply`]); the
/// decisions that touch no alert and the openings are written in batches by [`run_due`].
#[derive(Debug, Clone, Copy)]
enum AlertChange {
    Reclassify { from: Gap, to: Gap },
    Resolve { covered: Option<bool> },
}

/// Apply decision `d`, whose alert change is `change`, in its own transaction. The device
/// update is conditional on what was read: if ingest moved the device meanwhile, nothing is
/// written and the next tick decides.
async fn apply(
    pool: &PgPool,
    row: &DueDevice,
    facts: &Facts,
    e: &Expectations,
    d: &Decision,
    change: AlertChange,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let updated = detector::set_state_if_unchanged(
        &mut tx,
        StateWrite {
            row,
            state: d.state.as_str(),
            deadline: d.deadline,
            opening: false,
        },
        now,
    )
    .await?;
    if updated == 0 {
        return Ok(false);
    }
    match change {
        AlertChange::Reclassify { from, to } => {
            let open = facts
                .open
                .as_ref()
                .expect("reclassify implies an open alert");
            let mut details = gap_details(row, to, e);
            // Keep what the gap was measured from when it opened.
            details["last_impression_at"] = json!(open.last_data_before);
            details["last_device_ts"] = json!(open.last_device_ts_before);
            details["since"] = json!(open.last_data_before);
            lifecycle::reclassify(
                &mut tx,
                open.id,
                &describe(row, to),
                &details,
                now,
                json!({"from": from.as_str(), "to": to.as_str()}),
            )
            .await?;
            let memory = GapMemory {
                class: to,
                last_data_at: open.last_data_before,
                last_device_ts: open.last_device_ts_before,
            };
            detector::remember_gap(&mut *tx, open.id, &memory).await?;
        }
        AlertChange::Resolve { covered } => {
            let open = facts.open.as_ref().expect("resolve implies an open alert");
            let gap = open
                .last_data_before
                .zip(row.last_impression_at)
                .map(|(a, b)| (b - a).num_seconds());
            let backlog = match covered {
                Some(true) => "the buffered backlog covered the gap",
                Some(false) => "the backlog did not cover the gap: data was lost",
                None => "backlog coverage unknown (no device timestamps)",
            };
            let summary = format!("{} is back: impressions returned; {backlog}", row.id);
            lifecycle::resolve(
                &mut tx,
                open.id,
                now,
                Some(&summary),
                json!({
                    "backlog_covered": covered,
                    "data_returned_at": row.last_impression_at,
                    "gap_seconds": gap,
                    "first_device_ts_after": row.gap_min_device_ts,
                }),
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_bounded_cover_everything_and_fill_the_rounds_evenly() {
        for n in [
            1, 2, 999, 1_000, 1_001, 2_999, 3_000, 3_001, 10_000, 12_345, 100_000,
        ] {
            let size = chunk_size(n);
            assert!((1..=OPEN_CHUNK).contains(&size), "{n}: {size}");
            let chunks = n.div_ceil(size);
            // as few rounds as the bound allows
            let rounds = chunks.div_ceil(OPEN_CONCURRENCY);
            assert_eq!(rounds, n.div_ceil(OPEN_CHUNK * OPEN_CONCURRENCY), "{n}");
            // even: only the last chunk is shorter, by less than one row per chunk
            let last = n - (chunks - 1) * size;
            assert!(
                size - last < rounds * OPEN_CONCURRENCY,
                "{n}: {size}, last {last}"
            );
        }
        assert_eq!(chunk_size(10_000), 834);
        assert_eq!(chunk_size(0), 1);
    }
}
