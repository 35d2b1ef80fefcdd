//! Accounts on SQLite: creating one or changing its tier and retention, reading it (alone
//! or with its counts), and deleting it with its shard versions.

use sqlx::{Row, Sqlite};

use super::audit::insert_audit;
use super::idempotency::{idem_claim, idem_update};
use super::{count, map_err, SqliteStore};
use crate::rows::{account_from_row, ACCOUNT_COLUMNS};
use crate::{
    AccountRecord, AccountStats, AuditForCount, AuditRecord, DeleteOutcome, ExpectedTier,
    FactsUpdate, IdempotencyForOutcome, Idempotent, KeepVersions, StoreError,
};

/// Whether the account row exists, read with any executor.
async fn account_exists<'e, E>(executor: E, account: &str) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query("SELECT 1 FROM accounts WHERE account = ?1")
        .bind(account)
        .fetch_optional(executor)
        .await?
        .is_some())
}

/// One account put: what [`Store::put_account_expecting`](crate::Store::put_account_expecting)
/// was asked.
pub(super) struct Put<'a> {
    pub(super) account: &'a str,
    pub(super) tier: &'a str,
    pub(super) expected: ExpectedTier<'a>,
    pub(super) keep: KeepVersions,
    pub(super) facts: FactsUpdate<'a>,
}

/// [`Store::put_account_expecting`](crate::Store::put_account_expecting).
pub(super) async fn put_account_expecting(
    store: &SqliteStore,
    put: Put<'_>,
    now_ms: i64,
    audit: &AuditRecord,
) -> Result<Option<String>, StoreError> {
    let Put {
        account,
        tier,
        expected,
        keep,
        facts,
    } = put;
    // A write transaction (`BEGIN IMMEDIATE`): no other writer between the read and the write.
    let mut tx = store.begin_write().await?;
    let previous: Option<String> =
        sqlx::query_scalar("SELECT tier FROM accounts WHERE account = ?1")
            .bind(account)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
    if !expected.holds(previous.as_deref()) {
        tx.rollback().await.map_err(map_err)?;
        return Err(StoreError::AccountChanged);
    }
    match &previous {
        Some(old) if old == tier => {}
        Some(_) => {
            sqlx::query("UPDATE accounts SET tier = ?2, updated_at = ?3 WHERE account = ?1")
                .bind(account)
                .bind(tier)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        None => {
            sqlx::query(
                "INSERT INTO accounts (account, tier, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?3)",
            )
            .bind(account)
            .bind(tier)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
    }
    if let KeepVersions::Set(keep) = keep {
        sqlx::query("UPDATE accounts SET keep_versions = ?2 WHERE account = ?1")
            .bind(account)
            .bind(keep)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
    }
    if let FactsUpdate::Set {
        requested_tier,
        attributes,
    } = facts
    {
        sqlx::query("UPDATE accounts SET requested_tier = ?2, attributes = ?3 WHERE account = ?1")
            .bind(account)
            .bind(requested_tier)
            .bind(attributes)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
    }
    insert_audit(&mut tx, audit).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(previous)
}

/// [`Store::get_account`](crate::Store::get_account).
pub(super) async fn get_account(
    store: &SqliteStore,
    account: &str,
) -> Result<Option<AccountRecord>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account = ?1"
    ))
    .bind(account)
    .fetch_optional(&store.pool)
    .await
    .map_err(map_err)?;
    row.as_ref()
        .map(account_from_row)
        .transpose()
        .map_err(map_err)
}

/// [`Store::account_stats`](crate::Store::account_stats).
pub(super) async fn account_stats(
    store: &SqliteStore,
    account: &str,
    current_backend: &str,
) -> Result<AccountStats, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(DISTINCT shard) AS shard_count, \
                COALESCE(SUM(CASE WHEN backend <> ?2 THEN 1 ELSE 0 END), 0) \
                    AS versions_elsewhere \
         FROM shard_versions WHERE account = ?1",
    )
    .bind(account)
    .bind(current_backend)
    .fetch_one(&store.pool)
    .await
    .map_err(map_err)?;
    Ok(AccountStats {
        shard_count: row.try_get("shard_count").map_err(map_err)?,
        versions_elsewhere: row.try_get("versions_elsewhere").map_err(map_err)?,
    })
}

/// [`Store::delete_account_idempotent`](crate::Store::delete_account_idempotent).
pub(super) async fn delete_account_idempotent(
    store: &SqliteStore,
    account: &str,
    audit: AuditForCount<'_>,
    idem: Option<(i64, IdempotencyForOutcome<'_>)>,
) -> Result<Idempotent<DeleteOutcome>, StoreError> {
    let mut tx = store.begin_write().await?;
    if let Some((expired_before_ms, build)) = idem {
        let empty = DeleteOutcome {
            shards: 0,
            versions: 0,
        };
        if let Some(existing) = idem_claim(&mut tx, &build(empty), expired_before_ms).await? {
            return Ok(Idempotent::Replay(existing));
        }
    }
    if !account_exists(&mut *tx, account).await.map_err(map_err)? {
        return Err(StoreError::AccountNotFound);
    }
    let shards: i64 =
        sqlx::query_scalar("SELECT COUNT(DISTINCT shard) FROM shard_versions WHERE account = ?1")
            .bind(account)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
    let versions = sqlx::query("DELETE FROM shard_versions WHERE account = ?1")
        .bind(account)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
    let versions = count(versions)?;
    sqlx::query("DELETE FROM accounts WHERE account = ?1")
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
