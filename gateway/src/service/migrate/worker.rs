//! [`Worker`]: works one job through its items: claim a batch under a lease, re-wrap each item
//! on its target, prove the target opens the new wrap, commit with a compare-and-swap, its
//! audit event and the job's counters in one transaction.

use crate::domain::audit::{ChainSeal, Event, CHAIN_WAIT};
use crate::domain::envelope;
use crate::domain::error::DomainError;
use crate::service::settings::MigrationConfig;
use crate::service::state::Services;
use shardgate_backends::{BackendError, ShardIdentity, WrappedKey};
use shardgate_store::{
    job_state, ClaimedItem, CommitResult, ItemCommit, ItemKey, ItemOutcome, MigrationJob,
    Transition,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::failpoint::failpoint;

/// Tries of one item while its backends answer "unavailable" (about 30 s with backoff).
const TRANSIENT_ATTEMPTS: u32 = 10;

/// Who acts in audit events written by workers.
const ACTOR: &str = "migration-worker";

/// Works on one job until it is settled, paused or cancelled.
pub struct Worker<'a> {
    state: &'a Services,
    cfg: &'a MigrationConfig,
    worker_id: &'a str,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// `concurrency` permits: the worker's backend calls in flight at once, across its
    /// pipelined batches.
    calls: tokio::sync::Semaphore,
}

/// Why a worker loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every item is settled; the job is now in a final state.
    Settled,
    /// Paused, cancelled or finished by someone else.
    NotRunning,
}

impl<'a> Worker<'a> {
    /// A worker with this process's settings.
    pub fn new(state: &'a Services, cfg: &'a MigrationConfig, worker_id: &'a str) -> Self {
        Self {
            state,
            cfg,
            worker_id,
            stopping: Arc::default(),
            calls: tokio::sync::Semaphore::new(
                usize::try_from(cfg.concurrency.max(1)).unwrap_or(1),
            ),
        }
    }

    /// Stop at the next safe point (between items) once `flag` is set.
    pub fn stopping(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.stopping = flag;
        self
    }

    /// Claim, re-wrap and commit until nothing is left; `progress` sees the job after
    /// every batch. Up to `pipeline` batches are in flight at once (see
    /// [`MigrationConfig::pipeline`]), sharing one pace.
    pub async fn run(
        &self,
        id: &str,
        progress: impl FnMut(&MigrationJob),
    ) -> Result<Stop, DomainError> {
        let pace = Duration::from_secs(1) / self.cfg.rate_per_sec.max(1);
        let lanes = usize::try_from(self.cfg.pipeline.clamp(1, 16)).unwrap_or(1);
        let shared = Lanes {
            cursor: Mutex::new(None),
            next_slot: Mutex::new(Instant::now()),
            last_log: Mutex::new(Instant::now()),
            progress: Mutex::new(progress),
        };
        let stops =
            futures::future::try_join_all((0..lanes).map(|_| self.lane(id, pace, &shared))).await?;
        Ok(if stops.contains(&Stop::Settled) {
            Stop::Settled
        } else {
            Stop::NotRunning
        })
    }

    /// One claim / re-wrap / commit loop of [`Worker::run`].
    async fn lane<F: FnMut(&MigrationJob)>(
        &self,
        id: &str,
        pace: Duration,
        shared: &Lanes<F>,
    ) -> Result<Stop, DomainError> {
        loop {
            let Some(job) = self.state.store.get_migration_job(id).await? else {
                return Err(DomainError::NotFound("no such migration job".into()));
            };
            shared.progress(&job);
            if job.state != job_state::RUNNING
                || self.stopping.load(std::sync::atomic::Ordering::SeqCst)
            {
                return Ok(Stop::NotRunning);
            }
            if shared.due_for_log() {
                tracing::info!(job = %id, done = job.done, failed = job.failed, skipped = job.skipped, total = job.total, "migration progress");
            }
            let after = shared.cursor();
            let items = self
                .state
                .store
                .claim_migration_items(
                    id,
                    self.worker_id,
                    crate::now_ms(),
                    i64::try_from(self.cfg.lease_ms).unwrap_or(i64::MAX),
                    claim_size(self.cfg.batch_size, self.cfg.rate_per_sec),
                    after.as_ref(),
                )
                .await?;
            if let Some(last) = items.last() {
                shared.advance(ItemKey::of(last));
            } else if let Some(seen) = &after {
                // Nothing past the cursor says nothing about the items before it.
                shared.rewind(seen);
                continue;
            }
            if !items.is_empty() {
                // The job may have been started by a policy apply this replica has yet to
                // poll: read the head after the claim (so after the job existed) and before
                // planning, so a re-wrap is never planned by an older version.
                if let Err(e) = self.state.policy.refresh().await {
                    tracing::warn!(job = %id, error = %e, "policy: reading the database's version failed");
                }
            }
            if items.is_empty() {
                if job.remaining() == 0 && self.catch_up(&job).await? {
                    continue;
                }
                if job.remaining() == 0 {
                    self.settle(&job).await?;
                    if let Some(job) = self.state.store.get_migration_job(id).await? {
                        shared.progress(&job);
                    }
                    return Ok(Stop::Settled);
                }
                // Others hold the rest (another lane, another worker, or a killed worker
                // whose lease has yet to expire).
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            // Pace per item: a batch's re-wraps start at their own slots, `pace` apart, so a
            // batch re-wrapped `concurrency` at a time is not a burst on the target backend
            // (online reads share it); at a rate that does not bound the job the slots are
            // all due at once. The lanes share the slots, so the pace is the job's.
            let now = Instant::now();
            let n = u32::try_from(items.len()).unwrap_or(u32::MAX);
            let (first, next_slot) = shared.reserve(now, pace.saturating_mul(n));
            // Whatever a batch waits on (a backend, the database, the audit chain), it never
            // holds the job past its lease: once that ran out its items are free for anyone,
            // so the worker drops the batch (a dropped commit rolls back) and claims again.
            // (The lease counts from the claim; waiting for the slots is not the batch's fault.)
            let lease = Duration::from_millis(self.cfg.lease_ms.max(1)) + (next_slot - now);
            match tokio::time::timeout(lease, self.batch(&job, &items, first, pace)).await {
                Ok(r) => r?,
                Err(_) => {
                    tracing::warn!(job = %id, items = items.len(), lease_ms = self.cfg.lease_ms, "migration batch outlived its lease; dropped (its items are claimed again)");
                }
            }
        }
    }

    /// Every item settled, but a second snapshot pending (a policy apply's job): wait for its
    /// time, take it (one replica does; the items it adds are worked like the others), and
    /// say whether the job goes on. `false`: nothing pending, the job may settle.
    async fn catch_up(&self, job: &MigrationJob) -> Result<bool, DomainError> {
        let Some(at) = job.catch_up_at else {
            return Ok(false);
        };
        let wait = at.saturating_sub(crate::now_ms());
        if wait > 0 {
            let ms = u64::try_from(wait).unwrap_or(u64::MAX).min(500);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return Ok(true);
        }
        if let Some(added) = self
            .state
            .store
            .catch_up_migration_job(&job.id, crate::now_ms())
            .await?
        {
            tracing::info!(job = %job.id, added, "migration job: second snapshot taken (writes placed by the previous policy version)");
        }
        Ok(true)
    }

    /// Every item settled: the job ends `completed` or `completed_with_errors` (once, even
    /// with several workers: the transition only happens from `running`).
    async fn settle(&self, job: &MigrationJob) -> Result<(), DomainError> {
        let to = if job.failed > 0 {
            job_state::COMPLETED_WITH_ERRORS
        } else {
            job_state::COMPLETED
        };
        let event = Event::new("", ACTOR, &format!("migration.{to}")).detail(format!(
            "job={} done={} failed={} skipped={}",
            job.id, job.done, job.failed, job.skipped
        ));
        let mut guard = self.state.audit.lock().await?;
        let record = guard.begin(&event);
        let result = self
            .state
            .store
            .set_migration_job_state(&job.id, &[job_state::RUNNING], to, crate::now_ms(), &record)
            .await;
        let committed = matches!(result, Ok(Transition::Done(_)));
        guard.finish(committed.then_some(&record), &result).await;
        result?;
        if committed {
            tracing::info!(job = %job.id, state = to, done = job.done, failed = job.failed, skipped = job.skipped, "migration job finished");
        }
        Ok(())
    }

    /// Re-wrap a claimed batch (in chunks, up to `concurrency` chunks at once) and commit
    /// every outcome in one transaction, one audit event per item.
    async fn batch(
        &self,
        job: &MigrationJob,
        items: &[ClaimedItem],
        first: Instant,
        pace: Duration,
    ) -> Result<(), DomainError> {
        let started = Instant::now();
        let decided = self.decide(job, items, first, pace).await;
        failpoint("before_commit");
        let results = self.commit_batch(job, items, &decided).await?;
        failpoint("after_commit");
        self.count(job, items, &decided, &results).await?;
        let secs = started.elapsed().as_secs_f64();
        if secs > 0.0 {
            metrics::gauge!("shardgate_migration_items_per_second").set(items.len() as f64 / secs);
        }
        Ok(())
    }

    /// Plan every item, re-wrap those that move (in chunks, each started at the slot of its
    /// first item), and return one decision per item, in order.
    async fn decide(
        &self,
        job: &MigrationJob,
        items: &[ClaimedItem],
        first: Instant,
        pace: Duration,
    ) -> Vec<Decided> {
        use futures::StreamExt as _;
        let mut decided: Vec<Option<Decided>> = Vec::with_capacity(items.len());
        let mut work: Vec<Planned> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match self.plan(job.selector.key_version_below, item) {
                Plan::Decided(d) => decided.push(Some(d)),
                Plan::Rewrap(p) => {
                    decided.push(None);
                    work.push(Planned { index: i, ..p });
                }
            }
        }
        // Chunks of consecutive items with the same source and target, each started at the
        // slot of its first item: one backend call (one HSM checkout) per chunk. At a pace
        // where items are due further apart than `CHUNK_WINDOW` a chunk is one item, so a
        // paced job re-wraps one at a time, as evenly as before.
        let per_chunk = chunk_len(pace, work.len(), self.cfg.concurrency);
        let mut chunks: Vec<Vec<Planned>> = Vec::new();
        for p in work {
            match chunks.last_mut() {
                Some(c)
                    if c.len() < per_chunk
                        && c.first().is_some_and(|f| f.from == p.from && f.to == p.to) =>
                {
                    c.push(p);
                }
                _ => chunks.push(vec![p]),
            }
        }
        // Built up front (not mapped inside the stream) so the worker's future stays `Send`
        // for any lifetime `tokio::spawn` asks of it.
        let pending: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let at = chunk.first().map_or(0, |p| p.index);
                let due = tokio::time::Instant::from_std(
                    first + pace.saturating_mul(u32::try_from(at).unwrap_or(u32::MAX)),
                );
                let run = self.rewrap_chunk(&job.id, chunk);
                async move {
                    tokio::time::sleep_until(due).await;
                    run.await
                }
            })
            .collect();
        let done: Vec<Vec<(usize, Decided)>> = futures::stream::iter(pending)
            .buffer_unordered(usize::try_from(self.cfg.concurrency.max(1)).unwrap_or(1))
            .collect()
            .await;
        for (i, d) in done.into_iter().flatten() {
            if let Some(slot) = decided.get_mut(i) {
                *slot = Some(d);
            }
        }
        decided
            .into_iter()
            .map(|d| {
                d.unwrap_or_else(|| Decided {
                    outcome: ItemOutcome::Failed {
                        error: "internal: item lost in its batch".into(),
                    },
                    from: String::new(),
                    to: String::new(),
                })
            })
            .collect()
    }

    /// Commit the decisions of a batch in one transaction, one audit event per item (again
    /// while the audit chain is busy); settle item by item when the batch is no longer all
    /// this worker's.
    async fn commit_batch(
        &self,
        job: &MigrationJob,
        items: &[ClaimedItem],
        decided: &[Decided],
    ) -> Result<Vec<CommitResult>, DomainError> {
        let events: Vec<Event> = items
            .iter()
            .zip(decided)
            .map(|(item, d)| rewrap_event(&job.id, item, d))
            .collect();
        let commits: Vec<ItemCommit<'_>> = items
            .iter()
            .zip(decided)
            .map(|(item, d)| ItemCommit {
                account: &item.row.account,
                shard: &item.row.shard,
                version: item.row.version,
                old_wrapped_dek: &item.row.wrapped_dek,
                outcome: &d.outcome,
            })
            .collect();
        // The chain is taken only once the batch's rows are written (see `LateSeal`): online
        // requests' audit events wait for the audit insert and the commit, not the batch.
        let result = loop {
            let mut seal = ChainSeal::new(&self.state.audit, &events, CHAIN_WAIT);
            let result = self
                .state
                .store
                .commit_migration_batch(
                    &job.id,
                    self.worker_id,
                    &commits,
                    crate::now_ms(),
                    &mut seal,
                )
                .await;
            let busy = seal.timed_out();
            // Nothing is stored for `None`: the chain head stays where it was.
            seal.finish(matches!(result, Ok(Some(_))), &result).await;
            if !busy {
                break result;
            }
            metrics::counter!("shardgate_migration_chain_waits_total").increment(1);
            tracing::debug!(job = %job.id, "audit chain busy at a batch commit; rolled back, committing again");
        };
        Ok(match result? {
            Some(r) => r,
            None => {
                // Some item is no longer this worker's (its lease ran out and another worker
                // took it) or the job stopped: settle what is still ours one at a time.
                let mut r = Vec::with_capacity(items.len());
                for (item, d) in items.iter().zip(decided) {
                    r.push(self.commit_one(job, item, d).await?);
                }
                r
            }
        })
    }

    /// Count each item's outcome, and record what happened to items whose row changed under
    /// the batch (their records were sealed before the outcome was known).
    async fn count(
        &self,
        job: &MigrationJob,
        items: &[ClaimedItem],
        decided: &[Decided],
        results: &[CommitResult],
    ) -> Result<(), DomainError> {
        let mut notes = Vec::new();
        for ((item, d), res) in items.iter().zip(decided).zip(results) {
            let outcome = match (res, &d.outcome) {
                (CommitResult::NotClaimed, _) => continue,
                (CommitResult::RowChanged, _) | (_, ItemOutcome::Skipped) => "skipped",
                (_, ItemOutcome::Moved { .. }) => "done",
                (_, ItemOutcome::Failed { .. }) => "failed",
            };
            metrics::counter!("shardgate_migration_items_total", "outcome" => outcome).increment(1);
            if *res == CommitResult::RowChanged {
                notes.push(superseded_event(&job.id, item));
            }
        }
        if !notes.is_empty() {
            // The records above were sealed before the outcome was known; say what happened.
            self.state.audit.record_all(notes).await?;
        }
        Ok(())
    }

    /// Commit one item on its own (the fallback when its batch could not commit as a whole).
    async fn commit_one(
        &self,
        job: &MigrationJob,
        item: &ClaimedItem,
        d: &Decided,
    ) -> Result<CommitResult, DomainError> {
        let row = &item.row;
        let event = rewrap_event(&job.id, item, d);
        let mut guard = self.state.audit.lock().await?;
        let record = guard.begin(&event);
        let result = self
            .state
            .store
            .commit_migration_item(
                &job.id,
                self.worker_id,
                &row.account,
                &row.shard,
                row.version,
                &row.wrapped_dek,
                &d.outcome,
                crate::now_ms(),
                &record,
            )
            .await;
        // NotClaimed changes nothing, so its record was not stored.
        let stored = matches!(
            result,
            Ok(CommitResult::Committed | CommitResult::RowChanged)
        );
        guard.finish(stored.then_some(&record), &result).await;
        Ok(result?)
    }

    /// What one item needs, decided without a backend call: nothing (already where the
    /// policy wants it), a failure (no policy, no backend, a malformed row), or a re-wrap.
    fn plan(&self, key_version_below: Option<i64>, item: &ClaimedItem) -> Plan {
        let row = &item.row;
        let from = row.backend.clone();
        let decided = |outcome, to: String| {
            Plan::Decided(Decided {
                outcome,
                from: from.clone(),
                to,
            })
        };
        let failed = |error: String| ItemOutcome::Failed { error };
        let target = match self.state.policy.place(&row.account, &item.tier) {
            Ok(p) => p.backend,
            Err(e) => return decided(failed(format!("policy: {e}")), from.clone()),
        };
        let stale_key = key_version_below.is_some_and(|n| row.key_version < n);
        if target == row.backend && !stale_key {
            return decided(ItemOutcome::Skipped, target);
        }
        if self.state.backend(&row.backend).is_none() || self.state.backend(&target).is_none() {
            return decided(
                failed("a backend of this row is not configured".into()),
                target,
            );
        }
        // The row's own identity (its format included): a re-wrap keeps the row's format,
        // so its ciphertext and key commitment stay valid.
        match envelope::wrapped_of(row) {
            Ok((id, wrapped)) => Plan::Rewrap(Planned {
                index: 0,
                from,
                to: target,
                id,
                wrapped,
            }),
            Err(e) => decided(failed(backend_text(&e)), target),
        }
    }

    /// Re-wrap a chunk (one source, one target), retrying the items whose backend was
    /// unavailable: a backend that is down (or behind an open breaker) is not a verdict on
    /// the row. Returns each item's index in its batch with what was decided.
    async fn rewrap_chunk(&self, job_id: &str, chunk: Vec<Planned>) -> Vec<(usize, Decided)> {
        let mut out = Vec::with_capacity(chunk.len());
        let mut todo = chunk;
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        while !todo.is_empty() {
            let results = {
                // Never closed, so acquiring only waits.
                let _permit = self.calls.acquire().await.ok();
                // Re-wraps are background work: the first shed when a backend is overloaded.
                crate::domain::priority::scoped(
                    crate::domain::priority::Ask::Known(shardgate_policy::Class::Bulk),
                    self.rewrap_many(&todo),
                )
                .await
            };
            let mut again = Vec::new();
            for (p, (outcome, transient)) in todo.into_iter().zip(results) {
                if transient && attempt < TRANSIENT_ATTEMPTS {
                    again.push(p);
                } else {
                    out.push((
                        p.index,
                        Decided {
                            outcome,
                            from: p.from,
                            to: p.to,
                        },
                    ));
                }
            }
            if !again.is_empty() {
                tracing::debug!(job = %job_id, attempt, items = again.len(), "backend unavailable during a re-wrap; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            todo = again;
        }
        out
    }

    /// One try at a chunk: wrap every item on the target, then prove the target opens each
    /// new wrap. Per item, its outcome and whether a failure was transient.
    async fn rewrap_many(&self, chunk: &[Planned]) -> Vec<(ItemOutcome, bool)> {
        let failed = |error: String| ItemOutcome::Failed { error };
        let (Some(first), Some(source), Some(dest)) = (
            chunk.first(),
            chunk.first().and_then(|p| self.state.backend(&p.from)),
            chunk.first().and_then(|p| self.state.backend(&p.to)),
        ) else {
            return chunk
                .iter()
                .map(|_| {
                    (
                        failed("a backend of this row is not configured".into()),
                        false,
                    )
                })
                .collect();
        };
        let to = first.to.clone();
        let pairs: Vec<(ShardIdentity, WrappedKey)> = chunk
            .iter()
            .map(|p| (p.id.clone(), p.wrapped.clone()))
            .collect();
        let wrapped = dest.rewrap_many_from(source.as_ref(), &pairs).await;
        let mut out: Vec<Option<(ItemOutcome, bool)>> = Vec::with_capacity(chunk.len());
        let mut to_verify = Vec::new();
        for ((id, _), w) in pairs.into_iter().zip(wrapped) {
            match w {
                Ok(w) => {
                    failpoint("after_wrap");
                    to_verify.push((id, w));
                    out.push(None);
                }
                Err(e) => out.push(Some((failed(backend_text(&e)), transient(&e)))),
            }
        }
        // Only a wrap the target can open is ever committed.
        let verified = dest.verify_many(&to_verify).await;
        let mut checked = to_verify.into_iter().zip(verified);
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| match checked.next() {
                    Some(((_, new), Ok(()))) => (
                        ItemOutcome::Moved {
                            backend: to.clone(),
                            key_ref: new.key_ref,
                            key_version: i64::from(new.key_version),
                            wrapped_dek: new.blob,
                        },
                        false,
                    ),
                    Some((_, Err(e))) => (
                        failed(format!("verify: {}", backend_text(&e))),
                        transient(&e),
                    ),
                    None => (failed("internal: item lost in its chunk".into()), false),
                })
            })
            .collect()
    }
}

/// A paced job claims (and commits) what falls due within this long, `batch_size` at most.
/// Each batch commit holds the audit chain for its events, and online requests' events wait
/// for it: at the default 500/s, batches of 128 put a GET's p99 at 1.36-1.47x of no job's,
/// batches of 16 (this span) at 1.01-1.09x (same machine, alternated runs). An unpaced job
/// still claims `batch_size` (fewer, larger commits are its throughput).
const PACED_BATCH_SPAN: Duration = Duration::from_millis(32);

/// How many items a claim asks for: `batch_size`, or fewer when the pace spreads them over
/// more than [`PACED_BATCH_SPAN`].
pub(super) fn claim_size(batch_size: u32, rate_per_sec: u32) -> i64 {
    let due =
        u64::from(rate_per_sec) * u64::try_from(PACED_BATCH_SPAN.as_millis()).unwrap_or(0) / 1000;
    i64::try_from(due.min(u64::from(batch_size)).max(1)).unwrap_or(1)
}

/// Items due within this long of each other go to the backend in one call (see
/// [`Worker::batch`]); further apart, one at a time.
const CHUNK_WINDOW: Duration = Duration::from_millis(2);

/// How many items a chunk of a batch of `n` re-wraps holds at `pace`: as many as fall due
/// within [`CHUNK_WINDOW`], and no more than spreads the batch over `concurrency` chunks.
pub(super) fn chunk_len(pace: Duration, n: usize, concurrency: u32) -> usize {
    let due_together = if pace.is_zero() {
        usize::MAX
    } else {
        usize::try_from(CHUNK_WINDOW.as_nanos() / pace.as_nanos()).unwrap_or(usize::MAX)
    };
    let lanes = usize::try_from(concurrency.max(1)).unwrap_or(1);
    due_together.min(n.div_ceil(lanes)).max(1)
}

/// What [`Worker::plan`] found for one item.
enum Plan {
    /// Settled without a backend call.
    Decided(Decided),
    /// To re-wrap.
    Rewrap(Planned),
}

/// An item to re-wrap: its index in the batch, source and target, identity and wrap.
struct Planned {
    index: usize,
    from: String,
    to: String,
    id: ShardIdentity,
    wrapped: WrappedKey,
}

/// A backend that could not answer now (down, overloaded, breaker open, out of time).
fn transient(e: &BackendError) -> bool {
    matches!(
        e,
        BackendError::Unavailable(_) | BackendError::Shed { .. } | BackendError::DeadlineExceeded
    )
}

/// Secret-free text of a backend error (the variants never carry key material).
fn backend_text(e: &BackendError) -> String {
    e.to_string()
}

/// What the lanes of one [`Worker::run`] share.
struct Lanes<F> {
    /// The last item any lane claimed: claims go on from there (see
    /// [`shardgate_store::Store::claim_migration_items`]); `None` starts at the job's first.
    cursor: Mutex<Option<ItemKey>>,
    next_slot: Mutex<Instant>,
    last_log: Mutex<Instant>,
    progress: Mutex<F>,
}

impl<F: FnMut(&MigrationJob)> Lanes<F> {
    fn cursor(&self) -> Option<ItemKey> {
        self.cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A lane claimed up to `last`: later claims start past it (lanes claim concurrently,
    /// so the cursor only moves forward).
    fn advance(&self, last: ItemKey) {
        let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        if cursor.as_ref().is_none_or(|c| *c < last) {
            *cursor = Some(last);
        }
    }

    /// Nothing was claimable past `seen`: go back to the job's first item (items whose
    /// lease ran out, claims released by a resume, items a SKIP LOCKED claim passed over),
    /// unless another lane has moved the cursor on meanwhile.
    fn rewind(&self, seen: &ItemKey) {
        let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        if cursor.as_ref() == Some(seen) {
            *cursor = None;
        }
    }

    fn progress(&self, job: &MigrationJob) {
        (self.progress.lock().unwrap_or_else(|e| e.into_inner()))(job);
    }

    /// At most one progress line every 5 s, whichever lane sees it due.
    fn due_for_log(&self) -> bool {
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            return true;
        }
        false
    }

    /// The first slot of a batch needing `span`, and the slot after it.
    fn reserve(&self, now: Instant, span: Duration) -> (Instant, Instant) {
        let mut next = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
        let first = (*next).max(now);
        *next = first + span;
        (first, *next)
    }
}

/// What a worker decided for one item, with its source and target backend names.
struct Decided {
    outcome: ItemOutcome,
    from: String,
    to: String,
}

/// The audit event of one item's re-wrap (sealed before the commit says whether the row
/// changed meanwhile; see [`superseded_event`]).
fn rewrap_event(job_id: &str, item: &ClaimedItem, d: &Decided) -> Event {
    let row = &item.row;
    let mut event = Event::new("", ACTOR, "migration.rewrap")
        .account(&row.account)
        .shard(&row.shard)
        .detail(format!("job={job_id} from={} to={}", d.from, d.to));
    event.version = Some(row.version.get());
    event.backend = Some(d.to.clone());
    event.outcome = match &d.outcome {
        ItemOutcome::Moved { .. } => "ok".into(),
        ItemOutcome::Skipped => "skipped".into(),
        ItemOutcome::Failed { .. } => "failed".into(),
    };
    event
}

/// Says that a re-wrap lost its compare-and-swap: the row changed or was deleted meanwhile.
fn superseded_event(job_id: &str, item: &ClaimedItem) -> Event {
    let row = &item.row;
    let mut note = Event::new("", ACTOR, "migration.rewrap_superseded")
        .account(&row.account)
        .shard(&row.shard)
        .detail(format!(
            "job={job_id}: the row changed or was deleted meanwhile; left as it is"
        ));
    note.version = Some(row.version.get());
    note.outcome = "skipped".into();
    note
}
