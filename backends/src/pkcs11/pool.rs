//! The deadpool-managed pool of PKCS#11 sessions.
//!
//! Sessions are opened once (on a blocking thread) and reused; the login is the process's,
//! made on the backend's anchor session. Sessions are opened "no close on drop": a session
//! of the current context generation is closed explicitly when discarded, one of an older
//! generation is simply forgotten (its handle number may belong to a new session now).
//! Recycling checks the generation; `Core::call` checks `C_GetSessionInfo` before each
//! operation, on the operation's blocking thread.

use super::context::{ck_name, Global};
use super::Core;
use crate::BackendError;
use cryptoki::session::Session;
use deadpool::managed::{Manager, Metrics, RecycleError, RecycleResult};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// One pooled session.
pub(crate) struct PooledSession {
    pub(crate) session: Option<Session>,
    /// Context generation the session was opened in.
    pub(crate) gen: u64,
    /// Set while a thread runs a PKCS#11 call on it (instrumentation: must never be seen
    /// set by a second thread).
    pub(crate) busy: AtomicBool,
    /// TEST ONLY: answer as a session the HSM closed (see `inject_dead_sessions`).
    #[cfg(feature = "fault-injection")]
    pub(crate) injected_dead: AtomicBool,
    global: Arc<Global>,
}

impl PooledSession {
    /// Whether the HSM still knows this session (`C_GetSessionInfo`; blocking).
    pub(crate) fn answers(&self, s: &Session) -> bool {
        #[cfg(feature = "fault-injection")]
        if self.injected_dead.load(Ordering::Relaxed) {
            return false;
        }
        s.get_session_info().is_ok()
    }
}

impl Drop for PooledSession {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            close_session(self.global.clone(), self.gen, s);
        }
    }
}

/// Close `s` if it belongs to the current context generation; forget it otherwise. Runs on
/// a blocking thread when a runtime is there.
pub(crate) fn close_session(global: Arc<Global>, gen: u64, s: Session) {
    let run = move || {
        let current = global.gate.read().unwrap_or_else(|e| e.into_inner());
        if *current == gen {
            let _ = s.close();
        }
        // else: a no-close-on-drop session of an old context; dropping it closes nothing.
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn_blocking(run);
        }
        Err(_) => run(),
    }
}

/// Counters shared by the pool and the backend.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) recoveries: AtomicU64,
    pub(crate) busy_now: AtomicUsize,
    pub(crate) peak_busy: AtomicUsize,
    pub(crate) overlaps: AtomicU64,
    pub(crate) finds: AtomicU64,
    /// The part of `finds` made by the periodic background refresh (never on a request).
    pub(crate) background_finds: AtomicU64,
    /// Pooled sessions found closed behind the pool's back, and discarded.
    pub(crate) dead: AtomicU64,
}

/// Marks a session busy for the duration of one PKCS#11 call sequence.
pub(crate) struct BusyGuard<'a> {
    stats: &'a Stats,
    session: &'a PooledSession,
}

impl<'a> BusyGuard<'a> {
    pub(crate) fn enter(stats: &'a Stats, session: &'a PooledSession) -> Self {
        if session.busy.swap(true, Ordering::AcqRel) {
            stats.overlaps.fetch_add(1, Ordering::Relaxed);
        }
        let now = stats.busy_now.fetch_add(1, Ordering::AcqRel) + 1;
        stats.peak_busy.fetch_max(now, Ordering::AcqRel);
        Self { stats, session }
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.stats.busy_now.fetch_sub(1, Ordering::AcqRel);
        self.session.busy.store(false, Ordering::Release);
    }
}

/// deadpool manager of [`PooledSession`]s.
pub(crate) struct SessionManager {
    pub(crate) core: Arc<Core>,
}

impl Core {
    /// Open one pool session on the current slot (blocking).
    pub(crate) fn open_pooled(&self) -> Result<PooledSession, BackendError> {
        let gen = self.global.gate.read().unwrap_or_else(|e| e.into_inner());
        let slot = self
            .keks()
            .slot
            .ok_or_else(|| BackendError::Unavailable("HSM token not found".into()))?;
        let session = self
            .global
            .pkcs11
            .open_rw_session_no_drop(slot)
            .map_err(|e| {
                BackendError::Unavailable(format!("cannot open a session: {}", ck_name(&e)))
            })?;
        Ok(PooledSession {
            session: Some(session),
            gen: *gen,
            busy: AtomicBool::new(false),
            #[cfg(feature = "fault-injection")]
            injected_dead: AtomicBool::new(false),
            global: self.global.clone(),
        })
    }
}

impl Manager for SessionManager {
    type Type = PooledSession;
    type Error = BackendError;

    async fn create(&self) -> Result<PooledSession, BackendError> {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || core.open_pooled())
            .await
            .map_err(|_| BackendError::Internal("session open task failed".into()))?
    }

    async fn recycle(&self, obj: &mut PooledSession, _: &Metrics) -> RecycleResult<BackendError> {
        // Only the generation, without blocking: a writer holds the gate only while it
        // replaces the context, whose sessions are then all stale. Whether the session still
        // answers is checked on the blocking thread that runs the operation (`Core::call`),
        // not here: a check here took a second hop to a blocking thread per HSM call.
        let current = match obj.global.gate.try_read() {
            Ok(g) => Some(*g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(*p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if obj.session.is_some() && current == Some(obj.gen) {
            Ok(())
        } else {
            Err(RecycleError::message("session of a replaced context"))
        }
    }
}
