//! The row mappers and column lists both stores share: a record is read from the same
//! columns of the same tables on PostgreSQL and SQLite, so each mapper is written once,
//! generic over the driver's row type (`PgRow`, `SqliteRow`). The SQL that reads the rows
//! stays with each store (placeholders and locking differ).

use shardgate_policy::Version;
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::{
    AccountRecord, AuditRecord, AuditSegment, IdempotencyRecord, KeyVersionRecord, MigrationJob,
    MigrationSelector, ShardVersionRow, TokenRecord,
};

/// The `audit_events` columns an [`AuditRecord`] is read from and written to, in order.
pub(crate) const AUDIT_COLUMNS: &str =
    "chain_id, seq, ts_ms, request_id, actor, action, account, shard, \
     version, backend, outcome, detail, prev_tag, tag, credential";

/// The `audit_segments` columns an [`AuditSegment`] is read from and written to, in order.
pub(crate) const SEGMENT_COLUMNS: &str =
    "chain_id, first_seq, last_seq, min_ts_ms, max_ts_ms, prev_tag, last_tag, tags_sha256, \
     object_key, object_sha256, object_bytes, manifest_key, manifest_sha256, \
     prev_manifest_sha256, archived_ms";

/// The `key_versions` columns a [`KeyVersionRecord`] is read from, in order.
pub(crate) const KEY_COLUMNS: &str =
    "backend, key_version, key_ref, state, created_ms, changed_ms, \
     changed_by, reserved_upto";

/// The `migration_jobs` columns a [`MigrationJob`] is read from.
pub(crate) const JOB_COLUMNS: &str =
    "id, sel_account, sel_from_backend, sel_key_version_below, state, \
     total, done, failed, skipped, last_error, created_at, updated_at, created_by, catch_up_at";

/// The `idempotency_keys` columns an [`IdempotencyRecord`] is read from and written to.
pub(crate) const IDEM_COLUMNS: &str = "scope, key, request_hash, status, body_json, created_at";

/// A `shard_versions` row (with the columns of `SHARD_COLUMNS`).
pub(crate) fn shard_from_row<R>(r: &R) -> Result<ShardVersionRow, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i16: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(ShardVersionRow {
        account: r.try_get("account")?,
        shard: r.try_get("shard")?,
        version: version_of(r, "version")?,
        format_version: r.try_get("format_version")?,
        backend: r.try_get("backend")?,
        key_ref: r.try_get("key_ref")?,
        key_version: r.try_get("key_version")?,
        wrapped_dek: r.try_get("wrapped_dek")?,
        nonce: r.try_get("nonce")?,
        ciphertext: r.try_get("ciphertext")?,
        key_commitment: r.try_get("key_commitment")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
    })
}

/// A shard version column: a stored number below 1 is a decode error, never a version.
pub(crate) fn version_of<R>(r: &R, column: &'static str) -> Result<Version, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    Version::new(r.try_get(column)?).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: Box::new(e),
    })
}

/// A nullable shard version column (`MAX(version)` of no rows is NULL).
pub(crate) fn opt_version_of<R>(r: &R, column: &'static str) -> Result<Option<Version>, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    Option<i64>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let n: Option<i64> = r.try_get(column)?;
    n.map(Version::new)
        .transpose()
        .map_err(|e| sqlx::Error::ColumnDecode {
            index: column.to_string(),
            source: Box::new(e),
        })
}

/// An `api_tokens` row; `scopes` is stored comma-separated.
pub(crate) fn token_from_row<R>(r: &R) -> Result<TokenRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let scopes: String = r.try_get("scopes")?;
    Ok(TokenRecord {
        token_id: r.try_get("token_id")?,
        name: r.try_get("name")?,
        sha256: r.try_get("sha256")?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        account_prefix: r.try_get("account_prefix")?,
        created_ms: r.try_get("created_ms")?,
        expires_ms: r.try_get("expires_ms")?,
    })
}

/// An `audit_events` row (with the columns of [`AUDIT_COLUMNS`]).
pub(crate) fn audit_from_row<R>(r: &R) -> Result<AuditRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(AuditRecord {
        chain_id: r.try_get("chain_id")?,
        seq: r.try_get("seq")?,
        ts_ms: r.try_get("ts_ms")?,
        request_id: r.try_get("request_id")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        account: r.try_get("account")?,
        shard: r.try_get("shard")?,
        version: r.try_get("version")?,
        backend: r.try_get("backend")?,
        outcome: r.try_get("outcome")?,
        detail: r.try_get("detail")?,
        credential: r.try_get("credential")?,
        prev_tag: r.try_get("prev_tag")?,
        tag: r.try_get("tag")?,
    })
}

/// An `audit_segments` row (with the columns of [`SEGMENT_COLUMNS`]).
pub(crate) fn segment_from_row<R>(r: &R) -> Result<AuditSegment, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(AuditSegment {
        chain_id: r.try_get("chain_id")?,
        first_seq: r.try_get("first_seq")?,
        last_seq: r.try_get("last_seq")?,
        min_ts_ms: r.try_get("min_ts_ms")?,
        max_ts_ms: r.try_get("max_ts_ms")?,
        prev_tag: r.try_get("prev_tag")?,
        last_tag: r.try_get("last_tag")?,
        tags_sha256: r.try_get("tags_sha256")?,
        object_key: r.try_get("object_key")?,
        object_sha256: r.try_get("object_sha256")?,
        object_bytes: r.try_get("object_bytes")?,
        manifest_key: r.try_get("manifest_key")?,
        manifest_sha256: r.try_get("manifest_sha256")?,
        prev_manifest_sha256: r.try_get("prev_manifest_sha256")?,
        archived_ms: r.try_get("archived_ms")?,
    })
}

/// A `migration_jobs` row (with the columns of [`JOB_COLUMNS`]).
pub(crate) fn job_from_row<R>(r: &R) -> Result<MigrationJob, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(MigrationJob {
        id: r.try_get("id")?,
        selector: MigrationSelector {
            account: r.try_get("sel_account")?,
            from_backend: r.try_get("sel_from_backend")?,
            key_version_below: r.try_get("sel_key_version_below")?,
        },
        state: r.try_get("state")?,
        total: r.try_get("total")?,
        done: r.try_get("done")?,
        failed: r.try_get("failed")?,
        skipped: r.try_get("skipped")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        created_by: r.try_get("created_by")?,
        catch_up_at: r.try_get("catch_up_at")?,
    })
}

/// An `idempotency_keys` row (with the columns of [`IDEM_COLUMNS`]).
pub(crate) fn idem_from_row<R>(r: &R) -> Result<IdempotencyRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i32: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(IdempotencyRecord {
        scope: r.try_get("scope")?,
        key: r.try_get("key")?,
        request_hash: r.try_get("request_hash")?,
        status: r.try_get("status")?,
        body_json: r.try_get("body_json")?,
        created_at: r.try_get("created_at")?,
    })
}

/// A `key_versions` row (with the columns of [`KEY_COLUMNS`]).
pub(crate) fn key_from_row<R>(r: &R) -> Result<KeyVersionRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(KeyVersionRecord {
        backend: r.try_get("backend")?,
        key_version: r.try_get("key_version")?,
        key_ref: r.try_get("key_ref")?,
        state: r
            .try_get::<String, _>("state")?
            .parse()
            .map_err(|e| sqlx::Error::ColumnDecode {
                index: "state".to_string(),
                source: Box::new(e),
            })?,
        created_ms: r.try_get("created_ms")?,
        changed_ms: r.try_get("changed_ms")?,
        changed_by: r.try_get("changed_by")?,
        reserved_upto: r.try_get("reserved_upto")?,
    })
}

/// The columns [`account_from_row`] reads.
pub(crate) const ACCOUNT_COLUMNS: &str =
    "account, tier, created_at, updated_at, keep_versions, requested_tier, attributes";

/// An `accounts` row (with its column names).
pub(crate) fn account_from_row<R>(r: &R) -> Result<AccountRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(AccountRecord {
        account: r.try_get("account")?,
        tier: r.try_get("tier")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        keep_versions: r.try_get("keep_versions")?,
        requested_tier: r.try_get("requested_tier")?,
        attributes: r.try_get("attributes")?,
    })
}
