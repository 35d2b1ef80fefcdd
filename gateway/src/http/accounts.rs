//! `/v1/accounts/{account}`: create or change a tier, read, crypto-shred.

use super::api::{json, path_error, ApiJson, Ctx};
use crate::domain::audit::Auditor;
use crate::domain::auth::Scope;
use crate::domain::ids::AccountId;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::state::AppState;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use shardgate_policy::Placement;
use shardgate_store::AccountRecord;
use std::time::Duration;
use tracing::Instrument as _;
use utoipa::ToSchema;

/// `PUT /v1/accounts/{account}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutAccountRequest {
    /// A tier declared in the config, e.g. `retail`.
    pub tier: String,
    /// Versions of each shard kept at every write of this account (older ones are
    /// crypto-shredded in the write's transaction); `0` keeps every version; `null` follows
    /// the gateway's `[retention] keep_versions`. Absent: unchanged (a new account follows
    /// the gateway's setting).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 0)]
    pub keep_versions: Option<Option<u32>>,
}

/// A field that is present (`Some`), with `null` as `Some(None)`; `#[serde(default)]` makes
/// an absent field `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

/// Where an account's effective `keep_versions` comes from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeepVersionsSource {
    /// The account's own setting.
    Account,
    /// The gateway's `[retention] keep_versions`.
    Default,
}

/// An account as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountResponse {
    /// Account id.
    pub account: String,
    /// Tier.
    pub tier: String,
    /// Backend the policy picks for new shard versions.
    pub backend: String,
    /// Whether this request created the account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// Number of shards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_count: Option<i64>,
    /// Shard versions whose data key is still wrapped on another backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions_on_other_backends: Option<i64>,
    /// The migration job a tier change started (its versions move in the background).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_job: Option<String>,
    /// Versions of each shard a write keeps (0 = every version).
    pub keep_versions: u32,
    /// Whether `keep_versions` is the account's own or the gateway default.
    pub keep_versions_source: KeepVersionsSource,
}

/// The effective retention of an account record.
fn retention_of(state: &AppState, record: &AccountRecord) -> (u32, KeepVersionsSource) {
    match record.keep_versions.and_then(|k| u32::try_from(k).ok()) {
        Some(k) => (k, KeepVersionsSource::Account),
        None => (state.retention.keep_versions, KeepVersionsSource::Default),
    }
}

/// Receipt of a crypto-shred.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteAccountResponse {
    /// Account id.
    pub account: String,
    /// Shards destroyed.
    pub destroyed_shards: i64,
    /// Shard versions destroyed.
    pub destroyed_versions: i64,
    /// Audit event id (`<chain>:<seq>`).
    pub audit_event: String,
}

/// An existing account and the backend the policy picks for it now.
pub(crate) async fn placed_account(
    state: &AppState,
    account: &str,
) -> Result<(AccountRecord, Placement), ApiError> {
    let record = state
        .store
        .get_account(account)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::AccountNotFound, "no such account"))?;
    let placement = crate::service::accounts::placement_of(state, &record)?;
    Ok((record, placement))
}

/// The path's account id, checked.
fn account_id(p: Result<Path<String>, PathRejection>) -> Result<AccountId, ApiError> {
    let Path(account) = p.map_err(path_error)?;
    Ok(AccountId::parse(account)?)
}

/// Create an account or change its tier.
#[utoipa::path(put, path = "/v1/accounts/{account}", tag = "accounts",
    params(("account" = String, Path, description = "account id")),
    request_body = PutAccountRequest,
    responses((status = 200, description = "tier changed", body = AccountResponse),
               (status = 201, description = "account created", body = AccountResponse)),
    security(("bearer" = ["accounts:write"])))]
pub async fn put_account(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<PutAccountRequest>,
) -> Result<Response, ApiError> {
    let account = account_id(path)?;
    ctx.require(&state, Scope::AccountsWrite, Some(&account), "account.put")?;
    let placement = state.policy.place(&account, &body.tier).map_err(|_| {
        ApiError::new(
            ErrorCode::UnknownTier,
            "the tier is not declared in the configuration",
        )
    })?;
    let (keep, keep_detail) = match body.keep_versions {
        None => (shardgate_store::KeepVersions::Unchanged, String::new()),
        Some(k) => (
            shardgate_store::KeepVersions::Set(k.map(i64::from)),
            format!(
                " keep_versions={}",
                k.map_or_else(|| "default".to_string(), |k| k.to_string())
            ),
        ),
    };
    let event = ctx
        .event("account.put")
        .account(&account)
        .backend(&placement.backend)
        .detail(format!("tier={}{keep_detail}", body.tier));
    let mut guard = state.audit.lock().await?;
    let record = guard.begin(&event);
    let result = state
        .store
        .put_account_with_retention(&account, &body.tier, keep, crate::now_ms(), &record)
        .await;
    guard.finish(Some(&record), &result).await;
    let previous = result?;
    let created = previous.is_none();
    // A tier change that moves the account to another backend starts its migration job.
    let mut migration_job = None;
    if let Some(old_tier) = previous.as_deref() {
        let before = state
            .policy
            .place(&account, old_tier)
            .map(|p| p.backend)
            .ok();
        if before.as_deref() != Some(placement.backend.as_str()) {
            let stats = state
                .store
                .account_stats(&account, &placement.backend)
                .await?;
            if stats.versions_elsewhere > 0 {
                let selector = shardgate_store::MigrationSelector {
                    account: Some(account.to_string()),
                    ..Default::default()
                };
                // The snapshot of a large account can outlast the request's deadline: create
                // the job in the background and answer with its id now.
                let id = uuid::Uuid::new_v4().to_string();
                let (st, job_id, origin) = (state.clone(), id.clone(), ctx.origin());
                // In the request's span: its log lines keep the request id.
                let mut creating = tokio::spawn(
                    async move {
                        if let Err(e) = crate::service::migrate::start_with_id(
                            &st,
                            &job_id,
                            selector,
                            &origin,
                        )
                        .await
                        {
                            tracing::error!(job = %job_id, error = %e, "the migration job of a tier change could not be created");
                        }
                    }
                    .in_current_span(),
                );
                // Usually done in milliseconds: wait a little so the job exists when the
                // answer names it; a huge snapshot goes on after the answer.
                let _ = tokio::time::timeout(Duration::from_millis(1000), &mut creating).await;
                migration_job = Some(id);
            }
        }
    }
    let (keep_versions, keep_versions_source) = match body.keep_versions {
        Some(Some(k)) => (k, KeepVersionsSource::Account),
        Some(None) => (state.retention.keep_versions, KeepVersionsSource::Default),
        None => match state.store.get_account(&account).await? {
            Some(record) => retention_of(&state, &record),
            None => (state.retention.keep_versions, KeepVersionsSource::Default),
        },
    };
    Ok(json(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        AccountResponse {
            account: account.into_string(),
            tier: body.tier,
            backend: placement.backend,
            created: Some(created),
            shard_count: None,
            versions_on_other_backends: None,
            migration_job,
            keep_versions,
            keep_versions_source,
        },
    ))
}

/// Read an account: tier, backend, shard count, versions still on another backend.
#[utoipa::path(get, path = "/v1/accounts/{account}", tag = "accounts",
    params(("account" = String, Path, description = "account id")),
    responses((status = 200, description = "the account", body = AccountResponse)),
    security(("bearer" = ["accounts:read"])))]
pub async fn get_account(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let account = account_id(path)?;
    ctx.require(&state, Scope::AccountsRead, Some(&account), "account.get")?;
    let (record, placement) = placed_account(&state, &account).await?;
    let stats = state
        .store
        .account_stats(&account, &placement.backend)
        .await?;
    let (keep_versions, keep_versions_source) = retention_of(&state, &record);
    Ok(json(
        StatusCode::OK,
        AccountResponse {
            account: account.into_string(),
            tier: record.tier,
            backend: placement.backend,
            created: None,
            shard_count: Some(stats.shard_count),
            versions_on_other_backends: Some(stats.versions_elsewhere),
            migration_job: None,
            keep_versions,
            keep_versions_source,
        },
    ))
}

/// Crypto-shred every shard version of the account, then the account.
#[utoipa::path(delete, path = "/v1/accounts/{account}", tag = "accounts",
    params(("account" = String, Path, description = "account id"),
        ("Idempotency-Key" = Option<String>, Header,
            description = "retry-safe delete: a retry with the same key replays the first answer")),
    responses((status = 200, description = "receipt", body = DeleteAccountResponse)),
    security(("bearer" = ["accounts:delete"])))]
pub async fn delete_account(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let account = account_id(path)?;
    ctx.require(
        &state,
        Scope::AccountsDelete,
        Some(&account),
        "account.delete",
    )?;
    // `Idempotency-Key`: see `super::idempotency::IdemKey`.
    let idem = super::idempotency::IdemKey::from_headers(
        &state,
        &headers,
        &ctx,
        "DELETE",
        &format!("/v1/accounts/{account}"),
        &[],
    )?;
    if let Some(idem) = &idem {
        if let Some(answer) = idem.lookup(&state).await? {
            return Ok(answer);
        }
    }
    let event = ctx.event("account.delete").account(&account);
    let mut guard = state.audit.lock().await?;
    guard.arm();
    let seal = |n: i64| guard.seal(&event.clone().detail(format!("destroyed_versions={n}")));
    let receipt = |o: shardgate_store::DeleteOutcome| DeleteAccountResponse {
        account: account.to_string(),
        destroyed_shards: o.shards,
        destroyed_versions: o.versions,
        audit_event: Auditor::event_id(&seal(o.versions)),
    };
    let idem_record = |o: shardgate_store::DeleteOutcome| match &idem {
        // Serialising a receipt cannot fail.
        Some(i) => i
            .record(StatusCode::OK, &receipt(o))
            .unwrap_or_else(|_| unreachable!("a receipt serialises")),
        None => unreachable!("only called with an idempotency key"),
    };
    let write = idem.as_ref().map(|i| {
        (
            i.expired_before_ms(),
            &idem_record as shardgate_store::IdempotencyForOutcome<'_>,
        )
    });
    let result = state
        .store
        .delete_account_idempotent(&account, &seal, write)
        .await;
    let (result, replay) = match result {
        Ok(shardgate_store::Idempotent::Done(o)) => (Ok(o), None),
        Ok(shardgate_store::Idempotent::Replay(rec)) => (
            Ok(shardgate_store::DeleteOutcome {
                shards: 0,
                versions: 0,
            }),
            Some(rec),
        ),
        Err(e) => (Err(e), None),
    };
    let record = match (&result, &replay) {
        (Ok(o), None) => Some(seal(o.versions)),
        _ => None,
    };
    guard.finish(record.as_ref(), &result).await;
    if let (Some(rec), Some(idem)) = (replay, &idem) {
        return idem.replay(rec);
    }
    let outcome = result?;
    if let Some(idem) = &idem {
        idem.purge_now_and_then(&state);
    }
    Ok(json(
        StatusCode::OK,
        DeleteAccountResponse {
            account: account.into_string(),
            destroyed_shards: outcome.shards,
            destroyed_versions: outcome.versions,
            audit_event: record.as_ref().map(Auditor::event_id).unwrap_or_default(),
        },
    ))
}
