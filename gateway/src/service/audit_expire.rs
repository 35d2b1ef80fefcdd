//! Retention of the directory sink (docs/audit-archive.md, "Retention"): the archiver
//! deletes a chain's segments whose retention has ended, oldest first, audited. It exists
//! because a directory, unlike an S3 bucket with a lifecycle rule, never expires anything
//! by itself; on a sink that does ([`ArchiveSink::expires_by_itself`]) nothing is deleted.
//!
//! The rules, per chain, over the segments the database recorded (their rows stay: only
//! the sink's objects go):
//! - a segment has expired once its **newest** event is more than the retention old
//!   (`max_ts_ms + retention < now`, saturating); the walk stops at the first one that has
//!   not, so only a prefix of the chain goes and `audit verify` accepts the gap;
//! - the chain's newest recorded segment is always kept: verify starts a chain whose
//!   older segments are gone at its first manifest left;
//! - the audit event naming what is about to go is written (durably) **before** anything is
//!   deleted, so no kill can delete without an event; a kill after it leaves an event for
//!   segments that the next pass deletes (and audits) again;
//! - per segment the manifest goes first, then its object: a kill in between leaves a
//!   stray object (which verify never reads), never a manifest without its object; the
//!   next pass deletes what is left, idempotently.
//!
//! [`ArchiveSink::expires_by_itself`]: crate::domain::audit::archive::ArchiveSink::expires_by_itself

use crate::domain::audit::archive::segment::{chain_prefix, segment_keys};
use crate::domain::audit::archive::{Archive, SinkError};
use crate::domain::audit::{Auditor, Origin};
use crate::domain::error::DomainError;
use crate::domain::failpoint::failpoint;
use shardgate_store::AuditSegment;
use std::collections::BTreeSet;

/// The audit action of a deletion run.
pub const ACTION: &str = "audit.archive.expire";

/// Who deletes: the auditor that records it, and on whose behalf (the CLI's operator, or
/// the gateway's background archiver).
#[derive(Clone, Copy)]
pub struct Expiry<'a> {
    /// Writes the event of each deletion run.
    pub auditor: &'a Auditor,
    /// Who the event names.
    pub origin: &'a Origin,
}

/// Why a deletion run stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExpireError {
    /// The sink failed (what was deleted before stays deleted; the next pass goes on).
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The event could not be written: nothing of the chain was deleted.
    #[error("the audit event of expired segments could not be written (nothing deleted): {0}")]
    Audit(DomainError),
}

/// The segments of a chain (`recorded`, in seq order) that may be deleted at `now_ms`: the
/// longest prefix whose newest event is more than `retention_ms` old, never the chain's
/// newest segment.
pub fn expired_prefix(
    recorded: &[AuditSegment],
    now_ms: i64,
    retention_ms: i64,
) -> &[AuditSegment] {
    let Some((_, older)) = recorded.split_last() else {
        return &[];
    };
    let n = older
        .iter()
        .take_while(|s| s.max_ts_ms.saturating_add(retention_ms.max(0)) < now_ms)
        .count();
    &older[..n]
}

/// Seq ranges of `segments`, contiguous ones merged: `1..8,13..16`.
fn ranges(segments: &[&AuditSegment]) -> String {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for s in segments {
        match out.last_mut() {
            Some(last) if last.1 + 1 == s.first_seq => last.1 = s.last_seq,
            _ => out.push((s.first_seq, s.last_seq)),
        }
    }
    out.iter()
        .map(|(a, b)| format!("{a}..{b}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Delete the objects of `expired` (a prefix of `chain`'s recorded segments:
/// [`expired_prefix`]) still in the sink, after recording the event that names them: the
/// number of segments something was deleted of.
pub async fn expire_chain(
    archive: Archive<'_>,
    by: Expiry<'_>,
    chain: &str,
    expired: &[AuditSegment],
) -> Result<u64, ExpireError> {
    if expired.is_empty() || archive.sink.expires_by_itself() {
        return Ok(0);
    }
    // What is still there: manifest and object keys as the archiver writes them (never a
    // key the row names elsewhere: only this chain's segment keys are deleted).
    let present: BTreeSet<String> = archive
        .sink
        .list(&chain_prefix(archive.prefix, chain))
        .await?
        .into_iter()
        .collect();
    let doomed: Vec<(&AuditSegment, Vec<String>)> = expired
        .iter()
        .map(|s| {
            let (object, manifest) = segment_keys(archive.prefix, chain, s.first_seq, s.last_seq);
            // The manifest first, then the object.
            let keys = [manifest, object]
                .into_iter()
                .filter(|k| present.contains(k))
                .collect::<Vec<_>>();
            (s, keys)
        })
        .filter(|(_, keys)| !keys.is_empty())
        .collect();
    if doomed.is_empty() {
        return Ok(0);
    }
    let segments: Vec<&AuditSegment> = doomed.iter().map(|(s, _)| *s).collect();
    let objects: usize = doomed.iter().map(|(_, k)| k.len()).sum();
    let newest = segments.iter().map(|s| s.max_ts_ms).max().unwrap_or(0);
    let event = by.origin.event(ACTION).detail(format!(
        "chain={chain} seqs={} segments={} objects={objects} newest_event_ms={newest} sink={}",
        ranges(&segments),
        segments.len(),
        archive.sink.describe()
    ));
    by.auditor.record(event).await.map_err(ExpireError::Audit)?;
    failpoint("expire_after_event");
    let mut deleted = 0u64;
    for (s, keys) in &doomed {
        for (i, key) in keys.iter().enumerate() {
            archive.sink.delete(key).await?;
            if i == 0 && keys.len() == 2 {
                failpoint("expire_after_manifest");
            }
        }
        deleted += 1;
        metrics::counter!("shardgate_audit_expired_segments_total").increment(1);
        tracing::info!(chain_id = %chain, first_seq = s.first_seq, last_seq = s.last_seq, newest_event_ms = s.max_ts_ms, "expired audit segment deleted from the archive");
    }
    Ok(deleted)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn seg(first: i64, last: i64, max_ts_ms: i64) -> AuditSegment {
        AuditSegment {
            chain_id: "c".into(),
            first_seq: first,
            last_seq: last,
            min_ts_ms: 0,
            max_ts_ms,
            prev_tag: Vec::new(),
            last_tag: Vec::new(),
            tags_sha256: Vec::new(),
            object_key: String::new(),
            object_sha256: Vec::new(),
            object_bytes: 0,
            manifest_key: String::new(),
            manifest_sha256: Vec::new(),
            prev_manifest_sha256: Vec::new(),
            archived_ms: 0,
        }
    }

    fn seqs(s: &[AuditSegment]) -> Vec<i64> {
        s.iter().map(|s| s.first_seq).collect()
    }

    #[test]
    fn only_a_prefix_of_segments_past_retention_expires_and_never_the_newest() {
        let day = 86_400_000;
        let now = 100 * day;
        let chain = [
            seg(1, 4, 10 * day),
            seg(5, 8, 20 * day),
            // Newer than retention allows: it and everything after it stay, even an older one.
            seg(9, 12, 95 * day),
            seg(13, 16, 30 * day),
            seg(17, 20, 31 * day),
        ];
        assert_eq!(seqs(expired_prefix(&chain, now, 30 * day)), [1, 5]);
        // Every segment expired: all but the newest.
        assert_eq!(seqs(expired_prefix(&chain, now, 0)), [1, 5, 9, 13]);
        // A segment whose newest event is exactly the retention old has not expired.
        assert_eq!(seqs(expired_prefix(&chain, now, 90 * day)), [] as [i64; 0]);
        assert_eq!(seqs(expired_prefix(&chain, now, 90 * day - 1)), [1]);
        // A chain of one segment keeps it; no segment, nothing.
        assert!(expired_prefix(&chain[..1], now, 0).is_empty());
        assert!(expired_prefix(&[], now, 0).is_empty());
        // Huge retentions and times saturate instead of wrapping into the past.
        assert!(expired_prefix(&chain, now, i64::MAX).is_empty());
        let late = [seg(1, 1, i64::MAX), seg(2, 2, i64::MAX)];
        assert!(expired_prefix(&late, i64::MAX, 1).is_empty());
        // A negative retention is none.
        assert_eq!(seqs(expired_prefix(&chain, now, -5 * day)), [1, 5, 9, 13]);
    }

    #[test]
    fn expired_ranges_are_named_merged_where_contiguous() {
        let (a, b, c) = (seg(1, 4, 0), seg(5, 8, 0), seg(13, 16, 0));
        assert_eq!(ranges(&[&a, &b, &c]), "1..8,13..16");
        assert_eq!(ranges(&[&c]), "13..16");
    }
}
