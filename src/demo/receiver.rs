//! The demo's webhook receiver (issue 11 item 3): the on-call side. The demo configures one
//! webhook endpoint pointing here (`POST /demo/receiver`, native format, signed with a secret
//! made at start); `GET /demo/webhooks` lists what arrived, newest first, with whether its
//! signature verified.
//!
//! The receiver does what a real one should, and the README's "Verifying a signature" says:
//! [`verify`] checks `Fleetwatch-Signature: t=<unix>,v1=<hex>[,v1=…]` against HMAC-SHA256 of
//! `"<t>.<body>"` with the secret, in constant time, and refuses a timestamp more than
//! [`TOLERANCE`] away from now (a replayed request). A request that fails is listed, marked, and
//! answered `401` (the service retries it, as it would against a real receiver); a verified one
//! `204`. The inbox keeps the last [`KEEP`] requests in memory: the demo's own state, gone at
//! exit.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// How far a signature's timestamp may be from now.
pub const TOLERANCE: TimeDelta = TimeDelta::minutes(5);

/// Requests kept.
pub const KEEP: usize = 500;

/// The most of a body kept for display.
const SHOWN_BYTES: usize = 16 * 1024;

/// Why a request did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Missing,
    Malformed,
    Stale,
    Mismatch,
}

impl Refused {
    pub fn as_str(&self) -> &'static str {
        match self {
            Refused::Missing => "no Fleetwatch-Signature header",
            Refused::Malformed => "malformed Fleetwatch-Signature header",
            Refused::Stale => "timestamp more than 5 minutes from now (a replay?)",
            Refused::Mismatch => "no signature matches the secret",
        }
    }
}

/// Check a `Fleetwatch-Signature` header value against `body` and `secret` at `now`.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &Secret,
    now: DateTime<Utc>,
) -> Result<(), Refused> {
    let header = header.ok_or(Refused::Missing)?;
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| Refused::Malformed)?),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| Refused::Malformed)?),
            // other schemes a later version may add are ignored, as the README asks of receivers
            Some(_) => {}
            None => return Err(Refused::Malformed),
        }
    }
    let t = t.ok_or(Refused::Malformed)?;
    if sigs.is_empty() {
        return Err(Refused::Malformed);
    }
    let sent = DateTime::from_timestamp(t, 0).ok_or(Refused::Malformed)?;
    if (now - sent).abs() > TOLERANCE {
        return Err(Refused::Stale);
    }
    let expected = crate::alerts::formats::signature(std::slice::from_ref(secret), t, body)
        .expect("one secret");
    let expected =
        hex::decode(expected.rsplit_once("v1=").expect("v1 present").1).expect("hex we wrote");
    if sigs
        .iter()
        .any(|s| bool::from(s.as_slice().ct_eq(expected.as_slice())))
    {
        Ok(())
    } else {
        Err(Refused::Mismatch)
    }
}

/// One request as the page shows it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: DateTime<Utc>,
    /// `None`: verified.
    pub refused: Option<Refused>,
    /// `alert.firing`, `alert.resolved`, … (from the body, if it parsed).
    pub event: String,
    pub kind: String,
    pub severity: String,
    pub subject: String,
    pub summary: String,
    pub alert_id: Option<i64>,
    pub delivery_id: String,
    /// The body, pretty-printed when it is JSON, cut at 16 KiB.
    pub body: String,
}

impl Received {
    fn parse(at: DateTime<Utc>, refused: Option<Refused>, body: &[u8]) -> Received {
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        let alert = &json["alert"];
        let mut shown = match &json {
            Value::Null => String::from_utf8_lossy(body).into_owned(),
            j => serde_json::to_string_pretty(j).unwrap_or_default(),
        };
        if shown.len() > SHOWN_BYTES {
            let mut cut = SHOWN_BYTES;
            while !shown.is_char_boundary(cut) {
                cut -= 1;
            }
            shown.truncate(cut);
            shown.push_str("\n…");
        }
        Received {
            at,
            refused,
            event: s(&json["event"]),
            kind: s(&alert["kind"]),
            severity: s(&alert["severity"]),
            subject: s(&alert["subject"]),
            summary: s(&alert["summary"]),
            alert_id: alert["id"].as_i64(),
            delivery_id: match &json["delivery_id"] {
                Value::String(d) => d.clone(),
                Value::Null => String::new(),
                d => d.to_string(),
            },
            body: shown,
        }
    }
}

/// What arrived, newest first, and the secret requests must be signed with.
pub struct Inbox {
    secret: Secret,
    items: Mutex<VecDeque<Received>>,
    /// Counts since start: (verified, refused).
    counts: Mutex<(u64, u64)>,
}

impl Inbox {
    pub fn new(secret: Secret) -> Self {
        Inbox {
            secret,
            items: Mutex::new(VecDeque::new()),
            counts: Mutex::new((0, 0)),
        }
    }

    /// Verify and keep one request; whether it verified.
    pub fn receive(&self, header: Option<&str>, body: &[u8], now: DateTime<Utc>) -> bool {
        let refused = verify(header, body, &self.secret, now).err();
        let ok = refused.is_none();
        {
            let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            if ok {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        items.push_front(Received::parse(now, refused, body));
        items.truncate(KEEP);
        ok
    }

    /// The newest `n` requests.
    pub fn newest(&self, n: usize) -> Vec<Received> {
        let items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        items.iter().take(n).cloned().collect()
    }

    /// (verified, refused) since start.
    pub fn counts(&self) -> (u64, u64) {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `POST /demo/receiver`: `204` when the signature verifies, `401` when not, `404` outside the
/// demo. No session and no CSRF token: the caller is the webhook worker.
pub async fn receive(
    State(state): State<crate::http::AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(demo) = &state.demo else {
        return crate::http::api::not_found().await.into_response();
    };
    let header = headers
        .get("fleetwatch-signature")
        .and_then(|v| v.to_str().ok());
    if demo.inbox.receive(header, &body, state.clock.now()) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn signed(secret: &str, t: DateTime<Utc>, body: &[u8]) -> String {
        crate::alerts::formats::signature(&[Secret::new(secret)], t.timestamp(), body).unwrap()
    }

    #[test]
    fn a_signature_from_the_worker_verifies_and_anything_else_does_not() {
        let s = Secret::new("whsec-demo");
        let body = br#"{"event":"alert.firing"}"#;
        let good = signed("whsec-demo", now(), body);
        assert_eq!(verify(Some(&good), body, &s, now()), Ok(()));
        // during a rotation the header carries several v1; one match is enough
        let rotated = format!("{good},v1={}", "00".repeat(32));
        assert_eq!(verify(Some(&rotated), body, &s, now()), Ok(()));
        let other = signed("another", now(), body);
        assert_eq!(
            verify(Some(&other), body, &s, now()),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            verify(Some(&good), b"{\"event\":\"alert.resolved\"}", &s, now()),
            Err(Refused::Mismatch),
            "a changed body"
        );
        assert_eq!(verify(None, body, &s, now()), Err(Refused::Missing));
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert_eq!(
                verify(Some(bad), body, &s, now()),
                Err(Refused::Malformed),
                "{bad}"
            );
        }
        let old = now() - TimeDelta::minutes(6);
        assert_eq!(
            verify(Some(&signed("whsec-demo", old, body)), body, &s, now()),
            Err(Refused::Stale)
        );
    }

    #[test]
    fn the_inbox_keeps_the_newest_and_counts_both() {
        let inbox = Inbox::new(Secret::new("k"));
        let body = br#"{"event":"alert.firing","delivery_id":"d-1","alert":{"id":7,"kind":"heartbeat_gap","severity":"error","subject":"screen-1","summary":"silent"}}"#;
        assert!(inbox.receive(Some(&signed("k", now(), body)), body, now()));
        assert!(!inbox.receive(Some("t=1,v1=00"), b"not json <b>", now()));
        for _ in 0..KEEP {
            inbox.receive(None, b"{}", now());
        }
        assert_eq!(inbox.counts(), (1, KEEP as u64 + 1));
        assert_eq!(inbox.newest(usize::MAX).len(), KEEP);
        let inbox = Inbox::new(Secret::new("k"));
        inbox.receive(Some(&signed("k", now(), body)), body, now());
        let r = &inbox.newest(1)[0];
        assert_eq!(
            (
                r.event.as_str(),
                r.kind.as_str(),
                r.subject.as_str(),
                r.alert_id
            ),
            ("alert.firing", "heartbeat_gap", "screen-1", Some(7))
        );
        assert_eq!(r.delivery_id, "d-1");
        assert!(r.refused.is_none());
    }
}
