//! Changing the cluster's tier policy (`PUT /v1/admin/policy`, `shardgate policy apply`):
//! validate a new document against this replica's backends, measure it against every
//! account (which ones change backend, grouped by tier and by the rule that moves them),
//! refuse a change that lowers accounts' protection unless it is confirmed, commit it as the
//! next version with an audit event holding the diff, serve it here at once, and optionally
//! start the re-wrap jobs of the accounts it moves. A dry run does everything but the commit.

use super::state::Services;
use crate::domain::audit::Origin;
use crate::domain::error::DomainError;
use crate::domain::failpoint::failpoint;
use crate::domain::policy::{append_audited, record_of, Served};
use crate::domain::protection::{is_downgrade, Placed};
use shardgate_policy::{Policy, PolicyDocument, RuleChange};
use shardgate_store::{MigrationSelector, StoreError};
use std::collections::BTreeMap;

/// Accounts read per page while measuring a change.
const PAGE: i64 = 1_000;

/// Moved accounts an answer names one by one (the counts cover them all).
pub const LISTED_MOVES: usize = 1_000;

/// What an apply is asked to do.
#[derive(Debug, Clone)]
pub struct ApplyRequest {
    /// The whole new policy.
    pub document: PolicyDocument,
    /// Apply only if this is still the served version (optimistic concurrency).
    pub expected_version: Option<i64>,
    /// Measure and show; commit nothing.
    pub dry_run: bool,
    /// Start the re-wrap jobs of the moved accounts' versions.
    pub migrate: bool,
    /// The caller confirms moves that lower accounts' protection (an admin credential).
    pub allow_downgrade: bool,
}

/// One group of moved accounts: same tier, same move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveGroup {
    /// The accounts' tier (`retail -> institutional` when the new version's tier rules move
    /// them to another).
    pub tier: String,
    /// Backend new versions went to.
    pub from_backend: String,
    /// Backend new versions go to now.
    pub to_backend: String,
    /// The rule that places them now (`tier retail -> kms`, a rollout, a pin).
    pub rule: String,
    /// How many accounts.
    pub accounts: u64,
    /// Whether the move lowers their protection.
    pub downgrade: bool,
}

/// What an apply found, and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    /// The version the change was measured against.
    pub from_version: i64,
    /// The version committed (a dry run: the version it would be; nothing changed: the
    /// served version).
    pub version: i64,
    /// Whether a version was committed.
    pub applied: bool,
    /// Every rule added, removed or changed.
    pub changes: Vec<RuleChange>,
    /// Accounts measured.
    pub accounts_scanned: u64,
    /// Moved accounts, grouped.
    pub moves: Vec<MoveGroup>,
    /// The first [`LISTED_MOVES`] moved accounts, in account order.
    pub moved_accounts: Vec<String>,
    /// Migration jobs started (with `migrate`).
    pub migration_jobs: Vec<String>,
    /// Accounts whose tier the new version's tier rules derive differently (moved to it
    /// after the commit; a dry run only counts them).
    pub tier_changes: u64,
}

impl PolicyChange {
    /// Accounts moved, over all groups.
    pub fn moved_total(&self) -> u64 {
        self.moves.iter().map(|m| m.accounts).sum()
    }
}

/// The served version, after reading the database's head.
pub async fn current(state: &Services) -> Result<std::sync::Arc<Served>, DomainError> {
    state.policy.refresh().await.map_err(load_err)?;
    Ok(state.policy.current())
}

/// Version `version` of the history as stored: its digest and rules, not validated (an old
/// version may name a backend this gateway no longer configures).
pub async fn version(
    state: &Services,
    version: i64,
) -> Result<(i64, String, PolicyDocument), DomainError> {
    let record = state
        .store
        .policy_version(Some(version))
        .await?
        .ok_or_else(|| DomainError::NotFound(format!("no policy version {version}")))?;
    let document: PolicyDocument = serde_json::from_str(&record.document).map_err(|e| {
        DomainError::Internal(format!("policy version {version} is not a document: {e}"))
    })?;
    Ok((record.version, record.digest, document))
}

/// Measure `req.document` against every account and, unless a dry run, commit it.
pub async fn apply(
    state: &Services,
    req: ApplyRequest,
    origin: &Origin,
) -> Result<PolicyChange, DomainError> {
    let served = current(state).await?;
    if let Some(expected) = req.expected_version {
        if expected != served.version {
            return Err(DomainError::Conflict(format!(
                "the served policy is version {}, not {expected}: read it again and re-apply",
                served.version
            )));
        }
    }
    let next = req
        .document
        .build(state.policy.backends())
        .map_err(|e| DomainError::Invalid(format!("policy: {e}")))?;
    let mut change = measure(state, &served, &next).await?;
    change.changes = req.document.changes_from(&served.document);
    if change.changes.is_empty() {
        // Nothing to commit: the version stays the served one.
        change.version = served.version;
    }
    if req.dry_run || (change.changes.is_empty() && change.tier_changes == 0) {
        return Ok(change);
    }
    guard_downgrades(state, &change, req.allow_downgrade, origin).await?;
    if change.tier_changes > 0 {
        // Due before the version commits, so that a crash after the commit leaves the pass
        // due for the replicas' supervisors (a crash before it leaves a pass that moves none).
        let owes = served.version + i64::from(!change.changes.is_empty());
        state.store.mark_retier_due(owes, crate::now_ms()).await?;
    }
    if !change.changes.is_empty() {
        commit(state, &req.document, &mut change, origin).await?;
    }
    // With no rule left to commit, this finishes a pass an earlier apply did not.
    if change.tier_changes > 0 {
        failpoint("policy_after_commit");
        super::retier::run_now(state, origin).await?;
    }
    if req.migrate {
        change.migration_jobs = start_jobs(state, &change, origin).await?;
    }
    Ok(change)
}

/// Every account placed by both versions: the moves, grouped; a tier removed while
/// accounts are in it is refused (a replica on the new version could not place them).
async fn measure(
    state: &Services,
    served: &Served,
    next: &Policy,
) -> Result<PolicyChange, DomainError> {
    let mut groups: BTreeMap<(String, String, String, String), u64> = BTreeMap::new();
    let mut stranded: BTreeMap<String, u64> = BTreeMap::new();
    let (mut scanned, mut listed, mut tier_changes) = (0u64, Vec::new(), 0u64);
    let mut after: Option<String> = None;
    loop {
        let page = state.store.accounts_page(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.account.clone());
        for record in &page {
            scanned += 1;
            let (account, tier) = (&record.account, &record.tier);
            // The tier the new version's tier rules put the account in.
            let new_tier = super::retier::derived(next, record).tier;
            let Ok(to) = next.place(account, &new_tier) else {
                *stranded.entry(new_tier).or_default() += 1;
                continue;
            };
            let moved_tier = new_tier != *tier;
            tier_changes += u64::from(moved_tier);
            let from = served.policy.place(account, tier).ok();
            let from_backend = from.map_or_else(|| "none".to_string(), |p| p.backend);
            if from_backend != to.backend {
                if listed.len() < LISTED_MOVES {
                    listed.push(account.clone());
                }
                let group_tier = if moved_tier {
                    format!("{tier} -> {new_tier}")
                } else {
                    tier.clone()
                };
                let key = (group_tier, from_backend, to.backend, group_rule(&to.rule));
                *groups.entry(key).or_default() += 1;
            }
        }
    }
    if !stranded.is_empty() {
        let tiers: Vec<String> = stranded.iter().map(|(t, n)| format!("{t} ({n})")).collect();
        return Err(DomainError::Invalid(format!(
            "policy: the new version removes tiers that accounts are in: {}; move those \
             accounts to another tier first (PUT /v1/accounts/{{id}})",
            tiers.join(", ")
        )));
    }
    let moves = groups
        .into_iter()
        .map(|((tier, from_backend, to_backend, rule), accounts)| {
            let downgrade = is_downgrade(
                Placed::Kind(kind_of(state, &from_backend)),
                kind_of(state, &to_backend),
            );
            MoveGroup {
                tier,
                from_backend,
                to_backend,
                rule,
                accounts,
                downgrade,
            }
        })
        .collect();
    Ok(PolicyChange {
        from_version: served.version,
        version: served.version + 1,
        applied: false,
        changes: Vec::new(),
        accounts_scanned: scanned,
        moves,
        moved_accounts: listed,
        migration_jobs: Vec::new(),
        tier_changes,
    })
}

/// A rule as a group key: a rollout's bucket is the account's own, so it is left out.
fn group_rule(rule: &str) -> String {
    match rule.find(" (bucket ") {
        Some(at) => match rule[at..].find(')') {
            Some(end) => format!("{}{}", &rule[..at], &rule[at + end + 1..]),
            None => rule.to_string(),
        },
        None => rule.to_string(),
    }
}

fn kind_of<'a>(state: &'a Services, backend: &str) -> &'a str {
    state.backend(backend).map_or("unknown", |b| b.kind())
}

/// Moves that lower protection need `allow_downgrade` (from an admin: the route is
/// admin-only); a refusal is audited and commits nothing.
async fn guard_downgrades(
    state: &Services,
    change: &PolicyChange,
    allowed: bool,
    origin: &Origin,
) -> Result<(), DomainError> {
    let down: u64 = change
        .moves
        .iter()
        .filter(|m| m.downgrade)
        .map(|m| m.accounts)
        .sum();
    if down == 0 || allowed {
        return Ok(());
    }
    let err = DomainError::DowngradeRefused(format!(
        "the new policy lowers the protection of {down} account(s) (see the moves marked \
         downgrade in a dry run): refused, nothing changed; to apply it anyway, repeat with \
         \"allow_downgrade\": true"
    ));
    let mut event = origin
        .event("policy.apply")
        .detail(format!("refused: downgrade of {down} account(s)"));
    event.outcome = err.outcome().to_string();
    if let Err(e) = state.audit.record(event).await {
        tracing::warn!(error = %e, "the refused policy apply could not be audited");
    }
    Err(err)
}

/// Commit the next version with its audit event, then serve it here at once.
async fn commit(
    state: &Services,
    document: &PolicyDocument,
    change: &mut PolicyChange,
    origin: &Origin,
) -> Result<(), DomainError> {
    let record = record_of(document, change.from_version + 1, &origin.actor);
    let event = origin.event("policy.apply").detail(audit_detail(change));
    match append_audited(state.store.as_ref(), &state.audit, &record, &event).await {
        Ok(()) => {}
        Err(StoreError::Conflict { latest }) => {
            return Err(DomainError::Conflict(format!(
                "another apply committed policy version {} first: read it again and re-apply",
                latest.unwrap_or(change.from_version + 1)
            )))
        }
        Err(e) => return Err(e.into()),
    }
    state.policy.adopt(&record).map_err(load_err)?;
    change.applied = true;
    Ok(())
}

/// The diff an audit event holds: version, digest-free counts, every rule change (cut at
/// 4 KiB: the rules themselves are in the stored version).
fn audit_detail(change: &PolicyChange) -> String {
    let rules: Vec<String> = change.changes.iter().map(ToString::to_string).collect();
    let mut detail = format!(
        "version={} from={} moved_accounts={} changes=[{}]",
        change.from_version + 1,
        change.from_version,
        change.moved_total(),
        rules.join("; ")
    );
    if detail.len() > 4096 {
        let mut cut = 4096;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
        detail.push_str("...]");
    }
    detail
}

/// One re-wrap job per backend the moved accounts leave: its workers place every version by
/// the new policy and skip the ones already where it wants them.
async fn start_jobs(
    state: &Services,
    change: &PolicyChange,
    origin: &Origin,
) -> Result<Vec<String>, DomainError> {
    let mut from: Vec<&str> = change
        .moves
        .iter()
        .map(|m| m.from_backend.as_str())
        .filter(|b| state.backend(b).is_some())
        .collect();
    from.sort_unstable();
    from.dedup();
    let mut ids = Vec::new();
    for backend in from {
        let id = uuid::Uuid::new_v4().to_string();
        let selector = MigrationSelector {
            from_backend: Some(backend.to_string()),
            ..Default::default()
        };
        super::migrate::start_with_id(state, &id, selector, origin).await?;
        // Replicas still on the previous version place writes on the old backend until they
        // poll this one, after the snapshot just taken: the job looks again once they can't.
        let window = i64::try_from(state.straggler_window_ms).unwrap_or(i64::MAX);
        state
            .store
            .schedule_migration_catch_up(&id, crate::now_ms().saturating_add(window))
            .await?;
        ids.push(id);
    }
    Ok(ids)
}

fn load_err(e: crate::domain::policy::LoadError) -> DomainError {
    match e {
        crate::domain::policy::LoadError::Store(e) => e.into(),
        other => DomainError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::group_rule;

    #[test]
    fn a_rollout_rule_groups_without_its_bucket() {
        assert_eq!(
            group_rule("rollout retail:pilot 5.00% (bucket 12) -> kms"),
            "rollout retail:pilot 5.00% -> kms"
        );
        assert_eq!(group_rule("tier retail -> local"), "tier retail -> local");
    }
}
