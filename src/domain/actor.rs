//! Who did something, as audit trails record it: the authenticated principal (never taken from a
//! request body), and, beside it, the name the request said it acted for.
//!
//! Principals are written in one format: `token:<id>:<name>` for API tokens
//! (`token:0:bootstrap` for the bootstrap token), `fleetwatch` for the service's own decisions,
//! and `user:<name>` once staff log in to the dashboard.

use serde_json::{Map, Value};

/// The actor of a change made through the API or the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The authenticated principal: `token:<id>:<name>` or `user:<name>`.
    pub principal: String,
    /// The name the request gave (e.g. the person a ticketing script acts for). Shown, never
    /// trusted: any token may claim any name here.
    pub on_behalf_of: Option<String>,
}

impl Actor {
    /// `details` of a trail event, with `on_behalf_of` added when the request gave a name.
    pub fn details(&self, mut details: Map<String, Value>) -> Value {
        if let Some(name) = &self.on_behalf_of {
            details.insert("on_behalf_of".into(), Value::String(name.clone()));
        }
        Value::Object(details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn on_behalf_of_is_added_only_when_given() {
        let mut m = Map::new();
        m.insert("note".into(), json!("n"));
        let a = Actor {
            principal: "token:3:ticketing".into(),
            on_behalf_of: Some("alice".into()),
        };
        assert_eq!(
            a.details(m.clone()),
            json!({"note": "n", "on_behalf_of": "alice"})
        );
        let b = Actor {
            on_behalf_of: None,
            ..a
        };
        assert_eq!(b.details(m), json!({"note": "n"}));
    }
}
