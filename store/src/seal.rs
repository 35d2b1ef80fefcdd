//! Late sealing of a write's audit records ([`LateSeal`]): the hook a store calls once the
//! write's rows are in place, right before the audit insert and the commit, and the checks of
//! what it sealed.

use async_trait::async_trait;

use crate::{AuditForPruned, AuditRecord, IdempotencyForPruned, StoreError};

/// Seals a write's audit records at the last moment the store can take them: once the
/// write's rows are in place and locked, right before the audit insert and the commit. The
/// caller's audit chain is a single sequence, so whoever seals holds it until the commit's
/// outcome is known; sealing late keeps that hold to the audit insert and the commit instead
/// of the whole transaction, so other writers and the read path's audit batches wait less.
///
/// An implementation that waits for its chain must bound the wait and fail instead: a writer
/// that took the chain first may be waiting for a row this transaction holds, and only this
/// side giving up (its transaction rolls back) breaks that cycle.
#[async_trait]
pub trait LateSeal: Send {
    /// Take the chain now, before the transaction begins. Stores with one writer at a time
    /// (SQLite) call this first: waiting for the chain while holding the database's write
    /// lock would stall whoever holds the chain and waits for that lock. Default: nothing
    /// (`seal` takes the chain).
    async fn hold(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The sealed records, in order. `pruned`: the versions a shard write's retention
    /// removed (ascending), each of which needs its own record after the write's; empty for
    /// every other write. Called at most once per store call.
    async fn seal(&mut self, pruned: &[i64]) -> Result<Vec<AuditRecord>, StoreError>;

    /// For [`Store::insert_shard_versions_grouped`]: one record for each write at `rows`
    /// (ascending indices into the group, the writes that were stored), in that order,
    /// instead of `seal`. A store may call it again after an attempt that stored nothing
    /// (PostgreSQL first tries the whole group in one statement): each call seals from the
    /// same chain head, and the last call's records are the ones stored. Default: refused
    /// (a seal that carries one write's events cannot seal a group's).
    async fn seal_rows(&mut self, rows: &[usize]) -> Result<Vec<AuditRecord>, StoreError> {
        Err(StoreError::Internal(format!(
            "this seal cannot seal a group of {} writes",
            rows.len()
        )))
    }
}

/// Records sealed up front (tests, single-item commits whose caller already holds the chain).
#[derive(Debug)]
pub struct Presealed(Vec<AuditRecord>);

impl Presealed {
    /// Hand these records to the store as they are.
    pub fn new(records: Vec<AuditRecord>) -> Self {
        Self(records)
    }
}

#[async_trait]
impl LateSeal for Presealed {
    async fn seal(&mut self, _pruned: &[i64]) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(std::mem::take(&mut self.0))
    }
}

/// A write's record sealed up front and its pruned versions' records built by a closure
/// (the caller already holds the chain): what
/// [`Store::insert_shard_version_retained`](crate::Store::insert_shard_version_retained) hands
/// to [`Store::insert_shard_version_sealed`](crate::Store::insert_shard_version_sealed).
pub(crate) struct SealedWith<'a> {
    pub(crate) main: Option<AuditRecord>,
    pub(crate) prunes: Option<AuditForPruned<'a>>,
}

#[async_trait]
impl LateSeal for SealedWith<'_> {
    async fn seal(&mut self, pruned: &[i64]) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out: Vec<AuditRecord> = self.main.take().into_iter().collect();
        if let Some(prunes) = self.prunes {
            out.extend(prunes(pruned));
        }
        Ok(out)
    }
}

/// Retention of [`Store::insert_shard_version_sealed`](crate::Store::insert_shard_version_sealed):
/// [`Retention`](crate::Retention) whose pruned
/// versions' records come from the write's [`LateSeal`].
#[derive(Clone, Copy)]
pub struct Prune<'a> {
    /// Versions kept when the account sets none (0 = every version).
    pub default_keep: i64,
    /// With an idempotency key: the record to store, rebuilt with the pruned versions
    /// (called after the seal).
    pub idem: Option<IdempotencyForPruned<'a>>,
}

impl std::fmt::Debug for Prune<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prune")
            .field("default_keep", &self.default_keep)
            .finish_non_exhaustive()
    }
}

/// The records a migration batch must store: one per item.
pub fn check_batch_records(records: &[AuditRecord], items: usize) -> Result<(), StoreError> {
    if records.len() == items {
        Ok(())
    } else {
        Err(StoreError::Internal(format!(
            "{} audit records sealed for {items} migration items",
            records.len()
        )))
    }
}

/// The records a shard write must store: its own, then one per pruned version.
pub fn check_write_records(records: &[AuditRecord], pruned: &[i64]) -> Result<(), StoreError> {
    if records.len() == 1 + pruned.len() {
        Ok(())
    } else {
        Err(StoreError::Internal(format!(
            "{} audit records sealed for a write that pruned {} versions",
            records.len(),
            pruned.len()
        )))
    }
}
