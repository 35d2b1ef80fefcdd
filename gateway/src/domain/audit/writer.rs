//! [`Auditor`]: this process's chain. Writes seal their event while holding the chain (a
//! [`ChainGuard`]) and commit it in their own transaction; reads queue their event to a
//! batching writer and are answered once it is durable; detached events (refusals) have a
//! bounded queue of their own. The head is checkpointed every `checkpoint_interval_secs`.

use super::chain::*;
use super::event::*;
use crate::domain::error::DomainError;
use shardgate_store::{AuditRecord, LateSeal, Store, StoreError};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex, MutexGuard};

#[derive(Debug, Clone)]
struct Head {
    seq: i64,
    tag: Vec<u8>,
}

struct Pending {
    events: Vec<Event>,
    done: Option<oneshot::Sender<Result<Vec<String>, DomainError>>>,
}

/// Writes this process's audit chain.
pub struct Auditor {
    chain_id: String,
    key: Arc<AuditKey>,
    store: Arc<dyn Store>,
    /// `None` when the head is unknown (a write's outcome was lost): resync before sealing.
    head: Mutex<Option<Head>>,
    queue: mpsc::Sender<Pending>,
    /// Whether the chain is in the registry: it is registered with its first event, so a
    /// process that never writes (a read-only command) leaves no empty chain behind.
    registered: std::sync::atomic::AtomicBool,
    /// Where the chain head is checkpointed outside the database ([`crate::domain::audit::checkpoints`]).
    checkpoint_file: Option<crate::domain::audit::checkpoints::CheckpointFile>,
    /// Events nobody waits for: their own bounded queue ([`Auditor::record_detached`]).
    detached: mpsc::Sender<Event>,
    /// Detached events dropped on a full queue, and when that was last logged.
    detached_dropped: AtomicU64,
    detached_warned_ms: AtomicI64,
    /// Writes that found the chain busy past their wait and rolled back
    /// ([`Auditor::chain_busy_count`]).
    chain_busy: AtomicU64,
    /// Callers of [`Auditor::lock`] waiting for the head ([`Auditor::chain_waiters`]).
    waiters: AtomicU64,
    /// Where checkpoints are also written as anchors ([`Auditor::anchor_to`]).
    anchors: std::sync::OnceLock<(Arc<dyn super::archive::ArchiveSink>, String)>,
    /// The highest seq anchored so far (an idle chain writes no new anchor).
    anchored: AtomicI64,
}

/// Most detached events in one write: a read queued while it commits waits for no more.
const DETACHED_BATCH: usize = 32;

/// At most one warning about dropped detached events per this many milliseconds.
const DROP_WARN_EVERY_MS: i64 = 10_000;

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("chain_id", &self.chain_id)
            .finish()
    }
}

/// Exclusive hold on the chain head, for a write that commits its own event.
pub struct ChainGuard<'a> {
    auditor: &'a Auditor,
    head: MutexGuard<'a, Option<Head>>,
    /// Set while a sealed event's commit outcome is not yet known.
    in_flight: bool,
}

impl ChainGuard<'_> {
    /// The record for `event` at the next position of the chain.
    pub fn seal(&self, event: &Event) -> AuditRecord {
        let (seq, prev) = match &*self.head {
            Some(h) => (h.seq + 1, h.tag.clone()),
            None => (1, vec![0u8; 32]),
        };
        self.auditor.seal_at(event, seq, prev)
    }

    /// Seal `event` and mark the write in flight until [`ChainGuard::finish`].
    pub fn begin(&mut self, event: &Event) -> AuditRecord {
        self.arm();
        self.seal(event)
    }

    /// Seal `events` at the next positions of the chain, each after the one before, and mark
    /// the write in flight until [`ChainGuard::finish`] (with the last record).
    pub fn begin_many(&mut self, events: &[Event]) -> Vec<AuditRecord> {
        self.arm();
        let (mut seq, mut prev) = match &*self.head {
            Some(h) => (h.seq, h.tag.clone()),
            None => (0, vec![0u8; 32]),
        };
        events
            .iter()
            .map(|e| {
                seq += 1;
                let r = self.auditor.seal_at(e, seq, std::mem::take(&mut prev));
                prev = r.tag.clone();
                r
            })
            .collect()
    }

    /// Seal `events` at the positions right after `prev` (a record sealed by this guard for
    /// the same write), each after the one before: the further events of one write, e.g. one
    /// per version its retention pruned. Deterministic, like [`ChainGuard::seal`].
    pub fn seal_after(&self, prev: &AuditRecord, events: &[Event]) -> Vec<AuditRecord> {
        let (mut seq, mut prev_tag) = (prev.seq, prev.tag.clone());
        events
            .iter()
            .map(|e| {
                seq += 1;
                let r = self.auditor.seal_at(e, seq, std::mem::take(&mut prev_tag));
                prev_tag = r.tag.clone();
                r
            })
            .collect()
    }

    /// Mark a write in flight (its event sealed by [`ChainGuard::seal`] inside the store
    /// call) until [`ChainGuard::finish`]; if the request is cancelled first, the head is
    /// re-read before the next event.
    pub fn arm(&mut self) {
        self.in_flight = true;
    }

    /// Record the outcome of the write that carried `record`.
    pub async fn finish<T>(mut self, record: Option<&AuditRecord>, result: &Result<T, StoreError>) {
        match (result, record) {
            (Ok(_), Some(r)) => {
                *self.head = Some(Head {
                    seq: r.seq,
                    tag: r.tag.clone(),
                })
            }
            (Ok(_), None) => {}
            // Not found / conflict happen before the audit insert: the head is unchanged.
            (Err(StoreError::AccountNotFound | StoreError::ShardNotFound), _)
            | (Err(StoreError::Conflict { .. }), _)
            // Refused under a destroyed key version: rolled back before the audit insert.
            | (Err(StoreError::KeyDestroyed { .. }), _) => {}
            // A lost commit may or may not have landed: read the head back.
            (Err(_), _) => {
                *self.head = self.auditor.read_head().await.ok().flatten();
                if self.head.is_none() {
                    tracing::warn!("audit chain head unknown after a failed write; will resync");
                }
            }
        }
        self.in_flight = false;
    }
}

impl Drop for ChainGuard<'_> {
    fn drop(&mut self) {
        if self.in_flight {
            // The request was cancelled mid-write: whether the event committed is unknown.
            *self.head = None;
        }
    }
}

/// How long a write that holds rows waits for the audit chain before it rolls back and tries
/// again (see [`LateSeal`]): a writer that took the chain first may be waiting for one of
/// those rows. Far longer than a busy chain's queue (each holder keeps it for one audit insert
/// and commit).
pub const CHAIN_WAIT: Duration = Duration::from_millis(250);

/// Events of the versions a write pruned, built once the store knows them.
pub type PruneEvents<'a> = &'a (dyn Fn(&[i64]) -> Vec<Event> + Send + Sync);

/// A [`LateSeal`] on this process's chain: the chain is taken only when the store asks for
/// the records (after the write's rows are in place), waiting at most `wait`, and held until
/// [`ChainSeal::finish`] learns whether they were stored.
pub struct ChainSeal<'a> {
    auditor: &'a Auditor,
    events: &'a [Event],
    prunes: Option<PruneEvents<'a>>,
    published: Option<&'a std::sync::OnceLock<Vec<AuditRecord>>>,
    wait: Duration,
    guard: Option<ChainGuard<'a>>,
    records: Vec<AuditRecord>,
    timed_out: bool,
}

impl<'a> ChainSeal<'a> {
    /// Seal `events` (in order, at the chain's next positions) when the store asks.
    pub fn new(auditor: &'a Auditor, events: &'a [Event], wait: Duration) -> Self {
        Self {
            auditor,
            events,
            prunes: None,
            published: None,
            wait,
            guard: None,
            records: Vec::new(),
            timed_out: false,
        }
    }

    /// After `events`, one event per version the write pruned.
    pub fn with_prunes(mut self, prunes: PruneEvents<'a>) -> Self {
        self.prunes = Some(prunes);
        self
    }

    /// Also put the sealed records in `cell`, for what the store builds after sealing in
    /// the same transaction (an idempotent answer naming the events).
    pub fn publish_to(mut self, cell: &'a std::sync::OnceLock<Vec<AuditRecord>>) -> Self {
        self.published = Some(cell);
        self
    }

    /// The chain stayed busy for longer than `wait`: the store call rolled back and nothing
    /// was stored; worth another try.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// The records sealed (empty until the store asked).
    pub fn records(&self) -> &[AuditRecord] {
        &self.records
    }

    /// Release the chain, recording whether the sealed records were `stored` by the store
    /// call that ended with `result`.
    pub async fn finish<T>(self, stored: bool, result: &Result<T, StoreError>) {
        if let Some(guard) = self.guard {
            guard
                .finish(stored.then(|| self.records.last()).flatten(), result)
                .await;
        }
    }
}

impl ChainSeal<'_> {
    /// Take the chain unless held, waiting at most `wait`.
    async fn take_chain(&mut self) -> Result<(), StoreError> {
        if self.guard.is_none() {
            let Ok(guard) = tokio::time::timeout(self.wait, self.auditor.lock()).await else {
                self.timed_out = true;
                self.auditor
                    .chain_busy
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(StoreError::AuditUnavailable(
                    "the audit chain stayed busy; the write was rolled back".into(),
                ));
            };
            self.guard =
                Some(guard.map_err(|_| {
                    StoreError::AuditUnavailable("audit chain head unknown".into())
                })?);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl LateSeal for ChainSeal<'_> {
    async fn hold(&mut self) -> Result<(), StoreError> {
        if self.guard.is_none() {
            // Taken before the transaction begins: the order every writer used to follow,
            // so no wait bound is needed.
            let guard = self
                .auditor
                .lock()
                .await
                .map_err(|_| StoreError::AuditUnavailable("audit chain head unknown".into()))?;
            self.guard = Some(guard);
        }
        Ok(())
    }

    async fn seal(&mut self, pruned: &[i64]) -> Result<Vec<AuditRecord>, StoreError> {
        self.take_chain().await?;
        let events: std::borrow::Cow<'_, [Event]> = match self.prunes {
            Some(prunes) if !pruned.is_empty() => {
                let mut all = self.events.to_vec();
                all.extend(prunes(pruned));
                all.into()
            }
            _ => self.events.into(),
        };
        let Some(guard) = self.guard.as_mut() else {
            return Err(StoreError::AuditUnavailable("audit chain not held".into()));
        };
        self.records = guard.begin_many(&events);
        if let Some(cell) = self.published {
            let _ = cell.set(self.records.clone());
        }
        Ok(self.records.clone())
    }

    async fn seal_rows(&mut self, rows: &[usize]) -> Result<Vec<AuditRecord>, StoreError> {
        // Checked before the chain is taken: a wrong index must not arm it.
        let events = rows
            .iter()
            .map(|&i| self.events.get(i).cloned())
            .collect::<Option<Vec<Event>>>()
            .ok_or_else(|| StoreError::Internal("a stored write has no event".into()))?;
        self.take_chain().await?;
        let Some(guard) = self.guard.as_mut() else {
            return Err(StoreError::AuditUnavailable("audit chain not held".into()));
        };
        self.records = guard.begin_many(&events);
        Ok(self.records.clone())
    }
}

impl Auditor {
    /// [`keyed_digest`] under this process's audit key.
    pub fn keyed_digest(&self, domain: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        keyed_digest(&self.key, domain, parts)
    }

    /// Start a new chain for this process (registered in the store with its first event)
    /// and spawn the batching writer and the checkpoint logger, which also appends the head
    /// to `checkpoint_file` when given. `queue_capacity` bounds the requests waiting for
    /// their events, `detached_capacity` the detached events (`[audit]`).
    pub async fn start(
        store: Arc<dyn Store>,
        key: Arc<AuditKey>,
        (queue_capacity, detached_capacity): (usize, usize),
        batch_max: usize,
        checkpoint_every: Duration,
        checkpoint_file: Option<std::path::PathBuf>,
    ) -> Result<Arc<Self>, StoreError> {
        let chain_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let (detached_tx, detached_rx) = mpsc::channel(detached_capacity.max(1));
        let auditor = Arc::new(Self {
            chain_id,
            key,
            store,
            head: Mutex::new(Some(Head {
                seq: 0,
                tag: vec![0u8; 32],
            })),
            queue: tx,
            registered: std::sync::atomic::AtomicBool::new(false),
            checkpoint_file: checkpoint_file
                .map(crate::domain::audit::checkpoints::CheckpointFile::new),
            detached: detached_tx,
            detached_dropped: AtomicU64::new(0),
            detached_warned_ms: AtomicI64::new(i64::MIN),
            chain_busy: AtomicU64::new(0),
            waiters: AtomicU64::new(0),
            anchors: std::sync::OnceLock::new(),
            anchored: AtomicI64::new(0),
        });
        tracing::info!(chain_id = %auditor.chain_id, "audit chain started");
        let queues = Queues {
            waited: rx,
            detached: detached_rx,
        };
        tokio::spawn(writer(Arc::downgrade(&auditor), queues, batch_max.max(1)));
        tokio::spawn(checkpoints(Arc::downgrade(&auditor), checkpoint_every));
        Ok(auditor)
    }

    /// How many times, since start, a write (a shard write, a migration batch) found the
    /// chain held for longer than its wait and rolled back to try again: the sign that a
    /// write really met a busy chain, for tests that must know it did.
    pub fn chain_busy_count(&self) -> u64 {
        self.chain_busy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many callers wait for the chain right now (a write parked behind its holder).
    pub fn chain_waiters(&self) -> u64 {
        self.waiters.load(Ordering::SeqCst)
    }

    /// This process's chain id.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// Requests waiting for the batching writer (each with one or more events).
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Set the queue gauges (the writer keeps them current; a scrape refreshes them too, so
    /// an idle writer never leaves a stale depth behind).
    #[allow(clippy::cast_precision_loss)] // bounded by audit.queue_capacity
    pub fn publish_queue_metrics(&self) {
        metrics::gauge!("shardgate_audit_queue_depth").set(self.queue_depth() as f64);
        metrics::gauge!("shardgate_audit_queue_capacity").set(self.queue.max_capacity() as f64);
        let detached = self.detached.max_capacity() - self.detached.capacity();
        metrics::gauge!("shardgate_audit_detached_queue_depth").set(detached as f64);
    }

    fn seal_at(&self, e: &Event, seq: i64, prev_tag: Vec<u8>) -> AuditRecord {
        let mut r = AuditRecord {
            chain_id: self.chain_id.clone(),
            seq,
            ts_ms: e.ts_ms,
            request_id: e.request_id.clone(),
            actor: e.actor.clone(),
            action: e.action.clone(),
            account: e.account.clone(),
            shard: e.shard.clone(),
            version: e.version,
            backend: e.backend.clone(),
            outcome: e.outcome.clone(),
            detail: e.stored_detail(),
            credential: e.credential.clone(),
            prev_tag,
            tag: Vec::new(),
        };
        r.tag = tag(&self.key, &r);
        r
    }

    async fn read_head(&self) -> Result<Option<Head>, StoreError> {
        Ok(Some(match self.store.audit_head(&self.chain_id).await? {
            Some((seq, tag)) => Head { seq, tag },
            None => Head {
                seq: 0,
                tag: vec![0u8; 32],
            },
        }))
    }

    /// Hold the chain for a write that commits its own event.
    pub async fn lock(&self) -> Result<ChainGuard<'_>, DomainError> {
        use std::sync::atomic::Ordering;
        /// Counts a waiter until dropped (also when the wait is given up, e.g. timed out).
        struct Waiting<'a>(&'a AtomicU64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting(&self.waiters);
        let mut head = self.head.lock().await;
        drop(waiting);
        // Under the head's lock: the first writer registers the chain, once.
        if !self.registered.load(Ordering::Acquire) {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".to_string());
            self.store
                .register_chain(&self.chain_id, crate::now_ms(), &host)
                .await
                .map_err(|_| unavailable())?;
            self.registered.store(true, Ordering::Release);
        }
        if head.is_none() {
            *head = self.read_head().await.map_err(|_| unavailable())?;
        }
        Ok(ChainGuard {
            auditor: self,
            head,
            in_flight: false,
        })
    }

    /// The id an event is known by: `<chain>:<seq>`.
    pub fn event_id(r: &AuditRecord) -> String {
        format!("{}:{}", r.chain_id, r.seq)
    }

    /// Record events durably (batched with other requests'); returns their ids.
    pub async fn record_all(&self, events: Vec<Event>) -> Result<Vec<String>, DomainError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let queued = std::time::Instant::now();
        let (tx, rx) = oneshot::channel();
        self.queue
            .try_send(Pending {
                events,
                done: Some(tx),
            })
            .map_err(|_| {
                tracing::warn!("audit queue full or closed; request refused");
                unavailable()
            })?;
        let ids = rx.await.map_err(|_| unavailable())?;
        // The share of a read's latency that is its audit: the write in flight when it
        // queued, then the batch that carries its events.
        metrics::histogram!("shardgate_audit_wait_seconds").record(queued.elapsed().as_secs_f64());
        ids
    }

    /// Record one event durably.
    pub async fn record(&self, event: Event) -> Result<String, DomainError> {
        let mut ids = self.record_all(vec![event]).await?;
        ids.pop().ok_or_else(unavailable)
    }

    /// Queue an event without waiting (refusals: writing them must not become a way to load
    /// the database or to crowd out reads). It goes on the detached queue, which is bounded
    /// on its own: a full one drops the event, counted in
    /// `shardgate_audit_detached_dropped_total` and logged at most once per 10 s.
    pub fn record_detached(&self, event: Event) {
        if self.detached.try_send(event).is_ok() {
            return;
        }
        metrics::counter!("shardgate_audit_detached_dropped_total").increment(1);
        let dropped = self.detached_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = crate::now_ms();
        let last = self.detached_warned_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DROP_WARN_EVERY_MS
            && self
                .detached_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                dropped_total = dropped,
                "detached audit queue full; dropping detached audit events"
            );
        }
    }

    /// Log the chain head and append it to the checkpoint file (a checkpoint: truncation
    /// of the table then shows). A chain without events has nothing to checkpoint.
    pub async fn checkpoint(&self) {
        let head = self.head.lock().await.clone();
        let Some(h) = head.filter(|h| h.seq > 0) else {
            return;
        };
        tracing::info!(
            target: "shardgate::domain::audit",
            chain_id = %self.chain_id,
            seq = h.seq,
            tag = %hex::encode(&h.tag),
            "audit checkpoint"
        );
        let cp = crate::domain::audit::checkpoints::Checkpoint {
            chain_id: self.chain_id.clone(),
            seq: h.seq,
            tag: h.tag,
            ts_ms: crate::now_ms(),
        };
        if let Some(file) = &self.checkpoint_file {
            if let Err(e) = file.append(&cp, &self.key) {
                metrics::counter!("shardgate_audit_checkpoint_failures_total").increment(1);
                tracing::error!(path = %file.path().display(), error = %e, "audit checkpoint not written to its file");
            }
        }
        self.anchor(&cp).await;
    }

    /// Also write every checkpoint as an anchor to `sink` (under `prefix`).
    pub fn anchor_to(&self, sink: Arc<dyn super::archive::ArchiveSink>, prefix: String) {
        let _ = self.anchors.set((sink, prefix));
    }

    /// Write `cp` as an anchor when anchoring is on and the head moved since the last one.
    async fn anchor(&self, cp: &crate::domain::audit::checkpoints::Checkpoint) {
        let Some((sink, prefix)) = self.anchors.get() else {
            return;
        };
        if cp.seq <= self.anchored.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let archive = super::archive::Archive {
            sink: sink.as_ref(),
            prefix,
        };
        match super::archive::anchors::write_anchor(archive, &self.key, cp).await {
            Ok(()) => {
                self.anchored
                    .fetch_max(cp.seq, std::sync::atomic::Ordering::Relaxed);
                metrics::gauge!("shardgate_audit_anchor_timestamp_seconds")
                    .set(cp.ts_ms as f64 / 1000.0);
            }
            Err(e) => {
                metrics::counter!("shardgate_audit_anchor_failures_total").increment(1);
                tracing::warn!(error = %e, "audit anchor not written to the archive; the next checkpoint tries again");
            }
        }
    }

    async fn write_batch(&self, batch: &[Pending]) -> Result<Vec<Vec<String>>, DomainError> {
        let mut guard = self.lock().await?;
        let (mut seq, mut prev) = match &*guard.head {
            Some(h) => (h.seq, h.tag.clone()),
            None => return Err(unavailable()),
        };
        let mut records = Vec::new();
        let mut ids = Vec::with_capacity(batch.len());
        for p in batch {
            let mut mine = Vec::with_capacity(p.events.len());
            for e in &p.events {
                seq += 1;
                let r = self.seal_at(e, seq, prev);
                prev = r.tag.clone();
                mine.push(Self::event_id(&r));
                records.push(r);
            }
            ids.push(mine);
        }
        guard.in_flight = true;
        let started = std::time::Instant::now();
        let result = self.store.append_audit(&records).await;
        metrics::histogram!(
            "shardgate_audit_write_duration_seconds",
            "outcome" => if result.is_ok() { "ok" } else { "error" }
        )
        .record(started.elapsed().as_secs_f64());
        let last = records.last();
        guard.finish(last, &result).await;
        match result {
            Ok(()) => {
                metrics::counter!("shardgate_audit_events_total").increment(records.len() as u64);
                Ok(ids)
            }
            Err(e) => {
                metrics::counter!("shardgate_audit_failures_total").increment(1);
                tracing::error!(error = %e, "audit batch write failed");
                Err(unavailable())
            }
        }
    }
}

fn unavailable() -> DomainError {
    DomainError::AuditUnavailable
}

/// The writer's two inputs.
struct Queues {
    /// Requests waiting for their events.
    waited: mpsc::Receiver<Pending>,
    /// Events nobody waits for.
    detached: mpsc::Receiver<Event>,
}

impl Queues {
    /// The next batch: waiting requests first (up to `max` events), else up to
    /// [`DETACHED_BATCH`] detached events. `None` once the auditor is gone.
    async fn next_batch(&mut self, max: usize) -> Option<Vec<Pending>> {
        let first = tokio::select! {
            biased;
            p = self.waited.recv() => p?,
            e = self.detached.recv() => {
                let mut events = vec![e?];
                while events.len() < DETACHED_BATCH.min(max) {
                    match self.detached.try_recv() {
                        Ok(e) => events.push(e),
                        Err(_) => break,
                    }
                }
                return Some(vec![Pending { events, done: None }]);
            }
        };
        let mut count = first.events.len();
        let mut batch = vec![first];
        while count < max {
            match self.waited.try_recv() {
                Ok(p) => {
                    count += p.events.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        Some(batch)
    }
}

async fn writer(auditor: std::sync::Weak<Auditor>, mut queues: Queues, max: usize) {
    while let Some(batch) = queues.next_batch(max).await {
        let Some(a) = auditor.upgrade() else { break };
        a.publish_queue_metrics();
        let result = a.write_batch(&batch).await;
        drop(a);
        match result {
            Ok(ids) => {
                for (p, ids) in batch.into_iter().zip(ids) {
                    if let Some(done) = p.done {
                        let _ = done.send(Ok(ids));
                    }
                }
            }
            Err(_) => {
                for p in batch {
                    if let Some(done) = p.done {
                        let _ = done.send(Err(unavailable()));
                    }
                }
            }
        }
    }
}

async fn checkpoints(auditor: std::sync::Weak<Auditor>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(a) = auditor.upgrade() else { break };
        a.checkpoint().await;
    }
}
