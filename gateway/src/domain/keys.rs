//! Key lifecycle (NIST SP 800-57): every KEK version of every backend instance is `active`,
//! `decrypt-only` or `destroyed`, and the database (table `key_versions`, shared by every
//! replica) is where that is decided, not a keyring file.
//!
//! - [`KeyLifecycle`] keeps this process's copy of the table (re-read every
//!   `[keys] refresh_interval_ms`, at once after a transition made here, and whenever a
//!   backend's own list of versions changes, e.g. a keyring file edited by `keys rotate`),
//!   registers versions the backends report that the table lacks, and counts wraps.
//! - [`Lifecycled`] wraps each backend instance: a wrap (a write, a migration re-wrap) uses the
//!   backend's `active` version only, and takes one wrap from the process's reserved block
//!   of that version's counter; an unwrap under a `destroyed` version is refused with
//!   `key_unusable` (never `integrity_failure`: nothing was tampered with). It is a
//!   [`Decorator`]: the calls it does not override (`name`, `kind`, `holds_key_ref`,
//!   `kek_versions`, `stats`, `as_any`, and the `_under` calls the lifecycle itself makes)
//!   are forwarded unchanged.
//! - `crate::service::keys_admin::transition` is the one way a state changes (admin API and CLI): checked, audited and
//!   committed in one transaction; `destroyed` is refused while any shard version
//!   references the version, and the store fences it against concurrent writes.
//!
//! Wrap counter: AES-GCM with random 96-bit nonces stays within its collision bound for
//! 2^32 encryptions under one key; `local` and `pkcs11` wraps are AES-GCM under the KEK, so
//! each of their versions counts wraps. A replica reserves blocks of `wrap_block` wraps with
//! one transaction (`reserve_key_wraps`) and counts inside the block in an atomic: no
//! database write per wrap, and no two replicas ever share a range. Past `wrap_warn_at`
//! reserved wraps the gateway warns (log, `shardgate_key_wraps_reserved`); at `wrap_limit`
//! it refuses new wraps under that version (`key_unusable`, "rotate the key"). Reserved but
//! unused wraps (a replica that stops) count as used: the counter only errs on the safe side.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardgate_backends::{
    BackendError, DataKey, Decorator, Health, KekVersion, KeyBackend, ShardIdentity, WrappedKey,
};
use shardgate_store::{KeyState, KeyVersionRecord, NewKeyVersion, Reservation, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// `[keys]`: the key lifecycle's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// How often this process re-reads the key states (a transition made on another replica
    /// or by the CLI takes effect here within this time).
    pub refresh_interval_ms: u64,
    /// Wraps a replica reserves at a time.
    pub wrap_block: u64,
    /// Reserved wraps of one version past which the gateway warns (default 2^30).
    pub wrap_warn_at: u64,
    /// Reserved wraps of one version at which new wraps are refused (default 2^31, half the
    /// AES-GCM random-nonce bound). Lower it only for tests; never raise it.
    pub wrap_limit: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            refresh_interval_ms: 1_000,
            wrap_block: 1_024,
            wrap_warn_at: 1 << 30,
            wrap_limit: 1 << 31,
        }
    }
}

/// Whether wraps of this backend kind are counted (AES-GCM under a KEK whose nonces the
/// gateway or the HSM draws). KMS manages its key material and nonces itself.
pub fn counts_wraps(kind: &str) -> bool {
    matches!(kind, "local" | "pkcs11")
}

/// The caller-facing text for a use of a destroyed key version.
pub fn destroyed_message(backend: &str, version: i64) -> String {
    format!(
        "key version {version} of backend {backend} is destroyed: shard versions wrapped under \
         it can no longer be opened or written"
    )
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The per-(backend, version) wrap budget of this process.
#[derive(Default)]
struct Counter {
    /// Wraps left in the blocks this process reserved.
    budget: AtomicU64,
    /// One reservation at a time per version in this process.
    reserving: tokio::sync::Mutex<()>,
    last_warn: Mutex<Option<Instant>>,
}

impl Counter {
    fn take(&self) -> bool {
        self.budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1))
            .is_ok()
    }
}

enum Slot {
    Taken,
    NotActive,
}

/// This process's view of the key states, and its wrap counters.
pub struct KeyLifecycle {
    store: Arc<dyn Store>,
    cfg: KeysConfig,
    /// The instances (inside their breakers), for their versions.
    backends: BTreeMap<String, Arc<dyn KeyBackend>>,
    table: RwLock<BTreeMap<(String, i64), KeyVersionRecord>>,
    /// What each backend reported last: a change triggers registration and a re-read.
    seen: Mutex<HashMap<String, Vec<KekVersion>>>,
    counters: Mutex<HashMap<(String, u32), Arc<Counter>>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KeyLifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLifecycle")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl KeyLifecycle {
    /// Register every backend's versions, read the table, and keep it fresh in the
    /// background while the returned value lives.
    pub async fn start(
        store: Arc<dyn Store>,
        backends: BTreeMap<String, Arc<dyn KeyBackend>>,
        cfg: KeysConfig,
    ) -> Result<Arc<Self>, StoreError> {
        let keys = Arc::new(Self {
            store,
            cfg,
            backends,
            table: RwLock::new(BTreeMap::new()),
            seen: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
        });
        metrics::gauge!("shardgate_key_wrap_warn_at").set(keys.cfg.wrap_warn_at as f64);
        metrics::gauge!("shardgate_key_wrap_limit").set(keys.cfg.wrap_limit as f64);
        keys.refresh().await?;
        let names: Vec<String> = keys.backends.keys().cloned().collect();
        for name in names {
            keys.sync(&name).await?;
        }
        let weak = Arc::downgrade(&keys);
        let every = Duration::from_millis(keys.cfg.refresh_interval_ms.max(50));
        tokio::spawn(refresh_loop(weak, every));
        Ok(keys)
    }

    /// The settings.
    pub fn config(&self) -> &KeysConfig {
        &self.cfg
    }

    /// Re-read the table.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let _one = self.refreshing.lock().await;
        let rows = self.store.list_key_versions().await?;
        for r in &rows {
            if self.backends.contains_key(&r.backend) && counts_wraps(self.kind(&r.backend)) {
                metrics::gauge!(
                    "shardgate_key_wraps_reserved",
                    "backend" => r.backend.clone(),
                    "version" => r.key_version.to_string()
                )
                .set(r.reserved_upto as f64);
            }
        }
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        *table = rows
            .into_iter()
            .map(|r| ((r.backend.clone(), r.key_version), r))
            .collect();
        Ok(())
    }

    fn kind(&self, backend: &str) -> &'static str {
        self.backends.get(backend).map_or("", |b| b.kind())
    }

    /// Register the versions `backend` reports that the table lacks (the backend's own view
    /// is their starting state; never a second active one), then re-read the table.
    pub async fn sync(&self, backend: &str) -> Result<(), StoreError> {
        let Some(b) = self.backends.get(backend) else {
            return Ok(());
        };
        let inventory = b.kek_versions();
        let missing: Vec<NewKeyVersion> = {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            inventory
                .iter()
                .filter(|v| !table.contains_key(&(backend.to_string(), i64::from(v.version))))
                .map(|v| NewKeyVersion {
                    backend: backend.to_string(),
                    key_version: i64::from(v.version),
                    key_ref: v.key_ref.clone(),
                    state: v.state,
                })
                .collect()
        };
        if !missing.is_empty() {
            let added = self
                .store
                .register_key_versions(&missing, crate::now_ms())
                .await?;
            if added > 0 {
                tracing::info!(backend, versions = ?missing.iter().map(|m| m.key_version).collect::<Vec<_>>(), "key versions registered");
            }
        }
        self.refresh().await?;
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(backend.to_string(), inventory);
        Ok(())
    }

    /// When `backend`'s own list of versions changed since last seen (a keyring file
    /// rotated, promoted or replaced; a new HSM key object), register and re-read now.
    async fn sync_if_changed(&self, backend: &str, inner: &dyn KeyBackend) {
        let now = inner.kek_versions();
        let changed = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(backend)
            .is_none_or(|before| *before != now);
        if changed {
            if let Err(e) = self.sync(backend).await {
                tracing::warn!(backend, error = %e, "key versions could not be registered");
            }
        }
    }

    /// The stored state of a version, as this process last read it.
    pub fn state(&self, backend: &str, version: i64) -> Option<KeyState> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(backend.to_string(), version))
            .map(|r| r.state)
    }

    /// The backend's active version, as this process last read it.
    pub fn active(&self, backend: &str) -> Option<u32> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|r| r.backend == backend && r.state == KeyState::Active)
            .and_then(|r| u32::try_from(r.key_version).ok())
    }

    /// Refuse any use of a destroyed version.
    fn refuse_destroyed(&self, backend: &str, version: u32) -> Result<(), BackendError> {
        // On every unwrap: scan the few rows in place rather than build an owned key and
        // clone the state for a map lookup (two allocations per request on the hot path).
        let v = i64::from(version);
        let destroyed = self
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|((b, kv), r)| *kv == v && b == backend && r.state == KeyState::Destroyed);
        if destroyed {
            return Err(BackendError::Refused(destroyed_message(
                backend,
                i64::from(version),
            )));
        }
        Ok(())
    }

    /// The version a new wrap of `backend` must use, with one wrap of its counter taken.
    async fn wrap_version(&self, backend: &str, kind: &str) -> Result<u32, BackendError> {
        for _ in 0..2 {
            let Some(v) = self.active(backend) else {
                return Err(BackendError::Refused(format!(
                    "backend {backend} has no active key version: promote one \
                     (shardgate keys promote, or POST /v1/admin/keys/{backend}/N/state)"
                )));
            };
            if !counts_wraps(kind) {
                return Ok(v);
            }
            match self.take_wrap(backend, v).await? {
                Slot::Taken => return Ok(v),
                // Another replica (or the CLI) changed the active version: read again.
                Slot::NotActive => {
                    self.refresh().await.map_err(counter_unavailable)?;
                }
            }
        }
        Err(BackendError::Unavailable(format!(
            "the active key version of backend {backend} changed during the wrap; retry"
        )))
    }

    fn counter(&self, backend: &str, version: u32) -> Arc<Counter> {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((backend.to_string(), version))
            .or_default()
            .clone()
    }

    async fn take_wrap(&self, backend: &str, version: u32) -> Result<Slot, BackendError> {
        let counter = self.counter(backend, version);
        if counter.take() {
            return Ok(Slot::Taken);
        }
        let _one = counter.reserving.lock().await;
        // Another request of this process may have reserved while we waited.
        if counter.take() {
            return Ok(Slot::Taken);
        }
        let reserved = self
            .store
            .reserve_key_wraps(
                backend,
                i64::from(version),
                i64_of(self.cfg.wrap_block.max(1)),
                i64_of(self.cfg.wrap_limit),
            )
            .await
            .map_err(counter_unavailable)?;
        match reserved {
            Reservation::Granted { from, to } => {
                let got = u64::try_from(to - from).unwrap_or(0);
                // One of them is this wrap.
                counter
                    .budget
                    .fetch_add(got.saturating_sub(1), Ordering::AcqRel);
                metrics::gauge!(
                    "shardgate_key_wraps_reserved",
                    "backend" => backend.to_string(),
                    "version" => version.to_string()
                )
                .set(to as f64);
                tracing::debug!(backend, version, from, to, "reserved a block of wraps");
                if u64::try_from(to).unwrap_or(u64::MAX) >= self.cfg.wrap_warn_at {
                    self.warn(&counter, backend, version, to);
                }
                Ok(Slot::Taken)
            }
            Reservation::NotActive => Ok(Slot::NotActive),
            Reservation::Exhausted { reserved } => {
                metrics::counter!("shardgate_key_wrap_refusals_total", "backend" => backend.to_string())
                    .increment(1);
                tracing::error!(backend, version, reserved, limit = self.cfg.wrap_limit, "key version reached its wrap limit: new wraps are refused until a new version is promoted");
                Err(BackendError::Refused(format!(
                    "key version {version} of backend {backend} has reached its wrap limit \
                     ({} wraps, the AES-GCM random-nonce bound): rotate the key \
                     (shardgate keys rotate, then keys promote)",
                    self.cfg.wrap_limit
                )))
            }
        }
    }

    fn warn(&self, counter: &Counter, backend: &str, version: u32, reserved: i64) {
        let mut last = counter.last_warn.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(
            backend,
            version,
            reserved,
            warn_at = self.cfg.wrap_warn_at,
            limit = self.cfg.wrap_limit,
            "key version nears its wrap limit: rotate it (shardgate keys rotate, then keys promote)"
        );
    }
}

fn counter_unavailable(e: StoreError) -> BackendError {
    tracing::warn!(error = %e, "key usage counter: the store cannot be reached");
    BackendError::Unavailable("the key usage counter cannot be reserved (store unavailable)".into())
}

async fn refresh_loop(weak: Weak<KeyLifecycle>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(keys) = weak.upgrade() else { return };
        let names: Vec<String> = keys.backends.keys().cloned().collect();
        for name in names {
            if let Some(b) = keys.backends.get(&name).cloned() {
                keys.sync_if_changed(&name, b.as_ref()).await;
            }
        }
        if let Err(e) = keys.refresh().await {
            tracing::warn!(error = %e, "key states could not be re-read; keeping the last ones");
        }
    }
}

/// The items of a batch not refused up front, in order.
fn allowed(
    items: &[(ShardIdentity, WrappedKey)],
    refused: &[Option<BackendError>],
) -> Vec<(ShardIdentity, WrappedKey)> {
    items
        .iter()
        .zip(refused)
        .filter(|(_, r)| r.is_none())
        .map(|(item, _)| item.clone())
        .collect()
}

/// One result per item of a batch: its refusal, or the next result of the allowed items.
fn merge<T>(
    refused: Vec<Option<BackendError>>,
    done: Vec<Result<T, BackendError>>,
) -> Vec<Result<T, BackendError>> {
    let mut done = done.into_iter();
    refused
        .into_iter()
        .map(|r| match r {
            Some(e) => Err(e),
            None => done
                .next()
                .unwrap_or_else(|| Err(BackendError::Internal("batch item lost".into()))),
        })
        .collect()
}

/// A backend instance under the key lifecycle (see the module docs).
pub struct Lifecycled {
    inner: Arc<dyn KeyBackend>,
    keys: Arc<KeyLifecycle>,
}

impl Lifecycled {
    /// `inner` under `keys`.
    pub fn new(inner: Arc<dyn KeyBackend>, keys: Arc<KeyLifecycle>) -> Self {
        Self { inner, keys }
    }

    /// Per item, the refusal of its key version on `backend` (destroyed), if any.
    fn refused(
        &self,
        backend: &str,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Option<BackendError>> {
        items
            .iter()
            .map(|(_, w)| self.keys.refuse_destroyed(backend, w.key_version).err())
            .collect()
    }

    async fn version_for_wrap(&self) -> Result<u32, BackendError> {
        let name = self.inner.name();
        self.keys.sync_if_changed(name, self.inner.as_ref()).await;
        self.keys.wrap_version(name, self.inner.kind()).await
    }
}

/// `wrapped` if it was made under `version` (the message of the trait's default `wrap_under`).
fn only_under(
    version: u32,
    wrapped: Result<WrappedKey, BackendError>,
) -> Result<WrappedKey, BackendError> {
    match wrapped {
        Ok(w) if w.key_version != version => Err(BackendError::KeyUnusable(format!(
            "this backend cannot wrap under key version {version}"
        ))),
        other => other,
    }
}

#[async_trait]
impl Decorator for Lifecycled {
    fn inner(&self) -> &dyn KeyBackend {
        self.inner.as_ref()
    }

    async fn generate_data_key(
        &self,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        let v = self.version_for_wrap().await?;
        self.inner.generate_data_key_under(v, id).await
    }

    async fn wrap(&self, id: &ShardIdentity, dek: &DataKey) -> Result<WrappedKey, BackendError> {
        let v = self.version_for_wrap().await?;
        self.inner.wrap_under(v, id, dek).await
    }

    async fn unwrap(
        &self,
        id: &ShardIdentity,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, BackendError> {
        self.keys
            .refuse_destroyed(self.inner.name(), wrapped.key_version)?;
        self.inner.unwrap(id, wrapped).await
    }

    async fn unwrap_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<DataKey, BackendError>> {
        let refused = self.refused(self.inner.name(), items);
        let opened = if refused.iter().all(Option::is_none) {
            self.inner.unwrap_many(items).await
        } else {
            self.inner.unwrap_many(&allowed(items, &refused)).await
        };
        merge(refused, opened)
    }

    async fn verify_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<(), BackendError>> {
        let refused = self.refused(self.inner.name(), items);
        let verified = if refused.iter().all(Option::is_none) {
            self.inner.verify_many(items).await
        } else {
            self.inner.verify_many(&allowed(items, &refused)).await
        };
        merge(refused, verified)
    }

    async fn rewrap_many_from(
        &self,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        // As `rewrap_from`: the source version is checked here (KMS -> KMS never unwraps).
        let mut refused = self.refused(source.name(), items);
        // One wrap counted per item, as one by one; the batch goes to the backend in one
        // call when every item got the same version (a promotion mid-batch splits it).
        let mut versions = Vec::with_capacity(items.len());
        for r in refused.iter_mut() {
            if r.is_none() {
                match self.version_for_wrap().await {
                    Ok(v) => versions.push(v),
                    Err(e) => *r = Some(e),
                }
            }
        }
        let all = refused.iter().all(Option::is_none);
        let allowed = if all {
            Vec::new()
        } else {
            allowed(items, &refused)
        };
        let allowed = if all { items } else { &allowed[..] };
        let wrapped = match versions.first() {
            Some(&v) if versions.iter().all(|&w| w == v) => {
                self.inner.rewrap_many_from_under(v, source, allowed).await
            }
            _ => {
                let mut out = Vec::with_capacity(allowed.len());
                for ((id, w), v) in allowed.iter().zip(versions) {
                    out.push(self.inner.rewrap_from_under(v, id, source, w).await);
                }
                out
            }
        };
        merge(refused, wrapped)
    }

    async fn verify(&self, id: &ShardIdentity, wrapped: &WrappedKey) -> Result<(), BackendError> {
        self.keys
            .refuse_destroyed(self.inner.name(), wrapped.key_version)?;
        self.inner.verify(id, wrapped).await
    }

    async fn rewrap_from(
        &self,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        // KMS -> KMS re-encrypts without unwrapping here: check the source version first.
        self.keys
            .refuse_destroyed(source.name(), wrapped.key_version)?;
        let v = self.version_for_wrap().await?;
        self.inner.rewrap_from_under(v, id, source, wrapped).await
    }

    // A caller that names a KEK version still goes through the lifecycle (the trait's own
    // meaning of `_under`): the wrap uses the active version, counted, and any other version
    // is refused. A pass-through would wrap under a decrypt-only version, uncounted.
    async fn wrap_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        dek: &DataKey,
    ) -> Result<WrappedKey, BackendError> {
        only_under(version, Decorator::wrap(self, id, dek).await)
    }

    async fn generate_data_key_under(
        &self,
        version: u32,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        let (dek, wrapped) = Decorator::generate_data_key(self, id).await?;
        only_under(version, Ok(wrapped)).map(|w| (dek, w))
    }

    async fn rewrap_from_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        only_under(
            version,
            Decorator::rewrap_from(self, id, source, wrapped).await,
        )
    }

    async fn rewrap_many_from_under(
        &self,
        version: u32,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        let wrapped = Decorator::rewrap_many_from(self, source, items).await;
        wrapped
            .into_iter()
            .map(|r| only_under(version, r))
            .collect()
    }

    async fn health(&self) -> Health {
        let inner = self.inner.health().await;
        let name = self.inner.name();
        let detail = match self.keys.active(name) {
            Some(v) => format!("{}; key version {v} active", inner.detail),
            None => format!("{}; no active key version (wraps refused)", inner.detail),
        };
        Health {
            usable: inner.usable,
            detail,
        }
    }
}
