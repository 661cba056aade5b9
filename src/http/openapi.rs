//! The OpenAPI 3.1 document, generated from the handlers' and types' annotations (utoipa), so
//! it cannot drift from the code. Served unauthenticated at `GET /api/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fleetwatch",
        description = "Fleet-operations monitoring for AWS IoT Core device fleets: devices, \
                       their health and presence history, alerts with acknowledgement and \
                       ticket references. Errors are RFC 9457 problem documents. Timestamps \
                       are RFC 3339 UTC. Lists page with opaque cursors: pass `next_cursor` \
                       back as `cursor`."
    ),
    paths(
        api::devices::list,
        api::devices::get,
        api::devices::events,
        api::devices::history,
        api::devices::impressions,
        api::devices::retire,
        api::devices::unretire,
        api::alerts::list,
        api::alerts::get,
        api::alerts::ack,
        api::alerts::ticket,
        api::fleet::summary,
        api::fleet::groups,
        api::metrics::cloudwatch,
        api::webhooks::list,
        api::webhooks::redrive,
        api::silences::list,
        api::silences::create,
        api::silences::end,
    ),
    components(schemas(super::error::Problem)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "devices", description = "Devices, their health and presence history"),
        (name = "alerts", description = "Alerts, acknowledgement and ticket references"),
        (name = "fleet", description = "The fleet at a glance"),
        (name = "metrics", description = "The AWS IoT CloudWatch metrics we poll, and their \
                                          series"),
        (name = "webhooks", description = "Notification deliveries and dead letters"),
        (name = "silences", description = "Maintenance windows: matching alerts are recorded \
                                           but not notified"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`fleetwatch token create` (scopes read, write, admin) or the bootstrap \
                         FLEETWATCH_API_TOKEN. GET needs read; POST/PUT/DELETE need write.",
                    ))
                    .build(),
            ),
        );
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Follow a `$ref` within the document (or return the schema itself).
    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap();
                &doc["components"]["schemas"][name]
            }
            None => schema,
        }
    }

    /// The values of a (possibly nullable, possibly referenced) enum schema, sorted.
    fn values(doc: &Value, schema: &Value) -> Vec<String> {
        let s = resolve(doc, schema);
        let candidates: Vec<&Value> = match s["oneOf"].as_array() {
            Some(alts) => alts.iter().map(|a| resolve(doc, a)).collect(),
            None => vec![s],
        };
        let mut out: Vec<String> = candidates
            .iter()
            .filter_map(|c| c["enum"].as_array())
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        out.sort();
        out
    }

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    fn param<'a>(doc: &'a Value, path: &str, name: &str) -> &'a Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| &p["schema"])
            .unwrap_or_else(|| panic!("{path} has no parameter {name}"))
    }

    #[test]
    fn closed_sets_list_their_values() {
        use crate::domain::alert::{Kind, Severity, Status};
        use crate::domain::device::DeviceState;
        use crate::domain::notification::{Event, NotificationStatus};

        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let states = sorted(&DeviceState::NAMES);
        let kinds = sorted(&Kind::NAMES);
        assert_eq!(
            values(&doc, param(&doc, "/api/v1/devices", "state")),
            states
        );
        assert_eq!(values(&doc, param(&doc, "/api/v1/alerts", "kind")), kinds);
        assert_eq!(
            values(&doc, param(&doc, "/api/v1/alerts", "status")),
            sorted(&Status::NAMES)
        );
        assert_eq!(
            values(&doc, param(&doc, "/api/v1/webhooks/deliveries", "status")),
            sorted(&NotificationStatus::NAMES)
        );
        let schema = |name: &str| &doc["components"]["schemas"][name]["properties"];
        assert_eq!(values(&doc, &schema("Device")["state"]), states);
        assert_eq!(values(&doc, &schema("Alert")["kind"]), kinds);
        assert_eq!(
            values(&doc, &schema("Alert")["severity"]),
            sorted(&Severity::NAMES)
        );
        assert_eq!(
            values(&doc, &schema("Delivery")["event"]),
            sorted(&Event::NAMES)
        );
        assert_eq!(values(&doc, &schema("Silence")["kind"]), kinds);
    }
}
