//! Processing one presence message: parse, resolve the device, store once (the caller
//! acknowledges once this returned, see `accept`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::registry::Admission;
use super::IngestContext;
use crate::db::presence::{store, Stored};
use crate::domain::identity::ClientIdentity;
use crate::domain::presence::{self, EventType};
use crate::domain::DropReason;

/// What became of a presence message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stored(Stored),
    Dropped(DropReason),
    /// The store kept failing until shutdown; not acknowledged, so the broker redelivers.
    Abandoned,
}

/// Parse, resolve and store, retrying the store while Postgres is away.
pub async fn process(
    ctx: &IngestContext,
    payload: &[u8],
    received_at: chrono::DateTime<chrono::Utc>,
    cancel: &CancellationToken,
) -> Outcome {
    let ev = match presence::parse(payload, ctx.clock.now()) {
        Ok(ev) => ev,
        Err(r) => return Outcome::Dropped(r),
    };
    let device = match ctx.identity.client(&ev.client_id) {
        ClientIdentity::Own => return Outcome::Dropped(DropReason::OwnClient),
        ClientIdentity::Invalid => return Outcome::Dropped(DropReason::BadDeviceId),
        ClientIdentity::Device(d) => d,
    };
    // connect_failed is stored but never creates a device: scanners would flood the table.
    // Those of clients that are not devices are stored only within a global budget.
    let (device_id, created) = if ev.event_type == EventType::ConnectFailed {
        if ctx.registry.is_known(&device) {
            (Some(device), false)
        } else if ctx.unknown_failures.admit(&device, received_at) {
            (None, false)
        } else {
            return Outcome::Dropped(DropReason::UnknownClientCap);
        }
    } else {
        match ctx.registry.admit(&device) {
            Admission::Known => (Some(device), false),
            Admission::New => (Some(device), true),
            Admission::OverCap => return Outcome::Dropped(DropReason::DeviceCap),
        }
    };
    let group = device_id
        .as_deref()
        .and_then(|d| ctx.identity.group_for(d, None));

    let mut delay = Duration::from_millis(100);
    loop {
        match store(
            &ctx.pool,
            &ev,
            device_id.as_deref(),
            group.as_deref(),
            received_at,
            ctx.presence_max_skew,
        )
        .await
        {
            Ok(s) => {
                if created {
                    ctx.metrics.devices_created.inc();
                }
                return Outcome::Stored(s);
            }
            Err(e) if !crate::db::is_transient(&e) => {
                ctx.warn.warn(
                    "presence_store_refused",
                    &format_args!("Postgres refused a presence event, skipping it: {e}"),
                );
                return Outcome::Dropped(DropReason::StoreFailed);
            }
            Err(e) => {
                ctx.warn.warn(
                    "presence_store_failed",
                    &format_args!("storing a presence event failed, retrying: {e}"),
                );
                tokio::select! {
                    _ = cancel.cancelled() => return Outcome::Abandoned,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
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
