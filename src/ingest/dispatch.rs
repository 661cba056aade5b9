//! The processing side of the channel: classifies each message by topic, hands presence to a
//! bounded set of concurrent writers and telemetry to the coalescing buffer. When every poll
//! loop has stopped and the channel is drained, it waits for the writers and flushes the buffer
//! one last time, so a SIGTERM loses nothing that was received. What a message means is
//! decided by `accept` (transport-free); this side only owns the MQTT parts: concurrency,
//! back-pressure and the acknowledgement.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::accept::{accept, classify, Kind};
use super::{telemetry, Incoming, IngestContext};

/// Presence events stored concurrently (each is one short transaction).
const PRESENCE_CONCURRENCY: usize = 8;

/// Run until every sender is gone, then drain and flush. `cancel` only stops retries of
/// presence writes that cannot succeed (their messages stay unacknowledged for redelivery).
pub async fn run(
    ctx: IngestContext,
    mut rx: mpsc::Receiver<Incoming>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = IngestContext {
        stop: cancel,
        ..ctx
    };
    let permits = Arc::new(Semaphore::new(PRESENCE_CONCURRENCY));
    let mut writers = JoinSet::new();
    while let Some(msg) = rx.recv().await {
        ctx.metrics.channel_depth.dec();
        while let Some(done) = writers.try_join_next() {
            done?;
        }
        if classify(&ctx, &msg.topic) == Kind::Presence {
            let permit = permits.clone().acquire_owned().await?;
            let ctx = ctx.clone();
            writers.spawn(async move {
                settle(&ctx, &msg).await;
                drop(permit);
            });
        } else {
            // Telemetry, the canary and strays never wait on I/O: inline, in arrival order.
            settle(&ctx, &msg).await;
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

/// Accept one message and acknowledge it unless it must be redelivered.
async fn settle(ctx: &IngestContext, msg: &Incoming) {
    if accept(ctx, &msg.topic, &msg.publish.payload, msg.received_at)
        .await
        .ack()
    {
        msg.ack();
    }
}
