//! shardgate: a key-management gateway for MPC wallet key shards.
//!
//! Signing services store and fetch key shards over one HTTP API ([`http`]). Every shard is
//! envelope-encrypted ([`domain::envelope`]) under a fresh data key wrapped by a backend from
//! `shardgate-backends`, chosen by the tier policy of `shardgate-policy`, stored through
//! `shardgate-store`, and every access is written to a tamper-evident audit chain
//! ([`domain::audit`]).
//!
//! The layers, outermost first; a module imports its own layer or a later one, never an earlier
//! one (docs/architecture.md; `scripts/check_architecture.py` checks it):
//! [`cli`] (the binary's commands) -> [`app`] (config and the composition root) -> [`http`]
//! (routes, extractors, errors to statuses) -> [`service`] (use cases) -> [`domain`] (envelope,
//! audit, auth, keys, breakers) -> the store, backends and policy crates.

pub mod app;
pub mod cli;
pub mod domain;
pub mod http;
pub mod service;

pub use app::state::AppState;
pub use http::router;

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
