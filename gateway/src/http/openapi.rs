//! The OpenAPI 3.1 document served at `/openapi.json`, generated from the handlers'
//! annotations; what every operation shares (headers, the error responses of DESIGN.md's
//! table) is added by [`crate::http::openapi_shared`].

use crate::http::error::{ErrorBody, ErrorCode, ErrorDetail};
use crate::http::openapi_shared::SharedResponses;
use crate::http::{accounts, admin, approvals, audit, batch, health, policy, shards};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
        admin::open_circuit,
        policy::get_policy,
        policy::put_policy,
        approvals::get_approval,
        approvals::approve,
        audit::search_events,
        health::healthz,
        health::readyz,
        openapi_json,
        crate::http::ops::render,
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode)),
    modifiers(&Security, &SharedResponses)
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

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}
