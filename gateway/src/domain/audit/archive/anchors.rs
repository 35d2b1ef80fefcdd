//! Anchors: every chain head a checkpoint records ([`super::super::checkpoints`]) is also
//! written to the archive sink, as its own write-once object
//! (`<prefix>anchors/<chain_id>/<seq>.anchor`, the HMAC'd checkpoint line of FORMAT.md).
//! The archive outlives the database, so a cut tail, a deleted chain or a replaced segment is
//! caught by `audit verify` even when the whole database was rewritten: a chain counts as
//! present when its archived segments plus its hot rows reach its last anchor.

use super::super::chain::{AuditKey, Broken};
use super::super::checkpoints::Checkpoint;
use super::sink::SinkError;
use super::Archive;
use std::collections::BTreeMap;

/// The key of the anchor of `cp`.
pub fn anchor_key(prefix: &str, cp: &Checkpoint) -> String {
    format!("{prefix}anchors/{}/{:020}.anchor", cp.chain_id, cp.seq)
}

/// Write `cp` as an anchor (if absent: one object per chain and head position).
pub async fn write_anchor(
    archive: Archive<'_>,
    key: &AuditKey,
    cp: &Checkpoint,
) -> Result<(), SinkError> {
    let line = cp.line(key);
    archive
        .sink
        .put_if_absent(&anchor_key(archive.prefix, cp), line.as_bytes(), None)
        .await
        .map(|_| ())
}

/// Why anchors could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// An anchor does not verify, or is stored under another chain's or seq's key.
    #[error(transparent)]
    Broken(#[from] Broken),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// The latest anchor of every chain in the archive (each checked: its HMAC, and that its
/// key names its chain and seq).
pub async fn read_anchors(
    archive: Archive<'_>,
    key: &AuditKey,
) -> Result<BTreeMap<String, Checkpoint>, AnchorError> {
    let root = format!("{}anchors/", archive.prefix);
    // Keys sort by chain, then seq: the last key of each chain is its latest anchor.
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for k in archive.sink.list(&root).await? {
        if let Some((chain, _)) = k.strip_prefix(&root).and_then(|r| r.split_once('/')) {
            last.insert(chain.to_string(), k.clone());
        }
    }
    let mut out = BTreeMap::new();
    for (chain, k) in last {
        let broken = |reason: String| Broken {
            chain_id: chain.clone(),
            seq: 0,
            reason,
        };
        let bytes = archive
            .sink
            .get(&k)
            .await?
            .ok_or_else(|| broken(format!("anchor {k} vanished while read")))?;
        let text =
            String::from_utf8(bytes).map_err(|_| broken(format!("anchor {k} is not text")))?;
        let cp = Checkpoint::parse(text.trim_end_matches('\n'), key)
            .map_err(|why| broken(format!("anchor {k}: {why}")))?;
        if anchor_key(archive.prefix, &cp) != k {
            return Err(broken(format!(
                "anchor {k} holds another chain's or seq's head (moved)"
            ))
            .into());
        }
        out.insert(chain, cp);
    }
    Ok(out)
}

/// `a` with every checkpoint of `b` that is newer (a higher seq) for its chain.
pub fn merge_latest(
    mut a: BTreeMap<String, Checkpoint>,
    b: BTreeMap<String, Checkpoint>,
) -> BTreeMap<String, Checkpoint> {
    for (chain, cp) in b {
        if a.get(&chain).is_none_or(|c| cp.seq > c.seq) {
            a.insert(chain, cp);
        }
    }
    a
}
