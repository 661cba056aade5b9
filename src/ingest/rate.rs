//! The IoT Core per-connection limit (issue 9 item 9): AWS IoT Core delivers at most
//! `mqtt.per_connection_limit` (100) publishes per second to one connection and throttles the
//! rest (`PublishOut.Throttle`; not queued for us). This module measures each subscriber
//! connection's receive rate and says when one approaches the limit, with how many connections
//! the total rate needs.
//!
//! Contract:
//! - [`RateMeter`]: messages per second over the last [`WINDOW_SECS`] whole seconds of the
//!   injected clock, the current second included (a sliding window of one-second buckets: exact,
//!   fixed memory, no decay constant to explain). A burst counts fully for ten seconds, then not
//!   at all; a clock going backwards never panics (older buckets are simply not counted).
//! - [`connections_needed`]`(total)` = ⌈total / (limit × warn)⌉, at least 1: the connections
//!   that keep every one under the warning threshold *if* `$share` spread messages evenly; it
//!   spreads them at random, hence the warning fraction as headroom.
//! - [`assess`]: a connection warns when its rate is at least `limit × warn`; the warning names
//!   the rate, the limit, the connections needed and how to get them (`mqtt.connections`, which
//!   subscribes telemetry through `$share`; presence through a rule-republished topic with
//!   `mqtt.share_presence`).
//! - [`tick`] (every few seconds, every replica): sets the `/metrics` gauges and logs the warning
//!   rate-limited. `/healthz` calls [`assess`] itself, so it is never older than the request.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::mqtt::ConnectionStatus;
use crate::logging::RateLimitedWarn;
use crate::metrics::Metrics;

/// Seconds the receive rate is averaged over.
pub const WINDOW_SECS: i64 = 10;

/// Messages per second over the last [`WINDOW_SECS`] seconds.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    /// (unix second, messages in it), indexed by second modulo the window.
    buckets: [(i64, u64); WINDOW_SECS as usize],
}

impl RateMeter {
    pub fn record(&mut self, now: DateTime<Utc>, n: u64) {
        let sec = now.timestamp();
        let b = &mut self.buckets[sec.rem_euclid(WINDOW_SECS) as usize];
        if b.0 != sec {
            *b = (sec, 0);
        }
        b.1 = b.1.saturating_add(n);
    }

    pub fn rate(&self, now: DateTime<Utc>) -> f64 {
        let sec = now.timestamp();
        let n: u64 = self
            .buckets
            .iter()
            .filter(|(s, _)| *s <= sec && sec - *s < WINDOW_SECS)
            .map(|(_, n)| *n)
            .sum();
        n as f64 / WINDOW_SECS as f64
    }
}

/// The configured limit and warning fraction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Publishes per second per connection (`mqtt.per_connection_limit`).
    pub limit: f64,
    /// Fraction of the limit at which to warn (`mqtt.per_connection_warn`).
    pub warn: f64,
    /// Connections configured now (`mqtt.connections`).
    pub connections: usize,
}

impl Limits {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            limit: cfg.mqtt.per_connection_limit,
            warn: cfg.mqtt.per_connection_warn,
            connections: cfg.mqtt.connections,
        }
    }

    /// The rate at which a connection warns.
    pub fn threshold(&self) -> f64 {
        self.limit * self.warn
    }
}

/// ⌈total / (limit × warn)⌉, at least 1.
pub fn connections_needed(total: f64, l: &Limits) -> usize {
    let per = l.threshold();
    if !(total.is_finite() && per > 0.0) || total <= 0.0 {
        return 1;
    }
    (total / per).ceil().max(1.0) as usize
}

/// One connection's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionRate {
    pub client_id: String,
    /// Messages per second over the last [`WINDOW_SECS`] seconds.
    pub rate: f64,
    /// Set when the rate is at or above `limit × warn`.
    pub warning: Option<String>,
}

/// The pool's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    pub connections: Vec<ConnectionRate>,
    pub total_rate: f64,
    pub limit: f64,
    pub warn_at: f64,
    pub connections_needed: usize,
}

/// Judge `rates` ((client id, rate) per connection) against `l`.
pub fn assess(rates: &[(String, f64)], l: &Limits) -> Assessment {
    let total: f64 = rates.iter().map(|(_, r)| r).sum();
    let needed = connections_needed(total, l);
    let connections = rates
        .iter()
        .map(|(client_id, rate)| ConnectionRate {
            client_id: client_id.clone(),
            rate: *rate,
            warning: (*rate >= l.threshold()).then(|| {
                format!(
                    "receiving {rate:.1} msg/s, {:.0}% of AWS IoT Core's {} publishes/s \
                     per-connection limit: {needed} connection(s) needed for {total:.1} msg/s in \
                     total (mqtt.connections = {}); raise mqtt.connections (telemetry is spread \
                     over them with $share; presence too with a rule-republished topic and \
                     mqtt.share_presence)",
                    rate / l.limit * 100.0,
                    l.limit,
                    l.connections,
                )
            }),
        })
        .collect();
    Assessment {
        connections,
        total_rate: total,
        limit: l.limit,
        warn_at: l.threshold(),
        connections_needed: needed,
    }
}

/// The assessment of the pool now.
pub fn assess_pool(
    statuses: &[Arc<ConnectionStatus>],
    l: &Limits,
    now: DateTime<Utc>,
) -> Assessment {
    let rates: Vec<(String, f64)> = statuses
        .iter()
        .map(|c| (c.client_id.clone(), c.rate(now)))
        .collect();
    assess(&rates, l)
}

/// Refresh the gauges and log (rate-limited) each connection near the limit.
pub fn tick(
    statuses: &[Arc<ConnectionStatus>],
    l: &Limits,
    metrics: &Metrics,
    warn: &RateLimitedWarn,
    now: DateTime<Utc>,
) -> Assessment {
    let a = assess_pool(statuses, l, now);
    for c in &a.connections {
        metrics
            .mqtt_receive_rate
            .get_or_create(&vec![("connection", c.client_id.clone())])
            .set(c.rate);
        if let Some(w) = &c.warning {
            warn.warn(
                "mqtt_per_connection_limit",
                &format_args!("MQTT connection {}: {w}", c.client_id),
            );
        }
    }
    metrics
        .mqtt_connections_needed
        .set(i64::try_from(a.connections_needed).unwrap_or(i64::MAX));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn limits(connections: usize) -> Limits {
        Limits {
            limit: 100.0,
            warn: 0.8,
            connections,
        }
    }

    #[test]
    fn the_meter_averages_the_last_ten_seconds() {
        let mut m = RateMeter::default();
        assert_eq!(m.rate(t(0)), 0.0);
        for s in 0..10 {
            m.record(t(s * 1000), 50);
        }
        assert_eq!(m.rate(t(9_500)), 50.0);
        // one second later the first bucket left the window
        assert_eq!(m.rate(t(10_000)), 45.0);
        // a burst counts for ten seconds, then not at all
        let mut m = RateMeter::default();
        m.record(t(0), 1000);
        assert_eq!(m.rate(t(9_999)), 100.0);
        assert_eq!(m.rate(t(10_000)), 0.0);
        // a clock going backwards does not panic nor count the future bucket
        assert_eq!(m.rate(t(-5_000)), 0.0);
        m.record(t(-5_000), 10);
        assert_eq!(m.rate(t(-5_000)), 1.0);
        // a bucket reused after the window wrapped starts from zero
        let mut m = RateMeter::default();
        m.record(t(0), 7);
        m.record(t(10_000), 3);
        assert_eq!(m.rate(t(10_000)), 0.3);
        m.record(t(0) + TimeDelta::days(1), u64::MAX);
        m.record(t(0) + TimeDelta::days(1), 5);
    }

    #[test]
    fn connections_needed_rounds_up_with_the_warning_headroom() {
        let l = limits(1);
        assert_eq!(connections_needed(0.0, &l), 1);
        assert_eq!(connections_needed(79.9, &l), 1);
        assert_eq!(connections_needed(80.0, &l), 1);
        assert_eq!(connections_needed(80.1, &l), 2);
        assert_eq!(connections_needed(160.0, &l), 2);
        // the seed fleet's peaks: ≈1,500 msg/s
        assert_eq!(connections_needed(1500.0, &l), 19);
        assert_eq!(connections_needed(f64::NAN, &l), 1);
        assert_eq!(connections_needed(f64::INFINITY, &l), 1);
        assert_eq!(connections_needed(-3.0, &l), 1);
    }

    #[test]
    fn warns_at_the_fraction_and_names_what_to_do() {
        let a = assess(&[("c-0".into(), 85.0), ("c-1".into(), 79.0)], &limits(2));
        assert_eq!(a.total_rate, 164.0);
        assert_eq!(a.connections_needed, 3);
        let w = a.connections[0].warning.as_deref().unwrap();
        assert!(w.contains("85.0 msg/s") && w.contains("85%"), "{w}");
        assert!(w.contains("3 connection(s) needed"), "{w}");
        assert!(
            w.contains("mqtt.connections = 2") && w.contains("$share"),
            "{w}"
        );
        assert_eq!(a.connections[1].warning, None);
        let a = assess(&[("c-0".into(), 80.0)], &limits(1));
        assert!(a.connections[0].warning.is_some(), "at the threshold warns");
    }
}
