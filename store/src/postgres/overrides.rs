//! Operator overrides of backend breakers on PostgreSQL: appended with their audit event,
//! read by every replica past the last one it applied, and each backend's newest at start-up.

use sqlx::Row;

use super::audit::insert_audit;
use super::{is_unique_violation, map_err, PgStore};
use crate::{AuditRecord, BreakerOverride, StoreError};

const COLUMNS: &str = "id, backend, action, created_ms, expires_ms, created_by";

fn from_row(r: &sqlx::postgres::PgRow) -> Result<BreakerOverride, sqlx::Error> {
    Ok(BreakerOverride {
        id: r.try_get(0)?,
        backend: r.try_get(1)?,
        action: r.try_get(2)?,
        created_ms: r.try_get(3)?,
        expires_ms: r.try_get(4)?,
        created_by: r.try_get(5)?,
    })
}

/// The transaction-scoped advisory lock that numbers breaker overrides ("SGOV").
const OVERRIDES_LOCK: i64 = 0x5347_4f56;

/// [`Store::insert_breaker_override`](crate::Store::insert_breaker_override): the id is the
/// highest plus one. Inserts take [`OVERRIDES_LOCK`] first, so they number one after the
/// other (without it, six at once met on the primary key and the last could lose five rounds
/// in a row: seen in CI); the primary key still guards a writer that skips the lock.
pub(super) async fn insert_breaker_override(
    store: &PgStore,
    o: &BreakerOverride,
    audit: &AuditRecord,
) -> Result<i64, StoreError> {
    for _ in 0..5 {
        let mut tx = store.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(OVERRIDES_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let inserted: Result<i64, sqlx::Error> = sqlx::query_scalar(
            "INSERT INTO breaker_overrides (id, backend, action, created_ms, expires_ms, created_by) \
             SELECT COALESCE(max(id), 0) + 1, $1, $2, $3, $4, $5 FROM breaker_overrides \
             RETURNING id",
        )
        .bind(&o.backend)
        .bind(&o.action)
        .bind(o.created_ms)
        .bind(o.expires_ms)
        .bind(&o.created_by)
        .fetch_one(&mut *tx)
        .await;
        match inserted {
            Ok(id) => {
                insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(map_err)?;
                return Ok(id);
            }
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await.map_err(map_err)?;
            }
            Err(e) => return Err(map_err(e)),
        }
    }
    Err(StoreError::Unavailable(
        "breaker overrides kept racing; retry".into(),
    ))
}

/// [`Store::breaker_overrides_after`](crate::Store::breaker_overrides_after).
pub(super) async fn breaker_overrides_after(
    store: &PgStore,
    after_id: i64,
    limit: i64,
) -> Result<Vec<BreakerOverride>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM breaker_overrides WHERE id > $1 ORDER BY id LIMIT $2"
    ))
    .bind(after_id)
    .bind(limit)
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(from_row)
        .collect::<Result<_, _>>()
        .map_err(map_err)
}

/// [`Store::latest_breaker_overrides`](crate::Store::latest_breaker_overrides).
pub(super) async fn latest_breaker_overrides(
    store: &PgStore,
) -> Result<Vec<BreakerOverride>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM breaker_overrides WHERE id IN \
         (SELECT max(id) FROM breaker_overrides GROUP BY backend) ORDER BY id"
    ))
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(from_row)
        .collect::<Result<_, _>>()
        .map_err(map_err)
}
