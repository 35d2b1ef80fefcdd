//! Operators' overrides of a backend's breaker, for the whole cluster
//! (`POST /v1/admin/backends/{name}/circuit:open|close`): committed as a row with its audit
//! event, acted on here at once, and read by every other replica within `[breaker]
//! refresh_ms` ([`crate::domain::overrides`]).

use super::state::Services;
use crate::domain::audit::Origin;
use crate::domain::error::DomainError;
use shardgate_store::BreakerOverride;

/// The longest maintenance window one `circuit:open` may ask for (7 days).
pub const MAX_OPEN_SECS: u64 = 7 * 24 * 3600;

/// What an operator asks of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitAction {
    /// Close now (and end a `circuit:open`).
    Close,
    /// Refuse every call for this many seconds, then close.
    Open {
        /// Seconds, 1 to [`MAX_OPEN_SECS`].
        ttl_secs: u64,
    },
}

/// Commit the override for every replica, act on it here, and answer the breaker's state.
pub async fn set_circuit(
    state: &Services,
    backend: &str,
    action: CircuitAction,
    origin: &Origin,
) -> Result<&'static str, DomainError> {
    let guarded = state
        .breakers
        .get(backend)
        .ok_or_else(|| DomainError::NotFound("no such backend".into()))?;
    let now = crate::now_ms();
    let (name, expires_ms, detail) = match action {
        CircuitAction::Close => ("close", now, format!("was {}", guarded.breaker_state())),
        CircuitAction::Open { ttl_secs } => {
            if ttl_secs == 0 || ttl_secs > MAX_OPEN_SECS {
                return Err(DomainError::Invalid(format!(
                    "ttl_secs must be between 1 and {MAX_OPEN_SECS}"
                )));
            }
            let ttl_ms = i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            (
                "open",
                now.saturating_add(ttl_ms),
                format!("ttl_secs={ttl_secs} was {}", guarded.breaker_state()),
            )
        }
    };
    let mut row = BreakerOverride {
        id: 0,
        backend: backend.to_string(),
        action: name.to_string(),
        created_ms: now,
        expires_ms,
        created_by: origin.actor.clone(),
    };
    let mut event = origin
        .event(&format!("backend.circuit_{name}"))
        .detail(detail);
    event.backend = Some(backend.to_string());
    let mut guard = state.audit.lock().await?;
    let record = guard.begin(&event);
    let result = state.store.insert_breaker_override(&row, &record).await;
    guard.finish(Some(&record), &result).await;
    row.id = result?;
    state.overrides.act(&row);
    Ok(guarded.breaker_state())
}
