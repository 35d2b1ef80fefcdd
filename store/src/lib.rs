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

mod held_conns;
pub mod keys;
pub mod migration;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod test_db;

pub use keys::{
    key_state, KeyRefCount, KeyStateChange, KeyTransition, KeyVersionRecord, NewKeyVersion,
    Reservation,
};
pub use migration::{
    job_state, ClaimedItem, CommitResult, ItemCommit, ItemKey, ItemOutcome, MigrationFailure,
    MigrationJob, MigrationSelector, Transition,
};

use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An account row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Account id (exact bytes).
    pub account: String,
    /// Tier name as declared in the config.
    pub tier: String,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// Last tier change, unix milliseconds.
    pub updated_at: i64,
    /// Versions of each shard kept at write time (`Some(0)` = every version); `None` = the
    /// gateway's `[retention] keep_versions`.
    pub keep_versions: Option<i64>,
}

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
/// (the caller already holds the chain): what [`Store::insert_shard_version_retained`]
/// hands to [`Store::insert_shard_version_sealed`].
struct SealedWith<'a> {
    main: Option<AuditRecord>,
    prunes: Option<AuditForPruned<'a>>,
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

/// Retention of [`Store::insert_shard_version_sealed`]: [`Retention`] whose pruned
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

/// One write of [`Store::insert_shard_versions_grouped`]: a new version of a shard,
/// numbered after `row.version - 1`, placed by the account's tier and retention as the
/// writer read them (re-checked under the audit chain, as a single write's are).
#[derive(Clone, Copy)]
pub struct GroupedWrite<'a> {
    /// The row to insert.
    pub row: &'a ShardVersionRow,
    /// The account's tier the write was placed by.
    pub tier: &'a str,
    /// The account's `keep_versions` the write was numbered by: the caller groups only
    /// writes that prune nothing under it.
    pub keep_versions: Option<i64>,
}

impl std::fmt::Debug for GroupedWrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupedWrite")
            .field("account", &self.row.account)
            .field("shard", &self.row.shard)
            .field("version", &self.row.version)
            .finish_non_exhaustive()
    }
}

/// Counts shown by `GET /v1/accounts/{account}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountStats {
    /// Distinct shard ids of the account.
    pub shard_count: i64,
    /// Shard versions whose wrapped DEK lives on a backend other than the given one.
    pub versions_elsewhere: i64,
}

/// One immutable stored shard version (the envelope plus its metadata).
///
/// Holds only ciphertext and a wrapped key, so `Debug` is safe to derive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardVersionRow {
    /// Account id.
    pub account: String,
    /// Shard id.
    pub shard: String,
    /// Version, starting at 1.
    pub version: i64,
    /// Envelope format version (1 or 2; FORMAT.md §1).
    pub format_version: i16,
    /// Backend instance name that wrapped the DEK.
    pub backend: String,
    /// Backend key reference (keyring id, KMS key ARN, HSM key label).
    pub key_ref: String,
    /// Backend key version.
    pub key_version: i64,
    /// The wrapped data key.
    pub wrapped_dek: Vec<u8>,
    /// The 96-bit AES-GCM nonce of the shard seal.
    pub nonce: Vec<u8>,
    /// Shard ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
    /// Format 2: the 32-byte commitment to the data key (FORMAT.md §3a); format 1: `None`.
    /// Never changed by a re-wrap.
    pub key_commitment: Option<Vec<u8>>,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// Token identity (never the token) that wrote it.
    pub created_by: String,
}

/// A page entry of `GET /v1/accounts/{account}/shards`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSummary {
    /// Shard id.
    pub shard: String,
    /// Highest stored version.
    pub latest_version: i64,
    /// Backend of the latest version.
    pub backend: String,
}

/// A sealed audit event, as stored. `tag` is HMAC-SHA256 over the canonical encoding of
/// every other field (see FORMAT.md); `prev_tag` is the tag of `seq - 1` in the same chain
/// (32 zero bytes for `seq == 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Chain id (one per gateway process).
    pub chain_id: String,
    /// Position in the chain, starting at 1.
    pub seq: i64,
    /// Event time, unix milliseconds.
    pub ts_ms: i64,
    /// Request id.
    pub request_id: String,
    /// Token identity (its configured name), or `anonymous`.
    pub actor: String,
    /// What was attempted, e.g. `shard.get`.
    pub action: String,
    /// Account id, if any.
    pub account: Option<String>,
    /// Shard id, if any.
    pub shard: Option<String>,
    /// Shard version, if any.
    pub version: Option<i64>,
    /// Backend instance, if any.
    pub backend: Option<String>,
    /// `ok` or an error code.
    pub outcome: String,
    /// Free text without secrets.
    pub detail: String,
    /// HMAC of the credential's token id under the deployment's audit key (never the token
    /// id itself), when a credential was presented.
    pub credential: Option<String>,
    /// Tag of the previous event of the chain.
    pub prev_tag: Vec<u8>,
    /// HMAC-SHA256 tag of this event.
    pub tag: Vec<u8>,
}

/// An API token kept in the database: its hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// First 16 hex digits of the token's SHA-256 (what `token revoke` names).
    pub token_id: String,
    /// Identity recorded in the audit log.
    pub name: String,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
    /// Scope names (`*` = all).
    pub scopes: Vec<String>,
    /// Exact-byte account prefix the token is restricted to.
    pub account_prefix: Option<String>,
    /// Creation time, unix milliseconds.
    pub created_ms: i64,
    /// Expiry, unix milliseconds (`None`: never).
    pub expires_ms: Option<i64>,
}

/// A revoked token id (of a database or config-file token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRevocation {
    /// The token id.
    pub token_id: String,
    /// When, unix milliseconds.
    pub revoked_ms: i64,
    /// Why, as the operator gave it (no secret).
    pub reason: String,
}

/// Builds the audit record of a delete once the transaction knows how many versions it
/// destroyed (the count is part of the audited detail).
pub type AuditForCount<'a> = &'a (dyn Fn(i64) -> AuditRecord + Send + Sync);

/// Result of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// Distinct shard ids removed.
    pub shards: i64,
    /// Shard versions removed.
    pub versions: i64,
}

/// The stored first answer of a write made with an `Idempotency-Key`.
///
/// `(scope, key)` is unique: `scope` is the caller identity + method + path (built by the
/// gateway), so two identities' keys never collide. `body_json` is the answer's JSON body;
/// it never carries shard bytes (put and delete answers carry none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// Caller identity, method and path.
    pub scope: String,
    /// The client's `Idempotency-Key`.
    pub key: String,
    /// SHA-256 of the request (so a reuse with another request is refused).
    pub request_hash: Vec<u8>,
    /// HTTP status of the first answer.
    pub status: i32,
    /// JSON body of the first answer.
    pub body_json: String,
    /// When it was stored, unix milliseconds.
    pub created_at: i64,
}

/// An idempotency record to store with a write, in the same transaction.
///
/// A record of the same `(scope, key)` created before `expired_before_ms` is expired: it is
/// replaced. Otherwise the write is not made and the stored record is returned
/// ([`Idempotent::Replay`]). On PostgreSQL the record is inserted first in the transaction,
/// so a concurrent request with the same key waits for the first one's commit (or rollback)
/// and then replays its answer (or proceeds); on SQLite writers are serialised anyway.
#[derive(Debug, Clone, Copy)]
pub struct IdempotentWrite<'a> {
    /// The record (for a delete, rebuilt by [`Store::delete_shard_idempotent`]'s closure
    /// once the count is known).
    pub record: &'a IdempotencyRecord,
    /// Records older than this (unix milliseconds) no longer count.
    pub expired_before_ms: i64,
}

/// Builds a delete's idempotency record once the transaction knows the destroyed count.
pub type IdempotencyForCount<'a> = &'a (dyn Fn(i64) -> IdempotencyRecord + Send + Sync);

/// Builds an account delete's idempotency record once the transaction knows its outcome.
pub type IdempotencyForOutcome<'a> = &'a (dyn Fn(DeleteOutcome) -> IdempotencyRecord + Send + Sync);

/// Builds the audit records of the versions a write pruned (ascending), one per version,
/// chained after the write's own record.
pub type AuditForPruned<'a> = &'a (dyn Fn(&[i64]) -> Vec<AuditRecord> + Send + Sync);

/// Builds a write's idempotency record once the transaction knows what it pruned.
pub type IdempotencyForPruned<'a> = &'a (dyn Fn(&[i64]) -> IdempotencyRecord + Send + Sync);

/// Version retention applied by a shard write, in its transaction: after the new version is
/// inserted, every version of the shard but the newest `keep` is deleted (crypto-shredded),
/// where `keep` is the account's `keep_versions`, or `default_keep` when the account sets
/// none; 0 keeps every version. Each pruned version gets its own audit event.
#[derive(Clone, Copy)]
pub struct Retention<'a> {
    /// Versions kept when the account sets none (0 = every version).
    pub default_keep: i64,
    /// The audit records of the pruned versions.
    pub audit: AuditForPruned<'a>,
    /// With an idempotency key: the record to store, rebuilt with the pruned versions.
    pub idem: Option<IdempotencyForPruned<'a>>,
}

impl std::fmt::Debug for Retention<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("default_keep", &self.default_keep)
            .finish_non_exhaustive()
    }
}

/// A change of an account's `keep_versions` made with [`Store::put_account_with_retention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepVersions {
    /// Leave it as it is (a new account gets `None`: the gateway default).
    Unchanged,
    /// Set it: `Some(n)` (0 = every version), or `None` to follow the gateway default.
    Set(Option<i64>),
}

/// Outcome of a write made with an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotent<T> {
    /// The write (and its record, and its audit event) committed.
    Done(T),
    /// A live record of the same key exists: nothing was written; this is the first answer.
    Replay(IdempotencyRecord),
}

/// Store errors. Messages never carry shard bytes or keys.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The account does not exist.
    #[error("account not found")]
    AccountNotFound,
    /// The shard (or the requested version) does not exist.
    #[error("shard not found")]
    ShardNotFound,
    /// The version being written is not `latest + 1` any more: another writer won.
    #[error("version conflict (latest is {latest:?})")]
    Conflict {
        /// The latest version now stored, if any.
        latest: Option<i64>,
    },
    /// The row's (or re-wrap's) key version is `destroyed` (see [`keys`]): nothing was
    /// written.
    #[error("key version {key_version} of backend {backend} is destroyed")]
    KeyDestroyed {
        /// Backend instance name.
        backend: String,
        /// KEK version.
        key_version: i64,
    },
    /// The account's tier or retention changed while a shard write was in flight (after the
    /// write read them, before it committed): nothing was written; write again.
    #[error("the account changed during the write")]
    AccountChanged,
    /// Writing the audit event failed: the whole transaction was rolled back.
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(String),
    /// The database could not be reached (connection, pool timeout, restart).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (schema mismatch, bug).
    #[error("store error: {0}")]
    Internal(String),
}

/// Why [`Store::backup_to`] made no copy. Messages carry paths, never row data.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A PostgreSQL store is backed up by the database's own tools, which take a consistent
    /// snapshot of the server (and of every replica's writes) without going through a
    /// gateway.
    #[error(
        "a PostgreSQL store is backed up with `pg_dump -Fc` (see README, \"Backup and restore\"), not by shardgate"
    )]
    UsePgDump,
    /// The target path exists (a file, a directory, a link): a backup never replaces one.
    #[error("{0} already exists; a backup never overwrites a file: choose a new path")]
    Exists(PathBuf),
    /// The target path is not valid UTF-8 (SQLite takes the name as text).
    #[error("backup path {0} is not valid UTF-8")]
    PathNotUtf8(PathBuf),
    /// Creating, syncing or cleaning up the target failed.
    #[error("backup file {path}: {source}")]
    Io {
        /// The target.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database refused or failed the copy.
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
    ) -> Result<Option<String>, StoreError>;

    /// The account row, if it exists.
    async fn get_account(&self, account: &str) -> Result<Option<AccountRecord>, StoreError>;

    /// The account row, if it exists, with the latest stored version of one of its shards:
    /// what a shard write is placed and numbered by (two reads, not one snapshot).
    async fn account_and_latest(
        &self,
        account: &str,
        shard: &str,
    ) -> Result<Option<(AccountRecord, Option<i64>)>, StoreError> {
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
    async fn latest_version(&self, account: &str, shard: &str) -> Result<Option<i64>, StoreError>;

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
        version: Option<i64>,
    ) -> Result<Option<ShardVersionRow>, StoreError>;

    /// Many versions in ONE query (batch reads): one answer per `(account, shard, version)`
    /// in order, `None` where no such version exists (`version: None` = latest).
    async fn get_shard_versions(
        &self,
        items: &[(String, String, Option<i64>)],
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
        version: i64,
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
        version: i64,
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

    /// The highest (seq, tag) stored for the chain.
    async fn audit_head(&self, chain_id: &str) -> Result<Option<(i64, Vec<u8>)>, StoreError>;

    /// Every chain id: registered chains and chains that have events.
    async fn audit_chains(&self) -> Result<Vec<String>, StoreError>;

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
        version: i64,
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

/// The table privileges the gateway's runtime PostgreSQL role needs, and nothing more: what
/// `scripts/sql/grants.sql` grants (a test compares the two after applying the script). The
/// append-only tables ([`APPEND_ONLY_TABLES`]) get SELECT and INSERT only: nothing at
/// runtime updates or deletes an audit row. `SELECT … FOR UPDATE/FOR SHARE` needs UPDATE,
/// which the tables locked that way have.
pub const RUNTIME_PRIVILEGES: &[(&str, &[&str])] = &[
    ("accounts", &["SELECT", "INSERT", "UPDATE", "DELETE"]),
    ("shard_versions", &["SELECT", "INSERT", "UPDATE", "DELETE"]),
    ("audit_events", &["SELECT", "INSERT"]),
    ("audit_chains", &["SELECT", "INSERT"]),
    ("migration_jobs", &["SELECT", "INSERT", "UPDATE"]),
    ("migration_items", &["SELECT", "INSERT", "UPDATE"]),
    (
        "idempotency_keys",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    // KEK versions: registered when first seen, moved through their states by the admin
    // API, and their wrap counters advanced in reserved blocks; never deleted (a destroyed
    // version stays listed).
    ("key_versions", &["SELECT", "INSERT", "UPDATE"]),
    // Tokens and revocations are read (reloaded) at runtime; only the owner role adds or
    // revokes them (`token create --save`, `token revoke`), so the runtime role's
    // credentials cannot mint a token or undo a revocation.
    ("api_tokens", &["SELECT"]),
    ("token_revocations", &["SELECT"]),
    // Read by `check_schema` to see that the schema is current.
    ("_sqlx_migrations", &["SELECT"]),
];

/// Tables whose rows are never updated or deleted once written: the runtime role holds no
/// UPDATE, DELETE or TRUNCATE on them.
pub const APPEND_ONLY_TABLES: &[&str] = &["audit_events", "audit_chains"];

/// What [`Store::check_schema`] found besides missing pieces (which are errors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaCheck {
    /// Privileges the connected role holds on [`APPEND_ONLY_TABLES`] that a runtime role
    /// should not (`"UPDATE on audit_events"`, ...): empty when the role layout of README,
    /// "Database least privilege", is in place. Always empty on SQLite, which has no roles.
    pub audit_writable: Vec<String>,
    /// Applied migration versions this build does not know (the database was migrated by a
    /// newer build).
    pub newer_migrations: Vec<i64>,
}

/// Compare the applied migrations (`version, success, checksum` rows of `_sqlx_migrations`)
/// with a build's: `Err` naming the pending, failed or changed ones, else the versions this
/// build does not know.
fn compare_migrations(
    migrator: &sqlx::migrate::Migrator,
    applied: &[(i64, bool, Vec<u8>)],
) -> Result<Vec<i64>, StoreError> {
    let mut pending = Vec::new();
    for m in migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        match applied.iter().find(|(v, _, _)| *v == m.version) {
            None => pending.push(format!("{:04}_{}", m.version, m.description)),
            Some((_, false, _)) => {
                return Err(StoreError::Internal(format!(
                    "migration {:04} ({}) failed part-way and is marked dirty: fix the database, then run `shardgate db migrate`",
                    m.version, m.description
                )))
            }
            Some((_, true, checksum)) if checksum.as_slice() != &*m.checksum => {
                return Err(StoreError::Internal(format!(
                    "migration {:04} ({}) was applied from a different file than this build's",
                    m.version, m.description
                )))
            }
            Some(_) => {}
        }
    }
    if !pending.is_empty() {
        return Err(StoreError::Internal(format!(
            "the database schema is behind this build (not applied: {}); with `[store] migrate = false` the gateway runs no DDL: run `shardgate db migrate` as the migration role (README, \"Database least privilege\")",
            pending.join(", ")
        )));
    }
    Ok(applied
        .iter()
        .map(|(v, _, _)| *v)
        .filter(|v| migrator.iter().all(|m| m.version != *v))
        .collect())
}

/// The answer of [`Store::check_schema`] on a database never migrated.
fn no_schema_error() -> StoreError {
    StoreError::Internal(
        "the database has no shardgate schema (no _sqlx_migrations table): run `shardgate db migrate` as the migration role first (README, \"Database least privilege\")".to_string(),
    )
}

/// Open the store a URL names (`postgres://…` or `sqlite://…`), without migrating.
pub async fn connect(url: &str, max_connections: u32) -> Result<Arc<dyn Store>, StoreError> {
    connect_with_password(url, None, max_connections).await
}

/// [`connect`] with the PostgreSQL password given apart from the URL (read from a private
/// file by the gateway, so that it is in no URL, log line or error text). The password must
/// not also be in the URL; SQLite takes none.
pub async fn connect_with_password(
    url: &str,
    password: Option<&str>,
    max_connections: u32,
) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PgStore::connect_with_password(url, password, max_connections).await?,
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
