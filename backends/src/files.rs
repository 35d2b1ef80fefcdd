//! Secret files on disk, one set of rules for every crate: the backends use it for the
//! keyring and the PIN file, and the gateway re-exports it as `shardgate::files` for the
//! audit key, the admin token, the TLS key and the database password file. It lives here,
//! in the lowest crate that reads or writes secret files, because the backends cannot import
//! from the gateway.
//!
//! - A file shardgate **creates** ([`write_private`], [`create_private`]) is first written
//!   under a fresh, unpredictable name in the target directory, created exclusively
//!   (`O_CREAT|O_EXCL`, which never opens an existing file and never follows a symlink) with
//!   mode 0600, synced, then renamed into place, and the directory is synced. So nothing is
//!   ever written through a name someone else could have planted, and the final name is a
//!   regular 0600 file, never a link.
//! - A file an operator **provides** ([`read_secret`]) may be a symlink, as the files of a
//!   Kubernetes Secret volume are (`key -> ..data/key`): it is opened, and the OPENED
//!   descriptor is checked ([`refusal`], fstat), never the path, so the bytes read are those
//!   of the file checked. Refused: anything but a regular file, group- or world-writable
//!   files, files others may read, and files owned by neither this user nor root.
//!   Group-readable is allowed (`defaultMode: 0440` with an `fsGroup`).

use std::io::{Read, Write};
use std::path::Path;
use zeroize::Zeroizing;

/// Why a provided secret file was not read. The messages never hold the file's content; the
/// caller names the file.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// Opening or reading failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// The opened file's type, mode or owner.
    #[error(
        "refused: {0} (chmod 600 it, or 640 when a group must read it; owned by this user or root)"
    )]
    Refused(String),
}

/// Why a provided secret file with this status is refused (`None`: accepted). `euid` is the
/// process's effective user id. Pure, so that every rule is unit-tested.
pub fn refusal(meta: &std::fs::Metadata, euid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if !meta.is_file() {
        return Some("not a regular file".into());
    }
    let mode = meta.mode() & 0o7777;
    let why = if mode & 0o002 != 0 {
        "others may write it"
    } else if mode & 0o020 != 0 {
        "its group may write it"
    } else if mode & 0o004 != 0 {
        "others may read it"
    } else if meta.uid() != euid && meta.uid() != 0 {
        return Some(format!(
            "owned by uid {}, neither this process's user (uid {euid}) nor root",
            meta.uid()
        ));
    } else {
        return None;
    };
    Some(format!("mode {mode:03o}: {why}"))
}

/// Open `path` (following symlinks), check the opened file ([`refusal`]) and read it.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: a FIFO planted at the path fails the check instead of hanging the open.
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(SecretFileError::Io)?;
    let meta = file.metadata().map_err(SecretFileError::Io)?;
    if let Some(why) = refusal(&meta, rustix::process::geteuid().as_raw()) {
        return Err(SecretFileError::Refused(why));
    }
    // Sized up front, so that the secret is not left behind in reallocated buffers.
    let len = usize::try_from(meta.len()).unwrap_or(0);
    let mut bytes = Zeroizing::new(Vec::with_capacity(len.saturating_add(1)));
    file.read_to_end(&mut bytes).map_err(SecretFileError::Io)?;
    Ok(bytes)
}

/// [`read_secret`] as UTF-8 text.
pub fn read_secret_text(path: &Path) -> Result<Zeroizing<String>, SecretFileError> {
    let mut bytes = read_secret(path)?;
    if std::str::from_utf8(&bytes).is_err() {
        return Err(SecretFileError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8 text",
        )));
    }
    // Moves the buffer (no copy); the checked bytes cannot fail a second time.
    let text = String::from_utf8(std::mem::take(&mut *bytes)).unwrap_or_default();
    Ok(Zeroizing::new(text))
}

/// Write `bytes` to `path` as a new 0600 file that replaces whatever is at `path` (a file or
/// a symlink is replaced, never written through). Creates missing parent directories (0700).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    persist_private(path, bytes, true)
}

/// Like [`write_private`], but fails with [`std::io::ErrorKind::AlreadyExists`] when
/// anything (a file, a symlink, even a dangling one) is at `path`: for files created once,
/// which must never replace one that exists.
pub fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    persist_private(path, bytes, false)
}

fn persist_private(path: &Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("secret");
    // `.NAME.` + random characters + `.tmp`, created O_EXCL with mode 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    if replace {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn plant(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        chmod(path, mode);
    }

    fn assert_private_regular(path: &Path) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert!(
            meta.file_type().is_file(),
            "{} is not a regular file",
            path.display()
        );
        assert_eq!(meta.mode() & 0o7777, 0o600, "{}", path.display());
    }

    #[test]
    fn modes_and_owners() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        plant(&f, "x", 0o600);
        let me = rustix::process::geteuid().as_raw();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, true),
            (0o440, true),
            (0o660, false),
            (0o604, false),
            (0o644, false),
            (0o602, false),
            (0o666, false),
        ] {
            chmod(&f, mode);
            let meta = std::fs::metadata(&f).unwrap();
            assert_eq!(refusal(&meta, me).is_none(), ok, "mode {mode:o}");
        }
        chmod(&f, 0o600);
        let meta = std::fs::metadata(&f).unwrap();
        // Owned by root or by us: accepted; by anyone else: refused.
        let owner = meta.uid();
        assert!(refusal(&meta, owner).is_none());
        if owner != 0 {
            assert!(refusal(&meta, owner + 1).unwrap().contains("owned by uid"));
        } else {
            assert!(
                refusal(&meta, 4242).is_none(),
                "root-owned files are accepted"
            );
        }
        let d = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(refusal(&d, me).unwrap(), "not a regular file");
    }

    #[test]
    fn read_secret_refuses_what_others_may_read_and_names_no_content() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        plant(&f, "hunter2-secret", 0o644);
        let e = read_secret(&f).unwrap_err().to_string();
        assert!(e.contains("mode 644: others may read it"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        chmod(&f, 0o620);
        let e = read_secret(&f).unwrap_err().to_string();
        assert!(e.contains("group may write"), "{e}");
        chmod(&f, 0o640);
        assert_eq!(&read_secret(&f).unwrap()[..], b"hunter2-secret");
    }

    /// The layout of a Kubernetes Secret volume: `key -> ..data/key`, `..data -> ..2026_x`,
    /// files 0440 (`defaultMode: 0440` with an `fsGroup`).
    #[test]
    fn mounted_secret_symlinks_load() {
        let dir = tempfile::tempdir().unwrap();
        let ts = dir.path().join("..2026_12_06_00_00_00.1");
        std::fs::create_dir(&ts).unwrap();
        plant(&ts.join("key"), "mounted", 0o440);
        symlink("..2026_12_06_00_00_00.1", dir.path().join("..data")).unwrap();
        symlink("..data/key", dir.path().join("key")).unwrap();
        assert_eq!(
            &*read_secret_text(&dir.path().join("key")).unwrap(),
            "mounted"
        );
        // The target's mode is what counts, not the link's (0777).
        chmod(&ts.join("key"), 0o444);
        assert!(read_secret(&dir.path().join("key")).is_err());
    }

    #[test]
    fn write_private_replaces_a_planted_symlink_and_never_writes_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("attacker-file");
        plant(&outside, "", 0o666);
        let path = dir.path().join("sub").join("secret");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        symlink(&outside, &path).unwrap();
        write_private(&path, b"s3cret").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"");
        assert_private_regular(&path);
        assert_eq!(std::fs::read(&path).unwrap(), b"s3cret");
        // A world-readable file at the name is replaced by a 0600 one (a new inode: whoever
        // holds the old one open never sees the new bytes).
        plant(&path, "old", 0o666);
        let old_ino = std::fs::metadata(&path).unwrap().ino();
        write_private(&path, b"new").unwrap();
        assert_private_regular(&path);
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), old_ino);
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"]);
    }

    #[test]
    fn create_private_never_replaces_anything() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let path = dir.path().join("secret");
        symlink(&target, &path).unwrap();
        let e = create_private(&path, b"s3cret").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(!target.exists(), "wrote through a dangling symlink");
        std::fs::remove_file(&path).unwrap();
        create_private(&path, b"s3cret").unwrap();
        assert_private_regular(&path);
        let e = create_private(&path, b"other").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"s3cret");
    }
}
