//! Tiers from account attributes across a policy change: an apply that adds or changes tier
//! rules moves the accounts whose derived tier changes ([`retier_all`], after the version is
//! committed). Each move is an audited tier change written with the tier it was judged on as
//! its precondition, so a concurrent put wins and is not overwritten, and two passes at once
//! move an account once.
//!
//! A pass is recorded due (`policy_retier`) before its version commits and marked done when
//! it has read every account, so a crash anywhere between leaves it due: the migration
//! supervisor of every replica looks for a due pass at each scan and runs it again
//! ([`resume_due`]), one replica at a time under the lease [`LEASE`]. Repeating the apply
//! (even one with no rule change left to commit) does the same at once.

use super::accounts::stored_attributes;
use super::state::Services;
use crate::domain::audit::Origin;
use crate::domain::error::DomainError;
use shardgate_policy::{Derived, Policy};
use shardgate_store::{AccountRecord, ExpectedTier, FactsUpdate, KeepVersions, StoreError};

/// Accounts read per page.
const PAGE: i64 = 1_000;

/// The lease a replica holds while it runs a due pass (renewed every page).
pub const LEASE: &str = "policy-retier";

/// How long the lease lasts unless renewed: a replica killed mid-pass holds it this long.
const LEASE_MS: i64 = 30_000;

/// The actor of the events of a pass resumed by a replica (no caller asked for it).
const RESUMER: &str = "policy retier";

/// Run the lowest due pass if there is one, this replica serves its version (or a later
/// one) and no other replica holds [`LEASE`]: how many accounts moved (`None`: nothing run).
pub async fn resume_due(state: &Services, holder: &str) -> Result<Option<u64>, DomainError> {
    let Some(due) = state.store.retier_due().await? else {
        return Ok(None);
    };
    if state.policy.current().version < due {
        // This replica lags the version that owes the pass: read it before judging by it.
        state
            .policy
            .refresh()
            .await
            .map_err(|e| DomainError::Internal(format!("policy refresh: {e}")))?;
        if state.policy.current().version < due {
            return Ok(None);
        }
    }
    let origin = Origin {
        actor: RESUMER.into(),
        request_id: format!("retier-{}", uuid::Uuid::new_v4().simple()),
        ..Default::default()
    };
    let Some(moved) = leased_pass(state, holder, &origin).await? else {
        return Ok(None);
    };
    tracing::info!(
        version = due,
        moved,
        "policy retier: a due pass was resumed and is done"
    );
    Ok(Some(moved))
}

/// Run the pass of an apply at once: under [`LEASE`] when no resumed pass holds it, else
/// beside that pass (a move is conditional, so the two move each account once).
pub async fn run_now(state: &Services, origin: &Origin) -> Result<u64, DomainError> {
    let holder = format!("apply-{}", uuid::Uuid::new_v4().simple());
    match leased_pass(state, &holder, origin).await? {
        Some(moved) => Ok(moved),
        None => retier_all(state, origin, None).await,
    }
}

/// A pass under [`LEASE`] held by `holder`, released at the end (`None`: another holds it).
async fn leased_pass(
    state: &Services,
    holder: &str,
    origin: &Origin,
) -> Result<Option<u64>, DomainError> {
    if !take(state, holder).await? {
        return Ok(None);
    }
    let result = retier_all(state, origin, Some(holder)).await;
    if let Err(e) = state.store.release_lease(LEASE, holder).await {
        tracing::warn!(error = %e, "policy retier: releasing the lease failed; it expires");
    }
    result.map(Some)
}

async fn take(state: &Services, holder: &str) -> Result<bool, DomainError> {
    Ok(state
        .store
        .take_lease(LEASE, holder, crate::now_ms(), LEASE_MS)
        .await?)
}

/// The tier `policy` puts `record` in: by its tier rules, from the tier it asked for and its
/// attributes.
pub fn derived(policy: &Policy, record: &AccountRecord) -> Derived {
    let requested = record.requested_tier.as_deref().unwrap_or(&record.tier);
    policy.derive_tier(requested, &stored_attributes(record))
}

/// Move every account whose tier the served policy derives differently, then mark done the
/// due passes up to the served version; how many moved. `holder`: the lease to renew at
/// every page (a resumed pass); a pass that loses it stops (`Conflict`), still due.
pub async fn retier_all(
    state: &Services,
    origin: &Origin,
    holder: Option<&str>,
) -> Result<u64, DomainError> {
    let version = state.policy.current();
    let (mut moved, mut after) = (0u64, None::<String>);
    loop {
        if let Some(holder) = holder {
            if !take(state, holder).await? {
                return Err(DomainError::Conflict("the re-tier lease was lost".into()));
            }
        }
        let page = state.store.accounts_page(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.account.clone());
        for record in &page {
            let d = derived(&version.policy, record);
            if d.tier == record.tier || !version.policy.has_tier(&d.tier) {
                continue;
            }
            let event = origin
                .event("account.put")
                .account(&record.account)
                .detail(format!(
                    "tier={} from={} by={} policy_version={}",
                    d.tier, record.tier, d.rule, version.version
                ));
            let mut guard = state.audit.lock().await?;
            let audit = guard.begin(&event);
            let result = state
                .store
                .put_account_expecting(
                    &record.account,
                    &d.tier,
                    ExpectedTier::Is(&record.tier),
                    KeepVersions::Unchanged,
                    FactsUpdate::Unchanged,
                    crate::now_ms(),
                    &audit,
                )
                .await;
            guard.finish(Some(&audit), &result).await;
            match result {
                Ok(_) => moved += 1,
                // Changed meanwhile by a put, which derived its tier itself.
                Err(StoreError::AccountChanged) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    state
        .store
        .mark_retier_done(version.version, crate::now_ms())
        .await?;
    Ok(moved)
}
