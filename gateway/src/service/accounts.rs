//! Account rules the use cases share: where the policy places an account's new versions.

use super::state::Services;
use crate::domain::error::DomainError;
use shardgate_policy::Placement;
use shardgate_store::AccountRecord;

/// Where the policy places new versions of this account's shards.
pub fn placement_of(state: &Services, record: &AccountRecord) -> Result<Placement, DomainError> {
    state
        .policy
        .place(&record.account, &record.tier)
        .map_err(|_| DomainError::Internal("the account's tier is no longer declared".into()))
}
