//! `GET /silences`, `POST /silences` (create a maintenance window) and `DELETE /silences/{id}`
//! (end it now; it is kept). Semantics: [`crate::alerts::silences`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{Page, Paging};
use crate::db::silences::{self, Ended, NewSilence, SilenceRow};
use crate::domain::silence;
use crate::http::auth::Principal;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{ids, ApiJson, ApiQuery, PathId};
use crate::http::AppState;

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
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<SilenceRow>>> {
    let paging = Paging::new(q.limit, q.cursor.as_deref())?;
    let now = state.clock.now();
    let rows = silences::list(&state.pool, q.active, now, paging.after, paging.fetch()).await?;
    Ok(Json(paging.page(rows, |s| s.id)))
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
        pattern = "^(heartbeat_gap|flapping|client_id_conflict|throttled|auth_failure|address_drift|group_outage|fleet_outage|ingest_down|metric_threshold|aws_poll_failing|network_outage|impressions_anomaly)$"
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
    ApiJson(b): ApiJson<CreateBody>,
) -> ApiResult<(StatusCode, Json<SilenceRow>)> {
    let now = state.clock.now();
    let valid = silence::validate(
        &silence::Draft {
            device_id: b.device_id.as_deref(),
            group_id: b.group_id.as_deref(),
            kind: b.kind.as_deref(),
            starts_at: b.starts_at,
            ends_at: b.ends_at,
            comment: &b.comment,
            on_behalf_of: b.created_by.as_deref(),
        },
        now,
    )?;
    let new = NewSilence {
        device_id: b.device_id,
        group_id: b.group_id,
        kind: valid.kind,
        starts_at: valid.starts_at,
        ends_at: valid.ends_at,
        created_by: principal.acting_for(b.created_by),
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
    id: PathId<ids::Silence>,
) -> ApiResult<Json<SilenceRow>> {
    let id = id.get();
    let by = principal.actor();
    match silences::end(&state.pool, id, &by.principal, state.clock.now()).await? {
        Ended::Ended(s) => {
            tracing::info!(id, %by, "silence ended");
            Ok(Json(s))
        }
        Ended::AlreadyOver(_) => Err(ApiError::Conflict(format!("silence {id} already ended"))),
        Ended::NotFound => Err(ApiError::NotFound(format!("no silence {id}"))),
    }
}
