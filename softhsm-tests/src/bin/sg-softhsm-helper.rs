//! Test helper, run as its own process (a process may hold only one PKCS#11 context):
//! creates an AES-256 secret key with a given value and attributes on a SoftHSM2 token.
//!
//! `sg-softhsm-helper <module> <token-label> <pin> <object-label> <hex-32-bytes> <flags>`
//! where flags is a comma list of `extractable`, `not-sensitive` or `-`. Uses the
//! `SOFTHSM2_CONF` of its environment.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn hex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() & 1 == 1 {
        return Err("odd hex length".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, module, token, pin, label, value, flags] = args.as_slice() else {
        return Err("usage: sg-softhsm-helper MODULE TOKEN PIN LABEL HEX FLAGS".into());
    };
    let value = hex(value)?;
    let extractable = flags.split(',').any(|f| f == "extractable");
    let sensitive = !flags.split(',').any(|f| f == "not-sensitive");
    let pkcs11 = Pkcs11::new(module)?;
    pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let mut found = None;
    for slot in pkcs11.get_slots_with_token()? {
        if let Ok(info) = pkcs11.get_token_info(slot) {
            if info.token_initialized() && info.label().trim_end() == token.as_str() {
                found = Some(slot);
            }
        }
    }
    let slot = found.ok_or("token not found")?;
    let session = pkcs11.open_rw_session(slot)?;
    session.login(UserType::User, Some(&AuthPin::from(pin.clone())))?;
    let version: u32 = label
        .rsplit_once("/v")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    session.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(sensitive),
        Attribute::Extractable(extractable),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(label.clone().into_bytes()),
        Attribute::Id(version.to_be_bytes().to_vec()),
        Attribute::Value(value),
    ])?;
    session.logout()?;
    drop(session);
    pkcs11.finalize()?;
    Ok(())
}
