//! Bulk yields to higher classes while they are active (issue 30, item 3): the shares of
//! [`super::Bulkhead`] keep slots free for `standard` and `critical` calls, but a backend at
//! its capacity (one moto or one HSM serving every slot) still serves a critical call behind
//! the bulk calls it runs. So when a higher-class call finds the bulk share full, bulk gives
//! back three quarters of its share (it keeps at least one slot) until no higher-class call
//! has come for [`YIELD_HOLD`]; bulk keeps its whole share whenever no higher class is active.
//!
//! The permits are taken by a task of their own with `acquire_many_owned`: it waits its turn
//! in the bulk semaphore's FIFO queue like any bulk call, so no bulk call running is
//! interrupted, nothing is taken out of turn, and a request cancelled meanwhile leaves
//! nothing behind.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// How long bulk stays reduced after the last higher-class call that found its share full.
pub(crate) const YIELD_HOLD: Duration = Duration::from_secs(1);

/// The yield state of one bulkhead.
pub(crate) struct Yield {
    /// The bulk share's semaphore (shared with the bulkhead).
    bulk: Arc<Semaphore>,
    /// Bulk permits a yield takes: three quarters of the share, leaving at least one.
    take: u32,
    hold: Duration,
    /// When the counting started; `last_higher` is measured from it.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last higher-class call that found bulk full.
    last_higher: AtomicU64,
    /// A yield task is running.
    active: AtomicBool,
    /// Yields started.
    started: AtomicU64,
}

impl Yield {
    /// Over `bulk`, whose share is `share` permits.
    pub(crate) fn new(bulk: Arc<Semaphore>, share: usize, hold: Duration) -> Self {
        let keep = (share / 4).max(1);
        let take = u32::try_from(share.saturating_sub(keep)).unwrap_or(u32::MAX);
        Self {
            bulk,
            take,
            hold,
            epoch: Instant::now(),
            last_higher: AtomicU64::new(0),
            active: AtomicBool::new(false),
            started: AtomicU64::new(0),
        }
    }

    /// A higher-class call found the bulk share full: keep bulk reduced for another `hold`,
    /// starting a yield if none runs. Outside a Tokio runtime (never in the gateway) nothing
    /// is started.
    pub(crate) fn higher_class_waiting(self: &Arc<Self>) {
        if self.take == 0 {
            return;
        }
        self.last_higher.store(self.now_ms(), Ordering::Relaxed);
        if self.active.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.active.store(false, Ordering::Release);
            return;
        };
        self.started.fetch_add(1, Ordering::Relaxed);
        rt.spawn(self.clone().run());
    }

    /// Take the permits in turn, hold them while higher classes keep coming, give them back.
    async fn run(self: Arc<Self>) {
        if let Ok(permits) = self.bulk.clone().acquire_many_owned(self.take).await {
            let hold_ms = u64::try_from(self.hold.as_millis()).unwrap_or(u64::MAX);
            loop {
                let since = self
                    .now_ms()
                    .saturating_sub(self.last_higher.load(Ordering::Relaxed));
                if since >= hold_ms {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(hold_ms - since)).await;
            }
            drop(permits);
        }
        self.active.store(false, Ordering::Release);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Yields started so far.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// A yield holds (or waits for) bulk permits now.
    #[cfg(test)]
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }
}
