//! `fleetwatch simulate`: a simulated fleet of screens publishing what a real fleet on AWS IoT
//! Core produces (lifecycle events in AWS's JSON, impressions), with a mix of incidents, for
//! staging, load tests and the demo (issue 11 item 4).
//!
//! - [`fleet`]: the screens, buildings, time zones, client ids and carrier addresses;
//! - [`incident`]: one pure generator per incident kind (what a blip, a crash, a power cut…
//!   looks like on the wire);
//! - this module: the [`Simulator`], a schedule of events on an injected time line
//!   (`events_until(t)`), so tests run hours of fleet in milliseconds without a broker;
//! - [`run`]: the command, publishing the schedule in real time over MQTT (QoS 1).
//!
//! Everything is a function of the [`Settings`] (seed included) and the start time: the same
//! seed gives the same events.

pub mod fleet;
pub mod incident;
pub mod run;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::net::Ipv4Addr;

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

pub use fleet::Fleet;
pub use incident::{IncidentKind, Mix};

/// What a published message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Connected,
    Disconnected,
    ConnectFailed,
    Impression,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Connected,
        EventKind::Disconnected,
        EventKind::ConnectFailed,
        EventKind::Impression,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connected => "connected",
            EventKind::Disconnected => "disconnected",
            EventKind::ConnectFailed => "connect_failed",
            EventKind::Impression => "impression",
        }
    }
}

/// One message to publish at `at`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub at: DateTime<Utc>,
    pub topic: String,
    pub payload: String,
    pub kind: EventKind,
    /// The screen (device id) it is about.
    pub device: String,
    /// The incident that produced it, if any.
    pub incident: Option<IncidentKind>,
}

/// Where messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `$aws/events/presence` (AWS's own), or a republished mirror such as
    /// `demo/events/presence`; events go to `<prefix>/<kind>/<clientId>`.
    pub presence_prefix: String,
    /// The impression topic, `{device}` (and optionally `{building}`) replaced.
    pub telemetry: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            presence_prefix: "$aws/events/presence".into(),
            telemetry: "dt/{device}/impressions".into(),
        }
    }
}

impl Topics {
    pub fn presence(&self, kind: EventKind, client_id: &str) -> String {
        format!(
            "{}/{}/{client_id}",
            self.presence_prefix.trim_end_matches('/'),
            kind.as_str()
        )
    }
    pub fn impression(&self, device: &str, building: &str) -> String {
        self.telemetry
            .replace("{device}", device)
            .replace("{building}", building)
    }
}

/// What the simulator keeps per screen between events.
#[derive(Debug, Clone, PartialEq)]
pub struct ScreenState {
    /// AWS's `versionNumber` of the client id's current (or last) connection.
    pub version: i64,
    /// The current connection's `sessionIdentifier`.
    pub session: String,
    /// The certificate id AWS reports as `principalIdentifier`.
    pub principal: String,
    pub address: Ipv4Addr,
    /// Sends no impressions (crashed, offline, not installed yet).
    pub muted: bool,
    /// Its camera is covered: messages keep coming, each counting 0 impressions.
    pub covered: bool,
}

/// The impressions one message counts (its `count` field): the viewers the camera saw since
/// the last message, 5 to 15, a pure function of the screen and the message's device time (so
/// runs repeat); 0 while the camera is covered.
pub fn impressions(screen: usize, device_ts: DateTime<Utc>, covered: bool) -> i64 {
    if covered {
        return 0;
    }
    let x = (screen as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(device_ts.timestamp_millis() as u64 / 1000)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    5 + ((x >> 33) % 11) as i64
}

fn session_id(rng: &mut StdRng) -> String {
    let (a, b): (u64, u64) = (rng.random(), rng.random());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

fn principal_id(rng: &mut StdRng) -> String {
    (0..4)
        .map(|_| format!("{:016x}", rng.random::<u64>()))
        .collect()
}

/// What generators work with: the fleet, the screens' state, the topics, the randomness.
pub struct Ctx<'a> {
    pub fleet: &'a Fleet,
    pub states: &'a mut [ScreenState],
    pub topics: &'a Topics,
    pub rng: &'a mut StdRng,
    /// One screen's time between impressions.
    pub interval: TimeDelta,
    /// Multiplies every span inside an incident (1: as in a real fleet).
    pub pace: f64,
}

impl Ctx<'_> {
    fn out(
        &self,
        screen: usize,
        at: DateTime<Utc>,
        kind: EventKind,
        topic: String,
        payload: serde_json::Value,
        incident: Option<IncidentKind>,
    ) -> Outgoing {
        Outgoing {
            at,
            topic,
            payload: payload.to_string(),
            kind,
            device: self.fleet.screens[screen].device_id.clone(),
            incident,
        }
    }

    /// A new connection of `screen` (its own client id): next version, a new session.
    pub fn connect(
        &mut self,
        screen: usize,
        at: DateTime<Utc>,
        incident: Option<IncidentKind>,
    ) -> Outgoing {
        let session = session_id(self.rng);
        let st = &mut self.states[screen];
        st.version += 1;
        st.session = session;
        self.connected_event(screen, screen, at, incident)
    }

    /// A `connected` event of `unit` under `owner`'s client id, version and session state
    /// (they differ only for a duplicated client id).
    pub fn connected_event(
        &self,
        owner: usize,
        unit: usize,
        at: DateTime<Utc>,
        incident: Option<IncidentKind>,
    ) -> Outgoing {
        let client = &self.fleet.screens[unit].client_id;
        let (o, u) = (&self.states[owner], &self.states[unit]);
        let payload = json!({
            "clientId": client, "timestamp": at.timestamp_millis(), "eventType": "connected",
            "sessionIdentifier": u.session, "principalIdentifier": u.principal,
            "ipAddress": u.address.to_string(), "versionNumber": o.version
        });
        let topic = self.topics.presence(EventKind::Connected, client);
        self.out(unit, at, EventKind::Connected, topic, payload, incident)
    }

    /// A `disconnected` event ending `screen`'s current connection.
    pub fn disconnect(
        &self,
        screen: usize,
        at: DateTime<Utc>,
        reason: &str,
        incident: Option<IncidentKind>,
    ) -> Outgoing {
        self.disconnected_event(screen, self.states[screen].version, at, reason, incident)
    }

    /// A `disconnected` event of `unit`'s session `version` under `unit`'s client id.
    pub fn disconnected_event(
        &self,
        unit: usize,
        version: i64,
        at: DateTime<Utc>,
        reason: &str,
        incident: Option<IncidentKind>,
    ) -> Outgoing {
        let client = &self.fleet.screens[unit].client_id;
        let u = &self.states[unit];
        let payload = json!({
            "clientId": client, "timestamp": at.timestamp_millis(), "eventType": "disconnected",
            "clientInitiatedDisconnect": reason == "CLIENT_INITIATED_DISCONNECT",
            "sessionIdentifier": u.session, "principalIdentifier": u.principal,
            "disconnectReason": reason, "versionNumber": version
        });
        let topic = self.topics.presence(EventKind::Disconnected, client);
        self.out(unit, at, EventKind::Disconnected, topic, payload, incident)
    }

    /// A failed connection attempt of `screen` (no session, no version: AWS sends neither).
    pub fn connect_failed(
        &self,
        screen: usize,
        at: DateTime<Utc>,
        reason: &str,
        incident: Option<IncidentKind>,
    ) -> Outgoing {
        let client = &self.fleet.screens[screen].client_id;
        let st = &self.states[screen];
        let payload = json!({
            "clientId": client, "timestamp": at.timestamp_millis(), "eventType": "connect_failed",
            "connectFailureReason": reason, "principalIdentifier": st.principal,
            "ipAddress": st.address.to_string()
        });
        let topic = self.topics.presence(EventKind::ConnectFailed, client);
        self.out(
            screen,
            at,
            EventKind::ConnectFailed,
            topic,
            payload,
            incident,
        )
    }

    /// An impression of `screen` sent at `at` with the device's own time `device_ts`.
    pub fn impression(
        &self,
        screen: usize,
        at: DateTime<Utc>,
        device_ts: DateTime<Utc>,
        incident: Option<IncidentKind>,
    ) -> Outgoing {
        let s = &self.fleet.screens[screen];
        let topic = self
            .topics
            .impression(&s.device_id, &self.fleet.buildings[s.building].name);
        let payload = json!({
            "timestamp": device_ts.timestamp_millis(),
            "count": impressions(screen, device_ts, self.states[screen].covered),
        });
        self.out(screen, at, EventKind::Impression, topic, payload, incident)
    }
}

/// One scheduled thing.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Publish(Outgoing),
    /// The screen stops sending impressions.
    Mute(usize),
    /// The screen sends impressions again.
    Unmute(usize),
    /// The screen's camera is covered (its messages count 0 impressions).
    Cover(usize),
    /// The screen's camera sees again.
    Uncover(usize),
}

/// How the simulator is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub devices: usize,
    /// Impressions per second over the whole fleet (each screen sends one every
    /// `devices / rate` seconds, the screens' phases spread evenly).
    pub rate: f64,
    pub seed: u64,
    pub mix: Mix,
    pub topics: Topics,
    /// Incidents start at random times in `[start + incidents_after, start + incidents_after +
    /// incidents_within)`.
    pub incidents_after: TimeDelta,
    pub incidents_within: TimeDelta,
    /// Multiplies every span inside an incident ([`Ctx::pace`]).
    pub pace: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            devices: 2000,
            rate: 20.0,
            seed: 1,
            mix: Mix::default(),
            topics: Topics::default(),
            incidents_after: TimeDelta::seconds(10),
            incidents_within: TimeDelta::minutes(2),
            pace: 1.0,
        }
    }
}

/// The longest fleet accepted.
pub const MAX_DEVICES: usize = 1_000_000;

/// A planned incident: its kind, when it starts, the screens it involves, and when it is
/// undone ([`incident::recover`]), if ever.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub kind: IncidentKind,
    pub at: DateTime<Utc>,
    pub screens: Vec<usize>,
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Tick(usize),
    Start(usize),
    End(usize),
    Step(Step),
}

/// The event schedule of a simulated fleet.
pub struct Simulator {
    fleet: Fleet,
    states: Vec<ScreenState>,
    topics: Topics,
    interval: TimeDelta,
    pace: f64,
    rng: StdRng,
    plan: Vec<Planned>,
    queue: BinaryHeap<Reverse<(DateTime<Utc>, u64)>>,
    actions: BTreeMap<u64, Action>,
    seq: u64,
}

impl Simulator {
    /// Plan a run starting at `start` with incidents drawn from `settings.mix`. Errors name
    /// what is wrong with the settings.
    pub fn new(settings: &Settings, start: DateTime<Utc>) -> Result<Simulator, String> {
        let (interval, fleet, principals, mut rng) = seeded(settings)?;
        let plan = random_plan(settings, &fleet, start, &mut rng)?;
        Ok(Self::start(
            settings, start, interval, fleet, principals, rng, plan,
        ))
    }

    /// Plan a run starting at `start` with the incidents of `plan` (the demo's story): each
    /// screen index must be in the fleet; `settings.mix` is not used.
    pub fn with_plan(
        settings: &Settings,
        start: DateTime<Utc>,
        plan: Vec<Planned>,
    ) -> Result<Simulator, String> {
        let (interval, fleet, principals, rng) = seeded(settings)?;
        for p in &plan {
            let want = if p.kind.takes_building() {
                1
            } else {
                p.kind.screens()
            };
            if p.screens.len() < want || p.screens.iter().any(|&s| s >= fleet.screens.len()) {
                return Err(format!(
                    "incidents: {} at {} needs {want} screen(s) of the {} in the fleet",
                    p.kind,
                    p.at,
                    fleet.screens.len()
                ));
            }
        }
        Ok(Self::start(
            settings, start, interval, fleet, principals, rng, plan,
        ))
    }

    fn start(
        settings: &Settings,
        start: DateTime<Utc>,
        interval: TimeDelta,
        mut fleet: Fleet,
        principals: Vec<String>,
        rng: StdRng,
        plan: Vec<Planned>,
    ) -> Simulator {
        let states: Vec<ScreenState> = fleet
            .screens
            .iter()
            .zip(principals)
            .map(|(s, principal)| ScreenState {
                version: 0,
                session: String::new(),
                principal,
                address: s.address,
                muted: false,
                covered: false,
            })
            .collect();
        // Units that are not installed when the run starts: a clone (it appears with the
        // duplicate) and one whose certificate is refused (it never connects).
        let mut late = vec![false; fleet.screens.len()];
        for p in &plan {
            match p.kind {
                IncidentKind::Duplicate => {
                    fleet.share_client_id(p.screens[1], p.screens[0]);
                    late[p.screens[1]] = true;
                }
                IncidentKind::BadCert => late[p.screens[0]] = true,
                _ => {}
            }
        }
        let mut sim = Simulator {
            fleet,
            states,
            topics: settings.topics.clone(),
            interval,
            pace: settings.pace,
            rng,
            plan,
            queue: BinaryHeap::new(),
            actions: BTreeMap::new(),
            seq: 0,
        };
        // Startup: every installed screen connects within two seconds, then sends impressions
        // on its own phase, so the whole fleet's rate is even.
        let n = sim.fleet.screens.len();
        for (s, &is_late) in late.iter().enumerate() {
            if is_late {
                sim.states[s].muted = true;
            } else {
                let at = start + TimeDelta::milliseconds(sim.rng.random_range(0..2000));
                let ev = sim.ctx().connect(s, at, None);
                sim.push_step(at, Step::Publish(ev));
            }
            let phase = TimeDelta::milliseconds(
                (interval.num_milliseconds() as f64 * s as f64 / n as f64) as i64,
            );
            sim.push(start + TimeDelta::seconds(2) + phase, Action::Tick(s));
        }
        for i in 0..sim.plan.len() {
            sim.push(sim.plan[i].at, Action::Start(i));
            if let Some(until) = sim.plan[i].until {
                sim.push(until, Action::End(i));
            }
        }
        sim
    }
}

/// What every run starts from: the time between one screen's impressions, the fleet, each
/// screen's certificate id, and the randomness after drawing those (the same seed, the same
/// draws in the same order, so the same run).
fn seeded(settings: &Settings) -> Result<(TimeDelta, Fleet, Vec<String>, StdRng), String> {
    let interval = check(settings)?;
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let fleet = Fleet::new(settings.devices, settings.seed);
    let principals: Vec<String> = (0..fleet.screens.len())
        .map(|_| principal_id(&mut rng))
        .collect();
    Ok((interval, fleet, principals, rng))
}

/// Check the settings; the time between one screen's impressions.
fn check(settings: &Settings) -> Result<TimeDelta, String> {
    if settings.devices == 0 || settings.devices > MAX_DEVICES {
        return Err(format!(
            "devices: expected 1 to {MAX_DEVICES}, got {}",
            settings.devices
        ));
    }
    if !settings.rate.is_finite() || settings.rate <= 0.0 {
        return Err(format!(
            "rate: expected a positive number of messages per second, got {}",
            settings.rate
        ));
    }
    let interval_ms = settings.devices as f64 / settings.rate * 1000.0;
    if !(1.0..=86_400_000.0).contains(&interval_ms) {
        return Err(format!(
            "rate: {} messages per second over {} devices means one message per screen \
                     every {interval_ms} ms; expected between 1 ms and a day",
            settings.rate, settings.devices
        ));
    }
    if !settings.pace.is_finite() || settings.pace <= 0.0 {
        return Err(format!(
            "pace: expected a positive factor, got {}",
            settings.pace
        ));
    }
    Ok(TimeDelta::milliseconds(interval_ms.round() as i64))
}

/// Incidents drawn from `settings.mix`: each screen in at most one; power cuts and closings
/// take whole buildings.
fn random_plan(
    settings: &Settings,
    fleet: &Fleet,
    start: DateTime<Utc>,
    rng: &mut StdRng,
) -> Result<Vec<Planned>, String> {
    let mut buildings: Vec<usize> = (0..fleet.buildings.len()).collect();
    buildings.shuffle(rng);
    let mut taken = vec![false; fleet.screens.len()];
    let mut plan = Vec::new();
    let window = settings.incidents_within.num_milliseconds().max(1);
    let when = |rng: &mut StdRng| {
        start + settings.incidents_after + TimeDelta::milliseconds(rng.random_range(0..window))
    };
    let whole: Vec<IncidentKind> = IncidentKind::ALL
        .into_iter()
        .filter(|k| k.takes_building())
        .flat_map(|k| std::iter::repeat_n(k, settings.mix.count(k)))
        .collect();
    if whole.len() > buildings.len() {
        return Err(format!(
            "incidents: {} power cuts and closings need as many buildings; the fleet has {}",
            whole.len(),
            buildings.len()
        ));
    }
    for (&b, &kind) in buildings.iter().zip(&whole) {
        let screens = fleet.buildings[b].screens.clone();
        for &s in &screens {
            taken[s] = true;
        }
        plan.push(Planned {
            kind,
            at: when(rng),
            screens,
            until: None,
        });
    }
    let mut used: Vec<usize> = buildings.iter().take(whole.len()).copied().collect();
    for _ in 0..settings.mix.count(IncidentKind::CarrierOutage) {
        let Some(hit) = fleet.carrier_outage(&used) else {
            return Err(
                "incidents: a carrier outage needs two buildings of one carrier free of other \
                 incidents"
                    .to_string(),
            );
        };
        let screens: Vec<usize> = hit
            .iter()
            .flat_map(|&b| fleet.buildings[b].screens.clone())
            .collect();
        for &s in &screens {
            taken[s] = true;
        }
        used.extend(hit);
        plan.push(Planned {
            kind: IncidentKind::CarrierOutage,
            at: when(rng),
            screens,
            until: None,
        });
    }
    let mut pool: Vec<usize> = (0..fleet.screens.len()).filter(|&s| !taken[s]).collect();
    pool.shuffle(rng);
    for (kind, n) in settings.mix.iter() {
        if kind.takes_building() || kind == IncidentKind::CarrierOutage {
            continue;
        }
        for _ in 0..n {
            let need = kind.screens();
            if pool.len() < need {
                return Err(format!(
                    "incidents: the mix needs more screens than the {} devices \
                     (each screen takes part in at most one incident)",
                    settings.devices
                ));
            }
            let screens = pool.split_off(pool.len() - need);
            plan.push(Planned {
                kind,
                at: when(rng),
                screens,
                until: None,
            });
        }
    }
    Ok(plan)
}

impl Simulator {
    fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            fleet: &self.fleet,
            states: &mut self.states,
            topics: &self.topics,
            rng: &mut self.rng,
            interval: self.interval,
            pace: self.pace,
        }
    }

    fn push(&mut self, at: DateTime<Utc>, a: Action) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.actions.insert(self.seq, a);
    }

    fn push_step(&mut self, at: DateTime<Utc>, step: Step) {
        self.push(at, Action::Step(step));
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The incidents of this run, in planning order.
    pub fn plan(&self) -> &[Planned] {
        &self.plan
    }

    /// Plan one more incident (the demo adds each round of its story as it starts). A clone or
    /// a refused unit must have been in the first plan: the fleet's installed units are set at
    /// the start.
    pub fn add(&mut self, p: Planned) {
        let i = self.plan.len();
        self.push(p.at, Action::Start(i));
        if let Some(until) = p.until {
            self.push(until, Action::End(i));
        }
        self.plan.push(p);
    }

    /// One screen's time between impressions.
    pub fn interval(&self) -> TimeDelta {
        self.interval
    }

    /// Every message due at or before `t`, in time order (ties in scheduling order); the
    /// incidents that start by then are generated on the way.
    pub fn events_until(&mut self, t: DateTime<Utc>) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > t {
                break;
            }
            self.queue.pop();
            let Some(action) = self.actions.remove(&seq) else {
                continue;
            };
            match action {
                Action::Tick(s) => {
                    if !self.states[s].muted {
                        out.push(self.ctx().impression(s, at, at, None));
                    }
                    let next = at + self.interval;
                    self.push(next, Action::Tick(s));
                }
                Action::Start(i) | Action::End(i) => {
                    let p = self.plan[i].clone();
                    let steps = if matches!(action, Action::Start(_)) {
                        incident::generate(p.kind, &p.screens, at, &mut self.ctx())
                    } else {
                        incident::recover(p.kind, &p.screens, at, &mut self.ctx())
                    };
                    for (when, step) in steps {
                        self.push_step(when.max(at), step);
                    }
                }
                Action::Step(Step::Publish(o)) => out.push(o),
                Action::Step(Step::Mute(s)) => self.states[s].muted = true,
                Action::Step(Step::Unmute(s)) => self.states[s].muted = false,
                Action::Step(Step::Cover(s)) => self.states[s].covered = true,
                Action::Step(Step::Uncover(s)) => self.states[s].covered = false,
            }
        }
        out
    }
}

/// Counts of what was sent: per event kind and per incident kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub total: u64,
    pub by_kind: BTreeMap<EventKind, u64>,
    pub by_incident: BTreeMap<IncidentKind, u64>,
}

impl Tally {
    pub fn add(&mut self, o: &Outgoing) {
        self.total += 1;
        *self.by_kind.entry(o.kind).or_default() += 1;
        if let Some(i) = o.incident {
            *self.by_incident.entry(i).or_default() += 1;
        }
    }
}

impl fmt::Display for Tally {
    /// `1234 messages (connected 2000, disconnected 12, …; incidents: blip 30, …)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} messages (", self.total)?;
        let kinds: Vec<String> = EventKind::ALL
            .iter()
            .map(|k| format!("{} {}", k.as_str(), self.by_kind.get(k).unwrap_or(&0)))
            .collect();
        write!(f, "{}", kinds.join(", "))?;
        if !self.by_incident.is_empty() {
            let inc: Vec<String> = self
                .by_incident
                .iter()
                .map(|(k, n)| format!("{} {n}", k.as_str()))
                .collect();
            write!(f, "; from incidents: {}", inc.join(", "))?;
        }
        write!(f, ")")
    }
}
