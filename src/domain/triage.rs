//! What people attach to an alert while handling it: an acknowledgement (with a note) and a
//! ticket reference (with a link). The API and the dashboard's forms both ask these rules.

use super::input::{self, Invalid, MAX_NAME, MAX_NOTE};

/// The longest ticket reference (e.g. `OPS-123`).
pub const MAX_TICKET_REF: usize = 200;
/// The longest ticket URL.
pub const MAX_TICKET_URL: usize = 2000;

/// An acknowledgement: the optional name it is made on behalf of (`by`) and note.
pub fn validate_ack(by: Option<&str>, note: Option<&str>) -> Result<(), Invalid> {
    input::optional_text("by", by, MAX_NAME)?;
    input::optional_text("note", note, MAX_NOTE)
}

/// A ticket link: a reference, an optional http(s) URL (it is shown as a link, so no
/// `javascript:` or other schemes), and the optional name it is linked on behalf of.
pub fn validate_ticket(
    reference: &str,
    url: Option<&str>,
    by: Option<&str>,
) -> Result<(), Invalid> {
    input::text("ref", reference, MAX_TICKET_REF)?;
    if let Some(u) = url {
        input::text("url", u, MAX_TICKET_URL)?;
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            return Err(Invalid("url: expected an http(s) URL".into()));
        }
    }
    input::optional_text("by", by, MAX_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_checks_its_texts() {
        assert_eq!(validate_ack(None, None), Ok(()));
        assert_eq!(validate_ack(Some("alice"), Some("on it")), Ok(()));
        assert_eq!(
            validate_ack(Some(""), None),
            Err(Invalid("by: must not be empty".into()))
        );
        assert_eq!(
            validate_ack(None, Some(&"n".repeat(4001))),
            Err(Invalid("note: at most 4000 characters".into()))
        );
    }

    #[test]
    fn ticket_urls_are_http_only() {
        assert_eq!(validate_ticket("OPS-1", None, None), Ok(()));
        assert_eq!(
            validate_ticket("OPS-1", Some("https://t.example/OPS-1"), Some("bob")),
            Ok(())
        );
        assert_eq!(
            validate_ticket("OPS-1", Some("javascript:alert(1)"), None),
            Err(Invalid("url: expected an http(s) URL".into()))
        );
        assert_eq!(
            validate_ticket(" ", None, None),
            Err(Invalid("ref: must not be empty".into()))
        );
        assert_eq!(
            validate_ticket("OPS-1", Some(""), None),
            Err(Invalid("url: must not be empty".into()))
        );
        assert_eq!(
            validate_ticket("OPS-1", None, Some("\0")),
            Err(Invalid("by: NUL characters are not allowed".into()))
        );
    }
}
