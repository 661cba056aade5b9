//! `GET /fleet/summary` and `GET /fleet/groups`: the fleet at a glance, read from the counts
//! tables (`db::fleet_counts`) so both cost the same at 100 devices and at 100,000.
//! [`load_summary`] and [`load_groups`] are what the dashboard's overview calls too.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::devices::STATES;
use super::{Cursor, Page, Paging};
use crate::db::fleet_counts;
use crate::domain::alert::Kind;
use crate::domain::device::DeviceState;
use crate::domain::fleet::worst_state;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiQuery;
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

/// The summary, from the counts tables.
pub async fn load_summary(pool: &PgPool) -> sqlx::Result<Summary> {
    let by_state = fleet_counts::devices_by_state(pool).await?;
    let firing = fleet_counts::firing(pool).await?;
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
    for f in firing {
        *firing_alerts_by_kind.entry(f.kind).or_default() += f.n;
        if f.covered {
            covered += f.n;
        }
        if !f.acknowledged {
            unacked += f.n;
        }
    }
    Ok(Summary {
        devices: devices_by_state.values().sum(),
        firing_alerts: firing_alerts_by_kind.values().sum(),
        devices_by_state,
        firing_alerts_by_kind,
        covered_alerts: covered,
        unacknowledged_alerts: unacked,
    })
}

/// Devices per state and firing alerts per kind.
#[utoipa::path(get, path = "/api/v1/fleet/summary", tag = "fleet",
    responses((status = 200, body = Summary), super::ErrorsList))]
pub async fn summary(State(state): State<AppState>) -> ApiResult<Json<Summary>> {
    Ok(Json(load_summary(&state.pool).await?))
}

/// One group's tile: its devices per state and its worst state.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GroupCounts {
    /// The group id; null for the devices that belong to no group.
    pub group: Option<String>,
    /// The group's name; null for the devices without a group.
    pub name: Option<String>,
    /// Devices in the group, retired ones included.
    pub devices: i64,
    /// Every state, zero included.
    pub devices_by_state: BTreeMap<String, i64>,
    /// The worst state with devices (`offline` > `silent` > `late` > `never_seen` > `quiet` >
    /// `healthy`; retired devices ignored); null when the group has no unretired device.
    #[schema(value_type = Option<DeviceState>)]
    pub worst_state: Option<DeviceState>,
}

/// The sort key of a groups page: the ungrouped devices first, then group ids.
#[derive(Debug, Clone)]
pub struct GroupKey(pub Option<String>);

impl Cursor for GroupKey {
    fn encode(&self) -> String {
        match &self.0 {
            None => "-".to_string().encode(),
            Some(id) => format!("g{id}").encode(),
        }
    }

    fn decode(cursor: &str) -> Result<Self, ApiError> {
        let raw = String::decode(cursor)?;
        match raw.as_str() {
            "-" => Ok(GroupKey(None)),
            s if s.starts_with('g') => Ok(GroupKey(Some(s[1..].to_string()))),
            _ => Err(ApiError::BadRequest(
                "cursor: not a cursor of this list".into(),
            )),
        }
    }
}

/// A page of group tiles, from the counts tables.
pub async fn load_groups(
    pool: &PgPool,
    paging: &Paging<GroupKey>,
) -> sqlx::Result<Page<GroupCounts>> {
    let after = paging.after.as_ref().map(|k| k.0.clone());
    let rows = fleet_counts::groups_page(pool, &after, paging.fetch()).await?;
    let mut tiles: Vec<GroupCounts> = Vec::new();
    for r in rows {
        let same = tiles.last().is_some_and(|t| t.group == r.group_id);
        if !same {
            tiles.push(GroupCounts {
                group: r.group_id.clone(),
                name: r.name.clone(),
                devices: 0,
                devices_by_state: STATES.iter().map(|s| (s.to_string(), 0)).collect(),
                worst_state: None,
            });
        }
        let tile = tiles.last_mut().expect("pushed above");
        if let Some(s) = r.state {
            *tile.devices_by_state.entry(s).or_default() += r.n;
        }
    }
    for t in &mut tiles {
        t.devices = t.devices_by_state.values().sum();
        t.worst_state = worst_state(
            t.devices_by_state
                .iter()
                .filter_map(|(s, n)| s.parse::<DeviceState>().ok().map(|s| (s, *n))),
        );
    }
    Ok(paging.page(tiles, |t| GroupKey(t.group.clone())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupsQuery {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Devices per state and the worst state of each group: the devices without a group first
/// (when there are any), then every group by id, empty groups included.
#[utoipa::path(get, path = "/api/v1/fleet/groups", tag = "fleet", params(GroupsQuery),
    responses((status = 200, body = Page<GroupCounts>), super::ErrorsList))]
pub async fn groups(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<GroupsQuery>,
) -> ApiResult<Json<Page<GroupCounts>>> {
    let paging = Paging::<GroupKey>::new(q.limit, q.cursor.as_deref())?;
    Ok(Json(load_groups(&state.pool, &paging).await?))
}
