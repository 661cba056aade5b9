//! The alerts pages (issue 10 item 3): `GET /alerts` (the list, its filters in the URL),
//! `POST /alerts/bulk` (acknowledge, attach a ticket or silence the checked alerts, or
//! everything the filter matches), `GET /alerts/{id}` (one alert: fields, trail, what it covers
//! or inhibits and what covers or inhibits it, its notifications with their attempts), and
//! `POST /alerts/{id}/ack`, `POST /alerts/{id}/ticket`.
//!
//! Reads are the API's (`db::alerts::list` with two filters the API lacks, severity and
//! acknowledged); every action goes through `alerts::lifecycle` after `domain::triage`'s checks,
//! one alert at a time, exactly as `POST /api/v1/alerts/{id}/ack` and `PUT …/ticket` do, with
//! the signed-in user (`user:<name>`) as the actor, so the trail says who.
//!
//! Order: firing before resolved, and among firing the unacknowledged first (what needs a
//! person), each newest first. That is up to three keyset segments read one after another
//! ([`Phase`]), each a bounded query of the API's list; the cursor names the segment and the
//! API's (opened_at, id) position in it, so no page reads more than one page of rows per
//! segment.
//!
//! Silencing does not create silences here: it sends the operator to the silence form
//! (`/silences/new`, the Silences pages) prefilled with the matchers the chosen alerts share,
//! because a silence needs an end and a reason only a person can give.

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::login::safe_next;
use super::session::Operator;
use super::view::{ago, encode, wants_fragment, Chrome, Pager, Query, When};
use super::Page;
use crate::alerts::lifecycle;
use crate::db;
use crate::db::alerts::{AlertFilter, AlertRow, EventRow};
use crate::db::notifications::{AttemptRow, DeliveryRow};
use crate::domain::alert::{Kind, Severity, Status};
use crate::domain::triage;
use crate::http::api::{clean, parse_filter, Cursor};
use crate::http::error::ApiError;
use crate::http::extract::{ids, PathId};
use crate::http::AppState;

/// Rows on a page of the list.
pub const PAGE_SIZE: usize = 50;
/// The most alerts one "everything this filter matches" action handles. Each alert is its own
/// transaction through the lifecycle (trail and outbox rows as the API writes them), about a
/// millisecond or two each; beyond this the operator repeats the action, and the confirmation
/// says so. An action also stops, between alerts, once it has used two thirds of
/// `http.request_timeout`, rather than be cut off by it.
pub const FILTER_CAP: usize = 10_000;
/// The most checked rows one action accepts (a page shows [`PAGE_SIZE`]).
pub const MAX_SELECTED: usize = 1000;
/// Linked alerts (covered, inhibited) and notifications shown on the alert page.
pub const LINKED_SHOWN: usize = 50;
/// Attempts shown per notification on the alert page (the newest).
pub const ATTEMPTS_SHOWN: i64 = 10;

/// The `id` of the list's live fragment.
pub const TABLE_ID: &str = "alerts-table";
/// The `id` of the alert page's live fragment.
pub const DETAIL_ID: &str = "alert-detail";

/// The query parameters of a confirmation, dropped from the page's own links.
const DONE_KEYS: [&str; 5] = ["done", "n", "already", "missing", "capped"];

/// `status`: which alerts the list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusFilter {
    #[default]
    All,
    Firing,
    Resolved,
}

/// The list's filters, from the query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub status: StatusFilter,
    pub kind: Option<Kind>,
    pub severity: Option<Severity>,
    pub group: Option<String>,
    pub device: Option<String>,
    /// `acked=yes` / `acked=no`.
    pub acked: Option<bool>,
}

impl Filter {
    /// The filters of `q`; `400` for a value outside a closed set.
    pub fn from_query(q: &Query) -> Result<Filter, ApiError> {
        let status = match q.get("status") {
            None | Some("all") => StatusFilter::All,
            Some("firing") => StatusFilter::Firing,
            Some("resolved") => StatusFilter::Resolved,
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "status: expected one of firing, resolved, all".into(),
                ))
            }
        };
        let acked = match q.get("acked") {
            None => None,
            Some("yes") => Some(true),
            Some("no") => Some(false),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "acked: expected one of yes, no".into(),
                ))
            }
        };
        Ok(Filter {
            status,
            kind: parse_filter("kind", q.get("kind"))?,
            severity: parse_filter("severity", q.get("severity"))?,
            group: clean("group", q.get("group").map(str::to_string))?,
            device: clean("device", q.get("device").map(str::to_string))?,
            acked,
        })
    }

    /// Whether the kind filter is `name` (for the form's selected option).
    pub fn kind_is(&self, name: &str) -> bool {
        self.kind.is_some_and(|k| k.as_str() == name)
    }

    /// Whether the severity filter is `name`.
    pub fn severity_is(&self, name: &str) -> bool {
        self.severity.is_some_and(|s| s.as_str() == name)
    }

    /// The segments of the list this filter reads, in display order.
    pub fn phases(&self) -> Vec<Phase> {
        let firing = self.status != StatusFilter::Resolved;
        let resolved = self.status != StatusFilter::Firing;
        let mut p = Vec::new();
        if firing && self.acked != Some(true) {
            p.push(Phase::Unacked);
        }
        if firing && self.acked != Some(false) {
            p.push(Phase::Acked);
        }
        if resolved {
            p.push(Phase::Resolved);
        }
        p
    }

    /// The API's filter for everything this filter matches (no segments), `limit` rows.
    pub fn matching(&self, limit: i64) -> AlertFilter {
        AlertFilter {
            status: match self.status {
                StatusFilter::All => None,
                StatusFilter::Firing => Some(Status::Firing),
                StatusFilter::Resolved => Some(Status::Resolved),
            },
            kind: self.kind,
            device: self.device.clone(),
            group: self.group.clone(),
            before: None,
            limit,
            severity: self.severity,
            acked: self.acked,
        }
    }

    /// The API's filter for one segment, after `before`.
    fn segment(
        &self,
        phase: Phase,
        before: Option<(DateTime<Utc>, i64)>,
        limit: i64,
    ) -> AlertFilter {
        let (status, acked) = match phase {
            Phase::Unacked => (Status::Firing, Some(false)),
            Phase::Acked => (Status::Firing, Some(true)),
            Phase::Resolved => (Status::Resolved, self.acked),
        };
        AlertFilter {
            status: Some(status),
            acked,
            before,
            ..self.matching(limit)
        }
    }

    /// The silence form prefilled with this filter's matchers, if it names any.
    pub fn silence_href(&self) -> Option<String> {
        silence_href(self.kind, self.device.as_deref(), self.group.as_deref())
    }
}

/// `/silences/new` with the matchers given, named as the API's silence fields are
/// (`kind`, `device_id`, `group_id`); None when none is given (a silence needs one).
pub fn silence_href(
    kind: Option<Kind>,
    device: Option<&str>,
    group: Option<&str>,
) -> Option<String> {
    let mut q = Query::parse("/silences/new");
    if let Some(k) = kind {
        q.pairs.push(("kind".into(), k.as_str().into()));
    }
    if let Some(d) = device {
        q.pairs.push(("device_id".into(), d.into()));
    }
    if let Some(g) = group {
        q.pairs.push(("group_id".into(), g.into()));
    }
    (!q.pairs.is_empty()).then(|| q.current())
}

/// A segment of the list: unacknowledged firing, acknowledged firing, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Unacked,
    Acked,
    Resolved,
}

impl Phase {
    fn letter(self) -> char {
        match self {
            Phase::Unacked => 'u',
            Phase::Acked => 'k',
            Phase::Resolved => 'r',
        }
    }
}

/// The list's cursor: `<segment letter>.<the API's (opened_at, id) cursor>`.
fn encode_cursor(phase: Phase, a: &AlertRow) -> String {
    format!("{}.{}", phase.letter(), (a.opened_at, a.id).encode())
}

fn decode_cursor(c: &str, phases: &[Phase]) -> Result<(usize, (DateTime<Utc>, i64)), ApiError> {
    let bad = || ApiError::BadRequest("cursor: not a cursor this page handed out".into());
    let (letter, rest) = c.split_once('.').ok_or_else(bad)?;
    let at = phases
        .iter()
        .position(|p| letter.len() == 1 && letter.starts_with(p.letter()))
        .ok_or_else(bad)?;
    let key = <(DateTime<Utc>, i64)>::decode(rest).map_err(|_| bad())?;
    Ok((at, key))
}

/// One page of the list for `f` from `cursor`: the rows and the next page's cursor.
pub async fn read_page(
    pool: &sqlx::PgPool,
    f: &Filter,
    cursor: Option<&str>,
) -> Result<(Vec<AlertRow>, Option<String>), ApiError> {
    let phases = f.phases();
    let (start, mut before) = match cursor {
        Some(c) => {
            let (i, key) = decode_cursor(c, &phases)?;
            (i, Some(key))
        }
        None => (0, None),
    };
    let want = PAGE_SIZE + 1;
    let mut rows: Vec<(Phase, AlertRow)> = Vec::with_capacity(want);
    for &phase in &phases[start..] {
        let limit = (want - rows.len()) as i64;
        let got = db::alerts::list(pool, &f.segment(phase, before, limit)).await?;
        rows.extend(got.into_iter().map(|a| (phase, a)));
        if rows.len() >= want {
            break;
        }
        before = None;
    }
    let next = if rows.len() > PAGE_SIZE {
        rows.truncate(PAGE_SIZE);
        rows.last().map(|(p, a)| encode_cursor(*p, a))
    } else {
        None
    };
    Ok((rows.into_iter().map(|(_, a)| a).collect(), next))
}

/// An alert as a row or a linked alert shows it.
#[derive(Debug, Clone)]
pub struct AlertView {
    pub a: AlertRow,
    pub opened: When,
    pub ago: String,
    pub resolved: Option<When>,
}

impl AlertView {
    fn new(a: AlertRow, now: DateTime<Utc>) -> AlertView {
        AlertView {
            opened: When(a.opened_at),
            ago: ago(a.opened_at, now),
            resolved: a.resolved_at.map(When),
            a,
        }
    }
    pub fn href(&self) -> String {
        format!("/alerts/{}", self.a.id)
    }
    /// The device page of the alert's device.
    pub fn device_href(&self) -> Option<String> {
        self.a
            .device_id
            .as_deref()
            .map(|d| format!("/devices/{}", encode(d)))
    }
    /// This list filtered to the alert's group.
    pub fn group_href(&self) -> Option<String> {
        self.a
            .group
            .as_deref()
            .map(|g| format!("/alerts?group={}", encode(g)))
    }
    pub fn firing(&self) -> bool {
        self.a.status == Status::Firing
    }
    /// The ticket's link, if it has an http(s) one (`domain::triage` accepts only those).
    pub fn ticket_link(&self) -> Option<&str> {
        self.a
            .ticket_url
            .as_deref()
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
    }
    /// The silence form for this alert's kind and device (or group, or subject's kind alone).
    pub fn silence_href(&self) -> Option<String> {
        let device = self.a.device_id.as_deref();
        let group = if device.is_none() {
            self.a.group.as_deref()
        } else {
            None
        };
        silence_href(Some(self.a.kind), device, group)
    }
}

/// What the list's fragment shows.
pub struct AlertList {
    pub rows: Vec<AlertView>,
    pub pager: Pager,
    /// Operators see the checkboxes and buttons.
    pub can_act: bool,
}

/// `GET /alerts`
#[derive(Template, WebTemplate)]
#[template(path = "alerts.html")]
pub struct AlertsPage {
    pub chrome: Chrome,
    pub q: Query,
    pub f: Filter,
    pub list: AlertList,
    pub notice: Option<String>,
    pub kinds: &'static [&'static str],
    pub severities: &'static [&'static str],
    /// The silence form for the filter's matchers.
    pub silence_filter: Option<String>,
}

impl Page for AlertsPage {
    fn title(&self) -> &str {
        "Alerts"
    }
    fn chrome(&self) -> Option<&Chrome> {
        Some(&self.chrome)
    }
    fn nav(&self) -> &'static str {
        "/alerts"
    }
}

/// The list's live fragment alone (`HX-Target: alerts-table`).
#[derive(Template, WebTemplate)]
#[template(path = "alerts.html", block = "table")]
pub struct AlertsTable {
    pub q: Query,
    pub list: AlertList,
}

/// The request's query without the confirmation parameters.
fn without_done(mut q: Query) -> Query {
    q.pairs.retain(|(k, _)| !DONE_KEYS.contains(&k.as_str()));
    q
}

/// `GET /alerts`
pub async fn list(
    chrome: Chrome,
    State(state): State<AppState>,
    q: Query,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let notice = notice(&q);
    let q = without_done(q);
    let f = Filter::from_query(&q)?;
    let (rows, next) = read_page(&state.pool, &f, q.get("cursor")).await?;
    let now = state.clock.now();
    let list = AlertList {
        pager: Pager::new(&q, rows.len(), next.as_deref()),
        rows: rows.into_iter().map(|a| AlertView::new(a, now)).collect(),
        can_act: chrome.user.role() == crate::users::Role::Operator,
    };
    if wants_fragment(&headers, TABLE_ID) {
        return Ok(AlertsTable { q, list }.into_response());
    }
    Ok(AlertsPage {
        silence_filter: f.silence_href(),
        chrome,
        q,
        f,
        list,
        notice,
        kinds: &Kind::NAMES,
        severities: &Severity::NAMES,
    }
    .into_response())
}

/// The confirmation a `done=` query asks for, written here from a fixed set of texts (the
/// numbers are parsed, never echoed as given).
pub fn notice(q: &Query) -> Option<String> {
    let num = |k: &str| q.get(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    let plural = |n: u32, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let (n, already, missing) = (num("n"), num("already"), num("missing"));
    let mut parts = match q.get("done")? {
        "ack" => {
            let mut p = vec![format!("{} acknowledged", plural(n, "alert", "alerts"))];
            if already > 0 {
                p.push(format!("{already} already acknowledged"));
            }
            p
        }
        "ticket" => {
            let mut p = vec![format!(
                "Ticket attached to {}",
                plural(n, "alert", "alerts")
            )];
            if already > 0 {
                p.push(format!("{already} already had this ticket"));
            }
            p
        }
        "none" => vec![
            "No alerts selected: check some rows, or choose everything this filter matches".into(),
        ],
        "silence-none" => vec![
            "The selected alerts share no kind, device or group: silence them one at a time".into(),
        ],
        "silence-filter-none" => {
            vec!["This filter names no kind, device or group to silence".into()]
        }
        _ => return None,
    };
    if missing > 0 {
        parts.push(format!("{missing} no longer exist"));
    }
    if q.get("capped").is_some() {
        parts.push(format!(
            "not every matching alert was handled (at most {FILTER_CAP} at once); repeat for the rest"
        ));
    }
    Some(format!("{}.", parts.join("; ")))
}

/// A form body's pairs.
fn form_pairs(body: &Bytes) -> Vec<(String, String)> {
    Query::parse(&format!("?{}", String::from_utf8_lossy(body))).pairs
}

fn field<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A form field, `None` when absent or blank (an empty optional text box).
fn optional<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    field(pairs, key).filter(|v| !v.trim().is_empty())
}

/// `303 See Other` to `back` (a local path, else `fallback`) with the confirmation `done`.
fn see_other(back: Option<&str>, fallback: &str, done: &[(&str, String)]) -> Response {
    let back = match back {
        Some(b) if safe_next(Some(b)) == b => b,
        _ => fallback,
    };
    let mut q = without_done(Query::parse(back));
    for (k, v) in done {
        q.pairs.push(((*k).to_string(), v.clone()));
    }
    let to = HeaderValue::from_str(&q.current()).unwrap_or(HeaderValue::from_static("/alerts"));
    (StatusCode::SEE_OTHER, [(LOCATION, to)]).into_response()
}

/// How many alerts an action changed, left alone (already so), and did not find; whether it
/// stopped for time before the end.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    changed: u32,
    already: u32,
    missing: u32,
    stopped: bool,
}

impl Tally {
    fn add(&mut self, r: Option<bool>) {
        match r {
            Some(true) => self.changed += 1,
            Some(false) => self.already += 1,
            None => self.missing += 1,
        }
    }
    fn done(self, what: &str, capped: bool) -> Vec<(&str, String)> {
        let mut d = vec![("done", what.to_string()), ("n", self.changed.to_string())];
        if self.already > 0 {
            d.push(("already", self.already.to_string()));
        }
        if self.missing > 0 {
            d.push(("missing", self.missing.to_string()));
        }
        if capped || self.stopped {
            d.push(("capped", "1".into()));
        }
        d
    }
}

/// When a bulk action stops taking more alerts: two thirds into the request timeout.
fn deadline(state: &AppState) -> std::time::Instant {
    std::time::Instant::now() + state.config.http.request_timeout.0 * 2 / 3
}

/// Acknowledge `ids` one by one through the lifecycle, as `user:<name>`.
async fn acknowledge_all(
    state: &AppState,
    op: &Operator,
    ids: &[i64],
    note: Option<&str>,
) -> Result<Tally, ApiError> {
    let actor = op.0.actor();
    let deadline = deadline(state);
    let mut t = Tally::default();
    for &id in ids {
        if std::time::Instant::now() > deadline {
            t.stopped = true;
            break;
        }
        let r = lifecycle::acknowledge(&state.pool, id, &actor, note, state.clock.now()).await?;
        t.add(r);
    }
    Ok(t)
}

/// Attach a ticket to `ids` one by one through the lifecycle, as `user:<name>`.
async fn ticket_all(
    state: &AppState,
    op: &Operator,
    ids: &[i64],
    reference: &str,
    url: Option<&str>,
) -> Result<Tally, ApiError> {
    let actor = op.0.actor();
    let deadline = deadline(state);
    let mut t = Tally::default();
    for &id in ids {
        if std::time::Instant::now() > deadline {
            t.stopped = true;
            break;
        }
        let r = lifecycle::link_ticket(&state.pool, id, reference, url, &actor, state.clock.now())
            .await?;
        t.add(r);
    }
    Ok(t)
}

/// `POST /alerts/bulk`: `action` = `ack` (optional `note`), `ticket` (`ref`, optional `url`)
/// or `silence`, for the checked `id`s, or with `scope=filter` for everything the filter of
/// `back` (the list's URL) matches, up to [`FILTER_CAP`].
pub async fn bulk(
    State(state): State<AppState>,
    op: Operator,
    body: Bytes,
) -> Result<Response, ApiError> {
    let pairs = form_pairs(&body);
    let back = field(&pairs, "back");
    let action = field(&pairs, "action").unwrap_or("");
    if !matches!(action, "ack" | "ticket" | "silence") {
        return Err(ApiError::BadRequest(
            "action: expected one of ack, ticket, silence".into(),
        ));
    }
    // Check the texts before touching anything.
    let note = optional(&pairs, "note");
    let reference = field(&pairs, "ref").unwrap_or("");
    let url = optional(&pairs, "url");
    match action {
        "ack" => triage::validate_ack(None, note)?,
        "ticket" => triage::validate_ticket(reference, url, None)?,
        _ => {}
    }

    let by_filter = field(&pairs, "scope") == Some("filter");
    let (ids, capped) = if by_filter {
        let view = Query::parse(back.unwrap_or("/alerts"));
        if view.path != "/alerts" {
            return Err(ApiError::BadRequest(
                "back: everything this filter matches needs the list's URL".into(),
            ));
        }
        let f = Filter::from_query(&view)?;
        if action == "silence" {
            return Ok(match f.silence_href() {
                Some(href) => see_other(Some(&href), "/silences/new", &[]),
                None => see_other(back, "/alerts", &[("done", "silence-filter-none".into())]),
            });
        }
        let mut filter = f.matching(FILTER_CAP as i64 + 1);
        if action == "ack" {
            // Only those still to do: a repeat after the cap makes progress.
            filter.acked = match filter.acked {
                Some(true) => {
                    return Ok(see_other(
                        back,
                        "/alerts",
                        &Tally::default().done("ack", false),
                    ))
                }
                _ => Some(false),
            };
        }
        let mut ids = db::alerts::ids_matching(&state.pool, &filter).await?;
        let capped = ids.len() > FILTER_CAP;
        ids.truncate(FILTER_CAP);
        (ids, capped)
    } else {
        let mut ids = Vec::new();
        for (k, v) in &pairs {
            if k == "id" {
                let id = v
                    .parse::<i64>()
                    .map_err(|_| ApiError::BadRequest("id: not an alert id".into()))?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        if ids.len() > MAX_SELECTED {
            return Err(ApiError::BadRequest(format!(
                "id: at most {MAX_SELECTED} alerts at once; choose everything this filter matches instead"
            )));
        }
        if ids.is_empty() {
            return Ok(see_other(back, "/alerts", &[("done", "none".into())]));
        }
        (ids, false)
    };

    let done = match action {
        "ack" => acknowledge_all(&state, &op, &ids, note)
            .await?
            .done("ack", capped),
        "ticket" => ticket_all(&state, &op, &ids, reference, url)
            .await?
            .done("ticket", capped),
        _ => {
            let rows = db::alerts::get_many(&state.pool, &ids).await?;
            return Ok(match shared_matchers(&rows) {
                Some(href) => see_other(Some(&href), "/silences/new", &[]),
                None => see_other(back, "/alerts", &[("done", "silence-none".into())]),
            });
        }
    };
    Ok(see_other(back, "/alerts", &done))
}

/// The silence form for the matchers every one of `rows` shares (kind, device, group), if any.
pub fn shared_matchers(rows: &[AlertRow]) -> Option<String> {
    let first = rows.first()?;
    let kind = Some(first.kind).filter(|k| rows.iter().all(|a| a.kind == *k));
    let same = |get: fn(&AlertRow) -> Option<&str>| {
        get(first).filter(|v| rows.iter().all(|a| get(a) == Some(*v)))
    };
    let device = same(|a| a.device_id.as_deref());
    let group = same(|a| a.group.as_deref());
    silence_href(kind, device, group)
}

/// A notification with its newest attempts.
pub struct NotificationView {
    pub n: DeliveryRow,
    pub created: When,
    pub attempts: Vec<(When, AttemptRow)>,
}

/// What the alert page's live fragment shows.
pub struct AlertDetail {
    pub alert: AlertView,
    pub updated: When,
    pub acked_at: Option<When>,
    pub events: Vec<(When, EventRow)>,
    /// The outage that covers it, the alert that inhibits it.
    pub covering: Option<AlertView>,
    pub inhibiting: Option<AlertView>,
    /// Alerts it covers / inhibits (up to [`LINKED_SHOWN`]), and whether there are more.
    pub covers: Vec<AlertView>,
    pub covers_more: bool,
    pub inhibits: Vec<AlertView>,
    pub inhibits_more: bool,
    pub notifications: Vec<NotificationView>,
    pub notifications_more: bool,
}

impl AlertDetail {
    /// The `details` JSON, pretty-printed (shown as escaped text).
    pub fn details(&self) -> String {
        serde_json::to_string_pretty(&self.alert.a.details).unwrap_or_default()
    }
}

/// `GET /alerts/{id}`
#[derive(Template, WebTemplate)]
#[template(path = "alert.html")]
pub struct AlertPage {
    pub chrome: Chrome,
    pub q: Query,
    pub title: String,
    pub d: AlertDetail,
    pub notice: Option<String>,
    pub can_act: bool,
}

impl Page for AlertPage {
    fn title(&self) -> &str {
        &self.title
    }
    fn chrome(&self) -> Option<&Chrome> {
        Some(&self.chrome)
    }
    fn nav(&self) -> &'static str {
        "/alerts"
    }
}

/// The alert page's live fragment alone (`HX-Target: alert-detail`).
#[derive(Template, WebTemplate)]
#[template(path = "alert.html", block = "detail")]
pub struct AlertDetailFragment {
    pub q: Query,
    pub d: AlertDetail,
}

/// `true` and the first `n` of `rows` when it holds more than `n`.
fn first<T>(mut rows: Vec<T>, n: usize) -> (Vec<T>, bool) {
    let more = rows.len() > n;
    rows.truncate(n);
    (rows, more)
}

async fn detail(state: &AppState, id: i64) -> Result<AlertDetail, ApiError> {
    let pool = &state.pool;
    let now = state.clock.now();
    let a = db::alerts::get(pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no alert {id}")))?;
    let view = |a: AlertRow| AlertView::new(a, now);
    let linked = LINKED_SHOWN as i64 + 1;
    let covering = match a.covered_by {
        Some(c) => db::alerts::get(pool, c).await?.map(view),
        None => None,
    };
    let inhibiting = match a.inhibited_by {
        Some(c) => db::alerts::get(pool, c).await?.map(view),
        None => None,
    };
    let (covers, covers_more) = first(
        db::alerts::covered_by(pool, id, linked).await?,
        LINKED_SHOWN,
    );
    let (inhibits, inhibits_more) = first(
        db::alerts::inhibited_by(pool, id, linked).await?,
        LINKED_SHOWN,
    );
    let (notes, notifications_more) = first(
        db::notifications::of_alert(pool, id, linked).await?,
        LINKED_SHOWN,
    );
    let note_ids: Vec<i64> = notes.iter().map(|n| n.id).collect();
    let attempts = db::notifications::attempts_of(pool, &note_ids, ATTEMPTS_SHOWN).await?;
    let notifications = notes
        .into_iter()
        .map(|n| NotificationView {
            created: When(n.created_at),
            attempts: attempts
                .iter()
                .filter(|t| t.notification_id == n.id)
                .map(|t| (When(t.at), t.clone()))
                .collect(),
            n,
        })
        .collect();
    let events = db::alerts::events(pool, id)
        .await?
        .into_iter()
        .map(|e| (When(e.at), e))
        .collect();
    Ok(AlertDetail {
        updated: When(a.updated_at),
        acked_at: a.acknowledged_at.map(When),
        alert: view(a),
        events,
        covering,
        inhibiting,
        covers: covers.into_iter().map(view).collect(),
        covers_more,
        inhibits: inhibits.into_iter().map(view).collect(),
        inhibits_more,
        notifications,
        notifications_more,
    })
}

/// `GET /alerts/{id}`
pub async fn page(
    chrome: Chrome,
    State(state): State<AppState>,
    id: PathId<ids::Alert>,
    q: Query,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let notice = notice(&q);
    let q = without_done(q);
    let d = detail(&state, id.get()).await?;
    if wants_fragment(&headers, DETAIL_ID) {
        return Ok(AlertDetailFragment { q, d }.into_response());
    }
    Ok(AlertPage {
        title: format!("Alert {}", d.alert.a.id),
        can_act: chrome.user.role() == crate::users::Role::Operator,
        chrome,
        q,
        d,
        notice,
    }
    .into_response())
}

/// `POST /alerts/{id}/ack` (optional `note`, `back`): what `POST /api/v1/alerts/{id}/ack`
/// does, as `user:<name>`; an alert already acknowledged is left as it is and the confirmation
/// says so.
pub async fn ack(
    State(state): State<AppState>,
    op: Operator,
    id: PathId<ids::Alert>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = id.get();
    let pairs = form_pairs(&body);
    let note = optional(&pairs, "note");
    triage::validate_ack(None, note)?;
    let t = acknowledge_all(&state, &op, &[id], note).await?;
    if t.missing > 0 {
        return Err(ApiError::NotFound(format!("no alert {id}")));
    }
    Ok(see_other(
        field(&pairs, "back"),
        &format!("/alerts/{id}"),
        &t.done("ack", false),
    ))
}

/// `POST /alerts/{id}/ticket` (`ref`, optional `url`, `back`): what
/// `PUT /api/v1/alerts/{id}/ticket` does, as `user:<name>`.
pub async fn ticket(
    State(state): State<AppState>,
    op: Operator,
    id: PathId<ids::Alert>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = id.get();
    let pairs = form_pairs(&body);
    let reference = field(&pairs, "ref").unwrap_or("");
    let url = optional(&pairs, "url");
    triage::validate_ticket(reference, url, None)?;
    let t = ticket_all(&state, &op, &[id], reference, url).await?;
    if t.missing > 0 {
        return Err(ApiError::NotFound(format!("no alert {id}")));
    }
    Ok(see_other(
        field(&pairs, "back"),
        &format!("/alerts/{id}"),
        &t.done("ticket", false),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_refuse_unknown_values() {
        let f = Filter::from_query(&Query::parse(
            "/alerts?status=firing&kind=flapping&severity=warning&acked=no&device=d%201",
        ))
        .unwrap();
        assert_eq!(f.status, StatusFilter::Firing);
        assert_eq!(f.kind, Some(Kind::Flapping));
        assert_eq!(f.acked, Some(false));
        assert_eq!(f.device.as_deref(), Some("d 1"));
        assert_eq!(f.phases(), vec![Phase::Unacked]);
        for bad in [
            "status=open",
            "kind=nope",
            "severity=huge",
            "acked=maybe",
            "device=%00",
        ] {
            assert!(
                Filter::from_query(&Query::parse(&format!("/alerts?{bad}"))).is_err(),
                "{bad}"
            );
        }
        let all = Filter::default();
        assert_eq!(
            all.phases(),
            vec![Phase::Unacked, Phase::Acked, Phase::Resolved]
        );
    }

    #[test]
    fn cursors_name_their_segment() {
        let phases = [Phase::Acked, Phase::Resolved];
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let c = format!("r.{}", (t, 7).encode());
        assert_eq!(decode_cursor(&c, &phases).unwrap(), (1, (t, 7)));
        // a segment this filter does not read, or garbage
        for bad in [
            format!("u.{}", (t, 7).encode()),
            "r".into(),
            "rr.x".into(),
            "x".into(),
        ] {
            assert!(decode_cursor(&bad, &phases).is_err(), "{bad}");
        }
    }

    #[test]
    fn confirmations_are_written_here() {
        let n = |s: &str| notice(&Query::parse(s));
        assert_eq!(
            n("/alerts?done=ack&n=12&already=3").as_deref(),
            Some("12 alerts acknowledged; 3 already acknowledged.")
        );
        assert_eq!(
            n("/alerts?done=ticket&n=1").as_deref(),
            Some("Ticket attached to 1 alert.")
        );
        assert_eq!(n("/alerts?done=<script>"), None);
        assert_eq!(
            n("/alerts?done=ack&n=<b>").as_deref(),
            Some("0 alerts acknowledged.")
        );
    }

    #[test]
    fn silence_links_use_the_api_matcher_names() {
        assert_eq!(
            silence_href(Some(Kind::HeartbeatGap), Some("d/1"), None).as_deref(),
            Some("/silences/new?kind=heartbeat_gap&device_id=d%2F1")
        );
        assert_eq!(silence_href(None, None, None), None);
    }
}
