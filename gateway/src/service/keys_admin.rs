//! Key administration: list every backend's key versions with their reference counts and
//! wrap counters, and move a version through its lifecycle (`active` -> `decrypt-only` ->
//! `destroyed`, `decrypt-only` -> `active`). [`transition`] is the one way a state changes
//! (admin API and CLI): checked, audited and committed in one transaction; `destroyed` is
//! refused while any shard version references the version, and the store fences it against
//! concurrent writes. The lifecycle itself is `crate::domain::keys`.

use super::state::Services;
use crate::domain::audit::{Auditor, Origin};
use crate::domain::error::DomainError;
use crate::domain::keys::counts_wraps;
use serde::Serialize;
use shardgate_backends::KeyBackend;
use shardgate_store::{KeyState, KeyStateChange, KeyTransition, KeyVersionRecord};
use std::collections::HashMap;

/// One KEK version as the admin API and the CLI show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// Backend instance.
    pub backend: String,
    /// Backend kind (`local`, `pkcs11`, `aws-kms`); `null` when no longer configured.
    pub kind: Option<String>,
    /// KEK version.
    pub version: i64,
    /// The backend's key reference when the version was registered.
    pub key_ref: String,
    /// `active`, `decrypt-only` or `destroyed`.
    pub state: String,
    /// When the version was registered, unix milliseconds.
    pub created_ms: i64,
    /// Last state change, unix milliseconds.
    pub changed_ms: i64,
    /// Who made it (`registered` for a version first seen on its backend).
    pub changed_by: String,
    /// Shard versions whose data key is wrapped under this version.
    pub shard_versions: i64,
    /// Wraps reserved by replicas so far (`null` for backends whose wraps are not counted:
    /// aws-kms).
    pub wraps_reserved: Option<i64>,
    /// Whether this gateway's backend holds the version's key (a keyring file copied here,
    /// an object on the token).
    pub held_here: bool,
}

/// The key states of every backend, with reference counts and wrap counters.
pub async fn list(state: &Services) -> Result<Vec<KeyView>, DomainError> {
    // Versions a backend holds that no replica registered yet (just rotated) are listed too.
    for name in state.backends.keys() {
        state.keys.sync(name).await?;
    }
    let records = state.store.list_key_versions().await?;
    let refs: HashMap<(String, i64), i64> = state
        .store
        .key_ref_counts()
        .await?
        .into_iter()
        .map(|c| ((c.backend, c.key_version), c.shard_versions))
        .collect();
    Ok(records.into_iter().map(|r| view(state, r, &refs)).collect())
}

fn view(state: &Services, r: KeyVersionRecord, refs: &HashMap<(String, i64), i64>) -> KeyView {
    let backend = state.backend(&r.backend);
    let kind = backend.map(|b| b.kind().to_string());
    let counted = kind.as_deref().is_some_and(counts_wraps);
    let held_here = backend.is_some_and(|b| holds(b.as_ref(), r.key_version));
    KeyView {
        shard_versions: refs
            .get(&(r.backend.clone(), r.key_version))
            .copied()
            .unwrap_or(0),
        wraps_reserved: counted.then_some(r.reserved_upto),
        backend: r.backend,
        kind,
        version: r.key_version,
        key_ref: r.key_ref,
        state: r.state.as_str().to_string(),
        created_ms: r.created_ms,
        changed_ms: r.changed_ms,
        changed_by: r.changed_by,
        held_here,
    }
}

/// Whether the backend holds the key of `version` (a version destroyed in a keyring file
/// has no key any more).
fn holds(backend: &dyn KeyBackend, version: i64) -> bool {
    backend
        .kek_versions()
        .iter()
        .any(|k| i64::from(k.version) == version && k.state != KeyState::Destroyed)
}

/// What a state change did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TransitionResponse {
    /// The version as it is now.
    pub key: KeyView,
    /// Whether anything changed (asking for the current state changes nothing and is not
    /// audited).
    pub changed: bool,
    /// The version a promote demoted to `decrypt-only`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demoted: Option<i64>,
    /// The audit event of the change (`<chain>:<seq>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_event: Option<String>,
}

fn conflict(message: String) -> DomainError {
    DomainError::Conflict(message)
}

/// The state an admin asks for (the API body, the CLI argument), or the answer that names
/// the three.
pub fn parse_state(to: &str) -> Result<KeyState, DomainError> {
    to.parse()
        .map_err(|_| DomainError::Invalid("state must be active, decrypt-only or destroyed".into()))
}

/// Move `backend`'s key `version` to state `to` (the admin API and the CLI): checked,
/// audited and committed in one transaction.
pub async fn transition(
    state: &Services,
    backend: &str,
    version: i64,
    to: KeyState,
    origin: &Origin,
) -> Result<TransitionResponse, DomainError> {
    let Some(b) = state.backend(backend).cloned() else {
        return Err(DomainError::NotFound("no such backend".into()));
    };
    // Fresh from the store (and any version the backend holds but the table lacks).
    state.keys.sync(backend).await?;
    let records = state.store.list_key_versions().await?;
    let find = |v: i64| {
        records
            .iter()
            .find(|r| r.backend == backend && r.key_version == v)
    };
    let Some(current) = find(version).cloned() else {
        return Err(DomainError::NotFound(format!(
            "backend {backend} has no key version {version}"
        )));
    };
    let refs_of = |n: i64| HashMap::from([((backend.to_string(), version), n)]);
    if current.state == to {
        return Ok(TransitionResponse {
            key: view(state, current, &refs_of(0)),
            changed: false,
            demoted: None,
            audit_event: None,
        });
    }
    if !current.state.may_become(to) {
        return Err(conflict(format!(
            "key version {version} of backend {backend} is {}; it cannot become {to} \
             (active -> decrypt-only -> destroyed, decrypt-only -> active; destroyed is final)",
            current.state
        )));
    }
    let demote = if to == KeyState::Active {
        if !holds(b.as_ref(), version) {
            return Err(conflict(format!(
                "backend {backend} of this gateway does not hold key version {version}: \
                 distribute it to every replica (the keyring file, the HSM) before promoting it"
            )));
        }
        records
            .iter()
            .find(|r| r.backend == backend && r.state == KeyState::Active)
            .map(|r| r.key_version)
    } else {
        None
    };
    let mut detail = format!("key_version={version} from={} to={to}", current.state);
    if let Some(d) = demote {
        detail.push_str(&format!(" demoted={d}"));
    }
    let event = origin.event("key.state").backend(backend).detail(detail);
    let change = KeyStateChange {
        backend,
        key_version: version,
        from: current.state,
        to,
        demote,
        actor: &origin.actor,
        now_ms: crate::now_ms(),
    };
    let mut guard = state.audit.lock().await?;
    let record = guard.begin(&event);
    let result = state.store.set_key_state(&change, &record).await;
    let committed = matches!(result, Ok(KeyTransition::Done(_)));
    guard.finish(committed.then_some(&record), &result).await;
    let done = match result? {
        KeyTransition::Done(r) => r,
        KeyTransition::NotFound => {
            return Err(DomainError::NotFound(format!(
                "backend {backend} has no key version {version}"
            )))
        }
        KeyTransition::WrongState(now) => {
            return Err(conflict(format!(
                "key version {version} of backend {backend} (or its active version) changed \
                 meanwhile; it is {now} now: look again and retry"
            )))
        }
        KeyTransition::Referenced(n) => {
            return Err(conflict(format!(
                "key version {version} of backend {backend} is still referenced by {n} shard \
                 version(s): move them first (POST /v1/admin/migrations \
                 {{\"from_backend\":\"{backend}\",\"key_version_below\":{}}}, or shardgate \
                 migrate start), then destroy it",
                version + 1
            )))
        }
    };
    tracing::info!(backend, version, from = %current.state, to = %to, demoted = ?demote, actor = %origin.actor, "key state changed");
    if let Err(e) = state.keys.refresh().await {
        tracing::warn!(error = %e, "key states could not be re-read after a change");
    }
    Ok(TransitionResponse {
        key: view(state, done, &refs_of(0)),
        changed: true,
        demoted: demote,
        audit_event: Some(Auditor::event_id(&record)),
    })
}
