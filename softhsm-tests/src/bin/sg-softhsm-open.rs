//! Test helper, run as its own process (a process may hold only one PKCS#11 context): opens
//! the `pkcs11` backend on a SoftHSM2 token exactly as a gateway does at start-up, so a test
//! can start several at once on one token (`tests/startup.rs`).
//!
//! `sg-softhsm-open <module> <token-label> <pin-file> <kek-label>`: exit 0 when the backend
//! opened (token found, logged in, KEK versions checked), else the error and exit 1. Uses
//! the `SOFTHSM2_CONF` of its environment.

use shardgate_backends::pkcs11::{Pkcs11Backend, Pkcs11Config};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, module, token, pin_file, kek_label] = args.as_slice() else {
        return Err("usage: sg-softhsm-open MODULE TOKEN PIN_FILE KEK_LABEL".into());
    };
    let mut cfg = Pkcs11Config::new(token, kek_label);
    cfg.module = module.into();
    cfg.pin_file = Some(pin_file.into());
    Pkcs11Backend::open("hsm", &cfg)?;
    Ok(())
}
