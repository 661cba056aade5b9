//! Pure domain code, no I/O: identity rules, the presence ordering rule, telemetry parsing,
//! MQTT topic matching and the reasons an input is dropped. Everything here takes `now` as an
//! argument so that tests can drive it with any clock.

pub mod actor;
pub mod alert;
pub mod drop_reason;
pub mod identity;
pub mod inhibit;
pub mod presence;
pub mod telemetry;
pub mod topic;

pub use drop_reason::DropReason;
