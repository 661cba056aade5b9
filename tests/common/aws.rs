//! AWS-compatible servers for tests, one per test on a free port, killed on drop: LocalStack
//! for CloudWatch (the SDK speaks RPC-v2 CBOR to it, which moto lacks) and moto for the IoT
//! registry API (LocalStack's free build has none). `scripts/aws-tools` installs both into
//! local venvs; `scripts/test` exports where they are:
//! `FLEETWATCH_LOCALSTACK_PYTHON` and `FLEETWATCH_MOTO_SERVER` (defaults: the repository's
//! `.venv-localstack` and `.venv-moto`). A missing server fails the test, never skips it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_cloudwatch::config::Credentials;

use super::free_port;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    LocalStack,
    Moto,
}

/// A running server; killed when dropped.
pub struct AwsServer {
    pub kind: Kind,
    pub port: u16,
    child: Child,
    // LocalStack keeps state and caches under its volume directory: one per instance.
    _dir: tempfile::TempDir,
}

fn tool(env: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default));
    assert!(
        p.exists(),
        "{} not found: run scripts/aws-tools (scripts/test does) or set {env}",
        p.display()
    );
    p
}

impl AwsServer {
    /// LocalStack serving CloudWatch only, in host mode (no Docker).
    pub async fn localstack() -> Self {
        let python = tool(
            "FLEETWATCH_LOCALSTACK_PYTHON",
            ".venv-localstack/bin/python",
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(python)
            .args(["-m", "localstack.runtime.main"])
            // Without the first two it believes it runs in a container and may rewrite the
            // machine's resolver configuration.
            .env("OVERRIDE_IN_DOCKER", "0")
            .env("DNS_ADDRESS", "0")
            .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("SERVICES", "cloudwatch")
            .env("PERSISTENCE", "0")
            .env("LOCALSTACK_VOLUME_DIR", dir.path().join("volume"))
            .env("FILESYSTEM_ROOT", dir.path().join("fs"))
            .env("SKIP_SSL_CERT_DOWNLOAD", "1")
            .env("DISABLE_EVENTS", "1")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting LocalStack");
        let s = Self {
            kind: Kind::LocalStack,
            port,
            child,
            _dir: dir,
        };
        s.wait_ready("/_localstack/health", Duration::from_secs(60))
            .await;
        s
    }

    /// moto's server (every service it emulates; tests use IoT).
    pub async fn moto() -> Self {
        let server = tool("FLEETWATCH_MOTO_SERVER", ".venv-moto/bin/moto_server");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let s = Self {
            kind: Kind::Moto,
            port,
            child,
            _dir: dir,
        };
        s.wait_ready("/moto-api/", Duration::from_secs(30)).await;
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self, path: &str, within: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        let url = format!("{}{path}", self.url());
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{:?} on port {} not ready within {within:?}",
                self.kind,
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An SDK configuration that talks to this server: fixed test credentials, us-east-1,
    /// the service's HTTP client (`fleetwatch::aws::http_client`).
    pub fn sdk_config(&self) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.url())
            .credentials_provider(aws_sdk_cloudwatch::config::SharedCredentialsProvider::new(
                Credentials::new("test", "test", None, None, "tests"),
            ))
            .http_client(fleetwatch::aws::http_client())
            .build()
    }

    /// The environment that points the real binary at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        let service = match self.kind {
            Kind::LocalStack => "AWS_ENDPOINT_URL_CLOUDWATCH",
            Kind::Moto => "AWS_ENDPOINT_URL_IOT",
        };
        vec![
            (service.into(), self.url()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ]
    }
}

impl Drop for AwsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
