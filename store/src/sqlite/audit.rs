//! The audit trail on SQLite: inserting sealed records, registering a chain, and reading
//! chains, their heads and their events.

use sqlx::sqlite::SqliteConnection;
use sqlx::Row;

use super::{audit_err, map_err, SqliteStore};
use crate::rows::{audit_from_row, AUDIT_COLUMNS};
use crate::{AuditRecord, StoreError};

pub(super) async fn insert_audit(
    conn: &mut SqliteConnection,
    a: &AuditRecord,
) -> Result<(), StoreError> {
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

/// [`Store::append_audit`](crate::Store::append_audit).
pub(super) async fn append_audit(
    store: &SqliteStore,
    records: &[AuditRecord],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin_write().await?;
    for record in records {
        insert_audit(&mut tx, record).await?;
    }
    tx.commit().await.map_err(audit_err)
}

/// [`Store::register_chain`](crate::Store::register_chain).
pub(super) async fn register_chain(
    store: &SqliteStore,
    chain_id: &str,
    started_ms: i64,
    host: &str,
) -> Result<(), StoreError> {
    let mut tx = store.begin_write().await?;
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

/// [`Store::audit_head`](crate::Store::audit_head).
pub(super) async fn audit_head(
    store: &SqliteStore,
    chain_id: &str,
) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
    let row = sqlx::query(
        "SELECT seq, tag FROM (\
           SELECT seq, tag FROM (SELECT seq, tag FROM audit_events WHERE chain_id = ?1 \
                                 ORDER BY seq DESC LIMIT 1) hot \
           UNION ALL \
           SELECT seq, tag FROM (SELECT last_seq AS seq, last_tag AS tag FROM audit_segments \
                                 WHERE chain_id = ?1 ORDER BY first_seq DESC LIMIT 1) archived\
         ) heads ORDER BY seq DESC LIMIT 1",
    )
    .bind(chain_id)
    .fetch_optional(&store.pool)
    .await
    .map_err(map_err)?;
    row.map(|r| -> Result<(i64, Vec<u8>), sqlx::Error> {
        Ok((r.try_get("seq")?, r.try_get("tag")?))
    })
    .transpose()
    .map_err(map_err)
}

/// [`Store::audit_chains`](crate::Store::audit_chains).
pub(super) async fn audit_chains(store: &SqliteStore) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar::<_, String>(
        "SELECT chain_id FROM audit_chains \
         UNION SELECT DISTINCT chain_id FROM audit_events \
         UNION SELECT DISTINCT chain_id FROM audit_segments \
         ORDER BY 1",
    )
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)
}

/// [`Store::audit_events`](crate::Store::audit_events).
pub(super) async fn audit_events(
    store: &SqliteStore,
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
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(audit_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)
}
