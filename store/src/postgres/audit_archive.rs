//! The audit archive on PostgreSQL: reading a chain's recorded segments, recording one
//! through the SECURITY DEFINER function `audit_archive_record` (the only writer of
//! `audit_segments`) and deleting the hot rows recorded segments cover through
//! `audit_archive_delete` (the only way audit rows leave the hot table; migration 0021),
//! checking a segment's rows a step at a time ahead of its record (`audit_archive_check`,
//! migration 0022),
//! the archiver's lease, and the search of the hot table (`audit_query`).

use super::{map_err, PgStore};
use crate::rows::{segment_from_row, SEGMENT_COLUMNS};
use crate::{AuditSegment, StoreError};

/// [`Store::audit_segments_between`](crate::Store::audit_segments_between).
pub(super) async fn audit_segments_between(
    store: &PgStore,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditSegment>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {SEGMENT_COLUMNS} FROM audit_segments \
         WHERE ($1::BIGINT IS NULL OR max_ts_ms >= $1) AND ($2::BIGINT IS NULL OR min_ts_ms < $2) \
         ORDER BY min_ts_ms, chain_id, first_seq LIMIT $3"
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
    store: &PgStore,
    chain_id: &str,
) -> Result<Vec<AuditSegment>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {SEGMENT_COLUMNS} FROM audit_segments WHERE chain_id = $1 ORDER BY first_seq"
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

/// [`Store::record_audit_segment`](crate::Store::record_audit_segment).
pub(super) async fn record_audit_segment(
    store: &PgStore,
    s: &AuditSegment,
) -> Result<u64, StoreError> {
    let covered: i64 = sqlx::query_scalar(
        "SELECT audit_archive_record($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
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
    .fetch_one(&store.pool)
    .await
    .map_err(map_err)?;
    Ok(u64::try_from(covered).unwrap_or(0))
}

/// [`Store::check_audit_range`](crate::Store::check_audit_range).
pub(super) async fn check_audit_range(
    store: &PgStore,
    chain_id: &str,
    first_seq: i64,
    (from, to): (i64, i64),
) -> Result<u64, StoreError> {
    let checked: i64 = sqlx::query_scalar("SELECT audit_archive_check($1, $2, $3, $4)")
        .bind(chain_id)
        .bind(first_seq)
        .bind(from)
        .bind(to)
        .fetch_one(&store.pool)
        .await
        .map_err(map_err)?;
    Ok(u64::try_from(checked).unwrap_or(0))
}

/// [`Store::delete_archived_audit`](crate::Store::delete_archived_audit).
pub(super) async fn delete_archived_audit(
    store: &PgStore,
    chain_id: &str,
    limit: i64,
) -> Result<u64, StoreError> {
    let gone: i64 = sqlx::query_scalar("SELECT audit_archive_delete($1, $2)")
        .bind(chain_id)
        .bind(limit)
        .fetch_one(&store.pool)
        .await
        .map_err(map_err)?;
    Ok(u64::try_from(gone).unwrap_or(0))
}

/// [`Store::take_lease`](crate::Store::take_lease).
pub(super) async fn take_lease(
    store: &PgStore,
    name: &str,
    holder: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<bool, StoreError> {
    let held: Option<String> = sqlx::query_scalar(
        "INSERT INTO audit_archive_leases (name, holder, expires_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_ms = EXCLUDED.expires_ms \
         WHERE audit_archive_leases.holder = EXCLUDED.holder OR audit_archive_leases.expires_ms < $4 \
         RETURNING holder",
    )
    .bind(name)
    .bind(holder)
    .bind(now_ms.saturating_add(ttl_ms))
    .bind(now_ms)
    .fetch_optional(&store.pool)
    .await
    .map_err(map_err)?;
    Ok(held.is_some())
}

/// [`Store::release_lease`](crate::Store::release_lease).
pub(super) async fn release_lease(
    store: &PgStore,
    name: &str,
    holder: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE audit_archive_leases SET expires_ms = 0 WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(holder)
        .execute(&store.pool)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// [`Store::search_audit`](crate::Store::search_audit).
pub(super) async fn search_audit(
    store: &PgStore,
    query: &crate::AuditQuery,
) -> Result<Vec<crate::AuditRecord>, StoreError> {
    let mut qb = crate::audit_query::search_sql::<sqlx::Postgres>(query);
    let rows = qb.build().fetch_all(&store.pool).await.map_err(map_err)?;
    rows.iter()
        .map(crate::rows::audit_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)
}
