//! `raw_unwrap_local`: what a GET on the `local` backend must spend on crypto, without HTTP or
//! SQL: unwrap the data key on the keyring (AES-256-GCM) and open the shard seal (AES-256-GCM),
//! through the gateway's own `envelope::open`, from as many threads as the gateway has cores.

use crate::drive::drive;
use anyhow::{anyhow, bail, Context, Result};
use shardgate::domain::envelope;
use shardgate_backends::local::LocalBackend;
use shardgate_backends::{ShardIdentity, Version};
use shardgate_store::ShardVersionRow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Open sealed rows of `shard_bytes` for `seconds` from `threads` tasks; prints ops/s and
/// this process's CPU per op.
pub(crate) async fn run(
    keyring: &Path,
    shard_bytes: usize,
    threads: usize,
    seconds: u64,
) -> Result<()> {
    let local = Arc::new(
        LocalBackend::open("local", keyring, Duration::from_secs(3600))
            .context("open the local keyring")?,
    );
    let mut rows = Vec::new();
    for i in 0..64 {
        let id = ShardIdentity::new(format!("local-{i:06}"), "s0", Version::FIRST);
        let sealed = envelope::seal(local.as_ref(), &id, &vec![0x5au8; shard_bytes])
            .await
            .map_err(|e| anyhow!("seal: {e}"))?;
        rows.push(ShardVersionRow {
            account: id.account.clone(),
            shard: id.shard.clone(),
            version: Version::FIRST,
            format_version: i16::from(id.format_version),
            backend: "local".into(),
            key_ref: sealed.wrapped.key_ref,
            key_version: i64::from(sealed.wrapped.key_version),
            wrapped_dek: sealed.wrapped.blob,
            nonce: sealed.nonce.to_vec(),
            ciphertext: sealed.ciphertext,
            created_at: 0,
            created_by: "bench".into(),
            key_commitment: Some(sealed.commitment.to_vec()),
        });
    }
    let rows = Arc::new(rows);
    drive("raw_unwrap_local", threads, seconds, false, move |i| {
        let (local, rows) = (local.clone(), rows.clone());
        async move {
            let row = &rows[usize::try_from(i).unwrap_or(0) % rows.len()];
            let plain = envelope::open(local.as_ref(), row)
                .await
                .map_err(|e| anyhow!("open: {e}"))?;
            if plain.len() != shard_bytes {
                bail!("opened {} bytes", plain.len());
            }
            Ok(())
        }
    })
    .await
}
