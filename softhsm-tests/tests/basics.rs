//! Conformance, provisioning, refusals, rotation, batch and iv = "hsm" on a real SoftHSM2
//! token (one process per test: run with cargo nextest).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_backends::pkcs11::{self, init_key, rotate_key, IvMode, Pkcs11Backend};
use shardgate_backends::{BackendError, DataKey, KeyBackend, ShardIdentity, Version, WrappedKey};
use shardgate_softhsm_tests::{module, TestToken};

const HELPER: &str = env!("CARGO_BIN_EXE_sg-softhsm-helper");

fn token(test: &str) -> Option<TestToken> {
    module(test).map(|m| TestToken::new(&m, "sg-test"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_backend_passes_conformance() {
    let Some(tok) = token("pkcs11_backend_passes_conformance") else {
        return;
    };
    let cfg = tok.config("kek");
    assert_eq!(init_key(&cfg).unwrap(), 1);
    let b = Pkcs11Backend::open("hsm", &cfg).unwrap();
    assert_eq!(b.kind(), "pkcs11");
    shardgate_backends::conformance::run(&b).await.unwrap();
    let st = b.pool_status();
    assert_eq!(
        st.recoveries, 0,
        "tampering must not count as a fault: {st:?}"
    );
    assert_eq!(st.session_overlaps, 0);
    assert!(b.health().await.usable);
    // Debug never shows the PIN.
    assert!(!format!("{b:?}").contains(&tok.pin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_key_creates_a_sensitive_non_extractable_encrypt_decrypt_only_key() {
    use cryptoki::object::{Attribute, AttributeType};
    let Some(tok) = token("init_key_attributes") else {
        return;
    };
    let cfg = tok.config("kek");
    assert_eq!(init_key(&cfg).unwrap(), 1);
    // Idempotent: a second run creates nothing and answers the existing version.
    assert_eq!(init_key(&cfg).unwrap(), 1);
    let ctx = pkcs11::shared_context(&tok.module).unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| i.label().trim_end() == "sg-test")
                .unwrap_or(false)
        })
        .unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(
        cryptoki::session::UserType::User,
        Some(&tok.pin.clone().into()),
    )
    .unwrap();
    let found = s
        .find_objects(&[Attribute::Label(b"kek/v1".to_vec())])
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(s
        .find_objects(&[Attribute::Label(b"kek/v2".to_vec())])
        .unwrap()
        .is_empty());
    let attrs = s
        .get_attributes(
            found[0],
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Wrap,
                AttributeType::Unwrap,
                AttributeType::Sign,
                AttributeType::Verify,
                AttributeType::Derive,
                AttributeType::Token,
                AttributeType::ValueLen,
                AttributeType::Value,
            ],
        )
        .unwrap();
    let mut seen = 0;
    for a in attrs {
        seen += 1;
        match a {
            Attribute::Sensitive(b) => assert!(b),
            Attribute::Extractable(b) => assert!(!b),
            Attribute::Encrypt(b) | Attribute::Decrypt(b) | Attribute::Token(b) => assert!(b),
            Attribute::Wrap(b)
            | Attribute::Unwrap(b)
            | Attribute::Sign(b)
            | Attribute::Verify(b)
            | Attribute::Derive(b) => assert!(!b, "{a:?}"),
            Attribute::ValueLen(l) => assert_eq!(u64::from(l), 32),
            Attribute::Value(v) => {
                assert!(v.is_empty(), "a sensitive key's value must not be readable")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(seen >= 11, "{seen} attributes read");
    s.logout().unwrap();
}

fn open_err(cfg: &pkcs11::Pkcs11Config) -> BackendError {
    match Pkcs11Backend::open("hsm", cfg) {
        Ok(_) => panic!("open must refuse"),
        Err(e) => e,
    }
}

#[test]
fn open_refuses_an_extractable_kek() {
    let Some(tok) = token("open_refuses_an_extractable_kek") else {
        return;
    };
    tok.create_key(HELPER, "kek/v1", &[7; 32], true, true);
    let err = open_err(&tok.config("kek"));
    assert!(matches!(err, BackendError::KeyUnusable(_)), "{err:?}");
    assert!(err.to_string().contains("CKA_EXTRACTABLE"), "{err}");
}

#[test]
fn open_refuses_a_non_sensitive_kek() {
    let Some(tok) = token("open_refuses_a_non_sensitive_kek") else {
        return;
    };
    tok.create_key(HELPER, "kek/v1", &[7; 32], false, false);
    let err = open_err(&tok.config("kek"));
    assert!(err.to_string().contains("CKA_SENSITIVE"), "{err}");
}

#[test]
fn open_refuses_a_missing_kek() {
    let Some(tok) = token("open_refuses_a_missing_kek") else {
        return;
    };
    let err = open_err(&tok.config("kek"));
    assert!(matches!(err, BackendError::KeyUnusable(_)), "{err:?}");
    assert!(
        err.to_string().contains("KEK missing") && err.to_string().contains("kek/v1"),
        "{err}"
    );
}

#[test]
fn open_refuses_a_wrong_pin_and_never_shows_it() {
    let Some(tok) = token("open_refuses_a_wrong_pin") else {
        return;
    };
    tok.create_key(HELPER, "kek/v1", &[7; 32], false, true);
    let mut cfg = tok.config("kek");
    let wrong = "wrong-pin-0xDEADBEEF";
    std::env::set_var("SG_TEST_WRONG_PIN", wrong);
    cfg.pin_file = None;
    cfg.pin_env = Some("SG_TEST_WRONG_PIN".into());
    let err = open_err(&cfg);
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("PIN is incorrect"), "{shown}");
    assert!(!shown.contains(wrong), "{shown}");
    assert!(!format!("{cfg:?}").contains(wrong));
}

#[test]
fn open_refuses_a_missing_module() {
    let Some(tok) = token("open_refuses_a_missing_module") else {
        return;
    };
    let mut cfg = tok.config("kek");
    cfg.module = "/nonexistent/libnothing.so".into();
    let err = open_err(&cfg);
    assert!(
        err.to_string().contains("/nonexistent/libnothing.so"),
        "{err}"
    );
    assert!(!format!("{err:?}").contains(&tok.pin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_wraps_with_v2_and_v1_blobs_still_unwrap() {
    let Some(tok) = token("rotate") else { return };
    let cfg = tok.config("kek");
    assert!(
        rotate_key(&cfg).is_err(),
        "rotate before init-key must refuse"
    );
    init_key(&cfg).unwrap();
    let b = Pkcs11Backend::open("hsm", &cfg).unwrap();
    let id = ShardIdentity::new("acct", "s1", Version::FIRST);
    let (dek1, w1) = b.generate_data_key(&id).await.unwrap();
    assert_eq!(
        (w1.key_ref.as_str(), w1.key_version, w1.blob.len()),
        ("kek", 1, 60)
    );
    assert_eq!(rotate_key(&cfg).unwrap(), 2);
    b.refresh_keys().await.unwrap();
    assert_eq!(b.key_versions(), vec![1, 2]);
    let (dek2, w2) = b.generate_data_key(&id).await.unwrap();
    assert_eq!(w2.key_version, 2);
    assert_eq!(b.unwrap(&id, &w1).await.unwrap().expose(), dek1.expose());
    assert_eq!(b.unwrap(&id, &w2).await.unwrap().expose(), dek2.expose());
    // A v1 blob relabelled as v2 does not open.
    let swapped = WrappedKey {
        key_version: 2,
        ..w1.clone()
    };
    assert_eq!(
        b.unwrap(&id, &swapped).await.unwrap_err(),
        BackendError::Integrity
    );
    // An unknown version is KeyUnusable, another key_ref too.
    let unknown = WrappedKey {
        key_version: 9,
        ..w1.clone()
    };
    assert!(matches!(
        b.unwrap(&id, &unknown).await,
        Err(BackendError::KeyUnusable(_))
    ));
    let other = WrappedKey {
        key_ref: "other".into(),
        ..w1
    };
    assert!(matches!(
        b.unwrap(&id, &other).await,
        Err(BackendError::KeyUnusable(_))
    ));
    // A second backend opened after the rotation wraps with v2 at once.
    let b2 = Pkcs11Backend::open("hsm2", &cfg).unwrap();
    assert_eq!(b2.generate_data_key(&id).await.unwrap().1.key_version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_backend_starts_wrapping_with_a_rotated_version_on_its_own() {
    let Some(tok) = token("rotate_refresh") else {
        return;
    };
    let mut cfg = tok.config("kek");
    cfg.key_refresh_interval_ms = 200;
    init_key(&cfg).unwrap();
    let b = Pkcs11Backend::open("hsm", &cfg).unwrap();
    let id = ShardIdentity::new("acct", "s1", Version::FIRST);
    assert_eq!(b.generate_data_key(&id).await.unwrap().1.key_version, 1);
    let finds = b.pool_status().find_calls;
    assert_eq!(rotate_key(&cfg).unwrap(), 2);
    // No refresh_keys() call: the backend's own timer (every 200 ms) notices the new
    // version; a wait that must end, with a deadline far past the interval.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (dek, w) = loop {
        let (dek, w) = b.generate_data_key(&id).await.unwrap();
        if w.key_version == 2 {
            break (dek, w);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "v2 never started wrapping"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(b.unwrap(&id, &w).await.unwrap().expose(), dek.expose());
    assert!(b.pool_status().find_calls > finds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwrap_batch_answers_each_item_in_order_on_one_checkout() {
    let Some(tok) = token("batch") else { return };
    let cfg = tok.config("kek");
    init_key(&cfg).unwrap();
    let mut cfg1 = cfg.clone();
    cfg1.pool_size = 1;
    let b = Pkcs11Backend::open("hsm", &cfg1).unwrap();
    let mut items = Vec::new();
    let mut deks = Vec::new();
    for i in 0..10u64 {
        let id = ShardIdentity::new("acct", format!("s{i}"), Version::FIRST);
        let (dek, w) = b.generate_data_key(&id).await.unwrap();
        deks.push(dek);
        items.push((id, w));
    }
    items[3].1.blob[20] ^= 1;
    items[5].0 = ShardIdentity::new("acct", "other", Version::FIRST);
    let res = b.unwrap_batch(&items).await;
    assert_eq!(res.len(), 10);
    for (i, (r, dek)) in res.iter().zip(&deks).enumerate() {
        match i {
            3 | 5 => assert_eq!(
                r.as_ref().unwrap_err(),
                &BackendError::Integrity,
                "item {i}"
            ),
            _ => assert_eq!(r.as_ref().unwrap().expose(), dek.expose(), "item {i}"),
        }
    }
    assert_eq!(b.pool_status().recoveries, 0);
    let _ = DataKey::generate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_iv_mode_refuses_an_hsm_that_does_not_generate_ivs() {
    let Some(tok) = token("hsm_iv_on_softhsm") else {
        return;
    };
    let mut cfg = tok.config("kek");
    init_key(&cfg).unwrap();
    cfg.iv = IvMode::Hsm;
    // SoftHSM2 only takes caller IVs: the start-up probe wrap already sees no HSM IV.
    let err = open_err(&cfg);
    assert!(err.to_string().contains("did not generate an IV"), "{err}");
}
