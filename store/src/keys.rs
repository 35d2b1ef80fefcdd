//! Rows of the key lifecycle: the state of each KEK version of each backend instance
//! (`active`, `decrypt-only`, `destroyed`; NIST SP 800-57) and its wrap counter.
//!
//! Rules every store enforces in one transaction with the transition's audit event:
//! - at most one `active` version per backend (promoting one demotes the previous active one
//!   to `decrypt-only` in the same transaction);
//! - `destroyed` is terminal, and only a `decrypt-only` version may be destroyed, and only
//!   while no shard version references it ([`KeyTransition::Referenced`]). The count and the
//!   state change are fenced against concurrent writes (PostgreSQL: `LOCK TABLE
//!   shard_versions IN SHARE MODE` for the destroy; SQLite: one writer), and every shard write
//!   and re-wrap re-checks, after its own row change, that its key version is not destroyed
//!   ([`crate::StoreError::KeyDestroyed`]), so no row can commit under a destroyed version;
//! - wraps are reserved in blocks ([`Reservation`]) only under an `active` version and never
//!   past the limit the caller gives.

pub use shardgate_policy::KeyState;

use crate::StoreError;

/// The state a `key_versions` row holds: its column is [`KeyState::as_str`]; anything else
/// is a corrupt row (the schema's CHECK makes that a bug or tampering).
pub(crate) fn parse_state(s: &str) -> Result<KeyState, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Internal(format!("key_versions row: {e}")))
}

/// One KEK version of one backend instance, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersionRecord {
    /// Backend instance name.
    pub backend: String,
    /// KEK version within the backend.
    pub key_version: i64,
    /// The backend's key reference when the version was registered (keyring id, HSM key
    /// label, KMS key id); informational.
    pub key_ref: String,
    /// Its lifecycle state.
    pub state: KeyState,
    /// When the version was registered, unix milliseconds.
    pub created_ms: i64,
    /// Last state change (or registration), unix milliseconds.
    pub changed_ms: i64,
    /// Who made the last change (token identity, `cli`, or `registered`).
    pub changed_by: String,
    /// Wraps handed out to replicas so far (blocks reserved, used or not).
    pub reserved_upto: i64,
}

/// A version to register (a backend reported it and the table does not have it yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKeyVersion {
    /// Backend instance name.
    pub backend: String,
    /// KEK version.
    pub key_version: i64,
    /// The backend's key reference.
    pub key_ref: String,
    /// The state it starts in. An `active` one becomes `decrypt-only` when the backend has
    /// an active version already (never two actives).
    pub state: KeyState,
}

/// A state change to make with [`crate::Store::set_key_state`]: from what the caller read,
/// so the audit event sealed before the call says exactly what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStateChange<'a> {
    /// Backend instance name.
    pub backend: &'a str,
    /// KEK version.
    pub key_version: i64,
    /// The state the caller saw (the change is refused if it is not the current one).
    pub from: KeyState,
    /// The new state.
    pub to: KeyState,
    /// For `to = active`: the backend's active version the caller saw (demoted to
    /// `decrypt-only` in the same transaction), `None` if it saw none.
    pub demote: Option<i64>,
    /// Who asks (token identity or `cli`).
    pub actor: &'a str,
    /// Unix milliseconds.
    pub now_ms: i64,
}

/// What [`crate::Store::set_key_state`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyTransition {
    /// Changed (with its audit event); the version as it is now.
    Done(KeyVersionRecord),
    /// No such version of that backend.
    NotFound,
    /// The version (or, for a promote, the backend's active version) is not what the caller
    /// saw, or the transition is not allowed from the current state; the current state.
    WrongState(KeyState),
    /// `destroyed` refused: this many shard versions still reference the version.
    Referenced(i64),
}

/// What [`crate::Store::reserve_key_wraps`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Wraps `from + 1 ..= to` are this caller's (at most the block asked for; fewer at the
    /// limit).
    Granted {
        /// Counter value before the reservation.
        from: i64,
        /// Counter value after it.
        to: i64,
    },
    /// The version is not registered, or not `active`.
    NotActive,
    /// The counter has reached the limit: no more wraps under this version.
    Exhausted {
        /// The counter value.
        reserved: i64,
    },
}

/// Shard versions referencing one (backend, key version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRefCount {
    /// Backend instance name (as stored on the rows).
    pub backend: String,
    /// KEK version.
    pub key_version: i64,
    /// Rows.
    pub shard_versions: i64,
}
