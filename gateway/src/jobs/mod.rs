//! Long-running background jobs of the gateway (tier migration).

pub mod migrate;
