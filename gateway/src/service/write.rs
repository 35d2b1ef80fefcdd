//! Writing a shard version (`PUT .../shards/{shard}`): place it by the account's tier, seal it
//! under a fresh data key, and store it with its audit event in one transaction, pruning
//! older versions under the retention rule in the same transaction.
//!
//! A try that loses a version race (without `expected_version`), a tier change, or the audit
//! chain to another writer is placed and sealed again, up to [`MAX_WRITE_ATTEMPTS`] times. A
//! write that prunes nothing and carries no `Idempotency-Key` joins a group commit
//! ([`super::write_group`]); the others commit alone, taking the audit chain only once their
//! row is in place ([`ChainSeal`], `LateSeal`).

use super::accounts::placement_of;
use super::state::Services;
use super::write_group::Grouped;
use crate::domain::audit::{Auditor, ChainSeal, Event, CHAIN_WAIT};
use crate::domain::envelope;
use crate::domain::error::DomainError;
use crate::domain::ids::{AccountId, ShardId};
use crate::domain::priority::{self, Ask};
use shardgate_backends::{KeyBackend, ShardIdentity, Version};
use shardgate_store::{
    AccountRecord, AuditRecord, IdempotencyRecord, Idempotent, IdempotentWrite, Prune,
    ShardVersionRow, StoreError,
};
use std::sync::{Arc, OnceLock};

/// How often a write without `expected_version` retries after losing a version race.
pub const MAX_WRITE_ATTEMPTS: usize = 64;

/// One shard write, its ids checked and its bytes decoded and within the limits.
pub struct PutShard<'a> {
    /// Account id.
    pub account: &'a AccountId,
    /// Shard id.
    pub shard: &'a ShardId,
    /// The shard's bytes (not empty).
    pub plaintext: &'a [u8],
    /// Compare-and-swap: the version the caller last saw (0 = must not exist yet).
    pub expected_version: Option<i64>,
    /// Who writes it (the row's `created_by`).
    pub created_by: &'a str,
    /// The caller's `shard.put` event, with account and shard (version, backend and detail
    /// are set here).
    pub event: Event,
    /// The caller's `shard.prune` event, with account and shard, for versions retention
    /// prunes; stamped once, so that re-sealing a pruned version's event gives the same record.
    pub prune_event: Event,
    /// With an `Idempotency-Key`: how its record is made.
    pub idempotency: Option<IdempotentPut<'a>>,
}

/// An `Idempotency-Key` write: its record commits with the write, so there is never a write
/// without its key or a key without its write.
pub struct IdempotentPut<'a> {
    /// The record of an answer (the HTTP layer serialises the answer into it).
    pub record: &'a (dyn Fn(&Stored) -> IdempotencyRecord + Send + Sync),
    /// Records created before this (unix milliseconds) no longer count.
    pub expired_before_ms: i64,
}

/// A stored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The new version.
    pub version: Version,
    /// The backend that wrapped its data key.
    pub backend: String,
    /// Versions retention crypto-shredded with this write, oldest first.
    pub pruned: Vec<Pruned>,
}

/// One version crypto-shredded by retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The destroyed version.
    pub version: i64,
    /// Its audit event id (`<chain>:<seq>`).
    pub audit_event: String,
}

/// What a write did.
#[derive(Debug)]
pub enum PutOutcome {
    /// Stored now.
    Stored(Stored),
    /// A live record of the same `Idempotency-Key` answered first: nothing was written.
    Replay(IdempotencyRecord),
}

/// What one try came to.
enum Attempt {
    Done(PutOutcome),
    Again,
}

/// Store a new version of a shard.
pub async fn put(state: &Services, req: &PutShard<'_>) -> Result<PutOutcome, DomainError> {
    for _ in 0..MAX_WRITE_ATTEMPTS {
        if let Attempt::Done(outcome) = try_put(state, req).await? {
            return Ok(outcome);
        }
    }
    Err(DomainError::Conflict(
        "too many concurrent writers of this shard; retry".into(),
    ))
}

/// One try: placed at each try, so a try that lost to a tier change is placed by the new tier.
async fn try_put(state: &Services, req: &PutShard<'_>) -> Result<Attempt, DomainError> {
    let (record, latest) = state
        .store
        .account_and_latest(req.account, req.shard)
        .await?
        .ok_or(StoreError::AccountNotFound)?;
    let placement = placement_of(state, &record).await?;
    let backend = state
        .backend(&placement.backend)
        .ok_or_else(|| DomainError::Internal("placement names no backend".into()))?
        .clone();
    if let Some(expected) = req.expected_version {
        // 0: the caller expects no version yet.
        if expected != latest.map_or(0, Version::get) {
            return Err(StoreError::Conflict {
                latest: latest.map(Version::get),
            }
            .into());
        }
    }
    let version = match latest {
        None => Version::FIRST,
        Some(v) => v
            .next()
            .ok_or_else(|| DomainError::Conflict("the shard has no version number left".into()))?,
    };
    // The write's class is known here: its account was placed by its tier.
    let class = state
        .policy
        .current()
        .policy
        .class_of(&record.account, &record.tier);
    let row = priority::scoped(
        Ask::Known(class),
        seal(state, req, &backend, &placement.backend, version),
    )
    .await?;
    let event = restamped(&req.event)
        .version(version.get())
        .backend(&placement.backend)
        .detail(format!("key_version={}", row.key_version));
    let default_keep = i64::from(state.retention.keep_versions);
    let keep = record.keep_versions.unwrap_or(default_keep);
    if req.idempotency.is_none() && (keep <= 0 || version.get() <= keep) {
        if let Some(attempt) = write_grouped(state, req, &row, &record, event.clone()).await? {
            return Ok(attempt);
        }
    }
    write_alone(state, req, &row, event, default_keep).await
}

/// The caller's event, stamped now (each try's event carries the time of its try).
fn restamped(event: &Event) -> Event {
    let mut event = event.clone();
    event.ts_ms = crate::now_ms();
    event
}

/// Seal the plaintext under a fresh data key of `backend` into the row of `version`. A
/// backend that refuses or fails before anything is written still leaves an audit event (best
/// effort: the caller gets the backend's error either way, and nothing was stored).
async fn seal(
    state: &Services,
    req: &PutShard<'_>,
    backend: &Arc<dyn KeyBackend>,
    backend_name: &str,
    version: Version,
) -> Result<ShardVersionRow, DomainError> {
    let id = ShardIdentity::new(req.account.as_str(), req.shard.as_str(), version);
    let sealed = match envelope::seal(backend.as_ref(), &id, req.plaintext).await {
        Ok(sealed) => sealed,
        Err(e) => {
            let err = DomainError::from(e);
            let mut event = restamped(&req.event);
            event.outcome = err.outcome().to_string();
            event.version = Some(version.get());
            event.backend = Some(backend_name.to_string());
            if let Err(audit_err) = state.audit.record(event).await {
                tracing::warn!(
                    code = audit_err.outcome(),
                    "the audit event of a failed shard.put was not recorded"
                );
            }
            return Err(err);
        }
    };
    Ok(ShardVersionRow {
        account: req.account.to_string(),
        shard: req.shard.to_string(),
        version,
        format_version: i16::from(id.format_version),
        backend: backend_name.to_string(),
        key_ref: sealed.wrapped.key_ref.clone(),
        key_version: i64::from(sealed.wrapped.key_version),
        wrapped_dek: sealed.wrapped.blob,
        nonce: sealed.nonce.to_vec(),
        ciphertext: sealed.ciphertext,
        key_commitment: Some(sealed.commitment.to_vec()),
        created_at: crate::now_ms(),
        created_by: req.created_by.to_string(),
    })
}

/// Hand the write to a group commit, when groups are on (its account and latest version are
/// re-checked there as here). `None`: nothing of the group was stored, write alone.
async fn write_grouped(
    state: &Services,
    req: &PutShard<'_>,
    row: &ShardVersionRow,
    record: &AccountRecord,
    event: Event,
) -> Result<Option<Attempt>, DomainError> {
    let Some(groups) = state.write_groups.as_ref() else {
        return Ok(None);
    };
    let grouped = groups
        .write(
            row.clone(),
            record.tier.clone(),
            record.keep_versions,
            event,
        )
        .await;
    Ok(match grouped {
        Grouped::Stored => Some(Attempt::Done(PutOutcome::Stored(Stored {
            version: row.version,
            backend: row.backend.clone(),
            pruned: Vec::new(),
        }))),
        Grouped::Refused(StoreError::Conflict { .. }) if req.expected_version.is_none() => {
            Some(Attempt::Again)
        }
        Grouped::Refused(StoreError::AccountChanged) | Grouped::Again => Some(Attempt::Again),
        Grouped::Refused(e) => return Err(e.into()),
        Grouped::Alone => None,
    })
}

/// The answer of a write that pruned `pruned`, whose sealed records are `records` (the
/// write's own first, then one per pruned version).
fn stored(row: &ShardVersionRow, pruned: &[i64], records: &[AuditRecord]) -> Stored {
    Stored {
        version: row.version,
        backend: row.backend.clone(),
        pruned: pruned
            .iter()
            .zip(records.iter().skip(1))
            .map(|(v, r)| Pruned {
                version: *v,
                audit_event: Auditor::event_id(r),
            })
            .collect(),
    }
}

/// Commit the write alone: retention (account `keep_versions`, else `[retention]`) runs in
/// the write's transaction, each pruned version with an event chained after the write's own.
/// The records are sealed inside the store call, once the row is in place (`LateSeal`): the
/// idempotent answer, stored in the same transaction, names the pruned versions' events.
async fn write_alone(
    state: &Services,
    req: &PutShard<'_>,
    row: &ShardVersionRow,
    event: Event,
    default_keep: i64,
) -> Result<Attempt, DomainError> {
    let version = row.version;
    let prune_events = |pruned: &[i64]| -> Vec<Event> {
        pruned
            .iter()
            .map(|v| {
                req.prune_event.clone().version(*v).detail(format!(
                    "retention: pruned by the write of version {version}"
                ))
            })
            .collect()
    };
    let sealed = OnceLock::<Vec<AuditRecord>>::new();
    let idem = req.idempotency.as_ref();
    let idem_for = |pruned: &[i64]| match idem {
        Some(i) => (i.record)(&stored(
            row,
            pruned,
            sealed.get().map_or(&[], Vec::as_slice),
        )),
        None => unreachable!("only called with an idempotency key"),
    };
    let first = idem.map(|i| (i.record)(&stored(row, &[], &[])));
    let write = idem.zip(first.as_ref()).map(|(i, record)| IdempotentWrite {
        record,
        expired_before_ms: i.expired_before_ms,
    });
    let retention = Prune {
        default_keep,
        idem: idem
            .is_some()
            .then_some(&idem_for as shardgate_store::IdempotencyForPruned<'_>),
    };
    let events = [event];
    let mut seal = ChainSeal::new(&state.audit, &events, CHAIN_WAIT)
        .with_prunes(&prune_events)
        .publish_to(&sealed);
    // The chain is taken only once the row is in place: concurrent writes do their row work
    // at the same time and queue only for the audit insert and the commit.
    let result = state
        .store
        .insert_shard_version_sealed(row, write, Some(retention), &mut seal)
        .await;
    let busy = seal.timed_out();
    match result {
        Ok(Idempotent::Replay(rec)) => {
            // Nothing was written (nor audited): the chain head stays.
            seal.finish(false, &Ok::<(), StoreError>(())).await;
            Ok(Attempt::Done(PutOutcome::Replay(rec)))
        }
        Ok(Idempotent::Done(pruned)) => {
            let answer = stored(row, &pruned, seal.records());
            seal.finish(true, &Ok::<(), StoreError>(())).await;
            if !pruned.is_empty() {
                tracing::info!(
                    account = %row.account,
                    shard = %row.shard,
                    version = version.get(),
                    pruned = ?pruned,
                    "retention crypto-shredded older versions"
                );
            }
            Ok(Attempt::Done(PutOutcome::Stored(answer)))
        }
        Err(e) => {
            let result = Err::<(), _>(e);
            seal.finish(false, &result).await;
            let Err(e) = result else { unreachable!() };
            retry_or_fail(req, e, busy)
        }
    }
}

/// After a failed commit: write again, or answer the failure.
fn retry_or_fail(req: &PutShard<'_>, e: StoreError, busy: bool) -> Result<Attempt, DomainError> {
    if busy {
        // Rolled back while another writer held the chain: nothing was stored.
        tracing::debug!("audit chain busy at a shard write; writing again");
        return Ok(Attempt::Again);
    }
    if matches!(e, StoreError::Conflict { .. }) && req.expected_version.is_none() {
        return Ok(Attempt::Again);
    }
    if matches!(e, StoreError::AccountChanged) {
        // A tier change committed while this write was in flight: place it again.
        tracing::debug!("the account changed during a shard write; writing again");
        return Ok(Attempt::Again);
    }
    Err(e.into())
}
