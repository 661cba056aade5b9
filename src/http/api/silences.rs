//! `GET /silences`, `POST /silences` (create a maintenance window) and `DELETE /silences/{id}`
//! (end it now; it is kept). Semantics: [`crate::alerts::silences`].

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;

use super::{
    body_text, decode_id_cursor, encode_id_cursor, json_body, limit, numeric_id, query, Page,
};
use crate::alerts::silences::{self, Ended, NewSilence, SilenceRow};
use crate::domain::actor::Actor;
use crate::domain::alert::Kind;
use crate::http::auth::Principal;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::AppState;

/// The longest silence: a forgotten maintenance window must not mute a fleet for good.
pub const MAX_DURATION: TimeDelta = TimeDelta::days(90);
/// How far ahead a silence may start.
pub const MAX_LEAD: TimeDelta = TimeDelta::days(365);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `true`: only silences muting now; `false`: only those that do not (not started yet,
    /// expired or deleted).
    pub active: Option<bool>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Silences, newest first.
#[utoipa::path(get, path = "/api/v1/silences", tag = "silences", params(ListQuery),
    responses((status = 200, body = Page<SilenceRow>), super::ErrorsList))]
pub async fn list(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Page<SilenceRow>>> {
    let q = query(q)?;
    let limit = limit(q.limit)?;
    let before = q.cursor.as_deref().map(decode_id_cursor).transpose()?;
    let now = state.clock.now();
    let mut items = silences::list(&state.pool, q.active, now, before, limit + 1).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|s| encode_id_cursor(s.id))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// A new silence. At least one of `device_id`, `group_id`, `kind`; an alert is silenced when
/// every one that is set equals the alert's.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[schema(min_length = 1, max_length = 200)]
    pub device_id: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    pub group_id: Option<String>,
    /// An alert kind, e.g. `heartbeat_gap`.
    #[schema(
        pattern = "^(heartbeat_gap|flapping|client_id_conflict|throttled|auth_failure|address_drift|group_outage|fleet_outage|ingest_down|metric_threshold)$"
    )]
    pub kind: Option<String>,
    /// Defaults to now.
    pub starts_at: Option<DateTime<Utc>>,
    /// After `starts_at` and in the future; at most 90 days after `starts_at`.
    pub ends_at: DateTime<Utc>,
    /// Why (e.g. the maintenance ticket).
    #[schema(min_length = 1, max_length = 4000)]
    pub comment: String,
    /// On whose behalf the token creates it; kept as `on_behalf_of`. The silence's
    /// `created_by` is always the authenticated token.
    #[schema(min_length = 1, max_length = 200)]
    pub created_by: Option<String>,
}

/// Create a silence: `201` with it.
#[utoipa::path(post, path = "/api/v1/silences", tag = "silences", request_body = CreateBody,
    responses((status = 201, body = SilenceRow), super::ErrorsWrite))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    b: Result<Json<CreateBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<SilenceRow>)> {
    let b = json_body(b)?;
    let now = state.clock.now();
    if b.device_id.is_none() && b.group_id.is_none() && b.kind.is_none() {
        return Err(ApiError::Unprocessable(
            "a silence needs at least one of device_id, group_id, kind".into(),
        ));
    }
    if let Some(d) = &b.device_id {
        body_text("device_id", d, 200)?;
    }
    if let Some(g) = &b.group_id {
        body_text("group_id", g, 200)?;
    }
    let kind = match &b.kind {
        Some(k) => {
            body_text("kind", k, 200)?;
            Some(
                k.parse::<Kind>()
                    .map_err(|e| ApiError::Unprocessable(format!("kind: {e}")))?,
            )
        }
        None => None,
    };
    body_text("comment", &b.comment, 4000)?;
    let starts_at = b.starts_at.unwrap_or(now);
    if starts_at - now > MAX_LEAD {
        return Err(ApiError::Unprocessable(
            "starts_at: at most 365 days ahead".into(),
        ));
    }
    if b.ends_at <= starts_at {
        return Err(ApiError::Unprocessable(
            "ends_at: must be after starts_at".into(),
        ));
    }
    if b.ends_at <= now {
        return Err(ApiError::Unprocessable(
            "ends_at: must be in the future".into(),
        ));
    }
    if b.ends_at - starts_at > MAX_DURATION {
        return Err(ApiError::Unprocessable(
            "ends_at: a silence lasts at most 90 days".into(),
        ));
    }
    if let Some(name) = &b.created_by {
        body_text("created_by", name, 200)?;
    }
    let created_by = Actor {
        principal: principal.actor(),
        on_behalf_of: b.created_by,
    };
    let new = NewSilence {
        device_id: b.device_id,
        group_id: b.group_id,
        kind,
        starts_at,
        ends_at: b.ends_at,
        created_by,
        comment: b.comment,
    };
    let row = silences::create(&state.pool, &new, now).await?;
    tracing::info!(id = row.id, by = %row.created_by, "silence created");
    Ok((StatusCode::CREATED, Json(row)))
}

/// End a silence now. It is kept (with `deleted_at`), so the history of who muted what stays.
/// `409` if it already ended.
#[utoipa::path(delete, path = "/api/v1/silences/{id}", tag = "silences",
    params(("id" = String, Path, description = "silence id")),
    responses((status = 200, body = SilenceRow),
              (status = 409, description = "already ended", body = Problem,
               content_type = "application/problem+json"),
              super::ErrorsOne))]
pub async fn end(
    State(state): State<AppState>,
    principal: Principal,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<SilenceRow>> {
    let id = numeric_id(id, "silence")?;
    let by = principal.actor();
    match silences::end(&state.pool, id, &by, state.clock.now()).await? {
        Ended::Ended(s) => {
            tracing::info!(id, %by, "silence ended");
            Ok(Json(s))
        }
        Ended::AlreadyOver(_) => Err(ApiError::Conflict(format!("silence {id} already ended"))),
        Ended::NotFound => Err(ApiError::NotFound(format!("no silence {id}"))),
    }
}
