//! `shardgate-client`: a typed async client of the shardgate HTTP API (docs/api.md), so that
//! signing services do not hand-write retries, `Retry-After`, deadlines and idempotency.
//!
//! - **Typed calls** for every route, with typed answers; shard bytes live in
//!   [`ShardBytes`] (zeroized on drop, redacted in `Debug`).
//! - **Typed errors**: [`Error::Api`] carries the gateway's documented [`ErrorCode`], its
//!   message, `Retry-After` and the request id.
//! - **Retries only where safe**: reads, and shard writes and deletes, which always carry an
//!   `Idempotency-Key` (yours, or a fresh one per call), so a retry never writes twice. Only
//!   "later" answers (429, 503) and lost connections are retried, with full-jitter backoff
//!   that waits at least the gateway's `Retry-After`, within the call's deadline.
//! - **Deadlines**: each call has one ([`ClientBuilder::deadline`],
//!   [`Client::with_deadline`]); every attempt sends what is left of it as
//!   `x-shardgate-deadline-ms`, so the gateway stops working for a caller that stopped
//!   waiting. One `X-Request-Id` names all the attempts of a call.
//! - **batchGet chunking** to the gateway's `batch_max_items`.
//! - **Auth**: a bearer token, a client certificate (mutual TLS), or both; TLS is rustls.
//!
//! ```no_run
//! use shardgate_client::{Client, PutOptions, ShardBytes};
//! use secrecy::SecretString;
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), shardgate_client::Error> {
//! let client = Client::builder("https://shardgate.internal:8443")
//!     .bearer_token(SecretString::from(std::env::var("SHARDGATE_TOKEN").unwrap_or_default()))
//!     .ca_pem(std::fs::read("/etc/shardgate/ca.pem").unwrap_or_default())
//!     .deadline(Duration::from_secs(2))
//!     .build()?;
//! client.put_account("wallet-42", "institutional").await?;
//! let shard = ShardBytes::new(vec![7; 32]);
//! let put = client
//!     .put_shard("wallet-42", "signer-1", &shard, PutOptions::default())
//!     .await?;
//! let back = client.get_shard("wallet-42", "signer-1", Some(put.version)).await?;
//! assert_eq!(back.bytes, shard);
//! # Ok(())
//! # }
//! ```
//!
//! Errors carry the gateway's code:
//!
//! ```no_run
//! use shardgate_client::{Client, Error, ErrorCode};
//! # async fn run(client: Client) {
//! match client.get_shard("wallet-42", "signer-1", None).await {
//!     Ok(shard) => println!("version {}", shard.version),
//!     Err(e) if e.code() == Some(&ErrorCode::ShardNotFound) => println!("no such shard"),
//!     Err(Error::Api(e)) => eprintln!("refused: {e} (retry after {:?})", e.retry_after),
//!     Err(e) => eprintln!("failed: {e}"),
//! }
//! # }
//! ```

mod admin;
mod builder;
mod error;
mod retry;
mod shards;
mod transport;
mod types;

pub use admin::{
    ApplyPolicy, AuditPage, AuditQuery, KeyVersion, MigrationAction, PolicyChange, ServedPolicy,
};
pub use builder::ClientBuilder;
pub use error::{ApiError, Error, ErrorCode};
pub use retry::RetryPolicy;
pub use shards::PutOptions;
pub use transport::Client;
pub use types::{
    Account, BatchItem, Circuit, DeleteReceipt, Health, MigrationFailure, MigrationJob,
    MigrationSelector, PrunedVersion, PutShardResponse, Readiness, Shard, ShardBytes,
    ShardListEntry, ShardPage, StartedMigration,
};
