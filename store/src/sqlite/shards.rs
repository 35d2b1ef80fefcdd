//! Shard versions on SQLite: the columns they are read from, inserting one (under the
//! write lock, with its retention), reading one or a batch of them, listing an account's
//! shards, and deleting a shard or one of its versions.

use sqlx::{Row, Sqlite};

use super::audit::insert_audit;
use super::idempotency::{idem_claim, idem_update};
use super::keys::refuse_destroyed;
use super::{count, is_foreign_key_violation, is_unique_violation, map_err, SqliteStore};
use crate::rows::{shard_from_row, version_of};
use crate::Version;
use crate::{
    AuditForCount, AuditRecord, IdempotencyForCount, Idempotent, IdempotentWrite, LateSeal, Prune,
    ShardSummary, ShardVersionRow, StoreError,
};

/// Items per statement of a batch read.
const BATCH_CHUNK: usize = 1000;

pub(super) const SHARD_COLUMNS: &str =
    "account, shard, version, format_version, backend, key_ref, \
     key_version, wrapped_dek, nonce, ciphertext, key_commitment, created_at, created_by";

/// Latest stored version of a shard, read with any executor.
pub(super) async fn latest<'e, E>(
    executor: E,
    account: &str,
    shard: &str,
) -> Result<Option<i64>, sqlx::Error>
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

/// [`Store::list_shards`](crate::Store::list_shards).
pub(super) async fn list_shards(
    store: &SqliteStore,
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
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            Ok(ShardSummary {
                shard: r.try_get("shard")?,
                latest_version: version_of(r, "version")?,
                backend: r.try_get("backend")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(map_err)
}

/// [`Store::latest_version`](crate::Store::latest_version).
pub(super) async fn latest_version(
    store: &SqliteStore,
    account: &str,
    shard: &str,
) -> Result<Option<Version>, StoreError> {
    let latest = latest(&store.pool, account, shard).await.map_err(map_err)?;
    latest
        .map(|n| {
            Version::new(n).map_err(|e| StoreError::Internal(format!("shard_versions row: {e}")))
        })
        .transpose()
}

/// [`Store::insert_shard_version_sealed`](crate::Store::insert_shard_version_sealed).
pub(super) async fn insert_shard_version_sealed(
    store: &SqliteStore,
    row: &ShardVersionRow,
    idem: Option<IdempotentWrite<'_>>,
    retention: Option<Prune<'_>>,
    seal: &mut dyn LateSeal,
) -> Result<Idempotent<Vec<i64>>, StoreError> {
    // The chain first, then the write lock (see `LateSeal::hold`).
    seal.hold().await?;
    // BEGIN IMMEDIATE: we hold the write lock from here, so the latest version cannot
    // change before our insert.
    let mut tx = store.begin_write().await?;
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
    let expected = if row.version == Version::FIRST {
        None
    } else {
        Some(row.version.get() - 1)
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
    .bind(row.version.get())
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
            let latest = latest(&store.pool, &row.account, &row.shard)
                .await
                .unwrap_or(Some(row.version.get()));
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

/// [`Store::get_shard_version`](crate::Store::get_shard_version).
pub(super) async fn get_shard_version(
    store: &SqliteStore,
    account: &str,
    shard: &str,
    version: Option<Version>,
) -> Result<Option<ShardVersionRow>, StoreError> {
    let row = match version {
        None => {
            sqlx::query(&format!(
                "SELECT {SHARD_COLUMNS} FROM shard_versions \
                 WHERE account = ?1 AND shard = ?2 ORDER BY version DESC LIMIT 1"
            ))
            .bind(account)
            .bind(shard)
            .fetch_optional(&store.pool)
            .await
        }
        Some(v) => {
            sqlx::query(&format!(
                "SELECT {SHARD_COLUMNS} FROM shard_versions \
                 WHERE account = ?1 AND shard = ?2 AND version = ?3"
            ))
            .bind(account)
            .bind(shard)
            .bind(v.get())
            .fetch_optional(&store.pool)
            .await
        }
    }
    .map_err(map_err)?;
    row.as_ref()
        .map(shard_from_row)
        .transpose()
        .map_err(map_err)
}

/// [`Store::get_shard_versions`](crate::Store::get_shard_versions).
pub(super) async fn get_shard_versions(
    store: &SqliteStore,
    items: &[(String, String, Option<Version>)],
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
                .bind(version.map(Version::get));
        }
        let rows = query.fetch_all(&store.pool).await.map_err(map_err)?;
        for r in &rows {
            let idx: i64 = r.try_get("idx").map_err(map_err)?;
            if let Some(slot) = usize::try_from(idx).ok().and_then(|i| out.get_mut(i)) {
                *slot = Some(shard_from_row(r).map_err(map_err)?);
            }
        }
    }
    Ok(out)
}

/// [`Store::delete_shard_idempotent`](crate::Store::delete_shard_idempotent).
pub(super) async fn delete_shard_idempotent(
    store: &SqliteStore,
    account: &str,
    shard: &str,
    audit: AuditForCount<'_>,
    idem: Option<(i64, IdempotencyForCount<'_>)>,
) -> Result<Idempotent<i64>, StoreError> {
    let mut tx = store.begin_write().await?;
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

/// [`Store::delete_shard_version_idempotent`](crate::Store::delete_shard_version_idempotent).
pub(super) async fn delete_shard_version_idempotent(
    store: &SqliteStore,
    account: &str,
    shard: &str,
    version: Version,
    audit: &AuditRecord,
    idem: Option<IdempotentWrite<'_>>,
) -> Result<Idempotent<()>, StoreError> {
    // BEGIN IMMEDIATE: serialised with every write, retention included.
    let mut tx = store.begin_write().await?;
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
    .bind(version.get())
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
