//! Impressions anomaly: a screen that keeps reporting but stopped counting (issue 13).
//!
//! A covered or broken camera, or a crashed counting process, leaves the device connected and
//! sending messages with zero or few impressions. The heartbeat is blind to it. This module is
//! the pure rule; `detect::anomaly` feeds it one closed bucket at a time and applies what it
//! decides through `alerts::lifecycle`. No I/O, no clock.
//!
//! # Buckets
//! Ingest sums each device's impressions values (and counts its messages) per *bucket* of
//! arrival time: `[k·bucket, (k+1)·bucket)` since the Unix epoch ([`bucket_start`]). Arrival
//! time, not the device's clock: a bucket is then complete one flush after it ends, so it can be
//! judged once and for all. A backlog a device flushes after an LTE blip lands in the bucket it
//! arrived in; the gap's bucket has too few messages to be judged, the backlog's bucket is high,
//! neither raises anything.
//!
//! # Seasonal slots ([`Cadence::samples`])
//! A bucket is compared with the same *slot* of earlier seasons: with the defaults (bucket 1 h,
//! season 7 d) the same hour of the week, in the device's group's IANA time zone, so that
//! Monday 09:00 in a Tokyo lobby is compared with the Mondays 09:00 before it. The contract:
//! - **Calendar seasons** (a whole number of days): the sample `k` seasons back is the bucket
//!   holding the instant whose *local* date and time is the bucket's own minus `k` seasons.
//!   Across a DST change the sample is therefore 167 h or 169 h earlier, not 168 h: the
//!   morning rush stays the morning rush.
//!   - If that local time does not exist (the spring-forward gap: the hour 02:00-03:00 of the
//!     23-hour day), that season has no sample; the others still count.
//!   - If it happens twice (the fall-back overlap: 01:00-02:00 of the 25-hour day), the sample
//!     is its *earlier* occurrence. Both 01:00 buckets of the 25-hour day are compared with the
//!     same earlier slot; the day simply has one slot twice.
//! - **Other seasons** (shorter than a day, or not whole days: the second-scale runs of tests
//!   and the demo): plain UTC arithmetic, `bucket − k·season`.
//! - **No seasonality** (`season == bucket`): the samples are simply the buckets before it
//!   within the baseline window.
//! - There are `⌊baseline / season⌋` seasons at most; every sample starts before the bucket.
//!
//! # Baseline ([`baseline`])
//! The *median* of the device's sums in those samples, only counting samples in which it sent
//! at least `min_messages` messages (a slot it was off or silent in says nothing about its
//! camera), and only when there are at least `min_baseline_samples` of them: otherwise the
//! bucket has no baseline (a new device, a new slot) and is not judged. The median, not the
//! mean: one holiday or one broken week in the window does not move it.
//!
//! # Judgement ([`Rule::ratio`], [`peer_ratio`], [`Rule::decide`])
//! A bucket of a device is *judged* unless it overlaps quiet hours, has fewer than
//! `min_messages` messages (a silent device is the heartbeat's business), has no baseline, or
//! its baseline is under `min_baseline` impressions (a lobby that sees three people an hour at
//! night can see none by chance). A judged bucket has a *ratio* `sum / baseline`.
//!
//! The group's state in the bucket is the median ratio of the device's *peers*: the other
//! judged devices of its group, or, when the group has fewer than `min_peers` of them (or the
//! device has no group), the other judged devices of the fleet. The group is *low* when that
//! median is under `group_normal_fraction`: a holiday or a closed building lowers every screen,
//! and raises nothing. Without enough peers anywhere the device is judged alone.
//!
//! Per device, a *run* counts consecutive low judged buckets (ratio under `below_fraction`)
//! while the group is not low. The decision for one judged bucket:
//! - ratio ≥ `resolve_fraction`: the run ends; an open alert resolves.
//! - ratio < `below_fraction` and the group low: nothing (the run neither grows nor ends).
//! - ratio < `below_fraction` otherwise: the run grows; at `buckets` it fires (if not open).
//! - in between: the run ends; an open alert stays open. The gap between `below_fraction` and
//!   `resolve_fraction` is hysteresis: a half-covered camera hovering around 20 % would
//!   otherwise fire and resolve every other hour.
//!
//! Buckets that are not judged neither grow nor end a run, and never resolve an alert: a
//! covered camera stays an incident through the night's quiet hours.

use chrono::{DateTime, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// The start of the bucket holding `t`: `t` floored to a multiple of `bucket` since the Unix
/// epoch (millisecond precision). `bucket` must be positive.
pub fn bucket_start(t: DateTime<Utc>, bucket: TimeDelta) -> DateTime<Utc> {
    let b = bucket.num_milliseconds().max(1);
    let ms = t.timestamp_millis();
    DateTime::from_timestamp_millis(ms - ms.rem_euclid(b)).unwrap_or(t)
}

/// Bucket length, seasonal period and baseline window, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    bucket: TimeDelta,
    season: TimeDelta,
    baseline: TimeDelta,
}

impl Cadence {
    /// `bucket` a whole number of seconds, at least 1 s; `season` a whole multiple of `bucket`;
    /// `baseline` at least one `season` and at most 10,000 of them (each season is one sample
    /// read per device). The error names the key.
    pub fn new(bucket: TimeDelta, season: TimeDelta, baseline: TimeDelta) -> Result<Self, String> {
        let ms = bucket.num_milliseconds();
        if ms < 1000 || ms % 1000 != 0 {
            return Err(format!(
                "anomaly.bucket: expected a whole number of seconds, at least 1s, got {}ms",
                ms
            ));
        }
        let s = season.num_milliseconds();
        if s < ms || s % ms != 0 {
            return Err(format!(
                "anomaly.season: expected a whole multiple of anomaly.bucket ({}s), got {}ms",
                ms / 1000,
                s
            ));
        }
        if baseline < season {
            return Err(format!(
                "anomaly.baseline: expected at least anomaly.season ({}s), got {}s",
                s / 1000,
                baseline.num_seconds()
            ));
        }
        if baseline.num_milliseconds() / s > 10_000 {
            return Err(format!(
                "anomaly.baseline: at most 10000 seasons (or buckets), got {}",
                baseline.num_milliseconds() / s
            ));
        }
        Ok(Self {
            bucket,
            season,
            baseline,
        })
    }

    pub fn bucket(&self) -> TimeDelta {
        self.bucket
    }

    pub fn season(&self) -> TimeDelta {
        self.season
    }

    pub fn baseline(&self) -> TimeDelta {
        self.baseline
    }

    /// How many seasons the baseline window holds.
    pub fn seasons(&self) -> i64 {
        self.baseline.num_milliseconds() / self.season.num_milliseconds()
    }

    /// Whether seasons follow the calendar (a whole number of days) in the group's zone.
    pub fn calendar(&self) -> bool {
        self.season.num_milliseconds() % TimeDelta::days(1).num_milliseconds() == 0
    }

    /// The starts of the buckets the baseline of bucket `b` is made of, in zone `tz`, newest
    /// first, without duplicates (see the module header for the contract).
    pub fn samples(&self, b: DateTime<Utc>, tz: Tz) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(self.seasons() as usize);
        for k in 1..=self.seasons() {
            let back = self.season * k as i32;
            let s = if self.calendar() {
                let local: NaiveDateTime = b.with_timezone(&tz).naive_local() - back;
                match tz.from_local_datetime(&local) {
                    chrono::LocalResult::Single(t) => t.to_utc(),
                    chrono::LocalResult::Ambiguous(early, _) => early.to_utc(),
                    chrono::LocalResult::None => continue,
                }
            } else {
                b - back
            };
            let s = bucket_start(s, self.bucket);
            if s < b && !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

/// The median of `values` (the mean of the two middle ones for an even count); `None` when
/// empty.
pub fn median(values: &mut [i64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2] as f64
    } else {
        (values[n / 2 - 1] as f64 + values[n / 2] as f64) / 2.0
    })
}

/// The baseline of a bucket from its samples' sums: their median, or `None` with fewer than
/// `min_samples` of them.
pub fn baseline(samples: &mut [i64], min_samples: usize) -> Option<f64> {
    if samples.len() < min_samples.max(1) {
        return None;
    }
    median(samples)
}

/// The median of the sorted `ratios` with one element equal to `own` left out (the device
/// itself), or of all of them when `own` is `None`; `None` with fewer than `min_peers` left.
pub fn peer_ratio(sorted: &[f64], own: Option<f64>, min_peers: usize) -> Option<f64> {
    let skip = own.map(|v| sorted.partition_point(|x| *x < v));
    let skip = skip.filter(|&i| i < sorted.len() && sorted[i] == own.unwrap_or(f64::NAN));
    let n = sorted.len() - usize::from(skip.is_some());
    if n == 0 || n < min_peers {
        return None;
    }
    let at = |r: usize| match skip {
        Some(i) if r >= i => sorted[r + 1],
        _ => sorted[r],
    };
    Some(if n % 2 == 1 {
        at(n / 2)
    } else {
        (at(n / 2 - 1) + at(n / 2)) / 2.0
    })
}

/// Why a bucket of a device was not judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// It overlaps the group's quiet hours.
    Quiet,
    /// Fewer than `min_messages` messages.
    FewMessages,
    /// Fewer than `min_baseline_samples` earlier samples of its slot.
    NoBaseline,
    /// A baseline under `min_baseline` impressions.
    SmallBaseline,
}

/// One device's bucket, as the rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub messages: i64,
    pub impressions: i64,
    /// The bucket overlaps the group's quiet hours.
    pub quiet: bool,
    /// The baseline, if the slot has one ([`baseline`]).
    pub baseline: Option<f64>,
}

/// What to do with a device's alert after one judged bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Keep,
    Fire,
    Resolve,
}

/// A device's run after one judged bucket, and the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub run: u32,
    pub action: Action,
}

/// The thresholds (`[anomaly]`; defaults and reasons in the README).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub below_fraction: f64,
    pub buckets: u32,
    pub resolve_fraction: f64,
    pub group_normal_fraction: f64,
    pub min_messages: i64,
    pub min_baseline_samples: usize,
    pub min_baseline: f64,
    pub min_peers: usize,
}

impl Default for Rule {
    fn default() -> Self {
        Self {
            below_fraction: 0.2,
            buckets: 2,
            resolve_fraction: 0.5,
            group_normal_fraction: 0.5,
            min_messages: 3,
            min_baseline_samples: 2,
            min_baseline: 10.0,
            min_peers: 1,
        }
    }
}

impl Rule {
    /// Check the thresholds against each other; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let frac = |k: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(format!(
                    "anomaly.{k}: expected a fraction in (0, 1], got {v}"
                ))
            }
        };
        frac("below_fraction", self.below_fraction)?;
        frac("resolve_fraction", self.resolve_fraction)?;
        frac("group_normal_fraction", self.group_normal_fraction)?;
        if self.resolve_fraction < self.below_fraction {
            return Err(format!(
                "anomaly.resolve_fraction: expected at least anomaly.below_fraction ({}), got {}",
                self.below_fraction, self.resolve_fraction
            ));
        }
        if self.buckets == 0 {
            return Err("anomaly.buckets: expected at least 1".into());
        }
        if self.min_messages < 1 {
            return Err(format!(
                "anomaly.min_messages: expected at least 1, got {}",
                self.min_messages
            ));
        }
        if self.min_baseline_samples == 0 {
            return Err("anomaly.min_baseline_samples: expected at least 1".into());
        }
        if !(self.min_baseline.is_finite() && self.min_baseline > 0.0) {
            return Err(format!(
                "anomaly.min_baseline: expected a positive number of impressions, got {}",
                self.min_baseline
            ));
        }
        if self.min_peers == 0 {
            return Err("anomaly.min_peers: expected at least 1".into());
        }
        Ok(())
    }

    /// The bucket's ratio to its baseline, or why it is not judged.
    pub fn ratio(&self, o: &Observation) -> Result<f64, Skip> {
        if o.quiet {
            return Err(Skip::Quiet);
        }
        if o.messages < self.min_messages {
            return Err(Skip::FewMessages);
        }
        let b = o.baseline.ok_or(Skip::NoBaseline)?;
        if b < self.min_baseline {
            return Err(Skip::SmallBaseline);
        }
        Ok(o.impressions as f64 / b)
    }

    /// Whether a peer ratio (from [`peer_ratio`]; `None`: not enough peers) makes the group
    /// low in this bucket.
    pub fn group_low(&self, peers: Option<f64>) -> bool {
        peers.is_some_and(|p| p < self.group_normal_fraction)
    }

    /// The decision for one judged bucket of a device on a run of `run` low buckets, with or
    /// without an `open` alert.
    pub fn decide(&self, run: u32, open: bool, ratio: f64, group_low: bool) -> Verdict {
        if ratio >= self.resolve_fraction {
            let action = if open { Action::Resolve } else { Action::Keep };
            return Verdict { run: 0, action };
        }
        if ratio >= self.below_fraction {
            return Verdict {
                run: 0,
                action: Action::Keep,
            };
        }
        if group_low {
            return Verdict {
                run,
                action: Action::Keep,
            };
        }
        let run = run.saturating_add(1);
        let action = if run >= self.buckets && !open {
            Action::Fire
        } else {
            Action::Keep
        };
        Verdict { run, action }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn week() -> Cadence {
        Cadence::new(TimeDelta::hours(1), TimeDelta::days(7), TimeDelta::days(28)).unwrap()
    }

    #[test]
    fn buckets_are_epoch_aligned() {
        let h = TimeDelta::hours(1);
        assert_eq!(
            bucket_start(t("2026-11-27T10:59:59.999Z"), h),
            t("2026-11-27T10:00:00Z")
        );
        assert_eq!(
            bucket_start(t("2026-11-27T11:00:00Z"), h),
            t("2026-11-27T11:00:00Z")
        );
        assert_eq!(
            bucket_start(t("2026-11-27T11:00:07Z"), TimeDelta::seconds(5)),
            t("2026-11-27T11:00:05Z")
        );
        // before the epoch too (floor, not truncation toward zero)
        assert_eq!(
            bucket_start(t("1969-12-31T23:30:00Z"), h),
            t("1969-12-31T23:00:00Z")
        );
    }

    #[test]
    fn cadence_is_checked() {
        let h = TimeDelta::hours(1);
        assert!(Cadence::new(TimeDelta::milliseconds(500), h, h)
            .unwrap_err()
            .starts_with("anomaly.bucket"));
        assert!(Cadence::new(h, TimeDelta::minutes(90), TimeDelta::days(1))
            .unwrap_err()
            .starts_with("anomaly.season"));
        assert!(Cadence::new(h, TimeDelta::days(7), TimeDelta::days(6))
            .unwrap_err()
            .starts_with("anomaly.baseline"));
        assert!(Cadence::new(
            TimeDelta::seconds(1),
            TimeDelta::seconds(1),
            TimeDelta::days(1)
        )
        .unwrap_err()
        .starts_with("anomaly.baseline"));
        let c = Cadence::new(h, h, TimeDelta::hours(6)).unwrap();
        assert!(!c.calendar() && c.seasons() == 6);
        assert_eq!(week().seasons(), 4);
    }

    #[test]
    fn weekly_slots_in_utc_are_whole_weeks() {
        let b = t("2026-11-30T09:00:00Z");
        assert_eq!(
            week().samples(b, chrono_tz::UTC),
            vec![
                t("2026-11-23T09:00:00Z"),
                t("2026-11-16T09:00:00Z"),
                t("2026-11-09T09:00:00Z"),
                t("2026-11-02T09:00:00Z"),
            ]
        );
    }

    #[test]
    fn weekly_slots_follow_the_wall_clock_across_dst() {
        let ny = chrono_tz::America::New_York;
        // Monday 2026-11-09 09:00 EST (14:00 UTC); DST ended Sunday 2026-11-01.
        let b = t("2026-11-09T14:00:00Z");
        assert_eq!(
            week().samples(b, ny),
            vec![
                t("2026-11-02T14:00:00Z"), // EST
                t("2026-10-26T13:00:00Z"), // EDT: 169 h earlier... the same 09:00
                t("2026-10-19T13:00:00Z"),
                t("2026-10-12T13:00:00Z"),
            ]
        );
        // The week after spring forward (2026-03-08): 02:30 did not exist that Sunday.
        let b = ny
            .with_ymd_and_hms(2026, 3, 15, 2, 0, 0)
            .single()
            .unwrap()
            .to_utc();
        let s = week().samples(b, ny);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s
            .iter()
            .all(|x| x.with_timezone(&ny).format("%a %H:%M").to_string() == "Sun 02:00"));
        // The week after fall back (2026-11-01): 01:00 happened twice; the earlier (EDT) one.
        let b = ny
            .with_ymd_and_hms(2026, 11, 8, 1, 0, 0)
            .single()
            .unwrap()
            .to_utc();
        assert_eq!(week().samples(b, ny)[0], t("2026-11-01T05:00:00Z"));
        // Both 01:00 buckets of the 25-hour day have the same slot.
        let first = t("2026-11-01T05:00:00Z");
        let second = t("2026-11-01T06:00:00Z");
        assert_eq!(week().samples(first, ny), week().samples(second, ny));
    }

    #[test]
    fn without_seasonality_the_last_buckets() {
        let c = Cadence::new(
            TimeDelta::seconds(10),
            TimeDelta::seconds(10),
            TimeDelta::seconds(40),
        )
        .unwrap();
        let b = t("2026-11-30T09:00:00Z");
        assert_eq!(
            c.samples(b, chrono_tz::Asia::Tokyo),
            (1..=4)
                .map(|k| b - TimeDelta::seconds(10 * k))
                .collect::<Vec<_>>()
        );
        // a second-scale "week" is plain arithmetic too
        let c = Cadence::new(
            TimeDelta::seconds(1),
            TimeDelta::seconds(24),
            TimeDelta::seconds(96),
        )
        .unwrap();
        assert_eq!(
            c.samples(b, chrono_tz::America::New_York)[3],
            b - TimeDelta::seconds(96)
        );
    }

    #[test]
    fn medians_and_baselines() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [5]), Some(5.0));
        assert_eq!(median(&mut [9, 1, 5]), Some(5.0));
        assert_eq!(median(&mut [9, 1, 5, 7]), Some(6.0));
        assert_eq!(baseline(&mut [100], 2), None);
        assert_eq!(baseline(&mut [100, 0, 120], 2), Some(100.0));
    }

    #[test]
    fn peers_leave_the_device_out() {
        let r = [0.05, 0.9, 1.0, 1.1];
        assert_eq!(peer_ratio(&r, Some(0.05), 2), Some(1.0));
        assert_eq!(peer_ratio(&r, Some(1.0), 2), Some(0.9));
        assert!((peer_ratio(&r, None, 2).unwrap() - 0.95).abs() < 1e-12);
        assert_eq!(peer_ratio(&[0.05, 1.0], Some(0.05), 2), None);
        assert_eq!(peer_ratio(&[0.05], Some(0.05), 1), None);
        assert_eq!(peer_ratio(&[], None, 1), None);
    }

    #[test]
    fn not_judged_buckets() {
        let r = Rule::default();
        let o = |messages, quiet, baseline| Observation {
            messages,
            impressions: 0,
            quiet,
            baseline,
        };
        assert_eq!(r.ratio(&o(60, true, Some(100.0))), Err(Skip::Quiet));
        assert_eq!(r.ratio(&o(2, false, Some(100.0))), Err(Skip::FewMessages));
        assert_eq!(r.ratio(&o(60, false, None)), Err(Skip::NoBaseline));
        assert_eq!(r.ratio(&o(60, false, Some(4.0))), Err(Skip::SmallBaseline));
        assert_eq!(r.ratio(&o(60, false, Some(100.0))), Ok(0.0));
    }

    #[test]
    fn fires_after_the_run_resolves_with_hysteresis() {
        let r = Rule::default();
        let v = r.decide(0, false, 0.05, false);
        assert_eq!(
            v,
            Verdict {
                run: 1,
                action: Action::Keep
            }
        );
        let v = r.decide(v.run, false, 0.1, false);
        assert_eq!(
            v,
            Verdict {
                run: 2,
                action: Action::Fire
            }
        );
        // still low while open: keeps
        assert_eq!(r.decide(2, true, 0.0, false).action, Action::Keep);
        // in between: the alert stays open, the run ends
        assert_eq!(
            r.decide(3, true, 0.3, false),
            Verdict {
                run: 0,
                action: Action::Keep
            }
        );
        assert_eq!(r.decide(0, true, 0.6, false).action, Action::Resolve);
        assert_eq!(r.decide(0, false, 0.6, false).action, Action::Keep);
    }

    #[test]
    fn a_low_group_neither_grows_nor_ends_a_run() {
        let r = Rule::default();
        assert_eq!(
            r.decide(1, false, 0.0, true),
            Verdict {
                run: 1,
                action: Action::Keep
            }
        );
        assert!(r.group_low(Some(0.3)));
        assert!(!r.group_low(Some(0.8)));
        assert!(!r.group_low(None));
        // back above resolve while the group is low still resolves
        assert_eq!(r.decide(0, true, 0.9, true).action, Action::Resolve);
    }

    #[test]
    fn rule_validation_names_the_key() {
        let bad = |f: fn(&mut Rule)| {
            let mut r = Rule::default();
            f(&mut r);
            r.validate().unwrap_err()
        };
        assert!(bad(|r| r.below_fraction = 0.0).starts_with("anomaly.below_fraction"));
        assert!(bad(|r| r.resolve_fraction = 0.1).starts_with("anomaly.resolve_fraction"));
        assert!(bad(|r| r.group_normal_fraction = f64::NAN).starts_with("anomaly.group_normal"));
        assert!(bad(|r| r.buckets = 0).starts_with("anomaly.buckets"));
        assert!(bad(|r| r.min_messages = 0).starts_with("anomaly.min_messages"));
        assert!(bad(|r| r.min_baseline_samples = 0).starts_with("anomaly.min_baseline_samples"));
        assert!(bad(|r| r.min_baseline = 0.0).starts_with("anomaly.min_baseline"));
        assert!(bad(|r| r.min_peers = 0).starts_with("anomaly.min_peers"));
        Rule::default().validate().unwrap();
    }

    const ZONES: [Tz; 6] = [
        chrono_tz::UTC,
        chrono_tz::Europe::Berlin,
        chrono_tz::America::New_York,
        chrono_tz::Asia::Tokyo,
        chrono_tz::Australia::Sydney,
        chrono_tz::America::Santiago,
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Every sample is an earlier bucket start of the same wall-clock hour of the week,
        /// and at most one season (a DST gap in the window) is missing.
        #[test]
        fn weekly_samples_are_the_same_local_slot(
            hours in 0i64..(24 * 365 * 10),
            zone in 0usize..ZONES.len(),
        ) {
            let tz = ZONES[zone];
            let b = t("2020-01-01T00:00:00Z") + TimeDelta::hours(hours);
            let c = week();
            let s = c.samples(b, tz);
            prop_assert!(s.len() as i64 >= c.seasons() - 1, "{s:?}");
            prop_assert!(s.len() as i64 <= c.seasons());
            let slot = |x: DateTime<Utc>| x.with_timezone(&tz).format("%a %H:%M").to_string();
            for (k, x) in s.iter().enumerate() {
                prop_assert_eq!(bucket_start(*x, c.bucket()), *x);
                prop_assert!(*x < b);
                prop_assert!(*x >= b - c.baseline() - TimeDelta::hours(2));
                prop_assert_eq!(slot(*x), slot(b));
                if k > 0 {
                    prop_assert!(s[k - 1] > *x);
                }
            }
        }

        /// Plain arithmetic for seasons that are not whole days, in any zone.
        #[test]
        fn sub_day_seasons_are_utc_arithmetic(
            secs in 0i64..(86_400 * 365),
            bucket in 1i64..120,
            per_season in 1i64..30,
            seasons in 1i64..10,
            zone in 0usize..ZONES.len(),
        ) {
            let bucket = TimeDelta::seconds(bucket);
            let season = bucket * per_season as i32;
            prop_assume!(season.num_seconds() % 86_400 != 0);
            let c = Cadence::new(bucket, season, season * seasons as i32).unwrap();
            let b = bucket_start(t("2026-01-01T00:00:00Z") + TimeDelta::seconds(secs), bucket);
            let s = c.samples(b, ZONES[zone]);
            let expected: Vec<_> = (1..=seasons).map(|k| b - season * k as i32).collect();
            prop_assert_eq!(s, expected);
        }

        /// The median lies between the extremes, splits the values in halves, and one outlier
        /// cannot move it past its neighbours.
        #[test]
        fn median_is_robust(v in prop::collection::vec(0i64..10_000, 1..40), big in 0i64..i64::MAX / 4) {
            let mut v = v;
            let m = median(&mut v.clone()).unwrap();
            let (lo, hi) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
            prop_assert!(lo as f64 <= m && m <= hi as f64);
            let below = v.iter().filter(|x| (**x as f64) <= m).count();
            let above = v.iter().filter(|x| (**x as f64) >= m).count();
            prop_assert!(2 * below >= v.len() && 2 * above >= v.len());
            if v.len() >= 3 {
                v.sort_unstable();
                let n = v.len();
                let second = v[n - 2];
                v[n - 1] = v[n - 1].max(big);
                let m2 = median(&mut v).unwrap();
                prop_assert!(m2 <= second as f64);
                prop_assert_eq!(m, m2);
            }
        }

        /// Leaving one ratio out is the median of the rest.
        #[test]
        fn peer_ratio_is_the_median_of_the_others(
            v in prop::collection::vec(0u32..50, 1..30),
            pick in any::<prop::sample::Index>(),
        ) {
            let mut sorted: Vec<f64> = v.iter().map(|x| f64::from(*x) / 10.0).collect();
            sorted.sort_by(f64::total_cmp);
            let own = sorted[pick.index(sorted.len())];
            let mut rest = sorted.clone();
            let i = rest.iter().position(|x| *x == own).unwrap();
            rest.remove(i);
            let expected = if rest.is_empty() {
                None
            } else {
                let n = rest.len();
                Some(if n % 2 == 1 { rest[n / 2] } else { (rest[n / 2 - 1] + rest[n / 2]) / 2.0 })
            };
            prop_assert_eq!(peer_ratio(&sorted, Some(own), 1), expected);
        }
    }
}
