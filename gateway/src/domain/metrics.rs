//! Prometheus metrics: one process-wide recorder, rendered at `GET /metrics` (scope
//! `metrics`, [`crate::http::ops`]). Labels carry route templates, status codes, configured backend names and
//! fixed operation names: never an account, shard, token or any other caller-chosen value,
//! so every family's cardinality is bounded by the configuration.
//!
//! Families recorded elsewhere: `shardgate_backend_op_duration_seconds` and
//! `shardgate_breaker_transitions_total` in [`crate::domain::breaker`], `shardgate_audit_*` in
//! [`crate::domain::audit`], `shardgate_migration_*` in [`crate::service::migrate`], `shardgate_tls_*`
//! in [`crate::http::server`] and [`crate::http::tls`], `shardgate_key_*` in [`crate::domain::keys`],
//! `shardgate_tokens_*` in [`crate::domain::tokens`]. docs/operations.md ("Metrics") lists them all.
//!
//! Every family is described here (HELP text) and, where its label values are known up front,
//! registered at zero when the recorder is installed ([`register`]).

mod register;

pub use register::{collect_process, register_backends, GIT_COMMIT};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::cell::Cell;
use std::sync::OnceLock;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Upper bounds of the latency buckets (seconds) of every `*_seconds` histogram: from a
/// cached local unwrap (well under a millisecond) to a request near its deadline.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the buckets of `shardgate_write_group_size` (writes per group commit,
/// at most 64).
const GROUP_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Install the recorder once per process (several gateways in one test process share it).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            // Real histograms (not the exporter's default summaries): buckets add up across
            // replicas, quantiles do not.
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("shardgate_write_group_size".into()),
                        GROUP_SIZE_BUCKETS,
                    )
                })
                .and_then(|b| b.install_recorder())
                .ok();
            describe();
            describe_more();
            describe_backend_stats();
            register::register_static();
            if let Some(h) = &handle {
                spawn_upkeep(h.clone(), UPKEEP_EVERY);
            }
            handle
        })
        .as_ref()
}

/// How often the recorder's pending histogram samples are folded into its buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Fold pending histogram samples into their buckets every `every`, on a thread of its own.
///
/// The recorder keeps each histogram sample (every request records several) in a queue until
/// an upkeep drains it. A scrape of `/metrics` runs one, but without scrapes (no Prometheus
/// yet, or a scraper that stopped) the queues grew by ~30 bytes per request for good: the
/// chaos soak's unscraped replicas grew ~1 MB a minute. A thread, not a task, because the
/// recorder outlives any one runtime (tests start gateways in several).
fn spawn_upkeep(handle: PrometheusHandle, every: std::time::Duration) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics upkeep thread did not start; histogram samples are drained only by scrapes");
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_audit_archive();
    describe_gauge!(
        "shardgate_key_wraps_reserved",
        "Wraps of a local/pkcs11 KEK version reserved by the replicas (key lifecycle counter)"
    );
    describe_gauge!(
        "shardgate_key_wrap_warn_at",
        "Reserved wraps of one KEK version past which the gateway warns ([keys] wrap_warn_at)"
    );
    describe_gauge!(
        "shardgate_key_wrap_limit",
        "Reserved wraps of one KEK version at which new wraps are refused ([keys] wrap_limit)"
    );
    describe_counter!(
        "shardgate_key_wrap_refusals_total",
        "Wraps refused because the active KEK version reached its wrap limit"
    );
    describe_counter!(
        "shardgate_auth_refusals_limited_total",
        "Refused requests past their address's refusal budget (no audit event each; one aggregated event per address and window)"
    );
    describe_gauge!(
        "shardgate_refusals_held",
        "Answers past an address's refusal budget being held back ([limits] refusal_delay_ms)"
    );
    describe_counter!(
        "shardgate_refusals_closed_total",
        "Answers past an address's refusal budget sent at once with their connection closed, every hold slot being taken ([limits] max_delayed_refusals)"
    );
    describe_counter!(
        "shardgate_http_requests_total",
        "HTTP requests by method, route template, status and the backend that served them"
    );
    describe_histogram!(
        "shardgate_write_group_size",
        "Shard writes stored by one group commit (PostgreSQL)"
    );
    describe_histogram!(
        "shardgate_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method, route template, status and backend"
    );
    describe_histogram!(
        "shardgate_backend_op_duration_seconds",
        Unit::Seconds,
        "Time on a backend (after admission by its breaker and bulkhead) by backend and operation"
    );
    describe_counter!(
        "shardgate_breaker_transitions_total",
        "Circuit breaker state changes by backend and the state entered"
    );
    describe_gauge!(
        "shardgate_audit_queue_depth",
        "Requests waiting for the batching audit writer"
    );
    describe_gauge!(
        "shardgate_audit_queue_capacity",
        "Capacity of the audit queue (audit.queue_capacity)"
    );
    describe_histogram!(
        "shardgate_audit_write_duration_seconds",
        Unit::Seconds,
        "Latency of one batched audit write by outcome"
    );
    describe_histogram!(
        "shardgate_audit_wait_seconds",
        Unit::Seconds,
        "Time a read waits for its queued audit events to be durable (the write in flight, then its own)"
    );
    describe_counter!(
        "shardgate_audit_events_total",
        "Audit events written by the batching writer"
    );
    describe_counter!(
        "shardgate_integrity_failures_total",
        "Stored shard versions that failed their integrity check when opened (tampering or corruption), by the row's backend"
    );
    describe_counter!(
        "shardgate_audit_failures_total",
        "Batched audit writes that failed"
    );
    describe_counter!(
        "shardgate_tls_handshake_failures_total",
        "TLS handshakes that failed (refused: bad or missing client certificate, not TLS, no common protocol; timeout: not finished within timeouts.header_read_ms)"
    );
    describe_counter!(
        "shardgate_tls_reloads_total",
        "SIGHUP reloads of the TLS settings by outcome (reloaded, failed, unchanged)"
    );
}

tokio::task_local! {
    /// The backend that served the request running on this task (set by the breaker wrapper
    /// each backend sits behind).
    static SERVED_BY: Cell<Served>;
}

/// Which backend served a request. Names are configured backend instances: a bounded set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    None,
    One(&'static str),
    Multiple,
}

/// Interned backend names: the task-local holds `&'static str` so that noting a backend
/// costs no allocation per call; the set is the configured backends, so it stays small.
fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<std::sync::Mutex<Vec<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.push(n);
    n
}

/// Record that the current request used backend `name` (a no-op outside a request: probes,
/// migration workers, CLI commands).
pub fn note_backend(name: &str) {
    let _ = SERVED_BY.try_with(|cell| {
        let next = match cell.get() {
            Served::None => Served::One(intern(name)),
            Served::One(n) if n == name => Served::One(n),
            _ => Served::Multiple,
        };
        cell.set(next);
    });
}

/// Run `f` as one request, and name the backend(s) it used: `none` when no backend was noted,
/// `multiple` when several were (e.g. a batch across tiers).
pub async fn served_by<F: std::future::Future>(f: F) -> (F::Output, &'static str) {
    let (out, served) = SERVED_BY
        .scope(Cell::new(Served::None), async {
            let out = f.await;
            (out, SERVED_BY.with(Cell::get))
        })
        .await;
    let backend = match served {
        Served::None => "none",
        Served::One(n) => n,
        Served::Multiple => "multiple",
    };
    (out, backend)
}

/// The audit archive's families (docs/audit-archive.md, "Metrics").
fn describe_audit_archive() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "shardgate_audit_archived_segments_total",
        "Audit segments this process archived (recorded, and their hot rows deleted)"
    );
    describe_counter!(
        "shardgate_audit_archived_events_total",
        "Audit events this process moved from the hot table into archived segments"
    );
    describe_counter!(
        "shardgate_audit_expired_segments_total",
        "Expired audit segments this process deleted from the directory sink (retention_days past their newest event)"
    );
    describe_counter!(
        "shardgate_audit_archive_failures_total",
        "Archiver passes that failed (nothing unarchived was deleted; the next pass retries)"
    );
    describe_gauge!(
        "shardgate_audit_archive_last_success_timestamp_seconds",
        "When this process's archiver last finished a pass (unix seconds)"
    );
    describe_gauge!(
        "shardgate_audit_hot_oldest_event_age_seconds",
        "Age of the oldest event left in the hot table, seen by the last archiver pass"
    );
    describe_gauge!(
        "shardgate_audit_archive_lag_seconds",
        "How far the oldest hot event is past hot_days (0 when the archiver keeps up)"
    );
    describe_gauge!(
        "shardgate_audit_archived_segments",
        "Archived audit segments recorded in the database"
    );
    describe_gauge!(
        "shardgate_audit_archived_bytes",
        "Bytes of the archived audit segment objects recorded in the database"
    );
    describe_counter!(
        "shardgate_audit_anchor_failures_total",
        "Checkpoints whose anchor could not be written to the archive"
    );
    describe_gauge!(
        "shardgate_audit_anchor_timestamp_seconds",
        "When this process last wrote an anchor to the archive (unix seconds)"
    );
}

/// Families described nowhere else: start-up, the audit writer's side queue, migration,
/// refusals, tokens and the build.
/// Set `shardgate_policy_version`: the policy version this replica now serves.
#[allow(clippy::cast_precision_loss)] // versions stay far below 2^53
pub fn policy_version(version: i64) {
    metrics::gauge!("shardgate_policy_version").set(version as f64);
}

fn describe_more() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "shardgate_policy_version",
        "The cluster policy version this replica serves (docs/policy-and-migration.md)"
    );
    describe_gauge!(
        "shardgate_build_info",
        "Always 1; labels: the gateway's version and the git commit it was built from"
    );
    describe_counter!(
        "shardgate_audit_checkpoint_failures_total",
        "Audit checkpoints not written to their file"
    );
    describe_gauge!(
        "shardgate_audit_detached_queue_depth",
        "Refusal events waiting for the audit writer in their own queue (audit.detached_capacity)"
    );
    describe_counter!(
        "shardgate_audit_detached_dropped_total",
        "Refusal events dropped because their queue was full (each drop is also logged, rate-limited)"
    );
    describe_counter!(
        "shardgate_connections_at_cap_total",
        "Times the accept loop waited because limits.max_connections connections were open"
    );
    describe_counter!(
        "shardgate_key_unusable_rows_total",
        "Reads of stored shard versions whose key their backend refuses (an unknown key reference or version), by backend"
    );
    describe_counter!(
        "shardgate_migration_items_total",
        "Shard versions a tier-migration worker of this process settled, by outcome (done, failed, skipped)"
    );
    describe_gauge!(
        "shardgate_migration_items_per_second",
        "This process's current tier-migration re-wrap rate"
    );
    describe_counter!(
        "shardgate_migration_chain_waits_total",
        "Migration batch commits rolled back and tried again because the audit chain stayed busy"
    );
    describe_counter!(
        "shardgate_requests_refused_total",
        "Requests refused before any work, by reason (uri_too_long)"
    );
    describe_gauge!(
        "shardgate_tokens_known",
        "API tokens known to this process (configuration and database)"
    );
    describe_gauge!(
        "shardgate_tokens_revoked",
        "Revoked API tokens known to this process"
    );
}

/// HELP of every `shardgate_backend_<stat>` family ([`shardgate_backends::Stat`], copied into
/// the recorder at each scrape by the `/metrics` handler).
pub const BACKEND_STATS: &[(&str, &str)] = &[
    (
        "breaker_state",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open",
    ),
    ("breaker_opens_total", "Times the circuit breaker opened"),
    ("bulkhead_in_use", "Operations running on the backend"),
    ("bulkhead_waiting", "Operations waiting for a bulkhead slot"),
    (
        "bulkhead_rejected_total",
        "Calls refused at once because the bulkhead queue was full",
    ),
    (
        "bulkhead_shed_bulk_total",
        "Calls of priority class bulk the bulkhead turned away (503 with Retry-After)",
    ),
    (
        "bulkhead_shed_standard_total",
        "Calls of priority class standard the bulkhead turned away (503 with Retry-After)",
    ),
    (
        "bulkhead_shed_critical_total",
        "Calls of priority class critical the bulkhead turned away (503 with Retry-After)",
    ),
    (
        "keyring_forced_reloads_total",
        "local: keyring reloads forced by an unknown key version",
    ),
    ("pool_size", "pkcs11: configured session pool size"),
    ("pool_open", "pkcs11: sessions open"),
    ("pool_in_use", "pkcs11: sessions checked out"),
    ("pool_waiting", "pkcs11: callers waiting for a session"),
    (
        "pool_peak_busy",
        "pkcs11: most sessions checked out at once",
    ),
    (
        "pool_recoveries_total",
        "pkcs11: session pool recoveries (re-login, re-initialise)",
    ),
    (
        "pool_session_overlaps_total",
        "pkcs11: a session found in use twice (must stay 0)",
    ),
    (
        "pool_dead_sessions_total",
        "pkcs11: pooled sessions the HSM had closed, replaced",
    ),
    (
        "find_objects_calls_total",
        "pkcs11: C_FindObjects calls on the request path",
    ),
    (
        "find_objects_background_calls_total",
        "pkcs11: C_FindObjects calls of the background refresh",
    ),
    (
        "cloudhsm_cluster_ready",
        "CloudHSM: 1 when the cluster is ready",
    ),
    (
        "cloudhsm_active_hsms",
        "CloudHSM: active HSMs in the cluster",
    ),
    ("kms_decrypt_calls_total", "aws-kms: Decrypt calls"),
    (
        "kms_generate_data_key_calls_total",
        "aws-kms: GenerateDataKey calls",
    ),
    ("kms_encrypt_calls_total", "aws-kms: Encrypt calls"),
    ("kms_reencrypt_calls_total", "aws-kms: ReEncrypt calls"),
    ("kms_describe_key_calls_total", "aws-kms: DescribeKey calls"),
    ("cache_hits_total", "aws-kms: data-key cache hits"),
    ("cache_misses_total", "aws-kms: data-key cache misses"),
    ("cache_evictions_total", "aws-kms: data-key cache evictions"),
    ("cache_entries", "aws-kms: data keys in the cache"),
];

fn describe_backend_stats() {
    for (stat, help) in BACKEND_STATS {
        let name = format!("shardgate_backend_{stat}");
        if stat.ends_with("_total") {
            metrics::describe_counter!(name, *help);
        } else {
            metrics::describe_gauge!(name, *help);
        }
    }
}
