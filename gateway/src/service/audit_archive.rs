//! Archiving audit events (docs/audit-archive.md): one pass moves every chain's events older
//! than a cutoff into segments in the archive sink, and only then out of the hot table.
//!
//! Per segment: check the events' links and tags, put the object (if absent), put the
//! manifest (if absent), read both back and check them ourselves (byte for byte what was
//! written; what an earlier pass wrote: hash, HMACs and the very events), record the
//! segment (`Store::record_audit_segment`, which refuses rows the segment does not cover
//! exactly), then delete the rows recorded segments cover (`Store::delete_archived_audit`).
//! A paced pass reads, checks and deletes a step at a time (`pace`); an unpaced one prepares the
//! next segment while the database records the one before. Keys are deterministic, a
//! segment already in the sink at the next position is adopted, and covered rows a stopped
//! pass left are deleted first, so a pass killed at any point and run again loses nothing
//! and duplicates nothing. One archiver runs at a time: each pass and each segment renews a
//! lease in the database.
//!
//! After a chain is archived, a pass given an [`Expiry`] deletes its segments whose
//! retention ended from a sink that does not expire them itself (`service::audit_expire`).

use crate::domain::audit::archive::segment::{self, segment_keys, Manifest};
use crate::domain::audit::archive::{Archive, Put, SegmentError, SinkError};
use crate::domain::audit::{tag_matches, AuditKey};
use crate::domain::failpoint::failpoint;
use crate::service::audit_expire::{expire_chain, expired_prefix, ExpireError, Expiry};
use shardgate_store::{AuditRecord, AuditSegment, Store, StoreError};

mod pace;
use pace::{check, drain, Pace};

/// Name of the archiver's lease.
pub const LEASE: &str = "audit-archiver";

/// How a pass cuts segments, and whose lease it holds.
#[derive(Debug, Clone)]
pub struct ArchivePass {
    /// Events at or after this time (unix milliseconds) stay hot; so does everything after
    /// the first of them in its chain.
    pub cutoff_ms: i64,
    /// Most events per segment.
    pub max_events: usize,
    /// Most payload bytes per segment (at least one event each).
    pub max_bytes: usize,
    /// This archiver's lease holder id.
    pub holder: String,
    /// How long the lease lasts without renewal.
    pub lease_ms: i64,
    /// How long a segment is kept (locked, where the sink locks) after its newest event.
    pub retention_ms: i64,
    /// Most events per second on average, read and deleted a step at a time (0: unpaced).
    pub rate_per_sec: u64,
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// Segments recorded.
    pub segments: u64,
    /// Events archived and deleted from the hot table.
    pub events: u64,
    /// Object bytes written (compressed segments and manifests).
    pub bytes: u64,
    /// Segments found already in the sink (a stopped pass's) and recorded.
    pub adopted: u64,
    /// Expired segments deleted from the sink (directory sink only; their rows stay).
    pub expired_segments: u64,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Another archiver holds the lease.
    #[error("another archiver holds the lease {LEASE:?}")]
    LeaseHeld,
    /// The store failed or refused the segment (nothing of that segment was deleted).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sink failed (nothing of that segment was deleted).
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Deleting expired segments stopped (the archiving before it stands).
    #[error(transparent)]
    Expire(#[from] ExpireError),
    /// What the sink or the chain holds is not what it must (nothing was deleted).
    #[error("audit chain {chain_id} at seq {seq}: {why}")]
    Refused {
        /// Chain.
        chain_id: String,
        /// Where.
        seq: i64,
        /// What.
        why: String,
    },
}

fn refused(chain_id: &str, seq: i64, why: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Refused {
        chain_id: chain_id.to_string(),
        seq,
        why: why.to_string(),
    }
}

/// Run one pass over every chain; `progress` hears of each segment recorded. With `expiry`,
/// each chain's segments whose retention ended are then deleted from a sink that does not
/// expire them itself, audited by `expiry` (without it, this pass deletes nothing).
pub async fn run_pass(
    store: &dyn Store,
    archive: Archive<'_>,
    key: &AuditKey,
    pass: &ArchivePass,
    expiry: Option<Expiry<'_>>,
    progress: &(dyn Fn(&AuditSegment) + Sync),
) -> Result<ArchiveReport, ArchiveError> {
    renew(store, pass).await?;
    let mut report = ArchiveReport::default();
    let run = (pass, expiry, progress);
    let result = all_chains(store, archive, key, run, &mut report).await;
    // The next archiver need not wait for the lease to run out.
    if let Err(e) = store.release_lease(LEASE, &pass.holder).await {
        tracing::warn!(error = %e, "could not release the audit archiver's lease");
    }
    result.map(|()| report)
}

/// Who hears of each segment a pass records.
type Progress<'a> = dyn Fn(&AuditSegment) + Sync + 'a;

/// A pass's settings, who audits its deletions, and who hears of each segment.
type PassRun<'a, 'b> = (
    &'a ArchivePass,
    Option<Expiry<'b>>,
    &'a (dyn Fn(&AuditSegment) + Sync),
);

async fn all_chains(
    store: &dyn Store,
    archive: Archive<'_>,
    key: &AuditKey,
    (pass, expiry, progress): PassRun<'_, '_>,
    report: &mut ArchiveReport,
) -> Result<(), ArchiveError> {
    let mut oldest: Option<i64> = None;
    let (mut segments, mut bytes) = (0u64, 0i64);
    let mut pace = Pace::new(pass.rate_per_sec);
    for chain in store.audit_chains().await? {
        archive_chain(
            store,
            archive,
            key,
            (pass, progress, &mut pace),
            &chain,
            report,
        )
        .await?;
        // Where the chain's hot rows now start, and what it has archived.
        if let Some(first) = store.audit_events(&chain, i64::MIN, 1).await?.first() {
            oldest = Some(oldest.map_or(first.ts_ms, |o| o.min(first.ts_ms)));
        }
        let recorded = store.audit_segments(&chain).await?;
        if let Some(by) = expiry.filter(|_| !archive.sink.expires_by_itself()) {
            let expired = expired_prefix(&recorded, crate::now_ms(), pass.retention_ms);
            if !expired.is_empty() {
                renew(store, pass).await?;
                report.expired_segments += expire_chain(archive, by, &chain, expired).await?;
            }
        }
        segments += recorded.len() as u64;
        bytes += recorded.iter().map(|s| s.object_bytes).sum::<i64>();
    }
    let now = crate::now_ms();
    let age = oldest.map_or(0, |o| now.saturating_sub(o).max(0));
    let lag = oldest.map_or(0, |o| pass.cutoff_ms.saturating_sub(o).max(0));
    metrics::gauge!("shardgate_audit_hot_oldest_event_age_seconds").set(age as f64 / 1000.0);
    metrics::gauge!("shardgate_audit_archive_lag_seconds").set(lag as f64 / 1000.0);
    metrics::gauge!("shardgate_audit_archived_segments").set(segments as f64);
    metrics::gauge!("shardgate_audit_archived_bytes").set(bytes as f64);
    Ok(())
}

/// Run a segment's CPU work (tags, compression, HMACs: ~0.4 s for 50,000 events) where it
/// does not hold up the requests queued on this worker: on a multi-threaded runtime (the
/// gateway's) the worker hands its other tasks over first; elsewhere (the CLI's single pass,
/// tests) it runs in place.
fn cpu<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

async fn renew(store: &dyn Store, pass: &ArchivePass) -> Result<(), ArchiveError> {
    let now = crate::now_ms();
    if store
        .take_lease(LEASE, &pass.holder, now, pass.lease_ms)
        .await?
    {
        Ok(())
    } else {
        Err(ArchiveError::LeaseHeld)
    }
}

/// Where a chain's next segment starts: its first seq, the tag its first event chains
/// from, and the SHA-256 of the manifest before it (zeros at the chain's start).
#[derive(Debug, Clone)]
struct Position {
    first: i64,
    prev_tag: Vec<u8>,
    prev_manifest: Vec<u8>,
}

impl Position {
    /// Where the chain goes on after its last recorded segment.
    async fn of(store: &dyn Store, chain: &str) -> Result<Self, ArchiveError> {
        let recorded = store.audit_segments(chain).await?;
        Ok(match recorded.last() {
            Some(s) => Self::after(s),
            None => Self {
                first: 1,
                prev_tag: segment::ZERO_HASH.to_vec(),
                prev_manifest: segment::ZERO_HASH.to_vec(),
            },
        })
    }

    /// Where the chain goes on after `s`.
    fn after(s: &AuditSegment) -> Self {
        Self {
            first: s.last_seq + 1,
            prev_tag: s.last_tag.clone(),
            prev_manifest: s.manifest_sha256.clone(),
        }
    }
}

/// A segment in the sink, checked, ready to be recorded: its row, whether an earlier pass
/// had written it, and the bytes this pass wrote for it.
struct Ready {
    row: AuditSegment,
    adopted: bool,
    written: u64,
}

/// Archive a chain's segments one after another, after deleting the covered rows a stopped
/// pass left. Paced, each segment is read a page at a time, its rows checked by the store a
/// step at a time, recorded, and its rows deleted a chunk at a time, one step after another
/// at the pass's rate.
async fn archive_chain(
    store: &dyn Store,
    archive: Archive<'_>,
    key: &AuditKey,
    (pass, progress, pace): (&ArchivePass, &Progress<'_>, &mut Pace),
    chain: &str,
    report: &mut ArchiveReport,
) -> Result<(), ArchiveError> {
    let mut at = Position::of(store, chain).await?;
    renew(store, pass).await?;
    report.events += drain(store, chain, pace, pass.max_events).await?;
    if !pace.paced() {
        return overlapped(store, archive, key, (pass, progress), chain, (at, report)).await;
    }
    while let Some(seg) = prepare(store, archive, key, (pass, &mut *pace), chain, &at).await? {
        at = Position::after(&seg.row);
        renew(store, pass).await?;
        check(store, &seg.row, pace).await?;
        record(store, &seg.row).await?;
        let gone = drain(store, chain, pace, pass.max_events).await?;
        tally(report, &seg, gone);
        progress(&seg.row);
    }
    Ok(())
}

/// Unpaced: while one segment is recorded and its rows deleted, the next is read, checked,
/// compressed, uploaded and read back, so the database's work and this process's overlap.
/// The next one's objects may thus reach the sink before the one before it is recorded; a
/// pass stopped there leaves both in the sink, and the next pass adopts them in order, as
/// after any stop.
async fn overlapped(
    store: &dyn Store,
    archive: Archive<'_>,
    key: &AuditKey,
    (pass, progress): (&ArchivePass, &Progress<'_>),
    chain: &str,
    (mut at, report): (Position, &mut ArchiveReport),
) -> Result<(), ArchiveError> {
    let (mut reads, mut deletes) = (Pace::new(0), Pace::new(0));
    let mut ready = prepare(store, archive, key, (pass, &mut reads), chain, &at).await?;
    while let Some(seg) = ready {
        at = Position::after(&seg.row);
        renew(store, pass).await?;
        let (gone, next) = tokio::join!(
            async {
                record(store, &seg.row).await?;
                Ok::<_, ArchiveError>(drain(store, chain, &mut deletes, pass.max_events).await?)
            },
            prepare(store, archive, key, (pass, &mut reads), chain, &at)
        );
        tally(report, &seg, gone?);
        progress(&seg.row);
        ready = next?;
    }
    Ok(())
}

/// Count a recorded segment and the rows its deletion took out of the hot table.
fn tally(report: &mut ArchiveReport, seg: &Ready, gone: u64) {
    report.segments += 1;
    report.events += gone;
    report.adopted += u64::from(seg.adopted);
    report.bytes += seg.written;
}

/// Record a checked segment (the store refuses it unless the hot rows are exactly the
/// segment's); its rows are deleted next ([`drain`]).
async fn record(store: &dyn Store, row: &AuditSegment) -> Result<(), ArchiveError> {
    let covered = store.record_audit_segment(row).await?;
    failpoint("archive_after_record");
    metrics::counter!("shardgate_audit_archived_segments_total").increment(1);
    tracing::info!(chain_id = %row.chain_id, first_seq = row.first_seq, last_seq = row.last_seq, events = covered, key = %row.manifest_key, "audit segment archived");
    Ok(())
}

/// The chain's segment at `at`, in the sink and checked: one a stopped pass left there
/// (adopted as it is), or a new one of the events old enough; none when no event is.
async fn prepare(
    store: &dyn Store,
    archive: Archive<'_>,
    key: &AuditKey,
    (pass, pace): (&ArchivePass, &mut Pace),
    chain: &str,
    at: &Position,
) -> Result<Option<Ready>, ArchiveError> {
    let (sealed, adopted, written) = match adoptable(archive, key, chain, at.first).await? {
        Some(sealed) => (sealed, true, 0),
        None => {
            let records =
                old_events(store, key, (pass, pace), chain, (at.first, &at.prev_tag)).await?;
            if records.is_empty() {
                return Ok(None);
            }
            let (sealed, written) = upload(
                archive,
                key,
                &records,
                (&at.prev_manifest, pass.retention_ms),
            )
            .await?;
            (sealed, false, written)
        }
    };
    let (m, manifest_key, manifest_sha) = sealed;
    if m.prev_manifest_sha256 != hex::encode(&at.prev_manifest)
        || m.prev_tag != hex::encode(&at.prev_tag)
    {
        return Err(refused(
            chain,
            at.first,
            format!("{manifest_key} does not follow the chain's recorded segments"),
        ));
    }
    let row = m
        .row(&manifest_key, &manifest_sha, crate::now_ms())
        .map_err(|e| refused(chain, at.first, e))?;
    Ok(Some(Ready {
        row,
        adopted,
        written,
    }))
}

/// A manifest, where it is stored, and its SHA-256.
type Sealed = (Manifest, String, Vec<u8>);

/// A segment at `first` already in the sink (a stopped pass wrote it but did not record
/// it), read back and checked: it is recorded as it is.
async fn adoptable(
    archive: Archive<'_>,
    key: &AuditKey,
    chain: &str,
    first: i64,
) -> Result<Option<Sealed>, ArchiveError> {
    let at = format!(
        "{}{first:020}-",
        segment::chain_prefix(archive.prefix, chain)
    );
    let manifests: Vec<String> = archive
        .sink
        .list(&at)
        .await?
        .into_iter()
        .filter(|k| k.ends_with(".manifest"))
        .collect();
    let Some(mkey) = manifests.first() else {
        return Ok(None);
    };
    if manifests.len() > 1 {
        return Err(refused(
            chain,
            first,
            format!(
                "more than one archived segment starts here ({})",
                manifests.join(", ")
            ),
        ));
    }
    let sealed = read_back(archive, key, mkey)
        .await
        .map_err(|e| refused(chain, first, e))?;
    Ok(Some(sealed))
}

/// Read a manifest and its object back from the sink and check them (HMACs, hash, events).
async fn read_back(archive: Archive<'_>, key: &AuditKey, mkey: &str) -> Result<Sealed, String> {
    let bytes = archive
        .sink
        .get(mkey)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{mkey} is not in the sink after it was written"))?;
    let m = Manifest::open(&bytes, key).map_err(|e| format!("{mkey}: {e}"))?;
    let object = archive
        .sink
        .get(&m.object_key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} is not in the sink", m.object_key))?;
    cpu(|| segment::open_object(&object, &m, key))
        .map_err(|e: SegmentError| format!("{}: {e}", m.object_key))?;
    failpoint("archive_after_read_back");
    Ok((m, mkey.to_string(), segment::sha256(&bytes)))
}

/// The chain's hot events from `first` on that go in its next segment: consecutive, each
/// older than the cutoff, within the segment's bounds, each checked (link and tag) so that
/// only a sound chain is archived. Read a step at a time ([`Pace::step_size`]).
async fn old_events(
    store: &dyn Store,
    key: &AuditKey,
    (pass, pace): (&ArchivePass, &mut Pace),
    chain: &str,
    (first, prev_tag): (i64, &[u8]),
) -> Result<Vec<AuditRecord>, ArchiveError> {
    let mut seg = Cut {
        out: Vec::new(),
        bytes: 0,
        full: false,
    };
    let page_size = pace.step_size(pass.max_events);
    while !seg.full && seg.out.len() < pass.max_events {
        let want = page_size.min(pass.max_events - seg.out.len());
        let after = seg.out.last().map_or(first - 1, |r| r.seq);
        let limit = i64::try_from(want).unwrap_or(i64::MAX);
        let page = store.audit_events(chain, after, limit).await?;
        let n = page.len();
        cpu(|| seg.extend(page, key, pass, (chain, first, prev_tag)))?;
        pace.step(n as u64).await;
        if n < want {
            break;
        }
    }
    Ok(seg.out)
}

/// A segment being cut: its events so far, their payload bytes, and whether it is full
/// (the next event is too young, or would pass the byte bound).
struct Cut {
    out: Vec<AuditRecord>,
    bytes: usize,
    full: bool,
}

impl Cut {
    /// Add the events of `page` that go in the segment, each checked (link and tag).
    fn extend(
        &mut self,
        page: Vec<AuditRecord>,
        key: &AuditKey,
        pass: &ArchivePass,
        (chain, first, prev_tag): (&str, i64, &[u8]),
    ) -> Result<(), ArchiveError> {
        for r in page {
            let size = segment::payload_len(&r);
            if r.ts_ms >= pass.cutoff_ms
                || (!self.out.is_empty() && self.bytes + size > pass.max_bytes)
            {
                self.full = true;
                return Ok(());
            }
            let (want_seq, want_prev) = match self.out.last() {
                Some(p) => (p.seq + 1, p.tag.as_slice()),
                None => (first, prev_tag),
            };
            if r.seq != want_seq || r.prev_tag != want_prev || !tag_matches(key, &r) {
                return Err(refused(chain, want_seq, "the hot chain is broken here (run `shardgate audit verify`); nothing is archived past it"));
            }
            self.bytes += size;
            self.out.push(r);
        }
        Ok(())
    }
}

/// Put a new segment's object, then its manifest, each only if absent, and read both back:
/// the segment as stored, and the bytes written.
async fn upload(
    archive: Archive<'_>,
    key: &AuditKey,
    records: &[AuditRecord],
    (prev_manifest, retention_ms): (&[u8], i64),
) -> Result<(Sealed, u64), ArchiveError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(refused("", 0, "empty segment"));
    };
    let (object_key, manifest_key) =
        segment_keys(archive.prefix, &first.chain_id, first.seq, last.seq);
    let fail = |e: SegmentError| refused(&first.chain_id, first.seq, e);
    let object = cpu(|| segment::encode_object(records)).map_err(fail)?;
    let newest = records.iter().map(|r| r.ts_ms).max().unwrap_or(last.ts_ms);
    let until = Some(newest.saturating_add(retention_ms));
    let mut written = 0u64;
    let put = archive
        .sink
        .put_if_absent(&object_key, &object, until)
        .await?;
    failpoint("archive_after_object");
    // Created: the manifest names the bytes just written (the read-back below checks them).
    // Already there (a stopped pass's, same events): the manifest names what is stored.
    let stored = if put == Put::Created {
        written += object.len() as u64;
        object
    } else {
        archive.sink.get(&object_key).await?.ok_or_else(|| {
            refused(
                &first.chain_id,
                first.seq,
                format!("{object_key} is not in the sink after it was written"),
            )
        })?
    };
    let (manifest, sealed) = cpu(|| {
        segment::manifest_for(records, &object_key, &stored, prev_manifest).map(|m| {
            let sealed = m.seal(key);
            (m, sealed)
        })
    })
    .map_err(fail)?;
    let manifest_put = archive
        .sink
        .put_if_absent(&manifest_key, &sealed, until)
        .await?;
    if manifest_put == Put::Created {
        written += sealed.len() as u64;
    }
    failpoint("archive_after_manifest");
    let back = if put == Put::Created && manifest_put == Put::Created {
        // Both written now, from events whose tags were just checked: the sink must give
        // back exactly those bytes.
        let written_now = [(&object_key, &stored), (&manifest_key, &sealed)];
        read_back_written(archive, &written_now)
            .await
            .map(|()| (manifest, manifest_key.clone(), segment::sha256(&sealed)))
    } else {
        // Something of an earlier pass was there: check it all (HMACs, hash, events).
        read_back(archive, key, &manifest_key).await
    };
    let back = back.map_err(|e| refused(&first.chain_id, first.seq, e))?;
    Ok((back, written))
}

/// Read objects just written back from the sink: each must be byte for byte what was
/// written (a hash the sink reports is not trusted: moto accepts a wrong one).
async fn read_back_written(
    archive: Archive<'_>,
    written: &[(&String, &Vec<u8>)],
) -> Result<(), String> {
    for (k, bytes) in written {
        let back = archive
            .sink
            .get(k)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{k} is not in the sink after it was written"))?;
        if back != **bytes {
            return Err(format!(
                "{k} read back is not what was written ({} bytes, {} written)",
                back.len(),
                bytes.len()
            ));
        }
    }
    failpoint("archive_after_read_back");
    Ok(())
}

/// The background archiver's settings (`[audit.archive]`).
#[derive(Debug, Clone)]
pub struct ArchiverSettings {
    /// Events younger than this stay hot.
    pub keep_hot: std::time::Duration,
    /// Time between passes.
    pub interval: std::time::Duration,
    /// Most events per segment.
    pub max_events: usize,
    /// Most payload bytes per segment.
    pub max_bytes: usize,
    /// Lease length.
    pub lease_ms: i64,
    /// Key prefix in the sink.
    pub prefix: String,
    /// How long a segment is kept after its newest event.
    pub retention: std::time::Duration,
    /// Most events per second (0: unpaced).
    pub rate_per_sec: u64,
}

/// The actor of the background archiver's events.
pub const ARCHIVER_ACTOR: &str = "audit-archiver";

/// Run the archiver in this process: a pass now and every `interval`, under the lease (a
/// pass another replica holds the lease for is skipped). Failures are logged and counted
/// (`shardgate_audit_archive_failures_total`); nothing is deleted from the hot table for a
/// segment that failed, and the next pass tries again. Expired segments of a directory
/// sink are deleted, audited on this process's chain (`auditor`).
pub fn spawn_archiver(
    store: std::sync::Arc<dyn Store>,
    sink: std::sync::Arc<dyn crate::domain::audit::archive::ArchiveSink>,
    (key, auditor): (
        std::sync::Arc<AuditKey>,
        std::sync::Arc<crate::domain::audit::Auditor>,
    ),
    settings: ArchiverSettings,
    holder: String,
) -> tokio::task::JoinHandle<()> {
    let origin = crate::domain::audit::Origin {
        actor: ARCHIVER_ACTOR.into(),
        ..Default::default()
    };
    tokio::spawn(async move {
        loop {
            let keep = i64::try_from(settings.keep_hot.as_millis()).unwrap_or(i64::MAX);
            let pass = ArchivePass {
                cutoff_ms: crate::now_ms().saturating_sub(keep),
                max_events: settings.max_events,
                max_bytes: settings.max_bytes,
                holder: holder.clone(),
                lease_ms: settings.lease_ms,
                retention_ms: i64::try_from(settings.retention.as_millis()).unwrap_or(i64::MAX),
                rate_per_sec: settings.rate_per_sec,
            };
            let archive = Archive {
                sink: sink.as_ref(),
                prefix: &settings.prefix,
            };
            let expiry = Expiry {
                auditor: &auditor,
                origin: &origin,
            };
            match run_pass(store.as_ref(), archive, &key, &pass, Some(expiry), &|_| {}).await {
                Ok(r) => {
                    metrics::gauge!("shardgate_audit_archive_last_success_timestamp_seconds")
                        .set(crate::now_ms() as f64 / 1000.0);
                    if r.segments > 0 || r.expired_segments > 0 {
                        tracing::info!(
                            segments = r.segments,
                            events = r.events,
                            bytes = r.bytes,
                            expired_segments = r.expired_segments,
                            "audit archive pass"
                        );
                    }
                }
                Err(ArchiveError::LeaseHeld) => {
                    tracing::debug!("audit archive pass skipped: another replica holds the lease");
                }
                Err(e) => {
                    metrics::counter!("shardgate_audit_archive_failures_total").increment(1);
                    tracing::warn!(error = %e, "audit archive pass failed; nothing unarchived was deleted, retrying next pass");
                }
            }
            tokio::time::sleep(settings.interval).await;
        }
    })
}
