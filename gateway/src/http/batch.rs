//! `POST /v1/shards:batchGet`: many reads in one request, one result per item, in order.

use super::api::{json, ApiJson, Ctx};
use crate::domain::auth::Scope;
use crate::domain::ids;
use crate::http::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::state::AppState;
use crate::service::read::{fetch_many, Wanted};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

/// One requested shard.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// Account id.
    pub account: String,
    /// Shard id.
    pub shard: String,
    /// Version (default latest).
    #[serde(default)]
    pub version: Option<i64>,
}

/// `POST /v1/shards:batchGet` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchGetRequest {
    /// Up to the configured maximum of items.
    pub items: Vec<BatchItem>,
}

/// The result of one item: the shard, or an error.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    /// The shard.
    Shard(super::shards::ShardResponse),
    /// Why this item failed.
    Error(ErrorBody),
}

/// `200` answer: one result per item, in order.
#[derive(Serialize, ToSchema)]
pub struct BatchGetResponse {
    /// Results in the order of the items.
    pub results: Vec<BatchResult>,
}

/// Read many shards at once.
#[utoipa::path(post, path = "/v1/shards:batchGet", tag = "shards",
    request_body = BatchGetRequest,
    responses((status = 200, description = "one result per item, in order", body = BatchGetResponse)),
    security(("bearer" = ["shards:read"])))]
pub async fn batch_get(
    State(state): State<AppState>,
    ctx: Ctx,
    ApiJson(body): ApiJson<BatchGetRequest>,
) -> Result<Response, ApiError> {
    ctx.require(&state, Scope::ShardsRead, None, "shard.batch_get")?;
    let max = state.limits.batch_max_items;
    if body.items.is_empty() || body.items.len() > max {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("items must hold between 1 and {max} entries"),
        ));
    }
    let wanted: Vec<Wanted<'_>> = body
        .items
        .iter()
        .map(|i| Wanted {
            account: &i.account,
            shard: &i.shard,
            version: i.version,
        })
        .collect();
    let opened = fetch_many(&state, &ctx.caller, &wanted).await?;

    let mut results = Vec::with_capacity(body.items.len());
    let mut events = Vec::with_capacity(body.items.len());
    for (item, result) in body.items.iter().zip(opened) {
        let mut event = ctx.event("shard.batch_get").outcome_of(&result);
        if ids::is_valid(&item.account) {
            event.account = Some(item.account.clone());
        }
        if ids::is_valid(&item.shard) {
            event.shard = Some(item.shard.clone());
        }
        event.version = result
            .as_ref()
            .map(|o| o.version.get())
            .ok()
            .or(item.version);
        event.backend = result.as_ref().ok().map(|o| o.backend.clone());
        events.push(event);
        results.push(match result {
            Ok(o) => BatchResult::Shard(super::shards::ShardResponse {
                shard: Zeroizing::new(B64.encode(&o.plaintext)),
                version: o.version.get(),
                backend: o.backend,
            }),
            Err(e) => BatchResult::Error(ApiError::from(e).body()),
        });
    }
    // Fail closed: nothing is answered unless every item's read is durably audited.
    state.audit.record_all(events).await?;
    Ok(json(StatusCode::OK, BatchGetResponse { results }))
}
