//! `POST /v1/shards:batchGet`: many reads in one request, one result per item, in order.

use super::shards::Opened;
use super::{json, ApiJson, Ctx};
use crate::auth::Scope;
use crate::envelope;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::ids;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use shardgate_store::ShardVersionRow;
use std::collections::BTreeMap;
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
    // Rows first, then ONE unwrap_many per backend (an HSM pays one session checkout for
    // the whole batch), then the shard seals.
    let mut opened: Vec<Option<Result<Opened, ApiError>>> = Vec::with_capacity(body.items.len());
    let mut rows: Vec<Option<ShardVersionRow>> = Vec::with_capacity(body.items.len());
    let mut wanted = Vec::with_capacity(body.items.len());
    let mut wanted_at = Vec::with_capacity(body.items.len());
    for (i, item) in body.items.iter().enumerate() {
        let checked = ids::check("account", &item.account)
            .and_then(|_| ids::check("shard", &item.shard))
            .and_then(|_| ctx.caller.require(Scope::ShardsRead, Some(&item.account)))
            .and_then(|_| match item.version {
                Some(v) if v < 1 => Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "version must be 1 or more",
                )),
                _ => Ok(()),
            });
        rows.push(None);
        match checked {
            Ok(()) => {
                opened.push(None);
                wanted.push((item.account.clone(), item.shard.clone(), item.version));
                wanted_at.push(i);
            }
            Err(e) => opened.push(Some(Err(e))),
        }
    }
    // Every row of the batch in ONE query; a miss then asks which part is missing.
    let found = state.store.get_shard_versions(&wanted).await?;
    for ((i, (account, shard, version)), row) in wanted_at.into_iter().zip(&wanted).zip(found) {
        match row {
            Some(r) => rows[i] = Some(r),
            None => {
                opened[i] = Some(Err(super::shards::not_found(
                    &state, account, shard, *version,
                )
                .await))
            }
        }
    }
    let mut by_backend: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        if let Some(r) = row {
            by_backend.entry(r.backend.clone()).or_default().push(i);
        }
    }
    for (name, indices) in by_backend {
        let Some(backend) = state.backend(&name).cloned() else {
            // Not configured: each row's own verdict (a misfiled row is an integrity failure).
            for i in indices {
                if let Some(row) = rows[i].as_ref() {
                    opened[i] = Some(Err(crate::integrity::unconfigured_backend(&state, row)));
                }
            }
            continue;
        };
        let mut pending = Vec::with_capacity(indices.len());
        let mut pairs = Vec::with_capacity(indices.len());
        for i in indices {
            let Some(row) = rows[i].as_ref() else {
                continue;
            };
            match envelope::wrapped_of(row) {
                Ok(pair) => {
                    pending.push(i);
                    pairs.push(pair);
                }
                Err(e) => opened[i] = Some(Err(crate::integrity::open_error(&state, row, e))),
            }
        }
        let deks = backend.unwrap_many(&pairs).await;
        if deks.len() != pending.len() {
            tracing::error!(backend = %name, "unwrap_many answered a different number of results");
        }
        for (i, dek) in pending.into_iter().zip(deks) {
            let Some(row) = rows[i].as_ref() else {
                continue;
            };
            let result = dek
                .and_then(|dek| envelope::open_with(&dek, row))
                .map(|plaintext| Opened {
                    plaintext,
                    version: row.version,
                    backend: row.backend.clone(),
                })
                .map_err(|e| crate::integrity::open_error(&state, row, e));
            opened[i] = Some(result);
        }
    }

    let mut results = Vec::with_capacity(body.items.len());
    let mut events = Vec::with_capacity(body.items.len());
    for (item, result) in body.items.iter().zip(opened) {
        let result = result
            .unwrap_or_else(|| Err(ApiError::new(ErrorCode::Internal, "item was not processed")));
        let mut event = ctx.event("shard.batch_get").outcome_of(&result);
        if ids::is_valid(&item.account) {
            event.account = Some(item.account.clone());
        }
        if ids::is_valid(&item.shard) {
            event.shard = Some(item.shard.clone());
        }
        event.version = result.as_ref().map(|o| o.version).ok().or(item.version);
        event.backend = result.as_ref().ok().map(|o| o.backend.clone());
        events.push(event);
        results.push(match result {
            Ok(o) => BatchResult::Shard(super::shards::ShardResponse {
                shard: Zeroizing::new(B64.encode(&o.plaintext)),
                version: o.version,
                backend: o.backend,
            }),
            Err(e) => BatchResult::Error(e.body()),
        });
    }
    // Fail closed: nothing is answered unless every item's read is durably audited.
    state.audit.record_all(events).await?;
    Ok(json(StatusCode::OK, BatchGetResponse { results }))
}
