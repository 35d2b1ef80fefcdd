//! `/v1/accounts/{account}/shards[/{shard}]`: list, put a new version, get, crypto-shred.

use super::{json, path_error, query_error, ApiJson, Ctx};
use crate::audit::Auditor;
use crate::auth::Scope;
use crate::envelope;
use crate::error::{ApiError, ErrorCode};
use crate::ids;
use crate::state::AppState;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use shardgate_backends::ShardIdentity;
use shardgate_store::{ShardVersionRow, StoreError};
use utoipa::{IntoParams, ToSchema};
use zeroize::Zeroizing;

/// How often a write without `expected_version` retries after losing a version race.
const MAX_WRITE_ATTEMPTS: usize = 64;

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
#[serde(deny_unknown_fields)]
pub struct GetShardQuery {
    /// A specific version (default: the latest).
    pub version: Option<i64>,
}

/// `GET .../shards` query.
#[derive(Debug, Deserialize, IntoParams)]
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

/// Receipt of a shard crypto-shred.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteShardResponse {
    /// Versions destroyed.
    pub destroyed_versions: i64,
    /// Audit event id (`<chain>:<seq>`).
    pub audit_event: String,
}

type ShardPath = Result<Path<(String, String)>, PathRejection>;

fn shard_ids(p: ShardPath) -> Result<(String, String), ApiError> {
    let Path((account, shard)) = p.map_err(path_error)?;
    ids::check("account", &account)?;
    ids::check("shard", &shard)?;
    Ok((account, shard))
}

/// A decrypted shard version. Plaintext stays in zeroizing memory.
pub(crate) struct Opened {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub version: i64,
    pub backend: String,
}

/// Read and open one version; the caller audits the outcome.
pub(crate) async fn fetch(
    state: &AppState,
    account: &str,
    shard: &str,
    version: Option<i64>,
) -> Result<Opened, ApiError> {
    let row = load(state, account, shard, version).await?;
    let backend = row_backend(state, &row)?;
    let plaintext = envelope::open(backend.as_ref(), &row).await?;
    Ok(Opened {
        plaintext,
        version: row.version,
        backend: row.backend,
    })
}

/// The stored row of one version, or the not-found error that names what is missing.
pub(crate) async fn load(
    state: &AppState,
    account: &str,
    shard: &str,
    version: Option<i64>,
) -> Result<ShardVersionRow, ApiError> {
    if let Some(v) = version {
        if v < 1 {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "version must be 1 or more",
            ));
        }
    }
    match state
        .store
        .get_shard_version(account, shard, version)
        .await?
    {
        Some(row) => Ok(row),
        None => Err(not_found(state, account, shard, version).await),
    }
}

/// The backend recorded on a row. Reads never consult the policy.
pub(crate) fn row_backend(
    state: &AppState,
    row: &ShardVersionRow,
) -> Result<std::sync::Arc<dyn shardgate_backends::KeyBackend>, ApiError> {
    state.backend(&row.backend).cloned().ok_or_else(|| {
        tracing::error!(backend = %row.backend, "stored version names a backend that is not configured");
        ApiError::new(
            ErrorCode::KeyUnusable,
            "the version's backend is not configured on this gateway",
        )
    })
}

pub(crate) async fn not_found(
    state: &AppState,
    account: &str,
    shard: &str,
    version: Option<i64>,
) -> ApiError {
    if version.is_some() {
        if let Ok(Some(_)) = state.store.latest_version(account, shard).await {
            return ApiError::new(ErrorCode::VersionNotFound, "no such version of the shard");
        }
    }
    match state.store.get_account(account).await {
        Ok(None) => ApiError::new(ErrorCode::AccountNotFound, "no such account"),
        Ok(Some(_)) => ApiError::new(ErrorCode::ShardNotFound, "no such shard"),
        Err(e) => e.into(),
    }
}

/// Store a new version of a shard.
#[utoipa::path(put, path = "/v1/accounts/{account}/shards/{shard}", tag = "shards",
    params(("account" = String, Path), ("shard" = String, Path)),
    request_body = PutShardRequest,
    responses((status = 201, description = "stored", body = PutShardResponse)),
    security(("bearer" = ["shards:write"])))]
pub async fn put_shard(
    State(state): State<AppState>,
    ctx: Ctx,
    path: ShardPath,
    ApiJson(body): ApiJson<PutShardRequest>,
) -> Result<Response, ApiError> {
    let (account, shard) = shard_ids(path)?;
    ctx.require(&state, Scope::ShardsWrite, Some(&account), "shard.put")?;
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
    let (_, placement) = super::accounts::placed_account(&state, &account).await?;
    let backend = state
        .backend(&placement.backend)
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "placement names no backend"))?
        .clone();

    for _ in 0..MAX_WRITE_ATTEMPTS {
        let latest = state
            .store
            .latest_version(&account, &shard)
            .await?
            .unwrap_or(0);
        if let Some(expected) = body.expected_version {
            if expected != latest {
                return Err(StoreError::Conflict {
                    latest: (latest > 0).then_some(latest),
                }
                .into());
            }
        }
        let version = latest + 1;
        let id = ShardIdentity::new(&account, &shard, version.unsigned_abs());
        let sealed = match envelope::seal(backend.as_ref(), &id, &plaintext).await {
            Ok(sealed) => sealed,
            Err(e) => {
                // The backend refused or failed before anything was written: still a request
                // that touched a shard, so it is audited. Best effort: the caller gets the
                // backend's error either way, and nothing was stored.
                let err = ApiError::from(e);
                let mut event = ctx.event("shard.put").account(&account).shard(&shard);
                event.outcome = err.code.as_str().to_string();
                event.version = Some(version);
                event.backend = Some(placement.backend.clone());
                if let Err(audit_err) = state.audit.record(event).await {
                    tracing::warn!(
                        code = audit_err.code.as_str(),
                        "the audit event of a failed shard.put was not recorded"
                    );
                }
                return Err(err);
            }
        };
        let row = ShardVersionRow {
            account: account.clone(),
            shard: shard.clone(),
            version,
            format_version: i16::from(id.format_version),
            backend: placement.backend.clone(),
            key_ref: sealed.wrapped.key_ref.clone(),
            key_version: i64::from(sealed.wrapped.key_version),
            wrapped_dek: sealed.wrapped.blob,
            nonce: sealed.nonce.to_vec(),
            ciphertext: sealed.ciphertext,
            created_at: crate::now_ms(),
            created_by: ctx.caller.name.clone(),
        };
        let event = ctx
            .event("shard.put")
            .account(&account)
            .shard(&shard)
            .version(version)
            .backend(&placement.backend)
            .detail(format!("key_version={}", row.key_version));
        let mut guard = state.audit.lock().await?;
        let audit = guard.begin(&event);
        let result = state.store.insert_shard_version(&row, &audit).await;
        guard.finish(Some(&audit), &result).await;
        match result {
            Ok(()) => {
                return Ok(json(
                    StatusCode::CREATED,
                    PutShardResponse {
                        version,
                        backend: placement.backend,
                    },
                ))
            }
            Err(StoreError::Conflict { .. }) if body.expected_version.is_none() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        ErrorCode::VersionConflict,
        "too many concurrent writers of this shard; retry",
    ))
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
    let result = fetch(&state, &account, &shard, q.version).await;
    let mut event = ctx
        .event("shard.get")
        .account(&account)
        .shard(&shard)
        .outcome_of(&result);
    event.version = result.as_ref().map(|o| o.version).ok().or(q.version);
    event.backend = result.as_ref().ok().map(|o| o.backend.clone());
    // Fail closed: no shard leaves unless its read is durably audited.
    state.audit.record(event).await?;
    let opened = result?;
    Ok(json(
        StatusCode::OK,
        ShardResponse {
            shard: Zeroizing::new(B64.encode(&opened.plaintext)),
            version: opened.version,
            backend: opened.backend,
        },
    ))
}

/// Crypto-shred every version of a shard.
#[utoipa::path(delete, path = "/v1/accounts/{account}/shards/{shard}", tag = "shards",
    params(("account" = String, Path), ("shard" = String, Path)),
    responses((status = 200, description = "receipt", body = DeleteShardResponse)),
    security(("bearer" = ["shards:delete"])))]
pub async fn delete_shard(
    State(state): State<AppState>,
    ctx: Ctx,
    path: ShardPath,
) -> Result<Response, ApiError> {
    let (account, shard) = shard_ids(path)?;
    ctx.require(&state, Scope::ShardsDelete, Some(&account), "shard.delete")?;
    let event = ctx.event("shard.delete").account(&account).shard(&shard);
    let mut guard = state.audit.lock().await?;
    guard.arm();
    let seal = |n: i64| guard.seal(&event.clone().detail(format!("destroyed_versions={n}")));
    let result = state.store.delete_shard(&account, &shard, &seal).await;
    let record = result.as_ref().ok().map(|n| seal(*n));
    guard.finish(record.as_ref(), &result).await;
    match result {
        Ok(n) => Ok(json(
            StatusCode::OK,
            DeleteShardResponse {
                destroyed_versions: n,
                audit_event: record.as_ref().map(Auditor::event_id).unwrap_or_default(),
            },
        )),
        Err(StoreError::ShardNotFound) => Err(not_found(&state, &account, &shard, None).await),
        Err(e) => Err(e.into()),
    }
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
    ids::check("account", &account)?;
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
    if state.store.get_account(&account).await?.is_none() {
        return Err(ApiError::new(ErrorCode::AccountNotFound, "no such account"));
    }
    let page = state
        .store
        .list_shards(&account, q.after.as_deref(), limit)
        .await?;
    let next_after = (page.len() as i64 == limit)
        .then(|| page.last().map(|s| s.shard.clone()))
        .flatten();
    state
        .audit
        .record(
            ctx.event("shard.list")
                .account(&account)
                .detail(format!("returned={}", page.len())),
        )
        .await?;
    Ok(json(
        StatusCode::OK,
        ShardListResponse {
            shards: page
                .into_iter()
                .map(|s| ShardListEntry {
                    shard: s.shard,
                    latest_version: s.latest_version,
                    backend: s.backend,
                })
                .collect(),
            next_after,
        },
    ))
}
