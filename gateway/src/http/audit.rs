//! `GET /v1/admin/audit/events` (scope `audit:read`): the audit trail searched by account,
//! shard, action, outcome and time, across the hot table and the archive, as NDJSON. A token
//! with an account prefix sees only events of accounts under it (never events that name no
//! account).

use super::api::{query_error, Ctx};
use crate::domain::auth::Scope;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::state::AppState;
use crate::service::audit_search::{self, AuditEventView, Cursor, MAX_LIMIT};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shardgate_store::AuditQuery;
use utoipa::IntoParams;

/// Response header naming where the next page starts (absent on the last page).
pub const NEXT_CURSOR: &str = "x-shardgate-next-cursor";

/// `GET /v1/admin/audit/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditSearchQuery {
    /// Events of this account (a prefixed token: under its prefix).
    pub account: Option<String>,
    /// Events of this shard.
    pub shard: Option<String>,
    /// Events of this action, e.g. `shard.get`.
    pub action: Option<String>,
    /// Events with this outcome: `ok` or an error code.
    pub outcome: Option<String>,
    /// At or after this time: RFC 3339 (`2026-03-01T00:00:00Z`) or unix milliseconds.
    pub from: Option<String>,
    /// Before this time: RFC 3339 or unix milliseconds.
    pub to: Option<String>,
    /// Most events in this page (1 to 10,000; default 1,000).
    pub limit: Option<i64>,
    /// Where to continue: the previous page's `x-shardgate-next-cursor`.
    pub cursor: Option<String>,
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, msg)
}

/// The store's query for this request and caller.
fn query(q: AuditSearchQuery, ctx: &Ctx) -> Result<AuditQuery, ApiError> {
    let limit = q.limit.unwrap_or(1000);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let after = match &q.cursor {
        Some(c) => {
            Some(Cursor::parse(c).ok_or_else(|| invalid("cursor is not one this API gave"))?)
        }
        None => None,
    };
    if let Some(v) = &q.account {
        crate::domain::ids::check("account", v)?;
    }
    if let Some(v) = &q.shard {
        crate::domain::ids::check("shard", v)?;
    }
    for (name, v) in [("action", &q.action), ("outcome", &q.outcome)] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 64) {
            return Err(invalid(format!("{name} must be 1 to 64 characters")));
        }
    }
    Ok(AuditQuery {
        account_prefix: ctx.caller.account_prefix().map(str::to_string),
        from_ms: q
            .from
            .as_deref()
            .map(|v| audit_search::time_ms("from", v))
            .transpose()?,
        to_ms: q
            .to
            .as_deref()
            .map(|v| audit_search::time_ms("to", v))
            .transpose()?,
        after: after.map(|c| (c.0, c.1, c.2)),
        account: q.account,
        shard: q.shard,
        action: q.action,
        outcome: q.outcome,
        limit,
    })
}

/// Search the audit trail: one page of events as NDJSON (`application/x-ndjson`), ordered by
/// time, chain and seq across the hot table and the archive; the next page's cursor in
/// `x-shardgate-next-cursor`. The search itself is audited (`audit.search`).
#[utoipa::path(get, path = "/v1/admin/audit/events", tag = "admin",
    params(AuditSearchQuery),
    responses((status = 200, description = "one event per line (NDJSON)",
        content_type = "application/x-ndjson", body = AuditEventView,
        headers(("x-shardgate-next-cursor" = String, description = "where the next page starts; absent on the last page")))),
    security(("bearer" = ["audit:read"])))]
pub async fn search_events(
    State(state): State<AppState>,
    ctx: Ctx,
    q: Result<Query<AuditSearchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    ctx.require(
        &state,
        Scope::AuditRead,
        q.account.as_deref(),
        "audit.search",
    )?;
    let query = query(q, &ctx)?;
    let mut event = ctx.event("audit.search");
    event.account = query.account.clone();
    let page = audit_search::page_for(&state, &query, event).await?;
    let mut body = Vec::with_capacity(page.events.len() * 256);
    for (r, tier) in page.events {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_writer(&mut body, &AuditEventView::of(r, tier)).unwrap_or_default();
        body.push(b'\n');
    }
    let mut resp = (StatusCode::OK, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Some(next) = page
        .next
        .and_then(|c| HeaderValue::from_str(&c.encode()).ok())
    {
        headers.insert(NEXT_CURSOR, next);
    }
    Ok(resp)
}
