//! Private files (keys, tokens): created 0600 from the start; refused when group- or
//! other-accessible.

use std::path::Path;

/// Why a private file is refused.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    /// IO.
    #[error("{0}")]
    Io(std::io::Error),
    /// Mode allows group or others.
    #[error("mode {0:o} allows group or others")]
    Insecure(u32),
}

/// Refuse a file readable or writable by group or others.
pub fn check_private(path: &Path) -> Result<(), PrivateFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(PrivateFileError::Io)?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::Insecure(mode));
    }
    Ok(())
}

/// Create (or truncate) a file with mode 0600 and write `bytes`.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
