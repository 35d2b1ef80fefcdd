//! Envelope encryption of one shard version (FORMAT.md): a fresh 256-bit DEK per version
//! seals the shard with AES-256-GCM under a random 96-bit nonce; the DEK is wrapped by a
//! backend; both are bound to the shard identity by AAD. Format 2 also stores a commitment
//! to the DEK (FORMAT.md §3a), checked before the ciphertext is opened, because AES-GCM
//! alone is not key-committing: one ciphertext can be made to open under two keys.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use shardgate_backends::{
    BackendError, DataKey, KeyBackend, ShardIdentity, WrappedKey, FORMAT_VERSION,
};
use shardgate_store::ShardVersionRow;
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
    row: &ShardVersionRow,
) -> Result<(), BackendError> {
    match (id.format_version, row.key_commitment.as_deref()) {
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
pub fn identity_of(row: &ShardVersionRow) -> Result<ShardIdentity, BackendError> {
    let format_version = u8::try_from(row.format_version).map_err(|_| BackendError::Integrity)?;
    let version = u64::try_from(row.version).map_err(|_| BackendError::Integrity)?;
    Ok(ShardIdentity {
        format_version,
        account: row.account.clone(),
        shard: row.shard.clone(),
        version,
    })
}

/// The identity and wrapped key of a stored row, checked for a format this code reads (1 or
/// 2) and that format's shape (a format 2 row has a 32-byte commitment, a format 1 row
/// none), before any backend is asked to unwrap.
pub fn wrapped_of(row: &ShardVersionRow) -> Result<(ShardIdentity, WrappedKey), BackendError> {
    let id = identity_of(row)?;
    let shape_ok = match id.format_version {
        FORMAT_V1 => row.key_commitment.is_none(),
        FORMAT_V2 => row
            .key_commitment
            .as_ref()
            .is_some_and(|c| c.len() == COMMITMENT_LEN),
        _ => false,
    };
    if !shape_ok || row.nonce.len() != NONCE_LEN {
        return Err(BackendError::Integrity);
    }
    let key_version = u32::try_from(row.key_version).map_err(|_| BackendError::Integrity)?;
    let wrapped = WrappedKey {
        key_ref: row.key_ref.clone(),
        key_version,
        blob: row.wrapped_dek.clone(),
    };
    Ok((id, wrapped))
}

/// Open a row's ciphertext with its already unwrapped data key: for format 2, only once the
/// key matches the row's commitment (a wrong key is refused even if it opens the ciphertext).
pub fn open_with(dek: &DataKey, row: &ShardVersionRow) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    if row.nonce.len() != NONCE_LEN {
        // `Nonce::from_slice` would panic on any other length (found by fuzz/open_row).
        return Err(BackendError::Integrity);
    }
    let (id, _) = wrapped_of(row)?;
    check_commitment(dek, &id, row)?;
    let aad = id.aad();
    let plain = Aes256Gcm::new(dek.expose().into())
        .decrypt(
            Nonce::from_slice(&row.nonce),
            Payload {
                msg: &row.ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| BackendError::Integrity)?;
    Ok(Zeroizing::new(plain))
}

/// Open a stored row with `backend` (the backend recorded on the row).
pub async fn open(
    backend: &dyn KeyBackend,
    row: &ShardVersionRow,
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    let (id, wrapped) = wrapped_of(row)?;
    let dek = backend.unwrap(&id, &wrapped).await?;
    open_with(&dek, row)
}
