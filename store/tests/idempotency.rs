//! Idempotency records (`Idempotency-Key`), run against both stores: every case below becomes
//! `postgres::<case>` and `sqlite::<case>`.
//!
//! PostgreSQL cases need `SHARDGATE_TEST_DATABASE_URL`; without it they are skipped loudly,
//! except under `CI=true`, where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;

use common::{shard_row, v, AuditGen, Harness};
use shardgate_store::{IdempotencyRecord, Idempotent, IdempotentWrite, Store, StoreError};
use tokio::task::JoinSet;

both_stores!(
    insert_with_key_then_retry_replays_first_answer,
    expired_record_is_replaced,
    delete_with_key_then_retry_replays_receipt,
    scopes_are_independent,
    concurrent_same_key_exactly_one_write,
    concurrent_delete_same_key_one_receipt,
    failed_write_stores_no_record,
    purge_deletes_only_expired,
    delete_account_with_key_then_retry_replays_receipt,
);

const ACCT: &str = "acct-1";
const NOW: i64 = 1_800_000_000_000;

fn rec(scope: &str, key: &str, body: &str, created_at: i64) -> IdempotencyRecord {
    IdempotencyRecord {
        scope: scope.to_string(),
        key: key.to_string(),
        request_hash: vec![7; 32],
        status: 201,
        body_json: body.to_string(),
        created_at,
    }
}

fn live(r: &IdempotencyRecord) -> IdempotentWrite<'_> {
    IdempotentWrite {
        record: r,
        expired_before_ms: NOW - 86_400_000,
    }
}

async fn account(s: &dyn Store, audit: &AuditGen) {
    s.put_account(
        ACCT,
        "retail",
        1000,
        &audit.next("account.put", Some(ACCT), None, None),
    )
    .await
    .unwrap();
}

async fn put_with(
    s: &dyn Store,
    audit: &AuditGen,
    shard: &str,
    version: i64,
    idem: Option<IdempotentWrite<'_>>,
) -> Result<Idempotent<()>, StoreError> {
    s.insert_shard_version_idempotent(
        &shard_row(ACCT, shard, version, "local-1"),
        &audit.next("shard.put", Some(ACCT), Some(shard), Some(version)),
        idem,
    )
    .await
}

async fn count_actions(s: &dyn Store, chain: &str, action: &str) -> usize {
    s.audit_events(chain, 0, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == action)
        .count()
}

async fn insert_with_key_then_retry_replays_first_answer(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-i");
    account(s, &audit).await;
    let first = rec(
        "alice PUT /a",
        "k1",
        r#"{"version":1,"backend":"local-1"}"#,
        NOW,
    );
    assert_eq!(
        put_with(s, &audit, "sh", 1, Some(live(&first)))
            .await
            .unwrap(),
        Idempotent::Done(())
    );
    assert_eq!(
        s.get_idempotency("alice PUT /a", "k1").await.unwrap(),
        Some(first.clone())
    );
    // The retry computed version 2 (it saw version 1): nothing is written, the first
    // answer comes back.
    let retry = rec(
        "alice PUT /a",
        "k1",
        r#"{"version":2,"backend":"local-1"}"#,
        NOW + 5,
    );
    assert_eq!(
        put_with(s, &audit, "sh", 2, Some(live(&retry)))
            .await
            .unwrap(),
        Idempotent::Replay(first.clone())
    );
    // And one that raced on version 1 (it would be a conflict without the key).
    assert_eq!(
        put_with(s, &audit, "sh", 1, Some(live(&retry)))
            .await
            .unwrap(),
        Idempotent::Replay(first)
    );
    assert_eq!(s.latest_version(ACCT, "sh").await.unwrap(), Some(v(1)));
    assert_eq!(count_actions(s, "chain-i", "shard.put").await, 1);
    assert_eq!(
        s.get_idempotency("alice PUT /a", "nope").await.unwrap(),
        None
    );
}

async fn expired_record_is_replaced(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-e");
    account(s, &audit).await;
    let old = rec("alice PUT /a", "k", r#"{"version":1}"#, NOW - 90_000_000);
    put_with(s, &audit, "sh", 1, Some(live(&old)))
        .await
        .unwrap();
    let new = rec("alice PUT /a", "k", r#"{"version":2}"#, NOW);
    assert_eq!(
        put_with(s, &audit, "sh", 2, Some(live(&new)))
            .await
            .unwrap(),
        Idempotent::Done(())
    );
    assert_eq!(
        s.get_idempotency("alice PUT /a", "k").await.unwrap(),
        Some(new)
    );
    assert_eq!(s.latest_version(ACCT, "sh").await.unwrap(), Some(v(2)));
}

async fn delete_with_key_then_retry_replays_receipt(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-d");
    account(s, &audit).await;
    put_with(s, &audit, "gone", 1, None).await.unwrap();
    put_with(s, &audit, "gone", 2, None).await.unwrap();
    let build = |n: i64| {
        let mut r = rec(
            "alice DELETE /a",
            "del",
            &format!(r#"{{"destroyed_versions":{n}}}"#),
            NOW,
        );
        r.status = 200;
        r
    };
    let audit_for = |n: i64| {
        audit.next_detail(
            "shard.delete",
            Some(ACCT),
            Some("gone"),
            &format!("destroyed={n}"),
        )
    };
    let first = s
        .delete_shard_idempotent(ACCT, "gone", &audit_for, Some((NOW - 1000, &build)))
        .await
        .unwrap();
    assert_eq!(first, Idempotent::Done(2));
    let retry = s
        .delete_shard_idempotent(ACCT, "gone", &audit_for, Some((NOW - 1000, &build)))
        .await
        .unwrap();
    assert_eq!(retry, Idempotent::Replay(build(2)));
    assert_eq!(count_actions(s, "chain-d", "shard.delete").await, 1);
    // Without the key, the same delete is a plain 404.
    assert!(matches!(
        s.delete_shard(ACCT, "gone", &audit_for).await,
        Err(StoreError::ShardNotFound)
    ));
}

async fn scopes_are_independent(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-s");
    account(s, &audit).await;
    let a = rec("alice PUT /a", "same", "{}", NOW);
    let b = rec("bob PUT /a", "same", "{}", NOW);
    let c = rec("alice PUT /b", "same", "{}", NOW);
    assert_eq!(
        put_with(s, &audit, "sh", 1, Some(live(&a))).await.unwrap(),
        Idempotent::Done(())
    );
    assert_eq!(
        put_with(s, &audit, "sh", 2, Some(live(&b))).await.unwrap(),
        Idempotent::Done(())
    );
    assert_eq!(
        put_with(s, &audit, "sh2", 1, Some(live(&c))).await.unwrap(),
        Idempotent::Done(())
    );
    assert_eq!(s.latest_version(ACCT, "sh").await.unwrap(), Some(v(2)));
}

async fn concurrent_same_key_exactly_one_write(h: &Harness) {
    let audit = Arc::new(AuditGen::new("chain-c"));
    account(&*h.store, &audit).await;
    let mut tasks = JoinSet::new();
    for i in 0..16 {
        let store = h.store.clone();
        let audit = audit.clone();
        tasks.spawn(async move {
            let r = rec("alice PUT /a", "race", &format!(r#"{{"writer":{i}}}"#), NOW);
            let mut row = shard_row(ACCT, "race", 1, "local-1");
            row.created_by = format!("writer-{i}");
            let out = store
                .insert_shard_version_idempotent(
                    &row,
                    &audit.next("shard.put", Some(ACCT), Some("race"), Some(1)),
                    Some(live(&r)),
                )
                .await;
            (i, out)
        });
    }
    let mut winners = Vec::new();
    let mut replays = Vec::new();
    while let Some(j) = tasks.join_next().await {
        let (i, out) = j.unwrap();
        match out {
            Ok(Idempotent::Done(())) => winners.push(i),
            Ok(Idempotent::Replay(r)) => replays.push(r),
            Err(e) => panic!("writer {i}: unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(replays.len(), 15);
    let expected = format!(r#"{{"writer":{}}}"#, winners[0]);
    assert!(replays.iter().all(|r| r.body_json == expected));
    let stored = h
        .store
        .get_shard_version(ACCT, "race", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.created_by, format!("writer-{}", winners[0]));
    assert_eq!(count_actions(&*h.store, "chain-c", "shard.put").await, 1);
}

async fn concurrent_delete_same_key_one_receipt(h: &Harness) {
    let audit = Arc::new(AuditGen::new("chain-cd"));
    account(&*h.store, &audit).await;
    put_with(&*h.store, &audit, "gone", 1, None).await.unwrap();
    let mut tasks = JoinSet::new();
    for i in 0..16 {
        let store = h.store.clone();
        let audit = audit.clone();
        tasks.spawn(async move {
            let build = move |n: i64| {
                rec(
                    "alice DELETE /a",
                    "d",
                    &format!(r#"{{"n":{n},"by":{i}}}"#),
                    NOW,
                )
            };
            let audit_for = |n: i64| {
                audit.next_detail("shard.delete", Some(ACCT), Some("gone"), &n.to_string())
            };
            store
                .delete_shard_idempotent(ACCT, "gone", &audit_for, Some((NOW - 1000, &build)))
                .await
        });
    }
    let mut done = 0;
    let mut bodies = Vec::new();
    while let Some(j) = tasks.join_next().await {
        match j.unwrap().unwrap() {
            Idempotent::Done(n) => {
                assert_eq!(n, 1);
                done += 1;
            }
            Idempotent::Replay(r) => bodies.push(r.body_json),
        }
    }
    assert_eq!(done, 1);
    assert_eq!(bodies.len(), 15);
    assert!(bodies
        .iter()
        .all(|b| b == &bodies[0] && b.starts_with(r#"{"n":1,"#)));
}

async fn failed_write_stores_no_record(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-f");
    // No account: nothing is written, and the key stays free.
    let r = rec("alice PUT /a", "k", "{}", NOW);
    assert!(matches!(
        put_with(s, &audit, "sh", 1, Some(live(&r))).await,
        Err(StoreError::AccountNotFound)
    ));
    assert_eq!(s.get_idempotency("alice PUT /a", "k").await.unwrap(), None);
    // The audit insert fails: the write and its record roll back together.
    account(s, &audit).await;
    h.break_audit().await;
    assert!(matches!(
        put_with(s, &audit, "sh", 1, Some(live(&r))).await,
        Err(StoreError::AuditUnavailable(_))
    ));
    assert_eq!(s.get_idempotency("alice PUT /a", "k").await.unwrap(), None);
    assert_eq!(s.latest_version(ACCT, "sh").await.unwrap(), None);
    h.repair_audit().await;
    assert_eq!(
        put_with(s, &audit, "sh", 1, Some(live(&r))).await.unwrap(),
        Idempotent::Done(())
    );
}

async fn purge_deletes_only_expired(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-p");
    account(s, &audit).await;
    let old = rec("alice PUT /a", "old", "{}", 1_000);
    let new = rec("alice PUT /a", "new", "{}", 5_000);
    let w = |r| IdempotentWrite {
        record: r,
        expired_before_ms: 0,
    };
    put_with(s, &audit, "sh", 1, Some(w(&old))).await.unwrap();
    put_with(s, &audit, "sh", 2, Some(w(&new))).await.unwrap();
    assert_eq!(s.purge_idempotency(3_000).await.unwrap(), 1);
    assert_eq!(
        s.get_idempotency("alice PUT /a", "old").await.unwrap(),
        None
    );
    assert_eq!(
        s.get_idempotency("alice PUT /a", "new").await.unwrap(),
        Some(new)
    );
    assert_eq!(s.purge_idempotency(3_000).await.unwrap(), 0);
}

async fn delete_account_with_key_then_retry_replays_receipt(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-da");
    account(s, &audit).await;
    put_with(s, &audit, "a", 1, None).await.unwrap();
    put_with(s, &audit, "b", 1, None).await.unwrap();
    let build = |o: shardgate_store::DeleteOutcome| {
        rec(
            "alice DELETE /acct",
            "k",
            &format!("{}/{}", o.shards, o.versions),
            NOW,
        )
    };
    let audit_for = |n: i64| audit.next_detail("account.delete", Some(ACCT), None, &n.to_string());
    let first = s
        .delete_account_idempotent(ACCT, &audit_for, Some((NOW - 1000, &build)))
        .await
        .unwrap();
    assert_eq!(
        first,
        Idempotent::Done(shardgate_store::DeleteOutcome {
            shards: 2,
            versions: 2
        })
    );
    let retry = s
        .delete_account_idempotent(ACCT, &audit_for, Some((NOW - 1000, &build)))
        .await
        .unwrap();
    assert_eq!(
        retry,
        Idempotent::Replay(rec("alice DELETE /acct", "k", "2/2", NOW))
    );
    assert_eq!(count_actions(s, "chain-da", "account.delete").await, 1);
    assert!(matches!(
        s.delete_account(ACCT, &audit_for).await,
        Err(StoreError::AccountNotFound)
    ));
}
