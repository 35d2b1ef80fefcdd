//! Measure (not a test): pooled unwraps per second through the backend versus, per
//! operation, open session + C_Login + C_FindObjects + C_Decrypt + C_Logout + close, on one
//! thread, same token and key.
//!
//! `SHARDGATE_TEST_SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so \
//!  cargo run --release -p shardgate-softhsm-tests --example pool_vs_login [N]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use shardgate_backends::pkcs11::{self, init_key, session, Pkcs11Backend};
use shardgate_backends::{KeyBackend, ShardIdentity};
use shardgate_softhsm_tests::{module, TestToken};
use std::time::Instant;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(m) = module("pool_vs_login") else {
        return;
    };
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let tok = TestToken::new(&m, "sg-bench");
    let mut cfg = tok.config("kek");
    cfg.pool_size = 1;
    init_key(&cfg).unwrap();
    let id = ShardIdentity::new("acct", "s", 1);
    let (dek, w) = {
        let b = Pkcs11Backend::open("hsm", &cfg).unwrap();
        let (dek, w) = b.generate_data_key(&id).await.unwrap();
        for _ in 0..200 {
            b.unwrap(&id, &w).await.unwrap();
        }
        let t = Instant::now();
        for _ in 0..n {
            let k = b.unwrap(&id, &w).await.unwrap();
            assert_eq!(k.expose(), dek.expose());
        }
        let pooled = n as f64 / t.elapsed().as_secs_f64();
        println!("pooled: {n} unwraps, {pooled:.0}/s; {:?}", b.pool_status());
        (pooled, w)
    };
    // Let the backend's sessions close (its anchor kept the login) before the naive loop.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let pooled = dek;
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
    let aad = id.aad();
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
    println!("ratio pooled/per-op: {:.1}x", pooled / naive);
}
