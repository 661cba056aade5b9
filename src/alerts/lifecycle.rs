//! The alert state machine: what to write when an alert fires, reopens, resolves, is covered,
//! acknowledged or ticketed (the queries are `db::alerts`). Every change writes an `alert_events` row in the same
//! transaction, so the trail can never disagree with the alert. The detector calls these inside
//! its own transaction (with the device state change that caused them); later the notification
//! outbox rows ([`super::outbox`]) are written in that same transaction too.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};

use super::outbox::{self, Change};
use crate::db::alerts::{self, insert_event as event, NewFiring};
use crate::db::detector::{self, GapMemory};
use crate::domain::actor::Actor;
use crate::domain::alert::{Kind, Severity};

/// What the detector wants to be firing.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSpec {
    pub kind: Kind,
    pub subject: String,
    pub device_id: Option<String>,
    pub group_id: Option<String>,
    pub severity: Severity,
    pub summary: String,
    pub details: Value,
}

/// What [`fire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// A new alert.
    Opened(i64),
    /// A resolved alert re-fired within the reopen window: same id, firing again.
    Reopened(i64),
    /// Already firing; summary, details or severity changed.
    Updated(i64),
    /// Already firing, nothing changed.
    Unchanged(i64),
}

impl Fired {
    pub fn id(self) -> i64 {
        match self {
            Fired::Opened(i) | Fired::Reopened(i) | Fired::Updated(i) | Fired::Unchanged(i) => i,
        }
    }
}

/// Write `spec` over an existing alert and make it firing: an update of a firing alert, or the
/// reopening of a resolved one (which also drops the outage cover it had when it resolved).
/// `trail` names the event.
async fn refire(
    conn: &mut PgConnection,
    id: i64,
    spec: &AlertSpec,
    now: DateTime<Utc>,
    trail: &str,
) -> sqlx::Result<()> {
    alerts::refire(conn, id, &spec.summary, &spec.details, spec.severity, now).await?;
    event(
        conn,
        id,
        now,
        trail,
        "fleetwatch",
        json!({"summary": spec.summary}),
    )
    .await
}

/// Make `spec` firing: keep the firing alert of its (kind, subject), or reopen the last one if it
/// resolved within `reopen_window`, or open a new one.
pub async fn fire(
    conn: &mut PgConnection,
    spec: &AlertSpec,
    now: DateTime<Utc>,
    reopen_window: TimeDelta,
) -> sqlx::Result<Fired> {
    let firing = alerts::lock_firing(conn, spec.kind, &spec.subject).await?;
    if let Some((id, summary, details, severity)) = firing {
        if says(spec, &summary, &details, &severity) {
            return Ok(Fired::Unchanged(id));
        }
        refire(conn, id, spec, now, "updated").await?;
        return Ok(Fired::Updated(id));
    }

    let recent =
        alerts::lock_resolved_since(conn, spec.kind, &spec.subject, now - reopen_window).await?;
    if let Some(id) = recent {
        refire(conn, id, spec, now, "reopened").await?;
        outbox::notify(conn, id, Change::Fired, now).await?;
        return Ok(Fired::Reopened(id));
    }

    let id = alerts::insert_firing(
        conn,
        spec.kind,
        &spec.subject,
        spec.device_id.as_deref(),
        spec.group_id.as_deref(),
        spec.severity,
        now,
        &spec.summary,
        &spec.details,
    )
    .await?;
    event(
        conn,
        id,
        now,
        "opened",
        "fleetwatch",
        json!({"summary": spec.summary}),
    )
    .await?;
    outbox::notify(conn, id, Change::Fired, now).await?;
    Ok(Fired::Opened(id))
}

/// What the heartbeat pass writes with each gap alert it fires ([`fire_many`]'s `gaps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapOpening {
    /// What the gap is measured from, written with the alert, new or not
    /// ([`detector::remember_gap`]).
    pub memory: GapMemory,
    /// The outage that covers it from its first moment (its building is dark,
    /// `detect::grouping::fire_ahead`): written with a new alert, [`cover_many`] for another.
    pub covered_by: Option<i64>,
}

/// Whether a firing alert's (summary, details, severity) already say what `spec` says.
fn says(spec: &AlertSpec, summary: &str, details: &Value, severity: &str) -> bool {
    summary == spec.summary && *details == spec.details && severity == spec.severity.as_str()
}

/// [`fire`] for many specs of one kind, in the caller's transaction: the same alerts, trail
/// entries and notifications as calling `fire` for each, in a fixed number of statements for
/// the subjects that open a new alert and those firing unchanged (issue 12: a mass gap opens
/// thousands of heartbeat alerts in one detector pass, and a region's outage keeps a thousand
/// building outages firing tick after tick; one round trip each made that seconds). Subjects
/// whose firing alert changes, or with one resolved within `reopen_window`, go through `fire`
/// one by one. Subjects must be distinct. `gaps`, for heartbeat gaps, is what the heartbeat
/// pass writes with each spec's alert (in the order of `specs`). Returns what happened to each
/// spec, in order.
pub async fn fire_many(
    conn: &mut PgConnection,
    kind: Kind,
    specs: &[AlertSpec],
    gaps: Option<&[GapOpening]>,
    now: DateTime<Utc>,
    reopen_window: TimeDelta,
) -> sqlx::Result<Vec<Fired>> {
    debug_assert!(specs.iter().all(|s| s.kind == kind));
    debug_assert!(gaps.is_none_or(|g| g.len() == specs.len()));
    let gap_of = |i: usize| gaps.map(|g| g[i]);
    let subjects: Vec<&str> = specs.iter().map(|s| s.subject.as_str()).collect();
    let existing: HashMap<String, Option<alerts::FiringSpec>> =
        alerts::recent_subjects(conn, kind, &subjects, now - reopen_window)
            .await?
            .into_iter()
            .collect();
    let mut fired: HashMap<&str, Fired> = HashMap::new();
    let mut covers: Vec<(i64, i64)> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let Some(firing) = existing.get(&spec.subject) else {
            continue;
        };
        // Nothing is written to an alert that already says it, so it needs no lock.
        let f = match firing {
            Some((id, summary, details, severity)) if says(spec, summary, details, severity) => {
                Fired::Unchanged(*id)
            }
            _ => fire(conn, spec, now, reopen_window).await?,
        };
        if let Some(g) = gap_of(i) {
            detector::remember_gap(&mut *conn, f.id(), &g.memory).await?;
            covers.extend(g.covered_by.map(|by| (f.id(), by)));
        }
        fired.insert(&spec.subject, f);
    }
    let new: Vec<NewFiring<'_>> = specs
        .iter()
        .enumerate()
        .filter(|(_, s)| !existing.contains_key(&s.subject))
        .map(|(i, s)| NewFiring {
            subject: &s.subject,
            device_id: s.device_id.as_deref(),
            group_id: s.group_id.as_deref(),
            severity: s.severity,
            summary: &s.summary,
            details: &s.details,
            gap: gap_of(i).map(|g| g.memory),
            covered_by: gap_of(i).and_then(|g| g.covered_by),
        })
        .collect();
    if !new.is_empty() {
        let ids: HashMap<String, i64> = alerts::insert_firing_many(conn, kind, &new, now)
            .await?
            .into_iter()
            .collect();
        let entries: Vec<(i64, Value)> = new
            .iter()
            .map(|n| (ids[n.subject], json!({"summary": n.summary})))
            .collect();
        alerts::insert_events_many(conn, &entries, now, "opened", "fleetwatch").await?;
        // Covered in the insert; the trail says so as `cover_many` would.
        let covered: Vec<(i64, Value)> = new
            .iter()
            .filter_map(|n| Some((ids[n.subject], json!({"by": n.covered_by?}))))
            .collect();
        if !covered.is_empty() {
            alerts::insert_events_many(conn, &covered, now, "covered", "fleetwatch").await?;
        }
        let opened: Vec<i64> = entries.iter().map(|e| e.0).collect();
        outbox::notify_many(conn, &opened, Change::Fired, now).await?;
        for n in &new {
            fired.insert(n.subject, Fired::Opened(ids[n.subject]));
        }
    }
    cover_many(conn, &covers, now).await?;
    Ok(specs.iter().map(|s| fired[s.subject.as_str()]).collect())
}

/// Change a firing alert's classification in place (e.g. silent → offline): same id, no new
/// alert, one `reclassified` event.
pub async fn reclassify(
    conn: &mut PgConnection,
    id: i64,
    summary: &str,
    details: &Value,
    now: DateTime<Utc>,
    change: Value,
) -> sqlx::Result<()> {
    alerts::set_summary(conn, id, summary, details, now).await?;
    event(conn, id, now, "reclassified", "fleetwatch", change).await
}

/// Resolve a firing alert, merging `outcome` into its details (and the event). Returns false if
/// it was not firing.
pub async fn resolve(
    conn: &mut PgConnection,
    id: i64,
    now: DateTime<Utc>,
    summary: Option<&str>,
    outcome: Value,
) -> sqlx::Result<bool> {
    let resolved = alerts::resolve(conn, id, now, summary, &outcome).await?;
    if resolved {
        event(conn, id, now, "resolved", "fleetwatch", outcome).await?;
        outbox::notify(conn, id, Change::Resolved, now).await?;
    }
    Ok(resolved)
}

/// Mark firing alerts as covered by a group or fleet outage (their notification speaks for
/// them). Alerts already covered keep their cover. Returns the ids newly covered: [`cover_many`]
/// of one outage.
pub async fn cover(
    conn: &mut PgConnection,
    ids: &[i64],
    by: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<i64>> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let pairs: Vec<(i64, i64)> = ids.into_iter().map(|id| (id, by)).collect();
    let covered = cover_many(conn, &pairs, now).await?;
    Ok(covered.into_iter().map(|(id, _)| id).collect())
}

/// [`cover`] for many outages at once: `(alert, outage)` pairs, each alert in at most one.
/// Returns the pairs newly covered.
pub async fn cover_many(
    conn: &mut PgConnection,
    pairs: &[(i64, i64)],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<(i64, i64)>> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let covered = alerts::cover_many(conn, pairs, now).await?;
    let entries: Vec<(i64, Value)> = covered
        .iter()
        .map(|(id, by)| (*id, json!({"by": by})))
        .collect();
    alerts::insert_events_many(conn, &entries, now, "covered", "fleetwatch").await?;
    Ok(covered)
}

/// Release the alerts an outage covered (when it resolves): the still-firing ones stand on
/// their own again.
pub async fn uncover(
    conn: &mut PgConnection,
    by: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<i64>> {
    let ids = alerts::uncover(conn, by, now).await?;
    let entries: Vec<(i64, Value)> = ids.iter().map(|id| (*id, json!({"by": by}))).collect();
    alerts::insert_events_many(conn, &entries, now, "uncovered", "fleetwatch").await?;
    outbox::notify_many(conn, &ids, Change::Uncovered, now).await?;
    Ok(ids)
}

/// Acknowledge. Re-acknowledging changes nothing and writes no event (returns false);
/// acknowledging a resolved alert is allowed and recorded.
pub async fn acknowledge(
    pool: &PgPool,
    id: i64,
    by: &Actor,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<bool>> {
    let mut tx = pool.begin().await?;
    let current = alerts::lock_acknowledged_by(&mut tx, id).await?;
    let Some(already) = current else {
        return Ok(None);
    };
    if already.is_some() {
        return Ok(Some(false));
    }
    alerts::set_acknowledged(
        &mut tx,
        id,
        &by.principal,
        now,
        note,
        by.on_behalf_of.as_deref(),
    )
    .await?;
    let mut details = serde_json::Map::new();
    details.insert("note".into(), json!(note));
    event(
        &mut tx,
        id,
        now,
        "acknowledged",
        &by.principal,
        by.details(details),
    )
    .await?;
    outbox::notify(&mut tx, id, Change::Acknowledged, now).await?;
    tx.commit().await?;
    Ok(Some(true))
}

/// Attach (or replace) a ticket reference. Returns None for an unknown alert.
pub async fn link_ticket(
    pool: &PgPool,
    id: i64,
    reference: &str,
    url: Option<&str>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<bool>> {
    let mut tx = pool.begin().await?;
    let current = alerts::lock_ticket(&mut tx, id).await?;
    let Some((r, u)) = current else {
        return Ok(None);
    };
    if r.as_deref() == Some(reference) && u.as_deref() == url {
        return Ok(Some(false));
    }
    alerts::set_ticket(&mut tx, id, reference, url, now).await?;
    let mut details = serde_json::Map::new();
    details.insert("ref".into(), json!(reference));
    details.insert("url".into(), json!(url));
    event(
        &mut tx,
        id,
        now,
        "ticket_linked",
        &actor.principal,
        actor.details(details),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(true))
}
