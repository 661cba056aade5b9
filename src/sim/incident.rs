//! Incidents: what each kind of trouble in a real fleet looks like on the wire, one pure
//! generator per kind ([`generate`]: the screens involved, the start time and the simulator's
//! state in, timed [`Step`]s out). The reasons are the ones AWS sends and `detect::connection`
//! counts, so each incident raises the alert it should on the service's default thresholds:
//!
//! | kind | what happens | the service should raise |
//! |---|---|---|
//! | `blip` | `CONNECTION_LOST`, reconnect 3–15 s later, then the impressions of the gap in one burst with their old timestamps | nothing |
//! | `crash` | the player dies, the modem stays connected: impressions stop | `heartbeat_gap` (silent) |
//! | `dead-modem` | `MQTT_KEEP_ALIVE_TIMEOUT`, then nothing | `heartbeat_gap` (offline) |
//! | `duplicate` | a second unit with the first one's client id: each connects in turn and AWS disconnects the other (`DUPLICATE_CLIENTID`), 8 takeovers 3–8 s apart, two sessions from two addresses | `client_id_conflict` |
//! | `flapping` | 12 × (`CONNECTION_LOST`, reconnect 2–6 s later), 15–40 s apart | `flapping` |
//! | `throttled` | 5 × (`THROTTLED` disconnect, reconnect 1–3 s later), 5–15 s apart | `throttled` |
//! | `bad-cert` | a unit with a wrong certificate: 8 `connect_failed` `AUTHORIZATION_FAILED`, 2–5 s apart; it never connects | `auth_failure` |
//! | `power-cut` | every screen of one building: `MQTT_KEEP_ALIVE_TIMEOUT` within 3 s, then nothing | `group_outage` (and the devices' gaps under it) |
//! | `new-network` | `CONNECTION_LOST`, reconnect 3–8 s later from an address in [`FOREIGN_NETWORK`] | `address_drift` (when enabled) |
//! | `closed` | every screen of one building: the players switch off for the night, the modems stay connected | nothing in the building's quiet hours, else `group_outage` (not in the default mix) |
//! | `covered-camera` | the camera is covered (or the counting process crashed): the screen stays connected and keeps sending, every message counting 0 impressions | `impressions_anomaly`, once the service has the screen's baseline |
//! | `carrier-outage` | every screen of several buildings on one carrier (`Fleet::carrier_outage`): `MQTT_KEEP_ALIVE_TIMEOUT` within 3 s, then nothing | one `network_outage` covering the buildings' group outages and gaps (not in the default mix: a third of a small fleet is a `fleet_outage`) |
//!
//! The spans above are at pace 1 ([`Ctx::pace`] multiplies every one: the demo's story runs
//! them faster, with thresholds to match). An incident planned with an end ([`super::Planned`])
//! is undone then by [`recover`]: the player restarts, the modem or the power comes back, the
//! clone is switched off, the unit returns to its home network, the building opens.
//!
//! Throttling appears as `THROTTLED` *disconnects* (what `detect::connection` counts for
//! `throttled`), not as `connect_failed`: the service counts every `connect_failed` as a
//! credential failure, so a throttled connection attempt reported that way would raise
//! `auth_failure` instead.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;

use super::fleet::{address_in, FOREIGN_NETWORK};
use super::{session_id, Ctx, Step};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IncidentKind {
    Blip,
    Crash,
    DeadModem,
    Duplicate,
    Flapping,
    Throttled,
    BadCert,
    PowerCut,
    NewNetwork,
    Closed,
    CarrierOutage,
    CoveredCamera,
}

impl IncidentKind {
    pub const ALL: [IncidentKind; 12] = [
        IncidentKind::Blip,
        IncidentKind::Crash,
        IncidentKind::DeadModem,
        IncidentKind::Duplicate,
        IncidentKind::Flapping,
        IncidentKind::Throttled,
        IncidentKind::BadCert,
        IncidentKind::PowerCut,
        IncidentKind::NewNetwork,
        IncidentKind::Closed,
        IncidentKind::CarrierOutage,
        IncidentKind::CoveredCamera,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Blip => "blip",
            IncidentKind::Crash => "crash",
            IncidentKind::DeadModem => "dead-modem",
            IncidentKind::Duplicate => "duplicate",
            IncidentKind::Flapping => "flapping",
            IncidentKind::Throttled => "throttled",
            IncidentKind::BadCert => "bad-cert",
            IncidentKind::PowerCut => "power-cut",
            IncidentKind::NewNetwork => "new-network",
            IncidentKind::Closed => "closed",
            IncidentKind::CarrierOutage => "carrier-outage",
            IncidentKind::CoveredCamera => "covered-camera",
        }
    }

    /// Whether one incident takes a whole building (instead of [`IncidentKind::screens`]).
    pub fn takes_building(self) -> bool {
        matches!(self, IncidentKind::PowerCut | IncidentKind::Closed)
    }

    /// How many screens one incident takes at least (a power cut or a closing takes a whole
    /// building instead, a carrier outage several).
    pub fn screens(self) -> usize {
        match self {
            IncidentKind::Duplicate | IncidentKind::CarrierOutage => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for IncidentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IncidentKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        IncidentKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown incident {s:?}; expected one of {}",
                    IncidentKind::ALL.map(IncidentKind::as_str).join(", ")
                )
            })
    }
}

/// How many incidents of each kind a run has: `blip=5,crash=1,power-cut=1`, or `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix(BTreeMap<IncidentKind, usize>);

impl Mix {
    pub fn none() -> Mix {
        Mix(BTreeMap::new())
    }
    pub fn count(&self, kind: IncidentKind) -> usize {
        self.0.get(&kind).copied().unwrap_or(0)
    }
    pub fn iter(&self) -> impl Iterator<Item = (IncidentKind, usize)> + '_ {
        self.0.iter().map(|(k, n)| (*k, *n))
    }
}

impl Default for Mix {
    /// Five blips and one of every other kind but `closed` (which pages unless the building has
    /// quiet hours to match) and `carrier-outage` (a third of a small fleet: a fleet outage).
    fn default() -> Self {
        Mix(IncidentKind::ALL
            .into_iter()
            .filter(|k| !matches!(k, IncidentKind::Closed | IncidentKind::CarrierOutage))
            .map(|k| (k, if k == IncidentKind::Blip { 5 } else { 1 }))
            .collect())
    }
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(Mix::none());
        }
        let mut m = BTreeMap::new();
        for part in s.split(',') {
            let (k, n) = part
                .split_once('=')
                .ok_or_else(|| format!("expected KIND=COUNT, got {part:?}"))?;
            let kind: IncidentKind = k.trim().parse()?;
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| format!("{kind}: expected a count, got {n:?}"))?;
            if n > 10_000 {
                return Err(format!("{kind}: expected at most 10000, got {n}"));
            }
            if m.insert(kind, n).is_some() {
                return Err(format!("{kind} given twice"));
            }
        }
        Ok(Mix(m))
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.iter().map(|(k, n)| format!("{k}={n}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// A message to publish, as a step at its time.
fn pubs(o: super::Outgoing) -> (DateTime<Utc>, Step) {
    (o.at, Step::Publish(o))
}

impl Ctx<'_> {
    /// A random span between `lo` and `hi` milliseconds at pace 1, times [`Ctx::pace`].
    fn span(&mut self, lo: i64, hi: i64) -> TimeDelta {
        let v = self.rng.random_range(lo..hi) as f64 * self.pace;
        TimeDelta::milliseconds(v.round().max(1.0) as i64)
    }
}

pub const DUPLICATE_TAKEOVERS: usize = 8;
// `recover` relies on the original holding the client id after the last takeover.
const _: () = assert!(DUPLICATE_TAKEOVERS % 2 == 0);
pub const FLAPPING_CYCLES: usize = 12;
pub const THROTTLED_CYCLES: usize = 5;
pub const BAD_CERT_ATTEMPTS: usize = 8;

/// A screen dropped and back again and again: disconnected for `reason`, connected again
/// after `down` (milliseconds, a random span in this range), dropped again after `up`.
/// Flapping and throttled reconnects differ only in these.
struct Cycles {
    count: usize,
    reason: &'static str,
    down: (i64, i64),
    up: (i64, i64),
}

const FLAPPING: Cycles = Cycles {
    count: FLAPPING_CYCLES,
    reason: "CONNECTION_LOST",
    down: (2_000, 6_000),
    up: (15_000, 40_000),
};

const THROTTLED: Cycles = Cycles {
    count: THROTTLED_CYCLES,
    reason: "THROTTLED",
    down: (1_000, 3_000),
    up: (5_000, 15_000),
};

fn reconnect_cycles(
    c: &Cycles,
    s: usize,
    at: DateTime<Utc>,
    inc: Option<IncidentKind>,
    ctx: &mut Ctx<'_>,
    steps: &mut Vec<(DateTime<Utc>, Step)>,
) {
    let mut t = at;
    for _ in 0..c.count {
        steps.push(pubs(ctx.disconnect(s, t, c.reason, inc)));
        let back = t + ctx.span(c.down.0, c.down.1);
        steps.push(pubs(ctx.connect(s, back, inc)));
        t = back + ctx.span(c.up.0, c.up.1);
    }
}

/// `CONNECTION_LOST`, then a new connection 3–8 s later from `address`.
fn reconnect_from(
    s: usize,
    address: std::net::Ipv4Addr,
    at: DateTime<Utc>,
    inc: Option<IncidentKind>,
    ctx: &mut Ctx<'_>,
    steps: &mut Vec<(DateTime<Utc>, Step)>,
) {
    steps.push(pubs(ctx.disconnect(s, at, "CONNECTION_LOST", inc)));
    ctx.states[s].address = address;
    let back = at + ctx.span(3_000, 8_000);
    steps.push(pubs(ctx.connect(s, back, inc)));
}

/// `step` for each of `screens` at a random moment of the minute from `at` (a building's
/// players switching off or on one by one).
fn spread(
    screens: &[usize],
    at: DateTime<Utc>,
    step: fn(usize) -> Step,
    ctx: &mut Ctx<'_>,
    steps: &mut Vec<(DateTime<Utc>, Step)>,
) {
    for &s in screens {
        steps.push((at + ctx.span(0, 60_000), step(s)));
    }
}

/// The steps of one incident of `kind` over `screens` (see [`super::Planned`]) starting at
/// `at`. Updates the screens' state (versions, sessions, addresses) as the events it returns
/// will leave them.
pub fn generate(
    kind: IncidentKind,
    screens: &[usize],
    at: DateTime<Utc>,
    ctx: &mut Ctx<'_>,
) -> Vec<(DateTime<Utc>, Step)> {
    let inc = Some(kind);
    let mut steps = Vec::new();
    match kind {
        IncidentKind::Blip => {
            let s = screens[0];
            let gap = ctx.span(3_000, 15_000);
            steps.push(pubs(ctx.disconnect(s, at, "CONNECTION_LOST", inc)));
            steps.push((at, Step::Mute(s)));
            let back = at + gap;
            steps.push(pubs(ctx.connect(s, back, inc)));
            steps.push((back, Step::Unmute(s)));
            // The player kept logging while offline and flushes its queue once connected.
            let n = (gap.num_milliseconds() / ctx.interval.num_milliseconds().max(1)).clamp(3, 500);
            for k in 0..n {
                let device_ts = at + gap * (k as i32) / (n as i32);
                let sent = back + TimeDelta::milliseconds(300 + 5 * k);
                steps.push(pubs(ctx.impression(s, sent, device_ts, inc)));
            }
        }
        IncidentKind::Crash => steps.push((at, Step::Mute(screens[0]))),
        IncidentKind::DeadModem => {
            let s = screens[0];
            steps.push(pubs(ctx.disconnect(s, at, "MQTT_KEEP_ALIVE_TIMEOUT", inc)));
            steps.push((at, Step::Mute(s)));
        }
        IncidentKind::PowerCut | IncidentKind::CarrierOutage => {
            for &s in screens {
                let t = at + ctx.span(0, 3_000);
                steps.push(pubs(ctx.disconnect(s, t, "MQTT_KEEP_ALIVE_TIMEOUT", inc)));
                steps.push((t, Step::Mute(s)));
            }
        }
        IncidentKind::Duplicate => {
            // screens[0] is the original, screens[1] the clone with its client id; the client
            // id's version numbers are the original's (AWS keeps them per client id).
            let (a, b) = (screens[0], screens[1]);
            ctx.states[b].session = session_id(ctx.rng);
            let mut holder = (a, ctx.states[a].version);
            let mut t = at;
            steps.push((at, Step::Unmute(b)));
            for r in 0..DUPLICATE_TAKEOVERS {
                let newcomer = if r % 2 == 0 { b } else { a };
                ctx.states[a].version += 1;
                let v = ctx.states[a].version;
                steps.push(pubs(ctx.connected_event(a, newcomer, t, inc)));
                let kicked = ctx.disconnected_event(
                    holder.0,
                    holder.1,
                    t + TimeDelta::milliseconds(40),
                    "DUPLICATE_CLIENTID",
                    inc,
                );
                steps.push(pubs(kicked));
                holder = (newcomer, v);
                t += ctx.span(3_000, 8_000);
            }
        }
        IncidentKind::Flapping => reconnect_cycles(&FLAPPING, screens[0], at, inc, ctx, &mut steps),
        IncidentKind::Throttled => {
            reconnect_cycles(&THROTTLED, screens[0], at, inc, ctx, &mut steps)
        }
        IncidentKind::BadCert => {
            let s = screens[0];
            let mut t = at;
            for _ in 0..BAD_CERT_ATTEMPTS {
                steps.push(pubs(ctx.connect_failed(s, t, "AUTHORIZATION_FAILED", inc)));
                t += ctx.span(2_000, 5_000);
            }
        }
        IncidentKind::NewNetwork => {
            let foreign = address_in(FOREIGN_NETWORK, ctx.rng);
            reconnect_from(screens[0], foreign, at, inc, ctx, &mut steps);
        }
        IncidentKind::Closed => spread(screens, at, Step::Mute, ctx, &mut steps),
        IncidentKind::CoveredCamera => steps.push((at, Step::Cover(screens[0]))),
    }
    steps
}

/// The steps that undo an incident of `kind` over `screens` at `at` (the fleet back to normal:
/// see the module doc). Blips, flapping and throttled reconnects end connected by themselves,
/// and a unit with a refused certificate gives up: nothing to undo.
pub fn recover(
    kind: IncidentKind,
    screens: &[usize],
    at: DateTime<Utc>,
    ctx: &mut Ctx<'_>,
) -> Vec<(DateTime<Utc>, Step)> {
    let inc = Some(kind);
    let mut steps = Vec::new();
    match kind {
        IncidentKind::Blip
        | IncidentKind::Flapping
        | IncidentKind::Throttled
        | IncidentKind::BadCert => {}
        IncidentKind::Crash => steps.push((at, Step::Unmute(screens[0]))),
        IncidentKind::DeadModem => {
            steps.push(pubs(ctx.connect(screens[0], at, inc)));
            steps.push((at, Step::Unmute(screens[0])));
        }
        IncidentKind::PowerCut | IncidentKind::CarrierOutage => {
            // the modems boot (or find the network again) at different speeds
            for &s in screens {
                let t = at + ctx.span(0, 5_000);
                steps.push(pubs(ctx.connect(s, t, inc)));
                steps.push((t, Step::Unmute(s)));
            }
        }
        // The original holds the client id after the last takeover (an even number of them):
        // the clone is switched off.
        IncidentKind::Duplicate => steps.push((at, Step::Mute(screens[1]))),
        IncidentKind::NewNetwork => {
            let home = ctx.fleet.screens[screens[0]].address;
            reconnect_from(screens[0], home, at, inc, ctx, &mut steps);
        }
        IncidentKind::Closed => spread(screens, at, Step::Unmute, ctx, &mut steps),
        IncidentKind::CoveredCamera => steps.push((at, Step::Uncover(screens[0]))),
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{EventKind, Fleet, Outgoing, ScreenState, Topics};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    /// Run one generator over a fresh 40-screen fleet whose screens are all connected once.
    fn gen(kind: IncidentKind, screens: &[usize]) -> (Vec<(DateTime<Utc>, Step)>, Fleet) {
        let mut fleet = Fleet::new(40, 1);
        if kind == IncidentKind::Duplicate {
            fleet.share_client_id(screens[1], screens[0]);
        }
        let mut states: Vec<ScreenState> = fleet
            .screens
            .iter()
            .map(|s| ScreenState {
                version: 1,
                session: format!("session-{}", s.device_id),
                principal: "p".into(),
                address: s.address,
                muted: false,
                covered: false,
            })
            .collect();
        let topics = Topics::default();
        let mut rng = StdRng::seed_from_u64(3);
        let mut ctx = Ctx {
            fleet: &fleet,
            states: &mut states,
            topics: &topics,
            rng: &mut rng,
            interval: TimeDelta::seconds(1),
            pace: 1.0,
        };
        let steps = generate(kind, screens, t0(), &mut ctx);
        (steps, fleet)
    }

    fn published(steps: &[(DateTime<Utc>, Step)]) -> Vec<(Outgoing, serde_json::Value)> {
        steps
            .iter()
            .filter_map(|(_, s)| match s {
                Step::Publish(o) => Some((o.clone(), serde_json::from_str(&o.payload).unwrap())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_mix_parses_and_prints() {
        let m: Mix = "blip=5, crash=1,power-cut=0".parse().unwrap();
        assert_eq!(m.count(IncidentKind::Blip), 5);
        assert_eq!(m.count(IncidentKind::PowerCut), 0);
        assert_eq!(m.count(IncidentKind::Flapping), 0);
        assert_eq!(m.to_string().parse::<Mix>().unwrap(), m);
        assert_eq!("".parse::<Mix>().unwrap(), Mix::none());
        assert!("blip=10001".parse::<Mix>().is_err());
        for k in IncidentKind::ALL {
            assert_eq!(k.as_str().parse::<IncidentKind>().unwrap(), k);
        }
    }

    #[test]
    fn a_blip_reconnects_and_flushes_its_backlog_with_old_times() {
        let (steps, _) = gen(IncidentKind::Blip, &[3]);
        let p = published(&steps);
        assert_eq!(p[0].1["disconnectReason"], "CONNECTION_LOST");
        assert_eq!(p[0].1["versionNumber"], 1);
        assert_eq!(p[1].0.kind, EventKind::Connected);
        assert_eq!(p[1].1["versionNumber"], 2);
        assert_ne!(p[1].1["sessionIdentifier"], "session-screen-00004");
        let back = p[1].0.at;
        let backlog = &p[2..];
        assert!(backlog.len() >= 3);
        for (o, j) in backlog {
            assert_eq!(o.kind, EventKind::Impression);
            assert!(o.at > back);
            assert!(j["timestamp"].as_i64().unwrap() < back.timestamp_millis());
        }
        assert!(steps.contains(&(t0(), Step::Mute(3))));
        assert!(steps.contains(&(back, Step::Unmute(3))));
    }

    #[test]
    fn a_crash_only_mutes_and_a_dead_modem_times_out() {
        assert_eq!(gen(IncidentKind::Crash, &[1]).0, [(t0(), Step::Mute(1))]);
        let (steps, _) = gen(IncidentKind::DeadModem, &[1]);
        let p = published(&steps);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1["disconnectReason"], "MQTT_KEEP_ALIVE_TIMEOUT");
        assert_eq!(p[0].1["clientInitiatedDisconnect"], false);
        assert!(steps.contains(&(t0(), Step::Mute(1))));
    }

    #[test]
    fn a_duplicate_kicks_the_other_session_each_time() {
        let (steps, fleet) = gen(IncidentKind::Duplicate, &[2, 7]);
        let p = published(&steps);
        assert_eq!(p.len(), 2 * DUPLICATE_TAKEOVERS);
        let mut last_connect: Option<&serde_json::Value> = None;
        for pair in p.chunks(2) {
            let (c, d) = (&pair[0].1, &pair[1].1);
            assert_eq!(c["eventType"], "connected");
            assert_eq!(d["disconnectReason"], "DUPLICATE_CLIENTID");
            assert_eq!(c["clientId"], fleet.screens[2].client_id.as_str());
            assert_eq!(d["clientId"], c["clientId"]);
            assert_ne!(c["sessionIdentifier"], d["sessionIdentifier"]);
            if let Some(prev) = last_connect {
                // the one kicked is the previous winner, with its version
                assert_eq!(d["sessionIdentifier"], prev["sessionIdentifier"]);
                assert_eq!(d["versionNumber"], prev["versionNumber"]);
                assert_eq!(
                    c["versionNumber"].as_i64().unwrap(),
                    prev["versionNumber"].as_i64().unwrap() + 1
                );
            }
            last_connect = Some(c);
        }
        assert!(steps.contains(&(t0(), Step::Unmute(7))));
    }

    #[test]
    fn patterns_repeat_enough_to_cross_the_default_thresholds() {
        let reasons = |kind, want: &str| {
            let p = published(&gen(kind, &[5]).0);
            p.iter()
                .filter(|(_, j)| j["disconnectReason"] == want || j["connectFailureReason"] == want)
                .map(|(o, _)| o.at)
                .collect::<Vec<_>>()
        };
        let f = reasons(IncidentKind::Flapping, "CONNECTION_LOST");
        assert_eq!(f.len(), FLAPPING_CYCLES);
        assert!(f[9] - f[0] < TimeDelta::minutes(30), "10 within 30 min");
        let t = reasons(IncidentKind::Throttled, "THROTTLED");
        assert_eq!(t.len(), THROTTLED_CYCLES);
        assert!(t[2] - t[0] < TimeDelta::minutes(10), "3 within 10 min");
        let a = reasons(IncidentKind::BadCert, "AUTHORIZATION_FAILED");
        assert_eq!(a.len(), BAD_CERT_ATTEMPTS);
        assert!(a[4] - a[0] < TimeDelta::seconds(30), "5 within 30 s");
    }

    #[test]
    fn a_power_cut_takes_the_building_and_a_new_network_is_foreign() {
        let fleet = Fleet::new(40, 1);
        let b = fleet.buildings[0].screens.clone();
        let (steps, _) = gen(IncidentKind::PowerCut, &b);
        let p = published(&steps);
        assert_eq!(p.len(), b.len());
        assert!(p.iter().all(|(o, _)| o.at - t0() < TimeDelta::seconds(3)));
        let (steps, _) = gen(IncidentKind::NewNetwork, &[4]);
        let p = published(&steps);
        let ip: std::net::Ipv4Addr = p[1].1["ipAddress"].as_str().unwrap().parse().unwrap();
        assert_eq!(ip.octets()[..2], FOREIGN_NETWORK);
    }
}
