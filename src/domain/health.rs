//! Device health by the heartbeat clock of DESIGN.md §2a, as a pure rule: given what is known
//! about a device at `now` (its last data, connectivity, restart points, quiet hours, the open
//! gap alert if any), its state, when to look again and what to do with its alert. No I/O;
//! `detect::heartbeat` reads the facts from Postgres and applies the decision.

use chrono::{DateTime, TimeDelta, Utc};

pub use super::device::{DeviceState as State, Gap};

/// The open heartbeat-gap alert of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenGap {
    pub id: i64,
    pub class: Gap,
    /// `last_data` when the alert opened: data newer than this means the device is back.
    pub last_data_before: Option<DateTime<Utc>>,
    /// The newest device timestamp when the alert opened.
    pub last_device_ts_before: Option<DateTime<Utc>>,
}

/// Expected interval and grace after the fleet → group → device overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expectations {
    pub interval: TimeDelta,
    pub grace: TimeDelta,
    pub disconnect_grace: TimeDelta,
    pub flush_allowance: TimeDelta,
}

/// Everything the clock needs to know about one device at `now`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Arrival time of the newest impression.
    pub last_data: Option<DateTime<Utc>>,
    pub connected: Option<bool>,
    /// When `connected == Some(false)`: when the deciding disconnect reached us.
    pub disconnected_at: Option<DateTime<Utc>>,
    /// Arrival time of the first connect after `last_data` (a restart point once per gap).
    pub first_reconnect: Option<DateTime<Utc>>,
    /// Service start or ingest recovery.
    pub service_restart: Option<DateTime<Utc>>,
    /// If quiet hours hold now: when they end.
    pub quiet_until: Option<DateTime<Utc>>,
    pub last_quiet_end: Option<DateTime<Utc>>,
    pub next_quiet_start: Option<DateTime<Utc>>,
    pub open: Option<OpenGap>,
    /// Earliest device time of data that arrived during the gap.
    pub gap_min_device_ts: Option<DateTime<Utc>>,
}

/// What to do with an alert.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    None,
    Open(Gap),
    Reclassify {
        from: Gap,
        to: Gap,
    },
    /// Data returned. `covered`: whether the backlog reached back to within one interval of the
    /// data before the gap (`None` when the device sends no usable timestamps).
    Resolve {
        covered: Option<bool>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub state: State,
    /// When to look again; `None` until ingest (data or presence) moves it.
    pub deadline: Option<DateTime<Utc>>,
    pub action: Action,
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Decide a device's state, next deadline and alert action at `now`.
pub fn evaluate(f: &Facts, e: &Expectations, now: DateTime<Utc>) -> Decision {
    if let Some(open) = &f.open {
        let returned = match (f.last_data, open.last_data_before) {
            (Some(now_data), Some(before)) => now_data > before,
            (Some(_), None) => true,
            _ => false,
        };
        if returned {
            let covered = open
                .last_device_ts_before
                .zip(f.gap_min_device_ts)
                .map(|(before, first_after)| first_after <= before + e.interval);
            // The device is back: what follows is ordinary evaluation from its fresh data.
            let rest = evaluate(
                &Facts {
                    open: None,
                    ..f.clone()
                },
                e,
                now,
            );
            return Decision {
                action: Action::Resolve { covered },
                ..rest
            };
        }
        // Quiet hours pause evaluation; the alert stays open through them.
        if let Some(until) = f.quiet_until {
            return Decision {
                state: State::Quiet,
                deadline: Some(until),
                action: Action::None,
            };
        }
        let (class, deadline) = match (f.connected, f.disconnected_at) {
            (Some(false), Some(d)) if now < d + e.disconnect_grace => {
                (open.class, Some(d + e.disconnect_grace))
            }
            (Some(false), _) => (Gap::Offline, None),
            _ => (Gap::Silent, None),
        };
        let action = if class != open.class {
            Action::Reclassify {
                from: open.class,
                to: class,
            }
        } else {
            Action::None
        };
        return Decision {
            state: class.into(),
            deadline: earliest(deadline, f.next_quiet_start),
            action,
        };
    }

    if let Some(until) = f.quiet_until {
        return Decision {
            state: State::Quiet,
            deadline: Some(until),
            action: Action::None,
        };
    }
    // A device that never sent data but has connected while we watched is expected to send
    // (a screen connected for an hour with no impressions is broken); one we know only from
    // configuration or inventory is not: no evidence it is meant to report yet.
    if f.last_data.is_none() && f.connected.is_none() {
        return Decision {
            state: State::NeverSeen,
            deadline: None,
            action: Action::None,
        };
    }
    let Some(base) = [
        f.last_data,
        f.first_reconnect,
        f.service_restart,
        f.last_quiet_end,
    ]
    .into_iter()
    .flatten()
    .max() else {
        return Decision {
            state: State::NeverSeen,
            deadline: None,
            action: Action::None,
        };
    };
    let late_at = base + e.interval + e.flush_allowance;
    let due_at = late_at + e.grace;
    // Until its first data a device stays `never_seen`, even while its clock runs.
    let waiting = |s: State| {
        if f.last_data.is_none() {
            State::NeverSeen
        } else {
            s
        }
    };
    let (state, deadline, action) = if now < late_at {
        (waiting(State::Healthy), Some(late_at), Action::None)
    } else if now < due_at {
        (waiting(State::Late), Some(due_at), Action::None)
    } else {
        match (f.connected, f.disconnected_at) {
            (Some(false), Some(d)) => {
                let offline_at = due_at.max(d + e.disconnect_grace);
                if now >= offline_at {
                    (State::Offline, None, Action::Open(Gap::Offline))
                } else {
                    // A disconnect younger than disconnect_grace never alerts.
                    (waiting(State::Late), Some(offline_at), Action::None)
                }
            }
            _ => (State::Silent, None, Action::Open(Gap::Silent)),
        }
    };
    Decision {
        state,
        deadline: earliest(deadline, f.next_quiet_start),
        action,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
            .unwrap()
            .to_utc()
    }
    fn m(n: i64) -> DateTime<Utc> {
        t0() + TimeDelta::minutes(n)
    }
    fn exp() -> Expectations {
        Expectations {
            interval: TimeDelta::minutes(5),
            grace: TimeDelta::minutes(5),
            disconnect_grace: TimeDelta::minutes(10),
            flush_allowance: TimeDelta::zero(),
        }
    }
    fn data_at(n: i64) -> Facts {
        Facts {
            last_data: Some(m(n)),
            connected: Some(true),
            ..Facts::default()
        }
    }

    #[test]
    fn healthy_late_silent_on_the_deadlines() {
        let f = data_at(0);
        let e = exp();
        assert_eq!(evaluate(&f, &e, m(4)).state, State::Healthy);
        assert_eq!(evaluate(&f, &e, m(4)).deadline, Some(m(5)));
        assert_eq!(evaluate(&f, &e, m(5)).state, State::Late);
        assert_eq!(evaluate(&f, &e, m(5)).deadline, Some(m(10)));
        let d = evaluate(&f, &e, m(10));
        assert_eq!(
            (d.state, d.action),
            (State::Silent, Action::Open(Gap::Silent))
        );
    }

    #[test]
    fn flush_allowance_delays_late() {
        let e = Expectations {
            flush_allowance: TimeDelta::seconds(1),
            ..exp()
        };
        assert_eq!(evaluate(&data_at(0), &e, m(5)).state, State::Healthy);
    }

    #[test]
    fn a_young_disconnect_never_alerts() {
        let f = Facts {
            connected: Some(false),
            disconnected_at: Some(m(8)),
            ..data_at(0)
        };
        let d = evaluate(&f, &exp(), m(10));
        assert_eq!((d.state, d.deadline), (State::Late, Some(m(18))));
        let d = evaluate(&f, &exp(), m(18));
        assert_eq!(
            (d.state, d.action),
            (State::Offline, Action::Open(Gap::Offline))
        );
        // an old disconnect alerts at due
        let f = Facts {
            disconnected_at: Some(m(-30)),
            ..f
        };
        assert_eq!(
            evaluate(&f, &exp(), m(10)).action,
            Action::Open(Gap::Offline)
        );
    }

    #[test]
    fn first_reconnect_restarts_the_clock_once() {
        let f = Facts {
            first_reconnect: Some(m(7)),
            ..data_at(0)
        };
        assert_eq!(evaluate(&f, &exp(), m(10)).state, State::Healthy);
        assert_eq!(
            evaluate(&f, &exp(), m(17)).action,
            Action::Open(Gap::Silent)
        );
    }

    #[test]
    fn service_restart_and_quiet_end_are_restart_points() {
        let f = Facts {
            service_restart: Some(m(9)),
            ..data_at(0)
        };
        assert_eq!(evaluate(&f, &exp(), m(10)).state, State::Healthy);
        let f = Facts {
            last_quiet_end: Some(m(60)),
            ..data_at(0)
        };
        assert_eq!(evaluate(&f, &exp(), m(61)).state, State::Healthy);
        assert_eq!(evaluate(&f, &exp(), m(61)).deadline, Some(m(65)));
    }

    #[test]
    fn quiet_pauses_and_keeps_an_open_alert() {
        let open = OpenGap {
            id: 1,
            class: Gap::Silent,
            last_data_before: Some(m(0)),
            last_device_ts_before: None,
        };
        let f = Facts {
            quiet_until: Some(m(300)),
            open: Some(open),
            ..data_at(0)
        };
        let d = evaluate(&f, &exp(), m(100));
        assert_eq!(
            (d.state, d.deadline, d.action),
            (State::Quiet, Some(m(300)), Action::None)
        );
        let f = Facts { open: None, ..f };
        assert_eq!(evaluate(&f, &exp(), m(100)).state, State::Quiet);
    }

    #[test]
    fn open_alerts_reclassify_in_place_and_resolve_on_data() {
        let open = OpenGap {
            id: 1,
            class: Gap::Silent,
            last_data_before: Some(m(0)),
            last_device_ts_before: Some(m(0)),
        };
        let silent = Facts {
            open: Some(open.clone()),
            ..data_at(0)
        };
        assert_eq!(evaluate(&silent, &exp(), m(20)).action, Action::None);
        // disconnect seen later: offline only once it is older than disconnect_grace
        let dropped = Facts {
            connected: Some(false),
            disconnected_at: Some(m(25)),
            ..silent.clone()
        };
        let d = evaluate(&dropped, &exp(), m(26));
        assert_eq!((d.action, d.deadline), (Action::None, Some(m(35))));
        assert_eq!(
            evaluate(&dropped, &exp(), m(35)).action,
            Action::Reclassify {
                from: Gap::Silent,
                to: Gap::Offline
            }
        );
        // data returns with a backlog reaching back to the gap: covered
        let back = Facts {
            last_data: Some(m(40)),
            gap_min_device_ts: Some(m(3)),
            connected: Some(true),
            ..silent.clone()
        };
        let d = evaluate(&back, &exp(), m(40));
        assert_eq!(
            d.action,
            Action::Resolve {
                covered: Some(true)
            }
        );
        assert_eq!(d.state, State::Healthy);
        let lossy = Facts {
            gap_min_device_ts: Some(m(30)),
            ..back.clone()
        };
        assert_eq!(
            evaluate(&lossy, &exp(), m(40)).action,
            Action::Resolve {
                covered: Some(false)
            }
        );
        let no_ts = Facts {
            gap_min_device_ts: None,
            ..back
        };
        assert_eq!(
            evaluate(&no_ts, &exp(), m(40)).action,
            Action::Resolve { covered: None }
        );
    }

    #[test]
    fn never_seen_devices_do_not_alert() {
        let f = Facts {
            connected: Some(true),
            ..Facts::default()
        };
        let d = evaluate(&f, &exp(), m(1000));
        assert_eq!(
            (d.state, d.action, d.deadline),
            (State::NeverSeen, Action::None, None)
        );
    }
}
