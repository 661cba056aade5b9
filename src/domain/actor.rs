//! Who did something, as audit trails record it: the authenticated principal (never taken from a
//! request body), and, beside it, the name the request said it acted for.
//!
//! Principals are written in one format: `token:<id>:<name>` for API tokens
//! (`token:0:bootstrap` for the bootstrap token), `fleetwatch` for the service's own decisions,
//! and `user:<name>` once staff log in to the dashboard.

use std::fmt;

use serde_json::{Map, Value};

/// The principal of the service's own decisions (firing, resolving, covering alerts).
pub const SERVICE: &str = "fleetwatch";

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
    /// An API token acting, by its stored id (`None`: the bootstrap token, written as id 0;
    /// stored ids start at 1) and name.
    pub fn token(id: Option<i64>, name: &str, on_behalf_of: Option<String>) -> Actor {
        Actor {
            principal: format!("token:{}:{name}", id.unwrap_or(0)),
            on_behalf_of,
        }
    }

    /// A dashboard user acting (`user:<name>`), signed in with a session. The name is the
    /// stored one (unique ignoring case), so one person is one principal in every trail.
    pub fn user(name: &str) -> Actor {
        Actor {
            principal: format!("user:{name}"),
            on_behalf_of: None,
        }
    }

    /// `details` of a trail event, with `on_behalf_of` added when the request gave a name.
    pub fn details(&self, mut details: Map<String, Value>) -> Value {
        if let Some(name) = &self.on_behalf_of {
            details.insert("on_behalf_of".into(), Value::String(name.clone()));
        }
        Value::Object(details)
    }
}

/// The principal, as logs show who acted.
impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.principal)
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

    #[test]
    fn users_are_named_by_name() {
        let a = Actor::user("alice");
        assert_eq!(a.principal, "user:alice");
        assert_eq!(a.on_behalf_of, None);
        assert_eq!(a.to_string(), "user:alice");
    }

    #[test]
    fn tokens_are_named_by_id_and_name() {
        assert_eq!(
            Actor::token(Some(3), "ticketing", None).principal,
            "token:3:ticketing"
        );
        assert_eq!(
            Actor::token(None, "bootstrap", None).principal,
            "token:0:bootstrap"
        );
        let a = Actor::token(Some(3), "ticketing", Some("alice".into()));
        assert_eq!(a.on_behalf_of.as_deref(), Some("alice"));
        assert_eq!(a.to_string(), "token:3:ticketing");
    }
}
