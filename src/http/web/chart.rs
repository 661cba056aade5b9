//! Charts without a front-end build (issue 10, item 7): the geometry of hand-written SVG,
//! computed here as plain numbers and drawn by `templates/chart.html`.
//!
//! The contract, for every chart:
//! - **Pure.** A chart is a function of its data and its time window: no clock, no I/O, so
//!   every shape is unit-tested.
//! - **Colours from CSS.** Shapes carry classes (`bar`, `state-offline`, `series-0`…); their
//!   colours are CSS variables in `static/app.css`, so light and dark themes apply and the CSP
//!   (no inline style) holds.
//! - **Times for the viewer.** Axis labels are `<text data-ts="ISO" data-fmt="hour|day">` that
//!   `static/app.js` rewrites into the viewer's zone; every shape's tooltip (`<title>`) says its
//!   time in UTC and its value.
//! - **Honest gaps.** A missing sample is drawn as nothing (a gap), never as zero, except for
//!   counts ([`bars`]) where a slot without rows *is* zero messages.
//! - **Bounded.** One shape per slot or segment; callers bound the window (a week of hours is
//!   168 bars), so a chart costs the same at any fleet size.

use chrono::{DateTime, TimeDelta, Utc};

use super::view::When;

/// The drawing area, in SVG user units (the SVG scales to its container's width).
pub const WIDTH: f64 = 720.0;
pub const HEIGHT: f64 = 120.0;
/// Room left of the plot for the y labels, and below for the x labels.
const LEFT: f64 = 40.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 6.0;

/// A number written with one decimal, for SVG attributes.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct N(pub f64);

impl std::fmt::Display for N {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = (self.0 * 10.0).round() / 10.0;
        if v == v.trunc() {
            write!(f, "{}", v as i64)
        } else {
            write!(f, "{v:.1}")
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub x: N,
    pub y: N,
    pub w: N,
    pub h: N,
    pub class: &'static str,
    /// Tooltip: time in UTC and value.
    pub title: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// `series-<i>` (colour) plus the caller's class.
    pub class: String,
    pub name: String,
    /// Runs of consecutive samples (`x,y x,y …`); a gap starts a new run.
    pub runs: Vec<String>,
    /// One dot per sample with its tooltip, so single samples show and hover works.
    pub dots: Vec<(N, N, String)>,
}

/// One interval of a strip (connected, disconnected, late …).
#[derive(Debug, Clone, PartialEq)]
pub struct Seg {
    pub x: N,
    pub w: N,
    pub class: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub x: N,
    pub at: When,
    /// `hour` or `day` (app.js formats).
    pub fmt: &'static str,
}

/// A chart ready for `templates/chart.html`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Accessible name (`aria-label`, `<title>`).
    pub label: String,
    pub width: N,
    pub height: N,
    pub plot_left: N,
    pub plot_bottom: N,
    pub bars: Vec<Bar>,
    pub lines: Vec<Line>,
    pub segs: Vec<Seg>,
    pub ticks: Vec<Tick>,
    /// The top of the y axis, as a label (`""` for strips).
    pub y_max: String,
    /// Nothing to draw: the template says so instead of drawing axes around nothing.
    pub empty: bool,
}

impl Chart {
    fn new(label: &str, from: DateTime<Utc>, to: DateTime<Utc>, height: f64) -> Chart {
        Chart {
            label: label.to_string(),
            width: N(WIDTH),
            height: N(height),
            plot_left: N(LEFT),
            plot_bottom: N(height - BOTTOM),
            bars: Vec::new(),
            lines: Vec::new(),
            segs: Vec::new(),
            ticks: ticks(from, to),
            y_max: String::new(),
            empty: true,
        }
    }
}

/// Where time `t` falls on the x axis of the window `from..to`.
fn x_of(t: DateTime<Utc>, from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let span = (to - from).num_milliseconds().max(1) as f64;
    let at = (t - from).num_milliseconds() as f64;
    LEFT + (WIDTH - LEFT) * (at / span).clamp(0.0, 1.0)
}

/// A round number at or above `v` (1, 2, 5 × 10ⁿ), so the y axis reads well.
pub fn nice_max(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_value(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

/// Ticks every 1, 3, 6 or 12 hours or every day: the smallest step giving at most 8, on whole
/// UTC steps.
pub fn ticks(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Tick> {
    let span = to - from;
    if span <= TimeDelta::zero() {
        return Vec::new();
    }
    let steps = [1, 3, 6, 12, 24, 48, 168].map(TimeDelta::hours);
    let step = steps
        .into_iter()
        .find(|s| span.num_seconds() / s.num_seconds() <= 8)
        .unwrap_or(TimeDelta::weeks(1));
    let secs = step.num_seconds();
    let first = from.timestamp().div_euclid(secs) * secs + secs;
    let fmt = if secs >= 86_400 { "day" } else { "hour" };
    let mut out = Vec::new();
    let mut t = first;
    while t < to.timestamp() {
        let at = DateTime::from_timestamp(t, 0).expect("in range");
        out.push(Tick {
            x: N(x_of(at, from, to)),
            at: When(at),
            fmt,
        });
        t += secs;
    }
    out
}

/// Counts per slot (messages per hour): one bar per `step` from `from` to `to`; a slot without
/// a point is zero. `unit` names the value in tooltips ("messages").
pub fn bars(
    label: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: TimeDelta,
    points: &[(DateTime<Utc>, f64)],
    unit: &str,
) -> Chart {
    let mut c = Chart::new(label, from, to, HEIGHT);
    if step <= TimeDelta::zero() || to <= from {
        return c;
    }
    let slots = ((to - from).num_seconds() / step.num_seconds()).max(1) as usize;
    let mut values = vec![0.0; slots];
    for (t, v) in points {
        if *t < from || *t >= to || !v.is_finite() {
            continue;
        }
        let i = ((*t - from).num_seconds() / step.num_seconds()) as usize;
        if i < slots {
            values[i] += v;
        }
    }
    let max = nice_max(values.iter().cloned().fold(0.0, f64::max));
    let plot_h = HEIGHT - BOTTOM - TOP;
    let slot_w = (WIDTH - LEFT) / slots as f64;
    c.y_max = fmt_value(max);
    c.empty = points.is_empty();
    c.bars = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let start = from + step * i as i32;
            let h = plot_h * v / max;
            Bar {
                x: N(LEFT + slot_w * i as f64 + slot_w * 0.1),
                y: N(HEIGHT - BOTTOM - h),
                w: N(slot_w * 0.8),
                h: N(h),
                class: if *v == 0.0 { "bar zero" } else { "bar" },
                title: format!("{} · {} {unit}", When(start).utc(), fmt_value(*v)),
            }
        })
        .collect();
    c
}

/// One series of samples for [`lines`]: its name, an extra class, and (time, value) points;
/// `None` is a missing sample (a gap).
pub struct Series<'a> {
    pub name: &'a str,
    pub class: &'a str,
    pub points: &'a [(DateTime<Utc>, Option<f64>)],
}

/// Line chart of several series on one y axis. Samples outside the window are left out.
pub fn lines(label: &str, from: DateTime<Utc>, to: DateTime<Utc>, series: &[Series]) -> Chart {
    let mut c = Chart::new(label, from, to, HEIGHT);
    let inside = |t: &DateTime<Utc>| *t >= from && *t <= to;
    let max = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(t, _)| inside(t))
        .filter_map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let max = nice_max(max);
    let plot_h = HEIGHT - BOTTOM - TOP;
    let y_of = |v: f64| HEIGHT - BOTTOM - plot_h * (v / max).clamp(0.0, 1.0);
    c.y_max = fmt_value(max);
    for (i, s) in series.iter().enumerate() {
        let mut line = Line {
            class: format!("series-{} {}", i % 6, s.class).trim().to_string(),
            name: s.name.to_string(),
            runs: Vec::new(),
            dots: Vec::new(),
        };
        let mut run: Vec<String> = Vec::new();
        let mut pts: Vec<&(DateTime<Utc>, Option<f64>)> =
            s.points.iter().filter(|(t, _)| inside(t)).collect();
        pts.sort_by_key(|(t, _)| *t);
        for (t, v) in pts {
            match v.filter(|v| v.is_finite()) {
                Some(v) => {
                    let (x, y) = (N(x_of(*t, from, to)), N(y_of(v)));
                    run.push(format!("{x},{y}"));
                    line.dots.push((
                        x,
                        y,
                        format!("{} · {} {}", When(*t).utc(), s.name, fmt_value(v)),
                    ));
                }
                None if !run.is_empty() => line.runs.push(std::mem::take(&mut run).join(" ")),
                None => {}
            }
        }
        if !run.is_empty() {
            line.runs.push(run.join(" "));
        }
        if !line.dots.is_empty() {
            c.empty = false;
        }
        c.lines.push(line);
    }
    c
}

/// One interval for [`strip`]: from `start` to `end` (`None`: still going at `to`).
pub struct Interval {
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    pub class: String,
    /// What the tooltip says after the times ("connected from 10.1.2.3").
    pub what: String,
}

/// A strip of intervals (connected / disconnected, heartbeat states) across the window; parts
/// outside the window are cut off, intervals wholly outside are left out.
pub fn strip(label: &str, from: DateTime<Utc>, to: DateTime<Utc>, items: &[Interval]) -> Chart {
    let mut c = Chart::new(label, from, to, 40.0);
    for it in items {
        let end = it.end.unwrap_or(to).min(to);
        let start = it.start.max(from);
        if end <= start {
            continue;
        }
        let (x0, x1) = (x_of(start, from, to), x_of(end, from, to));
        let until = match it.end {
            Some(e) => When(e).utc(),
            None => "now".to_string(),
        };
        c.segs.push(Seg {
            x: N(x0),
            w: N((x1 - x0).max(0.5)),
            class: it.class.clone(),
            title: format!("{} – {until} · {}", When(it.start).utc(), it.what),
        });
    }
    c.empty = c.segs.is_empty();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(N(3.0).to_string(), "3");
        assert_eq!(N(3.04).to_string(), "3");
        assert_eq!(N(3.06).to_string(), "3.1");
        assert_eq!(N(-0.0).to_string(), "0");
    }

    #[test]
    fn nice_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(10.0), 10.0);
        assert_eq!(nice_max(11.0), 20.0);
        assert_eq!(nice_max(420.0), 500.0);
        assert_eq!(nice_max(0.03), 0.05);
    }

    #[test]
    fn one_bar_per_hour_with_missing_hours_at_zero() {
        let from = t("2026-11-30T00:00:00Z");
        let to = t("2026-11-30T06:00:00Z");
        let pts = [
            (t("2026-11-30T01:00:00Z"), 40.0),
            (t("2026-11-30T01:30:00Z"), 2.0), // same slot: summed
            (t("2026-11-30T05:00:00Z"), 10.0),
            (t("2026-11-30T06:00:00Z"), 99.0), // outside (the window is half-open)
            (t("2026-11-29T23:00:00Z"), 99.0),
        ];
        let c = bars("msgs", from, to, TimeDelta::hours(1), &pts, "messages");
        assert_eq!(c.bars.len(), 6);
        assert_eq!(c.y_max, "50");
        assert_eq!(c.bars[0].h, N(0.0));
        assert_eq!(c.bars[0].class, "bar zero");
        let plot_h = HEIGHT - BOTTOM - TOP;
        assert!((c.bars[1].h.0 - plot_h * 42.0 / 50.0).abs() < 1e-9);
        assert_eq!(c.bars[1].title, "2026-11-30 01:00:00 UTC · 42 messages");
        // Bars are left to right, inside the plot.
        assert!(c.bars.windows(2).all(|w| w[0].x < w[1].x));
        assert!(c
            .bars
            .iter()
            .all(|b| b.x.0 >= LEFT && b.x.0 + b.w.0 <= WIDTH));
        assert!(!c.empty);
        assert!(bars("x", from, to, TimeDelta::hours(1), &[], "m").empty);
    }

    #[test]
    fn gaps_split_lines_and_are_never_zeros() {
        let from = t("2026-11-30T00:00:00Z");
        let to = t("2026-11-30T00:05:00Z");
        let pts = [
            (t("2026-11-30T00:00:00Z"), Some(1.0)),
            (t("2026-11-30T00:01:00Z"), Some(3.0)),
            (t("2026-11-30T00:02:00Z"), None),
            (t("2026-11-30T00:03:00Z"), Some(f64::NAN)),
            (t("2026-11-30T00:04:00Z"), Some(5.0)),
        ];
        let c = lines(
            "cw",
            from,
            to,
            &[Series {
                name: "Throttles",
                class: "",
                points: &pts,
            }],
        );
        let l = &c.lines[0];
        assert_eq!(l.runs.len(), 2, "{:?}", l.runs);
        assert_eq!(l.dots.len(), 3);
        assert_eq!(c.y_max, "5");
        assert_eq!(l.class, "series-0");
        // Highest value at the top of the plot.
        assert_eq!(l.dots[2].1, N(TOP));
    }

    #[test]
    fn strips_cut_to_the_window() {
        let from = t("2026-11-30T00:00:00Z");
        let to = t("2026-11-30T10:00:00Z");
        let items = [
            Interval {
                start: t("2026-11-29T20:00:00Z"),
                end: Some(t("2026-11-30T05:00:00Z")),
                class: "up".into(),
                what: "connected".into(),
            },
            Interval {
                start: t("2026-11-30T05:00:00Z"),
                end: None,
                class: "down".into(),
                what: "disconnected".into(),
            },
            Interval {
                start: t("2026-11-29T01:00:00Z"),
                end: Some(t("2026-11-29T02:00:00Z")),
                class: "up".into(),
                what: "old".into(),
            },
        ];
        let c = strip("conn", from, to, &items);
        assert_eq!(c.segs.len(), 2);
        assert_eq!(c.segs[0].x, N(LEFT));
        let mid = LEFT + (WIDTH - LEFT) / 2.0;
        assert_eq!(c.segs[0].w, N(mid - LEFT));
        assert_eq!(c.segs[1].x, N(mid));
        assert_eq!(c.segs[1].w, N(WIDTH - mid));
        assert!(c.segs[1].title.ends_with("now · disconnected"));
    }

    #[test]
    fn ticks_stay_few_and_on_whole_steps() {
        let from = t("2026-11-30T00:20:00Z");
        let day = ticks(from, from + TimeDelta::hours(24));
        assert!(day.len() <= 8 && day.len() >= 4, "{}", day.len());
        assert_eq!(day[0].at, When(t("2026-11-30T03:00:00Z")));
        assert_eq!(day[0].fmt, "hour");
        let week = ticks(from, from + TimeDelta::days(7));
        assert!(week.len() <= 8);
        assert_eq!(week[0].fmt, "day");
        assert!(ticks(from, from).is_empty());
    }
}
