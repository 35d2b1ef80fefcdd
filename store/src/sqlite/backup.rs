//! Online backup of the SQLite database into a new file (`VACUUM INTO`).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{map_err, SqliteStore};
use crate::BackupError;

/// [`Store::backup_to`](crate::Store::backup_to).
pub(super) async fn backup_to(store: &SqliteStore, path: &Path) -> Result<(), BackupError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Io { path, source }
    };
    // Absolute, so that SQLite never reads a name like `file:...` as a URI, and resolves it
    // against the same directory we created the file in.
    let target = std::path::absolute(path).map_err(io(path))?;
    let name = target
        .to_str()
        .ok_or_else(|| BackupError::PathNotUtf8(target.clone()))?
        .to_string();
    // `create_new` refuses any existing path atomically (no check-then-create race), and
    // the copy is born 0600: it holds every wrapped key and the whole audit log. SQLite's
    // VACUUM INTO accepts an existing file only when it is empty, which this one is.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BackupError::Exists(target.clone())
            } else {
                io(&target)(e)
            }
        })?;
    let copied = async {
        // One read transaction: a consistent snapshot, while writers go on (WAL mode).
        sqlx::query("VACUUM INTO ?1")
            .bind(&name)
            .execute(&store.pool)
            .await
            .map_err(map_err)?;
        // VACUUM INTO writes the copy without syncing it: make it durable before
        // reporting success, the file and then its directory entry.
        std::fs::File::open(&target)
            .and_then(|f| f.sync_all())
            .map_err(io(&target))?;
        if let Some(dir) = target.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }
    .await;
    if copied.is_err() {
        // Never leave a partial copy that looks like a backup.
        let _ = std::fs::remove_file(&target);
    }
    copied
}
