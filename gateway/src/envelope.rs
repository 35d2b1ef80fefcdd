//! Envelope encryption of one shard version (FORMAT.md): a fresh 256-bit DEK per version
//! seals the shard with AES-256-GCM under a random 96-bit nonce; the DEK is wrapped by a
//! backend; both are bound to the shard identity by AAD.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use shardgate_backends::{
    BackendError, DataKey, KeyBackend, ShardIdentity, WrappedKey, FORMAT_VERSION,
};
use shardgate_store::ShardVersionRow;
use zeroize::Zeroizing;

/// GCM nonce length.
pub const NONCE_LEN: usize = 12;

/// A sealed shard version, ready to store.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The wrapped DEK and its key reference.
    pub wrapped: WrappedKey,
    /// Nonce of the shard seal.
    pub nonce: [u8; NONCE_LEN],
    /// Shard ciphertext || tag.
    pub ciphertext: Vec<u8>,
}

/// Seal `plaintext` for `id` with a fresh data key from `backend`.
pub async fn seal(
    backend: &dyn KeyBackend,
    id: &ShardIdentity,
    plaintext: &[u8],
) -> Result<Sealed, BackendError> {
    let (dek, wrapped) = backend.generate_data_key(id).await?;
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

/// The identity and wrapped key of a stored row, checked for the format this code reads.
pub fn wrapped_of(row: &ShardVersionRow) -> Result<(ShardIdentity, WrappedKey), BackendError> {
    let id = identity_of(row)?;
    if id.format_version != FORMAT_VERSION || row.nonce.len() != NONCE_LEN {
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

/// Open a row's ciphertext with its already unwrapped data key.
pub fn open_with(dek: &DataKey, row: &ShardVersionRow) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    if row.nonce.len() != NONCE_LEN {
        // `Nonce::from_slice` would panic on any other length (found by fuzz/open_row).
        return Err(BackendError::Integrity);
    }
    let id = identity_of(row)?;
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
