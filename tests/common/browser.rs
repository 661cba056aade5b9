//! Browser tests: Debian's headless Chromium driven through chromedriver (WebDriver, with
//! fantoccini), against the router served by the service's own accept loop on a free port,
//! with the live-update listener running. `scripts/test` installs `chromium` and
//! `chromium-driver` when missing; without them these tests fail and say how to get them
//! (set `FLEETWATCH_SKIP_BROWSER=1` to skip them knowingly on a machine without a browser).
//!
//! Each test gets its own chromedriver on a free port and its own Chromium profile directory,
//! so browser tests run in parallel with everything else.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::http::TestApp;

/// Whether browser tests are to be skipped on this machine (said, never silent).
pub fn skipped() -> bool {
    if std::env::var_os("FLEETWATCH_SKIP_BROWSER").is_some() {
        eprintln!("FLEETWATCH_SKIP_BROWSER is set: browser test skipped");
        return true;
    }
    false
}

fn find(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
}

/// The app served on a free local port, with the live listener on its hub.
pub struct Served {
    pub addr: SocketAddr,
    cancel: CancellationToken,
}

impl Served {
    pub async fn start(app: &TestApp, pool: &PgPool) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(fleetwatch::http::server::serve(
            listener,
            app.app.clone(),
            fleetwatch::http::server::Limits {
                max_connections: 256,
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(30),
                shutdown_grace: Duration::from_secs(1),
            },
            fleetwatch::metrics::Metrics::new(),
            cancel.clone(),
        ));
        tokio::spawn(fleetwatch::http::web::live::listen(
            app.state.live.clone(),
            pool.clone(),
            cancel.clone(),
        ));
        Served { addr, cancel }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A headless Chromium session.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]).expect(
            "no Chromium: `apt-get install chromium chromium-driver` (scripts/test does it), \
             or set FLEETWATCH_SKIP_BROWSER=1 to skip browser tests",
        );
        let driver_bin = find(&["/usr/bin/chromedriver"])
            .expect("no chromedriver: `apt-get install chromium-driver` (scripts/test does it)");
        let port = super::free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-extensions",
                    "--no-first-run", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            let mut b =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            b.capabilities(caps.clone());
            match b.connect(&url).await {
                Ok(client) => {
                    // A page that does not load in 15 s is a failure, not a slow test (a leaked
                    // event stream once stalled the sixth navigation for a minute).
                    client
                        .update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
                            None,
                            Some(Duration::from_secs(15)),
                            None,
                        ))
                        .await
                        .expect("page-load timeout");
                    return Browser {
                        client,
                        driver,
                        _profile: profile,
                    };
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not accept a session: {last:?}");
    }

    /// Sign in through the login form; lands on the overview.
    pub async fn login(&self, served: &Served, name: &str) {
        let c = &self.client;
        c.goto(&served.url("/login")).await.unwrap();
        c.find(Locator::Id("username"))
            .await
            .unwrap()
            .send_keys(name)
            .await
            .unwrap();
        c.find(Locator::Id("password"))
            .await
            .unwrap()
            .send_keys(super::web::PASSWORD)
            .await
            .unwrap();
        c.find(Locator::Css("form[action='/login'] button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_for("signed in", || async {
            c.find(Locator::Css(".who .user")).await.is_ok()
        })
        .await;
    }

    /// Wait up to 10 s for `check` to hold.
    pub async fn wait_for<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..100 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let html = self.client.source().await.unwrap_or_default();
        panic!("timed out waiting for {what}; page: {html}");
    }

    /// The text of the first element matching `css` (empty when none).
    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Run `js` (a function body) and return its value.
    pub async fn js(&self, js: &str) -> serde_json::Value {
        self.client.execute(js, vec![]).await.unwrap()
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
