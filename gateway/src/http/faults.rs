//! TEST-ONLY: the chaos soak's in-process fault hook (cargo feature `fault-injection`, never in
//! a shipped build, and not in the OpenAPI document). Admin without an account prefix, like
//! every operation with global effect.

use super::api::{json, Ctx};
use crate::domain::auth::Scope;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::faults;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

/// `POST /v1/admin/backends/{name}/fault:logout`: log this replica's HSM sessions out.
pub async fn hsm_logout(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    ctx.require_global(&state, Scope::Admin, "backend.fault_logout")?;
    let name = super::admin::backend_name(path)?;
    faults::hsm_logout(&state, &name).await?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({"backend": name, "fault": "logout"}),
    ))
}
