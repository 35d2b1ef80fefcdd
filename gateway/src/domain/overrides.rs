//! Operators' overrides of backend breakers, cluster-wide: `circuit:open` (maintenance, with a
//! time to live) and `circuit:close` are rows in the database (`breaker_overrides`), each with
//! its audit event. The replica that takes the request applies it at once; every other one
//! reads the rows it has not applied every `[breaker] refresh_ms` and applies them in order, so
//! the newest override of a backend wins everywhere. A replica starting applies each
//! backend's newest override that is still in force (an `open` whose time has not run out).

use crate::domain::breaker::Guarded;
use shardgate_store::{BreakerOverride, Store, StoreError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Overrides read per query.
const PAGE: i64 = 500;

/// This replica's view of the overrides: the breakers they act on and the last one applied.
pub struct Overrides {
    store: Arc<dyn Store>,
    breakers: BTreeMap<String, Arc<Guarded>>,
    applied: AtomicI64,
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overrides")
            .field("applied", &self.applied.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Overrides {
    /// Apply the overrides in force now; later ones come from [`Overrides::refresh`].
    pub async fn start(
        store: Arc<dyn Store>,
        breakers: BTreeMap<String, Arc<Guarded>>,
    ) -> Result<Self, StoreError> {
        let latest = store.latest_breaker_overrides().await?;
        let this = Self {
            store,
            breakers,
            applied: AtomicI64::new(0),
        };
        // The highest id of all: the newest of the backend that changed last.
        for o in &latest {
            if o.action == "open" {
                this.act(o);
            }
            this.applied.fetch_max(o.id, Ordering::SeqCst);
        }
        Ok(this)
    }

    /// Apply one override read from the database, and count it as applied.
    fn apply(&self, o: &BreakerOverride) {
        self.act(o);
        self.applied.fetch_max(o.id, Ordering::SeqCst);
    }

    /// Act on one override now (the one this replica just committed, or one read): a backend
    /// this replica does not configure is left alone; an `open` that ran out does nothing.
    /// Not counted as applied: the refresh reads it again in its turn (acting twice is
    /// harmless), so overrides committed meanwhile by other replicas are never skipped.
    pub fn act(&self, o: &BreakerOverride) {
        let Some(g) = self.breakers.get(&o.backend) else {
            tracing::debug!(backend = %o.backend, "override of a backend not configured here");
            return;
        };
        match o.action.as_str() {
            "open" => {
                let left = o.expires_ms.saturating_sub(crate::now_ms());
                if let Ok(ms) = u64::try_from(left) {
                    if ms > 0 {
                        g.force_open(Instant::now() + Duration::from_millis(ms));
                    }
                }
            }
            "close" => g.force_close(),
            other => tracing::warn!(action = other, "unknown breaker override ignored"),
        }
    }

    /// Apply every override this replica has not applied yet, oldest first; how many.
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        loop {
            let after = self.applied.load(Ordering::SeqCst);
            let page = self.store.breaker_overrides_after(after, PAGE).await?;
            for o in &page {
                self.apply(o);
            }
            n += page.len();
            if page.len() < usize::try_from(PAGE).unwrap_or(usize::MAX) {
                return Ok(n);
            }
        }
    }

    /// Read new overrides every `every` (zero: never) while alive.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) {
        if every.is_zero() {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(o) = weak.upgrade() else { return };
                if let Err(e) = o.refresh().await {
                    tracing::warn!(error = %e, "reading breaker overrides failed; will retry");
                }
            }
        });
    }
}
