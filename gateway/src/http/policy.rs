//! `GET /v1/admin/policy` (the version this replica serves) and `PUT /v1/admin/policy`
//! (measure a new version against every account, and commit it unless `dry_run`): admin
//! routes with global effect, so a token with an account prefix is refused. Thin adapters
//! over [`crate::service::policy`]; the wire types mirror `shardgate_policy`'s.

use super::api::{json, ApiJson, Ctx};
use crate::domain::auth::Scope;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::service::policy::{self as svc, ApplyRequest, PolicyChange};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use shardgate_policy::{Class, Pin, PolicyDocument, Rollout, Threshold, TierRule};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A pin: this account's new versions go to `backend`, whatever its tier.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    /// Account id.
    pub account: String,
    /// Backend instance name.
    pub backend: String,
}

/// A rollout: `percent`% of `tier`'s accounts (a stable hash of the name and the account) go
/// to `backend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutBody {
    /// Unique name; the hash salt, so keep it when widening.
    pub name: String,
    /// The tier whose accounts it takes.
    pub tier: String,
    /// Backend instance name.
    pub backend: String,
    /// Share of the tier, in (0, 100], at most two decimals.
    pub percent: f64,
}

/// A priority class: how a backend's bulkhead admits an account's calls under overload
/// (`critical` may use every slot, `bulk` is shed first).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PriorityClass {
    /// High-value traffic: may use every slot; shed last.
    Critical,
    /// The default.
    Standard,
    /// Background and batch work: shed first.
    Bulk,
}

impl From<PriorityClass> for Class {
    fn from(c: PriorityClass) -> Self {
        match c {
            PriorityClass::Critical => Class::Critical,
            PriorityClass::Standard => Class::Standard,
            PriorityClass::Bulk => Class::Bulk,
        }
    }
}

impl From<Class> for PriorityClass {
    fn from(c: Class) -> Self {
        match c {
            Class::Critical => PriorityClass::Critical,
            Class::Standard => PriorityClass::Standard,
            Class::Bulk => PriorityClass::Bulk,
        }
    }
}

fn classes<A: Copy, B: From<A>>(m: &BTreeMap<String, A>) -> BTreeMap<String, B> {
    m.iter().map(|(k, c)| (k.clone(), B::from(*c))).collect()
}

/// `attribute >= at_least`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdBody {
    /// The attribute's name.
    pub attribute: String,
    /// The smallest value that meets the threshold.
    pub at_least: f64,
}

/// Accounts that asked for one of `from` (every tier when empty) and meet any threshold are
/// in `tier`; the first rule that holds decides.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierRuleBody {
    /// Unique name.
    pub name: String,
    /// The tier it puts accounts in.
    pub tier: String,
    /// The asked-for tiers it applies to; empty: every tier.
    #[serde(default)]
    pub from: Vec<String>,
    /// Any of these holds.
    pub any: Vec<ThresholdBody>,
}

impl From<TierRuleBody> for TierRule {
    fn from(r: TierRuleBody) -> Self {
        TierRule {
            name: r.name,
            tier: r.tier,
            from: r.from,
            any: r
                .any
                .into_iter()
                .map(|t| Threshold {
                    attribute: t.attribute,
                    at_least: t.at_least,
                })
                .collect(),
        }
    }
}

impl From<&TierRule> for TierRuleBody {
    fn from(r: &TierRule) -> Self {
        TierRuleBody {
            name: r.name.clone(),
            tier: r.tier.clone(),
            from: r.from.clone(),
            any: r
                .any
                .iter()
                .map(|t| ThresholdBody {
                    attribute: t.attribute.clone(),
                    at_least: t.at_least,
                })
                .collect(),
        }
    }
}

/// The whole policy: tiers, pins, rollouts, priority classes, tier rules
/// (docs/policy-and-migration.md).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// Tier -> backend instance name.
    pub tiers: BTreeMap<String, String>,
    /// Per-account overrides.
    #[serde(default)]
    pub pins: Vec<PinBody>,
    /// Percentages of a tier on another backend; earlier entries win overlaps.
    #[serde(default)]
    pub rollouts: Vec<RolloutBody>,
    /// Tier -> priority class (a tier not named is `standard`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub priorities: BTreeMap<String, PriorityClass>,
    /// Account -> priority class, whatever its tier.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub account_priorities: BTreeMap<String, PriorityClass>,
    /// Tiers from account attributes, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tier_rules: Vec<TierRuleBody>,
}

impl From<PolicyBody> for PolicyDocument {
    fn from(b: PolicyBody) -> Self {
        PolicyDocument {
            tiers: b.tiers,
            pins: b
                .pins
                .into_iter()
                .map(|p| Pin {
                    account: p.account,
                    backend: p.backend,
                })
                .collect(),
            rollouts: b
                .rollouts
                .into_iter()
                .map(|r| Rollout {
                    name: r.name,
                    tier: r.tier,
                    backend: r.backend,
                    percent: r.percent,
                })
                .collect(),
            priorities: classes(&b.priorities),
            account_priorities: classes(&b.account_priorities),
            tier_rules: b.tier_rules.into_iter().map(TierRule::from).collect(),
        }
    }
}

impl From<&PolicyDocument> for PolicyBody {
    fn from(d: &PolicyDocument) -> Self {
        PolicyBody {
            tiers: d.tiers.clone(),
            pins: d
                .pins
                .iter()
                .map(|p| PinBody {
                    account: p.account.clone(),
                    backend: p.backend.clone(),
                })
                .collect(),
            rollouts: d
                .rollouts
                .iter()
                .map(|r| RolloutBody {
                    name: r.name.clone(),
                    tier: r.tier.clone(),
                    backend: r.backend.clone(),
                    percent: r.percent,
                })
                .collect(),
            priorities: classes(&d.priorities),
            account_priorities: classes(&d.account_priorities),
            tier_rules: d.tier_rules.iter().map(TierRuleBody::from).collect(),
        }
    }
}

/// `GET /v1/admin/policy` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    /// The version this replica serves.
    pub version: i64,
    /// Hex SHA-256 of the version's canonical document.
    pub digest: String,
    /// Its rules.
    pub policy: PolicyBody,
}

/// `PUT /v1/admin/policy` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyPolicyRequest {
    /// The whole new policy.
    pub policy: PolicyBody,
    /// Apply only if this is still the served version (else 409 `version_conflict`).
    #[serde(default)]
    pub expected_version: Option<i64>,
    /// Measure and show the change; commit nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Start the re-wrap jobs of the moved accounts' shard versions.
    #[serde(default)]
    pub migrate: bool,
    /// Confirm moves that lower accounts' protection (else 409 `downgrade_refused`).
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// One rule added (`before` absent), removed (`after` absent) or changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleChangeView {
    /// `tier`, `pin`, `rollout`, `tier_priority`, `account_priority` or `tier_rule`.
    pub kind: String,
    /// The tier, the pinned account, the rollout's name, or the tier or account of a class.
    pub name: String,
    /// The rule before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// The rule after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Accounts of one tier that one rule moves from one backend to another.
#[derive(Debug, Serialize, ToSchema)]
pub struct MoveView {
    /// The accounts' tier.
    pub tier: String,
    /// Backend their new versions went to.
    pub from_backend: String,
    /// Backend their new versions go to under the new version.
    pub to_backend: String,
    /// The rule that places them there.
    pub rule: String,
    /// How many accounts.
    pub accounts: u64,
    /// Whether the move lowers their protection.
    pub downgrade: bool,
}

/// `PUT /v1/admin/policy` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyChangeView {
    /// The version the change was measured against.
    pub from_version: i64,
    /// The version committed (dry run: the one it would be; no change: the served one).
    pub version: i64,
    /// Whether a version was committed.
    pub applied: bool,
    /// Every rule added, removed or changed.
    pub changes: Vec<RuleChangeView>,
    /// Accounts measured.
    pub accounts_scanned: u64,
    /// Accounts whose new versions change backend.
    pub moved_total: u64,
    /// The moves, grouped by tier, backends and rule.
    pub moves: Vec<MoveView>,
    /// The first 1,000 moved accounts, in account order.
    pub moved_accounts: Vec<String>,
    /// Re-wrap jobs started (`migrate`).
    pub migration_jobs: Vec<String>,
    /// Accounts the new version's tier rules put in another tier (moved after the commit).
    pub tier_changes: u64,
}

impl From<PolicyChange> for PolicyChangeView {
    fn from(c: PolicyChange) -> Self {
        let kind = |k| match k {
            shardgate_policy::RuleKind::Tier => "tier",
            shardgate_policy::RuleKind::Pin => "pin",
            shardgate_policy::RuleKind::Rollout => "rollout",
            shardgate_policy::RuleKind::TierPriority => "tier_priority",
            shardgate_policy::RuleKind::AccountPriority => "account_priority",
            shardgate_policy::RuleKind::TierRule => "tier_rule",
        };
        PolicyChangeView {
            moved_total: c.moved_total(),
            from_version: c.from_version,
            version: c.version,
            applied: c.applied,
            changes: c
                .changes
                .into_iter()
                .map(|r| RuleChangeView {
                    kind: kind(r.kind).to_string(),
                    name: r.name,
                    before: r.before,
                    after: r.after,
                })
                .collect(),
            accounts_scanned: c.accounts_scanned,
            moves: c
                .moves
                .into_iter()
                .map(|m| MoveView {
                    tier: m.tier,
                    from_backend: m.from_backend,
                    to_backend: m.to_backend,
                    rule: m.rule,
                    accounts: m.accounts,
                    downgrade: m.downgrade,
                })
                .collect(),
            moved_accounts: c.moved_accounts,
            migration_jobs: c.migration_jobs,
            tier_changes: c.tier_changes,
        }
    }
}

/// `GET /v1/admin/policy` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PolicyQuery {
    /// An earlier (or any) version, from the history kept in the database (default: the
    /// version this replica serves).
    pub version: Option<i64>,
}

/// The policy version this replica serves (after reading the database's newest), or any
/// version of the history with `?version=N` (what placed a write at the time).
#[utoipa::path(get, path = "/v1/admin/policy", tag = "admin",
    params(PolicyQuery),
    responses((status = 200, description = "the policy version", body = PolicyView)),
    security(("bearer" = ["admin"])))]
pub async fn get_policy(
    State(state): State<AppState>,
    ctx: Ctx,
    query: Result<Query<PolicyQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    ctx.require_global(&state, Scope::Admin, "policy.get")?;
    let Query(q) = query.map_err(super::api::query_error)?;
    let view = match q.version {
        None => {
            let served = svc::current(&state).await?;
            PolicyView {
                version: served.version,
                digest: served.digest.clone(),
                policy: PolicyBody::from(&served.document),
            }
        }
        Some(v) => {
            let (version, digest, document) = svc::version(&state, v).await?;
            PolicyView {
                version,
                digest,
                policy: PolicyBody::from(&document),
            }
        }
    };
    Ok(json(StatusCode::OK, view))
}

/// Measure a new policy against every account and commit it as the next version (unless
/// `dry_run`); every replica serves it within `[policy] refresh_ms`.
#[utoipa::path(put, path = "/v1/admin/policy", tag = "admin",
    request_body = ApplyPolicyRequest,
    responses((status = 200, description = "the change, measured (and committed unless a dry run)", body = PolicyChangeView),
               (status = 202, description = "held for approval (dual control)", body = crate::http::held::HeldResponse)),
    security(("bearer" = ["admin"])))]
pub async fn put_policy(
    State(state): State<AppState>,
    ctx: Ctx,
    ApiJson(body): ApiJson<ApplyPolicyRequest>,
) -> Result<Response, ApiError> {
    ctx.require_global(&state, Scope::Admin, "policy.apply")?;
    if !body.dry_run {
        // Dual control: an apply waits for a second credential (a dry run never does).
        let op = crate::service::approvals::HeldOp::PolicyApply {
            document: body.policy.clone().into(),
            expected_version: body.expected_version,
            migrate: body.migrate,
            allow_downgrade: body.allow_downgrade,
        };
        if let Some(h) = crate::service::approvals::hold(&state, &op, &ctx.origin()).await? {
            return Ok(super::held::held(h));
        }
    }
    let req = ApplyRequest {
        document: body.policy.into(),
        expected_version: body.expected_version,
        dry_run: body.dry_run,
        migrate: body.migrate,
        allow_downgrade: body.allow_downgrade,
    };
    let change = svc::apply(&state, req, &ctx.origin()).await?;
    Ok(json(StatusCode::OK, PolicyChangeView::from(change)))
}
