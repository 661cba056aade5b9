//! Tracing set-up (`LOG_FORMAT=json` for production, `RUST_LOG` for filters, `TEST_LOG` for
//! tests) and a warn that is rate-limited per reason, so a device spewing garbage cannot flood
//! the logs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber once; later calls are ignored (tests call it repeatedly).
pub fn init() {
    install(false);
}

/// [`init`], writing to standard error (for commands whose standard output is their result).
pub fn init_stderr() {
    install(true);
}

fn install(stderr: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,rumqttc=warn,rumqttd=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match (json, stderr) {
        (true, true) => builder.json().with_writer(std::io::stderr).try_init(),
        (true, false) => builder.json().try_init(),
        (false, true) => builder.with_writer(std::io::stderr).try_init(),
        (false, false) => builder.try_init(),
    };
}

/// For tests: install the subscriber only when `TEST_LOG` is set (`TEST_LOG=1 cargo nextest
/// run …`, filters from `RUST_LOG` as usual), so that a test run logs nothing unless asked.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init();
    }
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

/// Log output captured in memory, for tests that assert what is (or is not) logged: a secret
/// that must never appear, a warning that must be rate-limited.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Route this thread's events (all levels, every crate) here while the guard lives. With a
    /// current-thread runtime, that covers every task the test runs. It also installs the
    /// `log` → `tracing` bridge, so crates that log through `log` (reqwest) are captured too.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(self.clone())
            .finish()
            .set_default()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
