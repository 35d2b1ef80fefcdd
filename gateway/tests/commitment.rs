//! Key commitment (FORMAT.md §3a) against a real key-committing attack on AES-GCM, and the
//! fixtures of every envelope format ever written (FORMAT.md §1), read back through the real
//! code on both stores.
//!
//! The attack ("invisible salamanders"): AES-GCM is not key-committing. Whoever knows two
//! keys K1 and K2 can compute ONE ciphertext+tag that opens, with a valid tag, under both,
//! to two different plaintexts. Someone who can replace a stored row's wrapped data key (a
//! database writer with wrap access, a compromised or buggy backend, a re-wrap gone wrong)
//! can then make a stored shard silently read as another one. Format 2 stores a commitment
//! to the data key and checks it before opening, so only the committed key opens the row.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use shardgate::AppState;
use shardgate_backends::local::LocalBackend;
use shardgate_backends::{DataKey, KeyBackend, ShardIdentity, Version};
use std::path::Path;
use std::time::{Duration, Instant};

/// The GCM attack: GF(2^128) arithmetic as GCM defines it, and the two-key ciphertext.
mod gcm {
    use aes::cipher::{BlockEncrypt, KeyInit};

    /// Multiplication in GF(2^128) with GCM's bit order (NIST SP 800-38D, algorithm 1): a
    /// block read big-endian, its first bit is the coefficient of x^0; the field polynomial
    /// is x^128 + x^7 + x^2 + x + 1 (R = 0xE1 || 0^120).
    pub(crate) fn mul(x: u128, y: u128) -> u128 {
        const R: u128 = 0xE1 << 120;
        let mut z = 0u128;
        let mut v = y;
        for i in 0..128 {
            if (x >> (127 - i)) & 1 == 1 {
                z ^= v;
            }
            v = if v & 1 == 1 { (v >> 1) ^ R } else { v >> 1 };
        }
        z
    }

    /// The field's one (the polynomial 1 = the block's first bit).
    pub(crate) const ONE: u128 = 1 << 127;

    pub(crate) fn pow(a: u128, mut e: u128) -> u128 {
        let mut base = a;
        let mut acc = ONE;
        while e > 0 {
            if e & 1 == 1 {
                acc = mul(acc, base);
            }
            base = mul(base, base);
            e >>= 1;
        }
        acc
    }

    /// a^-1 = a^(2^128 - 2) (the multiplicative group has order 2^128 - 1).
    pub(crate) fn inv(a: u128) -> u128 {
        assert_ne!(a, 0, "zero has no inverse");
        pow(a, u128::MAX - 1)
    }

    pub(crate) fn aes(key: &[u8; 32], block: [u8; 16]) -> [u8; 16] {
        let cipher = aes::Aes256::new(key.into());
        let mut b = aes::Block::from(block);
        cipher.encrypt_block(&mut b);
        b.into()
    }

    /// `nonce || counter` (32-bit big-endian counter): J0 has counter 1, the keystream of
    /// ciphertext block i uses counter i + 2.
    fn counter_block(nonce: &[u8; 12], counter: u32) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(nonce);
        b[12..].copy_from_slice(&counter.to_be_bytes());
        b
    }

    fn blocks(data: &[u8]) -> Vec<u128> {
        data.chunks(16)
            .map(|c| {
                let mut b = [0u8; 16];
                b[..c.len()].copy_from_slice(c);
                u128::from_be_bytes(b)
            })
            .collect()
    }

    /// GHASH's input blocks: AAD (zero padded), ciphertext (zero padded), the length block.
    fn ghash_input(aad: &[u8], ct: &[u8]) -> Vec<u128> {
        let mut x = blocks(aad);
        x.extend(blocks(ct));
        x.push(((aad.len() as u128 * 8) << 64) | (ct.len() as u128 * 8));
        x
    }

    fn ghash(h: u128, x: &[u128]) -> u128 {
        x.iter().fold(0u128, |y, xi| mul(y ^ xi, h))
    }

    /// AES-256-GCM seal, from the block cipher (for the known-answer check below).
    pub(crate) fn seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], pt: &[u8]) -> Vec<u8> {
        let mut ct = pt.to_vec();
        for (i, chunk) in ct.chunks_mut(16).enumerate() {
            let ks = aes(key, counter_block(nonce, i as u32 + 2));
            for (b, k) in chunk.iter_mut().zip(ks) {
                *b ^= k;
            }
        }
        let h = u128::from_be_bytes(aes(key, [0u8; 16]));
        let ej0 = u128::from_be_bytes(aes(key, counter_block(nonce, 1)));
        let tag = ghash(h, &ghash_input(aad, &ct)) ^ ej0;
        ct.extend_from_slice(&tag.to_be_bytes());
        ct
    }

    /// A ciphertext||tag of `prefix.len() + 16` bytes (`prefix` a whole number of blocks)
    /// that opens under BOTH `k1` and `k2` with `nonce` and `aad`: under `k1` its first
    /// blocks decrypt to `prefix`; the last ciphertext block is solved for so that both
    /// keys' tags are equal.
    ///
    /// With H_k = AES_k(0), n GHASH input blocks X_1..X_n and the free block at position j,
    /// tag_k = sum_i X_i H_k^(n-i+1) + AES_k(J0). tag_1 = tag_2 is linear in X_j:
    /// X_j (H_1^e + H_2^e) = AES_1(J0) + AES_2(J0) + sum_{i != j} X_i (H_1^e_i + H_2^e_i),
    /// e = n - j + 1.
    pub(crate) fn two_key_ciphertext(
        k1: &[u8; 32],
        k2: &[u8; 32],
        nonce: &[u8; 12],
        aad: &[u8],
        prefix: &[u8],
    ) -> Vec<u8> {
        assert_eq!(prefix.len() % 16, 0, "prefix must be whole blocks");
        let mut ct = prefix.to_vec();
        for (i, chunk) in ct.chunks_mut(16).enumerate() {
            let ks = aes(k1, counter_block(nonce, i as u32 + 2));
            for (b, k) in chunk.iter_mut().zip(ks) {
                *b ^= k;
            }
        }
        ct.extend_from_slice(&[0u8; 16]); // the free block, solved below
        let h1 = u128::from_be_bytes(aes(k1, [0u8; 16]));
        let h2 = u128::from_be_bytes(aes(k2, [0u8; 16]));
        let e1 = u128::from_be_bytes(aes(k1, counter_block(nonce, 1)));
        let e2 = u128::from_be_bytes(aes(k2, counter_block(nonce, 1)));
        let x = ghash_input(aad, &ct);
        let n = x.len();
        let free = blocks(aad).len() + prefix.len() / 16; // 0-based index of the free block
        let weight = |i: usize| {
            let e = (n - i) as u128; // 0-based i: exponent n - i
            pow(h1, e) ^ pow(h2, e)
        };
        let mut rhs = e1 ^ e2;
        for (i, xi) in x.iter().enumerate() {
            if i != free {
                rhs ^= mul(*xi, weight(i));
            }
        }
        let solved = mul(rhs, inv(weight(free)));
        let start = prefix.len();
        ct[start..start + 16].copy_from_slice(&solved.to_be_bytes());
        let x = ghash_input(aad, &ct);
        let tag = ghash(h1, &x) ^ e1;
        debug_assert_eq!(tag, ghash(h2, &x) ^ e2);
        ct.extend_from_slice(&tag.to_be_bytes());
        ct
    }
}

fn aes_gcm_open(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    aes_gcm::Aes256Gcm::new(key.into())
        .decrypt(aes_gcm::Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
}

/// FORMAT.md §3a, computed here without shardgate's code: HMAC-SHA256 under
/// HMAC-SHA256(DEK, "shardgate commit key") over the identity.
fn commitment(dek: &[u8; 32], identity: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(dek).unwrap();
    mac.update(b"shardgate commit key");
    let commit_key = mac.finalize().into_bytes();
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&commit_key).unwrap();
    mac.update(identity);
    mac.finalize().into_bytes().to_vec()
}

const K1: [u8; 32] = [0x11; 32];
const K2: [u8; 32] = [0x22; 32];
const NONCE: [u8; 12] = [0x5a; 12];
const PREFIX: &[u8; 32] = b"share of alice, party 1 of 3 ..!";

#[test]
fn gf128_and_gcm_helpers_match_the_aes_gcm_crate() {
    // x * x^-1 = 1, one is neutral, multiplication commutes.
    let a = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
    let b = 0x66e9_4bd4_ef8a_2c3b_884c_fa59_ca34_2b2eu128;
    assert_eq!(gcm::mul(a, gcm::inv(a)), gcm::ONE);
    assert_eq!(gcm::mul(a, gcm::ONE), a);
    assert_eq!(gcm::mul(a, b), gcm::mul(b, a));
    // Our GCM from the block cipher is byte-identical to the aes-gcm crate's.
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    for len in [0usize, 1, 15, 16, 17, 40] {
        let pt: Vec<u8> = (0..len as u8).collect();
        let ours = gcm::seal(&K1, &NONCE, b"some aad", &pt);
        let theirs = aes_gcm::Aes256Gcm::new((&K1).into())
            .encrypt(
                aes_gcm::Nonce::from_slice(&NONCE),
                Payload {
                    msg: &pt,
                    aad: b"some aad",
                },
            )
            .unwrap();
        assert_eq!(ours, theirs, "len {len}");
    }
}

#[test]
fn a_two_key_ciphertext_opens_under_both_keys_without_the_commitment() {
    let aad = ShardIdentity::new("acct-1", "s", Version::FIRST).aad();
    let ct = gcm::two_key_ciphertext(&K1, &K2, &NONCE, &aad, PREFIX);
    let p1 = aes_gcm_open(&K1, &NONCE, &aad, &ct).expect("opens under K1");
    let p2 = aes_gcm_open(&K2, &NONCE, &aad, &ct).expect("opens under K2");
    assert_eq!(&p1[..32], PREFIX);
    assert_ne!(p1, p2, "two different plaintexts from one ciphertext");
    // A third key does not open it: the tags really are checked.
    assert!(aes_gcm_open(&[0x33; 32], &NONCE, &aad, &ct).is_none());
}

fn row(format: u8, commitment: Option<Vec<u8>>, ct: Vec<u8>) -> shardgate_store::ShardVersionRow {
    shardgate_store::ShardVersionRow {
        account: "acct-1".into(),
        shard: "s".into(),
        version: Version::FIRST,
        format_version: i16::from(format),
        backend: "local".into(),
        key_ref: "unused".into(),
        key_version: 1,
        wrapped_dek: vec![0; 60],
        nonce: NONCE.to_vec(),
        ciphertext: ct,
        key_commitment: commitment,
        created_at: 0,
        created_by: "test".into(),
    }
}

#[test]
fn the_envelope_code_opens_format_1_under_both_keys_and_format_2_only_under_the_committed_one() {
    let k1 = DataKey::from_slice(&K1).unwrap();
    let k2 = DataKey::from_slice(&K2).unwrap();
    // Format 1: no commitment, AES-GCM alone decides, and both keys pass.
    let id1 = ShardIdentity {
        format_version: 1,
        ..ShardIdentity::new("acct-1", "s", Version::FIRST)
    };
    let v1 = row(
        1,
        None,
        gcm::two_key_ciphertext(&K1, &K2, &NONCE, &id1.aad(), PREFIX),
    );
    let p1 = shardgate::domain::envelope::open_with(&k1, &v1).unwrap();
    let p2 = shardgate::domain::envelope::open_with(&k2, &v1).unwrap();
    assert_ne!(*p1, *p2);
    // Format 2: the commitment to K1 refuses K2 before AES-GCM runs.
    let id2 = ShardIdentity::new("acct-1", "s", Version::FIRST);
    assert_eq!(id2.format_version, 2);
    let ct = gcm::two_key_ciphertext(&K1, &K2, &NONCE, &id2.aad(), PREFIX);
    assert!(aes_gcm_open(&K2, &NONCE, &id2.aad(), &ct).is_some());
    let v2 = row(2, Some(commitment(&K1, &id2.aad())), ct);
    assert_eq!(
        shardgate::domain::envelope::commitment(&k1, &id2)
            .unwrap()
            .as_slice(),
        v2.key_commitment.as_deref().unwrap(),
        "FORMAT.md's derivation and the code agree"
    );
    assert_eq!(
        &shardgate::domain::envelope::open_with(&k1, &v2).unwrap()[..32],
        PREFIX
    );
    assert_eq!(
        shardgate::domain::envelope::open_with(&k2, &v2).unwrap_err(),
        shardgate_backends::BackendError::Integrity
    );
    // A format 2 row without its commitment, with a short one, or a format 1 row carrying
    // one: refused, not opened as the other format.
    for (format, c) in [
        (2, None),
        (2, Some(vec![0u8; 31])),
        (1, Some(commitment(&K1, &id1.aad()))),
        (3, Some(commitment(&K1, &id2.aad()))),
    ] {
        let mut r = v2.clone();
        r.format_version = format;
        r.key_commitment = c;
        assert!(
            shardgate::domain::envelope::open_with(&k1, &r).is_err(),
            "{format}"
        );
        assert!(
            shardgate::domain::envelope::wrapped_of(&r).is_err(),
            "{format}"
        );
    }
}

// ----- through the gateway, both stores -----

struct Gw {
    app: axum::Router,
    tokens: Tokens,
    db: Db,
    dir: tempfile::TempDir,
}

impl Gw {
    /// The test config; `keyring` replaces the `local` backend's keyring file (not created).
    async fn new(kind: StoreKind, keyring: Option<&Value>, vault: bool) -> Option<Gw> {
        let dir = tempfile::tempdir().unwrap();
        let url = common::store_url(kind, dir.path()).await?;
        let tokens = Tokens::new();
        let mut cfg = common::config(dir.path(), &url, &tokens);
        if let Some(ring) = keyring {
            let path = dir.path().join("fixture.keyring");
            std::fs::write(&path, serde_json::to_vec_pretty(ring).unwrap()).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            cfg.backends.insert(
                "local".into(),
                shardgate::app::config::BackendConfig::Local {
                    key_file: path,
                    reload_interval_ms: 0,
                    create: false,
                },
            );
        }
        if vault {
            cfg.backends
                .insert("vault".into(), common::local_backend(dir.path(), "vault"));
            cfg.tiers.insert("gold".into(), "vault".into());
            cfg.migration.poll_interval_ms = 100;
        }
        let (state, _) = AppState::build(&cfg).await.unwrap();
        if vault {
            state.start_migration_workers();
        }
        Some(Gw {
            app: shardgate::router(state),
            tokens,
            db: Db::connect(&url).await,
            dir,
        })
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (s, v) = common::call(&self.app, &self.tokens.admin, method, path, body).await;
        (s.as_u16(), v)
    }

    async fn account(&self, account: &str, tier: &str) -> Value {
        let (s, v) = self
            .call(
                "PUT",
                &format!("/v1/accounts/{account}"),
                Some(json!({ "tier": tier })),
            )
            .await;
        assert!(s == 200 || s == 201, "{v}");
        v
    }

    async fn read(&self, account: &str, shard: &str, version: Option<i64>) -> (u16, Value) {
        let q = version.map(|v| format!("?version={v}")).unwrap_or_default();
        self.call(
            "GET",
            &format!("/v1/accounts/{account}/shards/{shard}{q}"),
            None,
        )
        .await
    }

    /// A SQL literal of bytes in this store's dialect.
    fn bytes(&self, b: &[u8]) -> String {
        if self.db.is_pg() {
            format!("'\\x{}'::bytea", hex::encode(b))
        } else {
            format!("X'{}'", hex::encode(b))
        }
    }

    fn opt_bytes(&self, b: Option<&[u8]>) -> String {
        b.map_or_else(|| "NULL".to_string(), |b| self.bytes(b))
    }

    /// Set the envelope columns of one stored version.
    async fn set_envelope(
        &self,
        (account, shard, version): (&str, &str, i64),
        format: i16,
        wrapped: &[u8],
        ct: &[u8],
        commitment: Option<&[u8]>,
    ) {
        let n = self
            .db
            .exec(&format!(
                "UPDATE shard_versions SET format_version = {format}, wrapped_dek = {}, \
                 nonce = {}, ciphertext = {}, key_commitment = {} \
                 WHERE account = '{account}' AND shard = '{shard}' AND version = {version}",
                self.bytes(wrapped),
                self.bytes(&NONCE),
                self.bytes(ct),
                self.opt_bytes(commitment),
            ))
            .await;
        assert_eq!(n, 1);
    }

    /// A second handle on the gateway's `local` keyring: wraps exactly as the gateway does.
    fn local_backend(&self) -> LocalBackend {
        LocalBackend::open(
            "local",
            &self.dir.path().join("local.keyring"),
            Duration::from_secs(0),
        )
        .unwrap()
    }
}

fn shard_of(v: &Value) -> Vec<u8> {
    B64.decode(v["shard"].as_str().unwrap()).unwrap()
}

both_stores!(
    swapped_key_opens_format_1_and_is_refused_on_format_2,
    every_format_fixture_reads_back,
    new_writes_are_format_2_with_a_commitment,
);

async fn swapped_key_opens_format_1_and_is_refused_on_format_2(kind: StoreKind) {
    let Some(gw) = Gw::new(kind, None, false).await else {
        return;
    };
    gw.account("acct-1", "retail").await;
    for shard in ["old", "new"] {
        let (s, v) = gw
            .call(
                "PUT",
                &format!("/v1/accounts/acct-1/shards/{shard}"),
                Some(json!({"shard": B64.encode(b"the real shard")})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let local = gw.local_backend();
    let (k1, k2) = (
        DataKey::from_slice(&K1).unwrap(),
        DataKey::from_slice(&K2).unwrap(),
    );

    // A format 1 row (no commitment): the attacker's ciphertext with a wrap of K1, then the
    // wrap swapped for one of K2 (same backend, same identity). Both read with 200, as two
    // different shards: nothing notices.
    let id1 = ShardIdentity {
        format_version: 1,
        ..ShardIdentity::new("acct-1", "old", Version::FIRST)
    };
    let ct1 = gcm::two_key_ciphertext(&K1, &K2, &NONCE, &id1.aad(), PREFIX);
    let w1 = local.wrap(&id1, &k1).await.unwrap();
    let w2 = local.wrap(&id1, &k2).await.unwrap();
    gw.set_envelope(("acct-1", "old", 1), 1, &w1.blob, &ct1, None)
        .await;
    let (s, v) = gw.read("acct-1", "old", None).await;
    assert_eq!(s, 200, "{v}");
    let under_k1 = shard_of(&v);
    assert_eq!(&under_k1[..32], PREFIX);
    gw.set_envelope(("acct-1", "old", 1), 1, &w2.blob, &ct1, None)
        .await;
    let (s, v) = gw.read("acct-1", "old", None).await;
    assert_eq!(s, 200, "format 1 opens under the swapped key too: {v}");
    assert_ne!(shard_of(&v), under_k1, "and reads as another shard");

    // The same attack on a format 2 row: with K1's wrap and commitment it reads; with K2's
    // wrap it is refused, 500 integrity_failure, audited.
    let id2 = ShardIdentity::new("acct-1", "new", Version::FIRST);
    let ct2 = gcm::two_key_ciphertext(&K1, &K2, &NONCE, &id2.aad(), PREFIX);
    let c1 = commitment(&K1, &id2.aad());
    let w1 = local.wrap(&id2, &k1).await.unwrap();
    let w2 = local.wrap(&id2, &k2).await.unwrap();
    gw.set_envelope(("acct-1", "new", 1), 2, &w1.blob, &ct2, Some(&c1))
        .await;
    let (s, v) = gw.read("acct-1", "new", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(&shard_of(&v)[..32], PREFIX);
    gw.set_envelope(("acct-1", "new", 1), 2, &w2.blob, &ct2, Some(&c1))
        .await;
    let (s, v) = gw.read("acct-1", "new", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (500, Some("integrity_failure"))
    );
    assert!(v.get("shard").is_none());
    // batchGet refuses it the same way, per item.
    let (s, v) = gw
        .call(
            "POST",
            "/v1/shards:batchGet",
            Some(json!({"items":[{"account":"acct-1","shard":"new"},{"account":"acct-1","shard":"old"}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["error"]["code"], "integrity_failure");
    assert!(v["results"][1]["shard"].is_string());
    // A format 2 row downgraded to format 1 (commitment dropped): its wrap and ciphertext
    // are bound to the format 2 identity, so it no longer opens at all.
    gw.set_envelope(("acct-1", "new", 1), 1, &w2.blob, &ct2, None)
        .await;
    let (s, v) = gw.read("acct-1", "new", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (500, Some("integrity_failure"))
    );
    assert_eq!(
        gw.db
            .count("SELECT COUNT(*) FROM audit_events WHERE outcome = 'integrity_failure'")
            .await,
        3
    );
}

async fn new_writes_are_format_2_with_a_commitment(kind: StoreKind) {
    // Also recovers the shard by hand from the keyring and the row (FORMAT.md §3a, §4).
    let Some(gw) = Gw::new(kind, None, false).await else {
        return;
    };
    gw.account("acct-1", "retail").await;
    let data = b"fresh shard bytes, format 2".to_vec();
    let (s, v) = gw
        .call(
            "PUT",
            "/v1/accounts/acct-1/shards/s",
            Some(json!({"shard": B64.encode(&data)})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let cols = gw
        .db
        .all_bytes(
            "SELECT wrapped_dek, nonce, ciphertext, key_commitment FROM shard_versions \
             WHERE account = 'acct-1'",
        )
        .await;
    assert_eq!(cols.len(), 4, "a commitment is stored");
    assert_eq!(
        gw.db
            .count("SELECT CAST(format_version AS BIGINT) FROM shard_versions")
            .await,
        2
    );
    let (wrapped, nonce, ct, stored) = (&cols[0], &cols[1], &cols[2], &cols[3]);
    let ring: Value =
        serde_json::from_slice(&std::fs::read(gw.dir.path().join("local.keyring")).unwrap())
            .unwrap();
    let kek: [u8; 32] = B64
        .decode(ring["versions"][0]["key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let aad = ShardIdentity::new("acct-1", "s", Version::FIRST).aad();
    assert_eq!(&aad[..5], b"SGID\x02");
    let dek: [u8; 32] = aes_gcm_open(
        &kek,
        wrapped[..12].try_into().unwrap(),
        &aad,
        &wrapped[12..],
    )
    .unwrap()
    .try_into()
    .unwrap();
    assert_eq!(stored, &commitment(&dek, &aad));
    assert_eq!(
        aes_gcm_open(&dek, nonce.as_slice().try_into().unwrap(), &aad, ct).unwrap(),
        data
    );
}

/// `gateway/tests/fixtures/format-v*.json`: every envelope format shardgate ever wrote.
fn fixtures() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    let mut format = 1;
    loop {
        let path = dir.join(format!("format-v{format}.json"));
        if !path.exists() {
            break;
        }
        out.push(serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap());
        format += 1;
    }
    // One fixture per format up to the one this code writes.
    assert_eq!(out.len(), usize::from(shardgate_backends::FORMAT_VERSION));
    out
}

async fn every_format_fixture_reads_back(kind: StoreKind) {
    for fixture in fixtures() {
        let format = fixture["format_version"].as_i64().unwrap();
        let Some(gw) = Gw::new(kind, Some(&fixture["keyring"]), true).await else {
            return;
        };
        let rows = fixture["rows"].as_array().unwrap();
        let account = rows[0]["account"].as_str().unwrap();
        gw.account(account, "retail").await;
        for r in rows {
            let b = |k: &str| B64.decode(r[k].as_str().unwrap()).unwrap();
            let commitment = r["key_commitment"].as_str().map(|c| B64.decode(c).unwrap());
            assert_eq!(r["format_version"].as_i64(), Some(format));
            gw.db
                .exec(&format!(
                    "INSERT INTO shard_versions (account, shard, version, format_version, \
                     backend, key_ref, key_version, wrapped_dek, nonce, ciphertext, \
                     key_commitment, created_at, created_by) VALUES ('{}', '{}', {}, {}, \
                     '{}', '{}', {}, {}, {}, {}, {}, {}, '{}')",
                    r["account"].as_str().unwrap(),
                    r["shard"].as_str().unwrap(),
                    r["version"].as_i64().unwrap(),
                    format,
                    r["backend"].as_str().unwrap(),
                    r["key_ref"].as_str().unwrap(),
                    r["key_version"].as_i64().unwrap(),
                    gw.bytes(&b("wrapped_dek")),
                    gw.bytes(&b("nonce")),
                    gw.bytes(&b("ciphertext")),
                    gw.opt_bytes(commitment.as_deref()),
                    r["created_at"].as_i64().unwrap(),
                    r["created_by"].as_str().unwrap(),
                ))
                .await;
        }
        let expect = |r: &Value| B64.decode(r["plaintext"].as_str().unwrap()).unwrap();
        // GET of each version, and the latest.
        for r in rows {
            let (shard, version) = (r["shard"].as_str().unwrap(), r["version"].as_i64());
            let (s, v) = gw.read(account, shard, version).await;
            assert_eq!(s, 200, "format {format} {shard} v{version:?}: {v}");
            assert_eq!(shard_of(&v), expect(r), "format {format}");
        }
        // batchGet of all of them.
        let items: Vec<Value> = rows
            .iter()
            .map(|r| json!({"account": r["account"], "shard": r["shard"], "version": r["version"]}))
            .collect();
        let (s, v) = gw
            .call(
                "POST",
                "/v1/shards:batchGet",
                Some(json!({ "items": items })),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        for (r, got) in rows.iter().zip(v["results"].as_array().unwrap()) {
            assert_eq!(shard_of(got), expect(r), "format {format} batchGet: {got}");
        }
        // A tier migration re-wraps every version onto `vault` (under the row's own
        // format), and they still read; the commitment column is untouched.
        let before = gw
            .db
            .all_bytes("SELECT key_commitment FROM shard_versions ORDER BY shard, version")
            .await;
        let moved = gw.account(account, "gold").await;
        let job = moved["migration_job"].as_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, j) = gw
                .call("GET", &format!("/v1/admin/migrations/{job}"), None)
                .await;
            if j["state"] == "completed" {
                assert_eq!(j["done"].as_i64(), Some(rows.len() as i64), "{j}");
                break;
            }
            assert!(
                j["state"] == "running" && Instant::now() < deadline,
                "migration of format {format}: {j}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            gw.db
                .count("SELECT COUNT(*) FROM shard_versions WHERE backend = 'vault'")
                .await,
            rows.len() as i64
        );
        assert_eq!(
            gw.db
                .all_bytes("SELECT key_commitment FROM shard_versions ORDER BY shard, version")
                .await,
            before
        );
        for r in rows {
            let (shard, version) = (r["shard"].as_str().unwrap(), r["version"].as_i64());
            let (s, v) = gw.read(account, shard, version).await;
            assert_eq!(s, 200, "format {format} after migration: {v}");
            assert_eq!(shard_of(&v), expect(r));
            assert_eq!(v["backend"], "vault");
        }
    }
}
