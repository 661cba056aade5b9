//! What text typed by people (API bodies, later the dashboard's forms) must satisfy before it is
//! stored and shown, and [`Invalid`], the error of every validation rule in `domain`.

use std::fmt;

/// A value a person gave that a rule refuses; the message names the field, so it can be shown
/// as is (`422` in the API, beside the field in a form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// The longest name a request may give as "on behalf of" (`by`, `created_by`).
pub const MAX_NAME: usize = 200;
/// The longest note or comment.
pub const MAX_NOTE: usize = 4000;

/// Text that goes into Postgres and onto pages: no NUL (Postgres `text` refuses it), not blank,
/// at most `max` characters.
pub fn text(name: &str, v: &str, max: usize) -> Result<(), Invalid> {
    if v.contains('\0') {
        return Err(Invalid(format!("{name}: NUL characters are not allowed")));
    }
    if v.trim().is_empty() {
        return Err(Invalid(format!("{name}: must not be empty")));
    }
    if v.chars().count() > max {
        return Err(Invalid(format!("{name}: at most {max} characters")));
    }
    Ok(())
}

/// [`text`] for a field that may be absent.
pub fn optional_text(name: &str, v: Option<&str>, max: usize) -> Result<(), Invalid> {
    v.map_or(Ok(()), |v| text(name, v, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_refuses_nul_blank_and_long() {
        assert_eq!(text("note", "fine", 10), Ok(()));
        assert_eq!(
            text("note", "a\0b", 10),
            Err(Invalid("note: NUL characters are not allowed".into()))
        );
        assert_eq!(
            text("note", " \t\n", 10),
            Err(Invalid("note: must not be empty".into()))
        );
        // characters, not bytes
        assert_eq!(text("note", &"é".repeat(10), 10), Ok(()));
        assert_eq!(
            text("note", &"é".repeat(11), 10),
            Err(Invalid("note: at most 10 characters".into()))
        );
        assert_eq!(optional_text("note", None, 1), Ok(()));
        assert!(optional_text("note", Some(""), 1).is_err());
    }
}
