//! Tiers from account attributes across a policy change: an apply that adds or changes tier
//! rules moves the accounts whose derived tier changes ([`retier_all`], after the version is
//! committed). Each move is an audited tier change written with the tier it was judged on as
//! its precondition, so a concurrent put wins and is not overwritten. The pass reads every
//! account again, so repeating the apply (even one with no rule change left to commit)
//! finishes a pass a crash cut short.

use super::accounts::stored_attributes;
use super::state::Services;
use crate::domain::audit::Origin;
use crate::domain::error::DomainError;
use shardgate_policy::{Derived, Policy};
use shardgate_store::{AccountRecord, ExpectedTier, FactsUpdate, KeepVersions, StoreError};

/// Accounts read per page.
const PAGE: i64 = 1_000;

/// The tier `policy` puts `record` in: by its tier rules, from the tier it asked for and its
/// attributes.
pub fn derived(policy: &Policy, record: &AccountRecord) -> Derived {
    let requested = record.requested_tier.as_deref().unwrap_or(&record.tier);
    policy.derive_tier(requested, &stored_attributes(record))
}

/// Move every account whose tier the served policy derives differently; how many moved.
pub async fn retier_all(state: &Services, origin: &Origin) -> Result<u64, DomainError> {
    let version = state.policy.current();
    let (mut moved, mut after) = (0u64, None::<String>);
    loop {
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
    Ok(moved)
}
