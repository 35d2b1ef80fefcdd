//! Crypto-shredding shards: every version of one shard ([`shard`], `DELETE .../shards/{shard}`)
//! or one version ([`version`], `DELETE .../shards/{shard}/versions/{version}`). The rows go
//! with their audit event, and with an `Idempotency-Key` the record of the answer, in one
//! transaction, so a delete is never half-done, unaudited, or done without its key; a miss
//! names what is missing ([`super::read::not_found`]).

use super::read::not_found;
use super::state::Services;
use crate::domain::audit::{Auditor, Event};
use crate::domain::error::DomainError;
use crate::domain::ids::{AccountId, ShardId};
use shardgate_store::{
    IdempotencyForCount, IdempotencyRecord, Idempotent, IdempotentWrite, StoreError, Version,
};

/// What a delete destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destroyed {
    /// Versions destroyed.
    pub versions: i64,
    /// Its audit event id (`<chain>:<seq>`).
    pub audit_event: String,
}

/// What a delete did.
#[derive(Debug)]
pub enum Deleted {
    /// Destroyed now.
    Destroyed(Destroyed),
    /// A live record of the same `Idempotency-Key` answered first: nothing was deleted.
    Replay(IdempotencyRecord),
}

/// A delete with an `Idempotency-Key`: its record commits with the delete.
pub struct IdempotentDelete<'a> {
    /// The record of an answer (the HTTP layer serialises the answer into it).
    pub record: &'a (dyn Fn(&Destroyed) -> IdempotencyRecord + Send + Sync),
    /// Records created before this (unix milliseconds) no longer count.
    pub expired_before_ms: i64,
}

/// Destroy every version of `shard` with `event` (its detail says how many); the count is
/// known only inside the transaction, so the event and the key's record are built there.
pub async fn shard(
    state: &Services,
    account: &AccountId,
    shard: &ShardId,
    event: &Event,
    idem: Option<IdempotentDelete<'_>>,
) -> Result<Deleted, DomainError> {
    let mut guard = state.audit.lock().await?;
    guard.arm();
    let seal = |n: i64| guard.seal(&event.clone().detail(format!("destroyed_versions={n}")));
    let destroyed = |n: i64| Destroyed {
        versions: n,
        audit_event: Auditor::event_id(&seal(n)),
    };
    let idem_record = |n: i64| match &idem {
        Some(i) => (i.record)(&destroyed(n)),
        None => unreachable!("only called with an idempotency key"),
    };
    let write = idem
        .as_ref()
        .map(|i| (i.expired_before_ms, &idem_record as IdempotencyForCount<'_>));
    let result = state
        .store
        .delete_shard_idempotent(account, shard, &seal, write)
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
    if let Some(rec) = replay {
        return Ok(Deleted::Replay(rec));
    }
    match result {
        Ok(n) => Ok(Deleted::Destroyed(Destroyed {
            versions: n,
            audit_event: record.as_ref().map(Auditor::event_id).unwrap_or_default(),
        })),
        Err(StoreError::ShardNotFound) => Err(not_found(state, account, shard, None).await),
        Err(e) => Err(e.into()),
    }
}

/// Destroy one version of `shard` with `event`. The other versions stay; deleting the latest
/// makes the newest remaining one the latest.
pub async fn version(
    state: &Services,
    account: &AccountId,
    shard: &ShardId,
    version: Version,
    event: &Event,
    idem: Option<IdempotentDelete<'_>>,
) -> Result<Deleted, DomainError> {
    let mut guard = state.audit.lock().await?;
    let record = guard.begin(event);
    let destroyed = Destroyed {
        versions: 1,
        audit_event: Auditor::event_id(&record),
    };
    let idem_record = idem.as_ref().map(|i| (i.record)(&destroyed));
    let write = idem
        .as_ref()
        .zip(idem_record.as_ref())
        .map(|(i, r)| IdempotentWrite {
            record: r,
            expired_before_ms: i.expired_before_ms,
        });
    let result = state
        .store
        .delete_shard_version_idempotent(account, shard, version, &record, write)
        .await;
    match result {
        Ok(Idempotent::Replay(rec)) => {
            guard.finish(None, &Ok::<(), StoreError>(())).await;
            Ok(Deleted::Replay(rec))
        }
        Ok(Idempotent::Done(())) => {
            guard.finish(Some(&record), &Ok::<(), StoreError>(())).await;
            Ok(Deleted::Destroyed(destroyed))
        }
        Err(e) => {
            let failed = Err::<(), _>(e);
            guard.finish(Some(&record), &failed).await;
            match failed {
                Err(StoreError::ShardNotFound) => {
                    Err(not_found(state, account, shard, Some(version)).await)
                }
                Err(e) => Err(e.into()),
                Ok(()) => Err(DomainError::Internal("unreachable".into())),
            }
        }
    }
}
