//! Dual control (`[approvals] required_for`): an account delete, a key destroy, a policy apply
//! or a confirmed downgrade named there is not done when asked. It is stored as a pending
//! request (the HTTP layer answers 202 with its id and expiry), audited, and done only when a
//! second credential, never the one that asked, approves it before it expires
//! (`POST /v1/admin/approvals/{id}:approve`). The approval and the operation are audited too;
//! the operation runs with the approver's origin and names the approval in its events.

use super::accounts::{
    self, AccountDeleted, AccountDestroyed, AccountPut, DowngradeConsent, PutAccount,
};
use super::keys_admin::{self, TransitionResponse};
use super::policy::{self, ApplyRequest, PolicyChange};
use super::state::Services;
use crate::domain::audit::Origin;
use crate::domain::error::DomainError;
use crate::domain::ids::AccountId;
use serde::{Deserialize, Serialize};
use shardgate_policy::{Attributes, KeyState, PolicyDocument};
use shardgate_store::ApprovalRecord;

pub use super::settings::{ApprovalsConfig, OPERATIONS};

/// A held operation, with what it needs to run later (ids, tiers, a policy: no secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "operation")]
pub enum HeldOp {
    /// Crypto-shred an account.
    #[serde(rename = "account.delete")]
    AccountDelete {
        /// The account.
        account: String,
    },
    /// Move a KEK version to `destroyed`.
    #[serde(rename = "key.destroy")]
    KeyDestroy {
        /// Backend instance.
        backend: String,
        /// KEK version.
        version: i64,
    },
    /// Commit a policy version.
    #[serde(rename = "policy.apply")]
    PolicyApply {
        /// The rules.
        document: PolicyDocument,
        /// Apply only if still served.
        expected_version: Option<i64>,
        /// Start the re-wrap jobs.
        migrate: bool,
        /// Confirmed moves down.
        allow_downgrade: bool,
    },
    /// An account put that confirms a downgrade (`allow_downgrade`).
    #[serde(rename = "downgrade")]
    Downgrade {
        /// The account.
        account: String,
        /// Its new tier.
        tier: String,
        /// Its retention, as the put asked.
        keep_versions: Option<Option<u32>>,
        /// Its attributes, as the put asked (`None`: unchanged).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attributes: Option<Attributes>,
    },
}

impl HeldOp {
    /// Its `required_for` name.
    pub fn name(&self) -> &'static str {
        match self {
            HeldOp::AccountDelete { .. } => "account.delete",
            HeldOp::KeyDestroy { .. } => "key.destroy",
            HeldOp::PolicyApply { .. } => "policy.apply",
            HeldOp::Downgrade { .. } => "downgrade",
        }
    }

    fn summary(&self) -> String {
        match self {
            HeldOp::AccountDelete { account } => format!("delete account {account}"),
            HeldOp::KeyDestroy { backend, version } => {
                format!("destroy key version {version} of backend {backend}")
            }
            HeldOp::PolicyApply { document, .. } => format!(
                "apply a policy of {} tier(s), {} pin(s), {} rollout(s), digest {}",
                document.tiers.len(),
                document.pins.len(),
                document.rollouts.len(),
                document.digest()
            ),
            HeldOp::Downgrade { account, tier, .. } => {
                format!("move account {account} down to tier {tier}")
            }
        }
    }
}

/// A stored request the caller is told about (202).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its id.
    pub id: String,
    /// The operation's name.
    pub operation: &'static str,
    /// Approvable until, unix ms.
    pub expires_ms: i64,
}

/// `Ok(None)`: `op` needs no approval here, do it now. `Ok(Some(held))`: it was stored (and
/// audited as `approval.request`) for a second credential to approve.
pub async fn hold(
    state: &Services,
    op: &HeldOp,
    origin: &Origin,
) -> Result<Option<Held>, DomainError> {
    if !state.approvals.requires(op.name()) {
        return Ok(None);
    }
    let Some(credential) = origin.credential.clone() else {
        // The command line (no credential) is not held: whoever runs it holds the
        // database's credentials anyway.
        return Ok(None);
    };
    let now = crate::now_ms();
    let ttl = i64::try_from(state.approvals.ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let request = serde_json::to_string(op)
        .map_err(|e| DomainError::Internal(format!("approval request: {e}")))?;
    let record = ApprovalRecord {
        id: uuid::Uuid::new_v4().to_string(),
        operation: op.name().to_string(),
        request,
        summary: op.summary(),
        requested_by: origin.actor.clone(),
        requested_credential: credential,
        created_ms: now,
        expires_ms: now.saturating_add(ttl),
        state: "pending".into(),
        approved_by: None,
        approved_credential: None,
        approved_ms: None,
    };
    let event = origin
        .event("approval.request")
        .detail(format!("approval={} {}", record.id, record.summary));
    let mut guard = state.audit.lock().await?;
    let sealed = guard.begin(&event);
    let result = state.store.insert_approval(&record, &sealed).await;
    guard.finish(Some(&sealed), &result).await;
    result?;
    Ok(Some(Held {
        id: record.id,
        operation: op.name(),
        expires_ms: record.expires_ms,
    }))
}

/// One stored request.
pub async fn get(state: &Services, id: &str) -> Result<ApprovalRecord, DomainError> {
    state
        .store
        .get_approval(id)
        .await?
        .ok_or_else(|| DomainError::NotFound("no such approval".into()))
}

/// What an approved operation did.
#[derive(Debug)]
pub enum Done {
    /// The account was crypto-shredded.
    AccountDeleted(AccountId, AccountDestroyed),
    /// The key version was destroyed.
    KeyDestroyed(TransitionResponse),
    /// The policy version was committed.
    PolicyApplied(PolicyChange),
    /// The account moved down.
    Downgraded(String, AccountPut),
}

/// Approve request `id` as `origin` (never its own asker, never twice, never late), then run
/// it.
pub async fn approve(
    state: &Services,
    id: &str,
    origin: &Origin,
) -> Result<(String, Done), DomainError> {
    let record = get(state, id).await?;
    let Some(credential) = origin.credential.clone() else {
        return Err(DomainError::Forbidden(
            "an approval needs a credential".into(),
        ));
    };
    if credential == record.requested_credential {
        return Err(DomainError::Forbidden(
            "the credential that asked for an operation cannot approve it: a second, different credential must"
                .into(),
        ));
    }
    let now = crate::now_ms();
    if record.state != "pending" || record.expires_ms <= now {
        return Err(DomainError::Conflict(format!(
            "approval {id} is {}: nothing to approve",
            if record.state == "pending" {
                "expired"
            } else {
                "already approved"
            }
        )));
    }
    let op: HeldOp = serde_json::from_str(&record.request)
        .map_err(|e| DomainError::Internal(format!("stored approval request: {e}")))?;
    let event = origin.event("approval.approve").detail(format!(
        "approval={id} requested_by={} {}",
        record.requested_by, record.summary
    ));
    let mut guard = state.audit.lock().await?;
    let sealed = guard.begin(&event);
    let result = state
        .store
        .approve(id, &origin.actor, &credential, now, &sealed)
        .await;
    let approved = matches!(result, Ok(true));
    guard.finish(approved.then_some(&sealed), &result).await;
    if !result? {
        return Err(DomainError::Conflict(format!(
            "approval {id} was approved or expired meanwhile: nothing to approve"
        )));
    }
    let done = run(state, op, id, origin).await?;
    Ok((record.operation, done))
}

/// Run an approved operation as `origin`; its events name the approval.
async fn run(state: &Services, op: HeldOp, id: &str, origin: &Origin) -> Result<Done, DomainError> {
    match op {
        HeldOp::AccountDelete { account } => {
            let account = AccountId::parse(account)?;
            let event = origin
                .event("account.delete")
                .account(&account)
                .detail(format!("approval={id}"));
            match accounts::delete(state, &account, &event, None).await? {
                AccountDeleted::Destroyed(d) => Ok(Done::AccountDeleted(account, d)),
                AccountDeleted::Replay(_) => Err(DomainError::Internal(
                    "an approved delete has no idempotency key to replay".into(),
                )),
            }
        }
        HeldOp::KeyDestroy { backend, version } => {
            let r = keys_admin::transition(state, &backend, version, KeyState::Destroyed, origin)
                .await?;
            Ok(Done::KeyDestroyed(r))
        }
        HeldOp::PolicyApply {
            document,
            expected_version,
            migrate,
            allow_downgrade,
        } => {
            let req = ApplyRequest {
                document,
                expected_version,
                dry_run: false,
                migrate,
                allow_downgrade,
            };
            Ok(Done::PolicyApplied(
                policy::apply(state, req, origin).await?,
            ))
        }
        HeldOp::Downgrade {
            account,
            tier,
            keep_versions,
            attributes,
        } => {
            let account = AccountId::parse(account)?;
            let put = accounts::put(
                state,
                PutAccount {
                    account: &account,
                    tier: &tier,
                    attributes,
                    keep_versions,
                    downgrade: DowngradeConsent::Granted,
                    event: origin.event("account.put").account(&account),
                    origin: origin.clone(),
                },
            )
            .await?;
            Ok(Done::Downgraded(tier, put))
        }
    }
}
