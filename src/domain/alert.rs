//! Alert kinds and severities (DESIGN.md §2a "Severity", §4 alert fields).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    HeartbeatGap,
    Flapping,
    ClientIdConflict,
    Throttled,
    AuthFailure,
    AddressDrift,
    GroupOutage,
    FleetOutage,
    IngestDown,
    MetricThreshold,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::HeartbeatGap,
        Kind::Flapping,
        Kind::ClientIdConflict,
        Kind::Throttled,
        Kind::AuthFailure,
        Kind::AddressDrift,
        Kind::GroupOutage,
        Kind::FleetOutage,
        Kind::IngestDown,
        Kind::MetricThreshold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::HeartbeatGap => "heartbeat_gap",
            Kind::Flapping => "flapping",
            Kind::ClientIdConflict => "client_id_conflict",
            Kind::Throttled => "throttled",
            Kind::AuthFailure => "auth_failure",
            Kind::AddressDrift => "address_drift",
            Kind::GroupOutage => "group_outage",
            Kind::FleetOutage => "fleet_outage",
            Kind::IngestDown => "ingest_down",
            Kind::MetricThreshold => "metric_threshold",
        }
    }

    /// The severity a kind has unless configured otherwise.
    pub fn default_severity(self) -> Severity {
        match self {
            Kind::GroupOutage | Kind::FleetOutage | Kind::IngestDown => Severity::Critical,
            Kind::HeartbeatGap | Kind::ClientIdConflict => Severity::Error,
            Kind::Flapping
            | Kind::Throttled
            | Kind::AuthFailure
            | Kind::AddressDrift
            | Kind::MetricThreshold => Severity::Warning,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "expected one of {}, got {s:?}",
                    Kind::ALL.map(Kind::as_str).join(", ")
                )
            })
    }
}

/// PagerDuty's severities, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "critical" => Ok(Severity::Critical),
            "error" => Ok(Severity::Error),
            "warning" => Ok(Severity::Warning),
            "info" => Ok(Severity::Info),
            _ => Err(format!(
                "expected critical, error, warning or info, got {s:?}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert!("nope".parse::<Kind>().is_err());
        assert_eq!("warning".parse::<Severity>().unwrap(), Severity::Warning);
    }
}
