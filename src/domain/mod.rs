//! Pure domain code, no I/O: identity rules, the presence ordering rule, telemetry parsing,
//! MQTT topic matching, the reasons an input is dropped, and the validation rules for what people
//! type (silences, acknowledgements, tickets) shared by the API and the dashboard. Everything here takes `now` as an
//! argument so that tests can drive it with any clock.

pub mod actor;
pub mod alert;
pub mod drop_reason;
pub mod identity;
pub mod inhibit;
pub mod input;
pub mod presence;
pub mod silence;
pub mod telemetry;
pub mod topic;
pub mod triage;

pub use drop_reason::DropReason;
