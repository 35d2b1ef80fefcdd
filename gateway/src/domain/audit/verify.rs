//! Re-checking every chain in the store, and holding each against its checkpoints
//! (`shardgate audit verify`).

use super::chain::*;
use shardgate_store::{Store, StoreError};
use std::collections::BTreeMap;

/// Verification result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chains checked.
    pub chains: usize,
    /// Events checked.
    pub events: u64,
    /// Checkpoints the chains were held against.
    pub checkpoints: usize,
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
    checkpoints: &BTreeMap<String, crate::domain::audit::checkpoints::Checkpoint>,
) -> Result<VerifyReport, VerifyError> {
    let mut report = VerifyReport {
        chains: 0,
        events: 0,
        checkpoints: checkpoints.len(),
    };
    let mut heads = BTreeMap::new();
    for chain in store.audit_chains().await? {
        report.chains += 1;
        let checkpoint = checkpoints.get(&chain);
        let mut expect_seq = 1i64;
        let mut prev = vec![0u8; 32];
        // Start below every possible seq, so forged rows at seq <= 0 are read and reported.
        let mut after = i64::MIN;
        loop {
            let page = store.audit_events(&chain, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for r in page {
                let broken = |seq: i64, reason: String| Broken {
                    chain_id: chain.clone(),
                    seq,
                    reason,
                };
                if r.seq < expect_seq {
                    return Err(broken(
                        r.seq,
                        "event outside the chain's sequence (forged)".into(),
                    )
                    .into());
                }
                if r.seq != expect_seq {
                    return Err(broken(
                        expect_seq,
                        format!("event missing (next stored event is seq {})", r.seq),
                    )
                    .into());
                }
                if r.prev_tag != prev {
                    return Err(broken(
                        r.seq,
                        "does not follow the previous event (deleted, inserted or reordered)"
                            .into(),
                    )
                    .into());
                }
                if !tag_matches(key, &r) {
                    return Err(broken(r.seq, "tag mismatch (edited or forged)".into()).into());
                }
                if checkpoint.is_some_and(|c| c.seq == r.seq && c.tag != r.tag) {
                    return Err(broken(
                        r.seq,
                        "differs from the checkpointed event at this seq (chain rewritten)".into(),
                    )
                    .into());
                }
                prev = r.tag.clone();
                expect_seq += 1;
                report.events += 1;
            }
        }
        heads.insert(chain, expect_seq - 1);
    }
    crate::domain::audit::checkpoints::check_heads(&heads, checkpoints)?;
    Ok(report)
}
