//! TEST-ONLY fault hooks, compiled with the cargo feature `fault-injection` (test builds and
//! the chaos soak's build, never a shipped one). PKCS#11 login state belongs to the process,
//! so the soak (`bench/soak.py`) cannot log a replica's HSM sessions out from outside: it asks
//! the replica itself, through `POST /v1/admin/backends/{name}/fault:logout`.

use super::state::Services;
use crate::domain::error::DomainError;
use shardgate_backends::pkcs11::Pkcs11Backend;
use shardgate_backends::KeyBackend as _;

/// `C_Logout` on the named pkcs11 backend's live context: every session of this process is
/// logged out and every cached object handle goes invalid, as when an HSM restarts.
pub async fn hsm_logout(state: &Services, backend: &str) -> Result<(), DomainError> {
    let guarded = state
        .breakers
        .get(backend)
        .ok_or_else(|| DomainError::NotFound("no such backend".into()))?;
    let hsm = guarded
        .as_any()
        .and_then(|a| a.downcast_ref::<Pkcs11Backend>())
        .ok_or_else(|| DomainError::Invalid("not a pkcs11 backend".into()))?;
    tracing::warn!(backend, "fault injection: logging the HSM sessions out");
    hsm.inject_logout().await?;
    Ok(())
}
