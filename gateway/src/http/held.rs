//! The 202 answer of an operation held for a second credential's approval (dual control,
//! [`crate::service::approvals`]): shared by every route that can be held, apart from the
//! approvers' own routes ([`super::approvals`]).

use super::api::json;
use crate::service::approvals::Held;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

/// `202`: the operation waits for a second credential's approval.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeldResponse {
    /// The approval's id (`POST /v1/admin/approvals/{id}:approve`).
    pub approval: String,
    /// `account.delete`, `key.destroy`, `policy.apply` or `downgrade`.
    pub operation: String,
    /// Approvable until (RFC 3339).
    pub expires_at: String,
}

pub(crate) fn rfc3339(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// The 202 of a held operation.
pub fn held(h: Held) -> Response {
    json(
        StatusCode::ACCEPTED,
        HeldResponse {
            approval: h.id,
            operation: h.operation.to_string(),
            expires_at: rfc3339(h.expires_ms),
        },
    )
}
