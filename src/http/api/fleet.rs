//! `GET /fleet/summary`: devices per health state and firing alerts per kind, at a glance.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::devices::STATES;
use crate::db;
use crate::domain::alert::Kind;
use crate::http::error::ApiResult;
use crate::http::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub devices: i64,
    /// Every state, zero included, so dashboards see zeros rather than gaps.
    pub devices_by_state: BTreeMap<String, i64>,
    pub firing_alerts: i64,
    pub firing_alerts_by_kind: BTreeMap<String, i64>,
    /// Firing alerts covered by a group or fleet outage (notified as one).
    pub covered_alerts: i64,
    pub unacknowledged_alerts: i64,
}

/// Devices per state and firing alerts per kind.
#[utoipa::path(get, path = "/api/v1/fleet/summary", tag = "fleet",
    responses((status = 200, body = Summary), super::ErrorsList))]
pub async fn summary(State(state): State<AppState>) -> ApiResult<Json<Summary>> {
    let by_state = db::devices::count_by_state(&state.pool).await?;
    let by_kind = db::alerts::firing_by_kind(&state.pool).await?;
    let mut devices_by_state: BTreeMap<String, i64> =
        STATES.iter().map(|s| (s.to_string(), 0)).collect();
    for (s, n) in by_state {
        *devices_by_state.entry(s).or_default() += n;
    }
    let mut firing_alerts_by_kind: BTreeMap<String, i64> = Kind::ALL
        .iter()
        .map(|k| (k.as_str().to_string(), 0))
        .collect();
    let (mut covered, mut unacked) = (0, 0);
    for (k, n, c, u) in by_kind {
        firing_alerts_by_kind.insert(k, n);
        covered += c;
        unacked += u;
    }
    Ok(Json(Summary {
        devices: devices_by_state.values().sum(),
        firing_alerts: firing_alerts_by_kind.values().sum(),
        devices_by_state,
        firing_alerts_by_kind,
        covered_alerts: covered,
        unacknowledged_alerts: unacked,
    }))
}
