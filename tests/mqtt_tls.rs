//! `mqtts://` with a CA and a client certificate, as AWS IoT Core is reached: a private
//! Mosquitto with a TLS listener that requires client certificates, made with `openssl`.

mod common;

use common::*;
use fleetwatch::app::App;
use sqlx::PgPool;

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn connects_over_tls_with_a_client_certificate(pool: PgPool) {
    let pki = common::pki::Pki::new();
    let broker = Broker::start_conf(false, &pki.mosquitto_conf()).await;

    let mut cfg = config(&broker);
    cfg.mqtt.url = format!("mqtts://localhost:{}", broker.port);
    cfg.mqtt.ca_file = Some(pki.file("ca.pem"));
    cfg.mqtt.cert_file = Some(pki.file("client.pem"));
    cfg.mqtt.key_file = Some(pki.file("client.key"));
    let app = App::build_with_pool(cfg.clone(), pool.clone(), system_clock())
        .await
        .unwrap();
    eventually(15, "connected over TLS", || async {
        app.state.mqtt.iter().all(|c| c.snapshot().connected)
    })
    .await;
    app.shutdown().await.unwrap();

    // Without the client certificate the broker refuses us: the service keeps retrying and
    // reports why on /healthz instead of crashing.
    cfg.mqtt.cert_file = None;
    cfg.mqtt.key_file = None;
    let app = App::build_with_pool(cfg, pool, system_clock())
        .await
        .unwrap();
    eventually(15, "a connection error is reported", || async {
        let s = app.state.mqtt[0].snapshot();
        !s.connected && s.last_error.is_some()
    })
    .await;
    app.shutdown().await.unwrap();
}
