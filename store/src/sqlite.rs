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
use sqlx::migrate::MigrateError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, Transaction};

use crate::migration::Settlement;
use crate::{
    job_state, AccountRecord, AccountStats, AuditForCount, AuditRecord, BackupError, ClaimedItem,
    CommitResult, DeleteOutcome, IdempotencyForCount, IdempotencyForOutcome, IdempotencyRecord,
    Idempotent, IdempotentWrite, ItemCommit, ItemKey, ItemOutcome, KeepVersions, LateSeal,
    MigrationFailure, MigrationJob, MigrationSelector, Prune, ShardSummary, ShardVersionRow, Store,
    StoreError, TokenRecord, TokenRevocation, Transition,
};
use crate::{
    key_state, KeyRefCount, KeyStateChange, KeyTransition, KeyVersionRecord, NewKeyVersion,
    Reservation,
};

/// How long a writer waits for the database write lock before answering
/// [`StoreError::Unavailable`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for a pooled connection. Longer than [`BUSY_TIMEOUT`], since a
/// pooled connection may itself be waiting for the write lock.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Items per statement of a batch read.
const BATCH_CHUNK: usize = 1000;

const SHARD_COLUMNS: &str = "account, shard, version, format_version, backend, key_ref, \
     key_version, wrapped_dek, nonce, ciphertext, key_commitment, created_at, created_by";

const AUDIT_COLUMNS: &str = "chain_id, seq, ts_ms, request_id, actor, action, account, shard, \
     version, backend, outcome, detail, prev_tag, tag, credential";

const KEY_COLUMNS: &str = "backend, key_version, key_ref, state, created_ms, changed_ms, \
     changed_by, reserved_upto";

const JOB_COLUMNS: &str = "id, sel_account, sel_from_backend, sel_key_version_below, state, \
     total, done, failed, skipped, last_error, created_at, updated_at, created_by";

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

fn migrate_err(e: MigrateError) -> StoreError {
    match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => map_err(e),
        other => StoreError::Internal(format!("migration failed: {other}")),
    }
}

async fn insert_audit(conn: &mut SqliteConnection, a: &AuditRecord) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO audit_events ({AUDIT_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    ))
    .bind(&a.chain_id)
    .bind(a.seq)
    .bind(a.ts_ms)
    .bind(&a.request_id)
    .bind(&a.actor)
    .bind(&a.action)
    .bind(&a.account)
    .bind(&a.shard)
    .bind(a.version)
    .bind(&a.backend)
    .bind(&a.outcome)
    .bind(&a.detail)
    .bind(&a.prev_tag)
    .bind(&a.tag)
    .bind(&a.credential)
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(audit_err)
}

fn shard_from_row(r: &SqliteRow) -> Result<ShardVersionRow, sqlx::Error> {
    Ok(ShardVersionRow {
        account: r.try_get("account")?,
        shard: r.try_get("shard")?,
        version: r.try_get("version")?,
        format_version: r.try_get("format_version")?,
        backend: r.try_get("backend")?,
        key_ref: r.try_get("key_ref")?,
        key_version: r.try_get("key_version")?,
        wrapped_dek: r.try_get("wrapped_dek")?,
        nonce: r.try_get("nonce")?,
        ciphertext: r.try_get("ciphertext")?,
        key_commitment: r.try_get("key_commitment")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
    })
}

fn token_from_row(r: &SqliteRow) -> Result<TokenRecord, sqlx::Error> {
    let scopes: String = r.try_get("scopes")?;
    Ok(TokenRecord {
        token_id: r.try_get("token_id")?,
        name: r.try_get("name")?,
        sha256: r.try_get("sha256")?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        account_prefix: r.try_get("account_prefix")?,
        created_ms: r.try_get("created_ms")?,
        expires_ms: r.try_get("expires_ms")?,
    })
}

/// A token whose id or hash is already stored is the caller's mistake, not a fault.
fn token_insert_err(e: sqlx::Error) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Internal("a token with that id or hash is already stored".into())
    } else {
        map_err(e)
    }
}

fn audit_from_row(r: &SqliteRow) -> Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        chain_id: r.try_get("chain_id")?,
        seq: r.try_get("seq")?,
        ts_ms: r.try_get("ts_ms")?,
        request_id: r.try_get("request_id")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        account: r.try_get("account")?,
        shard: r.try_get("shard")?,
        version: r.try_get("version")?,
        backend: r.try_get("backend")?,
        outcome: r.try_get("outcome")?,
        detail: r.try_get("detail")?,
        credential: r.try_get("credential")?,
        prev_tag: r.try_get("prev_tag")?,
        tag: r.try_get("tag")?,
    })
}

fn job_from_row(r: &SqliteRow) -> Result<MigrationJob, sqlx::Error> {
    Ok(MigrationJob {
        id: r.try_get("id")?,
        selector: MigrationSelector {
            account: r.try_get("sel_account")?,
            from_backend: r.try_get("sel_from_backend")?,
            key_version_below: r.try_get("sel_key_version_below")?,
        },
        state: r.try_get("state")?,
        total: r.try_get("total")?,
        done: r.try_get("done")?,
        failed: r.try_get("failed")?,
        skipped: r.try_get("skipped")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        created_by: r.try_get("created_by")?,
    })
}

/// Latest stored version of a shard, read with any executor.
async fn latest<'e, E>(executor: E, account: &str, shard: &str) -> Result<Option<i64>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT MAX(version) FROM shard_versions WHERE account = ?1 AND shard = ?2",
    )
    .bind(account)
    .bind(shard)
    .fetch_one(executor)
    .await
}

/// Whether the account row exists, read with any executor.
async fn account_exists<'e, E>(executor: E, account: &str) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query("SELECT 1 FROM accounts WHERE account = ?1")
        .bind(account)
        .fetch_optional(executor)
        .await?
        .is_some())
}

const IDEM_COLUMNS: &str = "scope, key, request_hash, status, body_json, created_at";

fn idem_from_row(r: &SqliteRow) -> Result<IdempotencyRecord, sqlx::Error> {
    Ok(IdempotencyRecord {
        scope: r.try_get("scope")?,
        key: r.try_get("key")?,
        request_hash: r.try_get("request_hash")?,
        status: r.try_get("status")?,
        body_json: r.try_get("body_json")?,
        created_at: r.try_get("created_at")?,
    })
}

async fn idem_get<'e, E>(
    executor: E,
    scope: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    sqlx::query(&format!(
        "SELECT {IDEM_COLUMNS} FROM idempotency_keys WHERE scope = ?1 AND key = ?2"
    ))
    .bind(scope)
    .bind(key)
    .fetch_optional(executor)
    .await
    .map_err(map_err)?
    .map(|r| idem_from_row(&r))
    .transpose()
    .map_err(map_err)
}

/// Claim `(scope, key)` first in a write transaction: drop an expired record of the key,
/// then insert ours (`ON CONFLICT DO NOTHING`, which on PostgreSQL waits for a concurrent
/// holder of the key to commit or roll back). `Some(existing)` when a live record holds it.
async fn idem_claim(
    conn: &mut SqliteConnection,
    rec: &IdempotencyRecord,
    expired_before_ms: i64,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE scope = ?1 AND key = ?2 AND created_at < ?3")
        .bind(&rec.scope)
        .bind(&rec.key)
        .bind(expired_before_ms)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    let inserted = sqlx::query(&format!(
        "INSERT INTO idempotency_keys ({IDEM_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (scope, key) DO NOTHING"
    ))
    .bind(&rec.scope)
    .bind(&rec.key)
    .bind(&rec.request_hash)
    .bind(rec.status)
    .bind(&rec.body_json)
    .bind(rec.created_at)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?
    .rows_affected();
    if inserted == 1 {
        return Ok(None);
    }
    match idem_get(&mut *conn, &rec.scope, &rec.key).await? {
        Some(existing) => Ok(Some(existing)),
        // Purged between our insert and read: let the client retry.
        None => Err(StoreError::Unavailable(
            "idempotency record changed concurrently; retry".to_string(),
        )),
    }
}

/// Replace the claimed record's answer (a delete learns its count late).
async fn idem_update(
    conn: &mut SqliteConnection,
    rec: &IdempotencyRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idempotency_keys SET request_hash = ?3, status = ?4, body_json = ?5 \
         WHERE scope = ?1 AND key = ?2",
    )
    .bind(&rec.scope)
    .bind(&rec.key)
    .bind(&rec.request_hash)
    .bind(rec.status)
    .bind(&rec.body_json)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

fn key_from_row(r: &SqliteRow) -> Result<KeyVersionRecord, sqlx::Error> {
    Ok(KeyVersionRecord {
        backend: r.try_get("backend")?,
        key_version: r.try_get("key_version")?,
        key_ref: r.try_get("key_ref")?,
        state: r.try_get("state")?,
        created_ms: r.try_get("created_ms")?,
        changed_ms: r.try_get("changed_ms")?,
        changed_by: r.try_get("changed_by")?,
        reserved_upto: r.try_get("reserved_upto")?,
    })
}

/// Refuse a row change under a destroyed key version (run inside the write transaction,
/// which holds the write lock, so no destroy can interleave).
async fn refuse_destroyed(
    conn: &mut SqliteConnection,
    backend: &str,
    key_version: i64,
) -> Result<(), StoreError> {
    let state: Option<String> = sqlx::query_scalar(
        "SELECT state FROM key_versions WHERE backend = ?1 AND key_version = ?2",
    )
    .bind(backend)
    .bind(key_version)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    if state.as_deref() == Some(key_state::DESTROYED) {
        return Err(StoreError::KeyDestroyed {
            backend: backend.to_string(),
            key_version,
        });
    }
    Ok(())
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
        sqlx::migrate!("../migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(migrate_err)
    }

    async fn check_schema(&self) -> Result<crate::SchemaCheck, StoreError> {
        let exists: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        if exists.is_none() {
            return Err(crate::no_schema_error());
        }
        let applied = sqlx::query_as::<_, (i64, bool, Vec<u8>)>(
            "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let newer_migrations =
            crate::compare_migrations(&sqlx::migrate!("../migrations/sqlite"), &applied)?;
        Ok(crate::SchemaCheck {
            audit_writable: Vec::new(),
            newer_migrations,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn put_account_with_retention(
        &self,
        account: &str,
        tier: &str,
        keep: KeepVersions,
        now_ms: i64,
        audit: &AuditRecord,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        let previous: Option<String> =
            sqlx::query_scalar("SELECT tier FROM accounts WHERE account = ?1")
                .bind(account)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        match &previous {
            Some(old) if old == tier => {}
            Some(_) => {
                sqlx::query("UPDATE accounts SET tier = ?2, updated_at = ?3 WHERE account = ?1")
                    .bind(account)
                    .bind(tier)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO accounts (account, tier, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?3)",
                )
                .bind(account)
                .bind(tier)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
        }
        if let KeepVersions::Set(keep) = keep {
            sqlx::query("UPDATE accounts SET keep_versions = ?2 WHERE account = ?1")
                .bind(account)
                .bind(keep)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(previous)
    }

    async fn get_account(&self, account: &str) -> Result<Option<AccountRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT account, tier, created_at, updated_at, keep_versions FROM accounts \
             WHERE account = ?1",
        )
        .bind(account)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.map(|r| -> Result<AccountRecord, sqlx::Error> {
            Ok(AccountRecord {
                account: r.try_get("account")?,
                tier: r.try_get("tier")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
                keep_versions: r.try_get("keep_versions")?,
            })
        })
        .transpose()
        .map_err(map_err)
    }

    async fn account_stats(
        &self,
        account: &str,
        current_backend: &str,
    ) -> Result<AccountStats, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(DISTINCT shard) AS shard_count, \
                    COALESCE(SUM(CASE WHEN backend <> ?2 THEN 1 ELSE 0 END), 0) \
                        AS versions_elsewhere \
             FROM shard_versions WHERE account = ?1",
        )
        .bind(account)
        .bind(current_backend)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(AccountStats {
            shard_count: row.try_get("shard_count").map_err(map_err)?,
            versions_elsewhere: row.try_get("versions_elsewhere").map_err(map_err)?,
        })
    }

    async fn delete_account_idempotent(
        &self,
        account: &str,
        audit: AuditForCount<'_>,
        idem: Option<(i64, IdempotencyForOutcome<'_>)>,
    ) -> Result<Idempotent<DeleteOutcome>, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some((expired_before_ms, build)) = idem {
            let empty = DeleteOutcome {
                shards: 0,
                versions: 0,
            };
            if let Some(existing) = idem_claim(&mut tx, &build(empty), expired_before_ms).await? {
                return Ok(Idempotent::Replay(existing));
            }
        }
        if !account_exists(&mut *tx, account).await.map_err(map_err)? {
            return Err(StoreError::AccountNotFound);
        }
        let shards: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT shard) FROM shard_versions WHERE account = ?1",
        )
        .bind(account)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let versions = sqlx::query("DELETE FROM shard_versions WHERE account = ?1")
            .bind(account)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        let versions = count(versions)?;
        sqlx::query("DELETE FROM accounts WHERE account = ?1")
            .bind(account)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_audit(&mut tx, &audit(versions)).await?;
        if let Some((_, build)) = idem {
            idem_update(&mut tx, &build(DeleteOutcome { shards, versions })).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(Idempotent::Done(DeleteOutcome { shards, versions }))
    }

    async fn list_shards(
        &self,
        account: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ShardSummary>, StoreError> {
        // With exactly one MAX() aggregate, SQLite takes the bare columns (backend) from the
        // row holding the maximum (https://sqlite.org/lang_select.html#bareagg).
        // "" sorts before every id (ids are never empty).
        let rows = sqlx::query(
            "SELECT shard, MAX(version) AS version, backend FROM shard_versions \
             WHERE account = ?1 AND shard > ?2 \
             GROUP BY shard ORDER BY shard LIMIT ?3",
        )
        .bind(account)
        .bind(after.unwrap_or(""))
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(ShardSummary {
                    shard: r.try_get("shard")?,
                    latest_version: r.try_get("version")?,
                    backend: r.try_get("backend")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(map_err)
    }

    async fn latest_version(&self, account: &str, shard: &str) -> Result<Option<i64>, StoreError> {
        latest(&self.pool, account, shard).await.map_err(map_err)
    }

    async fn insert_shard_version_sealed(
        &self,
        row: &ShardVersionRow,
        idem: Option<IdempotentWrite<'_>>,
        retention: Option<Prune<'_>>,
        seal: &mut dyn LateSeal,
    ) -> Result<Idempotent<Vec<i64>>, StoreError> {
        // The chain first, then the write lock (see `LateSeal::hold`).
        seal.hold().await?;
        // BEGIN IMMEDIATE: we hold the write lock from here, so the latest version cannot
        // change before our insert.
        let mut tx = self.begin_write().await?;
        if let Some(w) = idem {
            if let Some(existing) = idem_claim(&mut tx, w.record, w.expired_before_ms).await? {
                return Ok(Idempotent::Replay(existing));
            }
        }
        let account_keep: Option<Option<i64>> =
            sqlx::query_scalar("SELECT keep_versions FROM accounts WHERE account = ?1")
                .bind(&row.account)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let Some(account_keep) = account_keep else {
            return Err(StoreError::AccountNotFound);
        };
        let current = latest(&mut *tx, &row.account, &row.shard)
            .await
            .map_err(map_err)?;
        let expected = if row.version == 1 {
            None
        } else {
            Some(row.version - 1)
        };
        if current != expected {
            return Err(StoreError::Conflict { latest: current });
        }
        let inserted = sqlx::query(&format!(
            "INSERT INTO shard_versions ({SHARD_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ))
        .bind(&row.account)
        .bind(&row.shard)
        .bind(row.version)
        .bind(row.format_version)
        .bind(&row.backend)
        .bind(&row.key_ref)
        .bind(row.key_version)
        .bind(&row.wrapped_dek)
        .bind(&row.nonce)
        .bind(&row.ciphertext)
        .bind(&row.key_commitment)
        .bind(row.created_at)
        .bind(&row.created_by)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                // Cannot happen under the write lock; answered like PostgreSQL anyway.
                drop(tx);
                let latest = latest(&self.pool, &row.account, &row.shard)
                    .await
                    .unwrap_or(Some(row.version));
                return Err(StoreError::Conflict { latest });
            }
            Err(e) if is_foreign_key_violation(&e) => return Err(StoreError::AccountNotFound),
            Err(e) => return Err(map_err(e)),
        }
        refuse_destroyed(&mut tx, &row.backend, row.key_version).await?;
        let mut pruned = Vec::new();
        if let Some(retention) = retention {
            let keep = account_keep.unwrap_or(retention.default_keep);
            if keep > 0 {
                // Every version but the newest `keep` (counted, not numbered: a shard may
                // have gaps where versions were deleted), the one just inserted included.
                pruned = sqlx::query_scalar(
                    "DELETE FROM shard_versions WHERE account = ?1 AND shard = ?2 \
                     AND version NOT IN (SELECT version FROM shard_versions \
                         WHERE account = ?1 AND shard = ?2 ORDER BY version DESC LIMIT ?3) \
                     RETURNING version",
                )
                .bind(&row.account)
                .bind(&row.shard)
                .bind(keep)
                .fetch_all(&mut *tx)
                .await
                .map_err(map_err)?;
                pruned.sort_unstable();
            }
        }
        let records = seal.seal(&pruned).await?;
        crate::check_write_records(&records, &pruned)?;
        for record in &records {
            insert_audit(&mut tx, record).await?;
        }
        if let (Some(_), Some(build)) = (idem, retention.and_then(|r| r.idem)) {
            idem_update(&mut tx, &build(&pruned)).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(Idempotent::Done(pruned))
    }

    async fn get_shard_version(
        &self,
        account: &str,
        shard: &str,
        version: Option<i64>,
    ) -> Result<Option<ShardVersionRow>, StoreError> {
        let row = match version {
            None => {
                sqlx::query(&format!(
                    "SELECT {SHARD_COLUMNS} FROM shard_versions \
                     WHERE account = ?1 AND shard = ?2 ORDER BY version DESC LIMIT 1"
                ))
                .bind(account)
                .bind(shard)
                .fetch_optional(&self.pool)
                .await
            }
            Some(v) => {
                sqlx::query(&format!(
                    "SELECT {SHARD_COLUMNS} FROM shard_versions \
                     WHERE account = ?1 AND shard = ?2 AND version = ?3"
                ))
                .bind(account)
                .bind(shard)
                .bind(v)
                .fetch_optional(&self.pool)
                .await
            }
        }
        .map_err(map_err)?;
        row.as_ref()
            .map(shard_from_row)
            .transpose()
            .map_err(map_err)
    }

    async fn get_shard_versions(
        &self,
        items: &[(String, String, Option<i64>)],
    ) -> Result<Vec<Option<ShardVersionRow>>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for the whole batch: the requested keys as a VALUES list, each
        // joined to its exact version or, without one, to the shard's latest.
        let mut out = vec![None; items.len()];
        // Bounded statements: far below both databases' bind-parameter limits.
        for (chunk_no, chunk) in items.chunks(BATCH_CHUNK).enumerate() {
            let base = chunk_no * BATCH_CHUNK;
            let values = (0..chunk.len())
                .map(|i| {
                    let b = i * 4;
                    format!("(?{}, ?{}, ?{}, ?{})", b + 1, b + 2, b + 3, b + 4)
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "WITH q (idx, account, shard, version) AS (VALUES {values}) \
             SELECT q.idx AS idx, {cols} FROM q JOIN shard_versions s \
               ON s.account = q.account AND s.shard = q.shard AND s.version = COALESCE(q.version, \
                  (SELECT MAX(m.version) FROM shard_versions m \
                   WHERE m.account = q.account AND m.shard = q.shard))",
                cols = SHARD_COLUMNS
                    .split(',')
                    .map(|c| format!("s.{}", c.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (i, (account, shard, version)) in chunk.iter().enumerate() {
                query = query
                    .bind(i64::try_from(base + i).unwrap_or(i64::MAX))
                    .bind(account)
                    .bind(shard)
                    .bind(*version);
            }
            let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
            for r in &rows {
                let idx: i64 = r.try_get("idx").map_err(map_err)?;
                if let Some(slot) = usize::try_from(idx).ok().and_then(|i| out.get_mut(i)) {
                    *slot = Some(shard_from_row(r).map_err(map_err)?);
                }
            }
        }
        Ok(out)
    }

    async fn delete_shard_idempotent(
        &self,
        account: &str,
        shard: &str,
        audit: AuditForCount<'_>,
        idem: Option<(i64, IdempotencyForCount<'_>)>,
    ) -> Result<Idempotent<i64>, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some((expired_before_ms, build)) = idem {
            if let Some(existing) = idem_claim(&mut tx, &build(0), expired_before_ms).await? {
                return Ok(Idempotent::Replay(existing));
            }
        }
        let deleted = sqlx::query("DELETE FROM shard_versions WHERE account = ?1 AND shard = ?2")
            .bind(account)
            .bind(shard)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::ShardNotFound);
        }
        let deleted = count(deleted)?;
        insert_audit(&mut tx, &audit(deleted)).await?;
        if let Some((_, build)) = idem {
            idem_update(&mut tx, &build(deleted)).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(Idempotent::Done(deleted))
    }

    async fn delete_shard_version_idempotent(
        &self,
        account: &str,
        shard: &str,
        version: i64,
        audit: &AuditRecord,
        idem: Option<IdempotentWrite<'_>>,
    ) -> Result<Idempotent<()>, StoreError> {
        // BEGIN IMMEDIATE: serialised with every write, retention included.
        let mut tx = self.begin_write().await?;
        if let Some(w) = idem {
            if let Some(existing) = idem_claim(&mut tx, w.record, w.expired_before_ms).await? {
                return Ok(Idempotent::Replay(existing));
            }
        }
        let deleted = sqlx::query(
            "DELETE FROM shard_versions WHERE account = ?1 AND shard = ?2 AND version = ?3",
        )
        .bind(account)
        .bind(shard)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if deleted == 0 {
            return Err(StoreError::ShardNotFound);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Idempotent::Done(()))
    }

    async fn get_idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        idem_get(&self.pool, scope, key).await
    }

    async fn purge_idempotency(&self, before_ms: i64) -> Result<i64, StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        tx.commit().await.map_err(map_err)?;
        count(n)
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for record in records {
            insert_audit(&mut tx, record).await?;
        }
        tx.commit().await.map_err(audit_err)
    }

    async fn register_chain(
        &self,
        chain_id: &str,
        started_ms: i64,
        host: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO audit_chains (chain_id, started_ms, host) VALUES (?1, ?2, ?3) \
             ON CONFLICT (chain_id) DO NOTHING",
        )
        .bind(chain_id)
        .bind(started_ms)
        .bind(host)
        .execute(&mut *tx)
        .await
        .map_err(audit_err)?
        .rows_affected();
        if inserted == 0 {
            // Already there: fine if it is the same registration (a retried call), an error
            // if another process uses the same chain id.
            let same = sqlx::query(
                "SELECT 1 FROM audit_chains \
                 WHERE chain_id = ?1 AND started_ms = ?2 AND host = ?3",
            )
            .bind(chain_id)
            .bind(started_ms)
            .bind(host)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
            .is_some();
            if !same {
                return Err(StoreError::Internal(format!(
                    "audit chain {chain_id} is already registered by another process"
                )));
            }
        }
        tx.commit().await.map_err(audit_err)
    }

    async fn audit_head(&self, chain_id: &str) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, tag FROM audit_events WHERE chain_id = ?1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(chain_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.map(|r| -> Result<(i64, Vec<u8>), sqlx::Error> {
            Ok((r.try_get("seq")?, r.try_get("tag")?))
        })
        .transpose()
        .map_err(map_err)
    }

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let q = sqlx::query(
            "INSERT INTO api_tokens \
             (token_id, name, sha256, scopes, account_prefix, created_ms, expires_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&token.token_id)
        .bind(&token.name)
        .bind(&token.sha256)
        .bind(token.scopes.join(","))
        .bind(&token.account_prefix)
        .bind(token.created_ms)
        .bind(token.expires_ms);
        let mut tx = self.begin_write().await?;
        let r = q.execute(&mut *tx).await;
        let r = match r {
            Ok(_) => tx.commit().await.map_err(map_err),
            Err(e) => Err(token_insert_err(e)),
        };
        r
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT token_id, name, sha256, scopes, account_prefix, created_ms, expires_ms \
             FROM api_tokens ORDER BY token_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(token_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err)
    }

    async fn revoke_token(
        &self,
        token_id: &str,
        at_ms: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "INSERT INTO token_revocations (token_id, revoked_ms, reason) VALUES (?1, ?2, ?3) \
             ON CONFLICT (token_id) DO NOTHING",
        )
        .bind(token_id)
        .bind(at_ms)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        tx.commit().await.map_err(map_err)?;
        Ok(n == 1)
    }

    async fn token_revocations(&self) -> Result<Vec<TokenRevocation>, StoreError> {
        let rows = sqlx::query(
            "SELECT token_id, revoked_ms, reason FROM token_revocations ORDER BY token_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| -> Result<TokenRevocation, sqlx::Error> {
                Ok(TokenRevocation {
                    token_id: r.try_get("token_id")?,
                    revoked_ms: r.try_get("revoked_ms")?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err)
    }

    async fn audit_chains(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar::<_, String>(
            "SELECT chain_id FROM audit_chains \
             UNION SELECT DISTINCT chain_id FROM audit_events \
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)
    }

    async fn audit_events(
        &self,
        chain_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events \
             WHERE chain_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
        ))
        .bind(chain_id)
        .bind(after_seq)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(audit_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err)
    }

    async fn create_migration_job(
        &self,
        id: &str,
        selector: &MigrationSelector,
        now_ms: i64,
        created_by: &str,
        audit: &AuditRecord,
    ) -> Result<MigrationJob, StoreError> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO migration_jobs (id, sel_account, sel_from_backend, \
             sel_key_version_below, state, created_at, updated_at, created_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
        )
        .bind(id)
        .bind(&selector.account)
        .bind(&selector.from_backend)
        .bind(selector.key_version_below)
        .bind(job_state::RUNNING)
        .bind(now_ms)
        .bind(created_by)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Internal(format!(
                    "migration job {id} already exists"
                )))
            }
            Err(e) => return Err(map_err(e)),
        }
        // Under the write lock nothing can change between the snapshot and the count.
        let total = sqlx::query(
            "INSERT INTO migration_items (job_id, account, shard, version, state) \
             SELECT ?1, account, shard, version, 'pending' FROM shard_versions \
             WHERE (?2 IS NULL OR account = ?2) \
               AND (?3 IS NULL OR backend = ?3) \
               AND (?4 IS NULL OR key_version < ?4)",
        )
        .bind(id)
        .bind(&selector.account)
        .bind(&selector.from_backend)
        .bind(selector.key_version_below)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        let row = sqlx::query(&format!(
            "UPDATE migration_jobs SET total = ?2 WHERE id = ?1 RETURNING {JOB_COLUMNS}"
        ))
        .bind(id)
        .bind(count(total)?)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let job = job_from_row(&row).map_err(map_err)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(job)
    }

    async fn get_migration_job(&self, id: &str) -> Result<Option<MigrationJob>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM migration_jobs WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(job_from_row).transpose().map_err(map_err)
    }

    async fn list_migration_jobs(&self, states: &[&str]) -> Result<Vec<MigrationJob>, StoreError> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        // SQLite has no array parameters: one placeholder per state.
        let placeholders = (1..=states.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM migration_jobs WHERE state IN ({placeholders}) \
             ORDER BY created_at, id"
        );
        let mut query = sqlx::query(&sql);
        for state in states {
            query = query.bind(*state);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err)
    }

    async fn set_migration_job_state(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        now_ms: i64,
        audit: &AuditRecord,
    ) -> Result<Transition, StoreError> {
        // BEGIN IMMEDIATE: the state read below cannot change before our update.
        let mut tx = self.begin_write().await?;
        let current: Option<String> =
            sqlx::query_scalar("SELECT state FROM migration_jobs WHERE id = ?1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let Some(current) = current else {
            return Ok(Transition::NotFound);
        };
        if !from.contains(&current.as_str()) {
            return Ok(Transition::WrongState(current));
        }
        let row = sqlx::query(&format!(
            "UPDATE migration_jobs SET state = ?2, updated_at = ?3 WHERE id = ?1 \
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(id)
        .bind(to)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let job = job_from_row(&row).map_err(map_err)?;
        if to == job_state::RUNNING {
            // A resumed job's items held by batches cut short by the pause are free again
            // at once instead of after their leases. A worker whose batch is still running
            // loses nothing: a commit needs the items pending and still its own, so each
            // item is settled once whoever claims it.
            sqlx::query(
                "UPDATE migration_items SET claimed_by = NULL, lease_until = NULL \
                 WHERE job_id = ?1 AND state = 'pending' AND claimed_by IS NOT NULL",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Transition::Done(job))
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
        if limit <= 0 {
            return Ok(Vec::new());
        }
        // BEGIN IMMEDIATE: one claimer (in any process) at a time, so the lease check and the
        // claim below cannot interleave with another worker's.
        let mut tx = self.begin_write().await?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM migration_jobs WHERE id = ?1")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        if state.as_deref() != Some(job_state::RUNNING) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT i.account, i.shard, i.version, sv.version IS NOT NULL AS present, \
                    sv.format_version, sv.backend, sv.key_ref, sv.key_version, \
                    sv.wrapped_dek, sv.nonce, sv.ciphertext, sv.key_commitment, \
                    sv.created_at, sv.created_by, \
                    a.tier \
             FROM migration_items i \
             LEFT JOIN shard_versions sv ON sv.account = i.account AND sv.shard = i.shard \
                 AND sv.version = i.version \
             LEFT JOIN accounts a ON a.account = i.account \
             WHERE i.job_id = ?1 AND i.state = 'pending' \
               AND (i.lease_until IS NULL OR i.lease_until <= ?2) \
               AND (?4 IS NULL OR (i.account, i.shard, i.version) > (?4, ?5, ?6)) \
             ORDER BY i.account, i.shard, i.version \
             LIMIT ?3",
        )
        .bind(job_id)
        .bind(now_ms)
        .bind(limit)
        .bind(after.map(|k| k.account.as_str()))
        .bind(after.map(|k| k.shard.as_str()))
        .bind(after.map(|k| k.version))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let lease_until = now_ms.saturating_add(lease_ms);
        let mut claimed = Vec::with_capacity(rows.len());
        let mut skipped = 0i64;
        for r in &rows {
            let present: bool = r.try_get("present").map_err(map_err)?;
            let account: String = r.try_get("account").map_err(map_err)?;
            let shard: String = r.try_get("shard").map_err(map_err)?;
            let version: i64 = r.try_get("version").map_err(map_err)?;
            let (state, lease) = if present {
                ("pending", Some(lease_until))
            } else {
                // The version was deleted after the snapshot: nothing left to move.
                skipped += 1;
                ("skipped", None)
            };
            sqlx::query(
                "UPDATE migration_items SET state = ?5, claimed_by = ?6, lease_until = ?7 \
                 WHERE job_id = ?1 AND account = ?2 AND shard = ?3 AND version = ?4",
            )
            .bind(job_id)
            .bind(&account)
            .bind(&shard)
            .bind(version)
            .bind(state)
            .bind(worker)
            .bind(lease)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            if present {
                claimed.push(ClaimedItem {
                    row: shard_from_row(r).map_err(map_err)?,
                    tier: r.try_get("tier").map_err(map_err)?,
                });
            }
        }
        if skipped > 0 {
            sqlx::query(
                "UPDATE migration_jobs SET skipped = skipped + ?2, updated_at = ?3 WHERE id = ?1",
            )
            .bind(job_id)
            .bind(skipped)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(claimed)
    }

    async fn commit_migration_batch(
        &self,
        job_id: &str,
        worker: &str,
        items: &[ItemCommit<'_>],
        now_ms: i64,
        seal: &mut dyn LateSeal,
    ) -> Result<Option<Vec<CommitResult>>, StoreError> {
        if items.is_empty() {
            return Ok(Some(Vec::new()));
        }
        // The chain is held before the write lock is taken: SQLite has one writer, so a
        // caller waiting for its audit chain while holding that lock could stall every other
        // writer.
        seal.hold().await?;
        let records = seal.seal(&[]).await?;
        crate::check_batch_records(&records, items.len())?;
        // BEGIN IMMEDIATE: the item, job and row checks below hold until we commit.
        let mut tx = self.begin_write().await?;
        let job: Option<String> =
            sqlx::query_scalar("SELECT state FROM migration_jobs WHERE id = ?1")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        if job.as_deref() != Some(job_state::RUNNING) {
            return Ok(None);
        }
        for i in items {
            let held: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM migration_items \
                 WHERE job_id = ?1 AND account = ?2 AND shard = ?3 AND version = ?4 \
                   AND state = 'pending' AND claimed_by = ?5",
            )
            .bind(job_id)
            .bind(i.account)
            .bind(i.shard)
            .bind(i.version)
            .bind(worker)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            if held.is_none() {
                return Ok(None);
            }
        }
        let mut results = Vec::with_capacity(items.len());
        let mut settlements = Vec::with_capacity(items.len());
        for i in items {
            let (result, settlement) = match i.outcome {
                ItemOutcome::Moved {
                    backend,
                    key_ref,
                    key_version,
                    wrapped_dek,
                } => {
                    // Compare-and-swap on the wrap the worker read: a user write or a delete
                    // since then wins. Nonce and ciphertext are never touched.
                    let replaced = sqlx::query(
                        "UPDATE shard_versions \
                         SET backend = ?5, key_ref = ?6, key_version = ?7, wrapped_dek = ?8 \
                         WHERE account = ?1 AND shard = ?2 AND version = ?3 AND wrapped_dek = ?4",
                    )
                    .bind(i.account)
                    .bind(i.shard)
                    .bind(i.version)
                    .bind(i.old_wrapped_dek)
                    .bind(backend)
                    .bind(key_ref)
                    .bind(key_version)
                    .bind(wrapped_dek)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?
                    .rows_affected();
                    if replaced == 1 {
                        refuse_destroyed(&mut tx, backend, *key_version).await?;
                        (CommitResult::Committed, Settlement::done())
                    } else {
                        (CommitResult::RowChanged, Settlement::skipped())
                    }
                }
                ItemOutcome::Skipped => (CommitResult::Committed, Settlement::skipped()),
                ItemOutcome::Failed { error } => {
                    (CommitResult::Committed, Settlement::failed(error))
                }
            };
            sqlx::query(
                "UPDATE migration_items SET state = ?5, error = ?6, lease_until = NULL \
                 WHERE job_id = ?1 AND account = ?2 AND shard = ?3 AND version = ?4",
            )
            .bind(job_id)
            .bind(i.account)
            .bind(i.shard)
            .bind(i.version)
            .bind(settlement.item_state)
            .bind(settlement.error)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            results.push(result);
            settlements.push(settlement);
        }
        let total = Settlement::sum(&settlements);
        sqlx::query(
            "UPDATE migration_jobs \
             SET done = done + ?2, skipped = skipped + ?3, failed = failed + ?4, \
                 last_error = COALESCE(?5, last_error), updated_at = ?6 \
             WHERE id = ?1",
        )
        .bind(job_id)
        .bind(total.done)
        .bind(total.skipped)
        .bind(total.failed)
        .bind(total.error)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        for r in &records {
            insert_audit(&mut tx, r).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(Some(results))
    }

    async fn migration_failures(
        &self,
        job_id: &str,
        limit: i64,
    ) -> Result<Vec<MigrationFailure>, StoreError> {
        let rows = sqlx::query(
            "SELECT account, shard, version, COALESCE(error, '') AS error FROM migration_items \
             WHERE job_id = ?1 AND state = 'failed' \
             ORDER BY account, shard, version LIMIT ?2",
        )
        .bind(job_id)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(MigrationFailure {
                    account: r.try_get("account")?,
                    shard: r.try_get("shard")?,
                    version: r.try_get("version")?,
                    error: r.try_get("error")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(map_err)
    }

    async fn list_key_versions(&self) -> Result<Vec<KeyVersionRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM key_versions ORDER BY backend, key_version"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(key_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err)
    }

    async fn register_key_versions(
        &self,
        versions: &[NewKeyVersion],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        if versions.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let mut added = 0;
        for v in versions {
            // An `active` row that would be a second active version of its backend hits
            // the partial unique index and is skipped by DO NOTHING: it is registered as
            // decrypt-only instead.
            for state in [v.state.as_str(), key_state::DECRYPT_ONLY] {
                let n = sqlx::query(&format!(
                    "INSERT INTO key_versions ({KEY_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5, 'registered', 0) ON CONFLICT DO NOTHING"
                ))
                .bind(&v.backend)
                .bind(v.key_version)
                .bind(&v.key_ref)
                .bind(state)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?
                .rows_affected();
                added += n;
                let exists: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM key_versions WHERE backend = ?1 AND key_version = ?2",
                )
                .bind(&v.backend)
                .bind(v.key_version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
                if exists.is_some() {
                    break;
                }
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(added)
    }

    async fn set_key_state(
        &self,
        change: &KeyStateChange<'_>,
        audit: &AuditRecord,
    ) -> Result<KeyTransition, StoreError> {
        // BEGIN IMMEDIATE: one writer, so the reference count below cannot change before the
        // state does (every shard write re-checks the state under the same lock).
        let mut tx = self.begin_write().await?;
        let current: Option<String> = sqlx::query_scalar(
            "SELECT state FROM key_versions WHERE backend = ?1 AND key_version = ?2",
        )
        .bind(change.backend)
        .bind(change.key_version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(current) = current else {
            return Ok(KeyTransition::NotFound);
        };
        if current != change.from || !crate::keys::allowed(&current, change.to) {
            return Ok(KeyTransition::WrongState(current));
        }
        if change.to == key_state::ACTIVE {
            let active: Option<i64> = sqlx::query_scalar(
                "SELECT key_version FROM key_versions WHERE backend = ?1 AND state = 'active'",
            )
            .bind(change.backend)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            if active != change.demote {
                return Ok(KeyTransition::WrongState(current));
            }
            sqlx::query(
                "UPDATE key_versions SET state = 'decrypt-only', changed_ms = ?2, changed_by = ?3 \
                 WHERE backend = ?1 AND state = 'active'",
            )
            .bind(change.backend)
            .bind(change.now_ms)
            .bind(change.actor)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        if change.to == key_state::DESTROYED {
            let refs: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM shard_versions WHERE backend = ?1 AND key_version = ?2",
            )
            .bind(change.backend)
            .bind(change.key_version)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            if refs > 0 {
                return Ok(KeyTransition::Referenced(refs));
            }
        }
        let row = sqlx::query(&format!(
            "UPDATE key_versions SET state = ?3, changed_ms = ?4, changed_by = ?5 \
             WHERE backend = ?1 AND key_version = ?2 RETURNING {KEY_COLUMNS}"
        ))
        .bind(change.backend)
        .bind(change.key_version)
        .bind(change.to)
        .bind(change.now_ms)
        .bind(change.actor)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let record = key_from_row(&row).map_err(map_err)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(KeyTransition::Done(record))
    }

    async fn reserve_key_wraps(
        &self,
        backend: &str,
        key_version: i64,
        block: i64,
        limit: i64,
    ) -> Result<Reservation, StoreError> {
        let mut tx = self.begin_write().await?;
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT state, reserved_upto FROM key_versions WHERE backend = ?1 AND key_version = ?2",
        )
        .bind(backend)
        .bind(key_version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some((state, from)) = row else {
            return Ok(Reservation::NotActive);
        };
        if state != key_state::ACTIVE {
            return Ok(Reservation::NotActive);
        }
        if from >= limit {
            return Ok(Reservation::Exhausted { reserved: from });
        }
        let to = from.saturating_add(block.max(1)).min(limit);
        sqlx::query(
            "UPDATE key_versions SET reserved_upto = ?3 WHERE backend = ?1 AND key_version = ?2",
        )
        .bind(backend)
        .bind(key_version)
        .bind(to)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Reservation::Granted { from, to })
    }

    async fn key_ref_counts(&self) -> Result<Vec<KeyRefCount>, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT backend, key_version, COUNT(*) FROM shard_versions \
             GROUP BY backend, key_version ORDER BY backend, key_version",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(|(backend, key_version, shard_versions)| KeyRefCount {
                backend,
                key_version,
                shard_versions,
            })
            .collect())
    }

    async fn backup_to(&self, path: &Path) -> Result<(), BackupError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BackupError::Io { path, source }
        };
        // Absolute, so that SQLite never reads a name like `file:...` as a URI, and resolves it
        // against the same directory we created the file in.
        let target = std::path::absolute(path).map_err(io(path))?;
        let name = target
            .to_str()
            .ok_or_else(|| BackupError::PathNotUtf8(target.clone()))?
            .to_string();
        // `create_new` refuses any existing path atomically (no check-then-create race), and
        // the copy is born 0600: it holds every wrapped key and the whole audit log. SQLite's
        // VACUUM INTO accepts an existing file only when it is empty, which this one is.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    BackupError::Exists(target.clone())
                } else {
                    io(&target)(e)
                }
            })?;
        let copied = async {
            // One read transaction: a consistent snapshot, while writers go on (WAL mode).
            sqlx::query("VACUUM INTO ?1")
                .bind(&name)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
            // VACUUM INTO writes the copy without syncing it: make it durable before
            // reporting success, the file and then its directory entry.
            std::fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(io(&target))?;
            if let Some(dir) = target.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io(dir))?;
            }
            Ok(())
        }
        .await;
        if copied.is_err() {
            // Never leave a partial copy that looks like a backup.
            let _ = std::fs::remove_file(&target);
        }
        copied
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
