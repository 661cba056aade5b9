//! Alerts: the lifecycle (fire, reopen, reclassify, cover, resolve, acknowledge, ticket) with
//! its append-only trail, and the read side for the API. One firing alert per (kind, subject);
//! ids are stable and never reused.

pub mod formats;
pub mod inhibit;
pub mod lifecycle;
pub mod outbox;
pub mod redact;
pub mod silences;
pub mod webhook;

pub use lifecycle::{AlertFilter, AlertRow, AlertSpec, EventRow, Fired};
