//! The processing side of the channel: classifies each message by topic, hands presence to a
//! fixed set of batching writers and telemetry to the coalescing buffer.
//!
//! Presence: the dispatcher parses and resolves each event (CPU only) and routes it by its
//! device (or, for an unknown client, its client ID) to one of [`PRESENCE_WRITERS`] writers.
//! A writer takes whatever is queued, up to [`PRESENCE_BATCH`] events, and stores it in one
//! transaction (`db::presence::store_batch`, the same result as one by one in arrival order),
//! then acknowledges each message. So one device's events are stored by one writer in arrival
//! order, no two writers of this process lock the same device row, a quiet fleet still stores
//! each event at once (a batch of one), and a reconnect storm costs one commit per batch
//! instead of one per event (issue 12). Acknowledgements leave in arrival order per connection
//! whatever the writers' order (`ack`).
//!
//! When every poll loop has stopped and the channel is drained, it waits for the writers and
//! flushes the buffer one last time, so a SIGTERM loses nothing that was received. What a message means is
//! decided by `accept` (transport-free); this side only owns the MQTT parts: concurrency,
//! back-pressure and the acknowledgement.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::accept::{accept, classify, record_presence, Kind};
use super::presence::{self, Prepared};
use super::{telemetry, Incoming, IngestContext};

/// Presence writers, each one transaction at a time.
pub const PRESENCE_WRITERS: usize = 4;
/// Most presence events in one transaction.
pub const PRESENCE_BATCH: usize = 512;

/// A presence message waiting for its writer.
struct Job {
    msg: Incoming,
    prepared: Prepared,
}

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
    let mut shards = Vec::with_capacity(PRESENCE_WRITERS);
    let mut writers = JoinSet::new();
    for _ in 0..PRESENCE_WRITERS {
        let (tx, rx) = mpsc::channel(PRESENCE_BATCH);
        shards.push(tx);
        writers.spawn(write_presence(ctx.clone(), rx));
    }
    while let Some(msg) = rx.recv().await {
        ctx.metrics.channel_depth.dec();
        while let Some(done) = writers.try_join_next() {
            done?;
        }
        if classify(&ctx, &msg.topic) != Kind::Presence {
            // Telemetry, the canary and strays never wait on I/O: inline, in arrival order.
            settle(&ctx, &msg).await;
            continue;
        }
        ctx.metrics.received("presence");
        match presence::prepare(&ctx, &msg.publish.payload, msg.received_at) {
            Ok(prepared) => {
                let shard = &shards[shard_of(prepared.shard_key())];
                // A full writer holds the dispatcher back (and so the broker, see `mqtt`).
                shard
                    .send(Job { msg, prepared })
                    .await
                    .map_err(|_| anyhow::anyhow!("a presence writer stopped"))?;
            }
            Err(reason) => {
                record_presence(&ctx, &msg.topic, presence::Outcome::Dropped(reason));
                msg.ack();
            }
        }
    }
    drop(shards);
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

/// Which writer stores the events of `key` (a device or client ID): a fixed hash, so the same
/// key always lands on the same writer.
pub fn shard_of(key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % PRESENCE_WRITERS as u64) as usize
}

/// One presence writer: whatever is queued (up to [`PRESENCE_BATCH`]) in one transaction,
/// then each message counted and acknowledged (unless abandoned at shutdown: redelivered).
async fn write_presence(ctx: IngestContext, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(PRESENCE_BATCH);
    while rx.recv_many(&mut jobs, PRESENCE_BATCH).await > 0 {
        let (msgs, batch): (Vec<Incoming>, Vec<Prepared>) =
            jobs.drain(..).map(|j| (j.msg, j.prepared)).unzip();
        ctx.metrics.presence_batch.observe(batch.len() as f64);
        let outcomes = presence::store(&ctx, &batch, &ctx.stop).await;
        for (msg, outcome) in msgs.iter().zip(outcomes) {
            record_presence(&ctx, &msg.topic, outcome);
            if outcome != presence::Outcome::Abandoned {
                msg.ack();
            }
        }
    }
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
