//! Migration jobs on SQLite: creating a job with its snapshot of items, reading and
//! changing its state, workers claiming batches of items under a lease, and committing a
//! batch's moves (compare-and-swap on the wraps) with its settlement and audit.

use sqlx::sqlite::SqliteConnection;
use sqlx::Row;

use super::audit::insert_audit;
use super::keys::refuse_destroyed;

use super::{count, is_unique_violation, map_err, SqliteStore};
use crate::migration::Settlement;
use crate::rows::{job_from_row, shard_from_row, version_of, JOB_COLUMNS};
use crate::{
    job_state, AuditRecord, ClaimedItem, CommitResult, ItemCommit, ItemKey, ItemOutcome, LateSeal,
    MigrationFailure, MigrationJob, MigrationSelector, StoreError, Transition,
};

/// [`Store::create_migration_job`](crate::Store::create_migration_job).
pub(super) async fn create_migration_job(
    store: &SqliteStore,
    id: &str,
    selector: &MigrationSelector,
    now_ms: i64,
    created_by: &str,
    audit: &AuditRecord,
) -> Result<MigrationJob, StoreError> {
    let mut tx = store.begin_write().await?;
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

/// [`Store::schedule_migration_catch_up`](crate::Store::schedule_migration_catch_up).
pub(super) async fn schedule_migration_catch_up(
    store: &SqliteStore,
    id: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE migration_jobs SET catch_up_at = ?2 WHERE id = ?1")
        .bind(id)
        .bind(at_ms)
        .execute(&store.pool)
        .await
        .map_err(map_err)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Internal(format!("no migration job {id}")));
    }
    Ok(())
}

/// [`Store::catch_up_migration_job`](crate::Store::catch_up_migration_job).
pub(super) async fn catch_up_migration_job(
    store: &SqliteStore,
    id: &str,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    // Under the write lock one caller takes the snapshot; the others find it cleared.
    let mut tx = store.begin_write().await?;
    let due = sqlx::query(
        "SELECT sel_account, sel_from_backend, sel_key_version_below FROM migration_jobs \
         WHERE id = ?1 AND catch_up_at <= ?2",
    )
    .bind(id)
    .bind(now_ms)
    .fetch_optional(&mut *tx)
    .await
    .map_err(map_err)?;
    let Some(row) = due else {
        return Ok(None);
    };
    let account: Option<String> = row.try_get("sel_account").map_err(map_err)?;
    let from: Option<String> = row.try_get("sel_from_backend").map_err(map_err)?;
    let below: Option<i64> = row.try_get("sel_key_version_below").map_err(map_err)?;
    let added = sqlx::query(
        "INSERT INTO migration_items (job_id, account, shard, version, state) \
         SELECT ?1, account, shard, version, 'pending' FROM shard_versions \
         WHERE (?2 IS NULL OR account = ?2) \
           AND (?3 IS NULL OR backend = ?3) \
           AND (?4 IS NULL OR key_version < ?4) \
         ON CONFLICT (job_id, account, shard, version) DO NOTHING",
    )
    .bind(id)
    .bind(&account)
    .bind(&from)
    .bind(below)
    .execute(&mut *tx)
    .await
    .map_err(map_err)?
    .rows_affected();
    let added = count(added)?;
    sqlx::query(
        "UPDATE migration_jobs SET total = total + ?2, catch_up_at = NULL, updated_at = ?3 \
         WHERE id = ?1",
    )
    .bind(id)
    .bind(added)
    .bind(now_ms)
    .execute(&mut *tx)
    .await
    .map_err(map_err)?;
    tx.commit().await.map_err(map_err)?;
    Ok(Some(added))
}

/// [`Store::get_migration_job`](crate::Store::get_migration_job).
pub(super) async fn get_migration_job(
    store: &SqliteStore,
    id: &str,
) -> Result<Option<MigrationJob>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM migration_jobs WHERE id = ?1"
    ))
    .bind(id)
    .fetch_optional(&store.pool)
    .await
    .map_err(map_err)?;
    row.as_ref().map(job_from_row).transpose().map_err(map_err)
}

/// [`Store::list_migration_jobs`](crate::Store::list_migration_jobs).
pub(super) async fn list_migration_jobs(
    store: &SqliteStore,
    states: &[&str],
) -> Result<Vec<MigrationJob>, StoreError> {
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
    let rows = query.fetch_all(&store.pool).await.map_err(map_err)?;
    rows.iter()
        .map(job_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)
}

/// [`Store::set_migration_job_state`](crate::Store::set_migration_job_state).
pub(super) async fn set_migration_job_state(
    store: &SqliteStore,
    id: &str,
    from: &[&str],
    to: &str,
    now_ms: i64,
    audit: &AuditRecord,
) -> Result<Transition, StoreError> {
    // BEGIN IMMEDIATE: the state read below cannot change before our update.
    let mut tx = store.begin_write().await?;
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

/// [`Store::claim_migration_items`](crate::Store::claim_migration_items).
pub(super) async fn claim_migration_items(
    store: &SqliteStore,
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
    let mut tx = store.begin_write().await?;
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
    .bind(after.map(|k| k.version.get()))
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

/// [`Store::commit_migration_batch`](crate::Store::commit_migration_batch).
pub(super) async fn commit_migration_batch(
    store: &SqliteStore,
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
    let mut tx = store.begin_write().await?;
    let job: Option<String> = sqlx::query_scalar("SELECT state FROM migration_jobs WHERE id = ?1")
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
    if job.as_deref() != Some(job_state::RUNNING) {
        return Ok(None);
    }
    if !all_held(&mut tx, job_id, worker, items).await? {
        return Ok(None);
    }
    let mut results = Vec::with_capacity(items.len());
    let mut settlements = Vec::with_capacity(items.len());
    for i in items {
        let (result, settlement) = commit_item(&mut tx, job_id, i).await?;
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

/// Whether every item of the batch is still pending and held by `worker`.
async fn all_held(
    conn: &mut SqliteConnection,
    job_id: &str,
    worker: &str,
    items: &[ItemCommit<'_>],
) -> Result<bool, StoreError> {
    for i in items {
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM migration_items \
             WHERE job_id = ?1 AND account = ?2 AND shard = ?3 AND version = ?4 \
               AND state = 'pending' AND claimed_by = ?5",
        )
        .bind(job_id)
        .bind(i.account)
        .bind(i.shard)
        .bind(i.version.get())
        .bind(worker)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
        if held.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Commit one item of a batch: its move (a compare-and-swap on the wrap the worker read)
/// and its settlement; its result and what it adds to the job's counters.
async fn commit_item<'a>(
    conn: &mut SqliteConnection,
    job_id: &str,
    i: &ItemCommit<'a>,
) -> Result<(CommitResult, Settlement<'a>), StoreError> {
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
            .bind(i.version.get())
            .bind(i.old_wrapped_dek)
            .bind(backend)
            .bind(key_ref)
            .bind(key_version)
            .bind(wrapped_dek)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?
            .rows_affected();
            if replaced == 1 {
                refuse_destroyed(conn, backend, *key_version).await?;
                (CommitResult::Committed, Settlement::done())
            } else {
                (CommitResult::RowChanged, Settlement::skipped())
            }
        }
        ItemOutcome::Skipped => (CommitResult::Committed, Settlement::skipped()),
        ItemOutcome::Failed { error } => (CommitResult::Committed, Settlement::failed(error)),
    };
    sqlx::query(
        "UPDATE migration_items SET state = ?5, error = ?6, lease_until = NULL \
         WHERE job_id = ?1 AND account = ?2 AND shard = ?3 AND version = ?4",
    )
    .bind(job_id)
    .bind(i.account)
    .bind(i.shard)
    .bind(i.version.get())
    .bind(settlement.item_state)
    .bind(settlement.error)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok((result, settlement))
}

/// [`Store::migration_failures`](crate::Store::migration_failures).
pub(super) async fn migration_failures(
    store: &SqliteStore,
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
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            Ok(MigrationFailure {
                account: r.try_get("account")?,
                shard: r.try_get("shard")?,
                version: version_of(r, "version")?,
                error: r.try_get("error")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(map_err)
}
