//! `iv = "hsm"`: SoftHSM2 only takes caller IVs, so this runs the backend's session layer
//! against a double that behaves as AWS CloudHSM documents for CKM_AES_GCM: the HSM ignores
//! the IV in the request, generates its own and writes it back into CK_GCM_PARAMS.pIv.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use rand::RngCore;
use shardgate_backends::pkcs11::session::{open, seal, GcmSession, OpenError, SealError, IV_LEN};
use shardgate_backends::pkcs11::IvMode;
use shardgate_backends::{ShardIdentity, Version};
use std::cell::RefCell;
use zeroize::Zeroizing;

#[derive(Clone, Copy, PartialEq)]
enum Style {
    /// CloudHSM: the generated IV is written to pIv; output is ciphertext || tag.
    CloudHsm,
    /// An HSM that prepends its IV to the output: iv || ciphertext || tag.
    Prepended,
    /// SoftHSM2-like: uses the caller's IV as given.
    Caller,
}

struct Double {
    key: [u8; 32],
    style: Style,
    ivs: RefCell<Vec<[u8; IV_LEN]>>,
}

impl GcmSession for Double {
    type Key = ();
    fn gcm_encrypt(
        &self,
        _: (),
        iv: &mut [u8; IV_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, CkError> {
        let used = if self.style == Style::Caller {
            *iv
        } else {
            let mut g = [0u8; IV_LEN];
            rand::rngs::OsRng.fill_bytes(&mut g);
            g
        };
        self.ivs.borrow_mut().push(used);
        let ct = Aes256Gcm::new((&self.key).into())
            .encrypt(Nonce::from_slice(&used), Payload { msg: plain, aad })
            .map_err(|_| CkError::Pkcs11(RvError::GeneralError, Function::Encrypt))?;
        Ok(match self.style {
            Style::CloudHsm => {
                *iv = used;
                ct
            }
            Style::Prepended => [used.as_slice(), &ct].concat(),
            Style::Caller => ct,
        })
    }
    fn gcm_decrypt(
        &self,
        _: (),
        iv: &[u8; IV_LEN],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CkError> {
        Aes256Gcm::new((&self.key).into())
            .decrypt(Nonce::from_slice(iv), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| CkError::Pkcs11(RvError::GeneralError, Function::Decrypt))
    }
}

fn double(style: Style) -> Double {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    Double {
        key,
        style,
        ivs: RefCell::new(Vec::new()),
    }
}

#[test]
fn hsm_generated_iv_round_trips_in_the_same_blob_format() {
    let id = ShardIdentity::new("acct", "s", Version::FIRST);
    let aad = id.aad();
    let dek = [9u8; 32];
    for style in [Style::CloudHsm, Style::Prepended] {
        let d = double(style);
        let blob = seal(&d, (), IvMode::Hsm, &aad, &dek).unwrap();
        // iv (12) || ciphertext (32) || tag (16), the IV being the one the HSM generated.
        assert_eq!(blob.len(), 60);
        assert_eq!(blob[..IV_LEN], d.ivs.borrow()[0]);
        assert_eq!(open(&d, (), &aad, &blob, 32).unwrap().as_slice(), &dek);
        // The stored format is plain AES-256-GCM: any implementation opens it.
        let plain = Aes256Gcm::new((&d.key).into())
            .decrypt(
                Nonce::from_slice(&blob[..12]),
                Payload {
                    msg: &blob[12..],
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(plain, dek);
        // Bound to the identity.
        let other = ShardIdentity::new("acct", "s", Version::new(2).unwrap()).aad();
        assert!(matches!(
            open(&d, (), &other, &blob, 32),
            Err(OpenError::Hsm(_))
        ));
        // Two wraps never share an IV.
        let blob2 = seal(&d, (), IvMode::Hsm, &aad, &dek).unwrap();
        assert_ne!(blob[..12], blob2[..12]);
    }
    // Host mode on the same session layer: same layout.
    let d = double(Style::Caller);
    let blob = seal(&d, (), IvMode::Host, &aad, &dek).unwrap();
    assert_eq!(blob.len(), 60);
    assert_eq!(blob[..IV_LEN], d.ivs.borrow()[0]);
    assert_eq!(open(&d, (), &aad, &blob, 32).unwrap().as_slice(), &dek);
}

#[test]
fn hsm_mode_refuses_an_hsm_that_leaves_the_iv_alone() {
    let d = double(Style::Caller);
    let err = seal(&d, (), IvMode::Hsm, b"aad", &[1u8; 32]).unwrap_err();
    assert!(matches!(err, SealError::NoHsmIv), "{err:?}");
}
