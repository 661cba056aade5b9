//! Pure domain code, no I/O: identity rules, the presence ordering rule, telemetry parsing,
//! MQTT topic matching, the reasons an input is dropped, the closed sets of values (device
//! states, alert kinds/statuses/severities, notification statuses/events), and the validation
//! rules for what people type (silences, acknowledgements, tickets) shared by the API and the
//! dashboard. Everything here takes `now` as an argument so that tests can drive it with any
//! clock.

#[macro_use]
mod text_enum;

pub mod actor;
pub mod alert;
pub mod anomaly;
pub mod device;
pub mod drift;
pub mod drop_reason;
pub mod fleet;
pub mod health;
pub mod identity;
pub mod inhibit;
pub mod input;
pub mod inventory;
pub mod metric_rule;
pub mod network;
pub mod notification;
pub mod presence;
pub mod schedule;
pub mod silence;
pub mod telemetry;
pub mod topic;
pub mod triage;

pub use drop_reason::DropReason;
