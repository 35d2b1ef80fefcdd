//! SQLite [`Store`] (the embedded default).
//!
//! Concurrency model: SQLite has one writer at a time. Every write transaction starts with
//! `BEGIN IMMEDIATE` (sqlx's `Pool::begin_with`), which takes the write lock up front (waiting
//! up to [`BUSY_TIMEOUT`]), so the "read latest version, then insert" of
//! `insert_shard_version` is serialised with every other writer, including other processes
//! using the same file. Reads run concurrently thanks to WAL mode.
//!
//! Every transaction is opened in a spawned task, so a caller dropping its future can never
//! leave a half-begun transaction behind, and the pool's `after_release` hook closes any
//! connection that comes back still inside a transaction (which would otherwise keep holding
//! the write lock).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, Transaction};

use crate::{
    AccountRecord, AccountStats, AuditForCount, AuditRecord, AuditSegment, BackupError,
    ClaimedItem, CommitResult, DeleteOutcome, FactsUpdate, IdempotencyForCount,
    IdempotencyForOutcome, IdempotencyRecord, Idempotent, IdempotentWrite, ItemCommit, ItemKey,
    KeepVersions, LateSeal, MigrationFailure, MigrationJob, MigrationSelector, Prune, ShardSummary,
    ShardVersionRow, Store, StoreError, TokenRecord, TokenRevocation, Transition,
};
use crate::{
    ExpectedTier, KeyRefCount, KeyStateChange, KeyTransition, KeyVersionRecord, NewKeyVersion,
    Reservation, Version,
};

mod accounts;
mod approvals;
mod audit;
mod audit_archive;
mod audit_check;
mod backup;
mod idempotency;
mod keys;
mod migration;
mod overrides;
mod policy;
mod schema;
mod shards;
mod tokens;

/// How long a writer waits for the database write lock before answering
/// [`StoreError::Unavailable`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for a pooled connection. Longer than [`BUSY_TIMEOUT`], since a
/// pooled connection may itself be waiting for the write lock.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite store: a connection pool on one database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Open (creating the file if missing, not its directory) a pool of at most
    /// `max_connections` (at least 1) on `url` (`sqlite://path`, `sqlite:path` or
    /// `sqlite::memory:`), without migrating. WAL journal, `synchronous=FULL`, foreign keys on,
    /// busy timeout [`BUSY_TIMEOUT`]. An in-memory database gets exactly one connection that
    /// is never closed (each connection would otherwise see its own database).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Internal(format!("invalid sqlite store url: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            create_private_db(options.get_filename());
        }
        let mut pool = SqlitePoolOptions::new()
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_release(|conn, _meta| {
                Box::pin(async move {
                    if conn.is_in_transaction() {
                        // A dropped `Transaction` queues its ROLLBACK on the connection's
                        // worker thread; a round trip lets it run before we look again.
                        conn.ping().await?;
                    }
                    Ok(!conn.is_in_transaction())
                })
            });
        pool = if in_memory {
            pool.max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            pool.max_connections(max_connections.max(1))
        };
        let pool = pool.connect_with(options).await.map_err(map_err)?;
        Ok(Self { pool })
    }

    /// The underlying pool, for tests and administrative tools. Request paths go through the
    /// [`Store`] trait.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Begin a write transaction with `BEGIN IMMEDIATE`, in a spawned task so that the
    /// caller's future being dropped cannot leave a begun transaction that no `Transaction`
    /// value owns (if nobody takes the result, dropping it rolls back).
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        let pool = self.pool.clone();
        tokio::spawn(async move { pool.begin_with("BEGIN IMMEDIATE").await })
            .await
            .map_err(|e| StoreError::Internal(format!("transaction task failed: {e}")))?
            .map_err(map_err)
    }
}

/// Create a missing database file empty with mode 0600 before SQLite opens it, whatever the
/// process's umask: SQLite gives the `-wal` and `-shm` files it creates the database file's
/// mode, so all three hold the wrapped keys and the audit log privately. An existing file is
/// left as it is (`create_new`: nothing is truncated, no symlink is followed); any other
/// error is left for the connection to report.
fn create_private_db(path: &Path) {
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            tracing::debug!(error = %e, "could not pre-create the SQLite database file");
        }
    }
}

/// Whether the error means the database cannot serve right now: pool exhausted or closed,
/// I/O, or SQLite result codes BUSY, LOCKED, NOMEM, IOERR, FULL, CANTOPEN (primary codes).
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6 | 7 | 10 | 13 | 14)),
        _ => false,
    }
}

/// Error text without row data: for database errors, the result code and SQLite's message
/// (which names tables, columns and constraints, never values).
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => format!(
            "database error {}: {}",
            db.code().unwrap_or_default(),
            db.message()
        ),
        other => other.to_string(),
    }
}

fn map_err(e: sqlx::Error) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(describe(&e))
    } else {
        StoreError::Internal(describe(&e))
    }
}

/// A failed audit insert: `AuditUnavailable`, unless the database itself cannot serve.
fn audit_err(e: sqlx::Error) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(describe(&e))
    } else {
        StoreError::AuditUnavailable(describe(&e))
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

fn count(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Internal("row count out of range".to_string()))
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        schema::migrate(self).await
    }

    async fn check_schema(&self) -> Result<crate::SchemaCheck, StoreError> {
        schema::check_schema(self).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        schema::ping(self).await
    }

    async fn put_account_expecting(
        &self,
        account: &str,
        tier: &str,
        expected: ExpectedTier<'_>,
        keep: KeepVersions,
        facts: FactsUpdate<'_>,
        now_ms: i64,
        audit: &AuditRecord,
    ) -> Result<Option<String>, StoreError> {
        let put = accounts::Put {
            account,
            tier,
            expected,
            keep,
            facts,
        };
        accounts::put_account_expecting(self, put, now_ms, audit).await
    }

    async fn insert_approval(
        &self,
        a: &crate::ApprovalRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        approvals::insert_approval(self, a, audit).await
    }

    async fn get_approval(&self, id: &str) -> Result<Option<crate::ApprovalRecord>, StoreError> {
        approvals::get_approval(self, id).await
    }

    async fn approve(
        &self,
        id: &str,
        by: &str,
        credential: &str,
        now_ms: i64,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError> {
        approvals::approve(self, id, by, credential, now_ms, audit).await
    }

    async fn insert_breaker_override(
        &self,
        o: &crate::BreakerOverride,
        audit: &AuditRecord,
    ) -> Result<i64, StoreError> {
        overrides::insert_breaker_override(self, o, audit).await
    }

    async fn breaker_overrides_after(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<crate::BreakerOverride>, StoreError> {
        overrides::breaker_overrides_after(self, after_id, limit).await
    }

    async fn latest_breaker_overrides(&self) -> Result<Vec<crate::BreakerOverride>, StoreError> {
        overrides::latest_breaker_overrides(self).await
    }

    async fn policy_head(&self) -> Result<Option<i64>, StoreError> {
        policy::policy_head(self).await
    }

    async fn policy_version(
        &self,
        version: Option<i64>,
    ) -> Result<Option<crate::PolicyVersionRecord>, StoreError> {
        policy::policy_version(self, version).await
    }

    async fn append_policy_version(
        &self,
        record: &crate::PolicyVersionRecord,
        audit: Option<&AuditRecord>,
    ) -> Result<(), StoreError> {
        policy::append_policy_version(self, record, audit).await
    }

    async fn mark_retier_due(&self, version: i64, now_ms: i64) -> Result<(), StoreError> {
        policy::mark_retier_due(self, version, now_ms).await
    }

    async fn retier_due(&self) -> Result<Option<i64>, StoreError> {
        policy::retier_due(self).await
    }

    async fn mark_retier_done(&self, up_to: i64, now_ms: i64) -> Result<u64, StoreError> {
        policy::mark_retier_done(self, up_to, now_ms).await
    }

    async fn accounts_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AccountRecord>, StoreError> {
        policy::accounts_page(self, after, limit).await
    }

    async fn get_account(&self, account: &str) -> Result<Option<AccountRecord>, StoreError> {
        accounts::get_account(self, account).await
    }

    async fn account_stats(
        &self,
        account: &str,
        current_backend: &str,
    ) -> Result<AccountStats, StoreError> {
        accounts::account_stats(self, account, current_backend).await
    }

    async fn delete_account_idempotent(
        &self,
        account: &str,
        audit: AuditForCount<'_>,
        idem: Option<(i64, IdempotencyForOutcome<'_>)>,
    ) -> Result<Idempotent<DeleteOutcome>, StoreError> {
        accounts::delete_account_idempotent(self, account, audit, idem).await
    }

    async fn list_shards(
        &self,
        account: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ShardSummary>, StoreError> {
        shards::list_shards(self, account, after, limit).await
    }

    async fn latest_version(
        &self,
        account: &str,
        shard: &str,
    ) -> Result<Option<Version>, StoreError> {
        shards::latest_version(self, account, shard).await
    }

    async fn insert_shard_version_sealed(
        &self,
        row: &ShardVersionRow,
        idem: Option<IdempotentWrite<'_>>,
        retention: Option<Prune<'_>>,
        seal: &mut dyn LateSeal,
    ) -> Result<Idempotent<Vec<i64>>, StoreError> {
        shards::insert_shard_version_sealed(self, row, idem, retention, seal).await
    }

    async fn get_shard_version(
        &self,
        account: &str,
        shard: &str,
        version: Option<Version>,
    ) -> Result<Option<ShardVersionRow>, StoreError> {
        shards::get_shard_version(self, account, shard, version).await
    }

    async fn get_shard_versions(
        &self,
        items: &[(String, String, Option<Version>)],
    ) -> Result<Vec<Option<ShardVersionRow>>, StoreError> {
        shards::get_shard_versions(self, items).await
    }

    async fn delete_shard_idempotent(
        &self,
        account: &str,
        shard: &str,
        audit: AuditForCount<'_>,
        idem: Option<(i64, IdempotencyForCount<'_>)>,
    ) -> Result<Idempotent<i64>, StoreError> {
        shards::delete_shard_idempotent(self, account, shard, audit, idem).await
    }

    async fn delete_shard_version_idempotent(
        &self,
        account: &str,
        shard: &str,
        version: Version,
        audit: &AuditRecord,
        idem: Option<IdempotentWrite<'_>>,
    ) -> Result<Idempotent<()>, StoreError> {
        shards::delete_shard_version_idempotent(self, account, shard, version, audit, idem).await
    }

    async fn get_idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        idempotency::get_idempotency(self, scope, key).await
    }

    async fn purge_idempotency(&self, before_ms: i64) -> Result<i64, StoreError> {
        idempotency::purge_idempotency(self, before_ms).await
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        audit::append_audit(self, records).await
    }

    async fn register_chain(
        &self,
        chain_id: &str,
        started_ms: i64,
        host: &str,
    ) -> Result<(), StoreError> {
        audit::register_chain(self, chain_id, started_ms, host).await
    }

    async fn audit_head(&self, chain_id: &str) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        audit::audit_head(self, chain_id).await
    }

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        tokens::insert_token(self, token).await
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        tokens::tokens(self).await
    }

    async fn revoke_token(
        &self,
        token_id: &str,
        at_ms: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        tokens::revoke_token(self, token_id, at_ms, reason).await
    }

    async fn token_revocations(&self) -> Result<Vec<TokenRevocation>, StoreError> {
        tokens::token_revocations(self).await
    }

    async fn audit_chains(&self) -> Result<Vec<String>, StoreError> {
        audit::audit_chains(self).await
    }

    async fn search_audit(
        &self,
        query: &crate::AuditQuery,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        audit_archive::search_audit(self, query).await
    }

    async fn audit_segments(&self, chain_id: &str) -> Result<Vec<AuditSegment>, StoreError> {
        audit_archive::audit_segments(self, chain_id).await
    }

    async fn audit_segments_between(
        &self,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditSegment>, StoreError> {
        audit_archive::audit_segments_between(self, from_ms, to_ms, limit).await
    }

    async fn record_audit_segment(&self, segment: &AuditSegment) -> Result<u64, StoreError> {
        audit_archive::record_audit_segment(self, segment).await
    }

    async fn check_audit_range(
        &self,
        chain_id: &str,
        first_seq: i64,
        range: (i64, i64),
    ) -> Result<u64, StoreError> {
        audit_check::check_audit_range(self, chain_id, first_seq, range).await
    }

    async fn delete_archived_audit(&self, chain_id: &str, limit: i64) -> Result<u64, StoreError> {
        audit_archive::delete_archived_audit(self, chain_id, limit).await
    }

    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        audit_archive::take_lease(self, name, holder, now_ms, ttl_ms).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        audit_archive::release_lease(self, name, holder).await
    }

    async fn audit_events(
        &self,
        chain_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        audit::audit_events(self, chain_id, after_seq, limit).await
    }

    async fn create_migration_job(
        &self,
        id: &str,
        selector: &MigrationSelector,
        now_ms: i64,
        created_by: &str,
        audit: &AuditRecord,
    ) -> Result<MigrationJob, StoreError> {
        migration::create_migration_job(self, id, selector, now_ms, created_by, audit).await
    }

    async fn schedule_migration_catch_up(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        migration::schedule_migration_catch_up(self, id, at_ms).await
    }

    async fn catch_up_migration_job(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        migration::catch_up_migration_job(self, id, now_ms).await
    }

    async fn get_migration_job(&self, id: &str) -> Result<Option<MigrationJob>, StoreError> {
        migration::get_migration_job(self, id).await
    }

    async fn list_migration_jobs(&self, states: &[&str]) -> Result<Vec<MigrationJob>, StoreError> {
        migration::list_migration_jobs(self, states).await
    }

    async fn set_migration_job_state(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        now_ms: i64,
        audit: &AuditRecord,
    ) -> Result<Transition, StoreError> {
        migration::set_migration_job_state(self, id, from, to, now_ms, audit).await
    }

    async fn claim_migration_items(
        &self,
        job_id: &str,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
        after: Option<&ItemKey>,
    ) -> Result<Vec<ClaimedItem>, StoreError> {
        migration::claim_migration_items(self, job_id, worker, now_ms, lease_ms, limit, after).await
    }

    async fn commit_migration_batch(
        &self,
        job_id: &str,
        worker: &str,
        items: &[ItemCommit<'_>],
        now_ms: i64,
        seal: &mut dyn LateSeal,
    ) -> Result<Option<Vec<CommitResult>>, StoreError> {
        migration::commit_migration_batch(self, job_id, worker, items, now_ms, seal).await
    }

    async fn migration_failures(
        &self,
        job_id: &str,
        limit: i64,
    ) -> Result<Vec<MigrationFailure>, StoreError> {
        migration::migration_failures(self, job_id, limit).await
    }

    async fn list_key_versions(&self) -> Result<Vec<KeyVersionRecord>, StoreError> {
        keys::list_key_versions(self).await
    }

    async fn register_key_versions(
        &self,
        versions: &[NewKeyVersion],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        keys::register_key_versions(self, versions, now_ms).await
    }

    async fn set_key_state(
        &self,
        change: &KeyStateChange<'_>,
        audit: &AuditRecord,
    ) -> Result<KeyTransition, StoreError> {
        keys::set_key_state(self, change, audit).await
    }

    async fn reserve_key_wraps(
        &self,
        backend: &str,
        key_version: i64,
        block: i64,
        limit: i64,
    ) -> Result<Reservation, StoreError> {
        keys::reserve_key_wraps(self, backend, key_version, block, limit).await
    }

    async fn key_ref_counts(&self) -> Result<Vec<KeyRefCount>, StoreError> {
        keys::key_ref_counts(self).await
    }

    async fn backup_to(&self, path: &Path) -> Result<(), BackupError> {
        backup::backup_to(self, path).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod file_mode_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The database, its `-wal` and its `-shm` are 0600 even under a umask of 022 (the test
    /// process's usual one): they hold every wrapped key and the audit log.
    #[tokio::test]
    async fn a_new_database_and_its_wal_and_shm_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("shardgate.db");
        let store = SqliteStore::connect(&format!("sqlite://{}", db.display()), 2)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            let name = entry.file_name().to_string_lossy().into_owned();
            assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
            names.push(name);
        }
        names.sort();
        assert_eq!(
            names,
            ["shardgate.db", "shardgate.db-shm", "shardgate.db-wal"]
        );
    }
}
