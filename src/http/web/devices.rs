//! The devices pages (issue 10, item 2): `GET /devices` (the filtered, searchable, paged list),
//! `GET /devices/{id}` (one device: its facts, connectivity and heartbeat strips, messages per
//! hour, presence timeline, alerts, silences and history) and the operators' actions
//! `POST /devices/{id}/retire` and `POST /devices/{id}/unretire`.
//!
//! Reads are the API's: the list is `db::devices::list` with `api::Paging` (the same filters and
//! cursors as `GET /api/v1/devices`), the timeline `db::presence::list_for_device`, the alerts
//! `db::alerts::list`, the history `db::retirement::history`; actions call
//! `crate::retirement::retire`/`unretire` exactly as the API does, with the signed-in user as the
//! actor (`user:<name>`). The reads added for these pages (groups for the filter, a device's
//! client IDs, its active silences, the firing trail of its heartbeat alerts) are in `db::` with
//! the others, each bounded.
//!
//! Live fragments: the list's table (`#devices-table`) and the device page's sections
//! (`#device-summary`, `#device-heartbeat`, `#device-alerts`, `#device-silences`,
//! `#device-history`) re-fetch themselves on their topics; a request with `HX-Target` naming one
//! of them reads only what that section shows and renders only it (askama `blocks`).
//! Connectivity and telemetry are not announced (they would serialise ingest), so the timeline
//! and the hourly chart are as of the page's load.

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::Deserialize;

use super::chart::{self, Chart, Interval};
use super::login::safe_next;
use super::session::Operator;
use super::view::{ago, encode, Chrome, Pager, Query, When};
use super::Page;
use crate::db;
use crate::db::alerts::{AlertFilter, AlertRow, EventRow as AlertEventRow};
use crate::db::devices::{DeviceFilter, DeviceRow};
use crate::db::presence::EventRow;
use crate::db::silences::SilenceRow;
use crate::domain::alert::{Kind, Status};
use crate::domain::device::DeviceState;
use crate::http::api::{clean, parse_filter, Paging};
use crate::http::error::ApiError;
use crate::http::extract::ApiPath;
use crate::http::AppState;
use crate::retirement::{self, Change};
use crate::users::Role;

/// Devices on a page of the list.
pub const LIST_PAGE: i64 = 100;
/// Groups offered in the filter's select; with more, the filter is a text box.
pub const GROUP_CHOICES: i64 = 500;
/// Presence events on a page of the device's timeline table.
pub const EVENTS_PAGE: i64 = 50;
/// Presence events read for the connectivity strip (newest first): a device that flaps all day
/// shows its latest ones and the page says the strip is cut.
pub const STRIP_EVENTS: i64 = 500;
/// Alerts of the device shown (firing first, then the latest resolved).
pub const ALERTS_SHOWN: i64 = 25;
/// Heartbeat-gap alerts read for the heartbeat strip.
pub const GAP_ALERTS: i64 = 100;
/// Device events (retire/unretire history) shown, newest first.
pub const HISTORY_SHOWN: usize = 50;

/// The `HX-Target` of a fragment request, if this is one.
fn fragment_target(headers: &HeaderMap) -> Option<String> {
    super::view::hx_target(headers).map(str::to_string)
}

fn render(t: impl Template) -> Result<Response, ApiError> {
    t.render()
        .map(|s| Html(s).into_response())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("template: {e}")))
}

/// The link to a device's page.
pub fn device_href(id: &str) -> String {
    format!("/devices/{}", encode(id))
}

// ---- the list ---------------------------------------------------------------------------------

/// One row of the list.
pub struct DeviceLine {
    pub id: String,
    pub href: String,
    pub group: Option<String>,
    /// A link to this list filtered by the row's group.
    pub group_href: Option<String>,
    pub state: &'static str,
    pub state_href: String,
    /// `yes`, `no`, or `—` (never seen connecting).
    pub connected: &'static str,
    pub last_impression: Option<When>,
    pub impression_ago: String,
    pub last_disconnect: Option<When>,
    pub disconnect_ago: String,
    pub reason: Option<String>,
}

/// `GET /devices`.
#[derive(Template)]
#[template(path = "devices.html", blocks = ["table"])]
pub struct DevicesPage {
    pub chrome: Chrome,
    pub q: Query,
    pub states: &'static [&'static str],
    pub f_state: String,
    pub f_group: String,
    pub f_connected: String,
    pub f_q: String,
    /// Whether any filter is set (offer to clear them).
    pub filtered: bool,
    /// The groups for the select; `None`: too many, the filter is a text box.
    pub groups: Option<Vec<(String, String)>>,
    pub rows: Vec<DeviceLine>,
    pub pager: Pager,
}

impl Page for DevicesPage {
    fn title(&self) -> &str {
        "Devices"
    }
    fn chrome(&self) -> Option<&Chrome> {
        Some(&self.chrome)
    }
    fn nav(&self) -> &'static str {
        "/devices"
    }
}

/// `connected=yes|no` of the URL.
fn parse_connected(v: Option<&str>) -> Result<Option<bool>, ApiError> {
    match v {
        None => Ok(None),
        Some("yes") => Ok(Some(true)),
        Some("no") => Ok(Some(false)),
        Some(_) => Err(ApiError::BadRequest("connected: expected yes or no".into())),
    }
}

fn connected_word(c: Option<bool>) -> &'static str {
    match c {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    }
}

/// `GET /devices?state=&group=&connected=&q=&cursor=`
pub async fn list(
    chrome: Chrome,
    State(state): State<AppState>,
    q: Query,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let paging = Paging::<String>::new(Some(LIST_PAGE), q.get("cursor"))?;
    let filter = DeviceFilter {
        state: parse_filter::<DeviceState>("state", q.get("state"))?,
        group: clean("group", q.get("group").map(str::to_string))?,
        q: clean("q", q.get("q").map(str::to_string))?,
        connected: parse_connected(q.get("connected"))?,
        after: paging.after.clone(),
        limit: paging.fetch(),
    };
    let fragment = fragment_target(&headers).is_some_and(|t| t == "devices-table");
    let (rows, groups) = if fragment {
        (db::devices::list(&state.pool, &filter).await?, Vec::new())
    } else {
        tokio::try_join!(
            db::devices::list(&state.pool, &filter),
            db::devices::group_choices(&state.pool, GROUP_CHOICES + 1),
        )?
    };
    let page = paging.page(rows, |d| d.id.clone());
    let now = state.clock.now();
    let pager = Pager::new(&q, page.items.len(), page.next_cursor.as_deref());
    let rows = page.items.iter().map(|d| line(&q, d, now)).collect();
    let mut groups = (groups.len() as i64 <= GROUP_CHOICES).then_some(groups);
    // A group in the URL that is not (or no longer) a known group stays selected.
    if let (Some(gs), Some(g)) = (groups.as_mut(), q.get("group")) {
        if !gs.iter().any(|(id, _)| id == g) {
            gs.push((g.to_string(), g.to_string()));
        }
    }
    let text = |k: &str| q.get(k).unwrap_or_default().to_string();
    let p = DevicesPage {
        states: &DeviceState::NAMES,
        f_state: text("state"),
        f_group: text("group"),
        f_connected: text("connected"),
        f_q: text("q"),
        filtered: ["state", "group", "connected", "q"]
            .iter()
            .any(|k| q.get(k).is_some()),
        groups,
        rows,
        pager,
        chrome,
        q,
    };
    if fragment {
        render(p.as_table())
    } else {
        render(p)
    }
}

fn line(q: &Query, d: &DeviceRow, now: DateTime<Utc>) -> DeviceLine {
    let state = if d.retired_at.is_some() {
        DeviceState::Retired
    } else {
        d.state
    };
    DeviceLine {
        id: d.id.clone(),
        href: device_href(&d.id),
        group_href: d.group.as_deref().map(|g| q.with("group", g)),
        group: d.group.clone(),
        state: state.as_str(),
        state_href: q.with("state", state.as_str()),
        connected: connected_word(d.connected),
        last_impression: d.last_impression_at.map(When),
        impression_ago: d
            .last_impression_at
            .map(|t| ago(t, now))
            .unwrap_or_default(),
        last_disconnect: d.last_disconnected_at.map(When),
        disconnect_ago: d
            .last_disconnected_at
            .map(|t| ago(t, now))
            .unwrap_or_default(),
        reason: d.last_disconnect_reason.clone(),
    }
}

// ---- one device ---------------------------------------------------------------------------------

/// The device's times, for the template's `when` macro.
pub struct DeviceTimes {
    pub last_connected: Option<When>,
    pub last_disconnect: Option<When>,
    pub last_impression: Option<When>,
    pub last_device_ts: Option<When>,
    pub created: When,
    pub retired: Option<When>,
}

impl DeviceTimes {
    fn of(d: &DeviceRow) -> DeviceTimes {
        DeviceTimes {
            last_connected: d.last_connected_at.map(When),
            last_disconnect: d.last_disconnected_at.map(When),
            last_impression: d.last_impression_at.map(When),
            last_device_ts: d.last_device_ts.map(When),
            created: When(d.created_at),
            retired: d.retired_at.map(When),
        }
    }
}

/// One presence event of the timeline table.
pub struct TimelineRow {
    pub at: When,
    pub kind: String,
    pub client_id: String,
    pub address: Option<String>,
    pub reason: Option<String>,
    pub session: Option<String>,
}

/// One alert of the device.
pub struct AlertLine {
    pub id: i64,
    pub href: String,
    pub kind: String,
    pub severity: String,
    pub firing: bool,
    pub opened: When,
    pub resolved: Option<When>,
    pub summary: String,
    pub acknowledged_by: Option<String>,
    pub ticket: Option<String>,
}

/// One active silence matching the device.
pub struct SilenceLine {
    pub id: i64,
    /// What it matches, in words (`this device`, `group b12`, `kind flapping` …).
    pub matches: String,
    pub ends: When,
    pub ends_in: String,
    pub created_by: String,
    pub comment: String,
}

/// One entry of the device's history.
pub struct HistoryLine {
    pub at: When,
    pub kind: String,
    pub actor: String,
    pub details: String,
}

/// The `range=` of the strips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Day,
    Week,
}

impl Range {
    fn parse(v: Option<&str>) -> Result<Range, ApiError> {
        match v {
            None | Some("24h") => Ok(Range::Day),
            Some("7d") => Ok(Range::Week),
            Some(_) => Err(ApiError::BadRequest("range: expected 24h or 7d".into())),
        }
    }
    fn span(self) -> TimeDelta {
        match self {
            Range::Day => TimeDelta::hours(24),
            Range::Week => TimeDelta::days(7),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Range::Day => "24h",
            Range::Week => "7d",
        }
    }
}

/// The confirmations a POST may send back (`done=`): the text is ours, never the URL's.
pub const DONE: &[(&str, &str)] = &[
    (
        "retired",
        "Device retired: it is no longer evaluated, and its firing alerts were resolved.",
    ),
    (
        "unretired",
        "Device returned to evaluation with a fresh clock.",
    ),
    (
        "already-retired",
        "The device was already retired: nothing changed.",
    ),
    (
        "already-active",
        "The device was not retired: nothing changed.",
    ),
];

/// `GET /devices/{id}`.
#[derive(Template)]
#[template(
    path = "device.html",
    blocks = ["summary", "heartbeat", "alerts", "silences", "history"]
)]
pub struct DevicePage {
    pub chrome: Chrome,
    pub q: Query,
    pub title: String,
    pub d: DeviceRow,
    pub times: DeviceTimes,
    /// The device's page, for forms' `back`.
    pub href: String,
    /// Operators see the actions.
    pub can_act: bool,
    pub retired: bool,
    pub state: &'static str,
    pub state_since: When,
    pub state_ago: String,
    pub group_href: Option<String>,
    pub connected: &'static str,
    pub impression_ago: String,
    pub notice: Option<&'static str>,
    /// Client IDs: mapped ones (`client_ids`, with their source) and those seen in events.
    pub client_ids: Vec<(String, String)>,
    /// (network, last address, last seen) from address-drift history.
    pub networks: Vec<(String, String, When)>,
    pub range: Range,
    pub range_links: Vec<(&'static str, String, bool)>,
    pub connectivity: Chart,
    /// `Some(n)`: the strip shows only the latest `n` events ([`STRIP_EVENTS`]).
    pub strip_cut: Option<i64>,
    pub heartbeat: Chart,
    pub hourly: Chart,
    /// Impressions per anomaly bucket against the device's baseline (`detect::anomaly::series`).
    pub impressions: Chart,
    pub impressions_window: String,
    pub timeline: Vec<TimelineRow>,
    pub timeline_pager: Pager,
    pub alerts: Vec<AlertLine>,
    pub alerts_href: String,
    pub silences: Vec<SilenceLine>,
    pub history: Vec<HistoryLine>,
}

impl Page for DevicePage {
    fn title(&self) -> &str {
        &self.title
    }
    fn chrome(&self) -> Option<&Chrome> {
        Some(&self.chrome)
    }
    fn nav(&self) -> &'static str {
        "/devices"
    }
}

/// Which sections a request reads: all for a page, one for a fragment.
struct Wants(Option<String>);

impl Wants {
    fn any(&self, ids: &[&str]) -> bool {
        match &self.0 {
            None => true,
            Some(t) => ids.contains(&t.as_str()),
        }
    }
}

const SECTIONS: &[&str] = &[
    "device-summary",
    "device-heartbeat",
    "device-alerts",
    "device-silences",
    "device-history",
];

/// `GET /devices/{id}?range=24h|7d&cursor=`
pub async fn page(
    chrome: Chrome,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    q: Query,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let range = Range::parse(q.get("range"))?;
    let paging = Paging::<(DateTime<Utc>, i64)>::new(Some(EVENTS_PAGE), q.get("cursor"))?;
    let target = fragment_target(&headers).filter(|t| SECTIONS.contains(&t.as_str()));
    let wants = Wants(target.clone());
    let pool = &state.pool;
    let d = db::devices::get(pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))?;
    let now = state.clock.now();
    let from = now - range.span();

    // Everything else at once, each read only when its section is wanted.
    let timeline_page = wants.0.is_none();
    let strip_events = async {
        if timeline_page {
            db::presence::list_for_device(pool, &id, None, STRIP_EVENTS).await
        } else {
            Ok(Vec::new())
        }
    };
    let table_events = async {
        match paging.after {
            Some(after) if timeline_page => {
                db::presence::list_for_device(pool, &id, Some(after), paging.fetch())
                    .await
                    .map(Some)
            }
            _ => Ok(None),
        }
    };
    let (hour_from, hour_to) = hourly_window(now);
    let hourly = async {
        if timeline_page {
            db::telemetry::hourly_for_device(pool, &id, hour_from).await
        } else {
            Ok(Vec::new())
        }
    };
    let anomaly = crate::detect::anomaly::AnomalySettings::from_config(&state.config);
    let (imp_from, imp_to) = impressions_window(&anomaly.cadence, now);
    let impressions = async {
        if timeline_page {
            let zone = db::anomaly::device_zone(pool, &id).await?.flatten();
            let tz = zone
                .as_deref()
                .and_then(|z| crate::config::parse_tz(z).ok())
                .unwrap_or(state.config.fleet.time_zone.0);
            crate::detect::anomaly::series(pool, &anomaly, tz, &id, imp_from, now).await
        } else {
            Ok(Vec::new())
        }
    };
    let alerts = async {
        if wants.any(&["device-alerts"]) {
            let f = AlertFilter {
                device: Some(id.clone()),
                limit: ALERTS_SHOWN,
                ..Default::default()
            };
            db::alerts::list(pool, &f).await
        } else {
            Ok(Vec::new())
        }
    };
    let gaps = async {
        if wants.any(&["device-heartbeat"]) {
            let f = AlertFilter {
                device: Some(id.clone()),
                kind: Some(Kind::HeartbeatGap),
                limit: GAP_ALERTS,
                ..Default::default()
            };
            let gaps = db::alerts::list(pool, &f).await?;
            let ids: Vec<i64> = gaps.iter().map(|a| a.id).collect();
            let trail = db::alerts::firing_trail_of(pool, &ids).await?;
            Ok::<_, sqlx::Error>((gaps, trail))
        } else {
            Ok((Vec::new(), Vec::new()))
        }
    };
    let silences = async {
        if wants.any(&["device-silences"]) {
            db::silences::active_for_device(pool, &id, d.group.as_deref(), now, 50).await
        } else {
            Ok(Vec::new())
        }
    };
    let summary = async {
        if wants.any(&["device-summary"]) {
            let clients = db::devices::client_ids_of(pool, &id, 20).await?;
            let mut conn = pool.acquire().await?;
            let nets = db::networks::of_device(&mut conn, &id).await?;
            Ok::<_, sqlx::Error>((clients, nets))
        } else {
            Ok((Vec::new(), Vec::new()))
        }
    };
    let history = async {
        if wants.any(&["device-history"]) {
            db::retirement::history(pool, &id).await
        } else {
            Ok(Vec::new())
        }
    };
    let (
        strip_events,
        table_events,
        hourly,
        impressions,
        alerts,
        (gaps, trail),
        silences,
        summary,
        history,
    ) = tokio::try_join!(
        strip_events,
        table_events,
        hourly,
        impressions,
        alerts,
        gaps,
        silences,
        summary,
        history
    )
    .map_err(ApiError::Database)?;

    // The timeline table: its page of events (the first page is the strip's newest ones).
    let table_rows = match table_events {
        Some(rows) => rows,
        None => strip_events
            .iter()
            .take(paging.fetch() as usize)
            .cloned()
            .collect(),
    };
    let table = paging.page(table_rows, |e| (e.timestamp, e.id));
    let timeline_pager = Pager::new(&q, table.items.len(), table.next_cursor.as_deref());
    let timeline = table
        .items
        .iter()
        .map(|e| TimelineRow {
            at: When(e.timestamp),
            kind: e.event_type.clone(),
            client_id: e.client_id.clone(),
            address: e.ip_address.clone(),
            reason: e
                .disconnect_reason
                .clone()
                .or_else(|| e.connect_failure_reason.clone()),
            session: e.session_identifier.clone(),
        })
        .collect();

    let mut client_ids: Vec<(String, String)> = summary.0;
    for e in &strip_events {
        if !client_ids.iter().any(|(c, _)| *c == e.client_id) {
            client_ids.push((e.client_id.clone(), "seen in presence events".into()));
        }
    }

    let retired = d.retired_at.is_some();
    let state_name = if retired {
        DeviceState::Retired.as_str()
    } else {
        d.state.as_str()
    };
    let label = |what: &str| format!("{what} of {}, last {}", d.id, range.as_str());
    let connectivity = chart::strip(
        &label("Connectivity"),
        from,
        now,
        &connectivity_intervals(&strip_events),
    );
    let heartbeat = chart::strip(
        &label("Heartbeat"),
        from,
        now,
        &heartbeat_intervals(&d, &gap_spans(&gaps, &trail), from, now),
    );
    let points: Vec<(DateTime<Utc>, f64)> = hourly.iter().map(|(t, n)| (*t, *n as f64)).collect();
    let hourly = chart::bars(
        &format!("Messages per hour of {}, last 7 days", d.id),
        hour_from,
        hour_to,
        TimeDelta::hours(1),
        &points,
        "messages",
    );
    let sums: Vec<(DateTime<Utc>, Option<f64>)> = impressions
        .iter()
        .map(|p| (p.bucket_start, Some(p.impressions as f64)))
        .collect();
    let usual: Vec<(DateTime<Utc>, Option<f64>)> = impressions
        .iter()
        .map(|p| (p.bucket_start, p.baseline))
        .collect();
    let impressions_window = format!(
        "per {}, last {}",
        crate::detect::anomaly::span(anomaly.cadence.bucket()),
        crate::detect::anomaly::span(imp_to - imp_from)
    );
    let impressions = chart::lines(
        &format!(
            "Impressions of {} {impressions_window}, against its usual",
            d.id
        ),
        imp_from,
        imp_to,
        &[
            chart::Series {
                name: "impressions",
                class: "",
                points: &sums,
            },
            chart::Series {
                name: "usual (baseline)",
                class: "",
                points: &usual,
            },
        ],
    );

    let mut alerts: Vec<AlertLine> = alerts.iter().map(alert_line).collect();
    // Firing first, each part newest first (the read's order).
    alerts.sort_by_key(|a| !a.firing);
    let silences = silences
        .iter()
        .map(|s| silence_line(s, &d.id, now))
        .collect();
    let history = history
        .iter()
        .rev()
        .take(HISTORY_SHOWN)
        .map(|h| HistoryLine {
            at: When(h.at),
            kind: h.kind.clone(),
            actor: h.actor.clone(),
            details: if h.details.as_object().is_some_and(|o| o.is_empty()) {
                String::new()
            } else {
                h.details.to_string()
            },
        })
        .collect();
    let strip_cut = (strip_events.len() as i64 >= STRIP_EVENTS
        && strip_events.last().is_some_and(|e| e.timestamp > from))
    .then_some(STRIP_EVENTS);

    // The confirmation is shown once: links and refreshes from here on go without it.
    let notice = q
        .get("done")
        .and_then(|k| DONE.iter().find(|(c, _)| *c == k))
        .map(|(_, text)| *text);
    let mut q = q;
    q.pairs.retain(|(k, _)| k != "done");
    let range_links = [Range::Day, Range::Week]
        .iter()
        .map(|r| (r.as_str(), q.with("range", r.as_str()), *r == range))
        .collect();
    let p = DevicePage {
        title: format!("Device {}", d.id),
        href: device_href(&d.id),
        can_act: chrome.user.role() == Role::Operator,
        retired,
        state: state_name,
        state_since: When(d.state_since),
        state_ago: ago(d.state_since, now),
        group_href: d
            .group
            .as_deref()
            .map(|g| format!("/devices?group={}", encode(g))),
        connected: connected_word(d.connected),
        impression_ago: d
            .last_impression_at
            .map(|t| ago(t, now))
            .unwrap_or_default(),
        notice,
        client_ids,
        networks: summary
            .1
            .into_iter()
            .take(10)
            .map(|(n, _, last, addr)| (n, addr, When(last)))
            .collect(),
        range,
        range_links,
        connectivity,
        strip_cut,
        heartbeat,
        hourly,
        impressions,
        impressions_window,
        timeline,
        timeline_pager,
        alerts,
        alerts_href: format!("/alerts?device={}", encode(&d.id)),
        silences,
        history,
        times: DeviceTimes::of(&d),
        d,
        chrome,
        q,
    };
    match target.as_deref() {
        Some("device-summary") => render(p.as_summary()),
        Some("device-heartbeat") => render(p.as_heartbeat()),
        Some("device-alerts") => render(p.as_alerts()),
        Some("device-silences") => render(p.as_silences()),
        Some("device-history") => render(p.as_history()),
        _ => render(p),
    }
}

/// The impressions chart's window: one season (at least 24 buckets, at most 1000), ending
/// with the current bucket.
fn impressions_window(
    c: &crate::domain::anomaly::Cadence,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let to = crate::domain::anomaly::bucket_start(now, c.bucket()) + c.bucket();
    let span = c.season().clamp(c.bucket() * 24, c.bucket() * 1000);
    (to - span, to)
}

/// The hourly chart's window: the last 168 whole hours, the current one included.
fn hourly_window(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let to = now.duration_trunc(TimeDelta::hours(1)).unwrap_or(now) + TimeDelta::hours(1);
    (to - TimeDelta::days(7), to)
}

fn alert_line(a: &AlertRow) -> AlertLine {
    AlertLine {
        id: a.id,
        href: format!("/alerts/{}", a.id),
        kind: a.kind.as_str().to_string(),
        severity: a.severity.as_str().to_string(),
        firing: a.status == Status::Firing,
        opened: When(a.opened_at),
        resolved: a.resolved_at.map(When),
        summary: a.summary.clone(),
        acknowledged_by: a.acknowledged_by.clone(),
        ticket: a.ticket_ref.clone(),
    }
}

fn silence_line(s: &SilenceRow, device: &str, now: DateTime<Utc>) -> SilenceLine {
    let mut m = Vec::new();
    match &s.device_id {
        Some(x) if x == device => m.push("this device".to_string()),
        Some(x) => m.push(format!("device {x}")),
        None => {}
    }
    if let Some(g) = &s.group_id {
        m.push(format!("group {g}"));
    }
    match s.kind {
        Some(k) => m.push(format!("{} alerts", k.as_str())),
        None => m.push("all alerts".to_string()),
    }
    SilenceLine {
        id: s.id,
        matches: m.join(", "),
        ends: When(s.ends_at),
        ends_in: ago(now, s.ends_at),
        created_by: s.created_by.clone(),
        comment: s.comment.clone(),
    }
}

/// Connected / disconnected intervals from presence events (newest first, as read): each
/// connect or disconnect starts an interval that lasts until the next one (the last until
/// now). Before the oldest event read, connectivity is unknown and drawn as nothing.
/// `connect_failed` changes nothing (it never changes connectivity) and is left out.
pub fn connectivity_intervals(events: &[EventRow]) -> Vec<Interval> {
    let changes: Vec<&EventRow> = events
        .iter()
        .rev()
        .filter(|e| e.event_type == "connected" || e.event_type == "disconnected")
        .collect();
    changes
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let connected = e.event_type == "connected";
            let what = if connected {
                match &e.ip_address {
                    Some(ip) => format!("connected from {ip}"),
                    None => "connected".to_string(),
                }
            } else {
                format!(
                    "disconnected: {}",
                    e.disconnect_reason.as_deref().unwrap_or("no reason given")
                )
            };
            Interval {
                start: e.timestamp,
                end: changes.get(i + 1).map(|n| n.timestamp),
                class: if connected {
                    "connected"
                } else {
                    "disconnected"
                }
                .to_string(),
                what,
            }
        })
        .collect()
}

/// One stretch of a heartbeat-gap alert firing as one classification.
#[derive(Debug, Clone, PartialEq)]
pub struct GapSpan {
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    /// `silent` or `offline`.
    pub class: String,
    pub alert: i64,
}

/// The firing stretches of heartbeat-gap alerts, from their trail: `opened`/`reopened` start
/// one, `reclassified` ends it as its `from` and starts one as its `to`, `resolved` ends it. A
/// stretch not ended by a reclassification has the alert's last classification
/// (`details.classification`). An alert without a trail (cut by retention) is one stretch from
/// `opened_at` to `resolved_at`.
pub fn gap_spans(alerts: &[AlertRow], trail: &[(i64, AlertEventRow)]) -> Vec<GapSpan> {
    let mut out = Vec::new();
    for a in alerts {
        let last_class = a.details["classification"]
            .as_str()
            .unwrap_or("silent")
            .to_string();
        let events: Vec<&AlertEventRow> = trail
            .iter()
            .filter(|(id, _)| *id == a.id)
            .map(|(_, e)| e)
            .collect();
        if events.is_empty() {
            out.push(GapSpan {
                start: a.opened_at,
                end: a.resolved_at,
                class: last_class,
                alert: a.id,
            });
            continue;
        }
        // (start, class if known)
        let mut open: Option<(DateTime<Utc>, Option<String>)> = None;
        for e in events {
            match e.kind.as_str() {
                "opened" | "reopened" => {
                    if let Some((start, class)) = open.take() {
                        out.push(GapSpan {
                            start,
                            end: Some(e.at),
                            class: class.unwrap_or_else(|| last_class.clone()),
                            alert: a.id,
                        });
                    }
                    open = Some((e.at, None));
                }
                "reclassified" => {
                    let from = e.details["from"].as_str().map(str::to_string);
                    let to = e.details["to"].as_str().map(str::to_string);
                    if let Some((start, class)) = open.take() {
                        out.push(GapSpan {
                            start,
                            end: Some(e.at),
                            class: from.or(class).unwrap_or_else(|| last_class.clone()),
                            alert: a.id,
                        });
                    }
                    open = Some((e.at, to));
                }
                "resolved" => {
                    if let Some((start, class)) = open.take() {
                        out.push(GapSpan {
                            start,
                            end: Some(e.at),
                            class: class.unwrap_or_else(|| last_class.clone()),
                            alert: a.id,
                        });
                    }
                }
                _ => {}
            }
        }
        if let Some((start, class)) = open {
            out.push(GapSpan {
                start,
                end: None,
                class: class.unwrap_or(last_class),
                alert: a.id,
            });
        }
    }
    out
}

/// The heartbeat strip: what the data allows us to say about the device's heartbeat over
/// `from..now`. Derived from (1) its heartbeat-gap alerts' firing stretches ([`gap_spans`]:
/// `silent` / `offline`), (2) its current state when that is one no alert records (`late`,
/// `quiet`, `retired`, `never_seen`, from `state_since`), and (3) in between, since the device
/// row was created, "no gap alert" (drawn as healthy, or as never seen for a device that never
/// sent an impression). Past `late` or `quiet` stretches are not stored anywhere, so they show
/// as no gap alert. Overlaps are cut so that the intervals follow each other.
pub fn heartbeat_intervals(
    d: &DeviceRow,
    gaps: &[GapSpan],
    from: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<Interval> {
    let mut marks: Vec<(DateTime<Utc>, DateTime<Utc>, String, String)> = gaps
        .iter()
        .map(|g| {
            let what = match g.class.as_str() {
                "offline" => "offline: disconnected, no impressions",
                _ => "silent: no impressions",
            };
            (
                g.start,
                g.end.unwrap_or(now),
                g.class.clone(),
                format!("{what} (alert {})", g.alert),
            )
        })
        .collect();
    let state = if d.retired_at.is_some() {
        DeviceState::Retired
    } else {
        d.state
    };
    let current = match state {
        DeviceState::Late => Some("late: no impression within the expected interval"),
        DeviceState::Quiet => Some("quiet hours: not evaluated"),
        DeviceState::Retired => Some("retired: not evaluated"),
        DeviceState::NeverSeen => Some("never seen: no impression yet"),
        _ => None,
    };
    if let Some(what) = current {
        marks.push((
            d.state_since,
            now,
            state.as_str().to_string(),
            what.to_string(),
        ));
    }
    marks.sort_by_key(|m| m.0);
    let (fill_class, fill_what) = if d.last_impression_at.is_some() {
        ("healthy", "no heartbeat alert")
    } else {
        ("never_seen", "no impression yet")
    };
    let fill = |start: DateTime<Utc>, end: DateTime<Utc>| Interval {
        start,
        end: Some(end),
        class: fill_class.to_string(),
        what: fill_what.to_string(),
    };
    let mut out = Vec::new();
    let mut t = from.max(d.created_at);
    for (start, end, class, what) in marks {
        let end = end.min(now);
        if start > t {
            out.push(fill(t, start));
        }
        let start = start.max(t);
        if end > start {
            out.push(Interval {
                start,
                end: Some(end),
                class,
                what,
            });
            t = end;
        }
    }
    if now > t {
        out.push(fill(t, now));
    }
    // The last interval runs on: its tooltip says "now".
    if let Some(last) = out.last_mut() {
        if last.end == Some(now) {
            last.end = None;
        }
    }
    out
}

// ---- actions ------------------------------------------------------------------------------------

/// The fields of the retire and unretire forms.
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    /// Where the form came from (a local path): the answer goes back there.
    #[serde(default)]
    pub back: Option<String>,
}

/// `POST /devices/{id}/retire`
pub async fn retire(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, ApiError> {
    set_retired(op, state, id, form, true).await
}

/// `POST /devices/{id}/unretire`
pub async fn unretire(
    op: Operator,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, ApiError> {
    set_retired(op, state, id, form, false).await
}

async fn set_retired(
    Operator(user): Operator,
    state: AppState,
    id: String,
    form: Result<Form<ActionForm>, FormRejection>,
    retire: bool,
) -> Result<Response, ApiError> {
    let Form(f) = form.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let actor = user.actor().principal;
    let now = state.clock.now();
    let change = if retire {
        retirement::retire(&state.pool, &id, &actor, now).await?
    } else {
        retirement::unretire(&state.pool, &id, &actor, now).await?
    };
    let done = match (change, retire) {
        (Change::NoSuchDevice, _) => {
            return Err(ApiError::NotFound(format!("no device {id:?}")));
        }
        (Change::Changed { .. }, true) => "retired",
        (Change::Changed { .. }, false) => "unretired",
        (Change::Unchanged, true) => "already-retired",
        (Change::Unchanged, false) => "already-active",
    };
    let back = match f.back.as_deref() {
        Some(b) if safe_next(Some(b)) == b => b.to_string(),
        _ => device_href(&id),
    };
    let to = Query::parse(&back).with("done", done);
    let location = HeaderValue::from_str(&to)
        .or_else(|_| HeaderValue::from_str(&device_href(&id)))
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok((StatusCode::SEE_OTHER, [(LOCATION, location)]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn device(state: DeviceState, since: &str) -> DeviceRow {
        DeviceRow {
            id: "d1".into(),
            group: None,
            state,
            state_since: t(since),
            connected: Some(true),
            last_connected_at: None,
            last_disconnected_at: None,
            last_disconnect_reason: None,
            last_impression_at: Some(t("2026-11-30T00:00:00Z")),
            last_device_ts: None,
            last_ip: None,
            last_principal: None,
            created_at: t("2026-11-01T00:00:00Z"),
            retired_at: None,
        }
    }

    fn alert(id: i64, opened: &str, resolved: Option<&str>, class: &str) -> AlertRow {
        AlertRow {
            id,
            kind: Kind::HeartbeatGap,
            subject: "d1".into(),
            device_id: Some("d1".into()),
            group: None,
            severity: crate::domain::alert::Severity::Error,
            status: if resolved.is_some() {
                Status::Resolved
            } else {
                Status::Firing
            },
            opened_at: t(opened),
            resolved_at: resolved.map(t),
            summary: String::new(),
            details: json!({"classification": class}),
            covered_by: None,
            inhibited_by: None,
            acknowledged_by: None,
            acknowledged_on_behalf_of: None,
            acknowledged_at: None,
            ack_note: None,
            ticket_ref: None,
            ticket_url: None,
            updated_at: t(opened),
        }
    }

    fn ev(alert: i64, at: &str, kind: &str, details: serde_json::Value) -> (i64, AlertEventRow) {
        (
            alert,
            AlertEventRow {
                id: 0,
                at: t(at),
                kind: kind.into(),
                actor: "fleetwatch".into(),
                details,
            },
        )
    }

    #[test]
    fn gap_spans_follow_the_trail() {
        // Opened silent, reclassified offline, resolved; then reopened and still firing.
        let a = alert(7, "2026-11-30T01:00:00Z", None, "offline");
        let trail = [
            ev(7, "2026-11-30T01:00:00Z", "opened", json!({})),
            ev(
                7,
                "2026-11-30T01:20:00Z",
                "reclassified",
                json!({"from": "silent", "to": "offline"}),
            ),
            ev(7, "2026-11-30T02:00:00Z", "resolved", json!({})),
            ev(7, "2026-11-30T05:00:00Z", "reopened", json!({})),
        ];
        let s = gap_spans(&[a], &trail);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(
            (s[0].class.as_str(), s[0].end),
            ("silent", Some(t("2026-11-30T01:20:00Z")))
        );
        assert_eq!(
            (s[1].class.as_str(), s[1].end),
            ("offline", Some(t("2026-11-30T02:00:00Z")))
        );
        assert_eq!((s[2].class.as_str(), s[2].end), ("offline", None));
        assert_eq!(s[2].start, t("2026-11-30T05:00:00Z"));
        // Without a trail: one span from the row.
        let b = alert(
            8,
            "2026-11-30T01:00:00Z",
            Some("2026-11-30T03:00:00Z"),
            "silent",
        );
        let s = gap_spans(&[b], &[]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].end, Some(t("2026-11-30T03:00:00Z")));
    }

    #[test]
    fn heartbeat_intervals_tile_the_window() {
        let now = t("2026-11-30T12:00:00Z");
        let from = now - TimeDelta::hours(24);
        let d = device(DeviceState::Late, "2026-11-30T11:00:00Z");
        let gaps = [
            GapSpan {
                start: t("2026-11-29T06:00:00Z"), // starts before the window
                end: Some(t("2026-11-29T14:00:00Z")),
                class: "offline".into(),
                alert: 1,
            },
            GapSpan {
                start: t("2026-11-30T02:00:00Z"),
                end: Some(t("2026-11-30T03:00:00Z")),
                class: "silent".into(),
                alert: 2,
            },
        ];
        let iv = heartbeat_intervals(&d, &gaps, from, now);
        type Span<'a> = (DateTime<Utc>, Option<DateTime<Utc>>, &'a str);
        let got: Vec<Span> = iv
            .iter()
            .map(|i| (i.start, i.end, i.class.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (from, Some(t("2026-11-29T14:00:00Z")), "offline"),
                (
                    t("2026-11-29T14:00:00Z"),
                    Some(t("2026-11-30T02:00:00Z")),
                    "healthy"
                ),
                (
                    t("2026-11-30T02:00:00Z"),
                    Some(t("2026-11-30T03:00:00Z")),
                    "silent"
                ),
                (
                    t("2026-11-30T03:00:00Z"),
                    Some(t("2026-11-30T11:00:00Z")),
                    "healthy"
                ),
                (t("2026-11-30T11:00:00Z"), None, "late"),
            ]
        );
        assert!(iv[2].what.contains("alert 2"));
        // A device created inside the window starts there; never an impression: never_seen.
        let mut young = device(DeviceState::NeverSeen, "2026-11-30T10:00:00Z");
        young.created_at = t("2026-11-30T10:00:00Z");
        young.last_impression_at = None;
        let iv = heartbeat_intervals(&young, &[], from, now);
        assert_eq!(iv.len(), 1);
        assert_eq!(iv[0].start, t("2026-11-30T10:00:00Z"));
        assert_eq!(iv[0].class, "never_seen");
    }

    #[test]
    fn connectivity_intervals_run_until_the_next_change() {
        let e = |id: i64, kind: &str, at: &str, ip: Option<&str>, reason: Option<&str>| EventRow {
            id,
            client_id: "d1".into(),
            event_type: kind.into(),
            timestamp: t(at),
            received_at: t(at),
            session_identifier: None,
            version_number: None,
            ip_address: ip.map(Into::into),
            principal_identifier: None,
            client_initiated_disconnect: None,
            disconnect_reason: reason.map(Into::into),
            connect_failure_reason: None,
        };
        // newest first, as read
        let events = [
            e(
                4,
                "connected",
                "2026-11-30T03:00:00Z",
                Some("10.0.0.2"),
                None,
            ),
            e(3, "connect_failed", "2026-11-30T02:30:00Z", None, None),
            e(
                2,
                "disconnected",
                "2026-11-30T02:00:00Z",
                None,
                Some("MQTT_KEEP_ALIVE_TIMEOUT"),
            ),
            e(
                1,
                "connected",
                "2026-11-30T01:00:00Z",
                Some("10.0.0.1"),
                None,
            ),
        ];
        let iv = connectivity_intervals(&events);
        assert_eq!(iv.len(), 3);
        assert_eq!(iv[0].what, "connected from 10.0.0.1");
        assert_eq!(iv[0].end, Some(t("2026-11-30T02:00:00Z")));
        assert_eq!(iv[1].class, "disconnected");
        assert_eq!(iv[1].what, "disconnected: MQTT_KEEP_ALIVE_TIMEOUT");
        assert_eq!(iv[1].end, Some(t("2026-11-30T03:00:00Z")));
        assert_eq!(iv[2].end, None);
    }

    #[test]
    fn ranges_and_connected_values() {
        assert_eq!(Range::parse(None).unwrap(), Range::Day);
        assert_eq!(Range::parse(Some("7d")).unwrap(), Range::Week);
        assert!(Range::parse(Some("30d")).is_err());
        assert_eq!(parse_connected(Some("yes")).unwrap(), Some(true));
        assert_eq!(parse_connected(Some("no")).unwrap(), Some(false));
        assert!(parse_connected(Some("true")).is_err());
        let (from, to) = hourly_window(t("2026-11-30T12:34:56Z"));
        assert_eq!(to, t("2026-11-30T13:00:00Z"));
        assert_eq!(to - from, TimeDelta::hours(168));
    }
}
