//! `GET /webhooks`: the webhook backlog (pending count, oldest pending) and the deliveries
//! list (`db::notifications`, as `GET /api/v1/webhooks/deliveries` reads it, plus an endpoint
//! filter), filtered and paged from the URL; `POST /webhooks/redrive`: operators send dead
//! notifications again, one (a row's button) or many (checked rows), through
//! `db::notifications::redrive` as `POST /api/v1/webhooks/deliveries/{id}/redrive` does.
//!
//! `last_error` is shown as stored: delivery errors are scrubbed of endpoint URLs when written
//! (README "Errors never show the URL"), and askama escapes it like any text.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::session::Operator;
use super::silences::{back_to, form_pairs};
use super::view::wants_fragment;
use super::view::{ago, Chrome, Pager, Query, When};
use super::Page;
use crate::db;
use crate::db::notifications::DeliveryRow;
use crate::domain::notification::NotificationStatus;
use crate::http::api::{clean, parse_filter, Paging};
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::users::Role;

/// The live region's id.
const LIVE_ID: &str = "webhooks-live";
/// Rows per page.
const PAGE: i64 = 100;
/// The pending count is exact up to this.
const BACKLOG_CAP: i64 = 10_000;
/// At most this many notifications are redriven by one request.
pub const MAX_REDRIVE: usize = 500;

/// The backlog panel.
pub struct Backlog {
    /// `12`, or `10000+`.
    pub pending: String,
    pub pending_zero: bool,
    /// The oldest pending notification's time and age.
    pub oldest: Option<(When, String)>,
}

/// What the live region shows (the page and its fragment).
pub struct WebhooksBody {
    pub q: Query,
    pub can_act: bool,
    pub backlog: Backlog,
    pub rows: Vec<DeliveryRow>,
    pub pager: Pager,
    /// Whether any row on this page is dead (the selection column is shown).
    pub any_dead: bool,
    pub now: DateTime<Utc>,
}

impl WebhooksBody {
    pub fn when(&self, t: &DateTime<Utc>) -> When {
        When(*t)
    }
    pub fn ago(&self, t: &DateTime<Utc>) -> String {
        ago(*t, self.now)
    }
}

/// `GET /webhooks`
#[derive(Template, WebTemplate)]
#[template(path = "webhooks.html")]
pub struct WebhooksPage {
    pub chrome: Chrome,
    pub done: Option<String>,
    pub statuses: [&'static str; 4],
    pub status: String,
    pub endpoint: String,
    /// The configured endpoints (suggestions for the filter).
    pub endpoints: Vec<String>,
    pub body: WebhooksBody,
}

/// `GET /webhooks` as htmx re-fetches it (`HX-Target: webhooks-live`).
#[derive(Template, WebTemplate)]
#[template(path = "webhooks.html", block = "live")]
pub struct WebhooksFragment {
    pub body: WebhooksBody,
}

impl Page for WebhooksPage {
    fn title(&self) -> &str {
        "Webhooks"
    }
    fn chrome(&self) -> Option<&Chrome> {
        Some(&self.chrome)
    }
    fn nav(&self) -> &'static str {
        "/webhooks"
    }
}

/// The confirmation of `done=redriven&n=N&skipped=M` (numbers parsed, never echoed as text).
fn done_text(q: &Query) -> Option<String> {
    if q.get("done")? != "redriven" {
        return None;
    }
    let n: u32 = q.get("n").and_then(|n| n.parse().ok()).unwrap_or(0);
    let skipped: u32 = q.get("skipped").and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut text = format!("{n} redriven.");
    if skipped > 0 {
        text.push_str(&format!(" {skipped} skipped: not dead any more."));
    }
    Some(text)
}

/// `GET /webhooks`
pub async fn page(
    chrome: Chrome,
    State(state): State<AppState>,
    q: Query,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let status: Option<NotificationStatus> = parse_filter("status", q.get("status"))?;
    let endpoint = clean("endpoint", q.get("endpoint").map(String::from))?;
    let paging = Paging::<i64>::new(Some(PAGE), q.get("cursor"))?;
    let pool = &state.pool;
    let now = state.clock.now();
    let rows = db::notifications::list_of_endpoint(
        pool,
        status,
        endpoint.as_deref(),
        paging.after,
        paging.fetch(),
    )
    .await?;
    let page = paging.page(rows, |d| d.id);
    let (pending, oldest) = db::notifications::backlog(pool, BACKLOG_CAP + 1).await?;
    let body = WebhooksBody {
        can_act: chrome.user.role() == Role::Operator,
        backlog: Backlog {
            pending: if pending > BACKLOG_CAP {
                format!("{BACKLOG_CAP}+")
            } else {
                pending.to_string()
            },
            pending_zero: pending == 0,
            oldest: oldest.map(|t| (When(t), ago(t, now))),
        },
        pager: Pager::new(&q, page.items.len(), page.next_cursor.as_deref()),
        any_dead: page
            .items
            .iter()
            .any(|d| d.status == NotificationStatus::Dead),
        rows: page.items,
        now,
        q,
    };
    if wants_fragment(&headers, LIVE_ID) {
        return Ok(WebhooksFragment { body }.into_response());
    }
    let mut conn = pool.acquire().await?;
    let endpoints = db::webhooks::routes(&mut conn)
        .await?
        .into_iter()
        .map(|r| r.name)
        .collect();
    Ok(WebhooksPage {
        chrome,
        done: done_text(&body.q),
        statuses: NotificationStatus::NAMES,
        status: status.map(|s| s.as_str().to_string()).unwrap_or_default(),
        endpoint: endpoint.unwrap_or_default(),
        endpoints,
        body,
    }
    .into_response())
}

/// `POST /webhooks/redrive` with one or more `id`s (and `back`): each dead one is sent again
/// (same delivery id, fresh schedule), then back to the list with "N redriven". Ids that are
/// not dead any more are skipped and counted; an id that names no notification: 404, nothing
/// done; no id or a malformed one: 400.
pub async fn redrive(
    Operator(user): Operator,
    State(state): State<AppState>,
    body: String,
) -> Result<Response, ApiError> {
    let form = form_pairs(&body);
    let ids = form
        .pairs
        .iter()
        .filter(|(k, _)| k == "id")
        .map(|(_, v)| {
            v.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| ApiError::BadRequest(format!("id: not a delivery id: {v:?}")))
        })
        .collect::<Result<Vec<i64>, ApiError>>()?;
    let mut ids = ids;
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err(ApiError::BadRequest(
            "id: select at least one notification".into(),
        ));
    }
    if ids.len() > MAX_REDRIVE {
        return Err(ApiError::BadRequest(format!(
            "id: at most {MAX_REDRIVE} at once"
        )));
    }
    let pool = &state.pool;
    for &id in &ids {
        if db::notifications::get(pool, id).await?.is_none() {
            return Err(ApiError::NotFound(format!("no delivery {id}")));
        }
    }
    let by = user.actor();
    let now = state.clock.now();
    let (mut n, mut skipped) = (0u32, 0u32);
    for id in ids {
        if db::notifications::redrive(pool, id, now, &by.to_string()).await? {
            tracing::info!(id, %by, "delivery redriven");
            n += 1;
        } else {
            skipped += 1;
        }
    }
    let mut set = vec![("done", "redriven".to_string()), ("n", n.to_string())];
    if skipped > 0 {
        set.push(("skipped", skipped.to_string()));
    }
    Ok(back_to(form.get("back"), "/webhooks", &set))
}
