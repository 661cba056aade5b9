//! AWS IoT lifecycle events and the presence ordering rule of DESIGN.md §2a.
//!
//! AWS documents that lifecycle events can arrive out of order and duplicated, and that
//! `versionNumber` is shared by a connection's connect and disconnect and resets after about an
//! hour offline. The stored connectivity is the *newest* event by [`Ordering::is_newer`]:
//!
//! 1. timestamps more than 30 minutes apart: the later timestamp wins (covers the reset);
//! 2. otherwise the higher `versionNumber` wins;
//! 3. at equal versions a disconnect beats the connect it ends.
//!
//! Every timestamp in this rule is an event's *ordering timestamp* ([`order_timestamp`]): its
//! AWS timestamp, but at most its arrival time plus a small skew (`presence.max_clock_skew`).
//! AWS stamps lifecycle events itself, so one far ahead of our clock is forged or broken; taken
//! at face value it would beat every genuine event for up to a day under rule 1.
//!
//! §2a is silent on complete ties (equal versions, same event type, e.g. two sessions of a
//! duplicated client ID); we break them by the later timestamp, then the larger session
//! identifier, so that the result does not depend on arrival order. The SQL upsert in
//! `db::presence` implements exactly this function; a property test holds them together.
//!
//! Known limit of the rule: it is not transitive when versions *decrease* within 30-minute
//! steps (see `non_transitive_case` below). AWS never produces such a sequence (versions only
//! go down after an hour offline), but a replayed or forged feed could.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;

use super::DropReason;

/// Two events whose timestamps differ by more than this are ordered by time alone.
pub const VERSION_WINDOW: TimeDelta = TimeDelta::minutes(30);

/// Earliest timestamp we accept anywhere: before this, a clock was not set.
pub fn earliest_plausible() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z")
        .expect("constant parses")
        .to_utc()
}

/// How far ahead of our clock a timestamp may be before we call it absurd.
pub const MAX_FUTURE: TimeDelta = TimeDelta::days(1);

/// Whether a timestamp from outside is usable at `now`.
pub fn plausible(ts: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    ts >= earliest_plausible() && ts <= now + MAX_FUTURE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Connected,
    Disconnected,
    ConnectFailed,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Connected => "connected",
            EventType::Disconnected => "disconnected",
            EventType::ConnectFailed => "connect_failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "connected" => Some(EventType::Connected),
            "disconnected" => Some(EventType::Disconnected),
            "connect_failed" => Some(EventType::ConnectFailed),
            _ => None,
        }
    }
}

/// One lifecycle event, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceEvent {
    pub client_id: String,
    pub thing_name: Option<String>,
    pub timestamp: DateTime<Utc>,
    pub event_type: EventType,
    pub session_identifier: Option<String>,
    pub principal_identifier: Option<String>,
    pub ip_address: Option<String>,
    pub version_number: Option<i64>,
    pub client_initiated_disconnect: Option<bool>,
    pub disconnect_reason: Option<String>,
    pub connect_failure_reason: Option<String>,
}

impl PresenceEvent {
    /// The session part of the natural key. AWS may omit `sessionIdentifier` on
    /// `connect_failed`; then the timestamp stands in for it, so that repeated failures of one
    /// client are distinct events while a redelivered one is still the same.
    pub fn session_key(&self) -> String {
        match &self.session_identifier {
            Some(s) => s.clone(),
            None => format!("ts:{}", self.timestamp.timestamp_millis()),
        }
    }

    /// The version part of the natural key (`-1` when absent, only possible on connect_failed).
    pub fn version_key(&self) -> i64 {
        self.version_number.unwrap_or(-1)
    }

    /// The connectivity this event asserts, if it is a connect or disconnect, as it counts when
    /// it arrived at `received_at`.
    pub fn ordering(&self, received_at: DateTime<Utc>, max_skew: TimeDelta) -> Option<Ordering> {
        let connected = match self.event_type {
            EventType::Connected => true,
            EventType::Disconnected => false,
            EventType::ConnectFailed => return None,
        };
        Some(Ordering {
            timestamp: order_timestamp(self.timestamp, received_at, max_skew),
            version: self.version_key(),
            connected,
            session: self.session_key(),
        })
    }
}

/// The timestamp an event counts with for ordering: AWS's, but no later than its arrival on our
/// clock plus `max_skew`. Mirrored by `presence_order_ts()` in SQL; a test holds them together.
pub fn order_timestamp(
    timestamp: DateTime<Utc>,
    received_at: DateTime<Utc>,
    max_skew: TimeDelta,
) -> DateTime<Utc> {
    timestamp.min(received_at + max_skew)
}

/// The fields of an event that decide which is newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ordering {
    /// The ordering timestamp ([`order_timestamp`]), not necessarily AWS's.
    pub timestamp: DateTime<Utc>,
    pub version: i64,
    pub connected: bool,
    pub session: String,
}

impl Ordering {
    /// Whether `self` replaces `current` as the device's connectivity (DESIGN.md §2a).
    pub fn is_newer(&self, current: &Ordering) -> bool {
        let gap = self.timestamp - current.timestamp;
        if gap.abs() > VERSION_WINDOW {
            return gap > TimeDelta::zero();
        }
        if self.version != current.version {
            return self.version > current.version;
        }
        if self.connected != current.connected {
            return !self.connected;
        }
        if self.timestamp != current.timestamp {
            return self.timestamp > current.timestamp;
        }
        self.session > current.session
    }
}

/// Fold events into the connectivity they leave, in arrival order (what the database does).
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Ordering>) -> Option<Ordering> {
    let mut cur: Option<Ordering> = None;
    for e in events {
        if cur.as_ref().is_none_or(|c| e.is_newer(c)) {
            cur = Some(e.clone());
        }
    }
    cur
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    client_id: Option<serde_json::Value>,
    thing_name: Option<serde_json::Value>,
    timestamp: Option<serde_json::Value>,
    event_type: Option<serde_json::Value>,
    session_identifier: Option<serde_json::Value>,
    principal_identifier: Option<serde_json::Value>,
    ip_address: Option<serde_json::Value>,
    version_number: Option<serde_json::Value>,
    client_initiated_disconnect: Option<serde_json::Value>,
    disconnect_reason: Option<serde_json::Value>,
    connect_failure_reason: Option<serde_json::Value>,
}

/// Longest free-text field we keep (reasons, principals, addresses).
const MAX_FIELD: usize = 1024;

fn opt_str(v: Option<serde_json::Value>) -> Result<Option<String>, DropReason> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => {
            if s.len() > MAX_FIELD || s.contains('\0') {
                Err(DropReason::MissingField)
            } else {
                Ok(Some(s))
            }
        }
        Some(_) => Err(DropReason::MissingField),
    }
}

/// Parse a lifecycle event payload, checked against `now`.
pub fn parse(payload: &[u8], now: DateTime<Utc>) -> Result<PresenceEvent, DropReason> {
    let text = std::str::from_utf8(payload).map_err(|_| DropReason::NotUtf8)?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| DropReason::MalformedJson)?;
    if !value.is_object() {
        return Err(DropReason::MalformedJson);
    }
    let w: Wire = serde_json::from_value(value).map_err(|_| DropReason::MalformedJson)?;

    let client_id = opt_str(w.client_id)?.ok_or(DropReason::MissingField)?;
    let event_type = match opt_str(w.event_type)? {
        Some(s) => EventType::parse(&s).ok_or(DropReason::UnknownEventType)?,
        None => return Err(DropReason::MissingField),
    };
    let ms = w
        .timestamp
        .as_ref()
        .and_then(serde_json::Value::as_i64)
        .ok_or(DropReason::MissingField)?;
    let timestamp = DateTime::from_timestamp_millis(ms).ok_or(DropReason::BadTimestamp)?;
    if !plausible(timestamp, now) {
        return Err(DropReason::BadTimestamp);
    }
    let version_number = match w.version_number {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or(DropReason::MissingField)?),
    };
    let client_initiated_disconnect = match w.client_initiated_disconnect {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(b),
        // AWS documents the value as "True"/false; accept the string spelling too.
        Some(serde_json::Value::String(s)) => Some(s.eq_ignore_ascii_case("true")),
        Some(_) => return Err(DropReason::MissingField),
    };
    let ev = PresenceEvent {
        client_id,
        thing_name: opt_str(w.thing_name)?,
        timestamp,
        event_type,
        session_identifier: opt_str(w.session_identifier)?,
        principal_identifier: opt_str(w.principal_identifier)?,
        ip_address: opt_str(w.ip_address)?,
        version_number,
        client_initiated_disconnect,
        disconnect_reason: opt_str(w.disconnect_reason)?,
        connect_failure_reason: opt_str(w.connect_failure_reason)?,
    };
    // A connect or disconnect without session and version cannot be ordered.
    if event_type != EventType::ConnectFailed
        && (ev.session_identifier.is_none() || ev.version_number.is_none())
    {
        return Err(DropReason::MissingField);
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn o(min: i64, version: i64, connected: bool, session: &str) -> Ordering {
        Ordering {
            timestamp: now() + TimeDelta::minutes(min),
            version,
            connected,
            session: session.into(),
        }
    }

    #[test]
    fn parses_the_aws_examples() {
        let connected = br#"{"clientId":"186b5","timestamp":1764244800000,"eventType":"connected",
            "sessionIdentifier":"00000000-0000-0000-0000-000000000000",
            "principalIdentifier":"12345678901234567890123456789012","ipAddress":"192.0.2.0",
            "versionNumber":0}"#;
        let e = parse(connected, now()).unwrap();
        assert_eq!(e.event_type, EventType::Connected);
        assert_eq!(e.ip_address.as_deref(), Some("192.0.2.0"));
        assert_eq!(e.version_number, Some(0));

        let disconnected = br#"{"clientId":"186b5","timestamp":1764244800000,"eventType":"disconnected",
            "clientInitiatedDisconnect":true,"sessionIdentifier":"00000000-0000-0000-0000-000000000000",
            "principalIdentifier":"12345678901234567890123456789012",
            "disconnectReason":"CLIENT_INITIATED_DISCONNECT","versionNumber":0}"#;
        let e = parse(disconnected, now()).unwrap();
        assert_eq!(e.client_initiated_disconnect, Some(true));
        assert_eq!(
            e.disconnect_reason.as_deref(),
            Some("CLIENT_INITIATED_DISCONNECT")
        );

        let failed = br#"{"clientId":"186b5","timestamp":1764244800000,"eventType":"connect_failed",
            "connectFailureReason":"AUTH_ERROR","principalIdentifier":"12345678901234567890123456789012",
            "ipAddress":"192.0.2.0"}"#;
        let e = parse(failed, now()).unwrap();
        assert_eq!(e.event_type, EventType::ConnectFailed);
        assert_eq!(e.session_key(), "ts:1764244800000");
        assert!(e.ordering(now(), TimeDelta::minutes(5)).is_none());
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        let n = now();
        assert_eq!(parse(b"\xff\xfe", n), Err(DropReason::NotUtf8));
        assert_eq!(parse(b"{not json", n), Err(DropReason::MalformedJson));
        assert_eq!(parse(b"[1,2]", n), Err(DropReason::MalformedJson));
        assert_eq!(
            parse(br#"{"timestamp":1764244800000,"eventType":"connected"}"#, n),
            Err(DropReason::MissingField)
        );
        assert_eq!(
            parse(
                br#"{"clientId":"a","timestamp":1764244800000,"eventType":"subscribed"}"#,
                n
            ),
            Err(DropReason::UnknownEventType)
        );
        assert_eq!(
            parse(br#"{"clientId":"a","timestamp":"soon","eventType":"connected","sessionIdentifier":"s","versionNumber":1}"#, n),
            Err(DropReason::MissingField)
        );
        // far future and far past
        assert_eq!(
            parse(br#"{"clientId":"a","timestamp":99999999999999,"eventType":"connected","sessionIdentifier":"s","versionNumber":1}"#, n),
            Err(DropReason::BadTimestamp)
        );
        assert_eq!(
            parse(br#"{"clientId":"a","timestamp":1000,"eventType":"connected","sessionIdentifier":"s","versionNumber":1}"#, n),
            Err(DropReason::BadTimestamp)
        );
        // connect without session/version cannot be ordered
        assert_eq!(
            parse(
                br#"{"clientId":"a","timestamp":1764244800000,"eventType":"connected"}"#,
                n
            ),
            Err(DropReason::MissingField)
        );
        // NUL in a string field
        assert_eq!(
            parse(br#"{"clientId":"a\u0000b","timestamp":1764244800000,"eventType":"connect_failed"}"#, n),
            Err(DropReason::MissingField)
        );
        assert_eq!(parse(b"", n), Err(DropReason::MalformedJson));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse(deep.as_bytes(), n), Err(DropReason::MalformedJson));
    }

    #[test]
    fn the_rule_of_section_2a() {
        // later timestamp wins beyond 30 minutes, even with a lower (reset) version
        assert!(o(61, 0, true, "s2").is_newer(&o(0, 7, false, "s1")));
        assert!(!o(0, 7, false, "s1").is_newer(&o(61, 0, true, "s2")));
        // within 30 minutes the higher version wins, even with an earlier timestamp
        assert!(o(0, 5, true, "s2").is_newer(&o(1, 4, false, "s1")));
        // equal versions: the disconnect beats the connect it ends, whatever the timestamps
        assert!(o(0, 4, false, "s1").is_newer(&o(0, 4, true, "s1")));
        assert!(!o(0, 4, true, "s1").is_newer(&o(0, 4, false, "s1")));
        // an identical event is never newer than itself (duplicates change nothing)
        assert!(!o(0, 4, true, "s1").is_newer(&o(0, 4, true, "s1")));
    }

    #[test]
    fn a_timestamp_far_ahead_of_arrival_counts_as_arrival_plus_skew() {
        let skew = TimeDelta::minutes(5);
        let arrived = now();
        let ev = |ts: DateTime<Utc>, version: i64, kind: EventType, session: &str| PresenceEvent {
            client_id: "c".into(),
            thing_name: None,
            timestamp: ts,
            event_type: kind,
            session_identifier: Some(session.into()),
            principal_identifier: None,
            ip_address: None,
            version_number: Some(version),
            client_initiated_disconnect: None,
            disconnect_reason: None,
            connect_failure_reason: None,
        };
        // Within the skew (AWS's clock a little ahead of ours) nothing changes.
        let early = ev(
            arrived + TimeDelta::minutes(3),
            1,
            EventType::Connected,
            "s1",
        );
        assert_eq!(
            early.ordering(arrived, skew).unwrap().timestamp,
            early.timestamp
        );
        // A forged disconnect dated 23 h ahead counts as arrived + 5 min...
        let forged = ev(
            arrived + TimeDelta::hours(23),
            0,
            EventType::Disconnected,
            "x",
        );
        let f = forged.ordering(arrived, skew).unwrap();
        assert_eq!(f.timestamp, arrived + skew);
        // ...so the genuine connect 40 minutes later (a new session) beats it, which under the
        // unbounded rule it could not for 23 hours.
        let later = arrived + TimeDelta::minutes(40);
        let genuine = ev(later, 1, EventType::Connected, "s2")
            .ordering(later, skew)
            .unwrap();
        assert!(genuine.is_newer(&f));
        let unbounded = ev(
            arrived + TimeDelta::hours(23),
            0,
            EventType::Disconnected,
            "x",
        )
        .ordering(arrived, TimeDelta::days(2))
        .unwrap();
        assert!(!genuine.is_newer(&unbounded), "the defect this bound fixes");
    }

    #[test]
    fn non_transitive_case() {
        // §2a's rule is not a total order when versions fall within 30-minute steps:
        // a > b (version), b > c (version), c > a (more than 30 minutes later).
        let a = o(0, 3, true, "a");
        let b = o(20, 2, true, "b");
        let c = o(40, 1, true, "c");
        assert!(a.is_newer(&b) && b.is_newer(&c) && c.is_newer(&a));
        // so the outcome depends on arrival order:
        assert_eq!(fold([&a, &b, &c]).unwrap(), c);
        assert_eq!(fold([&b, &c, &a]).unwrap(), a);
    }

    /// A realistic life of one client: sessions with increasing versions; after a long offline
    /// period (> 1 h) the version resets to 0, as AWS does.
    pub fn realistic_history() -> impl Strategy<Value = Vec<Ordering>> {
        prop::collection::vec((1i64..50, any::<bool>(), 0i64..3, any::<bool>()), 1..8).prop_map(
            |sessions| {
                let mut out = Vec::new();
                let mut t = 0i64; // minutes
                let mut version = 0i64;
                for (i, (len, reset_before, bump, ends)) in sessions.into_iter().enumerate() {
                    if reset_before && i > 0 {
                        t += 70; // offline for more than an hour: versionNumber resets
                        version = 0;
                    } else {
                        t += 1;
                        version += 1 + bump;
                    }
                    let s = format!("s{i}");
                    out.push(o(t, version, true, &s));
                    t += len;
                    if ends {
                        out.push(o(t, version, false, &s));
                    }
                }
                out
            },
        )
    }

    proptest! {
        #[test]
        fn any_arrival_order_converges_to_the_truth(
            (history, order, dups) in realistic_history().prop_flat_map(|h| {
                let n = h.len();
                (Just(h), Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                 prop::collection::vec(0..n, 0..4))
            })
        ) {
            let truth = history.last().unwrap().clone();
            let mut arrivals: Vec<&Ordering> = order.iter().map(|&i| &history[i]).collect();
            for d in dups { arrivals.push(&history[d]); }
            prop_assert_eq!(fold(arrivals).unwrap(), truth);
        }
    }
}
