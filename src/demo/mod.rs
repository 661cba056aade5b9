//! `fleetwatch demo` (issue 11): the whole job in one process, without AWS or a broker of
//! one's own. It starts
//!
//! - an MQTT broker ([`broker`]: rumqttd, embedded, on a free local port; or `--mqtt-url`);
//! - the real service ([`crate::app::App`]) against Postgres, in its own database
//!   (`fleetwatch_demo`, created if missing), configured by [`config_toml`] for the story's
//!   speed, with one webhook endpoint pointing at the built-in receiver ([`receiver`]);
//! - a simulated fleet ([`crate::sim`]) of `--devices` screens in buildings across three time
//!   zones, playing the [`story`] round after round (presence events on the non-`$` mirror
//!   `demo/events/presence/…`, which rumqttd can route; impressions on
//!   `dt/<building>/<screen>/impressions`);
//! - a simulated CloudWatch ([`cloudwatch`]) whose series follow the story, written through the
//!   poller's own storage so the real metric rules judge them.
//!
//! Its first three lines on standard output are `dashboard: http://…`, `login: USER PASSWORD`
//! and `api token: TOKEN` (scripts read them); logs go to standard error. It runs until Ctrl-C
//! or SIGTERM.

pub mod broker;
pub mod cloudwatch;
pub mod receiver;
pub mod story;

use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, TimeDelta, Timelike, Utc};
use sqlx::ConnectOptions;

use crate::clock::SharedClock;
use crate::config::{Config, Secret};
use crate::sim::{Fleet, IncidentKind, Settings, Simulator, Topics};
use story::{Cast, Now, Story};

/// The presence mirror the simulated fleet publishes to (rumqttd never routes `$aws/…`).
pub const PRESENCE_PREFIX: &str = "demo/events/presence";
/// Where impressions go; the service reads the building from level 1 and the screen from 2.
pub const TELEMETRY_TOPIC: &str = "dt/{building}/{device}/impressions";
/// The dashboard user the demo creates (or resets) at every start.
pub const USER: &str = "demo";
/// A screen's time between impressions at speed 1.
pub const IMPRESSION_EVERY: TimeDelta = TimeDelta::seconds(10);
/// How long the fleet has to connect before the first round.
pub const WARM_UP: TimeDelta = TimeDelta::seconds(15);

/// `fleetwatch demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Address of the dashboard and API (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// An existing broker (mqtt://host:port) instead of the embedded one.
    #[arg(long)]
    pub mqtt_url: Option<String>,
    /// Database for the demo, on the server of DATABASE_URL (created if missing).
    #[arg(long, default_value = "fleetwatch_demo")]
    pub database: String,
    /// Number of screens (at least 100).
    #[arg(long, default_value_t = 2000)]
    pub devices: usize,
    /// Time scale of the story: 2 runs a round (and the service's thresholds) twice as fast.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Seed of the fleet and the story's cast.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The demo's state the dashboard shows: the story's banner and the webhook inbox.
pub struct Shared {
    pub inbox: receiver::Inbox,
    now: RwLock<Now>,
}

impl Shared {
    pub fn new(secret: Secret) -> Self {
        Shared {
            inbox: receiver::Inbox::new(secret),
            now: RwLock::new(Now {
                round: 0,
                text: "starting".into(),
                elapsed: TimeDelta::zero(),
                length: TimeDelta::zero(),
            }),
        }
    }
    pub fn now(&self) -> Now {
        self.now.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, n: Now) {
        *self.now.write().unwrap_or_else(|e| e.into_inner()) = n;
    }
}

/// What [`config_toml`] needs.
#[derive(Debug, Clone)]
pub struct Setup {
    pub database_url: String,
    /// Where the service listens.
    pub http_addr: std::net::SocketAddr,
    /// Where the webhook worker reaches it (the same, or 127.0.0.1 for 0.0.0.0).
    pub local_addr: std::net::SocketAddr,
    pub mqtt_url: String,
    pub api_token: String,
    pub webhook_secret: String,
    pub speed: f64,
    pub fleet: Fleet,
    pub cast: Cast,
    /// When the demo starts (the closing building's quiet hours start an hour before).
    pub start: DateTime<Utc>,
}

/// The demo's quiet window of the closing building: from an hour before `start` to
/// [`QUIET_FOR`] after it, in local whole minutes (`HH:MM-HH:MM`).
pub const QUIET_FOR: TimeDelta = TimeDelta::hours(20);

fn quiet_window(tz: chrono_tz::Tz, start: DateTime<Utc>) -> String {
    let from = (start - TimeDelta::hours(1)).with_timezone(&tz);
    let to = (start + QUIET_FOR + TimeDelta::minutes(1)).with_timezone(&tz);
    format!(
        "{:02}:{:02}-{:02}:{:02}",
        from.hour(),
        from.minute(),
        to.hour(),
        to.minute()
    )
}

/// A duration of the script at `speed`, at least `floor_ms`, as the configuration writes it
/// (`7500ms`).
fn at_speed(d: TimeDelta, speed: f64, floor_ms: i64) -> String {
    format!(
        "{}ms",
        ((d.num_milliseconds() as f64 / speed).round() as i64).max(floor_ms)
    )
}

/// The service's configuration for the demo, as TOML (what `demo --print-config` shows): the
/// story's thresholds divided by its speed, the buildings as groups with their time zones, the
/// carriers as networks, the presence mirror, one webhook to the receiver, CloudWatch rules
/// on one-minute windows. Every value says why in a comment.
pub fn config_toml(s: &Setup) -> String {
    let v = |secs: i64| at_speed(TimeDelta::seconds(secs), s.speed, 1);
    // the flusher and the detector tick no faster than ten times a second
    let tenth = |secs: i64| at_speed(TimeDelta::seconds(secs), s.speed, 100);
    // whole seconds (the anomaly buckets are)
    let whole = |secs: i64| format!("{}s", ((secs as f64 / s.speed).round() as i64).max(1));
    let mut t = String::new();
    let _ = write!(
        t,
        r#"# fleetwatch demo: the service's configuration for the story at speed {speed}.
[database]
url = "{db}"
max_connections = 16

[http]
addr = "{http}"

[mqtt]
url = "{mqtt}"
instance_id = "demo"
# the simulated fleet's lifecycle events, on the mirror an IoT rule republishing
# $aws/events/presence/# would produce (rumqttd routes no $ topic but $share)
presence_topics = ["{pp}/connected/+", "{pp}/disconnected/+", "{pp}/connect_failed/+"]
telemetry_topics = ["dt/+/+/impressions"]

[telemetry]
device_id_level = 2
group_level = 1
flush_interval = "{flush}"

[detector]
# one impression every {every} per screen; a crashed player pages after interval + grace
expected_interval = "{interval}"
grace = "{grace}"
# the longest LTE blip of the story is well under this
disconnect_grace = "{dgrace}"
tick = "{tick}"
reopen_window = "{reopen}"
# a flapping modem of the story drops a dozen times in two minutes (a real one: 10 in 30 min)
flapping_disconnects = 6
flapping_window = "{flap}"
conflict_window = "{window}"
throttled_window = "{window}"
auth_window = "{window}"
group_outage_window = "{window}"
network_outage_window = "{window}"
# the story's carrier outage darkens a few buildings of a small fleet: up to 43 % of it at the
# fewest screens, which is a carrier's outage here, not the whole fleet's
fleet_outage_fraction = 0.5

[anomaly]
# impressions per screen judged per {bucket} bucket (4 messages at speed 1) against the screen's
# own last buckets (no seasonality: a real fleet's is the hour of the week), so a covered camera
# is flagged a minute or two after it is covered
bucket = "{bucket}"
season = "{bucket}"
baseline = "{baseline}"
min_messages = 2

[counts]
fold = "2s"

[api]
token = "{token}"

[address_drift]
enabled = true
resolve_after = "{drift}"

[cloudwatch]
# the demo's simulated CloudWatch writes the tables; the rules are judged this often
poll = "2s"
"#,
        speed = s.speed,
        db = s.database_url,
        http = s.http_addr,
        mqtt = s.mqtt_url,
        pp = PRESENCE_PREFIX,
        flush = tenth(1),
        every = v(IMPRESSION_EVERY.num_seconds()),
        interval = v(30),
        grace = v(15),
        dgrace = v(20),
        tick = tenth(1),
        reopen = v(30),
        flap = v(90),
        window = v(120),
        token = s.api_token,
        drift = v(60),
        bucket = whole(40),
        baseline = whole(200),
    );
    for (metric, warning, critical) in cloudwatch::RULES {
        let _ = write!(
            t,
            "\n# {metric}: a round's burst fires at the next minute (real rules sum 5-15 min)\n\
             [[cloudwatch.rules]]\nmetric = \"{metric}\"\nwindow = \"1m\"\nwarning = {warning}\n\
             critical = {critical}\n"
        );
    }
    let _ = write!(
        t,
        "\n# the built-in receiver (/demo/webhooks) plays the on-call side\n\
         [[webhooks]]\nname = \"demo-receiver\"\nurl = \"http://{http}/demo/receiver\"\n\
         secret = \"{secret}\"\ngroup_wait = \"{gw}\"\nsend_reminders = false\n\
         backoff_min = \"1s\"\nbackoff_max = \"30s\"\n",
        http = s.local_addr,
        secret = s.webhook_secret,
        gw = v(10),
    );
    for (i, c) in crate::sim::fleet::CARRIERS.iter().enumerate() {
        let _ = write!(
            t,
            "\n[networks.carrier-{}]\nprefixes = [\"{}.{}.0.0/16\"]\n",
            story::carrier_name(i),
            c[0],
            c[1]
        );
    }
    for (i, b) in s.fleet.buildings.iter().enumerate() {
        let tz: chrono_tz::Tz = b.zone.parse().expect("sim zones are IANA names");
        let _ = write!(
            t,
            "\n[groups.{id}]\nname = \"{city} {n}\"\ntime_zone = \"{zone}\"\n",
            id = b.name,
            city = city(b.zone),
            n = &b.name["building-".len()..],
            zone = b.zone
        );
        if i == s.cast.closed {
            let _ = write!(
                t,
                "# closes in the story: quiet from an hour before the demo started, for {}h\n\
                 quiet_hours = \"{}\"\n",
                QUIET_FOR.num_hours(),
                quiet_window(tz, s.start)
            );
        }
    }
    t
}

/// The city a simulated building's zone stands for (its group's display name: "Chicago 12").
fn city(zone: &str) -> &str {
    let c = zone.rsplit('/').next().unwrap_or(zone);
    match c {
        "New_York" => "New York",
        "Los_Angeles" => "Los Angeles",
        other => other,
    }
}

/// `url` with its database replaced by `name` (`postgres://h/x` → `postgres://h/fleetwatch_demo`).
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("--database: expected letters, digits and _, got {name:?}");
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("DATABASE_URL: expected a postgres:// URL");
    }
    let opts: sqlx::postgres::PgConnectOptions =
        url.parse().context("DATABASE_URL: not a Postgres URL")?;
    Ok(opts.database(name).to_url_lossy().to_string())
}

fn random_secret(len: usize) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// Run the demo until `shutdown` completes, writing the three lines (and the cast) to `out`.
pub async fn run(
    args: DemoArgs,
    clock: SharedClock,
    out: &mut (dyn std::io::Write + Send),
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if !(args.speed.is_finite() && (0.1..=100.0).contains(&args.speed)) {
        bail!("--speed: expected 0.1 to 100, got {}", args.speed);
    }
    if !(story::MIN_DEVICES..=100_000).contains(&args.devices) {
        bail!(
            "--devices: expected {} to 100000, got {}",
            story::MIN_DEVICES,
            args.devices
        );
    }
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://localhost/".into());
    let database_url = with_database(&base, &args.database)?;
    let http_addr = broker::resolve_port(&args.http_addr).context("--http-addr")?;
    // Where this machine reaches it (0.0.0.0 in a container): the webhook and the printed URL.
    let mut local = http_addr;
    if local.ip().is_unspecified() {
        local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }

    let (_broker, mqtt_url) = match &args.mqtt_url {
        Some(u) => (None, u.clone()),
        None => {
            let b = broker::Embedded::start().await?;
            let url = b.url();
            (Some(b), url)
        }
    };

    let fleet = Fleet::new(args.devices, args.seed);
    let cast = Cast::choose(&fleet, args.seed).map_err(|e| anyhow::anyhow!("--{e}"))?;
    let start = clock.now();
    let setup = Setup {
        database_url,
        http_addr,
        local_addr: local,
        mqtt_url: mqtt_url.clone(),
        api_token: crate::tokens::generate().expose().to_string(),
        webhook_secret: format!("whsec-{}", random_secret(32)),
        speed: args.speed,
        fleet: fleet.clone(),
        cast: cast.clone(),
        start,
    };
    let cfg = Config::from_toml(&config_toml(&setup)).context("the demo's configuration")?;
    cfg.validate().context("the demo's configuration")?;

    let shared = Arc::new(Shared::new(Secret::new(&setup.webhook_secret)));
    let app = crate::app::App::build_with(cfg, clock.clone(), Some(shared.clone())).await?;
    let password = random_secret(16);
    crate::users::set(
        &app.state.pool,
        USER,
        crate::users::Role::Operator,
        Secret::new(&password),
        start,
    )
    .await?;

    writeln!(out, "dashboard: http://{local}/")?;
    writeln!(out, "login: {USER} {password}")?;
    writeln!(out, "api token: {}", setup.api_token)?;
    writeln!(out, "webhook receiver: http://{local}/demo/webhooks")?;
    writeln!(out, "mqtt: {mqtt_url}")?;
    let story = Story::new(&fleet, cast, args.speed);
    for line in cast_lines(&fleet, &story) {
        writeln!(out, "{line}")?;
    }
    out.flush()?;

    let play = tokio::spawn(play(
        story,
        fleet,
        args.seed,
        mqtt_url,
        clock.clone(),
        shared,
        app.state.pool.clone(),
        start,
    ));
    let result = app
        .run_until(async {
            shutdown.await;
        })
        .await;
    play.abort();
    result
}

/// `cast: <kind> <subject>` lines: who plays what (tests and visitors read them).
pub fn cast_lines(fleet: &Fleet, story: &Story) -> Vec<String> {
    let c = &story.cast;
    let dev = |s: usize| fleet.screens[s].device_id.clone();
    let mut lines: Vec<String> = c
        .blips
        .iter()
        .map(|&s| format!("cast: blip {}", dev(s)))
        .collect();
    lines.extend([
        format!("cast: crash {}", dev(c.crash)),
        format!("cast: dead-modem {}", dev(c.dead_modem)),
        format!("cast: power-cut {}", fleet.buildings[c.power_cut].name),
        format!(
            "cast: duplicate {} {}",
            dev(c.duplicate.0),
            dev(c.duplicate.1)
        ),
        format!("cast: flapping {}", dev(c.flapping)),
        format!("cast: throttled {}", dev(c.throttled)),
        format!("cast: bad-cert {}", dev(c.bad_cert)),
        format!("cast: closed {}", fleet.buildings[c.closed].name),
        format!("cast: new-network {}", dev(c.new_network)),
        format!("cast: covered-camera {}", dev(c.covered_camera)),
        format!(
            "cast: carrier-outage carrier-{} {}",
            story::carrier_name(fleet.buildings[c.carrier_outage[0]].carrier),
            c.carrier_outage
                .iter()
                .map(|&b| fleet.buildings[b].name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ),
        format!(
            "story: a round every {} s",
            story.length().num_milliseconds() as f64 / 1000.0
        ),
    ]);
    lines
}

/// Play the story: publish the fleet's messages in real time, round after round, keep the
/// banner and the simulated CloudWatch up to date. Ends only when aborted; a lost broker
/// connection is retried by the publisher.
#[allow(clippy::too_many_arguments)]
async fn play(
    story: Story,
    fleet: Fleet,
    seed: u64,
    mqtt_url: String,
    clock: SharedClock,
    shared: Arc<Shared>,
    pool: sqlx::PgPool,
    start: DateTime<Utc>,
) {
    let settings = Settings {
        devices: fleet.screens.len(),
        rate: fleet.screens.len() as f64 / story.scaled(IMPRESSION_EVERY).as_seconds_f64(),
        seed,
        mix: crate::sim::Mix::none(),
        topics: Topics {
            presence_prefix: PRESENCE_PREFIX.into(),
            telemetry: TELEMETRY_TOPIC.into(),
        },
        incidents_after: TimeDelta::zero(),
        incidents_within: TimeDelta::zero(),
        pace: story.pace(),
    };
    let first = start + story.scaled(WARM_UP);
    let mut sim = match Simulator::with_plan(&settings, start, story.round(first, 0)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "demo: the story cannot be planned");
            return;
        }
    };
    let publisher = loop {
        let mut cfg = Config::default();
        cfg.mqtt.url = mqtt_url.clone();
        // the service's client-id prefix: never taken for a device
        match crate::sim::run::Publisher::connect(&cfg, "fleetwatch-demo-fleet").await {
            Ok(p) => break p,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "demo: connecting the fleet to the broker; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let series = Arc::new(cloudwatch::Series::default());
    let cw = tokio::spawn(cloudwatch::run(series.clone(), pool, clock.clone(), seed));
    let mut planned_rounds = 1u64;
    let mut cw_reported = false;
    loop {
        let now = clock.now();
        let n = story.now(first, now);
        // plan the next round while this one plays
        while planned_rounds < n.round + 1 {
            // the closing building is quiet for QUIET_FOR only: after that it would page
            for p in story.round(first, planned_rounds) {
                if p.kind != IncidentKind::Closed || p.until.unwrap_or(p.at) < start + QUIET_FOR {
                    sim.add(p);
                }
            }
            planned_rounds += 1;
        }
        shared.set(n);
        for o in sim.events_until(now) {
            series.record(&o);
            if let Err(e) = publisher.publish(&o).await {
                tracing::warn!(error = %format!("{e:#}"), "demo: publishing");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !cw_reported && cw.is_finished() {
            // it loops forever: only a panic ends it (the fleet plays on without it)
            tracing::error!("demo: the simulated CloudWatch stopped");
            cw_reported = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(speed: f64) -> Setup {
        let fleet = Fleet::new(300, 1);
        let cast = Cast::choose(&fleet, 1).unwrap();
        Setup {
            database_url: "postgres://root@127.0.0.1:5432/fleetwatch_demo".into(),
            http_addr: "0.0.0.0:8080".parse().unwrap(),
            local_addr: "127.0.0.1:8080".parse().unwrap(),
            mqtt_url: "mqtt://127.0.0.1:1883".into(),
            api_token: "fw_token".into(),
            webhook_secret: "whsec-x".into(),
            speed,
            fleet,
            cast,
            start: DateTime::parse_from_rfc3339("2026-11-30T23:30:00Z")
                .unwrap()
                .to_utc(),
        }
    }

    #[test]
    fn the_configuration_parses_validates_and_scales_with_the_speed() {
        for speed in [0.5, 1.0, 3.0, 4.0, 6.0, 100.0] {
            let s = setup(speed);
            let cfg = Config::from_toml(&config_toml(&s)).unwrap();
            cfg.validate().unwrap();
            assert_eq!(
                cfg.detector.expected_interval.delta(),
                TimeDelta::milliseconds((30_000.0 / speed) as i64)
            );
            assert_eq!(cfg.groups.len(), s.fleet.buildings.len());
            assert_eq!(cfg.webhooks[0].url, "http://127.0.0.1:8080/demo/receiver");
            assert!(cfg.telemetry.flush_interval.0 >= Duration::from_millis(100));
        }
        let s = setup(1.0);
        let cfg = Config::from_toml(&config_toml(&s)).unwrap();
        let closed = &cfg.groups[&s.fleet.buildings[s.cast.closed].name];
        let tz = closed.time_zone.unwrap().0;
        let q = closed.quiet_hours.as_ref().unwrap();
        // quiet now and for the next QUIET_FOR, not before the hour before the start
        for h in [0, 1, 10, 19] {
            assert!(
                q.quiet_until(tz, s.start + TimeDelta::hours(h)).is_some(),
                "+{h}h"
            );
        }
        assert!(q
            .quiet_until(tz, s.start - TimeDelta::minutes(61))
            .is_none());
        assert!(q
            .quiet_until(tz, s.start + QUIET_FOR + TimeDelta::minutes(2))
            .is_none());
        // the other buildings never are
        let other = &cfg.groups[&s.fleet.buildings[s.cast.power_cut].name];
        assert!(other.quiet_hours.is_none());
    }

    #[test]
    fn the_database_is_replaced_and_checked() {
        let url =
            with_database("postgres://root@127.0.0.1:5432/postgres", "fleetwatch_demo").unwrap();
        let back: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        assert_eq!(back.get_database(), Some("fleetwatch_demo"));
        assert_eq!(
            (back.get_host(), back.get_port(), back.get_username()),
            ("127.0.0.1", 5432, "root")
        );
        assert!(with_database("postgres://h/x", "a;drop").is_err());
        assert!(with_database("mysql://h/x", "a").is_err());
    }
}
