//! Unit tests of the audit chain: encoding, tags, the writer, verification.

use super::*;
use shardgate_store::AuditRecord;

fn record() -> AuditRecord {
    AuditRecord {
        chain_id: "c".into(),
        seq: 1,
        ts_ms: 5,
        request_id: "r".into(),
        actor: "a".into(),
        action: "shard.get".into(),
        account: Some("acct".into()),
        shard: None,
        version: Some(3),
        backend: None,
        outcome: "ok".into(),
        detail: String::new(),
        credential: None,
        prev_tag: vec![0; 32],
        tag: vec![],
    }
}

#[test]
fn every_field_changes_the_tag() {
    let key = AuditKey::from_bytes([7; 32]);
    let base = tag(&key, &record());
    let mut variants = Vec::new();
    let mut r = record();
    r.seq = 2;
    variants.push(r);
    let mut r = record();
    r.account = None;
    variants.push(r);
    let mut r = record();
    r.shard = Some(String::new());
    variants.push(r);
    let mut r = record();
    r.version = None;
    variants.push(r);
    let mut r = record();
    r.outcome = "forbidden".into();
    variants.push(r);
    let mut r = record();
    r.prev_tag[0] = 1;
    variants.push(r);
    let mut r = record();
    r.credential = Some(String::new());
    variants.push(r);
    let mut r = record();
    r.credential = Some("c0ffee".into());
    variants.push(r);
    // The fields the first set left out: actor, action, backend, detail, request id,
    // chain id and time, each in both directions where it is optional.
    let mut r = record();
    r.actor = "b".into();
    variants.push(r);
    let mut r = record();
    r.action = "shard.put".into();
    variants.push(r);
    let mut r = record();
    r.backend = Some("local".into());
    variants.push(r);
    let mut r = record();
    r.detail = "x".into();
    variants.push(r);
    let mut r = record();
    r.request_id = "s".into();
    variants.push(r);
    let mut r = record();
    r.chain_id = "d".into();
    variants.push(r);
    let mut r = record();
    r.ts_ms = 6;
    variants.push(r);
    // A byte moved between neighbouring fields changes the tag too (length prefixes).
    let mut r = record();
    r.request_id = "ra".into();
    r.actor = String::new();
    variants.push(r);
    let tags: std::collections::HashSet<Vec<u8>> = variants.iter().map(|v| tag(&key, v)).collect();
    assert_eq!(tags.len(), variants.len(), "two variants share a tag");
    assert!(!tags.contains(&base));
}

#[test]
fn events_without_a_credential_keep_the_first_encoding() {
    // Every event written before credentials were recorded must still verify.
    let r = record();
    assert!(canonical(&r).starts_with(AUDIT_MAGIC));
    let mut r2 = record();
    r2.credential = Some("ab".into());
    assert!(canonical(&r2).starts_with(AUDIT_MAGIC_V2));
    assert_ne!(canonical(&r)[8..], canonical(&r2)[8..]);
}

#[test]
fn key_debug_is_redacted() {
    let key = AuditKey::from_bytes([0xAB; 32]);
    assert_eq!(format!("{key:?}"), "AuditKey([REDACTED])");
}
