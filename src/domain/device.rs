//! A device's health state (DESIGN.md §4 `state`) and the two ways a heartbeat gap is
//! classified (§2a "Heartbeat clock").

text_enum! {
    /// Device health states (the API's `state`). The detector writes all but `retired`, which
    /// only retirement sets.
    pub enum DeviceState {
        NeverSeen = "never_seen",
        Healthy = "healthy",
        Late = "late",
        Silent = "silent",
        Offline = "offline",
        Quiet = "quiet",
        Retired = "retired",
    }
}

text_enum! {
    /// How a heartbeat gap is classified.
    pub enum Gap {
        /// Connected (or connectivity unknown) but no data: the app or camera died.
        Silent = "silent",
        /// Disconnected for longer than `disconnect_grace`.
        Offline = "offline",
    }
}

impl From<Gap> for DeviceState {
    fn from(g: Gap) -> DeviceState {
        match g {
            Gap::Silent => DeviceState::Silent,
            Gap::Offline => DeviceState::Offline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_unchanged() {
        assert_eq!(
            DeviceState::NAMES,
            [
                "never_seen",
                "healthy",
                "late",
                "silent",
                "offline",
                "quiet",
                "retired"
            ]
        );
        for s in DeviceState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<DeviceState>().unwrap(), s);
        }
        assert!("broken".parse::<DeviceState>().is_err());
        assert_eq!(DeviceState::from(Gap::Offline), DeviceState::Offline);
    }
}
