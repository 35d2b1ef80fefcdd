//! The caller's deadline, carried to backends without widening the trait.
//!
//! The gateway runs each request inside [`scope`]; a backend that retries or waits (KMS
//! backoff, an HSM session checkout) shortens its own budget to what is left with
//! [`clamp`], so it gives up with a typed error the handler can still audit, instead of
//! being cut off mid-call by the request's outer timeout.

use std::future::Future;
use std::time::{Duration, Instant};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Run `fut` with `deadline` visible to every backend call it makes on this task.
pub async fn scope<F: Future>(deadline: Instant, fut: F) -> F::Output {
    DEADLINE.scope(deadline, fut).await
}

/// The deadline of the current request, if the caller set one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// `budget`, shortened to the time left before the caller's deadline (zero once it passed).
pub fn clamp(budget: Duration) -> Duration {
    match current() {
        Some(d) => budget.min(d.saturating_duration_since(Instant::now())),
        None => budget,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clamp_without_a_deadline_keeps_the_budget() {
        assert_eq!(clamp(Duration::from_secs(5)), Duration::from_secs(5));
        assert!(current().is_none());
    }

    #[tokio::test]
    async fn clamp_inside_a_scope_shortens_the_budget() {
        let d = Instant::now() + Duration::from_millis(200);
        let got = scope(d, async { clamp(Duration::from_secs(5)) }).await;
        assert!(got <= Duration::from_millis(200), "{got:?}");
        let passed = scope(Instant::now(), async { clamp(Duration::from_secs(5)) }).await;
        assert_eq!(passed, Duration::ZERO);
    }
}
