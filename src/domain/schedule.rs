//! Quiet hours: daily local-time windows in a group's IANA time zone, turned into UTC instants.
//!
//! The heartbeat clock (DESIGN.md §2a) stops evaluating a group while it is quiet, and the end of
//! quiet hours is a restart point. Operators write quiet hours in the building's wall-clock time
//! (`00:30-05:30` in `Asia/Tokyo`), but every deadline runs on the UTC arrival clock. This module
//! owns the one translation between the two, DST corner cases included, so that nothing else
//! has to reason about local time. It is pure: no I/O and no clock; `now` is always passed in.
//!
//! # Semantics
//! - A window `[start, end)` recurs every local day. `end <= start` means it crosses midnight
//!   and ends on the next local day; `24:00` is accepted as an end and stored as `00:00`.
//! - Each day's run of each window becomes one UTC interval. Overlapping or touching intervals
//!   merge into one *quiet period*, so `22:00-24:00, 00:00-06:00` is one night, not two, and the
//!   heartbeat clock restarts once, at 06:00.
//! - Windows that together cover the whole day are rejected. A group that is never evaluated
//!   should be retired, not hidden, and an endless quiet period has no end to restart from.
//!
//! # DST
//! Each boundary maps to UTC on its own local date:
//! - **Gap** (a local time that does not exist, e.g. 02:30 on the spring-forward day in New
//!   York): the first instant after the gap (03:00 EDT = 07:00 UTC). From that instant on, the
//!   wall clock reads the boundary or later. The rule is the same for starts and ends.
//! - **Overlap** (a local time that happens twice, e.g. 01:30 on the fall-back day in New York):
//!   a *start* maps to the earlier instant and an *end* to the later one. We would rather be
//!   quiet a little longer than shorter: a false alarm at 01:30 the second time round is worse
//!   than a late one.
//!
//! Consequences, all tested below:
//! - On a DST day a window can be up to one clock shift (1 h in New York and Berlin) shorter or
//!   longer. In New York, `00:30-05:30` lasts 4 h on the spring-forward day and 6 h on the
//!   fall-back day.
//! - A window that lies entirely inside a gap (`02:10-02:40` in New York) does not happen that
//!   day, because the wall clock never shows it.
//! - Whenever the local time of `now` is inside a window, `quiet_until(now)` is `Some`. Outside
//!   overlaps, the converse holds too (both are property-tested). During an overlap, an instant
//!   whose local time is outside every window can still be quiet. With `00:30-01:30` in New
//!   York, 01:45 EDT falls between the window's start and its later end at 01:30 EST.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How far `last_end` looks back and `next_start` looks ahead. Every window recurs daily, so
/// a day plus DST slack would do. 48 h also covers a day whose window falls into a DST gap.
const HORIZON: TimeDelta = TimeDelta::hours(48);

/// The local days on either side of `now`'s local date whose windows are expanded. The range
/// has to cover the horizon plus one whole merged period on each side (over a day, and up to
/// about two when a DST gap swallows the only unquiet stretch of a day). Otherwise a period at
/// the edge could be cut short. Four days is ample for any UTC offset (−12 h…+14 h).
const DAYS_AROUND: i64 = 4;

/// The syntax shown in every parse error.
const EXAMPLE: &str = "00:30-05:30";

/// One daily local-time window [start, end); end < start means it crosses midnight.
///
/// An `end` of `00:00` is midnight at the end of the day (written `24:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Window {
    /// Whether the window runs into the next local day. This is always true for an end of
    /// `24:00`, stored as `00:00`.
    fn crosses_midnight(&self) -> bool {
        self.end <= self.start
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end_hour = if self.end == NaiveTime::MIN {
            24
        } else {
            self.end.hour()
        };
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start.hour(),
            self.start.minute(),
            end_hour,
            self.end.minute()
        )
    }
}

/// A group's quiet hours: zero or more daily windows, read in the group's time zone.
///
/// Built only by parsing. The windows are sorted and deduplicated, so equal schedules compare
/// equal and print the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuietHours {
    windows: Vec<Window>,
}

/// Which of two instants an ambiguous local time means (see the module header).
#[derive(Debug, Clone, Copy)]
enum Boundary {
    Start,
    End,
}

/// A merged quiet period in UTC, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Period {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl QuietHours {
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// If `now` is inside a quiet window in `tz`, the UTC instant at which that window ends
    /// (for overlapping/adjacent windows: the end of the merged quiet period).
    pub fn quiet_until(&self, tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.periods(tz, now)
            .into_iter()
            .find(|p| p.start <= now && now < p.end)
            .map(|p| p.end)
    }

    /// The most recent end of a quiet period at or before `now` (look back at most 48 h), in UTC.
    /// The detector uses it as a restart point: the heartbeat clock restarts when quiet hours end.
    pub fn last_end(&self, tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Periods are disjoint and sorted, so their ends are sorted too.
        self.periods(tz, now)
            .into_iter()
            .rev()
            .map(|p| p.end)
            .find(|&end| end <= now)
            .filter(|&end| end >= now - HORIZON)
    }

    /// The next start of a quiet period strictly after `now` (look ahead at most 48 h), in UTC.
    pub fn next_start(&self, tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.periods(tz, now)
            .into_iter()
            .map(|p| p.start)
            .find(|&start| start > now)
            .filter(|&start| start <= now + HORIZON)
    }

    /// The merged quiet periods of the local days around `now`, in order.
    ///
    /// This recomputes the periods on every call: two time-zone lookups per window and day, 18
    /// per window in all, plus a rare bisection on a DST day. That costs microseconds. If
    /// profiling ever says otherwise, cache by (zone, local date).
    fn periods(&self, tz: Tz, now: DateTime<Utc>) -> Vec<Period> {
        if self.windows.is_empty() {
            return Vec::new();
        }
        let today = now.with_timezone(&tz).date_naive();
        let days = 2 * DAYS_AROUND as usize + 1;
        let mut runs = Vec::with_capacity(days * self.windows.len());
        for offset in -DAYS_AROUND..=DAYS_AROUND {
            let day = today + TimeDelta::days(offset);
            for w in &self.windows {
                let end_day = if w.crosses_midnight() {
                    day + TimeDelta::days(1)
                } else {
                    day
                };
                let start = to_utc(tz, day.and_time(w.start), Boundary::Start);
                let end = to_utc(tz, end_day.and_time(w.end), Boundary::End);
                // If the whole window lies in a DST gap, both ends map to the end of the gap.
                // The wall clock never shows the window that day, so it does not happen.
                if start < end {
                    runs.push(Period { start, end });
                }
            }
        }
        runs.sort_unstable();
        let mut merged: Vec<Period> = Vec::with_capacity(runs.len());
        for run in runs {
            match merged.last_mut() {
                // Touching counts as overlapping: a period that ends exactly when the next begins
                // is one quiet stretch, and the heartbeat clock must not restart in between.
                Some(last) if run.start <= last.end => last.end = last.end.max(run.end),
                _ => merged.push(run),
            }
        }
        merged
    }
}

/// Maps a local date-time in `tz` to UTC by the DST rules in the module header.
fn to_utc(tz: Tz, local: NaiveDateTime, boundary: Boundary) -> DateTime<Utc> {
    let mapped = tz.from_local_datetime(&local);
    let instant = match boundary {
        Boundary::Start => mapped.earliest(),
        Boundary::End => mapped.latest(),
    };
    match instant {
        Some(t) => t.with_timezone(&Utc),
        None => end_of_gap(tz, local),
    }
}

/// For a `local` time that falls in a DST gap, the first instant at which the wall clock in
/// `tz` reads `local` or later: the transition that skips over it.
///
/// chrono only reports that such a time does not exist, so we bisect for the transition. This
/// works for gaps of any size, such as the 30 min of `Australia/Lord_Howe` or the whole day
/// `Pacific/Apia` skipped in 2011.
fn end_of_gap(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let reads_at_least = |t: DateTime<Utc>| t.with_timezone(&tz).naive_local() >= local;
    // Real UTC offsets lie within −12 h…+14 h, so 36 h either side of `local` read as UTC
    // brackets the answer: the wall clock reads earlier than `local` at `lo` and later at `hi`.
    // In between, the clock only runs forward, except where an overlap sets it back. No real
    // zone sets it back across a time it skipped within a day and a half. So the predicate
    // flips once, at the transition.
    let mut lo = local.and_utc() - TimeDelta::hours(36);
    let mut hi = local.and_utc() + TimeDelta::hours(36);
    // Transitions fall on whole seconds. Bisecting over whole seconds therefore lands on one
    // exactly.
    while hi - lo > TimeDelta::seconds(1) {
        let mid = lo + TimeDelta::seconds((hi - lo).num_seconds() / 2);
        if reads_at_least(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Parses `HH:MM` (24-hour, two digits each). When `is_end` is set, `24:00` is also accepted
/// and means midnight at the end of the day.
fn parse_hhmm(text: &str, is_end: bool) -> Option<NaiveTime> {
    let b = text.as_bytes();
    let well_formed =
        b.len() == 5 && b[2] == b':' && [0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit());
    if !well_formed {
        return None;
    }
    let two = |i: usize| u32::from(b[i] - b'0') * 10 + u32::from(b[i + 1] - b'0');
    match (two(0), two(3)) {
        (24, 0) if is_end => Some(NaiveTime::MIN),
        (hour, minute) => NaiveTime::from_hms_opt(hour, minute, 0),
    }
}

/// Parses one `HH:MM-HH:MM` window. If it fails, returns what was expected, for the message.
fn parse_window(text: &str) -> Result<Window, String> {
    let syntax = || format!("windows like \"{EXAMPLE}\"");
    let (start, end) = text.split_once('-').ok_or_else(syntax)?;
    let (start_text, end_text) = (start.trim(), end.trim());
    let start = parse_hhmm(start_text, false).ok_or_else(syntax)?;
    let end = parse_hhmm(end_text, true).ok_or_else(syntax)?;
    // `00:00-24:00` is stored as 00:00-00:00 but is a whole day, refused by the caller with
    // its own message; an equal start and end as written could mean "never" or "all day".
    if start == end && start_text == end_text {
        return Err(format!(
            "windows like \"{EXAMPLE}\" with an end different from the start"
        ));
    }
    Ok(Window { start, end })
}

/// Whether the windows leave no minute of the local day uncovered.
fn covers_whole_day(windows: &[Window]) -> bool {
    const DAY: u32 = 24 * 60;
    let minutes = |t: NaiveTime| t.hour() * 60 + t.minute();
    // Split windows that cross midnight into two same-day spans, then sweep from midnight.
    let mut spans: Vec<(u32, u32)> = Vec::with_capacity(2 * windows.len());
    for w in windows {
        let (start, end) = (minutes(w.start), minutes(w.end));
        if w.crosses_midnight() {
            spans.push((start, DAY));
            spans.push((0, end));
        } else {
            spans.push((start, end));
        }
    }
    spans.sort_unstable();
    let mut covered = 0;
    for (start, end) in spans {
        if start > covered {
            return false;
        }
        covered = covered.max(end);
    }
    covered >= DAY
}

impl FromStr for QuietHours {
    type Err = String;

    /// Accepts `00:30-05:30`, `22:00-06:00`, several windows separated by commas, and `""` or
    /// `none` for no windows.
    fn from_str(input: &str) -> Result<Self, String> {
        let trimmed = input.trim();
        if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("none") {
            return Ok(Self::default());
        }
        let has_several = trimmed.contains(',');
        let mut windows = Vec::new();
        for piece in trimmed.split(',').map(str::trim) {
            let window = parse_window(piece).map_err(|expected| {
                // Name the bad piece. If there are several, also quote the whole value, so it
                // can be found in the config.
                let context = if has_several {
                    format!(" in \"{trimmed}\"")
                } else {
                    String::new()
                };
                format!("expected {expected}, got \"{piece}\"{context}")
            })?;
            windows.push(window);
        }
        if covers_whole_day(&windows) {
            return Err(format!(
                "expected windows like \"{EXAMPLE}\" that leave part of the day unquiet, \
                 got \"{trimmed}\" (quiet all day)"
            ));
        }
        windows.sort_unstable_by_key(|w| (w.start, w.end));
        windows.dedup();
        Ok(Self { windows })
    }
}

impl fmt::Display for QuietHours {
    /// The canonical form, e.g. `12:00-12:30, 22:00-06:00`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.windows.is_empty() {
            return f.write_str("none");
        }
        for (i, w) in self.windows.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{w}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for QuietHours {
    /// Config holds quiet hours as a string (`quiet_hours = "00:30-05:30"`), so invalid values
    /// are rejected at load time, with the parse error as the message.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for QuietHours {
    /// The canonical string form. Serializing and then deserializing gives back the same value.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use chrono::MappedLocalTime;
    use proptest::prelude::*;

    use super::*;

    const NY: Tz = Tz::America__New_York;
    const BERLIN: Tz = Tz::Europe__Berlin;
    const TOKYO: Tz = Tz::Asia__Tokyo;
    const UTC: Tz = Tz::UTC;

    /// A UTC instant written `2025-06-09 15:30` or `2025-06-09 15:30:59`.
    fn utc(text: &str) -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
            .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M"))
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .and_utc()
    }

    fn qh(text: &str) -> QuietHours {
        text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn hm(hour: u32, minute: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(hour, minute, 0).unwrap()
    }

    /// Checks rows of `(now, quiet_until, last_end, next_start)`, all UTC, `-` for `None`.
    fn check(q: &QuietHours, tz: Tz, rows: &[(&str, &str, &str, &str)]) {
        let opt = |text: &str| (text != "-").then(|| utc(text));
        for &(now, until, last, next) in rows {
            let at = utc(now);
            assert_eq!(
                (
                    q.quiet_until(tz, at),
                    q.last_end(tz, at),
                    q.next_start(tz, at)
                ),
                (opt(until), opt(last), opt(next)),
                "\"{q}\" in {tz} at {now}: (quiet_until, last_end, next_start)"
            );
        }
    }

    /// The first quiet period starting after `from`: its UTC start and end, and its length in
    /// minutes.
    fn period_after(q: &QuietHours, tz: Tz, from: &str) -> (DateTime<Utc>, DateTime<Utc>, i64) {
        let start = q.next_start(tz, utc(from)).expect("a start");
        let end = q.quiet_until(tz, start).expect("quiet at its start");
        (start, end, (end - start).num_minutes())
    }

    fn assert_period(q: &QuietHours, tz: Tz, from: &str, start: &str, end: &str, minutes: i64) {
        assert_eq!(
            period_after(q, tz, from),
            (utc(start), utc(end), minutes),
            "\"{q}\" in {tz}, first period after {from}"
        );
    }

    fn length_after(q: &QuietHours, tz: Tz, from: &str) -> i64 {
        period_after(q, tz, from).2
    }

    // ---------------------------------------------------------------- parsing

    #[test]
    fn parses_good_strings() {
        let q = qh("00:30-05:30");
        assert_eq!(
            q.windows,
            [Window {
                start: hm(0, 30),
                end: hm(5, 30)
            }]
        );
        assert_eq!(q.to_string(), "00:30-05:30");

        // Whitespace, several windows, any order; the canonical form is sorted.
        let q = qh("  22:00 - 06:00 ,12:00-12:30 ");
        let lunch = Window {
            start: hm(12, 0),
            end: hm(12, 30),
        };
        let night = Window {
            start: hm(22, 0),
            end: hm(6, 0),
        };
        assert_eq!(q.windows, [lunch, night]);
        assert_eq!(q.to_string(), "12:00-12:30, 22:00-06:00");
        assert_eq!(q, qh("12:00-12:30, 22:00-06:00"));

        // 24:00 is midnight at the end of the day, the same as 00:00 as an end.
        assert_eq!(qh("22:00-24:00"), qh("22:00-00:00"));
        assert_eq!(qh("22:00-00:00").to_string(), "22:00-24:00");
        assert_eq!(qh("00:00-23:59").to_string(), "00:00-23:59");

        // Duplicates collapse; overlapping windows are kept (they merge when evaluated).
        assert_eq!(qh("01:00-02:00, 01:00-02:00").to_string(), "01:00-02:00");
        assert_eq!(
            qh("01:00-03:00, 02:00-04:00").to_string(),
            "01:00-03:00, 02:00-04:00"
        );

        for empty in ["", "   ", "none", "None", " NONE "] {
            let q = qh(empty);
            assert!(q.is_empty(), "{empty:?}");
            assert_eq!(q, QuietHours::default());
            assert_eq!(q.to_string(), "none");
        }
        assert!(!qh("00:30-05:30").is_empty());
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "none",
            "00:30-05:30",
            "22:00-24:00",
            "12:00-12:30, 22:00-06:00",
        ] {
            let q = qh(text);
            assert_eq!(q.to_string(), text);
            assert_eq!(qh(&q.to_string()), q);
        }
    }

    #[test]
    fn rejects_bad_strings_saying_what_was_expected() {
        let err = |text: &str| text.parse::<QuietHours>().unwrap_err();

        assert_eq!(
            err("25:00-03:00"),
            r#"expected windows like "00:30-05:30", got "25:00-03:00""#
        );
        for bad in [
            "24:00-03:00", // 24:00 only as an end
            "24:30-03:00",
            "00:30-24:01",
            "00:60-01:00",
            "0:30-05:30", // two digits each
            "00:30-5:30",
            "0030-0530",
            "00:30",
            "00:30-",
            "-05:30",
            "00:30-05:30-06:00",
            "00:30–05:30", // en dash
            "00:30:00-05:30:00",
            "+1:30-05:30",
            "half past midnight to dawn",
        ] {
            assert_eq!(
                err(bad),
                format!(r#"expected windows like "00:30-05:30", got "{bad}""#)
            );
        }

        // In a list, the bad piece is named and the whole value quoted.
        assert_eq!(
            err("22:00-06:00, 12:00-12:3"),
            r#"expected windows like "00:30-05:30", got "12:00-12:3" in "22:00-06:00, 12:00-12:3""#
        );
        assert_eq!(
            err("22:00-06:00,"),
            r#"expected windows like "00:30-05:30", got "" in "22:00-06:00,""#
        );

        assert_eq!(
            err("05:00-05:00"),
            "expected windows like \"00:30-05:30\" with an end different from the start, \
             got \"05:00-05:00\""
        );
        assert!(err("00:00-00:00").contains("end different from the start"));

        for all_day in [
            "00:00-24:00",
            "00:00-12:00, 12:00-24:00",
            "12:00-06:00, 05:00-13:00",
        ] {
            let e = err(all_day);
            assert!(
                e.contains("leave part of the day unquiet"),
                "{all_day}: {e}"
            );
            assert!(e.contains(all_day), "{e}");
        }
        // One minute left unquiet is enough.
        assert!("00:00-12:00, 12:01-24:00".parse::<QuietHours>().is_ok());
    }

    #[derive(Debug, Deserialize, Serialize)]
    struct GroupConfig {
        #[serde(default)]
        quiet_hours: QuietHours,
    }

    #[test]
    fn deserializes_from_config_strings() {
        let g: GroupConfig = toml::from_str(r#"quiet_hours = "22:00-06:00, 12:00-12:30""#).unwrap();
        assert_eq!(g.quiet_hours, qh("22:00-06:00, 12:00-12:30"));
        let g: GroupConfig = toml::from_str("").unwrap();
        assert!(g.quiet_hours.is_empty());

        let e = toml::from_str::<GroupConfig>(r#"quiet_hours = "25:00-03:00""#).unwrap_err();
        let expected = r#"expected windows like "00:30-05:30", got "25:00-03:00""#;
        assert!(e.to_string().contains(expected), "{e}");
        assert!(toml::from_str::<GroupConfig>("quiet_hours = 5").is_err());

        let g = GroupConfig {
            quiet_hours: qh("22:00-24:00"),
        };
        assert_eq!(
            toml::to_string(&g).unwrap().trim(),
            r#"quiet_hours = "22:00-24:00""#
        );
    }

    // ---------------------------------------------------------------- plain zones

    #[test]
    fn no_windows_is_never_quiet() {
        check(
            &QuietHours::default(),
            TOKYO,
            &[("2025-06-09 18:00", "-", "-", "-")],
        );
    }

    #[test]
    fn tokyo_window_after_midnight() {
        // 00:30-05:30 JST on 2025-06-10 is 2025-06-09 15:30Z to 20:30Z. The rows are at 00:00,
        // 00:29:59, 00:30, 03:00, 05:29:59, 05:30 and 12:00 JST.
        #[rustfmt::skip]
        check(&qh("00:30-05:30"), TOKYO, &[
            // now                 quiet_until         last_end            next_start
            ("2025-06-09 15:00",    "-",                "2025-06-08 20:30", "2025-06-09 15:30"),
            ("2025-06-09 15:29:59", "-",                "2025-06-08 20:30", "2025-06-09 15:30"),
            ("2025-06-09 15:30",    "2025-06-09 20:30", "2025-06-08 20:30", "2025-06-10 15:30"),
            ("2025-06-09 18:00",    "2025-06-09 20:30", "2025-06-08 20:30", "2025-06-10 15:30"),
            ("2025-06-09 20:29:59", "2025-06-09 20:30", "2025-06-08 20:30", "2025-06-10 15:30"),
            ("2025-06-09 20:30",    "-",                "2025-06-09 20:30", "2025-06-10 15:30"),
            ("2025-06-10 03:00",    "-",                "2025-06-09 20:30", "2025-06-10 15:30"),
        ]);
    }

    #[test]
    fn tokyo_window_across_midnight() {
        // 22:00 JST 2025-06-10 to 06:00 JST 2025-06-11 is 2025-06-10 13:00Z to 21:00Z. The rows
        // are at 21:00, 22:00, 23:59:59, 00:00, 05:59:59, 06:00 and 10:00 JST.
        #[rustfmt::skip]
        check(&qh("22:00-06:00"), TOKYO, &[
            // now                 quiet_until         last_end            next_start
            ("2025-06-10 12:00",    "-",                "2025-06-09 21:00", "2025-06-10 13:00"),
            ("2025-06-10 13:00",    "2025-06-10 21:00", "2025-06-09 21:00", "2025-06-11 13:00"),
            ("2025-06-10 14:59:59", "2025-06-10 21:00", "2025-06-09 21:00", "2025-06-11 13:00"),
            ("2025-06-10 15:00",    "2025-06-10 21:00", "2025-06-09 21:00", "2025-06-11 13:00"),
            ("2025-06-10 20:59:59", "2025-06-10 21:00", "2025-06-09 21:00", "2025-06-11 13:00"),
            ("2025-06-10 21:00",    "-",                "2025-06-10 21:00", "2025-06-11 13:00"),
            ("2025-06-11 01:00",    "-",                "2025-06-10 21:00", "2025-06-11 13:00"),
        ]);
        // The zone really is applied: the same window read in UTC.
        #[rustfmt::skip]
        check(&qh("22:00-06:00"), UTC, &[
            ("2025-06-10 23:00",    "2025-06-11 06:00", "2025-06-10 06:00", "2025-06-11 22:00"),
        ]);
    }

    #[test]
    fn several_windows_are_separate_periods() {
        #[rustfmt::skip]
        check(&qh("22:00-06:00, 12:00-12:30"), UTC, &[
            ("2025-06-10 09:00",    "-",                "2025-06-10 06:00", "2025-06-10 12:00"),
            ("2025-06-10 12:10",    "2025-06-10 12:30", "2025-06-10 06:00", "2025-06-10 22:00"),
            ("2025-06-10 15:00",    "-",                "2025-06-10 12:30", "2025-06-10 22:00"),
            ("2025-06-10 23:00",    "2025-06-11 06:00", "2025-06-10 12:30", "2025-06-11 12:00"),
        ]);
    }

    #[test]
    fn overlapping_and_adjacent_windows_merge() {
        // Overlapping: one period 01:00-04:00; 03:00 is not an end, nor 02:00 a start.
        #[rustfmt::skip]
        check(&qh("01:00-03:00, 02:00-04:00"), UTC, &[
            ("2025-06-10 01:30",    "2025-06-10 04:00", "2025-06-09 04:00", "2025-06-11 01:00"),
            ("2025-06-10 03:30",    "2025-06-10 04:00", "2025-06-09 04:00", "2025-06-11 01:00"),
        ]);
        // Adjacent: one period, so the heartbeat clock does not restart at 02:00.
        #[rustfmt::skip]
        check(&qh("01:00-02:00, 02:00-03:00"), UTC, &[
            ("2025-06-10 01:30",    "2025-06-10 03:00", "2025-06-09 03:00", "2025-06-11 01:00"),
            ("2025-06-10 02:00",    "2025-06-10 03:00", "2025-06-09 03:00", "2025-06-11 01:00"),
            ("2025-06-10 02:30",    "2025-06-10 03:00", "2025-06-09 03:00", "2025-06-11 01:00"),
        ]);
        // Contained.
        #[rustfmt::skip]
        check(&qh("01:00-05:00, 02:00-03:00"), UTC, &[
            ("2025-06-10 02:30",    "2025-06-10 05:00", "2025-06-09 05:00", "2025-06-11 01:00"),
        ]);
        // Across midnight, written as two windows: one night, 22:00-06:00 JST.
        #[rustfmt::skip]
        check(&qh("22:00-24:00, 00:00-06:00"), TOKYO, &[
            ("2025-06-10 14:00",    "2025-06-10 21:00", "2025-06-09 21:00", "2025-06-11 13:00"),
            ("2025-06-10 15:00",    "2025-06-10 21:00", "2025-06-09 21:00", "2025-06-11 13:00"),
        ]);
    }

    // ---------------------------------------------------------------- DST: New York
    //
    // 2025-03-09: at 07:00Z the clock jumps from 02:00 EST to 03:00 EDT (02:00-03:00 missing).
    // 2025-11-02: at 06:00Z the clock falls back from 02:00 EDT to 01:00 EST (01:00-02:00
    // twice: first 05:00Z-06:00Z, then 06:00Z-07:00Z).

    #[test]
    fn new_york_spring_forward() {
        let before = "2025-03-08 12:00";

        // Contains the gap: 00:30 EST = 05:30Z to 05:30 EDT = 09:30Z, 4 h instead of 5.
        let q = qh("00:30-05:30");
        assert_period(
            &q,
            NY,
            before,
            "2025-03-09 05:30",
            "2025-03-09 09:30",
            4 * 60,
        );
        assert_eq!(
            length_after(&q, NY, "2025-03-07 12:00"),
            5 * 60,
            "the day before is normal"
        );
        assert_eq!(
            length_after(&q, NY, "2025-03-09 12:00"),
            5 * 60,
            "the day after is normal"
        );
        #[rustfmt::skip]
        check(&q, NY, &[
            ("2025-03-09 06:59:59", "2025-03-09 09:30", "2025-03-08 10:30", "2025-03-10 04:30"),
            ("2025-03-09 07:00",    "2025-03-09 09:30", "2025-03-08 10:30", "2025-03-10 04:30"),
            ("2025-03-09 09:30",    "-",                "2025-03-09 09:30", "2025-03-10 04:30"),
        ]);

        // Starts in the gap: 02:30 becomes 03:00 EDT = 07:00Z. 2.5 h instead of 3.
        let q = qh("02:30-05:30");
        assert_period(&q, NY, before, "2025-03-09 07:00", "2025-03-09 09:30", 150);
        #[rustfmt::skip]
        check(&q, NY, &[
            ("2025-03-09 06:59:59", "-",                "2025-03-08 10:30", "2025-03-09 07:00"),
            ("2025-03-09 07:00",    "2025-03-09 09:30", "2025-03-08 10:30", "2025-03-10 06:30"),
        ]);

        // Ends in the gap: 00:30 EST = 05:30Z to 03:00 EDT = 07:00Z. 1.5 h instead of 2.
        let q = qh("00:30-02:30");
        assert_period(&q, NY, before, "2025-03-09 05:30", "2025-03-09 07:00", 90);
        #[rustfmt::skip]
        check(&q, NY, &[
            ("2025-03-09 06:59:59", "2025-03-09 07:00", "2025-03-08 07:30", "2025-03-10 04:30"),
            ("2025-03-09 07:00",    "-",                "2025-03-09 07:00", "2025-03-10 04:30"),
        ]);

        // Entirely in the gap: no quiet that day; the next run is the day after.
        let q = qh("02:10-02:40");
        assert_period(&q, NY, before, "2025-03-10 06:10", "2025-03-10 06:40", 30);
        #[rustfmt::skip]
        check(&q, NY, &[
            ("2025-03-09 07:00",    "-",                "2025-03-08 07:40", "2025-03-10 06:10"),
        ]);

        // Across midnight over the gap: 22:00 EST = 03:00Z to 06:00 EDT = 10:00Z, 7 h not 8.
        let q = qh("22:00-06:00");
        assert_period(
            &q,
            NY,
            before,
            "2025-03-09 03:00",
            "2025-03-09 10:00",
            7 * 60,
        );
    }

    #[test]
    fn new_york_fall_back() {
        let before = "2025-11-01 12:00";

        // Contains the overlap: 00:30 EDT = 04:30Z to 05:30 EST = 10:30Z, 6 h instead of 5.
        let q = qh("00:30-05:30");
        assert_period(
            &q,
            NY,
            before,
            "2025-11-02 04:30",
            "2025-11-02 10:30",
            6 * 60,
        );
        assert_eq!(
            length_after(&q, NY, "2025-10-31 12:00"),
            5 * 60,
            "the day before is normal"
        );
        assert_eq!(
            length_after(&q, NY, "2025-11-02 12:00"),
            5 * 60,
            "the day after is normal"
        );

        // Starts in the overlap: the first 01:30 (EDT, 05:30Z) to 05:30 EST = 10:30Z, 5 h not
        // 4. The second 01:30 (EST, 06:30Z) is inside the period and starts nothing. The rows
        // are at 01:29:59 EDT, 01:30 EDT, 01:15 EST and 01:30 EST.
        let q = qh("01:30-05:30");
        assert_period(
            &q,
            NY,
            before,
            "2025-11-02 05:30",
            "2025-11-02 10:30",
            5 * 60,
        );
        #[rustfmt::skip]
        check(&q, NY, &[
            ("2025-11-02 05:29:59", "-",                "2025-11-01 09:30", "2025-11-02 05:30"),
            ("2025-11-02 05:30",    "2025-11-02 10:30", "2025-11-01 09:30", "2025-11-03 06:30"),
            ("2025-11-02 06:15",    "2025-11-02 10:30", "2025-11-01 09:30", "2025-11-03 06:30"),
            ("2025-11-02 06:30",    "2025-11-02 10:30", "2025-11-01 09:30", "2025-11-03 06:30"),
        ]);

        // Ends in the overlap: 00:30 EDT = 04:30Z to the second 01:30 (EST, 06:30Z), 2 h not 1:
        // quiet through the first 01:00-02:00 and the second 01:00-01:30. The rows are at
        // 01:45 EDT, 01:15 EST and 01:30 EST.
        let q = qh("00:30-01:30");
        assert_period(
            &q,
            NY,
            before,
            "2025-11-02 04:30",
            "2025-11-02 06:30",
            2 * 60,
        );
        #[rustfmt::skip]
        check(&q, NY, &[
            ("2025-11-02 05:45",    "2025-11-02 06:30", "2025-11-01 05:30", "2025-11-03 05:30"),
            ("2025-11-02 06:15",    "2025-11-02 06:30", "2025-11-01 05:30", "2025-11-03 05:30"),
            ("2025-11-02 06:30",    "-",                "2025-11-02 06:30", "2025-11-03 05:30"),
        ]);

        // Entirely in the overlap: the first 01:10 (EDT) to the second 01:50 (EST), 1 h 40 min.
        let q = qh("01:10-01:50");
        assert_period(&q, NY, before, "2025-11-02 05:10", "2025-11-02 06:50", 100);

        // Across midnight over the overlap: 22:00 EDT = 02:00Z to 06:00 EST = 11:00Z, 9 h not 8.
        let q = qh("22:00-06:00");
        assert_period(
            &q,
            NY,
            before,
            "2025-11-02 02:00",
            "2025-11-02 11:00",
            9 * 60,
        );
    }

    // ---------------------------------------------------------------- DST: Berlin
    //
    // 2025-03-30: at 01:00Z the clock jumps from 02:00 CET to 03:00 CEST (02:00-03:00 missing).
    // 2025-10-26: at 01:00Z the clock falls back from 03:00 CEST to 02:00 CET (02:00-03:00
    // twice: first 00:00Z-01:00Z, then 01:00Z-02:00Z).

    #[test]
    fn berlin_spring_forward() {
        let before = "2025-03-29 12:00";

        // Contains the gap: 01:30 CET = 00:30Z to 04:00 CEST = 02:00Z, 1.5 h instead of 2.5.
        let q = qh("01:30-04:00");
        assert_period(
            &q,
            BERLIN,
            before,
            "2025-03-30 00:30",
            "2025-03-30 02:00",
            90,
        );
        assert_eq!(
            length_after(&q, BERLIN, "2025-03-30 12:00"),
            150,
            "the day after is normal"
        );

        // Starts in the gap: 02:30 becomes 03:00 CEST = 01:00Z. 1 h instead of 1.5. The rows are
        // at 01:59:59 CET and 03:00 CEST.
        let q = qh("02:30-04:00");
        assert_period(
            &q,
            BERLIN,
            before,
            "2025-03-30 01:00",
            "2025-03-30 02:00",
            60,
        );
        #[rustfmt::skip]
        check(&q, BERLIN, &[
            ("2025-03-30 00:59:59", "-",                "2025-03-29 03:00", "2025-03-30 01:00"),
            ("2025-03-30 01:00",    "2025-03-30 02:00", "2025-03-29 03:00", "2025-03-31 00:30"),
        ]);

        // Ends in the gap: 01:00 CET = 00:00Z to 03:00 CEST = 01:00Z. 1 h instead of 1.5.
        let q = qh("01:00-02:30");
        assert_period(
            &q,
            BERLIN,
            before,
            "2025-03-30 00:00",
            "2025-03-30 01:00",
            60,
        );
        #[rustfmt::skip]
        check(&q, BERLIN, &[
            ("2025-03-30 00:59:59", "2025-03-30 01:00", "2025-03-29 01:30", "2025-03-30 23:00"),
            ("2025-03-30 01:00",    "-",                "2025-03-30 01:00", "2025-03-30 23:00"),
        ]);

        // Entirely in the gap: nothing that day.
        let q = qh("02:00-03:00");
        assert_period(
            &q,
            BERLIN,
            before,
            "2025-03-31 00:00",
            "2025-03-31 01:00",
            60,
        );
    }

    #[test]
    fn berlin_fall_back() {
        let before = "2025-10-25 12:00";

        // Contains the overlap: 01:00 CEST = 23:00Z (the day before) to 04:00 CET = 03:00Z,
        // 4 h instead of 3.
        let q = qh("01:00-04:00");
        assert_period(
            &q,
            BERLIN,
            before,
            "2025-10-25 23:00",
            "2025-10-26 03:00",
            4 * 60,
        );
        assert_eq!(
            length_after(&q, BERLIN, "2025-10-26 12:00"),
            3 * 60,
            "the day after is normal"
        );

        // Starts in the overlap: the first 02:30 (CEST, 00:30Z) to 04:00 CET = 03:00Z, 2.5 h
        // instead of 1.5. The rows are at 02:29:59 CEST and 02:15 CET.
        let q = qh("02:30-04:00");
        assert_period(
            &q,
            BERLIN,
            before,
            "2025-10-26 00:30",
            "2025-10-26 03:00",
            150,
        );
        #[rustfmt::skip]
        check(&q, BERLIN, &[
            ("2025-10-26 00:29:59", "-",                "2025-10-25 02:00", "2025-10-26 00:30"),
            ("2025-10-26 01:15",    "2025-10-26 03:00", "2025-10-25 02:00", "2025-10-27 01:30"),
        ]);

        // Ends in the overlap: 01:00 CEST = 23:00Z to the second 02:30 (CET, 01:30Z), 2.5 h
        // instead of 1.5. The rows are at 02:45 CEST, when the clock is past the window but it is
        // still quiet, and at 02:30 CET.
        let q = qh("01:00-02:30");
        assert_period(
            &q,
            BERLIN,
            before,
            "2025-10-25 23:00",
            "2025-10-26 01:30",
            150,
        );
        #[rustfmt::skip]
        check(&q, BERLIN, &[
            ("2025-10-26 00:45",    "2025-10-26 01:30", "2025-10-25 00:30", "2025-10-27 00:00"),
            ("2025-10-26 01:30",    "-",                "2025-10-26 01:30", "2025-10-27 00:00"),
        ]);
    }

    // ---------------------------------------------------------------- other gap shapes

    #[test]
    fn gaps_of_other_sizes_and_at_midnight() {
        // Lord Howe Island moves its clocks by 30 min: 02:00 -> 02:30 at 2025-10-04 15:30Z.
        let q = qh("02:10-03:00");
        let lord_howe = Tz::Australia__Lord_Howe;
        assert_period(
            &q,
            lord_howe,
            "2025-10-04 00:00",
            "2025-10-04 15:30",
            "2025-10-04 16:00",
            30,
        );

        // Santiago springs forward at midnight: 2025-09-07 00:00 -04 -> 01:00 -03 at 04:00Z.
        // A window ending at 24:00 ends when the clock jumps.
        let q = qh("22:00-24:00");
        let santiago = Tz::America__Santiago;
        assert_period(
            &q,
            santiago,
            "2025-09-06 12:00",
            "2025-09-07 02:00",
            "2025-09-07 04:00",
            120,
        );

        // Samoa skipped 2011-12-30 entirely (-10 -> +14 at 2011-12-30 10:00Z): that day's
        // window does not happen, and the next one is on the 31st.
        let q = qh("09:00-10:00");
        let apia = Tz::Pacific__Apia;
        assert_period(
            &q,
            apia,
            "2011-12-29 20:30",
            "2011-12-30 19:00",
            "2011-12-30 20:00",
            60,
        );
    }

    #[test]
    fn end_of_gap_finds_the_transition() {
        let at = |tz: Tz, local: &str| end_of_gap(tz, utc(local).naive_utc());
        assert_eq!(at(NY, "2025-03-09 02:00"), utc("2025-03-09 07:00"));
        assert_eq!(at(NY, "2025-03-09 02:59:59"), utc("2025-03-09 07:00"));
        assert_eq!(at(BERLIN, "2025-03-30 02:30"), utc("2025-03-30 01:00"));
        assert_eq!(
            at(Tz::Pacific__Apia, "2011-12-30 12:00"),
            utc("2011-12-30 10:00")
        );
    }

    // ---------------------------------------------------------------- property

    const ZONES: [Tz; 6] = [
        UTC,
        TOKYO,
        NY,
        BERLIN,
        Tz::Australia__Lord_Howe,
        Tz::America__Santiago,
    ];

    /// DST transitions of the zones above, so that the property is tried hard where it is most
    /// likely to break. `transitions_are_real` checks the list.
    const TRANSITIONS: [&str; 8] = [
        "2025-03-09 07:00", // New York, forward 1 h
        "2025-11-02 06:00", // New York, back 1 h
        "2025-03-30 01:00", // Berlin, forward 1 h
        "2025-10-26 01:00", // Berlin, back 1 h
        "2025-04-05 15:00", // Lord Howe, back 30 min
        "2025-10-04 15:30", // Lord Howe, forward 30 min
        "2025-04-06 03:00", // Santiago, back 1 h at midnight
        "2025-09-07 04:00", // Santiago, forward 1 h at midnight
    ];

    #[test]
    fn transitions_are_real() {
        for text in TRANSITIONS {
            let t = utc(text);
            let offset =
                |tz: &Tz, i: DateTime<Utc>| i.with_timezone(tz).naive_local() - i.naive_utc();
            let changes = ZONES
                .iter()
                .any(|tz| offset(tz, t - TimeDelta::seconds(1)) != offset(tz, t));
            assert!(changes, "no zone changes offset at {text}");
        }
    }

    /// Whether the wall-clock time `t` is inside `w`, straight from the definition.
    fn inside(w: &Window, t: NaiveTime) -> bool {
        if w.crosses_midnight() {
            t >= w.start || t < w.end
        } else {
            w.start <= t && t < w.end
        }
    }

    /// Minutes of the day, biased towards the times at which `ZONES` change their clocks.
    fn minute() -> impl Strategy<Value = u32> {
        prop_oneof![
            3 => 0u32..1440,
            1 => prop::sample::select(vec![0u32, 60, 90, 120, 150, 180, 1380, 1410]),
        ]
    }

    fn hhmm(minutes: u32) -> String {
        format!("{:02}:{:02}", minutes / 60, minutes % 60)
    }

    fn window_text() -> impl Strategy<Value = String> {
        (minute(), minute(), any::<bool>()).prop_filter_map(
            "start == end",
            |(start, end, as_24)| {
                let end_text = match end {
                    _ if end == start => return None,
                    0 if as_24 => "24:00".to_string(),
                    _ => hhmm(end),
                };
                Some(format!("{}-{end_text}", hhmm(start)))
            },
        )
    }

    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        let from = utc("2020-01-01 00:00").timestamp();
        let to = utc("2035-01-01 00:00").timestamp();
        let near_transition = (
            prop::sample::select(TRANSITIONS.to_vec()),
            -36 * 60i64..=36 * 60,
            // Often on a whole minute, or the second before one.
            prop_oneof![Just(0i64), Just(-1), 0i64..60],
        )
            .prop_map(|(t, minutes, seconds)| {
                utc(t) + TimeDelta::minutes(minutes) + TimeDelta::seconds(seconds)
            });
        prop_oneof![
            (from..to).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap()),
            near_transition,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn quiet_matches_the_wall_clock(
            texts in prop::collection::vec(window_text(), 1..=3),
            tz in prop::sample::select(ZONES.to_vec()),
            now in instant(),
        ) {
            let text = texts.join(", ");
            let q = match text.parse::<QuietHours>() {
                Ok(q) => q,
                Err(e) => {
                    // Random windows may cover the whole day; nothing else may be refused.
                    prop_assert!(e.contains("leave part of the day unquiet"), "{}: {}", text, e);
                    return Ok(());
                }
            };
            prop_assert_eq!(&qh(&q.to_string()), &q);

            let one = TimeDelta::seconds(1);
            let until = q.quiet_until(tz, now);
            let context = format!("\"{text}\" in {tz} at {now}");

            // Whenever the wall clock is inside a window, it is quiet. Outside overlaps, the
            // reverse holds too. In an overlap, the rule that ends take the later instant keeps
            // a period quiet past its local end.
            let local = now.with_timezone(&tz).naive_local();
            let on_the_clock = q.windows.iter().any(|w| inside(w, local.time()));
            if on_the_clock {
                prop_assert!(until.is_some(), "{} ({}): in a window, not quiet", context, local);
            }
            if !matches!(tz.from_local_datetime(&local), MappedLocalTime::Ambiguous(..)) {
                prop_assert_eq!(until.is_some(), on_the_clock, "{} ({})", context, local);
            }

            // `quiet_until` is the end of the whole merged period.
            if let Some(end) = until {
                prop_assert!(end > now, "{}: {}", context, end);
                prop_assert_eq!(q.quiet_until(tz, end - one), Some(end), "{}", context);
                prop_assert_eq!(q.quiet_until(tz, end), None, "{}", context);
            }

            // `last_end` is a real end at or before now, within the horizon. When not quiet,
            // there always is one, because every window recurs daily.
            match q.last_end(tz, now) {
                Some(end) => {
                    prop_assert!(end <= now && end >= now - HORIZON, "{}: {}", context, end);
                    prop_assert_eq!(q.quiet_until(tz, end - one), Some(end), "{}", context);
                    prop_assert_eq!(q.quiet_until(tz, end), None, "{}", context);
                }
                None => prop_assert!(until.is_some(), "{}: no last end", context),
            }

            // `next_start` is a real start, strictly after now and within the horizon, and after
            // the end of the current period if quiet.
            match q.next_start(tz, now) {
                Some(start) => {
                    prop_assert!(start > now && start <= now + HORIZON, "{}: {}", context, start);
                    prop_assert!(q.quiet_until(tz, start).is_some(), "{}", context);
                    prop_assert_eq!(q.quiet_until(tz, start - one), None, "{}", context);
                    if let Some(end) = until {
                        prop_assert!(start > end, "{}", context);
                    }
                }
                None => prop_assert!(until.is_some(), "{}: no next start", context),
            }
        }
    }
}
