//! Dual-control approvals on SQLite: a pending request stored with its audit event, read
//! back, and approved once (by another credential, before it expires) with its audit event.

use sqlx::Row;

use super::audit::insert_audit;
use super::{map_err, SqliteStore};
use crate::{ApprovalRecord, AuditRecord, StoreError};

const COLUMNS: &str = "id, operation, request, summary, requested_by, requested_credential, \
                       created_ms, expires_ms, state, approved_by, approved_credential, approved_ms";

fn from_row(r: &sqlx::sqlite::SqliteRow) -> Result<ApprovalRecord, sqlx::Error> {
    Ok(ApprovalRecord {
        id: r.try_get(0)?,
        operation: r.try_get(1)?,
        request: r.try_get(2)?,
        summary: r.try_get(3)?,
        requested_by: r.try_get(4)?,
        requested_credential: r.try_get(5)?,
        created_ms: r.try_get(6)?,
        expires_ms: r.try_get(7)?,
        state: r.try_get(8)?,
        approved_by: r.try_get(9)?,
        approved_credential: r.try_get(10)?,
        approved_ms: r.try_get(11)?,
    })
}

/// [`Store::insert_approval`](crate::Store::insert_approval).
pub(super) async fn insert_approval(
    store: &SqliteStore,
    a: &ApprovalRecord,
    audit: &AuditRecord,
) -> Result<(), StoreError> {
    let mut tx = store.begin_write().await?;
    sqlx::query(&format!(
        "INSERT INTO approvals ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', \
         NULL, NULL, NULL)"
    ))
    .bind(&a.id)
    .bind(&a.operation)
    .bind(&a.request)
    .bind(&a.summary)
    .bind(&a.requested_by)
    .bind(&a.requested_credential)
    .bind(a.created_ms)
    .bind(a.expires_ms)
    .execute(&mut *tx)
    .await
    .map_err(map_err)?;
    insert_audit(&mut tx, audit).await?;
    tx.commit().await.map_err(map_err)
}

/// [`Store::get_approval`](crate::Store::get_approval).
pub(super) async fn get_approval(
    store: &SqliteStore,
    id: &str,
) -> Result<Option<ApprovalRecord>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"))
        .bind(id)
        .fetch_optional(&store.pool)
        .await
        .map_err(map_err)?;
    row.as_ref().map(from_row).transpose().map_err(map_err)
}

/// [`Store::approve`](crate::Store::approve).
pub(super) async fn approve(
    store: &SqliteStore,
    id: &str,
    by: &str,
    credential: &str,
    now_ms: i64,
    audit: &AuditRecord,
) -> Result<bool, StoreError> {
    let mut tx = store.begin_write().await?;
    let n = sqlx::query(
        "UPDATE approvals SET state = 'approved', approved_by = ?2, approved_credential = ?3, \
         approved_ms = ?4 WHERE id = ?1 AND state = 'pending' AND expires_ms > ?4 \
         AND requested_credential <> ?3",
    )
    .bind(id)
    .bind(by)
    .bind(credential)
    .bind(now_ms)
    .execute(&mut *tx)
    .await
    .map_err(map_err)?
    .rows_affected();
    if n != 1 {
        tx.rollback().await.map_err(map_err)?;
        return Ok(false);
    }
    insert_audit(&mut tx, audit).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(true)
}
