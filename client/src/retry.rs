//! When a call is tried again, and after how long: only calls that are safe to repeat (reads,
//! and writes that carry an `Idempotency-Key`), only for answers that say "later" (429, 503)
//! or for no answer at all, with full-jitter exponential backoff that never waits less than
//! the gateway's `Retry-After`, and never past the call's deadline.

use std::time::Duration;

/// How a client retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1: never retry).
    pub max_attempts: u32,
    /// The first backoff's ceiling.
    pub base: Duration,
    /// No backoff is longer (a `Retry-After` may be).
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// How long to wait after failed attempt `attempt` (1-based): a uniform draw from
    /// `[0, min(cap, base * 2^(attempt-1))]` (full jitter), at least `retry_after`.
    pub(crate) fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        use rand::Rng as _;
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        let ceiling = exp.min(self.cap);
        let jittered = if ceiling.is_zero() {
            Duration::ZERO
        } else {
            rand::thread_rng().gen_range(Duration::ZERO..=ceiling)
        };
        retry_after.map_or(jittered, |r| jittered.max(r))
    }
}

/// Whether a call may be sent again when its answer (or its absence) says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// A read, or a write with an `Idempotency-Key`: repeating it changes nothing.
    Safe,
    /// A write without one: repeated only when it never reached the gateway.
    Unsafe,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_ceiling_and_grows() {
        let p = RetryPolicy::default();
        for _ in 0..200 {
            assert!(p.backoff(1, None) <= Duration::from_millis(50));
            assert!(p.backoff(3, None) <= Duration::from_millis(200));
            assert!(p.backoff(30, None) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn backoff_never_undercuts_retry_after() {
        let p = RetryPolicy::default();
        for attempt in 1..6 {
            assert!(p.backoff(attempt, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let p = RetryPolicy {
            max_attempts: 4,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(1),
        };
        let waits: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| p.backoff(1, None)).collect();
        assert!(waits.len() > 10, "{} distinct waits", waits.len());
    }
}
