//! Schema upkeep on SQLite: running the migrations, checking the applied ones against this
//! build, and the liveness ping.

use sqlx::migrate::MigrateError;

use super::{map_err, SqliteStore};
use crate::StoreError;

fn migrate_err(e: MigrateError) -> StoreError {
    match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => map_err(e),
        other => StoreError::Internal(format!("migration failed: {other}")),
    }
}

/// [`Store::migrate`](crate::Store::migrate).
pub(super) async fn migrate(store: &SqliteStore) -> Result<(), StoreError> {
    sqlx::migrate!("../migrations/sqlite")
        .run(&store.pool)
        .await
        .map_err(migrate_err)
}

/// [`Store::check_schema`](crate::Store::check_schema).
pub(super) async fn check_schema(store: &SqliteStore) -> Result<crate::SchemaCheck, StoreError> {
    let exists: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(&store.pool)
    .await
    .map_err(map_err)?;
    if exists.is_none() {
        return Err(crate::no_schema_error());
    }
    let applied = sqlx::query_as::<_, (i64, bool, Vec<u8>)>(
        "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    let newer_migrations =
        crate::compare_migrations(&sqlx::migrate!("../migrations/sqlite"), &applied)?;
    Ok(crate::SchemaCheck {
        audit_writable: Vec::new(),
        newer_migrations,
    })
}

/// [`Store::ping`](crate::Store::ping).
pub(super) async fn ping(store: &SqliteStore) -> Result<(), StoreError> {
    sqlx::query("SELECT 1")
        .execute(&store.pool)
        .await
        .map(|_| ())
        .map_err(map_err)
}
