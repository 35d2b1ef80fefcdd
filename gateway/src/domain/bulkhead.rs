//! The bulkhead of one backend instance, admitting by priority class under overload (issue
//! 30, item 3): at most `max_concurrent` calls on the backend at once, at most `max_queue`
//! waiting, and past that `Shed("backend busy")` at once, with a `Retry-After` of the time
//! the queue ahead takes at the recent pace of calls.
//!
//! Classes ([`shardgate_policy::Class`]) share the slots unequally. With `r` =
//! `reserve_pct` of the slots (rounded up): `bulk` calls hold at most `max_concurrent - 2r`
//! slots, `bulk` and `standard` together at most `max_concurrent - r`, and `critical` calls
//! may hold every slot; so `r` slots are always left to `critical` and `2r` to `standard` and
//! `critical`, whatever floods the backend. Each class waits in its own queue (a gate
//! semaphore in front of the slots), and a class may join the waiting only while fewer than
//! its share of `max_queue` wait (`bulk` half, `standard` nine tenths, `critical` all), so
//! the lowest class is shed first.
//!
//! The class is asked for ([`crate::domain::priority::current`]) only when a call cannot take
//! a slot as `bulk` would: a call on an uncontended backend is admitted before anyone knows
//! its class, and counts against the `bulk` share while it runs.

use shardgate_backends::BackendError;
use shardgate_policy::Class;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long `waiting` queued calls and the `slots` running take to drain, `slots` at a time,
/// each taking `op_micros`.
pub(crate) fn drain_time(waiting: usize, slots: usize, op_micros: u64) -> Duration {
    let slots = slots.max(1) as u64;
    let ahead = (waiting as u64).saturating_add(slots);
    Duration::from_micros(ahead.saturating_mul(op_micros) / slots)
}

/// A call turned away, with when a retry can be admitted.
pub(crate) fn shed(reason: &str, retry_after: Duration) -> BackendError {
    BackendError::Shed {
        reason: reason.to_string(),
        retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Slots and queue of one backend instance.
pub(crate) struct Bulkhead {
    max_concurrent: usize,
    max_queue: usize,
    /// Every running call holds one.
    slots: Semaphore,
    /// Held by every `standard` and `bulk` call while it waits for a slot or runs.
    below_critical: Semaphore,
    /// Held by every `bulk` call (and every call admitted before its class was asked).
    bulk: Semaphore,
    waiting: AtomicUsize,
    rejected: AtomicU64,
    shed_by_class: [AtomicU64; 3],
    /// Moving average of a call's time on the backend (microseconds).
    op_micros: AtomicU64,
}

/// A running call's hold on the bulkhead; dropping it frees the slot and the gates.
pub(crate) struct Permit<'a> {
    _slot: SemaphorePermit<'a>,
    _below_critical: Option<SemaphorePermit<'a>>,
    _bulk: Option<SemaphorePermit<'a>>,
}

/// One call counted as waiting until dropped, however its wait ends (admitted, refused, or
/// the request cancelled while it waited: a client that hangs up must not leave a count
/// behind that would shed every later call).
struct Waiting<'a> {
    count: &'a AtomicUsize,
    /// Calls waiting before this one joined.
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn join(count: &'a AtomicUsize) -> Self {
        let ahead = count.fetch_add(1, Ordering::SeqCst);
        Self { count, ahead }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Slots `bulk` and `standard` may hold with `max_concurrent` slots and `reserve_pct`.
pub(crate) fn shares(max_concurrent: usize, reserve_pct: u8) -> (usize, usize) {
    let n = max_concurrent.max(1);
    let pct = usize::from(reserve_pct.min(50));
    let r = (n * pct).div_ceil(100);
    let below_critical = n.saturating_sub(r).max(1);
    let bulk = n.saturating_sub(2 * r).max(1);
    (bulk, below_critical)
}

impl Bulkhead {
    pub(crate) fn new(max_concurrent: usize, max_queue: usize, reserve_pct: u8) -> Self {
        let (bulk, below_critical) = shares(max_concurrent, reserve_pct);
        Self {
            max_concurrent: max_concurrent.max(1),
            max_queue,
            slots: Semaphore::new(max_concurrent.max(1)),
            below_critical: Semaphore::new(below_critical),
            bulk: Semaphore::new(bulk),
            waiting: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            shed_by_class: Default::default(),
            op_micros: AtomicU64::new(0),
        }
    }

    /// A slot for the running call: at once when free (for `bulk`, or for its class once
    /// asked), else after waiting in its class's queue; `Err(Shed)` when that queue is past
    /// its share or the call's deadline ends first.
    pub(crate) async fn enter(&self) -> Result<Permit<'_>, BackendError> {
        if let Some(p) = self.try_enter(Class::Bulk) {
            return Ok(p);
        }
        let class = crate::domain::priority::current().await;
        if let Some(p) = self.try_enter(class) {
            return Ok(p);
        }
        let queued = Waiting::join(&self.waiting);
        if queued.ahead >= self.queue_share(class) {
            drop(queued);
            return Err(self.refuse(class));
        }
        let wait = shardgate_backends::deadline::clamp(Duration::from_secs(3600));
        let got = tokio::time::timeout(wait, self.acquire(class)).await;
        drop(queued);
        match got {
            Ok(Some(p)) => Ok(p),
            _ => Err(self.refuse(class)),
        }
    }

    /// Calls of `class` that may wait: `bulk` half the queue, `standard` nine tenths.
    fn queue_share(&self, class: Class) -> usize {
        match class {
            Class::Bulk => self.max_queue / 2,
            Class::Standard => self.max_queue - self.max_queue / 10,
            Class::Critical => self.max_queue,
        }
    }

    fn try_enter(&self, class: Class) -> Option<Permit<'_>> {
        let bulk = match class {
            Class::Bulk => Some(self.bulk.try_acquire().ok()?),
            _ => None,
        };
        let below_critical = match class {
            Class::Critical => None,
            _ => Some(self.below_critical.try_acquire().ok()?),
        };
        Some(Permit {
            _slot: self.slots.try_acquire().ok()?,
            _below_critical: below_critical,
            _bulk: bulk,
        })
    }

    /// Wait in `class`'s queue, then for a slot; `None` only if a semaphore was closed
    /// (never: they live as long as the bulkhead).
    async fn acquire(&self, class: Class) -> Option<Permit<'_>> {
        let bulk = match class {
            Class::Bulk => Some(self.bulk.acquire().await.ok()?),
            _ => None,
        };
        let below_critical = match class {
            Class::Critical => None,
            _ => Some(self.below_critical.acquire().await.ok()?),
        };
        Some(Permit {
            _slot: self.slots.acquire().await.ok()?,
            _below_critical: below_critical,
            _bulk: bulk,
        })
    }

    fn refuse(&self, class: Class) -> BackendError {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.shed_by_class[class.index()].fetch_add(1, Ordering::Relaxed);
        self.busy()
    }

    /// A full bulkhead's answer: retry when the queue ahead and the calls running would have
    /// drained at the recent pace (`max_concurrent` at a time, each the moving average).
    fn busy(&self) -> BackendError {
        shed(
            "backend busy",
            drain_time(
                self.waiting.load(Ordering::Relaxed),
                self.max_concurrent,
                self.op_micros.load(Ordering::Relaxed),
            ),
        )
    }

    /// Fold one call's time on the backend into the moving average (weight 1/8; a lost race
    /// loses one sample).
    pub(crate) fn record(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let old = self.op_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            took
        } else {
            old - old / 8 + took / 8
        };
        self.op_micros.store(new, Ordering::Relaxed);
    }

    /// Calls running.
    pub(crate) fn in_use(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    /// Calls waiting, all classes.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Calls refused, all classes.
    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Calls of `class` refused.
    pub(crate) fn shed_of(&self, class: Class) -> u64 {
        self.shed_by_class[class.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
