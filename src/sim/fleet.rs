//! The simulated fleet: screens in buildings across time zones, each with a device id, an MQTT
//! client id and a carrier address. A pure function of the screen count and the seed.
//!
//! - `--devices` screens named `screen-00001`…, in buildings of about [`SCREENS_PER_BUILDING`]
//!   (`building-01`…), each building in one of [`ZONES`] and on one of [`CARRIERS`];
//! - a screen's client id is its device id, except where the simulator makes a deliberate
//!   duplicate (a unit cloned from another, [`Fleet::share_client_id`]);
//! - a screen's address is in its building's carrier prefix (the carrier NAT egress AWS reports as
//!   `ipAddress`); [`FOREIGN_NETWORK`] is a prefix no screen starts in (the address-drift incident).
//!
//! The prefixes are documentation and benchmarking ranges (RFC 5737, RFC 2544), never routed.

use std::net::Ipv4Addr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// About this many screens per building.
pub const SCREENS_PER_BUILDING: usize = 33;

/// The time zones buildings are spread over (three when there are at least three buildings).
pub const ZONES: [&str; 3] = ["America/New_York", "America/Chicago", "America/Los_Angeles"];

/// The carriers' egress /16s (the service's default network of an IPv4 address is its /16).
pub const CARRIERS: [[u8; 2]; 3] = [[198, 18], [198, 19], [203, 0]];

/// A /16 that no screen starts in: where a unit "from a new network" connects from.
pub const FOREIGN_NETWORK: [u8; 2] = [192, 0];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Building {
    /// `building-NN`.
    pub name: String,
    pub zone: &'static str,
    /// Index into [`CARRIERS`].
    pub carrier: usize,
    /// Indexes into [`Fleet::screens`].
    pub screens: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screen {
    /// `screen-NNNNN`.
    pub device_id: String,
    /// The MQTT client id: the device id unless this unit is a deliberate duplicate.
    pub client_id: String,
    /// Index into [`Fleet::buildings`].
    pub building: usize,
    pub address: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    pub buildings: Vec<Building>,
    pub screens: Vec<Screen>,
}

/// An address in a /16.
pub fn address_in(prefix: [u8; 2], rng: &mut StdRng) -> Ipv4Addr {
    Ipv4Addr::new(
        prefix[0],
        prefix[1],
        rng.random_range(0..=255),
        rng.random_range(1..=254),
    )
}

impl Fleet {
    /// `devices` screens (at least one), deterministic from `seed`.
    pub fn new(devices: usize, seed: u64) -> Fleet {
        let devices = devices.max(1);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x0066_6c65_6574);
        let n_buildings = devices.div_ceil(SCREENS_PER_BUILDING).max(1);
        let zones = if n_buildings >= 3 { 3 } else { 2 };
        let mut buildings: Vec<Building> = (0..n_buildings)
            .map(|b| Building {
                name: format!("building-{:02}", b + 1),
                zone: ZONES[b % zones],
                carrier: rng.random_range(0..CARRIERS.len()),
                screens: Vec::new(),
            })
            .collect();
        let screens = (0..devices)
            .map(|i| {
                // Contiguous runs, so a building's screens have neighbouring numbers.
                let building = i * n_buildings / devices;
                buildings[building].screens.push(i);
                let id = format!("screen-{:05}", i + 1);
                Screen {
                    client_id: id.clone(),
                    device_id: id,
                    building,
                    address: address_in(CARRIERS[buildings[building].carrier], &mut rng),
                }
            })
            .collect();
        Fleet { buildings, screens }
    }

    /// The buildings a carrier outage takes (a regional failure of one carrier): of the carrier
    /// whose outage needs the fewest buildings, `max(2, ⌈0.4 × its buildings⌉)` of those not in
    /// `excluded`, lowest index first; `None` when no carrier has enough. Two buildings at least,
    /// because one dark building is a power cut to the service, not a carrier outage; 40 % of
    /// the carrier's buildings so that its share of the carrier's screens stays above the
    /// service's default `network_outage_fraction` (30 %) whatever the building sizes.
    pub fn carrier_outage(&self, excluded: &[usize]) -> Option<Vec<usize>> {
        (0..CARRIERS.len())
            .filter_map(|c| {
                let all: Vec<usize> = (0..self.buildings.len())
                    .filter(|&b| self.buildings[b].carrier == c)
                    .collect();
                let need = ((all.len() * 2).div_ceil(5)).max(2);
                let free: Vec<usize> = all.into_iter().filter(|b| !excluded.contains(b)).collect();
                (free.len() >= need).then(|| free[..need].to_vec())
            })
            .min_by_key(Vec::len)
    }

    /// Make `clone` connect with `original`'s client id (a unit set up from a copy of another's
    /// configuration): the two then take the connection from each other.
    pub fn share_client_id(&mut self, clone: usize, original: usize) {
        self.screens[clone].client_id = self.screens[original].client_id.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildings_zones_ids_and_addresses() {
        let f = Fleet::new(2000, 7);
        assert_eq!(f.screens.len(), 2000);
        assert_eq!(f.buildings.len(), 61);
        assert_eq!(f.screens[0].device_id, "screen-00001");
        assert_eq!(f.screens[1999].device_id, "screen-02000");
        assert!(f.screens.iter().all(|s| s.client_id == s.device_id));
        assert_eq!(f.buildings[0].name, "building-01");
        let zones: std::collections::BTreeSet<_> = f.buildings.iter().map(|b| b.zone).collect();
        assert_eq!(zones.len(), 3);
        for b in &f.buildings {
            assert!((30..=34).contains(&b.screens.len()), "{}", b.screens.len());
            for &s in &b.screens {
                let o = f.screens[s].address.octets();
                assert_eq!([o[0], o[1]], CARRIERS[b.carrier]);
                assert_eq!(
                    f.screens[s].building,
                    f.buildings.iter().position(|x| x == b).unwrap()
                );
            }
        }
        assert_eq!(Fleet::new(10, 1).buildings.len(), 1);
        assert_eq!(
            Fleet::new(100, 1)
                .buildings
                .iter()
                .map(|b| b.zone)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            3
        );
    }

    #[test]
    fn the_seed_decides() {
        assert_eq!(Fleet::new(500, 1), Fleet::new(500, 1));
        assert_ne!(Fleet::new(500, 1), Fleet::new(500, 2));
    }

    #[test]
    fn a_duplicate_takes_the_original_client_id() {
        let mut f = Fleet::new(100, 1);
        f.share_client_id(5, 9);
        assert_eq!(f.screens[5].client_id, "screen-00010");
        assert_eq!(f.screens[5].device_id, "screen-00006");
    }
}
