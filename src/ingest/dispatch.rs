//! The processing side of the channel: classifies each message by topic, hands presence to a
//! bounded set of concurrent writers and telemetry to the coalescing buffer. When every poll
//! loop has stopped and the channel is drained, it waits for the writers and flushes the buffer
//! one last time, so a SIGTERM loses nothing that was received.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{presence, telemetry, Incoming, IngestContext};
use crate::domain::{topic, DropReason};

/// Presence events stored concurrently (each is one short transaction).
const PRESENCE_CONCURRENCY: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Canary,
    Presence,
    Telemetry,
    Unmatched,
}

fn classify(ctx: &IngestContext, topic_name: &str) -> Kind {
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

/// Handle one telemetry message: parse, admit the device, buffer, acknowledge.
pub fn handle_telemetry(ctx: &IngestContext, msg: &Incoming) {
    let parsed = ctx
        .format
        .parse(&msg.topic, &msg.publish.payload, ctx.clock.now());
    match parsed {
        Ok(imp) => {
            if imp.device_ts_dropped {
                ctx.metrics.device_ts_dropped.inc();
            }
            match ctx.registry.admit(&imp.device_id) {
                super::registry::Admission::OverCap => {
                    ctx.metrics.dropped(DropReason::DeviceCap);
                    ctx.warn.warn(
                        "device_cap",
                        &"device cap reached; skipping impressions of new devices",
                    );
                }
                admission => {
                    if admission == super::registry::Admission::New {
                        ctx.metrics.devices_created.inc();
                    }
                    let group = ctx
                        .identity
                        .group_for(&imp.device_id, imp.topic_group.as_deref());
                    ctx.buffer.add(imp, group, msg.received_at);
                }
            }
        }
        Err(reason) => {
            ctx.metrics.dropped(reason);
            ctx.warn.warn(
                reason.as_str(),
                &format_args!(
                    "skipping impression message on {:?}: {reason}",
                    presence::truncate(&msg.topic)
                ),
            );
        }
    }
    msg.ack();
}

/// Run until every sender is gone, then drain and flush. `cancel` only stops retries of
/// presence writes that cannot succeed (their messages stay unacknowledged for redelivery).
pub async fn run(
    ctx: IngestContext,
    mut rx: mpsc::Receiver<Incoming>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(PRESENCE_CONCURRENCY));
    let mut writers = JoinSet::new();
    while let Some(msg) = rx.recv().await {
        ctx.metrics.channel_depth.dec();
        while let Some(done) = writers.try_join_next() {
            done?;
        }
        match classify(&ctx, &msg.topic) {
            Kind::Canary => {
                // Measured here, after the channel, so a backed-up pipeline shows as lag.
                ctx.health.returned(&msg.publish.payload, ctx.clock.now());
                msg.ack();
            }
            Kind::Presence => {
                ctx.metrics.received("presence");
                let permit = permits.clone().acquire_owned().await?;
                let (ctx, cancel) = (ctx.clone(), cancel.clone());
                writers.spawn(async move {
                    presence::handle(&ctx, msg, &cancel).await;
                    drop(permit);
                });
            }
            Kind::Telemetry => {
                ctx.metrics.received("telemetry");
                handle_telemetry(&ctx, &msg);
            }
            Kind::Unmatched => {
                ctx.metrics.received("unmatched");
                ctx.metrics.dropped(DropReason::TopicMismatch);
                msg.ack();
            }
        }
    }
    while let Some(done) = writers.join_next().await {
        done?;
    }
    // Final flush: retry briefly in case Postgres blinks during shutdown.
    for attempt in 0..5 {
        match telemetry::flush(&ctx).await {
            Ok(n) => {
                tracing::info!(devices = n, "final telemetry flush done");
                return Ok(());
            }
            Err(e) if attempt < 4 => {
                tracing::warn!(error = %format!("{e:#}"), "final flush failed, retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => return Err(e.context("final telemetry flush")),
        }
    }
    Ok(())
}
