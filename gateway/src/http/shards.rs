//! `/v1/accounts/{account}/shards[/{shard}]`: list, put a new version, get, crypto-shred.

use super::api::{json, path_error, query_error, ApiJson, Ctx};
use super::idempotency::IdemKey;
use crate::domain::auth::Scope;
use crate::domain::ids::{self, AccountId, ShardId};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::state::AppState;
use crate::service::delete::{self, Deleted, Destroyed, IdempotentDelete};
use crate::service::list;
use crate::service::read::{check_version, fetch};
use crate::service::write::{self, IdempotentPut, PutOutcome, PutShard, Stored};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use shardgate_store::{IdempotencyRecord, Version};
use utoipa::{IntoParams, ToSchema};
use zeroize::Zeroizing;

/// `PUT .../shards/{shard}` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutShardRequest {
    /// Shard bytes, standard base64 with padding.
    #[schema(value_type = String, format = Byte)]
    pub shard: Zeroizing<String>,
    /// Compare-and-swap: the version the caller last saw (0 = the shard must not exist).
    #[serde(default)]
    pub expected_version: Option<i64>,
}

/// `201` answer of a put.
#[derive(Debug, Serialize, ToSchema)]
pub struct PutShardResponse {
    /// The new version.
    pub version: i64,
    /// The backend that wrapped its data key.
    pub backend: String,
    /// Versions of the shard this write crypto-shredded under the `keep_versions` retention
    /// (account or `[retention]`), oldest first; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pruned_versions: Vec<PrunedVersion>,
}

/// Receipt of one version crypto-shredded by retention.
#[derive(Debug, Serialize, ToSchema)]
pub struct PrunedVersion {
    /// The destroyed version.
    pub version: i64,
    /// Its audit event id (`<chain>:<seq>`).
    pub audit_event: String,
}

/// A shard and its version.
#[derive(Serialize, ToSchema)]
pub struct ShardResponse {
    /// Shard bytes, standard base64.
    #[schema(value_type = String, format = Byte)]
    pub shard: Zeroizing<String>,
    /// Version.
    pub version: i64,
    /// Backend recorded on the version.
    pub backend: String,
}

/// `GET .../shards/{shard}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetShardQuery {
    /// A specific version (default: the latest).
    pub version: Option<i64>,
}

/// `GET .../shards` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Return shard ids strictly after this one (exact bytes).
    pub after: Option<String>,
    /// Page size (default 100).
    pub limit: Option<i64>,
}

/// One entry of the shard list (never shard bytes).
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardListEntry {
    /// Shard id.
    pub shard: String,
    /// Latest version.
    pub latest_version: i64,
    /// Backend of the latest version.
    pub backend: String,
}

/// A page of shard ids.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardListResponse {
    /// The page.
    pub shards: Vec<ShardListEntry>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Receipt of a shard (or shard version) crypto-shred.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteShardResponse {
    /// Versions destroyed.
    pub destroyed_versions: i64,
    /// Audit event id (`<chain>:<seq>`).
    pub audit_event: String,
}

impl From<&Destroyed> for DeleteShardResponse {
    fn from(d: &Destroyed) -> Self {
        Self {
            destroyed_versions: d.versions,
            audit_event: d.audit_event.clone(),
        }
    }
}

type ShardPath = Result<Path<(String, String)>, PathRejection>;

/// The path's ids, checked: an `AccountId` and a `ShardId` hold only valid ids.
fn shard_ids(p: ShardPath) -> Result<(AccountId, ShardId), ApiError> {
    let Path((account, shard)) = p.map_err(path_error)?;
    Ok((AccountId::parse(account)?, ShardId::parse(shard)?))
}

/// Store a new version of a shard.
#[utoipa::path(put, path = "/v1/accounts/{account}/shards/{shard}", tag = "shards",
    params(("account" = String, Path), ("shard" = String, Path),
        ("Idempotency-Key" = Option<String>, Header,
            description = "retry-safe write: a retry with the same key replays the first answer")),
    request_body = PutShardRequest,
    responses((status = 201, description = "stored", body = PutShardResponse)),
    security(("bearer" = ["shards:write"])))]
pub async fn put_shard(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    path: ShardPath,
    ApiJson(body): ApiJson<PutShardRequest>,
) -> Result<Response, ApiError> {
    let (account, shard) = shard_ids(path)?;
    ctx.require(&state, Scope::ShardsWrite, Some(&account), "shard.put")?;
    let expected = body
        .expected_version
        .map_or_else(|| "none".to_string(), |v| v.to_string());
    let idem = IdemKey::from_headers(
        &state,
        &headers,
        &ctx,
        "PUT",
        &format!("/v1/accounts/{account}/shards/{shard}"),
        &[body.shard.as_bytes(), expected.as_bytes()],
    )?;
    if let Some(idem) = &idem {
        if let Some(answer) = idem.lookup(&state).await? {
            return Ok(answer);
        }
    }
    let plaintext = shard_bytes(&state, &body)?;
    let record = |stored: &Stored| match &idem {
        // Serialising an answer cannot fail.
        Some(i) => i
            .record(StatusCode::CREATED, &PutShardResponse::from(stored))
            .unwrap_or_else(|_| unreachable!("an answer serialises")),
        None => unreachable!("only called with an idempotency key"),
    };
    let req = PutShard {
        account: &account,
        shard: &shard,
        plaintext: &plaintext,
        expected_version: body.expected_version,
        created_by: &ctx.caller.name,
        event: ctx.event("shard.put").account(&account).shard(&shard),
        prune_event: ctx.event("shard.prune").account(&account).shard(&shard),
        idempotency: idem.as_ref().map(|i| IdempotentPut {
            record: &record,
            expired_before_ms: i.expired_before_ms(),
        }),
    };
    match write::put(&state, &req).await? {
        PutOutcome::Replay(rec) => idem.as_ref().map_or_else(
            || Err(ApiError::new(ErrorCode::Internal, "unexpected replay")),
            |i| i.replay(rec),
        ),
        PutOutcome::Stored(stored) => {
            if let Some(idem) = &idem {
                idem.purge_now_and_then(&state);
            }
            Ok(json(StatusCode::CREATED, PutShardResponse::from(&stored)))
        }
    }
}

/// The shard's bytes: standard base64, not empty, at most `[limits] max_shard_bytes`; and
/// `expected_version`, when given, 0 or more.
fn shard_bytes(state: &AppState, body: &PutShardRequest) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let plaintext =
        Zeroizing::new(B64.decode(body.shard.as_bytes()).map_err(|_| {
            ApiError::new(ErrorCode::InvalidBase64, "shard must be standard base64")
        })?);
    if plaintext.is_empty() {
        return Err(ApiError::new(
            ErrorCode::EmptyShard,
            "shard must not be empty",
        ));
    }
    if plaintext.len() > state.limits.max_shard_bytes {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("shard exceeds {} bytes", state.limits.max_shard_bytes),
        ));
    }
    if matches!(body.expected_version, Some(v) if v < 0) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "expected_version must be 0 or more",
        ));
    }
    Ok(plaintext)
}

impl From<&Stored> for PutShardResponse {
    fn from(s: &Stored) -> Self {
        Self {
            version: s.version.get(),
            backend: s.backend.clone(),
            pruned_versions: s
                .pruned
                .iter()
                .map(|p| PrunedVersion {
                    version: p.version,
                    audit_event: p.audit_event.clone(),
                })
                .collect(),
        }
    }
}

/// Read the latest version of a shard, or `?version=N`.
#[utoipa::path(get, path = "/v1/accounts/{account}/shards/{shard}", tag = "shards",
    params(("account" = String, Path), ("shard" = String, Path), GetShardQuery),
    responses((status = 200, description = "the shard", body = ShardResponse)),
    security(("bearer" = ["shards:read"])))]
pub async fn get_shard(
    State(state): State<AppState>,
    ctx: Ctx,
    path: ShardPath,
    query: Result<Query<GetShardQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (account, shard) = shard_ids(path)?;
    let Query(q) = query.map_err(query_error)?;
    ctx.require(&state, Scope::ShardsRead, Some(&account), "shard.get")?;
    let result = match check_version(q.version) {
        Ok(version) => fetch(&state, &account, &shard, version).await,
        Err(e) => Err(e),
    };
    let mut event = ctx
        .event("shard.get")
        .account(&account)
        .shard(&shard)
        .outcome_of(&result);
    event.version = result.as_ref().map(|o| o.version.get()).ok().or(q.version);
    event.backend = result.as_ref().ok().map(|o| o.backend.clone());
    // Fail closed: no shard leaves unless its read is durably audited.
    state.audit.record(event).await?;
    let opened = result?;
    Ok(json(
        StatusCode::OK,
        ShardResponse {
            shard: Zeroizing::new(B64.encode(&opened.plaintext)),
            version: opened.version.get(),
            backend: opened.backend,
        },
    ))
}

/// Crypto-shred every version of a shard.
#[utoipa::path(delete, path = "/v1/accounts/{account}/shards/{shard}", tag = "shards",
    params(("account" = String, Path), ("shard" = String, Path),
        ("Idempotency-Key" = Option<String>, Header,
            description = "retry-safe write: a retry with the same key replays the first answer")),
    responses((status = 200, description = "receipt", body = DeleteShardResponse)),
    security(("bearer" = ["shards:delete"])))]
pub async fn delete_shard(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    path: ShardPath,
) -> Result<Response, ApiError> {
    let (account, shard) = shard_ids(path)?;
    ctx.require(&state, Scope::ShardsDelete, Some(&account), "shard.delete")?;
    let idem = IdemKey::from_headers(
        &state,
        &headers,
        &ctx,
        "DELETE",
        &format!("/v1/accounts/{account}/shards/{shard}"),
        &[],
    )?;
    if let Some(idem) = &idem {
        if let Some(answer) = idem.lookup(&state).await? {
            return Ok(answer);
        }
    }
    let event = ctx.event("shard.delete").account(&account).shard(&shard);
    let record = receipt_record(&idem);
    let idempotency = idempotent_delete(&idem, &record);
    let deleted = delete::shard(&state, &account, &shard, &event, idempotency).await?;
    deleted_answer(&state, idem.as_ref(), deleted)
}

/// How a delete's receipt becomes the record of its `Idempotency-Key`.
fn receipt_record(idem: &Option<IdemKey>) -> impl Fn(&Destroyed) -> IdempotencyRecord + '_ {
    move |d: &Destroyed| match idem {
        // Serialising a receipt cannot fail.
        Some(i) => i
            .record(StatusCode::OK, &DeleteShardResponse::from(d))
            .unwrap_or_else(|_| unreachable!("a receipt serialises")),
        None => unreachable!("only called with an idempotency key"),
    }
}

/// The use case's view of the request's `Idempotency-Key`, if it has one.
fn idempotent_delete<'a>(
    idem: &Option<IdemKey>,
    record: &'a (dyn Fn(&Destroyed) -> IdempotencyRecord + Send + Sync),
) -> Option<IdempotentDelete<'a>> {
    idem.as_ref().map(|i| IdempotentDelete {
        record,
        expired_before_ms: i.expired_before_ms(),
    })
}

/// The answer of a delete: its receipt, or the first answer of its `Idempotency-Key`.
fn deleted_answer(
    state: &AppState,
    idem: Option<&IdemKey>,
    deleted: Deleted,
) -> Result<Response, ApiError> {
    match deleted {
        Deleted::Replay(rec) => idem.map_or_else(
            || Err(ApiError::new(ErrorCode::Internal, "unexpected replay")),
            |i| i.replay(rec),
        ),
        Deleted::Destroyed(d) => {
            if let Some(idem) = idem {
                idem.purge_now_and_then(state);
            }
            Ok(json(StatusCode::OK, DeleteShardResponse::from(&d)))
        }
    }
}

type VersionPath = Result<Path<(String, String, String)>, PathRejection>;

/// Crypto-shred one version of a shard (e.g. the old share after an MPC key refresh).
///
/// Deletes the version's row (wrapped DEK, nonce, ciphertext, commitment) with its audit
/// event in one transaction and answers a receipt. The other versions stay; deleting the
/// latest makes the newest remaining version the one a read without `?version` answers (and
/// the next write numbers from it); deleting the last one leaves no shard (404
/// `shard_not_found`, as after a shard delete).
#[utoipa::path(delete, path = "/v1/accounts/{account}/shards/{shard}/versions/{version}",
    tag = "shards",
    params(("account" = String, Path), ("shard" = String, Path),
        ("version" = i64, Path, description = "the version to destroy, 1 or more"),
        ("Idempotency-Key" = Option<String>, Header,
            description = "retry-safe delete: a retry with the same key replays the first answer")),
    responses((status = 200, description = "receipt (destroyed_versions is 1)",
        body = DeleteShardResponse)),
    security(("bearer" = ["shards:delete"])))]
pub async fn delete_shard_version(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    path: VersionPath,
) -> Result<Response, ApiError> {
    let Path((account, shard, version)) = path.map_err(path_error)?;
    let (account, shard) = (AccountId::parse(account)?, ShardId::parse(shard)?);
    ctx.require(
        &state,
        Scope::ShardsDelete,
        Some(&account),
        "shard.version_delete",
    )?;
    let version = version
        .parse::<i64>()
        .ok()
        .and_then(|v| Version::new(v).ok())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "version must be an integer, 1 or more",
            )
        })?;
    let idem = IdemKey::from_headers(
        &state,
        &headers,
        &ctx,
        "DELETE",
        &format!("/v1/accounts/{account}/shards/{shard}/versions/{version}"),
        &[],
    )?;
    if let Some(idem) = &idem {
        if let Some(answer) = idem.lookup(&state).await? {
            return Ok(answer);
        }
    }
    let event = ctx
        .event("shard.version_delete")
        .account(&account)
        .shard(&shard)
        .version(version.get())
        .detail("destroyed_versions=1");
    let record = receipt_record(&idem);
    let idempotency = idempotent_delete(&idem, &record);
    let deleted = delete::version(&state, &account, &shard, version, &event, idempotency).await?;
    deleted_answer(&state, idem.as_ref(), deleted)
}

/// Page through an account's shard ids (never shard bytes).
#[utoipa::path(get, path = "/v1/accounts/{account}/shards", tag = "shards",
    params(("account" = String, Path), ListQuery),
    responses((status = 200, description = "a page", body = ShardListResponse)),
    security(("bearer" = ["shards:read"])))]
pub async fn list_shards(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(account) = path.map_err(path_error)?;
    let account = AccountId::parse(account)?;
    let Query(q) = query.map_err(query_error)?;
    ctx.require(&state, Scope::ShardsRead, Some(&account), "shard.list")?;
    if let Some(after) = &q.after {
        ids::check("after", after)?;
    }
    let max = state.limits.list_max_limit;
    let limit = q.limit.unwrap_or(100.min(max));
    if !(1..=max).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit must be between 1 and {max}"),
        ));
    }
    let event = ctx.event("shard.list").account(&account);
    let page = list::shards(&state, &account, q.after.as_deref(), limit, event).await?;
    Ok(json(
        StatusCode::OK,
        ShardListResponse {
            shards: page
                .shards
                .into_iter()
                .map(|s| ShardListEntry {
                    shard: s.shard,
                    latest_version: s.latest_version.get(),
                    backend: s.backend,
                })
                .collect(),
            next_after: page.next_after,
        },
    ))
}
