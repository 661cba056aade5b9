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
        api::devices::retire,
        api::devices::unretire,
        api::alerts::list,
        api::alerts::get,
        api::alerts::ack,
        api::alerts::ticket,
        api::fleet::summary,
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
