//! The cluster's tier policy on PostgreSQL: versions appended (each after the highest, with
//! its audit event), the head polled by every replica, and the accounts a change is measured
//! against, a page at a time.

use sqlx::Row;

use super::audit::insert_audit;
use super::{map_err, PgStore};
use crate::rows::ACCOUNT_COLUMNS;
use crate::AccountRecord;
use crate::{AuditRecord, PolicyVersionRecord, StoreError};

/// [`Store::policy_head`](crate::Store::policy_head).
pub(super) async fn policy_head(store: &PgStore) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar("SELECT max(version) FROM policy_versions")
        .fetch_one(&store.pool)
        .await
        .map_err(map_err)
}

/// [`Store::policy_version`](crate::Store::policy_version).
pub(super) async fn policy_version(
    store: &PgStore,
    version: Option<i64>,
) -> Result<Option<PolicyVersionRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT version, document, digest, created_ms, created_by FROM policy_versions \
         WHERE version = COALESCE($1, (SELECT max(version) FROM policy_versions))",
    )
    .bind(version)
    .fetch_optional(&store.pool)
    .await
    .map_err(map_err)?;
    row.map(|r| -> Result<PolicyVersionRecord, sqlx::Error> {
        Ok(PolicyVersionRecord {
            version: r.try_get(0)?,
            document: r.try_get(1)?,
            digest: r.try_get(2)?,
            created_ms: r.try_get(3)?,
            created_by: r.try_get(4)?,
        })
    })
    .transpose()
    .map_err(map_err)
}

/// [`Store::append_policy_version`](crate::Store::append_policy_version). Two applies of one
/// version meet on the primary key: the loser inserts nothing (`ON CONFLICT DO NOTHING`).
pub(super) async fn append_policy_version(
    store: &PgStore,
    record: &PolicyVersionRecord,
    audit: Option<&AuditRecord>,
) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO policy_versions (version, document, digest, created_ms, created_by) \
         SELECT $1, $2, $3, $4, $5 \
         WHERE COALESCE((SELECT max(version) FROM policy_versions), 0) = $1 - 1 \
         ON CONFLICT (version) DO NOTHING",
    )
    .bind(record.version)
    .bind(&record.document)
    .bind(&record.digest)
    .bind(record.created_ms)
    .bind(&record.created_by)
    .execute(&mut *tx)
    .await
    .map_err(map_err)?
    .rows_affected()
        == 1;
    if !inserted {
        let latest: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM policy_versions")
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.rollback().await.map_err(map_err)?;
        return Err(StoreError::Conflict { latest });
    }
    if let Some(audit) = audit {
        insert_audit(&mut tx, audit).await?;
    }
    tx.commit().await.map_err(map_err)?;
    Ok(())
}

/// [`Store::accounts_page`](crate::Store::accounts_page).
pub(super) async fn accounts_page(
    store: &PgStore,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<AccountRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE $1::text IS NULL OR account > $1 \
         ORDER BY account LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(crate::rows::account_from_row)
        .collect::<Result<_, _>>()
        .map_err(map_err)
}

/// [`Store::mark_retier_due`](crate::Store::mark_retier_due).
pub(super) async fn mark_retier_due(
    store: &PgStore,
    version: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO policy_retier (version, due_ms) VALUES ($1, $2) \
         ON CONFLICT (version) DO UPDATE SET due_ms = excluded.due_ms, done_ms = NULL",
    )
    .bind(version)
    .bind(now_ms)
    .execute(&store.pool)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// [`Store::retier_due`](crate::Store::retier_due).
pub(super) async fn retier_due(store: &PgStore) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar("SELECT min(version) FROM policy_retier WHERE done_ms IS NULL")
        .fetch_one(&store.pool)
        .await
        .map_err(map_err)
}

/// [`Store::mark_retier_done`](crate::Store::mark_retier_done).
pub(super) async fn mark_retier_done(
    store: &PgStore,
    up_to: i64,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE policy_retier SET done_ms = $2 WHERE version <= $1 AND done_ms IS NULL",
    )
    .bind(up_to)
    .bind(now_ms)
    .execute(&store.pool)
    .await
    .map_err(map_err)?;
    Ok(done.rows_affected())
}
