//! Audit chain checkpoints kept OUTSIDE the database, so that a cut tail is visible.
//!
//! The chains' HMACs catch an edited, inserted or reordered event, but someone with only
//! database access can still delete the last events of a chain, every event of a chain, or
//! a chain and its registry row: what is left verifies. So each gateway appends its chain
//! head to a checkpoint file in its own data directory (`audit-checkpoints`, mode 0600,
//! fsynced, every line HMAC'd under the audit key) at every checkpoint interval and at
//! shutdown, and `shardgate audit verify --checkpoints FILE...` reads one or more replicas'
//! files: a chain whose stored head is behind its last checkpoint, whose event at a
//! checkpointed seq differs, or that is missing, is broken (FORMAT.md, "Audit checkpoints").

use super::chain::{keyed_digest, AuditKey, Broken};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// First word of every line (the line format's version).
pub const LINE_MAGIC: &str = "sgcp1";

/// Domain label of a line's HMAC ([`keyed_digest`]).
const DOMAIN: &[u8] = b"shardgate audit checkpoint";

/// One chain head at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Chain id.
    pub chain_id: String,
    /// Seq of the head event.
    pub seq: i64,
    /// Tag of the head event.
    pub tag: Vec<u8>,
    /// When the line was written (unix milliseconds).
    pub ts_ms: i64,
}

impl Checkpoint {
    fn mac(&self, key: &AuditKey) -> Vec<u8> {
        keyed_digest(
            key,
            DOMAIN,
            &[
                self.chain_id.as_bytes(),
                &self.seq.to_be_bytes(),
                &self.tag,
                &self.ts_ms.to_be_bytes(),
            ],
        )
    }

    /// The line for this checkpoint, with its HMAC (ends with a newline).
    pub fn line(&self, key: &AuditKey) -> String {
        format!(
            "{LINE_MAGIC} {} {} {} {} {}\n",
            self.chain_id,
            self.seq,
            hex::encode(&self.tag),
            self.ts_ms,
            hex::encode(self.mac(key))
        )
    }

    /// Parse and authenticate one line.
    pub fn parse(line: &str, key: &AuditKey) -> Result<Self, &'static str> {
        let words: Vec<&str> = line.split(' ').collect();
        let [magic, chain, seq, tag, ts, mac] = words.as_slice() else {
            return Err("not a checkpoint line");
        };
        if *magic != LINE_MAGIC {
            return Err("not a checkpoint line");
        }
        let cp = Checkpoint {
            chain_id: (*chain).to_string(),
            seq: seq.parse().map_err(|_| "bad seq")?,
            tag: hex::decode(tag).map_err(|_| "bad tag")?,
            ts_ms: ts.parse().map_err(|_| "bad time")?,
        };
        let mac = hex::decode(mac).map_err(|_| "bad HMAC")?;
        let ok: bool = subtle::ConstantTimeEq::ct_eq(mac.as_slice(), cp.mac(key).as_slice()).into();
        if !ok {
            return Err("HMAC mismatch (edited or forged)");
        }
        Ok(cp)
    }
}

/// This process's checkpoint file: appends a line when its chain head moved.
#[derive(Debug)]
pub struct CheckpointFile {
    path: PathBuf,
    /// Seq of the last line written (none before the first).
    last: Mutex<i64>,
}

impl CheckpointFile {
    /// The file at `path` (created on the first append, mode 0600).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            last: Mutex::new(0),
        }
    }

    /// Append `cp` (fsynced) unless this file already holds a line at its seq or later,
    /// creating the file's directory (0700) first if needed: a process that never writes
    /// an event creates nothing. A chain without events writes nothing.
    pub fn append(&self, cp: &Checkpoint, key: &AuditKey) -> std::io::Result<bool> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cp.seq <= *last {
            return Ok(false);
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let mut f = open_append(&self.path)?;
        f.write_all(cp.line(key).as_bytes())?;
        f.sync_all()?;
        *last = cp.seq;
        Ok(true)
    }

    /// Where the lines go.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Open for appending without following a symlink, creating the file 0600 (and syncing the
/// directory when it was created); an existing file must be ours, private and regular.
fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let existed = path.symlink_metadata().is_ok();
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let meta = f.metadata()?;
    let refuse = |why: &str| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{}: {why}", path.display()),
        ))
    };
    if !meta.is_file() {
        return refuse("not a regular file");
    }
    if meta.mode() & 0o077 != 0 {
        return refuse("mode allows group or others");
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return refuse("owned by another user");
    }
    if !existed {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(f)
}

/// The latest checkpoint of every chain named in `files` (every line authenticated).
pub fn read_latest(
    files: &[PathBuf],
    key: &AuditKey,
) -> Result<BTreeMap<String, Checkpoint>, Broken> {
    let mut latest: BTreeMap<String, Checkpoint> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| Broken {
            chain_id: file.display().to_string(),
            seq: 0,
            reason: format!("checkpoint file {} cannot be read: {e}", file.display()),
        })?;
        for (n, line) in text.lines().enumerate() {
            let cp = Checkpoint::parse(line, key).map_err(|why| Broken {
                chain_id: file.display().to_string(),
                seq: i64::try_from(n + 1).unwrap_or(i64::MAX),
                reason: format!("checkpoint file {} line {}: {why}", file.display(), n + 1),
            })?;
            let newer = latest.get(&cp.chain_id).is_none_or(|c| cp.seq > c.seq);
            if newer {
                latest.insert(cp.chain_id.clone(), cp);
            }
        }
    }
    Ok(latest)
}

/// Compare the verified chains' heads with the latest checkpoints: a checkpointed chain
/// that is missing or whose head is behind its checkpoint is broken. (That the event at a
/// checkpointed seq carries the checkpoint's tag is checked while the chain is walked.)
pub fn check_heads(
    heads: &BTreeMap<String, i64>,
    latest: &BTreeMap<String, Checkpoint>,
) -> Result<(), Broken> {
    for (chain, cp) in latest {
        match heads.get(chain) {
            None => {
                return Err(Broken {
                    chain_id: chain.clone(),
                    seq: cp.seq,
                    reason: format!(
                        "chain missing from the database (checkpointed at seq {})",
                        cp.seq
                    ),
                })
            }
            Some(head) if *head < cp.seq => {
                return Err(Broken {
                    chain_id: chain.clone(),
                    seq: head + 1,
                    reason: format!(
                        "stored head seq {head} is behind its checkpoint at seq {} (tail cut)",
                        cp.seq
                    ),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cp(seq: i64) -> Checkpoint {
        Checkpoint {
            chain_id: "c1".into(),
            seq,
            tag: vec![7; 32],
            ts_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_line_round_trips_and_any_edit_is_refused() {
        let key = AuditKey::from_bytes([1; 32]);
        let line = cp(5).line(&key);
        assert_eq!(Checkpoint::parse(line.trim_end(), &key).unwrap(), cp(5));
        let edited = line.trim_end().replacen(" 5 ", " 6 ", 1);
        assert!(Checkpoint::parse(&edited, &key).is_err());
        let other = AuditKey::from_bytes([2; 32]);
        assert!(Checkpoint::parse(line.trim_end(), &other).is_err());
    }

    #[test]
    fn appends_only_when_the_head_moved_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = AuditKey::from_bytes([1; 32]);
        let f = CheckpointFile::new(dir.path().join("audit-checkpoints"));
        assert!(f.append(&cp(3), &key).unwrap());
        assert!(!f.append(&cp(3), &key).unwrap());
        assert!(f.append(&cp(4), &key).unwrap());
        let mode = std::fs::metadata(f.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let latest = read_latest(&[f.path().to_path_buf()], &key).unwrap();
        assert_eq!(latest["c1"].seq, 4);
    }

    #[test]
    fn the_directory_is_made_with_the_first_line_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let key = AuditKey::from_bytes([1; 32]);
        let f = CheckpointFile::new(dir.join("audit-checkpoints"));
        assert!(!dir.exists(), "nothing is created before a line is written");
        assert!(f.append(&cp(1), &key).unwrap());
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_symlink_at_the_file_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        let link = dir.path().join("audit-checkpoints");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let key = AuditKey::from_bytes([1; 32]);
        assert!(CheckpointFile::new(link).append(&cp(1), &key).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"");
    }

    #[test]
    fn missing_and_behind_chains_are_broken() {
        let latest = BTreeMap::from([("c1".to_string(), cp(5))]);
        let ok = BTreeMap::from([("c1".to_string(), 5)]);
        assert!(check_heads(&ok, &latest).is_ok());
        let ahead = BTreeMap::from([("c1".to_string(), 9)]);
        assert!(check_heads(&ahead, &latest).is_ok());
        let behind = BTreeMap::from([("c1".to_string(), 4)]);
        assert!(check_heads(&behind, &latest)
            .unwrap_err()
            .reason
            .contains("behind"));
        assert!(check_heads(&BTreeMap::new(), &latest)
            .unwrap_err()
            .reason
            .contains("missing"));
    }
}
