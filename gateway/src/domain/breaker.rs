//! A circuit breaker and a bulkhead around each backend instance.
//!
//! Breaker: closed -> open after `failure_threshold` consecutive backend faults (unavailable or
//! deadline exceeded: timeouts, connection and device errors, throttling past retries; never a
//! refused key, a bad ciphertext or a client error). Open answers at once with
//! `Shed("circuit open")` (503 with `Retry-After` the rest of the cooldown) until it has passed; then
//! exactly one call (a request or the synthetic probe) goes through half-open: success closes
//! the breaker and resets the cooldown, failure reopens it with the cooldown doubled (up to
//! `max_cooldown_ms`). Bulkhead ([`crate::domain::bulkhead`]): at most `max_concurrent`
//! operations on the backend at once and at most `max_queue` waiting, admitted by priority
//! class under overload; past that, `Shed("backend busy")` at once, so a slow backend can
//! never hold every request of the process. Other backends are unaffected: each instance has
//! its own breaker and bulkhead.
//!
//! [`Guarded`] is a [`Decorator`]: it guards every call that reaches the backend (wraps,
//! unwraps, re-wraps, verifies, one and many, and the health check's latency); only the calls
//! that do no I/O (`name`, `kind`, `holds_key_ref`, `kek_versions`, `as_any`) are forwarded
//! unguarded.

use crate::domain::bulkhead::{shed, Bulkhead};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shardgate_backends::{
    BackendError, DataKey, Decorator, Health, KeyBackend, ShardIdentity, Stat, Version, WrappedKey,
};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Breaker and bulkhead settings (the same for every backend instance).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive backend faults that open the breaker.
    pub failure_threshold: u32,
    /// First cooldown before a half-open trial.
    pub cooldown_ms: u64,
    /// The cooldown doubles on each failed trial up to this.
    pub max_cooldown_ms: u64,
    /// Synthetic probe (wrap + unwrap of a fixed probe key) period; 0 turns it off.
    pub probe_interval_ms: u64,
    /// Probe also while closed, so a dead backend is found before traffic finds it (off for
    /// tests that count a backend's calls).
    pub probe_closed: bool,
    /// How often a replica reads the operators' overrides (`circuit:open`, `circuit:close`)
    /// from the database (0: never; start-up still applies those in force).
    pub refresh_ms: u64,
    /// Warn (each minute) when half-open or open for longer than this.
    pub stuck_warn_after_ms: u64,
    /// Operations running on the backend at once.
    pub max_concurrent: usize,
    /// Operations allowed to wait for a slot, all priority classes; past a class's share
    /// (`bulk` half, `standard` nine tenths, `critical` all), 503 at once.
    pub max_queue: usize,
    /// Percent of `max_concurrent` kept from `bulk` and `standard` calls for `critical` ones,
    /// and as much again kept from `bulk` for `standard` and `critical` (0..=50).
    pub reserve_pct: u8,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            cooldown_ms: 5_000,
            max_cooldown_ms: 600_000,
            probe_interval_ms: 15_000,
            probe_closed: true,
            refresh_ms: 2_000,
            stuck_warn_after_ms: 300_000,
            max_concurrent: 64,
            max_queue: 10_000,
            reserve_pct: 25,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        cooldown: Duration,
    },
    HalfOpen {
        trial: bool,
        cooldown: Duration,
    },
    /// Opened by an operator (`circuit:open`, maintenance) until `until`; then closed.
    Forced {
        until: Instant,
    },
}

/// Whether a call may go through, and as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Normal,
    Trial,
}

struct Breaker {
    /// The backend instance, for the transition counter's label.
    backend: String,
    cfg: BreakerConfig,
    state: Mutex<(State, Instant)>,
    opens: AtomicU64,
}

/// Whether a failure is the backend's fault (counts against the breaker).
fn is_fault(e: &BackendError) -> bool {
    matches!(
        e,
        BackendError::Unavailable(_) | BackendError::DeadlineExceeded
    )
}

impl Breaker {
    fn base(&self) -> Duration {
        Duration::from_millis(self.cfg.cooldown_ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (State, Instant)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self, now: Instant) -> Result<Admit, BackendError> {
        let mut st = self.lock();
        match st.0 {
            State::Closed { .. } => Ok(Admit::Normal),
            State::Forced { until } if now < until => Err(shed(
                "circuit opened by an operator",
                until.saturating_duration_since(now),
            )),
            State::Forced { .. } => {
                self.transition("closed");
                tracing::info!(backend = %self.backend, "operator's circuit:open expired; circuit closed");
                *st = (State::Closed { failures: 0 }, now);
                Ok(Admit::Normal)
            }
            State::Open { until, cooldown } if now >= until => {
                self.transition("half-open");
                *st = (
                    State::HalfOpen {
                        trial: true,
                        cooldown,
                    },
                    now,
                );
                Ok(Admit::Trial)
            }
            // The truth for `Retry-After`: the rest of the cooldown.
            State::Open { until, .. } => {
                Err(shed("circuit open", until.saturating_duration_since(now)))
            }
            // A trial is deciding now (within one backend call's time): retry soon.
            State::HalfOpen { trial: true, .. } => {
                Err(shed("circuit open", Duration::from_millis(TRIAL_RETRY_MS)))
            }
            State::HalfOpen {
                trial: false,
                cooldown,
            } => {
                st.0 = State::HalfOpen {
                    trial: true,
                    cooldown,
                };
                Ok(Admit::Trial)
            }
        }
    }

    fn record(&self, admit: Admit, fault: Option<bool>, now: Instant) {
        let mut st = self.lock();
        let max = Duration::from_millis(self.cfg.max_cooldown_ms);
        let next = match (st.0, admit, fault) {
            // A trial that was cancelled: let another call try.
            (State::HalfOpen { cooldown, .. }, Admit::Trial, None) => State::HalfOpen {
                trial: false,
                cooldown,
            },
            (State::HalfOpen { .. }, Admit::Trial, Some(false)) => {
                tracing::info!(backend = %self.backend, "circuit closed after a successful trial");
                State::Closed { failures: 0 }
            }
            (State::HalfOpen { cooldown, .. }, Admit::Trial, Some(true)) => {
                let cooldown = (cooldown * 2).min(max);
                self.opens.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    backend = %self.backend,
                    cooldown_ms = cooldown.as_millis() as u64,
                    "circuit reopened after a failed trial"
                );
                State::Open {
                    until: now + cooldown,
                    cooldown,
                }
            }
            (State::Closed { .. }, _, Some(false)) => State::Closed { failures: 0 },
            (State::Closed { failures }, _, Some(true)) => {
                let failures = failures.saturating_add(1);
                if failures >= self.cfg.failure_threshold.max(1) {
                    self.opens.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(backend = %self.backend, failures, "circuit opened");
                    State::Open {
                        until: now + self.base(),
                        cooldown: self.base(),
                    }
                } else {
                    State::Closed { failures }
                }
            }
            (s, _, _) => s,
        };
        if std::mem::discriminant(&next) != std::mem::discriminant(&st.0) {
            self.transition(state_name(&next));
            *st = (next, now);
        } else {
            st.0 = next;
        }
    }

    fn force_close(&self) {
        let mut st = self.lock();
        if !matches!(st.0, State::Closed { .. }) {
            self.transition("closed");
        }
        *st = (State::Closed { failures: 0 }, Instant::now());
    }

    fn force_open(&self, until: Instant) {
        let mut st = self.lock();
        if !matches!(st.0, State::Forced { .. }) {
            self.transition("forced-open");
        }
        *st = (State::Forced { until }, Instant::now());
    }

    /// `closed`, `open` or `half-open`, and since when.
    fn describe(&self) -> (&'static str, Instant) {
        let st = self.lock();
        (state_name(&st.0), st.1)
    }

    /// Count a change of state (labels: the backend instance and the state entered, a
    /// bounded set).
    fn transition(&self, to: &'static str) {
        metrics::counter!(
            "shardgate_breaker_transitions_total",
            "backend" => self.backend.clone(),
            "to" => to
        )
        .increment(1);
    }
}

/// How soon a call turned away during a half-open trial may retry.
const TRIAL_RETRY_MS: u64 = 1_000;

fn state_name(s: &State) -> &'static str {
    match s {
        State::Closed { .. } => "closed",
        State::Open { .. } => "open",
        State::HalfOpen { .. } => "half-open",
        State::Forced { .. } => "forced-open",
    }
}

/// A backend behind its breaker and bulkhead. Delegates everything else.
pub struct Guarded {
    inner: Arc<dyn KeyBackend>,
    breaker: Breaker,
    bulkhead: Bulkhead,
}

/// Keeps a trial honest: dropped without a result (a cancelled request) it frees the trial.
struct Outcome<'a> {
    breaker: &'a Breaker,
    admit: Admit,
    fault: Option<bool>,
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        self.breaker.record(self.admit, self.fault, Instant::now());
    }
}

impl Guarded {
    /// Wrap `inner`; starts the synthetic probe when `probe_interval_ms > 0` and a runtime is
    /// present.
    pub fn new(inner: Arc<dyn KeyBackend>, cfg: BreakerConfig) -> Arc<Self> {
        let g = Arc::new(Self {
            bulkhead: Bulkhead::new(cfg.max_concurrent, cfg.max_queue, cfg.reserve_pct),
            breaker: Breaker {
                backend: inner.name().to_string(),
                cfg,
                state: Mutex::new((State::Closed { failures: 0 }, Instant::now())),
                opens: AtomicU64::new(0),
            },
            inner,
        });
        if g.breaker.cfg.probe_interval_ms > 0 {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(probe_loop(Arc::downgrade(&g)));
            }
        }
        g
    }

    /// Operator override: close the breaker now (ends a `circuit:open` too).
    pub fn force_close(&self) {
        self.breaker.force_close();
        tracing::warn!(backend = %self.inner.name(), "circuit closed by an operator");
    }

    /// Operator override (maintenance): refuse every call until `until` (503 with the rest
    /// as `Retry-After`), then close.
    pub fn force_open(&self, until: Instant) {
        self.breaker.force_open(until);
        tracing::warn!(
            backend = %self.inner.name(),
            secs = until.saturating_duration_since(Instant::now()).as_secs(),
            "circuit opened by an operator"
        );
    }

    /// `closed`, `open` or `half-open`.
    pub fn breaker_state(&self) -> &'static str {
        self.breaker.describe().0
    }

    /// One admission for a batch of `n` items (the HSM pays one checkout for it too); the
    /// batch counts as a fault when any item failed for the backend's sake, and a refused
    /// admission is every item's answer.
    async fn admit_many<T, F, Fut>(
        &self,
        name: &'static str,
        n: usize,
        op: F,
    ) -> Vec<Result<T, BackendError>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Vec<Result<T, BackendError>>>,
    {
        let out = self
            .admit_run(name, op, |res: &Vec<Result<T, BackendError>>| {
                res.iter().any(|r| matches!(r, Err(e) if is_fault(e)))
            })
            .await;
        match out {
            Ok(res) => res,
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    /// Run `op` through the breaker and the bulkhead; `fault_of` says whether its output
    /// counts as a fault of the backend. `Err` only when the call was not admitted.
    /// `name` labels the operation's latency (time on the backend, not in the queue).
    async fn admit_run<T, F, Fut>(
        &self,
        name: &'static str,
        op: F,
        fault_of: impl Fn(&T) -> bool,
    ) -> Result<T, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        // Noted before admission: a request refused by this backend's breaker was still
        // served (and answered 503) on its account.
        crate::domain::metrics::note_backend(self.inner.name());
        let admit = self.breaker.admit(Instant::now())?;
        let mut outcome = Outcome {
            breaker: &self.breaker,
            admit,
            fault: None,
        };
        // Load, not a fault: a trial that could not run (`outcome` dropped) is freed.
        let permit = self.bulkhead.enter().await?;
        let started = Instant::now();
        let out = op().await;
        drop(permit);
        self.record_latency(name, started);
        // A refused key or a bad ciphertext says nothing about availability: not a fault.
        outcome.fault = Some(fault_of(&out));
        drop(outcome);
        Ok(out)
    }

    fn record_latency(&self, op: &'static str, started: Instant) {
        self.bulkhead.record(started.elapsed());
        metrics::histogram!(
            "shardgate_backend_op_duration_seconds",
            "backend" => self.inner.name().to_string(),
            "op" => op
        )
        .record(started.elapsed().as_secs_f64());
    }

    async fn guard<T, F, Fut>(&self, name: &'static str, op: F) -> Result<T, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        self.admit_run(
            name,
            op,
            |r: &Result<T, BackendError>| matches!(r, Err(e) if is_fault(e)),
        )
        .await?
    }
}

/// Wrap + unwrap of a fixed probe key through the breaker, every `probe_interval_ms`: while
/// open it drives the half-open trial without user traffic; while closed (`probe_closed`) it
/// finds a dead backend before traffic does (its faults count as any call's).
async fn probe_loop(weak: Weak<Guarded>) {
    let every = match weak.upgrade() {
        Some(g) => Duration::from_millis(g.breaker.cfg.probe_interval_ms),
        None => return,
    };
    let id = ShardIdentity::new("shardgate:probe", "shardgate:probe", Version::FIRST);
    // Never warned yet: the first warning comes as soon as the breaker has been stuck for
    // `stuck_warn_after_ms`, then one a minute.
    let mut last_warn: Option<Instant> = None;
    loop {
        tokio::time::sleep(every).await;
        let Some(g) = weak.upgrade() else { return };
        let (state, since) = g.breaker.describe();
        let stuck = Duration::from_millis(g.breaker.cfg.stuck_warn_after_ms);
        if state != "closed"
            && state != "forced-open"
            && since.elapsed() > stuck
            && match last_warn {
                None => true,
                Some(at) => at.elapsed() >= Duration::from_secs(60),
            }
        {
            last_warn = Some(Instant::now());
            tracing::warn!(backend = %g.inner.name(), state, secs = since.elapsed().as_secs(), "circuit not closed for a long time");
        }
        // An operator's maintenance window is not probed; a closed breaker is, unless
        // `probe_closed` is off, so a dead backend opens it before traffic finds it.
        if state == "forced-open" || (state == "closed" && !g.breaker.cfg.probe_closed) {
            continue;
        }
        let probe = g
            .guard("probe", || async {
                let dek = DataKey::generate();
                let wrapped = g.inner.wrap(&id, &dek).await?;
                let back = g.inner.unwrap(&id, &wrapped).await?;
                if back.expose() == dek.expose() {
                    Ok(())
                } else {
                    Err(BackendError::Internal(
                        "probe key did not round-trip".into(),
                    ))
                }
            })
            .await;
        if let Err(e) = probe {
            tracing::debug!(backend = %g.inner.name(), error = %e, "backend probe failed");
        }
    }
}

#[async_trait]
impl Decorator for Guarded {
    fn inner(&self) -> &dyn KeyBackend {
        self.inner.as_ref()
    }

    async fn generate_data_key(
        &self,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        self.guard("generate_data_key", || self.inner.generate_data_key(id))
            .await
    }

    async fn wrap(&self, id: &ShardIdentity, dek: &DataKey) -> Result<WrappedKey, BackendError> {
        self.guard("wrap", || self.inner.wrap(id, dek)).await
    }

    async fn unwrap(
        &self,
        id: &ShardIdentity,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, BackendError> {
        self.guard("unwrap", || self.inner.unwrap(id, wrapped))
            .await
    }

    async fn unwrap_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<DataKey, BackendError>> {
        self.admit_many("unwrap_many", items.len(), || self.inner.unwrap_many(items))
            .await
    }

    async fn verify_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<(), BackendError>> {
        self.admit_many("verify_many", items.len(), || self.inner.verify_many(items))
            .await
    }

    async fn rewrap_many_from(
        &self,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        self.admit_many("rewrap_many", items.len(), || {
            self.inner.rewrap_many_from(source, items)
        })
        .await
    }

    async fn rewrap_many_from_under(
        &self,
        version: u32,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        self.admit_many("rewrap_many", items.len(), || {
            self.inner.rewrap_many_from_under(version, source, items)
        })
        .await
    }

    async fn verify(&self, id: &ShardIdentity, wrapped: &WrappedKey) -> Result<(), BackendError> {
        self.guard("verify", || self.inner.verify(id, wrapped))
            .await
    }

    async fn rewrap_from(
        &self,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        self.guard("rewrap", || self.inner.rewrap_from(id, source, wrapped))
            .await
    }

    async fn wrap_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        dek: &DataKey,
    ) -> Result<WrappedKey, BackendError> {
        self.guard("wrap", || self.inner.wrap_under(version, id, dek))
            .await
    }

    async fn generate_data_key_under(
        &self,
        version: u32,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        self.guard("generate_data_key", || {
            self.inner.generate_data_key_under(version, id)
        })
        .await
    }

    async fn rewrap_from_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        self.guard("rewrap", || {
            self.inner.rewrap_from_under(version, id, source, wrapped)
        })
        .await
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        let inner = self.inner.health().await;
        self.record_latency("health", started);
        let state = self.breaker_state();
        Health {
            usable: inner.usable && state != "open" && state != "forced-open",
            detail: format!("{}; circuit {state}", inner.detail),
        }
    }

    fn stats(&self) -> Vec<Stat> {
        let mut s = self.inner.stats();
        let state = match self.breaker_state() {
            "closed" => 0,
            "half-open" => 1,
            _ => 2,
        };
        s.push(Stat::new("breaker_state", state));
        s.push(Stat::new(
            "breaker_opens_total",
            self.breaker.opens.load(Ordering::Relaxed),
        ));
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        s.push(Stat::new("bulkhead_in_use", count(self.bulkhead.in_use())));
        s.push(Stat::new(
            "bulkhead_waiting",
            count(self.bulkhead.waiting()),
        ));
        s.push(Stat::new(
            "bulkhead_rejected_total",
            self.bulkhead.rejected(),
        ));
        for class in shardgate_policy::Class::ALL {
            s.push(Stat::new(
                match class {
                    shardgate_policy::Class::Bulk => "bulkhead_shed_bulk_total",
                    shardgate_policy::Class::Standard => "bulkhead_shed_standard_total",
                    shardgate_policy::Class::Critical => "bulkhead_shed_critical_total",
                },
                self.bulkhead.shed_of(class),
            ));
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cooldown_ms: u64, max_ms: u64) -> Breaker {
        Breaker {
            backend: "test".into(),
            cfg: BreakerConfig {
                failure_threshold: threshold,
                cooldown_ms,
                max_cooldown_ms: max_ms,
                ..BreakerConfig::default()
            },
            state: Mutex::new((State::Closed { failures: 0 }, Instant::now())),
            opens: AtomicU64::new(0),
        }
    }

    fn run(b: &Breaker, now: Instant, fault: bool) -> Result<(), BackendError> {
        let a = b.admit(now)?;
        b.record(a, Some(fault), now);
        Ok(())
    }

    #[test]
    fn opens_after_consecutive_faults_and_a_success_resets_the_count() {
        let b = breaker(3, 1000, 8000);
        let t = Instant::now();
        run(&b, t, true).unwrap();
        run(&b, t, true).unwrap();
        run(&b, t, false).unwrap();
        run(&b, t, true).unwrap();
        run(&b, t, true).unwrap();
        assert_eq!(b.describe().0, "closed");
        run(&b, t, true).unwrap();
        assert_eq!(b.describe().0, "open");
        assert!(b.admit(t + Duration::from_millis(999)).is_err());
        assert_eq!(b.opens.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn one_trial_after_the_cooldown_closes_on_success() {
        let b = breaker(1, 1000, 8000);
        let t = Instant::now();
        run(&b, t, true).unwrap();
        let later = t + Duration::from_millis(1000);
        let trial = b.admit(later).unwrap();
        assert_eq!(trial, Admit::Trial);
        // Exactly one call goes through while the trial runs.
        assert!(b.admit(later).is_err());
        b.record(trial, Some(false), later);
        assert_eq!(b.describe().0, "closed");
        assert_eq!(b.admit(later).unwrap(), Admit::Normal);
    }

    #[test]
    fn a_failed_trial_doubles_the_cooldown_up_to_the_cap() {
        let b = breaker(1, 1000, 3000);
        let mut t = Instant::now();
        run(&b, t, true).unwrap();
        for expect_ms in [2000u64, 3000, 3000] {
            t += Duration::from_millis(3000);
            let trial = b.admit(t).unwrap();
            b.record(trial, Some(true), t);
            assert!(b.admit(t + Duration::from_millis(expect_ms - 1)).is_err());
            assert!(matches!(
                b.lock().0,
                State::Open { cooldown, .. } if cooldown == Duration::from_millis(expect_ms)
            ));
        }
        // Success resets the cooldown to its base.
        t += Duration::from_millis(3000);
        let trial = b.admit(t).unwrap();
        b.record(trial, Some(false), t);
        run(&b, t, true).unwrap();
        assert!(
            matches!(b.lock().0, State::Open { cooldown, .. } if cooldown == Duration::from_millis(1000))
        );
    }

    #[test]
    fn a_cancelled_trial_lets_the_next_call_try() {
        let b = breaker(1, 10, 100);
        let t = Instant::now();
        run(&b, t, true).unwrap();
        let later = t + Duration::from_millis(10);
        let trial = b.admit(later).unwrap();
        b.record(trial, None, later);
        assert_eq!(b.admit(later).unwrap(), Admit::Trial);
    }

    #[test]
    fn an_open_breaker_turns_calls_away_with_the_rest_of_its_cooldown() {
        let b = breaker(1, 30_000, 60_000);
        let t = Instant::now();
        run(&b, t, true).unwrap();
        let shed = |at| match b.admit(at) {
            Err(BackendError::Shed { retry_after_ms, .. }) => retry_after_ms,
            other => panic!("{other:?}"),
        };
        assert_eq!(shed(t), 30_000);
        assert_eq!(shed(t + Duration::from_millis(12_500)), 17_500);
        // Past it, the trial goes through; calls beside the trial retry soon.
        assert_eq!(b.admit(t + Duration::from_secs(30)).unwrap(), Admit::Trial);
        assert_eq!(shed(t + Duration::from_secs(30)), TRIAL_RETRY_MS);
    }

    #[test]
    fn a_turned_away_call_is_never_a_fault() {
        assert!(!is_fault(&shed("backend busy", Duration::from_secs(1))));
    }

    #[test]
    fn only_backend_faults_count() {
        assert!(is_fault(&BackendError::Unavailable("x".into())));
        assert!(is_fault(&BackendError::DeadlineExceeded));
        assert!(!is_fault(&BackendError::Integrity));
        assert!(!is_fault(&BackendError::KeyUnusable("disabled".into())));
        assert!(!is_fault(&BackendError::Internal("bug".into())));
    }

    #[test]
    fn force_close_closes_an_open_breaker() {
        let b = breaker(1, 60_000, 60_000);
        run(&b, Instant::now(), true).unwrap();
        assert_eq!(b.describe().0, "open");
        b.force_close();
        assert_eq!(b.admit(Instant::now()).unwrap(), Admit::Normal);
    }
}
