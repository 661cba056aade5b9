//! `GET /devices`, `GET /devices/{id}`, `GET /devices/{id}/events`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;

use super::{
    clean, decode_cursor, decode_time_cursor, encode_cursor, encode_time_cursor, limit,
    parse_filter, path_param, query, Page,
};
use crate::db::devices::{self as db, DeviceFilter, DeviceRow};
use crate::db::presence::{self, EventRow};
use crate::domain::device::DeviceState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::AppState;

/// The values of `?state=`.
pub const STATES: [&str; 7] = DeviceState::NAMES;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only devices in this health state.
    #[param(value_type = Option<DeviceState>)]
    pub state: Option<String>,
    /// Only devices of this group.
    pub group: Option<String>,
    /// Case-insensitive substring of the device id.
    pub q: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List devices, by id.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(ListQuery),
    responses((status = 200, body = Page<DeviceRow>), super::ErrorsList))]
pub async fn list(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Page<DeviceRow>>> {
    let q = query(q)?;
    let limit = limit(q.limit)?;
    let filter = DeviceFilter {
        state: parse_filter("state", q.state.as_deref())?,
        group: clean("group", q.group)?,
        q: clean("q", q.q)?,
        after: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: limit + 1,
    };
    let mut items = db::list(&state.pool, &filter).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|d| encode_cursor(&d.id))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// One device.
#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceRow), super::ErrorsOne))]
pub async fn get(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<DeviceRow>> {
    let id = path_param(id)?;
    db::get(&state.pool, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A device's presence events, newest first.
#[utoipa::path(get, path = "/api/v1/devices/{id}/events", tag = "devices",
    params(("id" = String, Path, description = "device id"), EventsQuery),
    responses((status = 200, body = Page<EventRow>), super::ErrorsOne))]

pub async fn events(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Json<Page<EventRow>>> {
    let id = path_param(id)?;
    let q = query(q)?;
    let limit = limit(q.limit)?;
    let before = q.cursor.as_deref().map(decode_time_cursor).transpose()?;
    if !db::exists(&state.pool, &id).await? {
        return Err(ApiError::NotFound(format!("no device {id:?}")));
    }
    let mut items = presence::list_for_device(&state.pool, &id, before, limit + 1).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|e| encode_time_cursor(e.timestamp, e.id))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}
