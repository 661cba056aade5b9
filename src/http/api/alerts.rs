//! `GET /alerts`, `GET /alerts/{id}` (with its trail), `POST /alerts/{id}/ack`,
//! `PUT /alerts/{id}/ticket`.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{clean, parse_filter, Page, Paging};
use crate::alerts::lifecycle;
use crate::db::alerts::{self as alert_rows, AlertFilter, AlertRow, EventRow};
use crate::domain::alert::{Kind, Status};
use crate::domain::triage;
use crate::http::auth::Principal;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ids, ApiJson, ApiQuery, PathId};
use crate::http::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `firing` or `resolved`.
    #[param(value_type = Option<Status>)]
    pub status: Option<String>,
    /// An alert kind, e.g. `heartbeat_gap`.
    #[param(value_type = Option<Kind>)]
    pub kind: Option<String>,
    /// Only alerts of this device.
    pub device: Option<String>,
    /// Only alerts of this group.
    pub group: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List alerts, newest first.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", params(ListQuery),
    responses((status = 200, body = Page<AlertRow>), super::ErrorsList))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<AlertRow>>> {
    let paging = Paging::new(q.limit, q.cursor.as_deref())?;
    let filter = AlertFilter {
        status: parse_filter("status", q.status.as_deref())?,
        kind: parse_filter("kind", q.kind.as_deref())?,
        device: clean("device", q.device)?,
        group: clean("group", q.group)?,
        before: paging.after,
        limit: paging.fetch(),
        severity: None,
        acked: None,
    };
    let rows = alert_rows::list(&state.pool, &filter).await?;
    Ok(Json(paging.page(rows, |a| (a.opened_at, a.id))))
}

/// An alert with its audit trail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertWithTrail {
    #[serde(flatten)]
    pub alert: AlertRow,
    pub events: Vec<EventRow>,
}

async fn with_trail(state: &AppState, id: i64) -> ApiResult<AlertWithTrail> {
    let alert = alert_rows::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no alert {id}")))?;
    let events = alert_rows::events(&state.pool, id).await?;
    Ok(AlertWithTrail { alert, events })
}

/// One alert with its trail.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts",
    params(("id" = String, Path, description = "alert id")),
    responses((status = 200, body = AlertWithTrail), super::ErrorsOne))]
pub async fn get(
    State(state): State<AppState>,
    id: PathId<ids::Alert>,
) -> ApiResult<Json<AlertWithTrail>> {
    Ok(Json(with_trail(&state, id.get()).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// On whose behalf the token acts (e.g. the person in the ticketing tool). Recorded beside
    /// the authenticated token, never instead of it.
    #[schema(min_length = 1, max_length = 200)]
    pub by: Option<String>,
    pub note: Option<String>,
}

/// Acknowledge: 200 with the alert either way; re-acknowledging writes no new event.
/// `acknowledged_by` is the token that acknowledged (`token:<id>:<name>`); the body's `by` is
/// kept as `acknowledged_on_behalf_of`.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", tag = "alerts",
    params(("id" = String, Path, description = "alert id")), request_body = AckBody,
    responses((status = 200, body = AlertWithTrail), super::ErrorsWrite))]
pub async fn ack(
    State(state): State<AppState>,
    principal: Principal,
    id: PathId<ids::Alert>,
    ApiJson(b): ApiJson<AckBody>,
) -> ApiResult<Json<AlertWithTrail>> {
    let id = id.get();
    triage::validate_ack(b.by.as_deref(), b.note.as_deref())?;
    let actor = principal.acting_for(b.by);
    lifecycle::acknowledge(
        &state.pool,
        id,
        &actor,
        b.note.as_deref(),
        state.clock.now(),
    )
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("no alert {id}")))?;
    Ok(Json(with_trail(&state, id).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketBody {
    #[serde(rename = "ref")]
    pub reference: String,
    pub url: Option<String>,
    /// On whose behalf the token links it; recorded beside the token in the trail.
    #[schema(min_length = 1, max_length = 200)]
    pub by: Option<String>,
}

/// Attach or replace a ticket reference.
#[utoipa::path(put, path = "/api/v1/alerts/{id}/ticket", tag = "alerts",
    params(("id" = String, Path, description = "alert id")), request_body = TicketBody,
    responses((status = 200, body = AlertWithTrail), super::ErrorsWrite))]
pub async fn ticket(
    State(state): State<AppState>,
    principal: Principal,
    id: PathId<ids::Alert>,
    ApiJson(b): ApiJson<TicketBody>,
) -> ApiResult<Json<AlertWithTrail>> {
    let id = id.get();
    triage::validate_ticket(&b.reference, b.url.as_deref(), b.by.as_deref())?;
    let actor = principal.acting_for(b.by);
    lifecycle::link_ticket(
        &state.pool,
        id,
        &b.reference,
        b.url.as_deref(),
        &actor,
        state.clock.now(),
    )
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("no alert {id}")))?;
    Ok(Json(with_trail(&state, id).await?))
}
