//! CloudWatch metric rules (issue 9 item 3): `[[cloudwatch.rules]]`, the default rule set, and
//! the pure judgement of one metric row's samples. `detect::metrics` reads the rows and applies
//! the verdicts through the alert lifecycle.
//!
//! # Contract
//! - A rule names a `metric` and optionally an exact `dimensions` set; without `dimensions` it
//!   applies to every dimension set of that name, each judged on its own (one alert subject per
//!   metric row and rule).
//! - The judged value is the `Sum` over the rule's `window` (whole 60 s periods). A period
//!   with no sample counts as zero, but only up to the metric's `polled_through`: the window
//!   judged is the latest one made of complete periods, ending at
//!   `min(now, polled_through)` (both rounded down to a period). A late or failed poll
//!   therefore holds the last verdict: it never resolves (or fires) anything by itself. A
//!   metric never polled is not judged; nor is one whose complete data ends more than
//!   [`STALE_AFTER`] before the window we would like to judge (the verdict is held, and our own
//!   `aws_poll_failing` alert says why).
//! - Severity: `critical` when the sum is strictly above `critical`, else `warning` when
//!   strictly above `warning`. A firing alert changes severity in place.
//! - Hysteresis: a firing alert resolves only when the sum is at or below `resolve_below`
//!   (default: the lowest threshold) and has been, at every period end, for `clear_for`
//!   (default 0: the current window alone). Between `resolve_below` and the lowest threshold it
//!   holds its severity.
//! - Settling: CloudWatch data lands minutes late, and a poll reads `Complete` for periods whose
//!   datapoints have not all arrived yet. The sums of counting metrics only grow as late data
//!   lands, so a window that is above a threshold already is evidence (it fires at once), while
//!   one that looks clear may not be: a firing alert resolves only once the windows ending in
//!   the last [`SETTLE`] are clear too, i.e. it must be clear for `clear_for + SETTLE`. Without
//!   this, a burst's newest minutes read as zero would resolve the alert and the late data
//!   reopen it: two pages for one incident.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Deserializer};

use super::alert::Severity;

/// CloudWatch samples are `Sum` per 60 s period (the poller's `GetMetricData` period).
pub const PERIOD_SECS: i64 = 60;

/// How far complete data may lag the window we would judge before the metric counts as stale
/// (not judged, verdict held): the poller re-reads a 15 min trailing window, so a healthy
/// poller's `polled_through` is never that far behind.
pub const STALE_AFTER: TimeDelta = TimeDelta::minutes(15);

/// How long after a period its sum may still grow with late data (see the contract).
pub const SETTLE: TimeDelta = TimeDelta::minutes(3);

/// The window sums [`evaluate`] needs before the current one: `clear_for` plus [`SETTLE`].
pub fn resolve_history(rule: &MetricRule) -> i64 {
    rule.clear_periods() + SETTLE.num_seconds() / PERIOD_SECS
}

/// The metric whose alerts name the devices of open `client_id_conflict` and `throttled`
/// alerts: a duplicated client ID storm shows up as this throttle (DESIGN.md §1).
pub const CLIENT_ID_THROTTLE: &str = "Connect.ClientIDThrottle";

/// The longest rule name or metric name accepted (it becomes part of an alert subject).
const MAX_NAME: usize = 200;

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        serde::de::Error::custom(format!("expected a duration like 5m, got {s:?} ({e})"))
    })
}

/// One `[[cloudwatch.rules]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricRule {
    /// A stable name for the rule (part of the alert subject); default
    /// `<metric>[{dimensions}]/<window>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The CloudWatch metric name in `AWS/IoT`, e.g. `Connect.ClientIDThrottle`.
    pub metric: String,
    /// Only this exact dimension set; absent: every dimension set of the metric, each on its own.
    #[serde(default)]
    pub dimensions: Option<BTreeMap<String, String>>,
    /// The span summed, a whole number of minutes.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// `warning` when the window's sum is strictly above this.
    #[serde(default)]
    pub warning: Option<f64>,
    /// `critical` when the window's sum is strictly above this.
    #[serde(default)]
    pub critical: Option<f64>,
    /// A firing alert resolves only at or below this (default: the lowest threshold).
    #[serde(default)]
    pub resolve_below: Option<f64>,
    /// How long the sum must stay at or below `resolve_below` before the alert resolves.
    #[serde(default, deserialize_with = "duration")]
    pub clear_for: Duration,
}

/// A dimension set written the way people read it: `{Protocol=MQTT,Operation=Connect}`, empty
/// for no dimensions.
pub fn dims_label(dims: &BTreeMap<String, String>) -> String {
    if dims.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, v)) in dims.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}={v}");
    }
    s.push('}');
    s
}

/// `5m`, `1h`, `90s`: a duration the way the configuration writes it.
pub fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

impl MetricRule {
    fn new(metric: &str, window_min: u64, warning: Option<f64>, critical: Option<f64>) -> Self {
        MetricRule {
            name: None,
            metric: metric.into(),
            dimensions: None,
            window: Duration::from_secs(window_min * 60),
            warning,
            critical,
            resolve_below: None,
            clear_for: Duration::ZERO,
        }
    }

    /// The rule's stable name (part of the alert subject and the `rule` detail).
    pub fn key(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!(
                "{}{}/{}",
                self.metric,
                self.dimensions.as_ref().map(dims_label).unwrap_or_default(),
                human(self.window)
            ),
        }
    }

    /// Whether a metric row's dimension set is one this rule judges.
    pub fn matches(&self, metric: &str, dims: &BTreeMap<String, String>) -> bool {
        self.metric == metric && self.dimensions.as_ref().is_none_or(|d| d == dims)
    }

    /// The level a firing alert must fall to (or below) before it may resolve.
    pub fn resolve_below(&self) -> f64 {
        self.resolve_below.unwrap_or_else(|| {
            match (self.warning, self.critical) {
                (Some(w), Some(c)) => w.min(c),
                (Some(t), None) | (None, Some(t)) => t,
                // validate() refuses a rule without thresholds
                (None, None) => f64::INFINITY,
            }
        })
    }

    /// The severity a window sum calls for, with the threshold it exceeds.
    pub fn level(&self, value: f64) -> Option<(Severity, f64)> {
        if let Some(c) = self.critical.filter(|c| value > *c) {
            return Some((Severity::Critical, c));
        }
        self.warning
            .filter(|w| value > *w)
            .map(|w| (Severity::Warning, w))
    }

    /// Whole periods in the window.
    pub fn window_periods(&self) -> i64 {
        (self.window.as_secs() as i64 / PERIOD_SECS).max(1)
    }

    /// Period ends, before the current one, at which the sum must also be clear to resolve.
    pub fn clear_periods(&self) -> i64 {
        (self.clear_for.as_secs().div_ceil(PERIOD_SECS as u64)) as i64
    }
}

/// The rules used when `cloudwatch.rules` is absent (an empty list means none). Each one says
/// why it is there; the README has the same table.
pub fn defaults() -> Vec<MetricRule> {
    vec![
        // Two devices sharing a client ID kick each other off at 1 CONNECT/s forever (the stock
        // Mosquitto bridge config); any throttle here is that or a reconnect loop (the issue
        // fixes > 0 over 5 min → warning). 50 in 5 min is a storm the whole fleet feels.
        MetricRule::new(CLIENT_ID_THROTTLE, 5, Some(0.0), Some(50.0)),
        // Account-wide CONNECT rate exceeded: devices are being refused at the door. A few are
        // tolerable during a mass reconnect (after an outage), sustained ones are not.
        MetricRule::new("Connect.Throttle", 5, Some(10.0), Some(100.0)),
        // Inbound publish rate limit: messages (impressions) are being dropped.
        MetricRule::new("PublishIn.Throttle", 5, Some(10.0), Some(500.0)),
        // Outbound deliveries throttled (the 100 publishes/s per connection limit; our own
        // subscribers included): data is not reaching its consumers.
        MetricRule::new("PublishOut.Throttle", 5, Some(10.0), Some(500.0)),
        // Subscriptions refused: a client (or our own ingest) may be missing its topics.
        MetricRule::new("Subscribe.Throttle", 5, Some(0.0), Some(50.0)),
        // The rules engine dropped messages: the S3 copy of the raw data has holes.
        MetricRule::new("RuleMessageThrottled", 5, Some(0.0), Some(100.0)),
        // Rejected credentials: a revoked or expired certificate, or a stolen one being tried.
        // Some noise is normal (a unit being re-provisioned); 15 min smooths it.
        MetricRule::new("Connect.AuthError", 15, Some(5.0), Some(100.0)),
        // Malformed CONNECTs (bad client ID, protocol errors): usually a bad firmware roll-out.
        MetricRule::new("Connect.ClientError", 15, Some(5.0), Some(100.0)),
        // Malformed publishes (over 128 KB, bad topic): those messages are lost.
        MetricRule::new("PublishIn.ClientError", 15, Some(5.0), Some(100.0)),
        // A rule action failed to deliver (S3, Kinesis, ...): data is silently not copied.
        MetricRule::new("Failure", 15, Some(0.0), Some(50.0)),
    ]
}

/// Check the rules; the error names the key, `cloudwatch.rules[i].<key>`.
pub fn validate(rules: &[MetricRule]) -> Result<(), String> {
    let mut keys = BTreeMap::new();
    for (i, r) in rules.iter().enumerate() {
        let at = |k: &str| format!("cloudwatch.rules[{i}].{k}");
        if r.metric.trim().is_empty() || r.metric.len() > MAX_NAME || r.metric.contains('\0') {
            return Err(format!(
                "{}: expected a CloudWatch metric name of 1 to {MAX_NAME} characters",
                at("metric")
            ));
        }
        if let Some(n) = &r.name {
            if n.trim().is_empty() || n.len() > MAX_NAME || n.chars().any(char::is_control) {
                return Err(format!(
                    "{}: expected 1 to {MAX_NAME} printable characters",
                    at("name")
                ));
            }
        }
        if let Some(d) = &r.dimensions {
            if d.len() > 30
                || d.iter().any(|(k, v)| {
                    k.is_empty()
                        || k.len() > 255
                        || v.len() > 1024
                        || (k.clone() + v).contains('\0')
                })
            {
                return Err(format!(
                    "{}: expected at most 30 dimensions with names of 1 to 255 characters",
                    at("dimensions")
                ));
            }
        }
        let w = r.window.as_secs();
        if w < PERIOD_SECS as u64 || w % PERIOD_SECS as u64 != 0 || r.window.subsec_nanos() != 0 {
            return Err(format!(
                "{}: expected a whole number of minutes (samples are per 60 s), got {}",
                at("window"),
                human(r.window)
            ));
        }
        if w > 24 * 3600 || r.clear_for > Duration::from_secs(24 * 3600) {
            return Err(format!(
                "{}: expected at most 24h",
                at("window or clear_for")
            ));
        }
        if r.warning.is_none() && r.critical.is_none() {
            return Err(format!(
                "{}: a rule needs `warning` or `critical` (or both)",
                at("warning")
            ));
        }
        for (k, v) in [
            ("warning", r.warning),
            ("critical", r.critical),
            ("resolve_below", r.resolve_below),
        ] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(format!("{}: expected a finite number", at(k)));
            }
        }
        if let (Some(w), Some(c)) = (r.warning, r.critical) {
            if c < w {
                return Err(format!(
                    "{}: expected at least warning ({w}), got {c}",
                    at("critical")
                ));
            }
        }
        if let Some(rb) = r.resolve_below {
            let lowest = r
                .warning
                .into_iter()
                .chain(r.critical)
                .fold(f64::INFINITY, f64::min);
            if rb > lowest {
                return Err(format!(
                    "{}: expected at most the lowest threshold ({lowest}), got {rb}",
                    at("resolve_below")
                ));
            }
        }
        if r.key().len() > 2 * MAX_NAME {
            // The name is part of every alert subject of the rule.
            return Err(format!(
                "{}: the default name (metric, dimensions, window) is over {} characters; \
                 give the rule a shorter `name`",
                at("name"),
                2 * MAX_NAME
            ));
        }
        if let Some(j) = keys.insert(r.key(), i) {
            return Err(format!(
                "{}: rules[{j}] has the same name {:?}; give one a `name`",
                at("name"),
                r.key()
            ));
        }
    }
    Ok(())
}

/// Round down to a period boundary.
pub fn floor_period(t: DateTime<Utc>) -> DateTime<Utc> {
    let s = t.timestamp().div_euclid(PERIOD_SECS) * PERIOD_SECS;
    DateTime::from_timestamp(s, 0).unwrap_or(t)
}

/// The end of the window to judge: the latest period boundary up to which samples are complete,
/// at most `now`. `None` when the metric was never polled or its data is stale.
pub fn judged_end(
    now: DateTime<Utc>,
    polled_through: Option<DateTime<Utc>>,
    rule: &MetricRule,
) -> Option<DateTime<Utc>> {
    let want = floor_period(now);
    let end = floor_period(polled_through?).min(want);
    let window = TimeDelta::seconds(rule.window_periods() * PERIOD_SECS);
    (end >= want - window - STALE_AFTER).then_some(end)
}

/// The sums of the window ending at `end` and at each of the `extra` period ends before it,
/// oldest first (the last is the current window). Samples outside every window are ignored;
/// absent periods count as zero (the caller only asks up to `polled_through`).
pub fn window_sums(
    samples: &BTreeMap<DateTime<Utc>, f64>,
    end: DateTime<Utc>,
    rule: &MetricRule,
    extra: i64,
) -> Vec<f64> {
    let period = TimeDelta::seconds(PERIOD_SECS);
    let window = period * rule.window_periods() as i32;
    (0..=extra)
        .rev()
        .map(|k| {
            let e = end - period * k as i32;
            samples
                .range(e - window..e)
                .map(|(_, v)| *v)
                .filter(|v| v.is_finite())
                .sum()
        })
        .collect()
}

/// What a metric row's alert should do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Firing at this severity (open, reopen, or change severity in place).
    Fire {
        severity: Severity,
        value: f64,
        threshold: f64,
    },
    /// Firing stays as it is (in the hysteresis band, or not clear for long enough yet).
    Hold { value: f64 },
    /// The firing alert resolves.
    Resolve { value: f64 },
    /// Not firing, nothing to do.
    Quiet { value: f64 },
}

/// Judge one metric row. `firing` is the open alert's severity, if any; `sums` are the window
/// sums from [`window_sums`] with `extra = resolve_history(rule)`, oldest first.
pub fn evaluate(rule: &MetricRule, firing: Option<Severity>, sums: &[f64]) -> Verdict {
    let value = sums.last().copied().unwrap_or(0.0);
    if let Some((severity, threshold)) = rule.level(value) {
        return Verdict::Fire {
            severity,
            value,
            threshold,
        };
    }
    if firing.is_none() {
        return Verdict::Quiet { value };
    }
    let floor = rule.resolve_below();
    if sums.iter().all(|s| *s <= floor) {
        Verdict::Resolve { value }
    } else {
        Verdict::Hold { value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn rule(w: Option<f64>, c: Option<f64>) -> MetricRule {
        MetricRule::new(CLIENT_ID_THROTTLE, 5, w, c)
    }

    #[test]
    fn thresholds_are_strict_and_critical_wins() {
        let r = rule(Some(0.0), Some(50.0));
        assert_eq!(r.level(0.0), None);
        assert_eq!(r.level(1.0), Some((Severity::Warning, 0.0)));
        assert_eq!(r.level(50.0), Some((Severity::Warning, 0.0)));
        assert_eq!(r.level(50.5), Some((Severity::Critical, 50.0)));
        let only_critical = rule(None, Some(10.0));
        assert_eq!(only_critical.level(5.0), None);
        assert_eq!(only_critical.resolve_below(), 10.0);
        assert_eq!(r.resolve_below(), 0.0);
    }

    #[test]
    fn hysteresis_holds_in_the_band_and_resolves_below() {
        let mut r = rule(Some(10.0), Some(50.0));
        r.resolve_below = Some(2.0);
        let w = Some(Severity::Warning);
        assert!(matches!(evaluate(&r, w, &[5.0]), Verdict::Hold { .. }));
        assert!(matches!(evaluate(&r, None, &[5.0]), Verdict::Quiet { .. }));
        assert!(matches!(evaluate(&r, w, &[2.0]), Verdict::Resolve { .. }));
        // critical → warning in place
        assert!(matches!(
            evaluate(&r, Some(Severity::Critical), &[20.0]),
            Verdict::Fire {
                severity: Severity::Warning,
                ..
            }
        ));
        // clear_for: every window in the span must be clear
        r.clear_for = Duration::from_secs(120);
        assert_eq!(r.clear_periods(), 2);
        assert!(matches!(
            evaluate(&r, w, &[3.0, 0.0, 0.0]),
            Verdict::Hold { .. }
        ));
        assert!(matches!(
            evaluate(&r, w, &[1.0, 0.0, 0.0]),
            Verdict::Resolve { .. }
        ));
    }

    #[test]
    fn windows_sum_whole_periods_and_absent_is_zero() {
        let r = rule(Some(0.0), None);
        let s: BTreeMap<_, _> = [
            (t("2026-11-30T10:00:00Z"), 1.0),
            (t("2026-11-30T10:04:00Z"), 2.0),
            (t("2026-11-30T10:05:00Z"), 4.0),
            (t("2026-11-30T10:06:00Z"), f64::NAN),
        ]
        .into();
        let end = t("2026-11-30T10:05:00Z");
        assert_eq!(window_sums(&s, end, &r, 0), vec![3.0]);
        assert_eq!(window_sums(&s, end, &r, 1), vec![1.0, 3.0], "oldest first");
        assert_eq!(
            window_sums(&s, t("2026-11-30T10:07:00Z"), &r, 0),
            vec![6.0],
            "NaN is skipped, not poison"
        );
    }

    #[test]
    fn the_judged_window_ends_at_what_was_polled() {
        let r = rule(Some(0.0), None);
        let now = t("2026-11-30T10:05:30Z");
        assert_eq!(judged_end(now, None, &r), None, "never polled");
        assert_eq!(
            judged_end(now, Some(t("2026-11-30T10:03:20Z")), &r),
            Some(t("2026-11-30T10:03:00Z"))
        );
        assert_eq!(
            judged_end(now, Some(t("2026-11-30T12:00:00Z")), &r),
            Some(t("2026-11-30T10:05:00Z")),
            "polled_through in the future is capped at now"
        );
        assert_eq!(
            judged_end(now, Some(t("2026-11-30T09:44:00Z")), &r),
            None,
            "stale"
        );
        assert!(judged_end(now, Some(t("2026-11-30T09:45:00Z")), &r).is_some());
    }

    #[test]
    fn validation_names_the_key() {
        assert_eq!(validate(&defaults()), Ok(()));
        let err = |r: MetricRule| validate(&[r]).unwrap_err();
        assert!(err(rule(None, None)).contains("cloudwatch.rules[0].warning"));
        let mut r = rule(Some(1.0), None);
        r.window = Duration::from_secs(90);
        assert!(err(r).contains("cloudwatch.rules[0].window"));
        let mut r = rule(Some(1.0), Some(0.5));
        assert!(err(r.clone()).contains("critical"));
        r.critical = None;
        r.resolve_below = Some(3.0);
        assert!(err(r).contains("resolve_below"));
        let mut r = rule(Some(f64::NAN), None);
        assert!(err(r.clone()).contains("finite"));
        r.warning = Some(1.0);
        r.metric = String::new();
        assert!(err(r).contains("metric"));
        let mut long = rule(Some(1.0), None);
        long.dimensions = Some((0..20).map(|i| (format!("D{i}"), "v".repeat(30))).collect());
        assert!(err(long.clone()).contains("rules[0].name"));
        long.name = Some("screens-long".into());
        assert_eq!(validate(&[long]), Ok(()));
        let dup = validate(&[rule(Some(1.0), None), rule(Some(2.0), None)]).unwrap_err();
        assert!(dup.contains("rules[1].name"), "{dup}");
    }

    #[test]
    fn the_defaults_cover_what_they_claim() {
        let d = defaults();
        let cit = d.iter().find(|r| r.metric == CLIENT_ID_THROTTLE).unwrap();
        assert_eq!(
            (cit.warning, cit.window),
            (Some(0.0), Duration::from_secs(300))
        );
        assert_eq!(cit.level(1.0).unwrap().0, Severity::Warning);
        for m in [
            "Connect.Throttle",
            "PublishIn.Throttle",
            "PublishOut.Throttle",
            "Subscribe.Throttle",
            "RuleMessageThrottled",
            "Connect.AuthError",
            "Connect.ClientError",
            "PublishIn.ClientError",
            "Failure",
        ] {
            assert!(d.iter().any(|r| r.metric == m), "{m}");
        }
        assert_eq!(cit.key(), "Connect.ClientIDThrottle/5m");
    }

    proptest! {
        /// A series that stays within the hysteresis band (above `resolve_below`, at or below
        /// the lowest threshold) never changes the verdict's state: firing stays firing, quiet
        /// stays quiet.
        #[test]
        fn no_flip_inside_the_band(
            values in proptest::collection::vec(2.0001f64..=10.0, 1..40),
            start_firing in any::<bool>(),
            clear in 0u64..4,
        ) {
            let mut r = rule(Some(10.0), Some(50.0));
            r.resolve_below = Some(2.0);
            r.clear_for = Duration::from_secs(clear * 60);
            let firing = start_firing.then_some(Severity::Warning);
            let n = resolve_history(&r) as usize + 1;
            for i in 0..values.len() {
                let sums = &values[i.saturating_sub(n - 1)..=i];
                match evaluate(&r, firing, sums) {
                    Verdict::Fire { .. } => prop_assert!(false, "fired in the band"),
                    Verdict::Resolve { .. } => prop_assert!(false, "resolved in the band"),
                    Verdict::Hold { .. } => prop_assert!(firing.is_some()),
                    Verdict::Quiet { .. } => prop_assert!(firing.is_none()),
                }
            }
        }

        /// Severity is monotone in the value, and anything above a threshold fires.
        #[test]
        fn severity_follows_the_value(a in -1e9f64..1e9, b in -1e9f64..1e9) {
            let r = rule(Some(0.0), Some(50.0));
            let rank = |v: f64| match r.level(v) {
                None => 0, Some((Severity::Warning, _)) => 1, Some(_) => 2,
            };
            if a <= b { prop_assert!(rank(a) <= rank(b)); }
            prop_assert_eq!(rank(a) > 0, a > 0.0);
        }
    }
}
