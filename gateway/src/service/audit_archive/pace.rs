//! How an archiver pass spreads its database work out (docs/audit-archive.md, "Pacing"): a
//! paced pass reads a chain's events a page at a time, has the database check a segment's
//! rows a step at a time before it records the segment, and deletes the rows a recorded
//! segment covers a chunk at a time, each step a few milliseconds of the database's work,
//! sleeping between steps to hold the pass to its rate. A segment of 50,000 events is thus
//! never one burst of reads, checks or deletes beside the requests the database serves. An
//! unpaced pass (`--rate 0`) reads, checks and deletes a segment at once.

use shardgate_store::{AuditSegment, Store, StoreError};
use tokio::time::Instant;

use crate::domain::failpoint::failpoint;

/// Events read per page, rows checked per step, and covered rows deleted per call, by a
/// paced pass.
pub(super) const PACED_STEP: usize = 2_000;

/// Units of work per event: read, checked, deleted.
const UNITS_PER_EVENT: f64 = 3.0;

/// A pass's pace: the work done since `started` against `rate_per_sec` events a second.
/// Each event is read once, checked once and deleted once, so it counts as three units of
/// work.
#[derive(Debug)]
pub(super) struct Pace {
    rate_per_sec: u64,
    started: Instant,
    units: u64,
}

impl Pace {
    /// A pace starting now; `rate_per_sec` 0: unpaced.
    pub(super) fn new(rate_per_sec: u64) -> Self {
        Self {
            rate_per_sec,
            started: Instant::now(),
            units: 0,
        }
    }

    /// Whether the pass is held to a rate.
    pub(super) fn paced(&self) -> bool {
        self.rate_per_sec > 0
    }

    /// How many events (or rows) one step reads or deletes: [`PACED_STEP`] when paced,
    /// `whole` (a segment's worth) when not.
    pub(super) fn step_size(&self, whole: usize) -> usize {
        if self.paced() {
            PACED_STEP.min(whole.max(1))
        } else {
            whole.max(1)
        }
    }

    /// Count `units` of work done (an event read, a row checked or a row deleted is one),
    /// then sleep until
    /// the work so far is within the rate.
    pub(super) async fn step(&mut self, units: u64) {
        self.units = self.units.saturating_add(units);
        if !self.paced() {
            return;
        }
        let secs = self.units as f64 / (UNITS_PER_EVENT * self.rate_per_sec as f64);
        tokio::time::sleep_until(self.started + std::time::Duration::from_secs_f64(secs)).await;
    }
}

/// Have the store check a segment's hot rows a step at a time, so that recording it next
/// reads the stored steps instead of every row at once.
pub(super) async fn check(
    store: &dyn Store,
    seg: &AuditSegment,
    pace: &mut Pace,
) -> Result<(), StoreError> {
    let step = i64::try_from(PACED_STEP).unwrap_or(i64::MAX);
    let mut from = seg.first_seq;
    while from <= seg.last_seq {
        let to = seg.last_seq.min(from.saturating_add(step - 1));
        let n = store
            .check_audit_range(&seg.chain_id, seg.first_seq, (from, to))
            .await?;
        failpoint("archive_after_check");
        pace.step(n).await;
        from = to + 1;
    }
    Ok(())
}

/// Delete the chain's hot rows that its recorded segments cover, a step at a time: the rows
/// deleted. What a stopped pass recorded but did not delete goes the same way.
pub(super) async fn drain(
    store: &dyn Store,
    chain: &str,
    pace: &mut Pace,
    whole: usize,
) -> Result<u64, StoreError> {
    let limit = i64::try_from(pace.step_size(whole)).unwrap_or(i64::MAX);
    let mut total = 0u64;
    loop {
        let gone = store.delete_archived_audit(chain, limit).await?;
        if gone == 0 {
            return Ok(total);
        }
        failpoint("archive_after_delete");
        metrics::counter!("shardgate_audit_archived_events_total").increment(gone);
        total += gone;
        pace.step(gone).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{Pace, PACED_STEP};

    #[tokio::test]
    async fn pacing_holds_the_pass_to_its_rate() {
        let mut pace = Pace::new(1000);
        // 300 events read, checked and deleted (900 units) at 1,000 events a second: not
        // before 300 ms after the start.
        pace.step(400).await;
        pace.step(500).await;
        assert!(pace.started.elapsed() >= std::time::Duration::from_millis(300));
    }

    #[tokio::test]
    async fn an_unpaced_pass_steps_a_segment_at_once_and_never_sleeps() {
        let mut pace = Pace::new(0);
        assert_eq!(pace.step_size(50_000), 50_000);
        pace.step(u64::MAX).await;
        assert!(pace.started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(Pace::new(20_000).step_size(50_000), PACED_STEP);
        assert_eq!(Pace::new(20_000).step_size(10), 10);
    }
}
