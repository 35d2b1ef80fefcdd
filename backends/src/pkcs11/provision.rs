//! KEK provisioning (`shardgate hsm init-key`, `shardgate keys rotate`) and the KEK checks
//! made at start-up.
//!
//! # KEK labelling
//! Version `N` of the KEK `kek_label` is an AES-256 secret-key token object with
//! `CKA_LABEL = "{kek_label}/v{N}"` (e.g. `shardgate-kek/v1`) and `CKA_ID` = `N` as 4 bytes
//! big-endian. Versions start at 1. The newest version wraps; every version unwraps.

use super::context::{ck_name, find_slot, global, login, login_error};
use super::{read_pin, Pkcs11Config};
use crate::BackendError;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::collections::BTreeMap;

/// The label of version `version` of `kek_label`.
pub fn version_label(kek_label: &str, version: u32) -> String {
    format!("{kek_label}/v{version}")
}

fn parse_version(kek_label: &str, label: &[u8]) -> Option<u32> {
    let label = std::str::from_utf8(label).ok()?;
    let rest = label.strip_prefix(kek_label)?.strip_prefix("/v")?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || rest.starts_with('0') {
        return None;
    }
    rest.parse().ok()
}

/// Every version of `kek_label` on the token behind `session` (one `C_FindObjects*` pass,
/// always finished with `C_FindObjectsFinal` by cryptoki).
pub(crate) fn find_versions(
    session: &Session,
    kek_label: &str,
) -> Result<BTreeMap<u32, ObjectHandle>, CkError> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
    ];
    let mut out = BTreeMap::new();
    for h in session.find_objects(&template)? {
        let attrs = session.get_attributes(h, &[AttributeType::Label])?;
        for a in attrs {
            if let Attribute::Label(l) = a {
                if let Some(v) = parse_version(kek_label, &l) {
                    out.insert(v, h);
                }
            }
        }
    }
    Ok(out)
}

/// Check one KEK version's attributes: AES, 256-bit, sensitive, not extractable, allowed to
/// encrypt and decrypt. The error names the attribute.
pub(crate) fn check_kek(
    session: &Session,
    label: &str,
    h: ObjectHandle,
) -> Result<(), BackendError> {
    let attrs = session
        .get_attributes(
            h,
            &[
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
            ],
        )
        .map_err(|e| {
            BackendError::Unavailable(format!(
                "cannot read the attributes of KEK {label}: {}",
                ck_name(&e)
            ))
        })?;
    let (mut key_type, mut len, mut sensitive, mut extractable, mut enc, mut dec) =
        (None, None, None, None, None, None);
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::ValueLen(l) => len = Some(u64::from(l)),
            Attribute::Sensitive(b) => sensitive = Some(b),
            Attribute::Extractable(b) => extractable = Some(b),
            Attribute::Encrypt(b) => enc = Some(b),
            Attribute::Decrypt(b) => dec = Some(b),
            _ => {}
        }
    }
    let refuse = |why: String| {
        Err(BackendError::KeyUnusable(format!(
            "KEK {label} refused: {why}"
        )))
    };
    if key_type != Some(KeyType::AES) {
        return refuse("CKA_KEY_TYPE is not CKK_AES".into());
    }
    if len != Some(32) {
        return refuse(format!(
            "CKA_VALUE_LEN is {}, want 32 (AES-256)",
            len.map_or("missing".to_string(), |l| l.to_string())
        ));
    }
    match extractable {
        Some(false) => {}
        Some(true) => return refuse("CKA_EXTRACTABLE is true (the key can leave the HSM)".into()),
        None => return refuse("CKA_EXTRACTABLE is missing".into()),
    }
    match sensitive {
        Some(true) => {}
        Some(false) => return refuse("CKA_SENSITIVE is false".into()),
        None => return refuse("CKA_SENSITIVE is missing".into()),
    }
    if enc != Some(true) {
        return refuse("CKA_ENCRYPT is not true".into());
    }
    if dec != Some(true) {
        return refuse("CKA_DECRYPT is not true".into());
    }
    Ok(())
}

/// Run `f` on a fresh logged-in RW session of the configured token (provisioning only).
fn with_admin_session<T>(
    cfg: &Pkcs11Config,
    f: impl FnOnce(&Session) -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    cfg.validate()?;
    let pin = read_pin(cfg)?;
    let g = global(&cfg.module)?;
    // Hold the context gate: no re-initialisation while this session lives.
    let _gen = g.gate.read().unwrap_or_else(|e| e.into_inner());
    let slot = find_slot(&g.pkcs11, cfg).map_err(BackendError::Unavailable)?;
    let session = g.pkcs11.open_rw_session(slot).map_err(|e| {
        BackendError::Unavailable(format!("cannot open a session: {}", ck_name(&e)))
    })?;
    login(&session, &pin).map_err(|e| login_error(&e))?;
    let out = f(&session);
    drop(session);
    out
}

fn create_version(session: &Session, kek_label: &str, version: u32) -> Result<(), BackendError> {
    let label = version_label(kek_label, version);
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Label(label.clone().into_bytes()),
        Attribute::Id(version.to_be_bytes().to_vec()),
    ];
    let h = session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(|e| {
            BackendError::Unavailable(format!("C_GenerateKey of {label} failed: {}", ck_name(&e)))
        })?;
    check_kek(session, &label, h)
}

fn versions(
    session: &Session,
    kek_label: &str,
) -> Result<BTreeMap<u32, ObjectHandle>, BackendError> {
    find_versions(session, kek_label).map_err(|e| {
        BackendError::Unavailable(format!("cannot list KEK versions: {}", ck_name(&e)))
    })
}

/// `shardgate hsm init-key`: create version 1 of the KEK (`CKA_SENSITIVE=true`,
/// `CKA_EXTRACTABLE=false`, `CKA_ENCRYPT`/`CKA_DECRYPT` only, a private token object).
///
/// Idempotent: when the KEK already has versions it creates nothing and returns
/// `Ok(newest existing version)`. Blocking; call it outside request handling.
pub fn init_key(cfg: &Pkcs11Config) -> Result<u32, BackendError> {
    with_admin_session(cfg, |s| {
        if let Some((&newest, _)) = versions(s, &cfg.kek_label)?.iter().next_back() {
            return Ok(newest);
        }
        create_version(s, &cfg.kek_label, 1)?;
        Ok(1)
    })
}

/// `shardgate keys rotate` for pkcs11: create the next KEK version (newest + 1) and return
/// it. Refuses when no version exists (run `init_key` first). Running backends wrap with it
/// once they have re-read the token's KEK versions (`Pkcs11Backend::refresh_keys`, a
/// recovery, or an unwrap naming the new version). Blocking.
pub fn rotate_key(cfg: &Pkcs11Config) -> Result<u32, BackendError> {
    with_admin_session(cfg, |s| {
        let Some((&newest, _)) = versions(s, &cfg.kek_label)?.iter().next_back() else {
            return Err(BackendError::KeyUnusable(format!(
                "no KEK labelled {} exists; run `shardgate hsm init-key` first",
                version_label(&cfg.kek_label, 1)
            )));
        };
        let next = newest
            .checked_add(1)
            .ok_or_else(|| BackendError::Internal("KEK version overflow".into()))?;
        create_version(s, &cfg.kek_label, next)?;
        Ok(next)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_labels_parse_exactly() {
        assert_eq!(parse_version("kek", b"kek/v1"), Some(1));
        assert_eq!(parse_version("kek", b"kek/v12"), Some(12));
        assert_eq!(parse_version("kek", b"kek/v01"), None);
        assert_eq!(parse_version("kek", b"kek/v"), None);
        assert_eq!(parse_version("kek", b"kek2/v1"), None);
        assert_eq!(parse_version("kek", b"kek/v1x"), None);
        assert_eq!(version_label("kek", 3), "kek/v3");
    }
}
