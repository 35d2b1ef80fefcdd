//! Key-encryption-key (KEK) backends for shardgate.
//!
//! A backend wraps and unwraps per-shard data keys (DEKs) for a [`ShardIdentity`]; it knows
//! nothing of HTTP, SQL or tiers. Every backend implements the one object-safe async trait
//! [`KeyBackend`] so the gateway can hold them as `Arc<dyn KeyBackend>`, the way rustls holds a
//! pluggable crypto provider. [`conformance`] is the suite every backend must pass.
//!
//! The trait is shaped for all three kinds: `local` (AES-256-GCM keyring in memory),
//! `aws-kms` (KMS *generates* the data key, so generation is a trait method, not a helper)
//! and `pkcs11` (blocking FFI: implementations run their calls off the async workers).

pub mod aws_kms;
pub mod cloudhsm;
pub mod cluster_gate;
pub mod conformance;
mod data_key;
pub mod deadline;
mod decorator;
pub mod files;
mod identity;
pub mod local;
pub mod pkcs11;

use async_trait::async_trait;

pub use data_key::DataKey;
pub use decorator::Decorator;
pub use identity::{ShardIdentity, FORMAT_VERSION};
pub use shardgate_policy::Version;

/// A data key wrapped by a backend, with the reference to the KEK that can unwrap it.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Which key wrapped it (keyring id, KMS key ARN, HSM key label); backend specific.
    pub key_ref: String,
    /// The KEK version within `key_ref`.
    pub key_version: u32,
    /// The opaque wrapped bytes.
    pub blob: Vec<u8>,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedKey")
            .field("key_ref", &self.key_ref)
            .field("key_version", &self.key_version)
            .field("blob_len", &self.blob.len())
            .finish()
    }
}

/// Lifecycle state of a KEK version: the one enum of `shardgate-policy`.
///
/// Which version wraps is decided by the gateway's key lifecycle (a table in its database,
/// shared by every replica); the state a backend reports itself ([`KekVersion::state`]) is
/// only the state a version starts in when the gateway first sees it.
pub use shardgate_policy::KeyState;

/// One KEK version a backend instance holds, as the backend itself sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekVersion {
    /// The key reference its wraps record (keyring id, HSM key label, KMS key id).
    pub key_ref: String,
    /// The version number.
    pub version: u32,
    /// The backend's own view of its state (see [`KeyState`]).
    pub state: KeyState,
}

/// Why a backend operation failed. Messages never carry key material or shard bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The wrapped key does not open under this identity: tampering, a copied row or
    /// corruption. Never retried; never counts against a backend's health.
    #[error("wrapped data key failed its integrity check")]
    Integrity,
    /// The backend refuses the key: unknown, disabled, destroyed, access denied, wrong key.
    #[error("key unusable: {0}")]
    KeyUnusable(String),
    /// The gateway's key lifecycle refuses the key version: it is destroyed, it is not the
    /// active version, or its wrap limit is reached. The text is written for the caller
    /// (no secret, no backend internals); not retried, never a backend fault.
    #[error("{0}")]
    Refused(String),
    /// The backend cannot be reached or is overloaded; worth retrying later.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The gateway's guard of the backend turned the call away before it reached it (an
    /// open circuit breaker, a full bulkhead), knowing when a retry can be admitted: the
    /// caller's `Retry-After`. Never a fault of the backend.
    #[error("backend unavailable: {reason}")]
    Shed {
        /// Why (no secret: `circuit open`, `backend busy`).
        reason: String,
        /// How long until a retry can be admitted, in milliseconds.
        retry_after_ms: u64,
    },
    /// The operation's deadline passed.
    #[error("backend deadline exceeded")]
    DeadlineExceeded,
    /// Misconfiguration or a bug.
    #[error("backend error: {0}")]
    Internal(String),
}

/// Health as seen by the backend itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// Whether the backend can currently wrap and unwrap.
    pub usable: bool,
    /// Short, secret-free description (e.g. `keyring loaded, active version 2`).
    pub detail: String,
}

/// One named number a backend exposes (pool occupancy, cache hits, KMS calls) for `/metrics`
/// and `/readyz`. Names are snake_case and end in `_total` when they only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stat {
    /// e.g. `pool_in_use`, `kms_decrypt_calls_total`.
    pub name: &'static str,
    /// The current value.
    pub value: u64,
}

impl Stat {
    /// A stat.
    pub fn new(name: &'static str, value: u64) -> Self {
        Self { name, value }
    }
}

/// A KEK backend instance. Object safe: the gateway holds `Arc<dyn KeyBackend>`.
#[async_trait]
pub trait KeyBackend: Send + Sync + 'static {
    /// The configured instance name (e.g. `local`, `kms-retail`).
    fn name(&self) -> &str;

    /// The backend kind: `local`, `aws-kms` or `pkcs11`.
    fn kind(&self) -> &'static str;

    /// A fresh 256-bit data key and its wrap under the current wrapping KEK, bound to `id`.
    ///
    /// The default draws the key from the OS CSPRNG and calls [`KeyBackend::wrap`]; KMS
    /// overrides it with `GenerateDataKey`.
    async fn generate_data_key(
        &self,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        let dek = DataKey::generate();
        let wrapped = self.wrap(id, &dek).await?;
        Ok((dek, wrapped))
    }

    /// Wrap an existing data key for `id` under the current wrapping KEK (used for
    /// re-wrapping, e.g. tier migration).
    async fn wrap(&self, id: &ShardIdentity, dek: &DataKey) -> Result<WrappedKey, BackendError>;

    /// Unwrap a data key wrapped for `id`. A wrap made for another identity fails with
    /// [`BackendError::Integrity`].
    async fn unwrap(
        &self,
        id: &ShardIdentity,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, BackendError>;

    /// Unwrap many data keys, one result per item in order. The default unwraps one by one;
    /// backends with a per-operation cost (an HSM session checkout) override it to pay that
    /// cost once for the whole batch.
    async fn unwrap_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<DataKey, BackendError>> {
        let mut out = Vec::with_capacity(items.len());
        for (id, wrapped) in items {
            out.push(self.unwrap(id, wrapped).await);
        }
        out
    }

    /// Whether `key_ref` names a KEK of this backend instance, i.e. whether a wrap with this
    /// reference can only have been made here (no I/O). The gateway asks it when a stored
    /// row's backend refuses its key: a reference that another configured instance holds
    /// means the row's `backend` column was changed (tampering), not that a key is missing.
    /// The default (`false`) claims nothing.
    fn holds_key_ref(&self, _key_ref: &str) -> bool {
        false
    }

    /// The KEK versions this instance holds now (no I/O beyond what a wrap would do), for
    /// the gateway's key lifecycle. The default (empty) claims none.
    fn kek_versions(&self) -> Vec<KekVersion> {
        Vec::new()
    }

    /// Wrap under KEK version `version` (the version the gateway's key lifecycle made
    /// active). The default wraps with [`KeyBackend::wrap`] and refuses a wrap made under
    /// any other version; backends holding several versions override it.
    async fn wrap_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        dek: &DataKey,
    ) -> Result<WrappedKey, BackendError> {
        let wrapped = self.wrap(id, dek).await?;
        if wrapped.key_version == version {
            Ok(wrapped)
        } else {
            Err(BackendError::KeyUnusable(format!(
                "this backend cannot wrap under key version {version}"
            )))
        }
    }

    /// [`KeyBackend::generate_data_key`] under KEK version `version`.
    async fn generate_data_key_under(
        &self,
        version: u32,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        let dek = DataKey::generate();
        let wrapped = self.wrap_under(version, id, &dek).await?;
        Ok((dek, wrapped))
    }

    /// [`KeyBackend::rewrap_from`] under KEK version `version`.
    async fn rewrap_from_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        let dek = source.unwrap(id, wrapped).await?;
        let out = self.wrap_under(version, id, &dek).await;
        drop(dek);
        out
    }

    /// Current health, cheap enough for a readiness probe.
    async fn health(&self) -> Health;

    /// Gauges and counters, read at scrape time (no I/O). The default has none.
    fn stats(&self) -> Vec<Stat> {
        Vec::new()
    }

    /// Re-wrap a data key that `source` wrapped for `id` under this backend's current KEK
    /// (tier migration, key change). The default unwraps on `source` and wraps here, dropping
    /// (zeroizing) the DEK at once; a backend that can move a wrap without the plaintext
    /// leaving its KEK store (KMS `ReEncrypt`) overrides it.
    async fn rewrap_from(
        &self,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        let dek = source.unwrap(id, wrapped).await?;
        let out = self.wrap(id, &dek).await;
        drop(dek);
        out
    }

    /// [`KeyBackend::rewrap_from`] for many items, one result per item in order. The default
    /// re-wraps one by one; a backend with a per-operation cost (an HSM session checkout and
    /// a hop to a blocking thread) overrides it to pay that cost once for the batch.
    async fn rewrap_many_from(
        &self,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        let mut out = Vec::with_capacity(items.len());
        for (id, wrapped) in items {
            out.push(self.rewrap_from(id, source, wrapped).await);
        }
        out
    }

    /// [`KeyBackend::rewrap_many_from`] under KEK version `version`.
    async fn rewrap_many_from_under(
        &self,
        version: u32,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        let mut out = Vec::with_capacity(items.len());
        for (id, wrapped) in items {
            out.push(self.rewrap_from_under(version, id, source, wrapped).await);
        }
        out
    }

    /// [`KeyBackend::verify`] for many items, one result per item in order (the default
    /// verifies one by one; see [`KeyBackend::rewrap_many_from`]).
    async fn verify_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<(), BackendError>> {
        let mut out = Vec::with_capacity(items.len());
        for (id, wrapped) in items {
            out.push(self.verify(id, wrapped).await);
        }
        out
    }

    /// Prove that this backend can open `wrapped` for `id` now (a migration checks its new
    /// wrap before committing it). The default unwraps and drops (zeroizes) the key at once;
    /// KMS overrides it with a `ReEncrypt` of the blob to its own key, so the data key never
    /// reaches the gateway and no cached key stands in for the real check.
    async fn verify(&self, id: &ShardIdentity, wrapped: &WrappedKey) -> Result<(), BackendError> {
        self.unwrap(id, wrapped).await.map(drop)
    }

    /// This backend as `Any`, for [`KeyBackend::rewrap_from`] overrides that recognise a
    /// source of their own kind. `None` (the default) opts out.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}
