//! Idempotency records on PostgreSQL: claiming a key first in a write's transaction,
//! replacing the claimed answer, reading one, and purging expired ones.

use sqlx::postgres::PgConnection;
use sqlx::Postgres;

use super::{count, map_err, PgStore};
use crate::rows::{idem_from_row, IDEM_COLUMNS};
use crate::{IdempotencyRecord, StoreError};

async fn idem_get<'e, E>(
    executor: E,
    scope: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query(&format!(
        "SELECT {IDEM_COLUMNS} FROM idempotency_keys WHERE scope = $1 AND key = $2"
    ))
    .bind(scope)
    .bind(key)
    .fetch_optional(executor)
    .await
    .map_err(map_err)?
    .map(|r| idem_from_row(&r))
    .transpose()
    .map_err(map_err)
}

/// Claim `(scope, key)` first in a write transaction: drop an expired record of the key,
/// then insert ours (`ON CONFLICT DO NOTHING`, which on PostgreSQL waits for a concurrent
/// holder of the key to commit or roll back). `Some(existing)` when a live record holds it.
pub(super) async fn idem_claim(
    conn: &mut PgConnection,
    rec: &IdempotencyRecord,
    expired_before_ms: i64,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at < $3")
        .bind(&rec.scope)
        .bind(&rec.key)
        .bind(expired_before_ms)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    let inserted = sqlx::query(&format!(
        "INSERT INTO idempotency_keys ({IDEM_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (scope, key) DO NOTHING"
    ))
    .bind(&rec.scope)
    .bind(&rec.key)
    .bind(&rec.request_hash)
    .bind(rec.status)
    .bind(&rec.body_json)
    .bind(rec.created_at)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?
    .rows_affected();
    if inserted == 1 {
        return Ok(None);
    }
    match idem_get(&mut *conn, &rec.scope, &rec.key).await? {
        Some(existing) => Ok(Some(existing)),
        // Purged between our insert and read: let the client retry.
        None => Err(StoreError::Unavailable(
            "idempotency record changed concurrently; retry".to_string(),
        )),
    }
}

/// Replace the claimed record's answer (a delete learns its count late).
pub(super) async fn idem_update(
    conn: &mut PgConnection,
    rec: &IdempotencyRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idempotency_keys SET request_hash = $3, status = $4, body_json = $5 \
         WHERE scope = $1 AND key = $2",
    )
    .bind(&rec.scope)
    .bind(&rec.key)
    .bind(&rec.request_hash)
    .bind(rec.status)
    .bind(&rec.body_json)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// [`Store::get_idempotency`](crate::Store::get_idempotency).
pub(super) async fn get_idempotency(
    store: &PgStore,
    scope: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    idem_get(&store.pool, scope, key).await
}

/// [`Store::purge_idempotency`](crate::Store::purge_idempotency).
pub(super) async fn purge_idempotency(store: &PgStore, before_ms: i64) -> Result<i64, StoreError> {
    let n = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(before_ms)
        .execute(&store.pool)
        .await
        .map_err(map_err)?
        .rows_affected();

    count(n)
}
