//! The OpenAPI 3.1 document served at `/openapi.json`, generated from the handlers'
//! annotations; every authenticated operation also lists the error responses of
//! DESIGN.md's table with the shared error body.

use crate::http::error::{ErrorBody, ErrorCode, ErrorDetail};
use crate::http::{accounts, admin, audit, batch, health, shards};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

/// The API document.
#[derive(OpenApi)]
#[openapi(
    info(title = "shardgate", description = "Key-management gateway for MPC wallet key shards."),
    paths(
        accounts::put_account,
        accounts::get_account,
        accounts::delete_account,
        shards::list_shards,
        shards::put_shard,
        shards::get_shard,
        shards::delete_shard,
        shards::delete_shard_version,
        batch::batch_get,
        admin::start_migration,
        admin::get_migration,
        admin::pause_migration,
        admin::resume_migration,
        admin::cancel_migration,
        admin::list_keys,
        admin::set_key_state,
        admin::close_circuit,
        audit::search_events,
        health::healthz,
        health::readyz,
        openapi_json,
        crate::http::ops::render,
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode)),
    modifiers(&Security, &ErrorResponses)
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Statuses every authenticated operation may answer with the error body.
const AUTHED_ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "invalid request, id, base64, empty shard or unknown tier",
    ),
    ("401", "unauthenticated"),
    ("403", "forbidden"),
    ("404", "account, shard, version or route not found"),
    ("405", "method not allowed"),
    ("409", "version conflict"),
    ("413", "payload too large"),
    ("429", "rate limited"),
    ("500", "integrity failure or internal error"),
    ("502", "key unusable"),
    ("503", "backend, store or audit unavailable"),
    ("504", "deadline exceeded"),
];

/// Statuses an unauthenticated route may answer with the error body.
const OPEN_ERRORS: &[(&str, &str)] = &[
    ("404", "not found"),
    ("405", "method not allowed"),
    ("429", "rate limited"),
    ("500", "internal error"),
    ("504", "deadline exceeded"),
];

struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let open = matches!(path.as_str(), "/healthz" | "/readyz" | "/openapi.json");
            let errors = if open { OPEN_ERRORS } else { AUTHED_ERRORS };
            for op in [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                for (status, description) in errors {
                    op.responses
                        .responses
                        .entry((*status).to_string())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(*description)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                                        .build(),
                                )
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}
