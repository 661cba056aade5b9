//! The pure half of the IoT registry inventory and the connectivity reconciliation
//! (`aws::inventory` lists and writes; the contract is that module's documentation): what a
//! complete listing maps to under the configuration ([`plan`]), which registry devices are
//! gone or back ([`membership`]), and whether the fleet index corrects a device's stored
//! connectivity ([`decide_correction`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{Config, HumanDuration};
use crate::domain::identity::{validate_id, ClientIdentity, Identity};
use crate::domain::schedule::QuietHours;

/// The actor of the inventory's retirements (`device_events.actor`); only retirements by this
/// actor are undone when a thing comes back.
pub const ACTOR: &str = "fleetwatch:inventory";

/// Thing-group attributes read by the inventory.
pub const ATTR_TIME_ZONE: &str = "fleetwatch:time_zone";
pub const ATTR_QUIET_HOURS: &str = "fleetwatch:quiet_hours";
/// Thing attributes read by the inventory.
pub const ATTR_EXPECTED_INTERVAL: &str = "fleetwatch:expected_interval";
pub const ATTR_GRACE: &str = "fleetwatch:grace";

/// Longest expectation override accepted from the registry (longer is a typo, not a plan).
const MAX_OVERRIDE: Duration = Duration::from_secs(366 * 24 * 3600);

/// One thing as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thing {
    pub name: String,
    pub attributes: BTreeMap<String, String>,
}

/// One thing group as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThingGroup {
    pub name: String,
    pub parent: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// A complete listing of the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub things: Vec<Thing>,
    pub groups: Vec<ThingGroup>,
    /// Group name → the things in it (directly).
    pub members: BTreeMap<String, Vec<String>>,
}

/// What the configuration says, as the plan needs it.
pub struct Rules<'a> {
    pub identity: &'a Identity,
    pub group_attribute: Option<&'a str>,
    pub client_id_attribute: Option<&'a str>,
    /// Groups configured in the file (the registry never writes them).
    pub configured_groups: BTreeSet<String>,
    /// Devices with configured expectation overrides (the registry never writes those).
    pub configured_devices: BTreeSet<String>,
    /// Client IDs the configuration maps.
    pub configured_clients: BTreeSet<String>,
    pub fleet_time_zone: &'a str,
}

impl<'a> Rules<'a> {
    pub fn from_config(cfg: &'a Config, identity: &'a Identity) -> Self {
        Rules {
            identity,
            group_attribute: cfg.inventory.group_attribute.as_deref(),
            client_id_attribute: cfg.inventory.client_id_attribute.as_deref(),
            configured_groups: cfg.groups.keys().cloned().collect(),
            configured_devices: cfg.devices.overrides.keys().cloned().collect(),
            configured_clients: cfg.client_ids.keys().cloned().collect(),
            fleet_time_zone: cfg.fleet.time_zone.0.name(),
        }
    }
}

/// A group as the registry defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    pub id: String,
    pub time_zone: String,
    /// Canonical quiet hours (`QuietHours`'s display), `""` for none.
    pub quiet_hours: String,
}

/// A device as the registry defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    pub id: String,
    /// The group to set; `None`: leave the stored one (configuration decides, or the registry
    /// names none).
    pub group: Option<String>,
    /// The registry names no group for it (and the configuration does not decide): a group
    /// that came from the registry is taken away (the thing left it); any other is kept.
    pub clear_registry_group: bool,
    /// (expected interval ms, grace ms) to set; `None`: the configuration decides.
    pub overrides: Option<(Option<i64>, Option<i64>)>,
}

/// Registry input that was skipped: (reason, detail for the log).
pub type Skipped = Vec<(&'static str, String)>;

/// What to store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub groups: Vec<GroupPlan>,
    /// Sorted by id, one per thing.
    pub devices: Vec<DevicePlan>,
    /// Client ID → device id.
    pub clients: BTreeMap<String, String>,
    pub skipped: Skipped,
}

/// At most 80 characters of `s`, control characters escaped: registry values go into logs.
pub fn short(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_debug).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn parse_override(
    thing: &str,
    attrs: &BTreeMap<String, String>,
    key: &'static str,
    positive: bool,
    skipped: &mut Skipped,
) -> Option<i64> {
    let raw = attrs.get(key)?;
    let parsed = raw
        .parse::<HumanDuration>()
        .map_err(|_| "expected a duration like 30s, 5m or 2h".to_string())
        .and_then(|d| {
            if positive && d.0.is_zero() {
                Err("expected a positive duration".into())
            } else if d.0 > MAX_OVERRIDE {
                Err("expected at most 366 days".into())
            } else {
                Ok(millis(d.0))
            }
        });
    match parsed {
        Ok(ms) => Some(ms),
        Err(e) => {
            skipped.push((
                "bad_thing_attribute",
                format!("thing {}: {key} = {}: {e}", short(thing), short(raw)),
            ));
            None
        }
    }
}

/// The depth of `group` in its parent chain (a root group is 0); cycles and dangling parents
/// end the walk.
fn depth(group: &str, parents: &HashMap<&str, Option<&str>>) -> usize {
    let mut seen = BTreeSet::new();
    let mut at = group;
    while let Some(Some(parent)) = parents.get(at) {
        if !seen.insert(at) || seen.len() > 64 {
            break;
        }
        at = parent;
    }
    seen.len()
}

/// Map a complete listing to what we store (pure).
pub fn plan(listing: &Listing, rules: &Rules<'_>) -> Plan {
    let mut skipped = Skipped::new();
    // Things: one per name; a name listed twice (pages shifting under us) keeps its last copy.
    let mut things: BTreeMap<&str, &Thing> = BTreeMap::new();
    for t in &listing.things {
        if let Err(e) = validate_id(&t.name) {
            skipped.push(("bad_thing_name", format!("thing {}: {e}", short(&t.name))));
            continue;
        }
        if things.insert(&t.name, t).is_some() {
            skipped.push((
                "duplicate_thing",
                format!("thing {} listed twice", short(&t.name)),
            ));
        }
    }

    let parents: HashMap<&str, Option<&str>> = listing
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g.parent.as_deref()))
        .collect();
    let mut groups = BTreeMap::new();
    for g in &listing.groups {
        if let Err(e) = validate_id(&g.name) {
            skipped.push(("bad_group_name", format!("group {}: {e}", short(&g.name))));
            continue;
        }
        if rules.configured_groups.contains(&g.name) {
            continue;
        }
        let time_zone = match g.attributes.get(ATTR_TIME_ZONE) {
            None => rules.fleet_time_zone.to_string(),
            Some(v) => match crate::config::parse_tz(v.trim()) {
                Ok(tz) => tz.name().to_string(),
                Err(_) => {
                    skipped.push((
                        "bad_group_attribute",
                        format!(
                            "group {}: {ATTR_TIME_ZONE} = {}: expected an IANA time zone",
                            short(&g.name),
                            short(v)
                        ),
                    ));
                    rules.fleet_time_zone.to_string()
                }
            },
        };
        let quiet_hours = match g.attributes.get(ATTR_QUIET_HOURS) {
            None => String::new(),
            Some(v) => match v.parse::<QuietHours>() {
                Ok(q) => q.to_string(),
                Err(_) => {
                    skipped.push((
                        "bad_group_attribute",
                        format!(
                            "group {}: {ATTR_QUIET_HOURS} = {}: expected windows like \
                             \"00:30-05:30\"",
                            short(&g.name),
                            short(v)
                        ),
                    ));
                    String::new()
                }
            },
        };
        groups.insert(
            g.name.clone(),
            GroupPlan {
                id: g.name.clone(),
                time_zone,
                quiet_hours,
            },
        );
    }

    // The innermost group of each thing, ties to the smallest name.
    let mut thing_group: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (group, members) in &listing.members {
        if validate_id(group).is_err() {
            continue;
        }
        let d = depth(group, &parents);
        for m in members {
            let e = thing_group.entry(m.as_str()).or_insert((d, group));
            if d > e.0 || (d == e.0 && group.as_str() < e.1) {
                *e = (d, group);
            }
        }
    }

    let mut devices = Vec::new();
    let mut clients: BTreeMap<String, String> = BTreeMap::new();
    for (name, t) in &things {
        let by_config = rules.identity.group_for(name, None).is_some();
        let group = if by_config {
            None
        } else {
            let by_attribute = rules.group_attribute.and_then(|a| {
                let v = t.attributes.get(a)?;
                match validate_id(v) {
                    Ok(()) => Some(v.clone()),
                    Err(e) => {
                        skipped.push((
                            "bad_thing_attribute",
                            format!("thing {}: {a} = {}: {e}", short(name), short(v)),
                        ));
                        None
                    }
                }
            });
            by_attribute.or_else(|| thing_group.get(name).map(|(_, g)| g.to_string()))
        };
        if let Some(g) = &group {
            // A group named only by the attribute still needs its row (fleet defaults).
            if !groups.contains_key(g) && !rules.configured_groups.contains(g) {
                groups.insert(
                    g.clone(),
                    GroupPlan {
                        id: g.clone(),
                        time_zone: rules.fleet_time_zone.to_string(),
                        quiet_hours: String::new(),
                    },
                );
            }
        }
        let overrides = if rules.configured_devices.contains(*name) {
            None
        } else {
            Some((
                parse_override(
                    name,
                    &t.attributes,
                    ATTR_EXPECTED_INTERVAL,
                    true,
                    &mut skipped,
                ),
                parse_override(name, &t.attributes, ATTR_GRACE, false, &mut skipped),
            ))
        };
        devices.push(DevicePlan {
            id: name.to_string(),
            clear_registry_group: !by_config && group.is_none(),
            group,
            overrides,
        });
        if let Some(a) = rules.client_id_attribute {
            if let Some(client) = t.attributes.get(a) {
                let why = if validate_id(client).is_err() {
                    Some("not a usable client ID")
                } else if client == name {
                    None
                } else if rules.configured_clients.contains(client) {
                    Some("the configuration maps this client ID")
                } else if rules.identity.client(client) == ClientIdentity::Own {
                    Some("one of fleetwatch's own client IDs")
                } else if clients.contains_key(client) {
                    Some("another thing claims this client ID")
                } else {
                    clients.insert(client.clone(), name.to_string());
                    None
                };
                if let Some(why) = why {
                    skipped.push((
                        "bad_client_id",
                        format!("thing {}: {a} = {}: {why}", short(name), short(client)),
                    ));
                }
            }
        }
    }
    Plan {
        groups: groups.into_values().collect(),
        devices,
        clients,
        skipped,
    }
}

/// What the registry's devices became, compared with what it listed before (pure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Listed before and not any more: retire.
    pub gone: Vec<String>,
    /// Gone before and listed again: unretire (if the inventory retired it).
    pub back: Vec<String>,
}

/// `stored`: each device the registry ever listed, with whether it is marked gone.
pub fn membership(stored: &BTreeMap<String, bool>, listed: &BTreeSet<String>) -> Membership {
    let mut m = Membership::default();
    for (id, gone) in stored {
        match (listed.contains(id), gone) {
            (false, false) => m.gone.push(id.clone()),
            (true, true) => m.back.push(id.clone()),
            _ => {}
        }
    }
    m
}

/// One device's connectivity as the fleet index has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub device: String,
    pub connected: bool,
    /// `connectivity.timestamp`, at most our `now` (a stamp from the future must not pin the
    /// device's connectivity).
    pub at: DateTime<Utc>,
    pub disconnect_reason: Option<String>,
}

/// What the database holds for a device's connectivity.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredConnectivity {
    pub id: String,
    pub connected: Option<bool>,
    pub conn_event_ts: Option<DateTime<Utc>>,
}

/// Whether the index corrects the stored connectivity (pure): only when what is stored is
/// older than the index's timestamp (or there is none) and says something else.
pub fn decide_correction(stored: &StoredConnectivity, index: &IndexEntry) -> bool {
    let older = stored.conn_event_ts.is_none_or(|ts| ts < index.at);
    older && stored.connected != Some(index.connected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thing(name: &str, attrs: &[(&str, &str)]) -> Thing {
        Thing {
            name: name.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn group(name: &str, parent: Option<&str>, attrs: &[(&str, &str)]) -> ThingGroup {
        ThingGroup {
            name: name.into(),
            parent: parent.map(str::to_string),
            attributes: thing("", attrs).attributes,
        }
    }

    fn cfg(toml: &str) -> Config {
        Config::from_toml(toml).unwrap()
    }

    #[test]
    fn innermost_group_then_smallest_name() {
        let c = cfg("");
        let id = Identity::from_config(&c);
        let listing = Listing {
            things: vec![thing("a", &[]), thing("b", &[])],
            groups: vec![
                group("site", None, &[]),
                group("floor", Some("site"), &[]),
                group("x-other", None, &[]),
                group("b-other", None, &[]),
            ],
            members: BTreeMap::from([
                ("site".into(), vec!["a".into()]),
                ("floor".into(), vec!["a".into()]),
                ("x-other".into(), vec!["a".into(), "b".into()]),
                ("b-other".into(), vec!["b".into()]),
            ]),
        };
        let p = plan(&listing, &Rules::from_config(&c, &id));
        assert_eq!(p.devices[0].group.as_deref(), Some("floor"));
        assert_eq!(p.devices[1].group.as_deref(), Some("b-other"));
    }

    #[test]
    fn bad_attributes_are_skipped_and_the_rest_applies() {
        let c = cfg("");
        let id = Identity::from_config(&c);
        let long = "9".repeat(10_000);
        let listing = Listing {
            things: vec![
                thing(
                    "a",
                    &[(ATTR_EXPECTED_INTERVAL, "banana"), (ATTR_GRACE, "2m")],
                ),
                thing("bad\u{7}name", &[]),
                thing(&long, &[]),
                thing("c", &[(ATTR_EXPECTED_INTERVAL, &long), (ATTR_GRACE, "0s")]),
            ],
            groups: vec![group(
                "g",
                None,
                &[
                    (ATTR_TIME_ZONE, "Mars/Olympus"),
                    (ATTR_QUIET_HOURS, "01:00-05:00"),
                ],
            )],
            members: BTreeMap::new(),
        };
        let p = plan(&listing, &Rules::from_config(&c, &id));
        assert_eq!(p.devices.len(), 2);
        assert_eq!(p.devices[0].overrides, Some((None, Some(120_000))));
        assert_eq!(p.devices[1].overrides, Some((None, Some(0))));
        assert_eq!(p.groups[0].time_zone, "UTC");
        assert_eq!(p.groups[0].quiet_hours, "01:00-05:00");
        let reasons: Vec<&str> = p.skipped.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            reasons.iter().filter(|r| **r == "bad_thing_name").count(),
            2
        );
        assert!(reasons.contains(&"bad_group_attribute"));
        assert!(p.skipped.iter().all(|(_, d)| d.chars().count() < 300));
    }

    #[test]
    fn membership_retires_only_listed_before_and_brings_back_gone() {
        let stored = BTreeMap::from([
            ("kept".to_string(), false),
            ("deleted".to_string(), false),
            ("back".to_string(), true),
            ("still-gone".to_string(), true),
        ]);
        let listed: BTreeSet<String> = ["kept", "back", "new"].map(String::from).into();
        assert_eq!(
            membership(&stored, &listed),
            Membership {
                gone: vec!["deleted".into()],
                back: vec!["back".into()],
            }
        );
    }

    #[test]
    fn corrections_only_for_older_and_different() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let e = IndexEntry {
            device: "a".into(),
            connected: false,
            at: t("2026-01-01T10:00:00Z"),
            disconnect_reason: None,
        };
        let s = |c: Option<bool>, ts: Option<&str>| StoredConnectivity {
            id: "a".into(),
            connected: c,
            conn_event_ts: ts.map(t),
        };
        assert!(decide_correction(&s(None, None), &e));
        assert!(decide_correction(
            &s(Some(true), Some("2026-01-01T09:00:00Z")),
            &e
        ));
        assert!(!decide_correction(
            &s(Some(true), Some("2026-01-01T10:00:01Z")),
            &e
        ));
        assert!(!decide_correction(
            &s(Some(true), Some("2026-01-01T10:00:00Z")),
            &e
        ));
        assert!(!decide_correction(
            &s(Some(false), Some("2026-01-01T09:00:00Z")),
            &e
        ));
    }
}
