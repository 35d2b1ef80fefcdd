//! The state every HTTP request shares: the service state plus what only the HTTP layer
//! uses (size limits, timeouts, the per-identity rate limit, the per-address refusal budget).
//! It dereferences to [`Services`], so a handler reads `state.store` and passes `&state` where
//! a use case takes `&Services`.

use super::ratelimit::IdentityLimiter;
use super::refusals::RefusalLimiter;
use super::settings::{Limits, Timeouts};
use crate::service::state::Services;
use std::sync::Arc;

/// Shared state of every request.
#[derive(Clone)]
pub struct AppState(Arc<HttpParts>);

/// The parts of [`AppState`].
pub struct HttpParts {
    /// What the use cases share.
    pub services: Services,
    /// Size limits.
    pub limits: Limits,
    /// Per-identity request rate limit (`None`: off).
    pub rate_limiter: Option<IdentityLimiter>,
    /// Per-address budget of authentication refusals (`None`: off).
    pub refusals: Option<Arc<RefusalLimiter>>,
    /// Timeouts.
    pub timeouts: Timeouts,
}

impl AppState {
    /// From its parts.
    pub fn new(parts: HttpParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = HttpParts;
    fn deref(&self) -> &HttpParts {
        &self.0
    }
}

impl std::ops::Deref for HttpParts {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.services
    }
}

impl AsRef<Services> for AppState {
    fn as_ref(&self) -> &Services {
        &self.services
    }
}
