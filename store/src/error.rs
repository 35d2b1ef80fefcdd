//! The errors of the store: [`StoreError`] for every method, [`BackupError`] for
//! [`Store::backup_to`](crate::Store::backup_to). Messages never carry row data.

use std::path::PathBuf;

/// Store errors. Messages never carry shard bytes or keys.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The account does not exist.
    #[error("account not found")]
    AccountNotFound,
    /// The shard (or the requested version) does not exist.
    #[error("shard not found")]
    ShardNotFound,
    /// The version being written is not `latest + 1` any more: another writer won.
    #[error("version conflict (latest is {latest:?})")]
    Conflict {
        /// The latest version now stored, if any.
        latest: Option<i64>,
    },
    /// The row's (or re-wrap's) key version is `destroyed` (see [`keys`](crate::keys)): nothing was
    /// written.
    #[error("key version {key_version} of backend {backend} is destroyed")]
    KeyDestroyed {
        /// Backend instance name.
        backend: String,
        /// KEK version.
        key_version: i64,
    },
    /// The account's tier or retention changed while a shard write was in flight (after the
    /// write read them, before it committed), or an account put's expected tier
    /// ([`ExpectedTier`](crate::ExpectedTier)) no longer holds: nothing was written; read
    /// again and write again.
    #[error("the account changed during the write")]
    AccountChanged,
    /// Writing the audit event failed: the whole transaction was rolled back.
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(String),
    /// The database could not be reached (connection, pool timeout, restart).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (schema mismatch, bug).
    #[error("store error: {0}")]
    Internal(String),
}

/// Why [`Store::backup_to`](crate::Store::backup_to) made no copy. Messages carry paths, never
/// row data.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A PostgreSQL store is backed up by the database's own tools, which take a consistent
    /// snapshot of the server (and of every replica's writes) without going through a
    /// gateway.
    #[error(
        "a PostgreSQL store is backed up with `pg_dump -Fc` (see docs/backup.md), not by shardgate"
    )]
    UsePgDump,
    /// The target path exists (a file, a directory, a link): a backup never replaces one.
    #[error("{0} already exists; a backup never overwrites a file: choose a new path")]
    Exists(PathBuf),
    /// The target path is not valid UTF-8 (SQLite takes the name as text).
    #[error("backup path {0} is not valid UTF-8")]
    PathNotUtf8(PathBuf),
    /// Creating, syncing or cleaning up the target failed.
    #[error("backup file {path}: {source}")]
    Io {
        /// The target.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database refused or failed the copy.
    #[error(transparent)]
    Store(#[from] StoreError),
}
