//! `GET /metrics/cloudwatch`: the CloudWatch metrics we poll and their series, for the
//! dashboard's charts and for ticketing (issue 9 item 5). Read scope.
//!
//! - Without `metric`: the known metrics, one per name and exact dimension set (name,
//!   dimensions, source, first seen, `polled_through`, newest sample), paged by id.
//! - With `metric`: one series per matching dimension set (`dimensions=Name:Value,Name:Value`
//!   for one exact set, `dimensions=` for the set without dimensions, absent for all sets, at
//!   most [`MAX_SERIES`]), over `[from, to)` (RFC 3339; default the last 3 h), the 60 s `Sum`s
//!   re-bucketed to `step` (a whole number of minutes, default `60s`; buckets start at `from`).
//!   A bucket with no sample is absent: never an invented zero. Each series carries its
//!   `polled_through`: an absent bucket before it had no datapoint (zero), one after it is not
//!   known yet. An unknown metric is an empty `series` (the metric may simply not have been
//!   discovered yet), not a 404.
//! - Bounds, each a `400` problem document: span at most [`MAX_SPAN_DAYS`] days, at most
//!   [`MAX_POINTS`] buckets per series, text parameters at most 1024 bytes without NUL.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{clean, Paging};
use crate::db::metric_series as db;
use crate::domain::metric_rule::PERIOD_SECS;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiQuery;
use crate::http::AppState;

/// The longest span one request may ask for.
pub const MAX_SPAN_DAYS: i64 = 31;
/// The most buckets one series may have (a larger `step` covers a longer span).
pub const MAX_POINTS: i64 = 1440;
/// The most dimension sets one request returns (`truncated` says when there were more).
pub const MAX_SERIES: i64 = 100;
/// The default span when `from` is absent.
const DEFAULT_SPAN: TimeDelta = TimeDelta::hours(3);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CloudWatchQuery {
    /// A metric name, e.g. `Connect.ClientIDThrottle`: return its series. Absent: list the
    /// known metrics.
    pub metric: Option<String>,
    /// One exact dimension set, `Name:Value,Name:Value` (empty: the set without dimensions).
    /// Absent: every dimension set of the metric.
    pub dimensions: Option<String>,
    /// Start (inclusive), RFC 3339. Default: `to` minus 3 h.
    pub from: Option<String>,
    /// End (exclusive), RFC 3339. Default: now.
    pub to: Option<String>,
    /// Bucket size, a whole number of minutes (`60s`, `5m`, `1h`). Default `60s`.
    pub step: Option<String>,
    /// List mode: page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// List mode: `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A metric we poll: one name with one exact dimension set.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MetricInfo {
    pub id: i64,
    pub namespace: String,
    pub metric: String,
    /// `{"Name": "Value", …}`; `{}` for no dimensions.
    #[schema(value_type = Object)]
    pub dimensions: Value,
    /// `discovered` (ListMetrics) or `config`.
    pub source: String,
    pub first_seen_at: DateTime<Utc>,
    pub last_listed_at: DateTime<Utc>,
    /// Samples are complete up to here; `null`: never polled.
    pub polled_through: Option<DateTime<Utc>>,
    /// The newest sample's period start and value (`null`: no sample yet).
    pub last_period_start: Option<DateTime<Utc>>,
    pub last_value: Option<f64>,
}

/// The known metrics, paged by id.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MetricList {
    pub items: Vec<MetricInfo>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One bucket of a series.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// The bucket's start.
    pub t: DateTime<Utc>,
    /// The sum of the 60 s `Sum`s in the bucket (`null` if CloudWatch gave a non-number).
    pub value: Option<f64>,
}

/// One dimension set's series.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Series {
    pub metric_id: i64,
    #[schema(value_type = Object)]
    pub dimensions: Value,
    /// Buckets before this with no point had no datapoint (zero); after it, not known yet.
    pub polled_through: Option<DateTime<Utc>>,
    pub points: Vec<Point>,
}

/// A metric's series over a span.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SeriesAnswer {
    pub metric: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step_seconds: i64,
    pub series: Vec<Series>,
    /// More than 100 dimension sets matched: only the first 100 (by id) are here.
    pub truncated: bool,
}

/// The answer: a list of metrics, or a metric's series.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CloudWatchAnswer {
    Metrics(MetricList),
    Series(SeriesAnswer),
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

fn time(name: &str, v: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    clean(name, v)?
        .map(|s| {
            DateTime::parse_from_rfc3339(s.trim())
                .map(|t| t.to_utc())
                .map_err(|e| {
                    ApiError::BadRequest(format!(
                        "{name}: expected an RFC 3339 time like 2026-11-30T10:00:00Z ({e})"
                    ))
                })
        })
        .transpose()
}

/// `Name:Value,Name:Value` → a JSON object; empty → `{}`.
pub fn parse_dimensions(s: &str) -> Result<Value, ApiError> {
    let bad = |why: &str| {
        ApiError::BadRequest(format!(
            "dimensions: expected Name:Value pairs separated by commas ({why})"
        ))
    };
    let mut out = BTreeMap::new();
    if s.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    for pair in s.split(',') {
        let (k, v) = pair
            .split_once(':')
            .ok_or_else(|| bad("a pair has no ':'"))?;
        if k.is_empty() {
            return Err(bad("a dimension name is empty"));
        }
        if out
            .insert(k.to_string(), Value::String(v.to_string()))
            .is_some()
        {
            return Err(bad(&format!("{k:?} is given twice")));
        }
        if out.len() > 30 {
            return Err(bad("at most 30 dimensions"));
        }
    }
    Ok(Value::Object(out.into_iter().collect()))
}

/// `step` → whole seconds, a positive multiple of 60.
fn step(v: Option<String>) -> Result<i64, ApiError> {
    let Some(s) = clean("step", v)? else {
        return Ok(PERIOD_SECS);
    };
    let d: Duration = humantime::parse_duration(s.trim()).map_err(|e| {
        ApiError::BadRequest(format!("step: expected a duration like 60s or 5m ({e})"))
    })?;
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs < PERIOD_SECS as u64 || secs % PERIOD_SECS as u64 != 0 {
        return Err(ApiError::BadRequest(
            "step: expected a whole number of minutes, at least 60s (samples are per 60 s)".into(),
        ));
    }
    i64::try_from(secs)
        .ok()
        .filter(|s| *s <= MAX_SPAN_DAYS * 86_400)
        .ok_or_else(|| ApiError::BadRequest(format!("step: at most {MAX_SPAN_DAYS} days")))
}

/// Known CloudWatch metrics, or one metric's series.
#[utoipa::path(get, path = "/api/v1/metrics/cloudwatch", tag = "metrics", params(CloudWatchQuery),
    responses((status = 200, body = CloudWatchAnswer), super::ErrorsList))]
pub async fn cloudwatch(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<CloudWatchQuery>,
) -> ApiResult<Json<CloudWatchAnswer>> {
    let Some(metric) = clean("metric", q.metric)? else {
        if q.dimensions.is_some() || q.from.is_some() || q.to.is_some() || q.step.is_some() {
            return Err(ApiError::BadRequest(
                "dimensions, from, to and step need metric".into(),
            ));
        }
        let paging = Paging::<i64>::new(q.limit, q.cursor.as_deref())?;
        let rows = db::list_metrics(&state.pool, paging.after, paging.fetch()).await?;
        let page = paging.page(rows, |r| r.id);
        return Ok(Json(CloudWatchAnswer::Metrics(MetricList {
            items: page
                .items
                .into_iter()
                .map(|r| MetricInfo {
                    id: r.id,
                    namespace: r.namespace,
                    metric: r.metric_name,
                    dimensions: r.dimensions,
                    source: r.source,
                    first_seen_at: r.first_seen_at,
                    last_listed_at: r.last_listed_at,
                    polled_through: r.polled_through,
                    last_period_start: r.last_period_start,
                    last_value: finite(r.last_value),
                })
                .collect(),
            next_cursor: page.next_cursor,
        })));
    };
    if q.limit.is_some() || q.cursor.is_some() {
        return Err(ApiError::BadRequest(
            "limit and cursor page the metric list; a series is bounded by from, to and step"
                .into(),
        ));
    }
    if metric.is_empty() || metric.len() > 255 {
        return Err(ApiError::BadRequest(
            "metric: expected a metric name of 1 to 255 bytes".into(),
        ));
    }
    let dimensions = clean("dimensions", q.dimensions)?
        .map(|d| parse_dimensions(&d))
        .transpose()?;
    let step_secs = step(q.step)?;
    let to = time("to", q.to)?.unwrap_or_else(|| state.clock.now());
    let from = match time("from", q.from)? {
        Some(f) => f,
        None => to
            .checked_sub_signed(DEFAULT_SPAN)
            .ok_or_else(|| ApiError::BadRequest("to: out of range".into()))?,
    };
    if from >= to {
        return Err(ApiError::BadRequest("from: expected before to".into()));
    }
    let span = to - from;
    if span > TimeDelta::days(MAX_SPAN_DAYS) {
        return Err(ApiError::BadRequest(format!(
            "from, to: at most {MAX_SPAN_DAYS} days apart"
        )));
    }
    let points = (span.num_seconds() + step_secs - 1) / step_secs;
    if points > MAX_POINTS {
        return Err(ApiError::BadRequest(format!(
            "step: {points} buckets asked for, at most {MAX_POINTS}; use a larger step"
        )));
    }

    let mut rows =
        db::metrics_named(&state.pool, &metric, dimensions.as_ref(), MAX_SERIES + 1).await?;
    let truncated = rows.len() as i64 > MAX_SERIES;
    rows.truncate(MAX_SERIES as usize);
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut by_metric: BTreeMap<i64, Vec<Point>> = BTreeMap::new();
    if !ids.is_empty() {
        for (id, t, v) in db::buckets(&state.pool, &ids, from, to, step_secs).await? {
            by_metric.entry(id).or_default().push(Point {
                t,
                value: finite(Some(v)),
            });
        }
    }
    Ok(Json(CloudWatchAnswer::Series(SeriesAnswer {
        metric,
        from,
        to,
        step_seconds: step_secs,
        series: rows
            .into_iter()
            .map(|r| Series {
                metric_id: r.id,
                points: by_metric.remove(&r.id).unwrap_or_default(),
                dimensions: r.dimensions,
                polled_through: r.polled_through,
            })
            .collect(),
        truncated,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_parse_one_way() {
        assert_eq!(
            parse_dimensions("Protocol:MQTT,RuleName:a:b").unwrap(),
            serde_json::json!({"Protocol": "MQTT", "RuleName": "a:b"})
        );
        assert_eq!(parse_dimensions("").unwrap(), serde_json::json!({}));
        for bad in ["Protocol", ":x", "A:1,A:2", "A:1,"] {
            assert!(parse_dimensions(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn steps_are_whole_minutes() {
        assert_eq!(step(None).unwrap(), 60);
        assert_eq!(step(Some("5m".into())).unwrap(), 300);
        for bad in ["30s", "90s", "1500ms", "soon", "", "100000d"] {
            assert!(step(Some(bad.into())).is_err(), "{bad}");
        }
    }
}
