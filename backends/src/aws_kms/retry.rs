//! Bounded retries with exponential backoff and full jitter, inside one operation budget.

use rand::Rng;
use std::future::Future;
use std::time::Duration;
// tokio's clock (the real one outside tests): a paused test clock then measures the budget.
use tokio::time::Instant;

/// How one attempt failed, as far as retrying is concerned.
#[derive(Debug)]
pub enum Attempt<E> {
    /// Worth another attempt (throttling, KMS internal error, timeout, connection failure).
    Transient(String),
    /// Final: returned as is.
    Fatal(E),
}

/// Why the retry loop gave up on transient failures.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp {
    /// Attempts were exhausted (or the next backoff would not fit the budget); the last
    /// failure's description.
    Exhausted(String),
    /// The operation budget ran out.
    Deadline,
}

/// Retry settings for one backend.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all (the first included); at least 1.
    pub max_attempts: u32,
    /// Timeout of one attempt.
    pub attempt_timeout: Duration,
    /// Budget for the whole operation, retries and backoff included.
    pub budget: Duration,
    /// First backoff cap; doubles per attempt.
    pub base_backoff: Duration,
    /// Largest backoff cap.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The full-jitter sleep before retry number `retry` (1-based): uniform in
    /// `[0, min(max_backoff, base_backoff * 2^(retry-1))]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .base_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
    }

    /// Run `op` until it succeeds, fails fatally, or retries run out. Each attempt gets
    /// `min(attempt_timeout, budget left)`; an attempt timing out is transient.
    pub async fn run<T, E, F, Fut>(&self, mut op: F) -> Result<Result<T, E>, GaveUp>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt<E>>>,
    {
        let start = Instant::now();
        // The request's own deadline, when shorter, wins (see `crate::deadline`).
        let deadline = start + crate::deadline::clamp(self.budget);
        let mut last = String::from("no attempt made");
        for attempt in 1..=self.max_attempts.max(1) {
            let now = Instant::now();
            if now >= deadline {
                return Err(GaveUp::Deadline);
            }
            let per_try = self.attempt_timeout.min(deadline - now);
            match tokio::time::timeout(per_try, op()).await {
                Ok(Ok(v)) => return Ok(Ok(v)),
                Ok(Err(Attempt::Fatal(e))) => return Ok(Err(e)),
                Ok(Err(Attempt::Transient(why))) => last = why,
                Err(_) => last = format!("attempt timed out after {} ms", per_try.as_millis()),
            }
            if Instant::now() >= deadline {
                return Err(GaveUp::Deadline);
            }
            if attempt < self.max_attempts {
                let sleep = self.backoff(attempt);
                if Instant::now() + sleep >= deadline {
                    // The next attempt could not start inside the budget: give up now, so the
                    // caller hears "unavailable" at once rather than after a useless wait.
                    return Err(GaveUp::Exhausted(last));
                }
                tokio::time::sleep(sleep).await;
            }
        }
        Err(GaveUp::Exhausted(last))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(max_attempts: u32, budget_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            attempt_timeout: Duration::from_millis(100),
            budget: Duration::from_millis(budget_ms),
            base_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        }
    }

    #[test]
    fn backoff_is_capped() {
        let p = policy(10, 1000);
        for retry in 1..40 {
            assert!(p.backoff(retry) <= Duration::from_millis(20));
        }
        assert!(p.backoff(1) <= Duration::from_millis(5));
    }

    #[tokio::test]
    async fn transient_then_success() {
        let n = AtomicU32::new(0);
        let r = policy(5, 2000)
            .run(|| async {
                if n.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Attempt::<()>::Transient("throttled".into()))
                } else {
                    Ok(1)
                }
            })
            .await;
        assert_eq!(r, Ok(Ok(1)));
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        let n = AtomicU32::new(0);
        let r: Result<Result<(), ()>, _> = policy(4, 5000)
            .run(|| async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(Attempt::Transient("throttled".into()))
            })
            .await;
        assert_eq!(r, Err(GaveUp::Exhausted("throttled".into())));
        assert_eq!(n.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn fatal_is_not_retried() {
        let n = AtomicU32::new(0);
        let r: Result<Result<(), &str>, _> = policy(4, 5000)
            .run(|| async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(Attempt::Fatal("denied"))
            })
            .await;
        assert_eq!(r, Ok(Err("denied")));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    /// On tokio's paused clock: the 10 s hang ends at the 250 ms budget (virtual time, so
    /// the bound is exact, not a wall-clock guess).
    #[tokio::test(start_paused = true)]
    async fn hanging_attempts_end_at_the_budget() {
        let start = Instant::now();
        let r: Result<Result<(), ()>, _> = policy(100, 250)
            .run(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(())
            })
            .await;
        assert!(matches!(
            r,
            Err(GaveUp::Deadline) | Err(GaveUp::Exhausted(_))
        ));
        assert!(
            start.elapsed() <= Duration::from_millis(250),
            "{:?}",
            start.elapsed()
        );
    }
}
