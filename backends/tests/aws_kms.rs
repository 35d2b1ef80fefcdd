//! The `aws-kms` backend against a real KMS API (moto), with the fault-injecting proxy in
//! front of it where KMS behaviour moto lacks (disabled keys, throttling, outages) is needed.
//! Every test creates its own keys: tests share one moto and run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use shardgate_backends::aws_kms::{KmsBackend, KmsCacheConfig, KmsConfig};
use shardgate_backends::{conformance, BackendError, KeyBackend, ShardIdentity, Version};
use std::sync::Arc;
use std::time::Duration;
use support::fault_proxy::{Fault, FaultProxy, Rule};
use support::{create_kms_key, moto_endpoint, REGION};

const DECRYPT: &str = "TrentService.Decrypt";
const GENERATE: &str = "TrentService.GenerateDataKey";
const ENCRYPT: &str = "TrentService.Encrypt";
const REENCRYPT: &str = "TrentService.ReEncrypt";

fn config(key_id: &str, endpoint: &str) -> KmsConfig {
    KmsConfig {
        endpoint_url: Some(endpoint.to_string()),
        call_timeout_ms: 1000,
        max_attempts: 4,
        deadline_ms: 3000,
        ..KmsConfig::new(key_id, REGION)
    }
}

fn no_cache(mut cfg: KmsConfig) -> KmsConfig {
    cfg.cache.enabled = false;
    cfg
}

async fn backend(cfg: &KmsConfig) -> KmsBackend {
    KmsBackend::open("kms-test", cfg).await.unwrap()
}

/// A key, a proxy in front of moto, and a backend on the key through the proxy.
async fn proxied(
    endpoint: &str,
    tweak: impl FnOnce(KmsConfig) -> KmsConfig,
) -> (FaultProxy, KmsBackend) {
    let key = create_kms_key(endpoint).await;
    let proxy = FaultProxy::start(endpoint).await;
    let b = backend(&tweak(config(&key, &proxy.url()))).await;
    (proxy, b)
}

#[tokio::test]
async fn conformance_passes_with_and_without_cache() {
    let Some(ep) = moto_endpoint("conformance_passes_with_and_without_cache") else {
        return;
    };
    let key = create_kms_key(&ep).await;
    let cached = backend(&config(&key, &ep)).await;
    assert_eq!(cached.kind(), "aws-kms");
    conformance::run(&cached).await.unwrap();
    let uncached = backend(&no_cache(config(&key, &ep))).await;
    conformance::run(&uncached).await.unwrap();
}

#[tokio::test]
async fn blob_moved_to_another_identity_is_integrity() {
    let Some(ep) = moto_endpoint("blob_moved_to_another_identity_is_integrity") else {
        return;
    };
    let key = create_kms_key(&ep).await;
    let b = backend(&config(&key, &ep)).await;
    let id = ShardIdentity::new("acct-move", "shard-1", Version::FIRST);
    let (dek, wrapped) = b.generate_data_key(&id).await.unwrap();
    // Cached under its own identity first: the cache must not serve it to another row.
    assert_eq!(
        b.unwrap(&id, &wrapped).await.unwrap().expose(),
        dek.expose()
    );
    for other in [
        ShardIdentity::new("acct-move2", "shard-1", Version::FIRST),
        ShardIdentity::new("acct-move", "shard-2", Version::FIRST),
        ShardIdentity::new("acct-move", "shard-1", Version::new(2).unwrap()),
    ] {
        // moto (like KMS) answers InvalidCiphertextException for another context.
        assert_eq!(
            b.unwrap(&other, &wrapped).await.unwrap_err(),
            BackendError::Integrity
        );
    }
}

#[tokio::test]
async fn blob_under_key_a_refused_when_configured_for_key_b() {
    let Some(ep) = moto_endpoint("blob_under_key_a_refused_when_configured_for_key_b") else {
        return;
    };
    let a = backend(&config(&create_kms_key(&ep).await, &ep)).await;
    let b = backend(&config(&create_kms_key(&ep).await, &ep)).await;
    let id = ShardIdentity::new("acct-keys", "s", Version::FIRST);
    let (_, wrapped) = a.generate_data_key(&id).await.unwrap();
    // AWS answers IncorrectKeyException, moto 5 AccessDeniedException: both key_unusable.
    match b.unwrap(&id, &wrapped).await {
        Err(BackendError::KeyUnusable(code)) => {
            assert!(
                code == "AccessDeniedException" || code == "IncorrectKeyException",
                "{code}"
            )
        }
        other => panic!("want KeyUnusable, got {other:?}"),
    }
}

#[tokio::test]
async fn disabled_or_invalid_state_key_is_unusable_then_recovers() {
    let Some(ep) = moto_endpoint("disabled_or_invalid_state_key_is_unusable_then_recovers") else {
        return;
    };
    // Health answered fresh each time here (the reuse is pinned below).
    let (proxy, b) = proxied(&ep, |c| KmsConfig {
        health_cache_ms: 0,
        ..no_cache(c)
    })
    .await;
    let id = ShardIdentity::new("acct-dis", "s", Version::FIRST);
    let (dek, wrapped) = b.generate_data_key(&id).await.unwrap();

    proxy.reset_counts();
    proxy.set(Fault::kms("DisabledException"));
    assert_eq!(
        b.unwrap(&id, &wrapped).await.unwrap_err(),
        BackendError::KeyUnusable("DisabledException".into())
    );
    assert_eq!(proxy.count(DECRYPT), 1, "not retried");
    assert!(!b.health().await.usable);

    proxy.set(Fault::kms("KMSInvalidStateException"));
    assert_eq!(
        b.generate_data_key(&id).await.unwrap_err(),
        BackendError::KeyUnusable("KMSInvalidStateException".into())
    );
    assert_eq!(proxy.count(GENERATE), 1, "not retried");

    proxy.clear();
    assert_eq!(
        b.unwrap(&id, &wrapped).await.unwrap().expose(),
        dek.expose()
    );
    assert!(b.health().await.usable);
}

#[tokio::test]
async fn throttling_is_retried_with_bounded_attempts() {
    let Some(ep) = moto_endpoint("throttling_is_retried_with_bounded_attempts") else {
        return;
    };
    let (proxy, b) = proxied(&ep, no_cache).await;
    let id = ShardIdentity::new("acct-thr", "s", Version::FIRST);
    let (dek, wrapped) = b.generate_data_key(&id).await.unwrap();

    // Two throttles, then moto answers: the read succeeds on the third attempt.
    proxy.reset_counts();
    proxy.set_rule(Rule {
        fault: Fault::kms("ThrottlingException"),
        target: Some(DECRYPT.into()),
        remaining: Some(2),
    });
    assert_eq!(
        b.unwrap(&id, &wrapped).await.unwrap().expose(),
        dek.expose()
    );
    assert_eq!(proxy.count(DECRYPT), 3);

    // KMSInternalException (500) is retried the same way.
    proxy.reset_counts();
    proxy.set_rule(Rule {
        fault: Fault::kms("KMSInternalException"),
        target: Some(DECRYPT.into()),
        remaining: Some(1),
    });
    assert_eq!(
        b.unwrap(&id, &wrapped).await.unwrap().expose(),
        dek.expose()
    );
    assert_eq!(proxy.count(DECRYPT), 2);

    // Throttled for good: exactly max_attempts (4) attempts, then Unavailable (not
    // DeadlineExceeded: the attempts, not the 3 s budget, ended it; the backoff itself is
    // pinned on tokio's paused clock in `aws_kms/retry.rs`).
    proxy.reset_counts();
    proxy.set(Fault::kms("ThrottlingException"));
    let err = b.unwrap(&id, &wrapped).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
    assert_eq!(proxy.count(DECRYPT), 4);
    proxy.clear();
}

#[tokio::test]
async fn throttling_burst_longer_than_budget_fails_fast() {
    let Some(ep) = moto_endpoint("throttling_burst_longer_than_budget_fails_fast") else {
        return;
    };
    // Many attempts allowed, but a short budget: the budget, not the attempt count, ends it.
    let (proxy, b) = proxied(&ep, |c| KmsConfig {
        max_attempts: 20,
        call_timeout_ms: 300,
        deadline_ms: 600,
        ..no_cache(c)
    })
    .await;
    let id = ShardIdentity::new("acct-burst", "s", Version::FIRST);
    let (_, wrapped) = b.generate_data_key(&id).await.unwrap();
    proxy.reset_counts();
    proxy.set(Fault::kms("ThrottlingException"));
    let err = b.unwrap(&id, &wrapped).await.unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Unavailable(_) | BackendError::DeadlineExceeded
        ),
        "{err:?}"
    );
    // Fewer calls than the 20 allowed: the 600 ms budget stopped the retries.
    let n = proxy.count(DECRYPT);
    assert!((1..20).contains(&n), "{n} attempts");
    proxy.clear();
}

#[tokio::test]
async fn dropped_connections_and_stalls_fail_within_deadline_then_recover() {
    let Some(ep) =
        moto_endpoint("dropped_connections_and_stalls_fail_within_deadline_then_recover")
    else {
        return;
    };
    let (proxy, b) = proxied(&ep, |c| KmsConfig {
        max_attempts: 3,
        call_timeout_ms: 400,
        deadline_ms: 1000,
        // Health answered fresh each time here (its reuse is pinned separately).
        health_cache_ms: 0,
        ..no_cache(c)
    })
    .await;
    let id = ShardIdentity::new("acct-drop", "s", Version::FIRST);
    let (dek, wrapped) = b.generate_data_key(&id).await.unwrap();

    proxy.reset_counts();
    proxy.set(Fault::Drop);
    let err = b.unwrap(&id, &wrapped).await.unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Unavailable(_) | BackendError::DeadlineExceeded
        ),
        "{err:?}"
    );
    let dropped = proxy.count(DECRYPT);
    assert!(
        (2..=3).contains(&dropped),
        "connection failures are retried, at most max_attempts times: {dropped}"
    );
    assert!(!b.health().await.usable);

    // A stalled KMS (it would answer only after STALL): every attempt times out and the
    // budget ends the operation. An error at all proves it: had the backend waited out the
    // stall, moto's answer would have decrypted the key.
    const STALL: Duration = Duration::from_secs(120);
    proxy.reset_counts();
    proxy.set(Fault::Latency(STALL));
    let err = tokio::time::timeout(STALL / 4, b.unwrap(&id, &wrapped))
        .await
        .expect("the read waited on the stalled KMS past its budget")
        .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Unavailable(_) | BackendError::DeadlineExceeded
        ),
        "{err:?}"
    );
    let stalled = proxy.count(DECRYPT);
    assert!((1..=3).contains(&stalled), "{stalled} attempts");

    proxy.clear();
    assert_eq!(
        b.unwrap(&id, &wrapped).await.unwrap().expose(),
        dek.expose()
    );
    assert!(b.health().await.usable);
}

#[tokio::test]
async fn concurrent_first_reads_make_one_decrypt() {
    let Some(ep) = moto_endpoint("concurrent_first_reads_make_one_decrypt") else {
        return;
    };
    let (proxy, b) = proxied(&ep, |c| c).await;
    let b = Arc::new(b);
    let id = ShardIdentity::new("acct-sf", "s", Version::FIRST);
    let (dek, wrapped) = b.generate_data_key(&id).await.unwrap();
    proxy.reset_counts();
    // Slow Decrypt so the eight reads overlap.
    proxy.set_rule(Rule {
        fault: Fault::Latency(Duration::from_millis(200)),
        target: Some(DECRYPT.into()),
        remaining: None,
    });
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (b, id, wrapped, barrier) = (
            Arc::clone(&b),
            id.clone(),
            wrapped.clone(),
            Arc::clone(&barrier),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            b.unwrap(&id, &wrapped).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().expose(), dek.expose());
    }
    proxy.clear();
    assert_eq!(proxy.count(DECRYPT), 1);
    let s = b.cache_stats();
    assert_eq!((s.decrypt_calls, s.misses, s.hits), (1, 1, 7));
}

#[tokio::test]
async fn repeated_reads_make_one_decrypt() {
    let Some(ep) = moto_endpoint("repeated_reads_make_one_decrypt") else {
        return;
    };
    let (proxy, b) = proxied(&ep, |c| c).await;
    let id = ShardIdentity::new("acct-hot", "s", Version::FIRST);
    let (dek, wrapped) = b.generate_data_key(&id).await.unwrap();
    proxy.reset_counts();
    for _ in 0..50 {
        assert_eq!(
            b.unwrap(&id, &wrapped).await.unwrap().expose(),
            dek.expose()
        );
    }
    assert_eq!(proxy.count(DECRYPT), 1);
    let s = b.cache_stats();
    assert_eq!(
        (s.decrypt_calls, s.misses, s.hits, s.entries),
        (1, 1, 49, 1)
    );
    // Writes are never cached: each generate is a fresh GenerateDataKey.
    b.generate_data_key(&id).await.unwrap();
    b.generate_data_key(&id).await.unwrap();
    assert_eq!(proxy.count(GENERATE), 2);
}

#[tokio::test]
async fn max_age_expiry_forces_a_new_decrypt() {
    let Some(ep) = moto_endpoint("max_age_expiry_forces_a_new_decrypt") else {
        return;
    };
    // An age far above two back-to-back unwraps on a loaded machine (they take milliseconds),
    // so the first pair can only share one Decrypt; past it, a timer never fires early.
    const MAX_AGE_MS: u64 = 3_000;
    let (proxy, b) = proxied(&ep, |c| KmsConfig {
        cache: KmsCacheConfig {
            max_age_ms: MAX_AGE_MS,
            ..KmsCacheConfig::default()
        },
        ..c
    })
    .await;
    let id = ShardIdentity::new("acct-age", "s", Version::FIRST);
    let (_, wrapped) = b.generate_data_key(&id).await.unwrap();
    proxy.reset_counts();
    b.unwrap(&id, &wrapped).await.unwrap();
    b.unwrap(&id, &wrapped).await.unwrap();
    assert_eq!(proxy.count(DECRYPT), 1);
    tokio::time::sleep(Duration::from_millis(MAX_AGE_MS + 100)).await;
    b.unwrap(&id, &wrapped).await.unwrap();
    b.unwrap(&id, &wrapped).await.unwrap();
    assert_eq!(proxy.count(DECRYPT), 2);
    assert!(b.cache_stats().evictions >= 1);
}

#[tokio::test]
async fn max_uses_expiry_forces_a_new_decrypt() {
    let Some(ep) = moto_endpoint("max_uses_expiry_forces_a_new_decrypt") else {
        return;
    };
    let (proxy, b) = proxied(&ep, |c| KmsConfig {
        cache: KmsCacheConfig {
            max_uses: 3,
            ..KmsCacheConfig::default()
        },
        ..c
    })
    .await;
    let id = ShardIdentity::new("acct-uses", "s", Version::FIRST);
    let (_, wrapped) = b.generate_data_key(&id).await.unwrap();
    proxy.reset_counts();
    for _ in 0..3 {
        b.unwrap(&id, &wrapped).await.unwrap();
    }
    assert_eq!(proxy.count(DECRYPT), 1);
    b.unwrap(&id, &wrapped).await.unwrap();
    assert_eq!(proxy.count(DECRYPT), 2);
    assert_eq!(b.cache_stats().decrypt_calls, 2);
}

#[tokio::test]
async fn rewrap_between_kms_keys_uses_reencrypt_only() {
    let Some(ep) = moto_endpoint("rewrap_between_kms_keys_uses_reencrypt_only") else {
        return;
    };
    let proxy = FaultProxy::start(&ep).await;
    let key_a = create_kms_key(&ep).await;
    let key_b = create_kms_key(&ep).await;
    let a = backend(&config(&key_a, &proxy.url())).await;
    let b = backend(&config(&key_b, &proxy.url())).await;
    let id = ShardIdentity::new("acct-rw", "s", Version::new(3).unwrap());
    let (dek, wrapped) = a.generate_data_key(&id).await.unwrap();

    proxy.reset_counts();
    let moved = b.rewrap_from(&id, &a, &wrapped).await.unwrap();
    let counts = proxy.counts();
    assert_eq!(counts.get(REENCRYPT), Some(&1), "{counts:?}");
    assert_eq!(
        counts.len(),
        1,
        "ReEncrypt only, no Decrypt/GenerateDataKey/Encrypt: {counts:?}"
    );
    assert_eq!(a.cache_stats().decrypt_calls, 0);
    assert!(moved.key_ref.contains(&key_b), "{}", moved.key_ref);

    assert_eq!(b.unwrap(&id, &moved).await.unwrap().expose(), dek.expose());
    // The new blob is bound to key B and to the same identity.
    assert!(a.unwrap(&id, &moved).await.is_err());
    assert_eq!(
        b.unwrap(
            &ShardIdentity::new("acct-rw", "s", Version::new(4).unwrap()),
            &moved
        )
        .await
        .unwrap_err(),
        BackendError::Integrity
    );
    // A blob moved to another row cannot be re-wrapped either.
    assert_eq!(
        b.rewrap_from(
            &ShardIdentity::new("acct-rw2", "s", Version::new(3).unwrap()),
            &a,
            &wrapped
        )
        .await
        .unwrap_err(),
        BackendError::Integrity
    );
}

#[tokio::test]
async fn rewrap_falls_back_to_unwrap_and_wrap_where_reencrypt_cannot_reach() {
    let Some(ep) =
        moto_endpoint("rewrap_falls_back_to_unwrap_and_wrap_where_reencrypt_cannot_reach")
    else {
        return;
    };
    let proxy = FaultProxy::start(&ep).await;
    // Source through the proxy, destination on another endpoint: not the same KMS as far as
    // the backend can tell, so no ReEncrypt.
    let a = backend(&no_cache(config(&create_kms_key(&ep).await, &proxy.url()))).await;
    let b = backend(&config(&create_kms_key(&ep).await, &ep)).await;
    let id = ShardIdentity::new("acct-fb", "s", Version::FIRST);
    let (dek, wrapped) = a.generate_data_key(&id).await.unwrap();
    proxy.reset_counts();
    let moved = b.rewrap_from(&id, &a, &wrapped).await.unwrap();
    assert_eq!(proxy.count(DECRYPT), 1);
    assert_eq!(proxy.count(REENCRYPT), 0);
    assert_eq!(proxy.count(ENCRYPT), 0);
    assert_eq!(b.unwrap(&id, &moved).await.unwrap().expose(), dek.expose());
}

#[tokio::test]
async fn bad_config_is_refused() {
    let mut c = KmsConfig::new("", REGION);
    assert!(matches!(
        KmsBackend::open("x", &c).await.unwrap_err(),
        BackendError::Internal(_)
    ));
    c.key_id = "k".into();
    c.max_attempts = 0;
    assert!(KmsBackend::open("x", &c).await.is_err());
}

#[tokio::test]
async fn concurrent_reads_during_an_outage_share_one_failed_decrypt() {
    let Some(ep) = moto_endpoint("concurrent_reads_during_an_outage_share_one_failed_decrypt")
    else {
        return;
    };
    let (proxy, b) = proxied(&ep, |c| KmsConfig {
        max_attempts: 3,
        call_timeout_ms: 400,
        deadline_ms: 1000,
        ..c
    })
    .await;
    let b = Arc::new(b);
    let id = ShardIdentity::new("acct-outage", "s", Version::FIRST);
    let (dek, wrapped) = b.generate_data_key(&id).await.unwrap();
    proxy.reset_counts();
    // Stalled far past the 1 s budget: an error (rather than the key moto would answer after
    // the stall) shows that the budget ended each read.
    proxy.set(Fault::Latency(Duration::from_secs(120)));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (b, id, wrapped) = (Arc::clone(&b), id.clone(), wrapped.clone());
        tasks.push(tokio::spawn(async move { b.unwrap(&id, &wrapped).await }));
    }
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                BackendError::Unavailable(_) | BackendError::DeadlineExceeded
            ),
            "{err:?}"
        );
    }
    // One operation (at most max_attempts = 3 Decrypt calls) for all eight waiters, not
    // eight operations (up to 24 calls).
    assert!(
        (1..=3).contains(&proxy.count(DECRYPT)),
        "{:?}",
        proxy.counts()
    );
    proxy.clear();
    assert_eq!(
        b.unwrap(&id, &wrapped).await.unwrap().expose(),
        dek.expose()
    );
}

#[tokio::test]
async fn health_answers_are_reused_so_probes_make_no_kms_traffic() {
    let Some(ep) = moto_endpoint("health_answers_are_reused_so_probes_make_no_kms_traffic") else {
        return;
    };
    let (proxy, b) = proxied(&ep, |c| c).await;
    proxy.reset_counts();
    // Many probes at once and in a row: one DescribeKey.
    let (h1, h2, h3) = tokio::join!(b.health(), b.health(), b.health());
    for h in [h1, h2, h3] {
        assert!(h.usable, "{h:?}");
    }
    for _ in 0..20 {
        assert!(b.health().await.usable);
    }
    assert_eq!(proxy.count("TrentService.DescribeKey"), 1);
    let stat = b
        .stats()
        .into_iter()
        .find(|s| s.name == "kms_describe_key_calls_total")
        .map(|s| s.value);
    assert_eq!(stat, Some(1));
}

#[tokio::test]
async fn a_wrapped_key_naming_another_key_version_is_refused_without_a_kms_call() {
    let Some(ep) =
        moto_endpoint("a_wrapped_key_naming_another_key_version_is_refused_without_a_kms_call")
    else {
        return;
    };
    let (proxy, b) = proxied(&ep, no_cache).await;
    let id = ShardIdentity::new("acct-kv", "s", Version::FIRST);
    let (dek, mut wrapped) = b.generate_data_key(&id).await.unwrap();
    assert_eq!(
        b.unwrap(&id, &wrapped).await.unwrap().expose(),
        dek.expose()
    );
    proxy.reset_counts();
    // A database writer renumbers the row's key version (e.g. away from a destroyed one).
    for v in [0, 2, u32::MAX] {
        wrapped.key_version = v;
        assert!(
            matches!(
                b.unwrap(&id, &wrapped).await,
                Err(BackendError::KeyUnusable(_))
            ),
            "key version {v}"
        );
        assert!(matches!(
            b.verify(&id, &wrapped).await,
            Err(BackendError::KeyUnusable(_))
        ));
        assert!(matches!(
            b.rewrap_from(&id, &b, &wrapped).await,
            Err(BackendError::KeyUnusable(_))
        ));
    }
    assert_eq!(proxy.count(DECRYPT) + proxy.count(REENCRYPT), 0);
}
