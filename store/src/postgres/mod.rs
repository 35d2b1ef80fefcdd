//! PostgreSQL [`Store`] (production).
//!
//! Concurrency model (several gateway replicas may share one database):
//! - `insert_shard_version` locks the account row `FOR SHARE`, so inserts into one account run
//!   concurrently while `delete_account`, `delete_shard` (`FOR UPDATE`) and a tier change in
//!   `put_account` (`FOR UPDATE`) wait for them and block new ones.
//! - Two writers of the same version: both read the same latest version, both insert, and the
//!   primary key makes the second wait for the first and fail with a unique violation, which is
//!   answered as [`StoreError::Conflict`].
//! - Every transaction is opened in a spawned task, so a caller dropping its future can never
//!   leave a half-begun transaction behind, and the pool's `after_release` hook closes any
//!   connection that comes back still inside a transaction.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{Connection, Postgres, Transaction};

use crate::held_conns::HeldConns;
use crate::{
    AccountRecord, AccountStats, AuditForCount, AuditRecord, AuditSegment, BackupError,
    ClaimedItem, CommitResult, DeleteOutcome, FactsUpdate, GroupedWrite, IdempotencyForCount,
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
mod idempotency;
mod keys;
mod migration;
mod overrides;
mod policy;
mod schema;
mod shard_writes;
mod shards;
mod tokens;

/// How long a request waits for a pooled connection (or a new one) before the store answers
/// [`StoreError::Unavailable`]: a database that is down must fail fast, not hang requests.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections for groups of shard writes stored in one statement, beside the pool.
const GROUP_CONNECTIONS: u32 = 2;

/// The PostgreSQL store: a connection pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Connections of `pool` kept for the hot one-statement reads and the reads' audit
    /// insert (module `held_conns`).
    held: Arc<HeldConns>,
    /// Connections for a group of shard writes stored in one statement (see
    /// `insert_group_at_once`): generic plans only, set for the session, since such a
    /// statement runs outside any transaction that could `SET LOCAL` it.
    group_pool: PgPool,
}

impl PgStore {
    /// Open a pool of at most `max_connections` (at least 1) to `url`, without migrating.
    ///
    /// One connection is opened at once, so a database that cannot be reached answers
    /// [`StoreError::Unavailable`] within [`ACQUIRE_TIMEOUT`]; a malformed URL is
    /// [`StoreError::Internal`].
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_with_password(url, None, max_connections).await
    }

    /// [`PgStore::connect`] with the password given apart from the URL (which must then carry
    /// none). TLS settings are the URL's: `sslmode=verify-full&sslrootcert=/path/ca.pem`
    /// verifies the server's certificate chain and host name; a connection to a host that is
    /// not a loopback address or a Unix socket without `verify-full` is logged as a warning.
    ///
    /// sqlx keeps the password in its connect options (a plain `String`) for as long as the
    /// pool lives, to open new connections; it never appears in this store's `Debug` or
    /// errors.
    pub async fn connect_with_password(
        url: &str,
        password: Option<&str>,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let pool = crate::PoolOptions {
            max_connections,
            held_connections: true,
        };
        Self::connect_with_options(url, password, pool).await
    }

    /// [`PgStore::connect_with_password`] with every pool setting: `held_connections =
    /// false` sends the hot one-statement reads through sqlx's pool too (module
    /// `held_conns`: for comparison; the bench measures what keeping them apart saves).
    pub async fn connect_with_options(
        url: &str,
        password: Option<&str>,
        pool: crate::PoolOptions,
    ) -> Result<Self, StoreError> {
        let crate::PoolOptions {
            max_connections,
            held_connections,
        } = pool;
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Internal(format!("invalid postgres store url: {e}")))?
            .application_name("shardgate");
        if let Some(password) = password {
            if url_has_password(url) {
                return Err(StoreError::Internal(
                    "the postgres store url carries a password and a password was given apart from it: keep it in one place (the password file)".to_string(),
                ));
            }
            options = options.password(password);
        }
        warn_unless_verified(&options);
        let group_options = options
            .clone()
            .options([("plan_cache_mode", "force_generic_plan")]);
        let pool = pool_options(max_connections.max(1))
            .connect_with(options)
            .await
            .map_err(map_err)?;
        // Kept apart from the pool (which may still open `max_connections` of its own): up
        // to half as many again.
        let held_cap = if held_connections {
            usize::try_from(max_connections.max(1) / 2).unwrap_or(0)
        } else {
            0
        };
        let held = Arc::new(HeldConns::new(pool.clone(), held_cap));
        // Opened on first use (a gateway that groups writes runs two group workers).
        let group_pool = pool_options(GROUP_CONNECTIONS).connect_lazy_with(group_options);
        Ok(Self {
            pool,
            held,
            group_pool,
        })
    }

    /// The underlying pool, for tests and administrative tools. Request paths go through the
    /// [`Store`] trait.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begin a transaction in a spawned task, so that the caller's future being dropped while
    /// BEGIN is in flight cannot leave a transaction open that no `Transaction` value owns:
    /// the task always finishes, and if nobody takes its result the `Transaction` is dropped,
    /// which rolls it back.
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.begin_with(None).await
    }

    /// [`PgStore::begin`], with `statement` (in one round trip) instead of a plain `BEGIN`.
    async fn begin_with(
        &self,
        statement: Option<&'static str>,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            match statement {
                Some(s) => pool.begin_with(s).await,
                None => pool.begin().await,
            }
        })
        .await
        .map_err(|e| StoreError::Internal(format!("transaction task failed: {e}")))?
        .map_err(map_err)
    }
}

/// Whether a `postgres://` URL carries a password: in its user-info part
/// (`user:password@host`) or as a `password=` query parameter.
pub fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = before_query.split('/').next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        || query
            .split('&')
            .any(|kv| kv.split('=').next() == Some("password"))
}

/// Warn when a connection to another machine does not verify the server: without
/// `sslmode=verify-full` (sqlx's default is `prefer`, which falls back to plain text and
/// checks no certificate), whoever sits on the network path can read or change every row.
fn warn_unless_verified(options: &PgConnectOptions) {
    if options.get_socket().is_some() || matches!(options.get_ssl_mode(), PgSslMode::VerifyFull) {
        return;
    }
    let host = options.get_host();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        tracing::warn!(
            host,
            sslmode = ?options.get_ssl_mode(),
            "the PostgreSQL store connection does not verify the server: add sslmode=verify-full&sslrootcert=<CA file> to [store] url (docs/security.md, \"Database least privilege\")"
        );
    }
}

/// Whether the error means the database cannot be reached or cannot serve right now
/// (connection, pool, shutdown, resources, serialization/deadlock retry).
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources (too many connections,
            // disk full); 57: operator intervention (shutdown, cancel, cannot connect now);
            // 40001/40P01: serialization failure/deadlock; 25006: read-only transaction (a
            // standby after failover).
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "40001"
                || code == "40P01"
                || code == "25006"
        }),
        _ => false,
    }
}

/// Error text without row data: for database errors, the SQLSTATE and the primary message
/// (PostgreSQL keeps key values in DETAIL, which is left out).
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

/// A failed audit insert: `AuditUnavailable`, unless the database itself is unreachable.
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

/// The settings of both of a store's pools (the main one and the grouped writes' one).
fn pool_options(max_connections: u32) -> PgPoolOptions {
    const IDLE_PING_AFTER: Duration = Duration::from_secs(1);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // A connection must never go back to the pool inside a transaction. A dropped
        // `Transaction` has already queued its ROLLBACK (and decremented the depth), so
        // this only closes connections left in a state sqlx could not undo.
        .after_release(|conn, _meta| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
        // sqlx pings a connection when it goes back to the pool (a dead one is closed
        // there) AND, by default, again before every acquire: a third round trip per
        // query, which the bench's GET profile showed as ~29% of the gateway's CPU.
        // Only a connection that sat idle (and may have died unseen, e.g. across a
        // server restart) is pinged before use.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_PING_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

fn count(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Internal("row count out of range".to_string()))
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
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

    async fn account_and_latest(
        &self,
        account: &str,
        shard: &str,
    ) -> Result<Option<(AccountRecord, Option<Version>)>, StoreError> {
        accounts::account_and_latest(self, account, shard).await
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
        shard_writes::insert_shard_version_sealed(self, row, idem, retention, seal).await
    }

    fn groups_writes(&self) -> bool {
        true
    }

    async fn insert_shard_versions_grouped(
        &self,
        writes: &[GroupedWrite<'_>],
        seal: &mut dyn LateSeal,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        shard_writes::insert_shard_versions_grouped(self, writes, seal).await
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
        audit_archive::check_audit_range(self, chain_id, first_seq, range).await
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

    async fn backup_to(&self, _path: &Path) -> Result<(), BackupError> {
        Err(BackupError::UsePgDump)
    }
}

#[cfg(test)]
mod tests {
    use super::url_has_password;

    #[test]
    fn url_has_password_finds_userinfo_and_query_passwords() {
        assert!(url_has_password("postgres://u:pw@h:5432/db"));
        assert!(url_has_password("postgresql://u:@h/db"));
        assert!(url_has_password(
            "postgres://u@h/db?sslmode=verify-full&password=pw"
        ));
        assert!(!url_has_password("postgres://u@h:5432/db"));
        assert!(!url_has_password(
            "postgres://h/db?sslmode=verify-full&sslrootcert=/a:b@c"
        ));
        assert!(!url_has_password("postgres://u@h/db?passwordless=1"));
    }
}

#[cfg(test)]
mod plan_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod pool_option_tests {
    use super::PgStore;
    use crate::PoolOptions;

    /// `[store] held_connections = false` keeps no connection apart from the pool: every
    /// statement goes through it (the comparison the bench makes).
    #[tokio::test]
    async fn held_connections_off_keeps_none_apart_from_the_pool() {
        let Some(url) = crate::test_db::url("PostgreSQL pool options test") else {
            return;
        };
        for (held_connections, cap) in [(true, 4), (false, 0)] {
            let pool = PoolOptions {
                max_connections: 8,
                held_connections,
            };
            let store = PgStore::connect_with_options(&url, None, pool)
                .await
                .unwrap();
            assert_eq!(
                store.held.cap(),
                cap,
                "held_connections = {held_connections}"
            );
        }
    }
}
