//! The audit archive on SQLite: reading a chain's recorded segments, recording one (the
//! checks PostgreSQL's `audit_archive_record` makes, made here, from the steps of
//! `audit_check` when they cover it), deleting the hot rows
//! recorded segments cover a chunk at a time (a trigger refuses the delete of any other audit
//! row), the archiver's lease, and the search of the hot table (`audit_query`).

use sqlx::sqlite::SqliteConnection;

use super::{audit_check, map_err, SqliteStore};
use crate::rows::{segment_from_row, SEGMENT_COLUMNS};
use crate::{AuditSegment, StoreError};

/// [`Store::audit_segments_between`](crate::Store::audit_segments_between).
pub(super) async fn audit_segments_between(
    store: &SqliteStore,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditSegment>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {SEGMENT_COLUMNS} FROM audit_segments \
         WHERE (?1 IS NULL OR max_ts_ms >= ?1) AND (?2 IS NULL OR min_ts_ms < ?2) \
         ORDER BY min_ts_ms, chain_id, first_seq LIMIT ?3"
    ))
    .bind(from_ms)
    .bind(to_ms)
    .bind(limit)
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(segment_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)
}

/// [`Store::audit_segments`](crate::Store::audit_segments).
pub(super) async fn audit_segments(
    store: &SqliteStore,
    chain_id: &str,
) -> Result<Vec<AuditSegment>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {SEGMENT_COLUMNS} FROM audit_segments WHERE chain_id = ?1 ORDER BY first_seq"
    ))
    .bind(chain_id)
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(segment_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)
}

fn refused(s: &AuditSegment, why: &str) -> StoreError {
    StoreError::Internal(format!(
        "audit segment {}:{}: {why}",
        s.chain_id, s.first_seq
    ))
}

/// Whether `s` continues the chain's archived segments (or starts the chain); `Ok(false)`
/// when this very segment is already recorded.
async fn continues(conn: &mut SqliteConnection, s: &AuditSegment) -> Result<bool, StoreError> {
    let same = sqlx::query(&format!(
        "SELECT {SEGMENT_COLUMNS} FROM audit_segments WHERE chain_id = ?1 AND first_seq = ?2"
    ))
    .bind(&s.chain_id)
    .bind(s.first_seq)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    if let Some(row) = same {
        let old = segment_from_row(&row).map_err(map_err)?;
        if old.last_seq == s.last_seq && old.manifest_sha256 == s.manifest_sha256 {
            return Ok(false);
        }
        return Err(refused(
            s,
            "already recorded with another range or manifest",
        ));
    }
    let prev = sqlx::query(&format!(
        "SELECT {SEGMENT_COLUMNS} FROM audit_segments WHERE chain_id = ?1 \
         ORDER BY first_seq DESC LIMIT 1"
    ))
    .bind(&s.chain_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    let ok = match prev {
        Some(row) => {
            let p = segment_from_row(&row).map_err(map_err)?;
            p.last_seq + 1 == s.first_seq
                && p.last_tag == s.prev_tag
                && p.manifest_sha256 == s.prev_manifest_sha256
        }
        None => s.first_seq == 1 && s.prev_tag == [0u8; 32] && s.prev_manifest_sha256 == [0u8; 32],
    };
    if ok {
        Ok(true)
    } else {
        Err(refused(
            s,
            "does not continue the chain's archived segments",
        ))
    }
}

/// [`Store::record_audit_segment`](crate::Store::record_audit_segment).
pub(super) async fn record_audit_segment(
    store: &SqliteStore,
    s: &AuditSegment,
) -> Result<u64, StoreError> {
    let mut tx = store.begin_write().await?;
    if !continues(&mut tx, s).await? {
        return Ok(0);
    }
    if !audit_check::covers(&mut tx, s).await? {
        return Err(refused(
            s,
            "the hot rows are not the ones the segment holds",
        ));
    }
    sqlx::query(&format!(
        "INSERT INTO audit_segments ({SEGMENT_COLUMNS}, event_count) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
    ))
    .bind(&s.chain_id)
    .bind(s.first_seq)
    .bind(s.last_seq)
    .bind(s.min_ts_ms)
    .bind(s.max_ts_ms)
    .bind(&s.prev_tag)
    .bind(&s.last_tag)
    .bind(&s.tags_sha256)
    .bind(&s.object_key)
    .bind(&s.object_sha256)
    .bind(s.object_bytes)
    .bind(&s.manifest_key)
    .bind(&s.manifest_sha256)
    .bind(&s.prev_manifest_sha256)
    .bind(s.archived_ms)
    .bind(s.count())
    .execute(&mut *tx)
    .await
    .map_err(map_err)?;
    audit_check::forget(&mut tx, &s.chain_id).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(u64::try_from(s.count()).unwrap_or(0))
}

/// [`Store::delete_archived_audit`](crate::Store::delete_archived_audit): one range of the
/// primary key, `limit` seqs from the chain's oldest hot row, never past the recorded
/// segments (contiguous from seq 1, so the covered rows are `1..=` the last one's `last_seq`).
pub(super) async fn delete_archived_audit(
    store: &SqliteStore,
    chain_id: &str,
    limit: i64,
) -> Result<u64, StoreError> {
    if limit < 1 {
        return Ok(0);
    }
    let mut tx = store.begin_write().await?;
    let (lo, upto): (Option<i64>, i64) = sqlx::query_as(
        "SELECT (SELECT MIN(seq) FROM audit_events WHERE chain_id = ?1 AND seq >= 1), \
         (SELECT COALESCE(MAX(last_seq), 0) FROM audit_segments WHERE chain_id = ?1)",
    )
    .bind(chain_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(map_err)?;
    let Some(lo) = lo.filter(|lo| *lo <= upto) else {
        return Ok(0);
    };
    let hi = if limit > upto - lo {
        upto
    } else {
        lo + limit - 1
    };
    let gone =
        sqlx::query("DELETE FROM audit_events WHERE chain_id = ?1 AND seq BETWEEN ?2 AND ?3")
            .bind(chain_id)
            .bind(lo)
            .bind(hi)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
    tx.commit().await.map_err(map_err)?;
    Ok(gone)
}

/// [`Store::take_lease`](crate::Store::take_lease).
pub(super) async fn take_lease(
    store: &SqliteStore,
    name: &str,
    holder: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<bool, StoreError> {
    let mut tx = store.begin_write().await?;
    let held = sqlx::query_scalar::<_, String>(
        "INSERT INTO audit_archive_leases (name, holder, expires_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms \
         WHERE audit_archive_leases.holder = excluded.holder OR audit_archive_leases.expires_ms < ?4 \
         RETURNING holder",
    )
    .bind(name)
    .bind(holder)
    .bind(now_ms.saturating_add(ttl_ms))
    .bind(now_ms)
    .fetch_optional(&mut *tx)
    .await
    .map_err(map_err)?;
    tx.commit().await.map_err(map_err)?;
    Ok(held.is_some())
}

/// [`Store::release_lease`](crate::Store::release_lease).
pub(super) async fn release_lease(
    store: &SqliteStore,
    name: &str,
    holder: &str,
) -> Result<(), StoreError> {
    let mut tx = store.begin_write().await?;
    sqlx::query("UPDATE audit_archive_leases SET expires_ms = 0 WHERE name = ?1 AND holder = ?2")
        .bind(name)
        .bind(holder)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
    tx.commit().await.map_err(map_err)
}

/// [`Store::search_audit`](crate::Store::search_audit).
pub(super) async fn search_audit(
    store: &SqliteStore,
    query: &crate::AuditQuery,
) -> Result<Vec<crate::AuditRecord>, StoreError> {
    let mut qb = crate::audit_query::search_sql::<sqlx::Sqlite>(query);
    let rows = qb.build().fetch_all(&store.pool).await.map_err(map_err)?;
    rows.iter()
        .map(crate::rows::audit_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)
}
