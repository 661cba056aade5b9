//! The demo's pages (`fleetwatch demo`, issue 11): the story banner on every page
//! ([`Banner`], re-fetched every two seconds from `GET /demo/story`) and the webhook receiver's
//! inbox (`GET /demo/webhooks`, `crate::demo::receiver`). Outside the demo both answer 404.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::session::CurrentUser;
use super::view::{Chrome, When};
use super::Page;
use crate::demo::receiver::Received;
use crate::demo::story::Now;
use crate::http::error::ApiError;
use crate::http::AppState;

/// What the banner says.
#[derive(Debug, Clone, PartialEq)]
pub struct Banner {
    pub text: String,
    /// 0 before the first round.
    pub round: u64,
    /// `1:05`
    pub elapsed: String,
    /// `4:00`
    pub length: String,
}

fn clock(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    format!("{}:{:02}", s / 60, s % 60)
}

impl Banner {
    pub fn of(n: &Now) -> Banner {
        Banner {
            text: n.text.clone(),
            round: n.round,
            elapsed: clock(n.elapsed),
            length: clock(n.length),
        }
    }
}

/// `GET /demo/story`: the banner alone (htmx swaps it in place).
#[derive(Template, WebTemplate)]
#[template(path = "demo_banner.html")]
pub struct BannerFragment {
    pub b: Banner,
}

pub async fn story(_user: CurrentUser, State(state): State<AppState>) -> Response {
    match &state.demo {
        Some(d) => BannerFragment {
            b: Banner::of(&d.now()),
        }
        .into_response(),
        None => ApiError::NotFound("not running the demo".into()).into_response(),
    }
}

/// One row of the receiver's list.
pub struct Row {
    pub r: Received,
    pub at: When,
}

/// `GET /demo/webhooks`.
#[derive(Template, WebTemplate)]
#[template(path = "demo_webhooks.html")]
pub struct ReceiverPage {
    pub chrome: Chrome,
    pub verified: u64,
    pub refused: u64,
    pub rows: Vec<Row>,
}

impl Page for ReceiverPage {
    fn title(&self) -> &str {
        "Webhook receiver"
    }
    fn chrome(&self) -> Option<&Chrome> {
        Some(&self.chrome)
    }
}

/// Rows the page shows (the inbox keeps more).
const SHOWN: usize = 200;

pub async fn receiver_page(chrome: Chrome, State(state): State<AppState>) -> Response {
    let Some(d) = &state.demo else {
        return ApiError::NotFound("not running the demo".into()).into_response();
    };
    let (verified, refused) = d.inbox.counts();
    ReceiverPage {
        chrome,
        verified,
        refused,
        rows: d
            .inbox
            .newest(SHOWN)
            .into_iter()
            .map(|r| Row { at: When(r.at), r })
            .collect(),
    }
    .into_response()
}
