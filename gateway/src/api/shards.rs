//! `/v1/accounts/{account}/shards[/{shard}]`: list, put a new version, get, crypto-shred.

use super::{json, path_error, query_error, ApiJson, Ctx};
use crate::audit::{Auditor, ChainSeal, CHAIN_WAIT};
use crate::auth::Scope;
use crate::envelope;
use crate::error::{ApiError, ErrorCode};
use crate::ids;
use crate::state::AppState;
use crate::write_group::Grouped;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use shardgate_backends::ShardIdentity;
use shardgate_store::{
    AuditRecord, IdempotencyRecord, Idempotent, IdempotentWrite, Prune, ShardVersionRow, StoreError,
};
use std::sync::atomic::{AtomicI64, Ordering};
use tracing::Instrument as _;
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

type ShardPath = Result<Path<(String, String)>, PathRejection>;

fn shard_ids(p: ShardPath) -> Result<(String, String), ApiError> {
    let Path((account, shard)) = p.map_err(path_error)?;
    ids::check("account", &account)?;
    ids::check("shard", &shard)?;
    Ok((account, shard))
}

/// The request header naming a retry-safe write.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Set on an answer replayed from an earlier request with the same `Idempotency-Key`.
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// How often (at most) a process purges expired idempotency records, in milliseconds.
const IDEMPOTENCY_PURGE_EVERY_MS: i64 = 60_000;

/// A write request's `Idempotency-Key`, resolved to its scope (caller identity + method +
/// path) and request hash.
///
/// A retry with the same key, scope and request gets the first answer again (same status
/// and body, plus `Idempotent-Replayed: true`) for `[idempotency] window_secs`; the same key
/// with another request is 400 `invalid_request`. The record commits in the same
/// transaction as the write, so there is never a write without its key or a key without
/// its write. Two concurrent requests with one key: exactly one writes; the other waits for
/// it (on the key's row in PostgreSQL, on the write lock in SQLite, and on this process's
/// audit chain lock) and then replays its answer. Only successful answers are stored: a
/// failed request may be retried with the same key.
pub(crate) struct IdemKey {
    scope: String,
    key: String,
    hash: Vec<u8>,
    now_ms: i64,
    expired_before_ms: i64,
}

impl IdemKey {
    /// The key of the request, if it carries one; 400 `invalid_request` if it is not 1 to
    /// 128 printable ASCII characters. `request` lists the fields that define the request
    /// (the hash is length-prefixed, salted with the scope and key).
    pub(crate) fn from_headers(
        state: &AppState,
        headers: &HeaderMap,
        ctx: &Ctx,
        method: &str,
        path: &str,
        request: &[&[u8]],
    ) -> Result<Option<IdemKey>, ApiError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let invalid = || {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "Idempotency-Key must be 1 to 128 printable ASCII characters",
            )
        };
        if values.next().is_some() {
            return Err(invalid());
        }
        let key = value.to_str().map_err(|_| invalid())?;
        if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(invalid());
        }
        // The credential, not the identity name: tokens sharing a name never share keys.
        let caller = ctx.caller.key();
        let scope = format!("{}:{caller} {method} {path}", caller.len());
        // Keyed (audit key, not in the database): the stored hash covers the shard bytes,
        // and a plain hash would let someone with database access test guesses of them.
        let parts: Vec<&[u8]> = [scope.as_bytes(), key.as_bytes()]
            .into_iter()
            .chain(request.iter().copied())
            .collect();
        let hash = state
            .audit
            .keyed_digest(b"shardgate idempotency request v1", &parts);
        let now_ms = crate::now_ms();
        let window_ms =
            i64::try_from(state.idempotency.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Ok(Some(IdemKey {
            scope,
            key: key.to_string(),
            hash,
            now_ms,
            expired_before_ms: now_ms.saturating_sub(window_ms),
        }))
    }

    /// The record to store with the write's answer.
    pub(crate) fn record(
        &self,
        status: StatusCode,
        body: &impl Serialize,
    ) -> Result<IdempotencyRecord, ApiError> {
        Ok(IdempotencyRecord {
            scope: self.scope.clone(),
            key: self.key.clone(),
            request_hash: self.hash.clone(),
            status: i32::from(status.as_u16()),
            body_json: serde_json::to_string(body)
                .map_err(|_| ApiError::new(ErrorCode::Internal, "answer not serialisable"))?,
            created_at: self.now_ms,
        })
    }

    /// The stored answer, when a live record of this key exists.
    pub(crate) async fn lookup(&self, state: &AppState) -> Result<Option<Response>, ApiError> {
        match state.store.get_idempotency(&self.scope, &self.key).await? {
            Some(rec) if rec.created_at >= self.expired_before_ms => self.replay(rec).map(Some),
            _ => Ok(None),
        }
    }

    /// Answer a retry with the first answer, or 400 if the key was used for another request.
    pub(crate) fn replay(&self, rec: IdempotencyRecord) -> Result<Response, ApiError> {
        if rec.request_hash != self.hash {
            return Err(ApiError::new(
                ErrorCode::VersionConflict,
                "Idempotency-Key reused with a different request",
            ));
        }
        let status = u16::try_from(rec.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "stored answer is malformed"))?;
        Response::builder()
            .status(status)
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENT_REPLAYED, "true")
            .body(axum::body::Body::from(rec.body_json))
            .map_err(|_| ApiError::new(ErrorCode::Internal, "stored answer is malformed"))
    }

    /// What the store needs to write the record with an insert.
    pub(crate) fn write<'a>(&self, record: &'a IdempotencyRecord) -> IdempotentWrite<'a> {
        IdempotentWrite {
            record,
            expired_before_ms: self.expired_before_ms,
        }
    }

    /// Records created before this (unix milliseconds) no longer count.
    pub(crate) fn expired_before_ms(&self) -> i64 {
        self.expired_before_ms
    }

    /// Purge expired records, at most once a minute per process, off the request path.
    pub(crate) fn purge_now_and_then(&self, state: &AppState) {
        static LAST: AtomicI64 = AtomicI64::new(0);
        let last = LAST.load(Ordering::Relaxed);
        if self.now_ms - last < IDEMPOTENCY_PURGE_EVERY_MS
            || LAST
                .compare_exchange(last, self.now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let store = state.store.clone();
        let before = self.expired_before_ms;
        tokio::spawn(
            async move {
                if let Err(e) = store.purge_idempotency(before).await {
                    tracing::warn!(error = %e, "purging expired idempotency records failed");
                }
            }
            .in_current_span(),
        );
    }
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
    let backend = crate::integrity::row_backend(state, &row)?;
    let plaintext = envelope::open(backend.as_ref(), &row)
        .await
        .map_err(|e| crate::integrity::open_error(state, &row, e))?;
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
    // Stamped once, so that re-sealing a pruned version's event gives the same record.
    let prune_base = ctx.event("shard.prune").account(&account).shard(&shard);
    let default_keep = i64::from(state.retention.keep_versions);

    for _ in 0..MAX_WRITE_ATTEMPTS {
        // Placed at each try: a try that lost to a tier change is placed by the new tier.
        let (record, latest) = state
            .store
            .account_and_latest(&account, &shard)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::AccountNotFound, "no such account"))?;
        let latest = latest.unwrap_or(0);
        let placement = super::accounts::placement_of(&state, &record)?;
        let backend = state
            .backend(&placement.backend)
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "placement names no backend"))?
            .clone();
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
            key_commitment: Some(sealed.commitment.to_vec()),
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
        // A write that prunes nothing and carries no idempotency key joins a group commit
        // (see `write_group`); its account and latest version are re-checked there as here.
        let keep = record.keep_versions.unwrap_or(default_keep);
        if let Some(groups) = state
            .write_groups
            .as_ref()
            .filter(|_| idem.is_none() && (keep <= 0 || version <= keep))
        {
            let tier = record.tier.clone();
            match groups
                .write(row.clone(), tier, record.keep_versions, event.clone())
                .await
            {
                Grouped::Stored => {
                    let answer = PutShardResponse {
                        version,
                        backend: placement.backend.clone(),
                        pruned_versions: Vec::new(),
                    };
                    return Ok(json(StatusCode::CREATED, answer));
                }
                Grouped::Refused(StoreError::Conflict { .. })
                    if body.expected_version.is_none() =>
                {
                    continue;
                }
                Grouped::Refused(StoreError::AccountChanged) | Grouped::Again => continue,
                Grouped::Refused(e) => return Err(e.into()),
                // Nothing of the group was stored: this try goes on alone, below.
                Grouped::Alone => {}
            }
        }
        // Retention (account `keep_versions`, else `[retention]`) runs in the write's
        // transaction; each pruned version gets an event chained after the write's own.
        let prune_events = |pruned: &[i64]| -> Vec<crate::audit::Event> {
            pruned
                .iter()
                .map(|v| {
                    prune_base.clone().version(*v).detail(format!(
                        "retention: pruned by the write of version {version}"
                    ))
                })
                .collect()
        };
        // The records are sealed inside the store call, once the row is in place (see
        // `LateSeal`): the idempotent answer, stored in the same transaction, names the
        // pruned versions' events from there.
        let sealed = std::sync::OnceLock::<Vec<AuditRecord>>::new();
        let answer_for = |pruned: &[i64], records: &[AuditRecord]| PutShardResponse {
            version,
            backend: placement.backend.clone(),
            pruned_versions: pruned
                .iter()
                .zip(records.iter().skip(1))
                .map(|(v, r)| PrunedVersion {
                    version: *v,
                    audit_event: Auditor::event_id(r),
                })
                .collect(),
        };
        let idem_for = |pruned: &[i64]| match &idem {
            // Serialising an answer cannot fail.
            Some(i) => i
                .record(
                    StatusCode::CREATED,
                    &answer_for(pruned, sealed.get().map_or(&[], Vec::as_slice)),
                )
                .unwrap_or_else(|_| unreachable!("an answer serialises")),
            None => unreachable!("only called with an idempotency key"),
        };
        let record = match &idem {
            Some(idem) => Some(idem.record(StatusCode::CREATED, &answer_for(&[], &[]))?),
            None => None,
        };
        let write = idem.as_ref().zip(record.as_ref()).map(|(i, r)| i.write(r));
        let retention = Prune {
            default_keep,
            idem: idem
                .is_some()
                .then_some(&idem_for as shardgate_store::IdempotencyForPruned<'_>),
        };
        let events = [event];
        let mut seal = ChainSeal::new(&state.audit, &events, CHAIN_WAIT)
            .with_prunes(&prune_events)
            .publish_to(&sealed);
        // The chain is taken only once the row is in place (see `LateSeal`): concurrent
        // writes do their row work at the same time and queue only for the audit insert and
        // the commit.
        let result = state
            .store
            .insert_shard_version_sealed(&row, write, Some(retention), &mut seal)
            .await;
        let busy = seal.timed_out();
        match result {
            Ok(Idempotent::Replay(rec)) => {
                // Nothing was written (nor audited): the chain head stays.
                seal.finish(false, &Ok::<(), StoreError>(())).await;
                return idem.as_ref().map_or_else(
                    || Err(ApiError::new(ErrorCode::Internal, "unexpected replay")),
                    |i| i.replay(rec),
                );
            }
            Ok(Idempotent::Done(pruned)) => {
                let answer = answer_for(&pruned, seal.records());
                seal.finish(true, &Ok::<(), StoreError>(())).await;
                if !pruned.is_empty() {
                    tracing::info!(
                        account = %account,
                        shard = %shard,
                        version,
                        pruned = ?pruned,
                        "retention crypto-shredded older versions"
                    );
                }
                if let Some(idem) = &idem {
                    idem.purge_now_and_then(&state);
                }
                return Ok(json(StatusCode::CREATED, answer));
            }
            Err(e) => {
                let result = Err::<(), _>(e);
                seal.finish(false, &result).await;
                let Err(e) = result else { unreachable!() };
                if busy {
                    // Rolled back while another writer held the chain: nothing was stored.
                    tracing::debug!("audit chain busy at a shard write; writing again");
                    continue;
                }
                if matches!(e, StoreError::Conflict { .. }) && body.expected_version.is_none() {
                    continue;
                }
                if matches!(e, StoreError::AccountChanged) {
                    // A tier change committed while this write was in flight: place it again.
                    tracing::debug!("the account changed during a shard write; writing again");
                    continue;
                }
                return Err(e.into());
            }
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
    let mut guard = state.audit.lock().await?;
    guard.arm();
    let seal = |n: i64| guard.seal(&event.clone().detail(format!("destroyed_versions={n}")));
    let receipt = |n: i64| DeleteShardResponse {
        destroyed_versions: n,
        audit_event: Auditor::event_id(&seal(n)),
    };
    let idem_record = |n: i64| match &idem {
        // Serialising a receipt cannot fail.
        Some(i) => i
            .record(StatusCode::OK, &receipt(n))
            .unwrap_or_else(|_| unreachable!("a receipt serialises")),
        None => unreachable!("only called with an idempotency key"),
    };
    let write = idem.as_ref().map(|i| {
        (
            i.expired_before_ms,
            &idem_record as shardgate_store::IdempotencyForCount<'_>,
        )
    });
    let result = state
        .store
        .delete_shard_idempotent(&account, &shard, &seal, write)
        .await;
    let (result, replay) = match result {
        Ok(Idempotent::Done(n)) => (Ok(n), None),
        Ok(Idempotent::Replay(rec)) => (Ok(0), Some(rec)),
        Err(e) => (Err(e), None),
    };
    let record = match (&result, &replay) {
        (Ok(n), None) => Some(seal(*n)),
        _ => None,
    };
    guard.finish(record.as_ref(), &result).await;
    if let (Some(rec), Some(idem)) = (replay, &idem) {
        return idem.replay(rec);
    }
    match result {
        Ok(n) => {
            if let Some(idem) = &idem {
                idem.purge_now_and_then(&state);
            }
            Ok(json(
                StatusCode::OK,
                DeleteShardResponse {
                    destroyed_versions: n,
                    audit_event: record.as_ref().map(Auditor::event_id).unwrap_or_default(),
                },
            ))
        }
        Err(StoreError::ShardNotFound) => Err(not_found(&state, &account, &shard, None).await),
        Err(e) => Err(e.into()),
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
    ids::check("account", &account)?;
    ids::check("shard", &shard)?;
    ctx.require(
        &state,
        Scope::ShardsDelete,
        Some(&account),
        "shard.version_delete",
    )?;
    let version = version
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 1)
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
        .version(version)
        .detail("destroyed_versions=1");
    let mut guard = state.audit.lock().await?;
    let record = guard.begin(&event);
    let receipt = DeleteShardResponse {
        destroyed_versions: 1,
        audit_event: Auditor::event_id(&record),
    };
    let idem_record = match &idem {
        Some(i) => Some(i.record(StatusCode::OK, &receipt)?),
        None => None,
    };
    let write = idem
        .as_ref()
        .zip(idem_record.as_ref())
        .map(|(i, r)| i.write(r));
    let result = state
        .store
        .delete_shard_version_idempotent(&account, &shard, version, &record, write)
        .await;
    match result {
        Ok(Idempotent::Replay(rec)) => {
            guard.finish(None, &Ok::<(), StoreError>(())).await;
            idem.as_ref().map_or_else(
                || Err(ApiError::new(ErrorCode::Internal, "unexpected replay")),
                |i| i.replay(rec),
            )
        }
        Ok(Idempotent::Done(())) => {
            guard.finish(Some(&record), &Ok::<(), StoreError>(())).await;
            if let Some(idem) = &idem {
                idem.purge_now_and_then(&state);
            }
            Ok(json(StatusCode::OK, receipt))
        }
        Err(e) => {
            let result = Err::<(), _>(e);
            guard.finish(Some(&record), &result).await;
            match result {
                Err(StoreError::ShardNotFound) => {
                    Err(not_found(&state, &account, &shard, Some(version)).await)
                }
                Err(e) => Err(e.into()),
                Ok(()) => Err(ApiError::new(ErrorCode::Internal, "unreachable")),
            }
        }
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
