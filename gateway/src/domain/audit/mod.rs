//! The audit log: one HMAC-SHA256 chain per gateway process, under a key that is not in
//! the database (FORMAT.md, "Audit events").
//!
//! Writes seal their event while holding the chain (a [`ChainGuard`]) and commit it in
//! their own transaction. Reads queue their event to a batching writer and are answered
//! only once it is durable; a full queue or a failed write answers `audit_unavailable`.
//! Detached events (refusals, which no request waits for) have a bounded queue of their own
//! that the writer serves only when no read is waiting, in small batches, so a flood of
//! refusals can neither fill the reads' queue nor hold their events back for long.
//! The chain head is logged as a checkpoint every `checkpoint_interval_secs`.

pub mod archive;
mod chain;
pub mod checkpoints;
mod event;
mod verify;
mod writer;

pub use chain::{
    canonical, keyed_digest, tag, tag_matches, AuditKey, AuditKeyError, Broken, AUDIT_MAGIC,
    AUDIT_MAGIC_V2,
};
pub use event::{Event, Origin};
pub use verify::{verify, verify_tiers, verify_tiers_from, verify_with, VerifyError, VerifyReport};
pub use writer::{Auditor, ChainGuard, ChainSeal, PruneEvents, CHAIN_WAIT};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
