//! The demo's CloudWatch: a simulated metric source whose `AWS/IoT` series follow what the
//! simulated fleet does, written through the real poller's storage (`db::cloudwatch`: metric
//! rows, one-minute `Sum` samples, `polled_through`), so the real metric rules
//! (`detect::metrics`, the `metric_rules` task) judge them and the dashboard charts them as they
//! would AWS's.
//!
//! What counts ([`contribution`]): every `DUPLICATE_CLIENTID` disconnect adds
//! [`CLIENT_ID_THROTTLE_PER_TAKEOVER`] to `Connect.ClientIDThrottle` (the CONNECTs IoT Core
//! throttles while two units fight over one client id), every `THROTTLED` disconnect adds
//! [`THROTTLES_PER_DISCONNECT`] to `Connect.Throttle`, every refused connection 1 to
//! `Connect.AuthError`. `PublishIn.Throttle` only carries background noise, below its rule.
//!
//! Like CloudWatch, a period is complete only once it has ended: each pass writes the periods so
//! far and moves `polled_through` to the start of the current one, so a burst is judged at the
//! next minute boundary. At start, [`backfill`] writes three hours of quiet history (with one
//! old reconnect storm), so the charts have a past.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::json;
use sqlx::PgPool;

use crate::clock::SharedClock;
use crate::db::cloudwatch::{self as store, Sample, Source};
use crate::sim::{EventKind, Outgoing};

pub const NAMESPACE: &str = "AWS/IoT";

/// The metrics the demo writes, with the demo's rule thresholds (warning, critical) over a
/// one-minute window (`demo::config_toml`).
pub const RULES: [(&str, f64, f64); 4] = [
    ("Connect.ClientIDThrottle", 0.0, 50.0),
    ("Connect.Throttle", 10.0, 100.0),
    ("Connect.AuthError", 2.0, 100.0),
    ("PublishIn.Throttle", 10.0, 500.0),
];

pub const CLIENT_ID_THROTTLE_PER_TAKEOVER: f64 = 3.0;
pub const THROTTLES_PER_DISCONNECT: f64 = 6.0;

const PERIOD: TimeDelta = TimeDelta::seconds(60);

/// How often the samples are written.
pub const EVERY: Duration = Duration::from_secs(2);

/// What one published message adds to which metric, if anything.
pub fn contribution(o: &Outgoing) -> Option<(&'static str, f64)> {
    match o.kind {
        EventKind::ConnectFailed => Some(("Connect.AuthError", 1.0)),
        EventKind::Disconnected => {
            let p: serde_json::Value = serde_json::from_str(&o.payload).ok()?;
            match p["disconnectReason"].as_str()? {
                "DUPLICATE_CLIENTID" => {
                    Some(("Connect.ClientIDThrottle", CLIENT_ID_THROTTLE_PER_TAKEOVER))
                }
                "THROTTLED" => Some(("Connect.Throttle", THROTTLES_PER_DISCONNECT)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Background noise of a metric in a period: a deterministic 0 or 1 now and then (never
/// enough to cross a rule).
fn noise(metric: &str, period: DateTime<Utc>, seed: u64) -> f64 {
    let h = metric
        .bytes()
        .fold(seed ^ period.timestamp() as u64, |h, b| {
            h.wrapping_mul(0x100_0000_01b3) ^ b as u64
        });
    if metric == "PublishIn.Throttle" && h % 5 == 0 {
        1.0
    } else {
        0.0
    }
}

/// The sums per (metric, period start) of what the story published.
#[derive(Default)]
pub struct Series {
    sums: Mutex<BTreeMap<(&'static str, DateTime<Utc>), f64>>,
}

fn period_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(PERIOD).unwrap_or(t)
}

impl Series {
    /// Count one published message.
    pub fn record(&self, o: &Outgoing) {
        if let Some((metric, v)) = contribution(o) {
            *self
                .sums
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry((metric, period_of(o.at)))
                .or_default() += v;
        }
    }

    /// The sum of `metric` in the period starting at `period` (0 when nothing happened).
    pub fn sum(&self, metric: &'static str, period: DateTime<Utc>) -> f64 {
        let sums = self.sums.lock().unwrap_or_else(|e| e.into_inner());
        sums.get(&(metric, period)).copied().unwrap_or(0.0)
    }

    /// Forget periods before `before`.
    fn prune(&self, before: DateTime<Utc>) {
        self.sums
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, p), _| *p >= before);
    }
}

/// The metric rows the demo writes (found or created once, at start).
pub type Ids = Vec<(&'static str, i64)>;

async fn metric_ids(pool: &PgPool, now: DateTime<Utc>) -> sqlx::Result<Ids> {
    let mut ids = Vec::new();
    for (name, _, _) in RULES {
        let dims = json!({"Protocol": "MQTT"});
        ids.push((
            name,
            store::upsert_metric(pool, NAMESPACE, name, &dims, Source::Discovered, now).await?,
        ));
    }
    Ok(ids)
}

/// Three hours of history before `now`: noise, and a reconnect storm two hours ago (an old
/// incident on the charts, long resolved).
pub async fn backfill(pool: &PgPool, ids: &Ids, now: DateTime<Utc>, seed: u64) -> sqlx::Result<()> {
    let current = period_of(now);
    let storm = current - TimeDelta::minutes(118);
    let mut samples = Vec::new();
    for (name, id) in ids {
        for k in 1..=180 {
            let p = current - PERIOD * k;
            let mut value = noise(name, p, seed);
            if *name == "Connect.Throttle" && (storm..storm + TimeDelta::minutes(4)).contains(&p) {
                value += 40.0;
            }
            samples.push(Sample {
                metric_id: *id,
                period_start: p,
                value,
            });
        }
    }
    store::upsert_samples(pool, &samples, 60, now).await?;
    let all: Vec<i64> = ids.iter().map(|(_, id)| *id).collect();
    store::advance_polled_through(pool, &all, current).await
}

/// One pass: the previous and the current period of every metric, then `polled_through` to
/// the start of the current one.
pub async fn pass(
    pool: &PgPool,
    ids: &Ids,
    series: &Series,
    now: DateTime<Utc>,
    seed: u64,
) -> sqlx::Result<()> {
    let current = period_of(now);
    let mut samples = Vec::new();
    for (name, id) in ids {
        for p in [current - PERIOD, current] {
            samples.push(Sample {
                metric_id: *id,
                period_start: p,
                value: series.sum(name, p) + noise(name, p, seed),
            });
        }
    }
    store::upsert_samples(pool, &samples, 60, now).await?;
    let all: Vec<i64> = ids.iter().map(|(_, id)| *id).collect();
    store::advance_polled_through(pool, &all, current).await?;
    series.prune(current - PERIOD * 5);
    Ok(())
}

/// The metric rows, then the backfill, then a pass every [`EVERY`], for as long as the demo
/// runs (failures are logged and retried after [`EVERY`]).
pub async fn run(series: std::sync::Arc<Series>, pool: PgPool, clock: SharedClock, seed: u64) {
    let ids = loop {
        match metric_ids(&pool, clock.now()).await {
            Ok(ids) => break ids,
            Err(e) => tracing::warn!(error = %e, "demo: creating the CloudWatch metric rows"),
        }
        tokio::time::sleep(EVERY).await;
    };
    if let Err(e) = backfill(&pool, &ids, clock.now(), seed).await {
        tracing::warn!(error = %e, "demo: writing the CloudWatch history");
    }
    loop {
        if let Err(e) = pass(&pool, &ids, &series, clock.now(), seed).await {
            tracing::warn!(error = %e, "demo: writing the simulated CloudWatch samples");
        }
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(kind: EventKind, payload: serde_json::Value, at: DateTime<Utc>) -> Outgoing {
        Outgoing {
            at,
            topic: "t".into(),
            payload: payload.to_string(),
            kind,
            device: "screen-1".into(),
            incident: None,
        }
    }

    #[test]
    fn the_series_follow_the_fleets_events_per_minute() {
        let t = DateTime::parse_from_rfc3339("2026-11-30T12:00:30Z")
            .unwrap()
            .to_utc();
        let s = Series::default();
        let dup = json!({"disconnectReason": "DUPLICATE_CLIENTID"});
        s.record(&out(EventKind::Disconnected, dup.clone(), t));
        s.record(&out(
            EventKind::Disconnected,
            dup,
            t + TimeDelta::seconds(40),
        ));
        s.record(&out(
            EventKind::Disconnected,
            json!({"disconnectReason": "THROTTLED"}),
            t,
        ));
        s.record(&out(
            EventKind::Disconnected,
            json!({"disconnectReason": "CONNECTION_LOST"}),
            t,
        ));
        s.record(&out(EventKind::ConnectFailed, json!({}), t));
        s.record(&out(EventKind::Impression, json!({}), t));
        let p = period_of(t);
        assert_eq!(p.to_rfc3339(), "2026-11-30T12:00:00+00:00");
        assert_eq!(
            s.sum("Connect.ClientIDThrottle", p),
            CLIENT_ID_THROTTLE_PER_TAKEOVER
        );
        assert_eq!(
            s.sum("Connect.ClientIDThrottle", p + PERIOD),
            CLIENT_ID_THROTTLE_PER_TAKEOVER,
            "the second one is in the next minute"
        );
        assert_eq!(s.sum("Connect.Throttle", p), THROTTLES_PER_DISCONNECT);
        assert_eq!(s.sum("Connect.AuthError", p), 1.0);
        assert_eq!(s.sum("PublishIn.Throttle", p), 0.0);
        s.prune(p + PERIOD);
        assert_eq!(s.sum("Connect.Throttle", p), 0.0);
    }

    #[test]
    fn a_rounds_bursts_cross_the_demo_rules_and_noise_never_does() {
        use crate::sim::incident::{BAD_CERT_ATTEMPTS, DUPLICATE_TAKEOVERS, THROTTLED_CYCLES};
        let rule = |m: &str| RULES.iter().find(|r| r.0 == m).unwrap().1;
        // at least half of each burst lands in one minute
        assert!(
            CLIENT_ID_THROTTLE_PER_TAKEOVER * (DUPLICATE_TAKEOVERS / 2) as f64
                > rule("Connect.ClientIDThrottle")
        );
        assert!(
            THROTTLES_PER_DISCONNECT * (THROTTLED_CYCLES / 2) as f64 > rule("Connect.Throttle")
        );
        assert!((BAD_CERT_ATTEMPTS / 2) as f64 > rule("Connect.AuthError"));
        let t0 = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .to_utc();
        for (m, warning, _) in RULES {
            let worst = (0..10_000)
                .map(|k| noise(m, t0 + PERIOD * k, 7))
                .fold(0.0, f64::max);
            assert!(worst <= warning, "{m}");
        }
    }
}
