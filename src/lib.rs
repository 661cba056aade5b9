//! fleetwatch: fleet-operations monitoring for device fleets on AWS IoT Core.
//!
//! See `ARCHITECTURE.md` for the map; each module's header says what it owns.

pub mod alerts;
pub mod app;
pub mod aws;
pub mod clock;
pub mod config;
pub mod db;
pub mod demo;
pub mod detect;
pub mod domain;
pub mod fleet_counts;
pub mod http;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod retention;
pub mod retirement;
pub mod sim;
pub mod tokens;
pub mod users;
