//! shardgate's audit formats against fixed vectors computed outside the code under test
//! (`gateway/tests/vectors/make_vectors.py`, stdlib `hmac`/`hashlib` from FORMAT.md alone;
//! its output is `common/vectors.rs`): the canonical encoding and tag of an SGAUDIT1 and a
//! chained SGAUDIT2 event, the token id and credential id of a fixed token, and a
//! checkpoint line with its HMAC. A test that compares the code with values the same code
//! computed cannot catch a drift from the documented format; these can.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine as _;
use common::vectors as v;
use shardgate::domain::audit::checkpoints::Checkpoint;
use shardgate::domain::audit::{canonical, tag, AuditKey};
use shardgate::domain::auth::{credential_id, hash_token, token_id};
use shardgate_store::AuditRecord;

fn key() -> AuditKey {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v::AUDIT_KEY_B64)
        .unwrap();
    AuditKey::from_bytes(raw.try_into().unwrap())
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// The script's EVENT1: no credential (SGAUDIT1), every optional field present, first of
/// its chain.
fn event1() -> AuditRecord {
    AuditRecord {
        chain_id: v::CHAIN_ID.into(),
        seq: 1,
        ts_ms: 1_767_225_600_123,
        request_id: "req-0001".into(),
        actor: "signer".into(),
        action: "shard.put".into(),
        account: Some("acct-1".into()),
        shard: Some("key-0".into()),
        version: Some(3),
        backend: Some("local".into()),
        outcome: "ok".into(),
        detail: "café ✓".into(),
        credential: None,
        prev_tag: vec![0; 32],
        tag: Vec::new(),
    }
}

/// The script's EVENT2: SGAUDIT2 with the fixed token's credential, optional fields absent,
/// chained after event 1 (its prev_tag is event 1's tag as shardgate computes it).
fn event2(prev_tag: Vec<u8>) -> AuditRecord {
    AuditRecord {
        chain_id: v::CHAIN_ID.into(),
        seq: 2,
        ts_ms: 1_767_225_600_128,
        request_id: "req-0002".into(),
        actor: "anonymous".into(),
        action: "auth".into(),
        account: None,
        shard: None,
        version: None,
        backend: None,
        outcome: "unauthenticated".into(),
        detail: "bearer token revoked".into(),
        credential: Some(v::CREDENTIAL_ID.into()),
        prev_tag,
        tag: Vec::new(),
    }
}

#[test]
fn sgaudit1_event_encodes_and_tags_as_the_vector() {
    let e = event1();
    assert_eq!(hex::encode(canonical(&e)), v::EVENT1_CANONICAL);
    assert_eq!(hex::encode(tag(&key(), &e)), v::EVENT1_TAG);
}

#[test]
fn chained_sgaudit2_event_encodes_and_tags_as_the_vector() {
    let first = tag(&key(), &event1());
    let e = event2(first);
    assert_eq!(hex::encode(canonical(&e)), v::EVENT2_CANONICAL);
    assert_eq!(hex::encode(tag(&key(), &e)), v::EVENT2_TAG);
    // The link itself: the vector's second event carries the vector's first tag.
    assert!(v::EVENT2_CANONICAL.ends_with(v::EVENT1_TAG));
}

#[test]
fn token_and_credential_ids_are_the_vectors() {
    assert_eq!(hash_token(v::TOKEN), v::TOKEN_SHA256);
    assert_eq!(token_id(&hash_token(v::TOKEN)), v::TOKEN_ID);
    assert_eq!(credential_id(&key(), v::TOKEN_ID), v::CREDENTIAL_ID);
    assert_eq!(token_id(&hash_token(v::GUESSED_TOKEN)), v::GUESSED_TOKEN_ID);
    assert_eq!(
        credential_id(&key(), v::GUESSED_TOKEN_ID),
        v::GUESSED_CREDENTIAL_ID
    );
}

#[test]
fn checkpoint_line_and_its_hmac_are_the_vector() {
    let cp = Checkpoint {
        chain_id: v::CHAIN_ID.into(),
        seq: 2,
        tag: unhex(v::EVENT2_TAG),
        ts_ms: v::CHECKPOINT_TS_MS,
    };
    assert_eq!(cp.line(&key()), v::CHECKPOINT_LINE);
    let parsed = Checkpoint::parse(v::CHECKPOINT_LINE.trim_end_matches('\n'), &key()).unwrap();
    assert_eq!(parsed, cp);
    // One flipped MAC digit is refused.
    let mut bad = v::CHECKPOINT_LINE.trim_end_matches('\n').to_string();
    let last = bad.pop().unwrap();
    bad.push(if last == '0' { '1' } else { '0' });
    assert!(Checkpoint::parse(&bad, &key()).is_err());
}

/// The committed constants are the script's output, byte for byte (a hand edit of either
/// shows). Needs python3 (a counted skip without it, a failure in strict mode).
#[test]
fn committed_vectors_are_the_scripts_output() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let py = std::env::var("SHARDGATE_TEST_PYTHON")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "python3".to_string());
    let out = match std::process::Command::new(&py)
        .arg(format!("{dir}/tests/vectors/make_vectors.py"))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            common::skip(&format!("{py} does not run: {e}"));
            return;
        }
    };
    assert!(out.status.success(), "{out:?}");
    let committed = std::fs::read_to_string(format!("{dir}/tests/common/vectors.rs")).unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        committed,
        "regenerate: python3 gateway/tests/vectors/make_vectors.py > gateway/tests/common/vectors.rs"
    );
}
