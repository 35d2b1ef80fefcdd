//! Envelope encryption of one shard version (FORMAT.md): a fresh 256-bit DEK per version
//! seals the shard with AES-256-GCM under a random 96-bit nonce; the DEK is wrapped by a
//! backend; both are bound to the shard identity by AAD. Format 2 also stores a commitment
//! to the DEK (FORMAT.md §3a), checked before the ciphertext is opened, because AES-GCM
//! alone is not key-committing: one ciphertext can be made to open under two keys.
//!
//! What it opens is an [`Envelope`], the stored fields FORMAT.md names, borrowed from wherever
//! they were read: the envelope knows no database row (the service layer turns a store row into
//! one; any `Into<Envelope>` is accepted).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use shardgate_backends::{
    BackendError, DataKey, KeyBackend, ShardIdentity, Version, WrappedKey, FORMAT_VERSION,
};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// GCM nonce length.
pub const NONCE_LEN: usize = 12;

/// Length of a key commitment (HMAC-SHA256).
pub const COMMITMENT_LEN: usize = 32;

/// Format 1: seal and wrap bound to the identity, no key commitment (read only).
pub const FORMAT_V1: u8 = 1;

/// Format 2: format 1 plus a key commitment (FORMAT.md §3a); what this code writes.
pub const FORMAT_V2: u8 = 2;

/// A stored shard version as the envelope reads it (FORMAT.md §1), borrowed.
#[derive(Clone, Copy)]
pub struct Envelope<'a> {
    /// Account id (exact bytes).
    pub account: &'a str,
    /// Shard id (exact bytes).
    pub shard: &'a str,
    /// Shard version.
    pub version: Version,
    /// Envelope format version (1 or 2).
    pub format_version: i16,
    /// The backend's key reference recorded with the wrap.
    pub key_ref: &'a str,
    /// The backend's key version recorded with the wrap.
    pub key_version: i64,
    /// The wrapped data key.
    pub wrapped_dek: &'a [u8],
    /// The nonce of the shard seal.
    pub nonce: &'a [u8],
    /// Shard ciphertext || tag.
    pub ciphertext: &'a [u8],
    /// Format 2: the commitment to the data key; format 1: none.
    pub key_commitment: Option<&'a [u8]>,
}

impl std::fmt::Debug for Envelope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("account", &self.account)
            .field("shard", &self.shard)
            .field("version", &self.version)
            .field("format_version", &self.format_version)
            .field("key_ref", &self.key_ref)
            .field("key_version", &self.key_version)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Label of the commit-key derivation (FORMAT.md §3a): distinct from every other use of
/// the DEK.
const COMMIT_KEY_LABEL: &[u8] = b"shardgate commit key";

const _: () = assert!(
    FORMAT_VERSION == FORMAT_V2,
    "new writes must carry a commitment"
);

fn hmac_sha256(key: &[u8], message: &[u8]) -> Result<Zeroizing<[u8; 32]>, BackendError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .map_err(|_| BackendError::Internal("HMAC-SHA256 refused its key".into()))?;
    mac.update(message);
    Ok(Zeroizing::new(mac.finalize().into_bytes().into()))
}

/// The key commitment of `dek` for `id` (FORMAT.md §3a):
/// `HMAC-SHA256(HMAC-SHA256(DEK, "shardgate commit key"), identity)`.
///
/// HMAC-SHA256 under a fixed-length 32-byte key is collision resistant in its key, so no
/// other data key has the same commitment; the commit key is a separate derivation, so the
/// commitment says nothing usable about the DEK.
pub fn commitment(dek: &DataKey, id: &ShardIdentity) -> Result<[u8; COMMITMENT_LEN], BackendError> {
    let commit_key = hmac_sha256(dek.expose(), COMMIT_KEY_LABEL)?;
    Ok(*hmac_sha256(commit_key.as_slice(), &id.aad())?)
}

/// Whether `dek` is the data key the row committed to (constant time). Format 1 rows carry
/// no commitment; any other shape is an integrity failure.
fn check_commitment(
    dek: &DataKey,
    id: &ShardIdentity,
    env: &Envelope<'_>,
) -> Result<(), BackendError> {
    match (id.format_version, env.key_commitment) {
        (FORMAT_V1, None) => Ok(()),
        (FORMAT_V2, Some(stored)) if stored.len() == COMMITMENT_LEN => {
            if bool::from(commitment(dek, id)?.ct_eq(stored)) {
                Ok(())
            } else {
                Err(BackendError::Integrity)
            }
        }
        _ => Err(BackendError::Integrity),
    }
}

/// A sealed shard version, ready to store.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The wrapped DEK and its key reference.
    pub wrapped: WrappedKey,
    /// Nonce of the shard seal.
    pub nonce: [u8; NONCE_LEN],
    /// Shard ciphertext || tag.
    pub ciphertext: Vec<u8>,
    /// The key commitment (FORMAT.md §3a).
    pub commitment: [u8; COMMITMENT_LEN],
}

/// Seal `plaintext` for `id` (which must be of the current [`FORMAT_VERSION`]) with a fresh
/// data key from `backend`.
pub async fn seal(
    backend: &dyn KeyBackend,
    id: &ShardIdentity,
    plaintext: &[u8],
) -> Result<Sealed, BackendError> {
    if id.format_version != FORMAT_VERSION {
        return Err(BackendError::Internal(format!(
            "only format {FORMAT_VERSION} is written"
        )));
    }
    let (dek, wrapped) = backend.generate_data_key(id).await?;
    let commitment = commitment(&dek, id)?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aad = id.aad();
    let ciphertext = Aes256Gcm::new(dek.expose().into())
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| BackendError::Internal("AES-GCM seal failed".into()))?;
    Ok(Sealed {
        wrapped,
        nonce,
        ciphertext,
        commitment,
    })
}

/// The identity a stored row claims. Rows are only ever opened under this identity, so a
/// row copied elsewhere fails its AAD check.
pub fn identity_of<'a>(env: impl Into<Envelope<'a>>) -> Result<ShardIdentity, BackendError> {
    let env = env.into();
    let format_version = u8::try_from(env.format_version).map_err(|_| BackendError::Integrity)?;
    Ok(ShardIdentity {
        format_version,
        account: env.account.to_string(),
        shard: env.shard.to_string(),
        version: env.version,
    })
}

/// The identity and wrapped key of a stored row, checked for a format this code reads (1 or
/// 2) and that format's shape (a format 2 row has a 32-byte commitment, a format 1 row
/// none), before any backend is asked to unwrap.
pub fn wrapped_of<'a>(
    env: impl Into<Envelope<'a>>,
) -> Result<(ShardIdentity, WrappedKey), BackendError> {
    let env = env.into();
    let id = identity_of(env)?;
    let shape_ok = match id.format_version {
        FORMAT_V1 => env.key_commitment.is_none(),
        FORMAT_V2 => env
            .key_commitment
            .is_some_and(|c| c.len() == COMMITMENT_LEN),
        _ => false,
    };
    if !shape_ok || env.nonce.len() != NONCE_LEN {
        return Err(BackendError::Integrity);
    }
    let key_version = u32::try_from(env.key_version).map_err(|_| BackendError::Integrity)?;
    let wrapped = WrappedKey {
        key_ref: env.key_ref.to_string(),
        key_version,
        blob: env.wrapped_dek.to_vec(),
    };
    Ok((id, wrapped))
}

/// Open a row's ciphertext with its already unwrapped data key: for format 2, only once the
/// key matches the row's commitment (a wrong key is refused even if it opens the ciphertext).
pub fn open_with<'a>(
    dek: &DataKey,
    env: impl Into<Envelope<'a>>,
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    let env = env.into();
    if env.nonce.len() != NONCE_LEN {
        // `Nonce::from_slice` would panic on any other length (found by fuzz/open_row).
        return Err(BackendError::Integrity);
    }
    let (id, _) = wrapped_of(env)?;
    check_commitment(dek, &id, &env)?;
    let aad = id.aad();
    let plain = Aes256Gcm::new(dek.expose().into())
        .decrypt(
            Nonce::from_slice(env.nonce),
            Payload {
                msg: env.ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| BackendError::Integrity)?;
    Ok(Zeroizing::new(plain))
}

/// Open a stored row with `backend` (the backend recorded on the row).
pub async fn open<'a>(
    backend: &dyn KeyBackend,
    env: impl Into<Envelope<'a>>,
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    let env = env.into();
    let (id, wrapped) = wrapped_of(env)?;
    let dek = backend.unwrap(&id, &wrapped).await?;
    open_with(&dek, env)
}
