//! Every family at zero from start-up: a counter that appears only with its first event
//! makes an "alert on increase" miss that event (there is no earlier sample to compare it
//! with), and a family missing from a fresh scrape cannot be told apart from a gateway that
//! does not export it. Registering a series never changes its value (`increment(0)`), so
//! calling these again (several gateways in one test process) is harmless.
//!
//! Also `shardgate_build_info` and the `process_*` families (CPU, memory, open files),
//! collected at each scrape.

use std::sync::OnceLock;

/// Counters without labels, registered at zero.
pub(super) const COUNTERS: &[&str] = &[
    "shardgate_audit_events_total",
    "shardgate_audit_failures_total",
    "shardgate_audit_checkpoint_failures_total",
    "shardgate_audit_detached_dropped_total",
    "shardgate_audit_archived_segments_total",
    "shardgate_audit_archived_events_total",
    "shardgate_audit_expired_segments_total",
    "shardgate_audit_archive_failures_total",
    "shardgate_audit_anchor_failures_total",
    "shardgate_auth_refusals_limited_total",
    "shardgate_refusals_closed_total",
    "shardgate_connections_at_cap_total",
    "shardgate_migration_chain_waits_total",
];

/// Gauges without labels, registered at zero. Not the two `*_timestamp_seconds` gauges:
/// zero there would read as "last done in 1970" and fire every age alert on a gateway that
/// has no archive; they appear with the first archiver pass and the first anchor.
pub(super) const GAUGES: &[&str] = &[
    "shardgate_audit_queue_depth",
    "shardgate_audit_queue_capacity",
    "shardgate_audit_detached_queue_depth",
    "shardgate_refusals_held",
    "shardgate_key_wrap_warn_at",
    "shardgate_key_wrap_limit",
    "shardgate_tokens_known",
    "shardgate_tokens_revoked",
    "shardgate_migration_items_per_second",
    "shardgate_audit_hot_oldest_event_age_seconds",
    "shardgate_audit_archive_lag_seconds",
    "shardgate_audit_archived_segments",
    "shardgate_audit_archived_bytes",
];

/// Labelled counters whose label values are fixed words: every value at zero.
pub(super) const FIXED_LABELS: &[(&str, &str, &[&str])] = &[
    (
        "shardgate_requests_refused_total",
        "reason",
        &["uri_too_long"],
    ),
    (
        "shardgate_tls_handshake_failures_total",
        "reason",
        &["refused", "timeout"],
    ),
    (
        "shardgate_tls_reloads_total",
        "outcome",
        &["reloaded", "failed", "unchanged"],
    ),
    (
        "shardgate_migration_items_total",
        "outcome",
        &["done", "failed", "skipped"],
    ),
];

/// Counters labelled by configured backend: one series per configured backend at zero.
pub(super) const PER_BACKEND: &[&str] = &[
    "shardgate_integrity_failures_total",
    "shardgate_key_unusable_rows_total",
    "shardgate_key_wrap_refusals_total",
];

/// The states `shardgate_breaker_transitions_total{to}` names.
const BREAKER_STATES: &[&str] = &["open", "half-open", "closed"];

/// The commit the binary was built from (gateway/build.rs), `unknown` outside a checkout.
pub const GIT_COMMIT: &str = env!("SHARDGATE_GIT_COMMIT");

/// The families that need no configuration, `shardgate_build_info` among them.
pub(super) fn register_static() {
    for name in COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    for name in GAUGES {
        metrics::gauge!(*name).increment(0.0);
    }
    for (name, label, values) in FIXED_LABELS {
        for v in *values {
            metrics::counter!(*name, *label => *v).increment(0);
        }
    }
    // Histograms without labels (and the audit write's two outcomes) render empty buckets.
    let _ = metrics::histogram!("shardgate_write_group_size");
    let _ = metrics::histogram!("shardgate_audit_wait_seconds");
    for outcome in ["ok", "error"] {
        let _ = metrics::histogram!("shardgate_audit_write_duration_seconds", "outcome" => outcome);
    }
    metrics::gauge!(
        "shardgate_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => GIT_COMMIT
    )
    .set(1.0);
    process().describe();
}

/// The labelled families whose label values the configuration names: for each configured
/// backend, [`PER_BACKEND`] and `shardgate_breaker_transitions_total` for every state.
pub fn register_backends<'a>(names: impl IntoIterator<Item = &'a String>) {
    for backend in names {
        for name in PER_BACKEND {
            metrics::counter!(*name, "backend" => backend.clone()).increment(0);
        }
        for to in BREAKER_STATES {
            metrics::counter!("shardgate_breaker_transitions_total",
                "backend" => backend.clone(), "to" => *to)
            .increment(0);
        }
    }
}

/// The `process_*` collector (one per process: it keeps the names it renders).
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Read the process's CPU time, memory, threads and open files into the recorder (at
/// each scrape: a few reads of `/proc/self`).
pub fn collect_process() {
    process().collect();
}
