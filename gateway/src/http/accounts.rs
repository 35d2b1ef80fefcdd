//! `/v1/accounts/{account}`: create or change a tier, read, crypto-shred.

use super::api::{json, path_error, ApiJson, Ctx};
use crate::domain::auth::Scope;
use crate::domain::ids::AccountId;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::state::AppState;
use crate::service::accounts::{
    self, AccountDeleted, AccountDestroyed, DowngradeConsent, IdempotentAccountDelete, PutAccount,
    Retention,
};
use crate::service::approvals;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use shardgate_policy::Attributes;
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
    /// Confirm a tier change that lowers the account's protection (its new backend's kind
    /// ranks below its current one's: `pkcs11` > `aws-kms` > `local`). Without it such a
    /// change is refused with 409 `downgrade_refused`; with it, the caller must also hold
    /// `admin` (else 403 `forbidden`). Ignored when the change is not a downgrade.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Numeric facts the platform keeps about the account (`{"aum_usd": 12000000, "users":
    /// 800}`; names `[A-Za-z0-9._:-]`, at most 64 bytes, at most 32 of them), replacing what
    /// it had; absent: unchanged. The policy's tier rules may put the account in another tier
    /// than `tier` by them (docs/policy-and-migration.md, "Tiers from account attributes").
    #[serde(default)]
    #[schema(value_type = Option<std::collections::BTreeMap<String, f64>>)]
    pub attributes: Option<Attributes>,
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
    /// The tier it is in (the one asked for, or the one a tier rule put it in).
    pub tier: String,
    /// The tier asked for, when a tier rule put the account in another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_tier: Option<String>,
    /// Why it is in `tier`: `asked for`, or the tier rule that decided (a put's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier_rule: Option<String>,
    /// Its attributes.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::BTreeMap<String, f64>>)]
    pub attributes: Option<Attributes>,
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

/// The answer's view of an account's effective retention.
fn retention(r: Retention) -> (u32, KeepVersionsSource) {
    let source = if r.from_account {
        KeepVersionsSource::Account
    } else {
        KeepVersionsSource::Default
    };
    (r.keep_versions, source)
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

/// The path's account id, checked.
fn account_id(p: Result<Path<String>, PathRejection>) -> Result<AccountId, ApiError> {
    let Path(account) = p.map_err(path_error)?;
    Ok(AccountId::parse(account)?)
}

/// Create an account or change its tier.
///
/// A tier change that lowers the account's protection (HSM to KMS or local, KMS to local) is
/// refused with 409 `downgrade_refused` unless the body sends `allow_downgrade` and the
/// caller holds `admin`.
#[utoipa::path(put, path = "/v1/accounts/{account}", tag = "accounts",
    params(("account" = String, Path, description = "account id")),
    request_body = PutAccountRequest,
    responses((status = 200, description = "tier changed", body = AccountResponse),
               (status = 201, description = "account created", body = AccountResponse),
               (status = 202, description = "held for approval (dual control)", body = crate::http::held::HeldResponse)),
    security(("bearer" = ["accounts:write"])))]
pub async fn put_account(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<PutAccountRequest>,
) -> Result<Response, ApiError> {
    let account = account_id(path)?;
    ctx.require(&state, Scope::AccountsWrite, Some(&account), "account.put")?;
    let consent = DowngradeConsent::of(
        body.allow_downgrade,
        // `admin` on this account: an admin credential never carries a prefix, so this is
        // the scope alone (a stored row with both is held to the prefix).
        ctx.caller.require(Scope::Admin, Some(&account)).is_ok(),
    );
    // Dual control: a put that confirms a downgrade waits for a second credential.
    if consent == DowngradeConsent::Granted {
        let op = approvals::HeldOp::Downgrade {
            account: account.to_string(),
            tier: body.tier.clone(),
            keep_versions: body.keep_versions,
            attributes: body.attributes.clone(),
        };
        if let Some(h) = approvals::hold(&state, &op, &ctx.origin()).await? {
            return Ok(super::held::held(h));
        }
    }
    let put = accounts::put(
        &state,
        PutAccount {
            account: &account,
            tier: &body.tier,
            attributes: body.attributes.clone(),
            keep_versions: body.keep_versions,
            downgrade: consent,
            event: ctx.event("account.put").account(&account),
            origin: ctx.origin(),
        },
    )
    .await?;
    let status = if put.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let (keep_versions, keep_versions_source) = retention(put.retention);
    Ok(json(
        status,
        AccountResponse {
            account: account.into_string(),
            requested_tier: (put.tier != body.tier).then_some(body.tier),
            tier: put.tier,
            tier_rule: Some(put.tier_rule),
            attributes: body.attributes,
            backend: put.backend,
            created: Some(put.created),
            shard_count: None,
            versions_on_other_backends: None,
            migration_job: put.migration_job,
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
    let view = accounts::get(&state, &account).await?;
    let (keep_versions, keep_versions_source) = retention(view.retention);
    Ok(json(
        StatusCode::OK,
        AccountResponse {
            account: account.into_string(),
            requested_tier: view
                .record
                .requested_tier
                .clone()
                .filter(|t| *t != view.record.tier),
            attributes: Some(accounts::stored_attributes(&view.record)).filter(|a| !a.is_empty()),
            tier: view.record.tier,
            tier_rule: None,
            backend: view.placement.backend,
            created: None,
            shard_count: Some(view.stats.shard_count),
            versions_on_other_backends: Some(view.stats.versions_elsewhere),
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
    responses((status = 200, description = "receipt", body = DeleteAccountResponse),
               (status = 202, description = "held for approval (dual control)", body = crate::http::held::HeldResponse)),
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
    // Dual control: the delete waits for a second credential.
    let op = approvals::HeldOp::AccountDelete {
        account: account.to_string(),
    };
    if let Some(h) = approvals::hold(&state, &op, &ctx.origin()).await? {
        return Ok(super::held::held(h));
    }
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
    let record = |d: &AccountDestroyed| match &idem {
        // Serialising a receipt cannot fail.
        Some(i) => i
            .record(StatusCode::OK, &receipt(&account, d))
            .unwrap_or_else(|_| unreachable!("a receipt serialises")),
        None => unreachable!("only called with an idempotency key"),
    };
    let idempotency = idem.as_ref().map(|i| IdempotentAccountDelete {
        record: &record,
        expired_before_ms: i.expired_before_ms(),
    });
    match accounts::delete(&state, &account, &event, idempotency).await? {
        AccountDeleted::Replay(rec) => idem.as_ref().map_or_else(
            || Err(ApiError::new(ErrorCode::Internal, "unexpected replay")),
            |i| i.replay(rec),
        ),
        AccountDeleted::Destroyed(d) => {
            if let Some(idem) = &idem {
                idem.purge_now_and_then(&state);
            }
            Ok(json(StatusCode::OK, receipt(&account, &d)))
        }
    }
}

/// The receipt of an account delete.
pub(crate) fn receipt(account: &AccountId, d: &AccountDestroyed) -> DeleteAccountResponse {
    DeleteAccountResponse {
        account: account.to_string(),
        destroyed_shards: d.outcome.shards,
        destroyed_versions: d.outcome.versions,
        audit_event: d.audit_event.clone(),
    }
}
