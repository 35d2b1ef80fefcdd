//! The suite every backend must pass (one suite, many providers, as rustls does).
//!
//! It returns an error naming the broken property instead of panicking, so backends run it
//! from their own tests with `conformance::run(&backend).await.unwrap()`.

use crate::{BackendError, KeyBackend, ShardIdentity, Version};

/// A broken property.
#[derive(Debug, thiserror::Error)]
#[error("conformance: {0}")]
pub struct Failure(pub String);

fn check(ok: bool, what: &str) -> Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Err(Failure(what.to_string()))
    }
}

/// Run every check against `backend`.
pub async fn run(backend: &dyn KeyBackend) -> Result<(), Failure> {
    let fail = |what: &str, e: BackendError| Failure(format!("{what}: {e}"));
    check(!backend.name().is_empty(), "name is empty")?;
    check(
        matches!(backend.kind(), "local" | "aws-kms" | "pkcs11"),
        "kind is not a known backend kind",
    )?;
    check(backend.health().await.usable, "fresh backend is not usable")?;

    let id = ShardIdentity::new("acct-conf", "shard-1", Version::FIRST);
    let (dek, wrapped) = backend
        .generate_data_key(&id)
        .await
        .map_err(|e| fail("generate_data_key", e))?;
    let opened = backend
        .unwrap(&id, &wrapped)
        .await
        .map_err(|e| fail("unwrap of own wrap", e))?;
    check(
        opened.expose() == dek.expose(),
        "unwrap returned another key",
    )?;

    // It recognises the key reference of its own wraps, and claims no other.
    check(
        backend.holds_key_ref(&wrapped.key_ref),
        "does not hold the key_ref of its own wrap",
    )?;
    check(
        !backend.holds_key_ref("shardgate-conformance:not-a-key-ref"),
        "claims a foreign key_ref",
    )?;

    let (dek2, wrapped2) = backend
        .generate_data_key(&id)
        .await
        .map_err(|e| fail("second generate_data_key", e))?;
    check(dek2.expose() != dek.expose(), "two data keys are equal")?;
    check(wrapped2.blob != wrapped.blob, "two wraps are equal")?;

    // Re-wrap an existing key (migration path).
    let rewrapped = backend
        .wrap(&id, &dek)
        .await
        .map_err(|e| fail("wrap of existing key", e))?;
    let reopened = backend
        .unwrap(&id, &rewrapped)
        .await
        .map_err(|e| fail("unwrap of re-wrap", e))?;
    check(reopened.expose() == dek.expose(), "re-wrap changed the key")?;

    // Bound to identity: every other identity fails with Integrity.
    let second = Version::FIRST
        .next()
        .ok_or_else(|| Failure("no second version".into()))?;
    for other in [
        ShardIdentity::new("acct-conf2", "shard-1", Version::FIRST),
        ShardIdentity::new("acct-conf", "shard-2", Version::FIRST),
        ShardIdentity::new("acct-conf", "shard-1", second),
        ShardIdentity {
            format_version: id.format_version.wrapping_add(1),
            ..id.clone()
        },
    ] {
        match backend.unwrap(&other, &wrapped).await {
            Err(BackendError::Integrity) => {}
            Ok(_) => return Err(Failure("unwrap under another identity succeeded".into())),
            Err(e) => return Err(fail("unwrap under another identity: want Integrity", e)),
        }
    }

    // Tampering anywhere in the blob fails closed (Integrity or KeyUnusable, never Ok).
    for i in 0..wrapped.blob.len() {
        let mut t = wrapped.clone();
        t.blob[i] ^= 0x01;
        if backend.unwrap(&id, &t).await.is_ok() {
            return Err(Failure(format!(
                "bit flip at byte {i} of the wrapped key opened"
            )));
        }
    }
    let mut truncated = wrapped.clone();
    truncated.blob.truncate(wrapped.blob.len() / 2);
    check(
        backend.unwrap(&id, &truncated).await.is_err(),
        "truncated wrapped key opened",
    )?;
    batches(backend).await
}

/// The batch calls a migration makes answer item by item, in order, as the single calls do:
/// a bad item fails alone.
async fn batches(backend: &dyn KeyBackend) -> Result<(), Failure> {
    let fail = |what: &str, e: BackendError| Failure(format!("{what}: {e}"));
    let mut items = Vec::new();
    let mut keys = Vec::new();
    for shard in ["batch-1", "batch-2", "batch-3"] {
        let id = ShardIdentity::new("acct-conf", shard, Version::FIRST);
        let (dek, wrapped) = backend
            .generate_data_key(&id)
            .await
            .map_err(|e| fail("generate_data_key", e))?;
        items.push((id, wrapped));
        keys.push(dek);
    }
    // The middle one is tampered with: only it fails.
    if let Some(b) = items[1].1.blob.last_mut() {
        *b ^= 0x01;
    }
    let moved = backend.rewrap_many_from(backend, &items).await;
    check(
        moved.len() == items.len(),
        "rewrap_many_from: one result per item",
    )?;
    check(
        moved[1].is_err(),
        "rewrap_many_from re-wrapped a tampered key",
    )?;
    let mut fresh = Vec::new();
    for i in [0, 2] {
        let new = moved[i]
            .clone()
            .map_err(|e| fail("rewrap_many_from of a sound key", e))?;
        check(
            new.blob != items[i].1.blob,
            "rewrap_many_from kept the old wrap",
        )?;
        let opened = backend
            .unwrap(&items[i].0, &new)
            .await
            .map_err(|e| fail("unwrap of a batch re-wrap", e))?;
        check(
            opened.expose() == keys[i].expose(),
            "rewrap_many_from changed a key",
        )?;
        fresh.push((items[i].0.clone(), new));
    }
    // Verified under its own identity, refused under another.
    let mut swapped = fresh[0].clone();
    swapped.0 = items[1].0.clone();
    let checked = backend
        .verify_many(&[fresh[0].clone(), swapped, fresh[1].clone()])
        .await;
    check(checked.len() == 3, "verify_many: one result per item")?;
    check(checked[0].is_ok(), "verify_many refused a sound wrap")?;
    check(
        checked[1].is_err(),
        "verify_many accepted a wrap under another identity",
    )?;
    check(checked[2].is_ok(), "verify_many refused a sound wrap")?;
    Ok(())
}
