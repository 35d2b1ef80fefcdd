//! Stored rows that fail to open: telling tampering from an unusable key, and raising the
//! alarm (`integrity_failure`: log line, `shardgate_integrity_failures_total`, audit outcome).
//!
//! A backend answers `key_unusable` when a row's key reference is not one of its KEKs. That
//! is also what a row whose `backend` column was rewritten looks like (an institutional row
//! pointed at a weaker backend): the weaker backend does not hold the HSM's key. The two are
//! told apart by asking every configured backend whether it holds the row's key reference
//! ([`KeyBackend::holds_key_ref`], no I/O): when the named backend does not and ANOTHER
//! configured backend does, the wrapped key was made by that other backend and the row names
//! the wrong one. The gateway never writes such a row (a re-wrap changes `backend`, `key_ref`
//! and the wrapped key in one update), so it is tampering: `integrity_failure`, never opened
//! with either backend. A key reference that no configured backend holds stays `key_unusable`
//! (a keyring missing from a restore, a removed backend: an operator problem, not proof of
//! tampering).

use super::state::Services;
use crate::domain::error::DomainError;
use shardgate_backends::{BackendError, KeyBackend};
use shardgate_store::ShardVersionRow;
use std::sync::Arc;

/// The name of the configured backend, other than the row's own, that holds the row's key
/// reference while the row's own backend does not.
fn misfiled_under<'a>(state: &'a Services, row: &ShardVersionRow) -> Option<&'a str> {
    let own_holds = state
        .backend(&row.backend)
        .is_some_and(|b| b.holds_key_ref(&row.key_ref));
    if own_holds {
        return None;
    }
    state
        .backends
        .iter()
        .find(|(name, b)| **name != row.backend && b.holds_key_ref(&row.key_ref))
        .map(|(name, _)| name.as_str())
}

/// A bounded metric label for a row's backend: the configured name, or `unconfigured` (the
/// column is database content: an attacker could write any string there).
fn label(state: &Services, row: &ShardVersionRow) -> String {
    if state.backends.contains_key(&row.backend) {
        row.backend.clone()
    } else {
        "unconfigured".to_string()
    }
}

/// Log, count and map an integrity failure of `row`.
fn alarm(state: &Services, row: &ShardVersionRow, why: &str) -> DomainError {
    let backend = label(state, row);
    tracing::error!(
        alert = "integrity_failure",
        backend = %backend,
        account = %row.account,
        shard = %row.shard,
        version = row.version.get(),
        why,
        "stored shard version failed its integrity check"
    );
    metrics::counter!("shardgate_integrity_failures_total", "backend" => backend).increment(1);
    DomainError::Backend(BackendError::Integrity)
}

/// The error for a failure to open `row` (unwrapping its data key or opening its
/// ciphertext): a `key_unusable` answer on a misfiled row becomes `integrity_failure`, and
/// every integrity failure is logged and counted.
pub fn open_error(state: &Services, row: &ShardVersionRow, e: BackendError) -> DomainError {
    match e {
        BackendError::Integrity => alarm(state, row, "the envelope does not open"),
        BackendError::KeyUnusable(_) if misfiled_under(state, row).is_some() => alarm(
            state,
            row,
            "the row's data key was wrapped by another configured backend",
        ),
        BackendError::KeyUnusable(reason) => key_refused(state, row, &reason),
        other => DomainError::Backend(other),
    }
}

/// Rows whose refusal was logged already (a bounded set: forgotten wholesale when full, so
/// a row may be logged again after many others, never on every read).
static LOGGED_REFUSALS: std::sync::Mutex<Option<std::collections::HashSet<u64>>> =
    std::sync::Mutex::new(None);
const LOGGED_REFUSALS_MAX: usize = 10_000;

/// A stored row whose key its backend refuses (an unknown key reference or key version:
/// a keyring missing here, or a row edited in the database). Counted in
/// `shardgate_key_unusable_rows_total` on every read, logged once per row.
fn key_refused(state: &Services, row: &ShardVersionRow, reason: &str) -> DomainError {
    let backend = label(state, row);
    metrics::counter!("shardgate_key_unusable_rows_total", "backend" => backend.clone())
        .increment(1);
    let first = {
        use std::hash::BuildHasher as _;
        static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        let h = SEED.get_or_init(Default::default).hash_one((
            &row.account,
            &row.shard,
            row.version,
            &row.key_ref,
            row.key_version,
        ));
        let mut seen = LOGGED_REFUSALS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let set = seen.get_or_insert_with(Default::default);
        if set.len() >= LOGGED_REFUSALS_MAX {
            set.clear();
        }
        set.insert(h)
    };
    if first {
        tracing::warn!(
            alert = "key_unusable",
            backend = %backend,
            account = %row.account,
            shard = %row.shard,
            version = row.version.get(),
            key_version = row.key_version,
            %reason,
            "the backend refuses a stored version's key (a keyring missing here, or a row edited in the database); logged once per row"
        );
    }
    DomainError::KeyUnusable("the backend refused the key".into())
}

/// The backend recorded on a row (reads never consult the policy), or the error of a row
/// whose backend is not configured ([`unconfigured_backend`]).
pub fn row_backend(
    state: &Services,
    row: &ShardVersionRow,
) -> Result<Arc<dyn KeyBackend>, DomainError> {
    state
        .backend(&row.backend)
        .cloned()
        .ok_or_else(|| unconfigured_backend(state, row))
}

/// A row naming a backend that is not configured: `key_unusable` (a removed backend), unless
/// a configured backend holds the row's key reference: then the column was rewritten,
/// `integrity_failure`.
pub fn unconfigured_backend(state: &Services, row: &ShardVersionRow) -> DomainError {
    if misfiled_under(state, row).is_some() {
        return alarm(
            state,
            row,
            "the row names an unconfigured backend but its data key was wrapped by a configured one",
        );
    }
    tracing::error!(backend = %row.backend, "stored version names a backend that is not configured");
    DomainError::KeyUnusable("the version's backend is not configured on this gateway".into())
}
