//! Small view types every page shares: times ([`When`]), links that keep the rest of the query
//! string ([`Query`]), previous/next paging ([`Pager`]), and the page chrome ([`Chrome`]).
//!
//! Everything in the URL (issue 10, item 5): a page reads its filters, sort and page from the
//! query string and writes every link to another view of itself with [`Query::with`], so a view
//! can be bookmarked and shared and the back button works. Forms that filter use `method=get`.

use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};

use super::session::{CurrentUser, Refusal};
use crate::http::AppState;

/// A point in time for a template: written in UTC (ISO for the `datetime` attribute, readable
/// for the text) and rewritten by `static/app.js` into the zone the viewer picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When(pub DateTime<Utc>);

impl When {
    /// `2026-11-30T17:52:30Z`
    pub fn iso(&self) -> String {
        self.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
    /// `2026-11-30 17:52:30 UTC` (what a page shows without JavaScript).
    pub fn utc(&self) -> String {
        self.0.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    }
}

impl From<DateTime<Utc>> for When {
    fn from(t: DateTime<Utc>) -> Self {
        When(t)
    }
}

/// `3m`, `2h 5m`, `4d 1h`: how long ago `t` was, at `now` (never negative).
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 if s % 3600 >= 60 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ if s % 86400 >= 3600 => format!("{}d {}h", s / 86400, s % 86400 / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The request's path and query pairs, to write links to other views of the same page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub path: String,
    pub pairs: Vec<(String, String)>,
}

impl Query {
    /// Parse `path?query` (as the request had it).
    pub fn parse(path_and_query: &str) -> Query {
        let (path, q) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        Query {
            path: path.to_string(),
            pairs: url_pairs(q),
        }
    }

    /// The first value of `key`, if any and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// This view with `key` set to `value` (or removed, when `value` is empty), and the
    /// paging cursor dropped unless `key` is the cursor itself: a new filter starts at page one.
    pub fn with(&self, key: &str, value: &str) -> String {
        let mut pairs: Vec<(String, String)> = self
            .pairs
            .iter()
            .filter(|(k, v)| k != key && !v.is_empty() && (key == "cursor" || k != "cursor"))
            .cloned()
            .collect();
        if !value.is_empty() {
            pairs.push((key.to_string(), value.to_string()));
        }
        self.href(&pairs)
    }

    /// This view without `key` (and without the cursor).
    pub fn without(&self, key: &str) -> String {
        self.with(key, "")
    }

    /// This exact view (what fragments re-fetch).
    pub fn current(&self) -> String {
        self.href(&self.pairs)
    }

    fn href(&self, pairs: &[(String, String)]) -> String {
        if pairs.is_empty() {
            return self.path.clone();
        }
        let q: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        format!("{}?{}", self.path, q.join("&"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let uri = match OriginalUri::from_request_parts(parts, state).await {
            Ok(OriginalUri(u)) => u,
            Err(never) => match never {},
        };
        Ok(Query::parse(
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        ))
    }
}

/// `application/x-www-form-urlencoded` pairs, `+` as space, bad escapes kept as they are.
fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encode everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// The element an htmx request re-fetches (`HX-Target`), when the request is htmx's
/// (`HX-Request`): a page then renders only that part (the live-fragment convention of
/// `templates/base.html` and `static/app.js`).
pub fn hx_target(headers: &axum::http::HeaderMap) -> Option<&str> {
    if !headers.contains_key("hx-request") {
        return None;
    }
    headers.get("hx-target").and_then(|v| v.to_str().ok())
}

/// Whether a request is htmx re-fetching the element `id`.
pub fn wants_fragment(headers: &axum::http::HeaderMap, id: &str) -> bool {
    hx_target(headers) == Some(id)
}

/// Links for keyset paging (the API's cursors): back to the first page, on to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pager {
    pub first: Option<String>,
    pub next: Option<String>,
    pub shown: usize,
}

impl Pager {
    /// For a page of `shown` rows read from `q`, whose next page starts after `next_cursor`.
    pub fn new(q: &Query, shown: usize, next_cursor: Option<&str>) -> Pager {
        Pager {
            first: q.get("cursor").map(|_| q.without("cursor")),
            next: next_cursor.map(|c| q.with("cursor", c)),
            shown,
        }
    }
}

/// What every signed-in page's layout needs: who is signed in and the fleet's time zone.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub user: CurrentUser,
    /// `fleet.time_zone`, offered as one of the viewer's time zones.
    pub fleet_tz: String,
    /// In `fleetwatch demo`: what its story is doing (the banner on every page).
    pub story: Option<super::demo::Banner>,
}

impl FromRequestParts<AppState> for Chrome {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = CurrentUser::from_request_parts(parts, state).await?;
        Ok(Chrome {
            user,
            fleet_tz: state.config.fleet.time_zone.0.name().to_string(),
            story: state
                .demo
                .as_ref()
                .map(|d| super::demo::Banner::of(&d.now())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn links_keep_the_other_filters_and_restart_paging() {
        let q = Query::parse("/devices?state=offline&group=b%2012&cursor=abc");
        assert_eq!(q.get("group"), Some("b 12"));
        assert_eq!(q.with("state", "late"), "/devices?group=b%2012&state=late");
        assert_eq!(q.without("group"), "/devices?state=offline");
        assert_eq!(
            q.with("cursor", "def"),
            "/devices?state=offline&group=b%2012&cursor=def"
        );
        assert_eq!(
            q.current(),
            "/devices?state=offline&group=b%2012&cursor=abc"
        );
        assert_eq!(Query::parse("/x").with("a", ""), "/x");
        // Hostile text is encoded, never raw in a link.
        let h = Query::parse("/d").with("q", "<script>\"&x=1");
        assert_eq!(h, "/d?q=%3Cscript%3E%22%26x%3D1");
    }

    #[test]
    fn bad_escapes_are_kept_not_panicked_on() {
        let q = Query::parse("/d?q=%zz%4&x=%E2%9C%93&y=%%C3%A9");
        assert_eq!(q.get("q"), Some("%zz%4"));
        assert_eq!(q.get("x"), Some("\u{2713}"));
        assert_eq!(q.get("y"), Some("%\u{e9}"));
        assert_eq!(Query::parse("/d?q=%C3").get("q"), Some("\u{fffd}"));
    }

    #[test]
    fn pager_links() {
        let q = Query::parse("/alerts?status=firing");
        let p = Pager::new(&q, 100, Some("c1"));
        assert_eq!(p.first, None);
        assert_eq!(p.next.as_deref(), Some("/alerts?status=firing&cursor=c1"));
        let q2 = Query::parse("/alerts?status=firing&cursor=c1");
        let p2 = Pager::new(&q2, 3, None);
        assert_eq!(p2.first.as_deref(), Some("/alerts?status=firing"));
        assert_eq!(p2.next, None);
    }

    #[test]
    fn ago_reads_like_an_operator_would_say_it() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = |secs: i64| ago(now - chrono::TimeDelta::seconds(secs), now);
        assert_eq!(s(-5), "0s");
        assert_eq!(s(59), "59s");
        assert_eq!(s(60), "1m");
        assert_eq!(s(3600), "1h");
        assert_eq!(s(3600 + 300), "1h 5m");
        assert_eq!(s(86400 * 4 + 3600), "4d 1h");
        assert_eq!(s(86400 * 2), "2d");
    }

    proptest! {
        #[test]
        fn any_value_round_trips_through_a_link(k in "[a-z]{1,8}", v in "\\PC{0,40}") {
            let href = Query::parse("/p").with(&k, &v);
            let back = Query::parse(&href);
            let expected = if v.is_empty() { None } else { Some(v.as_str()) };
            prop_assert_eq!(back.get(&k), expected);
            prop_assert!(!href.contains(['<', '>', '"', '\'', ' ']));
        }
    }
}
