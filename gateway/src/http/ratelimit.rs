//! Per-identity request rate limit: a token bucket per authenticated credential
//! ([`crate::domain::auth::Caller::key`]: the token, not its name, so two tokens that share a name
//! have a bucket each), checked right after authentication, so the key is who the verified
//! credential says the caller is, never an address or a header the caller chooses
//! (`X-Forwarded-For` and friends change nothing). Keys are known credentials only, so the
//! table stays as small as the token list. Unauthenticated requests are refused by
//! authentication before they reach it (their own budget is [`crate::http::refusals`]).

use crate::http::error::{ApiError, ErrorCode};
use crate::http::settings::Limits;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;

/// The token buckets of every identity.
#[derive(Debug)]
pub struct IdentityLimiter {
    buckets: DefaultKeyedRateLimiter<String>,
}

impl IdentityLimiter {
    /// The limiter `[limits]` asks for; `None` when `rate_per_identity_per_sec` is 0 (off).
    pub fn from_limits(limits: &Limits) -> Option<Self> {
        let rate = NonZeroU32::new(limits.rate_per_identity_per_sec)?;
        let burst = NonZeroU32::new(limits.rate_per_identity_burst).unwrap_or(rate);
        Some(Self {
            buckets: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        })
    }

    /// Take one request from `identity`'s bucket, or 429 `rate_limited`. The rate is at
    /// least one request per second, so the next one is allowed within a second: the
    /// `Retry-After: 1` every 429 carries is never too short.
    pub fn check(&self, identity: &str) -> Result<(), ApiError> {
        self.buckets.check_key(&identity.to_string()).map_err(|_| {
            ApiError::new(
                ErrorCode::RateLimited,
                "this identity is over its request rate; retry after the Retry-After delay",
            )
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32) -> Limits {
        Limits {
            rate_per_identity_per_sec: rate,
            rate_per_identity_burst: burst,
            ..Limits::default()
        }
    }

    #[test]
    fn off_by_default() {
        assert!(IdentityLimiter::from_limits(&Limits::default()).is_none());
    }

    #[test]
    fn burst_then_refused_per_identity() {
        let l = IdentityLimiter::from_limits(&limits(1, 3)).unwrap();
        for _ in 0..3 {
            assert!(l.check("a").is_ok());
        }
        assert_eq!(l.check("a").unwrap_err().code, ErrorCode::RateLimited);
        // Another identity has its own bucket.
        assert!(l.check("b").is_ok());
    }

    #[test]
    fn burst_defaults_to_the_rate() {
        let l = IdentityLimiter::from_limits(&limits(2, 0)).unwrap();
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_err());
    }
}
