//! The impressions-anomaly pass: judges each newly *closed* bucket once with the pure rule
//! `domain::anomaly` and raises or resolves `impressions_anomaly` through `alerts::lifecycle`.
//!
//! A bucket `[b, b + bucket)` is closed once `now ≥ b + bucket + flush_allowance`: everything
//! that arrived in it has reached Postgres. The newest judged bucket is kept in
//! `anomaly_state`, each device's run of low buckets in `anomaly_streaks`, both changed in the
//! transaction that applies the bucket's alerts: a new leader neither skips nor repeats a
//! bucket, and a tick with nothing closed costs one single-row read. The first judgement (or one
//! after `anomaly.bucket` changed) starts at the newest closed bucket, and a pass catching up
//! after a pause judges at most `max_buckets_per_tick` buckets, the newest ones; older unjudged
//! buckets are skipped (counted in the outcome).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde_json::json;
use sqlx::PgPool;

use super::heartbeat::GroupSchedule;
use super::{at, Settings};
use crate::alerts::lifecycle::{self, AlertSpec};
use crate::db;
use crate::domain::alert::Kind;
use crate::domain::anomaly::{
    baseline, bucket_start, peer_ratio, Action, Cadence, Observation, Rule, Skip,
};
use crate::domain::schedule::QuietHours;

/// `[anomaly]`, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct AnomalySettings {
    pub enabled: bool,
    pub cadence: Cadence,
    pub rule: Rule,
    pub max_buckets_per_tick: u32,
}

impl AnomalySettings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let cadence = cfg.anomaly.cadence().unwrap_or_else(|e| {
            // `Config::load` refuses this; only a hand-built config gets here.
            tracing::error!(error = %e, "anomaly: invalid cadence, using 1h/7d/28d");
            Cadence::new(TimeDelta::hours(1), TimeDelta::days(7), TimeDelta::days(28))
                .expect("the default cadence is valid")
        });
        Self {
            enabled: cfg.anomaly.enabled,
            cadence,
            rule: cfg.anomaly.rule(),
            max_buckets_per_tick: cfg.anomaly.max_buckets_per_tick.max(1),
        }
    }
}

/// What a pass did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// The buckets judged by this pass, oldest first.
    pub buckets: Vec<DateTime<Utc>>,
    /// Closed buckets skipped because the pass was too far behind.
    pub skipped_buckets: i64,
    /// Device-buckets judged, and not judged by reason.
    pub judged: usize,
    pub not_judged: BTreeMap<&'static str, usize>,
    pub fired: Vec<String>,
    pub resolved: Vec<String>,
}

/// The newest bucket that is closed at `now`.
pub fn newest_closed(now: DateTime<Utc>, bucket: TimeDelta, flush: TimeDelta) -> DateTime<Utc> {
    bucket_start(now - flush, bucket) - bucket
}

/// Judge the buckets that closed since the last pass.
pub async fn tick(pool: &PgPool, s: &Settings, now: DateTime<Utc>) -> anyhow::Result<Outcome> {
    let a = &s.anomaly;
    let mut out = Outcome::default();
    if !a.enabled {
        return Ok(out);
    }
    let bucket = a.cadence.bucket();
    let bucket_ms = bucket.num_milliseconds();
    let newest = newest_closed(now, bucket, s.flush_allowance);
    let (cursor, cursor_ms) = db::anomaly::cursor(pool).await?;
    let next = match cursor.filter(|_| cursor_ms == Some(bucket_ms)) {
        Some(c) => c + bucket,
        None => newest,
    };
    if next > newest {
        return Ok(out);
    }
    let oldest = newest - bucket * (a.max_buckets_per_tick as i32 - 1);
    let mut b = next;
    if b < oldest {
        out.skipped_buckets = (oldest - b).num_milliseconds() / bucket_ms;
        tracing::warn!(
            from = %at(b),
            skipped = out.skipped_buckets,
            "impressions anomaly: too far behind, skipping older closed buckets"
        );
        b = oldest;
    }
    while b <= newest {
        judge_bucket(pool, s, b, now, &mut out).await?;
        b += bucket;
    }
    Ok(out)
}

/// Every bucket start within the largest DST shift (2 h, Antarctica/Troll) of `b − k·season`:
/// the sample of any time zone is among them (the caller keeps each device's own).
fn candidates(c: &Cadence, b: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    for k in 1..=c.seasons() {
        let centre = b - c.season() * k as i32;
        if c.calendar() {
            let slack = TimeDelta::hours(2);
            let mut s = bucket_start(centre - slack, c.bucket());
            while s <= centre + slack {
                if s < b {
                    out.push(s);
                }
                s += c.bucket();
            }
        } else {
            out.push(centre);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A group's schedule from its stored row (a group not in the configuration): unusable
/// values fall back to the fleet's time zone and no quiet hours, as in the heartbeat.
fn stored_schedule(s: &Settings, row: &db::anomaly::BucketDevice) -> GroupSchedule {
    GroupSchedule {
        time_zone: row
            .time_zone
            .as_deref()
            .and_then(|t| crate::config::parse_tz(t).ok())
            .unwrap_or(s.fleet_time_zone),
        quiet_hours: row
            .quiet_hours
            .as_deref()
            .unwrap_or_default()
            .parse::<QuietHours>()
            .unwrap_or_default(),
    }
}

fn overlaps_quiet(q: &QuietHours, tz: Tz, b: DateTime<Utc>, end: DateTime<Utc>) -> bool {
    !q.is_empty()
        && (q.quiet_until(tz, b).is_some() || q.next_start(tz, b).is_some_and(|st| st < end))
}

fn skip_name(s: Skip) -> &'static str {
    match s {
        Skip::Quiet => "quiet_hours",
        Skip::FewMessages => "few_messages",
        Skip::NoBaseline => "no_baseline",
        Skip::SmallBaseline => "small_baseline",
    }
}

struct Judged {
    device_id: String,
    group_id: Option<String>,
    messages: i64,
    impressions: i64,
    baseline: f64,
    ratio: f64,
}

/// Judge one closed bucket in one transaction: alerts, runs and the cursor together.
async fn judge_bucket(
    pool: &PgPool,
    s: &Settings,
    b: DateTime<Utc>,
    now: DateTime<Utc>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let a = &s.anomaly;
    let bucket = a.cadence.bucket();
    let mut tx = pool.begin().await?;
    let (cursor, cursor_ms) = db::anomaly::lock_cursor(&mut tx).await?;
    if cursor_ms == Some(bucket.num_milliseconds()) && cursor.is_some_and(|c| c >= b) {
        // another leader judged it meanwhile
        return Ok(());
    }
    let rows =
        db::anomaly::bucket_devices(&mut *tx, b, &candidates(&a.cadence, b), a.rule.min_messages)
            .await?;
    let mut stored: HashMap<String, GroupSchedule> = HashMap::new();
    let mut samples_of: HashMap<Tz, HashSet<DateTime<Utc>>> = HashMap::new();
    let mut judged: Vec<Judged> = Vec::new();
    for row in rows {
        let schedule = match row.group_id.as_deref() {
            None => None,
            Some(g) => match s.groups.get(g) {
                Some(c) => Some(c),
                None => Some(
                    &*stored
                        .entry(g.to_string())
                        .or_insert_with(|| stored_schedule(s, &row)),
                ),
            },
        };
        let (tz, quiet) = match schedule {
            Some(c) => (c.time_zone, &c.quiet_hours),
            None => (s.fleet_time_zone, &s.no_quiet_hours),
        };
        let own = samples_of
            .entry(tz)
            .or_insert_with(|| a.cadence.samples(b, tz).into_iter().collect());
        let mut sums: Vec<i64> = row
            .sample_starts
            .iter()
            .zip(&row.sample_sums)
            .filter(|(st, _)| own.contains(st))
            .map(|(_, v)| *v)
            .collect();
        let obs = Observation {
            messages: row.messages,
            impressions: row.impressions,
            quiet: overlaps_quiet(quiet, tz, b, b + bucket),
            baseline: baseline(&mut sums, a.rule.min_baseline_samples),
        };
        match a.rule.ratio(&obs) {
            Ok(ratio) => judged.push(Judged {
                device_id: row.device_id,
                group_id: row.group_id,
                messages: row.messages,
                impressions: row.impressions,
                baseline: obs.baseline.unwrap_or_default(),
                ratio,
            }),
            Err(skip) => *out.not_judged.entry(skip_name(skip)).or_default() += 1,
        }
    }
    out.judged += judged.len();

    let mut fleet: Vec<f64> = judged.iter().map(|j| j.ratio).collect();
    fleet.sort_by(f64::total_cmp);
    let mut groups: HashMap<&str, Vec<f64>> = HashMap::new();
    for j in &judged {
        if let Some(g) = &j.group_id {
            groups.entry(g).or_default().push(j.ratio);
        }
    }
    for v in groups.values_mut() {
        v.sort_by(f64::total_cmp);
    }

    let runs: HashMap<String, i32> = db::anomaly::lock_streaks(&mut tx)
        .await?
        .into_iter()
        .collect();
    let open: HashSet<String> =
        db::alerts::firing_subjects(&mut *tx, &[Kind::ImpressionsAnomaly.as_str()])
            .await?
            .into_iter()
            .map(|(_, subject)| subject)
            .collect();
    let mut changed: Vec<(String, i32)> = Vec::new();
    for j in &judged {
        let in_group = j
            .group_id
            .as_deref()
            .and_then(|g| peer_ratio(&groups[g], Some(j.ratio), a.rule.min_peers));
        let (peers, compared_with) = match in_group {
            Some(p) => (Some(p), "group"),
            None => match peer_ratio(&fleet, Some(j.ratio), a.rule.min_peers) {
                Some(p) => (Some(p), "fleet"),
                None => (None, "none"),
            },
        };
        let run = runs.get(&j.device_id).copied().unwrap_or(0).max(0) as u32;
        let is_open = open.contains(&j.device_id);
        let v = a
            .rule
            .decide(run, is_open, j.ratio, a.rule.group_low(peers));
        if v.run != run {
            changed.push((j.device_id.clone(), v.run.min(i32::MAX as u32) as i32));
        }
        let details = json!({
            "bucket_start": b,
            "bucket_seconds": bucket.num_seconds(),
            "messages": j.messages,
            "impressions": j.impressions,
            "baseline": j.baseline,
            "ratio": j.ratio,
            "peer_ratio": peers,
            "compared_with": compared_with,
            "low_buckets": v.run,
        });
        match v.action {
            Action::Keep => {}
            Action::Fire => {
                let spec = AlertSpec {
                    kind: Kind::ImpressionsAnomaly,
                    subject: j.device_id.clone(),
                    device_id: Some(j.device_id.clone()),
                    group_id: j.group_id.clone(),
                    severity: s.severity(Kind::ImpressionsAnomaly),
                    summary: format!(
                        "{} reports but counts {} impressions per {} against a usual {} ({:.0} % of it) for {} buckets",
                        j.device_id,
                        j.impressions,
                        crate::detect::anomaly::span(bucket),
                        j.baseline.round(),
                        j.ratio * 100.0,
                        v.run
                    ),
                    details,
                };
                lifecycle::fire(&mut tx, &spec, now, s.reopen_window).await?;
                out.fired.push(j.device_id.clone());
            }
            Action::Resolve => {
                if let Some(id) =
                    db::alerts::firing_id(&mut tx, Kind::ImpressionsAnomaly, &j.device_id).await?
                {
                    let summary = format!(
                        "{} counts again: {} impressions in the bucket of {} against a usual {}",
                        j.device_id,
                        j.impressions,
                        at(b),
                        j.baseline.round()
                    );
                    lifecycle::resolve(&mut tx, id, now, Some(&summary), details).await?;
                    out.resolved.push(j.device_id.clone());
                }
            }
        }
    }
    db::anomaly::set_streaks(&mut tx, &changed, b).await?;
    db::anomaly::set_cursor(&mut tx, b, bucket.num_milliseconds()).await?;
    tx.commit().await?;
    out.buckets.push(b);
    Ok(())
}

/// A bucket length as people write it: `1h`, `15m`, `10s`.
pub fn span(d: TimeDelta) -> String {
    let s = d.num_seconds();
    if s % 86_400 == 0 {
        format!("{}d", s / 86_400)
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// One bucket of a device's series against its baseline (the API and the device page).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct SeriesPoint {
    /// Start of the bucket (arrival time, epoch-aligned).
    pub bucket_start: DateTime<Utc>,
    /// Messages that arrived in the bucket.
    pub messages: i64,
    /// Sum of their impressions values.
    pub impressions: i64,
    /// The median of the same slot in earlier seasons; null without enough samples.
    pub baseline: Option<f64>,
    /// `impressions / baseline` when the bucket is judged (quiet hours are not considered
    /// here: see `judged`).
    pub ratio: Option<f64>,
    /// Whether the rule judges this bucket by messages and baseline (quiet hours aside).
    pub judged: bool,
    /// Judged and under `below_fraction`.
    pub below: bool,
}

/// A device's buckets from `since` to `now` with their baselines in time zone `tz`, oldest
/// first. Buckets the device sent nothing in are left out.
pub async fn series(
    pool: &PgPool,
    a: &AnomalySettings,
    tz: Tz,
    device_id: &str,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<SeriesPoint>> {
    let c = &a.cadence;
    let since = bucket_start(since, c.bucket());
    let history = since - c.baseline() - TimeDelta::hours(2);
    let rows = db::anomaly::series(pool, device_id, history, now).await?;
    let by_start: HashMap<DateTime<Utc>, &db::anomaly::SeriesBucket> =
        rows.iter().map(|r| (r.bucket_start, r)).collect();
    Ok(rows
        .iter()
        .filter(|r| r.bucket_start >= since)
        .map(|r| {
            let mut sums: Vec<i64> = c
                .samples(r.bucket_start, tz)
                .iter()
                .filter_map(|st| by_start.get(st))
                .filter(|p| p.messages >= a.rule.min_messages)
                .map(|p| p.impressions)
                .collect();
            let base = baseline(&mut sums, a.rule.min_baseline_samples);
            let obs = Observation {
                messages: r.messages,
                impressions: r.impressions,
                quiet: false,
                baseline: base,
            };
            let ratio = a.rule.ratio(&obs).ok();
            SeriesPoint {
                bucket_start: r.bucket_start,
                messages: r.messages,
                impressions: r.impressions,
                baseline: base,
                ratio,
                judged: ratio.is_some(),
                below: ratio.is_some_and(|x| x < a.rule.below_fraction),
            }
        })
        .collect())
}
