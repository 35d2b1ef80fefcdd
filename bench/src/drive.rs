//! The loop every baseline runs: `op` from `concurrency` tasks, a 1 s warm-up, then a timed
//! window of `seconds` with this process's CPU (and PostgreSQL's, when it takes part) read
//! from /proc around it; prints one JSON line.

use crate::proc_cpu::Reading;
use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Run `op` (given a sequence number) from `concurrency` tasks for `seconds` after a warm-up;
/// prints ops/s and CPU per op, PostgreSQL's CPU included when `with_postgres`.
pub(crate) async fn drive<F, Fut>(
    name: &str,
    concurrency: usize,
    seconds: u64,
    with_postgres: bool,
    op: F,
) -> Result<()>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, measuring, stop, done, seq) = (
            op.clone(),
            measuring.clone(),
            stop.clone(),
            done.clone(),
            seq.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = seq.fetch_add(1, Ordering::Relaxed);
                op(i).await?;
                if measuring.load(Ordering::Relaxed) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                // An op that never waits (CPU only) must still let the worker run others.
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
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
    let pg = if with_postgres { pg } else { 0.0 };
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.context("worker task")??;
    }
    let n = done.load(Ordering::Relaxed);
    if n == 0 {
        bail!("{name}: no operation completed");
    }
    println!(
        "{}",
        serde_json::json!({
            "baseline": name,
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
