//! A bounded cache of unwrapped data keys for reads, modelled on the AWS Encryption SDK's
//! caching CMM.
//!
//! Entries are keyed by a SHA-256 digest of (KMS key id, wrapped blob, canonical identity),
//! so a blob presented under another identity or for another key never hits. Each entry is
//! bounded by age and by number of uses, the whole cache by entry count. Concurrent misses
//! for the same key coalesce into ONE fetch (single flight): the first caller runs it, the
//! others wait for its result. Errors are never cached. Values are dropped when evicted;
//! [`crate::DataKey`] zeroizes its bytes on drop.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cache bounds. `max_uses` counts every read served by an entry, the first one included.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsCacheConfig {
    /// Whether reads are cached at all (writes never are).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Most entries held at once; the oldest is evicted past it.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Age (from the `Decrypt` that filled it) after which an entry is not used again.
    #[serde(default = "default_max_age_ms")]
    pub max_age_ms: u64,
    /// Reads an entry may serve before a fresh `Decrypt` is required.
    #[serde(default = "default_max_uses")]
    pub max_uses: u64,
}

fn default_enabled() -> bool {
    true
}
fn default_max_entries() -> usize {
    10_000
}
fn default_max_age_ms() -> u64 {
    300_000
}
fn default_max_uses() -> u64 {
    100_000
}

impl Default for KmsCacheConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            max_entries: default_max_entries(),
            max_age_ms: default_max_age_ms(),
            max_uses: default_max_uses(),
        }
    }
}

/// Cache and KMS call counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that had to unwrap (one per coalesced group of concurrent misses).
    pub misses: u64,
    /// `Decrypt` operations sent to KMS (retries of one operation count once).
    pub decrypt_calls: u64,
    /// Entries removed for age, uses or capacity.
    pub evictions: u64,
    /// Entries currently held.
    pub entries: u64,
}

/// The cache key: SHA-256 over a domain tag and length-prefixed fields.
pub type CacheKey = [u8; 32];

/// Digest of (key id, wrapped blob, canonical identity encoding).
pub fn cache_key(key_id: &str, blob: &[u8], canonical_identity: &[u8]) -> CacheKey {
    let mut h = Sha256::new();
    h.update(b"shardgate-kms-dek-cache-v1");
    for field in [key_id.as_bytes(), blob, canonical_identity] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    h.finalize().into()
}

struct Entry<V> {
    value: V,
    created: Instant,
    uses: AtomicU64,
}

struct Slot<V> {
    seq: u64,
    cell: tokio::sync::OnceCell<Entry<V>>,
    /// The error of a failed fetch, handed to the callers that were waiting on it (the slot
    /// is removed from the map at once, so later callers start a fresh fetch).
    failed: Mutex<Option<Arc<dyn std::any::Any + Send + Sync>>>,
}

struct Inner<V> {
    map: HashMap<CacheKey, Arc<Slot<V>>>,
    next_seq: u64,
}

/// A bounded single-flight cache of values (data keys in production).
pub struct DekCache<V> {
    cfg: KmsCacheConfig,
    inner: Mutex<Inner<V>>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl<V: Clone + Send + Sync + 'static> std::fmt::Debug for DekCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DekCache")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> DekCache<V> {
    /// An empty cache with these bounds.
    pub fn new(cfg: KmsCacheConfig) -> Self {
        Self {
            cfg,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                next_seq: 0,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Counters (`decrypt_calls` is left 0: the backend fills it).
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            decrypt_calls: 0,
            evictions: self.evictions.load(Ordering::Relaxed),
            entries: self.lock().map.len() as u64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        // A panic while holding the lock cannot leave the map inconsistent (every update is a
        // single insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn max_age(&self) -> Duration {
        Duration::from_millis(self.cfg.max_age_ms)
    }

    fn expired(&self, e: &Entry<V>, now: Instant) -> bool {
        now.duration_since(e.created) >= self.max_age()
            || e.uses.load(Ordering::Relaxed) >= self.cfg.max_uses
    }

    /// The slot for `key`, created (and capacity enforced) if absent.
    fn slot(&self, key: &CacheKey) -> Arc<Slot<V>> {
        let mut inner = self.lock();
        if let Some(s) = inner.map.get(key) {
            return Arc::clone(s);
        }
        if inner.map.len() >= self.cfg.max_entries.max(1) {
            self.make_room(&mut inner);
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let slot = Arc::new(Slot {
            seq,
            cell: tokio::sync::OnceCell::new(),
            failed: Mutex::new(None),
        });
        inner.map.insert(*key, Arc::clone(&slot));
        slot
    }

    /// Drop every expired entry; if still full, drop the oldest filled one (or the oldest).
    fn make_room(&self, inner: &mut Inner<V>) {
        let now = Instant::now();
        let before = inner.map.len();
        inner.map.retain(|_, s| match s.cell.get() {
            Some(e) => !self.expired(e, now),
            None => true,
        });
        let mut evicted = (before - inner.map.len()) as u64;
        if inner.map.len() >= self.cfg.max_entries.max(1) {
            let oldest = inner
                .map
                .iter()
                .min_by_key(|(_, s)| (s.cell.get().is_none(), s.seq))
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                inner.map.remove(&k);
                evicted += 1;
            }
        }
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
    }

    /// Remove `slot` if it is still the one stored under `key`; true if it was.
    fn remove(&self, key: &CacheKey, slot: &Arc<Slot<V>>) -> bool {
        let mut inner = self.lock();
        if inner.map.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            inner.map.remove(key);
            true
        } else {
            false
        }
    }

    /// Evict `slot` (counted) if it is still the one stored under `key`.
    fn evict(&self, key: &CacheKey, slot: &Arc<Slot<V>>) {
        if self.remove(key, slot) {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The cached value for `key`, or the result of `fetch` (run once for all concurrent
    /// callers missing the same key). An error from `fetch` is handed to every caller that
    /// was waiting on that fetch (so an outage costs one operation budget, not one per
    /// waiter) and is not cached: the next caller fetches again.
    pub async fn get_or_fetch<E, F, Fut>(&self, key: &CacheKey, fetch: F) -> Result<V, E>
    where
        E: Clone + Send + Sync + 'static,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        // At most two rounds: an entry found expired is evicted and refilled once.
        for _ in 0..2 {
            let slot = self.slot(key);
            let mut fetched = false;
            let mut shared_error = false;
            let init = slot
                .cell
                .get_or_try_init(|| {
                    let earlier = self.failure_of::<E>(&slot);
                    shared_error = earlier.is_some();
                    fetched = earlier.is_none();
                    // Either the error of the fetch this caller waited on, or a fetch of its own.
                    let fut = match earlier {
                        Some(e) => Err(e),
                        None => Ok(fetch()),
                    };
                    async move {
                        let value = fut?.await?;
                        Ok::<_, E>(Entry {
                            value,
                            created: Instant::now(),
                            uses: AtomicU64::new(0),
                        })
                    }
                })
                .await;
            let entry = match init {
                Ok(entry) => entry,
                Err(e) => {
                    if !shared_error {
                        *slot.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Arc::new(e.clone()));
                        self.remove(key, &slot);
                    }
                    return Err(e);
                }
            };
            let prior_uses = entry.uses.fetch_add(1, Ordering::Relaxed);
            let fresh = Instant::now().duration_since(entry.created) < self.max_age()
                && prior_uses < self.cfg.max_uses;
            if fresh {
                if fetched {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                }
                let value = entry.value.clone();
                if prior_uses + 1 >= self.cfg.max_uses {
                    // Used up: drop it now rather than keep the key in memory until the next read.
                    self.evict(key, &slot);
                }
                return Ok(value);
            }
            self.evict(key, &slot);
            if fetched {
                // A brand-new entry already spent (max_uses == 0 or max_age == 0): serve it
                // once without caching rather than loop.
                self.misses.fetch_add(1, Ordering::Relaxed);
                return Ok(entry.value.clone());
            }
        }
        // Two expired rounds in a row (a racing reader used the refill up): fetch uncached.
        self.misses.fetch_add(1, Ordering::Relaxed);
        fetch().await
    }
}

impl<V> DekCache<V> {
    fn failure_of<E: Clone + 'static>(&self, slot: &Slot<V>) -> Option<E> {
        slot.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|a| a.downcast_ref::<E>().cloned())
    }
}

#[cfg(test)]
mod tests;
