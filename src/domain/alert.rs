//! Alert kinds, severities and statuses (DESIGN.md §2a "Severity", §4 alert fields).

text_enum! {
    /// What an alert is about (DESIGN.md §4 `kind`).
    pub enum Kind {
        HeartbeatGap = "heartbeat_gap",
        Flapping = "flapping",
        ClientIdConflict = "client_id_conflict",
        Throttled = "throttled",
        AuthFailure = "auth_failure",
        AddressDrift = "address_drift",
        GroupOutage = "group_outage",
        FleetOutage = "fleet_outage",
        IngestDown = "ingest_down",
        MetricThreshold = "metric_threshold",
        AwsPollFailing = "aws_poll_failing",
        NetworkOutage = "network_outage",
        ImpressionsAnomaly = "impressions_anomaly",
    }
}

impl Kind {
    /// The severity a kind has unless configured otherwise.
    pub fn default_severity(self) -> Severity {
        match self {
            Kind::GroupOutage | Kind::FleetOutage | Kind::NetworkOutage | Kind::IngestDown => {
                Severity::Critical
            }
            // Polling AWS failing blinds the CloudWatch rules and the inventory, not ingest.
            Kind::HeartbeatGap | Kind::ClientIdConflict | Kind::AwsPollFailing => Severity::Error,
            Kind::Flapping
            | Kind::Throttled
            | Kind::AuthFailure
            | Kind::AddressDrift
            | Kind::MetricThreshold
            | Kind::ImpressionsAnomaly => Severity::Warning,
        }
    }
}

text_enum! {
    /// PagerDuty's severities, most severe first.
    pub enum Severity {
        Critical = "critical",
        Error = "error",
        Warning = "warning",
        Info = "info",
    }
}

text_enum! {
    /// Where an alert is in its life (DESIGN.md §4 `status`).
    pub enum Status {
        Firing = "firing",
        Resolved = "resolved",
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
        assert_eq!(Severity::Critical.to_string(), "critical");
        assert_eq!(
            serde_json::from_str::<Status>("\"resolved\"").unwrap(),
            Status::Resolved
        );
        assert!("open"
            .parse::<Status>()
            .unwrap_err()
            .contains("firing, resolved"));
    }
}
