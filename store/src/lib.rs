//! shardgate persistence: one [`Store`] trait, implemented for PostgreSQL and SQLite.
//!
//! Every write is one transaction, and the audit event that records it commits in the
//! same transaction (DESIGN.md, Storage). The caller seals audit records (it owns the
//! HMAC chain); the store only persists them.
//!
//! Error mapping, the same for both stores:
//! - the database cannot serve (connection/IO errors, pool acquire timeout, pool closed;
//!   PostgreSQL SQLSTATE classes 08, 53, 57, and 40001/40P01/25006; SQLite BUSY after the busy
//!   timeout, LOCKED, NOMEM, IOERR, FULL, CANTOPEN) -> [`StoreError::Unavailable`];
//! - any other failure of an `audit_events` insert (a trigger, a duplicate `(chain_id, seq)`,
//!   ...) -> [`StoreError::AuditUnavailable`], and the whole transaction is rolled back;
//! - everything else (schema mismatch, malformed URL, a chain id registered twice with
//!   different data) -> [`StoreError::Internal`].
//!
//! Error texts carry SQLSTATE/result codes, database messages and ids, never row data.
//! A commit that fails with `Unavailable` may or may not have been applied.

mod audit_query;
mod error;
mod held_conns;
pub mod keys;
pub mod migration;
mod model;
pub mod postgres;
mod rows;
mod schema;
mod seal;
pub mod sqlite;
#[cfg(test)]
mod test_db;

pub use keys::{
    KeyRefCount, KeyState, KeyStateChange, KeyTransition, KeyVersionRecord, NewKeyVersion,
    Reservation,
};
pub use migration::{
    job_state, ClaimedItem, CommitResult, ItemCommit, ItemKey, ItemOutcome, MigrationFailure,
    MigrationJob, MigrationSelector, Transition,
};

pub use audit_query::AuditQuery;
pub use error::{BackupError, StoreError};
pub use model::{
    AccountRecord, AccountStats, ApprovalRecord, AuditForCount, AuditForPruned, AuditRecord,
    AuditSegment, BreakerOverride, DeleteOutcome, ExpectedTier, FactsUpdate, GroupedWrite,
    IdempotencyForCount, IdempotencyForOutcome, IdempotencyForPruned, IdempotencyRecord,
    Idempotent, IdempotentWrite, KeepVersions, PolicyVersionRecord, Retention, ShardSummary,
    ShardVersionRow, TokenRecord, TokenRevocation,
};
pub(crate) use schema::{compare_migrations, no_schema_error};
pub use schema::{
    SchemaCheck, APPEND_ONLY_TABLES, MAX_AUDIT_CHECK_STEP, RUNTIME_FUNCTIONS, RUNTIME_PRIVILEGES,
};
pub use seal::{check_batch_records, check_write_records, LateSeal, Presealed, Prune};

use async_trait::async_trait;
use seal::SealedWith;
use std::path::Path;
use std::sync::Arc;

pub use shardgate_policy::Version;

/// The persistence contract shared by PostgreSQL and SQLite.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `postgres` or `sqlite`.
    fn kind(&self) -> &'static str;

    /// Apply pending migrations from `migrations/<kind>`.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Instead of [`Store::migrate`], for a gateway that must not run DDL (`[store] migrate =
    /// false`: a runtime database role, migrations run separately by the owner role). Checks,
    /// without changing anything, that every migration of this build is applied and unchanged
    /// and, on PostgreSQL, that the connected role holds every privilege of
    /// [`RUNTIME_PRIVILEGES`]. An error names what is missing and how to fix it; the answer
    /// reports what the operator should know (a role that could rewrite the audit log, a
    /// database migrated by a newer build).
    async fn check_schema(&self) -> Result<SchemaCheck, StoreError>;

    /// Cheap round trip for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Create the account or change its tier, with its audit event, in one transaction.
    /// Returns the previous tier (`None` when the account was created).
    async fn put_account(
        &self,
        account: &str,
        tier: &str,
        now_ms: i64,
        audit: &AuditRecord,
    ) -> Result<Option<String>, StoreError> {
        self.put_account_with_retention(account, tier, KeepVersions::Unchanged, now_ms, audit)
            .await
    }

    /// [`Store::put_account`], also setting the account's `keep_versions` (retention of
    /// its shards' versions, applied at each write).
    async fn put_account_with_retention(
        &self,
        account: &str,
        tier: &str,
        keep: KeepVersions,
        now_ms: i64,
        audit: &AuditRecord,
    ) -> Result<Option<String>, StoreError> {
        self.put_account_expecting(
            account,
            tier,
            ExpectedTier::Any,
            keep,
            FactsUpdate::Unchanged,
            now_ms,
            audit,
        )
        .await
    }

    /// [`Store::put_account_with_retention`] only if the account's tier is still `expected`
    /// (checked in the transaction, the row locked, before anything is written); else
    /// `AccountChanged` and nothing is written (no audit event either). What a tier change
    /// judged on an earlier read of the tier (the downgrade guard) writes with. `facts` sets
    /// the tier the account asked for and its attributes in the same transaction.
    #[allow(clippy::too_many_arguments)]
    async fn put_account_expecting(
        &self,
        account: &str,
        tier: &str,
        expected: ExpectedTier<'_>,
        keep: KeepVersions,
        facts: FactsUpdate<'_>,
        now_ms: i64,
        audit: &AuditRecord,
    ) -> Result<Option<String>, StoreError>;

    /// The account row, if it exists.
    async fn get_account(&self, account: &str) -> Result<Option<AccountRecord>, StoreError>;

    /// The account row, if it exists, with the latest stored version of one of its shards:
    /// what a shard write is placed and numbered by (two reads, not one snapshot).
    async fn account_and_latest(
        &self,
        account: &str,
        shard: &str,
    ) -> Result<Option<(AccountRecord, Option<Version>)>, StoreError> {
        let Some(record) = self.get_account(account).await? else {
            return Ok(None);
        };
        Ok(Some((record, self.latest_version(account, shard).await?)))
    }

    /// Shard count and versions whose backend differs from `current_backend`.
    async fn account_stats(
        &self,
        account: &str,
        current_backend: &str,
    ) -> Result<AccountStats, StoreError>;

    /// Delete every shard version of the account and the account, with the audit event, in
    /// one transaction. `AccountNotFound` if it does not exist.
    async fn delete_account(
        &self,
        account: &str,
        audit: AuditForCount<'_>,
    ) -> Result<DeleteOutcome, StoreError> {
        match self.delete_account_idempotent(account, audit, None).await? {
            Idempotent::Done(o) => Ok(o),
            Idempotent::Replay(_) => Err(StoreError::Internal(
                "replay without an idempotency record".to_string(),
            )),
        }
    }

    /// [`Store::delete_account`] with an optional idempotency record, exactly as
    /// [`Store::delete_shard_idempotent`] (the closure gets the outcome; it is also called
    /// with an empty outcome to learn the `(scope, key)` first).
    async fn delete_account_idempotent(
        &self,
        account: &str,
        audit: AuditForCount<'_>,
        idem: Option<(i64, IdempotencyForOutcome<'_>)>,
    ) -> Result<Idempotent<DeleteOutcome>, StoreError>;

    /// Shards of the account ordered by id bytes, ids strictly greater than `after`.
    async fn list_shards(
        &self,
        account: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ShardSummary>, StoreError>;

    /// Latest stored version of the shard, if any.
    async fn latest_version(
        &self,
        account: &str,
        shard: &str,
    ) -> Result<Option<Version>, StoreError>;

    /// Insert `row` with its audit event in one transaction. Fails with `AccountNotFound`
    /// if the account does not exist, `Conflict` unless `row.version` is exactly the latest
    /// stored version + 1 (1 for a new shard). Two writers can never both store one version.
    async fn insert_shard_version(
        &self,
        row: &ShardVersionRow,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        match self
            .insert_shard_version_idempotent(row, audit, None)
            .await?
        {
            Idempotent::Done(()) => Ok(()),
            Idempotent::Replay(_) => Err(StoreError::Internal(
                "replay without an idempotency record".to_string(),
            )),
        }
    }

    /// [`Store::insert_shard_version`], and, when `idem` is given, its idempotency record in
    /// the same transaction (see [`IdempotentWrite`]). `Replay` when a live record of the
    /// same `(scope, key)` exists; nothing is written then. The record is checked before
    /// the account and version, so a retry never answers `Conflict` for its own write.
    async fn insert_shard_version_idempotent(
        &self,
        row: &ShardVersionRow,
        audit: &AuditRecord,
        idem: Option<IdempotentWrite<'_>>,
    ) -> Result<Idempotent<()>, StoreError> {
        Ok(
            match self
                .insert_shard_version_retained(row, audit, idem, None)
                .await?
            {
                Idempotent::Done(_) => Idempotent::Done(()),
                Idempotent::Replay(rec) => Idempotent::Replay(rec),
            },
        )
    }

    /// [`Store::insert_shard_version_idempotent`] that also applies `retention` in the same
    /// transaction (see [`Retention`]): the versions it pruned, ascending. The audit records
    /// of the pruned versions are inserted after `audit`; with both an idempotency key and
    /// `retention.idem`, the stored record is replaced by `retention.idem(pruned)`.
    async fn insert_shard_version_retained(
        &self,
        row: &ShardVersionRow,
        audit: &AuditRecord,
        idem: Option<IdempotentWrite<'_>>,
        retention: Option<Retention<'_>>,
    ) -> Result<Idempotent<Vec<i64>>, StoreError> {
        let mut seal = SealedWith {
            main: Some(audit.clone()),
            prunes: retention.map(|r| r.audit),
        };
        let prune = retention.map(|r| Prune {
            default_keep: r.default_keep,
            idem: r.idem,
        });
        self.insert_shard_version_sealed(row, idem, prune, &mut seal)
            .await
    }

    /// [`Store::insert_shard_version_retained`] whose audit records (the write's, then one
    /// per pruned version) come from `seal`: on PostgreSQL called once the row is inserted
    /// and the old versions pruned, so the caller holds its audit chain only for the
    /// account re-check, the audit insert and the commit (see [`LateSeal`]); on SQLite the chain is held (`hold`) before
    /// the write transaction begins. Not called for a replay, nor when the write is refused
    /// (not found, conflict, destroyed key) before its audit insert.
    async fn insert_shard_version_sealed(
        &self,
        row: &ShardVersionRow,
        idem: Option<IdempotentWrite<'_>>,
        prune: Option<Prune<'_>>,
        seal: &mut dyn LateSeal,
    ) -> Result<Idempotent<Vec<i64>>, StoreError>;

    /// Whether [`Store::insert_shard_versions_grouped`] is worth calling: PostgreSQL, where
    /// concurrent writes would otherwise queue one commit each on the audit chain. SQLite
    /// (one writer at a time) writes each on its own.
    fn groups_writes(&self) -> bool {
        false
    }

    /// Several new shard versions (of distinct shards, none of which prunes a version) in
    /// ONE transaction: each row inserted only if its shard's latest version is still
    /// `row.version - 1`, its account exists and its key version is not destroyed; then,
    /// under the caller's audit chain, the accounts re-checked (any tier or retention change
    /// since the writers read them rolls the whole group back: `AccountChanged`), one audit
    /// record per stored row from `seal.seal_rows`, one audit insert and one commit. Group
    /// commit: many writers pay for one flush and one hold of the chain. PostgreSQL first
    /// tries the whole group (every write sealed) in one statement, which stores all of it
    /// or nothing; only when some write is refused does it take the transaction above.
    ///
    /// `Ok` holds one answer per write, in order: `Ok(())` stored (and audited), or why
    /// that write alone was refused (`Conflict`, `AccountNotFound`, `KeyDestroyed`; nothing
    /// stored for it). `Err`: nothing of the group was stored.
    async fn insert_shard_versions_grouped(
        &self,
        writes: &[GroupedWrite<'_>],
        seal: &mut dyn LateSeal,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let _ = seal;
        Err(StoreError::Internal(format!(
            "{} store does not group {} writes",
            self.kind(),
            writes.len()
        )))
    }

    /// One version (`None` = latest).
    async fn get_shard_version(
        &self,
        account: &str,
        shard: &str,
        version: Option<Version>,
    ) -> Result<Option<ShardVersionRow>, StoreError>;

    /// Many versions in ONE query (batch reads): one answer per `(account, shard, version)`
    /// in order, `None` where no such version exists (`version: None` = latest).
    async fn get_shard_versions(
        &self,
        items: &[(String, String, Option<Version>)],
    ) -> Result<Vec<Option<ShardVersionRow>>, StoreError>;

    /// Delete every version of the shard with the audit event in one transaction;
    /// `ShardNotFound` if it had none.
    async fn delete_shard(
        &self,
        account: &str,
        shard: &str,
        audit: AuditForCount<'_>,
    ) -> Result<i64, StoreError> {
        match self
            .delete_shard_idempotent(account, shard, audit, None)
            .await?
        {
            Idempotent::Done(n) => Ok(n),
            Idempotent::Replay(_) => Err(StoreError::Internal(
                "replay without an idempotency record".to_string(),
            )),
        }
    }

    /// [`Store::delete_shard`], and, when `idem` is given, the idempotency record that
    /// `idem.1` builds for the destroyed count, in the same transaction. `idem.0` is the
    /// window cutoff (see [`IdempotentWrite::expired_before_ms`]); the closure is also
    /// called with 0 to learn the `(scope, key)` before anything is deleted. `Replay` when a
    /// live record of the key exists (nothing is deleted then, so a retry never sees 404).
    async fn delete_shard_idempotent(
        &self,
        account: &str,
        shard: &str,
        audit: AuditForCount<'_>,
        idem: Option<(i64, IdempotencyForCount<'_>)>,
    ) -> Result<Idempotent<i64>, StoreError>;

    /// Delete (crypto-shred) one version of a shard with its audit event in one
    /// transaction; `ShardNotFound` if that version does not exist. Other versions are left
    /// as they are; deleting the latest makes the newest remaining one the latest.
    async fn delete_shard_version(
        &self,
        account: &str,
        shard: &str,
        version: Version,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        match self
            .delete_shard_version_idempotent(account, shard, version, audit, None)
            .await?
        {
            Idempotent::Done(()) => Ok(()),
            Idempotent::Replay(_) => Err(StoreError::Internal(
                "replay without an idempotency record".to_string(),
            )),
        }
    }

    /// [`Store::delete_shard_version`] with an optional idempotency record (the receipt is
    /// known before the write), as [`Store::insert_shard_version_idempotent`].
    async fn delete_shard_version_idempotent(
        &self,
        account: &str,
        shard: &str,
        version: Version,
        audit: &AuditRecord,
        idem: Option<IdempotentWrite<'_>>,
    ) -> Result<Idempotent<()>, StoreError>;

    /// The record stored for `(scope, key)`, expired or not (the caller checks the window).
    async fn get_idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Delete every idempotency record created before `before_ms`; returns how many.
    async fn purge_idempotency(&self, before_ms: i64) -> Result<i64, StoreError>;

    /// Append audit records (one chain, consecutive seqs) in one transaction.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError>;

    /// Record that a chain started (chain id, start time, host), for `audit verify`.
    async fn register_chain(
        &self,
        chain_id: &str,
        started_ms: i64,
        host: &str,
    ) -> Result<(), StoreError>;

    /// The highest (seq, tag) of the chain: its newest hot row, else the end of its last
    /// archived segment.
    async fn audit_head(&self, chain_id: &str) -> Result<Option<(i64, Vec<u8>)>, StoreError>;

    /// Every chain id: registered chains, chains that have events and archived chains.
    async fn audit_chains(&self) -> Result<Vec<String>, StoreError>;

    /// Hot audit events matching `query`, ordered by `(ts_ms, chain_id, seq)`.
    async fn search_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;

    /// The chain's archived segments, in seq order.
    async fn audit_segments(&self, chain_id: &str) -> Result<Vec<AuditSegment>, StoreError>;

    /// Archived segments of every chain whose time range meets `[from_ms, to_ms)` (`None`:
    /// unbounded), ordered by `(min_ts_ms, chain_id, first_seq)`, at most `limit`: what a
    /// search page reads, in one query on the time indexes (migration 0014).
    async fn audit_segments_between(
        &self,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditSegment>, StoreError>;

    /// Record an archived segment: the number of events it covers (0 when this very
    /// segment was recorded before). Its hot rows stay until
    /// [`delete_archived_audit`](Self::delete_archived_audit) removes them. Refused
    /// (`Internal`, nothing changed) unless the rows are exactly the segment's (count, first
    /// `prev_tag`, last tag, tags digest, time range) and it continues the chain's previous
    /// segment, or starts the chain. On PostgreSQL this is the SECURITY DEFINER function
    /// `audit_archive_record`, the only writer of `audit_segments` (migrations 0021, 0022).
    async fn record_audit_segment(&self, segment: &AuditSegment) -> Result<u64, StoreError>;

    /// Check the hot rows `range` (`from..=to`) of the segment that starts at `first_seq` ahead of
    /// [`record_audit_segment`](Self::record_audit_segment), one step of its check: the rows
    /// checked. A segment's steps go in order from `first_seq` (a step from `first_seq`
    /// starts the chain's steps over); once they cover the segment exactly, recording it
    /// takes its checks from them instead of reading every row in one go. Refused
    /// (`Internal`, nothing stored) when a row is missing, the step is longer than
    /// [`MAX_AUDIT_CHECK_STEP`] rows or does not continue the steps before it; the same step
    /// again answers as before. On PostgreSQL this is the SECURITY DEFINER function
    /// `audit_archive_check`, the only writer of the steps (migration 0022).
    async fn check_audit_range(
        &self,
        chain_id: &str,
        first_seq: i64,
        range: (i64, i64),
    ) -> Result<u64, StoreError>;

    /// Delete the chain's hot rows among the `limit` seqs from its oldest hot row on that
    /// its recorded segments cover, and no other (at most `limit`; fewer where seqs are
    /// missing): the number deleted (0 when no covered row is left). On PostgreSQL this is
    /// the SECURITY DEFINER function `audit_archive_delete`; on SQLite a trigger refuses the
    /// delete of a row no segment covers.
    async fn delete_archived_audit(&self, chain_id: &str, limit: i64) -> Result<u64, StoreError>;

    /// Take or renew the lease `name` for `holder` until `now_ms + ttl_ms`: `true` when
    /// `holder` holds it now (it was free, expired or already `holder`'s).
    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Give up the lease `name` if `holder` holds it (it expires now).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Add a token. `Conflict` when its id or hash is already stored.
    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;

    /// Every token kept in the database, by id.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Revoke a token id (idempotent: `false` when it was already revoked; the first
    /// revocation's time and reason stay).
    async fn revoke_token(
        &self,
        token_id: &str,
        at_ms: i64,
        reason: &str,
    ) -> Result<bool, StoreError>;

    /// Every revocation, by token id.
    async fn token_revocations(&self) -> Result<Vec<TokenRevocation>, StoreError>;

    // ----- dual control (docs/security.md, "Dual control") -----

    /// Store a pending request with its audit event in one transaction.
    async fn insert_approval(
        &self,
        a: &ApprovalRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;

    /// One request.
    async fn get_approval(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError>;

    /// Approve a pending request, with its audit event, only if it is still pending, has not
    /// expired at `now_ms` and `credential` is not the one that asked: `false` (nothing
    /// written) otherwise. At most one approval ever succeeds.
    async fn approve(
        &self,
        id: &str,
        by: &str,
        credential: &str,
        now_ms: i64,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError>;

    // ----- operator overrides of backend breakers (docs/operations.md, "Breakers") -----

    /// Append an override (its `id` is assigned: the highest plus one, returned) with its
    /// audit event in the same transaction.
    async fn insert_breaker_override(
        &self,
        o: &BreakerOverride,
        audit: &AuditRecord,
    ) -> Result<i64, StoreError>;

    /// Overrides with `id > after_id`, oldest first, at most `limit`: what a replica has not
    /// applied yet.
    async fn breaker_overrides_after(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<BreakerOverride>, StoreError>;

    /// The newest override of each backend, oldest first: what a starting replica applies.
    async fn latest_breaker_overrides(&self) -> Result<Vec<BreakerOverride>, StoreError>;

    // ----- the cluster's tier policy (docs/policy-and-migration.md) -----

    /// The highest policy version stored (`None`: none yet): what every replica polls.
    async fn policy_head(&self) -> Result<Option<i64>, StoreError>;

    /// One policy version, or (`None`) the highest one.
    async fn policy_version(
        &self,
        version: Option<i64>,
    ) -> Result<Option<PolicyVersionRecord>, StoreError>;

    /// Append `record` as the next version, with its audit event (if any) in the same
    /// transaction, only if `record.version` is the highest stored plus one (1 on an empty
    /// table); else `Conflict` (with the highest stored) and nothing is written: another
    /// apply won, read again.
    async fn append_policy_version(
        &self,
        record: &PolicyVersionRecord,
        audit: Option<&AuditRecord>,
    ) -> Result<(), StoreError>;

    /// Record that policy version `version` owes a re-tier pass (moves by its tier rules),
    /// due from `now_ms`; a pass recorded done before is due again.
    async fn mark_retier_due(&self, version: i64, now_ms: i64) -> Result<(), StoreError>;

    /// The lowest policy version whose re-tier pass is due and not done (`None`: none).
    async fn retier_due(&self) -> Result<Option<i64>, StoreError>;

    /// Mark done every due re-tier pass of a version up to `up_to` (a pass under version
    /// `up_to` re-derived every account): how many were marked.
    async fn mark_retier_done(&self, up_to: i64, now_ms: i64) -> Result<u64, StoreError>;

    /// Accounts and their tiers in account order, after `after`, at most `limit`: what a
    /// policy change is measured against, a page at a time.
    async fn accounts_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AccountRecord>, StoreError>;

    /// Events of a chain with `seq > after_seq`, ordered by seq, at most `limit`.
    async fn audit_events(
        &self,
        chain_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    // ----- tier-migration jobs (see `migration`) -----

    /// Create a `running` job and snapshot every shard version matching `selector` as one
    /// pending item each (`total`), with its audit event, in one transaction.
    async fn create_migration_job(
        &self,
        id: &str,
        selector: &MigrationSelector,
        now_ms: i64,
        created_by: &str,
        audit: &AuditRecord,
    ) -> Result<MigrationJob, StoreError>;

    /// Have a running job snapshot its selector once more at `at_ms` before it completes
    /// ([`MigrationJob::catch_up_at`]). `NotFound` when the job does not exist.
    async fn schedule_migration_catch_up(&self, id: &str, at_ms: i64) -> Result<(), StoreError>;

    /// The job's second snapshot, when one is due (`catch_up_at <= now_ms`): every version
    /// matching its selector that it does not hold yet becomes a pending item (`total`
    /// grows), and `catch_up_at` is cleared, in one transaction. Returns how many items were
    /// added, or `None` when none was due (not scheduled, not yet, or taken by another
    /// replica). Idempotent: a second call finds nothing due.
    async fn catch_up_migration_job(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// One job.
    async fn get_migration_job(&self, id: &str) -> Result<Option<MigrationJob>, StoreError>;

    /// Jobs in any of `states` (e.g. the live ones, to resume at start-up), oldest first.
    async fn list_migration_jobs(&self, states: &[&str]) -> Result<Vec<MigrationJob>, StoreError>;

    /// Move the job from one of `from` to `to`, with its audit event, in one transaction.
    async fn set_migration_job_state(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        now_ms: i64,
        audit: &AuditRecord,
    ) -> Result<Transition, StoreError>;

    /// Claim up to `limit` pending items of a `running` job for `worker` until
    /// `now_ms + lease_ms`: items nobody holds, or whose lease expired. Items whose shard
    /// version no longer exists are settled as skipped instead of returned. Empty when the
    /// job is not running or nothing is claimable.
    ///
    /// With `after`, only items past that key are looked at (a worker passes the last item
    /// it claimed, so its claims do not step over everything settled before it); an empty
    /// answer then says nothing about the items up to `after`: claim again without it.
    /// Items come in key order.
    async fn claim_migration_items(
        &self,
        job_id: &str,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
        after: Option<&ItemKey>,
    ) -> Result<Vec<ClaimedItem>, StoreError>;

    /// Settle a batch of items this worker claimed, in one transaction with one audit event
    /// per item (their records chained in order): `Moved` replaces the version's backend, key
    /// ref, key version and wrapped DEK only if the wrapped DEK is still `old_wrapped_dek`
    /// (else `RowChanged`, counted as skipped); `Skipped` / `Failed` record the item (a
    /// failure also sets the job's `last_error`). One result per item, in order.
    ///
    /// `None`, and nothing changes (no audit event either), when any item is settled or held
    /// by another worker, or the job is not running: the batch is all or nothing so its
    /// chained audit records are stored without a gap.
    ///
    /// The records (one per item, in order) come from `seal`, called at most once: on
    /// PostgreSQL after the rows are written and locked, so the caller holds its audit chain
    /// only for the job update, the audit insert and the commit (see [`LateSeal`]); on SQLite
    /// (one writer at a time) before the write transaction begins. An error from `seal`
    /// rolls everything back and is returned.
    async fn commit_migration_batch(
        &self,
        job_id: &str,
        worker: &str,
        items: &[ItemCommit<'_>],
        now_ms: i64,
        seal: &mut dyn LateSeal,
    ) -> Result<Option<Vec<CommitResult>>, StoreError>;

    /// [`Store::commit_migration_batch`] of one item; `NotClaimed` for `None`.
    #[allow(clippy::too_many_arguments)]
    async fn commit_migration_item(
        &self,
        job_id: &str,
        worker: &str,
        account: &str,
        shard: &str,
        version: Version,
        old_wrapped_dek: &[u8],
        outcome: &ItemOutcome,
        now_ms: i64,
        audit: &AuditRecord,
    ) -> Result<CommitResult, StoreError> {
        let item = ItemCommit {
            account,
            shard,
            version,
            old_wrapped_dek,
            outcome,
        };
        let mut seal = Presealed::new(vec![audit.clone()]);
        let results = self
            .commit_migration_batch(
                job_id,
                worker,
                std::slice::from_ref(&item),
                now_ms,
                &mut seal,
            )
            .await?;
        Ok(results
            .and_then(|r| r.into_iter().next())
            .unwrap_or(CommitResult::NotClaimed))
    }

    /// Failed items of a job, in (account, shard, version) order, at most `limit`. On
    /// PostgreSQL this walks the job's items (no index holds only the failed ones: see
    /// migration 0011), so callers skip it for a job that counts no failures.
    async fn migration_failures(
        &self,
        job_id: &str,
        limit: i64,
    ) -> Result<Vec<MigrationFailure>, StoreError>;

    // ----- key lifecycle (see `keys`) -----

    /// Every registered KEK version of every backend, ordered by backend and version.
    async fn list_key_versions(&self) -> Result<Vec<KeyVersionRecord>, StoreError>;

    /// Register versions the table does not have yet (`registered` as `changed_by`); existing
    /// ones are left as they are. One transaction. Returns how many rows were added.
    async fn register_key_versions(
        &self,
        versions: &[NewKeyVersion],
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Change a version's state with its audit event, in one transaction (rules in [`keys`]).
    /// Nothing is written (nor audited) unless the answer is [`KeyTransition::Done`].
    async fn set_key_state(
        &self,
        change: &KeyStateChange<'_>,
        audit: &AuditRecord,
    ) -> Result<KeyTransition, StoreError>;

    /// Reserve up to `block` wraps under an `active` version, never past `limit`, with one
    /// transaction (the block is this caller's alone, whichever replica asks).
    async fn reserve_key_wraps(
        &self,
        backend: &str,
        key_version: i64,
        block: i64,
        limit: i64,
    ) -> Result<Reservation, StoreError>;

    /// Shard versions per (backend, key version) that has any.
    async fn key_ref_counts(&self) -> Result<Vec<KeyRefCount>, StoreError>;

    // ----- backup -----

    /// Write a consistent copy of the whole database to `path`, a new file (mode 0600), while
    /// other connections keep reading and writing. Refuses an existing path
    /// ([`BackupError::Exists`]) and leaves nothing behind when it fails. SQLite only:
    /// PostgreSQL answers [`BackupError::UsePgDump`].
    async fn backup_to(&self, path: &Path) -> Result<(), BackupError>;
}

/// Open the store a URL names (`postgres://…` or `sqlite://…`), without migrating.
pub async fn connect(url: &str, max_connections: u32) -> Result<Arc<dyn Store>, StoreError> {
    connect_with_password(url, None, max_connections).await
}

/// How a store's connections are pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    /// The pool's size (at least 1).
    pub max_connections: u32,
    /// PostgreSQL: keep up to half as many connections again apart from the pool for the hot
    /// one-statement reads, reused without sqlx's release ping (module `held_conns`).
    /// `false`: every statement goes through the pool. SQLite ignores it.
    pub held_connections: bool,
}

/// [`connect`] with the PostgreSQL password given apart from the URL (read from a private
/// file by the gateway, so that it is in no URL, log line or error text). The password must
/// not also be in the URL; SQLite takes none.
pub async fn connect_with_password(
    url: &str,
    password: Option<&str>,
    max_connections: u32,
) -> Result<Arc<dyn Store>, StoreError> {
    let pool = PoolOptions {
        max_connections,
        held_connections: true,
    };
    connect_with_options(url, password, pool).await
}

/// [`connect_with_password`] with every pool setting ([`PoolOptions`]).
pub async fn connect_with_options(
    url: &str,
    password: Option<&str>,
    pool: PoolOptions,
) -> Result<Arc<dyn Store>, StoreError> {
    let max_connections = pool.max_connections;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PgStore::connect_with_options(url, password, pool).await?,
        ))
    } else if url.starts_with("sqlite:") {
        if password.is_some() {
            return Err(StoreError::Internal(
                "a password applies to a PostgreSQL store only, not to sqlite".to_string(),
            ));
        }
        Ok(Arc::new(
            sqlite::SqliteStore::connect(url, max_connections).await?,
        ))
    } else {
        Err(StoreError::Internal(
            "store url must start with postgres:// or sqlite:".to_string(),
        ))
    }
}
