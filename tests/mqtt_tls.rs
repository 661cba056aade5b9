//! `mqtts://` with a CA and a client certificate, as AWS IoT Core is reached: a private
//! Mosquitto with a TLS listener that requires client certificates, made with `openssl`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use fleetwatch::app::App;
use sqlx::PgPool;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost and a client certificate, all EC P-256.
fn make_pki(dir: &Path) {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=fleetwatch-test-ca",
    ];
    ca.extend(key);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    for (name, cn, ext) in [
        (
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "fleetwatch", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (keyfile, csr, pem, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(
            dir.join(&extfile),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"),
        )
        .unwrap();
        let subj = format!("/CN={cn}");
        let mut req = vec![
            "req",
            "-subj",
            subj.as_str(),
            "-keyout",
            keyfile.as_str(),
            "-out",
            csr.as_str(),
        ];
        req.extend(key);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &extfile,
            ],
        );
    }
    // Mosquitto drops to its own user and must read these.
    for f in std::fs::read_dir(dir).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let p = f.unwrap().path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

#[sqlx::test(migrator = "fleetwatch::db::MIGRATOR")]
async fn connects_over_tls_with_a_client_certificate(pool: PgPool) {
    let pki = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(pki.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    make_pki(pki.path());
    let d = pki.path().display();
    let broker = Broker::start_conf(
        false,
        &format!(
            "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\nuse_identity_as_username true\n"
        ),
    )
    .await;

    let mut cfg = config(&broker);
    cfg.mqtt.url = format!("mqtts://localhost:{}", broker.port);
    cfg.mqtt.ca_file = Some(pki.path().join("ca.pem"));
    cfg.mqtt.cert_file = Some(pki.path().join("client.pem"));
    cfg.mqtt.key_file = Some(pki.path().join("client.key"));
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
