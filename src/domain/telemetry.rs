//! Impression messages: which device sent them, and the device's own timestamp if it is usable.
//!
//! The message itself is not stored; only its arrival counts (last arrival, newest device time,
//! hourly counts). A device timestamp that is unparsable or absurd is dropped from the message,
//! which still counts as data (DESIGN.md §2a).
//!
//! A message also carries its impressions count (`telemetry.impressions_field`, default
//! `count`), summed per device and bucket for the impressions-anomaly rule (`domain::anomaly`).
//! A message without the field (or with `null`) counts as 1. A value that is not a
//! non-negative finite number of at most [`MAX_IMPRESSIONS`] (a string, a negative, `1e300`,
//! an object) would corrupt the sums: the message counts as 1 and is flagged
//! `impressions_invalid`, which ingest counts and logs rate-limited, as for a dropped device
//! timestamp. A fractional value is rounded to the nearest whole impression.

use chrono::{DateTime, Utc};

use super::presence::plausible;
use super::{identity::validate_id, topic, DropReason};

/// How to read an impression message, from configuration.
#[derive(Debug, Clone)]
pub struct TelemetryFormat {
    pub device_id_level: usize,
    pub device_id_field: Option<String>,
    pub device_ts_field: Option<String>,
    pub group_level: Option<usize>,
    /// JSON field with the impressions count; `None` counts every message as 1.
    pub impressions_field: Option<String>,
}

/// The most impressions one message may claim. A screen's camera counts the people who
/// passed since its previous message (minutes): tens, at a busy lobby hundreds. A value above
/// this is a broken counter, and one such value would dominate a device's sums for weeks.
pub const MAX_IMPRESSIONS: i64 = 100_000;

/// One parsed impression message.
#[derive(Debug, Clone, PartialEq)]
pub struct Impression {
    pub device_id: String,
    /// The group named by the topic (if `telemetry.group_level` is set).
    pub topic_group: Option<String>,
    /// The device's own time, when present and plausible.
    pub device_ts: Option<DateTime<Utc>>,
    /// A device timestamp was present but unusable and was dropped.
    pub device_ts_dropped: bool,
    /// The impressions this message counts (1 when the field is absent or unusable).
    pub impressions: i64,
    /// An impressions value was present but unusable; the message counted as 1.
    pub impressions_invalid: bool,
}

/// Read an impressions value: a non-negative finite number of at most [`MAX_IMPRESSIONS`],
/// rounded to a whole count.
pub fn parse_impressions(v: &serde_json::Value) -> Option<i64> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return (0..=MAX_IMPRESSIONS).contains(&i).then_some(i);
    }
    let f = n.as_f64()?;
    (f.is_finite() && (0.0..=MAX_IMPRESSIONS as f64).contains(&f)).then(|| f.round() as i64)
}

/// Parse a device timestamp: epoch milliseconds (integer or float) or an RFC 3339 string.
pub fn parse_device_ts(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    match v {
        serde_json::Value::Number(n) => {
            let ms = n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| f as i64)
            })?;
            DateTime::from_timestamp_millis(ms)
        }
        serde_json::Value::String(s) => DateTime::parse_from_rfc3339(s).ok().map(|d| d.to_utc()),
        _ => None,
    }
}

impl TelemetryFormat {
    /// Parse an impression message that arrived on `topic` at `now`.
    pub fn parse(
        &self,
        topic_name: &str,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Impression, DropReason> {
        let text = std::str::from_utf8(payload).map_err(|_| DropReason::NotUtf8)?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|_| DropReason::MalformedJson)?;
        let obj = value.as_object().ok_or(DropReason::MalformedJson)?;

        let device_id = match &self.device_id_field {
            Some(field) => obj
                .get(field)
                .and_then(serde_json::Value::as_str)
                .ok_or(DropReason::MissingField)?,
            None => {
                topic::level(topic_name, self.device_id_level).ok_or(DropReason::TopicMismatch)?
            }
        };
        validate_id(device_id).map_err(|_| DropReason::BadDeviceId)?;

        let (device_ts, device_ts_dropped) =
            match self.device_ts_field.as_ref().and_then(|f| obj.get(f)) {
                None | Some(serde_json::Value::Null) => (None, false),
                Some(v) => match parse_device_ts(v).filter(|ts| plausible(*ts, now)) {
                    Some(ts) => (Some(ts), false),
                    None => (None, true),
                },
            };
        let (impressions, impressions_invalid) =
            match self.impressions_field.as_ref().and_then(|f| obj.get(f)) {
                None | Some(serde_json::Value::Null) => (1, false),
                Some(v) => match parse_impressions(v) {
                    Some(n) => (n, false),
                    None => (1, true),
                },
            };
        let topic_group = self
            .group_level
            .and_then(|l| topic::level(topic_name, l))
            .filter(|g| validate_id(g).is_ok())
            .map(str::to_string);
        Ok(Impression {
            device_id: device_id.to_string(),
            topic_group,
            device_ts,
            device_ts_dropped,
            impressions,
            impressions_invalid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt() -> TelemetryFormat {
        TelemetryFormat {
            device_id_level: 1,
            device_id_field: None,
            device_ts_field: Some("timestamp".into()),
            group_level: None,
            impressions_field: Some("count".into()),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    #[test]
    fn device_id_from_topic_and_timestamp_forms() {
        let f = fmt();
        let i = f
            .parse(
                "dt/s1/impressions",
                br#"{"timestamp":1764244800000,"count":3}"#,
                now(),
            )
            .unwrap();
        assert_eq!(i.device_id, "s1");
        assert_eq!(i.device_ts.unwrap().timestamp_millis(), 1764244800000);

        let i = f
            .parse(
                "dt/s1/impressions",
                br#"{"timestamp":"2026-11-27T11:00:00+09:00"}"#,
                now(),
            )
            .unwrap();
        assert_eq!(
            i.device_ts.unwrap().to_rfc3339(),
            "2026-11-27T02:00:00+00:00"
        );

        let i = f.parse("dt/s1/impressions", br#"{}"#, now()).unwrap();
        assert_eq!((i.device_ts, i.device_ts_dropped), (None, false));
    }

    #[test]
    fn absurd_timestamps_are_dropped_but_the_message_counts() {
        let f = fmt();
        for payload in [
            &br#"{"timestamp":1000}"#[..],     // 1970
            br#"{"timestamp":1577836799999}"#, // just before 2020
            br#"{"timestamp":1796000000000}"#, // days ahead
            br#"{"timestamp":"yesterday"}"#,
            br#"{"timestamp":true}"#,
            br#"{"timestamp":1e300}"#,
        ] {
            let i = f.parse("dt/s1/impressions", payload, now()).unwrap();
            assert_eq!(i.device_ts, None, "{}", String::from_utf8_lossy(payload));
            assert!(i.device_ts_dropped);
        }
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        let f = fmt();
        assert_eq!(
            f.parse("dt/s1/impressions", b"\xc3\x28", now()),
            Err(DropReason::NotUtf8)
        );
        assert_eq!(
            f.parse("dt/s1/impressions", b"nope", now()),
            Err(DropReason::MalformedJson)
        );
        assert_eq!(
            f.parse("dt/s1/impressions", b"42", now()),
            Err(DropReason::MalformedJson)
        );
        assert_eq!(f.parse("dt", b"{}", now()), Err(DropReason::TopicMismatch));
        assert_eq!(
            f.parse("dt//impressions", b"{}", now()),
            Err(DropReason::BadDeviceId)
        );
        let by_field = TelemetryFormat {
            device_id_field: Some("device".into()),
            ..fmt()
        };
        assert_eq!(
            by_field.parse("dt/x/i", b"{}", now()),
            Err(DropReason::MissingField)
        );
        assert_eq!(
            by_field.parse("dt/x/i", br#"{"device":"a\u0007b"}"#, now()),
            Err(DropReason::BadDeviceId)
        );
        assert_eq!(
            by_field
                .parse("dt/x/i", br#"{"device":"screen-9"}"#, now())
                .unwrap()
                .device_id,
            "screen-9"
        );
    }

    #[test]
    fn group_from_topic_level() {
        let f = TelemetryFormat {
            device_id_level: 2,
            group_level: Some(1),
            ..fmt()
        };
        let i = f.parse("dt/bldg-7/s1/impressions", b"{}", now()).unwrap();
        assert_eq!(
            (i.device_id.as_str(), i.topic_group.as_deref()),
            ("s1", Some("bldg-7"))
        );
    }

    #[test]
    fn impressions_value_or_one() {
        let f = fmt();
        let get = |p: &str| {
            let i = f.parse("dt/s1/impressions", p.as_bytes(), now()).unwrap();
            (i.impressions, i.impressions_invalid)
        };
        assert_eq!(get(r#"{"count":7}"#), (7, false));
        assert_eq!(get(r#"{"count":0}"#), (0, false));
        assert_eq!(get(r#"{"count":2.6}"#), (3, false));
        assert_eq!(get(r#"{"count":100000}"#), (MAX_IMPRESSIONS, false));
        assert_eq!(get(r#"{}"#), (1, false));
        assert_eq!(get(r#"{"count":null}"#), (1, false));
        for bad in [
            r#"{"count":-1}"#,
            r#"{"count":-0.5}"#,
            r#"{"count":"5"}"#,
            r#"{"count":1e300}"#,
            r#"{"count":100001}"#,
            r#"{"count":18446744073709551615}"#,
            r#"{"count":true}"#,
            r#"{"count":[3]}"#,
            r#"{"count":{"n":3}}"#,
        ] {
            assert_eq!(get(bad), (1, true), "{bad}");
        }
        let none = TelemetryFormat {
            impressions_field: None,
            ..fmt()
        };
        let i = none
            .parse("dt/s1/impressions", br#"{"count":9}"#, now())
            .unwrap();
        assert_eq!((i.impressions, i.impressions_invalid), (1, false));
    }
}
