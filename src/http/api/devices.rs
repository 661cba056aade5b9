//! `GET /devices`, `GET /devices/{id}`, `GET /devices/{id}/events`, `GET /devices/{id}/history`,
//! `GET /devices/{id}/impressions`, `POST /devices/{id}/retire`, `POST /devices/{id}/unretire`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::{clean, parse_filter, Page, Paging};
use crate::db::devices::{self as db, DeviceFilter, DeviceRow};
use crate::db::presence::{self, EventRow};
use crate::db::retirement::{self as device_events, DeviceEventRow};
use crate::domain::device::DeviceState;
use crate::http::auth::Principal;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::AppState;
use crate::retirement;

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
    /// `true`: only devices connected now; `false`: only devices not connected (disconnected,
    /// or never seen connecting).
    pub connected: Option<bool>,
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
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<DeviceRow>>> {
    let paging = Paging::<String>::new(q.limit, q.cursor.as_deref())?;
    let filter = DeviceFilter {
        state: parse_filter("state", q.state.as_deref())?,
        group: clean("group", q.group)?,
        q: clean("q", q.q)?,
        connected: q.connected,
        after: paging.after.clone(),
        limit: paging.fetch(),
    };
    let rows = db::list(&state.pool, &filter).await?;
    Ok(Json(paging.page(rows, |d| d.id.clone())))
}

/// One device.
#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceRow), super::ErrorsOne))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DeviceRow>> {
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
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Json<Page<EventRow>>> {
    let paging = Paging::new(q.limit, q.cursor.as_deref())?;
    if !db::exists(&state.pool, &id).await? {
        return Err(ApiError::NotFound(format!("no device {id:?}")));
    }
    let rows = presence::list_for_device(&state.pool, &id, paging.after, paging.fetch()).await?;
    Ok(Json(paging.page(rows, |e| (e.timestamp, e.id))))
}

/// Retire or unretire, then answer with the device.
async fn set_retired(
    state: &AppState,
    principal: &Principal,
    id: String,
    retire: bool,
) -> ApiResult<Json<DeviceRow>> {
    let (actor, now) = (principal.actor().principal, state.clock.now());
    let change = if retire {
        retirement::retire(&state.pool, &id, &actor, now).await?
    } else {
        retirement::unretire(&state.pool, &id, &actor, now).await?
    };
    if change == retirement::Change::NoSuchDevice {
        return Err(ApiError::NotFound(format!("no device {id:?}")));
    }
    db::get(&state.pool, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))
}

/// Retire a device: it is no longer evaluated and never alerts; its firing alerts resolve (the
/// resolution is notified); its history, presence and telemetry are kept and still recorded.
/// Idempotent: retiring a retired device answers 200 and records nothing.
#[utoipa::path(post, path = "/api/v1/devices/{id}/retire", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceRow), super::ErrorsOne))]
pub async fn retire(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DeviceRow>> {
    set_retired(&state, &principal, id, true).await
}

/// Return a retired device to evaluation with a fresh clock (the time it was retired is no
/// gap). Idempotent: unretiring an active device answers 200 and records nothing.
#[utoipa::path(post, path = "/api/v1/devices/{id}/unretire", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceRow), super::ErrorsOne))]
pub async fn unretire(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DeviceRow>> {
    set_retired(&state, &principal, id, false).await
}

/// A device's lifecycle history (retired, unretired: who and when), oldest first. Presence
/// events are at `/events`.
#[utoipa::path(get, path = "/api/v1/devices/{id}/history", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Page<DeviceEventRow>), super::ErrorsOne))]
pub async fn history(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Page<DeviceEventRow>>> {
    if !db::exists(&state.pool, &id).await? {
        return Err(ApiError::NotFound(format!("no device {id:?}")));
    }
    let items = device_events::history(&state.pool, &id).await?;
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImpressionsQuery {
    /// Buckets starting at or after this instant (RFC 3339); default one season ago (7 days
    /// with the default `anomaly.season`). At most 2000 buckets back.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// A device's impressions per anomaly bucket against its baseline.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ImpressionSeries {
    pub device_id: String,
    /// `anomaly.bucket`, `anomaly.season` and `anomaly.baseline` in seconds.
    pub bucket_seconds: i64,
    pub season_seconds: i64,
    pub baseline_seconds: i64,
    /// A judged bucket under this fraction of its baseline is low (`anomaly.below_fraction`).
    pub below_fraction: f64,
    /// Buckets the device sent something in, oldest first.
    pub items: Vec<crate::detect::anomaly::SeriesPoint>,
}

/// Most buckets one series request may cover.
const MAX_SERIES_BUCKETS: i64 = 2000;

/// A device's impressions per bucket (sum and messages) against its baseline: the median of
/// the same slot in earlier seasons (null while there are too few), the ratio, and whether
/// the bucket is judged and low by the impressions-anomaly rule (quiet hours aside).
#[utoipa::path(get, path = "/api/v1/devices/{id}/impressions", tag = "devices",
    params(("id" = String, Path, description = "device id"), ImpressionsQuery),
    responses((status = 200, body = ImpressionSeries), super::ErrorsOne))]
pub async fn impressions(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ImpressionsQuery>,
) -> ApiResult<Json<ImpressionSeries>> {
    let now = state.clock.now();
    let a = crate::detect::anomaly::AnomalySettings::from_config(&state.config);
    let c = a.cadence;
    let since = q.since.unwrap_or(now - c.season());
    if since > now {
        return Err(ApiError::BadRequest(
            "since: expected an instant in the past".into(),
        ));
    }
    if (now - since).num_milliseconds() / c.bucket().num_milliseconds() > MAX_SERIES_BUCKETS {
        return Err(ApiError::BadRequest(format!(
            "since: at most {MAX_SERIES_BUCKETS} buckets back"
        )));
    }
    let zone = crate::db::anomaly::device_zone(&state.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))?;
    let tz = zone
        .as_deref()
        .and_then(|z| crate::config::parse_tz(z).ok())
        .unwrap_or(state.config.fleet.time_zone.0);
    let items = crate::detect::anomaly::series(&state.pool, &a, tz, &id, since, now).await?;
    Ok(Json(ImpressionSeries {
        device_id: id,
        bucket_seconds: c.bucket().num_seconds(),
        season_seconds: c.season().num_seconds(),
        baseline_seconds: c.baseline().num_seconds(),
        below_fraction: a.rule.below_fraction,
        items,
    }))
}
