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

mod context;
mod pool;
pub mod provision;
pub mod session;

pub use context::shared_context;
pub use provision::{init_key, rotate_key, version_label};

use crate::{
    BackendError, DataKey, Health, KekVersion, KeyBackend, KeyState, ShardIdentity, Stat,
    WrappedKey,
};
use async_trait::async_trait;
use context::{ck_name, find_slot, login, login_error, rv, Global};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use deadpool::managed::{Object, Pool, PoolError, TimeoutType, Timeouts};
use pool::{BusyGuard, PooledSession, SessionManager, Stats};
use serde::{Deserialize, Serialize};
use session::{open, seal, OpenError, SealError, IV_LEN, TAG_LEN};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const DEK_LEN: usize = 32;
/// Length of a wrapped DEK blob: `iv (12) || ciphertext (32) || tag (16)`.
pub const BLOB_LEN: usize = IV_LEN + DEK_LEN + TAG_LEN;
const PROBE_PLAIN: &[u8; 32] = b"shardgate-pkcs11-probe-plaintext";
const PROBE_AAD: &[u8] = b"shardgate-pkcs11-probe";
/// After a failed recovery, faults fail fast for this long before the next attempt.
const RECOVERY_HOLDOFF: Duration = Duration::from_millis(250);
/// Rounds of one recovery attempt (each: re-login/re-find, then finalize/re-initialise).
const RECOVERY_ROUNDS: u32 = 3;
const MAX_POOL: usize = 1000;

fn default_module() -> PathBuf {
    PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
}
fn default_pool_size() -> usize {
    4
}
fn default_checkout_timeout_ms() -> u64 {
    1000
}

/// Who generates the AES-GCM IV of a wrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IvMode {
    /// The host draws a random 96-bit IV and passes it (SoftHSM2 and most HSMs).
    #[default]
    Host,
    /// The HSM generates the IV and writes it back into `CK_GCM_PARAMS.pIv` (CloudHSM).
    Hsm,
}

/// Configuration of one pkcs11 backend instance. The PIN is never inline: it comes from an
/// environment variable or a file of mode 0600.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (CloudHSM: `/opt/cloudhsm/lib/libcloudhsm_pkcs11.so`).
    #[serde(default = "default_module")]
    pub module: PathBuf,
    /// The token's label (CloudHSM: `hsm1`). At least one of label and slot id is needed.
    #[serde(default)]
    pub token_label: Option<String>,
    /// The slot id (slot ids can change; prefer the label).
    #[serde(default)]
    pub slot_id: Option<u64>,
    /// Name of an environment variable holding the user PIN (CloudHSM: `user:password`).
    #[serde(default)]
    pub pin_env: Option<String>,
    /// A file holding the user PIN; refused unless it is private to its owner (0600).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// The KEK's label; version `N` is the object labelled `{kek_label}/v{N}`.
    pub kek_label: String,
    /// Sessions in the pool, 1..=1000 (CloudHSM allows 1,024 sessions per application).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long an operation waits for a free session before answering `Unavailable`.
    #[serde(default = "default_checkout_timeout_ms")]
    pub checkout_timeout_ms: u64,
    /// Who generates the GCM IV: `host` (default) or `hsm` (CloudHSM).
    #[serde(default)]
    pub iv: IvMode,
    /// How often a running backend re-reads the token's KEK versions, so that a version
    /// added by `keys rotate` starts wrapping without a restart (one `C_FindObjects` pass per
    /// interval, never per request). 0 turns it off.
    #[serde(default = "default_key_refresh_interval_ms")]
    pub key_refresh_interval_ms: u64,
}

fn default_key_refresh_interval_ms() -> u64 {
    60_000
}

impl Pkcs11Config {
    /// A config with defaults for everything but the token label and KEK label.
    pub fn new(token_label: &str, kek_label: &str) -> Self {
        Self {
            module: default_module(),
            token_label: Some(token_label.to_string()),
            slot_id: None,
            pin_env: None,
            pin_file: None,
            kek_label: kek_label.to_string(),
            pool_size: default_pool_size(),
            checkout_timeout_ms: default_checkout_timeout_ms(),
            iv: IvMode::Host,
            key_refresh_interval_ms: default_key_refresh_interval_ms(),
        }
    }

    /// Check the invariants (pool size bound, a token selector, one PIN source, a label).
    pub fn validate(&self) -> Result<(), BackendError> {
        let bad = |m: String| Err(BackendError::Internal(format!("pkcs11 config: {m}")));
        if self.kek_label.is_empty() {
            return bad("kek_label is empty".into());
        }
        if !(1..=MAX_POOL).contains(&self.pool_size) {
            return bad(format!(
                "pool_size {} is out of range 1..={MAX_POOL} (CloudHSM allows 1,024 sessions per application)",
                self.pool_size
            ));
        }
        if self.checkout_timeout_ms == 0 {
            return bad("checkout_timeout_ms must be positive".into());
        }
        if self.token_label.is_none() && self.slot_id.is_none() {
            return bad("set token_label or slot_id".into());
        }
        if self.pin_env.is_some() == self.pin_file.is_some() {
            return bad("set exactly one of pin_env and pin_file".into());
        }
        Ok(())
    }
}

/// Read the PIN from the configured source. Errors never carry the PIN.
pub(crate) fn read_pin(cfg: &Pkcs11Config) -> Result<AuthPin, BackendError> {
    let raw: Zeroizing<String> = match (&cfg.pin_env, &cfg.pin_file) {
        (Some(var), None) => Zeroizing::new(std::env::var(var).map_err(|_| {
            BackendError::Internal(format!("PIN environment variable {var} is not set"))
        })?),
        (None, Some(path)) => crate::files::read_secret_text(path).map_err(|e| {
            let why = match e {
                crate::files::SecretFileError::Io(e) => format!("cannot read it: {}", e.kind()),
                refused => refused.to_string(),
            };
            BackendError::Internal(format!("PIN file {}: {why}", path.display()))
        })?,
        _ => {
            return Err(BackendError::Internal(
                "pkcs11 config: set exactly one of pin_env and pin_file".into(),
            ))
        }
    };
    let pin = raw.trim_end_matches(['\r', '\n']);
    if pin.is_empty() {
        return Err(BackendError::Internal("the PIN is empty".into()));
    }
    Ok(AuthPin::from(pin.to_string()))
}

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

struct Inner {
    core: Arc<Core>,
    pool: Pool<SessionManager>,
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
        core.establish(true)?;
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

    /// Unwrap many data keys on ONE session checkout (batch reads). One result per item, in
    /// order; a fault during the batch recovers and retries the batch once.
    pub async fn unwrap_batch(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<DataKey, BackendError>> {
        let mut out: Vec<Option<Result<DataKey, BackendError>>> = vec![None; items.len()];
        let mut refreshed = false;
        let mut todo = Vec::new();
        for (i, (id, w)) in items.iter().enumerate() {
            if let Err(e) = self.precheck(w, &mut refreshed).await {
                out[i] = Some(Err(e));
            } else {
                todo.push((i, id.aad(), w.clone()));
            }
        }
        if !todo.is_empty() {
            let todo = Arc::new(todo);
            let t2 = todo.clone();
            let res = self
                .inner
                .execute(move |core, s, keks| {
                    let mut res = Vec::with_capacity(t2.len());
                    for (_, aad, w) in t2.iter() {
                        match unwrap_on(core, s, keks, aad, w) {
                            Ok(k) => res.push(Ok(k)),
                            Err(OpError::Final(e)) => res.push(Err(e)),
                            Err(other) => return Err(other),
                        }
                    }
                    Ok(res)
                })
                .await;
            match res {
                Ok(results) => {
                    for ((i, _, _), r) in todo.iter().zip(results) {
                        out[*i] = Some(r);
                    }
                }
                Err(e) => {
                    for (i, _, _) in todo.iter() {
                        out[*i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BackendError::Internal("batch item lost".into()))))
            .collect()
    }

    /// Wrap many data keys on ONE session checkout, under `version` (or the newest version
    /// on the token when `None`); one result per item, in order. A fault during the batch
    /// recovers and wraps the batch again (fresh IVs: nothing of the first try is kept).
    async fn wrap_batch(
        &self,
        version: Option<u32>,
        items: Vec<(Vec<u8>, DataKey)>,
    ) -> Vec<Result<WrappedKey, BackendError>> {
        if items.is_empty() {
            return Vec::new();
        }
        if let Some(v) = version {
            if !self.inner.core.keks().handles.contains_key(&v) {
                // Rotated in by another process since this one last looked.
                let _ = self.refresh_keys().await;
            }
        }
        let n = items.len();
        let items = Arc::new(items);
        let res = self
            .inner
            .execute(move |core, s, keks| {
                let picked = match version {
                    Some(v) => keks.handles.get(&v).map(|&h| (v, h)),
                    None => keks.handles.iter().next_back().map(|(&v, &h)| (v, h)),
                };
                let Some((v, h)) = picked else {
                    return Err(OpError::Final(BackendError::KeyUnusable(match version {
                        Some(v) => format!("KEK version {v} is not on the token"),
                        None => "no KEK version".into(),
                    })));
                };
                let mut out = Vec::with_capacity(items.len());
                for (aad, dek) in items.iter() {
                    match seal(s, h, core.cfg.iv, aad, dek.expose()) {
                        Ok(blob) => out.push(Ok(WrappedKey {
                            key_ref: core.cfg.kek_label.clone(),
                            key_version: v,
                            blob,
                        })),
                        Err(SealError::Hsm(e)) => match classify(&e) {
                            OpError::Final(e) => out.push(Err(e)),
                            other => return Err(other),
                        },
                        Err(other) => out.push(Err(seal_error(&other))),
                    }
                }
                Ok(out)
            })
            .await;
        match res {
            Ok(out) => out,
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    /// Unwrap every item on `source` (its own batch), then wrap the keys here on one
    /// checkout; the plaintext keys are zeroized when the batch is done.
    async fn rewrap_batch(
        &self,
        version: Option<u32>,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        let opened = source.unwrap_many(items).await;
        let mut out: Vec<Option<Result<WrappedKey, BackendError>>> = Vec::new();
        let mut todo = Vec::new();
        for ((id, _), dek) in items.iter().zip(opened) {
            match dek {
                Ok(dek) => {
                    todo.push((id.aad(), dek));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let mut wrapped = self.wrap_batch(version, todo).await.into_iter();
        out.into_iter()
            .map(|r| {
                r.or_else(|| wrapped.next())
                    .unwrap_or_else(|| Err(BackendError::Internal("batch item lost".into())))
            })
            .collect()
    }

    async fn precheck(&self, w: &WrappedKey, refreshed: &mut bool) -> Result<(), BackendError> {
        let cfg = &self.inner.core.cfg;
        if w.key_ref != cfg.kek_label {
            return Err(BackendError::KeyUnusable(
                "data key was wrapped by another KEK".into(),
            ));
        }
        if w.blob.len() != BLOB_LEN {
            return Err(BackendError::Integrity);
        }
        if !self.inner.core.keks().handles.contains_key(&w.key_version) {
            // Another process may have rotated in a new version: look once.
            if !*refreshed {
                *refreshed = true;
                let _ = self.refresh_keys().await;
            }
            if !self.inner.core.keks().handles.contains_key(&w.key_version) {
                return Err(BackendError::KeyUnusable(format!(
                    "KEK version {} is not on the token",
                    w.key_version
                )));
            }
        }
        Ok(())
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

fn unwrap_on(
    core: &Core,
    s: &Session,
    keks: &Keks,
    aad: &[u8],
    w: &WrappedKey,
) -> Result<DataKey, OpError> {
    let Some(&h) = keks.handles.get(&w.key_version) else {
        return Err(OpError::Final(BackendError::KeyUnusable(format!(
            "KEK version {} is not on the token",
            w.key_version
        ))));
    };
    match open(s, h, aad, &w.blob, DEK_LEN) {
        Ok(plain) => DataKey::from_slice(&plain).ok_or(OpError::Final(BackendError::Integrity)),
        Err(OpenError::Malformed) => Err(OpError::Final(BackendError::Integrity)),
        Err(OpenError::Hsm(e)) => match rv(&e) {
            Some(
                RvError::GeneralError
                | RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::FunctionFailed,
            ) => {
                // Bad tag, or a fault? Ask the same session and key to open the probe.
                if core.probe_ok(s, w.key_version, h) {
                    Err(OpError::Final(BackendError::Integrity))
                } else {
                    Err(classify(&e))
                }
            }
            _ => Err(classify(&e)),
        },
    }
}

/// Re-read the KEK versions every `every_ms` while the backend lives (a weak reference: the
/// task ends with the backend). Needs a tokio runtime; without one (a CLI tool opening the
/// backend outside a runtime) there is nothing to keep fresh.
fn spawn_key_refresh(inner: &Arc<Inner>, every_ms: u64) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if every_ms == 0 {
        return;
    }
    let weak = Arc::downgrade(inner);
    let every = Duration::from_millis(every_ms);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let name = inner.core.name.clone();
            let before = inner.core.keks().handles.len();
            match tokio::task::spawn_blocking(move || {
                let out = inner.refresh(true);
                (out, inner.core.keks().handles.len())
            })
            .await
            {
                Ok((Ok(()), after)) if after != before => {
                    tracing::info!(backend = %name, versions = after, "pkcs11: KEK versions changed");
                }
                Ok((Ok(()), _)) => {}
                Ok((Err(e), _)) => {
                    tracing::warn!(backend = %name, error = %e, "pkcs11: KEK refresh failed");
                }
                Err(_) => return,
            }
        }
    });
}

impl Inner {
    async fn checkout(&self) -> Result<Object<SessionManager>, OpError> {
        let configured = Duration::from_millis(self.core.cfg.checkout_timeout_ms);
        // Never wait for a session past the request's own deadline.
        let timeouts = Timeouts {
            wait: Some(crate::deadline::clamp(configured)),
            create: Some(configured),
            recycle: Some(configured),
        };
        match self.pool.timeout_get(&timeouts).await {
            Ok(o) => Ok(o),
            Err(PoolError::Timeout(TimeoutType::Wait)) => Err(OpError::Final(
                BackendError::Unavailable("pool exhausted".into()),
            )),
            Err(PoolError::Timeout(t)) => Err(OpError::Fault {
                discard: true,
                why: format!("session {t:?} timed out"),
            }),
            Err(PoolError::Backend(e)) => Err(OpError::Fault {
                discard: true,
                why: e.to_string(),
            }),
            Err(PoolError::Closed) => Err(OpError::Final(BackendError::Unavailable(
                "session pool closed".into(),
            ))),
            Err(e) => Err(OpError::Final(BackendError::Internal(format!(
                "session pool: {e}"
            )))),
        }
    }

    /// Run `f` on a pooled session off the async workers; recover and retry once on a fault.
    async fn execute<T, F>(self: &Arc<Self>, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: Fn(&Core, &Session, &Keks) -> Result<T, OpError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let mut last = String::from("HSM operation failed");
        // Faults: one retry. A session of a replaced context is not a fault of this
        // operation (nothing ran): it waits for the recovery under way and tries again, a
        // bounded number of times.
        let (mut faults, mut stale, mut dead) = (0u32, 0u32, 0usize);
        // Each pooled session may turn out dead once.
        let max_dead = self.pool.status().max_size;
        while faults < 2 && stale < 3 && dead <= max_dead {
            let epoch = self.core.keks().epoch;
            let obj = match self.checkout().await {
                Ok(o) => o,
                Err(OpError::Final(e)) => return Err(e),
                Err(OpError::Stale | OpError::Dead) => {
                    stale += 1;
                    continue;
                }
                Err(OpError::Fault { why, .. }) => {
                    last = why;
                    faults += 1;
                    if faults < 2 {
                        self.recover(epoch).await?;
                    }
                    continue;
                }
            };
            let core = self.core.clone();
            let f2 = f.clone();
            let (obj, epoch, res) = tokio::task::spawn_blocking(move || {
                let (epoch, r) = core.call(&obj, |s, keks| f2(&core, s, keks));
                (obj, epoch, r)
            })
            .await
            .map_err(|_| BackendError::Internal("HSM task failed".into()))?;
            match res {
                Ok(v) => return Ok(v),
                Err(OpError::Final(e)) => return Err(e),
                Err(OpError::Stale) => {
                    drop(Object::take(obj));
                    last = "session of a replaced context".into();
                    stale += 1;
                    self.recover(epoch).await?;
                }
                Err(OpError::Dead) => {
                    // Nothing ran: discarded, the pool opens a new session in its place (as
                    // a recycle check did). Sessions the HSM dropped with its login fail
                    // next as not logged in, a fault that recovers.
                    drop(Object::take(obj));
                    self.core.stats.dead.fetch_add(1, Ordering::Relaxed);
                    last = "session closed behind the pool's back".into();
                    dead += 1;
                }
                Err(OpError::Fault { discard, why }) => {
                    if discard {
                        drop(Object::take(obj));
                    } else {
                        drop(obj);
                    }
                    last = why;
                    faults += 1;
                    if faults < 2 {
                        self.recover(epoch).await?;
                    }
                }
            }
        }
        Err(BackendError::Unavailable(last))
    }

    async fn recover(self: &Arc<Self>, seen_epoch: u64) -> Result<(), BackendError> {
        let inner = self.clone();
        tokio::task::spawn_blocking(move || inner.recover_blocking(seen_epoch))
            .await
            .map_err(|_| BackendError::Internal("HSM recovery task failed".into()))?
    }

    /// Drain the pool, drop the anchor, finalize and re-initialise the context.
    fn hard_reinit(&self) -> Result<(), String> {
        let removed = self.pool.retain(|_, _| false);
        let anchor = self
            .core
            .anchor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // A no-close-on-drop session: forgetting it closes nothing.
        drop(anchor);
        let res = self.core.global.reinitialize();
        // Now of an older generation: dropped without C_CloseSession.
        drop(removed);
        res
    }

    fn recover_blocking(&self, seen_epoch: u64) -> Result<(), BackendError> {
        let core = &self.core;
        let mut st = core.recovery.lock().unwrap_or_else(|e| e.into_inner());
        if core.keks().epoch != seen_epoch {
            return Ok(()); // another task already recovered
        }
        if let Some(t) = st.last_failure {
            if t.elapsed() < RECOVERY_HOLDOFF {
                return Err(BackendError::Unavailable(format!(
                    "HSM unavailable: {}",
                    st.last_error.as_deref().unwrap_or("recovery failed")
                )));
            }
        }
        // A fault right after a re-login means re-login is not enough: re-initialise.
        let soft_first =
            !matches!(st.last_soft, Some(t) if t.elapsed() <= Duration::from_millis(500));
        let mut delay = Duration::from_millis(20);
        let mut last = String::new();
        for round in 0..RECOVERY_ROUNDS {
            if round > 0 {
                std::thread::sleep(delay);
                delay *= 2;
            }
            if round == 0 && soft_first {
                match core.establish(false) {
                    Ok(()) => {
                        st.last_soft = Some(Instant::now());
                        st.last_failure = None;
                        core.stats.recoveries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(backend = %core.name, "pkcs11: recovered by re-login");
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::info!(backend = %core.name, error = %e, "pkcs11: re-login did not recover");
                    }
                }
            }
            if let Err(e) = self.hard_reinit() {
                last = e;
                continue;
            }
            match core.establish(true) {
                Ok(()) => {
                    st.last_failure = None;
                    st.last_soft = None;
                    core.stats.recoveries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(backend = %core.name, "pkcs11: recovered by re-initialising the context");
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            }
        }
        tracing::error!(backend = %core.name, error = %last, "pkcs11: recovery failed");
        st.last_failure = Some(Instant::now());
        st.last_error = Some(last.clone());
        Err(BackendError::Unavailable(format!(
            "HSM unavailable: {last}"
        )))
    }

    /// `background`: called by the periodic refresh task, so its find pass is counted apart.
    fn refresh(&self, background: bool) -> Result<(), BackendError> {
        let core = &self.core;
        let mut st = core.recovery.lock().unwrap_or_else(|e| e.into_inner());
        if st
            .last_refresh
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        st.last_refresh = Some(Instant::now());
        let before = core.stats.finds.load(Ordering::Relaxed);
        let out = core.establish(false);
        if background {
            let made = core
                .stats
                .finds
                .load(Ordering::Relaxed)
                .saturating_sub(before);
            core.stats
                .background_finds
                .fetch_add(made, Ordering::Relaxed);
        }
        out
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn cfg() -> Pkcs11Config {
        let mut c = Pkcs11Config::new("tok", "kek");
        c.pin_env = Some("X".into());
        c
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_fields() {
        let c: Pkcs11Config = toml_like(r#"{"token_label":"t","kek_label":"k","pin_env":"P"}"#);
        assert_eq!(c.pool_size, 4);
        assert_eq!(c.checkout_timeout_ms, 1000);
        assert_eq!(c.iv, IvMode::Host);
        assert_eq!(c.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        let c: Pkcs11Config =
            toml_like(r#"{"token_label":"t","kek_label":"k","pin_env":"P","iv":"hsm"}"#);
        assert_eq!(c.iv, IvMode::Hsm);
        assert!(serde_json::from_str::<Pkcs11Config>(
            r#"{"token_label":"t","kek_label":"k","pin":"1234"}"#
        )
        .is_err());
    }

    fn toml_like(s: &str) -> Pkcs11Config {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn pool_size_is_bounded() {
        let mut c = cfg();
        assert!(c.validate().is_ok());
        c.pool_size = 0;
        assert!(c.validate().is_err());
        c.pool_size = 1001;
        assert!(c.validate().is_err());
        c.pool_size = 1000;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn one_pin_source_is_required() {
        let mut c = cfg();
        c.pin_file = Some("/x".into());
        assert!(c.validate().is_err());
        c.pin_env = None;
        c.pin_file = None;
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_pin_file_others_may_read_is_refused_without_quoting_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "s3cret-pin\n").unwrap();
        let mut c = cfg();
        c.pin_env = None;
        c.pin_file = Some(path.clone());
        for mode in [0o644, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_pin(&c).unwrap_err();
            assert!(err.to_string().contains(&format!("mode {mode:o}")), "{err}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
            assert!(!format!("{err} {err:?}").contains("s3cret"));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(read_pin(&c).unwrap().expose_secret(), "s3cret-pin");
    }

    /// A PIN in a Kubernetes Secret volume (`pin -> ..data/pin`, 0440 with an `fsGroup`).
    #[test]
    fn a_mounted_secret_symlinked_pin_file_is_read() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let ts = dir.path().join("..2026_12_06_00_00_00.1");
        std::fs::create_dir(&ts).unwrap();
        std::fs::write(ts.join("pin"), "s3cret-pin\n").unwrap();
        std::fs::set_permissions(ts.join("pin"), std::fs::Permissions::from_mode(0o440)).unwrap();
        symlink("..2026_12_06_00_00_00.1", dir.path().join("..data")).unwrap();
        symlink("..data/pin", dir.path().join("pin")).unwrap();
        let mut c = cfg();
        c.pin_env = None;
        c.pin_file = Some(dir.path().join("pin"));
        use secrecy::ExposeSecret;
        assert_eq!(read_pin(&c).unwrap().expose_secret(), "s3cret-pin");
    }
}
