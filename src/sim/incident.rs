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
//! | `bad-cert` | a unit with a wrong certificate: 8 `connect_failed` `AUTHORIZATION_FAILED`, 5–15 s apart; it never connects | `auth_failure` |
//! | `power-cut` | every screen of one building: `MQTT_KEEP_ALIVE_TIMEOUT` within 3 s, then nothing | `group_outage` (and the devices' gaps under it) |
//! | `new-network` | `CONNECTION_LOST`, reconnect 3–8 s later from an address in [`FOREIGN_NETWORK`] | `address_drift` (when enabled) |
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
}

impl IncidentKind {
    pub const ALL: [IncidentKind; 9] = [
        IncidentKind::Blip,
        IncidentKind::Crash,
        IncidentKind::DeadModem,
        IncidentKind::Duplicate,
        IncidentKind::Flapping,
        IncidentKind::Throttled,
        IncidentKind::BadCert,
        IncidentKind::PowerCut,
        IncidentKind::NewNetwork,
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
        }
    }

    /// How many screens one incident takes (a power cut takes a whole building instead).
    pub fn screens(self) -> usize {
        match self {
            IncidentKind::Duplicate => 2,
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
    /// Five blips and one of every other kind.
    fn default() -> Self {
        Mix(IncidentKind::ALL
            .into_iter()
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

fn ms(rng: &mut impl Rng, lo: i64, hi: i64) -> TimeDelta {
    TimeDelta::milliseconds(rng.random_range(lo..hi))
}

pub const DUPLICATE_TAKEOVERS: usize = 8;
pub const FLAPPING_CYCLES: usize = 12;
pub const THROTTLED_CYCLES: usize = 5;
pub const BAD_CERT_ATTEMPTS: usize = 8;

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
    let pubs = |o: super::Outgoing| (o.at, Step::Publish(o));
    let mut steps = Vec::new();
    match kind {
        IncidentKind::Blip => {
            let s = screens[0];
            let gap = ms(ctx.rng, 3_000, 15_000);
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
        IncidentKind::PowerCut => {
            for &s in screens {
                let t = at + ms(ctx.rng, 0, 3_000);
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
                    a,
                    holder.0,
                    holder.1,
                    t + TimeDelta::milliseconds(40),
                    "DUPLICATE_CLIENTID",
                    inc,
                );
                steps.push(pubs(kicked));
                holder = (newcomer, v);
                t += ms(ctx.rng, 3_000, 8_000);
            }
        }
        IncidentKind::Flapping => {
            let s = screens[0];
            let mut t = at;
            for _ in 0..FLAPPING_CYCLES {
                steps.push(pubs(ctx.disconnect(s, t, "CONNECTION_LOST", inc)));
                let back = t + ms(ctx.rng, 2_000, 6_000);
                steps.push(pubs(ctx.connect(s, back, inc)));
                t = back + ms(ctx.rng, 15_000, 40_000);
            }
        }
        IncidentKind::Throttled => {
            let s = screens[0];
            let mut t = at;
            for _ in 0..THROTTLED_CYCLES {
                steps.push(pubs(ctx.disconnect(s, t, "THROTTLED", inc)));
                let back = t + ms(ctx.rng, 1_000, 3_000);
                steps.push(pubs(ctx.connect(s, back, inc)));
                t = back + ms(ctx.rng, 5_000, 15_000);
            }
        }
        IncidentKind::BadCert => {
            let s = screens[0];
            let mut t = at;
            for _ in 0..BAD_CERT_ATTEMPTS {
                steps.push(pubs(ctx.connect_failed(s, t, "AUTHORIZATION_FAILED", inc)));
                t += ms(ctx.rng, 5_000, 15_000);
            }
        }
        IncidentKind::NewNetwork => {
            let s = screens[0];
            steps.push(pubs(ctx.disconnect(s, at, "CONNECTION_LOST", inc)));
            ctx.states[s].address = address_in(FOREIGN_NETWORK, ctx.rng);
            let back = at + ms(ctx.rng, 3_000, 8_000);
            steps.push(pubs(ctx.connect(s, back, inc)));
        }
    }
    steps
}
