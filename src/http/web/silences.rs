//! `GET /silences` (active, scheduled and recently ended silences, with a warning on those that
//! match nothing), `POST /silences/{id}/end`, `GET /silences/new` (the form, prefilled from the
//! query string, with a preview of what it would match) and `POST /silences` (create).
//!
//! Same rules as the API: a silence is validated by `domain::silence::validate`, stored by
//! `db::silences::create` with `created_by` = the signed-in user (`user:<name>`), and ended by
//! `db::silences::end` with `deleted_by` = the user, exactly as `POST /api/v1/silences` and
//! `DELETE /api/v1/silences/{id}` do with a token.
//!
//! **Matches nothing** (the warning on `/silences`): an active or scheduled silence with a
//! device or group matcher such that no device that is not retired has that id and that group
//! (both, when both are set), and no alert the silence matches is firing or resolved within the
//! last [`RECENT`] (`db::silences::matching_nothing`). Typically a typo in a device id. A
//! kind-only silence is never flagged: any device, or the service itself, may raise any kind.
//!
//! The form's matcher fields are named as the alert list's filters (`device`, `group`, `kind`)
//! so that a link from an alert list view prefills it (`device_id` and `group_id`, the API
//! body's names, are accepted too); the window is a duration (`duration`, e.g. `2h`) or an end
//! time (`ends_at`, UTC, which wins when both are given), with an optional start (`starts_at`).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};

use super::login::safe_next;
use super::session::Operator;
use super::view::{ago, wants_fragment, Chrome, Pager, Query, When};
use super::Page;
use crate::config::HumanDuration;
use crate::db;
use crate::db::alerts::{AlertFilter, AlertRow};
use crate::db::devices::{DeviceFilter, DeviceRow};
use crate::db::silences::{Ended, NewSilence, SilenceRow};
use crate::domain::alert::{Kind, Status};
use crate::domain::input::Invalid;
use crate::domain::silence;
use crate::http::api::Paging;
use crate::http::error::ApiError;
use crate::http::extract::{ids, PathId};
use crate::http::AppState;
use crate::users::Role;

/// How far back "recently ended" and "recent alert" reach.
pub const RECENT: TimeDelta = TimeDelta::days(7);
/// At most this many recently ended and scheduled silences are shown.
const SHOWN: i64 = 100;
/// Active silences per page.
const PAGE: i64 = 100;
/// The preview lists this many devices and alerts ...
const PREVIEW: i64 = 50;
/// ... and counts up to this many.
const COUNT_CAP: i64 = 1000;
/// The live region's id.
const LIVE_ID: &str = "silences-live";

/// One silence as the page shows it.
pub struct SilenceView {
    pub s: SilenceRow,
    /// (`device`|`group`|`kind`, value) for each matcher set.
    pub matchers: Vec<(&'static str, String)>,
    /// The alert list filtered as the matchers match: the firing alerts it silences.
    pub alerts_href: String,
    pub starts: When,
    pub ends: When,
    /// Active: time left; scheduled: time until it starts; over: how long ago it stopped.
    pub relative: String,
    /// When it stopped muting (over only): ended early or expired.
    pub over_at: Option<When>,
    pub ended_early: bool,
    /// Flagged by [`db::silences::matching_nothing`].
    pub matches_nothing: bool,
}

impl SilenceView {
    fn new(s: SilenceRow, now: DateTime<Utc>) -> SilenceView {
        let mut matchers = Vec::new();
        if let Some(d) = &s.device_id {
            matchers.push(("device", d.clone()));
        }
        if let Some(g) = &s.group_id {
            matchers.push(("group", g.clone()));
        }
        if let Some(k) = s.kind {
            matchers.push(("kind", k.as_str().to_string()));
        }
        let mut alerts = Query::parse("/alerts?status=firing");
        alerts
            .pairs
            .extend(matchers.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let over = s.deleted_at.map_or(s.ends_at, |d| d.min(s.ends_at));
        let (relative, over_at) = if over <= now {
            (ago(over, now), Some(When(over)))
        } else if s.starts_at > now {
            (ago(now, s.starts_at), None)
        } else {
            (ago(now, s.ends_at), None)
        };
        SilenceView {
            alerts_href: alerts.current(),
            matchers,
            starts: When(s.starts_at),
            ends: When(s.ends_at),
            relative,
            over_at,
            ended_early: s.deleted_at.is_some_and(|d| d < s.ends_at),
            matches_nothing: false,
            s,
        }
    }
}

/// What the live region shows (the page and its fragment).
pub struct SilencesBody {
    pub q: Query,
    pub can_act: bool,
    pub active: Vec<SilenceView>,
    pub pager: Pager,
    pub upcoming: Vec<SilenceView>,
    pub recent: Vec<SilenceView>,
    /// How many of the active and scheduled ones match nothing.
    pub nothing: usize,
}

/// `GET /silences`
#[derive(Template, WebTemplate)]
#[template(path = "silences.html")]
pub struct SilencesPage {
    pub chrome: Chrome,
    pub done: Option<&'static str>,
    pub body: SilencesBody,
}

/// `GET /silences` as htmx re-fetches it (`HX-Target: silences-live`): the live region only.
#[derive(Template, WebTemplate)]
#[template(path = "silences.html", block = "live")]
pub struct SilencesFragment {
    pub body: SilencesBody,
}

impl Page for SilencesPage {
    fn title(&self) -> &str {
        "Silences"
    }
    fn chrome(&self) -> Option<&Chrome> {
        Some(&self.chrome)
    }
    fn nav(&self) -> &'static str {
        "/silences"
    }
}

/// The confirmation a `done=` value stands for (fixed texts, never the parameter itself).
fn done_text(q: &Query) -> Option<&'static str> {
    match q.get("done")? {
        "created" => Some("Silence created."),
        "ended" => Some("Silence ended."),
        "already" => Some("That silence had already ended."),
        _ => None,
    }
}

/// `GET /silences`
pub async fn page(
    chrome: Chrome,
    State(state): State<AppState>,
    q: Query,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let paging = Paging::<i64>::new(Some(PAGE), q.get("cursor"))?;
    let pool = &state.pool;
    let rows = db::silences::list(pool, Some(true), now, paging.after, paging.fetch()).await?;
    let active = paging.page(rows, |s| s.id);
    let upcoming = db::silences::upcoming(pool, now, SHOWN).await?;
    let recent = db::silences::recently_over(pool, now, now - RECENT, SHOWN).await?;
    let ids: Vec<i64> = active.items.iter().chain(&upcoming).map(|s| s.id).collect();
    let nothing = db::silences::matching_nothing(pool, &ids, now - RECENT).await?;
    let view = |rows: Vec<SilenceRow>| -> Vec<SilenceView> {
        rows.into_iter()
            .map(|s| {
                let mut v = SilenceView::new(s, now);
                v.matches_nothing = nothing.contains(&v.s.id);
                v
            })
            .collect()
    };
    let body = SilencesBody {
        pager: Pager::new(&q, active.items.len(), active.next_cursor.as_deref()),
        can_act: chrome.user.role() == Role::Operator,
        active: view(active.items),
        upcoming: view(upcoming),
        recent: view(recent),
        nothing: nothing.len(),
        q,
    };
    if wants_fragment(&headers, LIVE_ID) {
        return Ok(SilencesFragment { body }.into_response());
    }
    Ok(SilencesPage {
        done: done_text(&body.q),
        chrome,
        body,
    }
    .into_response())
}

/// The pairs of an `application/x-www-form-urlencoded` body.
pub fn form_pairs(body: &str) -> Query {
    Query::parse(&format!("/?{body}"))
}

/// `back` (a page of this site, else `fallback`) with `set` replacing its confirmation
/// parameters (`done`, `n`, `skipped`) and the cursor dropped.
pub fn back_to(back: Option<&str>, fallback: &str, set: &[(&str, String)]) -> Response {
    let back = match safe_next(back) {
        "/" => fallback,
        b => b,
    };
    let mut q = Query::parse(back);
    q.pairs
        .retain(|(k, _)| !matches!(k.as_str(), "done" | "n" | "skipped" | "cursor"));
    q.pairs
        .extend(set.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let to = q.current();
    let location = HeaderValue::from_str(&to).unwrap_or(HeaderValue::from_static("/"));
    (StatusCode::SEE_OTHER, [(LOCATION, location)]).into_response()
}

/// `POST /silences/{id}/end`: end it now (as `DELETE /api/v1/silences/{id}`), then back to the
/// page the form was on. Already over: back, saying so; no such silence: 404.
pub async fn end(
    Operator(user): Operator,
    State(state): State<AppState>,
    id: PathId<ids::Silence>,
    body: String,
) -> Result<Response, ApiError> {
    let id = id.get();
    let form = form_pairs(&body);
    let by = user.actor();
    let done = match db::silences::end(&state.pool, id, &by.principal, state.clock.now()).await? {
        Ended::Ended(_) => {
            tracing::info!(id, %by, "silence ended");
            "ended"
        }
        Ended::AlreadyOver(_) => "already",
        Ended::NotFound => return Err(ApiError::NotFound(format!("no silence {id}"))),
    };
    Ok(back_to(
        form.get("back"),
        "/silences",
        &[("done", done.into())],
    ))
}

/// The new-silence form's values, as typed.
#[derive(Debug, Clone, Default)]
pub struct SilenceForm {
    pub device: String,
    pub group: String,
    pub kind: String,
    pub duration: String,
    pub starts_at: String,
    pub ends_at: String,
    pub comment: String,
}

impl SilenceForm {
    /// From the query string (prefill, preview) or a posted body.
    pub fn from_query(q: &Query) -> SilenceForm {
        let get = |keys: &[&str]| keys.iter().find_map(|k| q.get(k)).unwrap_or("").to_string();
        SilenceForm {
            device: get(&["device", "device_id"]),
            group: get(&["group", "group_id"]),
            kind: get(&["kind"]),
            duration: get(&["duration"]),
            starts_at: get(&["starts_at"]),
            ends_at: get(&["ends_at"]),
            comment: get(&["comment"]),
        }
    }

    fn matcher(v: &str) -> Option<&str> {
        Some(v.trim()).filter(|v| !v.is_empty())
    }
    pub fn device_id(&self) -> Option<&str> {
        Self::matcher(&self.device)
    }
    pub fn group_id(&self) -> Option<&str> {
        Self::matcher(&self.group)
    }
    pub fn kind_name(&self) -> Option<&str> {
        Self::matcher(&self.kind)
    }
    pub fn has_matcher(&self) -> bool {
        self.device_id().is_some() || self.group_id().is_some() || self.kind_name().is_some()
    }

    /// The matchers alone, checked as the API checks them (for the preview): the rest of the
    /// draft is a placeholder that passes.
    fn matchers(&self, now: DateTime<Utc>) -> Result<Option<Kind>, Invalid> {
        let d = silence::Draft {
            device_id: self.device_id(),
            group_id: self.group_id(),
            kind: self.kind_name(),
            starts_at: None,
            ends_at: now + TimeDelta::hours(1),
            comment: "preview",
            on_behalf_of: None,
        };
        silence::validate(&d, now).map(|v| v.kind)
    }

    /// The whole draft, validated by `domain::silence::validate` at `now`.
    fn validate(&self, now: DateTime<Utc>) -> Result<silence::Valid, Invalid> {
        let starts_at = match Self::matcher(&self.starts_at) {
            Some(s) => Some(parse_time("starts_at", s)?),
            None => None,
        };
        let ends_at = match (Self::matcher(&self.ends_at), Self::matcher(&self.duration)) {
            (Some(e), _) => parse_time("ends_at", e)?,
            (None, Some(d)) => {
                let d: HumanDuration = d.parse().map_err(|e| Invalid(format!("duration: {e}")))?;
                let d = TimeDelta::from_std(d.0)
                    .ok()
                    .filter(|d| *d <= silence::MAX_DURATION)
                    .ok_or_else(|| Invalid("duration: a silence lasts at most 90 days".into()))?;
                starts_at.unwrap_or(now) + d
            }
            (None, None) => {
                return Err(Invalid(
                    "duration: give a duration (e.g. 2h) or an end time".into(),
                ))
            }
        };
        silence::validate(
            &silence::Draft {
                device_id: self.device_id(),
                group_id: self.group_id(),
                kind: self.kind_name(),
                starts_at,
                ends_at,
                comment: &self.comment,
                on_behalf_of: None,
            },
            now,
        )
    }
}

/// A time typed in the form: RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` / `YYYY-MM-DD HH:MM[:SS]`
/// read as UTC (what a `datetime-local` input sends).
pub fn parse_time(field: &str, s: &str) -> Result<DateTime<Utc>, Invalid> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.to_utc());
    }
    [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .map(|t| t.and_utc())
    .ok_or_else(|| {
        Invalid(format!(
            "{field}: expected a UTC time like 2026-11-30 18:00 or 2026-11-30T18:00:00Z"
        ))
    })
}

/// What the form's matchers match now.
pub struct Preview {
    /// `None`: no device or group matcher (any device).
    pub devices: Option<Vec<DeviceRow>>,
    /// "and 12 more" / "and 1000+ more", when more match than are listed.
    pub devices_more: Option<String>,
    pub alerts: Vec<AlertRow>,
    pub alerts_more: Option<String>,
}

/// "and N more" for `total` (capped at [`COUNT_CAP`]) of which `shown` are listed.
fn more(total: i64, shown: usize) -> Option<String> {
    let shown = shown as i64;
    if total >= COUNT_CAP && total > shown {
        Some(format!("and more ({COUNT_CAP}+ in all)"))
    } else if total > shown {
        Some(format!("and {} more", total - shown))
    } else {
        None
    }
}

async fn preview(
    state: &AppState,
    f: &SilenceForm,
    kind: Option<Kind>,
) -> Result<Preview, ApiError> {
    let pool = &state.pool;
    let (device, group) = (f.device_id(), f.group_id());
    let devices = match (device, group) {
        (None, None) => None,
        (Some(d), g) => Some(
            db::devices::get(pool, d)
                .await?
                .into_iter()
                .filter(|r| g.is_none() || r.group.as_deref() == g)
                .collect(),
        ),
        (None, Some(g)) => Some(
            db::devices::list(
                pool,
                &DeviceFilter {
                    group: Some(g.to_string()),
                    limit: PREVIEW,
                    ..DeviceFilter::default()
                },
            )
            .await?,
        ),
    };
    let alerts = db::alerts::list(
        pool,
        &AlertFilter {
            status: Some(Status::Firing),
            kind,
            device: device.map(String::from),
            group: group.map(String::from),
            limit: PREVIEW,
            ..AlertFilter::default()
        },
    )
    .await?;
    let (n_devices, n_alerts) =
        db::silences::preview_counts(pool, device, group, kind, COUNT_CAP).await?;
    Ok(Preview {
        devices_more: devices
            .as_ref()
            .and_then(|d: &Vec<DeviceRow>| more(n_devices.unwrap_or(0), d.len())),
        devices,
        alerts_more: more(n_alerts, alerts.len()),
        alerts,
    })
}

/// `GET /silences/new`
#[derive(Template, WebTemplate)]
#[template(path = "silence_new.html")]
pub struct NewSilencePage {
    pub chrome: Chrome,
    pub form: SilenceForm,
    pub error: Option<String>,
    pub preview: Option<Preview>,
    pub kinds: &'static [&'static str],
    pub can_act: bool,
    /// The time the form's window counts from, for the hint.
    pub now: When,
}

impl Page for NewSilencePage {
    fn title(&self) -> &str {
        "New silence"
    }
    fn chrome(&self) -> Option<&Chrome> {
        Some(&self.chrome)
    }
    fn nav(&self) -> &'static str {
        "/silences"
    }
}

async fn new_page(
    chrome: Chrome,
    state: &AppState,
    mut form: SilenceForm,
    error: Option<String>,
) -> Result<NewSilencePage, ApiError> {
    let (preview, error) = if form.has_matcher() {
        match form.matchers(state.clock.now()) {
            Ok(kind) => (Some(preview(state, &form, kind).await?), error),
            Err(e) => (None, error.or(Some(e.0))),
        }
    } else {
        (None, error)
    };
    if form.duration.is_empty() && form.ends_at.is_empty() {
        form.duration = "2h".into();
    }
    Ok(NewSilencePage {
        can_act: chrome.user.role() == Role::Operator,
        chrome,
        form,
        error,
        preview,
        kinds: &Kind::NAMES,
        now: When(state.clock.now()),
    })
}

/// `GET /silences/new`: the form, prefilled from the query string; with a matcher, the
/// preview of what it matches.
pub async fn new_form(
    chrome: Chrome,
    State(state): State<AppState>,
    q: Query,
) -> Result<NewSilencePage, ApiError> {
    new_page(chrome, &state, SilenceForm::from_query(&q), None).await
}

/// `POST /silences`: create it (validated as the API does, `created_by` = the user), then to
/// `/silences` with a confirmation; an invalid draft re-shows the form with the message (422).
pub async fn create(
    Operator(user): Operator,
    State(state): State<AppState>,
    chrome: Chrome,
    body: String,
) -> Result<Response, ApiError> {
    let form = SilenceForm::from_query(&form_pairs(&body));
    let now = state.clock.now();
    let valid = match form.validate(now) {
        Ok(v) => v,
        Err(e) => {
            let page = new_page(chrome, &state, form, Some(e.0)).await?;
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response());
        }
    };
    let new = NewSilence {
        device_id: form.device_id().map(String::from),
        group_id: form.group_id().map(String::from),
        kind: valid.kind,
        starts_at: valid.starts_at,
        ends_at: valid.ends_at,
        created_by: user.actor(),
        comment: form.comment.clone(),
    };
    let row = db::silences::create(&state.pool, &new, now).await?;
    tracing::info!(id = row.id, by = %row.created_by, "silence created");
    Ok(back_to(
        Some("/silences"),
        "/silences",
        &[("done", "created".into())],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn form(pairs: &str) -> SilenceForm {
        SilenceForm::from_query(&Query::parse(&format!("/silences/new?{pairs}")))
    }

    #[test]
    fn the_window_is_a_duration_or_an_end_time() {
        let v = form("device=d1&duration=90m&comment=x")
            .validate(now())
            .unwrap();
        assert_eq!(v.ends_at, now() + TimeDelta::minutes(90));
        // the end time wins; a datetime-local value is UTC
        let v = form("device=d1&duration=2h&ends_at=2026-11-27T18%3A30&comment=x")
            .validate(now())
            .unwrap();
        assert_eq!(v.ends_at, now() + TimeDelta::minutes(390));
        let v = form("group_id=b1&starts_at=2026-11-28T00:00:00Z&duration=1h&comment=x")
            .validate(now())
            .unwrap();
        assert_eq!(v.starts_at, now() + TimeDelta::hours(12));
        assert_eq!(v.ends_at, now() + TimeDelta::hours(13));
        let e = |p: &str| form(p).validate(now()).unwrap_err().0;
        assert!(e("device=d1&comment=x").starts_with("duration: give"));
        assert!(e("device=d1&duration=soon&comment=x").starts_with("duration: expected"));
        assert!(e("device=d1&duration=91d&comment=x").contains("at most 90 days"));
        assert!(e("device=d1&ends_at=tomorrow&comment=x").starts_with("ends_at: expected"));
        assert_eq!(
            e("duration=1h&comment=x"),
            "a silence needs at least one of device_id, group_id, kind"
        );
        assert_eq!(e("device=d1&duration=1h"), "comment: must not be empty");
        assert!(e("kind=nope&duration=1h&comment=x").starts_with("kind: expected one of"));
    }

    #[test]
    fn matchers_are_checked_alone_for_the_preview() {
        assert_eq!(
            form("kind=flapping").matchers(now()),
            Ok(Some(Kind::Flapping))
        );
        assert_eq!(form("device=+d1+").device_id(), Some("d1"));
        assert!(form("kind=nope").matchers(now()).is_err());
        assert!(!form("device=+&comment=x").has_matcher());
    }

    #[test]
    fn back_stays_on_the_site_and_replaces_the_confirmation() {
        let loc = |b: Option<&str>| {
            back_to(
                b,
                "/webhooks",
                &[("done", "redriven".into()), ("n", "2".into())],
            )
            .headers()
            .get(LOCATION)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
        };
        assert_eq!(
            loc(Some("/webhooks?status=dead&done=redriven&n=9&cursor=abc")),
            "/webhooks?status=dead&done=redriven&n=2"
        );
        assert_eq!(loc(Some("//evil.example/x")), "/webhooks?done=redriven&n=2");
        assert_eq!(
            loc(Some("https://evil.example/")),
            "/webhooks?done=redriven&n=2"
        );
        assert_eq!(loc(None), "/webhooks?done=redriven&n=2");
    }

    #[test]
    fn more_is_bounded() {
        assert_eq!(more(3, 3), None);
        assert_eq!(more(60, 50).as_deref(), Some("and 10 more"));
        assert_eq!(more(1000, 50).as_deref(), Some("and more (1000+ in all)"));
    }
}
