//! `shardgate-bench`: the baselines `scripts/bench.sh` measures next to the gateway, each a
//! subcommand that prints one JSON object on stdout.
//!
//! ```text
//! shardgate-bench kms-create-key --endpoint URL [--region R]
//!     creates a symmetric KMS key, prints {"key_arn": "..."}
//! shardgate-bench kms-decrypt --endpoint URL --key-id ARN [--region R] [--n N] [--seconds S]
//!                             [--warmup W]
//!     one GenerateDataKey with a shard-like EncryptionContext, then sequential Decrypt calls
//!     of its blob (KeyId pinned, same context) on one client with the aws-kms backend's
//!     client settings, N calls or for S seconds, whichever ends first: the bare cost of the
//!     call the backend makes on a cache miss. Prints latency percentiles in ms.
//! shardgate-bench migrate-raw --keyring FILE --module SO --token-label L --pin-file F
//!                             --kek-label K [--pool-size P] [--n N] [--warmup W] [--batch B]
//!     the re-wrap loop of a local -> pkcs11 migration job without HTTP or database: for N
//!     shard identities (data keys wrapped on the local keyring first, not timed), unwrap on
//!     the local backend, wrap on the pkcs11 backend, verify (unwrap) on the pkcs11 backend,
//!     one item at a time (B = 1, the default) or B items per call (`rewrap_many_from`,
//!     `verify_many`: one HSM checkout each, as a worker's chunk at an unbounded rate), one
//!     call after another. Prints {"n", "seconds", "per_sec", ...}.
//! shardgate-bench null-route --listen ADDR [--shard-bytes B]
//!     the HTTP floor: the shard routes on the gateway's server with nothing behind them
//! shardgate-bench pk-select --url PG --prefix P --accounts N [--concurrency C] [--seconds S]
//! shardgate-bench pk-insert --url PG [--shard-bytes B] [--concurrency C] [--seconds S]
//!     the database floor of a GET / a PUT (plain sqlx on the gateway's database)
//! shardgate-bench audit-insert --url PG [--concurrency C] [--seconds S]
//!     the gateway's audit write path (its batching included), one event per operation
//! shardgate-bench audit-fill --url PG --audit-key FILE [--events N] [--span-days D]
//!                            [--concurrency C]
//!     N chained audit events on a new chain through the gateway's writer and key, stamped
//!     evenly from D days ago to now (the history the archive figures archive)
//! shardgate-bench archive-raw --url PG --dir DIR [--older-than-secs S]
//!                             [--segment-max-events N] [--segment-max-bytes B]
//!     the archiver's floor: every chain's rows older than S read page by page, cut and
//!     compressed as segments, PUT to a directory sink at DIR; nothing checked or deleted
//! shardgate-bench raw-unwrap-local --keyring FILE [--shard-bytes B] [--threads T] [--seconds S]
//!     keyring unwrap + shard open through `envelope::open`, no HTTP, no SQL
//! ```
//! The baselines print {"baseline", "ops", "per_sec", "cpu_us_per_op", ...}: CPU of the
//! process itself plus every PostgreSQL process, from /proc, over the timed window.
//! Credentials come from the standard provider chain (the script exports moto's dummies).

mod audit_archive;
mod audit_insert;
mod drive;
mod null_route;
mod proc_cpu;
mod raw_unwrap;
mod sql;

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use shardgate_backends::local::LocalBackend;
use shardgate_backends::pkcs11::{Pkcs11Backend, Pkcs11Config};
use shardgate_backends::{KeyBackend, ShardIdentity, Version};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `--name value` pairs after the subcommand.
struct Args(HashMap<String, String>);

impl Args {
    fn parse(rest: &[String]) -> Result<Self> {
        let mut m = HashMap::new();
        let mut it = rest.iter();
        while let Some(k) = it.next() {
            let Some(name) = k.strip_prefix("--") else {
                bail!("unexpected argument {k:?}");
            };
            let v = it.next().ok_or_else(|| anyhow!("--{name} needs a value"))?;
            m.insert(name.to_string(), v.clone());
        }
        Ok(Self(m))
    }

    fn req(&self, name: &str) -> Result<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("--{name} is required"))
    }

    fn opt(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    fn num(&self, name: &str, default: usize) -> Result<usize> {
        match self.0.get(name) {
            Some(v) => v.parse().with_context(|| format!("--{name} {v:?}")),
            None => Ok(default),
        }
    }
}

async fn kms_client(a: &Args) -> Result<aws_sdk_kms::Client> {
    // The aws-kms backend's client settings: SDK retries off, 2 s connect/attempt timeouts.
    let timeout = std::time::Duration::from_millis(2000);
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(a.opt("region", "us-east-1")))
        .endpoint_url(a.req("endpoint")?)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(timeout)
                .operation_attempt_timeout(timeout)
                .build(),
        )
        .load()
        .await;
    Ok(aws_sdk_kms::Client::new(&conf))
}

async fn kms_create_key(a: &Args) -> Result<()> {
    let client = kms_client(a).await?;
    let key = client
        .create_key()
        .description("shardgate bench")
        .send()
        .await
        .context("CreateKey")?;
    let arn = key
        .key_metadata()
        .and_then(|m| m.arn())
        .ok_or_else(|| anyhow!("CreateKey answered no ARN"))?;
    println!("{}", serde_json::json!({ "key_arn": arn }));
    Ok(())
}

/// The value at quantile `q` (0..=1) of sorted samples, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn kms_decrypt(a: &Args) -> Result<()> {
    let key_id = a.req("key-id")?.to_string();
    let n = a.num("n", 500)?.max(1);
    let seconds = a.num("seconds", 0)?;
    let warmup = a.num("warmup", 50)?;
    let client = kms_client(a).await?;
    // Same shape as the backend's context (FORMAT.md): four short entries.
    let ctx: HashMap<String, String> = [
        ("shardgate:format", "2"),
        ("shardgate:account", "bench-acct-000001"),
        ("shardgate:shard", "s0"),
        ("shardgate:version", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let dk = client
        .generate_data_key()
        .key_id(&key_id)
        .key_spec(DataKeySpec::Aes256)
        .set_encryption_context(Some(ctx.clone()))
        .send()
        .await
        .context("GenerateDataKey")?;
    let blob = dk
        .ciphertext_blob()
        .ok_or_else(|| anyhow!("GenerateDataKey answered no CiphertextBlob"))?
        .as_ref()
        .to_vec();
    let mut samples = Vec::with_capacity(n);
    let mut started: Option<Instant> = None;
    for i in 0..warmup + n {
        if i == warmup {
            started = Some(Instant::now());
        }
        if seconds > 0 && started.is_some_and(|s| s.elapsed().as_secs() >= seconds as u64) {
            break;
        }
        let t = Instant::now();
        let out = client
            .decrypt()
            .key_id(&key_id)
            .ciphertext_blob(Blob::new(blob.clone()))
            .set_encryption_context(Some(ctx.clone()))
            .send()
            .await
            .context("Decrypt")?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if out.plaintext().map(|p| p.as_ref().len()) != Some(32) {
            bail!("Decrypt answered no 32-byte plaintext");
        }
        if i >= warmup {
            samples.push(ms);
        }
    }
    let n = samples.len().max(1);
    let total: f64 = samples.iter().sum();
    samples.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "n": n,
            "p50_ms": quantile(&samples, 0.50),
            "p90_ms": quantile(&samples, 0.90),
            "p99_ms": quantile(&samples, 0.99),
            "mean_ms": total / n as f64,
            "per_sec": n as f64 * 1e3 / total,
        })
    );
    Ok(())
}

/// The per-item calls of a local -> pkcs11 migration worker (`KeyBackend::rewrap_from`'s
/// default, then `verify`), on the same keyring file and token as the gateway's, one process,
/// one PKCS#11 context.
async fn migrate_raw(a: &Args) -> Result<()> {
    let n = a.num("n", 100_000)?.max(1);
    let warmup = a.num("warmup", 200)?;
    let local = LocalBackend::open(
        "local",
        &PathBuf::from(a.req("keyring")?),
        Duration::from_secs(3600),
    )
    .context("open the local keyring")?;
    let mut cfg = Pkcs11Config::new(a.req("token-label")?, a.req("kek-label")?);
    cfg.module = PathBuf::from(a.req("module")?);
    cfg.pin_file = Some(PathBuf::from(a.req("pin-file")?));
    cfg.pool_size = a.num("pool-size", 8)?;
    let hsm = Pkcs11Backend::open("hsm", &cfg).context("open the pkcs11 backend")?;
    // The source rows: one local wrap per identity, like the loaded shards (not timed).
    let t = Instant::now();
    let mut rows = Vec::with_capacity(warmup + n);
    for i in 0..warmup + n {
        let id = ShardIdentity::new("mig-raw", format!("s{i:07}"), Version::FIRST);
        let (_dek, w) = local.generate_data_key(&id).await?;
        rows.push((id, w));
    }
    let prepare = t.elapsed().as_secs_f64();
    let batch = a.num("batch", 1)?.max(1);
    let mut started = Instant::now();
    let mut ticks_at_start = proc_cpu::self_ticks();
    if batch == 1 {
        for (i, (id, w)) in rows.iter().enumerate() {
            if i == warmup {
                started = Instant::now();
                ticks_at_start = proc_cpu::self_ticks();
            }
            // One item at a time: unwrap on the source, wrap here (`rewrap_from`'s
            // default), then the proof that the target opens the new wrap.
            let new = hsm
                .rewrap_from(id, &local, w)
                .await
                .context("re-wrap local -> pkcs11")?;
            hsm.verify(id, &new).await.context("verify on pkcs11")?;
        }
    } else {
        // What a worker calls per chunk of a batch at an unbounded rate: the same unwraps,
        // wraps and verifies, `batch` items per HSM checkout.
        let (warm, timed) = rows.split_at(warmup.min(rows.len()));
        for (k, part) in [warm, timed].into_iter().enumerate() {
            if k == 1 {
                started = Instant::now();
                ticks_at_start = proc_cpu::self_ticks();
            }
            for chunk in part.chunks(batch) {
                let moved = hsm.rewrap_many_from(&local, chunk).await;
                let mut new = Vec::with_capacity(chunk.len());
                for ((id, _), m) in chunk.iter().zip(moved) {
                    new.push((id.clone(), m.context("re-wrap local -> pkcs11")?));
                }
                for v in hsm.verify_many(&new).await {
                    v.context("verify on pkcs11")?;
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // The whole process: SoftHSM2 runs inside it, on the calling and blocking threads.
    let cpu_secs =
        proc_cpu::self_ticks().saturating_sub(ticks_at_start) as f64 / proc_cpu::clk_tck();
    println!(
        "{}",
        serde_json::json!({
            "n": n,
            "cpu_us_per_item": cpu_secs * 1e6 / n as f64,
            "warmup": warmup,
            "seconds": secs,
            "per_sec": n as f64 / secs,
            "prepare_seconds": prepare,
            "pool_size": cfg.pool_size,
            "batch": batch,
        })
    );
    Ok(())
}

/// A multi-thread runtime as wide as the gateway's (`#[tokio::main]`: one worker per core).
#[tokio::main]
async fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        bail!("usage: shardgate-bench <kms-create-key|kms-decrypt|migrate-raw|null-route|pk-select|pk-insert|audit-insert|audit-fill|archive-raw|raw-unwrap-local> [--name value ...]");
    };
    let args = Args::parse(rest)?;
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    match cmd.as_str() {
        "kms-create-key" => kms_create_key(&args).await,
        "kms-decrypt" => kms_decrypt(&args).await,
        "migrate-raw" => migrate_raw(&args).await,
        "null-route" => {
            null_route::run(
                &args.opt("listen", "127.0.0.1:0"),
                args.num("shard-bytes", 64)?,
            )
            .await
        }
        "pk-select" => {
            sql::pk_select(
                args.req("url")?,
                args.req("prefix")?,
                args.num("accounts", 1000)?.max(1),
                args.num("concurrency", 16)?.max(1),
                args.num("seconds", 10)? as u64,
            )
            .await
        }
        "pk-insert" => {
            sql::pk_insert(
                args.req("url")?,
                args.num("shard-bytes", 64)?,
                args.num("concurrency", 16)?.max(1),
                args.num("seconds", 10)? as u64,
            )
            .await
        }
        "audit-insert" => {
            audit_insert::run(
                args.req("url")?,
                args.num("concurrency", 16)?.max(1),
                args.num("seconds", 10)? as u64,
            )
            .await
        }
        "audit-fill" => {
            audit_archive::fill(audit_archive::Fill {
                url: args.req("url")?,
                key_file: Path::new(args.req("audit-key")?),
                events: args.num("events", 1_000_000)? as u64,
                span_days: args.num("span-days", 60)? as u64,
                concurrency: args.num("concurrency", 8)?,
            })
            .await
        }
        "archive-raw" => {
            audit_archive::raw(audit_archive::Raw {
                url: args.req("url")?,
                dir: Path::new(args.req("dir")?),
                cutoff_ms: shardgate::now_ms()
                    - i64::try_from(args.num("older-than-secs", 0)?)? * 1000,
                max_events: args.num("segment-max-events", 50_000)?.max(1),
                max_bytes: args.num("segment-max-bytes", 32 << 20)?.max(1),
            })
            .await
        }
        "raw-unwrap-local" => {
            raw_unwrap::run(
                &PathBuf::from(args.req("keyring")?),
                args.num("shard-bytes", 64)?,
                args.num("threads", cores)?.max(1),
                args.num("seconds", 10)? as u64,
            )
            .await
        }
        other => bail!("unknown subcommand {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantile_is_nearest_rank() {
        let s = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&s, 0.5), 2.0);
        assert_eq!(quantile(&s, 0.99), 4.0);
        assert_eq!(quantile(&s, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
