//! Accounts on PostgreSQL: creating one or changing its tier and retention, reading it
//! (alone, with a shard's latest version, or with its counts), and deleting it with its
//! shard versions.

use sqlx::Row;

use super::audit::insert_audit;
use super::idempotency::{idem_claim, idem_update};
use super::{map_err, PgStore};
use crate::rows::{account_from_row, opt_version_of, ACCOUNT_COLUMNS};
use crate::Version;
use crate::{
    AccountRecord, AccountStats, AuditForCount, AuditRecord, DeleteOutcome, ExpectedTier,
    FactsUpdate, IdempotencyForOutcome, Idempotent, KeepVersions, StoreError,
};

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
    store: &PgStore,
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
    let mut tx = store.begin().await?;
    let previous = match set_tier(&mut tx, account, tier, expected, now_ms).await? {
        Some(previous) => previous,
        None => {
            tx.rollback().await.map_err(map_err)?;
            return Err(StoreError::AccountChanged);
        }
    };
    if let KeepVersions::Set(keep) = keep {
        sqlx::query("UPDATE accounts SET keep_versions = $2 WHERE account = $1")
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
        sqlx::query("UPDATE accounts SET requested_tier = $2, attributes = $3 WHERE account = $1")
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

/// Create the account in `tier` or move it there, its row locked first: `Some(previous
/// tier)` (`Some(None)`: created), or `None` when the tier found is not `expected` (nothing
/// written).
async fn set_tier(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    account: &str,
    tier: &str,
    expected: ExpectedTier<'_>,
    now_ms: i64,
) -> Result<Option<Option<String>>, StoreError> {
    // If a concurrent writer creates the account between our read and our insert, the
    // next round finds (and locks) its row.
    for _ in 0..3 {
        let existing: Option<String> =
            sqlx::query_scalar("SELECT tier FROM accounts WHERE account = $1 FOR NO KEY UPDATE")
                .bind(account)
                .fetch_optional(&mut **tx)
                .await
                .map_err(map_err)?;
        if !expected.holds(existing.as_deref()) {
            return Ok(None);
        }
        if let Some(old) = existing {
            if old != tier {
                sqlx::query("UPDATE accounts SET tier = $2, updated_at = $3 WHERE account = $1")
                    .bind(account)
                    .bind(tier)
                    .bind(now_ms)
                    .execute(&mut **tx)
                    .await
                    .map_err(map_err)?;
            }
            return Ok(Some(Some(old)));
        }
        let inserted = sqlx::query(
            "INSERT INTO accounts (account, tier, created_at, updated_at) \
             VALUES ($1, $2, $3, $3) ON CONFLICT (account) DO NOTHING",
        )
        .bind(account)
        .bind(tier)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if inserted == 1 {
            return Ok(Some(None));
        }
    }
    Err(StoreError::Unavailable(format!(
        "account {account} is being created and deleted concurrently"
    )))
}

/// [`Store::get_account`](crate::Store::get_account).
pub(super) async fn get_account(
    store: &PgStore,
    account: &str,
) -> Result<Option<AccountRecord>, StoreError> {
    let mut held = store.held.get().await.map_err(map_err)?;
    let row = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account = $1"
    ))
    .bind(account)
    .fetch_optional(held.conn())
    .await;
    held.finish(&row);
    let row = row.map_err(map_err)?;
    row.as_ref()
        .map(account_from_row)
        .transpose()
        .map_err(map_err)
}

/// [`Store::account_and_latest`](crate::Store::account_and_latest).
pub(super) async fn account_and_latest(
    store: &PgStore,
    account: &str,
    shard: &str,
) -> Result<Option<(AccountRecord, Option<Version>)>, StoreError> {
    // One round trip: every shard write starts with this.
    let mut held = store.held.get().await.map_err(map_err)?;
    let row = sqlx::query(
        "SELECT a.account, a.tier, a.created_at, a.updated_at, a.keep_versions, \
                a.requested_tier, a.attributes, \
                (SELECT MAX(s.version) FROM shard_versions s \
                 WHERE s.account = a.account AND s.shard = $2) AS latest \
         FROM accounts a WHERE a.account = $1",
    )
    .bind(account)
    .bind(shard)
    .fetch_optional(held.conn())
    .await;
    held.finish(&row);
    let row = row.map_err(map_err)?;
    row.as_ref()
        .map(|r| Ok((account_from_row(r)?, opt_version_of(r, "latest")?)))
        .transpose()
        .map_err(map_err)
}

/// [`Store::account_stats`](crate::Store::account_stats).
pub(super) async fn account_stats(
    store: &PgStore,
    account: &str,
    current_backend: &str,
) -> Result<AccountStats, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(DISTINCT shard) AS shard_count, \
                COALESCE(SUM(CASE WHEN backend <> $2 THEN 1 ELSE 0 END), 0)::BIGINT \
                    AS versions_elsewhere \
         FROM shard_versions WHERE account = $1",
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
    store: &PgStore,
    account: &str,
    audit: AuditForCount<'_>,
    idem: Option<(i64, IdempotencyForOutcome<'_>)>,
) -> Result<Idempotent<DeleteOutcome>, StoreError> {
    let mut tx = store.begin().await?;
    if let Some((expired_before_ms, build)) = idem {
        let empty = DeleteOutcome {
            shards: 0,
            versions: 0,
        };
        if let Some(existing) = idem_claim(&mut tx, &build(empty), expired_before_ms).await? {
            return Ok(Idempotent::Replay(existing));
        }
    }
    // FOR UPDATE waits for in-flight inserts (their foreign key holds KEY SHARE on the
    // row) and blocks new ones.
    let exists = sqlx::query("SELECT 1 FROM accounts WHERE account = $1 FOR UPDATE")
        .bind(account)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?
        .is_some();
    if !exists {
        return Err(StoreError::AccountNotFound);
    }
    let counts = sqlx::query(
        "WITH deleted AS (DELETE FROM shard_versions WHERE account = $1 RETURNING shard) \
         SELECT COUNT(*) AS versions, COUNT(DISTINCT shard) AS shards FROM deleted",
    )
    .bind(account)
    .fetch_one(&mut *tx)
    .await
    .map_err(map_err)?;
    let versions: i64 = counts.try_get("versions").map_err(map_err)?;
    let shards: i64 = counts.try_get("shards").map_err(map_err)?;
    sqlx::query("DELETE FROM accounts WHERE account = $1")
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
