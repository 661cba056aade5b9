//! `GET /`: the overview ops staff keep open all day (issue 10, item 1).
//!
//! Sections, each a live fragment (`data-live`) re-fetched on its topics:
//! - `#counts` — devices per health state, each a link to the filtered device list; from the
//!   trigger-kept counts (`db::fleet_counts`), like `GET /api/v1/fleet/summary`.
//! - `#alerts` — firing alerts by kind and severity, unacknowledged first (unacked, acked,
//!   covered by an outage), each a link to the filtered alert list; from the same counts.
//! - `#groups` — a tile per group (building) coloured by its worst state
//!   (`domain::fleet::worst_state`), worst first; at most [`MAX_TILES`], then a link on.
//! - `#feed` — the newest alert events (opened, resolved, acknowledged …) of the fleet.
//! - `#health` — our own health: the MQTT connections and the canary, failing tasks, the AWS
//!   pollers, the webhook backlog; the same report as `/healthz` (`http::health::report`).
//! - `#aws` — CloudWatch throttle/error series of the last hours as SVG charts, or a plain
//!   "AWS polling is off" panel with the reason.
//!
//! Cost: every read is bounded whatever the fleet size (counts tables, a LIMITed index scan
//! for the feed, a capped backlog count, at most [`MAX_CHARTS`] metrics). A fragment request
//! (`HX-Target`) reads only what its section needs.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Extension;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use super::chart::{self, Chart, Series};
use super::view::{ago, Chrome, Query, When};
use super::Page;
use crate::db;
use crate::domain::alert::Severity;
use crate::domain::device::DeviceState;
use crate::http::api::fleet::{load_groups, GroupKey};
use crate::http::api::Paging;
use crate::http::error::ApiError;
use crate::http::health::Liveness;
use crate::http::AppState;

/// Group tiles shown before "more groups".
pub const MAX_TILES: i64 = 200;
/// Feed entries.
pub const FEED: i64 = 25;
/// CloudWatch metrics charted.
pub const MAX_CHARTS: i64 = 12;
/// The window of the CloudWatch charts, and their bucket.
pub const CHART_SPAN: TimeDelta = TimeDelta::hours(3);
pub const CHART_STEP_SECS: i64 = 300;
/// The webhook backlog is counted up to this.
pub const BACKLOG_CAP: i64 = 10_000;

/// The page's sections, by element id.
pub const SECTIONS: [&str; 6] = ["counts", "alerts", "groups", "feed", "health", "aws"];

pub struct StateCount {
    pub state: &'static str,
    pub n: i64,
    pub href: String,
}

pub struct AlertLine {
    pub kind: String,
    pub severity: String,
    pub unacked: i64,
    pub acked: i64,
    pub covered: i64,
    pub href: String,
}

pub struct Tile {
    pub name: String,
    pub devices: i64,
    /// The tile's colour class (`state-<worst>`); `none` for an empty group.
    pub worst: &'static str,
    /// "3 offline, 1 late" — the states other than healthy, or "all healthy".
    pub detail: String,
    pub href: String,
}

pub struct FeedItem {
    pub at: When,
    pub event: String,
    pub actor: String,
    pub alert_href: String,
    pub kind: String,
    pub subject: String,
    pub severity: String,
}

pub struct HealthLine {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// The page (or one of its sections).
#[derive(Template, WebTemplate)]
#[template(path = "overview.html")]
pub struct OverviewPage {
    pub chrome: Chrome,
    pub q: Query,
    /// `Some(id)`: only that section is rendered (a fragment request).
    pub only: Option<&'static str>,
    /// What the sections show (shared between requests by [`Cache`]).
    pub data: Arc<Sections>,
}

/// What the sections show: the same for every viewer, so it can be shared ([`Cache`]).
#[derive(Default)]
pub struct Sections {
    pub counts: Vec<StateCount>,
    pub total: i64,
    pub alerts: Vec<AlertLine>,
    pub firing: i64,
    pub unacked: i64,
    pub tiles: Vec<Tile>,
    pub more_groups: bool,
    pub feed: Vec<FeedItem>,
    pub health: Vec<HealthLine>,
    pub charts: Vec<Chart>,
    pub aws_note: Option<String>,
}

/// The overview's sections, read once and shared by every request of this replica for at most
/// [`CACHE_FOR`], and only while nothing changed (issue 12: ops keep the page open all day on
/// many screens, and a render's six reads cost ≈ 4.6 ms of server time: 500 req/s would need
/// more than two cores).
///
/// The contract: an entry is used only while the replica's live listener holds its `LISTEN`
/// (`Hub::generation` is `Some`) and no notification arrived since the entry's read *began*
/// (the generation it was read under is still current), and for at most [`CACHE_FOR`] (what
/// is not announced: our own health, the CloudWatch charts). So a page is never staler than
/// the live updates themselves, a tab re-fetching after a `change` event gets fresh data, and
/// without a listener (router tests, a lost LISTEN) every request reads. Concurrent misses
/// wait for one read (the lock is held while reading) instead of all reading at once.
#[derive(Default)]
pub struct Cache {
    entry: tokio::sync::Mutex<Option<Entry>>,
}

struct Entry {
    generation: u64,
    read_at: tokio::time::Instant,
    sections: Arc<Sections>,
}

/// The longest an overview read is shared.
pub const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl Cache {
    /// The shared sections under `generation`, read by `read` when there is no usable entry.
    pub async fn get<F, Fut>(&self, generation: u64, read: F) -> Result<Arc<Sections>, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Sections, ApiError>>,
    {
        let mut entry = self.entry.lock().await;
        if let Some(e) = entry.as_ref() {
            if e.generation == generation && e.read_at.elapsed() < CACHE_FOR {
                return Ok(e.sections.clone());
            }
        }
        let read_at = tokio::time::Instant::now();
        let sections = Arc::new(read().await?);
        *entry = Some(Entry {
            generation,
            read_at,
            sections: sections.clone(),
        });
        Ok(sections)
    }
}

impl OverviewPage {
    /// Whether section `id` is rendered.
    pub fn show(&self, id: &str) -> bool {
        self.only.is_none_or(|o| o == id)
    }
}

impl Page for OverviewPage {
    fn title(&self) -> &str {
        "Overview"
    }
    fn chrome(&self) -> Option<&Chrome> {
        Some(&self.chrome)
    }
    fn nav(&self) -> &'static str {
        "/"
    }
}

/// The section an htmx request targets, if it is one of ours.
pub fn target(headers: &HeaderMap) -> Option<&'static str> {
    let t = super::view::hx_target(headers)?;
    SECTIONS.into_iter().find(|s| *s == t)
}

/// `GET /`
pub async fn page(
    chrome: Chrome,
    q: Query,
    headers: HeaderMap,
    liveness: Option<Extension<Liveness>>,
    State(state): State<AppState>,
) -> Result<OverviewPage, ApiError> {
    let only = target(&headers);
    let liveness = liveness.as_ref().map(|Extension(l)| l);
    let data = match state.live.generation() {
        Some(generation) => {
            let read = || read(&state, liveness, None);
            state.overview.get(generation, read).await?
        }
        // Changes are not announced: nothing may be shared, and a fragment reads only itself.
        None => Arc::new(read(&state, liveness, only).await?),
    };
    Ok(OverviewPage {
        chrome,
        q,
        only,
        data,
    })
}

/// Read the sections (`only`: just that one).
async fn read(
    state: &AppState,
    liveness: Option<&Liveness>,
    only: Option<&'static str>,
) -> Result<Sections, ApiError> {
    let wants = |id: &str| only.is_none_or(|o| o == id);
    let now = state.clock.now();
    let mut p = Sections::default();
    if wants("counts") {
        let by_state = db::fleet_counts::devices_by_state(&state.pool).await?;
        p.counts = DeviceState::NAMES
            .iter()
            .map(|s| StateCount {
                state: s,
                n: by_state
                    .iter()
                    .filter(|(k, _)| k == s)
                    .map(|(_, n)| n)
                    .sum(),
                href: format!("/devices?state={s}"),
            })
            .collect();
        p.total = p.counts.iter().map(|c| c.n).sum();
    }
    if wants("alerts") {
        let firing = db::fleet_counts::firing(&state.pool).await?;
        p.alerts = alert_lines(&firing);
        p.firing = firing.iter().map(|f| f.n).sum();
        p.unacked = firing.iter().filter(|f| !f.acknowledged).map(|f| f.n).sum();
    }
    if wants("groups") {
        let paging = Paging::<GroupKey>::new(Some(MAX_TILES), None)?;
        let page = load_groups(&state.pool, &paging).await?;
        p.more_groups = page.next_cursor.is_some();
        p.tiles = tiles(page.items);
    }
    if wants("feed") {
        p.feed = db::alerts::recent_events(&state.pool, FEED)
            .await?
            .into_iter()
            .map(|r| FeedItem {
                at: When(r.at),
                event: r.event,
                actor: r.actor,
                alert_href: format!("/alerts/{}", r.alert_id),
                kind: r.kind,
                subject: r.subject,
                severity: r.severity,
            })
            .collect();
    }
    let report =
        (wants("health") || wants("aws")).then(|| crate::http::health::report(state, liveness));
    if wants("health") {
        let (pending, oldest) = db::notifications::backlog(&state.pool, BACKLOG_CAP).await?;
        p.health = health_lines(report.as_ref().expect("read above"), pending, oldest, now);
    }
    if wants("aws") {
        let (charts, note) = cloudwatch(state, report.as_ref().expect("read above"), now).await?;
        p.charts = charts;
        p.aws_note = note;
    }
    Ok(p)
}

/// Firing alerts per (kind, severity): unacknowledged first (most unacked on top), then by
/// severity, then kind.
pub fn alert_lines(firing: &[db::fleet_counts::FiringCount]) -> Vec<AlertLine> {
    let mut by: BTreeMap<(String, String), AlertLine> = BTreeMap::new();
    for f in firing {
        let line = by
            .entry((f.kind.clone(), f.severity.clone()))
            .or_insert_with(|| AlertLine {
                href: format!("/alerts?status=firing&kind={}", f.kind),
                kind: f.kind.clone(),
                severity: f.severity.clone(),
                unacked: 0,
                acked: 0,
                covered: 0,
            });
        if f.acknowledged {
            line.acked += f.n;
        } else {
            line.unacked += f.n;
        }
        if f.covered {
            line.covered += f.n;
        }
    }
    // Most severe first: the order of `Severity::NAMES`.
    let rank = |s: &str| {
        Severity::NAMES
            .iter()
            .position(|n| *n == s)
            .unwrap_or(usize::MAX)
    };
    let mut lines: Vec<AlertLine> = by
        .into_values()
        .filter(|l| l.unacked + l.acked > 0)
        .collect();
    lines.sort_by(|a, b| {
        (b.unacked > 0)
            .cmp(&(a.unacked > 0))
            .then(rank(&a.severity).cmp(&rank(&b.severity)))
            .then(b.unacked.cmp(&a.unacked))
            .then(a.kind.cmp(&b.kind))
    });
    lines
}

/// Tiles, worst state first, then by name.
pub fn tiles(groups: Vec<crate::http::api::fleet::GroupCounts>) -> Vec<Tile> {
    let mut tiles: Vec<(Option<u8>, Tile)> = groups
        .into_iter()
        .map(|g| {
            let worst = g.worst_state;
            let detail: Vec<String> = DeviceState::ALL
                .iter()
                .rev()
                .filter(|s| !matches!(s, DeviceState::Healthy | DeviceState::Retired))
                .filter_map(|s| {
                    let n = g.devices_by_state.get(s.as_str()).copied().unwrap_or(0);
                    (n > 0).then(|| format!("{n} {}", s.as_str()))
                })
                .collect();
            let name = g
                .name
                .clone()
                .or_else(|| g.group.clone())
                .unwrap_or_else(|| "(no group)".into());
            let href = match &g.group {
                Some(id) => format!("/devices?group={}", super::view::encode(id)),
                None => "/devices".to_string(),
            };
            let tile = Tile {
                name,
                devices: g.devices,
                worst: worst.map_or("none", |s| s.as_str()),
                detail: if detail.is_empty() && g.devices > 0 {
                    "all healthy".into()
                } else {
                    detail.join(", ")
                },
                href,
            };
            (worst.and_then(crate::domain::fleet::severity), tile)
        })
        .collect();
    tiles.sort_by(|(ra, a), (rb, b)| rb.cmp(ra).then(a.name.cmp(&b.name)));
    tiles.into_iter().map(|(_, t)| t).collect()
}

fn s<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    v.pointer(path).filter(|v| !v.is_null())
}

/// Our own health from the `/healthz` report and the webhook backlog.
pub fn health_lines(
    report: &Value,
    pending: i64,
    oldest: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<HealthLine> {
    let mut out = Vec::new();
    let conns = s(report, "/mqtt/connections")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let up = conns
        .iter()
        .filter(|c| c["connected"].as_bool() == Some(true))
        .count();
    let rate = s(report, "/mqtt/receive_rate")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let mut detail = format!("{up} of {} connected, {rate:.0} msg/s", conns.len());
    if let Some(err) = conns
        .iter()
        .find_map(|c| c["last_error"].as_str().filter(|_| c["connected"] != true))
    {
        detail.push_str(&format!("; last error: {err}"));
    }
    out.push(HealthLine {
        what: "Ingest (MQTT)".into(),
        ok: up == conns.len(),
        detail,
    });
    if let Some(c) = s(report, "/canary") {
        let back = c["last_returned_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.to_utc());
        let sent = c["sent"].as_u64().unwrap_or(0);
        let (ok, detail) = match back {
            Some(t) => (
                now - t < TimeDelta::minutes(5),
                format!(
                    "last came back {} ago{}",
                    ago(t, now),
                    c["last_round_trip_ms"]
                        .as_f64()
                        .map(|ms| format!(", round trip {ms:.0} ms"))
                        .unwrap_or_default()
                ),
            ),
            None if sent == 0 => (true, "none sent yet".into()),
            None => (false, format!("{sent} sent, none came back")),
        };
        out.push(HealthLine {
            what: "Canary".into(),
            ok,
            detail,
        });
    }
    if let Some(tasks) = s(report, "/tasks").and_then(Value::as_object) {
        let bad: Vec<String> = tasks
            .iter()
            .filter(|(_, t)| !matches!(t["state"].as_str(), Some("running") | Some("stopped")))
            .map(|(n, t)| format!("{n} ({})", t["state"].as_str().unwrap_or("?")))
            .collect();
        out.push(HealthLine {
            what: "Tasks".into(),
            ok: bad.is_empty(),
            detail: if bad.is_empty() {
                format!("{} running", tasks.len())
            } else {
                bad.join(", ")
            },
        });
    }
    if let Some(leader) = s(report, "/leader").and_then(Value::as_bool) {
        out.push(HealthLine {
            what: "Detector".into(),
            ok: true,
            detail: if leader {
                "this replica leads".into()
            } else {
                "another replica leads".into()
            },
        });
    }
    if let Some(aws) = s(report, "/aws") {
        let (ok, detail) = if aws["enabled"] == false {
            (
                true,
                format!("off: {}", aws["reason"].as_str().unwrap_or("disabled")),
            )
        } else {
            let failing: Vec<String> = aws["pollers"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, r)| r["failing"] == true)
                        .map(|(n, _)| n.clone())
                        .collect()
                })
                .unwrap_or_default();
            if failing.is_empty() {
                (true, "polling".into())
            } else {
                (false, format!("failing: {}", failing.join(", ")))
            }
        };
        out.push(HealthLine {
            what: "AWS pollers".into(),
            ok,
            detail,
        });
    }
    let more = if pending >= BACKLOG_CAP { "+" } else { "" };
    out.push(HealthLine {
        what: "Webhooks".into(),
        ok: oldest.is_none_or(|t| now - t < TimeDelta::minutes(5)),
        detail: match oldest {
            None => "nothing pending".into(),
            Some(t) => format!("{pending}{more} pending, oldest {} old", ago(t, now)),
        },
    });
    out
}

/// The CloudWatch charts: one per metric name, a line per dimension set, the last
/// [`CHART_SPAN`] in [`CHART_STEP_SECS`] buckets (a missing bucket is a gap). With nothing to
/// chart, why: polling is off (the reason), or nothing was found yet.
async fn cloudwatch(
    state: &AppState,
    report: &Value,
    now: DateTime<Utc>,
) -> Result<(Vec<Chart>, Option<String>), ApiError> {
    let metrics = db::metric_series::list_metrics(&state.pool, None, MAX_CHARTS).await?;
    if metrics.is_empty() {
        let note = match s(report, "/aws") {
            Some(a) if a["enabled"] == false => format!(
                "AWS polling is off ({}). Set [aws] enabled = true and a region to chart \
                 IoT Core's throttles and errors here.",
                a["reason"].as_str().unwrap_or("disabled")
            ),
            _ if !state.config.aws.enabled => "AWS polling is off (aws.enabled = false). Set \
                 [aws] enabled = true and a region to chart IoT Core's throttles and errors here."
                .to_string(),
            _ => "No CloudWatch throttle or error metrics found yet.".to_string(),
        };
        return Ok((Vec::new(), Some(note)));
    }
    let to = now;
    let from = to - CHART_SPAN;
    let ids: Vec<i64> = metrics.iter().map(|m| m.id).collect();
    let mut by_id: BTreeMap<i64, BTreeMap<DateTime<Utc>, f64>> = BTreeMap::new();
    for (id, t, v) in
        db::metric_series::buckets(&state.pool, &ids, from, to, CHART_STEP_SECS).await?
    {
        by_id.entry(id).or_default().insert(t, v);
    }
    let slots: Vec<DateTime<Utc>> = (0..CHART_SPAN.num_seconds() / CHART_STEP_SECS)
        .map(|i| from + TimeDelta::seconds(i * CHART_STEP_SECS))
        .collect();
    let mut by_name: BTreeMap<String, Vec<(String, Points)>> = BTreeMap::new();
    for m in &metrics {
        let samples = by_id.remove(&m.id).unwrap_or_default();
        let points = slots
            .iter()
            .map(|t| (*t, samples.get(t).copied()))
            .collect();
        by_name
            .entry(m.metric_name.clone())
            .or_default()
            .push((dimensions_label(&m.dimensions), points));
    }
    let charts = by_name
        .iter()
        .map(|(name, series)| {
            let s: Vec<Series> = series
                .iter()
                .map(|(label, points)| Series {
                    name: label,
                    class: "",
                    points,
                })
                .collect();
            chart::lines(&format!("{name} per 5 minutes"), from, to, &s)
        })
        .collect();
    Ok((charts, None))
}

/// A series' samples per bucket; `None` where CloudWatch had none.
type Points = Vec<(DateTime<Utc>, Option<f64>)>;

/// `Protocol=MQTT` for a dimension set; `all` for none.
fn dimensions_label(d: &Value) -> String {
    match d.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "all".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::fleet_counts::FiringCount;

    fn fc(kind: &str, sev: &str, acked: bool, covered: bool, n: i64) -> FiringCount {
        FiringCount {
            kind: kind.into(),
            severity: sev.into(),
            acknowledged: acked,
            covered,
            n,
        }
    }

    /// A read that counts itself and returns its number as the total.
    async fn counted(reads: &std::sync::atomic::AtomicI64) -> Result<Sections, ApiError> {
        let n = reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Ok(Sections {
            total: n,
            ..Sections::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_shares_a_read_within_a_second_of_one_generation() {
        let cache = Cache::default();
        let reads = std::sync::atomic::AtomicI64::new(0);
        let get = |g| cache.get(g, || counted(&reads));
        assert_eq!(get(7).await.ok().unwrap().total, 1);
        tokio::time::advance(CACHE_FOR / 2).await;
        assert_eq!(get(7).await.ok().unwrap().total, 1, "shared");
        // A notification arrived: read again, and share that one.
        assert_eq!(get(8).await.ok().unwrap().total, 2);
        assert_eq!(get(8).await.ok().unwrap().total, 2);
        // Not announced (health, charts): never older than CACHE_FOR.
        tokio::time::advance(CACHE_FOR).await;
        assert_eq!(get(8).await.ok().unwrap().total, 3);
        // A generation going back (a new hub) is not the entry's either.
        assert_eq!(get(1).await.ok().unwrap().total, 4);
    }

    #[tokio::test]
    async fn concurrent_misses_wait_for_one_read_and_errors_are_not_kept() {
        let cache = Cache::default();
        let reads = std::sync::atomic::AtomicI64::new(0);
        let slow = || async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            counted(&reads).await
        };
        let (a, b) = tokio::join!(cache.get(1, slow), cache.get(1, slow));
        assert_eq!((a.ok().unwrap().total, b.ok().unwrap().total), (1, 1));
        let failed = cache.get(2, || async { Err(ApiError::Unavailable) }).await;
        assert!(failed.is_err());
        assert_eq!(
            cache.get(2, || counted(&reads)).await.ok().unwrap().total,
            2
        );
    }

    #[test]
    fn unacknowledged_first_then_by_severity() {
        let lines = alert_lines(&[
            fc("heartbeat_gap", "warning", false, false, 5),
            fc("heartbeat_gap", "warning", true, false, 2),
            fc("heartbeat_gap", "warning", false, true, 3),
            fc("group_outage", "critical", true, false, 1),
            fc("flapping", "critical", false, false, 1),
        ]);
        let order: Vec<(&str, i64, i64, i64)> = lines
            .iter()
            .map(|l| (l.kind.as_str(), l.unacked, l.acked, l.covered))
            .collect();
        assert_eq!(
            order,
            vec![
                ("flapping", 1, 0, 0),
                ("heartbeat_gap", 8, 2, 3),
                ("group_outage", 0, 1, 0),
            ]
        );
        assert_eq!(lines[0].href, "/alerts?status=firing&kind=flapping");
    }

    #[test]
    fn own_health_reads_the_healthz_report() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .to_utc();
        let report = serde_json::json!({
            "mqtt": {"connections": [
                {"connected": true, "last_error": null},
                {"connected": false, "last_error": "connection refused"}
            ], "receive_rate": 150.2},
            "canary": {"sent": 4, "last_returned_at": "2026-11-30T11:59:00Z", "last_round_trip_ms": 12.4},
            "tasks": {"detector": {"state": "running"}, "webhook_worker": {"state": "restarting"}},
            "leader": true,
            "aws": {"enabled": false, "reason": "aws.enabled is false"}
        });
        let lines = health_lines(&report, 3, Some(now - TimeDelta::minutes(10)), now);
        let get = |w: &str| lines.iter().find(|l| l.what == w).unwrap();
        assert!(!get("Ingest (MQTT)").ok);
        assert!(get("Ingest (MQTT)")
            .detail
            .contains("1 of 2 connected, 150 msg/s"));
        assert!(get("Ingest (MQTT)").detail.contains("connection refused"));
        assert!(get("Canary").ok, "{}", get("Canary").detail);
        assert!(!get("Tasks").ok);
        assert_eq!(get("Tasks").detail, "webhook_worker (restarting)");
        assert!(get("AWS pollers").detail.starts_with("off: "));
        assert!(!get("Webhooks").ok);
        assert_eq!(get("Webhooks").detail, "3 pending, oldest 10m old");
        let quiet = health_lines(
            &serde_json::json!({"mqtt": {"connections": []}}),
            0,
            None,
            now,
        );
        assert!(quiet.iter().all(|l| l.ok));
    }
}
