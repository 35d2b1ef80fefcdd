//! The sections the use cases own: `[idempotency]` and `[retention]` (shard writes),
//! `[migration]` (the tier-migration workers), `[approvals]` (dual control).

use serde::{Deserialize, Serialize};

/// `[idempotency]`: the stored first answers of `PUT`/`DELETE` requests made with an
/// `Idempotency-Key` header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How long an answer is replayed to a retry with the same key, in seconds (default one
    /// day); older records are ignored and purged.
    #[serde(default = "d_idem_window")]
    pub window_secs: u64,
}

fn d_idem_window() -> u64 {
    86_400
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            window_secs: d_idem_window(),
        }
    }
}

/// `[retention]`: how many versions of each shard are kept.
///
/// At every shard write, in the write's transaction, the versions of that shard older than
/// the newest `keep_versions` are crypto-shredded (their rows deleted, one audit event
/// each); `0` (the default) keeps every version. An account's own `keep_versions` (set with
/// `PUT /v1/accounts/{account}`) overrides it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Versions kept per shard (0 = all).
    pub keep_versions: u32,
}

/// Tier-migration workers (every gateway process runs them on every live job).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationConfig {
    /// Re-wraps per second per process, so online traffic keeps its latency.
    pub rate_per_sec: u32,
    /// Items claimed, and committed in one transaction, at a time, at most: a paced job
    /// claims what falls due within 32 ms (16 items at 500/s), so its commits hold the audit
    /// chain, which online requests' events wait for, only briefly.
    pub batch_size: u32,
    /// Backend calls in flight at once per job and process (each holds an HSM session,
    /// say), shared by the `pipeline` batches in flight: more calls side by side than this
    /// only queue inside the backend (SoftHSM2 serialises them on the key object) and take
    /// CPU from the database's share of the work. At a rate where a batch's items fall due
    /// together, the batch goes to the backends in up to this many chunks, one call each;
    /// at a slower pace, one item per call.
    pub concurrency: u32,
    /// Batches a worker has in flight at once: while one commits (a database round trip and
    /// a flush to disk) and another is claimed, a third is re-wrapped. `1` runs them one
    /// after another.
    pub pipeline: u32,
    /// How long a claim holds its items; a worker killed mid-batch frees them after this.
    pub lease_ms: u64,
    /// How often the process looks for live jobs (started elsewhere, resumed, or left by a
    /// killed process).
    pub poll_interval_ms: u64,
    /// Run workers in this process at all.
    pub workers: bool,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            rate_per_sec: 500,
            // An unpaced 50,000-shard local -> pkcs11 job (`/tmp` harness, PostgreSQL): 128 /
            // 4 / 2 left 33% of the 2 cores idle, 8,800-9,000 items/s; 512 / 8 / 3 keeps a
            // third batch re-wrapping while two commit, 12,500-13,000/s. Concurrency 2 rather
            // than 8 (100,000 shards, alternated, 3 and 2 runs): 10,628/s on average vs
            // 10,136/s, gateway CPU per item 85 vs 94 us: more calls in flight on 2 cores only
            // wait on SoftHSM2's lock of the one KEK object (BENCHMARKS.md, history). A paced
            // job (the default rate) still claims 16 items and calls the backends one item at
            // a time.
            batch_size: 512,
            concurrency: 2,
            pipeline: 3,
            lease_ms: 30_000,
            poll_interval_ms: 2_000,
            workers: true,
        }
    }
}

/// The operations dual control can hold, by the names `required_for` uses.
pub const OPERATIONS: [&str; 4] = ["account.delete", "key.destroy", "policy.apply", "downgrade"];

/// `[approvals]`: which operations need a second credential, and for how long a request can
/// be approved.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Any of [`OPERATIONS`]; empty (the default): dual control is off.
    #[serde(default)]
    pub required_for: Vec<String>,
    /// Seconds a request stays approvable (default 3600).
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
}

fn default_ttl_secs() -> u64 {
    3_600
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            required_for: Vec::new(),
            ttl_secs: default_ttl_secs(),
        }
    }
}

impl ApprovalsConfig {
    /// An operation name outside [`OPERATIONS`], if any (a typo must not turn dual control
    /// off for what the operator meant).
    pub fn unknown_operation(&self) -> Option<&str> {
        self.required_for
            .iter()
            .map(String::as_str)
            .find(|op| !OPERATIONS.contains(op))
    }

    /// Whether operation `op` waits for a second credential.
    pub fn requires(&self, op: &str) -> bool {
        self.required_for.iter().any(|r| r == op)
    }
}
