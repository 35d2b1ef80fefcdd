//! What the database schema must hold for this build: the runtime role's privileges, the
//! append-only tables, and the comparison of the applied migrations with the build's.

use crate::StoreError;

/// The table privileges the gateway's runtime PostgreSQL role needs, and nothing more: what
/// `scripts/sql/grants.sql` grants (a test compares the two after applying the script). The
/// append-only tables ([`APPEND_ONLY_TABLES`]) get SELECT and INSERT only: nothing at
/// runtime updates or deletes an audit row. `SELECT … FOR UPDATE/FOR SHARE` needs UPDATE,
/// which the tables locked that way have.
pub const RUNTIME_PRIVILEGES: &[(&str, &[&str])] = &[
    ("accounts", &["SELECT", "INSERT", "UPDATE", "DELETE"]),
    ("shard_versions", &["SELECT", "INSERT", "UPDATE", "DELETE"]),
    ("audit_events", &["SELECT", "INSERT"]),
    ("audit_chains", &["SELECT", "INSERT"]),
    // Policy versions: appended by `policy apply` (through a gateway or the CLI), never
    // changed, so what placed a write stays on record.
    ("policy_versions", &["SELECT", "INSERT"]),
    // Re-tier passes of policy applies: recorded due, then marked done.
    ("policy_retier", &["SELECT", "INSERT", "UPDATE"]),
    // Operator overrides of breakers: appended (with their audit event), never changed.
    ("breaker_overrides", &["SELECT", "INSERT"]),
    // Dual-control requests: stored, then approved once; never deleted.
    ("approvals", &["SELECT", "INSERT", "UPDATE"]),
    // Archived audit segments: read only. Recorded by the SECURITY DEFINER functions
    // `audit_archive_record` (and `audit_archive_prune`, kept for an earlier release) alone,
    // which the runtime role may EXECUTE: whoever could insert a segment row could fake
    // coverage. Covered hot rows leave through `audit_archive_delete`. The steps of a
    // segment's check (`audit_archive_checks`) are written by `audit_archive_check` alone: the
    // runtime role holds nothing on that table.
    ("audit_segments", &["SELECT"]),
    // The steps of a segment's check: written by the SECURITY DEFINER function
    // `audit_archive_check` alone (whoever could write a step could fake a check).
    ("audit_archive_checks", &[]),
    // The archiver's lease: one archiver at a time across replicas.
    ("audit_archive_leases", &["SELECT", "INSERT", "UPDATE"]),
    ("migration_jobs", &["SELECT", "INSERT", "UPDATE"]),
    ("migration_items", &["SELECT", "INSERT", "UPDATE"]),
    (
        "idempotency_keys",
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    // KEK versions: registered when first seen, moved through their states by the admin
    // API, and their wrap counters advanced in reserved blocks; never deleted (a destroyed
    // version stays listed).
    ("key_versions", &["SELECT", "INSERT", "UPDATE"]),
    // Tokens and revocations are read (reloaded) at runtime; only the owner role adds or
    // revokes them (`token create --save`, `token revoke`), so the runtime role's
    // credentials cannot mint a token or undo a revocation.
    ("api_tokens", &["SELECT"]),
    ("token_revocations", &["SELECT"]),
    // Read by `check_schema` to see that the schema is current.
    ("_sqlx_migrations", &["SELECT"]),
];

/// Tables whose rows are never updated or deleted once written: the runtime role holds no
/// UPDATE, DELETE or TRUNCATE on them.
pub const APPEND_ONLY_TABLES: &[&str] = &["audit_events", "audit_chains", "audit_segments"];

/// The most rows one step of a segment's check reads
/// ([`Store::check_audit_range`](crate::Store::check_audit_range)); PostgreSQL's
/// `audit_archive_check` holds the same bound.
pub const MAX_AUDIT_CHECK_STEP: i64 = 100_000;

/// The functions the runtime role may EXECUTE (`scripts/sql/grants.sql`), with their
/// argument types as PostgreSQL names them.
pub const RUNTIME_FUNCTIONS: &[&str] = &[
    "audit_archive_check(text, bigint, bigint, bigint)",
    "audit_archive_delete(text, bigint)",
    "audit_archive_prune(text, bigint, bigint, bigint, bigint, bytea, bytea, bytea, text, bytea, \
     bigint, text, bytea, bytea, bigint)",
    "audit_archive_record(text, bigint, bigint, bigint, bigint, bytea, bytea, bytea, text, bytea, \
     bigint, text, bytea, bytea, bigint)",
];

/// What [`Store::check_schema`](crate::Store::check_schema) found besides missing pieces (which
/// are errors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaCheck {
    /// Privileges the connected role holds on [`APPEND_ONLY_TABLES`] that a runtime role
    /// should not (`"UPDATE on audit_events"`, ...): empty when the role layout of docs/security.md,
    /// "Database least privilege", is in place. Always empty on SQLite, which has no roles.
    pub audit_writable: Vec<String>,
    /// Applied migration versions this build does not know (the database was migrated by a
    /// newer build).
    pub newer_migrations: Vec<i64>,
}

/// Compare the applied migrations (`version, success, checksum` rows of `_sqlx_migrations`)
/// with a build's: `Err` naming the pending, failed or changed ones, else the versions this
/// build does not know.
pub(crate) fn compare_migrations(
    migrator: &sqlx::migrate::Migrator,
    applied: &[(i64, bool, Vec<u8>)],
) -> Result<Vec<i64>, StoreError> {
    let mut pending = Vec::new();
    for m in migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        match applied.iter().find(|(v, _, _)| *v == m.version) {
            None => pending.push(format!("{:04}_{}", m.version, m.description)),
            Some((_, false, _)) => {
                return Err(StoreError::Internal(format!(
                    "migration {:04} ({}) failed part-way and is marked dirty: fix the database, then run `shardgate db migrate`",
                    m.version, m.description
                )))
            }
            Some((_, true, checksum)) if checksum.as_slice() != &*m.checksum => {
                return Err(StoreError::Internal(format!(
                    "migration {:04} ({}) was applied from a different file than this build's",
                    m.version, m.description
                )))
            }
            Some(_) => {}
        }
    }
    if !pending.is_empty() {
        return Err(StoreError::Internal(format!(
            "the database schema is behind this build (not applied: {}); with `[store] migrate = false` the gateway runs no DDL: run `shardgate db migrate` as the migration role (docs/security.md, \"Database least privilege\")",
            pending.join(", ")
        )));
    }
    Ok(applied
        .iter()
        .map(|(v, _, _)| *v)
        .filter(|v| migrator.iter().all(|m| m.version != *v))
        .collect())
}

/// The answer of [`Store::check_schema`](crate::Store::check_schema) on a database never migrated.
pub(crate) fn no_schema_error() -> StoreError {
    StoreError::Internal(
        "the database has no shardgate schema (no _sqlx_migrations table): run `shardgate db migrate` as the migration role first (docs/security.md, \"Database least privilege\")".to_string(),
    )
}
