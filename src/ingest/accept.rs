//! The transport-free entry point of ingest: one message as (topic, payload, arrival time) in,
//! what became of it out. The MQTT dispatcher, the tests and the demo's simulator all go through
//! [`accept`], so each of them classifies, admits devices (the cap), resolves groups, buffers
//! telemetry, stores presence and counts metrics exactly as production does. What is specific
//! to a transport (the MQTT `Publish`, its acknowledgement, concurrency and back-pressure) stays
//! with the caller: [`Accepted::ack`] says whether the message may be acknowledged.

use chrono::{DateTime, Utc};

use super::registry::Admission;
use super::{presence, IngestContext};
use crate::db::presence::Stored;
use crate::domain::{topic, DropReason};

/// Which handler a topic belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Our own canary, coming back.
    Canary,
    Presence,
    Telemetry,
    Unmatched,
}

/// Classify a topic: the canary first (it may match a telemetry filter), then presence, then
/// telemetry.
pub fn classify(ctx: &IngestContext, topic_name: &str) -> Kind {
    if topic_name == &*ctx.canary_topic {
        Kind::Canary
    } else if ctx
        .presence_filters
        .iter()
        .any(|f| topic::matches(f, topic_name))
    {
        Kind::Presence
    } else if ctx
        .telemetry_filters
        .iter()
        .any(|f| topic::matches(f, topic_name))
    {
        Kind::Telemetry
    } else {
        Kind::Unmatched
    }
}

/// What became of an impression message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryOutcome {
    /// In the coalescing buffer (flushed within `telemetry.flush_interval`); `new_device` when
    /// this message created the device.
    Buffered {
        new_device: bool,
    },
    Dropped(DropReason),
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Our canary; its round trip is recorded in the ingest health.
    Canary,
    Presence(presence::Outcome),
    Telemetry(TelemetryOutcome),
    /// No configured filter matches the topic.
    Unmatched,
}

impl Accepted {
    /// Whether the transport may acknowledge the message: everything except a presence event
    /// whose store kept failing until shutdown, which must be redelivered.
    pub fn ack(&self) -> bool {
        !matches!(self, Accepted::Presence(presence::Outcome::Abandoned))
    }
}

/// Accept one message. Presence is stored before this returns (retrying while Postgres is away,
/// until `ctx.stop` is cancelled); telemetry is buffered. Counts `received`, drops and
/// per-outcome metrics, and logs rate-limited warnings, so callers only acknowledge.
pub async fn accept(
    ctx: &IngestContext,
    topic_name: &str,
    payload: &[u8],
    received_at: DateTime<Utc>,
) -> Accepted {
    match classify(ctx, topic_name) {
        Kind::Canary => {
            // Measured on our clock at processing time, so a backed-up pipeline shows as lag.
            ctx.health.returned(payload, ctx.clock.now());
            Accepted::Canary
        }
        Kind::Presence => {
            ctx.metrics.received("presence");
            Accepted::Presence(accept_presence(ctx, topic_name, payload, received_at).await)
        }
        Kind::Telemetry => {
            ctx.metrics.received("telemetry");
            Accepted::Telemetry(accept_telemetry(ctx, topic_name, payload, received_at))
        }
        Kind::Unmatched => {
            ctx.metrics.received("unmatched");
            ctx.metrics.dropped(DropReason::TopicMismatch);
            Accepted::Unmatched
        }
    }
}

async fn accept_presence(
    ctx: &IngestContext,
    topic_name: &str,
    payload: &[u8],
    received_at: DateTime<Utc>,
) -> presence::Outcome {
    let outcome = presence::process(ctx, payload, received_at, &ctx.stop).await;
    record_presence(ctx, topic_name, outcome);
    outcome
}

/// Count what became of a presence message, and log a rate-limited line for a skipped one.
/// `accept` calls it; so does the dispatcher, which stores presence in batches.
pub fn record_presence(ctx: &IngestContext, topic_name: &str, outcome: presence::Outcome) {
    match outcome {
        presence::Outcome::Stored(s) => {
            let label = match s {
                Stored::New => "new",
                Stored::Duplicate => "duplicate",
            };
            ctx.metrics
                .presence_stored
                .get_or_create(&vec![("outcome", label.to_string())])
                .inc();
        }
        presence::Outcome::Dropped(reason) => {
            ctx.metrics.dropped(reason);
            if reason != DropReason::OwnClient {
                ctx.warn.warn(
                    reason.as_str(),
                    &format_args!(
                        "skipping presence message on {:?}: {reason}",
                        presence::truncate(topic_name)
                    ),
                );
            }
        }
        presence::Outcome::Abandoned => ctx.metrics.dropped(DropReason::StoreFailed),
    }
}

/// The telemetry half of [`accept`] for a topic already known to be telemetry: parse, admit
/// the device (the cap), resolve its group, buffer. Public for tests that feed the buffer under
/// topic layouts no filter is configured for; everything else goes through [`accept`].
pub fn accept_telemetry(
    ctx: &IngestContext,
    topic_name: &str,
    payload: &[u8],
    received_at: DateTime<Utc>,
) -> TelemetryOutcome {
    let imp = match ctx.format.parse(topic_name, payload, ctx.clock.now()) {
        Ok(imp) => imp,
        Err(reason) => {
            ctx.metrics.dropped(reason);
            ctx.warn.warn(
                reason.as_str(),
                &format_args!(
                    "skipping impression message on {:?}: {reason}",
                    presence::truncate(topic_name)
                ),
            );
            return TelemetryOutcome::Dropped(reason);
        }
    };
    if imp.device_ts_dropped {
        ctx.metrics.device_ts_dropped.inc();
    }
    if imp.impressions_invalid {
        ctx.metrics.impressions_invalid.inc();
        ctx.warn.warn(
            "impressions_invalid",
            &format_args!(
                "impressions value of a message from {:?} unusable (not a number from 0 to {}): counted as 1",
                imp.device_id,
                crate::domain::telemetry::MAX_IMPRESSIONS
            ),
        );
    }
    let new_device = match ctx.registry.admit(&imp.device_id) {
        Admission::OverCap => {
            ctx.metrics.dropped(DropReason::DeviceCap);
            ctx.warn.warn(
                "device_cap",
                &"device cap reached; skipping impressions of new devices",
            );
            return TelemetryOutcome::Dropped(DropReason::DeviceCap);
        }
        Admission::New => {
            ctx.metrics.devices_created.inc();
            true
        }
        Admission::Known => false,
    };
    let group = ctx
        .identity
        .group_for(&imp.device_id, imp.topic_group.as_deref());
    ctx.buffer.add(imp, group, received_at);
    TelemetryOutcome::Buffered { new_device }
}
