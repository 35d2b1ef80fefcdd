//! Reading a chain's archived segments back from the sink in seq order and checking each
//! against its manifest and the one before: manifest HMACs, the manifest chain, object
//! hashes, and every event's seq, link and tag. What `audit verify` and search build on.

use super::super::chain::Broken;
use super::segment::{self, chain_prefix, Manifest, ZERO_HASH};
use super::sink::SinkError;
use super::Archive;
use crate::domain::audit::chain::AuditKey;
use shardgate_store::{AuditRecord, AuditSegment};
use std::collections::{BTreeMap, BTreeSet};

/// Where a chain stands after its archived segments (the start of its hot rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedHead {
    /// Seq the next event must have.
    pub next_seq: i64,
    /// Tag the next event must chain from.
    pub prev_tag: Vec<u8>,
    /// SHA-256 of the last manifest (zeros before the first segment).
    pub manifest_sha256: Vec<u8>,
    /// Events read.
    pub events: u64,
    /// Segments read.
    pub segments: usize,
}

impl ArchivedHead {
    /// A chain with nothing archived.
    pub fn start() -> Self {
        Self {
            next_seq: 1,
            prev_tag: ZERO_HASH.to_vec(),
            manifest_sha256: ZERO_HASH.to_vec(),
            events: 0,
            segments: 0,
        }
    }
}

/// Why a walk stopped.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The archive is not what the chain needs.
    #[error(transparent)]
    Broken(#[from] Broken),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Chain ids that have objects in the archive.
pub async fn archived_chains(archive: Archive<'_>) -> Result<BTreeSet<String>, SinkError> {
    let root = format!("{}segments/", archive.prefix);
    let keys = archive.sink.list(&root).await?;
    Ok(keys
        .iter()
        .filter_map(|k| {
            k.strip_prefix(&root)?
                .split_once('/')
                .map(|(c, _)| c.to_string())
        })
        .collect())
}

/// The manifest keys of a chain, in seq order.
async fn manifest_keys(archive: Archive<'_>, chain_id: &str) -> Result<Vec<String>, SinkError> {
    let mut keys = archive
        .sink
        .list(&chain_prefix(archive.prefix, chain_id))
        .await?;
    keys.retain(|k| k.ends_with(".manifest"));
    Ok(keys)
}

/// Read and check every archived segment of `chain_id`, handing each event to `visit`, and
/// hold the walk against the segments the database recorded (`recorded`): one it names must
/// be in the sink with the same manifest.
pub async fn walk_chain(
    archive: Archive<'_>,
    key: &AuditKey,
    chain_id: &str,
    recorded: &[AuditSegment],
    visit: &mut (dyn FnMut(&AuditRecord) -> Result<(), Broken> + Send),
) -> Result<ArchivedHead, WalkError> {
    let broken = |seq: i64, reason: String| Broken {
        chain_id: chain_id.to_string(),
        seq,
        reason,
    };
    let mut head = ArchivedHead::start();
    let mut seen = BTreeMap::new();
    for mkey in manifest_keys(archive, chain_id).await? {
        let bytes = archive.sink.get(&mkey).await?.ok_or_else(|| {
            broken(
                head.next_seq,
                format!("archived manifest {mkey} vanished while read"),
            )
        })?;
        let m = Manifest::open(&bytes, key)
            .map_err(|e| broken(head.next_seq, format!("archived manifest {mkey}: {e}")))?;
        check_place(&m, &mkey, &head, archive.prefix).map_err(|r| broken(head.next_seq, r))?;
        let object = archive.sink.get(&m.object_key).await?.ok_or_else(|| {
            broken(
                m.first_seq,
                format!("archived segment object {} is missing", m.object_key),
            )
        })?;
        let records = segment::open_object(&object, &m, key).map_err(|e| {
            broken(
                m.first_seq,
                format!("archived segment {}: {e}", m.object_key),
            )
        })?;
        for r in &records {
            visit(r)?;
        }
        let sha = segment::sha256(&bytes);
        seen.insert(m.first_seq, sha.clone());
        head = ArchivedHead {
            next_seq: m.last_seq + 1,
            prev_tag: records.last().map(|r| r.tag.clone()).unwrap_or_default(),
            manifest_sha256: sha,
            events: head.events + records.len() as u64,
            segments: head.segments + 1,
        };
    }
    for s in recorded {
        match seen.get(&s.first_seq) {
            None => {
                return Err(broken(
                    s.first_seq,
                    format!(
                        "archived segment {} (recorded in the database) is missing from the sink",
                        s.manifest_key
                    ),
                )
                .into())
            }
            Some(sha) if *sha != s.manifest_sha256 => {
                return Err(broken(
                    s.first_seq,
                    format!(
                        "archived segment {} differs from the one the database recorded (replaced)",
                        s.manifest_key
                    ),
                )
                .into())
            }
            Some(_) => {}
        }
    }
    Ok(head)
}

/// Whether manifest `m` (stored at `mkey`) is the next segment after `head`: a reason if not.
fn check_place(m: &Manifest, mkey: &str, head: &ArchivedHead, prefix: &str) -> Result<(), String> {
    let (object_key, manifest_key) =
        segment::segment_keys(prefix, &m.chain_id, m.first_seq, m.last_seq);
    if manifest_key != mkey || object_key != m.object_key {
        return Err(format!(
            "archived manifest {mkey} is stored under another segment's key (moved)"
        ));
    }
    if m.first_seq != head.next_seq {
        return Err(if m.first_seq > head.next_seq {
            format!(
                "archived segments missing: events {}..{} are in no segment (next is {mkey})",
                head.next_seq,
                m.first_seq - 1
            )
        } else {
            format!("archived segment {mkey} overlaps the one before it (reordered or duplicated)")
        });
    }
    if hex::encode(&head.prev_tag) != m.prev_tag
        || hex::encode(&head.manifest_sha256) != m.prev_manifest_sha256
    {
        return Err(format!(
            "archived segment {mkey} does not follow the segment before it (replaced or reordered)"
        ));
    }
    Ok(())
}
