//! Device identity and group membership (DESIGN.md §2a "Identity" and "Groups").
//!
//! A device has one id. By default it is the MQTT client ID, the thing name and the telemetry
//! topic level at once; the configured `client_ids` map covers bridges whose client ID differs.
//! Our own client IDs (the configured prefix) are never devices.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use regex::Regex;

/// Longest id we accept; AWS IoT caps client IDs and thing names at 128.
pub const MAX_ID_LEN: usize = 128;

/// Whether `id` is usable as a device or group id: 1 to 128 characters, not blank, no control
/// characters (Postgres `text` refuses NUL, and control characters break logs and pages).
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("expected a non-empty id".into());
    }
    if id.chars().count() > MAX_ID_LEN {
        return Err(format!("expected at most {MAX_ID_LEN} characters"));
    }
    if id.chars().any(char::is_control) {
        return Err("expected no control characters".into());
    }
    Ok(())
}

/// What a client ID from a presence event stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdentity {
    /// One of our own connections.
    Own,
    /// A device.
    Device(String),
    /// Unusable as an id (see [`validate_id`]).
    Invalid,
}

/// A compiled group rule: devices whose id matches `pattern` belong to `group`.
#[derive(Debug, Clone)]
struct GroupRule {
    group: String,
    pattern: Regex,
}

/// The identity rules from configuration, compiled once.
#[derive(Debug, Clone)]
pub struct Identity {
    own_prefix: String,
    client_map: HashMap<String, String>,
    /// Client ID → device id learned from the IoT registry (`aws::inventory`), replaced whole
    /// by each complete sync; shared by every clone, so ingest learns it without a restart.
    /// The configured `client_map` wins where both name a client ID.
    registry_map: Arc<RwLock<HashMap<String, String>>>,
    rules: Vec<GroupRule>,
}

impl Identity {
    /// The rules: our own client-ID prefix, client ID → device id, and (group, device-id
    /// pattern) in the order they are tried. `Identity::from_config` (in `config`, so that this
    /// module does not depend on the configuration) builds them from the file.
    pub fn new(
        own_prefix: String,
        client_map: HashMap<String, String>,
        rules: impl IntoIterator<Item = (String, Regex)>,
    ) -> Self {
        Self {
            own_prefix,
            client_map,
            registry_map: Arc::default(),
            rules: rules
                .into_iter()
                .map(|(group, pattern)| GroupRule { group, pattern })
                .collect(),
        }
    }

    /// Map a client ID to the device it belongs to.
    pub fn client(&self, client_id: &str) -> ClientIdentity {
        if client_id.starts_with(&self.own_prefix) {
            return ClientIdentity::Own;
        }
        let learned;
        let device = match self.client_map.get(client_id) {
            Some(d) => d.as_str(),
            None => {
                learned = self
                    .registry_map
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(client_id)
                    .cloned();
                learned.as_deref().unwrap_or(client_id)
            }
        };
        match validate_id(device) {
            Ok(()) => ClientIdentity::Device(device.to_string()),
            Err(_) => ClientIdentity::Invalid,
        }
    }

    /// The group of a device: the first pattern rule (in group-id order) that matches, else the
    /// group named by the telemetry topic, else none.
    pub fn group_for(&self, device_id: &str, topic_group: Option<&str>) -> Option<String> {
        self.rules
            .iter()
            .find(|r| r.pattern.is_match(device_id))
            .map(|r| r.group.clone())
            .or_else(|| {
                topic_group
                    .filter(|g| validate_id(g).is_ok())
                    .map(str::to_string)
            })
    }

    /// Replace the client-ID mappings learned from the registry (configured ones still win).
    pub fn set_registry_clients(&self, map: HashMap<String, String>) {
        *self.registry_map.write().unwrap_or_else(|e| e.into_inner()) = map;
    }

    /// The configured client-ID mappings, for storing in the `client_ids` table.
    pub fn client_map(&self) -> &HashMap<String, String> {
        &self.client_map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn identity() -> Identity {
        let cfg = Config::from_toml(
            r#"
            [groups.tokyo]
            time_zone = "Asia/Tokyo"
            device_pattern = "^tky-"
            [groups.osaka]
            device_pattern = "^osk-"
            [client_ids]
            bridgeawsiot = "tky-0007"
            "#,
        )
        .unwrap();
        Identity::from_config(&cfg)
    }

    #[test]
    fn clients_map_to_devices() {
        let id = identity();
        assert_eq!(id.client("tky-1"), ClientIdentity::Device("tky-1".into()));
        assert_eq!(
            id.client("bridgeawsiot"),
            ClientIdentity::Device("tky-0007".into())
        );
        assert_eq!(id.client("fleetwatch-host-0"), ClientIdentity::Own);
        assert_eq!(id.client(""), ClientIdentity::Invalid);
        assert_eq!(id.client("a\u{0}b"), ClientIdentity::Invalid);
        assert_eq!(id.client(&"x".repeat(129)), ClientIdentity::Invalid);
        // hostile but printable names are valid ids; they are escaped where shown
        assert_eq!(
            id.client("<script>alert(1)</script>"),
            ClientIdentity::Device("<script>alert(1)</script>".into())
        );
    }

    #[test]
    fn registry_mappings_apply_to_clones_and_config_wins() {
        let id = identity();
        let clone = id.clone();
        id.set_registry_clients(HashMap::from([
            ("bridge-9".to_string(), "tky-0009".to_string()),
            ("bridgeawsiot".to_string(), "elsewhere".to_string()),
        ]));
        assert_eq!(
            clone.client("bridge-9"),
            ClientIdentity::Device("tky-0009".into())
        );
        assert_eq!(
            clone.client("bridgeawsiot"),
            ClientIdentity::Device("tky-0007".into()),
            "the configured mapping wins"
        );
        id.set_registry_clients(HashMap::new());
        assert_eq!(
            clone.client("bridge-9"),
            ClientIdentity::Device("bridge-9".into())
        );
    }

    #[test]
    fn groups_from_patterns_then_topic() {
        let id = identity();
        assert_eq!(id.group_for("tky-1", Some("b9")), Some("tokyo".into()));
        assert_eq!(id.group_for("osk-1", None), Some("osaka".into()));
        assert_eq!(id.group_for("x-1", Some("b9")), Some("b9".into()));
        assert_eq!(id.group_for("x-1", Some("")), None);
        assert_eq!(id.group_for("x-1", None), None);
    }
}
