//! Keeping webhook URLs out of delivery errors. A Slack-style path (`/services/T…/B…/X…`) or a
//! `?key=` query *is* the credential, yet reqwest puts the URL in its errors and receivers echo
//! it in their error pages. Every error text the worker stores (`notifications.last_error`,
//! `delivery_attempts.error`, served by the deliveries API) or logs goes through
//! [`UrlRedactor::redact`] first: the endpoint is named instead.
//!
//! Two passes, because neither alone is enough:
//! 1. the endpoint's own URL and its telling parts (path and query, long path segments and
//!    query values), wherever they appear, even without a scheme (`Cannot POST /services/…`);
//! 2. anything URL-like (`scheme://…`, JSON-escaped `scheme:\/\/…` too), whoever's it is.
//!
//! The migration `20261130000001_scrub_delivery_errors.sql` applies pass 2 to the rows stored
//! before this existed, with the same pattern ([`URL_PATTERN`]).

use std::sync::LazyLock;

use regex::Regex;

/// What replaces a URL that is not the endpoint's own (and, in the migration, every URL).
pub const URL_PLACEHOLDER: &str = "<url redacted>";

/// Anything URL-like: a scheme, `://` (or `:\/\/` as JSON escapes it), and everything up to
/// whitespace, a quote or an angle bracket. Greedy on purpose: cutting a URL short would leave
/// its secret tail behind. The migration uses the same pattern in Postgres' syntax.
pub const URL_PATTERN: &str = r#"[A-Za-z][A-Za-z0-9+.-]*:(//|\\/\\/)[^\s"'<>]*"#;

static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(URL_PATTERN).expect("URL_PATTERN is a valid regex"));

/// Path segments at least this long are cut out wherever they appear alone (a receiver saying
/// "unknown token XXXX"); shorter ones are words like `services` or `hooks` whose removal would
/// only garble the message.
const MIN_PATH_SEGMENT: usize = 12;
/// The same for query values, which are far more often credentials (`?key=`, `?token=`).
const MIN_QUERY_VALUE: usize = 6;

/// Replace every URL-like substring with [`URL_PLACEHOLDER`].
pub fn redact_urls(text: &str) -> String {
    URL.replace_all(text, URL_PLACEHOLDER).into_owned()
}

/// Cuts one endpoint's URL (and the credential-bearing parts of it) out of error texts.
#[derive(Clone)]
pub struct UrlRedactor {
    /// What replaces the endpoint's own URL: `<endpoint NAME>`.
    label: String,
    /// Substrings to replace, longest first, so that the whole URL goes before its parts.
    needles: Vec<String>,
}

impl std::fmt::Debug for UrlRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlRedactor")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl UrlRedactor {
    pub fn new(endpoint: &str, url: &str) -> Self {
        let mut needles = vec![url.to_string()];
        if let Ok(u) = reqwest::Url::parse(url) {
            // reqwest reports the normalised form (`HTTP://Host` → `http://host/`).
            needles.push(u.as_str().to_string());
            let path = u.path();
            if path.len() > 1 {
                needles.push(path.to_string());
            }
            if let Some(q) = u.query().filter(|q| !q.is_empty()) {
                needles.push(format!("{path}?{q}"));
                needles.push(q.to_string());
                let raw = q
                    .split('&')
                    .map(|p| p.split_once('=').map_or(p, |(_, v)| v));
                // and decoded, as a receiver may echo them
                let decoded: Vec<String> = u.query_pairs().map(|(_, v)| v.into_owned()).collect();
                needles.extend(
                    raw.map(String::from)
                        .chain(decoded)
                        .filter(|v| v.len() >= MIN_QUERY_VALUE),
                );
            }
            needles.extend(
                u.path_segments()
                    .into_iter()
                    .flatten()
                    .filter(|s| s.len() >= MIN_PATH_SEGMENT)
                    .map(String::from),
            );
            needles.extend(u.password().map(String::from));
        }
        needles.retain(|n| !n.is_empty());
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Self {
            label: format!("<endpoint {endpoint}>"),
            needles,
        }
    }

    /// `text` with the endpoint's URL and its parts replaced by `<endpoint NAME>`, then any
    /// other URL by [`URL_PLACEHOLDER`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), &self.label);
            }
        }
        redact_urls(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://hooks.example.com/services/T0001/B0002/XXXXsecretXXXXpath?key=k3y-s3cr3t-value&v=2";

    fn clean(s: &str) {
        for secret in ["XXXXsecretXXXXpath", "k3y-s3cr3t-value", "T0001/B0002"] {
            assert!(!s.contains(secret), "{secret} in {s:?}");
        }
    }

    #[test]
    fn the_endpoint_is_named_instead_of_its_url() {
        let r = UrlRedactor::new("ops", URL);
        let s = r.redact(&format!(
            "error sending request for url ({URL}): connection refused"
        ));
        assert_eq!(
            s,
            "error sending request for url (<endpoint ops>): connection refused"
        );
        // normalised by the URL parser
        let s = r.redact("for url (https://hooks.example.com/services/T0001/B0002/XXXXsecretXXXXpath?key=k3y-s3cr3t-value&v=2)");
        clean(&s);
        assert!(s.contains("<endpoint ops>"), "{s}");
    }

    #[test]
    fn echoed_parts_are_cut_out() {
        let r = UrlRedactor::new("ops", URL);
        for body in [
            "Cannot POST /services/T0001/B0002/XXXXsecretXXXXpath?key=k3y-s3cr3t-value&v=2",
            "no route /services/T0001/B0002/XXXXsecretXXXXpath",
            "invalid token XXXXsecretXXXXpath",
            r#"{"error":"bad key","key":"k3y-s3cr3t-value"}"#,
            "query was key=k3y-s3cr3t-value&v=2",
        ] {
            let s = r.redact(body);
            clean(&s);
            assert!(s.contains("<endpoint ops>"), "{s}");
        }
        // short, common words stay readable
        assert_eq!(r.redact("services unavailable"), "services unavailable");
        // percent-decoded query values too
        let r = UrlRedactor::new("g", "https://chat.example/hook?key=a%2Fsecret%2Fvalue");
        assert_eq!(r.redact("bad key a/secret/value"), "bad key <endpoint g>");
    }

    #[test]
    fn any_other_url_is_replaced() {
        let r = UrlRedactor::new("ops", "http://127.0.0.1:9/");
        assert_eq!(
            r.redact("see https://status.example.com/incidents?t=1 or ftp://x/y."),
            "see <url redacted> or <url redacted>"
        );
        assert_eq!(
            redact_urls(r#"{"url":"https:\/\/hooks.example.com\/services\/T\/B\/X"}"#),
            r#"{"url":"<url redacted>"}"#
        );
        assert_eq!(redact_urls("HTTP 500: nope"), "HTTP 500: nope");
        assert_eq!(
            redact_urls("ratio 3:1, time 10:00"),
            "ratio 3:1, time 10:00"
        );
    }

    #[test]
    fn a_url_with_a_password() {
        let r = UrlRedactor::new("ops", "https://user:hunter2-long-password@example.com/x");
        assert_eq!(
            r.redact("auth hunter2-long-password failed"),
            "auth <endpoint ops> failed"
        );
    }
}
