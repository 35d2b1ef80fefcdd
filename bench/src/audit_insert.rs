//! `audit_insert`: the gateway's own audit write path without HTTP. One event per operation
//! (a GET records one), recorded durably through `Auditor::record` from the gateway's
//! concurrency of callers, so its batching (one transaction per queue drain, chained HMACs)
//! is included exactly as a GET pays for it.

use crate::proc_cpu::Reading;
use anyhow::{bail, Context, Result};
use shardgate::audit::{AuditKey, Auditor, Event};
use shardgate::config::{AuditConfig, StoreConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Record shard-read-shaped events for `seconds` (after a 1 s warm-up) from `concurrency`
/// tasks into the gateway database at `url` (already migrated by the gateway).
pub async fn run(url: &str, concurrency: usize, seconds: u64) -> Result<()> {
    let store = shardgate_store::connect(url, StoreConfig::default().max_connections)
        .await
        .context("connect the store")?;
    let cfg = AuditConfig::default();
    let mut key = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut key);
    let auditor = Auditor::start(
        store,
        Arc::new(AuditKey::from_bytes(key)),
        cfg.queue_capacity,
        cfg.batch_max,
        Duration::from_secs(cfg.checkpoint_interval_secs),
    )
    .await
    .context("start an audit chain")?;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (auditor, measuring, stop, done) = (
            auditor.clone(),
            measuring.clone(),
            stop.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let event = Event::new(&format!("bench-{t}-{i}"), "bench", "shard.get")
                    .account(&format!("local-{:06}", i % 1000))
                    .shard("s0")
                    .version(1)
                    .backend("local");
                auditor
                    .record(event)
                    .await
                    .map_err(|e| anyhow::anyhow!("audit write refused: {:?}", e.code))?;
                if measuring.load(Ordering::Relaxed) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = Reading::now();
    let t = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    let (own, pg) = cpu.since();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.context("worker task")??;
    }
    let n = done.load(Ordering::Relaxed);
    if n == 0 {
        bail!("audit_insert: no event recorded");
    }
    println!(
        "{}",
        serde_json::json!({
            "baseline": "audit_insert",
            "ops": n,
            "seconds": secs,
            "per_sec": n as f64 / secs,
            "concurrency": concurrency,
            "cpu_seconds_own": own,
            "cpu_seconds_postgres": pg,
            "cpu_us_per_op": (own + pg) * 1e6 / n as f64,
        })
    );
    Ok(())
}
