//! CloudWatch metric rules as fleet stories on a manual clock: samples are written with plain SQL
//! (as the poller would: `Sum` per 60 s, absent periods have no row, `polled_through` says how
//! far they are complete), `detect::metrics::tick` is driven by hand, and the alerts, their
//! trail and their notification rows (the webhook outbox) are read back from Postgres.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use fleetwatch::alerts::webhook::Worker;
use fleetwatch::alerts::{lifecycle, outbox};
use fleetwatch::clock::{Clock, ManualClock};
use fleetwatch::config::{Config, HumanDuration, Secret, WebhookConfig};
use fleetwatch::detect::metrics::{self, Outcome};
use fleetwatch::domain::alert::{Kind, Severity};
use fleetwatch::domain::metric_rule::{self, MetricRule};
use serde_json::{json, Value};
use sqlx::PgPool;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn rules(toml: &str) -> Vec<MetricRule> {
    let c = Config::from_toml(toml).unwrap();
    fleetwatch::domain::metric_rule::validate(&c.cloudwatch.metric_rules()).unwrap();
    c.cloudwatch.metric_rules()
}

/// Warning above 5, critical above 50 over 5 min; resolves at or below 1, held there 2 min.
const HYSTERESIS: &str = r#"
[[cloudwatch.rules]]
metric = "Connect.ClientIDThrottle"
window = "5m"
warning = 5
critical = 50
resolve_below = 1
clear_for = "2m"
"#;

struct Env {
    pool: PgPool,
    clock: Arc<ManualClock>,
    rules: Vec<MetricRule>,
    worker: Option<Arc<Worker>>,
    /// (event, alert id, severity) of every webhook the receiver got, in order.
    received: Arc<Mutex<Vec<(String, i64, String)>>>,
}

/// A webhook receiver on a real socket that accepts everything; its URL.
async fn receiver(seen: Arc<Mutex<Vec<(String, i64, String)>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(axum::routing::post(move |body: axum::body::Bytes| {
        let seen = seen.clone();
        async move {
            let v: Value = serde_json::from_slice(&body).unwrap();
            seen.lock().unwrap().push((
                v["event"].as_str().unwrap().to_string(),
                v["alert"]["id"].as_i64().unwrap(),
                v["alert"]["severity"].as_str().unwrap().to_string(),
            ));
            "ok"
        }
    }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://127.0.0.1:{port}/hook")
}

#[derive(Debug, sqlx::FromRow)]
struct AlertRow {
    id: i64,
    status: String,
    severity: String,
    summary: String,
    details: Value,
}

impl Env {
    async fn new(pool: PgPool, rules: Vec<MetricRule>) -> Env {
        fleetwatch::logging::init_for_tests();
        // One native webhook endpoint on a real receiver, so every alert change writes its
        // notification rows and the worker can deliver them.
        let received = Arc::default();
        let hook = WebhookConfig {
            name: Some("oncall".into()),
            url: receiver(Arc::clone(&received)).await,
            secret: Some(Secret::new("whsec")),
            timeout: HumanDuration(std::time::Duration::from_secs(2)),
            ..WebhookConfig::default()
        };
        outbox::sync_endpoints(&pool, std::slice::from_ref(&hook))
            .await
            .unwrap();
        Env {
            worker: Some(Arc::new(Worker::new(pool.clone(), &[hook]).unwrap())),
            pool,
            clock: ManualClock::new(t("2026-11-30T10:00:10Z")),
            rules,
            received,
        }
    }

    /// One pass of the webhook worker at the clock's time (after the endpoint's group wait).
    async fn deliver(&self) -> Vec<(String, i64, String)> {
        let w = self.worker.as_ref().unwrap();
        w.tick(self.clock.now() + TimeDelta::seconds(31))
            .await
            .unwrap();
        self.received.lock().unwrap().clone()
    }

    async fn metric(&self, name: &str, dims: Value) -> i64 {
        sqlx::query_scalar(
            "insert into cloudwatch_metrics (namespace, metric_name, dimensions, source,
                 first_seen_at, last_listed_at)
             values ('AWS/IoT', $1, $2, 'discovered', $3, $3) returning id",
        )
        .bind(name)
        .bind(dims)
        .bind(self.clock.now())
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn sample(&self, metric: i64, at: &str, value: f64) {
        sqlx::query(
            "insert into cloudwatch_samples (metric_id, period_start, period_seconds, value, fetched_at)
             values ($1, $2, 60, $3, $4)
             on conflict (metric_id, period_start) do update set value = excluded.value",
        )
        .bind(metric)
        .bind(t(at))
        .bind(value)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn polled_through(&self, metric: i64, at: DateTime<Utc>) {
        sqlx::query("update cloudwatch_metrics set polled_through = $2 where id = $1")
            .bind(metric)
            .bind(at)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// Move the clock to `at` (HH:MM:SS on the story's day).
    fn at(&self, hms: &str) {
        self.clock.set(t(&format!("2026-11-30T{hms}Z")));
    }

    async fn tick(&self) -> Outcome {
        metrics::MetricRules::new(self.pool.clone(), self.rules.clone(), TimeDelta::hours(1))
            .tick(self.clock.now())
            .await
            .unwrap()
    }

    /// The poller kept up: `metric` is complete up to now, then a pass.
    async fn polled_tick(&self, metric: i64) -> Outcome {
        self.polled_through(metric, self.clock.now()).await;
        self.tick().await
    }

    async fn alerts(&self) -> Vec<AlertRow> {
        sqlx::query_as(
            "select id, status, severity, summary, details from alerts
             where kind = 'metric_threshold' order by id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn one(&self) -> AlertRow {
        let mut all = self.alerts().await;
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    /// (event, status) of an alert's notification rows.
    async fn notifications(&self, alert: i64) -> Vec<(String, String, Option<i64>)> {
        sqlx::query_as(
            "select event, status, silenced_by from notifications where alert_id = $1 order by id",
        )
        .bind(alert)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn trail(&self, alert: i64) -> Vec<String> {
        sqlx::query_scalar("select type from alert_events where alert_id = $1 order by id")
            .bind(alert)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

fn sev(s: Severity) -> String {
    s.as_str().to_string()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_client_id_throttle_burst_warns_grows_to_critical_and_resolves_after_hysteresis(
    pool: PgPool,
) {
    let env = Env::new(pool, rules(HYSTERESIS)).await;
    let m = env.metric("Connect.ClientIDThrottle", json!({})).await;
    env.at("10:05:10");
    assert_eq!(env.polled_tick(m).await.judged, 1);
    assert!(env.alerts().await.is_empty(), "no samples: nothing");

    // The burst starts: 8 throttles in the 10:05 period.
    env.sample(m, "2026-11-30T10:05:00Z", 8.0).await;
    env.at("10:06:10");
    let o = env.polled_tick(m).await;
    assert_eq!(o.fired.len(), 1, "{o:?}");
    let a = env.one().await;
    assert_eq!(
        (a.status.as_str(), a.severity.as_str()),
        ("firing", "warning")
    );
    assert_eq!(a.details["value"], 8.0);
    assert_eq!(a.details["threshold"], 5.0);
    assert_eq!(a.details["window"], "5m");
    assert_eq!(a.details["metric"], "Connect.ClientIDThrottle");
    assert_eq!(a.details["rule"], "Connect.ClientIDThrottle/5m");
    assert!(
        a.summary
            .contains("Connect.ClientIDThrottle: sum 8 over 5m")
            && a.summary.contains("warning threshold 5"),
        "{}",
        a.summary
    );

    // It grows: 78 in five minutes → critical, the same alert, no second page.
    env.sample(m, "2026-11-30T10:06:00Z", 30.0).await;
    env.sample(m, "2026-11-30T10:07:00Z", 40.0).await;
    env.at("10:08:10");
    let o = env.polled_tick(m).await;
    assert_eq!(o.updated.len(), 1, "{o:?}");
    let b = env.one().await;
    assert_eq!((b.id, b.severity.as_str()), (a.id, "critical"));
    assert_eq!(b.details["value"], 78.0);
    let firing = (String::from("alert.firing"), a.id);
    let got = env.deliver().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].0.clone(), got[0].1), firing);

    // Unchanged severity writes nothing (the value moving alone does not touch the trail).
    env.at("10:09:10");
    assert_eq!(
        env.polled_tick(m).await,
        Outcome {
            judged: 1,
            ..Outcome::default()
        }
    );
    env.at("10:11:10");
    env.polled_tick(m).await; // 10:06–10:10: 70, still critical
    assert_eq!(env.one().await.severity, sev(Severity::Critical));

    // Draining: 40 in the window → back to warning in place.
    env.at("10:12:10");
    env.polled_tick(m).await;
    assert_eq!(env.one().await.severity, sev(Severity::Warning));

    // A trickle of 2 keeps it in the band (1 < 2 ≤ 5): held, neither resolved nor refired.
    env.sample(m, "2026-11-30T10:10:00Z", 2.0).await;
    // (Clear windows must also have settled: clear_for 2 min + SETTLE 3 min.)
    for hms in [
        "10:13:10", "10:14:10", "10:15:10", "10:16:10", "10:17:10", "10:18:10", "10:19:10",
        "10:20:10",
    ] {
        env.at(hms);
        let o = env.polled_tick(m).await;
        assert!(o.resolved.is_empty() && o.fired.is_empty(), "{hms}: {o:?}");
        assert_eq!(env.one().await.status, "firing", "{hms}");
    }
    // Clear since the 10:16 window, for 2 min by 10:18, settled by 10:21: resolved.
    env.at("10:21:10");
    let o = env.polled_tick(m).await;
    assert_eq!(o.resolved.len(), 1, "{o:?}");
    let c = env.one().await;
    assert_eq!((c.id, c.status.as_str()), (a.id, "resolved"));
    assert_eq!(
        env.trail(a.id).await,
        ["opened", "updated", "updated", "resolved"]
    );
    let rows: Vec<_> = env
        .notifications(a.id)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        rows,
        ["alert.firing", "alert.resolved"],
        "one page for the incident, one resolution"
    );
    let got = env.deliver().await;
    let events: Vec<_> = got.iter().map(|(e, id, _)| (e.as_str(), *id)).collect();
    assert_eq!(
        events,
        [("alert.firing", a.id), ("alert.resolved", a.id)],
        "the receiver saw one page and one resolution"
    );

    // A new burst within the reopen window reopens the same alert and pages again.
    env.sample(m, "2026-11-30T10:21:00Z", 9.0).await;
    env.at("10:22:10");
    let o = env.polled_tick(m).await;
    assert_eq!(o.fired.len(), 1);
    assert_eq!(env.one().await.id, a.id);
    assert_eq!(env.notifications(a.id).await.len(), 3);
}

/// CloudWatch reports a period `Complete` before all its datapoints have landed: a burst's
/// newest minutes read as zero at first. The alert must not resolve on them and reopen when
/// the late data arrives (two pages for one incident): clear windows count once settled.
#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn late_data_does_not_resolve_and_reopen(pool: PgPool) {
    let env = Env::new(pool, rules(HYSTERESIS)).await;
    let m = env.metric("Connect.ClientIDThrottle", json!({})).await;
    env.sample(m, "2026-11-30T10:00:00Z", 8.0).await;
    env.at("10:01:10");
    assert_eq!(env.polled_tick(m).await.fired.len(), 1);
    // The 10:01–10:07 periods are polled but empty so far: the 5 min window ending 10:06 is
    // clear, and clear_for 2 min has passed by 10:08, but not yet settled.
    for hms in ["10:06:10", "10:07:10", "10:08:10"] {
        env.at(hms);
        let o = env.polled_tick(m).await;
        assert!(
            o.resolved.is_empty(),
            "{hms}: resolved on unsettled data: {o:?}"
        );
    }
    // The late datapoints land: still the same firing alert, never resolved in between.
    env.sample(m, "2026-11-30T10:05:00Z", 7.0).await;
    env.at("10:09:10");
    env.polled_tick(m).await;
    let a = env.one().await;
    assert_eq!(a.status, "firing");
    assert_eq!(env.trail(a.id).await, ["opened"]);
    assert_eq!(env.notifications(a.id).await.len(), 1, "one page");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn periods_not_yet_polled_neither_resolve_nor_fire(pool: PgPool) {
    let env = Env::new(pool, metric_rule::defaults()).await;
    let m = env.metric("Connect.ClientIDThrottle", json!({})).await;
    env.sample(m, "2026-11-30T10:03:00Z", 4.0).await;
    env.at("10:05:10");
    env.polled_tick(m).await;
    let a = env.one().await;
    assert_eq!(a.status, "firing");

    // The poller stops (expired credentials): polled_through stays at 10:05:10 for an hour.
    for minute in 6..=59 {
        env.at(&format!("10:{minute:02}:10"));
        env.tick().await;
        assert_eq!(env.one().await.status, "firing", "10:{minute}");
    }
    // It comes back 10 minutes behind: the window judged ends at 11:00 and is clear.
    env.at("11:10:10");
    env.polled_through(m, t("2026-11-30T11:00:00Z")).await;
    let o = env.tick().await;
    assert_eq!(o.resolved.len(), 1, "{o:?}");
    assert_eq!(
        env.one().await.details["value"],
        4.0,
        "details keep the fired value"
    );

    // Samples beyond polled_through are not judged either: 99 in the 11:05 period, polled
    // through 11:05 → the window 11:00–11:05 is clear.
    env.sample(m, "2026-11-30T11:05:00Z", 99.0).await;
    env.polled_through(m, t("2026-11-30T11:05:30Z")).await;
    env.at("11:12:10");
    let o = env.tick().await;
    assert!(o.fired.is_empty(), "{o:?}");
    // …until they are complete.
    env.polled_through(m, t("2026-11-30T11:06:00Z")).await;
    let o = env.tick().await;
    assert_eq!(
        o.fired,
        [(metrics::subject(m, &env.rules[0]), Severity::Critical)]
    );

    // A metric never polled is never judged, whatever its samples say.
    let never = env
        .metric("Connect.ClientIDThrottle", json!({"Protocol": "MQTT"}))
        .await;
    env.sample(never, "2026-11-30T11:10:00Z", 1000.0).await;
    env.at("11:12:30");
    let o = env.tick().await;
    assert_eq!(o.judged, 1, "{o:?}");
    // Nor is one whose data is stale (polled through yesterday): no alert from old data.
    env.polled_through(never, t("2026-11-29T11:12:00Z")).await;
    env.sample(never, "2026-11-29T11:10:00Z", 1000.0).await;
    let o = env.tick().await;
    assert_eq!((o.judged, o.fired.len()), (1, 0), "{o:?}");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_devices_of_open_conflicts_and_throttles_are_named(pool: PgPool) {
    let env = Env::new(pool, metric_rule::defaults()).await;
    let device_alert = |kind, subject: &str, device: Option<&str>| lifecycle::AlertSpec {
        kind,
        subject: subject.into(),
        device_id: device.map(String::from),
        group_id: None,
        severity: Severity::Error,
        summary: format!("{subject} trouble"),
        details: json!({}),
    };
    let mut tx = env.pool.begin().await.unwrap();
    let now = env.clock.now();
    for spec in [
        device_alert(Kind::ClientIdConflict, "bridgeawsiot", Some("screen-7")),
        device_alert(Kind::Throttled, "screen-9", Some("screen-9")),
        device_alert(Kind::ClientIdConflict, "ghost-<script>", None),
        device_alert(Kind::HeartbeatGap, "screen-1", Some("screen-1")),
    ] {
        lifecycle::fire(&mut tx, &spec, now, TimeDelta::hours(1))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let m = env.metric("Connect.ClientIDThrottle", json!({})).await;
    env.sample(m, "2026-11-30T10:04:00Z", 12.0).await;
    env.at("10:05:10");
    env.polled_tick(m).await;
    let a = env.one().await;
    for name in [
        "screen-7 (client ID bridgeawsiot)",
        "screen-9",
        "client ID ghost-<script>",
    ] {
        assert!(a.summary.contains(name), "{name} in {}", a.summary);
    }
    assert!(
        !a.summary.contains("screen-1"),
        "heartbeat gaps are not named"
    );
    let items = a.details["devices"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(a.details["devices"]["truncated"], false);

    // 60 more conflicting clients: the list is bounded, the summary stays one line.
    let mut tx = env.pool.begin().await.unwrap();
    for i in 0..60 {
        let spec = device_alert(Kind::ClientIdConflict, &format!("dup-{i:02}"), None);
        lifecycle::fire(&mut tx, &spec, now, TimeDelta::hours(1))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    env.at("10:06:10");
    let o = env.polled_tick(m).await;
    assert_eq!(
        o.updated.len(),
        1,
        "a new device set updates in place: {o:?}"
    );
    let b = env.one().await;
    assert_eq!(b.id, a.id);
    assert_eq!(b.details["devices"]["items"].as_array().unwrap().len(), 50);
    assert_eq!(b.details["devices"]["truncated"], true);
    assert!(b.summary.len() < 600, "{}", b.summary);
    assert!(b.summary.contains("more"), "{}", b.summary);
    assert_eq!(env.notifications(a.id).await.len(), 1, "still one page");

    // Other metrics never name devices.
    let other = env.metric("Connect.AuthError", json!({})).await;
    env.sample(other, "2026-11-30T10:05:00Z", 500.0).await;
    env.polled_tick(other).await;
    let auth = env
        .alerts()
        .await
        .into_iter()
        .find(|a| a.details["metric"] == "Connect.AuthError")
        .unwrap();
    assert!(auth.details.get("devices").is_none());
    assert_eq!(auth.severity, "critical");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn silences_hold_the_page_back(pool: PgPool) {
    let env = Env::new(pool, metric_rule::defaults()).await;
    let silence: i64 = sqlx::query_scalar(
        "insert into silences (kind, starts_at, ends_at, created_by, comment, created_at)
         values ('metric_threshold', $1, $1 + interval '2 hours', 'token:1:ops', 'AWS maintenance', $1)
         returning id",
    )
    .bind(env.clock.now())
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let m = env
        .metric("PublishIn.Throttle", json!({"Protocol": "MQTT"}))
        .await;
    env.sample(m, "2026-11-30T10:04:00Z", 11.0).await;
    env.at("10:05:10");
    env.polled_tick(m).await;
    let a = env.one().await;
    assert_eq!(a.status, "firing", "a silenced alert is still recorded");
    assert_eq!(
        env.notifications(a.id).await,
        [("alert.firing".into(), "superseded".into(), Some(silence))]
    );
    assert!(
        a.summary
            .starts_with("PublishIn.Throttle{Protocol=MQTT}: sum 11"),
        "{}",
        a.summary
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn the_default_rules_cover_the_metrics_they_claim(pool: PgPool) {
    let env = Env::new(pool, Config::default().cloudwatch.metric_rules()).await;
    let mut ids = Vec::new();
    for r in &env.rules {
        let m = env.metric(&r.metric, json!({"Protocol": "MQTT"})).await;
        env.sample(m, "2026-11-30T10:04:00Z", r.warning.unwrap() + 1.0)
            .await;
        env.polled_through(m, t("2026-11-30T10:05:10Z")).await;
        ids.push((m, r.metric.clone()));
    }
    env.at("10:05:10");
    let o = env.tick().await;
    assert_eq!(o.fired.len(), env.rules.len(), "{o:?}");
    for (m, name) in ids {
        let a = env
            .alerts()
            .await
            .into_iter()
            .find(|a| a.details["metric_id"] == m)
            .unwrap_or_else(|| panic!("{name} did not fire"));
        assert_eq!(a.severity, "warning", "{name}");
    }
    assert!(
        o.fired
            .iter()
            .any(|(s, _)| s.ends_with(":Connect.ClientIDThrottle/5m")),
        "{o:?}"
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hostile_rows_and_samples_change_nothing_they_should_not(pool: PgPool) {
    let env = Env::new(pool, rules(HYSTERESIS)).await;
    // Nothing stored at all: a pass is cheap and empty.
    assert_eq!(env.tick().await, Outcome::default());

    let huge = "x".repeat(10_000);
    let weird = env
        .metric(
            "Connect.ClientIDThrottle",
            json!({"Protocol": huge, "Number": 5, "Emoji": "💥\u{202e}"}),
        )
        .await;
    // NaN and infinities are skipped, negatives count as written, the future is ignored.
    env.sample(weird, "2026-11-30T10:01:00Z", f64::NAN).await;
    env.sample(weird, "2026-11-30T10:02:00Z", f64::INFINITY)
        .await;
    env.sample(weird, "2026-11-30T10:03:00Z", -3.0).await;
    env.sample(weird, "2026-11-30T10:04:00Z", 7.0).await;
    env.sample(weird, "2099-01-01T00:00:00Z", 1e12).await;
    env.at("10:05:10");
    env.polled_through(weird, t("2099-01-01T00:05:00Z")).await; // a polled_through from the future
    let logs = fleetwatch::logging::Captured::default();
    let guard = logs.install();
    let pass = metrics::MetricRules::new(env.pool.clone(), env.rules.clone(), TimeDelta::hours(1));
    let o = pass.tick(env.clock.now()).await.unwrap();
    assert!(o.fired.is_empty(), "-3 + 7 = 4 is not above 5: {o:?}");
    assert_eq!(o.skipped_samples, 2, "NaN and infinity counted: {o:?}");
    pass.tick(env.clock.now()).await.unwrap();
    drop(guard);
    assert_eq!(
        logs.text().matches("not finite numbers").count(),
        1,
        "rate-limited: {}",
        logs.text()
    );
    env.sample(weird, "2026-11-30T10:04:00Z", 9.0).await; // late data corrects a period
    let o = env.tick().await;
    assert_eq!(o.fired.len(), 1, "{o:?}");
    let a = env.one().await;
    assert!(a.summary.chars().count() < 400, "{}", a.summary);
    assert_eq!(a.details["value"], 6.0);
    assert_eq!(a.details["dimensions"]["Number"], "5");

    // The rule is removed from the configuration: its alert resolves rather than fire forever.
    let quiet = Env {
        pool: env.pool.clone(),
        clock: env.clock.clone(),
        rules: rules("[cloudwatch]\nrules = []"),
        worker: None,
        received: Arc::default(),
    };
    let o = quiet.tick().await;
    assert_eq!(o.resolved.len(), 1, "{o:?}");
    assert_eq!(env.one().await.status, "resolved");
    // A rule for another dimension set does not match this row.
    let only_http = Env {
        pool: env.pool.clone(),
        clock: env.clock.clone(),
        rules: rules(
            "[[cloudwatch.rules]]\nmetric = \"Connect.ClientIDThrottle\"\ndimensions = { Protocol = \"HTTP\" }\nwindow = \"5m\"\nwarning = 0\n",
        ),
        worker: None,
        received: Arc::default(),
    };
    assert_eq!(only_http.tick().await.judged, 0);
}
