//! Alerts: the lifecycle (fire, reopen, reclassify, cover, resolve, acknowledge, ticket) with
//! its append-only trail, inhibition, silences, the outbox and the webhook worker. One firing
//! alert per (kind, subject); ids are stable and never reused. The read side for the API
//! (`AlertRow`, lists) and the queries that moved out are in `db::alerts`.

pub mod formats;
pub mod inhibit;
pub mod lifecycle;
pub mod outbox;
pub mod redact;
pub mod silences;
pub mod webhook;

pub use crate::db::alerts::{AlertFilter, AlertRow, EventRow};
pub use lifecycle::{AlertSpec, Fired};
