//! `raw_unwrap_local`: what a GET on the `local` backend must spend on crypto, without HTTP or
//! SQL: unwrap the data key on the keyring (AES-256-GCM) and open the shard seal (AES-256-GCM),
//! through the gateway's own `envelope::open`, from as many threads as the gateway has cores.

use anyhow::{anyhow, bail, Context, Result};
use shardgate::envelope;
use shardgate_backends::local::LocalBackend;
use shardgate_backends::ShardIdentity;
use shardgate_store::ShardVersionRow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Open sealed rows of `shard_bytes` for `seconds` from `threads` tasks; prints ops/s and
/// this process's CPU per op.
pub async fn run(keyring: &Path, shard_bytes: usize, threads: usize, seconds: u64) -> Result<()> {
    let local = Arc::new(
        LocalBackend::open("local", keyring, Duration::from_secs(3600))
            .context("open the local keyring")?,
    );
    let mut rows = Vec::new();
    for i in 0..64 {
        let id = ShardIdentity::new(format!("local-{i:06}"), "s0", 1);
        let sealed = envelope::seal(local.as_ref(), &id, &vec![0x5au8; shard_bytes])
            .await
            .map_err(|e| anyhow!("seal: {e}"))?;
        rows.push(ShardVersionRow {
            account: id.account.clone(),
            shard: id.shard.clone(),
            version: 1,
            format_version: i16::from(id.format_version),
            backend: "local".into(),
            key_ref: sealed.wrapped.key_ref,
            key_version: i64::from(sealed.wrapped.key_version),
            wrapped_dek: sealed.wrapped.blob,
            nonce: sealed.nonce.to_vec(),
            ciphertext: sealed.ciphertext,
            created_at: 0,
            created_by: "bench".into(),
            key_commitment: Some(sealed.commitment.to_vec()),
        });
    }
    let rows = Arc::new(rows);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..threads {
        let (local, rows, measuring, stop, done) = (
            local.clone(),
            rows.clone(),
            measuring.clone(),
            stop.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let row = &rows[i % rows.len()];
                let plain = envelope::open(local.as_ref(), row)
                    .await
                    .map_err(|e| anyhow!("open: {e}"))?;
                if plain.len() != shard_bytes {
                    bail!("opened {} bytes", plain.len());
                }
                i += 1;
                if measuring.load(Ordering::Relaxed) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                // Let the other tasks of this worker run, as a server's tasks would.
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = crate::proc_cpu::Reading::now();
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let (own, _pg) = cpu.since();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.context("worker task")??;
    }
    let n = done.load(Ordering::Relaxed);
    if n == 0 {
        bail!("raw_unwrap_local: nothing opened");
    }
    println!(
        "{}",
        serde_json::json!({
            "baseline": "raw_unwrap_local",
            "ops": n,
            "seconds": secs,
            "per_sec": n as f64 / secs,
            "threads": threads,
            "cpu_seconds_own": own,
            "cpu_us_per_op": own * 1e6 / n as f64,
        })
    );
    Ok(())
}
