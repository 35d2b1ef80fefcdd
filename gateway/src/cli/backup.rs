//! `shardgate backup --to PATH`: an online, consistent copy of an SQLite store, and the list
//! of what such a copy (or a `pg_dump`) does not hold. The procedure around it is in
//! docs/backup.md.

use crate::app::config::{BackendConfig, Config};
use std::path::{Path, PathBuf};

/// Why no backup was written.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Decided from the store URL, before connecting: the answer must not depend on whether
    /// the server happens to be reachable.
    #[error("{}", shardgate_store::BackupError::UsePgDump)]
    Postgres,
    /// Connecting to SQLite would create an empty database there and back that up.
    #[error("there is no database at {0} (check --config / --data-dir)")]
    NoDatabase(PathBuf),
    /// Another process cannot see an in-memory database, let alone copy it.
    #[error("the store is an in-memory SQLite database: there is nothing to back up")]
    InMemory,
    /// The store URL is neither PostgreSQL nor SQLite.
    #[error("the store url must start with postgres:// or sqlite:")]
    UnknownStore,
    /// Opening the store failed.
    #[error(transparent)]
    Store(#[from] shardgate_store::StoreError),
    /// The copy failed (or its path exists); nothing was left behind.
    #[error(transparent)]
    Backup(#[from] shardgate_store::BackupError),
}

/// A written backup.
#[derive(Debug, Clone)]
pub struct Written {
    /// The new file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

pub use crate::app::config::sqlite_file;

/// Copy the configured SQLite store to `to` (a new file, 0600) while gateways keep serving.
pub async fn backup(cfg: &Config, to: &Path) -> Result<Written, BackupError> {
    let url = cfg.store_url();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Err(BackupError::Postgres);
    }
    if !url.starts_with("sqlite:") {
        return Err(BackupError::UnknownStore);
    }
    let db = sqlite_file(&url).ok_or(BackupError::InMemory)?;
    if !db.exists() {
        return Err(BackupError::NoDatabase(db));
    }
    // No `migrate`: a backup copies the database as it is, whatever schema version it has.
    let store = shardgate_store::connect(&url, 1).await?;
    store.backup_to(to).await?;
    let bytes = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
    Ok(Written {
        path: to.to_path_buf(),
        bytes,
    })
}

/// What restoring this configuration needs besides the database: one line per item (paths,
/// key ids and labels, which are not secrets; never key material).
pub fn kept_elsewhere(cfg: &Config, config_file: Option<&Path>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(f) = config_file {
        out.push(format!("configuration: {}", f.display()));
    }
    for (name, backend) in &cfg.backends {
        out.push(match backend {
            BackendConfig::Local { key_file, .. } => format!(
                "backend {name} (local): keyring file {} (copy it after the database: it must hold every key version the copy references)",
                key_file.display()
            ),
            BackendConfig::AwsKms(k) => format!(
                "backend {name} (aws-kms): KMS key {} in {} (must stay enabled and never be deleted while a backup references it)",
                k.key_id, k.region
            ),
            BackendConfig::Pkcs11(e) => {
                let token = match (&e.hsm.token_label, e.hsm.slot_id) {
                    (Some(label), _) => format!("token {label:?}"),
                    (None, Some(slot)) => format!("slot {slot}"),
                    (None, None) => "token ?".to_string(),
                };
                let pin = match (&e.hsm.pin_env, &e.hsm.pin_file) {
                    (Some(var), _) => format!("PIN from ${var}"),
                    (None, Some(f)) => format!("PIN file {}", f.display()),
                    (None, None) => "no PIN source".to_string(),
                };
                format!(
                    "backend {name} (pkcs11): HSM {token}, key objects {}/v*, {pin} (back them up with the HSM's own tools)",
                    e.hsm.kek_label
                )
            }
        });
    }
    out.push(format!(
        "audit key: {} (without it the audit log cannot be verified)",
        cfg.audit_key_file().display()
    ));
    if let Some(f) = &cfg.admin_token_file {
        out.push(format!("admin token: {}", f.display()));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_file_of_urls() {
        assert_eq!(
            sqlite_file("sqlite:///x/db?mode=rwc"),
            Some(PathBuf::from("/x/db"))
        );
        assert_eq!(sqlite_file("sqlite:rel.db"), Some(PathBuf::from("rel.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://h/db"), None);
    }

    #[tokio::test]
    async fn postgres_is_refused_without_connecting() {
        let mut cfg = Config::embedded(Path::new("/nonexistent"));
        // Nothing listens on port 1: only a decision made before connecting answers this.
        cfg.store.url = Some("postgres://nobody@127.0.0.1:1/none".into());
        let err = backup(&cfg, Path::new("/nonexistent/b.db"))
            .await
            .unwrap_err();
        assert!(matches!(err, BackupError::Postgres), "{err:?}");
        assert!(err.to_string().contains("pg_dump -Fc"), "{err}");
    }

    #[test]
    fn every_backend_and_the_audit_key_are_listed() {
        let cfg = Config::embedded(Path::new("/d"));
        let lines = kept_elsewhere(&cfg, None);
        assert!(lines.iter().any(|l| l.contains("/d/local.keyring")));
        assert!(lines.iter().any(|l| l.contains("/d/audit.key")));
        assert!(lines.iter().any(|l| l.contains("/d/admin.token")));
    }
}
