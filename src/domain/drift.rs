//! Address drift: the pure rule deciding whether a connection is from a network not seen for its
//! device (issue 9 item 8). The detector (`detect::drift`) feeds it the device's history
//! (`device_networks`) and acts on the verdict.
//!
//! A device's history is one [`Sighting`] per network: when the device was first and last seen
//! connecting from it (event time, bounded by arrival plus the allowed clock skew, so a forged
//! future stamp cannot pin a network as "recent"). A connection at time `t` from network `n` is
//! judged against that history *as of `t`*, never as of now, so an old event arriving late is
//! judged in its own past:
//!
//! - **baseline**: the device was seen on some network before `t` and within `history` of it
//!   (`first_seen < t` and `last_seen >= t - history`). Without a baseline there is nothing to
//!   drift from: a device's first connection ever, and a device whose history aged out
//!   (retention deletes sightings older than `history`), only establish a new baseline.
//! - **known**: `n` has a sighting with `first_seen <= t` and `last_seen >= t - history`.
//! - **drift** = baseline and not known.
//!
//! A sighting spans `[first_seen, last_seen]`; sightings in between are not kept, so when that
//! span straddles `t` the network counts as known at `t`. That errs towards silence on purpose:
//! a late event from a network the device used both before and after it is not news.
//! Because the history only grows by `least(first)`/`greatest(last)`, judging the same
//! event twice against the same history gives the same verdict, and the detector judges each
//! stored event once (it is unique on its natural key, so duplicates and replays never reach
//! the rule twice).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};

/// When a device was seen on one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

impl Sighting {
    pub fn at(t: DateTime<Utc>) -> Self {
        Self {
            first_seen: t,
            last_seen: t,
        }
    }

    /// Merge another sighting of the same network (commutative, idempotent).
    pub fn merge(&mut self, other: Sighting) {
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
    }
}

/// What a connection is, for drift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No history within `history` before the connection: it establishes the baseline.
    Baseline,
    /// The network was seen for the device within `history`.
    Known,
    /// A network not seen for the device within `history`; the networks that were, by name.
    Drift { seen: BTreeMap<String, Sighting> },
}

/// Judge a connection from `network` at `t` against a device's `history` (network → sighting).
pub fn judge(
    history: &BTreeMap<String, Sighting>,
    network: &str,
    t: DateTime<Utc>,
    window: TimeDelta,
) -> Verdict {
    let since = t
        .checked_sub_signed(window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    if history
        .get(network)
        .is_some_and(|s| s.first_seen <= t && s.last_seen >= since)
    {
        return Verdict::Known;
    }
    let seen: BTreeMap<String, Sighting> = history
        .iter()
        .filter(|(_, s)| s.first_seen < t && s.last_seen >= since)
        .map(|(n, s)| (n.clone(), *s))
        .collect();
    if seen.is_empty() {
        Verdict::Baseline
    } else {
        Verdict::Drift { seen }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + TimeDelta::hours(h)
    }

    fn hist(entries: &[(&str, i64, i64)]) -> BTreeMap<String, Sighting> {
        entries
            .iter()
            .map(|(n, f, l)| {
                (
                    n.to_string(),
                    Sighting {
                        first_seen: t(*f),
                        last_seen: t(*l),
                    },
                )
            })
            .collect()
    }

    const DAY: i64 = 24;

    #[test]
    fn first_connection_is_a_baseline() {
        let w = TimeDelta::days(30);
        assert_eq!(judge(&BTreeMap::new(), "a", t(0), w), Verdict::Baseline);
    }

    #[test]
    fn a_new_network_within_the_window_is_drift() {
        let w = TimeDelta::days(30);
        let h = hist(&[("a", 0, 10)]);
        assert_eq!(judge(&h, "a", t(20), w), Verdict::Known);
        match judge(&h, "b", t(20), w) {
            Verdict::Drift { seen } => assert_eq!(seen.keys().collect::<Vec<_>>(), ["a"]),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_network_not_seen_for_longer_than_the_window_is_drift_again() {
        let w = TimeDelta::days(30);
        let h = hist(&[("a", 0, 10), ("b", 40 * DAY, 41 * DAY)]);
        // back on a after 41 days on b: a aged out, b is the baseline
        assert!(matches!(
            judge(&h, "a", t(42 * DAY), w),
            Verdict::Drift { .. }
        ));
    }

    #[test]
    fn history_lost_to_retention_is_a_new_baseline() {
        let w = TimeDelta::days(30);
        let h = hist(&[("a", 0, 10)]);
        assert_eq!(judge(&h, "b", t(10 + 31 * DAY), w), Verdict::Baseline);
    }

    #[test]
    fn late_events_are_judged_in_their_own_past() {
        let w = TimeDelta::days(30);
        // on a from 0 to 100h, then b from 200h on (the move to b was the drift)
        let h = hist(&[("a", 0, 100), ("b", 200, 300)]);
        // a late connect from a at 150h: a was seen before it
        assert_eq!(judge(&h, "a", t(150), w), Verdict::Known);
        // a late connect from a at -5h, before anything we know: nothing to drift from
        assert_eq!(judge(&h, "a", t(-5), w), Verdict::Baseline);
        // a late connect from b before b was first seen, while on a: that was the drift
        assert!(matches!(judge(&h, "b", t(150), w), Verdict::Drift { .. }));
        // a network used before and after a late event counts as known at its time
        let h = hist(&[("a", 0, 60 * DAY)]);
        assert_eq!(judge(&h, "a", t(45 * DAY), w), Verdict::Known);
    }

    proptest! {
        /// Judging is independent of the order the history was built in: merging sightings in
        /// any order gives the same history, hence the same verdict.
        #[test]
        fn history_is_commutative(
            mut events in proptest::collection::vec((0usize..3, -500i64..500), 1..20),
            probe in (0usize..3, -500i64..500),
        ) {
            let names = ["a", "b", "c"];
            let build = |evs: &[(usize, i64)]| {
                let mut h: BTreeMap<String, Sighting> = BTreeMap::new();
                for (n, at) in evs {
                    let s = Sighting::at(t(*at));
                    h.entry(names[*n].to_string()).and_modify(|x| x.merge(s)).or_insert(s);
                }
                h
            };
            let h1 = build(&events);
            events.reverse();
            let h2 = build(&events);
            events.sort_by_key(|e| e.1);
            let h3 = build(&events);
            prop_assert_eq!(&h1, &h2);
            prop_assert_eq!(&h1, &h3);
            let w = TimeDelta::hours(100);
            prop_assert_eq!(judge(&h1, names[probe.0], t(probe.1), w), judge(&h2, names[probe.0], t(probe.1), w));
        }

        /// A network seen at or before `t` within the window is never drift at `t`, and a
        /// device seen nowhere before `t` is never drift at `t`.
        #[test]
        fn never_drift_from_a_recent_network_or_without_history(
            first in -500i64..500, last_after in 0i64..500, probe_after in 0i64..200,
        ) {
            let w = TimeDelta::hours(100);
            let h = hist(&[("a", first, first + last_after)]);
            let probe = t(first + probe_after);
            prop_assert_eq!(judge(&h, "a", probe, w), Verdict::Known.clone().min_if(probe_after <= last_after + 100));
            prop_assert_eq!(judge(&h, "b", t(first), w), Verdict::Baseline);
        }
    }

    impl Verdict {
        /// `Known` when `cond`, else what a device with only old history gets.
        fn min_if(self, cond: bool) -> Verdict {
            if cond {
                self
            } else {
                Verdict::Baseline
            }
        }
    }
}
