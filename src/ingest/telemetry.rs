//! The write-coalescing buffer for impressions. Messages only update per-device entries in
//! memory (last arrival, newest device time, counts per hour, and messages and impressions per
//! anomaly bucket of arrival time, `anomaly.bucket`); a flusher writes everything in
//! one statement at least every `telemetry.flush_interval`, so database load grows with the
//! number of devices, not with the message rate. A failed flush puts its batch back (the
//! merge is commutative), so a Postgres outage loses nothing while the process lives.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio::sync::Notify;

use super::IngestContext;
use crate::db::telemetry::{write_batch, BucketRow, DeviceRow, HourRow};
use crate::domain::anomaly::bucket_start;
use crate::domain::telemetry::Impression;
use crate::metrics::Metrics;

/// One device's coalesced data since the last flush.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub group: Option<String>,
    pub last_arrival: DateTime<Utc>,
    pub max_device_ts: Option<DateTime<Utc>>,
    /// Earliest device time in this batch: tells whether a backlog covered a gap.
    pub min_device_ts: Option<DateTime<Utc>>,
    pub hours: BTreeMap<DateTime<Utc>, i64>,
    /// (messages, impressions) per anomaly bucket of arrival time.
    pub buckets: BTreeMap<DateTime<Utc>, (i64, i64)>,
}

impl Pending {
    fn merge(&mut self, other: Pending) {
        self.group = self.group.take().or(other.group);
        self.last_arrival = self.last_arrival.max(other.last_arrival);
        self.max_device_ts = self.max_device_ts.max(other.max_device_ts);
        self.min_device_ts = match (self.min_device_ts, other.min_device_ts) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for (h, c) in other.hours {
            *self.hours.entry(h).or_default() += c;
        }
        for (b, (m, i)) in other.buckets {
            let e = self.buckets.entry(b).or_default();
            e.0 += m;
            // saturating: a flush that keeps failing must not wrap a sum
            e.1 = e.1.saturating_add(i);
        }
    }
}

pub type Batch = HashMap<String, Pending>;

pub struct TelemetryBuffer {
    inner: Mutex<Batch>,
    /// Woken when the buffer holds `max_devices` devices, to flush early.
    full: Notify,
    max_devices: usize,
    /// The anomaly bucket length (`anomaly.bucket`).
    bucket: TimeDelta,
    metrics: Arc<Metrics>,
}

fn hour_of(ts: DateTime<Utc>) -> DateTime<Utc> {
    ts.duration_trunc(TimeDelta::hours(1)).unwrap_or(ts)
}

impl TelemetryBuffer {
    pub fn new(max_devices: usize, bucket: TimeDelta, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
            full: Notify::new(),
            max_devices,
            bucket,
            metrics,
        }
    }

    /// Resolves when the buffer has filled up (the flusher then flushes early).
    pub async fn filled(&self) {
        self.full.notified().await
    }

    /// Record one impression that arrived at `arrival`.
    pub fn add(&self, imp: Impression, group: Option<String>, arrival: DateTime<Utc>) {
        let hour = hour_of(imp.device_ts.unwrap_or(arrival));
        let p = Pending {
            group,
            last_arrival: arrival,
            max_device_ts: imp.device_ts,
            min_device_ts: imp.device_ts,
            hours: BTreeMap::from([(hour, 1)]),
            buckets: BTreeMap::from([(bucket_start(arrival, self.bucket), (1, imp.impressions))]),
        };
        let len = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match inner.get_mut(&imp.device_id) {
                Some(e) => e.merge(p),
                None => {
                    inner.insert(imp.device_id, p);
                }
            }
            inner.len()
        };
        self.metrics.buffer_devices.set(len as i64);
        if len >= self.max_devices {
            self.full.notify_one();
        }
    }

    /// Take everything buffered.
    pub fn take(&self) -> Batch {
        let batch = std::mem::take(&mut *self.inner.lock().unwrap_or_else(|e| e.into_inner()));
        self.metrics.buffer_devices.set(0);
        batch
    }

    /// Put a batch back after a failed flush.
    pub fn restore(&self, batch: Batch) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (id, p) in batch {
            match inner.get_mut(&id) {
                Some(e) => e.merge(p),
                None => {
                    inner.insert(id, p);
                }
            }
        }
        self.metrics.buffer_devices.set(inner.len() as i64);
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Turn a batch into sorted, duplicate-free rows (a `HashMap` already has one entry per
/// device; sorting gives every writer the same lock order).
pub fn rows(batch: &Batch) -> (Vec<DeviceRow>, Vec<HourRow>, Vec<BucketRow>) {
    let mut devices: Vec<DeviceRow> = batch
        .iter()
        .map(|(id, p)| DeviceRow {
            device_id: id.clone(),
            group_id: p.group.clone(),
            last_arrival: p.last_arrival,
            max_device_ts: p.max_device_ts,
            min_device_ts: p.min_device_ts,
        })
        .collect();
    devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    let mut hours: Vec<HourRow> = batch
        .iter()
        .flat_map(|(id, p)| {
            p.hours.iter().map(move |(h, c)| HourRow {
                device_id: id.clone(),
                hour: *h,
                count: *c,
            })
        })
        .collect();
    hours.sort_by(|a, b| (&a.device_id, a.hour).cmp(&(&b.device_id, b.hour)));
    let mut buckets: Vec<BucketRow> = batch
        .iter()
        .flat_map(|(id, p)| {
            p.buckets.iter().map(move |(b, (m, i))| BucketRow {
                device_id: id.clone(),
                bucket_start: *b,
                messages: *m,
                impressions: *i,
            })
        })
        .collect();
    buckets.sort_by(|a, b| (&a.device_id, a.bucket_start).cmp(&(&b.device_id, b.bucket_start)));
    (devices, hours, buckets)
}

/// Write what is buffered. On failure the batch goes back into the buffer.
pub async fn flush(ctx: &IngestContext) -> anyhow::Result<usize> {
    let batch = ctx.buffer.take();
    if batch.is_empty() {
        return Ok(0);
    }
    let n = batch.len();
    let (devices, hours, buckets) = rows(&batch);
    let started = Instant::now();
    match write_batch(&ctx.pool, &devices, &hours, &buckets, &ctx.fleet_time_zone).await {
        Ok(()) => {
            ctx.metrics
                .flush_seconds
                .observe(started.elapsed().as_secs_f64());
            ctx.metrics.flush_batch_devices.observe(n as f64);
            Ok(n)
        }
        Err(e) => {
            ctx.metrics.flush_errors.inc();
            ctx.buffer.restore(batch);
            Err(anyhow::Error::new(e).context(format!("flushing telemetry for {n} devices")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn imp(id: &str, ts: Option<&str>) -> Impression {
        Impression {
            device_id: id.into(),
            topic_group: None,
            device_ts: ts.map(t),
            device_ts_dropped: false,
            impressions: 2,
            impressions_invalid: false,
        }
    }

    #[test]
    fn coalesces_per_device_and_hour() {
        let b = TelemetryBuffer::new(100, TimeDelta::minutes(15), Metrics::new());
        b.add(
            imp("a", Some("2026-11-27T10:59:00Z")),
            None,
            t("2026-11-27T11:00:05Z"),
        );
        b.add(
            imp("a", Some("2026-11-27T11:01:00Z")),
            None,
            t("2026-11-27T11:01:02Z"),
        );
        b.add(imp("a", None), None, t("2026-11-27T11:00:30Z"));
        b.add(imp("b", None), Some("g".into()), t("2026-11-27T11:00:00Z"));
        let batch = b.take();
        assert!(b.is_empty());
        let a = &batch["a"];
        assert_eq!(a.last_arrival, t("2026-11-27T11:01:02Z"));
        assert_eq!(a.max_device_ts, Some(t("2026-11-27T11:01:00Z")));
        assert_eq!(a.hours[&t("2026-11-27T10:00:00Z")], 1);
        assert_eq!(a.hours[&t("2026-11-27T11:00:00Z")], 2);
        assert_eq!(
            a.buckets,
            BTreeMap::from([(t("2026-11-27T11:00:00Z"), (3, 6)),])
        );
        let (devices, hours, buckets) = rows(&batch);
        assert_eq!(buckets.len(), 2);
        assert_eq!(
            devices
                .iter()
                .map(|d| d.device_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(hours.len(), 3);
        assert_eq!(devices[1].group_id.as_deref(), Some("g"));
    }

    #[test]
    fn restore_merges_commutatively() {
        let b = TelemetryBuffer::new(100, TimeDelta::minutes(15), Metrics::new());
        b.add(imp("a", None), None, t("2026-11-27T11:00:00Z"));
        let first = b.take();
        b.add(imp("a", None), None, t("2026-11-27T11:30:00Z"));
        b.restore(first);
        let all = b.take();
        assert_eq!(all["a"].last_arrival, t("2026-11-27T11:30:00Z"));
        assert_eq!(all["a"].hours[&t("2026-11-27T11:00:00Z")], 2);
        assert_eq!(all["a"].buckets[&t("2026-11-27T11:30:00Z")], (1, 2));
        assert_eq!(all["a"].buckets[&t("2026-11-27T11:00:00Z")], (1, 2));
    }
}
