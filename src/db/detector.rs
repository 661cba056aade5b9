//! The detector's own memory in Postgres: what the heartbeat pass remembers about an open gap
//! (columns of `alerts` that only the detector reads; `details` is the API's).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::domain::device::Gap;

/// How an open gap is classified and what it is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapMemory {
    pub class: Gap,
    /// Arrival time of the last data when the gap opened: newer data means the device is back.
    pub last_data_at: Option<DateTime<Utc>>,
    /// The newest device timestamp when the gap opened: the backlog's coverage is judged by it.
    pub last_device_ts: Option<DateTime<Utc>>,
}

/// Remember `m` for the heartbeat-gap alert `alert_id`.
pub async fn remember_gap(
    conn: impl PgExecutor<'_>,
    alert_id: i64,
    m: &GapMemory,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"update alerts set gap_class = $2, gap_last_data_at = $3, gap_last_device_ts = $4
           where id = $1"#,
    )
    .bind(alert_id)
    .bind(m.class)
    .bind(m.last_data_at)
    .bind(m.last_device_ts)
    .execute(conn)
    .await?;
    Ok(())
}
