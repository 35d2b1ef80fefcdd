//! The one PKCS#11 context of the process, and the token look-up and login on it.
//!
//! SoftHSM2 crashes on a second `C_Initialize`d context in one process, and a PKCS#11 login
//! is shared by every session of the application, so every backend instance, `init_key` and
//! `rotate_key` of the process share one [`Global`]. Its `gate` counts context generations:
//! every call on a session holds it for reading and checks that the session belongs to the
//! current generation; re-initialising (finalize + initialize) holds it for writing, so no
//! call is in flight while the context is replaced and no stale `Session` is ever used
//! (session handle numbers restart at 1 after re-initialising).

use super::Pkcs11Config;
use crate::BackendError;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// The process-wide PKCS#11 context.
pub(crate) struct Global {
    pub(crate) module: PathBuf,
    pub(crate) pkcs11: Pkcs11,
    /// Context generation, bumped by every re-initialisation.
    pub(crate) gate: RwLock<u64>,
}

static GLOBAL: Mutex<Option<Arc<Global>>> = Mutex::new(None);

/// A short, secret-free name for a cryptoki error (`CKR_…` name and function).
pub(crate) fn ck_name(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => format!("{rv:?} in {f:?}"),
        CkError::LibraryLoading(_) => "library loading failed".into(),
        other => format!("{:?}", std::mem::discriminant(other)),
    }
}

/// The `CKR_…` code of a cryptoki error, if it has one.
pub(crate) fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

fn init_args() -> CInitializeArgs {
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

/// The process-wide context for `module`, loading and initialising it on first use.
pub(crate) fn global(module: &Path) -> Result<Arc<Global>, BackendError> {
    let mut g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = g.as_ref() {
        if existing.module == module {
            return Ok(existing.clone());
        }
        return Err(BackendError::Internal(format!(
            "this process already uses PKCS#11 module {}; one module per process (cannot load {})",
            existing.module.display(),
            module.display()
        )));
    }
    if !module.is_file() {
        return Err(BackendError::Internal(format!(
            "PKCS#11 module {} not found",
            module.display()
        )));
    }
    let pkcs11 = Pkcs11::new(module).map_err(|e| {
        BackendError::Internal(format!(
            "cannot load PKCS#11 module {}: {e}",
            module.display()
        ))
    })?;
    match pkcs11.initialize(init_args()) {
        Ok(()) => {}
        Err(e) if rv(&e) == Some(RvError::CryptokiAlreadyInitialized) => {}
        Err(e) => {
            return Err(BackendError::Internal(format!(
                "C_Initialize of {} failed: {}",
                module.display(),
                ck_name(&e)
            )))
        }
    }
    let global = Arc::new(Global {
        module: module.to_path_buf(),
        pkcs11,
        gate: RwLock::new(0),
    });
    *g = Some(global.clone());
    Ok(global)
}

/// The process-wide `cryptoki` context for `module` (loading it on first use).
///
/// A process must not create a second `Pkcs11` context (SoftHSM2 crashes): tools and tests
/// that need raw PKCS#11 access in a process that also runs this backend use this one.
/// Calling `finalize` on it, or logging out, disturbs every backend of the process.
pub fn shared_context(module: &Path) -> Result<Pkcs11, BackendError> {
    Ok(global(module)?.pkcs11.clone())
}

impl Global {
    /// Finalize and re-initialise the context. The caller must hold no `gate` guard and
    /// must have dropped every session it owns; sessions of older generations are never
    /// used or closed again (they are opened with "no close on drop").
    pub(crate) fn reinitialize(&self) -> Result<(), String> {
        let mut gen = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let _ = self.pkcs11.clone().finalize();
        let res = match self.pkcs11.initialize(init_args()) {
            Ok(()) => Ok(()),
            Err(e) if rv(&e) == Some(RvError::CryptokiAlreadyInitialized) => Ok(()),
            Err(e) => Err(format!("C_Initialize failed: {}", ck_name(&e))),
        };
        *gen += 1;
        res
    }
}

/// Find the configured token, looking at each slot on its own (a slot whose token vanished
/// must not hide the others).
pub(crate) fn find_slot(pkcs11: &Pkcs11, cfg: &Pkcs11Config) -> Result<Slot, String> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| format!("cannot list slots: {}", ck_name(&e)))?;
    for slot in slots {
        if let Some(id) = cfg.slot_id {
            if slot.id() != id {
                continue;
            }
        }
        let Ok(info) = pkcs11.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        match &cfg.token_label {
            Some(label) if info.label().trim_end() != label.as_str() => continue,
            _ => return Ok(slot),
        }
    }
    Err(match (&cfg.token_label, cfg.slot_id) {
        (Some(l), Some(id)) => format!("no initialized token labelled {l:?} in slot {id}"),
        (Some(l), None) => format!("no initialized token labelled {l:?}"),
        (None, Some(id)) => format!("no initialized token in slot {id}"),
        (None, None) => "no token selected".into(),
    })
}

/// Log the user in on `session`. `CKR_USER_ALREADY_LOGGED_IN` (another session of the
/// process logged in; the PIN is then not checked) counts as success.
pub(crate) fn login(session: &Session, pin: &AuthPin) -> Result<(), CkError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) => Ok(()),
        Err(e) if rv(&e) == Some(RvError::UserAlreadyLoggedIn) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A login failure as a secret-free backend error.
pub(crate) fn login_error(e: &CkError) -> BackendError {
    match rv(e) {
        Some(RvError::PinIncorrect) => {
            BackendError::KeyUnusable("HSM login refused: the PIN is incorrect".into())
        }
        Some(RvError::PinLocked) => {
            BackendError::KeyUnusable("HSM login refused: the PIN is locked".into())
        }
        Some(RvError::PinExpired) => {
            BackendError::KeyUnusable("HSM login refused: the PIN has expired".into())
        }
        _ => BackendError::Unavailable(format!("HSM login failed: {}", ck_name(e))),
    }
}
