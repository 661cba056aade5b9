//! The demo's script: one round of every kind of incident, repeated, on a time scale
//! (`--speed`), with a line of text per act for the dashboard ("now: building-12 loses power").
//!
//! A round lasts [`ROUND`] at speed 1 (four minutes, so a visitor sees every kind within five);
//! speed `s` divides every offset and span by `s`, the incidents' own spans included
//! ([`Story::pace`]), and `demo::config` divides the service's thresholds by the same factor,
//! so the same alerts fire at any speed. Each round plans the same incidents on the same
//! screens, each undone before the round ends ([`crate::sim::incident::recover`]), so the fleet
//! is whole again when the next round starts and its alerts resolve in between.
//!
//! | at (speed 1) | act | the service should raise |
//! |---|---|---|
//! | 0 s | a carrier fails in a few of its buildings (until 70 s) | one `network_outage`, covering the buildings' group outages and their screens' gaps: one page |
//! | 5–20 s | six LTE blips with backlog flushes | nothing |
//! | 20 s | a player crashes (until 170 s) | `heartbeat_gap` (silent) |
//! | 35 s | a modem dies (until 185 s) | `heartbeat_gap` (offline) |
//! | 50 s | a building loses power (until 170 s) | one `group_outage`, covering its screens' gaps |
//! | 65 s | a clone shares a unit's client id (until 120 s) | `client_id_conflict`, `Connect.ClientIDThrottle` |
//! | 80 s | a modem flaps | `flapping` |
//! | 95 s | reconnects are throttled | `throttled`, `Connect.Throttle` |
//! | 100 s | a screen's camera is covered (until 210 s): it keeps sending, counting nobody | `impressions_anomaly` after two low buckets |
//! | 110 s | a unit presents a wrong certificate | `auth_failure`, `Connect.AuthError` |
//! | 125 s | a building closes for the night, inside its quiet hours (until 215 s) | nothing |
//! | 140 s | a screen connects from a new network (until 200 s) | `address_drift` |
//! | 170 s | power back, the player restarted | the gaps and the outage resolve |
//! | 215 s | all clear until the next round | |
//!
//! The CloudWatch series (`demo::cloudwatch`) follow the same events.

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::sim::{Fleet, IncidentKind, Planned};

/// A round at speed 1.
pub const ROUND: TimeDelta = TimeDelta::seconds(240);

/// The incidents' own spans at speed 1, relative to a real fleet's (`sim::incident`): a flapping
/// modem's dozen drops in two minutes instead of six, so a round fits in [`ROUND`].
pub const PACE: f64 = 0.35;

/// How many blips a round has.
pub const BLIPS: usize = 6;

/// One act of a round: when it starts (at speed 1, from the round's start) and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Act {
    pub at: TimeDelta,
    pub text: String,
    /// The incidents it starts: kind, screens, and how long until each is undone (speed 1).
    pub incidents: Vec<(IncidentKind, Vec<usize>, Option<TimeDelta>)>,
}

/// The screens each incident happens to (the same every round).
#[derive(Debug, Clone, PartialEq)]
pub struct Cast {
    pub blips: Vec<usize>,
    pub crash: usize,
    pub dead_modem: usize,
    /// A building (index into `Fleet::buildings`).
    pub power_cut: usize,
    /// The original and the clone sharing its client id.
    pub duplicate: (usize, usize),
    pub flapping: usize,
    pub throttled: usize,
    pub bad_cert: usize,
    /// The building that closes (it has quiet hours in `demo::config`).
    pub closed: usize,
    pub new_network: usize,
    /// The screen whose camera is covered.
    pub covered_camera: usize,
    /// The buildings (indexes into `Fleet::buildings`) of one carrier that lose it: see
    /// `Fleet::carrier_outage`.
    pub carrier_outage: Vec<usize>,
}

/// The fewest screens the story needs: seven buildings' worth, so the power cut and the closing
/// take one building each, two of the other five share a carrier for the carrier outage, and
/// the other incidents have screens elsewhere.
pub const MIN_DEVICES: usize = 200;

impl Cast {
    /// Choose the cast from the fleet, deterministically from `seed`: building 12 (or the
    /// last) loses power, building 7 (or the first) closes, the other incidents happen to
    /// screens of other buildings.
    pub fn choose(fleet: &Fleet, seed: u64) -> Result<Cast, String> {
        let n = fleet.buildings.len();
        if fleet.screens.len() < MIN_DEVICES || n < 3 {
            return Err(format!(
                "devices: the demo's story needs at least {MIN_DEVICES} screens, got {}",
                fleet.screens.len()
            ));
        }
        let power_cut = 11.min(n - 1);
        let closed = if n > 7 { 6 } else { 0 };
        let carrier_outage = fleet.carrier_outage(&[power_cut, closed]).ok_or_else(|| {
            "devices: no carrier has two buildings for the carrier outage".to_string()
        })?;
        let mut others: Vec<usize> = (0..fleet.screens.len())
            .filter(|&s| {
                let b = fleet.screens[s].building;
                b != power_cut && b != closed && !carrier_outage.contains(&b)
            })
            .collect();
        others.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x5707));
        let mut next = others.into_iter();
        let mut take = || next.next().expect("MIN_DEVICES leaves enough screens");
        Ok(Cast {
            blips: (0..BLIPS).map(|_| take()).collect(),
            crash: take(),
            dead_modem: take(),
            power_cut,
            duplicate: (take(), take()),
            flapping: take(),
            throttled: take(),
            bad_cert: take(),
            closed,
            new_network: take(),
            covered_camera: take(),
            carrier_outage,
        })
    }
}

/// The script at a speed.
#[derive(Debug, Clone)]
pub struct Story {
    pub speed: f64,
    pub cast: Cast,
    acts: Vec<Act>,
}

/// What the story is doing at a moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Now {
    /// 1-based; 0 before the first round starts.
    pub round: u64,
    /// The current act's text.
    pub text: String,
    /// Into the round, and the round's length (at this speed).
    pub elapsed: TimeDelta,
    pub length: TimeDelta,
}

fn secs(s: i64) -> TimeDelta {
    TimeDelta::seconds(s)
}

/// The letter of a carrier (index into `sim::fleet::CARRIERS`), as `demo::config` names its
/// network: `carrier-a`, `carrier-b`, ….
pub fn carrier_name(carrier: usize) -> char {
    (b'a' + carrier as u8) as char
}

impl Story {
    /// The story of `fleet` with `cast` at `speed` (> 0).
    pub fn new(fleet: &Fleet, cast: Cast, speed: f64) -> Story {
        let dev = |s: usize| fleet.screens[s].device_id.clone();
        let bld = |b: usize| fleet.buildings[b].name.clone();
        let c = &cast;
        let carrier = fleet.buildings[c.carrier_outage[0]].carrier;
        let acts = vec![
            Act {
                at: secs(0),
                text: format!(
                    "carrier-{} fails around {}: their screens drop together (one \
                     network_outage, nothing per building or screen)",
                    carrier_name(carrier),
                    c.carrier_outage
                        .iter()
                        .map(|&b| bld(b))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                incidents: vec![(
                    IncidentKind::CarrierOutage,
                    c.carrier_outage
                        .iter()
                        .flat_map(|&b| fleet.buildings[b].screens.clone())
                        .collect(),
                    Some(secs(70)),
                )],
            },
            Act {
                at: secs(5),
                text: format!(
                    "LTE blips: {BLIPS} screens drop for a few seconds and flush their backlog \
                     (nothing should be raised)"
                ),
                incidents: c
                    .blips
                    .iter()
                    .map(|&s| (IncidentKind::Blip, vec![s], None))
                    .collect(),
            },
            Act {
                at: secs(20),
                text: format!(
                    "the player of {} crashed: connected, but no impressions",
                    dev(c.crash)
                ),
                incidents: vec![(IncidentKind::Crash, vec![c.crash], Some(secs(150)))],
            },
            Act {
                at: secs(35),
                text: format!("the modem of {} died: offline", dev(c.dead_modem)),
                incidents: vec![(IncidentKind::DeadModem, vec![c.dead_modem], Some(secs(150)))],
            },
            Act {
                at: secs(50),
                text: format!("{} loses power", bld(c.power_cut)),
                incidents: vec![(
                    IncidentKind::PowerCut,
                    fleet.buildings[c.power_cut].screens.clone(),
                    Some(secs(120)),
                )],
            },
            Act {
                at: secs(65),
                text: format!(
                    "{} was set up from a copy of {}: the two share client id {} and keep \
                     taking the connection from each other",
                    dev(c.duplicate.1),
                    dev(c.duplicate.0),
                    fleet.screens[c.duplicate.0].client_id
                ),
                incidents: vec![(
                    IncidentKind::Duplicate,
                    vec![c.duplicate.0, c.duplicate.1],
                    Some(secs(55)),
                )],
            },
            Act {
                at: secs(80),
                text: format!("the modem of {} is flapping", dev(c.flapping)),
                incidents: vec![(IncidentKind::Flapping, vec![c.flapping], None)],
            },
            Act {
                at: secs(95),
                text: format!("AWS IoT throttles the reconnects of {}", dev(c.throttled)),
                incidents: vec![(IncidentKind::Throttled, vec![c.throttled], None)],
            },
            Act {
                at: secs(100),
                text: format!(
                    "the camera of {} is covered: the screen keeps sending, but counts nobody",
                    dev(c.covered_camera)
                ),
                incidents: vec![(
                    IncidentKind::CoveredCamera,
                    vec![c.covered_camera],
                    Some(secs(110)),
                )],
            },
            Act {
                at: secs(110),
                text: format!(
                    "a new unit, {}, presents a wrong certificate",
                    dev(c.bad_cert)
                ),
                incidents: vec![(IncidentKind::BadCert, vec![c.bad_cert], None)],
            },
            Act {
                at: secs(125),
                text: format!(
                    "{} closes for the night: its screens go dark inside its quiet hours \
                     (nothing should be raised)",
                    bld(c.closed)
                ),
                incidents: vec![(
                    IncidentKind::Closed,
                    fleet.buildings[c.closed].screens.clone(),
                    Some(secs(90)),
                )],
            },
            Act {
                at: secs(140),
                text: format!(
                    "{} reconnects from a network it never used",
                    dev(c.new_network)
                ),
                incidents: vec![(
                    IncidentKind::NewNetwork,
                    vec![c.new_network],
                    Some(secs(60)),
                )],
            },
            Act {
                at: secs(170),
                text: format!(
                    "power is back in {}, the crashed player restarts, the dead modem is \
                     replaced: their alerts resolve",
                    bld(c.power_cut)
                ),
                incidents: vec![],
            },
            Act {
                at: secs(215),
                text: "all clear: every screen is back; the story starts again shortly".into(),
                incidents: vec![],
            },
        ];
        Story { speed, cast, acts }
    }

    /// A span of the script at this speed.
    pub fn scaled(&self, d: TimeDelta) -> TimeDelta {
        TimeDelta::milliseconds((d.num_milliseconds() as f64 / self.speed).round() as i64)
    }

    /// A round's length at this speed.
    pub fn length(&self) -> TimeDelta {
        self.scaled(ROUND)
    }

    /// The incidents' spans at this speed (the simulator's `pace`).
    pub fn pace(&self) -> f64 {
        PACE / self.speed
    }

    pub fn acts(&self) -> &[Act] {
        &self.acts
    }

    /// The incidents of round `k` (0-based) of a story whose first round starts at `start`.
    pub fn round(&self, start: DateTime<Utc>, k: u64) -> Vec<Planned> {
        let begin = start + self.length() * (k as i32);
        self.acts
            .iter()
            .flat_map(|a| {
                let at = begin + self.scaled(a.at);
                a.incidents
                    .iter()
                    .enumerate()
                    .map(move |(i, (kind, screens, lasts))| {
                        // the blips of one act a few seconds apart (scaled)
                        let at = at + self.scaled(secs(3 * i as i64));
                        Planned {
                            kind: *kind,
                            at,
                            screens: screens.clone(),
                            until: lasts.map(|d| at + self.scaled(d)),
                        }
                    })
            })
            .collect()
    }

    /// What the story is doing at `t` (first round starting at `start`).
    pub fn now(&self, start: DateTime<Utc>, t: DateTime<Utc>) -> Now {
        let length = self.length();
        if t < start {
            return Now {
                round: 0,
                text: "the fleet connects; the story starts in a few seconds".into(),
                elapsed: TimeDelta::zero(),
                length,
            };
        }
        let into = t - start;
        let len_ms = length.num_milliseconds().max(1);
        let round = (into.num_milliseconds() / len_ms) as u64;
        let elapsed = TimeDelta::milliseconds(into.num_milliseconds() % len_ms);
        let act = self
            .acts
            .iter()
            .rev()
            .find(|a| self.scaled(a.at) <= elapsed)
            .expect("the first act starts at 0");
        Now {
            round: round + 1,
            text: act.text.clone(),
            elapsed,
            length,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn story(devices: usize, speed: f64) -> (Fleet, Story) {
        let fleet = Fleet::new(devices, 3);
        let cast = Cast::choose(&fleet, 3).unwrap();
        let story = Story::new(&fleet, cast, speed);
        (fleet, story)
    }

    #[test]
    fn the_cast_is_distinct_and_away_from_the_two_buildings() {
        for devices in [MIN_DEVICES, 300, 2000] {
            let (fleet, s) = story(devices, 1.0);
            let c = &s.cast;
            assert_ne!(c.power_cut, c.closed);
            let mut singles = c.blips.clone();
            singles.extend([
                c.crash,
                c.dead_modem,
                c.duplicate.0,
                c.duplicate.1,
                c.flapping,
                c.throttled,
                c.bad_cert,
                c.new_network,
                c.covered_camera,
            ]);
            let n = singles.len();
            singles.sort();
            singles.dedup();
            assert_eq!(singles.len(), n, "each screen in one incident");
            for s in singles {
                let b = fleet.screens[s].building;
                assert!(b != c.power_cut && b != c.closed);
                assert!(!c.carrier_outage.contains(&b));
            }
        }
        assert_eq!(story(2000, 1.0).1.cast.power_cut, 11, "building-12");
        assert!(Cast::choose(&Fleet::new(MIN_DEVICES - 1, 1), 1).is_err());
    }

    /// The carrier outage must be what the service calls one: at least 30 % of its carrier's
    /// screens (`network_outage_fraction`) in at least two buildings, of one carrier, and under
    /// the demo's `fleet_outage_fraction` (0.5) of the fleet, for every fleet the demo accepts.
    #[test]
    fn the_carrier_outage_is_a_network_outage_and_not_the_fleets() {
        for devices in [MIN_DEVICES, 250, 300, 1000, 2000, 10_000] {
            for seed in 0..30 {
                let fleet = Fleet::new(devices, seed);
                let c = Cast::choose(&fleet, seed).unwrap();
                let hit = &c.carrier_outage;
                assert!(hit.len() >= 2, "{devices} {seed}");
                assert!(!hit.contains(&c.power_cut) && !hit.contains(&c.closed));
                let carrier = fleet.buildings[hit[0]].carrier;
                assert!(hit.iter().all(|&b| fleet.buildings[b].carrier == carrier));
                let screens = |bs: &mut dyn Iterator<Item = usize>| -> usize {
                    bs.map(|b| fleet.buildings[b].screens.len()).sum()
                };
                let dark = screens(&mut hit.iter().copied());
                let of_carrier = screens(
                    &mut (0..fleet.buildings.len())
                        .filter(|&b| fleet.buildings[b].carrier == carrier),
                );
                assert!(
                    dark as f64 >= 0.3 * of_carrier as f64,
                    "{devices} {seed}: {dark} of {of_carrier}"
                );
                assert!(
                    (dark as f64) < 0.5 * fleet.screens.len() as f64,
                    "{devices} {seed}: {dark} of {}",
                    fleet.screens.len()
                );
            }
        }
    }

    #[test]
    fn every_incident_ends_within_its_round_and_rounds_repeat() {
        for speed in [1.0, 4.0] {
            let (_, s) = story(300, speed);
            let r0 = s.round(t0(), 0);
            let r1 = s.round(t0(), 1);
            assert_eq!(r0.len(), r1.len());
            let kinds: std::collections::BTreeSet<_> = r0.iter().map(|p| p.kind).collect();
            assert_eq!(
                kinds.len(),
                IncidentKind::ALL.len(),
                "every kind, every round"
            );
            for (a, b) in r0.iter().zip(&r1) {
                assert_eq!(b.at - a.at, s.length());
                assert_eq!(a.screens, b.screens);
                assert!(a.at < t0() + s.length());
                if let Some(u) = a.until {
                    // undone before the round ends, with time for the recovery's own spans
                    assert!(u > a.at && u <= t0() + s.scaled(secs(215)), "{a:?}");
                }
            }
        }
    }

    #[test]
    fn the_banner_follows_the_acts_at_any_speed() {
        let (fleet, s) = story(2000, 4.0);
        assert_eq!(s.length(), secs(60));
        assert_eq!(s.now(t0(), t0() - secs(1)).round, 0);
        let at = |secs_: i64| s.now(t0(), t0() + TimeDelta::milliseconds(secs_ * 250));
        assert!(at(0).text.starts_with("carrier-"), "{}", at(0).text);
        assert!(at(5).text.starts_with("LTE blips"));
        assert_eq!(at(0).round, 1);
        assert_eq!(at(50).text, "building-12 loses power");
        assert_eq!(at(64).text, "building-12 loses power");
        assert!(at(65).text.contains("client id"));
        let next = at(240 + 50);
        assert_eq!(
            (next.round, next.text.as_str()),
            (2, "building-12 loses power")
        );
        assert_eq!(next.elapsed, secs(50) / 4);
        assert!(at(20).text.contains(&fleet.screens[s.cast.crash].device_id));
    }
}
