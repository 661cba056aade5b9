//! `GET /alerts`, `GET /alerts/{id}` (with its trail), `POST /alerts/{id}/ack`,
//! `PUT /alerts/{id}/ticket`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{
    body_text, clean, decode_time_cursor, encode_time_cursor, json_body, limit, numeric_id,
    parse_filter, query, Page,
};
use crate::alerts::lifecycle::{self, AlertFilter, AlertRow, EventRow};
use crate::domain::actor::Actor;
use crate::domain::alert::{Kind, Status};
use crate::http::auth::Principal;
use crate::http::error::{ApiError, ApiResult};
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
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Page<AlertRow>>> {
    let q = query(q)?;
    let limit = limit(q.limit)?;
    let filter = AlertFilter {
        status: parse_filter("status", q.status.as_deref())?,
        kind: parse_filter("kind", q.kind.as_deref())?,
        device: clean("device", q.device)?,
        group: clean("group", q.group)?,
        before: q.cursor.as_deref().map(decode_time_cursor).transpose()?,
        limit: limit + 1,
    };
    let mut items = lifecycle::list(&state.pool, &filter).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|a| encode_time_cursor(a.opened_at, a.id))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// An alert with its audit trail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertWithTrail {
    #[serde(flatten)]
    pub alert: AlertRow,
    pub events: Vec<EventRow>,
}

async fn with_trail(state: &AppState, id: i64) -> ApiResult<AlertWithTrail> {
    let alert = lifecycle::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no alert {id}")))?;
    let events = lifecycle::events(&state.pool, id).await?;
    Ok(AlertWithTrail { alert, events })
}

/// One alert with its trail.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts",
    params(("id" = String, Path, description = "alert id")),
    responses((status = 200, body = AlertWithTrail), super::ErrorsOne))]
pub async fn get(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<AlertWithTrail>> {
    Ok(Json(with_trail(&state, numeric_id(id, "alert")?).await?))
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
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<AckBody>, JsonRejection>,
) -> ApiResult<Json<AlertWithTrail>> {
    let id = numeric_id(id, "alert")?;
    let b = json_body(b)?;
    if let Some(by) = &b.by {
        body_text("by", by, 200)?;
    }
    if let Some(n) = &b.note {
        body_text("note", n, 4000)?;
    }
    let actor = Actor {
        principal: principal.actor(),
        on_behalf_of: b.by,
    };
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
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<TicketBody>, JsonRejection>,
) -> ApiResult<Json<AlertWithTrail>> {
    let id = numeric_id(id, "alert")?;
    let b = json_body(b)?;
    body_text("ref", &b.reference, 200)?;
    if let Some(u) = &b.url {
        body_text("url", u, 2000)?;
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            return Err(ApiError::Unprocessable(
                "url: expected an http(s) URL".into(),
            ));
        }
    }
    if let Some(by) = &b.by {
        body_text("by", by, 200)?;
    }
    let actor = Actor {
        principal: principal.actor(),
        on_behalf_of: b.by,
    };
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
