//! Leadership: one detector leads through a Postgres advisory lock on a dedicated connection;
//! a standby takes over when the leader's session ends.

use fleetwatch::detect::leader::Leader;
use sqlx::PgPool;

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
    assert!(b.ensure().await);
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
    assert!(
        a.ensure().await,
        "the standby takes the lock the killed leader held"
    );
    assert!(!b.ensure().await, "the killed leader reconnects as standby");
}
