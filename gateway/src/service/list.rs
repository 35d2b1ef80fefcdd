//! Listing an account's shards (`GET /v1/accounts/{account}/shards`): a page of shard ids with
//! their latest version and its backend, never shard bytes; audited like every read.

use super::state::Services;
use crate::domain::audit::Event;
use crate::domain::error::DomainError;
use crate::domain::ids::AccountId;
use shardgate_store::ShardSummary;

/// One page of an account's shards.
#[derive(Debug)]
pub struct Page {
    /// The shards, in id order (bytes).
    pub shards: Vec<ShardSummary>,
    /// The id to pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<String>,
}

/// Up to `limit` (already checked against the configured maximum) shards of `account` after
/// the shard id `after`, audited with `event` (its detail says how many were returned).
pub async fn shards(
    state: &Services,
    account: &AccountId,
    after: Option<&str>,
    limit: i64,
    event: Event,
) -> Result<Page, DomainError> {
    if state.store.get_account(account).await?.is_none() {
        return Err(DomainError::AccountNotFound("no such account".into()));
    }
    let shards = state.store.list_shards(account, after, limit).await?;
    let next_after = (shards.len() as i64 == limit)
        .then(|| shards.last().map(|s| s.shard.clone()))
        .flatten();
    state
        .audit
        .record(event.detail(format!("returned={}", shards.len())))
        .await?;
    Ok(Page { shards, next_after })
}
