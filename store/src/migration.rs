//! Rows of tier-migration jobs: the job, the snapshot of shard versions it must look at
//! (its items), and what a worker reports for each item.
//!
//! A job snapshots the matching shard versions as items when it is created (`total`).
//! Workers claim pending items with a lease (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so several
//! replicas share one job; SQLite: `BEGIN IMMEDIATE`, one writer), re-wrap them outside any
//! transaction, and commit each item in one transaction: the shard version's wrapped DEK is
//! replaced only if it is still the one the worker read (compare-and-swap), the item's state,
//! the job's counters and the audit event change together. A worker killed at any point
//! leaves items pending (its lease expires) or committed, never half-moved.

use shardgate_policy::Version;

/// What a job moves: shard versions matching every field that is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationSelector {
    /// Only this account's versions.
    pub account: Option<String>,
    /// Only versions wrapped by this backend instance.
    pub from_backend: Option<String>,
    /// Only versions whose key version is below this (KEK rotation).
    pub key_version_below: Option<i64>,
}

/// Job states. `running` and `paused` are live; the others are final.
pub mod job_state {
    /// Workers claim and move items.
    pub const RUNNING: &str = "running";
    /// Nothing is claimed until resumed.
    pub const PAUSED: &str = "paused";
    /// Stopped by an operator; moved rows stay moved, the rest stay where they are.
    pub const CANCELLED: &str = "cancelled";
    /// Every item is done or skipped.
    pub const COMPLETED: &str = "completed";
    /// Every item is settled and at least one failed (its row stays readable on its source).
    pub const COMPLETED_WITH_ERRORS: &str = "completed_with_errors";
}

/// A migration job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationJob {
    /// Job id.
    pub id: String,
    /// What it moves.
    pub selector: MigrationSelector,
    /// One of [`job_state`].
    pub state: String,
    /// Items snapshotted at creation.
    pub total: i64,
    /// Items re-wrapped and committed.
    pub done: i64,
    /// Items that failed (recorded with their error; the row stays on its source).
    pub failed: i64,
    /// Items that needed nothing (already on their target, or changed/deleted meanwhile).
    pub skipped: i64,
    /// The most recent item error, if any.
    pub last_error: Option<String>,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// Last change, unix milliseconds.
    pub updated_at: i64,
    /// Identity that started it.
    pub created_by: String,
    /// When set (unix milliseconds), the job snapshots its selector once more at that time
    /// before it can complete (a policy apply's jobs: the versions replicas still on the
    /// previous policy version placed on the old backend meanwhile). `None`: nothing pending.
    pub catch_up_at: Option<i64>,
}

impl MigrationJob {
    /// Items not settled yet (pending or claimed).
    pub fn remaining(&self) -> i64 {
        self.total - self.done - self.failed - self.skipped
    }
}

/// A claimed item: the shard version as stored now, and its account's tier (the worker asks
/// the policy where it belongs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedItem {
    /// The stored version (its wrapped DEK is the compare-and-swap's expected value).
    pub row: crate::ShardVersionRow,
    /// The account's tier now.
    pub tier: String,
}

/// What a worker reports for one item.
#[derive(Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Re-wrapped and verified on the target: replace the wrap if unchanged.
    Moved {
        /// Target backend instance.
        backend: String,
        /// Target key reference.
        key_ref: String,
        /// Target key version.
        key_version: i64,
        /// The new wrapped DEK.
        wrapped_dek: Vec<u8>,
    },
    /// Nothing to do (already where the policy wants it).
    Skipped,
    /// Could not be moved; the row stays on its source.
    Failed {
        /// Secret-free error text.
        error: String,
    },
}

impl std::fmt::Debug for ItemOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Moved {
                backend,
                key_version,
                ..
            } => f
                .debug_struct("Moved")
                .field("backend", backend)
                .field("key_version", key_version)
                .finish_non_exhaustive(),
            Self::Skipped => f.write_str("Skipped"),
            Self::Failed { error } => f.debug_struct("Failed").field("error", error).finish(),
        }
    }
}

/// One item of a batch commit: the version, the wrap the worker read (the compare-and-swap's
/// expected value) and what the worker reports. Its audit record comes from the batch's
/// [`crate::LateSeal`].
pub struct ItemCommit<'a> {
    /// Account id.
    pub account: &'a str,
    /// Shard id.
    pub shard: &'a str,
    /// Version.
    pub version: Version,
    /// The wrapped DEK as claimed.
    pub old_wrapped_dek: &'a [u8],
    /// What happened to it.
    pub outcome: &'a ItemOutcome,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitResult {
    /// The outcome was recorded (for `Moved`: the wrap was replaced).
    Committed,
    /// `Moved`, but the row's wrapped DEK changed or the row is gone: nothing replaced, the
    /// item is counted as skipped.
    RowChanged,
    /// The item is not (or no longer) this worker's: settled by another worker, or the job
    /// is not running. Nothing changed.
    NotClaimed,
}

/// A state change request's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Changed; the job as it is now.
    Done(MigrationJob),
    /// No such job.
    NotFound,
    /// The job was not in one of the allowed states; its current state.
    WrongState(String),
}

/// An item's key within its job, in claim order (account, shard, version; ids compared by
/// their bytes, as the stores order them): where a worker's next claim goes on from (see
/// [`crate::Store::claim_migration_items`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ItemKey {
    /// Account id.
    pub account: String,
    /// Shard id.
    pub shard: String,
    /// Version.
    pub version: Version,
}

impl ItemKey {
    /// The key of a claimed item.
    pub fn of(item: &ClaimedItem) -> Self {
        Self {
            account: item.row.account.clone(),
            shard: item.row.shard.clone(),
            version: item.row.version,
        }
    }
}

/// A failed item, for `GET /v1/admin/migrations/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationFailure {
    /// Account id.
    pub account: String,
    /// Shard id.
    pub shard: String,
    /// Version.
    pub version: Version,
    /// Secret-free error text.
    pub error: String,
}

/// How settling one item changes the item (its new state and error) and its job's counters;
/// shared by both stores so they count alike.
pub(crate) struct Settlement<'a> {
    pub(crate) item_state: &'static str,
    pub(crate) error: Option<&'a str>,
    pub(crate) done: i64,
    pub(crate) skipped: i64,
    pub(crate) failed: i64,
}

impl<'a> Settlement<'a> {
    pub(crate) fn done() -> Self {
        Self {
            item_state: "done",
            error: None,
            done: 1,
            skipped: 0,
            failed: 0,
        }
    }

    pub(crate) fn skipped() -> Self {
        Self {
            item_state: "skipped",
            error: None,
            done: 0,
            skipped: 1,
            failed: 0,
        }
    }

    pub(crate) fn failed(error: &'a str) -> Self {
        Self {
            item_state: "failed",
            error: Some(error),
            done: 0,
            skipped: 0,
            failed: 1,
        }
    }
}

/// What a batch of settlements adds to its job's counters; `error` is the batch's last
/// failure (it becomes the job's `last_error`).
pub(crate) struct Totals<'a> {
    pub(crate) done: i64,
    pub(crate) skipped: i64,
    pub(crate) failed: i64,
    pub(crate) error: Option<&'a str>,
}

impl<'a> Settlement<'a> {
    pub(crate) fn sum(all: &[Settlement<'a>]) -> Totals<'a> {
        all.iter().fold(
            Totals {
                done: 0,
                skipped: 0,
                failed: 0,
                error: None,
            },
            |t, s| Totals {
                done: t.done + s.done,
                skipped: t.skipped + s.skipped,
                failed: t.failed + s.failed,
                error: s.error.or(t.error),
            },
        )
    }
}
