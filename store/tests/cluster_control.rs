//! What the replicas of a cluster share besides data, run against both stores
//! (`postgres::<case>` and `sqlite::<case>`): the tier policy as versioned rows (versions
//! append one after the other with their audit event, concurrent applies of one version leave
//! exactly one, the accounts a change is measured against are walked a page at a time, re-tier
//! passes stay due until a pass at or after their version is done), and
//! operator overrides of breakers (ids in order, read past the last applied, the newest per
//! backend), and dual-control approvals (approved once, by another credential, in time).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{AuditGen, Harness};
use shardgate_store::{ApprovalRecord, BreakerOverride, PolicyVersionRecord, Store, StoreError};
use std::sync::Arc;
use tokio::task::JoinSet;

both_stores!(
    policy_versions_append_only_after_the_highest,
    concurrent_applies_of_one_version_leave_exactly_one,
    accounts_page_walks_every_account_in_order,
    a_due_retier_pass_stays_due_until_a_pass_at_or_after_its_version_is_done,
    breaker_overrides_append_in_order_and_the_newest_per_backend_wins,
    an_approval_is_approved_once_by_another_credential_before_it_expires,
);

fn record(version: i64, doc: &str) -> PolicyVersionRecord {
    PolicyVersionRecord {
        version,
        document: doc.to_string(),
        digest: format!("digest-{doc}"),
        created_ms: 1000 + version,
        created_by: "test".into(),
    }
}

#[track_caller]
fn assert_refused(r: Result<(), StoreError>, latest: Option<i64>) {
    match r {
        Err(StoreError::Conflict { latest: l }) => assert_eq!(l, latest),
        other => panic!("expected a conflict at {latest:?}, got {other:?}"),
    }
}

async fn audit_count(store: &dyn Store, chain: &str) -> usize {
    store.audit_events(chain, 0, 1000).await.unwrap().len()
}

async fn policy_versions_append_only_after_the_highest(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-p");
    assert_eq!(s.policy_head().await.unwrap(), None);
    assert_eq!(s.policy_version(None).await.unwrap(), None);
    // Version 2 on an empty table, and 1 twice: refused, nothing written.
    assert_refused(s.append_policy_version(&record(2, "b"), None).await, None);
    let first = audit.next("policy.apply", None, None, None);
    s.append_policy_version(&record(1, "a"), Some(&first))
        .await
        .unwrap();
    assert_refused(
        s.append_policy_version(&record(1, "x"), None).await,
        Some(1),
    );
    assert_refused(
        s.append_policy_version(&record(3, "c"), None).await,
        Some(1),
    );
    s.append_policy_version(&record(2, "b"), None)
        .await
        .unwrap();
    assert_eq!(s.policy_head().await.unwrap(), Some(2));
    assert_eq!(s.policy_version(None).await.unwrap(), Some(record(2, "b")));
    assert_eq!(
        s.policy_version(Some(1)).await.unwrap(),
        Some(record(1, "a"))
    );
    assert_eq!(s.policy_version(Some(7)).await.unwrap(), None);
    assert_eq!(audit_count(s, "chain-p").await, 1);
}

async fn concurrent_applies_of_one_version_leave_exactly_one(h: &Harness) {
    let audit = Arc::new(AuditGen::new("chain-q"));
    h.store
        .append_policy_version(&record(1, "seed"), None)
        .await
        .unwrap();
    let mut set = JoinSet::new();
    for i in 0..6 {
        let (store, audit) = (h.store.clone(), audit.clone());
        set.spawn(async move {
            let rec = audit.next("policy.apply", None, None, None);
            let doc = format!("doc-{i}");
            let won = match store
                .append_policy_version(&record(2, &doc), Some(&rec))
                .await
            {
                Ok(()) => true,
                Err(StoreError::Conflict { latest: Some(2) }) => false,
                Err(e) => panic!("{doc}: {e}"),
            };
            (doc, won)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (doc, won) = joined.unwrap();
        if won {
            winners.push(doc);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let head = h.store.policy_version(None).await.unwrap().unwrap();
    assert_eq!(
        (head.version, head.document.as_str()),
        (2, winners[0].as_str())
    );
    assert_eq!(audit_count(&*h.store, "chain-q").await, 1);
}

async fn a_due_retier_pass_stays_due_until_a_pass_at_or_after_its_version_is_done(h: &Harness) {
    let s = &*h.store;
    assert_eq!(s.retier_due().await.unwrap(), None);
    s.mark_retier_due(3, 10).await.unwrap();
    s.mark_retier_due(5, 11).await.unwrap();
    assert_eq!(s.retier_due().await.unwrap(), Some(3));
    // A pass under version 2 covers neither.
    assert_eq!(s.mark_retier_done(2, 20).await.unwrap(), 0);
    assert_eq!(s.retier_due().await.unwrap(), Some(3));
    // A pass under version 4 covers 3, not 5.
    assert_eq!(s.mark_retier_done(4, 21).await.unwrap(), 1);
    assert_eq!(s.retier_due().await.unwrap(), Some(5));
    // Marking a done version due again (a repeated apply) makes it due again.
    s.mark_retier_due(3, 30).await.unwrap();
    assert_eq!(s.retier_due().await.unwrap(), Some(3));
    assert_eq!(s.mark_retier_done(5, 31).await.unwrap(), 2);
    assert_eq!(s.retier_due().await.unwrap(), None);
    assert_eq!(s.mark_retier_done(9, 32).await.unwrap(), 0);
}

async fn accounts_page_walks_every_account_in_order(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-r");
    for (account, tier) in [
        ("acct-b", "vip"),
        ("acct-a", "retail"),
        ("acct-c", "retail"),
    ] {
        let rec = audit.next("account.put", Some(account), None, None);
        s.put_account(account, tier, 1000, &rec).await.unwrap();
    }
    let pairs = |page: Vec<shardgate_store::AccountRecord>| -> Vec<(String, String)> {
        page.into_iter().map(|r| (r.account, r.tier)).collect()
    };
    let first = pairs(s.accounts_page(None, 2).await.unwrap());
    let pair = |a: &str, t: &str| (a.to_string(), t.to_string());
    assert_eq!(first, vec![pair("acct-a", "retail"), pair("acct-b", "vip")]);
    let rest = pairs(s.accounts_page(Some("acct-b"), 2).await.unwrap());
    assert_eq!(rest, vec![pair("acct-c", "retail")]);
    assert!(s.accounts_page(Some("acct-c"), 2).await.unwrap().is_empty());
}

fn over(backend: &str, action: &str, at: i64) -> BreakerOverride {
    BreakerOverride {
        id: 0,
        backend: backend.into(),
        action: action.into(),
        created_ms: at,
        expires_ms: at + 60_000,
        created_by: "test".into(),
    }
}

async fn breaker_overrides_append_in_order_and_the_newest_per_backend_wins(h: &Harness) {
    let s = &*h.store;
    assert!(s.latest_breaker_overrides().await.unwrap().is_empty());
    // Sixteen inserts at once (each with an event of its own chain): ids 1..16, none lost or
    // doubled, none refused for racing the others.
    let mut set = JoinSet::new();
    for i in 0..16 {
        let store = h.store.clone();
        set.spawn(async move {
            let rec = AuditGen::new(&format!("chain-o{i}")).next(
                "backend.circuit_open",
                None,
                None,
                None,
            );
            let b = if i % 2 == 0 { "kms" } else { "hsm" };
            store
                .insert_breaker_override(&over(b, "open", 1000 + i), &rec)
                .await
                .unwrap()
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = set.join_next().await {
        ids.push(id.unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=16).collect::<Vec<i64>>());
    let audit = AuditGen::new("chain-c");
    let rec = audit.next("backend.circuit_close", None, None, None);
    let close = s
        .insert_breaker_override(&over("kms", "close", 2000), &rec)
        .await
        .unwrap();
    assert_eq!(close, 17);
    assert_eq!(audit_count(s, "chain-c").await, 1);
    let after = s.breaker_overrides_after(4, 2).await.unwrap();
    assert_eq!(after.iter().map(|o| o.id).collect::<Vec<_>>(), [5, 6]);
    let all = s.breaker_overrides_after(0, 100).await.unwrap();
    assert_eq!(all.len(), 17);
    let hsm_last = all
        .iter()
        .filter(|o| o.backend == "hsm")
        .map(|o| o.id)
        .max()
        .unwrap();
    let latest = s.latest_breaker_overrides().await.unwrap();
    let seen: Vec<(&str, &str, i64)> = latest
        .iter()
        .map(|o| (o.backend.as_str(), o.action.as_str(), o.id))
        .collect();
    assert_eq!(seen, [("hsm", "open", hsm_last), ("kms", "close", 17)]);
}

fn approval(id: &str, expires_ms: i64) -> ApprovalRecord {
    ApprovalRecord {
        id: id.into(),
        operation: "account.delete".into(),
        request: r#"{"operation":"account.delete","account":"acct-1"}"#.into(),
        summary: "delete account acct-1".into(),
        requested_by: "alice".into(),
        requested_credential: "cred-a".into(),
        created_ms: 1000,
        expires_ms,
        state: "pending".into(),
        approved_by: None,
        approved_credential: None,
        approved_ms: None,
    }
}

async fn an_approval_is_approved_once_by_another_credential_before_it_expires(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-a");
    let rec = audit.next("approval.request", None, None, None);
    s.insert_approval(&approval("ap-1", 5000), &rec)
        .await
        .unwrap();
    let rec = audit.next("approval.request", None, None, None);
    s.insert_approval(&approval("ap-2", 1500), &rec)
        .await
        .unwrap();
    assert_eq!(
        s.get_approval("ap-1").await.unwrap(),
        Some(approval("ap-1", 5000))
    );
    assert_eq!(s.get_approval("nope").await.unwrap(), None);
    // The asking credential, and an expired request: refused, nothing written.
    let unused = AuditGen::new("chain-x").next("approval.approve", None, None, None);
    assert!(!s
        .approve("ap-1", "alice", "cred-a", 2000, &unused)
        .await
        .unwrap());
    assert!(!s
        .approve("ap-2", "bob", "cred-b", 2000, &unused)
        .await
        .unwrap());
    assert_eq!(audit_count(s, "chain-x").await, 0);
    // Another credential in time: once.
    let rec = audit.next("approval.approve", None, None, None);
    assert!(s
        .approve("ap-1", "bob", "cred-b", 2000, &rec)
        .await
        .unwrap());
    let again = AuditGen::new("chain-y").next("approval.approve", None, None, None);
    assert!(!s
        .approve("ap-1", "carol", "cred-c", 2100, &again)
        .await
        .unwrap());
    let a = s.get_approval("ap-1").await.unwrap().unwrap();
    assert_eq!(
        (
            a.state.as_str(),
            a.approved_by.as_deref(),
            a.approved_credential.as_deref(),
            a.approved_ms
        ),
        ("approved", Some("bob"), Some("cred-b"), Some(2000))
    );
    assert_eq!(audit_count(s, "chain-a").await, 3);
}
