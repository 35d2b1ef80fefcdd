//! API tokens on PostgreSQL: storing and listing them, and their revocations.

use sqlx::Row;

use super::{is_unique_violation, map_err, PgStore};
use crate::rows::token_from_row;
use crate::{StoreError, TokenRecord, TokenRevocation};

/// A token whose id or hash is already stored is the caller's mistake, not a fault.
fn token_insert_err(e: sqlx::Error) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Internal("a token with that id or hash is already stored".into())
    } else {
        map_err(e)
    }
}

/// [`Store::insert_token`](crate::Store::insert_token).
pub(super) async fn insert_token(store: &PgStore, token: &TokenRecord) -> Result<(), StoreError> {
    let q = sqlx::query(
        "INSERT INTO api_tokens \
         (token_id, name, sha256, scopes, account_prefix, created_ms, expires_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&token.token_id)
    .bind(&token.name)
    .bind(&token.sha256)
    .bind(token.scopes.join(","))
    .bind(&token.account_prefix)
    .bind(token.created_ms)
    .bind(token.expires_ms);
    q.execute(&store.pool)
        .await
        .map(|_| ())
        .map_err(token_insert_err)
}

/// [`Store::tokens`](crate::Store::tokens).
pub(super) async fn tokens(store: &PgStore) -> Result<Vec<TokenRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT token_id, name, sha256, scopes, account_prefix, created_ms, expires_ms \
         FROM api_tokens ORDER BY token_id",
    )
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(token_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)
}

/// [`Store::revoke_token`](crate::Store::revoke_token).
pub(super) async fn revoke_token(
    store: &PgStore,
    token_id: &str,
    at_ms: i64,
    reason: &str,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "INSERT INTO token_revocations (token_id, revoked_ms, reason) VALUES ($1, $2, $3) \
         ON CONFLICT (token_id) DO NOTHING",
    )
    .bind(token_id)
    .bind(at_ms)
    .bind(reason)
    .execute(&store.pool)
    .await
    .map_err(map_err)?
    .rows_affected();
    Ok(n == 1)
}

/// [`Store::token_revocations`](crate::Store::token_revocations).
pub(super) async fn token_revocations(store: &PgStore) -> Result<Vec<TokenRevocation>, StoreError> {
    let rows =
        sqlx::query("SELECT token_id, revoked_ms, reason FROM token_revocations ORDER BY token_id")
            .fetch_all(&store.pool)
            .await
            .map_err(map_err)?;
    rows.iter()
        .map(|r| -> Result<TokenRevocation, sqlx::Error> {
            Ok(TokenRevocation {
                token_id: r.try_get("token_id")?,
                revoked_ms: r.try_get("revoked_ms")?,
                reason: r.try_get("reason")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)
}
