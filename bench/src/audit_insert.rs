//! `audit_insert`: the gateway's own audit write path without HTTP. One event per operation
//! (a GET records one), recorded durably through `Auditor::record` from the gateway's
//! concurrency of callers, so its batching (one transaction per queue drain, chained HMACs)
//! is included exactly as a GET pays for it.

use crate::drive::drive;
use anyhow::{Context, Result};
use shardgate::app::config::{AuditConfig, StoreConfig};
use shardgate::domain::audit::{AuditKey, Auditor, Event};
use std::sync::Arc;
use std::time::Duration;

/// Record shard-read-shaped events for `seconds` (after a 1 s warm-up) from `concurrency`
/// tasks into the gateway database at `url` (already migrated by the gateway).
pub(crate) async fn run(url: &str, concurrency: usize, seconds: u64) -> Result<()> {
    let store = shardgate_store::connect(url, StoreConfig::default().max_connections)
        .await
        .context("connect the store")?;
    let cfg = AuditConfig::default();
    let mut key = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut key);
    let auditor = Auditor::start(
        store,
        Arc::new(AuditKey::from_bytes(key)),
        (cfg.queue_capacity, cfg.detached_queue_capacity),
        cfg.batch_max,
        Duration::from_secs(cfg.checkpoint_interval_secs),
        None,
    )
    .await
    .context("start an audit chain")?;
    drive("audit_insert", concurrency, seconds, true, move |i| {
        let auditor = auditor.clone();
        async move {
            let event = Event::new(&format!("bench-{i}"), "bench", "shard.get")
                .account(&format!("local-{:06}", i % 1000))
                .shard("s0")
                .version(1)
                .backend("local");
            auditor
                .record(event)
                .await
                .map_err(|e| anyhow::anyhow!("audit write refused: {}", e.outcome()))?;
            Ok(())
        }
    })
    .await
}
