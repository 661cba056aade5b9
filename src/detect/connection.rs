//! Connection-pattern alerts from presence events (DESIGN.md §2 item 4, issue 3 item 6):
//! `flapping`, `client_id_conflict`, `throttled` and `auth_failure`.
//!
//! A single disconnect never alerts (§1: LTE links drop all day); these kinds count events of one
//! subject over a sliding window of event time, `event_ts >= now - window`:
//!
//! | kind | counts | subject |
//! |---|---|---|
//! | `flapping` | every `disconnected` | device id, else client id |
//! | `client_id_conflict` | `disconnected` with `DUPLICATE_CLIENTID`, fires only from ≥ 2 sessions | client id |
//! | `throttled` | `disconnected` with `THROTTLED` | device id, else client id |
//! | `auth_failure` | `disconnected` with `AUTH_ERROR` / `FORBIDDEN_ACCESS`, and every `connect_failed` | client id |
//!
//! The window has no upper bound on purpose: AWS stamps events with its clock, and an event
//! stamped a moment ahead of ours (clock skew) must still count, because the cursor passes it
//! only once. Parsing already refuses timestamps more than a day ahead.
//!
//! Each pass reads the presence events stored since the last one (`detector_state.presence_cursor`,
//! a `presence_events.id`), recounts only the subjects those events touched and fires where a
//! count reached its threshold. Counts always come from the table, never from the batch, so a
//! batch boundary cannot split a burst. Then every firing alert of these kinds is recounted and
//! resolved once its count fell below half the threshold: the hysteresis keeps a device hovering
//! around the threshold from paging on every crossing, and this part runs even when nothing new
//! arrived because time passing drains the window. Everything happens in one transaction, cursor
//! included, so a failed pass is retried whole and a pass never half-applies.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use super::{at, Settings};
use crate::alerts::lifecycle::{self, AlertSpec, Fired};
use crate::db::presence::{self, NewPresenceEvent};
use crate::db::{alerts, detector, devices};
use crate::domain::alert::Kind;

/// Presence events read per pass. A backlog larger than this (after an outage of the detector)
/// is worked off over the following passes instead of in one huge transaction.
pub const BATCH: i64 = 10_000;

/// How long after arrival a presence event is certainly committed (see the cursor).
pub const SETTLE: TimeDelta = TimeDelta::seconds(60);

/// The kinds this module owns, in the order a pass handles them.
pub const KINDS: [Kind; 4] = [
    Kind::Flapping,
    Kind::ClientIdConflict,
    Kind::Throttled,
    Kind::AuthFailure,
];

/// How many addresses a summary names before it says "and N more" (the details keep them all).
const SUMMARY_ADDRESSES: usize = 5;

/// What a pass found (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Presence events read past the cursor.
    pub examined_events: usize,
    /// Alerts that became firing this pass: opened, or reopened within the reopen window. A
    /// firing alert whose count grew is updated in place and not listed.
    pub fired: Vec<(Kind, String)>,
    pub resolved: Vec<(Kind, String)>,
    /// (target, source) alert ids newly linked by inhibition rules.
    pub inhibited: Vec<(i64, i64)>,
    /// Address drift over the settled events of this pass (`detect::drift`).
    pub drift: super::drift::Outcome,
}

/// Examine presence events that arrived since the last pass (detector_state.presence_cursor, advanced
/// in the same transaction), fire pattern alerts whose thresholds are crossed, and resolve firing
/// pattern alerts whose count fell below half the threshold (hysteresis). `now` is injected.
pub async fn tick(pool: &PgPool, s: &Settings, now: DateTime<Utc>) -> anyhow::Result<Outcome> {
    let mut tx = pool.begin().await.context("connection patterns: begin")?;
    // The row lock makes concurrent passes (a standby that briefly believes it leads) take turns
    // instead of both reading the same batch and firing twice.
    let cursor = detector::lock_presence_cursor(&mut *tx)
        .await
        .context("connection patterns: reading the cursor")?;

    // Identity values are handed out before commit: an ingest transaction still in flight may
    // hold a lower id than rows already visible here. So the cursor only advances over rows
    // that arrived more than SETTLE ago (presence transactions last milliseconds); younger ones
    // are read again next pass, which is harmless because counts come from the table and
    // firing an unchanged alert changes nothing.
    let batch = presence::events_after(&mut *tx, cursor, BATCH)
        .await
        .context("connection patterns: reading new presence events")?;

    let mut out = Outcome {
        examined_events: batch.len(),
        ..Outcome::default()
    };
    let touched = touched_subjects(&batch, s, now);

    let firing = alerts::firing_subjects(&mut *tx, &KINDS.map(Kind::as_str))
        .await
        .context("connection patterns: reading firing alerts")?;

    for kind in KINDS {
        let rule = Rule::of(kind, s);
        let touched = touched.get(&kind).cloned().unwrap_or_default();
        let firing: BTreeSet<String> = firing
            .iter()
            .filter(|(k, _)| k == kind.as_str())
            .map(|(_, subject)| subject.clone())
            .collect();
        if touched.is_empty() && firing.is_empty() {
            continue;
        }
        let subjects: Vec<String> = touched.union(&firing).cloned().collect();
        let counts = count(&mut tx, &rule, &subjects, now)
            .await
            .with_context(|| format!("connection patterns: counting {kind}"))?;

        // Only new events can push a count up: subjects nobody touched are not refired, so a
        // draining window does not rewrite a firing alert's details (and its trail) every pass.
        let to_fire: Vec<&Agg> = touched
            .iter()
            .filter_map(|subject| counts.get(subject))
            .filter(|agg| rule.crossed(agg))
            .collect();
        let devices = devices_of(&mut tx, &to_fire).await?;
        // A retired device never alerts (its events are still stored and counted).
        let candidates: Vec<String> = to_fire.iter().map(|a| a.device_candidate.clone()).collect();
        let retired = crate::db::retirement::retired_among(&mut tx, &candidates)
            .await
            .context("connection patterns: reading retired devices")?;
        for agg in to_fire {
            if retired.contains(&agg.device_candidate) {
                continue;
            }
            let device = devices.get(&agg.device_candidate).cloned();
            let spec = rule.spec(agg, device, s);
            let fired = lifecycle::fire(&mut tx, &spec, now, s.reopen_window)
                .await
                .with_context(|| format!("connection patterns: firing {kind} {}", agg.subject))?;
            if matches!(fired, Fired::Opened(_) | Fired::Reopened(_)) {
                tracing::info!(
                    kind = %kind,
                    subject = %agg.subject,
                    id = fired.id(),
                    summary = %spec.summary,
                    "connection pattern alert firing"
                );
                out.fired.push((kind, agg.subject.clone()));
            }
        }

        for subject in &firing {
            let n = counts.get(subject).map_or(0, |agg| agg.count);
            if n * 2 >= rule.threshold {
                continue;
            }
            let Some(id) = crate::db::alerts::firing_id(&mut tx, kind, subject).await? else {
                continue;
            };
            // `resolved_count` rather than `count`: the details keep the count the alert last
            // fired with, which is what a reader of a resolved alert wants to see.
            let outcome = json!({"resolved_count": n, "window_seconds": rule.window.num_seconds()});
            if lifecycle::resolve(&mut tx, id, now, None, outcome).await? {
                tracing::info!(
                    kind = %kind,
                    %subject,
                    id,
                    count = n,
                    "connection pattern alert resolved"
                );
                out.resolved.push((kind, subject.clone()));
            }
        }
    }

    let settled = batch
        .iter()
        .take_while(|e| e.received_at <= now - SETTLE)
        .count();
    // Drift judges each event once: exactly the events the cursor advances over below.
    out.drift = super::drift::pass(&mut tx, &batch[..settled], s, now)
        .await
        .context("connection patterns: address drift")?;
    if let Some(last) = batch[..settled].last() {
        detector::advance_presence_cursor(&mut *tx, last.id)
            .await
            .context("connection patterns: advancing the cursor")?;
    }
    // Last, so that sources fired this pass (or by the heartbeat pass before it) hold back
    // their targets before any notification of those can be claimed.
    out.inhibited = crate::alerts::inhibit::apply(&mut tx, &s.inhibit, now)
        .await
        .context("connection patterns: inhibition")?;
    tx.commit().await.context("connection patterns: commit")?;
    Ok(out)
}

/// Per kind, the subjects whose count new events may have raised. An event outside its kind's
/// window (a replay, a late redelivery) cannot raise a count, so it touches nothing.
fn touched_subjects(
    batch: &[NewPresenceEvent],
    s: &Settings,
    now: DateTime<Utc>,
) -> BTreeMap<Kind, BTreeSet<String>> {
    let mut touched: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
    for ev in batch {
        for kind in KINDS {
            let rule = Rule::of(kind, s);
            if ev.event_ts < now - rule.window {
                continue;
            }
            if rule.matches(&ev.event_type, ev.disconnect_reason.as_deref()) {
                let subject = match rule.subject {
                    Subject::DeviceOrClient => ev.device_id.as_ref().unwrap_or(&ev.client_id),
                    Subject::Client => &ev.client_id,
                };
                touched.entry(kind).or_default().insert(subject.clone());
            }
        }
    }
    touched
}

/// What an alert of a kind is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    /// The device (its id), or the client id of a client that is not a device.
    DeviceOrClient,
    /// The MQTT client id: a conflict is a property of the client id, not of either device,
    /// and credential failures come mostly from clients that are no device at all.
    Client,
}

/// One kind's counting rule.
#[derive(Debug, Clone)]
struct Rule {
    kind: Kind,
    threshold: i64,
    window: TimeDelta,
    subject: Subject,
}

impl Rule {
    fn of(kind: Kind, s: &Settings) -> Rule {
        let (threshold, window, subject) = match kind {
            Kind::Flapping => (
                s.flapping_disconnects,
                s.flapping_window,
                Subject::DeviceOrClient,
            ),
            Kind::ClientIdConflict => (s.conflict_disconnects, s.conflict_window, Subject::Client),
            Kind::Throttled => (
                s.throttled_disconnects,
                s.throttled_window,
                Subject::DeviceOrClient,
            ),
            Kind::AuthFailure => (s.auth_failures, s.auth_window, Subject::Client),
            other => unreachable!("{other} is not a connection pattern"),
        };
        Rule {
            kind,
            threshold,
            window,
            subject,
        }
    }

    /// Whether an event counts for this kind (in Rust, for the batch).
    fn matches(&self, event_type: &str, reason: Option<&str>) -> bool {
        match self.kind {
            Kind::Flapping => event_type == "disconnected",
            Kind::ClientIdConflict => {
                event_type == "disconnected" && reason == Some("DUPLICATE_CLIENTID")
            }
            Kind::Throttled => event_type == "disconnected" && reason == Some("THROTTLED"),
            Kind::AuthFailure => {
                event_type == "connect_failed"
                    || (event_type == "disconnected"
                        && matches!(reason, Some("AUTH_ERROR" | "FORBIDDEN_ACCESS")))
            }
            _ => false,
        }
    }

    /// The same predicate in SQL over `presence_events e`; keep the two in step.
    fn filter_sql(&self) -> &'static str {
        match self.kind {
            Kind::Flapping => "e.event_type = 'disconnected'",
            Kind::ClientIdConflict => {
                "e.event_type = 'disconnected' and e.disconnect_reason = 'DUPLICATE_CLIENTID'"
            }
            Kind::Throttled => {
                "e.event_type = 'disconnected' and e.disconnect_reason = 'THROTTLED'"
            }
            Kind::AuthFailure => {
                "(e.event_type = 'connect_failed' or (e.event_type = 'disconnected' \
                 and e.disconnect_reason in ('AUTH_ERROR', 'FORBIDDEN_ACCESS')))"
            }
            _ => "false",
        }
    }

    /// Whether a count is past the threshold. A conflict needs two sessions: one device taking
    /// over its own stale session (a persistent session keeps its identifier) is not two
    /// devices fighting over a client id.
    fn crossed(&self, agg: &Agg) -> bool {
        agg.count >= self.threshold && (self.kind != Kind::ClientIdConflict || agg.sessions >= 2)
    }

    fn spec(&self, agg: &Agg, device: Option<(String, Option<String>)>, s: &Settings) -> AlertSpec {
        let w = span(self.window);
        let n = agg.count;
        let subject = &agg.subject;
        let summary = match self.kind {
            Kind::Flapping => format!("{subject} flapping: {n} disconnects in {w}"),
            Kind::ClientIdConflict => format!(
                "client ID {subject} used by several connections: {n} DUPLICATE_CLIENTID \
                 disconnects in {w} across {} sessions from {}",
                agg.sessions,
                addresses(&agg.addresses)
            ),
            Kind::Throttled => format!("{subject} throttled: {n} THROTTLED disconnects in {w}"),
            Kind::AuthFailure => format!(
                "client ID {subject} failing to authenticate: {n} failures in {w} ({}) from {}",
                agg.reasons
                    .iter()
                    .map(|(r, k)| format!("{r} ×{k}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                addresses(&agg.addresses)
            ),
            _ => unreachable!(),
        };
        let mut details = json!({
            "count": n,
            "threshold": self.threshold,
            "window_seconds": self.window.num_seconds(),
            "first_event_at": at(agg.first),
            "last_event_at": at(agg.last),
            "reasons": agg.reasons,
            "addresses": agg.addresses,
            "principals": agg.principals,
        });
        match self.kind {
            Kind::ClientIdConflict => details["sessions"] = json!(agg.sessions),
            Kind::AuthFailure => {
                details["connect_failed"] = json!(agg.connect_failed);
                details["disconnects"] = json!(n - agg.connect_failed);
            }
            _ => {}
        }
        let (device_id, group_id) = device.unzip();
        AlertSpec {
            kind: self.kind,
            subject: subject.clone(),
            device_id,
            group_id: group_id.flatten(),
            severity: s.severity(self.kind),
            summary,
            details,
        }
    }
}

/// `30m`, `1h 30m`: how a window reads in a summary.
pub(super) fn span(d: TimeDelta) -> String {
    match d.to_std() {
        Ok(d) => {
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
        }
        Err(_) => format!("{}s", d.num_seconds()),
    }
}

fn addresses(list: &[String]) -> String {
    if list.is_empty() {
        return "unknown addresses".into();
    }
    let mut out = list
        .iter()
        .take(SUMMARY_ADDRESSES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > SUMMARY_ADDRESSES {
        out.push_str(&format!(" and {} more", list.len() - SUMMARY_ADDRESSES));
    }
    out
}

/// One subject's events of one kind within the window.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Agg {
    subject: String,
    count: i64,
    /// Distinct session identifiers among the counted events.
    sessions: i64,
    connect_failed: i64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    /// The device the events name, else the subject itself: whether it is a device is decided
    /// by the `devices` table.
    device_candidate: String,
    /// Sorted, distinct. Disconnects carry no address, so theirs come from their session's
    /// connect event.
    addresses: Vec<String>,
    principals: Vec<String>,
    #[sqlx(json)]
    reasons: BTreeMap<String, i64>,
}

/// Count `rule`'s events of `subjects` with `event_ts >= now - window`. Subjects with no
/// such event are absent from the map.
async fn count(
    conn: &mut PgConnection,
    rule: &Rule,
    subjects: &[String],
    now: DateTime<Utc>,
) -> sqlx::Result<BTreeMap<String, Agg>> {
    // Written so that each branch can use an index: presence_events_device_idx for devices,
    // the natural key (client_id first) for clients.
    let (subject, by_subject) = match rule.subject {
        Subject::DeviceOrClient => (
            "coalesce(e.device_id, e.client_id)",
            "(e.device_id = any($1) or (e.device_id is null and e.client_id = any($1)))",
        ),
        Subject::Client => ("e.client_id", "e.client_id = any($1)"),
    };
    let filter = rule.filter_sql();
    // The connect of a disconnect's session gives its address and principal: the one with the
    // same version (the same connection) if stored, else the latest of the session.
    let sql = format!(
        r#"
        with ev as (
            select {subject} as subject, e.device_id, e.event_ts, e.event_type,
                   e.session_identifier,
                   coalesce(e.disconnect_reason, e.connect_failure_reason, 'UNKNOWN') as reason,
                   coalesce(e.ip_address, c.ip_address) as ip,
                   coalesce(c.principal_identifier, e.principal_identifier) as principal
            from presence_events e
            left join lateral (
                select c.ip_address, c.principal_identifier
                from presence_events c
                where e.event_type = 'disconnected'
                  and c.session_identifier = e.session_identifier
                  and c.client_id = e.client_id
                  and c.event_type = 'connected'
                order by (c.version_number = e.version_number) desc, c.id desc
                limit 1
            ) c on true
            where {by_subject} and {filter} and e.event_ts >= $2
        ),
        reasons as (
            select subject, jsonb_object_agg(reason, n) as reasons
            from (select subject, reason, count(*) as n from ev group by subject, reason) r
            group by subject
        )
        select ev.subject, count(*) as count,
               count(distinct ev.session_identifier) as sessions,
               count(*) filter (where ev.event_type = 'connect_failed') as connect_failed,
               min(ev.event_ts) as first, max(ev.event_ts) as last,
               coalesce(max(ev.device_id), ev.subject) as device_candidate,
               coalesce(array_agg(distinct ev.ip) filter (where ev.ip is not null), '{{}}')
                   as addresses,
               coalesce(array_agg(distinct ev.principal) filter (where ev.principal is not null),
                        '{{}}') as principals,
               r.reasons
        from ev join reasons r using (subject)
        group by ev.subject, r.reasons
        "#
    );
    let rows: Vec<Agg> = sqlx::query_as(&sql)
        .bind(subjects)
        .bind(now - rule.window)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|a| (a.subject.clone(), a)).collect())
}

/// The device rows (id → group) among the candidates: a subject is a device only if its row
/// exists, and auth failures from strangers must not pretend otherwise.
async fn devices_of(
    conn: &mut PgConnection,
    aggs: &[&Agg],
) -> anyhow::Result<BTreeMap<String, (String, Option<String>)>> {
    if aggs.is_empty() {
        return Ok(BTreeMap::new());
    }
    let ids: Vec<String> = aggs
        .iter()
        .map(|a| a.device_candidate.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows = devices::groups_of(conn, &ids)
        .await
        .context("connection patterns: reading devices")?;
    Ok(rows
        .into_iter()
        .map(|(id, group)| (id.clone(), (id, group)))
        .collect())
}
