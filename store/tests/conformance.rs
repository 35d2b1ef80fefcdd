//! One conformance suite, run against both stores: every case below becomes
//! `postgres::<case>` and `sqlite::<case>`.
//!
//! PostgreSQL cases need `SHARDGATE_TEST_DATABASE_URL` (a server on which the user may create
//! databases); each case creates and drops its own database. Without the variable they are
//! skipped loudly, except under `CI=true`, where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{record, shard_row, v, AuditGen, Harness};
use shardgate_store::{
    AccountStats, AuditSegment, BackupError, DeleteOutcome, ExpectedTier, FactsUpdate,
    KeepVersions, ShardSummary, Store, StoreError, Version,
};
use tokio::task::JoinSet;

both_stores!(
    kind_and_ping,
    migrate_is_idempotent,
    account_put_get_update_returns_previous_tier,
    account_put_expecting_a_tier_writes_only_while_it_holds,
    concurrent_tier_changes_expecting_one_tier_exactly_one_wins,
    account_ids_are_case_sensitive,
    insert_v1_v2_and_get_latest_and_by_version,
    get_shard_versions_answers_every_item_in_order,
    insert_conflict_on_same_version,
    insert_conflict_on_wrong_version,
    insert_account_not_found,
    concurrent_same_version_exactly_one_wins,
    concurrent_retry_loop_has_no_gaps,
    list_shards_pages_by_exact_bytes,
    shard_ids_are_case_sensitive,
    delete_shard_removes_all_versions_and_audits_count,
    delete_account_removes_everything,
    account_stats_counts,
    audit_append_head_chains_and_paging,
    audit_register_chain_is_idempotent,
    audit_unwritable_fails_insert_atomically,
    audit_unwritable_fails_other_writes_atomically,
    audit_unwritable_fails_append,
    an_archived_segment_is_recorded_then_only_its_rows_deleted_a_chunk_at_a_time,
    a_segment_checked_a_step_at_a_time_is_recorded_from_its_steps,
    cancelled_writes_leave_no_open_transaction,
    backup_to_copies_sqlite_and_refuses_postgres,
);

const ACCT: &str = "acct-1";

async fn put(store: &dyn Store, audit: &AuditGen, account: &str, tier: &str) -> Option<String> {
    store
        .put_account(
            account,
            tier,
            1000,
            &audit.next("account.put", Some(account), None, None),
        )
        .await
        .unwrap()
}

async fn insert(
    store: &dyn Store,
    audit: &AuditGen,
    account: &str,
    shard: &str,
    version: i64,
    backend: &str,
) -> Result<(), StoreError> {
    store
        .insert_shard_version(
            &shard_row(account, shard, version, backend),
            &audit.next("shard.put", Some(account), Some(shard), Some(version)),
        )
        .await
}

/// Every audit event of a chain.
async fn events(store: &dyn Store, chain: &str) -> Vec<shardgate_store::AuditRecord> {
    store.audit_events(chain, 0, 10_000).await.unwrap()
}

async fn count_actions(store: &dyn Store, chain: &str, action: &str) -> usize {
    events(store, chain)
        .await
        .iter()
        .filter(|e| e.action == action)
        .count()
}

// ---------------------------------------------------------------------------------------

async fn kind_and_ping(h: &Harness) {
    let expected = if h.url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    assert_eq!(h.store.kind(), expected);
    h.store.ping().await.unwrap();
}

async fn migrate_is_idempotent(h: &Harness) {
    let audit = AuditGen::new("chain-m");
    put(&*h.store, &audit, ACCT, "retail").await;
    // Already migrated by the harness: twice more changes nothing and keeps the data.
    h.store.migrate().await.unwrap();
    h.store.migrate().await.unwrap();
    // A second store through the URL dispatcher, migrating the same database again.
    let other = shardgate_store::connect(&h.url, 2).await.unwrap();
    assert_eq!(other.kind(), h.store.kind());
    other.migrate().await.unwrap();
    assert_eq!(
        other.get_account(ACCT).await.unwrap().unwrap().tier,
        "retail"
    );
}

async fn account_put_get_update_returns_previous_tier(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-a");
    assert_eq!(s.get_account(ACCT).await.unwrap(), None);

    let prev = s
        .put_account(
            ACCT,
            "retail",
            1000,
            &audit.next("account.put", Some(ACCT), None, None),
        )
        .await
        .unwrap();
    assert_eq!(prev, None);
    let a = s.get_account(ACCT).await.unwrap().unwrap();
    assert_eq!(a.account, ACCT);
    assert_eq!(a.tier, "retail");
    assert_eq!((a.created_at, a.updated_at), (1000, 1000));

    let prev = s
        .put_account(
            ACCT,
            "institutional",
            2000,
            &audit.next("account.put", Some(ACCT), None, None),
        )
        .await
        .unwrap();
    assert_eq!(prev.as_deref(), Some("retail"));
    let a = s.get_account(ACCT).await.unwrap().unwrap();
    assert_eq!(a.tier, "institutional");
    assert_eq!((a.created_at, a.updated_at), (1000, 2000));

    // Same tier again: previous tier answered, nothing else changes.
    let prev = s
        .put_account(
            ACCT,
            "institutional",
            3000,
            &audit.next("account.put", Some(ACCT), None, None),
        )
        .await
        .unwrap();
    assert_eq!(prev.as_deref(), Some("institutional"));
    let a = s.get_account(ACCT).await.unwrap().unwrap();
    assert_eq!((a.created_at, a.updated_at), (1000, 2000));

    // Each put committed its audit event.
    assert_eq!(count_actions(s, "chain-a", "account.put").await, 3);
    assert_eq!(s.get_account("acct-2").await.unwrap(), None);
}

async fn account_put_expecting_a_tier_writes_only_while_it_holds(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-x");
    let put = |tier: &'static str, expected: ExpectedTier<'static>, account: &'static str| {
        let rec = audit.next("account.put", Some(account), None, None);
        async move {
            let facts = FactsUpdate::Set {
                requested_tier: "retail",
                attributes: r#"{"users":5.0}"#,
            };
            s.put_account_expecting(
                account,
                tier,
                expected,
                KeepVersions::Set(Some(3)),
                facts,
                1000,
                &rec,
            )
            .await
        }
    };
    assert_eq!(
        put("retail", ExpectedTier::Absent, ACCT).await.unwrap(),
        None
    );
    // Created meanwhile, moved meanwhile, deleted meanwhile: nothing is written.
    let r = put("institutional", ExpectedTier::Absent, ACCT).await;
    assert!(matches!(r, Err(StoreError::AccountChanged)), "{r:?}");
    let r = put("institutional", ExpectedTier::Is("gold"), ACCT).await;
    assert!(matches!(r, Err(StoreError::AccountChanged)), "{r:?}");
    let r = put("institutional", ExpectedTier::Is("retail"), "acct-2").await;
    assert!(matches!(r, Err(StoreError::AccountChanged)), "{r:?}");
    assert_eq!(s.get_account("acct-2").await.unwrap(), None);
    let a = s.get_account(ACCT).await.unwrap().unwrap();
    assert_eq!((a.tier.as_str(), a.keep_versions), ("retail", Some(3)));
    // The facts are written with the tier, in its transaction.
    assert_eq!(
        (a.requested_tier.as_deref(), a.attributes.as_str()),
        (Some("retail"), r#"{"users":5.0}"#)
    );
    assert_eq!(count_actions(s, "chain-x", "account.put").await, 1);
    // The tier it expects: written, with its retention and its audit event.
    let r = put("institutional", ExpectedTier::Is("retail"), ACCT).await;
    assert_eq!(r.unwrap().as_deref(), Some("retail"));
    assert_eq!(
        s.get_account(ACCT).await.unwrap().unwrap().tier,
        "institutional"
    );
    assert_eq!(count_actions(s, "chain-x", "account.put").await, 2);
}

async fn concurrent_tier_changes_expecting_one_tier_exactly_one_wins(h: &Harness) {
    let audit = Arc::new(AuditGen::new("chain-y"));
    put(&*h.store, &audit, ACCT, "retail").await;
    let mut set = JoinSet::new();
    for i in 0..6 {
        let (store, audit) = (h.store.clone(), audit.clone());
        set.spawn(async move {
            let tier = format!("tier-{i}");
            let rec = audit.next("account.put", Some(ACCT), None, None);
            let r = store
                .put_account_expecting(
                    ACCT,
                    &tier,
                    ExpectedTier::Is("retail"),
                    KeepVersions::Unchanged,
                    FactsUpdate::Unchanged,
                    2000,
                    &rec,
                )
                .await;
            (tier, r)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (tier, r) = joined.unwrap();
        match r {
            Ok(previous) => {
                assert_eq!(previous.as_deref(), Some("retail"));
                winners.push(tier);
            }
            Err(StoreError::AccountChanged) => {}
            Err(e) => panic!("{tier}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let a = h.store.get_account(ACCT).await.unwrap().unwrap();
    assert_eq!(a.tier, winners[0]);
    assert_eq!(count_actions(&*h.store, "chain-y", "account.put").await, 2);
}

async fn account_ids_are_case_sensitive(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-c");
    assert_eq!(put(s, &audit, "acct-A", "retail").await, None);
    assert_eq!(put(s, &audit, "acct-a", "institutional").await, None);
    assert_eq!(
        s.get_account("acct-A").await.unwrap().unwrap().tier,
        "retail"
    );
    assert_eq!(
        s.get_account("acct-a").await.unwrap().unwrap().tier,
        "institutional"
    );
    assert_eq!(s.get_account("ACCT-A").await.unwrap(), None);

    insert(s, &audit, "acct-A", "s", 1, "local-1")
        .await
        .unwrap();
    assert_eq!(s.latest_version("acct-a", "s").await.unwrap(), None);
    let deleted = s
        .delete_account("acct-a", &|n| {
            audit.next_detail("account.delete", Some("acct-a"), None, &n.to_string())
        })
        .await
        .unwrap();
    assert_eq!(
        deleted,
        DeleteOutcome {
            shards: 0,
            versions: 0
        }
    );
    assert!(s.get_account("acct-A").await.unwrap().is_some());
    assert_eq!(s.latest_version("acct-A", "s").await.unwrap(), Some(v(1)));
}

async fn get_shard_versions_answers_every_item_in_order(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-many");
    put(s, &audit, ACCT, "retail").await;
    put(s, &audit, "acct-B", "retail").await;
    insert(s, &audit, ACCT, "s1", 1, "local-1").await.unwrap();
    insert(s, &audit, ACCT, "s1", 2, "kms-1").await.unwrap();
    insert(s, &audit, ACCT, "s2", 1, "hsm-1").await.unwrap();
    insert(s, &audit, "acct-B", "s1", 1, "local-2")
        .await
        .unwrap();
    let key = |a: &str, sh: &str, n: Option<i64>| (a.to_string(), sh.to_string(), n.map(v));
    let got = s
        .get_shard_versions(&[
            key(ACCT, "s1", None),
            key("acct-B", "s1", None),
            key(ACCT, "s1", Some(1)),
            key(ACCT, "missing", None),
            key(ACCT, "s2", Some(2)),
            key(ACCT, "s2", None),
            key(ACCT, "s1", None),
            key("ACCT-B", "s1", None),
        ])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            Some(shard_row(ACCT, "s1", 2, "kms-1")),
            Some(shard_row("acct-B", "s1", 1, "local-2")),
            Some(shard_row(ACCT, "s1", 1, "local-1")),
            None,
            None,
            Some(shard_row(ACCT, "s2", 1, "hsm-1")),
            Some(shard_row(ACCT, "s1", 2, "kms-1")),
            None,
        ]
    );
    assert_eq!(s.get_shard_versions(&[]).await.unwrap(), Vec::new());
    // The largest batch the gateway allows by default fits in one statement.
    let many: Vec<_> = (0..1000)
        .map(|i| key(ACCT, if i % 2 == 0 { "s1" } else { "s2" }, None))
        .collect();
    let got = s.get_shard_versions(&many).await.unwrap();
    assert_eq!(got.len(), 1000);
    assert!(got.iter().all(Option::is_some));
}

async fn insert_v1_v2_and_get_latest_and_by_version(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-i");
    put(s, &audit, ACCT, "retail").await;
    assert_eq!(s.latest_version(ACCT, "s1").await.unwrap(), None);
    assert_eq!(s.get_shard_version(ACCT, "s1", None).await.unwrap(), None);

    insert(s, &audit, ACCT, "s1", 1, "local-1").await.unwrap();
    assert_eq!(s.latest_version(ACCT, "s1").await.unwrap(), Some(v(1)));
    insert(s, &audit, ACCT, "s1", 2, "kms-1").await.unwrap();
    assert_eq!(s.latest_version(ACCT, "s1").await.unwrap(), Some(v(2)));

    // Every column round-trips.
    let latest = s
        .get_shard_version(ACCT, "s1", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest, shard_row(ACCT, "s1", 2, "kms-1"));
    let v1 = s
        .get_shard_version(ACCT, "s1", Some(v(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v1, shard_row(ACCT, "s1", 1, "local-1"));
    assert_eq!(
        s.get_shard_version(ACCT, "s1", Some(v(3))).await.unwrap(),
        None
    );
    // No read can name version 0: `Version` refuses it before any store sees it.
    assert!(Version::new(0).is_err());
    assert_eq!(
        s.get_shard_version(ACCT, "other", Some(v(1)))
            .await
            .unwrap(),
        None
    );

    // The audit event of each insert committed with it.
    let puts: Vec<_> = events(s, "chain-i")
        .await
        .into_iter()
        .filter(|e| e.action == "shard.put")
        .map(|e| e.version)
        .collect();
    assert_eq!(puts, vec![Some(1), Some(2)]);
}

async fn insert_conflict_on_same_version(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-x");
    put(s, &audit, ACCT, "retail").await;
    insert(s, &audit, ACCT, "s", 1, "local-1").await.unwrap();
    let err = insert(s, &audit, ACCT, "s", 1, "local-1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { latest: Some(1) }),
        "{err:?}"
    );
    insert(s, &audit, ACCT, "s", 2, "local-1").await.unwrap();
    let err = insert(s, &audit, ACCT, "s", 2, "local-1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { latest: Some(2) }),
        "{err:?}"
    );
    // The losers wrote nothing, not even their audit events.
    assert_eq!(count_actions(s, "chain-x", "shard.put").await, 2);
    assert_eq!(s.latest_version(ACCT, "s").await.unwrap(), Some(v(2)));
}

async fn insert_conflict_on_wrong_version(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-w");
    put(s, &audit, ACCT, "retail").await;
    // A new shard must start at 1. (0 and -1 are not versions: `Version` refuses them before
    // any store sees them, and the schema's CHECK would too.)
    assert!(Version::new(0).is_err() && Version::new(-1).is_err());
    for v in [2, 5] {
        let err = insert(s, &audit, ACCT, "s", v, "local-1")
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { latest: None }),
            "{v}: {err:?}"
        );
    }
    insert(s, &audit, ACCT, "s", 1, "local-1").await.unwrap();
    for v in [3, 10] {
        let err = insert(s, &audit, ACCT, "s", v, "local-1")
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { latest: Some(1) }),
            "{v}: {err:?}"
        );
    }
    assert_eq!(count_actions(s, "chain-w", "shard.put").await, 1);
}

async fn insert_account_not_found(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-n");
    let err = insert(s, &audit, "nobody", "s", 1, "local-1")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AccountNotFound), "{err:?}");
    assert_eq!(s.latest_version("nobody", "s").await.unwrap(), None);
    assert!(events(s, "chain-n").await.is_empty());
}

async fn concurrent_same_version_exactly_one_wins(h: &Harness) {
    let audit = Arc::new(AuditGen::new("chain-r"));
    put(&*h.store, &audit, ACCT, "retail").await;
    let mut tasks = JoinSet::new();
    for i in 0..32 {
        let store = h.store.clone();
        let audit = audit.clone();
        tasks.spawn(async move {
            let mut row = shard_row(ACCT, "race", 1, "local-1");
            row.created_by = format!("writer-{i}");
            let result = store
                .insert_shard_version(
                    &row,
                    &audit.next("shard.put", Some(ACCT), Some("race"), Some(1)),
                )
                .await;
            (i, result)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.unwrap();
        match result {
            Ok(()) => winners.push(i),
            Err(StoreError::Conflict { latest: Some(1) }) => {}
            Err(e) => panic!("writer {i}: unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let stored = h
        .store
        .get_shard_version(ACCT, "race", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, v(1));
    assert_eq!(stored.created_by, format!("writer-{}", winners[0]));
    assert_eq!(count_actions(&*h.store, "chain-r", "shard.put").await, 1);
}

async fn concurrent_retry_loop_has_no_gaps(h: &Harness) {
    let audit = Arc::new(AuditGen::new("chain-l"));
    put(&*h.store, &audit, ACCT, "retail").await;
    let mut tasks = JoinSet::new();
    for _ in 0..32 {
        let store = h.store.clone();
        let audit = audit.clone();
        tasks.spawn(async move {
            let mut attempts = 0;
            loop {
                attempts += 1;
                assert!(attempts < 1000, "no progress");
                let next = store
                    .latest_version(ACCT, "seq")
                    .await
                    .unwrap()
                    .map_or(0, Version::get)
                    + 1;
                match insert(&*store, &audit, ACCT, "seq", next, "local-1").await {
                    Ok(()) => return next,
                    Err(StoreError::Conflict { .. }) => tokio::task::yield_now().await,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
        });
    }
    let mut won = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        won.push(joined.unwrap());
    }
    won.sort_unstable();
    assert_eq!(won, (1..=32).collect::<Vec<i64>>());
    assert_eq!(
        h.store.latest_version(ACCT, "seq").await.unwrap(),
        Some(v(32))
    );
    for n in 1..=32 {
        let row = h
            .store
            .get_shard_version(ACCT, "seq", Some(v(n)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.version, v(n));
    }
    let mut audited: Vec<i64> = events(&*h.store, "chain-l")
        .await
        .into_iter()
        .filter(|e| e.action == "shard.put")
        .map(|e| e.version.unwrap())
        .collect();
    audited.sort_unstable();
    assert_eq!(audited, (1..=32).collect::<Vec<i64>>());
}

async fn list_shards_pages_by_exact_bytes(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-p");
    put(s, &audit, ACCT, "retail").await;
    put(s, &audit, "acct-0", "retail").await;
    let ids = [
        "a", "B", "b", "a.1", "a:2", "A", "a-b", "Z", "0", "_", "ab", "a_",
    ];
    let backends = ["local-1", "kms-1", "hsm-1"];
    // Shard number n gets 1 + n % 3 versions, version v on backends[v - 1].
    for (n, id) in ids.iter().enumerate() {
        for v in 1..=(1 + n % 3) {
            insert(s, &audit, ACCT, id, v as i64, backends[v - 1])
                .await
                .unwrap();
        }
    }
    // Another account's shards never show up.
    insert(s, &audit, "acct-0", "a0", 1, "local-1")
        .await
        .unwrap();

    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(
        sorted,
        ["0", "A", "B", "Z", "_", "a", "a-b", "a.1", "a:2", "a_", "ab", "b"]
    );
    let expected: Vec<ShardSummary> = sorted
        .iter()
        .map(|id| {
            let n = ids.iter().position(|x| x == id).unwrap();
            ShardSummary {
                shard: id.to_string(),
                latest_version: v(1 + (n % 3) as i64),
                backend: backends[n % 3].to_string(),
            }
        })
        .collect();
    assert_eq!(s.list_shards(ACCT, None, 100).await.unwrap(), expected);

    // Pages of 5, each continuing strictly after the last id of the previous one.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list_shards(ACCT, after.as_deref(), 5).await.unwrap();
        assert!(page.len() <= 5);
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().shard.clone());
        paged.extend(page);
    }
    assert_eq!(paged, expected);

    // `after` compares exact bytes: after "a" come "a-b", "a.1", ... but not "A" or "B".
    let page = s.list_shards(ACCT, Some("a"), 3).await.unwrap();
    let got: Vec<&str> = page.iter().map(|x| x.shard.as_str()).collect();
    assert_eq!(got, ["a-b", "a.1", "a:2"]);
    let page = s.list_shards(ACCT, Some("B"), 2).await.unwrap();
    let got: Vec<&str> = page.iter().map(|x| x.shard.as_str()).collect();
    assert_eq!(got, ["Z", "_"]);
    // An `after` that is not a stored id, past the end, a zero limit, an unknown account.
    let page = s.list_shards(ACCT, Some("a0"), 2).await.unwrap();
    let got: Vec<&str> = page.iter().map(|x| x.shard.as_str()).collect();
    assert_eq!(got, ["a:2", "a_"]);
    assert!(s.list_shards(ACCT, Some("b"), 10).await.unwrap().is_empty());
    assert!(s.list_shards(ACCT, None, 0).await.unwrap().is_empty());
    assert!(s.list_shards("nobody", None, 10).await.unwrap().is_empty());
}

async fn shard_ids_are_case_sensitive(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-s");
    put(s, &audit, ACCT, "retail").await;
    insert(s, &audit, ACCT, "key-A", 1, "local-1")
        .await
        .unwrap();
    // "key-a" is another shard: it starts at version 1.
    insert(s, &audit, ACCT, "key-a", 1, "kms-1").await.unwrap();
    insert(s, &audit, ACCT, "key-a", 2, "kms-1").await.unwrap();
    assert_eq!(s.latest_version(ACCT, "key-A").await.unwrap(), Some(v(1)));
    assert_eq!(s.latest_version(ACCT, "key-a").await.unwrap(), Some(v(2)));
    assert_eq!(s.latest_version(ACCT, "KEY-A").await.unwrap(), None);
    let n = s
        .delete_shard(ACCT, "key-a", &|n| {
            audit.next_detail("shard.delete", Some(ACCT), Some("key-a"), &n.to_string())
        })
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(s.latest_version(ACCT, "key-A").await.unwrap(), Some(v(1)));
}

async fn delete_shard_removes_all_versions_and_audits_count(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-d");
    put(s, &audit, ACCT, "retail").await;
    for v in 1..=3 {
        insert(s, &audit, ACCT, "gone", v, "local-1").await.unwrap();
    }
    insert(s, &audit, ACCT, "kept", 1, "local-1").await.unwrap();

    let n = s
        .delete_shard(ACCT, "gone", &|n| {
            audit.next_detail(
                "shard.delete",
                Some(ACCT),
                Some("gone"),
                &format!("destroyed={n}"),
            )
        })
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(s.latest_version(ACCT, "gone").await.unwrap(), None);
    for n in 1..=3 {
        assert_eq!(
            s.get_shard_version(ACCT, "gone", Some(v(n))).await.unwrap(),
            None
        );
    }
    assert_eq!(s.latest_version(ACCT, "kept").await.unwrap(), Some(v(1)));
    let deletes: Vec<_> = events(s, "chain-d")
        .await
        .into_iter()
        .filter(|e| e.action == "shard.delete")
        .collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].detail, "destroyed=3");
    assert_eq!(deletes[0].shard.as_deref(), Some("gone"));

    // Nothing left: ShardNotFound, and no audit event.
    for (account, shard) in [(ACCT, "gone"), (ACCT, "never"), ("nobody", "gone")] {
        let err = s
            .delete_shard(account, shard, &|n| {
                audit.next_detail("shard.delete", Some(account), Some(shard), &n.to_string())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::ShardNotFound), "{err:?}");
    }
    assert_eq!(count_actions(s, "chain-d", "shard.delete").await, 1);

    // A deleted shard starts again at version 1.
    insert(s, &audit, ACCT, "gone", 1, "local-1").await.unwrap();
}

async fn delete_account_removes_everything(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-e");
    put(s, &audit, ACCT, "retail").await;
    put(s, &audit, "acct-2", "retail").await;
    for shard in ["s1", "s2", "s3"] {
        insert(s, &audit, ACCT, shard, 1, "local-1").await.unwrap();
    }
    insert(s, &audit, ACCT, "s1", 2, "local-1").await.unwrap();
    insert(s, &audit, "acct-2", "s1", 1, "local-1")
        .await
        .unwrap();

    let out = s
        .delete_account(ACCT, &|n| {
            audit.next_detail(
                "account.delete",
                Some(ACCT),
                None,
                &format!("destroyed={n}"),
            )
        })
        .await
        .unwrap();
    assert_eq!(
        out,
        DeleteOutcome {
            shards: 3,
            versions: 4
        }
    );
    assert_eq!(s.get_account(ACCT).await.unwrap(), None);
    assert!(s.list_shards(ACCT, None, 10).await.unwrap().is_empty());
    assert_eq!(s.latest_version(ACCT, "s1").await.unwrap(), None);
    assert_eq!(
        s.account_stats(ACCT, "local-1").await.unwrap(),
        AccountStats::default()
    );
    let deletes: Vec<_> = events(s, "chain-e")
        .await
        .into_iter()
        .filter(|e| e.action == "account.delete")
        .collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].detail, "destroyed=4");

    // The other account is untouched.
    assert!(s.get_account("acct-2").await.unwrap().is_some());
    assert_eq!(s.latest_version("acct-2", "s1").await.unwrap(), Some(v(1)));

    // Gone: AccountNotFound, no audit event; shards cannot be stored for it any more.
    let err = s
        .delete_account(ACCT, &|n| {
            audit.next_detail("account.delete", Some(ACCT), None, &n.to_string())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AccountNotFound), "{err:?}");
    assert_eq!(count_actions(s, "chain-e", "account.delete").await, 1);
    let err = insert(s, &audit, ACCT, "s1", 1, "local-1")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AccountNotFound), "{err:?}");

    // An account without shards deletes with zero counts.
    put(s, &audit, "empty", "retail").await;
    let out = s
        .delete_account("empty", &|n| {
            audit.next_detail("account.delete", Some("empty"), None, &n.to_string())
        })
        .await
        .unwrap();
    assert_eq!(
        out,
        DeleteOutcome {
            shards: 0,
            versions: 0
        }
    );
}

async fn account_stats_counts(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-t");
    put(s, &audit, ACCT, "retail").await;
    put(s, &audit, "acct-2", "retail").await;
    assert_eq!(
        s.account_stats(ACCT, "local-1").await.unwrap(),
        AccountStats::default()
    );
    // s1: local, local, kms; s2: kms; s3: local; another account: kms x2.
    insert(s, &audit, ACCT, "s1", 1, "local-1").await.unwrap();
    insert(s, &audit, ACCT, "s1", 2, "local-1").await.unwrap();
    insert(s, &audit, ACCT, "s1", 3, "kms-1").await.unwrap();
    insert(s, &audit, ACCT, "s2", 1, "kms-1").await.unwrap();
    insert(s, &audit, ACCT, "s3", 1, "local-1").await.unwrap();
    insert(s, &audit, "acct-2", "x", 1, "kms-1").await.unwrap();
    insert(s, &audit, "acct-2", "x", 2, "kms-1").await.unwrap();

    assert_eq!(
        s.account_stats(ACCT, "kms-1").await.unwrap(),
        AccountStats {
            shard_count: 3,
            versions_elsewhere: 3
        }
    );
    assert_eq!(
        s.account_stats(ACCT, "local-1").await.unwrap(),
        AccountStats {
            shard_count: 3,
            versions_elsewhere: 2
        }
    );
    assert_eq!(
        s.account_stats(ACCT, "hsm-1").await.unwrap(),
        AccountStats {
            shard_count: 3,
            versions_elsewhere: 5
        }
    );
    // Backend names compare exactly.
    assert_eq!(
        s.account_stats(ACCT, "KMS-1").await.unwrap(),
        AccountStats {
            shard_count: 3,
            versions_elsewhere: 5
        }
    );
    assert_eq!(
        s.account_stats("acct-2", "local-1").await.unwrap(),
        AccountStats {
            shard_count: 1,
            versions_elsewhere: 2
        }
    );
}

async fn audit_append_head_chains_and_paging(h: &Harness) {
    let s = &*h.store;
    assert!(s.audit_chains().await.unwrap().is_empty());
    assert_eq!(s.audit_head("c-1").await.unwrap(), None);
    s.append_audit(&[]).await.unwrap();

    s.register_chain("c-2", 100, "host-b").await.unwrap();
    s.register_chain("c-0", 50, "host-a").await.unwrap();
    // Records with every optional field set and unset, binary tags.
    let batch1: Vec<_> = (1..=7)
        .map(|seq| {
            if seq % 2 == 0 {
                record(
                    "c-1",
                    seq,
                    "shard.get",
                    Some(ACCT),
                    Some("s"),
                    Some(seq),
                    "",
                )
            } else {
                record(
                    "c-1",
                    seq,
                    "token.denied",
                    None,
                    None,
                    None,
                    "scope missing",
                )
            }
        })
        .collect();
    s.append_audit(&batch1).await.unwrap();
    let batch2: Vec<_> = (8..=25)
        .map(|seq| {
            record(
                "c-1",
                seq,
                "shard.put",
                Some(ACCT),
                Some("s"),
                Some(seq),
                "",
            )
        })
        .collect();
    s.append_audit(&batch2).await.unwrap();
    s.append_audit(&[record("C-1", 1, "x", None, None, None, "")])
        .await
        .unwrap();

    assert_eq!(
        s.audit_head("c-1").await.unwrap(),
        Some((25, common::tag(25)))
    );
    assert_eq!(
        s.audit_head("C-1").await.unwrap(),
        Some((1, common::tag(1)))
    );
    assert_eq!(s.audit_head("c-0").await.unwrap(), None);
    // Registered chains and chains with events, once each, in byte order.
    assert_eq!(
        s.audit_chains().await.unwrap(),
        ["C-1", "c-0", "c-1", "c-2"]
    );

    // Every field round-trips.
    let all = s.audit_events("c-1", 0, 100).await.unwrap();
    let expected: Vec<_> = batch1.iter().chain(batch2.iter()).cloned().collect();
    assert_eq!(all, expected);

    // Pages of 10 by seq.
    let mut after = 0;
    let mut seqs = Vec::new();
    loop {
        let page = s.audit_events("c-1", after, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        after = page.last().unwrap().seq;
        seqs.extend(page.iter().map(|e| e.seq));
    }
    assert_eq!(seqs, (1..=25).collect::<Vec<i64>>());
    let page = s.audit_events("c-1", 20, 3).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [21, 22, 23]);
    assert!(s.audit_events("c-1", 25, 10).await.unwrap().is_empty());
    assert!(s.audit_events("c-9", 0, 10).await.unwrap().is_empty());

    // A duplicate (chain, seq) is refused, and its whole batch with it.
    let err = s
        .append_audit(&[
            record("c-1", 26, "x", None, None, None, ""),
            record("c-1", 25, "x", None, None, None, ""),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    assert_eq!(
        s.audit_head("c-1").await.unwrap(),
        Some((25, common::tag(25)))
    );
}

/// The segment of chain `chain` from `first` to `last`, as the archiver records it for the
/// rows [`record`] makes (`prev_manifest`: the segment before it, zeros at the start).
fn segment(chain: &str, (first, last): (i64, i64), prev_manifest: &[u8]) -> AuditSegment {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for seq in first..=last {
        digest.update(common::tag(seq));
    }
    AuditSegment {
        chain_id: chain.to_string(),
        first_seq: first,
        last_seq: last,
        min_ts_ms: 1_700_000_000_000 + first,
        max_ts_ms: 1_700_000_000_000 + last,
        prev_tag: common::tag(first - 1),
        last_tag: common::tag(last),
        tags_sha256: digest.finalize().to_vec(),
        object_key: format!("{chain}/{first}.sgseg"),
        object_sha256: vec![7; 32],
        object_bytes: 100,
        manifest_key: format!("{chain}/{first}.manifest"),
        manifest_sha256: vec![u8::try_from(first).unwrap(); 32],
        prev_manifest_sha256: prev_manifest.to_vec(),
        archived_ms: 1,
    }
}

async fn an_archived_segment_is_recorded_then_only_its_rows_deleted_a_chunk_at_a_time(h: &Harness) {
    let s = &*h.store;
    let rows = |chain: &str, n: i64| -> Vec<_> {
        (1..=n)
            .map(|seq| record(chain, seq, "shard.get", Some(ACCT), None, None, ""))
            .collect()
    };
    s.append_audit(&rows("c-a", 9)).await.unwrap();
    s.append_audit(&rows("c-b", 3)).await.unwrap();
    let seqs = |chain: &'static str| async move {
        let page = s.audit_events(chain, i64::MIN, 100).await.unwrap();
        page.iter().map(|e| e.seq).collect::<Vec<_>>()
    };
    // Nothing recorded: nothing can be deleted.
    assert_eq!(s.delete_archived_audit("c-a", 100).await.unwrap(), 0);
    // A segment whose digest is not its rows', or that does not start the chain, is refused.
    let first = segment("c-a", (1, 4), &[0; 32]);
    let mut forged = first.clone();
    forged.tags_sha256 = vec![1; 32];
    assert!(s.record_audit_segment(&forged).await.is_err());
    assert!(s
        .record_audit_segment(&segment("c-a", (5, 7), &[0; 32]))
        .await
        .is_err());
    assert!(s.audit_segments("c-a").await.unwrap().is_empty());
    // Recorded: its rows stay until deleted; recording it again adds nothing.
    assert_eq!(s.record_audit_segment(&first).await.unwrap(), 4);
    assert_eq!(s.record_audit_segment(&first).await.unwrap(), 0);
    assert_eq!(seqs("c-a").await, (1..=9).collect::<Vec<_>>());
    // Deleted a chunk at a time, oldest first, never past the recorded segments.
    assert_eq!(s.delete_archived_audit("c-a", 0).await.unwrap(), 0);
    assert_eq!(s.delete_archived_audit("c-a", 3).await.unwrap(), 3);
    assert_eq!(seqs("c-a").await, (4..=9).collect::<Vec<_>>());
    assert_eq!(s.delete_archived_audit("c-a", 3).await.unwrap(), 1);
    assert_eq!(s.delete_archived_audit("c-a", 3).await.unwrap(), 0);
    // The next segment continues the first; its rows go the same way.
    let next = segment("c-a", (5, 7), &first.manifest_sha256);
    assert_eq!(s.record_audit_segment(&next).await.unwrap(), 3);
    assert_eq!(s.delete_archived_audit("c-a", 100).await.unwrap(), 3);
    assert_eq!(seqs("c-a").await, [8, 9]);
    // Another chain's rows at the same seqs are not touched.
    assert_eq!(seqs("c-b").await, [1, 2, 3]);
    assert_eq!(s.delete_archived_audit("c-b", 100).await.unwrap(), 0);
    assert_eq!(
        s.audit_segments("c-a").await.unwrap(),
        [first.clone(), next]
    );
}

async fn a_segment_checked_a_step_at_a_time_is_recorded_from_its_steps(h: &Harness) {
    let s = &*h.store;
    let rows: Vec<_> = (1..=9)
        .map(|seq| record("c-s", seq, "shard.get", Some(ACCT), None, None, ""))
        .collect();
    s.append_audit(&rows).await.unwrap();
    let check = |first: i64, range: (i64, i64)| s.check_audit_range("c-s", first, range);
    // A step starts the segment or continues the steps before it, within the segment, over
    // rows that are all hot.
    assert!(check(1, (2, 3)).await.is_err());
    assert!(check(1, (3, 2)).await.is_err());
    assert!(check(2, (1, 3)).await.is_err());
    assert!(check(1, (1, 12)).await.is_err());
    assert!(check(1, (1, 1 + shardgate_store::MAX_AUDIT_CHECK_STEP))
        .await
        .is_err());
    assert_eq!(check(1, (1, 3)).await.unwrap(), 3);
    assert_eq!(check(1, (4, 5)).await.unwrap(), 2);
    // The same step again answers as before; a gap is refused.
    assert_eq!(check(1, (4, 5)).await.unwrap(), 2);
    assert!(check(1, (7, 8)).await.is_err());
    // Recorded from its steps: a step changed behind the store's back is caught.
    let first = segment("c-s", (1, 5), &[0; 32]);
    h.exec("UPDATE audit_archive_checks SET max_ts_ms = max_ts_ms + 1 WHERE from_seq = 4")
        .await;
    assert!(s.record_audit_segment(&first).await.is_err());
    assert!(s.audit_segments("c-s").await.unwrap().is_empty());
    // Checked again from its first seq (which starts the steps over), it is recorded; a
    // forged digest still is not.
    assert_eq!(check(1, (1, 2)).await.unwrap(), 2);
    assert_eq!(check(1, (3, 5)).await.unwrap(), 3);
    let mut forged = first.clone();
    forged.tags_sha256 = vec![1; 32];
    assert!(s.record_audit_segment(&forged).await.is_err());
    assert_eq!(s.record_audit_segment(&first).await.unwrap(), 5);
    // Steps that do not reach a segment's end are not used: its rows are read instead.
    assert_eq!(check(6, (6, 7)).await.unwrap(), 2);
    let next = segment("c-s", (6, 9), &first.manifest_sha256);
    assert_eq!(s.record_audit_segment(&next).await.unwrap(), 4);
    assert_eq!(s.delete_archived_audit("c-s", 100).await.unwrap(), 9);
    assert_eq!(s.audit_segments("c-s").await.unwrap(), [first, next]);
}

async fn audit_register_chain_is_idempotent(h: &Harness) {
    let s = &*h.store;
    s.register_chain("chain-1", 100, "host-a").await.unwrap();
    s.register_chain("chain-1", 100, "host-a").await.unwrap();
    let err = s
        .register_chain("chain-1", 200, "host-b")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Internal(_)), "{err:?}");
    assert_eq!(s.audit_chains().await.unwrap(), ["chain-1"]);
}

async fn audit_unwritable_fails_insert_atomically(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-u");
    put(s, &audit, ACCT, "retail").await;
    insert(s, &audit, ACCT, "s", 1, "local-1").await.unwrap();
    h.break_audit().await;

    // A new shard and a new version of an existing one: refused, nothing stored.
    let err = insert(s, &audit, ACCT, "new", 1, "local-1")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    assert_eq!(s.latest_version(ACCT, "new").await.unwrap(), None);
    assert_eq!(
        s.get_shard_version(ACCT, "new", Some(v(1))).await.unwrap(),
        None
    );
    assert!(s
        .list_shards(ACCT, Some("new"), 10)
        .await
        .unwrap()
        .iter()
        .all(|x| x.shard != "new"));
    let err = insert(s, &audit, ACCT, "s", 2, "local-1")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    assert_eq!(s.latest_version(ACCT, "s").await.unwrap(), Some(v(1)));
    assert_eq!(
        s.account_stats(ACCT, "local-1").await.unwrap(),
        AccountStats {
            shard_count: 1,
            versions_elsewhere: 0
        }
    );

    // Writable again: the same versions go in.
    h.repair_audit().await;
    insert(s, &audit, ACCT, "new", 1, "local-1").await.unwrap();
    insert(s, &audit, ACCT, "s", 2, "local-1").await.unwrap();
}

async fn audit_unwritable_fails_other_writes_atomically(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-v");
    put(s, &audit, ACCT, "retail").await;
    insert(s, &audit, ACCT, "s", 1, "local-1").await.unwrap();
    insert(s, &audit, ACCT, "s", 2, "local-1").await.unwrap();
    h.break_audit().await;

    // put_account: neither a new account nor a tier change.
    let err = s
        .put_account(
            "acct-new",
            "retail",
            5,
            &audit.next("account.put", Some("acct-new"), None, None),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    assert_eq!(s.get_account("acct-new").await.unwrap(), None);
    let err = s
        .put_account(
            ACCT,
            "institutional",
            5,
            &audit.next("account.put", Some(ACCT), None, None),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    assert_eq!(s.get_account(ACCT).await.unwrap().unwrap().tier, "retail");

    // delete_shard and delete_account: everything still there.
    let err = s
        .delete_shard(ACCT, "s", &|n| {
            audit.next_detail("shard.delete", Some(ACCT), Some("s"), &n.to_string())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    assert_eq!(s.latest_version(ACCT, "s").await.unwrap(), Some(v(2)));
    let err = s
        .delete_account(ACCT, &|n| {
            audit.next_detail("account.delete", Some(ACCT), None, &n.to_string())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    assert!(s.get_account(ACCT).await.unwrap().is_some());
    assert!(s
        .get_shard_version(ACCT, "s", Some(v(1)))
        .await
        .unwrap()
        .is_some());

    h.repair_audit().await;
    let out = s
        .delete_account(ACCT, &|n| {
            audit.next_detail("account.delete", Some(ACCT), None, &n.to_string())
        })
        .await
        .unwrap();
    assert_eq!(
        out,
        DeleteOutcome {
            shards: 1,
            versions: 2
        }
    );
}

async fn audit_unwritable_fails_append(h: &Harness) {
    let s = &*h.store;
    s.append_audit(&[record("c", 1, "a", None, None, None, "")])
        .await
        .unwrap();
    h.break_audit().await;
    let batch: Vec<_> = (2..=4)
        .map(|seq| record("c", seq, "shard.get", Some(ACCT), Some("s"), Some(1), ""))
        .collect();
    let err = s.append_audit(&batch).await.unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    // The message names the failure, never row data.
    let text = err.to_string();
    assert!(!text.contains("req-2"), "{text}");
    assert_eq!(s.audit_head("c").await.unwrap(), Some((1, common::tag(1))));
    h.repair_audit().await;
    s.append_audit(&batch).await.unwrap();
    assert_eq!(s.audit_head("c").await.unwrap(), Some((4, common::tag(4))));
}

async fn cancelled_writes_leave_no_open_transaction(h: &Harness) {
    let audit = Arc::new(AuditGen::new("chain-k"));
    put(&*h.store, &audit, ACCT, "retail").await;
    // Start writes and drop them at every stage (before, during, after BEGIN/INSERT/COMMIT).
    for round in 0..200u64 {
        let store = h.store.clone();
        let audit = audit.clone();
        let fut = async move {
            let next = store
                .latest_version(ACCT, "c")
                .await?
                .map_or(0, Version::get)
                + 1;
            insert(&*store, &audit, ACCT, "c", next, "local-1").await
        };
        let _ = tokio::time::timeout(Duration::from_micros(round * 37 % 1500), fut).await;
    }
    // Every pooled connection must be usable and none may hold a transaction (PostgreSQL shows
    // it; in SQLite it would hold the write lock, and the writes below would fail).
    assert_eq!(
        h.idle_in_transaction().await,
        0,
        "a cancelled write left its transaction open"
    );
    let mut tasks = JoinSet::new();
    for i in 0..(2 * common::POOL_SIZE) {
        let store = h.store.clone();
        let audit = audit.clone();
        tasks.spawn(async move {
            let shard = format!("after-{i}");
            for v in 1..=3 {
                insert(&*store, &audit, ACCT, &shard, v, "local-1")
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    assert_eq!(
        h.idle_in_transaction().await,
        0,
        "a connection left in a transaction"
    );
    // Whatever of the cancelled writes committed did so with its audit event, without gaps.
    let latest = h
        .store
        .latest_version(ACCT, "c")
        .await
        .unwrap()
        .map_or(0, Version::get);
    for n in 1..=latest {
        assert!(h
            .store
            .get_shard_version(ACCT, "c", Some(v(n)))
            .await
            .unwrap()
            .is_some());
    }
    let audited = events(&*h.store, "chain-k")
        .await
        .iter()
        .filter(|e| e.action == "shard.put" && e.shard.as_deref() == Some("c"))
        .count();
    assert_eq!(audited as i64, latest);
}

// ---------------------------------------------------------------------------------------
// Connection behaviour (not part of the shared suite).

/// Connecting to a PostgreSQL that is not there gives up with `Unavailable` instead of
/// retrying for ever: it answers within a deadline ten times `ACQUIRE_TIMEOUT` (a wait that
/// must end; how fast it ends is no business of a test).
#[tokio::test]
async fn an_unreachable_postgres_is_unavailable_not_retried_for_ever() {
    // Nothing listens on port 1.
    let connect =
        shardgate_store::postgres::PgStore::connect("postgres://postgres@127.0.0.1:1/x", 2);
    let err = tokio::time::timeout(10 * shardgate_store::postgres::ACQUIRE_TIMEOUT, connect)
        .await
        .expect("connecting to an unreachable PostgreSQL never gave up")
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn connect_rejects_unknown_or_malformed_urls() {
    for url in ["mysql://localhost/x", "", "file:///tmp/x.db"] {
        let err = shardgate_store::connect(url, 1).await.err().unwrap();
        assert!(matches!(err, StoreError::Internal(_)), "{url}: {err:?}");
    }
    let err = shardgate_store::connect("postgres://u@h:notaport/x", 1)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Internal(_)), "{err:?}");
}

#[tokio::test]
async fn sqlite_creates_missing_file_but_not_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    assert!(!path.exists());
    let store = shardgate_store::connect(&format!("sqlite://{}", path.display()), 2)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert!(path.exists());

    let missing = dir.path().join("no-such-dir").join("x.db");
    let err = shardgate_store::connect(&format!("sqlite://{}", missing.display()), 2)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory_store_keeps_one_database() {
    let store = shardgate_store::connect("sqlite::memory:", 8)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let audit = AuditGen::new("chain-mem");
    put(&*store, &audit, ACCT, "retail").await;
    let store: Arc<dyn Store> = store;
    let mut tasks = JoinSet::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            assert!(
                store.get_account(ACCT).await.unwrap().is_some(),
                "reader {i}"
            );
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    insert(&*store, &audit, ACCT, "s", 1, "local-1")
        .await
        .unwrap();
    assert_eq!(store.latest_version(ACCT, "s").await.unwrap(), Some(v(1)));
}

/// SQLite: a copy in a new 0600 file, readable as a store of its own and unchanged by later
/// writes; an existing path is refused and left as it was; a path in a missing directory is an
/// I/O error. PostgreSQL: `UsePgDump`, and nothing is created.
async fn backup_to_copies_sqlite_and_refuses_postgres(h: &Harness) {
    use std::os::unix::fs::PermissionsExt;
    let s = &*h.store;
    let audit = AuditGen::new("chain-backup");
    put(s, &audit, ACCT, "retail").await;
    insert(s, &audit, ACCT, "s1", 1, "local").await.unwrap();
    insert(s, &audit, ACCT, "s1", 2, "local").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy.db");
    if h.url.starts_with("postgres") {
        let err = s.backup_to(&to).await.unwrap_err();
        assert!(matches!(err, BackupError::UsePgDump), "{err:?}");
        assert!(err.to_string().contains("pg_dump"), "{err}");
        assert!(!to.exists());
        return;
    }
    s.backup_to(&to).await.unwrap();
    let mode = std::fs::metadata(&to).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let copy =
        shardgate_store::sqlite::SqliteStore::connect(&format!("sqlite://{}", to.display()), 1)
            .await
            .unwrap();
    for n in [1, 2] {
        assert_eq!(
            copy.get_shard_version(ACCT, "s1", Some(v(n)))
                .await
                .unwrap(),
            Some(shard_row(ACCT, "s1", n, "local"))
        );
    }
    assert_eq!(
        events(&copy, "chain-backup").await,
        events(s, "chain-backup").await
    );
    // The original keeps taking writes; the copy is the snapshot.
    insert(s, &audit, ACCT, "s1", 3, "local").await.unwrap();
    assert_eq!(copy.latest_version(ACCT, "s1").await.unwrap(), Some(v(2)));

    let before = std::fs::read(&to).unwrap();
    let err = s.backup_to(&to).await.unwrap_err();
    assert!(matches!(err, BackupError::Exists(_)), "{err:?}");
    assert_eq!(std::fs::read(&to).unwrap(), before);

    // A symlink planted at the path is refused, never followed: its target stays untouched.
    let target = dir.path().join("attacker-readable");
    std::fs::write(&target, "").unwrap();
    let planted = dir.path().join("planted.db");
    std::os::unix::fs::symlink(&target, &planted).unwrap();
    let err = s.backup_to(&planted).await.unwrap_err();
    assert!(matches!(err, BackupError::Exists(_)), "{err:?}");
    assert_eq!(std::fs::read(&target).unwrap(), b"");

    let nowhere = dir.path().join("missing-dir").join("copy.db");
    let err = s.backup_to(&nowhere).await.unwrap_err();
    assert!(matches!(err, BackupError::Io { .. }), "{err:?}");
    assert!(!nowhere.exists());
}
