//! The `pkcs11` backend: a non-extractable AES-256 KEK inside an HSM (AWS CloudHSM in
//! production, SoftHSM2 in tests), reached through a pool of logged-in PKCS#11 sessions.
//!
//! * Wrap/unwrap: `C_Encrypt`/`C_Decrypt` with `CKM_AES_GCM` under the KEK, the shard
//!   identity as AAD (see [`session`] for the blob format). `WrappedKey::key_ref` is the
//!   configured `kek_label`, `key_version` the KEK version (see [`provision`] for labels).
//!   `wrap` uses the newest version; the gateway's key lifecycle picks the version with
//!   `wrap_under` (the active one); every version on the token unwraps.
//! * One `cryptoki` context per process, shared by every instance ([`shared_context`]).
//! * Every PKCS#11 call runs on a blocking thread (`tokio::task::spawn_blocking`).
//! * Tampering vs faults: SoftHSM2 answers a bad GCM tag with `CKR_GENERAL_ERROR`, like a
//!   device fault. A failed decrypt is classified by decrypting, on the same session and
//!   key, a probe ciphertext made at start-up: probe opens ⇒ [`BackendError::Integrity`]
//!   (no recovery, no retry); probe fails ⇒ a fault ⇒ recovery.
//! * Recovery: on `CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`, `CKR_USER_NOT_LOGGED_IN`,
//!   `CKR_OBJECT_HANDLE_INVALID`, `CKR_DEVICE_REMOVED`, `CKR_DEVICE_ERROR`,
//!   `CKR_TOKEN_NOT_PRESENT`, `CKR_GENERAL_ERROR` (…) the session is discarded where needed,
//!   the backend logs in again and re-finds its KEK handles; when that fails (the token went
//!   away) it drains the pool, drops every session, finalizes and re-initialises the
//!   context, and finds the token by label again, with bounded backoff. The operation is
//!   retried once on a fresh session; faults after that answer
//!   [`BackendError::Unavailable`].
//! * A wrong PIN is only detected when this process is not already logged in to the token
//!   (PKCS#11 answers `CKR_USER_ALREADY_LOGGED_IN` without checking the PIN).

mod config;
mod context;
mod execute;
mod pool;
pub mod provision;
pub mod session;
mod wrapping;

pub use config::{IvMode, Pkcs11Config};
pub use context::shared_context;
pub use provision::{init_key, rotate_key, version_label};

use crate::{
    BackendError, DataKey, Health, KekVersion, KeyBackend, KeyState, ShardIdentity, Stat,
    WrappedKey,
};
use async_trait::async_trait;
use config::read_pin;
use context::{ck_name, find_slot, login, login_error, rv, Global};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use deadpool::managed::Pool;
use execute::{spawn_key_refresh, Inner};
use pool::{BusyGuard, PooledSession, SessionManager, Stats};
use serde::Serialize;
use session::{open, seal, SealError, IV_LEN, TAG_LEN};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use wrapping::unwrap_on;

const DEK_LEN: usize = 32;
/// Length of a wrapped DEK blob: `iv (12) || ciphertext (32) || tag (16)`.
pub const BLOB_LEN: usize = IV_LEN + DEK_LEN + TAG_LEN;
const PROBE_PLAIN: &[u8; 32] = b"shardgate-pkcs11-probe-plaintext";
const PROBE_AAD: &[u8] = b"shardgate-pkcs11-probe";

/// Pool gauges and counters, for metrics and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    /// Configured pool size (maximum sessions).
    pub size: usize,
    /// Sessions currently open in the pool.
    pub open: usize,
    /// Sessions checked out.
    pub in_use: usize,
    /// Operations waiting for a session.
    pub waiting: usize,
    /// Completed recoveries (re-login/re-find or context re-initialisation).
    pub recoveries: u64,
    /// Most PKCS#11 operations seen running at the same moment, on distinct sessions.
    pub peak_busy: usize,
    /// Times a session was seen used by two threads at once (must stay 0).
    pub session_overlaps: u64,
    /// `C_FindObjects` passes made (start-up, recoveries, refreshes; never per request).
    pub find_calls: u64,
    /// The part of `find_calls` made by the periodic background refresh, off every request's
    /// path; the rest (start-up, recovery, an unknown key version seen on a read) is counted
    /// against the hot path by the benchmarks.
    pub background_find_calls: u64,
    /// Pooled sessions found closed behind the pool's back (checked before each operation)
    /// and replaced, without a recovery.
    pub dead_sessions: u64,
}

/// KEK handles of one context generation / login.
pub(crate) struct Keks {
    /// Bumped by every (re-)establishment; a fault seen at an older epoch is already handled.
    epoch: u64,
    /// Context generation the handles were found in.
    gen: u64,
    pub(crate) slot: Option<Slot>,
    handles: BTreeMap<u32, ObjectHandle>,
}

struct Anchor {
    session: Session,
    gen: u64,
    slot: Slot,
}

#[derive(Default)]
struct RecoveryState {
    last_failure: Option<Instant>,
    last_soft: Option<Instant>,
    last_refresh: Option<Instant>,
    last_error: Option<String>,
}

/// State shared by the backend, its pool manager and blocking tasks.
pub(crate) struct Core {
    name: String,
    cfg: Pkcs11Config,
    pin: AuthPin,
    pub(crate) global: Arc<Global>,
    keks: RwLock<Arc<Keks>>,
    /// Keeps the login alive (closing an application's last session logs it out).
    anchor: Mutex<Option<Anchor>>,
    /// Per KEK version, a blob of `PROBE_PLAIN` under `PROBE_AAD`.
    probes: Mutex<BTreeMap<u32, Vec<u8>>>,
    recovery: Mutex<RecoveryState>,
    stats: Stats,
}

impl Drop for Core {
    fn drop(&mut self) {
        let anchor = self
            .anchor
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(a) = anchor {
            let current = self.global.gate.read().unwrap_or_else(|e| e.into_inner());
            if *current == a.gen {
                let _ = a.session.close();
            }
        }
    }
}

enum OpError {
    /// Answer this error; no retry, no recovery.
    Final(BackendError),
    /// A backend fault: recover, retry once.
    Fault { discard: bool, why: String },
    /// The session belongs to a replaced context: retry on another.
    Stale,
    /// The session no longer answers `C_GetSessionInfo` (closed behind the pool's back):
    /// discard it and retry on another, without a recovery.
    Dead,
}

fn classify(e: &CkError) -> OpError {
    let why = ck_name(e);
    match rv(e) {
        Some(
            RvError::UserNotLoggedIn | RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid,
        ) => OpError::Fault {
            discard: false,
            why,
        },
        Some(
            RvError::KeyFunctionNotPermitted
            | RvError::KeyTypeInconsistent
            | RvError::KeySizeRange
            | RvError::MechanismInvalid
            | RvError::MechanismParamInvalid,
        ) => OpError::Final(BackendError::KeyUnusable(format!(
            "HSM refused the KEK: {why}"
        ))),
        _ => OpError::Fault { discard: true, why },
    }
}

impl Core {
    fn keks(&self) -> Arc<Keks> {
        self.keks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Run `f` on `obj`'s session with the current KEK handles, under the context gate,
    /// with busy instrumentation. Also answers the epoch of the handles used.
    fn call<T>(
        &self,
        obj: &PooledSession,
        f: impl FnOnce(&Session, &Keks) -> Result<T, OpError>,
    ) -> (u64, Result<T, OpError>) {
        let gen = self.global.gate.read().unwrap_or_else(|e| e.into_inner());
        let keks = self.keks();
        if *gen != obj.gen || keks.gen != *gen {
            // A replaced context, or a re-initialisation whose re-login is not done yet.
            return (keks.epoch, Err(OpError::Stale));
        }
        let Some(s) = obj.session.as_ref() else {
            return (keks.epoch, Err(OpError::Stale));
        };
        if !obj.answers(s) {
            return (keks.epoch, Err(OpError::Dead));
        }
        let _busy = BusyGuard::enter(&self.stats, obj);
        (keks.epoch, f(s, &keks))
    }

    fn probe_ok(&self, s: &Session, version: u32, h: ObjectHandle) -> bool {
        let probe = self
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&version)
            .cloned();
        match probe {
            Some(p) => matches!(open(s, h, PROBE_AAD, &p, PROBE_PLAIN.len()),
                Ok(plain) if plain.as_slice() == PROBE_PLAIN),
            None => false,
        }
    }

    /// Log in and (re-)find and check every KEK version (blocking). Verifies or makes the
    /// probe of each version. `fresh` opens a new anchor session.
    fn establish(&self, fresh: bool) -> Result<(), BackendError> {
        let gate = self.global.gate.read().unwrap_or_else(|e| e.into_inner());
        let gen = *gate;
        let pkcs11 = &self.global.pkcs11;
        let slot = find_slot(pkcs11, &self.cfg).map_err(BackendError::Unavailable)?;
        let mut anchor = self.anchor.lock().unwrap_or_else(|e| e.into_inner());
        let reuse = !fresh
            && matches!(&*anchor, Some(a) if a.gen == gen && a.slot == slot
                && a.session.get_session_info().is_ok());
        if !reuse {
            let s = pkcs11.open_rw_session_no_drop(slot).map_err(|e| {
                BackendError::Unavailable(format!("cannot open a session: {}", ck_name(&e)))
            })?;
            if let Some(old) = anchor.replace(Anchor {
                session: s,
                gen,
                slot,
            }) {
                if old.gen == gen {
                    let _ = old.session.close();
                }
            }
        }
        let Some(a) = anchor.as_ref() else {
            return Err(BackendError::Internal("no anchor session".into()));
        };
        login(&a.session, &self.pin).map_err(|e| login_error(&e))?;
        self.stats.finds.fetch_add(1, Ordering::Relaxed);
        let handles = provision::find_versions(&a.session, &self.cfg.kek_label).map_err(|e| {
            BackendError::Unavailable(format!("cannot find the KEK: {}", ck_name(&e)))
        })?;
        if handles.is_empty() {
            return Err(BackendError::KeyUnusable(format!(
                "KEK missing: no key labelled {} on the token (run `shardgate hsm init-key`)",
                version_label(&self.cfg.kek_label, 1)
            )));
        }
        for (&v, &h) in &handles {
            provision::check_kek(&a.session, &version_label(&self.cfg.kek_label, v), h)?;
        }
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        for (&v, &h) in &handles {
            match probes.get(&v) {
                Some(p) => {
                    let ok = matches!(open(&a.session, h, PROBE_AAD, p, PROBE_PLAIN.len()),
                        Ok(plain) if plain.as_slice() == PROBE_PLAIN);
                    if !ok {
                        return Err(BackendError::Unavailable(format!(
                            "probe decrypt under KEK {} failed",
                            version_label(&self.cfg.kek_label, v)
                        )));
                    }
                }
                None => {
                    let blob = seal(&a.session, h, self.cfg.iv, PROBE_AAD, PROBE_PLAIN)
                        .map_err(|e| seal_error(&e))?;
                    probes.insert(v, blob);
                }
            }
        }
        drop(probes);
        let mut keks = self.keks.write().unwrap_or_else(|e| e.into_inner());
        *keks = Arc::new(Keks {
            epoch: keks.epoch + 1,
            gen,
            slot: Some(slot),
            handles,
        });
        Ok(())
    }
}

fn seal_error(e: &SealError) -> BackendError {
    match e {
        SealError::Hsm(e) => {
            BackendError::Unavailable(format!("HSM encrypt failed: {}", ck_name(e)))
        }
        SealError::NoHsmIv => BackendError::KeyUnusable(
            "iv = \"hsm\" but the HSM did not generate an IV (use iv = \"host\" with this HSM)"
                .into(),
        ),
        SealError::BadLength(n) => {
            BackendError::Unavailable(format!("HSM returned {n} bytes of ciphertext"))
        }
    }
}

/// A pkcs11 backend instance. `Debug` shows the configuration (never the PIN).
pub struct Pkcs11Backend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.inner.core.cfg;
        f.debug_struct("Pkcs11Backend")
            .field("name", &self.inner.core.name)
            .field("module", &c.module)
            .field("token_label", &c.token_label)
            .field("slot_id", &c.slot_id)
            .field("kek_label", &c.kek_label)
            .field("pool_size", &c.pool_size)
            .field("iv", &c.iv)
            .finish()
    }
}

/// How often start-up tries to find and log in to the token before it gives up, and the
/// first pause between tries (doubled after each).
const START_TRIES: u32 = 5;
const START_FIRST_PAUSE: Duration = Duration::from_millis(100);

/// [`Core::establish`] at start-up, tried again on a re-initialised module (blocking pauses:
/// 0.1, 0.2, 0.4, 0.8 s) while it fails as unavailable. SoftHSM2 serves several processes from one file token, and a
/// process starting beside others may see the token fail (`C_GetTokenInfo` answering
/// `CKR_GENERAL_ERROR`: measured here, 3 of 30 starts of three gateways at once) while another
/// writes it; a replica restarting beside others must still start. A refused PIN, a badly
/// configured key or a bug fails at once.
fn establish_at_start(core: &Core) -> Result<(), BackendError> {
    let mut pause = START_FIRST_PAUSE;
    let mut tries = 1;
    loop {
        match core.establish(true) {
            Err(BackendError::Unavailable(why)) if tries < START_TRIES => {
                tracing::warn!(backend = %core.name, tries, %why, "HSM not reachable at start-up; trying again");
                std::thread::sleep(pause);
                // The module read the token when it was initialised: only a fresh context
                // sees it again (measured: retrying in the same context fails every time).
                // Nothing of this backend uses it yet; the generation count makes any other
                // backend of the process re-establish its sessions.
                if let Err(e) = core.global.reinitialize() {
                    tracing::warn!(backend = %core.name, error = %e, "re-initialising the PKCS#11 module failed");
                }
                pause *= 2;
                tries += 1;
            }
            done => return done,
        }
    }
}

impl Pkcs11Backend {
    /// Blocking (call once at start-up, outside request handling): load the module and
    /// initialise it with `CKF_OS_LOCKING_OK` (once per process), find the token by label
    /// slot by slot, log in (`CKR_USER_ALREADY_LOGGED_IN` is fine), open the anchor session,
    /// find every KEK version and check its attributes (refusing an extractable, non-sensitive
    /// or missing key with an error naming the attribute), and make the probe ciphertexts.
    /// Pool sessions are opened on first use and then kept.
    pub fn open(name: &str, cfg: &Pkcs11Config) -> Result<Self, BackendError> {
        cfg.validate()?;
        let pin = read_pin(cfg)?;
        let global = context::global(&cfg.module)?;
        let core = Arc::new(Core {
            name: name.to_string(),
            cfg: cfg.clone(),
            pin,
            global,
            keks: RwLock::new(Arc::new(Keks {
                epoch: 0,
                gen: u64::MAX,
                slot: None,
                handles: BTreeMap::new(),
            })),
            anchor: Mutex::new(None),
            probes: Mutex::new(BTreeMap::new()),
            recovery: Mutex::new(RecoveryState::default()),
            stats: Stats::default(),
        });
        establish_at_start(&core)?;
        let timeout = Some(Duration::from_millis(cfg.checkout_timeout_ms));
        let pool = Pool::builder(SessionManager { core: core.clone() })
            .max_size(cfg.pool_size)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| BackendError::Internal(format!("cannot build the session pool: {e}")))?;
        let inner = Arc::new(Inner { core, pool });
        spawn_key_refresh(&inner, cfg.key_refresh_interval_ms);
        Ok(Self { inner })
    }

    /// Pool gauges and counters.
    pub fn pool_status(&self) -> PoolStatus {
        let st = self.inner.pool.status();
        let stats = &self.inner.core.stats;
        PoolStatus {
            size: st.max_size,
            open: st.size,
            in_use: st.size.saturating_sub(st.available),
            waiting: st.waiting,
            recoveries: stats.recoveries.load(Ordering::Relaxed),
            peak_busy: stats.peak_busy.load(Ordering::Relaxed),
            session_overlaps: stats.overlaps.load(Ordering::Relaxed),
            find_calls: stats.finds.load(Ordering::Relaxed),
            background_find_calls: stats.background_finds.load(Ordering::Relaxed),
            dead_sessions: stats.dead.load(Ordering::Relaxed),
        }
    }

    /// KEK versions currently known (ascending); the last one wraps.
    pub fn key_versions(&self) -> Vec<u32> {
        self.inner.core.keks().handles.keys().copied().collect()
    }

    /// Re-read the token's KEK versions (e.g. after `keys rotate` in another process).
    pub async fn refresh_keys(&self) -> Result<(), BackendError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.refresh(false))
            .await
            .map_err(|_| BackendError::Internal("HSM task failed".into()))?
    }
}

#[cfg(feature = "fault-injection")]
/// A checkout held by a test (see [`Pkcs11Backend::hold_checkout`]); released on drop.
pub struct CheckoutHold {
    _obj: Box<dyn std::any::Any + Send>,
}

#[cfg(feature = "fault-injection")]
impl Pkcs11Backend {
    /// TEST ONLY (cargo feature `fault-injection`): `C_Logout` on the live context. Every
    /// session of the process is logged out and every cached object handle goes invalid.
    pub async fn inject_logout(&self) -> Result<(), BackendError> {
        let core = self.inner.core.clone();
        tokio::task::spawn_blocking(move || {
            let _gate = core.global.gate.read().unwrap_or_else(|e| e.into_inner());
            let anchor = core.anchor.lock().unwrap_or_else(|e| e.into_inner());
            match anchor.as_ref() {
                Some(a) => a
                    .session
                    .logout()
                    .map_err(|e| BackendError::Unavailable(format!("C_Logout: {}", ck_name(&e)))),
                None => Err(BackendError::Unavailable("no anchor session".into())),
            }
        })
        .await
        .map_err(|_| BackendError::Internal("HSM task failed".into()))?
    }

    /// TEST ONLY (cargo feature `fault-injection`): every idle pooled session answers from
    /// now on as one the HSM closed behind the pool's back. Returns how many were marked.
    pub fn inject_dead_sessions(&self) -> usize {
        let mut marked = 0;
        self.inner.pool.retain(|s, _| {
            s.injected_dead.store(true, Ordering::Relaxed);
            marked += 1;
            true
        });
        marked
    }

    /// TEST ONLY (cargo feature `fault-injection`): check out one pool session and hold it
    /// until the returned guard is dropped.
    pub async fn hold_checkout(&self) -> Result<CheckoutHold, BackendError> {
        match self.inner.checkout().await {
            Ok(o) => Ok(CheckoutHold { _obj: Box::new(o) }),
            Err(OpError::Final(e)) => Err(e),
            Err(OpError::Fault { why, .. }) => Err(BackendError::Unavailable(why)),
            Err(OpError::Stale | OpError::Dead) => {
                Err(BackendError::Unavailable("stale session".into()))
            }
        }
    }
}

#[async_trait]
impl KeyBackend for Pkcs11Backend {
    fn name(&self) -> &str {
        &self.inner.core.name
    }

    fn holds_key_ref(&self, key_ref: &str) -> bool {
        key_ref == self.inner.core.cfg.kek_label
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn stats(&self) -> Vec<Stat> {
        let p = self.pool_status();
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        vec![
            Stat::new("pool_size", n(p.size)),
            Stat::new("pool_open", n(p.open)),
            Stat::new("pool_in_use", n(p.in_use)),
            Stat::new("pool_waiting", n(p.waiting)),
            Stat::new("pool_peak_busy", n(p.peak_busy)),
            Stat::new("pool_recoveries_total", p.recoveries),
            Stat::new("pool_session_overlaps_total", p.session_overlaps),
            Stat::new("pool_dead_sessions_total", p.dead_sessions),
            Stat::new("find_objects_calls_total", p.find_calls),
            Stat::new(
                "find_objects_background_calls_total",
                p.background_find_calls,
            ),
        ]
    }

    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    async fn wrap(&self, id: &ShardIdentity, dek: &DataKey) -> Result<WrappedKey, BackendError> {
        let aad = id.aad();
        let dek = dek.clone();
        self.inner
            .execute(move |core, s, keks| {
                let Some((&v, &h)) = keks.handles.iter().next_back() else {
                    return Err(OpError::Final(BackendError::KeyUnusable(
                        "no KEK version".into(),
                    )));
                };
                let blob = seal(s, h, core.cfg.iv, &aad, dek.expose()).map_err(|e| match e {
                    SealError::Hsm(e) => classify(&e),
                    other => OpError::Final(seal_error(&other)),
                })?;
                Ok(WrappedKey {
                    key_ref: core.cfg.kek_label.clone(),
                    key_version: v,
                    blob,
                })
            })
            .await
    }

    /// Every version on the token; the newest is the one this backend would wrap with on
    /// its own (so it starts `active` when the gateway first sees the backend).
    fn kek_versions(&self) -> Vec<KekVersion> {
        let versions = self.key_versions();
        let newest = versions.last().copied();
        versions
            .into_iter()
            .map(|v| KekVersion {
                key_ref: self.inner.core.cfg.kek_label.clone(),
                version: v,
                state: if Some(v) == newest {
                    KeyState::Active
                } else {
                    KeyState::DecryptOnly
                },
            })
            .collect()
    }

    async fn wrap_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        dek: &DataKey,
    ) -> Result<WrappedKey, BackendError> {
        if !self.inner.core.keks().handles.contains_key(&version) {
            // Rotated in by another process since this one last looked.
            let _ = self.refresh_keys().await;
        }
        let aad = id.aad();
        let dek = dek.clone();
        self.inner
            .execute(move |core, s, keks| {
                let Some(&h) = keks.handles.get(&version) else {
                    return Err(OpError::Final(BackendError::KeyUnusable(format!(
                        "KEK version {version} is not on the token"
                    ))));
                };
                let blob = seal(s, h, core.cfg.iv, &aad, dek.expose()).map_err(|e| match e {
                    SealError::Hsm(e) => classify(&e),
                    other => OpError::Final(seal_error(&other)),
                })?;
                Ok(WrappedKey {
                    key_ref: core.cfg.kek_label.clone(),
                    key_version: version,
                    blob,
                })
            })
            .await
    }

    async fn unwrap(
        &self,
        id: &ShardIdentity,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, BackendError> {
        let mut refreshed = false;
        self.precheck(wrapped, &mut refreshed).await?;
        let aad = id.aad();
        let w = wrapped.clone();
        self.inner
            .execute(move |core, s, keks| unwrap_on(core, s, keks, &aad, &w))
            .await
    }

    async fn unwrap_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<DataKey, BackendError>> {
        self.unwrap_batch(items).await
    }

    async fn rewrap_many_from(
        &self,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        self.rewrap_batch(None, source, items).await
    }

    async fn rewrap_many_from_under(
        &self,
        version: u32,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        self.rewrap_batch(Some(version), source, items).await
    }

    async fn verify_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<(), BackendError>> {
        self.unwrap_batch(items)
            .await
            .into_iter()
            .map(|r| r.map(drop))
            .collect()
    }

    async fn health(&self) -> Health {
        let core = &self.inner.core;
        let keks = core.keks();
        let failure = core
            .recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_failure
            .and(Some(()));
        let p = self.pool_status();
        let newest = keks.handles.keys().next_back().copied();
        match (newest, failure) {
            (Some(v), None) => Health {
                usable: true,
                detail: format!(
                    "KEK {} wraps; {} version(s); pool {}/{} in use, {} waiting; {} recoveries",
                    version_label(&core.cfg.kek_label, v),
                    keks.handles.len(),
                    p.in_use,
                    p.size,
                    p.waiting,
                    p.recoveries
                ),
            },
            (_, Some(())) => Health {
                usable: false,
                detail: "HSM unavailable: last recovery failed".into(),
            },
            (None, None) => Health {
                usable: false,
                detail: "no KEK version".into(),
            },
        }
    }
}
