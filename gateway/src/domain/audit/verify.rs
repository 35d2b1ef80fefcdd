//! Re-checking every chain across its tiers (archived segments, then hot rows), and holding
//! each against its checkpoints (`shardgate audit verify`).

use super::archive::{archived_chains, walk_chain, Archive, ArchivedHead, WalkError, WalkFrom};
use super::chain::*;
use super::checkpoints::Checkpoint;
use shardgate_store::{AuditRecord, Store, StoreError};
use std::collections::{BTreeMap, BTreeSet};

/// Verification result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chains checked.
    pub chains: usize,
    /// Events checked (archived and hot).
    pub events: u64,
    /// Checkpoints the chains were held against.
    pub checkpoints: usize,
    /// Of `events`, those read from archived segments.
    pub archived_events: u64,
    /// Archived segments read.
    pub segments: usize,
}

/// Verify errors.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A chain is broken.
    #[error(transparent)]
    Broken(#[from] Broken),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The archive sink failed.
    #[error(transparent)]
    Sink(#[from] super::archive::SinkError),
}

impl From<WalkError> for VerifyError {
    fn from(e: WalkError) -> Self {
        match e {
            WalkError::Broken(b) => Self::Broken(b),
            WalkError::Sink(s) => Self::Sink(s),
        }
    }
}

/// Re-check every chain: consecutive seqs from 1, each `prev_tag` equal to the previous
/// event's tag, each tag a valid HMAC. Reports the first broken event.
pub async fn verify(store: &dyn Store, key: &AuditKey) -> Result<VerifyReport, VerifyError> {
    verify_with(store, key, &BTreeMap::new()).await
}

/// [`verify`], and hold every chain against its latest checkpoint (from the checkpoint
/// files, [`crate::domain::audit::checkpoints::read_latest`]): a checkpointed chain must exist, reach its
/// checkpoint's seq, and carry the checkpoint's tag at that seq.
pub async fn verify_with(
    store: &dyn Store,
    key: &AuditKey,
    checkpoints: &BTreeMap<String, Checkpoint>,
) -> Result<VerifyReport, VerifyError> {
    verify_tiers(store, None, key, checkpoints).await
}

/// [`verify_with`] across tiers: each chain's archived segments in `archive` (read from the
/// sink, checked byte for byte and against the segments the database recorded), then its
/// hot rows, as one chain. Chains found only in the archive are verified too.
pub async fn verify_tiers(
    store: &dyn Store,
    archive: Option<Archive<'_>>,
    key: &AuditKey,
    checkpoints: &BTreeMap<String, Checkpoint>,
) -> Result<VerifyReport, VerifyError> {
    verify_tiers_from(
        store,
        archive.map(|a| (a, WalkFrom::default())),
        key,
        checkpoints,
    )
    .await
}

/// [`verify_tiers`] with each chain's archived part walked from where `from` says
/// (`audit verify --from`, and segments expired from the sink).
pub async fn verify_tiers_from(
    store: &dyn Store,
    archive: Option<(Archive<'_>, WalkFrom)>,
    key: &AuditKey,
    checkpoints: &BTreeMap<String, Checkpoint>,
) -> Result<VerifyReport, VerifyError> {
    let mut report = VerifyReport {
        chains: 0,
        events: 0,
        checkpoints: checkpoints.len(),
        archived_events: 0,
        segments: 0,
    };
    let mut chains: BTreeSet<String> = store.audit_chains().await?.into_iter().collect();
    if let Some((a, _)) = archive {
        chains.extend(archived_chains(a).await?);
    }
    let mut heads = BTreeMap::new();
    for chain in chains {
        report.chains += 1;
        let checkpoint = checkpoints.get(&chain);
        let recorded = store.audit_segments(&chain).await?;
        let start = match archive {
            Some((a, from)) => {
                let mut visit = |r: &AuditRecord| against_checkpoint(checkpoint, r);
                walk_chain(a, key, &chain, (&recorded, from), &mut visit).await?
            }
            None if recorded.is_empty() => ArchivedHead::start(),
            None => {
                return Err(Broken {
                    chain_id: chain.clone(),
                    seq: 1,
                    reason: "chain has archived segments: verify it with its archive".into(),
                }
                .into())
            }
        };
        report.archived_events += start.events;
        report.segments += start.segments;
        let (next_seq, hot) = verify_hot(store, key, &chain, &start, checkpoint).await?;
        report.events += start.events + hot;
        heads.insert(chain, next_seq - 1);
    }
    crate::domain::audit::checkpoints::check_heads(&heads, checkpoints)?;
    Ok(report)
}

/// An event at a checkpointed seq must carry the checkpoint's tag.
fn against_checkpoint(checkpoint: Option<&Checkpoint>, r: &AuditRecord) -> Result<(), Broken> {
    if checkpoint.is_some_and(|c| c.seq == r.seq && c.tag != r.tag) {
        return Err(Broken {
            chain_id: r.chain_id.clone(),
            seq: r.seq,
            reason: "differs from the checkpointed event at this seq (chain rewritten)".into(),
        });
    }
    Ok(())
}

/// Check a chain's hot rows from where its archive ends (`start`): the next seq after the
/// last hot event, and the number of hot events. Hot rows the archive also holds are
/// accepted when their tags are valid: an archiver stopped between its upload and its
/// record, or between recording a segment and deleting all its rows (a paced pass deletes
/// them a chunk at a time); the archiver records and deletes them on its next pass.
async fn verify_hot(
    store: &dyn Store,
    key: &AuditKey,
    chain: &str,
    start: &ArchivedHead,
    checkpoint: Option<&Checkpoint>,
) -> Result<(i64, u64), VerifyError> {
    let mut expect_seq = start.next_seq;
    let mut prev = start.prev_tag.clone();
    let mut events = 0u64;
    // Start below every possible seq, so forged rows at seq <= 0 (or rows an archived
    // segment covers) are read and reported.
    let mut after = i64::MIN;
    loop {
        let page = store.audit_events(chain, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in page {
            let broken = |seq: i64, reason: &str| Broken {
                chain_id: chain.to_string(),
                seq,
                reason: reason.to_string(),
            };
            if r.seq < expect_seq && r.seq >= 1 && tag_matches(key, &r) {
                continue; // archived, not yet deleted: checked in the archive
            }
            if r.seq < expect_seq {
                return Err(broken(
                    r.seq,
                    "event outside the chain's sequence (forged, or archived and still here)",
                )
                .into());
            }
            if r.seq != expect_seq {
                let why = format!("event missing (next stored event is seq {})", r.seq);
                return Err(broken(expect_seq, &why).into());
            }
            if r.prev_tag != prev {
                return Err(broken(
                    r.seq,
                    "does not follow the previous event (deleted, inserted or reordered)",
                )
                .into());
            }
            if !tag_matches(key, &r) {
                return Err(broken(r.seq, "tag mismatch (edited or forged)").into());
            }
            against_checkpoint(checkpoint, &r)?;
            prev = r.tag.clone();
            expect_seq += 1;
            events += 1;
        }
    }
    Ok((expect_seq, events))
}
