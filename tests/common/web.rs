//! The dashboard harness: staff users made through the CLI code path, signed in through
//! `POST /login`, and requests as their browser would send them (session cookie, same-origin
//! Fetch-Metadata on unsafe methods, form bodies). Pages are read with [`Staff::get`],
//! fragments with [`Staff::fragment`] (htmx's headers), actions with [`Staff::post`].

use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, SET_COOKIE};
use axum::http::{Method, Request, StatusCode};
use fleetwatch::config::{Config, Secret};
use fleetwatch::users::{self, UserCommand};
use sqlx::PgPool;

use super::http::{respond, Resp, TestApp};

/// Every test user's password.
pub const PASSWORD: &str = "correct horse battery";

/// `application/x-www-form-urlencoded` body of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                fleetwatch::http::web::view::encode(k),
                fleetwatch::http::web::view::encode(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Create a user (`viewer` or `operator`) through `fleetwatch user create`'s code, password on
/// "stdin".
pub async fn create_user(pool: &PgPool, name: &str, role: &str) {
    let mut cfg = Config::default();
    cfg.database.url = Secret::new(database_url(pool));
    let mut input = std::io::Cursor::new(format!("{PASSWORD}\n").into_bytes());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    users::run_cli(
        &cfg,
        UserCommand::Create {
            name: name.into(),
            role: role.into(),
        },
        &mut input,
        &mut out,
        &mut err,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}: {}", String::from_utf8_lossy(&err)));
}

/// The URL of the test's own database.
pub fn database_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (head, _) = base.rsplit_once('/').expect("a database in DATABASE_URL");
    format!("{head}/{}", o.get_database().expect("a database name"))
}

/// A signed-in staff member's browser.
pub struct Staff<'a> {
    pub app: &'a TestApp,
    pub name: String,
    /// The session token (the cookie's value).
    pub token: String,
}

impl<'a> Staff<'a> {
    /// Create `name` with `role` and sign in.
    pub async fn new(app: &'a TestApp, pool: &PgPool, name: &str, role: &str) -> Staff<'a> {
        create_user(pool, name, role).await;
        Self::login(app, name).await
    }

    /// Sign in as an existing user.
    pub async fn login(app: &'a TestApp, name: &str) -> Staff<'a> {
        let r = send(
            app,
            Method::POST,
            "/login",
            &[("sec-fetch-site", "same-origin")],
            Some(form(&[("username", name), ("password", PASSWORD)])),
        )
        .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "login: {}", r.text());
        let c = r.header(SET_COOKIE).expect("a Set-Cookie");
        let token = c
            .strip_prefix("fleetwatch_session=")
            .and_then(|v| v.split(';').next())
            .expect("the session cookie")
            .to_string();
        Staff {
            app,
            name: name.to_string(),
            token,
        }
    }

    fn cookie(&self) -> String {
        format!("fleetwatch_session={}", self.token)
    }

    /// A page, as a navigation (`Accept: text/html`).
    pub async fn get(&self, uri: &str) -> Resp {
        let c = self.cookie();
        send(
            self.app,
            Method::GET,
            uri,
            &[("cookie", &c), ("accept", "text/html")],
            None,
        )
        .await
    }

    /// A page that must answer 200; its HTML.
    pub async fn html(&self, uri: &str) -> String {
        let r = self.get(uri).await;
        assert_eq!(r.status, StatusCode::OK, "GET {uri}: {}", r.text());
        assert!(
            r.content_type().starts_with("text/html"),
            "{}",
            r.content_type()
        );
        let html = r.text();
        super::http::assert_no_inline_code(&html);
        html
    }

    /// A fragment re-fetch as htmx sends it (`HX-Request`, `HX-Target: target`).
    pub async fn fragment(&self, uri: &str, target: &str) -> Resp {
        let c = self.cookie();
        send(
            self.app,
            Method::GET,
            uri,
            &[
                ("cookie", &c),
                ("hx-request", "true"),
                ("hx-target", target),
            ],
            None,
        )
        .await
    }

    /// A form post from a page of the site (same-origin).
    pub async fn post(&self, uri: &str, pairs: &[(&str, &str)]) -> Resp {
        let c = self.cookie();
        send(
            self.app,
            Method::POST,
            uri,
            &[
                ("cookie", &c),
                ("sec-fetch-site", "same-origin"),
                ("accept", "text/html"),
            ],
            Some(form(pairs)),
        )
        .await
    }
}

/// Any request, with `headers`; a body is sent as a form.
pub async fn send(
    app: &TestApp,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Resp {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if body.is_some() {
        b = b.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    respond(
        &app.app,
        b.body(Body::from(body.unwrap_or_default())).unwrap(),
    )
    .await
}

/// `s` as askama writes it into HTML (numeric entities for `& < > " '`), to find text from a
/// page's data in its HTML.
pub fn escaped(s: &str) -> String {
    s.replace('&', "&#38;")
        .replace('<', "&#60;")
        .replace('>', "&#62;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}
