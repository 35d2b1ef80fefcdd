//! Migration jobs on PostgreSQL: creating a job with its snapshot of items, reading and
//! changing its state, workers claiming batches of items under a lease, and committing a
//! batch's moves (compare-and-swap on the wraps) with its settlement and audit.

use std::collections::HashSet;

use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::audit::{insert_audit, insert_audits};
use super::keys::refuse_destroyed;

use super::{count, is_unique_violation, map_err, PgStore};
use crate::migration::{Settlement, Totals};
use crate::rows::{job_from_row, shard_from_row, version_of, JOB_COLUMNS};
use crate::{
    job_state, AuditRecord, ClaimedItem, CommitResult, ItemCommit, ItemKey, ItemOutcome, LateSeal,
    MigrationFailure, MigrationJob, MigrationSelector, StoreError, Transition,
};

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
pub(super) const SETTLE_HELD_ITEMS_SQL: &str = "WITH t AS ( \
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
pub(super) fn claim_items_sql(after: bool) -> String {
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

/// [`Store::create_migration_job`](crate::Store::create_migration_job).
pub(super) async fn create_migration_job(
    store: &PgStore,
    id: &str,
    selector: &MigrationSelector,
    now_ms: i64,
    created_by: &str,
    audit: &AuditRecord,
) -> Result<MigrationJob, StoreError> {
    let mut tx = store.begin().await?;
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

/// [`Store::schedule_migration_catch_up`](crate::Store::schedule_migration_catch_up).
pub(super) async fn schedule_migration_catch_up(
    store: &PgStore,
    id: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE migration_jobs SET catch_up_at = $2 WHERE id = $1")
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
    store: &PgStore,
    id: &str,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let mut tx = store.begin().await?;
    // The row lock makes one replica take the snapshot; the others find it cleared.
    let due = sqlx::query(
        "SELECT sel_account, sel_from_backend, sel_key_version_below FROM migration_jobs \
         WHERE id = $1 AND catch_up_at <= $2 FOR UPDATE",
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
         SELECT $1, account, shard, version, 'pending' FROM shard_versions \
         WHERE ($2::TEXT IS NULL OR account = $2) \
           AND ($3::TEXT IS NULL OR backend = $3) \
           AND ($4::BIGINT IS NULL OR key_version < $4) \
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
        "UPDATE migration_jobs SET total = total + $2, catch_up_at = NULL, updated_at = $3 \
         WHERE id = $1",
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
    store: &PgStore,
    id: &str,
) -> Result<Option<MigrationJob>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM migration_jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&store.pool)
    .await
    .map_err(map_err)?;
    row.as_ref().map(job_from_row).transpose().map_err(map_err)
}

/// [`Store::list_migration_jobs`](crate::Store::list_migration_jobs).
pub(super) async fn list_migration_jobs(
    store: &PgStore,
    states: &[&str],
) -> Result<Vec<MigrationJob>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM migration_jobs WHERE state = ANY($1) \
         ORDER BY created_at, id"
    ))
    .bind(states)
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(job_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)
}

/// [`Store::set_migration_job_state`](crate::Store::set_migration_job_state).
pub(super) async fn set_migration_job_state(
    store: &PgStore,
    id: &str,
    from: &[&str],
    to: &str,
    now_ms: i64,
    audit: &AuditRecord,
) -> Result<Transition, StoreError> {
    let mut tx = store.begin().await?;
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

/// [`Store::claim_migration_items`](crate::Store::claim_migration_items).
pub(super) async fn claim_migration_items(
    store: &PgStore,
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
    let mut tx = store.begin().await?;
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
        query = query.bind(&k.account).bind(&k.shard).bind(k.version.get());
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

/// [`Store::commit_migration_batch`](crate::Store::commit_migration_batch).
pub(super) async fn commit_migration_batch(
    store: &PgStore,
    job_id: &str,
    worker: &str,
    items: &[ItemCommit<'_>],
    now_ms: i64,
    seal: &mut dyn LateSeal,
) -> Result<Option<Vec<CommitResult>>, StoreError> {
    if items.is_empty() {
        return Ok(Some(Vec::new()));
    }
    // Settled as if every move lands: a compare-and-swap that finds its row changed is
    // the rare case, corrected below.
    let planned = planned_settlements(items);
    let mut tx = store.begin().await?;
    let held = settle_held(&mut tx, job_id, worker, items, &planned).await?;
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
    let replaced = swap_moved(&mut tx, items).await?;
    let (results, settlements, changed) = sort_out(items, planned, &replaced);
    unsettle_changed(&mut tx, job_id, &changed).await?;
    let total = Settlement::sum(&settlements);
    // Everything above holds row locks but not the caller's audit chain; from here to the
    // commit it holds both (see `LateSeal`). The job row is locked only now, under the
    // chain: a pause or cancel takes the chain first, then that row, so they cannot wait
    // on each other in a cycle.
    let records = seal.seal(&[]).await?;
    crate::check_batch_records(&records, items.len())?;
    // Checked last, under the job's row lock: a pause or cancel that committed before
    // this point wins, and everything above is rolled back.
    let running = add_to_job(&mut tx, job_id, &total, now_ms).await?;
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

/// Each item's settlement if every move lands.
fn planned_settlements<'a>(items: &[ItemCommit<'a>]) -> Vec<Settlement<'a>> {
    items
        .iter()
        .map(|i| match &i.outcome {
            ItemOutcome::Moved { .. } => Settlement::done(),
            ItemOutcome::Skipped => Settlement::skipped(),
            ItemOutcome::Failed { error } => Settlement::failed(error),
        })
        .collect()
}

/// Check that the batch's items are still pending and this worker's, and settle them as
/// `planned`, in one pass (see `SETTLE_HELD_ITEMS_SQL`): the count of items settled.
async fn settle_held(
    conn: &mut PgConnection,
    job_id: &str,
    worker: &str,
    items: &[ItemCommit<'_>],
    planned: &[Settlement<'_>],
) -> Result<u64, StoreError> {
    let accounts: Vec<&str> = items.iter().map(|i| i.account).collect();
    let shards: Vec<&str> = items.iter().map(|i| i.shard).collect();
    let versions: Vec<i64> = items.iter().map(|i| i.version.get()).collect();
    let item_states: Vec<&str> = planned.iter().map(|s| s.item_state).collect();
    let errors: Vec<Option<&str>> = planned.iter().map(|s| s.error).collect();
    // Lock order: the items (in key order, so two workers whose leases overlapped cannot
    // deadlock), then the shard versions, then the job (claims lock items, then the job).
    // The items are checked (still pending, still this worker's) and settled in one pass.
    sqlx::query(SETTLE_HELD_ITEMS_SQL)
        .bind(job_id)
        .bind(&accounts)
        .bind(&shards)
        .bind(&versions)
        .bind(&item_states)
        .bind(&errors)
        .bind(worker)
        .execute(&mut *conn)
        .await
        .map(|done| done.rows_affected())
        .map_err(map_err)
}

/// Replace the wraps of the batch's moved items whose rows still hold the wrap the worker
/// read, refusing a destroyed target key version: the keys of the rows replaced.
async fn swap_moved(
    conn: &mut PgConnection,
    items: &[ItemCommit<'_>],
) -> Result<HashSet<(String, String, i64)>, StoreError> {
    let moved: Vec<&ItemCommit<'_>> = items
        .iter()
        .filter(|i| matches!(i.outcome, ItemOutcome::Moved { .. }))
        .collect();
    let mut replaced = HashSet::new();
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
                cols.version.push(i.version.get());
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
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
        refuse_destroyed(conn, &cols.backend, &cols.key_version).await?;
        for r in rows {
            let key: (String, String, i64) = (
                r.try_get("account").map_err(map_err)?,
                r.try_get("shard").map_err(map_err)?,
                r.try_get("version").map_err(map_err)?,
            );
            replaced.insert(key);
        }
    }
    Ok(replaced)
}

/// Each item's result and settlement once the compare-and-swap is known: a move whose row
/// changed is skipped (its keys in the returned columns, to unsettle).
fn sort_out<'a>(
    items: &[ItemCommit<'a>],
    planned: Vec<Settlement<'a>>,
    replaced: &HashSet<(String, String, i64)>,
) -> (Vec<CommitResult>, Vec<Settlement<'a>>, MovedColumns<'a>) {
    let mut results = Vec::with_capacity(items.len());
    let mut settlements = Vec::with_capacity(items.len());
    let mut changed = MovedColumns::default();
    for (i, planned) in items.iter().zip(planned) {
        let (result, settlement) = match i.outcome {
            ItemOutcome::Moved { .. }
                if !replaced.contains(&(
                    i.account.to_string(),
                    i.shard.to_string(),
                    i.version.get(),
                )) =>
            {
                changed.account.push(i.account);
                changed.shard.push(i.shard);
                changed.version.push(i.version.get());
                (CommitResult::RowChanged, Settlement::skipped())
            }
            _ => (CommitResult::Committed, planned),
        };
        results.push(result);
        settlements.push(settlement);
    }
    (results, settlements, changed)
}

/// Mark the moved items whose row changed as skipped, not done.
async fn unsettle_changed(
    conn: &mut PgConnection,
    job_id: &str,
    changed: &MovedColumns<'_>,
) -> Result<(), StoreError> {
    if !changed.account.is_empty() {
        sqlx::query(UNSETTLE_CHANGED_SQL)
            .bind(job_id)
            .bind(&changed.account)
            .bind(&changed.shard)
            .bind(&changed.version)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// Add the batch's `total` to its job's counters if the job is still running: the count
/// of jobs updated (0: paused or cancelled meanwhile).
async fn add_to_job(
    conn: &mut PgConnection,
    job_id: &str,
    total: &Totals<'_>,
    now_ms: i64,
) -> Result<u64, StoreError> {
    sqlx::query(
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
    .execute(&mut *conn)
    .await
    .map(|done| done.rows_affected())
    .map_err(map_err)
}

/// [`Store::migration_failures`](crate::Store::migration_failures).
pub(super) async fn migration_failures(
    store: &PgStore,
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
