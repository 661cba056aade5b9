//! What makes a silence (maintenance window) acceptable: what it matches, its window, its
//! texts. The API and the dashboard's form both ask [`validate`]; storing and matching live in
//! `alerts::silences`.

use chrono::{DateTime, TimeDelta, Utc};

use super::alert::Kind;
use super::input::{self, Invalid, MAX_NAME, MAX_NOTE};

/// The longest silence: a forgotten maintenance window must not mute a fleet for good.
pub const MAX_DURATION: TimeDelta = TimeDelta::days(90);
/// How far ahead a silence may start.
pub const MAX_LEAD: TimeDelta = TimeDelta::days(365);

/// A silence as a person asked for it, before any check.
#[derive(Debug, Clone, Copy)]
pub struct Draft<'a> {
    pub device_id: Option<&'a str>,
    pub group_id: Option<&'a str>,
    pub kind: Option<&'a str>,
    /// `None`: now.
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: DateTime<Utc>,
    pub comment: &'a str,
    /// On whose behalf it is created.
    pub on_behalf_of: Option<&'a str>,
}

/// What [`validate`] settled: the kind parsed and the window with its start filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Valid {
    pub kind: Option<Kind>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// Check a draft at `now`: at least one matcher, each a sane text, a known kind, a comment, and
/// a window that ends in the future, after its start, lasts at most [`MAX_DURATION`] and starts
/// at most [`MAX_LEAD`] ahead. The first rule broken is reported.
pub fn validate(d: &Draft<'_>, now: DateTime<Utc>) -> Result<Valid, Invalid> {
    if d.device_id.is_none() && d.group_id.is_none() && d.kind.is_none() {
        return Err(Invalid(
            "a silence needs at least one of device_id, group_id, kind".into(),
        ));
    }
    input::optional_text("device_id", d.device_id, MAX_NAME)?;
    input::optional_text("group_id", d.group_id, MAX_NAME)?;
    let kind = match d.kind {
        Some(k) => {
            input::text("kind", k, MAX_NAME)?;
            Some(
                k.parse::<Kind>()
                    .map_err(|e| Invalid(format!("kind: {e}")))?,
            )
        }
        None => None,
    };
    input::text("comment", d.comment, MAX_NOTE)?;
    let starts_at = d.starts_at.unwrap_or(now);
    if starts_at - now > MAX_LEAD {
        return Err(Invalid("starts_at: at most 365 days ahead".into()));
    }
    if d.ends_at <= starts_at {
        return Err(Invalid("ends_at: must be after starts_at".into()));
    }
    if d.ends_at <= now {
        return Err(Invalid("ends_at: must be in the future".into()));
    }
    if d.ends_at - starts_at > MAX_DURATION {
        return Err(Invalid("ends_at: a silence lasts at most 90 days".into()));
    }
    input::optional_text("created_by", d.on_behalf_of, MAX_NAME)?;
    Ok(Valid {
        kind,
        starts_at,
        ends_at: d.ends_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn draft() -> Draft<'static> {
        Draft {
            device_id: Some("d1"),
            group_id: None,
            kind: None,
            starts_at: None,
            ends_at: now() + TimeDelta::hours(2),
            comment: "OPS-1 firmware update",
            on_behalf_of: None,
        }
    }

    fn refused(d: Draft<'_>) -> String {
        validate(&d, now()).unwrap_err().0
    }

    #[test]
    fn a_sane_draft_starts_now() {
        let v = validate(&draft(), now()).unwrap();
        assert_eq!(v.starts_at, now());
        assert_eq!(v.ends_at, now() + TimeDelta::hours(2));
        assert_eq!(v.kind, None);
        let k = validate(
            &Draft {
                kind: Some("flapping"),
                ..draft()
            },
            now(),
        )
        .unwrap();
        assert_eq!(k.kind, Some(Kind::Flapping));
    }

    #[test]
    fn matchers_must_exist_and_be_known() {
        let none = Draft {
            device_id: None,
            ..draft()
        };
        assert!(refused(none).contains("at least one of"));
        let blank = Draft {
            group_id: Some(" "),
            ..draft()
        };
        assert_eq!(refused(blank), "group_id: must not be empty");
        let unknown = Draft {
            kind: Some("heartbeat"),
            ..draft()
        };
        assert!(refused(unknown).starts_with("kind: expected one of"));
        let nul = Draft {
            device_id: Some("d\0"),
            ..draft()
        };
        assert_eq!(refused(nul), "device_id: NUL characters are not allowed");
        let long = "x".repeat(201);
        let long = Draft {
            device_id: Some(&long),
            ..draft()
        };
        assert_eq!(refused(long), "device_id: at most 200 characters");
    }

    #[test]
    fn the_window_is_bounded() {
        let past = Draft {
            starts_at: Some(now() - TimeDelta::hours(3)),
            ends_at: now() - TimeDelta::hours(1),
            ..draft()
        };
        assert_eq!(refused(past), "ends_at: must be in the future");
        let backwards = Draft {
            starts_at: Some(now() + TimeDelta::hours(3)),
            ends_at: now() + TimeDelta::hours(2),
            ..draft()
        };
        assert_eq!(refused(backwards), "ends_at: must be after starts_at");
        let too_long = Draft {
            ends_at: now() + MAX_DURATION + TimeDelta::seconds(1),
            ..draft()
        };
        assert_eq!(
            refused(too_long),
            "ends_at: a silence lasts at most 90 days"
        );
        let exactly_max = Draft {
            ends_at: now() + MAX_DURATION,
            ..draft()
        };
        assert!(validate(&exactly_max, now()).is_ok());
        let too_far = Draft {
            starts_at: Some(now() + MAX_LEAD + TimeDelta::seconds(1)),
            ends_at: now() + MAX_LEAD + TimeDelta::hours(1),
            ..draft()
        };
        assert_eq!(refused(too_far), "starts_at: at most 365 days ahead");
        // a silence that began in the past and still runs is fine
        let running = Draft {
            starts_at: Some(now() - TimeDelta::hours(1)),
            ..draft()
        };
        assert!(validate(&running, now()).is_ok());
    }

    #[test]
    fn texts_are_checked() {
        let blank = Draft {
            comment: "",
            ..draft()
        };
        assert_eq!(refused(blank), "comment: must not be empty");
        let by = Draft {
            on_behalf_of: Some("\0"),
            ..draft()
        };
        assert_eq!(refused(by), "created_by: NUL characters are not allowed");
    }
}
