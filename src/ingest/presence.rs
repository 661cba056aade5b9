//! Processing presence messages: parse and resolve each one ([`prepare`], CPU only), then store
//! them in batches ([`store`], one transaction per batch; the caller acknowledges each message
//! once this returned, see `accept` and `dispatch`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::registry::Admission;
use super::IngestContext;
use crate::db::presence::{store_batch, Pending, Stored};
use crate::domain::identity::ClientIdentity;
use crate::domain::presence::{self, EventType, PresenceEvent};
use crate::domain::DropReason;

/// What became of a presence message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stored(Stored),
    Dropped(DropReason),
    /// The store kept failing until shutdown; not acknowledged, so the broker redelivers.
    Abandoned,
}

/// A parsed presence event with the device it belongs to, ready to store.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub event: PresenceEvent,
    /// `None` for a `connect_failed` of a client that is not a known device.
    pub device_id: Option<String>,
    pub group_id: Option<String>,
    /// Whether admitting it created the device (counted once it is stored).
    pub created: bool,
    pub received_at: DateTime<Utc>,
}

impl Prepared {
    /// What decides which writer stores it (`dispatch`): events of one device, or of one client
    /// that is not a device, always go to the same one, in arrival order.
    pub fn shard_key(&self) -> &str {
        self.device_id.as_deref().unwrap_or(&self.event.client_id)
    }
}

/// Parse and resolve the device: the device cap and the budget of unknown clients'
/// `connect_failed` are applied here, so a dropped message never reaches Postgres.
pub fn prepare(
    ctx: &IngestContext,
    payload: &[u8],
    received_at: DateTime<Utc>,
) -> Result<Prepared, DropReason> {
    let event = presence::parse(payload, ctx.clock.now())?;
    let device = match ctx.identity.client(&event.client_id) {
        ClientIdentity::Own => return Err(DropReason::OwnClient),
        ClientIdentity::Invalid => return Err(DropReason::BadDeviceId),
        ClientIdentity::Device(d) => d,
    };
    // connect_failed is stored but never creates a device: scanners would flood the table.
    // Those of clients that are not devices are stored only within a global budget.
    let (device_id, created) = if event.event_type == EventType::ConnectFailed {
        if ctx.registry.is_known(&device) {
            (Some(device), false)
        } else if ctx.unknown_failures.admit(&device, received_at) {
            (None, false)
        } else {
            return Err(DropReason::UnknownClientCap);
        }
    } else {
        match ctx.registry.admit(&device) {
            Admission::Known => (Some(device), false),
            Admission::New => (Some(device), true),
            Admission::OverCap => return Err(DropReason::DeviceCap),
        }
    };
    let group_id = device_id
        .as_deref()
        .and_then(|d| ctx.identity.group_for(d, None));
    Ok(Prepared {
        event,
        device_id,
        group_id,
        created,
        received_at,
    })
}

/// Parse, resolve and store one message, retrying the store while Postgres is away.
pub async fn process(
    ctx: &IngestContext,
    payload: &[u8],
    received_at: DateTime<Utc>,
    cancel: &CancellationToken,
) -> Outcome {
    match prepare(ctx, payload, received_at) {
        Ok(p) => store(ctx, std::slice::from_ref(&p), cancel).await[0],
        Err(r) => Outcome::Dropped(r),
    }
}

/// Store a batch in one transaction (arrival order kept, see `db::presence::store_batch`),
/// retrying with a capped backoff while Postgres is away and giving up (every message
/// [`Outcome::Abandoned`], to be redelivered) only when `cancel` fires. When Postgres refuses
/// the batch itself (a value it cannot store), its events are stored one by one instead, so that
/// only the bad one is skipped and nothing queued beside it is lost.
pub async fn store(
    ctx: &IngestContext,
    batch: &[Prepared],
    cancel: &CancellationToken,
) -> Vec<Outcome> {
    let pending: Vec<Pending<'_>> = batch
        .iter()
        .map(|p| Pending {
            event: &p.event,
            device_id: p.device_id.as_deref(),
            group_id: p.group_id.as_deref(),
            received_at: p.received_at,
        })
        .collect();
    match store_retrying(ctx, &pending, cancel).await {
        Ok(stored) => {
            count_created(ctx, batch);
            stored.into_iter().map(Outcome::Stored).collect()
        }
        Err(Failed::Cancelled) => vec![Outcome::Abandoned; batch.len()],
        Err(Failed::Refused(e)) if batch.len() == 1 => {
            ctx.warn.warn(
                "presence_store_refused",
                &format_args!("Postgres refused a presence event, skipping it: {e}"),
            );
            vec![Outcome::Dropped(DropReason::StoreFailed)]
        }
        Err(Failed::Refused(_)) => {
            let mut out = Vec::with_capacity(batch.len());
            for p in batch {
                out.push(Box::pin(store(ctx, std::slice::from_ref(p), cancel)).await[0]);
            }
            out
        }
    }
}

enum Failed {
    Cancelled,
    Refused(sqlx::Error),
}

async fn store_retrying(
    ctx: &IngestContext,
    pending: &[Pending<'_>],
    cancel: &CancellationToken,
) -> Result<Vec<Stored>, Failed> {
    let mut delay = Duration::from_millis(100);
    loop {
        match store_batch(&ctx.pool, pending, ctx.presence_max_skew).await {
            Ok(s) => return Ok(s),
            Err(e) if !crate::db::is_transient(&e) => return Err(Failed::Refused(e)),
            Err(e) => {
                ctx.warn.warn(
                    "presence_store_failed",
                    &format_args!("storing presence events failed, retrying: {e}"),
                );
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Failed::Cancelled),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Devices admitted by this batch count as created once the batch is stored.
fn count_created(ctx: &IngestContext, batch: &[Prepared]) {
    let created = batch.iter().filter(|p| p.created).count();
    if created > 0 {
        ctx.metrics.devices_created.inc_by(created as u64);
    }
}

/// A topic or id shortened for a log line (hostile devices send long ones).
pub fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}
