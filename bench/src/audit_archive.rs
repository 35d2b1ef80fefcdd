//! The audit-archive figures' helpers (scripts/bench.sh `--only archive`, `--only growth`):
//! `audit-fill` writes a history of chained audit events spread back over days, through the
//! gateway's own writer and audit key (so the archiver accepts them), and `archive-raw` is
//! the archiver's floor: the same rows read page by page, the same compressed segment bytes
//! PUT to a directory sink, and nothing else (no tag checks, no manifest, no read-back, no
//! record, no delete).

use anyhow::{anyhow, Context, Result};
use shardgate::app::config::{AuditConfig, StoreConfig};
use shardgate::domain::audit::archive::segment::{encode_object, payload_len, segment_keys};
use shardgate::domain::audit::archive::{ArchiveSink, DirSink};
use shardgate::domain::audit::{AuditKey, Auditor, Event};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events per `record_all` call of the fill (one queue entry, one writer batch at most).
const FILL_CHUNK: u64 = 500;

/// What `audit-fill` writes.
pub(crate) struct Fill<'a> {
    /// Gateway database (already migrated by the gateway).
    pub url: &'a str,
    /// The gateway's audit key file.
    pub key_file: &'a Path,
    /// Events in all.
    pub events: u64,
    /// The oldest event is this many days old; the newest is now; times rise evenly.
    pub span_days: u64,
    /// Callers of the writer at once.
    pub concurrency: usize,
}

/// Write `fill.events` shard-read-shaped events on one new chain, event `i` stamped
/// `now - span + i * span / events`. Prints `{"events", "seconds", "per_sec"}`.
pub(crate) async fn fill(fill: Fill<'_>) -> Result<()> {
    let store = shardgate_store::connect(fill.url, StoreConfig::default().max_connections)
        .await
        .context("connect the store")?;
    let key = AuditKey::load(fill.key_file).map_err(|e| anyhow!("audit key: {e}"))?;
    let cfg = AuditConfig::default();
    let auditor = Auditor::start(
        store,
        Arc::new(key),
        (cfg.queue_capacity, cfg.detached_queue_capacity),
        cfg.batch_max,
        Duration::from_secs(cfg.checkpoint_interval_secs),
        None,
    )
    .await
    .context("start an audit chain")?;
    let span_ms = i64::try_from(fill.span_days.saturating_mul(86_400_000))?;
    let start_ms = shardgate::now_ms() - span_ms;
    let n = fill.events.max(1);
    let next = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..fill.concurrency.max(1) {
        let (auditor, next) = (auditor.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(FILL_CHUNK, Ordering::Relaxed);
                if from >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let events = (from..(from + FILL_CHUNK).min(n))
                    .map(|i| {
                        let mut e = Event::new(&format!("fill-{i}"), "bench", "shard.get")
                            .account(&format!("local-{:06}", i % 1000))
                            .shard("s0")
                            .version(1)
                            .backend("local");
                        e.ts_ms =
                            start_ms + (i128::from(i) * i128::from(span_ms) / i128::from(n)) as i64;
                        e
                    })
                    .collect();
                auditor
                    .record_all(events)
                    .await
                    .map_err(|e| anyhow!("audit write refused: {}", e.outcome()))?;
                if (from / FILL_CHUNK).is_multiple_of(2000) {
                    eprintln!("audit-fill: {from} of {n} events");
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("a fill task panicked")??;
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({ "events": n, "seconds": secs, "per_sec": n as f64 / secs })
    );
    Ok(())
}

/// What `archive-raw` reads and where it writes.
pub(crate) struct Raw<'a> {
    /// Gateway database.
    pub url: &'a str,
    /// Directory sink root (a directory of its own, on the archive's file system).
    pub dir: &'a Path,
    /// Events at or after this time (unix ms) are not read, as the archiver's cutoff.
    pub cutoff_ms: i64,
    /// Most events per segment (`[audit.archive] segment_max_events`).
    pub max_events: usize,
    /// Most payload bytes per segment (`[audit.archive] segment_max_bytes`).
    pub max_bytes: usize,
}

/// Every chain's rows older than the cutoff, cut into segments as the archiver cuts them,
/// compressed and PUT. Prints `{"events", "segments", "bytes", "seconds", "per_sec"}`.
pub(crate) async fn raw(raw: Raw<'_>) -> Result<()> {
    let store = shardgate_store::connect(raw.url, StoreConfig::default().max_connections)
        .await
        .context("connect the store")?;
    let sink = DirSink::new(raw.dir);
    let limit = i64::try_from(raw.max_events)?;
    let began = Instant::now();
    let (mut events, mut segments, mut bytes) = (0u64, 0u64, 0u64);
    for chain in store.audit_chains().await? {
        let mut after = 0i64;
        loop {
            let page = store.audit_events(&chain, after, limit).await?;
            let mut size = 0usize;
            let rows: Vec<_> = page
                .into_iter()
                .take_while(|r| r.ts_ms < raw.cutoff_ms)
                .take_while(|r| {
                    size += payload_len(r);
                    size == payload_len(r) || size <= raw.max_bytes
                })
                .collect();
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                break;
            };
            let (key, _) = segment_keys("raw/", &chain, first.seq, last.seq);
            let object = encode_object(&rows).map_err(|e| anyhow!("{e}"))?;
            sink.put_if_absent(&key, &object, None).await?;
            (events, segments, bytes) = (
                events + rows.len() as u64,
                segments + 1,
                bytes + object.len() as u64,
            );
            after = last.seq;
        }
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "events": events, "segments": segments, "bytes": bytes,
            "seconds": secs, "per_sec": events as f64 / secs,
        })
    );
    Ok(())
}
