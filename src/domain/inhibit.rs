//! Inhibition rules (issue 8 part 12), in the spirit of Alertmanager's: while an alert of the
//! `source` kind fires for the same device (or subject), a `target` alert is recorded and linked
//! (`inhibited_by`) but not notified. Pure data; `alerts::inhibit` applies them in Postgres.

use serde::Deserialize;

use super::alert::Kind;

/// What two alerts must share for one to inhibit the other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Equal {
    /// The same device; an alert without a device id (a client ID that is no device) is matched
    /// by its subject, the client ID.
    #[default]
    Device,
    /// The same subject (kind-specific: device id, client ID, group).
    Subject,
}

impl Equal {
    pub fn as_str(self) -> &'static str {
        match self {
            Equal::Device => "device",
            Equal::Subject => "subject",
        }
    }
}

/// One `[[inhibit]]` rule of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRule {
    /// The more specific kind, which pages.
    pub source: Kind,
    /// The less specific kind, held back while a source fires.
    pub target: Kind,
    #[serde(default)]
    pub equal: Equal,
}

/// The rules used when the configuration has no `inhibit` key. A duplicated client ID, a
/// throttled or refused client and a device silent in a reconnect loop each also disconnect
/// over and over: `flapping` is their symptom, not a second incident.
pub fn defaults() -> Vec<InhibitRule> {
    [
        Kind::ClientIdConflict,
        Kind::Throttled,
        Kind::AuthFailure,
        Kind::HeartbeatGap,
    ]
    .into_iter()
    .map(|source| InhibitRule {
        source,
        target: Kind::Flapping,
        equal: Equal::Device,
    })
    .collect()
}

/// Refuse rules that could never mean anything: an alert kind inhibiting itself would hold back
/// every alert of that kind but the first.
pub fn validate(rules: &[InhibitRule]) -> Result<(), String> {
    for (i, r) in rules.iter().enumerate() {
        if r.source == r.target {
            return Err(format!(
                "inhibit[{i}]: source and target are both {:?}",
                r.source.as_str()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_hold_back_flapping_behind_its_causes() {
        let d = defaults();
        assert_eq!(d.len(), 4);
        assert!(d.iter().all(|r| r.target == Kind::Flapping));
        assert!(validate(&d).is_ok());
        let bad = [InhibitRule {
            source: Kind::Flapping,
            target: Kind::Flapping,
            equal: Equal::Device,
        }];
        assert!(validate(&bad).is_err());
    }

    #[test]
    fn configured_rules_replace_the_defaults() {
        use crate::config::Config;
        assert_eq!(Config::default().inhibit_rules(), defaults());
        let cfg = Config::from_toml(
            r#"
            [[inhibit]]
            source = "address_drift"
            target = "auth_failure"
            equal = "subject"
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg.inhibit_rules(),
            [InhibitRule {
                source: Kind::AddressDrift,
                target: Kind::AuthFailure,
                equal: Equal::Subject
            }]
        );
        assert!(Config::from_toml("inhibit = []")
            .unwrap()
            .inhibit_rules()
            .is_empty());
        assert!(
            Config::from_toml("[[inhibit]]\nsource = \"nonsense\"\ntarget = \"flapping\"").is_err()
        );
    }
}
