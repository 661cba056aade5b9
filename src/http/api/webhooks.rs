//! `GET /webhooks/deliveries` (the outbox, dead letters included) and
//! `POST /webhooks/deliveries/{id}/redrive` (send a dead notification again, same delivery id).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::{parse_filter, Page, Paging};
use crate::alerts::outbox::NotificationStatus;
use crate::db::notifications::{self, DeliveryRow};
use crate::http::auth::Principal;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ids, ApiQuery, PathId};
use crate::http::AppState;

/// The values of `?status=`.
pub const STATUSES: [&str; 4] = NotificationStatus::NAMES;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `pending`, `delivered`, `dead` or `superseded`.
    #[param(value_type = Option<NotificationStatus>)]
    pub status: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Webhook notifications, newest first, with their delivery state.
#[utoipa::path(get, path = "/api/v1/webhooks/deliveries", tag = "webhooks", params(ListQuery),
    responses((status = 200, body = Page<DeliveryRow>), super::ErrorsList))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<DeliveryRow>>> {
    let status = parse_filter("status", q.status.as_deref())?;
    let paging = Paging::new(q.limit, q.cursor.as_deref())?;
    let rows = notifications::list(&state.pool, status, paging.after, paging.fetch()).await?;
    Ok(Json(paging.page(rows, |d| d.id)))
}

/// Send a dead notification again (same delivery id, fresh retry schedule), recording who
/// (`redriven_by`, `redriven_at`). `409` if it is not dead.
#[utoipa::path(post, path = "/api/v1/webhooks/deliveries/{id}/redrive", tag = "webhooks",
    params(("id" = String, Path, description = "notification id")),
    responses((status = 200, body = DeliveryRow),
              (status = 409, description = "not dead", body = crate::http::error::Problem,
               content_type = "application/problem+json"),
              super::ErrorsOne))]
pub async fn redrive(
    State(state): State<AppState>,
    principal: Principal,
    id: PathId<ids::Delivery>,
) -> ApiResult<Json<DeliveryRow>> {
    let id = id.get();
    let by = principal.actor().to_string();
    if !notifications::redrive(&state.pool, id, state.clock.now(), &by).await? {
        let exists = notifications::get(&state.pool, id).await?.is_some();
        return Err(if exists {
            ApiError::Conflict(format!("delivery {id} is not dead"))
        } else {
            ApiError::NotFound(format!("no delivery {id}"))
        });
    }
    notifications::get(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no delivery {id}")))
}
