//! Key versions on SQLite: registering and listing them, their state changes (a destroy
//! refused while shard versions still use the key), wrap reservations, and the check that
//! refuses a row change under a destroyed key version.

use sqlx::sqlite::SqliteConnection;

use super::audit::insert_audit;
use super::{map_err, SqliteStore};
use crate::keys::parse_state;
use crate::rows::{key_from_row, KEY_COLUMNS};
use crate::{
    AuditRecord, KeyRefCount, KeyState, KeyStateChange, KeyTransition, KeyVersionRecord,
    NewKeyVersion, Reservation, StoreError,
};

/// Refuse a row change under a destroyed key version (run inside the write transaction,
/// which holds the write lock, so no destroy can interleave).
pub(super) async fn refuse_destroyed(
    conn: &mut SqliteConnection,
    backend: &str,
    key_version: i64,
) -> Result<(), StoreError> {
    let state: Option<String> = sqlx::query_scalar(
        "SELECT state FROM key_versions WHERE backend = ?1 AND key_version = ?2",
    )
    .bind(backend)
    .bind(key_version)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    if state.as_deref().map(parse_state).transpose()? == Some(KeyState::Destroyed) {
        return Err(StoreError::KeyDestroyed {
            backend: backend.to_string(),
            key_version,
        });
    }
    Ok(())
}

/// [`Store::list_key_versions`](crate::Store::list_key_versions).
pub(super) async fn list_key_versions(
    store: &SqliteStore,
) -> Result<Vec<KeyVersionRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM key_versions ORDER BY backend, key_version"
    ))
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(key_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)
}

/// [`Store::register_key_versions`](crate::Store::register_key_versions).
pub(super) async fn register_key_versions(
    store: &SqliteStore,
    versions: &[NewKeyVersion],
    now_ms: i64,
) -> Result<u64, StoreError> {
    if versions.is_empty() {
        return Ok(0);
    }
    let mut tx = store.begin_write().await?;
    let mut added = 0;
    for v in versions {
        // An `active` row that would be a second active version of its backend hits
        // the partial unique index and is skipped by DO NOTHING: it is registered as
        // decrypt-only instead.
        for state in [v.state, KeyState::DecryptOnly] {
            let n = sqlx::query(&format!(
                "INSERT INTO key_versions ({KEY_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, 'registered', 0) ON CONFLICT DO NOTHING"
            ))
            .bind(&v.backend)
            .bind(v.key_version)
            .bind(&v.key_ref)
            .bind(state.as_str())
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
            added += n;
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM key_versions WHERE backend = ?1 AND key_version = ?2",
            )
            .bind(&v.backend)
            .bind(v.key_version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            if exists.is_some() {
                break;
            }
        }
    }
    tx.commit().await.map_err(map_err)?;
    Ok(added)
}

/// [`Store::set_key_state`](crate::Store::set_key_state).
pub(super) async fn set_key_state(
    store: &SqliteStore,
    change: &KeyStateChange<'_>,
    audit: &AuditRecord,
) -> Result<KeyTransition, StoreError> {
    // BEGIN IMMEDIATE: one writer, so the reference count below cannot change before the
    // state does (every shard write re-checks the state under the same lock).
    let mut tx = store.begin_write().await?;
    let current: Option<String> = sqlx::query_scalar(
        "SELECT state FROM key_versions WHERE backend = ?1 AND key_version = ?2",
    )
    .bind(change.backend)
    .bind(change.key_version)
    .fetch_optional(&mut *tx)
    .await
    .map_err(map_err)?;
    let Some(current) = current.as_deref().map(parse_state).transpose()? else {
        return Ok(KeyTransition::NotFound);
    };
    if current != change.from || !current.may_become(change.to) {
        return Ok(KeyTransition::WrongState(current));
    }
    if change.to == KeyState::Active {
        let active: Option<i64> = sqlx::query_scalar(
            "SELECT key_version FROM key_versions WHERE backend = ?1 AND state = 'active'",
        )
        .bind(change.backend)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        if active != change.demote {
            return Ok(KeyTransition::WrongState(current));
        }
        sqlx::query(
            "UPDATE key_versions SET state = 'decrypt-only', changed_ms = ?2, changed_by = ?3 \
             WHERE backend = ?1 AND state = 'active'",
        )
        .bind(change.backend)
        .bind(change.now_ms)
        .bind(change.actor)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
    }
    if change.to == KeyState::Destroyed {
        let refs: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM shard_versions WHERE backend = ?1 AND key_version = ?2",
        )
        .bind(change.backend)
        .bind(change.key_version)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if refs > 0 {
            return Ok(KeyTransition::Referenced(refs));
        }
    }
    let row = sqlx::query(&format!(
        "UPDATE key_versions SET state = ?3, changed_ms = ?4, changed_by = ?5 \
         WHERE backend = ?1 AND key_version = ?2 RETURNING {KEY_COLUMNS}"
    ))
    .bind(change.backend)
    .bind(change.key_version)
    .bind(change.to.as_str())
    .bind(change.now_ms)
    .bind(change.actor)
    .fetch_one(&mut *tx)
    .await
    .map_err(map_err)?;
    let record = key_from_row(&row).map_err(map_err)?;
    insert_audit(&mut tx, audit).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(KeyTransition::Done(record))
}

/// [`Store::reserve_key_wraps`](crate::Store::reserve_key_wraps).
pub(super) async fn reserve_key_wraps(
    store: &SqliteStore,
    backend: &str,
    key_version: i64,
    block: i64,
    limit: i64,
) -> Result<Reservation, StoreError> {
    let mut tx = store.begin_write().await?;
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT state, reserved_upto FROM key_versions WHERE backend = ?1 AND key_version = ?2",
    )
    .bind(backend)
    .bind(key_version)
    .fetch_optional(&mut *tx)
    .await
    .map_err(map_err)?;
    let Some((state, from)) = row else {
        return Ok(Reservation::NotActive);
    };
    if parse_state(&state)? != KeyState::Active {
        return Ok(Reservation::NotActive);
    }
    if from >= limit {
        return Ok(Reservation::Exhausted { reserved: from });
    }
    let to = from.saturating_add(block.max(1)).min(limit);
    sqlx::query(
        "UPDATE key_versions SET reserved_upto = ?3 WHERE backend = ?1 AND key_version = ?2",
    )
    .bind(backend)
    .bind(key_version)
    .bind(to)
    .execute(&mut *tx)
    .await
    .map_err(map_err)?;
    tx.commit().await.map_err(map_err)?;
    Ok(Reservation::Granted { from, to })
}

/// [`Store::key_ref_counts`](crate::Store::key_ref_counts).
pub(super) async fn key_ref_counts(store: &SqliteStore) -> Result<Vec<KeyRefCount>, StoreError> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT backend, key_version, COUNT(*) FROM shard_versions \
         GROUP BY backend, key_version ORDER BY backend, key_version",
    )
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    Ok(rows
        .into_iter()
        .map(|(backend, key_version, shard_versions)| KeyRefCount {
            backend,
            key_version,
            shard_versions,
        })
        .collect())
}
