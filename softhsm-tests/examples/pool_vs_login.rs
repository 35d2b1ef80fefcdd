//! Measure (not a test): what a pool of logged-in sessions buys over a login per operation,
//! on one SoftHSM2 token and key, three loops:
//!
//! - `raw pooled`: `C_DecryptInit` + `C_Decrypt` of a wrapped data key on sessions opened
//!   once and kept logged in, one session per thread, `THREADS` threads (default 2, this
//!   machine's cores, the gateway's blocking-pool width under load): the raw limit of the token;
//! - `backend pooled`: `Pkcs11Backend::unwrap` (pool of 8, `spawn_blocking`, handle cache,
//!   probes) from 16 concurrent tasks on a 2-thread runtime, like the gateway's GETs;
//! - `per-op`: open session + `C_Login` + `C_FindObjects` + `C_Decrypt` + `C_Logout` + close per
//!   unwrap, one login at a time (logins are process-wide in PKCS#11).
//!
//! `SHARDGATE_TEST_SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so \
//!  cargo run --release -p shardgate-softhsm-tests --example pool_vs_login [N] [THREADS]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use shardgate_backends::pkcs11::{self, init_key, session, Pkcs11Backend};
use shardgate_backends::{KeyBackend, ShardIdentity, Version};
use shardgate_softhsm_tests::{module, TestToken};
use std::sync::Arc;
use std::time::Instant;

const TASKS: usize = 16;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(m) = module("pool_vs_login") else {
        return;
    };
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2).max(1);
    let tok = TestToken::new(&m, "sg-bench");
    let mut cfg = tok.config("kek");
    cfg.pool_size = 8;
    init_key(&cfg).unwrap();
    let id = ShardIdentity::new("acct", "s", Version::FIRST);
    let b = Arc::new(Pkcs11Backend::open("hsm", &cfg).unwrap());
    let (dek, w) = b.generate_data_key(&id).await.unwrap();
    let dek = Arc::new(dek);

    // Backend pooled: TASKS concurrent callers share n unwraps.
    for _ in 0..200 {
        b.unwrap(&id, &w).await.unwrap();
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..TASKS {
        let (b, id, w, dek) = (b.clone(), id.clone(), w.clone(), dek.clone());
        let share = n / TASKS + usize::from(k < n % TASKS);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let key = b.unwrap(&id, &w).await.unwrap();
                assert_eq!(key.expose(), dek.expose());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let backend = n as f64 / t.elapsed().as_secs_f64();
    println!(
        "backend pooled: {n} unwraps, {backend:.0}/s ({TASKS} tasks, pool 8); {:?}",
        b.pool_status()
    );

    // Raw pooled: the backend stays open (its anchor session keeps the login), so sessions
    // opened here are logged in; one per thread, opened and found once, then C_Decrypt only.
    let ctx = pkcs11::shared_context(&m).unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| i.label().trim_end() == "sg-bench")
                .unwrap_or(false)
        })
        .unwrap();
    let aad = Arc::new(id.aad());
    let blob = Arc::new(w.blob.clone());
    let per_thread = n / threads;
    let sessions: Vec<_> = (0..threads)
        .map(|_| ctx.open_rw_session(slot).unwrap())
        .collect();
    let h = sessions[0]
        .find_objects(&[Attribute::Label(b"kek/v1".to_vec())])
        .unwrap()[0];
    for s in &sessions {
        for _ in 0..200 {
            session::open(s, h, &aad, &blob, 32).unwrap();
        }
    }
    let t = Instant::now();
    let workers: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let (aad, blob, dek) = (aad.clone(), blob.clone(), dek.clone());
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    let k = session::open(&s, h, &aad, &blob, 32).unwrap();
                    assert_eq!(k.as_slice(), dek.expose().as_slice());
                }
                s
            })
        })
        .collect();
    let sessions: Vec<_> = workers.into_iter().map(|t| t.join().unwrap()).collect();
    let raw = (per_thread * threads) as f64 / t.elapsed().as_secs_f64();
    println!(
        "raw pooled: {} unwraps, {raw:.0}/s ({threads} threads, one logged-in session each)",
        per_thread * threads
    );
    drop(sessions);
    // Let the backend's sessions close (only then does a logout end anything of ours).
    drop(b);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let naive_n = (n / 10).max(100);
    let t = Instant::now();
    for _ in 0..naive_n {
        let s = ctx.open_rw_session(slot).unwrap();
        s.login(UserType::User, Some(&tok.pin.clone().into()))
            .unwrap();
        // After a logout the key has a new handle: it must be found again each time.
        let h = s
            .find_objects(&[Attribute::Label(b"kek/v1".to_vec())])
            .unwrap()[0];
        let k = session::open(&s, h, &aad, &w.blob, 32).unwrap();
        assert_eq!(k.len(), 32);
        s.logout().unwrap();
        s.close().unwrap();
    }
    let naive = naive_n as f64 / t.elapsed().as_secs_f64();
    println!("per-op session+login+find+decrypt+logout+close: {naive_n} unwraps, {naive:.0}/s");
    println!("ratio raw pooled/per-op: {:.1}x", raw / naive);
    println!("ratio backend pooled/per-op: {:.1}x", backend / naive);
}
