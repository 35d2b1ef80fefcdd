//! The rules of the gateway that hold whatever the transport: envelopes, the audit chain,
//! authentication and tokens, key lifecycle, breakers, metrics, the downgrade rule. Its
//! errors are [`error::DomainError`].

pub mod audit;
pub mod auth;
pub mod breaker;
pub mod bulkhead;
pub mod envelope;
pub mod error;
pub mod failpoint;
pub mod files;
pub mod hygiene;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod overrides;
pub mod policy;
pub mod priority;
pub mod protection;
pub mod tokens;
pub mod trace;
