//! Running an operation on a pooled session: the checkout (bounded by the request's
//! deadline), the retry loop that tells faults from stale or dead sessions, recovery (re-login,
//! else re-initialising the context) and the periodic refresh of the KEK versions.

use super::pool::SessionManager;
use super::{Core, Keks, OpError};
use crate::BackendError;
use cryptoki::session::Session;
use deadpool::managed::{Object, Pool, PoolError, TimeoutType, Timeouts};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After a failed recovery, faults fail fast for this long before the next attempt.
const RECOVERY_HOLDOFF: Duration = Duration::from_millis(250);

/// Rounds of one recovery attempt (each: re-login/re-find, then finalize/re-initialise).
const RECOVERY_ROUNDS: u32 = 3;

/// A backend's shared core and its session pool.
pub(super) struct Inner {
    pub(super) core: Arc<Core>,
    pub(super) pool: Pool<SessionManager>,
}

/// Re-read the KEK versions every `every_ms` while the backend lives (a weak reference: the
/// task ends with the backend). Needs a tokio runtime; without one (a CLI tool opening the
/// backend outside a runtime) there is nothing to keep fresh.
pub(super) fn spawn_key_refresh(inner: &Arc<Inner>, every_ms: u64) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if every_ms == 0 {
        return;
    }
    let weak = Arc::downgrade(inner);
    let every = Duration::from_millis(every_ms);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let name = inner.core.name.clone();
            let before = inner.core.keks().handles.len();
            match tokio::task::spawn_blocking(move || {
                let out = inner.refresh(true);
                (out, inner.core.keks().handles.len())
            })
            .await
            {
                Ok((Ok(()), after)) if after != before => {
                    tracing::info!(backend = %name, versions = after, "pkcs11: KEK versions changed");
                }
                Ok((Ok(()), _)) => {}
                Ok((Err(e), _)) => {
                    tracing::warn!(backend = %name, error = %e, "pkcs11: KEK refresh failed");
                }
                Err(_) => return,
            }
        }
    });
}

impl Inner {
    pub(super) async fn checkout(&self) -> Result<Object<SessionManager>, OpError> {
        let configured = Duration::from_millis(self.core.cfg.checkout_timeout_ms);
        // Never wait for a session past the request's own deadline.
        let timeouts = Timeouts {
            wait: Some(crate::deadline::clamp(configured)),
            create: Some(configured),
            recycle: Some(configured),
        };
        match self.pool.timeout_get(&timeouts).await {
            Ok(o) => Ok(o),
            Err(PoolError::Timeout(TimeoutType::Wait)) => Err(OpError::Final(
                BackendError::Unavailable("pool exhausted".into()),
            )),
            Err(PoolError::Timeout(t)) => Err(OpError::Fault {
                discard: true,
                why: format!("session {t:?} timed out"),
            }),
            Err(PoolError::Backend(e)) => Err(OpError::Fault {
                discard: true,
                why: e.to_string(),
            }),
            Err(PoolError::Closed) => Err(OpError::Final(BackendError::Unavailable(
                "session pool closed".into(),
            ))),
            Err(e) => Err(OpError::Final(BackendError::Internal(format!(
                "session pool: {e}"
            )))),
        }
    }

    /// Run `f` on a pooled session off the async workers; recover and retry once on a fault.
    pub(super) async fn execute<T, F>(self: &Arc<Self>, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: Fn(&Core, &Session, &Keks) -> Result<T, OpError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let mut last = String::from("HSM operation failed");
        // Faults: one retry. A session of a replaced context is not a fault of this
        // operation (nothing ran): it waits for the recovery under way and tries again, a
        // bounded number of times.
        let (mut faults, mut stale, mut dead) = (0u32, 0u32, 0usize);
        // Each pooled session may turn out dead once.
        let max_dead = self.pool.status().max_size;
        while faults < 2 && stale < 3 && dead <= max_dead {
            let epoch = self.core.keks().epoch;
            let obj = match self.checkout().await {
                Ok(o) => o,
                Err(OpError::Final(e)) => return Err(e),
                Err(OpError::Stale | OpError::Dead) => {
                    stale += 1;
                    continue;
                }
                Err(OpError::Fault { why, .. }) => {
                    last = why;
                    faults += 1;
                    if faults < 2 {
                        self.recover(epoch).await?;
                    }
                    continue;
                }
            };
            let core = self.core.clone();
            let f2 = f.clone();
            let (obj, epoch, res) = tokio::task::spawn_blocking(move || {
                let (epoch, r) = core.call(&obj, |s, keks| f2(&core, s, keks));
                (obj, epoch, r)
            })
            .await
            .map_err(|_| BackendError::Internal("HSM task failed".into()))?;
            match res {
                Ok(v) => return Ok(v),
                Err(OpError::Final(e)) => return Err(e),
                Err(OpError::Stale) => {
                    drop(Object::take(obj));
                    last = "session of a replaced context".into();
                    stale += 1;
                    self.recover(epoch).await?;
                }
                Err(OpError::Dead) => {
                    // Nothing ran: discarded, the pool opens a new session in its place (as
                    // a recycle check did). Sessions the HSM dropped with its login fail
                    // next as not logged in, a fault that recovers.
                    drop(Object::take(obj));
                    self.core.stats.dead.fetch_add(1, Ordering::Relaxed);
                    last = "session closed behind the pool's back".into();
                    dead += 1;
                }
                Err(OpError::Fault { discard, why }) => {
                    if discard {
                        drop(Object::take(obj));
                    } else {
                        drop(obj);
                    }
                    last = why;
                    faults += 1;
                    if faults < 2 {
                        self.recover(epoch).await?;
                    }
                }
            }
        }
        Err(BackendError::Unavailable(last))
    }

    async fn recover(self: &Arc<Self>, seen_epoch: u64) -> Result<(), BackendError> {
        let inner = self.clone();
        tokio::task::spawn_blocking(move || inner.recover_blocking(seen_epoch))
            .await
            .map_err(|_| BackendError::Internal("HSM recovery task failed".into()))?
    }

    /// Drain the pool, drop the anchor, finalize and re-initialise the context.
    fn hard_reinit(&self) -> Result<(), String> {
        let removed = self.pool.retain(|_, _| false);
        let anchor = self
            .core
            .anchor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // A no-close-on-drop session: forgetting it closes nothing.
        drop(anchor);
        let res = self.core.global.reinitialize();
        // Now of an older generation: dropped without C_CloseSession.
        drop(removed);
        res
    }

    fn recover_blocking(&self, seen_epoch: u64) -> Result<(), BackendError> {
        let core = &self.core;
        let mut st = core.recovery.lock().unwrap_or_else(|e| e.into_inner());
        if core.keks().epoch != seen_epoch {
            return Ok(()); // another task already recovered
        }
        if let Some(t) = st.last_failure {
            if t.elapsed() < RECOVERY_HOLDOFF {
                return Err(BackendError::Unavailable(format!(
                    "HSM unavailable: {}",
                    st.last_error.as_deref().unwrap_or("recovery failed")
                )));
            }
        }
        // A fault right after a re-login means re-login is not enough: re-initialise.
        let soft_first =
            !matches!(st.last_soft, Some(t) if t.elapsed() <= Duration::from_millis(500));
        let mut delay = Duration::from_millis(20);
        let mut last = String::new();
        for round in 0..RECOVERY_ROUNDS {
            if round > 0 {
                std::thread::sleep(delay);
                delay *= 2;
            }
            if round == 0 && soft_first {
                match core.establish(false) {
                    Ok(()) => {
                        st.last_soft = Some(Instant::now());
                        st.last_failure = None;
                        core.stats.recoveries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(backend = %core.name, "pkcs11: recovered by re-login");
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::info!(backend = %core.name, error = %e, "pkcs11: re-login did not recover");
                    }
                }
            }
            if let Err(e) = self.hard_reinit() {
                last = e;
                continue;
            }
            match core.establish(true) {
                Ok(()) => {
                    st.last_failure = None;
                    st.last_soft = None;
                    core.stats.recoveries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(backend = %core.name, "pkcs11: recovered by re-initialising the context");
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            }
        }
        tracing::error!(backend = %core.name, error = %last, "pkcs11: recovery failed");
        st.last_failure = Some(Instant::now());
        st.last_error = Some(last.clone());
        Err(BackendError::Unavailable(format!(
            "HSM unavailable: {last}"
        )))
    }

    /// `background`: called by the periodic refresh task, so its find pass is counted apart.
    pub(super) fn refresh(&self, background: bool) -> Result<(), BackendError> {
        let core = &self.core;
        let mut st = core.recovery.lock().unwrap_or_else(|e| e.into_inner());
        if st
            .last_refresh
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        st.last_refresh = Some(Instant::now());
        let before = core.stats.finds.load(Ordering::Relaxed);
        let out = core.establish(false);
        if background {
            let made = core
                .stats
                .finds
                .load(Ordering::Relaxed)
                .saturating_sub(before);
            core.stats
                .background_finds
                .fetch_add(made, Ordering::Relaxed);
        }
        out
    }
}
