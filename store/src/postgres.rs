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
use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, PgSslMode};
use sqlx::{Connection, Postgres, Row, Transaction};

use crate::held_conns::HeldConns;
use crate::migration::Settlement;
use crate::{
    job_state, AccountRecord, AccountStats, AuditForCount, AuditRecord, BackupError, ClaimedItem,
    CommitResult, DeleteOutcome, GroupedWrite, IdempotencyForCount, IdempotencyForOutcome,
    IdempotencyRecord, Idempotent, IdempotentWrite, ItemCommit, ItemKey, ItemOutcome, KeepVersions,
    LateSeal, MigrationFailure, MigrationJob, MigrationSelector, Prune, ShardSummary,
    ShardVersionRow, Store, StoreError, TokenRecord, TokenRevocation, Transition,
};
use crate::{
    key_state, KeyRefCount, KeyStateChange, KeyTransition, KeyVersionRecord, NewKeyVersion,
    Reservation,
};

/// How long a request waits for a pooled connection (or a new one) before the store answers
/// [`StoreError::Unavailable`]: a database that is down must fail fast, not hang requests.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Items per statement of a batch read.
const BATCH_CHUNK: usize = 1000;

/// The `shard_versions` columns a [`ShardVersionRow`] is read from, as a macro so the hot
/// reads' statements are `concat!`ed once at compile time.
macro_rules! shard_columns {
    () => {
        "account, shard, version, format_version, backend, key_ref, \
         key_version, wrapped_dek, nonce, ciphertext, key_commitment, created_at, created_by"
    };
}
const SHARD_COLUMNS: &str = shard_columns!();

const AUDIT_COLUMNS: &str = "chain_id, seq, ts_ms, request_id, actor, action, account, shard, \
     version, backend, outcome, detail, prev_tag, tag, credential";

const KEY_COLUMNS: &str = "backend, key_version, key_ref, state, created_ms, changed_ms, \
     changed_by, reserved_upto";

const JOB_COLUMNS: &str = "id, sel_account, sel_from_backend, sel_key_version_below, state, \
     total, done, failed, skipped, last_error, created_at, updated_at, created_by";

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
        let held_cap = usize::try_from(max_connections.max(1) / 2).unwrap_or(0);
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

    /// A group of shard writes (`rows`: in key order) in ONE statement outside any
    /// transaction, its audit records sealed up front: one round trip, where the
    /// transaction below takes four (begin, insert, audit insert, commit). All or nothing:
    /// `true` when every write was stored with its record; `false` when any write would be
    /// refused (its account gone or changed, its version no longer next, its key version
    /// destroyed) or another transaction inserted one of its keys meanwhile, and then
    /// nothing was stored and the caller's transaction sorts the writes out (sealing again).
    ///
    /// The chain is held for the whole statement, so (as in the transaction) no other
    /// writer of an account row is in flight, and the account check sees every change that
    /// committed before it. Without `ON CONFLICT`, a key inserted by another transaction
    /// fails the statement (a unique violation), and a failed statement stores nothing.
    async fn insert_group_at_once(
        &self,
        writes: &[GroupedWrite<'_>],
        rows: &[&ShardVersionRow],
        seal: &mut dyn LateSeal,
    ) -> Result<bool, StoreError> {
        let all: Vec<usize> = (0..writes.len()).collect();
        let records = seal.seal_rows(&all).await?;
        if records.len() != writes.len() {
            return Err(StoreError::Internal(format!(
                "{} audit records sealed for a group of {} writes",
                records.len(),
                writes.len()
            )));
        }
        let sql = format!(
            "WITH r AS (SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], \
                     $4::SMALLINT[], $5::TEXT[], $6::TEXT[], $7::BIGINT[], $8::BYTEA[], \
                     $9::BYTEA[], $10::BYTEA[], $11::BYTEA[], $12::BIGINT[], $13::TEXT[]) \
                   WITH ORDINALITY AS r(account, shard, version, format_version, backend, \
                        key_ref, key_version, wrapped_dek, nonce, ciphertext, \
                        key_commitment, created_at, created_by, idx)), \
                  e AS (SELECT * FROM unnest($14::TEXT[], $15::TEXT[], $16::BIGINT[]) \
                        AS e(account, tier, keep_versions)), \
                  a AS (SELECT account, tier, keep_versions FROM accounts \
                        WHERE account = ANY($14::TEXT[]) ORDER BY account FOR SHARE), \
                  refused AS (SELECT 1 FROM r \
                        WHERE NOT EXISTS (SELECT 1 FROM accounts x WHERE x.account = r.account) \
                           OR (SELECT MAX(s.version) FROM shard_versions s \
                               WHERE s.account = r.account AND s.shard = r.shard) \
                              IS DISTINCT FROM NULLIF(r.version - 1, 0) \
                           OR EXISTS (SELECT 1 FROM key_versions k \
                                      WHERE k.backend = r.backend \
                                        AND k.key_version = r.key_version \
                                        AND k.state = 'destroyed') \
                        UNION ALL \
                        SELECT 1 FROM e LEFT JOIN a ON a.account = e.account \
                        WHERE a.account IS NULL OR a.tier <> e.tier \
                           OR a.keep_versions IS DISTINCT FROM e.keep_versions), \
                  ok AS (SELECT NOT EXISTS (SELECT 1 FROM refused) AS ok), \
                  ins AS (INSERT INTO shard_versions ({SHARD_COLUMNS}) \
                          SELECT r.account, r.shard, r.version, r.format_version, r.backend, \
                                 r.key_ref, r.key_version, r.wrapped_dek, r.nonce, \
                                 r.ciphertext, r.key_commitment, r.created_at, r.created_by \
                          FROM r WHERE (SELECT ok FROM ok) ORDER BY r.idx RETURNING 1), \
                  aud AS (INSERT INTO audit_events ({AUDIT_COLUMNS}) \
                          SELECT * FROM ({}) x WHERE (SELECT ok FROM ok) RETURNING 1) \
             SELECT (SELECT ok FROM ok) AS ok, (SELECT COUNT(*) FROM ins) AS inserted, \
                    (SELECT COUNT(*) FROM aud) AS audited",
            audit_rows_sql(17)
        );
        let record_refs: Vec<&AuditRecord> = records.iter().collect();
        let q = bind_shard_rows(sqlx::query(&sql), rows)
            .bind(
                writes
                    .iter()
                    .map(|w| w.row.account.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(writes.iter().map(|w| w.tier).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| w.keep_versions).collect::<Vec<_>>());
        let done = match bind_audit_rows(q, &record_refs)
            .fetch_one(&self.group_pool)
            .await
        {
            Ok(done) => done,
            // The server refused the statement (e.g. a key another transaction inserted):
            // it stored nothing.
            Err(sqlx::Error::Database(e)) => {
                tracing::debug!(error = %e, "a group of writes refused at once; stored by a transaction");
                return Ok(false);
            }
            // Whether it committed is unknown.
            Err(e) => return Err(audit_err(e)),
        };
        let ok: bool = done.try_get("ok").map_err(map_err)?;
        let inserted: i64 = done.try_get("inserted").map_err(map_err)?;
        let audited: i64 = done.try_get("audited").map_err(map_err)?;
        let n = i64::try_from(writes.len()).unwrap_or(i64::MAX);
        if ok && (inserted != n || audited != n) {
            // Cannot happen (each insert inserts every row or fails the statement), and it
            // committed: the caller reads the chain head back.
            return Err(StoreError::AuditUnavailable(format!(
                "a group of {n} writes stored {inserted} rows and {audited} audit records"
            )));
        }
        Ok(ok)
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
            "the PostgreSQL store connection does not verify the server: add sslmode=verify-full&sslrootcert=<CA file> to [store] url (README, \"Database least privilege\")"
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

fn migrate_err(e: MigrateError) -> StoreError {
    match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => map_err(e),
        other => StoreError::Internal(format!("migration failed: {other}")),
    }
}

async fn insert_audit(conn: &mut PgConnection, a: &AuditRecord) -> Result<(), StoreError> {
    insert_audit_row(conn, a).await.map_err(audit_err)
}

async fn insert_audit_row(conn: &mut PgConnection, a: &AuditRecord) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO audit_events ({AUDIT_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
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
}

fn key_from_row(r: &PgRow) -> Result<KeyVersionRecord, sqlx::Error> {
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

/// Settles a batch's items still pending and held by worker `$7` (see
/// `commit_migration_batch`); the caller compares the count of rows it updated with the
/// batch's size. Each item is found by one primary-key probe and locked (in key order, so two
/// workers whose leases overlapped cannot deadlock), then updated by its physical address
/// (stable: the row is locked). As a plain `UPDATE ... FROM unnest(...)`, with the job's
/// items underestimated by the statistics, the planner hash-joined the batch to every item
/// of the job: each commit scanned the whole job (14 ms per commit at 20,000 items, 40 us of
/// database time per item, growing with the job); this way 1.3 ms. `LATERAL ... FOR UPDATE`
/// keeps the probe from being flattened back into that join. One pass: the check that the
/// items are still this worker's and their settlement lock and write each row once.
const SETTLE_HELD_ITEMS_SQL: &str = "WITH t AS ( \
         SELECT l.tid, u.state, u.error \
         FROM ( \
             SELECT * FROM unnest($2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], \
                                  $6::TEXT[]) AS u(account, shard, version, state, error) \
             ORDER BY u.account COLLATE \"C\", u.shard COLLATE \"C\", u.version \
         ) u \
         CROSS JOIN LATERAL ( \
             SELECT i.ctid AS tid FROM migration_items i \
             WHERE i.job_id = $1 AND i.account = u.account AND i.shard = u.shard \
               AND i.version = u.version AND i.state = 'pending' AND i.claimed_by = $7 \
             FOR UPDATE \
         ) l \
     ) \
     UPDATE migration_items i SET state = t.state, error = t.error, lease_until = NULL \
     FROM t WHERE i.ctid = t.tid";

/// Items of a settled batch whose compare-and-swap found the row changed: skipped, not
/// done (their rows are locked by this transaction's `SETTLE_HELD_ITEMS_SQL`).
const UNSETTLE_CHANGED_SQL: &str = "WITH t AS ( \
         SELECT l.tid FROM unnest($2::TEXT[], $3::TEXT[], $4::BIGINT[]) \
             AS u(account, shard, version) \
         CROSS JOIN LATERAL ( \
             SELECT i.ctid AS tid FROM migration_items i \
             WHERE i.job_id = $1 AND i.account = u.account AND i.shard = u.shard \
               AND i.version = u.version \
             FOR UPDATE \
         ) l \
     ) \
     UPDATE migration_items i SET state = 'skipped' FROM t WHERE i.ctid = t.tid";

/// The claim of `claim_migration_items` (`$1` job, `$2` worker, `$3` now, `$4` lease end,
/// `$5` limit; with `after`, `$6`-`$8` the key to start past).
///
/// SKIP LOCKED: items another worker is claiming or committing right now are passed
/// over, and a row claimed (and committed) since our snapshot is re-checked against
/// the lease condition after locking, so two workers never hold one item. Items whose
/// version is gone are settled as skipped in the same statement. The version's row is
/// read once, by the pick (one primary-key probe of `shard_versions` per item), so
/// `present` and the returned row agree. The update finds each
/// picked item by its physical address (stable: locked by the pick), not by a join
/// on the key that the planner may make a scan of the whole job (see
/// `SETTLE_HELD_ITEMS_SQL`).
///
/// The items are walked in the primary key's order from `after` on (a start key of
/// the index scan): settled items stay in that index, and a claim from the job's
/// first item would step over every one of them (see migration 0011).
fn claim_items_sql(after: bool) -> String {
    let from_cursor = if after {
        "AND (i.account, i.shard, i.version) > ($6::TEXT, $7::TEXT, $8::BIGINT)"
    } else {
        ""
    };
    format!(
        "WITH picked AS ( \
             SELECT i.ctid AS tid, i.account, i.shard, i.version, \
                    sv.version IS NOT NULL AS present, sv.format_version, sv.backend, \
                    sv.key_ref, sv.key_version, sv.wrapped_dek, sv.nonce, sv.ciphertext, \
                    sv.key_commitment, sv.created_at, sv.created_by \
             FROM migration_items i \
             LEFT JOIN shard_versions sv ON sv.account = i.account \
                 AND sv.shard = i.shard AND sv.version = i.version \
             WHERE i.job_id = $1 {from_cursor} AND i.state = 'pending' \
               AND (i.lease_until IS NULL OR i.lease_until <= $3) \
             ORDER BY i.account, i.shard, i.version \
             LIMIT $5 \
             FOR UPDATE OF i SKIP LOCKED \
         ), claimed AS ( \
             UPDATE migration_items i \
             SET state = CASE WHEN p.present THEN 'pending' ELSE 'skipped' END, \
                 claimed_by = $2, \
                 lease_until = CASE WHEN p.present THEN $4::BIGINT ELSE NULL END \
             FROM picked p \
             WHERE i.ctid = p.tid \
             RETURNING i.account, i.shard, i.version, i.state, p.format_version, \
                 p.backend, p.key_ref, p.key_version, p.wrapped_dek, p.nonce, p.ciphertext, \
                 p.key_commitment, p.created_at, p.created_by \
         ) \
         SELECT c.state AS item_state, c.account, c.shard, c.version, c.format_version, \
                c.backend, c.key_ref, c.key_version, c.wrapped_dek, c.nonce, \
                c.ciphertext, c.key_commitment, c.created_at, c.created_by, a.tier \
         FROM claimed c \
         LEFT JOIN accounts a ON a.account = c.account \
         ORDER BY c.account, c.shard, c.version"
    )
}

/// Refuse row changes under a destroyed key version. Run AFTER the transaction's own
/// statement on `shard_versions` (which holds ROW EXCLUSIVE on the table): a destroy holds
/// SHARE on it from before its reference count until its commit, so this read, a new
/// statement with a new snapshot in READ COMMITTED, either sees that destroy committed or
/// the destroy's count waits for (and then sees) this transaction's rows.
async fn refuse_destroyed(
    conn: &mut PgConnection,
    backends: &[&str],
    key_versions: &[i64],
) -> Result<(), StoreError> {
    let hit: Option<(String, i64)> = sqlx::query_as(
        "SELECT k.backend, k.key_version FROM key_versions k \
         JOIN unnest($1::TEXT[], $2::BIGINT[]) AS u(backend, key_version) \
           ON k.backend = u.backend AND k.key_version = u.key_version \
         WHERE k.state = 'destroyed' LIMIT 1",
    )
    .bind(backends)
    .bind(key_versions)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    match hit {
        Some((backend, key_version)) => Err(StoreError::KeyDestroyed {
            backend,
            key_version,
        }),
        None => Ok(()),
    }
}

/// Insert several audit records in one statement (one round trip for a batch).
async fn insert_audits(
    conn: &mut PgConnection,
    records: &[&AuditRecord],
) -> Result<(), StoreError> {
    insert_audit_rows(conn, records).await.map_err(audit_err)
}

/// [`insert_audits`], with the driver's error (for [`HeldConn::finish`]).
///
/// [`HeldConn::finish`]: crate::held_conns::HeldConn::finish
async fn insert_audit_rows(
    conn: &mut PgConnection,
    records: &[&AuditRecord],
) -> Result<(), sqlx::Error> {
    match records {
        [] => Ok(()),
        [one] => insert_audit_row(conn, one).await,
        _ => {
            let sql = format!(
                "INSERT INTO audit_events ({AUDIT_COLUMNS}) {}",
                audit_rows_sql(1)
            );
            bind_audit_rows(sqlx::query(&sql), records)
                .execute(conn)
                .await
                .map(|_| ())
        }
    }
}

/// `SELECT * FROM unnest(...)` of audit records, one array parameter per column of
/// `AUDIT_COLUMNS` from `$first` on (bound by [`bind_audit_rows`]).
fn audit_rows_sql(first: usize) -> String {
    const TYPES: [&str; 15] = [
        "TEXT", "BIGINT", "BIGINT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "BIGINT", "TEXT",
        "TEXT", "TEXT", "BYTEA", "BYTEA", "TEXT",
    ];
    let params = TYPES
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}[]", first + i))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT * FROM unnest({params})")
}

/// Bind `rows` as one array per column of `SHARD_COLUMNS`, in its order.
fn bind_shard_rows<'q>(
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    rows: &[&'q ShardVersionRow],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    q.bind(rows.iter().map(|r| r.account.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.shard.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.format_version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.backend.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.key_ref.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.key_version).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.wrapped_dek.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.nonce.as_slice()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.ciphertext.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.key_commitment.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.created_by.as_str())
                .collect::<Vec<_>>(),
        )
}

/// Bind `records` as the arrays of [`audit_rows_sql`].
fn bind_audit_rows<'q>(
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    records: &[&'q AuditRecord],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    let col = |f: fn(&AuditRecord) -> &str| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    let opt =
        |f: fn(&AuditRecord) -> Option<&str>| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    q.bind(col(|r| &r.chain_id))
        .bind(records.iter().map(|r| r.seq).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.ts_ms).collect::<Vec<_>>())
        .bind(col(|r| &r.request_id))
        .bind(col(|r| &r.actor))
        .bind(col(|r| &r.action))
        .bind(opt(|r| r.account.as_deref()))
        .bind(opt(|r| r.shard.as_deref()))
        .bind(records.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(opt(|r| r.backend.as_deref()))
        .bind(col(|r| &r.outcome))
        .bind(col(|r| &r.detail))
        .bind(
            records
                .iter()
                .map(|r| r.prev_tag.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(records.iter().map(|r| r.tag.as_slice()).collect::<Vec<_>>())
        .bind(opt(|r| r.credential.as_deref()))
}

/// The columns of the compare-and-swap of a batch's moved items, one array per column.
#[derive(Default)]
struct MovedColumns<'a> {
    account: Vec<&'a str>,
    shard: Vec<&'a str>,
    version: Vec<i64>,
    old: Vec<&'a [u8]>,
    backend: Vec<&'a str>,
    key_ref: Vec<&'a str>,
    key_version: Vec<i64>,
    new: Vec<&'a [u8]>,
}

fn shard_from_row(r: &PgRow) -> Result<ShardVersionRow, sqlx::Error> {
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

fn token_from_row(r: &PgRow) -> Result<TokenRecord, sqlx::Error> {
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

fn audit_from_row(r: &PgRow) -> Result<AuditRecord, sqlx::Error> {
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

fn job_from_row(r: &PgRow) -> Result<MigrationJob, sqlx::Error> {
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

const IDEM_COLUMNS: &str = "scope, key, request_hash, status, body_json, created_at";

fn idem_from_row(r: &PgRow) -> Result<IdempotencyRecord, sqlx::Error> {
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
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query(&format!(
        "SELECT {IDEM_COLUMNS} FROM idempotency_keys WHERE scope = $1 AND key = $2"
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
    conn: &mut PgConnection,
    rec: &IdempotencyRecord,
    expired_before_ms: i64,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at < $3")
        .bind(&rec.scope)
        .bind(&rec.key)
        .bind(expired_before_ms)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    let inserted = sqlx::query(&format!(
        "INSERT INTO idempotency_keys ({IDEM_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
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
async fn idem_update(conn: &mut PgConnection, rec: &IdempotencyRecord) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idempotency_keys SET request_hash = $3, status = $4, body_json = $5 \
         WHERE scope = $1 AND key = $2",
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

fn count(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Internal("row count out of range".to_string()))
}

/// An `accounts` row (with its column names).
fn account_from_row(r: &PgRow) -> Result<AccountRecord, sqlx::Error> {
    Ok(AccountRecord {
        account: r.try_get("account")?,
        tier: r.try_get("tier")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        keep_versions: r.try_get("keep_versions")?,
    })
}

/// Latest stored version of a shard, read with any executor.
async fn latest<'e, E>(executor: E, account: &str, shard: &str) -> Result<Option<i64>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT MAX(version) FROM shard_versions WHERE account = $1 AND shard = $2",
    )
    .bind(account)
    .bind(shard)
    .fetch_one(executor)
    .await
}

/// Of the `(table, privilege)` pairs, those the current role holds (`held`) or lacks
/// (`!held`), as `"PRIVILEGE on table"`.
async fn privilege_rows(
    pool: &PgPool,
    tables: &[&str],
    privileges: &[&str],
    held: bool,
) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar::<_, String>(
        "SELECT p || ' on ' || t FROM unnest($1::TEXT[], $2::TEXT[]) WITH ORDINALITY AS r(t, p, n) \
         WHERE has_table_privilege(t, p) = $3 ORDER BY n",
    )
    .bind(tables)
    .bind(privileges)
    .bind(held)
    .fetch_all(pool)
    .await
    .map_err(map_err)
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // The migrator takes a PostgreSQL advisory lock: replicas may call this concurrently.
        sqlx::migrate!("../migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(migrate_err)
    }

    async fn check_schema(&self) -> Result<crate::SchemaCheck, StoreError> {
        let applied = sqlx::query_as::<_, (i64, bool, Vec<u8>)>(
            "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => {
                crate::no_schema_error()
            }
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
                StoreError::Internal(
                    "the database role may not read _sqlx_migrations (SQLSTATE 42501): apply scripts/sql/grants.sql after every `shardgate db migrate` (README, \"Database least privilege\")".to_string(),
                )
            }
            _ => map_err(e),
        })?;
        let newer_migrations =
            crate::compare_migrations(&sqlx::migrate!("../migrations/postgres"), &applied)?;
        let (tables, privileges): (Vec<&str>, Vec<&str>) = crate::RUNTIME_PRIVILEGES
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
            .unzip();
        let missing = privilege_rows(&self.pool, &tables, &privileges, false).await?;
        if !missing.is_empty() {
            let role: String = sqlx::query_scalar("SELECT current_user::text")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
            return Err(StoreError::Internal(format!(
                "database role {role} lacks {}: apply scripts/sql/grants.sql after every `shardgate db migrate` (README, \"Database least privilege\")",
                missing.join(", ")
            )));
        }
        let (tables, privileges): (Vec<&str>, Vec<&str>) = crate::APPEND_ONLY_TABLES
            .iter()
            .flat_map(|t| ["UPDATE", "DELETE", "TRUNCATE"].map(move |p| (*t, p)))
            .unzip();
        let audit_writable = privilege_rows(&self.pool, &tables, &privileges, true).await?;
        Ok(crate::SchemaCheck {
            audit_writable,
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
        let mut tx = self.begin().await?;
        let mut previous = None;
        let mut done = false;
        // If a concurrent writer creates the account between our read and our insert, the
        // next round finds (and locks) its row.
        for _ in 0..3 {
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT tier FROM accounts WHERE account = $1 FOR NO KEY UPDATE",
            )
            .bind(account)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            if let Some(old) = existing {
                if old != tier {
                    sqlx::query(
                        "UPDATE accounts SET tier = $2, updated_at = $3 WHERE account = $1",
                    )
                    .bind(account)
                    .bind(tier)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                }
                previous = Some(old);
                done = true;
                break;
            }
            let inserted = sqlx::query(
                "INSERT INTO accounts (account, tier, created_at, updated_at) \
                 VALUES ($1, $2, $3, $3) ON CONFLICT (account) DO NOTHING",
            )
            .bind(account)
            .bind(tier)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
            if inserted == 1 {
                done = true;
                break;
            }
        }
        if !done {
            return Err(StoreError::Unavailable(format!(
                "account {account} is being created and deleted concurrently"
            )));
        }
        if let KeepVersions::Set(keep) = keep {
            sqlx::query("UPDATE accounts SET keep_versions = $2 WHERE account = $1")
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
        let mut held = self.held.get().await.map_err(map_err)?;
        let row = sqlx::query(
            "SELECT account, tier, created_at, updated_at, keep_versions FROM accounts \
             WHERE account = $1",
        )
        .bind(account)
        .fetch_optional(held.conn())
        .await;
        held.finish(&row);
        let row = row.map_err(map_err)?;
        row.as_ref()
            .map(account_from_row)
            .transpose()
            .map_err(map_err)
    }

    async fn account_and_latest(
        &self,
        account: &str,
        shard: &str,
    ) -> Result<Option<(AccountRecord, Option<i64>)>, StoreError> {
        // One round trip: every shard write starts with this.
        let mut held = self.held.get().await.map_err(map_err)?;
        let row = sqlx::query(
            "SELECT a.account, a.tier, a.created_at, a.updated_at, a.keep_versions, \
                    (SELECT MAX(s.version) FROM shard_versions s \
                     WHERE s.account = a.account AND s.shard = $2) AS latest \
             FROM accounts a WHERE a.account = $1",
        )
        .bind(account)
        .bind(shard)
        .fetch_optional(held.conn())
        .await;
        held.finish(&row);
        let row = row.map_err(map_err)?;
        row.as_ref()
            .map(|r| Ok((account_from_row(r)?, r.try_get("latest")?)))
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
                    COALESCE(SUM(CASE WHEN backend <> $2 THEN 1 ELSE 0 END), 0)::BIGINT \
                        AS versions_elsewhere \
             FROM shard_versions WHERE account = $1",
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
        let mut tx = self.begin().await?;
        if let Some((expired_before_ms, build)) = idem {
            let empty = DeleteOutcome {
                shards: 0,
                versions: 0,
            };
            if let Some(existing) = idem_claim(&mut tx, &build(empty), expired_before_ms).await? {
                return Ok(Idempotent::Replay(existing));
            }
        }
        // FOR UPDATE waits for in-flight inserts (their foreign key holds KEY SHARE on the
        // row) and blocks new ones.
        let exists = sqlx::query("SELECT 1 FROM accounts WHERE account = $1 FOR UPDATE")
            .bind(account)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
            .is_some();
        if !exists {
            return Err(StoreError::AccountNotFound);
        }
        let counts = sqlx::query(
            "WITH deleted AS (DELETE FROM shard_versions WHERE account = $1 RETURNING shard) \
             SELECT COUNT(*) AS versions, COUNT(DISTINCT shard) AS shards FROM deleted",
        )
        .bind(account)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let versions: i64 = counts.try_get("versions").map_err(map_err)?;
        let shards: i64 = counts.try_get("shards").map_err(map_err)?;
        sqlx::query("DELETE FROM accounts WHERE account = $1")
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
        // "" sorts before every id (ids are never empty).
        let rows = sqlx::query(
            "SELECT DISTINCT ON (shard) shard, version, backend FROM shard_versions \
             WHERE account = $1 AND shard > $2 COLLATE \"C\" \
             ORDER BY shard, version DESC LIMIT $3",
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
        let mut tx = self.begin().await?;
        if let Some(w) = idem {
            if let Some(existing) = idem_claim(&mut tx, w.record, w.expired_before_ms).await? {
                return Ok(Idempotent::Replay(existing));
            }
        }
        // The account's tier and retention, and the shard's latest version, read without a
        // lock: the account row is locked (shared) only under the audit chain, below. A
        // write that waited for the chain holding that row would stall a tier change that
        // holds the chain and waits for the row, and every writer behind it. The insert's
        // foreign key holds the row's key (KEY SHARE) meanwhile, which a tier change
        // (NO KEY UPDATE) does not wait for; an account delete does, and then this write's
        // wait for the chain runs out and it rolls back (deletes are rare).
        let expected = if row.version == 1 {
            None
        } else {
            Some(row.version - 1)
        };
        // Read and insert in one round trip: the row goes in only if the shard's latest
        // version is still the one this write numbered itself after.
        let read = sqlx::query(&format!(
            "WITH a AS (SELECT tier, keep_versions FROM accounts WHERE account = $1), \
                  cur AS (SELECT MAX(version) AS latest FROM shard_versions \
                          WHERE account = $1 AND shard = $2), \
                  ins AS (INSERT INTO shard_versions ({SHARD_COLUMNS}) \
                          SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 \
                          FROM a, cur WHERE cur.latest IS NOT DISTINCT FROM $14 \
                          RETURNING 1) \
             SELECT a.tier, a.keep_versions, cur.latest, (SELECT COUNT(*) FROM ins) AS inserted \
             FROM a, cur"
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
        .bind(expected)
        .fetch_optional(&mut *tx)
        .await;
        let read = match read {
            Ok(r) => r,
            Err(e) if is_unique_violation(&e) => {
                // A concurrent writer stored this version first (we waited for its commit).
                drop(tx);
                let latest = latest(&self.pool, &row.account, &row.shard)
                    .await
                    .unwrap_or(Some(row.version));
                return Err(StoreError::Conflict { latest });
            }
            Err(e) if is_foreign_key_violation(&e) => return Err(StoreError::AccountNotFound),
            Err(e) => return Err(map_err(e)),
        };
        let Some(read) = read else {
            return Err(StoreError::AccountNotFound);
        };
        let tier: String = read.try_get("tier").map_err(map_err)?;
        let account_keep: Option<i64> = read.try_get("keep_versions").map_err(map_err)?;
        let current: Option<i64> = read.try_get("latest").map_err(map_err)?;
        let inserted: i64 = read.try_get("inserted").map_err(map_err)?;
        if inserted != 1 {
            return Err(StoreError::Conflict { latest: current });
        }
        refuse_destroyed(&mut tx, &[row.backend.as_str()], &[row.key_version]).await?;
        let mut pruned = Vec::new();
        if let Some(retention) = retention {
            let keep = account_keep.unwrap_or(retention.default_keep);
            if keep > 0 {
                // Every version but the newest `keep` (counted, not numbered: a shard may
                // have gaps where versions were deleted), the one just inserted included.
                pruned = sqlx::query_scalar(
                    "DELETE FROM shard_versions WHERE account = $1 AND shard = $2 \
                     AND version NOT IN (SELECT version FROM shard_versions \
                         WHERE account = $1 AND shard = $2 ORDER BY version DESC LIMIT $3) \
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
        // Only the account check, the audit insert and the commit run under the caller's
        // audit chain (see `LateSeal`): concurrent writes do everything above at the same
        // time.
        let records = match seal.seal(&pruned).await {
            Ok(r) => r,
            Err(e) => {
                // Now, not on drop: the row locks taken above must not wait for the pooled
                // connection's next use (an account delete may be waiting for them).
                tx.rollback().await.map_err(map_err)?;
                return Err(e);
            }
        };
        crate::check_write_records(&records, &pruned)?;
        // Every writer of an account row holds the chain for its whole transaction, so no
        // tier or retention change is in flight now and any later one waits for this
        // commit. One that committed since the read above changed what this write was
        // placed and pruned by: nothing is kept, and the caller writes again.
        let now: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT tier, keep_versions FROM accounts WHERE account = $1 FOR SHARE")
                .bind(&row.account)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        if now != Some((tier, account_keep)) {
            tx.rollback().await.map_err(map_err)?;
            return Err(StoreError::AccountChanged);
        }
        let records: Vec<&AuditRecord> = records.iter().collect();
        insert_audits(&mut tx, &records).await?;
        if let (Some(_), Some(build)) = (idem, retention.and_then(|r| r.idem)) {
            idem_update(&mut tx, &build(&pruned)).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(Idempotent::Done(pruned))
    }

    fn groups_writes(&self) -> bool {
        true
    }

    async fn insert_shard_versions_grouped(
        &self,
        writes: &[GroupedWrite<'_>],
        seal: &mut dyn LateSeal,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        // Inserted in key order: two groups (of this replica or another) that share keys
        // queue for them in the same order instead of deadlocking.
        let mut order: Vec<usize> = (0..writes.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (writes[a].row, writes[b].row);
            (a.account.as_str(), a.shard.as_str()).cmp(&(b.account.as_str(), b.shard.as_str()))
        });
        let rows: Vec<&ShardVersionRow> = order.iter().map(|&i| writes[i].row).collect();
        if rows
            .windows(2)
            .any(|w| w[0].account == w[1].account && w[0].shard == w[1].shard)
        {
            // Their answers could not be told apart below.
            return Err(StoreError::Internal(
                "a group holds two writes of one shard".to_string(),
            ));
        }
        if self.insert_group_at_once(writes, &rows, seal).await? {
            return Ok((0..writes.len()).map(|_| Ok(())).collect());
        }
        // A generic plan, made once per connection: left to choose, PostgreSQL plans this
        // statement anew at every call (its custom plans look cheaper than a generic one
        // that cannot know the arrays' length), which cost more CPU than running it.
        let mut tx = self
            .begin_with(Some(
                "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan",
            ))
            .await?;
        // One round trip for every row: each checked (account, latest version, destroyed
        // key; scalar subqueries, each one index probe, where EXISTS could become a scan
        // and hash of the whole table) and inserted only if it passes; a key another transaction inserted meanwhile
        // is skipped (ON CONFLICT waits for that commit), not an error that would undo the
        // whole group.
        let checked = bind_shard_rows(
            sqlx::query(&format!(
                "WITH r AS (SELECT * FROM unnest($1::INT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], \
                     $5::SMALLINT[], $6::TEXT[], $7::TEXT[], $8::BIGINT[], $9::BYTEA[], \
                     $10::BYTEA[], $11::BYTEA[], $12::BYTEA[], $13::BIGINT[], $14::TEXT[]) \
                   AS r(idx, account, shard, version, format_version, backend, key_ref, \
                        key_version, wrapped_dek, nonce, ciphertext, key_commitment, \
                        created_at, created_by)), \
                  c AS (SELECT r.idx, \
                          COALESCE((SELECT true FROM accounts a \
                                    WHERE a.account = r.account), false) AS has_account, \
                          (SELECT MAX(s.version) FROM shard_versions s \
                            WHERE s.account = r.account AND s.shard = r.shard) AS latest, \
                          COALESCE((SELECT true FROM key_versions k \
                                    WHERE k.backend = r.backend \
                                      AND k.key_version = r.key_version \
                                      AND k.state = 'destroyed'), false) AS destroyed \
                        FROM r), \
                  ins AS (INSERT INTO shard_versions ({SHARD_COLUMNS}) \
                          SELECT r.account, r.shard, r.version, r.format_version, r.backend, \
                                 r.key_ref, r.key_version, r.wrapped_dek, r.nonce, \
                                 r.ciphertext, r.key_commitment, r.created_at, r.created_by \
                          FROM r JOIN c ON c.idx = r.idx \
                          WHERE c.has_account AND NOT c.destroyed \
                            AND c.latest IS NOT DISTINCT FROM NULLIF(r.version - 1, 0) \
                          ORDER BY r.idx \
                          ON CONFLICT (account, shard, version) DO NOTHING \
                          RETURNING account, shard) \
             SELECT c.idx, c.has_account, c.latest, c.destroyed, \
                    EXISTS (SELECT 1 FROM ins WHERE ins.account = r.account \
                            AND ins.shard = r.shard) AS inserted \
             FROM c JOIN r ON r.idx = c.idx ORDER BY c.idx"
            ))
            .bind(
                (0..rows.len())
                    .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
                    .collect::<Vec<_>>(),
            ),
            &rows,
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        if checked.len() != rows.len() {
            // Now, not on drop: the inserted rows hold locks until the rollback arrives.
            tx.rollback().await.map_err(map_err)?;
            return Err(StoreError::Internal(format!(
                "a group of {} writes was checked as {}",
                rows.len(),
                checked.len()
            )));
        }
        let mut answers: Vec<Result<(), StoreError>> = (0..writes.len()).map(|_| Ok(())).collect();
        let mut stored = Vec::new();
        for (pos, c) in checked.iter().enumerate() {
            let i = order[pos];
            let row = writes[i].row;
            let inserted: bool = c.try_get("inserted").map_err(map_err)?;
            answers[i] = if inserted {
                stored.push(i);
                Ok(())
            } else if !c.try_get::<bool, _>("has_account").map_err(map_err)? {
                Err(StoreError::AccountNotFound)
            } else if c.try_get::<bool, _>("destroyed").map_err(map_err)? {
                Err(StoreError::KeyDestroyed {
                    backend: row.backend.clone(),
                    key_version: row.key_version,
                })
            } else {
                // Either the latest version moved on before the statement, or another
                // transaction inserted this very version during it (then it is the latest).
                let latest: Option<i64> = c.try_get("latest").map_err(map_err)?;
                Err(StoreError::Conflict {
                    latest: if latest == Some(row.version - 1)
                        || (latest.is_none() && row.version == 1)
                    {
                        Some(row.version)
                    } else {
                        latest
                    },
                })
            };
        }
        if stored.is_empty() {
            tx.rollback().await.map_err(map_err)?;
            return Ok(answers);
        }
        stored.sort_unstable();
        // Only the account re-check, the audit insert and the commit run under the chain.
        let records = match seal.seal_rows(&stored).await {
            Ok(r) => r,
            Err(e) => {
                tx.rollback().await.map_err(map_err)?;
                return Err(e);
            }
        };
        if records.len() != stored.len() {
            // Now, not on drop: the inserted rows hold locks until the rollback arrives.
            tx.rollback().await.map_err(map_err)?;
            return Err(StoreError::Internal(format!(
                "{} audit records sealed for {} stored writes",
                records.len(),
                stored.len()
            )));
        }
        // As a single write's (see `insert_shard_version_sealed`): every writer of an account
        // row holds the chain for its whole transaction, so none is in flight now; one that
        // committed since the writers read their accounts undoes the group. The audit rows go
        // in only when no account changed, in the same round trip.
        let sql = format!(
            "WITH e AS (SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[]) \
                        AS e(account, tier, keep_versions)), \
                  a AS (SELECT account, tier, keep_versions FROM accounts \
                        WHERE account = ANY($1::TEXT[]) ORDER BY account FOR SHARE), \
                  bad AS (SELECT 1 FROM e LEFT JOIN a ON a.account = e.account \
                          WHERE a.account IS NULL OR a.tier <> e.tier \
                             OR a.keep_versions IS DISTINCT FROM e.keep_versions), \
                  ins AS (INSERT INTO audit_events ({AUDIT_COLUMNS}) {} \
                          WHERE NOT EXISTS (SELECT 1 FROM bad) RETURNING 1) \
             SELECT (SELECT COUNT(*) FROM bad) AS changed, (SELECT COUNT(*) FROM ins) AS audited",
            audit_rows_sql(4)
        );
        let record_refs: Vec<&AuditRecord> = records.iter().collect();
        let q = sqlx::query(&sql)
            .bind(
                stored
                    .iter()
                    .map(|&i| writes[i].row.account.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(stored.iter().map(|&i| writes[i].tier).collect::<Vec<_>>())
            .bind(
                stored
                    .iter()
                    .map(|&i| writes[i].keep_versions)
                    .collect::<Vec<_>>(),
            );
        let done = bind_audit_rows(q, &record_refs)
            .fetch_one(&mut *tx)
            .await
            .map_err(audit_err)?;
        let changed: i64 = done.try_get("changed").map_err(map_err)?;
        let audited: i64 = done.try_get("audited").map_err(map_err)?;
        if changed > 0 {
            tx.rollback().await.map_err(map_err)?;
            return Err(StoreError::AccountChanged);
        }
        if usize::try_from(audited).ok() != Some(records.len()) {
            // Now, not on drop: the inserted rows hold locks until the rollback arrives.
            tx.rollback().await.map_err(map_err)?;
            return Err(StoreError::AuditUnavailable(format!(
                "{audited} of {} audit records inserted",
                records.len()
            )));
        }
        tx.commit().await.map_err(map_err)?;
        Ok(answers)
    }

    async fn get_shard_version(
        &self,
        account: &str,
        shard: &str,
        version: Option<i64>,
    ) -> Result<Option<ShardVersionRow>, StoreError> {
        let mut held = self.held.get().await.map_err(map_err)?;
        let row = match version {
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    shard_columns!(),
                    " FROM shard_versions \
                     WHERE account = $1 AND shard = $2 ORDER BY version DESC LIMIT 1"
                ))
                .bind(account)
                .bind(shard)
                .fetch_optional(held.conn())
                .await
            }
            Some(v) => {
                sqlx::query(concat!(
                    "SELECT ",
                    shard_columns!(),
                    " FROM shard_versions \
                     WHERE account = $1 AND shard = $2 AND version = $3"
                ))
                .bind(account)
                .bind(shard)
                .bind(v)
                .fetch_optional(held.conn())
                .await
            }
        };
        held.finish(&row);
        let row = row.map_err(map_err)?;
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
                    format!(
                        "(${}::bigint, ${}::text, ${}::text, ${}::bigint)",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4
                    )
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
            let mut held = self.held.get().await.map_err(map_err)?;
            let rows = query.fetch_all(held.conn()).await;
            held.finish(&rows);
            let rows = rows.map_err(map_err)?;
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
        let mut tx = self.begin().await?;
        if let Some((expired_before_ms, build)) = idem {
            if let Some(existing) = idem_claim(&mut tx, &build(0), expired_before_ms).await? {
                return Ok(Idempotent::Replay(existing));
            }
        }
        // Serialise with inserts into the account (they hold FOR SHARE), so no version can be
        // added while the shard is being destroyed.
        let exists = sqlx::query("SELECT 1 FROM accounts WHERE account = $1 FOR UPDATE")
            .bind(account)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
            .is_some();
        if !exists {
            return Err(StoreError::ShardNotFound);
        }
        let deleted = sqlx::query("DELETE FROM shard_versions WHERE account = $1 AND shard = $2")
            .bind(account)
            .bind(shard)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::ShardNotFound);
        }
        let deleted = i64::try_from(deleted)
            .map_err(|_| StoreError::Internal("deleted row count out of range".to_string()))?;
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
        let mut tx = self.begin().await?;
        if let Some(w) = idem {
            if let Some(existing) = idem_claim(&mut tx, w.record, w.expired_before_ms).await? {
                return Ok(Idempotent::Replay(existing));
            }
        }
        // As `delete_shard`: serialised with inserts into the account (FOR SHARE), so a
        // write's version check and retention never interleave with this delete.
        let exists = sqlx::query("SELECT 1 FROM accounts WHERE account = $1 FOR UPDATE")
            .bind(account)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
            .is_some();
        if !exists {
            return Err(StoreError::ShardNotFound);
        }
        let deleted = sqlx::query(
            "DELETE FROM shard_versions WHERE account = $1 AND shard = $2 AND version = $3",
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
        let n = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(map_err)?
            .rows_affected();

        count(n)
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        // One statement outside any transaction: a multi-row INSERT is atomic on its own and
        // durable at its implicit commit, in one round trip where BEGIN, INSERT and COMMIT
        // take three. Every read waits for this write (its event must be durable first), and
        // with a single writer a GET waits for the write in flight and then its own: each
        // round trip is a wake-up of the server on shared cores.
        let records: Vec<&AuditRecord> = records.iter().collect();
        let mut held = self.held.get().await.map_err(audit_err)?;
        let result = insert_audit_rows(held.conn(), &records).await;
        held.finish(&result);
        result.map_err(audit_err)
    }

    async fn register_chain(
        &self,
        chain_id: &str,
        started_ms: i64,
        host: &str,
    ) -> Result<(), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO audit_chains (chain_id, started_ms, host) VALUES ($1, $2, $3) \
             ON CONFLICT (chain_id) DO NOTHING",
        )
        .bind(chain_id)
        .bind(started_ms)
        .bind(host)
        .execute(&self.pool)
        .await
        .map_err(audit_err)?
        .rows_affected();
        if inserted == 1 {
            return Ok(());
        }
        // Already there: fine if it is the same registration (a retried call), an error if
        // another process uses the same chain id.
        let same = sqlx::query(
            "SELECT 1 FROM audit_chains WHERE chain_id = $1 AND started_ms = $2 AND host = $3",
        )
        .bind(chain_id)
        .bind(started_ms)
        .bind(host)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?
        .is_some();
        if same {
            Ok(())
        } else {
            Err(StoreError::Internal(format!(
                "audit chain {chain_id} is already registered by another process"
            )))
        }
    }

    async fn audit_head(&self, chain_id: &str) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, tag FROM audit_events WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1",
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
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.token_id)
        .bind(&token.name)
        .bind(&token.sha256)
        .bind(token.scopes.join(","))
        .bind(&token.account_prefix)
        .bind(token.created_ms)
        .bind(token.expires_ms);
        q.execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(token_insert_err)
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
        let n = sqlx::query(
            "INSERT INTO token_revocations (token_id, revoked_ms, reason) VALUES ($1, $2, $3) \
             ON CONFLICT (token_id) DO NOTHING",
        )
        .bind(token_id)
        .bind(at_ms)
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(map_err)?
        .rows_affected();
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
             WHERE chain_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
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
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO migration_jobs (id, sel_account, sel_from_backend, \
             sel_key_version_below, state, created_at, updated_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
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
        // One statement, so the snapshot is consistent even while shards are being written
        // (versions stored after it are placed by the policy already).
        let total = sqlx::query(
            "INSERT INTO migration_items (job_id, account, shard, version, state) \
             SELECT $1, account, shard, version, 'pending' FROM shard_versions \
             WHERE ($2::TEXT IS NULL OR account = $2) \
               AND ($3::TEXT IS NULL OR backend = $3) \
               AND ($4::BIGINT IS NULL OR key_version < $4)",
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
            "UPDATE migration_jobs SET total = $2 WHERE id = $1 RETURNING {JOB_COLUMNS}"
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
            "SELECT {JOB_COLUMNS} FROM migration_jobs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(job_from_row).transpose().map_err(map_err)
    }

    async fn list_migration_jobs(&self, states: &[&str]) -> Result<Vec<MigrationJob>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM migration_jobs WHERE state = ANY($1) \
             ORDER BY created_at, id"
        ))
        .bind(states)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
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
        let mut tx = self.begin().await?;
        // The lock an UPDATE takes anyway: concurrent commits (which update the counters)
        // and state changes wait, so the check below still holds when we write.
        let current: Option<String> =
            sqlx::query_scalar("SELECT state FROM migration_jobs WHERE id = $1 FOR NO KEY UPDATE")
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
            "UPDATE migration_jobs SET state = $2, updated_at = $3 WHERE id = $1 \
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
            // at once instead of after their leases. Items a commit is settling right now
            // are skipped (locked): that commit settles them or leaves them for the lease.
            // A worker whose batch is still running loses nothing: a commit needs the items
            // pending and still its own, so each item is settled once whoever claims it.
            sqlx::query(
                "UPDATE migration_items SET claimed_by = NULL, lease_until = NULL \
                 WHERE (job_id, account, shard, version) IN ( \
                     SELECT job_id, account, shard, version FROM migration_items \
                     WHERE job_id = $1 AND state = 'pending' AND claimed_by IS NOT NULL \
                     FOR UPDATE SKIP LOCKED)",
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
        let mut tx = self.begin().await?;
        // Transaction-local settings, in the round trip of the job's state:
        // - A claim need not survive a database crash: a lost claim only makes its items
        //   claimable again (the holder's commit then finds them not its own), and the
        //   skipped count is lost with the skips it counted. Not waiting for the flush saves
        //   one disk flush per batch; the batch's own commit is durable, and flushes this
        //   claim with it.
        // - No bitmap scans: with the job's pending items underestimated (statistics from
        //   before its snapshot, or an average over many small jobs) the planner chose a
        //   bitmap scan of every pending item and a sort for the first `limit` (200 ms per
        //   claim at 100,000 items) over the pending-items index, which is already in order
        //   and stops after `limit`.
        // The state is a plain read: a job paused right after it may still hand out this
        // batch, but commits re-check the state under the job's row lock, so nothing moves
        // once paused.
        let state: Option<String> = sqlx::query_scalar(
            "SELECT (SELECT state FROM migration_jobs WHERE id = $1) \
             FROM (SELECT set_config('synchronous_commit', 'off', true), \
                          set_config('enable_bitmapscan', 'off', true)) settings",
        )
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if state.as_deref() != Some(job_state::RUNNING) {
            return Ok(Vec::new());
        }
        // See `claim_items_sql`.
        let sql = claim_items_sql(after.is_some());
        let mut query = sqlx::query(&sql)
            .bind(job_id)
            .bind(worker)
            .bind(now_ms)
            .bind(now_ms.saturating_add(lease_ms))
            .bind(limit);
        if let Some(k) = after {
            query = query.bind(&k.account).bind(&k.shard).bind(k.version);
        }
        let rows = query.fetch_all(&mut *tx).await.map_err(map_err)?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut skipped = 0i64;
        for r in &rows {
            let item_state: String = r.try_get("item_state").map_err(map_err)?;
            if item_state == "skipped" {
                skipped += 1;
                continue;
            }
            claimed.push(ClaimedItem {
                row: shard_from_row(r).map_err(map_err)?,
                tier: r.try_get("tier").map_err(map_err)?,
            });
        }
        if skipped > 0 {
            sqlx::query(
                "UPDATE migration_jobs SET skipped = skipped + $2, updated_at = $3 WHERE id = $1",
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
        let accounts: Vec<&str> = items.iter().map(|i| i.account).collect();
        let shards: Vec<&str> = items.iter().map(|i| i.shard).collect();
        let versions: Vec<i64> = items.iter().map(|i| i.version).collect();
        // Settled as if every move lands: a compare-and-swap that finds its row changed is
        // the rare case, corrected below.
        let planned: Vec<Settlement<'_>> = items
            .iter()
            .map(|i| match &i.outcome {
                ItemOutcome::Moved { .. } => Settlement::done(),
                ItemOutcome::Skipped => Settlement::skipped(),
                ItemOutcome::Failed { error } => Settlement::failed(error),
            })
            .collect();
        let item_states: Vec<&str> = planned.iter().map(|s| s.item_state).collect();
        let errors: Vec<Option<&str>> = planned.iter().map(|s| s.error).collect();
        let mut tx = self.begin().await?;
        // Lock order: the items (in key order, so two workers whose leases overlapped cannot
        // deadlock), then the shard versions, then the job (claims lock items, then the job).
        // The items are checked (still pending, still this worker's) and settled in one pass.
        let held = sqlx::query(SETTLE_HELD_ITEMS_SQL)
            .bind(job_id)
            .bind(&accounts)
            .bind(&shards)
            .bind(&versions)
            .bind(&item_states)
            .bind(&errors)
            .bind(worker)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        if usize::try_from(held).ok() != Some(items.len()) {
            // Rolled back now, not on drop: a dropped transaction's rollback reaches the
            // server only when its pooled connection is next used, and until then the item
            // locks taken above hide those items from SKIP LOCKED readers (a resume releasing
            // claims, other workers claiming).
            tx.rollback().await.map_err(map_err)?;
            return Ok(None);
        }
        // Compare-and-swap on the wraps the worker read: a user write or a delete since then
        // wins. Nonce and ciphertext are never touched.
        let moved: Vec<&ItemCommit<'_>> = items
            .iter()
            .filter(|i| matches!(i.outcome, ItemOutcome::Moved { .. }))
            .collect();
        let mut replaced = std::collections::HashSet::new();
        if !moved.is_empty() {
            let mut cols = MovedColumns::default();
            for i in &moved {
                if let ItemOutcome::Moved {
                    backend,
                    key_ref,
                    key_version,
                    wrapped_dek,
                } = i.outcome
                {
                    cols.account.push(i.account);
                    cols.shard.push(i.shard);
                    cols.version.push(i.version);
                    cols.old.push(i.old_wrapped_dek);
                    cols.backend.push(backend);
                    cols.key_ref.push(key_ref);
                    cols.key_version.push(*key_version);
                    cols.new.push(wrapped_dek);
                }
            }
            // Each row found by one primary-key probe (LATERAL, locked: see
            // `SETTLE_HELD_ITEMS_SQL`), then updated by its physical address.
            let rows = sqlx::query(
                "WITH t AS ( \
                     SELECT l.tid, u.backend, u.key_ref, u.key_version, u.new_dek \
                     FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BYTEA[], \
                                 $5::TEXT[], $6::TEXT[], $7::BIGINT[], $8::BYTEA[]) \
                          AS u(account, shard, version, old_dek, backend, key_ref, \
                               key_version, new_dek) \
                     CROSS JOIN LATERAL ( \
                         SELECT s.ctid AS tid FROM shard_versions s \
                         WHERE s.account = u.account AND s.shard = u.shard \
                           AND s.version = u.version AND s.wrapped_dek = u.old_dek \
                         FOR UPDATE \
                     ) l \
                 ) \
                 UPDATE shard_versions s \
                 SET backend = t.backend, key_ref = t.key_ref, key_version = t.key_version, \
                     wrapped_dek = t.new_dek \
                 FROM t WHERE s.ctid = t.tid \
                 RETURNING s.account, s.shard, s.version",
            )
            .bind(&cols.account)
            .bind(&cols.shard)
            .bind(&cols.version)
            .bind(&cols.old)
            .bind(&cols.backend)
            .bind(&cols.key_ref)
            .bind(&cols.key_version)
            .bind(&cols.new)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
            refuse_destroyed(&mut tx, &cols.backend, &cols.key_version).await?;
            for r in rows {
                let key: (String, String, i64) = (
                    r.try_get("account").map_err(map_err)?,
                    r.try_get("shard").map_err(map_err)?,
                    r.try_get("version").map_err(map_err)?,
                );
                replaced.insert(key);
            }
        }
        let mut results = Vec::with_capacity(items.len());
        let mut settlements = Vec::with_capacity(items.len());
        let mut changed = MovedColumns::default();
        for (i, planned) in items.iter().zip(planned) {
            let (result, settlement) = match i.outcome {
                ItemOutcome::Moved { .. }
                    if !replaced.contains(&(
                        i.account.to_string(),
                        i.shard.to_string(),
                        i.version,
                    )) =>
                {
                    changed.account.push(i.account);
                    changed.shard.push(i.shard);
                    changed.version.push(i.version);
                    (CommitResult::RowChanged, Settlement::skipped())
                }
                _ => (CommitResult::Committed, planned),
            };
            results.push(result);
            settlements.push(settlement);
        }
        if !changed.account.is_empty() {
            sqlx::query(UNSETTLE_CHANGED_SQL)
                .bind(job_id)
                .bind(&changed.account)
                .bind(&changed.shard)
                .bind(&changed.version)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        let total = Settlement::sum(&settlements);
        // Everything above holds row locks but not the caller's audit chain; from here to the
        // commit it holds both (see `LateSeal`). The job row is locked only now, under the
        // chain: a pause or cancel takes the chain first, then that row, so they cannot wait
        // on each other in a cycle.
        let records = seal.seal(&[]).await?;
        crate::check_batch_records(&records, items.len())?;
        // Checked last, under the job's row lock: a pause or cancel that committed before
        // this point wins, and everything above is rolled back.
        let running = sqlx::query(
            "UPDATE migration_jobs \
             SET done = done + $2, skipped = skipped + $3, failed = failed + $4, \
                 last_error = COALESCE($5::TEXT, last_error), updated_at = $6 \
             WHERE id = $1 AND state = 'running'",
        )
        .bind(job_id)
        .bind(total.done)
        .bind(total.skipped)
        .bind(total.failed)
        .bind(total.error)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if running == 0 {
            // As above: release the item locks before answering.
            tx.rollback().await.map_err(map_err)?;
            return Ok(None);
        }
        let records: Vec<&AuditRecord> = records.iter().collect();
        insert_audits(&mut tx, &records).await?;
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
             WHERE job_id = $1 AND state = 'failed' \
             ORDER BY account, shard, version LIMIT $2",
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
        let mut tx = self.begin().await?;
        let mut added = 0;
        for v in versions {
            // A second `active` version of a backend hits the partial unique index; DO
            // NOTHING (no conflict target: any unique index) skips it, and the version is
            // registered as decrypt-only instead. A concurrent registration of the same row
            // waits for the other transaction and is skipped the same way.
            for state in [v.state.as_str(), key_state::DECRYPT_ONLY] {
                let n = sqlx::query(&format!(
                    "INSERT INTO key_versions ({KEY_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $5, 'registered', 0) ON CONFLICT DO NOTHING"
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
                let exists: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM key_versions WHERE backend = $1 AND key_version = $2",
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
        let mut tx = self.begin().await?;
        if change.to == key_state::DESTROYED {
            // SHARE conflicts with the ROW EXCLUSIVE of every insert, update and delete of
            // shard versions: in-flight writes finish before the count below, and new ones
            // wait for our commit, after which they see the version destroyed (see
            // `refuse_destroyed`). Held only for the count (an index range scan).
            sqlx::query("LOCK TABLE shard_versions IN SHARE MODE")
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        // The backend's rows in version order, so two transitions of one backend lock them
        // in the same order.
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT key_version, state FROM key_versions WHERE backend = $1 \
             ORDER BY key_version FOR UPDATE",
        )
        .bind(change.backend)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(current) = rows
            .iter()
            .find(|(v, _)| *v == change.key_version)
            .map(|(_, s)| s.clone())
        else {
            return Ok(KeyTransition::NotFound);
        };
        if current != change.from || !crate::keys::allowed(&current, change.to) {
            return Ok(KeyTransition::WrongState(current));
        }
        if change.to == key_state::ACTIVE {
            let active = rows
                .iter()
                .find(|(_, s)| s == key_state::ACTIVE)
                .map(|(v, _)| *v);
            if active != change.demote {
                return Ok(KeyTransition::WrongState(current));
            }
            sqlx::query(
                "UPDATE key_versions SET state = 'decrypt-only', changed_ms = $2, changed_by = $3 \
                 WHERE backend = $1 AND state = 'active'",
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
                "SELECT COUNT(*) FROM shard_versions WHERE backend = $1 AND key_version = $2",
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
            "UPDATE key_versions SET state = $3, changed_ms = $4, changed_by = $5 \
             WHERE backend = $1 AND key_version = $2 RETURNING {KEY_COLUMNS}"
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
        let mut tx = self.begin().await?;
        // The row lock makes concurrent reservations (any replica) take turns: each reads the
        // counter the previous one committed, so no two get overlapping ranges.
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT state, reserved_upto FROM key_versions \
             WHERE backend = $1 AND key_version = $2 FOR UPDATE",
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
            "UPDATE key_versions SET reserved_upto = $3 WHERE backend = $1 AND key_version = $2",
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
#[path = "postgres_plan_tests.rs"]
mod plan_tests;
