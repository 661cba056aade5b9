//! Leadership: leader-only tasks (the detector, the coming pollers) run only where a Postgres
//! advisory lock is held, on a dedicated connection (a pooled connection could be recycled and
//! lose the lock silently). The lock is re-checked before every leader-only tick
//! (`app::tasks::Leadership`, the service over this lock); a second replica is a hot standby
//! that takes over when the leader's session ends.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::logging::RateLimitedWarn;

/// The advisory lock key: "fleetwatch" spelled in a number, arbitrary but fixed.
pub const LOCK_KEY: i64 = 0x666c_6565_7477_6174;

/// How often each leadership warning may be logged: a replica whose database is away tries
/// every tick, and one line a minute says as much as one a tick.
const WARN_PERIOD: Duration = Duration::from_secs(60);

pub struct Leader {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
    warn: RateLimitedWarn,
    /// How many times the lock was taken: a new number is a new leadership, even when the
    /// lock was lost and retaken between two checks.
    acquired: u64,
}

impl Leader {
    pub fn new(options: PgConnectOptions) -> Self {
        Self {
            options,
            conn: None,
            warn: RateLimitedWarn::new(WARN_PERIOD),
            acquired: 0,
        }
    }

    /// How many times this process took the lock (the current leadership's number while held).
    pub fn acquisitions(&self) -> u64 {
        self.acquired
    }

    /// Whether we hold the lock now; tries to take it if not. Never errors: a lost database
    /// simply means we are not the leader this tick.
    pub async fn ensure(&mut self) -> bool {
        if let Some(conn) = self.conn.as_mut() {
            let held: Result<bool, _> = sqlx::query_scalar(
                r#"select exists(select 1 from pg_locks where locktype = 'advisory'
                   and pid = pg_backend_pid() and granted
                   and ((classid::bigint << 32) | objid::bigint) = $1)"#,
            )
            .bind(LOCK_KEY)
            .fetch_one(&mut *conn)
            .await;
            match held {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    self.warn.warn(
                        "leader_connection_lost",
                        &format_args!("leader connection lost: {e}"),
                    );
                    self.conn = None;
                }
            }
        }
        if self.conn.is_none() {
            match PgConnection::connect_with(&self.options).await {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    self.warn.warn(
                        "leader_connect_failed",
                        &format_args!("cannot open the leader connection: {e}"),
                    );
                    return false;
                }
            }
        }
        let conn = self.conn.as_mut().expect("just set");
        match sqlx::query_scalar::<_, bool>("select pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut *conn)
            .await
        {
            Ok(got) => {
                if got {
                    self.acquired += 1;
                    tracing::info!("became the leader");
                }
                got
            }
            Err(e) => {
                self.warn.warn(
                    "leader_lock_failed",
                    &format_args!("advisory lock query failed: {e}"),
                );
                self.conn = None;
                false
            }
        }
    }

    /// Give the lock up (shutdown), so a standby takes over at once.
    pub async fn release(&mut self) {
        if let Some(c) = self.conn.take() {
            let _ = c.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_database_is_warned_about_once_per_period() {
        let logs = crate::logging::Captured::default();
        let _guard = logs.install();
        // Nothing listens on port 1: every connect is refused at once.
        let options = PgConnectOptions::new().host("127.0.0.1").port(1);
        let mut leader = Leader::new(options);
        for _ in 0..20 {
            assert!(!leader.ensure().await);
        }
        let text = logs.text();
        assert_eq!(
            text.matches("cannot open the leader connection").count(),
            1,
            "{text}"
        );
    }
}
