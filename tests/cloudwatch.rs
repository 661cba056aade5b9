//! The CloudWatch poller (`aws::cloudwatch`): against LocalStack through the real SDK
//! (discovery, polling, late data, idempotent re-reads, restart backfill), and with
//! `aws-smithy-mocks` at the SDK boundary for what no local server produces (partial results,
//! throttling, denied and expired credentials, pagination at scale, hostile answers).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudwatch::config::http::HttpResponse;
use aws_sdk_cloudwatch::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_cloudwatch::operation::get_metric_data::GetMetricDataOutput;
use aws_sdk_cloudwatch::operation::list_metrics::builders::ListMetricsOutputBuilder;
use aws_sdk_cloudwatch::operation::list_metrics::{ListMetricsError, ListMetricsOutput};
use aws_sdk_cloudwatch::primitives::DateTime as AwsTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataResult, MetricDatum, StatusCode};
use aws_sdk_cloudwatch::Client;
use aws_smithy_mocks::{mock, MockResponse, MockResponseInterceptor, Rule, RuleMode};
use chrono::{DateTime, TimeDelta, Utc};
use common::aws::AwsServer;
use fleetwatch::aws::cloudwatch::{self as cw, Pace, Poller, VirtualPace};
use fleetwatch::clock::{Clock, ManualClock, SharedClock};
use fleetwatch::config::{CloudWatchConfig, CloudWatchMetricEntry, Config, HumanDuration};
use fleetwatch::metrics::Metrics;
use sqlx::PgPool;

fn minute(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp() / 60 * 60, 0).unwrap()
}

fn aws_t(t: DateTime<Utc>) -> AwsTime {
    AwsTime::from_secs(t.timestamp())
}

fn cfg(namespace: &str) -> CloudWatchConfig {
    CloudWatchConfig {
        namespace: namespace.into(),
        ..CloudWatchConfig::default()
    }
}

fn poller(
    client: Client,
    c: CloudWatchConfig,
    pool: &PgPool,
    clock: &Arc<ManualClock>,
) -> (Poller, Arc<Metrics>) {
    let metrics = Metrics::new();
    let clock: SharedClock = clock.clone();
    (
        Poller::new(client, c, pool.clone(), clock, metrics.clone()),
        metrics,
    )
}

/// (metric name, dimensions) → id of the rows in `namespace`.
type Dims = BTreeMap<String, String>;

async fn rows(pool: &PgPool, namespace: &str) -> BTreeMap<(String, Dims), i64> {
    let r: Vec<(String, serde_json::Value, i64)> = sqlx::query_as(
        "select metric_name, dimensions, id from cloudwatch_metrics where namespace = $1",
    )
    .bind(namespace)
    .fetch_all(pool)
    .await
    .unwrap();
    r.into_iter()
        .map(|(n, d, i)| ((n, serde_json::from_value(d).unwrap()), i))
        .collect()
}

async fn samples(pool: &PgPool, id: i64) -> BTreeMap<DateTime<Utc>, f64> {
    let r: Vec<(DateTime<Utc>, f64)> = sqlx::query_as(
        "select period_start, value from cloudwatch_samples where metric_id = $1 order by 1",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    r.into_iter().collect()
}

async fn polled_through(pool: &PgPool, id: i64) -> Option<DateTime<Utc>> {
    sqlx::query_scalar("select polled_through from cloudwatch_metrics where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// LocalStack

async fn put(
    client: &Client,
    namespace: &str,
    name: &str,
    dims: &[(&str, &str)],
    at: DateTime<Utc>,
    value: f64,
) {
    let mut d = MetricDatum::builder()
        .metric_name(name)
        .timestamp(aws_t(at))
        .value(value);
    for (k, v) in dims {
        d = d.dimensions(Dimension::builder().name(*k).value(*v).build());
    }
    client
        .put_metric_data()
        .namespace(namespace)
        .metric_data(d.build())
        .send()
        .await
        .expect("PutMetricData");
}

fn unique_namespace(test: &str) -> String {
    format!("Test/{test}/{}", std::process::id())
}

fn dims(pairs: &[(&str, &str)]) -> Dims {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn discovery_finds_every_dimension_set_and_polling_stores_late_data_idempotently(
    pool: PgPool,
) {
    let ls = AwsServer::localstack().await;
    let sdk = ls.sdk_config();
    let seed = Client::new(&sdk);
    let ns = unique_namespace("discovery");
    let now = minute(Utc::now());
    let t1 = now - TimeDelta::minutes(5);
    let mqtt = [("Protocol", "MQTT")];
    put(&seed, &ns, "Connect.ClientIDThrottle", &[], t1, 2.0).await;
    put(&seed, &ns, "Connect.ClientIDThrottle", &mqtt, t1, 3.0).await;
    put(&seed, &ns, "Connect.AuthError", &mqtt, t1, 1.0).await;
    put(
        &seed,
        &ns,
        "RuleMessageThrottled",
        &[("RuleName", "r1")],
        t1,
        4.0,
    )
    .await;
    let failure = [("RuleName", "r1"), ("ActionType", "Lambda")];
    put(&seed, &ns, "Failure", &failure, t1, 5.0).await;
    put(&seed, &ns, "Connect.Success", &mqtt, t1, 100.0).await;
    put(&seed, &ns, "PublishIn.Success", &[], t1, 100.0).await;
    // Another namespace is not ours.
    put(
        &seed,
        &format!("{ns}-other"),
        "Connect.Throttle",
        &[],
        t1,
        9.0,
    )
    .await;

    let clock = ManualClock::new(now + TimeDelta::seconds(20));
    let (p, metrics) = poller(cw::client(&sdk), cfg(&ns), &pool, &clock);
    let r = p.poll(false).await.expect("first poll");
    assert_eq!(r.discovered, Some(5), "{r:?}");

    let found = rows(&pool, &ns).await;
    let want = [
        ("Connect.ClientIDThrottle", dims(&[])),
        ("Connect.ClientIDThrottle", dims(&mqtt)),
        ("Connect.AuthError", dims(&mqtt)),
        ("RuleMessageThrottled", dims(&[("RuleName", "r1")])),
        ("Failure", dims(&failure)),
    ];
    assert_eq!(
        found.keys().cloned().collect::<Vec<_>>(),
        {
            let mut w: Vec<_> = want
                .iter()
                .map(|(n, d)| (n.to_string(), d.clone()))
                .collect();
            w.sort();
            w
        },
        "every wanted name with each dimension set, nothing else"
    );
    let id = |n: &str, d: Dims| found[&(n.to_string(), d)];
    let throttle_all = id("Connect.ClientIDThrottle", dims(&[]));
    let throttle_mqtt = id("Connect.ClientIDThrottle", dims(&mqtt));
    // The exact dimension set: the two series of one name are told apart.
    assert_eq!(
        samples(&pool, throttle_all).await,
        BTreeMap::from([(t1, 2.0)])
    );
    assert_eq!(
        samples(&pool, throttle_mqtt).await,
        BTreeMap::from([(t1, 3.0)])
    );
    assert_eq!(
        samples(&pool, id("Failure", dims(&failure))).await,
        BTreeMap::from([(t1, 5.0)])
    );
    assert_eq!(polled_through(&pool, throttle_all).await, Some(now));
    let written = r.samples;
    assert_eq!(written, 5, "{r:?}");

    // Late data: a datapoint for a minute already read lands, and one more adds to a sum.
    let t2 = now - TimeDelta::minutes(3);
    put(&seed, &ns, "Connect.ClientIDThrottle", &[], t2, 7.0).await;
    put(&seed, &ns, "Connect.ClientIDThrottle", &[], t1, 10.0).await;
    clock.advance(TimeDelta::minutes(1));
    let r = p.poll(false).await.expect("second poll");
    assert_eq!(r.discovered, None, "discovery is hourly");
    assert_eq!(
        samples(&pool, throttle_all).await,
        BTreeMap::from([(t1, 12.0), (t2, 7.0)]),
        "the late datapoint appears and the re-read replaces the sum, no duplicates"
    );
    // Replaying the same read changes nothing.
    let before: i64 = sqlx::query_scalar("select count(*) from cloudwatch_samples")
        .fetch_one(&pool)
        .await
        .unwrap();
    p.poll(false).await.unwrap();
    let after: i64 = sqlx::query_scalar("select count(*) from cloudwatch_samples")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(before, 6);
    let text = metrics.render();
    assert!(
        common::metric(
            &text,
            "fleetwatch_cloudwatch_calls_total{operation=\"GetMetricData\"}"
        ) >= 3.0,
        "{text}"
    );
    assert_eq!(
        common::metric(&text, "fleetwatch_cloudwatch_polls_total{outcome=\"ok\"}"),
        3.0
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_new_poller_after_a_gap_backfills_it_up_to_the_horizon(pool: PgPool) {
    let ls = AwsServer::localstack().await;
    let sdk = ls.sdk_config();
    let seed = Client::new(&sdk);
    let ns = unique_namespace("backfill");
    let now = minute(Utc::now());
    let ago = |m: i64| now - TimeDelta::minutes(m);
    let name = "Connect.Throttle";
    put(&seed, &ns, name, &[], ago(250), 1.0).await;
    // The first poller runs 4 hours ago with a 3 h horizon, then the service is down.
    let clock = ManualClock::new(ago(240));
    let (a, _) = poller(cw::client(&sdk), cfg(&ns), &pool, &clock);
    a.poll(false).await.expect("before the gap");
    drop(a);
    let id = rows(&pool, &ns).await[&(name.to_string(), dims(&[]))];
    assert_eq!(samples(&pool, id).await, BTreeMap::from([(ago(250), 1.0)]));
    assert_eq!(polled_through(&pool, id).await, Some(ago(240)));

    // During the gap: one datapoint older than the next start's horizon, three within, and a
    // late addition to what was read before the gap (beyond the horizon now: not re-read).
    for (m, v) in [(200, 5.0), (150, 2.0), (100, 3.0), (10, 4.0), (250, 40.0)] {
        put(&seed, &ns, name, &[], ago(m), v).await;
    }
    clock.set(now + TimeDelta::seconds(5));
    let (b, _) = poller(cw::client(&sdk), cfg(&ns), &pool, &clock);
    b.poll(false).await.expect("after the gap");
    assert_eq!(
        samples(&pool, id).await,
        BTreeMap::from([
            (ago(250), 1.0),
            (ago(150), 2.0),
            (ago(100), 3.0),
            (ago(10), 4.0)
        ]),
        "the gap is filled from the horizon (now - 3h) on, nothing older is read"
    );
    assert_eq!(polled_through(&pool, id).await, Some(now));
}

// ---------------------------------------------------------------------------------------------
// aws-smithy-mocks

fn mocked(rules: &[&Rule]) -> Client {
    let mut i = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for r in rules {
        i = i.with_rule(r);
    }
    let conf = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("a", "b", None, None, "test"))
        .http_client(aws_smithy_mocks::create_mock_http_client())
        .interceptor(i)
        .retry_config(aws_sdk_cloudwatch::config::retry::RetryConfig::disabled())
        .build();
    Client::from_conf(conf)
}

fn listed(metrics: &[(&str, &[(&str, &str)])]) -> ListMetricsOutput {
    listing(metrics).build()
}

fn listing(metrics: &[(&str, &[(&str, &str)])]) -> ListMetricsOutputBuilder {
    ListMetricsOutput::builder().set_metrics(Some(
        metrics
            .iter()
            .map(|(n, d)| {
                let mut m = Metric::builder().namespace("AWS/IoT").metric_name(*n);
                for (k, v) in d.iter() {
                    m = m.dimensions(Dimension::builder().name(*k).value(*v).build());
                }
                m.build()
            })
            .collect(),
    ))
}

fn result(id: &str, status: StatusCode, points: &[(DateTime<Utc>, f64)]) -> MetricDataResult {
    let mut r = MetricDataResult::builder().id(id).status_code(status);
    for (t, v) in points {
        r = r.timestamps(aws_t(*t)).values(*v);
    }
    r.build()
}

fn denied(code: &str, message: &str) -> aws_sdk_cloudwatch::error::ErrorMetadata {
    aws_sdk_cloudwatch::error::ErrorMetadata::builder()
        .code(code)
        .message(message)
        .build()
}

/// One throttle metric listed in `AWS/IoT`.
fn one_metric() -> Rule {
    mock!(Client::list_metrics).then_output(|| listed(&[("Connect.ClientIDThrottle", &[])]))
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn partial_data_is_not_stored_as_zeros_not_advanced_and_read_again(pool: PgPool) {
    let now = minute(Utc::now());
    let clock = ManualClock::new(now);
    let list = one_metric();
    let t = move |m: i64| now - TimeDelta::minutes(m);
    // Poll 1: PartialData with one point and a token; the next page still PartialData.
    // Poll 2: an InternalError result, nothing in it. Poll 3: Complete with everything.
    let calls: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = calls.clone();
    let get = mock!(Client::get_metric_data).then_compute_output(move |req| {
        let mut seen = seen.lock().unwrap();
        seen.push(req.next_token().map(str::to_string));
        let id = req.metric_data_queries()[0].id().unwrap().to_string();
        match seen.len() {
            1 => GetMetricDataOutput::builder()
                .metric_data_results(result(&id, StatusCode::PartialData, &[(t(5), 1.0)]))
                .next_token("page-2")
                .build(),
            2 => GetMetricDataOutput::builder()
                .metric_data_results(result(&id, StatusCode::PartialData, &[(t(4), 2.0)]))
                .build(),
            3 => GetMetricDataOutput::builder()
                .metric_data_results(result(&id, StatusCode::InternalError, &[]))
                .build(),
            _ => GetMetricDataOutput::builder()
                .metric_data_results(result(
                    &id,
                    StatusCode::Complete,
                    &[(t(5), 1.0), (t(4), 2.5), (t(3), 3.0)],
                ))
                .build(),
        }
    });
    let (p, metrics) = poller(mocked(&[&list, &get]), cfg("AWS/IoT"), &pool, &clock);

    let r = p.poll(false).await.unwrap();
    assert_eq!(r.calls, 2, "the token is followed: {r:?}");
    assert_eq!(calls.lock().unwrap()[1].as_deref(), Some("page-2"));
    let id = *rows(&pool, "AWS/IoT").await.values().next().unwrap();
    assert_eq!(
        samples(&pool, id).await,
        BTreeMap::from([(t(5), 1.0), (t(4), 2.0)]),
        "what came is stored, no zeros for the rest"
    );
    assert_eq!(polled_through(&pool, id).await, None, "not advanced");

    clock.advance(TimeDelta::minutes(1));
    let r = p.poll(false).await.unwrap();
    assert_eq!(r.incomplete, 1);
    assert_eq!(
        samples(&pool, id).await.len(),
        2,
        "an error result stores nothing"
    );
    assert_eq!(polled_through(&pool, id).await, None);

    clock.advance(TimeDelta::minutes(1));
    let r = p.poll(false).await.unwrap();
    assert_eq!(r.advanced, 1, "{r:?}");
    assert_eq!(
        samples(&pool, id).await,
        BTreeMap::from([(t(5), 1.0), (t(4), 2.5), (t(3), 3.0)])
    );
    assert_eq!(
        polled_through(&pool, id).await,
        Some(now + TimeDelta::minutes(2))
    );
    let text = metrics.render();
    assert_eq!(
        common::metric(
            &text,
            "fleetwatch_cloudwatch_partial_results_total{status=\"PartialData\"}"
        ),
        1.0
    );
    assert_eq!(
        common::metric(
            &text,
            "fleetwatch_cloudwatch_partial_results_total{status=\"InternalError\"}"
        ),
        1.0
    );
}

/// No database is touched by a listing: a lazy pool that never connects.
fn no_db() -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap()
}

#[tokio::test]
async fn throttling_backs_off_and_the_limiter_holds_the_call_rate() {
    let pace = Arc::new(VirtualPace::default());
    let times: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let (t1, p1) = (times.clone(), pace.clone());
    // 12 pages, every third call throttled (Throttling, then a 429 without a code).
    let list = mock!(Client::list_metrics).then_compute_response(move |req| {
        let mut t = t1.lock().unwrap();
        t.push(p1.elapsed());
        let n = t.len();
        if n % 3 == 0 {
            return if n % 2 == 0 {
                MockResponse::Error(ListMetricsError::generic(denied(
                    "Throttling",
                    "Rate exceeded",
                )))
            } else {
                MockResponse::Http(HttpResponse::new(429u16.try_into().unwrap(), "".into()))
            };
        }
        let page: usize = req.next_token().map_or(0, |t| t.parse().unwrap());
        let mut out = listing(&[("Connect.Throttle", &[])]);
        if page < 11 {
            out = out.next_token((page + 1).to_string());
        }
        MockResponse::Output(out.build())
    });
    let clock = ManualClock::new(Utc::now());
    let mut c = cfg("AWS/IoT");
    c.max_calls_per_second = 5.0;
    let metrics = Metrics::new();
    let p = Poller::with_pace(
        mocked(&[&list]),
        c,
        no_db(),
        clock as SharedClock,
        metrics.clone(),
        pace.clone(),
    );
    let found = p.list_metrics().await.expect("throttles are waited out");
    assert_eq!(found.len(), 1);
    let times = times.lock().unwrap().clone();
    assert!(times.len() > 12, "{}", times.len());
    // Never more than 5 calls in any second: consecutive calls at least 200 ms apart.
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(200),
            "{:?}",
            w[1] - w[0]
        );
    }
    // After a throttle (every third call) the next call waits out a backoff (at least half a
    // second); other calls are only spaced by the limiter.
    let throttled = metrics.cloudwatch.throttled.get();
    assert!(throttled >= 4, "{throttled}");
    for (i, w) in times.windows(2).enumerate() {
        let gap = w[1] - w[0];
        if (i + 1) % 3 == 0 {
            assert!(
                gap >= Duration::from_millis(500),
                "after call {}: {gap:?}",
                i + 1
            );
        } else {
            assert_eq!(gap, Duration::from_millis(200), "after call {}", i + 1);
        }
    }
}

#[tokio::test]
async fn throttled_for_too_long_the_poll_fails_naming_the_code() {
    let list = mock!(Client::list_metrics)
        .then_error(|| ListMetricsError::generic(denied("ThrottlingException", "Rate exceeded")));
    let clock = ManualClock::new(Utc::now());
    let pace = Arc::new(VirtualPace::default());
    let p = Poller::with_pace(
        mocked(&[&list]),
        cfg("AWS/IoT"),
        no_db(),
        clock as SharedClock,
        Metrics::new(),
        pace.clone(),
    );
    let e = format!("{:#}", p.list_metrics().await.unwrap_err());
    assert!(e.contains("ThrottlingException"), "{e}");
    assert!(e.contains("Rate exceeded"), "{e}");
    assert_eq!(list.num_calls(), 1 + cw::MAX_THROTTLE_RETRIES as usize);
    // Capped: 0.5+1+2+4+8+15 s at least, 1+2+4+8+16+30 s at most.
    let waited = pace.elapsed();
    assert!(waited >= Duration::from_millis(30_500), "{waited:?}");
    assert!(waited <= Duration::from_secs(62), "{waited:?}");
}

async fn alerts(pool: &PgPool) -> Vec<(String, String, Option<String>, String)> {
    sqlx::query_as("select kind, status, device_id, summary from alerts order by id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn denied_or_expired_credentials_raise_one_alert_of_our_own_then_resolve(pool: PgPool) {
    let clock = ManualClock::new(minute(Utc::now()));
    let list = mock!(Client::list_metrics)
        .sequence()
        .error(|| {
            ListMetricsError::generic(denied(
                "ExpiredToken",
                "The security token included in the request is expired",
            ))
        })
        .times(2)
        .error(|| {
            ListMetricsError::generic(denied(
                "AccessDenied",
                "User: arn:aws:iam::123:user/fw is not authorized to perform: cloudwatch:ListMetrics",
            ))
        })
        .times(2)
        .output(|| listed(&[("Connect.AuthError", &[("Protocol", "MQTT")])]))
        .repeatedly()
        .build();
    let get = mock!(Client::get_metric_data).then_output(|| GetMetricDataOutput::builder().build());
    let (p, _) = poller(mocked(&[&list, &get]), cfg("AWS/IoT"), &pool, &clock);
    let health = fleetwatch::aws::AwsHealth::on();
    let settings = fleetwatch::aws::health::AlertSettings {
        failures_before_alert: 3,
        severity: fleetwatch::domain::alert::Severity::Error,
        reopen_window: TimeDelta::minutes(30),
    };
    // What `aws::spawn_poller` does with each poll's result.
    let mut errors = Vec::new();
    let mut firing = Vec::new();
    for _ in 0..5 {
        let r = p.poll(false).await;
        if let Err(e) = &r {
            errors.push(format!("{e:#}"));
        }
        let now = clock.now();
        health.poller(cw::NAME).record(&r, now);
        fleetwatch::aws::health::sync_alert(&pool, &health, settings, now)
            .await
            .unwrap();
        if errors.len() == 2 {
            assert!(alerts(&pool).await.is_empty(), "two failures are a blip");
        }
        if errors.len() == 4 && r.is_err() {
            firing = alerts(&pool).await;
        }
        clock.advance(TimeDelta::minutes(1));
    }
    assert_eq!(errors.len(), 4);
    assert!(errors[0].contains("ExpiredToken"), "{}", errors[0]);
    assert!(errors[0].contains("is expired"), "{}", errors[0]);
    assert!(errors[3].contains("AccessDenied"), "{}", errors[3]);
    assert_eq!(firing.len(), 1, "one alert, nothing else: {firing:?}");
    let (kind, status, device, summary) = &firing[0];
    assert_eq!(kind, "aws_poll_failing");
    assert_eq!(status, "firing");
    assert_eq!(device, &None, "never a device's");
    assert!(summary.contains("AccessDenied"), "{summary}");
    assert!(summary.contains("cloudwatch"), "{summary}");
    let after = alerts(&pool).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].1, "resolved", "the fifth poll worked");
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn more_than_500_metrics_are_split_into_calls_and_tokens_followed(pool: PgPool) {
    let now = minute(Utc::now());
    let clock = ManualClock::new(now);
    let at = now - TimeDelta::minutes(2);
    // 1,200 dimension sets over 3 listing pages (the paginator follows the token).
    let list = mock!(Client::list_metrics).then_compute_output(|req| {
        let page: usize = req.next_token().map_or(0, |t| t.parse().unwrap());
        let names: Vec<String> = (page * 400..(page + 1) * 400)
            .map(|i| format!("rule-{i}"))
            .collect();
        let ms: Vec<(&str, [(&str, &str); 1])> = names
            .iter()
            .map(|n| ("RuleMessageThrottled", [("RuleName", n.as_str())]))
            .collect();
        let ms: Vec<(&str, &[(&str, &str)])> = ms.iter().map(|(n, d)| (*n, &d[..])).collect();
        let mut out = listing(&ms);
        if page < 2 {
            out = out.next_token((page + 1).to_string());
        }
        out.build()
    });
    let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
    let s2 = sizes.clone();
    // Each call answers in two pages: the first half of the queries, then the rest.
    let get = mock!(Client::get_metric_data).then_compute_output(move |req| {
        let q = req.metric_data_queries();
        let half = q.len() / 2;
        let (range, token) = match req.next_token() {
            None => {
                s2.lock().unwrap().push(q.len());
                (0..half, Some("rest"))
            }
            Some(_) => (half..q.len(), None),
        };
        let mut out = GetMetricDataOutput::builder();
        for i in range {
            out = out.metric_data_results(result(
                q[i].id().unwrap(),
                StatusCode::Complete,
                &[(at, i as f64)],
            ));
        }
        out.set_next_token(token.map(str::to_string)).build()
    });
    let (p, _) = poller(mocked(&[&list, &get]), cfg("AWS/IoT"), &pool, &clock);
    let r = p.poll(false).await.unwrap();
    assert_eq!(r.discovered, Some(1200));
    assert_eq!(list.num_calls(), 3);
    let mut sizes = sizes.lock().unwrap().clone();
    sizes.sort();
    assert_eq!(sizes, vec![200, 500, 500]);
    assert_eq!(r.calls, 6, "three calls of two pages: {r:?}");
    assert_eq!(r.samples, 1200);
    assert_eq!(r.advanced, 1200);
    let n: i64 = sqlx::query_scalar("select count(*) from cloudwatch_samples")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1200);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn hostile_answers_are_skipped_and_counted_nothing_else_lost(pool: PgPool) {
    let now = minute(Utc::now());
    let clock = ManualClock::new(now);
    let t = move |m: i64| now - TimeDelta::minutes(m);
    let huge = "x".repeat(10_000);
    let hostile_name = "Connect.Throttle'; drop table cloudwatch_samples; --é🙂".to_string();
    let (h1, h2) = (huge.clone(), hostile_name.clone());
    let list = mock!(Client::list_metrics).then_compute_output(move |_req| {
        let mut out = listing(&[
            ("Connect.Throttle", &[]),
            // listed twice: one row
            ("Connect.Throttle", &[]),
            ("Connect.Success", &[]),
        ]);
        out = out
            // no name
            .metrics(Metric::builder().namespace("AWS/IoT").build())
            // a 10,000-character dimension value
            .metrics(
                Metric::builder()
                    .metric_name("Connect.AuthError")
                    .dimensions(Dimension::builder().name("Protocol").value(&h1).build())
                    .build(),
            )
            // a dimension without a value
            .metrics(
                Metric::builder()
                    .metric_name("Connect.ClientError")
                    .dimensions(Dimension::builder().name("Protocol").build())
                    .build(),
            )
            // a NUL (Postgres text cannot hold it)
            .metrics(
                Metric::builder()
                    .metric_name("Connect.Throttle\u{0}")
                    .build(),
            )
            // a hostile (but valid) name is stored verbatim, bound, not interpreted
            .metrics(Metric::builder().metric_name(&h2).build());
        out.build()
    });
    let get = mock!(Client::get_metric_data).then_compute_output(move |req| {
        let ids: Vec<String> = req
            .metric_data_queries()
            .iter()
            .map(|q| q.id().unwrap().to_string())
            .collect();
        let mut out = GetMetricDataOutput::builder()
            // ids we never asked for
            .metric_data_results(result("m999999", StatusCode::Complete, &[(t(3), 1.0)]))
            .metric_data_results(result("zzz", StatusCode::Complete, &[(t(3), 1.0)]));
        for id in &ids {
            let bad = MetricDataResult::builder()
                .id(id)
                .status_code(StatusCode::Complete)
                .timestamps(aws_t(t(5)))
                .values(1.0)
                // in the future
                .timestamps(aws_t(now + TimeDelta::hours(2)))
                .values(99.0)
                // older than the span
                .timestamps(aws_t(now - TimeDelta::days(30)))
                .values(99.0)
                // not on a period
                .timestamps(AwsTime::from_secs(t(4).timestamp() + 7))
                .values(99.0)
                .timestamps(aws_t(t(3)))
                .values(f64::NAN)
                .timestamps(aws_t(t(2)))
                .values(f64::INFINITY)
                // a duplicate timestamp: the later wins
                .timestamps(aws_t(t(1)))
                .values(5.0)
                .timestamps(aws_t(t(1)))
                .values(6.0)
                .build();
            out = out.metric_data_results(bad);
        }
        out.build()
    });
    let logs = fleetwatch::logging::Captured::default();
    let _guard = logs.install();
    let (p, metrics) = poller(mocked(&[&list, &get]), cfg("AWS/IoT"), &pool, &clock);
    let r = p
        .poll(false)
        .await
        .expect("hostile answers never fail the poll");
    assert_eq!(r.discovered, Some(2), "{r:?}");
    let found = rows(&pool, "AWS/IoT").await;
    assert!(found.contains_key(&("Connect.Throttle".to_string(), dims(&[]))));
    assert!(found.contains_key(&(hostile_name, dims(&[]))));
    for id in found.values() {
        assert_eq!(
            samples(&pool, *id).await,
            BTreeMap::from([(t(5), 1.0), (t(1), 6.0)])
        );
    }
    let text = metrics.render();
    for (reason, at_least) in [
        ("bad_metric", 4.0),
        ("unknown_result_id", 2.0),
        ("out_of_span", 4.0),
        ("misaligned", 2.0),
        ("not_finite", 4.0),
    ] {
        let n = common::metric(
            &text,
            &format!("fleetwatch_cloudwatch_skipped_total{{reason=\"{reason}\"}}"),
        );
        assert!(n >= at_least, "{reason}: {n}\n{text}");
    }
    // Logged, but rate-limited: one line per reason, not one per datapoint.
    assert_eq!(
        logs.text().matches("outside the span read").count(),
        1,
        "{}",
        logs.text()
    );
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn configured_metrics_extend_or_replace_discovery(pool: PgPool) {
    let clock = ManualClock::new(minute(Utc::now()));
    let list = one_metric();
    let get = mock!(Client::get_metric_data).then_output(|| GetMetricDataOutput::builder().build());
    let extra = CloudWatchMetricEntry {
        name: "Connect.Success".into(),
        dimensions: BTreeMap::from([("Protocol".to_string(), "MQTT".to_string())]),
    };
    let mut c = cfg("AWS/IoT");
    c.metrics = vec![extra.clone()];
    let (p, _) = poller(mocked(&[&list, &get]), c.clone(), &pool, &clock);
    assert_eq!(p.poll(false).await.unwrap().discovered, Some(2));
    let sources: Vec<(String, String)> =
        sqlx::query_as("select metric_name, source from cloudwatch_metrics order by 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        sources,
        vec![
            ("Connect.ClientIDThrottle".into(), "discovered".into()),
            ("Connect.Success".into(), "config".into())
        ]
    );
    // Discovery runs again after `cloudwatch.discovery` (1 h), or at a new leadership.
    assert_eq!(p.poll(false).await.unwrap().discovered, None);
    clock.advance(TimeDelta::minutes(59));
    assert_eq!(p.poll(false).await.unwrap().discovered, None);
    clock.advance(TimeDelta::minutes(1));
    assert_eq!(p.poll(false).await.unwrap().discovered, Some(2));
    assert_eq!(p.poll(true).await.unwrap().discovered, Some(2));
    assert_eq!(list.num_calls(), 3);
    // discover = false: ListMetrics is not called at all.
    c.discover = false;
    let list2 = one_metric();
    let (p, _) = poller(mocked(&[&list2, &get]), c, &pool, &clock);
    assert_eq!(p.poll(false).await.unwrap().discovered, Some(1));
    assert_eq!(list2.num_calls(), 0);
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn retention_deletes_old_samples_in_batches_and_keeps_the_metrics(pool: PgPool) {
    let now = minute(Utc::now());
    let id = fleetwatch::db::cloudwatch::upsert_metric(
        &pool,
        "AWS/IoT",
        "Connect.Throttle",
        &serde_json::json!({}),
        fleetwatch::db::cloudwatch::Source::Discovered,
        now,
    )
    .await
    .unwrap();
    // 12,000 minutes of samples: older and younger than 5 days, more than one batch old.
    let s: Vec<_> = (0..12_000)
        .map(|m| fleetwatch::db::cloudwatch::Sample {
            metric_id: id,
            period_start: now - TimeDelta::minutes(m),
            value: 1.0,
        })
        .collect();
    fleetwatch::db::cloudwatch::upsert_samples(&pool, &s, 60, now)
        .await
        .unwrap();
    let mut r = Config::default().retention;
    r.cloudwatch_samples = HumanDuration(Duration::from_secs(5 * 86400));
    let clock: SharedClock = ManualClock::new(now);
    let d = fleetwatch::retention::tick(&pool, &clock, &r)
        .await
        .unwrap();
    let keep = 5 * 1440; // minutes 0..=7199 are at most 5 days old
    assert_eq!(d.cloudwatch_samples, 12_000 - keep as u64 - 1);
    let left = samples(&pool, id).await;
    assert_eq!(left.len(), keep + 1);
    assert!(left.keys().all(|t| *t >= now - TimeDelta::days(5)));
    assert_eq!(rows(&pool, "AWS/IoT").await.len(), 1, "the metric stays");
}

#[test]
fn bad_configured_metrics_are_config_errors_naming_the_key() {
    let e = Config::from_toml("[cloudwatch]\nmetrics = [{name = 5}]\n").unwrap_err();
    assert!(format!("{e}").contains("cloudwatch.metrics"), "{e}");
    let e =
        Config::from_toml("[cloudwatch]\nmetrics = [{nme = \"Connect.Throttle\"}]\n").unwrap_err();
    assert!(format!("{e}").contains("cloudwatch.metrics"), "{e}");
    let env = BTreeMap::new();
    for (toml, want) in [
        (
            "[cloudwatch]\nmetrics = [{name = \"\"}]\n",
            "cloudwatch.metrics[0].name",
        ),
        (
            "[cloudwatch]\nmetrics = [{name = \"A\"}, {name = \"A\", dimensions = {}}]\n",
            "cloudwatch.metrics[1]",
        ),
        (
            "[cloudwatch]\nmetrics = [{name = \"A\", dimensions = {P = \"\"}}]\n",
            "cloudwatch.metrics[0].dimensions",
        ),
        ("[cloudwatch]\ndiscover = false\n", "cloudwatch.metrics"),
        (
            "[cloudwatch]\nmax_calls_per_second = 500\n",
            "cloudwatch.max_calls_per_second",
        ),
        ("[cloudwatch]\nwindow = \"4h\"\n", "cloudwatch.window"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let e = Config::load_with_env(Some(&path), &env).unwrap_err();
        assert!(format!("{e:#}").contains(want), "{toml}: {e:#}");
    }
    let c = Config::from_toml(
        "[cloudwatch]\nnamespace = \"Test/x\"\nmetrics = [{name = \"Connect.AuthError\", dimensions = {Protocol = \"MQTT\"}}]\n",
    )
    .unwrap();
    assert_eq!(c.cloudwatch.metrics[0].dimensions["Protocol"], "MQTT");
    assert_eq!(c.cloudwatch.window, HumanDuration(Duration::from_secs(900)));
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn an_endpoint_that_is_down_fails_the_poll_saying_so(pool: PgPool) {
    // A port nothing listens on, through the real SDK and HTTP client.
    let port = common::free_port();
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .credentials_provider(aws_sdk_cloudwatch::config::SharedCredentialsProvider::new(
            Credentials::new("a", "b", None, None, "test"),
        ))
        .http_client(fleetwatch::aws::http_client())
        .build();
    let clock = ManualClock::new(Utc::now());
    let (p, metrics) = poller(cw::client(&sdk), cfg("AWS/IoT"), &pool, &clock);
    let e = format!("{:#}", p.poll(false).await.unwrap_err());
    assert!(e.contains("ListMetrics"), "{e}");
    assert!(e.to_lowercase().contains("connect"), "{e}");
    assert_eq!(
        common::metric(
            &metrics.render(),
            "fleetwatch_cloudwatch_polls_total{outcome=\"error\"}"
        ),
        1.0
    );
    assert!(rows(&pool, "AWS/IoT").await.is_empty());
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn a_throttled_get_metric_data_is_backed_off_and_retried(pool: PgPool) {
    let now = minute(Utc::now());
    let clock = ManualClock::new(now);
    let at = now - TimeDelta::minutes(2);
    let pace = Arc::new(VirtualPace::default());
    let times: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let (t1, p1) = (times.clone(), pace.clone());
    let list = one_metric();
    let get = mock!(Client::get_metric_data).then_compute_response(move |req| {
        let mut t = t1.lock().unwrap();
        t.push(p1.elapsed());
        match t.len() {
            1 => MockResponse::Error(
                aws_sdk_cloudwatch::operation::get_metric_data::GetMetricDataError::generic(
                    denied("Throttling", "Rate exceeded"),
                ),
            ),
            2 => MockResponse::Http(HttpResponse::new(429u16.try_into().unwrap(), "".into())),
            _ => MockResponse::Output(
                GetMetricDataOutput::builder()
                    .metric_data_results(result(
                        req.metric_data_queries()[0].id().unwrap(),
                        StatusCode::Complete,
                        &[(at, 4.0)],
                    ))
                    .build(),
            ),
        }
    });
    let metrics = Metrics::new();
    let p = Poller::with_pace(
        mocked(&[&list, &get]),
        cfg("AWS/IoT"),
        pool.clone(),
        clock as SharedClock,
        metrics.clone(),
        pace.clone(),
    );
    let r = p.poll(false).await.expect("throttles are waited out");
    assert_eq!(r.samples, 1);
    assert_eq!(r.advanced, 1);
    assert_eq!(metrics.cloudwatch.throttled.get(), 2);
    let t = times.lock().unwrap().clone();
    assert_eq!(t.len(), 3);
    // The first retry waits 0.5-1 s, the second 1-2 s.
    assert!(t[1] - t[0] >= Duration::from_millis(500), "{t:?}");
    assert!(t[2] - t[1] >= Duration::from_secs(1), "{t:?}");
    assert!(t[2] - t[0] <= Duration::from_secs(3), "{t:?}");
}
