//! `GET /`: for now a minimal, honest overview: who is signed in, and the devices per health
//! state from the same read as `GET /api/v1/fleet/summary` (`db::fleet_counts::devices_by_state`:
//! counts kept by triggers, cheap at any fleet size), each a plain number. The real overview (issue 10 item 1) replaces this page.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;

use super::view::Chrome;
use super::Page;
use crate::db;
use crate::domain::device::DeviceState;
use crate::http::error::ApiError;
use crate::http::AppState;

/// The page.
#[derive(Template, WebTemplate)]
#[template(path = "overview.html")]
pub struct OverviewPage {
    pub chrome: Chrome,
    /// Every state, zero included, in the API's order.
    pub counts: Vec<(&'static str, i64)>,
    pub total: i64,
}

impl Page for OverviewPage {
    fn title(&self) -> &str {
        "Fleet"
    }
    fn chrome(&self) -> Option<&Chrome> {
        Some(&self.chrome)
    }
    fn nav(&self) -> &'static str {
        "/"
    }
}

/// `GET /`
pub async fn page(chrome: Chrome, State(state): State<AppState>) -> Result<OverviewPage, ApiError> {
    let by_state = db::fleet_counts::devices_by_state(&state.pool).await?;
    let counts: Vec<(&'static str, i64)> = DeviceState::NAMES
        .iter()
        .map(|s| {
            let n = by_state
                .iter()
                .filter(|(k, _)| k == s)
                .map(|(_, n)| n)
                .sum();
            (*s, n)
        })
        .collect();
    Ok(OverviewPage {
        total: counts.iter().map(|(_, n)| n).sum(),
        chrome,
        counts,
    })
}
