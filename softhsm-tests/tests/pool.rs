//! The session pool under load, exhaustion, recovery and tampering, on a real SoftHSM2
//! token (one process per test: run with cargo nextest).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_backends::pkcs11::{init_key, Pkcs11Backend};
use shardgate_backends::{BackendError, KeyBackend, ShardIdentity, Version};
use shardgate_softhsm_tests::{module, TestToken};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HELPER: &str = env!("CARGO_BIN_EXE_sg-softhsm-helper");

fn token(test: &str) -> Option<TestToken> {
    module(test).map(|m| TestToken::new(&m, "sg-pool"))
}

/// wrap + unwrap + compare; returns how many attempts failed.
async fn roundtrip(b: &Pkcs11Backend, id: &ShardIdentity) -> Result<(), BackendError> {
    let (dek, w) = b.generate_data_key(id).await?;
    let back = b.unwrap(id, &w).await?;
    assert_eq!(back.expose(), dek.expose(), "WRONG KEY for {id:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_tasks_share_four_sessions_in_parallel_without_overlap() {
    let Some(tok) = token("concurrency") else {
        return;
    };
    let cfg = tok.config("kek");
    init_key(&cfg).unwrap();
    let b = Arc::new(Pkcs11Backend::open("hsm", &cfg).unwrap());
    assert_eq!(b.pool_status().size, 4);
    let finds_before = b.pool_status().find_calls;
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500u64 {
                let id = ShardIdentity::new(
                    format!("acct-{t}"),
                    format!("s-{i}"),
                    Version::try_from(i + 1).unwrap(),
                );
                roundtrip(&b, &id).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let st = b.pool_status();
    println!("{st:?}");
    assert_eq!(
        st.session_overlaps, 0,
        "a session was used by two threads at once"
    );
    assert!(
        st.peak_busy >= 3,
        "never 3 sessions busy at once (a global lock?): {st:?}"
    );
    assert!(st.open <= 4, "{st:?}");
    assert_eq!(st.recoveries, 0);
    assert_eq!(
        st.find_calls, finds_before,
        "no C_FindObjects on the hot path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_exhaustion_answers_unavailable_within_the_checkout_timeout() {
    let Some(tok) = token("exhaustion") else {
        return;
    };
    let mut cfg = tok.config("kek");
    init_key(&cfg).unwrap();
    cfg.pool_size = 1;
    cfg.checkout_timeout_ms = 300;
    let b = Pkcs11Backend::open("hsm", &cfg).unwrap();
    let id = ShardIdentity::new("a", "s", Version::FIRST);
    roundtrip(&b, &id).await.unwrap();
    let hold = b.hold_checkout().await.unwrap();
    assert_eq!(b.pool_status().in_use, 1);
    // The only session stays held: the checkout timeout, nothing else, can end the wait
    // (a wait that must end: 30 s; a lower bound only, as a timer never fires early).
    let t0 = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(30), b.generate_data_key(&id))
        .await
        .expect("a checkout waited for the held session past its timeout")
        .unwrap_err();
    let took = t0.elapsed();
    assert_eq!(err, BackendError::Unavailable("pool exhausted".into()));
    assert!(took >= Duration::from_millis(250), "{took:?}");
    drop(hold);
    roundtrip(&b, &id).await.unwrap();
    assert_eq!(b.pool_status().recoveries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_the_hsm_closed_are_replaced_without_a_recovery() {
    let Some(tok) = token("dead_sessions") else {
        return;
    };
    let mut cfg = tok.config("kek");
    init_key(&cfg).unwrap();
    cfg.pool_size = 4;
    let b = Arc::new(Pkcs11Backend::open("hsm", &cfg).unwrap());
    // Open every session of the pool: four operations at once.
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20i64 {
                roundtrip(
                    &b,
                    &ShardIdentity::new(format!("a-{t}"), "s", Version::try_from(i + 1).unwrap()),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let open = b.pool_status().open;
    assert!(open >= 2, "{:?}", b.pool_status());
    assert_eq!(b.inject_dead_sessions(), open);
    // Every operation still succeeds: each dead session is found before it is used, dropped,
    // and replaced by a new one; the login is intact, so nothing recovers.
    for i in 0..20i64 {
        roundtrip(
            &b,
            &ShardIdentity::new("after", "s", Version::try_from(i + 1).unwrap()),
        )
        .await
        .unwrap();
    }
    let st = b.pool_status();
    assert_eq!(st.dead_sessions, open as u64, "{st:?}");
    assert_eq!(st.recoveries, 0, "{st:?}");
    assert_eq!(st.session_overlaps, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_under_traffic_recovers_without_wrong_results() {
    let Some(tok) = token("recovery_logout") else {
        return;
    };
    let cfg = tok.config("kek");
    init_key(&cfg).unwrap();
    let b = Arc::new(Pkcs11Backend::open("hsm", &cfg).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let (b, stop, ok) = (b.clone(), stop.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id =
                    ShardIdentity::new(format!("acct-{t}"), "s", Version::try_from(i + 1).unwrap());
                // Every operation succeeds: a fault costs at most the one internal retry.
                roundtrip(&b, &id)
                    .await
                    .unwrap_or_else(|e| panic!("op failed: {e:?}"));
                ok.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    // Before each logout and after the last, operations complete again (counts, with a
    // generous deadline for each wait, instead of a rate over a fixed time).
    let ops_flow = || {
        let ok = ok.clone();
        async move {
            let mark = ok.load(Ordering::Relaxed);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while ok.load(Ordering::Relaxed) < mark + 40 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "operations stopped completing"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    for _ in 0..3 {
        ops_flow().await;
        b.inject_logout().await.unwrap();
    }
    ops_flow().await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let st = b.pool_status();
    println!("ops {} {st:?}", ok.load(Ordering::Relaxed));
    assert!(st.recoveries >= 1, "{st:?}");
    assert_eq!(st.session_overlaps, 0);
    assert!(
        ok.load(Ordering::Relaxed) >= 160,
        "four rounds of at least 40 operations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_deleted_and_recreated_recovers_without_reopening() {
    let Some(tok) = token("recovery_token") else {
        return;
    };
    let kek = [0x42u8; 32];
    tok.create_key(HELPER, "kek/v1", &kek, false, true);
    let cfg = tok.config("kek");
    let b = Pkcs11Backend::open("hsm", &cfg).unwrap();
    let ids: Vec<ShardIdentity> = (0..8)
        .map(|i| ShardIdentity::new("acct", format!("s{i}"), Version::FIRST))
        .collect();
    let mut before = Vec::new();
    for id in &ids {
        before.push(b.generate_data_key(id).await.unwrap());
    }
    let rec0 = b.pool_status().recoveries;

    tok.delete();
    // While the token is gone: Unavailable (never Integrity, never a wrong key).
    let mut saw_unavailable = false;
    for (id, (_, w)) in ids.iter().zip(&before) {
        match b.unwrap(id, w).await {
            Err(BackendError::Unavailable(_)) => saw_unavailable = true,
            other => panic!("token gone, want Unavailable: {other:?}"),
        }
    }
    assert!(saw_unavailable);
    assert!(!b.health().await.usable);

    // Re-created from outside with the same label and the same KEK bytes.
    tok.init();
    tok.create_key(HELPER, "kek/v1", &kek, false, true);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b.unwrap(&ids[0], &before[0].1).await {
            Ok(k) => {
                assert_eq!(k.expose(), before[0].0.expose());
                break;
            }
            Err(BackendError::Unavailable(e)) if Instant::now() < deadline => {
                println!("still unavailable: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("did not recover: {e:?}"),
        }
    }
    for (id, (dek, w)) in ids.iter().zip(&before) {
        assert_eq!(b.unwrap(id, w).await.unwrap().expose(), dek.expose());
    }
    roundtrip(&b, &ids[1]).await.unwrap();
    assert!(b.pool_status().recoveries > rec0);
    assert!(b.health().await.usable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blob_is_integrity_and_not_a_recovery_while_a_real_fault_is() {
    let Some(tok) = token("tamper_vs_fault") else {
        return;
    };
    let cfg = tok.config("kek");
    init_key(&cfg).unwrap();
    let b = Pkcs11Backend::open("hsm", &cfg).unwrap();
    let id = ShardIdentity::new("acct", "s", Version::FIRST);
    let (dek, w) = b.generate_data_key(&id).await.unwrap();
    for byte in [0usize, 11, 12, 30, 44, 59] {
        let mut t = w.clone();
        t.blob[byte] ^= 0x80;
        assert_eq!(
            b.unwrap(&id, &t).await.unwrap_err(),
            BackendError::Integrity,
            "byte {byte}"
        );
    }
    let other = ShardIdentity::new("acct", "s", Version::new(2).unwrap());
    assert_eq!(
        b.unwrap(&other, &w).await.unwrap_err(),
        BackendError::Integrity
    );
    assert_eq!(
        b.pool_status().recoveries,
        0,
        "tampering counted as a fault"
    );
    // A real session loss does count.
    b.inject_logout().await.unwrap();
    assert_eq!(b.unwrap(&id, &w).await.unwrap().expose(), dek.expose());
    assert_eq!(b.pool_status().recoveries, 1);
    // And tampering right after a recovery is still Integrity.
    let mut t = w.clone();
    t.blob[40] ^= 1;
    assert_eq!(
        b.unwrap(&id, &t).await.unwrap_err(),
        BackendError::Integrity
    );
    assert_eq!(b.pool_status().recoveries, 1);
}
