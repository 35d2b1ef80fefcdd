//! The `local` backend: a versioned AES-256 keyring file.
//!
//! One version is `active` (it wraps); `decrypt-only` versions still unwrap; `destroyed`
//! versions keep only their number. The file is JSON (see FORMAT.md), mode 0600, and the
//! same file is distributed to every replica. The backend re-reads it when it changes, so
//! `keys rotate` / `keys promote` reach a running gateway without a restart.

use crate::{BackendError, DataKey, Health, KekVersion, KeyBackend, ShardIdentity, WrappedKey};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};
use zeroize::Zeroizing;

const FILE_FORMAT: &str = "shardgate-local-keyring-v1";
const NONCE_LEN: usize = 12;

pub use crate::KeyState;

/// Keyring file errors. Never carry key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// Reading or writing the file failed.
    #[error("keyring file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The opened file's type, mode or owner ([`crate::files::refusal`]).
    #[error("keyring file {path} {reason}")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its content).
        reason: String,
    },
    /// The file does not parse or breaks an invariant.
    #[error("keyring file {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (no key material).
        reason: String,
    },
    /// A rotate/promote request that does not fit the keyring's state.
    #[error("{0}")]
    Lifecycle(String),
}

/// One KEK version in memory.
struct KeyVersion {
    version: u32,
    state: KeyState,
    created_ms: i64,
    key: Option<Zeroizing<[u8; 32]>>,
}

/// A loaded keyring. Key bytes live in zeroizing memory; `Debug` shows versions only.
pub struct Keyring {
    id: String,
    versions: Vec<KeyVersion>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let versions: Vec<(u32, KeyState)> =
            self.versions.iter().map(|v| (v.version, v.state)).collect();
        f.debug_struct("Keyring")
            .field("id", &self.id)
            .field("versions", &versions)
            .finish()
    }
}

#[derive(Deserialize)]
struct FileRepr {
    format: String,
    id: String,
    versions: Vec<FileVersion>,
}

#[derive(Deserialize)]
struct FileVersion {
    version: u32,
    state: KeyState,
    #[serde(default)]
    created_ms: i64,
    #[serde(default)]
    key: Option<SecretString>,
}

#[derive(Serialize)]
struct FileReprOut<'a> {
    format: &'a str,
    id: &'a str,
    versions: Vec<FileVersionOut<'a>>,
}

#[derive(Serialize)]
struct FileVersionOut<'a> {
    version: u32,
    state: KeyState,
    created_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn random_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    key
}

impl Keyring {
    /// A new keyring with one active version.
    pub fn generate() -> Self {
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Self {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            versions: vec![KeyVersion {
                version: 1,
                state: KeyState::Active,
                created_ms: now_ms(),
                key: Some(random_key()),
            }],
        }
    }

    /// The keyring's random id; it is the `key_ref` of every wrap it makes.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// (version, state) of every version, ascending.
    pub fn versions(&self) -> Vec<(u32, KeyState)> {
        self.versions.iter().map(|v| (v.version, v.state)).collect()
    }

    /// The active (wrapping) version.
    pub fn active_version(&self) -> Option<u32> {
        self.versions
            .iter()
            .find(|v| v.state == KeyState::Active)
            .map(|v| v.version)
    }

    /// Read and check a keyring file (it may be a symlink, e.g. in a Kubernetes Secret
    /// volume): the opened file is refused when [`crate::files::refusal`] says so.
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let text = crate::files::read_secret_text(path).map_err(|e| match e {
            crate::files::SecretFileError::Io(source) => KeyringError::Io {
                path: path.to_path_buf(),
                source,
            },
            refused @ crate::files::SecretFileError::Refused(_) => {
                KeyringError::InsecurePermissions {
                    path: path.to_path_buf(),
                    reason: refused.to_string(),
                }
            }
        })?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, KeyringError> {
        let invalid = |reason: String| KeyringError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        // serde_json's error text may quote input near the failure; keep only its position.
        let repr: FileRepr = serde_json::from_str(text).map_err(|e| {
            invalid(format!(
                "not a keyring JSON document (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if repr.format != FILE_FORMAT {
            return Err(invalid(format!("format must be {FILE_FORMAT:?}")));
        }
        if repr.id.is_empty() {
            return Err(invalid("empty keyring id".into()));
        }
        let mut versions = Vec::with_capacity(repr.versions.len());
        for v in repr.versions {
            let key = match (&v.state, &v.key) {
                (KeyState::Destroyed, _) => None,
                (_, None) => {
                    return Err(invalid(format!("version {} has no key", v.version)));
                }
                (_, Some(b64)) => {
                    let bytes =
                        Zeroizing::new(B64.decode(b64.expose_secret().as_bytes()).map_err(
                            |_| invalid(format!("version {} key is not base64", v.version)),
                        )?);
                    let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                        invalid(format!("version {} key is not 32 bytes", v.version))
                    })?;
                    Some(Zeroizing::new(arr))
                }
            };
            versions.push(KeyVersion {
                version: v.version,
                state: v.state,
                created_ms: v.created_ms,
                key,
            });
        }
        versions.sort_by_key(|v| v.version);
        if versions.windows(2).any(|w| w[0].version == w[1].version)
            || versions.iter().any(|v| v.version == 0)
        {
            return Err(invalid("versions must be unique and start at 1".into()));
        }
        let active = versions
            .iter()
            .filter(|v| v.state == KeyState::Active)
            .count();
        // No active version is allowed: the gateway's key lifecycle (its database) decides
        // which version wraps, and it may have retired every version of this backend.
        if active > 1 {
            return Err(invalid(format!(
                "at most one version may be active, found {active}"
            )));
        }
        Ok(Self {
            id: repr.id,
            versions,
        })
    }

    /// Write atomically: a fresh 0600 file under a random name in the same directory, then
    /// renamed over `path` ([`crate::files::write_private`]).
    pub fn save(&self, path: &Path) -> Result<(), KeyringError> {
        let json = self.encode(path)?;
        crate::files::write_private(path, json.as_bytes()).map_err(|source| KeyringError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Like [`Keyring::save`], but fails (`AlreadyExists`) when anything is at `path`.
    fn create(&self, path: &Path) -> Result<(), KeyringError> {
        let json = self.encode(path)?;
        crate::files::create_private(path, json.as_bytes()).map_err(|source| KeyringError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    fn encode(&self, path: &Path) -> Result<Zeroizing<String>, KeyringError> {
        let encoded: Vec<Option<Zeroizing<String>>> = self
            .versions
            .iter()
            .map(|v| {
                v.key
                    .as_ref()
                    .map(|k| Zeroizing::new(B64.encode(k.as_ref())))
            })
            .collect();
        let out = FileReprOut {
            format: FILE_FORMAT,
            id: &self.id,
            versions: self
                .versions
                .iter()
                .zip(encoded.iter())
                .map(|(v, k)| FileVersionOut {
                    version: v.version,
                    state: v.state,
                    created_ms: v.created_ms,
                    key: k.as_ref().map(|s| s.as_str()),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&out)
            .map(Zeroizing::new)
            .map_err(|e| KeyringError::Invalid {
                path: path.to_path_buf(),
                reason: format!("cannot encode: {}", e.classify() as u8),
            })
    }

    /// Add a new `decrypt-only` version (it unwraps everywhere but wraps nowhere until
    /// promoted). Returns its number.
    pub fn rotate(&mut self) -> u32 {
        let next = self.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        self.versions.push(KeyVersion {
            version: next,
            state: KeyState::DecryptOnly,
            created_ms: now_ms(),
            key: Some(random_key()),
        });
        next
    }

    /// Make `version` the wrapping version; the previous active one becomes decrypt-only.
    pub fn promote(&mut self, version: u32) -> Result<(), KeyringError> {
        let target = self
            .versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| KeyringError::Lifecycle(format!("no key version {version}")))?;
        match target.state {
            KeyState::Active => return Ok(()),
            KeyState::Destroyed => {
                return Err(KeyringError::Lifecycle(format!(
                    "key version {version} is destroyed"
                )))
            }
            KeyState::DecryptOnly => {}
        }
        for v in &mut self.versions {
            if v.state == KeyState::Active {
                v.state = KeyState::DecryptOnly;
            }
            if v.version == version {
                v.state = KeyState::Active;
            }
        }
        Ok(())
    }

    /// Mark `version` decrypt-only (it was active): the file then names no wrapping version
    /// of its own, which the gateway's key lifecycle allows (it decides which version wraps).
    pub fn demote(&mut self, version: u32) -> Result<(), KeyringError> {
        let v = self
            .versions
            .iter_mut()
            .find(|v| v.version == version)
            .ok_or_else(|| KeyringError::Lifecycle(format!("no key version {version}")))?;
        if v.state == KeyState::Destroyed {
            return Err(KeyringError::Lifecycle(format!(
                "key version {version} is destroyed"
            )));
        }
        v.state = KeyState::DecryptOnly;
        Ok(())
    }

    /// Mark `version` destroyed and erase its key bytes (zeroized in memory; gone from the
    /// file once saved). The gateway's key lifecycle decides whether it may be (never while
    /// shard versions reference it).
    pub fn destroy(&mut self, version: u32) -> Result<(), KeyringError> {
        let v = self
            .versions
            .iter_mut()
            .find(|v| v.version == version)
            .ok_or_else(|| KeyringError::Lifecycle(format!("no key version {version}")))?;
        v.state = KeyState::Destroyed;
        v.key = None;
        Ok(())
    }

    fn key(&self, version: u32) -> Option<&Zeroizing<[u8; 32]>> {
        self.versions
            .iter()
            .find(|v| v.version == version && v.state != KeyState::Destroyed)
            .and_then(|v| v.key.as_ref())
    }
}

/// Create a keyring file with one active version unless it exists. Returns whether it
/// created one.
pub fn create_if_missing(path: &Path) -> Result<bool, KeyringError> {
    // Anything at the name, a dangling symlink too, is the operator's: it is loaded (and
    // refused if unfit), never replaced or written through.
    if path.symlink_metadata().is_ok() {
        return Ok(false);
    }
    match Keyring::generate().create(path) {
        Err(KeyringError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            Ok(false)
        }
        other => other.map(|()| true),
    }
}

/// The file's bytes, compared to notice any change (a promote keeps the size, and mtimes
/// can be coarse or preserved by copies, so neither is a reliable change signal).
fn content(path: &Path) -> Option<Zeroizing<Vec<u8>>> {
    crate::files::read_secret(path).ok()
}

struct Loaded {
    keyring: Keyring,
    content: Option<Zeroizing<Vec<u8>>>,
    checked: Instant,
    last_reload_error: Option<String>,
}

/// The `local` backend instance.
pub struct LocalBackend {
    name: String,
    path: PathBuf,
    reload_every: Duration,
    state: RwLock<Loaded>,
    /// When a read of an unknown key version last forced a re-read of the file: such reads
    /// force one at most every [`LocalBackend::with_forced_reload_interval`] (default 1 s),
    /// so rows edited to name unknown versions cannot turn every read into file I/O.
    last_forced: std::sync::Mutex<Option<Instant>>,
    forced_interval: Duration,
    forced_reloads: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

impl LocalBackend {
    /// Load the keyring at `path`. The file is re-checked for changes at most every
    /// `reload_every` (a changed file that fails to load keeps the previous keyring and is
    /// reported by `health`).
    pub fn open(name: &str, path: &Path, reload_every: Duration) -> Result<Self, KeyringError> {
        let keyring = Keyring::load(path)?;
        Ok(Self {
            name: name.to_string(),
            path: path.to_path_buf(),
            reload_every,
            state: RwLock::new(Loaded {
                keyring,
                content: content(path),
                checked: Instant::now(),
                last_reload_error: None,
            }),
            last_forced: std::sync::Mutex::new(None),
            forced_interval: Duration::from_secs(1),
            forced_reloads: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The least time between two re-reads of the file forced by a wrap or read naming a
    /// key version this process has not loaded.
    #[must_use]
    pub fn with_forced_reload_interval(mut self, every: Duration) -> Self {
        self.forced_interval = every;
        self
    }

    /// Re-read the file for a key version that is not loaded (another replica may just have
    /// rotated it in), at most once per `forced_interval`. Whether it re-read.
    fn reload_for_unknown_version(&self) -> bool {
        {
            let mut last = self
                .last_forced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < self.forced_interval) {
                return false;
            }
            *last = Some(Instant::now());
        }
        self.forced_reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.reload();
        true
    }

    fn maybe_reload(&self, force: bool) {
        {
            let st = self.state.read().unwrap_or_else(|e| e.into_inner());
            if !force && st.checked.elapsed() < self.reload_every {
                return;
            }
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        if !force && st.checked.elapsed() < self.reload_every {
            return;
        }
        st.checked = Instant::now();
        let now = content(&self.path);
        if now == st.content && !force {
            return;
        }
        match Keyring::load(&self.path) {
            Ok(k) => {
                if k.id != st.keyring.id {
                    st.last_reload_error =
                        Some("keyring file was replaced by a different keyring; ignored".into());
                    tracing::error!(backend = %self.name, "keyring file now holds a different keyring id; keeping the loaded one");
                } else {
                    tracing::info!(backend = %self.name, active = ?k.active_version(), "keyring reloaded");
                    st.keyring = k;
                    st.last_reload_error = None;
                }
            }
            Err(e) => {
                tracing::error!(backend = %self.name, error = %e, "keyring reload failed; keeping the loaded keyring");
                st.last_reload_error = Some(e.to_string());
            }
        }
        st.content = now;
    }

    /// Re-read the file now.
    pub fn reload(&self) {
        self.maybe_reload(true);
    }

    fn with_keyring<T>(&self, f: impl FnOnce(&Keyring) -> T) -> T {
        self.maybe_reload(false);
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        f(&st.keyring)
    }
}

fn seal_dek(kek: &[u8; 32], id: &ShardIdentity, dek: &DataKey) -> Result<Vec<u8>, BackendError> {
    let cipher = Aes256Gcm::new(kek.into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aad = id.aad();
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: dek.expose(),
                aad: &aad,
            },
        )
        .map_err(|_| BackendError::Internal("AES-GCM encryption failed".into()))?;
    let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ct);
    Ok(blob)
}

fn open_dek(kek: &[u8; 32], id: &ShardIdentity, blob: &[u8]) -> Result<DataKey, BackendError> {
    if blob.len() != NONCE_LEN + 32 + 16 {
        return Err(BackendError::Integrity);
    }
    let (nonce, ct) = blob.split_at(NONCE_LEN);
    let aad = id.aad();
    let plain = Zeroizing::new(
        Aes256Gcm::new(kek.into())
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| BackendError::Integrity)?,
    );
    DataKey::from_slice(&plain).ok_or(BackendError::Integrity)
}

#[async_trait]
impl KeyBackend for LocalBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn stats(&self) -> Vec<crate::Stat> {
        vec![crate::Stat::new(
            "keyring_forced_reloads_total",
            self.forced_reloads
                .load(std::sync::atomic::Ordering::Relaxed),
        )]
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn holds_key_ref(&self, key_ref: &str) -> bool {
        self.with_keyring(|k| k.id == key_ref)
    }

    async fn wrap(&self, id: &ShardIdentity, dek: &DataKey) -> Result<WrappedKey, BackendError> {
        self.with_keyring(|k| {
            let version = k
                .active_version()
                .ok_or_else(|| BackendError::KeyUnusable("no active key version".into()))?;
            let kek = k
                .key(version)
                .ok_or_else(|| BackendError::KeyUnusable("active key version has no key".into()))?;
            Ok(WrappedKey {
                key_ref: k.id.clone(),
                key_version: version,
                blob: seal_dek(kek, id, dek)?,
            })
        })
    }

    fn kek_versions(&self) -> Vec<KekVersion> {
        self.with_keyring(|k| {
            k.versions
                .iter()
                .map(|v| KekVersion {
                    key_ref: k.id.clone(),
                    version: v.version,
                    state: v.state,
                })
                .collect()
        })
    }

    async fn wrap_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        dek: &DataKey,
    ) -> Result<WrappedKey, BackendError> {
        let attempt = || {
            self.with_keyring(|k| match k.key(version) {
                Some(kek) => Ok(WrappedKey {
                    key_ref: k.id.clone(),
                    key_version: version,
                    blob: seal_dek(kek, id, dek)?,
                }),
                None => Err(BackendError::KeyUnusable(format!(
                    "key version {version} is not in this replica's keyring (copy the keyring file here)"
                ))),
            })
        };
        match attempt() {
            // Promoted after the file reached this replica, before this process re-read it.
            Err(BackendError::KeyUnusable(_)) if self.reload_for_unknown_version() => attempt(),
            other => other,
        }
    }

    async fn unwrap(
        &self,
        id: &ShardIdentity,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, BackendError> {
        // Another keyring's wrap: no re-read can help (a reload keeps the keyring id).
        let other_keyring = self.with_keyring(|k| wrapped.key_ref != k.id);
        if other_keyring {
            return Err(BackendError::KeyUnusable(
                "data key was wrapped by another keyring".into(),
            ));
        }
        let attempt = || {
            self.with_keyring(|k| match k.key(wrapped.key_version) {
                Some(kek) => open_dek(kek, id, &wrapped.blob),
                None => Err(BackendError::KeyUnusable(format!(
                    "key version {} is unknown or destroyed",
                    wrapped.key_version
                ))),
            })
        };
        match attempt() {
            // A version another replica just rotated in may not be loaded yet: look again.
            Err(BackendError::KeyUnusable(_)) if self.reload_for_unknown_version() => attempt(),
            other => other,
        }
    }

    async fn health(&self) -> Health {
        self.maybe_reload(false);
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        match (&st.last_reload_error, st.keyring.active_version()) {
            (None, Some(v)) => Health {
                usable: true,
                detail: format!("keyring loaded, active version {v}"),
            },
            (Some(err), Some(v)) => Health {
                usable: true,
                detail: format!("active version {v}; last reload failed: {err}"),
            },
            // Which version wraps is the gateway's key lifecycle's decision; a file that marks
            // none active (every version retired, or demoted by `keys state`) still unwraps.
            (_, None) if st.keyring.versions.iter().any(|v| v.key.is_some()) => Health {
                usable: true,
                detail: "keyring loaded, no version marked active in the file".into(),
            },
            (_, None) => Health {
                usable: false,
                detail: "no key version".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
