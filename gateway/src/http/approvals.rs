//! Dual control over HTTP: the 202 answer of an operation held for approval, and the
//! approvers' routes `GET /v1/admin/approvals/{id}` and `POST /v1/admin/approvals/{id}:approve`
//! (admin, no account prefix). Thin adapters over [`crate::service::approvals`].

use super::api::{json, Ctx};
use super::held::rfc3339;
use crate::domain::auth::Scope;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::state::AppState;
use crate::service::approvals::{self, Done};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

/// A stored request, as the approver sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalView {
    /// Its id.
    pub approval: String,
    /// The operation.
    pub operation: String,
    /// What it does, in one line.
    pub summary: String,
    /// Who asked.
    pub requested_by: String,
    /// `pending` or `approved` (a pending one past `expires_at` can no longer be approved).
    pub state: String,
    /// When asked (RFC 3339).
    pub created_at: String,
    /// Approvable until (RFC 3339).
    pub expires_at: String,
    /// Who approved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

/// `:approve` answer: the approval and what the operation answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovedResponse {
    /// The approval's id.
    pub approval: String,
    /// The operation.
    pub operation: String,
    /// The operation's own answer (as its route answers it).
    pub result: serde_json::Value,
}

/// `{id}` or `{id}:approve`.
fn segment(
    path: Result<Path<String>, PathRejection>,
) -> Result<(String, Option<String>), ApiError> {
    let Path(seg) = path.map_err(|_| ApiError::new(ErrorCode::InvalidId, "invalid approval id"))?;
    let (id, verb) = match seg.split_once(':') {
        Some((id, verb)) => (id.to_string(), Some(verb.to_string())),
        None => (seg, None),
    };
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::new(ErrorCode::InvalidId, "invalid approval id"));
    }
    Ok((id, verb))
}

/// A request held for approval.
#[utoipa::path(get, path = "/v1/admin/approvals/{id}", tag = "admin",
    params(("id" = String, Path, description = "approval id")),
    responses((status = 200, description = "the request", body = ApprovalView)),
    security(("bearer" = ["admin"])))]
pub async fn get_approval(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    ctx.require_global(&state, Scope::Admin, "approval.get")?;
    let (id, verb) = segment(path)?;
    if verb.is_some() {
        return Err(ApiError::new(ErrorCode::NotFound, "no such route"));
    }
    let a = approvals::get(&state, &id).await?;
    Ok(json(
        StatusCode::OK,
        ApprovalView {
            approval: a.id,
            operation: a.operation,
            summary: a.summary,
            requested_by: a.requested_by,
            state: a.state,
            created_at: rfc3339(a.created_ms),
            expires_at: rfc3339(a.expires_ms),
            approved_by: a.approved_by,
        },
    ))
}

/// Approve a held request with a second, different credential, and run it.
#[utoipa::path(post, path = "/v1/admin/approvals/{id}:approve", tag = "admin",
    params(("id" = String, Path, description = "approval id")),
    responses((status = 200, description = "approved and done", body = ApprovedResponse)),
    security(("bearer" = ["admin"])))]
pub async fn approve(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    ctx.require_global(&state, Scope::Admin, "approval.approve")?;
    let (id, verb) = segment(path)?;
    if verb.as_deref() != Some("approve") {
        return Err(ApiError::new(ErrorCode::NotFound, "no such route"));
    }
    let (operation, done) = approvals::approve(&state, &id, &ctx.origin()).await?;
    let result = match done {
        Done::AccountDeleted(account, d) => to_value(&super::accounts::receipt(&account, &d)),
        Done::KeyDestroyed(r) => to_value(&r),
        Done::PolicyApplied(c) => to_value(&super::policy::PolicyChangeView::from(c)),
        Done::Downgraded(_, put) => serde_json::json!({
            "tier": put.tier,
            "backend": put.backend,
            "migration_job": put.migration_job,
        }),
    };
    Ok(json(
        StatusCode::OK,
        ApprovedResponse {
            approval: id,
            operation,
            result,
        },
    ))
}

fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}
