//! Tracing set-up (`LOG_FORMAT=json` for production, `RUST_LOG` for filters) and a warn that
//! is rate-limited per reason, so a device spewing garbage cannot flood the logs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

/// Install the global subscriber once; later calls are ignored (tests call it repeatedly).
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,rumqttc=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Logs at most one warning per key per `period`, with the number suppressed in between.
pub struct RateLimitedWarn {
    period: Duration,
    state: Mutex<HashMap<&'static str, (Option<Instant>, u64)>>,
}

impl RateLimitedWarn {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Warn about `key` with `detail`, unless one was logged for `key` within the period.
    pub fn warn(&self, key: &'static str, detail: &dyn std::fmt::Display) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let entry = state.entry(key).or_insert((None, 0));
        if entry
            .0
            .is_none_or(|last| now.duration_since(last) >= self.period)
        {
            let suppressed = entry.1;
            *entry = (Some(now), 0);
            drop(state);
            tracing::warn!(reason = key, suppressed, "{detail}");
        } else {
            entry.1 += 1;
        }
    }
}
