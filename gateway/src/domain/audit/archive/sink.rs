//! Where archived audit segments are kept: a write-once object store. The archiver puts
//! each object only if absent (keys are deterministic, so a re-run or a late duplicate write
//! is harmless), reads it back, and hashes what came back itself.
//!
//! [`DirSink`] is the embedded default (`DATA_DIR/audit-archive/`): each object a file of
//! mode 0400, written under a temporary name, fsynced and linked into place without
//! replacing anything, its directory fsynced; read without following symlinks and checked on
//! the opened descriptor. It is also the one sink the archiver deletes from: a segment whose
//! retention ended ([`ArchiveSink::delete`]); S3 expires its objects itself (a lifecycle
//! rule, under Object Lock), so there the archiver never deletes.

use async_trait::async_trait;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;

/// A sink failed.
#[derive(Debug, thiserror::Error)]
#[error("archive sink {sink}: {why}")]
pub struct SinkError {
    /// Which sink ([`ArchiveSink::describe`]).
    pub sink: String,
    /// What went wrong (no object content).
    pub why: String,
}

/// What a [`ArchiveSink::put_if_absent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The object was written.
    Created,
    /// An object was already at that key; it was left as it was.
    Exists,
}

/// A write-once object store for archived segments.
#[async_trait]
pub trait ArchiveSink: Send + Sync {
    /// Store `bytes` at `key` unless an object is there already; where the sink locks
    /// objects (S3 Object Lock), locked until `retain_until_ms`.
    async fn put_if_absent(
        &self,
        key: &str,
        bytes: &[u8],
        retain_until_ms: Option<i64>,
    ) -> Result<Put, SinkError>;
    /// The object at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError>;
    /// Every key starting with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, SinkError>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
    /// Whether the sink removes expired objects itself (S3: the lifecycle rule, objects
    /// under Object Lock): then the archiver deletes nothing from it. The default: a sink
    /// is never deleted from unless it says otherwise.
    fn expires_by_itself(&self) -> bool {
        true
    }
    /// Remove the object at `key` (an expired segment's): `true` when one was removed,
    /// `false` when none was there (deleting again is harmless). Only called on a sink that
    /// does not expire by itself; the default refuses.
    async fn delete(&self, key: &str) -> Result<bool, SinkError> {
        Err(SinkError {
            sink: self.describe(),
            why: format!("refused deleting {key:?}: this sink expires its objects itself"),
        })
    }
}

/// Objects as files under a directory.
#[derive(Debug, Clone)]
pub struct DirSink {
    root: PathBuf,
}

/// The largest object [`DirSink::get`] reads.
const MAX_OBJECT: u64 = 512 << 20;

impl DirSink {
    /// A sink rooted at `root` (created 0700 on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn err(&self, why: impl std::fmt::Display) -> SinkError {
        SinkError {
            sink: self.describe(),
            why: why.to_string(),
        }
    }

    /// The path of `key`: refused unless it is relative, plain (`A-Z a-z 0-9 . _ - /`) and
    /// has no `.` or `..` component, so no key can leave the root.
    fn path_of(&self, key: &str) -> Result<PathBuf, SinkError> {
        let plain = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        let parts_plain = key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
        if !plain || !parts_plain {
            return Err(self.err(format!("refused object key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    fn put_blocking(&self, key: &str, bytes: &[u8]) -> Result<Put, SinkError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let path = self.path_of(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| self.err(format!("{}: {e}", dir.display())))?;
        if path.symlink_metadata().is_ok() {
            return Ok(Put::Exists);
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".put.")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| self.err(format!("{}: {e}", dir.display())))?;
        let io = |e: std::io::Error| self.err(format!("{key}: {e}"));
        tmp.write_all(bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o400))
            .map_err(io)?;
        match tmp.persist_noclobber(&path) {
            Ok(_) => {}
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Ok(Put::Exists)
            }
            Err(e) => return Err(io(e.error)),
        }
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(Put::Created)
    }

    fn get_blocking(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path_of(key)?;
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits() as i32)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(format!("{key}: {e}"))),
        };
        let meta = file
            .metadata()
            .map_err(|e| self.err(format!("{key}: {e}")))?;
        if !meta.file_type().is_file() {
            return Err(self.err(format!("{key} is not a regular file")));
        }
        let mut out = Vec::with_capacity(usize::try_from(meta.len().min(MAX_OBJECT)).unwrap_or(0));
        (&mut file)
            .take(MAX_OBJECT + 1)
            .read_to_end(&mut out)
            .map_err(|e| self.err(format!("{key}: {e}")))?;
        if out.len() as u64 > MAX_OBJECT {
            return Err(self.err(format!("{key} is larger than {MAX_OBJECT} bytes")));
        }
        Ok(Some(out))
    }

    /// Unlink the file of `key` (the same path [`DirSink::get`] reads; unlink never follows
    /// the last component, and anything but a regular file there is refused), then fsync its
    /// directory so that the removal is durable.
    fn delete_blocking(&self, key: &str) -> Result<bool, SinkError> {
        let path = self.path_of(key)?;
        let io = |e: std::io::Error| self.err(format!("{key}: {e}"));
        match path.symlink_metadata() {
            Ok(meta) if meta.file_type().is_file() => {}
            Ok(_) => return Err(self.err(format!("{key} is not a regular file"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(e)),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(e)),
        }
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(true)
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        // The directory part of the prefix, walked below; keys are filtered by the prefix.
        let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path_of(dir_part)?
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err(format!("{}: {e}", dir.display()))),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.err(e))?;
                let kind = entry.file_type().map_err(|e| self.err(e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // temporary files of puts in flight
                }
                if kind.is_dir() {
                    stack.push(entry.path());
                } else if kind.is_file() {
                    let rel = entry.path();
                    let rel = rel.strip_prefix(&self.root).unwrap_or(&rel);
                    let key = rel.to_string_lossy().into_owned();
                    if key.starts_with(prefix) {
                        out.push(key);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[async_trait]
impl ArchiveSink for DirSink {
    async fn put_if_absent(
        &self,
        key: &str,
        bytes: &[u8],
        _retain_until_ms: Option<i64>,
    ) -> Result<Put, SinkError> {
        let (me, key, bytes) = (self.clone(), key.to_string(), bytes.to_vec());
        tokio::task::spawn_blocking(move || me.put_blocking(&key, &bytes))
            .await
            .map_err(|e| self.err(e))?
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        let (me, key) = (self.clone(), key.to_string());
        tokio::task::spawn_blocking(move || me.get_blocking(&key))
            .await
            .map_err(|e| self.err(e))?
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        let (me, prefix) = (self.clone(), prefix.to_string());
        tokio::task::spawn_blocking(move || me.list_blocking(&prefix))
            .await
            .map_err(|e| self.err(e))?
    }

    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn expires_by_itself(&self) -> bool {
        false
    }

    async fn delete(&self, key: &str) -> Result<bool, SinkError> {
        let (me, key) = (self.clone(), key.to_string());
        tokio::task::spawn_blocking(move || me.delete_blocking(&key))
            .await
            .map_err(|e| self.err(e))?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn dir_sink_writes_once_read_only_and_refuses_keys_leaving_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirSink::new(dir.path().join("archive"));
        assert_eq!(
            sink.put_if_absent("a/b/1.sgseg", b"one", None)
                .await
                .unwrap(),
            Put::Created
        );
        assert_eq!(
            sink.put_if_absent("a/b/1.sgseg", b"two", None)
                .await
                .unwrap(),
            Put::Exists
        );
        assert_eq!(sink.get("a/b/1.sgseg").await.unwrap().unwrap(), b"one");
        assert_eq!(sink.get("a/b/2.sgseg").await.unwrap(), None);
        let mode = std::fs::metadata(dir.path().join("archive/a/b/1.sgseg"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        sink.put_if_absent("a/c/2.sgseg", b"x", None).await.unwrap();
        assert_eq!(
            sink.list("a/").await.unwrap(),
            ["a/b/1.sgseg", "a/c/2.sgseg"]
        );
        assert_eq!(sink.list("a/b/").await.unwrap(), ["a/b/1.sgseg"]);
        for key in ["../x", "/etc/passwd", "a/../../x", "a/./b", "a b", ""] {
            assert!(sink.put_if_absent(key, b"x", None).await.is_err(), "{key}");
        }
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("archive/a/link")).unwrap();
        assert!(sink.get("a/link").await.is_err());
    }

    #[tokio::test]
    async fn dir_sink_delete_is_idempotent_and_refuses_keys_leaving_its_root_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirSink::new(dir.path().join("archive"));
        assert!(!sink.expires_by_itself());
        sink.put_if_absent("a/b/1.sgseg", b"one", None)
            .await
            .unwrap();
        sink.put_if_absent("a/b/2.sgseg", b"two", None)
            .await
            .unwrap();
        // A read-only (0400) object is removed; removing it again, or a key never written,
        // is no error.
        assert!(sink.delete("a/b/1.sgseg").await.unwrap());
        assert_eq!(sink.get("a/b/1.sgseg").await.unwrap(), None);
        assert!(!sink.delete("a/b/1.sgseg").await.unwrap());
        assert!(!sink.delete("a/x/9.sgseg").await.unwrap());
        assert_eq!(sink.list("a/").await.unwrap(), ["a/b/2.sgseg"]);
        // Keys leaving the root are refused, and nothing outside the root is touched.
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        for key in [
            "../outside",
            "a/../../outside",
            "/etc/hostname",
            "a/./b/2.sgseg",
            "",
        ] {
            assert!(sink.delete(key).await.is_err(), "{key}");
        }
        assert!(outside.exists());
        // A symlink in the archive is refused, not followed; its target stays.
        std::os::unix::fs::symlink(&outside, dir.path().join("archive/a/link")).unwrap();
        assert!(sink.delete("a/link").await.is_err());
        assert!(outside.exists());
        // A directory is not an object.
        assert!(sink.delete("a/b").await.is_err());
        assert_eq!(sink.get("a/b/2.sgseg").await.unwrap().unwrap(), b"two");
    }
}
