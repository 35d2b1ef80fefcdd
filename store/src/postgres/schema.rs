//! Schema upkeep on PostgreSQL: running the migrations, checking the applied ones and the
//! database role's privileges against this build, and the liveness ping.

use sqlx::migrate::MigrateError;
use sqlx::postgres::PgPool;

use super::{map_err, PgStore};
use crate::StoreError;

fn migrate_err(e: MigrateError) -> StoreError {
    match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => map_err(e),
        other => StoreError::Internal(format!("migration failed: {other}")),
    }
}

/// Of the `(table, privilege)` pairs, those the current role holds (`held`) or lacks
/// (`!held`), as `"PRIVILEGE on table"`.
async fn privilege_rows(
    pool: &PgPool,
    tables: &[&str],
    privileges: &[&str],
    held: bool,
) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar::<_, String>(
        "SELECT p || ' on ' || t FROM unnest($1::TEXT[], $2::TEXT[]) WITH ORDINALITY AS r(t, p, n) \
         WHERE has_table_privilege(t, p) = $3 ORDER BY n",
    )
    .bind(tables)
    .bind(privileges)
    .bind(held)
    .fetch_all(pool)
    .await
    .map_err(map_err)
}

/// [`Store::migrate`](crate::Store::migrate).
pub(super) async fn migrate(store: &PgStore) -> Result<(), StoreError> {
    // The migrator takes a PostgreSQL advisory lock: replicas may call this concurrently.
    sqlx::migrate!("../migrations/postgres")
        .run(&store.pool)
        .await
        .map_err(migrate_err)
}

/// [`Store::check_schema`](crate::Store::check_schema).
pub(super) async fn check_schema(store: &PgStore) -> Result<crate::SchemaCheck, StoreError> {
    let applied = sqlx::query_as::<_, (i64, bool, Vec<u8>)>(
        "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&store.pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => {
            crate::no_schema_error()
        }
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
            StoreError::Internal(
                "the database role may not read _sqlx_migrations (SQLSTATE 42501): apply scripts/sql/grants.sql after every `shardgate db migrate` (docs/security.md, \"Database least privilege\")".to_string(),
            )
        }
        _ => map_err(e),
    })?;
    let newer_migrations =
        crate::compare_migrations(&sqlx::migrate!("../migrations/postgres"), &applied)?;
    let (tables, privileges): (Vec<&str>, Vec<&str>) = crate::RUNTIME_PRIVILEGES
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
        .unzip();
    let mut missing = privilege_rows(&store.pool, &tables, &privileges, false).await?;
    for f in crate::RUNTIME_FUNCTIONS {
        let may: bool = sqlx::query_scalar("SELECT has_function_privilege($1, 'EXECUTE')")
            .bind(f)
            .fetch_one(&store.pool)
            .await
            .map_err(map_err)?;
        if !may {
            missing.push(format!("EXECUTE on {f}"));
        }
    }
    if !missing.is_empty() {
        let role: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&store.pool)
            .await
            .map_err(map_err)?;
        return Err(StoreError::Internal(format!(
            "database role {role} lacks {}: apply scripts/sql/grants.sql after every `shardgate db migrate` (docs/security.md, \"Database least privilege\")",
            missing.join(", ")
        )));
    }
    let (tables, privileges): (Vec<&str>, Vec<&str>) = crate::APPEND_ONLY_TABLES
        .iter()
        .flat_map(|t| ["UPDATE", "DELETE", "TRUNCATE"].map(move |p| (*t, p)))
        .unzip();
    let audit_writable = privilege_rows(&store.pool, &tables, &privileges, true).await?;
    Ok(crate::SchemaCheck {
        audit_writable,
        newer_migrations,
    })
}

/// [`Store::ping`](crate::Store::ping).
pub(super) async fn ping(store: &PgStore) -> Result<(), StoreError> {
    sqlx::query("SELECT 1")
        .execute(&store.pool)
        .await
        .map(|_| ())
        .map_err(map_err)
}
