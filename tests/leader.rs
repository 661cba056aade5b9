//! Leadership: one detector leads through a Postgres advisory lock on a dedicated connection;
//! a standby takes over when the leader's session ends.

use fleetwatch::detect::leader::Leader;
use sqlx::PgPool;

/// A session's locks go a moment after it ends (a close or pg_terminate_backend only starts
/// that), so a standby may need a few tries.
async fn becomes_leader(l: &mut Leader) -> bool {
    for _ in 0..100 {
        if l.ensure().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn one_leader_at_a_time_and_a_standby_takes_over(pool: PgPool) {
    let opts = (*pool.connect_options()).clone();
    let mut a = Leader::new(opts.clone());
    let mut b = Leader::new(opts.clone());
    assert!(a.ensure().await, "the first takes the lock");
    assert!(!b.ensure().await, "the second stands by");
    // re-checked every tick: still held, still refused
    for _ in 0..3 {
        assert!(a.ensure().await);
        assert!(!b.ensure().await);
    }
    // the leader's session ends (shutdown, crash, network): the standby takes over
    a.release().await;
    assert!(becomes_leader(&mut b).await);
    assert!(!a.ensure().await, "the old leader is now the standby");

    // a leader whose lock was lost behind its back notices on the next check
    let pid: i32 = sqlx::query_scalar(
        "select pid from pg_locks where locktype = 'advisory' and granted and database = \
         (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let _: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    // pg_terminate_backend only signals: the session (and its lock) ends a moment later
    let mut took_over = false;
    for _ in 0..100 {
        if a.ensure().await {
            took_over = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        took_over,
        "the standby takes the lock the killed leader held"
    );
    assert!(!b.ensure().await, "the killed leader reconnects as standby");
}
