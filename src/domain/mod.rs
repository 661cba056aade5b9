//! Pure domain code, no I/O: identity rules, the presence ordering rule, telemetry parsing,
//! MQTT topic matching, the reasons an input is dropped, and the closed sets of values (device
//! states, alert kinds/statuses/severities, notification statuses/events). Everything here
//! takes `now` as an argument so that tests can drive it with any clock.

#[macro_use]
mod text_enum;

pub mod actor;
pub mod alert;
pub mod device;
pub mod drop_reason;
pub mod health;
pub mod identity;
pub mod notification;
pub mod presence;
pub mod schedule;
pub mod telemetry;
pub mod topic;

pub use drop_reason::DropReason;
