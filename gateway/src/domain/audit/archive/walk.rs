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

/// Where a walk starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkFrom {
    /// Start at the chain's last segment whose oldest event is at or before this time
    /// (unix milliseconds), trusting that segment's manifest (`audit verify --from`).
    pub from_ms: Option<i64>,
    /// Segments whose newest event is older than this (now - retention) may be gone from
    /// the sink (expired by a lifecycle rule): a walk starts after them, trusting the first
    /// manifest left, when the database recorded them.
    pub expired_before_ms: i64,
}

/// The manifest at `mkey`, checked (HMAC).
async fn manifest_at(
    archive: Archive<'_>,
    key: &AuditKey,
    mkey: &str,
) -> Result<(Manifest, Vec<u8>), String> {
    let bytes = archive
        .sink
        .get(mkey)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("archived manifest {mkey} vanished while read"))?;
    let m = Manifest::open(&bytes, key).map_err(|e| format!("archived manifest {mkey}: {e}"))?;
    Ok((m, bytes))
}

/// The index of the last of `keys` whose manifest's oldest event is at or before `from_ms`
/// (0 when none is): a binary search reading O(log n) manifests.
async fn start_index(
    archive: Archive<'_>,
    key: &AuditKey,
    keys: &[String],
    from_ms: i64,
) -> Result<usize, String> {
    let (mut lo, mut hi) = (0usize, keys.len());
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if manifest_at(archive, key, &keys[mid]).await?.0.min_ts_ms <= from_ms {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Where the walk starts: the index of its first manifest, and the head it starts from
/// (trusting that manifest when it does not start the chain). `Err` is a reason.
async fn start_of(
    archive: Archive<'_>,
    key: &AuditKey,
    keys: &[String],
    recorded: &[AuditSegment],
    from: WalkFrom,
) -> Result<(usize, ArchivedHead), String> {
    let Some(first_key) = keys.first() else {
        return Ok((0, ArchivedHead::start()));
    };
    let at = match from.from_ms {
        Some(ms) => start_index(archive, key, keys, ms).await?,
        None => 0,
    };
    let (m, _) = manifest_at(archive, key, &keys[at]).await?;
    if m.first_seq == 1 && at == 0 {
        return Ok((0, ArchivedHead::start()));
    }
    // Not the chain's start: trusted when asked to (`--from`), or when every segment the
    // database recorded before it has expired.
    let expired = recorded
        .iter()
        .filter(|s| s.first_seq < m.first_seq)
        .all(|s| s.max_ts_ms < from.expired_before_ms)
        && recorded.iter().any(|s| s.last_seq + 1 == m.first_seq);
    if from.from_ms.is_none() && !expired {
        return Err(format!(
            "archived segments missing: events 1..{} are in no segment (next is {first_key})",
            m.first_seq - 1
        ));
    }
    let hex =
        |v: &str| hex::decode(v).map_err(|_| format!("archived manifest {}: bad hex", keys[at]));
    Ok((
        at,
        ArchivedHead {
            next_seq: m.first_seq,
            prev_tag: hex(&m.prev_tag)?,
            manifest_sha256: hex(&m.prev_manifest_sha256)?,
            events: 0,
            segments: 0,
        },
    ))
}

/// Read and check the archived segments of `chain_id` from where `from` says, handing each
/// event to `visit`, and hold the walk against the segments the database recorded
/// (`recorded`): one it names from the walk's start on must be in the sink with the same
/// manifest.
pub async fn walk_chain(
    archive: Archive<'_>,
    key: &AuditKey,
    chain_id: &str,
    (recorded, from): (&[AuditSegment], WalkFrom),
    visit: &mut (dyn FnMut(&AuditRecord) -> Result<(), Broken> + Send),
) -> Result<ArchivedHead, WalkError> {
    let broken = |seq: i64, reason: String| Broken {
        chain_id: chain_id.to_string(),
        seq,
        reason,
    };
    let keys = manifest_keys(archive, chain_id).await?;
    let (skip, mut head) = start_of(archive, key, &keys, recorded, from)
        .await
        .map_err(|r| broken(1, r))?;
    let walk_start = head.next_seq;
    let mut seen = BTreeMap::new();
    for mkey in keys.into_iter().skip(skip) {
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
    for s in recorded.iter().filter(|s| s.first_seq >= walk_start) {
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
