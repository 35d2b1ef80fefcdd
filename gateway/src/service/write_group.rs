//! Group commit of concurrent shard writes (PostgreSQL).
//!
//! A shard write commits together with its audit event, and this process's audit chain is
//! one sequence: written one at a time, concurrent writes would queue for the chain and pay
//! one commit (one WAL flush) each. Here a write whose envelope is sealed joins a queue; a
//! worker takes everything queued (up to a bound) and stores it with
//! [`Store::insert_shard_versions_grouped`]: one transaction (on PostgreSQL, when every
//! write of the group passes, one statement), one hold of the chain, one audit insert and one
//! commit for the whole group. Each write still gets its own answer
//! (stored, or refused for itself: conflict, account gone, destroyed key) and its own audit
//! event; a group that fails as a whole stored nothing, and its writers write on their own
//! (the single-write path, which reports their precise errors).
//!
//! Writes that carry an `Idempotency-Key` or that prune old versions take the single-write
//! path: their transaction holds more than a row and an event.

use std::collections::HashSet;
use std::sync::Arc;

use shardgate_store::{GroupedWrite, ShardVersionRow, Store, StoreError};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::domain::audit::{Auditor, ChainSeal, Event, CHAIN_WAIT};

/// What became of a write handed to [`WriteGroups::write`].
#[derive(Debug)]
pub enum Grouped {
    /// Stored, with its audit event.
    Stored,
    /// Refused for itself alone (`Conflict`, `AccountNotFound`, `KeyDestroyed`): nothing of
    /// it was stored.
    Refused(StoreError),
    /// Not tried: the group already held a write of the same shard (numbered the same);
    /// read the latest version and write again.
    Again,
    /// The group failed as a whole and nothing of it was stored: write this one alone.
    Alone,
}

/// A write waiting for its group.
struct Pending {
    row: ShardVersionRow,
    tier: String,
    keep_versions: Option<i64>,
    event: Event,
    done: oneshot::Sender<Grouped>,
}

/// The queue of sealed writes and its workers.
#[derive(Debug, Clone)]
pub struct WriteGroups {
    queue: mpsc::Sender<Pending>,
}

impl WriteGroups {
    /// Start `workers` workers, each storing groups of at most `max_group` writes. Two
    /// workers let one group's row work run while the other holds the chain.
    pub fn start(
        store: Arc<dyn Store>,
        audit: Arc<Auditor>,
        max_group: usize,
        workers: usize,
    ) -> Self {
        let max_group = max_group.max(1);
        let (queue, rx) = mpsc::channel(max_group.saturating_mul(16));
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            tokio::spawn(worker(rx.clone(), store.clone(), audit.clone(), max_group));
        }
        Self { queue }
    }

    /// Store `row` (its envelope sealed, numbered after the latest version the writer read)
    /// in the next group, placed by the account's `tier` and `keep_versions` as read; the
    /// write's audit `event` is sealed in the group. A write handed here prunes nothing
    /// under `keep_versions`.
    pub async fn write(
        &self,
        row: ShardVersionRow,
        tier: String,
        keep_versions: Option<i64>,
        event: Event,
    ) -> Grouped {
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            row,
            tier,
            keep_versions,
            event,
            done,
        };
        if self.queue.send(pending).await.is_err() {
            return Grouped::Alone;
        }
        // A worker that went away answered nothing and stored nothing of this write.
        answer.await.unwrap_or(Grouped::Alone)
    }
}

async fn worker(
    queue: Arc<Mutex<mpsc::Receiver<Pending>>>,
    store: Arc<dyn Store>,
    audit: Arc<Auditor>,
    max_group: usize,
) {
    loop {
        let mut group = Vec::with_capacity(max_group);
        {
            let mut rx = queue.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            group.push(first);
            while group.len() < max_group {
                match rx.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
        }
        store_group(store.as_ref(), &audit, group).await;
    }
}

/// Store one group and answer each of its writers.
async fn store_group(store: &dyn Store, audit: &Auditor, group: Vec<Pending>) {
    let mut shards = HashSet::with_capacity(group.len());
    let mut members = Vec::with_capacity(group.len());
    // Answered once the group is stored: a writer that re-read its shard's latest version
    // before then would number its write the same again.
    let mut again = Vec::new();
    for p in group {
        if shards.insert((p.row.account.clone(), p.row.shard.clone())) {
            members.push(p);
        } else {
            again.push(p);
        }
    }
    let events: Vec<Event> = members.iter().map(|p| p.event.clone()).collect();
    let writes: Vec<GroupedWrite<'_>> = members
        .iter()
        .map(|p| GroupedWrite {
            row: &p.row,
            tier: &p.tier,
            keep_versions: p.keep_versions,
        })
        .collect();
    let mut seal = ChainSeal::new(audit, &events, CHAIN_WAIT);
    let result = store
        .insert_shard_versions_grouped(&writes, &mut seal)
        .await;
    let stored = matches!(&result, Ok(answers) if answers.iter().any(Result::is_ok));
    seal.finish(stored, &result).await;
    metrics::histogram!("shardgate_write_group_size").record(members.len() as f64);
    drop(writes);
    match result {
        Ok(answers) => {
            for (p, answer) in members.into_iter().zip(answers) {
                let _ = p.done.send(match answer {
                    Ok(()) => Grouped::Stored,
                    Err(e) => Grouped::Refused(e),
                });
            }
        }
        Err(e) => {
            tracing::debug!(
                error = %e,
                writes = members.len(),
                "a group of shard writes failed as a whole; each is written alone"
            );
            for p in members {
                let _ = p.done.send(Grouped::Alone);
            }
        }
    }
    for p in again {
        let _ = p.done.send(Grouped::Again);
    }
}
