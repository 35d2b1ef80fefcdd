//! The chain's cryptography: the audit key, the canonical encoding of an event, its
//! HMAC tag, and what a broken chain reports (FORMAT.md, "Audit events").

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;
use shardgate_store::AuditRecord;
use std::path::Path;
use zeroize::Zeroizing;

/// Magic that starts the canonical encoding of an event without a credential (every event
/// written before credentials were recorded is one).
pub const AUDIT_MAGIC: &[u8; 8] = b"SGAUDIT1";

/// Magic that starts the canonical encoding of an event that names its credential: the
/// same fields, then the credential.
pub const AUDIT_MAGIC_V2: &[u8; 8] = b"SGAUDIT2";

/// The HMAC key of the audit chains. Never in the database, never printed.
pub struct AuditKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey([REDACTED])")
    }
}

/// Audit key file errors.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    /// IO.
    #[error("audit key file {0}: {1}")]
    Io(String, std::io::Error),
    /// Refused for its type, mode or owner ([`crate::domain::files::refusal`]).
    #[error("audit key file {0} {1}")]
    Insecure(String, String),
    /// Not 32 bytes of base64.
    #[error("audit key file {0} must hold 32 bytes as base64")]
    Invalid(String),
}

impl AuditKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// Load the key file (base64, one line; it may be a symlink), refusing one others may
    /// read or a group may write ([`crate::domain::files::read_secret`]).
    pub fn load(path: &Path) -> Result<Self, AuditKeyError> {
        let shown = path.display().to_string();
        let text = crate::domain::files::read_secret_text(path).map_err(|e| match e {
            crate::domain::files::SecretFileError::Io(err) => AuditKeyError::Io(shown.clone(), err),
            refused => AuditKeyError::Insecure(shown.clone(), refused.to_string()),
        })?;
        let raw = Zeroizing::new(
            B64.decode(text.trim().as_bytes())
                .map_err(|_| AuditKeyError::Invalid(shown.clone()))?,
        );
        let arr: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| AuditKeyError::Invalid(shown.clone()))?;
        Ok(Self::from_bytes(arr))
    }

    /// Create a fresh key file (mode 0600, [`crate::domain::files::create_private`]) unless anything
    /// is at `path` (a symlink too, even a dangling one: never written through).
    pub fn create_if_missing(path: &Path) -> Result<bool, AuditKeyError> {
        if path.symlink_metadata().is_ok() {
            return Ok(false);
        }
        let key = shardgate_backends::DataKey::generate();
        let text = Zeroizing::new(format!("{}\n", B64.encode(key.expose())));
        match crate::domain::files::create_private(path, text.as_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(AuditKeyError::Io(path.display().to_string(), e)),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable_hmac())
    }
}

#[allow(clippy::panic)]
fn unreachable_hmac() -> Hmac<Sha256> {
    panic!("HMAC-SHA256 rejected a 32-byte key")
}

fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_opt(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_field(out, s.as_bytes());
        }
    }
}

/// The canonical encoding of an event, everything but its own tag (FORMAT.md).
pub fn canonical(r: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(if r.credential.is_some() {
        AUDIT_MAGIC_V2
    } else {
        AUDIT_MAGIC
    });
    put_field(&mut out, r.chain_id.as_bytes());
    out.extend_from_slice(&r.seq.to_be_bytes());
    out.extend_from_slice(&r.ts_ms.to_be_bytes());
    put_field(&mut out, r.request_id.as_bytes());
    put_field(&mut out, r.actor.as_bytes());
    put_field(&mut out, r.action.as_bytes());
    put_opt(&mut out, r.account.as_deref());
    put_opt(&mut out, r.shard.as_deref());
    match r.version {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
    put_opt(&mut out, r.backend.as_deref());
    put_field(&mut out, r.outcome.as_bytes());
    put_field(&mut out, r.detail.as_bytes());
    if let Some(c) = &r.credential {
        put_field(&mut out, c.as_bytes());
    }
    put_field(&mut out, &r.prev_tag);
    out
}

/// HMAC-SHA256 under the audit key (which is not in the database) over a domain label and
/// length-prefixed parts: a digest someone with only database access can neither forge nor
/// use to test guesses of the parts (e.g. the stored hash of an idempotent request).
pub fn keyed_digest(key: &AuditKey, domain: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = key.mac();
    for part in std::iter::once(domain).chain(parts.iter().copied()) {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// HMAC-SHA256 tag of an event.
pub fn tag(key: &AuditKey, r: &AuditRecord) -> Vec<u8> {
    let mut mac = key.mac();
    mac.update(&canonical(r));
    mac.finalize().into_bytes().to_vec()
}

/// Whether the event's tag is the HMAC of its canonical encoding (constant time).
pub fn tag_matches(key: &AuditKey, r: &AuditRecord) -> bool {
    let mut mac = key.mac();
    mac.update(&canonical(r));
    mac.verify_slice(&r.tag).is_ok()
}

/// The first broken place of a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at event {chain_id}:{seq}: {reason}")]
pub struct Broken {
    /// Chain.
    pub chain_id: String,
    /// Seq of the first bad event (or the expected seq of a missing one).
    pub seq: i64,
    /// What is wrong.
    pub reason: String,
}
