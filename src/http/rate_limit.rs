//! Per-token request-rate limiting for `/api`: a token bucket per stored API token, in this
//! process's memory. Only authenticated requests reach it, so the map holds at most one entry
//! per valid token and strangers cannot grow it. Each replica limits on its own (a client spread
//! over N replicas gets N times the rate): the point is to keep one runaway script from starving
//! the others, not exact accounting, so nothing is shared through Postgres.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets beyond this many trigger a sweep of the full (idle) ones.
const SWEEP_ABOVE: usize = 1024;

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<i64, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `per_second` requests a second sustained, `burst` at once after a quiet spell.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second: if per_second.is_finite() && per_second > 0.0 {
                per_second
            } else {
                f64::MIN_POSITIVE
            },
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn from_config(api: &crate::config::ApiConfig) -> Self {
        Self::new(api.rate_limit_per_second, api.rate_limit_burst)
    }

    /// Take one request for `key` at `now`; when none is left, how long until one is.
    pub fn check(&self, key: i64, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        *b = self.refill(*b, now);
        let outcome = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - b.tokens) / self.per_second).min(86_400.0),
            ))
        };
        if buckets.len() > SWEEP_ABOVE {
            // Revoked and idle tokens leave full buckets behind; a full bucket is the same as
            // none, so dropping them changes nobody's limit.
            buckets.retain(|_, b| self.refill(*b, now).tokens < self.burst);
        }
        outcome
    }

    fn refill(&self, b: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        Bucket {
            tokens: (b.tokens + elapsed * self.per_second).min(self.burst),
            at: now.max(b.at),
        }
    }
}

impl Default for RateLimiter {
    /// The `[api]` defaults: 20 requests a second, bursts of 40.
    fn default() -> Self {
        Self::from_config(&crate::config::ApiConfig::default())
    }
}

/// A `Retry-After` in whole seconds: rounded up, at least 1, so a client that obeys it is let in.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(1, t0).is_ok());
        }
        let wait = l.check(1, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // another key has its own bucket
        assert!(l.check(2, t0).is_ok());
        // half a second later one request is back, and only one
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.check(1, t1).is_ok());
        assert!(l.check(1, t1).is_err());
        // after a long pause the bucket is full again, not fuller
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(l.check(1, t2).is_ok());
        }
        assert!(l.check(1, t2).is_err());
    }

    #[test]
    fn refused_requests_do_not_dig_deeper() {
        let l = RateLimiter::new(1.0, 1);
        let t0 = Instant::now();
        assert!(l.check(7, t0).is_ok());
        for _ in 0..100 {
            assert!(l.check(7, t0).is_err());
        }
        assert!(l.check(7, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn an_instant_from_the_past_neither_refills_nor_panics() {
        let l = RateLimiter::new(1.0, 1);
        let t0 = Instant::now() + Duration::from_secs(10);
        assert!(l.check(1, t0).is_ok());
        assert!(l.check(1, t0 - Duration::from_secs(5)).is_err());
    }

    #[test]
    fn idle_buckets_are_swept() {
        let l = RateLimiter::new(100.0, 5);
        let t0 = Instant::now();
        for k in 0..2000 {
            let _ = l.check(k, t0);
        }
        let _ = l.check(-1, t0 + Duration::from_secs(1));
        assert!(l.buckets.lock().unwrap().len() <= 1);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }
}
