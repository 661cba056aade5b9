//! Our own ingest health (DESIGN.md §2a "Our own health"): ingest is healthy when every MQTT
//! connection is up and the canary message we publish to our own topic every few seconds came
//! back through the whole pipeline (broker → poll loop → channel → dispatcher) within
//! `canary_timeout`. While it is not, no device is evaluated: a broker outage or a stalled
//! pipeline must never turn into device alerts. Ingest keeps the bookkeeping (the canary goes
//! out and comes back through it); the detector only reads the verdict, [`IngestStatus`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::mqtt::ConnectionStatus;

/// The verdict a detector tick works with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestStatus {
    Healthy,
    /// Why not, for the `ingest_down` alert.
    Down(String),
}

/// The canary as `/healthz` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CanaryStatus {
    /// Canaries published since start.
    pub sent: u64,
    pub last_sent_at: Option<DateTime<Utc>>,
    pub last_returned_at: Option<DateTime<Utc>>,
    /// Of the last canary that came back.
    pub last_round_trip_ms: Option<f64>,
}

#[derive(Debug, Default)]
struct Canary {
    seq: u64,
    last_sent_at: Option<DateTime<Utc>>,
    last_returned_at: Option<DateTime<Utc>>,
    last_rtt: Option<TimeDelta>,
}

/// Canary bookkeeping, shared by the publisher task, the dispatcher and the detector.
#[derive(Debug)]
pub struct IngestHealth {
    started_at: DateTime<Utc>,
    timeout: TimeDelta,
    canary: Mutex<Canary>,
}

impl IngestHealth {
    pub fn new(started_at: DateTime<Utc>, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            started_at,
            timeout: TimeDelta::from_std(timeout).unwrap_or(TimeDelta::MAX),
            canary: Mutex::new(Canary::default()),
        })
    }

    /// The next canary payload: our send time, so the round trip needs no state.
    pub fn next_payload(&self, now: DateTime<Utc>) -> Vec<u8> {
        let mut c = self.canary.lock().unwrap_or_else(|e| e.into_inner());
        c.seq += 1;
        c.last_sent_at = Some(now);
        serde_json::json!({"seq": c.seq, "sent_at": now.timestamp_micros()})
            .to_string()
            .into_bytes()
    }

    /// A canary came back through the pipeline at `now`.
    pub fn returned(&self, payload: &[u8], now: DateTime<Utc>) {
        let sent = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v["sent_at"].as_i64())
            .and_then(DateTime::from_timestamp_micros);
        let mut c = self.canary.lock().unwrap_or_else(|e| e.into_inner());
        c.last_returned_at = Some(now);
        c.last_rtt = sent.map(|s| now - s);
    }

    /// Round trip of the last canary.
    pub fn last_rtt(&self) -> Option<TimeDelta> {
        self.canary
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_rtt
    }

    /// The last canary round trip, for `/healthz`.
    pub fn canary(&self) -> CanaryStatus {
        let c = self.canary.lock().unwrap_or_else(|e| e.into_inner());
        CanaryStatus {
            sent: c.seq,
            last_sent_at: c.last_sent_at,
            last_returned_at: c.last_returned_at,
            last_round_trip_ms: c
                .last_rtt
                .map(|d| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0),
        }
    }

    /// The verdict at `now` given the connections' states.
    pub fn status(
        &self,
        connections: &[Arc<ConnectionStatus>],
        now: DateTime<Utc>,
    ) -> IngestStatus {
        let down: Vec<String> = connections
            .iter()
            .filter_map(|c| {
                let s = c.snapshot();
                (!s.connected).then(|| {
                    format!(
                        "{} disconnected{}",
                        c.client_id,
                        s.last_error.map(|e| format!(": {e}")).unwrap_or_default()
                    )
                })
            })
            .collect();
        if !down.is_empty() {
            return IngestStatus::Down(down.join("; "));
        }
        let c = self.canary.lock().unwrap_or_else(|e| e.into_inner());
        // The last canary must be recent; right after start, allow one timeout for the first.
        let reference = c.last_returned_at.unwrap_or(self.started_at);
        if now - reference > self.timeout {
            return IngestStatus::Down(match c.last_returned_at {
                Some(t) => format!(
                    "canary not returned since {} (ingest stalled or lagging)",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => "no canary returned since start".to_string(),
            });
        }
        IngestStatus::Healthy
    }
}

/// Publish one canary on `connection` (if it is up). QoS 0: a lost canary is what we want to
/// notice, not something to redeliver. The supervisor runs it every `canary_interval`.
pub fn publish_canary(
    health: &IngestHealth,
    connection: &ConnectionStatus,
    topic: &str,
    now: DateTime<Utc>,
) {
    if !connection.snapshot().connected {
        return;
    }
    let payload = health.next_payload(now);
    if let Err(e) = connection.client.try_publish(
        topic.to_string(),
        rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        false,
        payload,
    ) {
        tracing::debug!(error = %e, "canary not queued");
    }
}
