//! Shard versions on PostgreSQL, apart from their writes (`shard_writes`): the columns
//! they are read from, reading one or a batch of them, listing an account's shards, and
//! deleting a shard or one of its versions.

use sqlx::{Postgres, Row};

use super::audit::insert_audit;
use super::idempotency::{idem_claim, idem_update};
use super::{map_err, PgStore};
use crate::rows::{shard_from_row, version_of};
use crate::Version;
use crate::{
    AuditForCount, AuditRecord, IdempotencyForCount, Idempotent, IdempotentWrite, ShardSummary,
    ShardVersionRow, StoreError,
};

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

pub(super) const SHARD_COLUMNS: &str = shard_columns!();

/// Bind `rows` as one array per column of `SHARD_COLUMNS`, in its order.
pub(super) fn bind_shard_rows<'q>(
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    rows: &[&'q ShardVersionRow],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    q.bind(rows.iter().map(|r| r.account.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.shard.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version.get()).collect::<Vec<_>>())
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

/// Latest stored version of a shard, read with any executor.
pub(super) async fn latest<'e, E>(
    executor: E,
    account: &str,
    shard: &str,
) -> Result<Option<i64>, sqlx::Error>
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

/// [`Store::list_shards`](crate::Store::list_shards).
pub(super) async fn list_shards(
    store: &PgStore,
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
    store: &PgStore,
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

/// [`Store::get_shard_version`](crate::Store::get_shard_version).
pub(super) async fn get_shard_version(
    store: &PgStore,
    account: &str,
    shard: &str,
    version: Option<Version>,
) -> Result<Option<ShardVersionRow>, StoreError> {
    let mut held = store.held.get().await.map_err(map_err)?;
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
            .bind(v.get())
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

/// [`Store::get_shard_versions`](crate::Store::get_shard_versions).
pub(super) async fn get_shard_versions(
    store: &PgStore,
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
                .bind(version.map(Version::get));
        }
        let mut held = store.held.get().await.map_err(map_err)?;
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

/// [`Store::delete_shard_idempotent`](crate::Store::delete_shard_idempotent).
pub(super) async fn delete_shard_idempotent(
    store: &PgStore,
    account: &str,
    shard: &str,
    audit: AuditForCount<'_>,
    idem: Option<(i64, IdempotencyForCount<'_>)>,
) -> Result<Idempotent<i64>, StoreError> {
    let mut tx = store.begin().await?;
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

/// [`Store::delete_shard_version_idempotent`](crate::Store::delete_shard_version_idempotent).
pub(super) async fn delete_shard_version_idempotent(
    store: &PgStore,
    account: &str,
    shard: &str,
    version: Version,
    audit: &AuditRecord,
    idem: Option<IdempotentWrite<'_>>,
) -> Result<Idempotent<()>, StoreError> {
    let mut tx = store.begin().await?;
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
