//! Key commitments in the stored envelope, one-version deletes and `keep_versions`
//! retention, run against both stores (`postgres::<case>` and `sqlite::<case>`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{shard_row, v, AuditGen, Harness};
use shardgate_store::{
    IdempotencyRecord, Idempotent, IdempotentWrite, ItemCommit, ItemOutcome, KeepVersions,
    MigrationSelector, Presealed, Retention, Store, StoreError, Version,
};

both_stores!(
    commitment_roundtrips_on_every_read_path_and_survives_a_rewrap,
    delete_one_version_keeps_the_others_and_audits_it,
    delete_version_with_unwritable_audit_changes_nothing,
    retention_keeps_the_newest_versions_in_the_write_transaction,
    retention_counts_versions_not_version_numbers,
    account_keep_versions_overrides_the_default,
    retention_with_unwritable_audit_rolls_back_the_write_and_the_prune,
    retention_updates_the_idempotency_record_with_the_pruned_versions,
);

const ACCT: &str = "acct-1";

async fn account(s: &dyn Store, audit: &AuditGen, keep: KeepVersions) {
    s.put_account_with_retention(
        ACCT,
        "retail",
        keep,
        1000,
        &audit.next("account.put", Some(ACCT), None, None),
    )
    .await
    .unwrap();
}

/// Insert the next version of `shard` under `default_keep` retention; the pruned versions.
async fn write(
    s: &dyn Store,
    audit: &AuditGen,
    shard: &str,
    default_keep: i64,
) -> Result<Vec<i64>, StoreError> {
    let version = s.latest_version(ACCT, shard).await?.map_or(0, Version::get) + 1;
    let prune = |pruned: &[i64]| {
        pruned
            .iter()
            .map(|v| audit.next("shard.prune", Some(ACCT), Some(shard), Some(*v)))
            .collect()
    };
    let done = s
        .insert_shard_version_retained(
            &shard_row(ACCT, shard, version, "local-1"),
            &audit.next("shard.put", Some(ACCT), Some(shard), Some(version)),
            None,
            Some(Retention {
                default_keep,
                audit: &prune,
                idem: None,
            }),
        )
        .await?;
    match done {
        Idempotent::Done(pruned) => Ok(pruned),
        Idempotent::Replay(_) => panic!("no idempotency key was given"),
    }
}

async fn versions(s: &dyn Store, shard: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for n in 1..=20 {
        if s.get_shard_version(ACCT, shard, Some(v(n)))
            .await
            .unwrap()
            .is_some()
        {
            out.push(n);
        }
    }
    out
}

async fn audited(s: &dyn Store, chain: &str, action: &str) -> Vec<i64> {
    s.audit_events(chain, 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == action)
        .map(|e| e.version.unwrap())
        .collect()
}

async fn commitment_roundtrips_on_every_read_path_and_survives_a_rewrap(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-c");
    account(s, &audit, KeepVersions::Unchanged).await;
    let v2 = shard_row(ACCT, "s", 1, "local-1");
    assert_eq!(v2.format_version, 2);
    assert_eq!(v2.key_commitment.as_ref().map(Vec::len), Some(32));
    let mut v1 = shard_row(ACCT, "old", 1, "local-1");
    v1.format_version = 1;
    v1.key_commitment = None;
    for row in [&v2, &v1] {
        s.insert_shard_version(
            row,
            &audit.next("shard.put", Some(ACCT), Some(&row.shard), Some(1)),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        s.get_shard_version(ACCT, "s", None).await.unwrap(),
        Some(v2.clone())
    );
    assert_eq!(
        s.get_shard_version(ACCT, "old", Some(v(1))).await.unwrap(),
        Some(v1.clone())
    );
    let batch = s
        .get_shard_versions(&[
            (ACCT.into(), "old".into(), None),
            (ACCT.into(), "s".into(), Some(v(1))),
        ])
        .await
        .unwrap();
    assert_eq!(batch, vec![Some(v1.clone()), Some(v2.clone())]);

    // The migration worker's claim reads the commitment too, and a re-wrap changes only
    // the wrap columns.
    let job = s
        .create_migration_job(
            "job-c",
            &MigrationSelector {
                account: Some(ACCT.into()),
                ..Default::default()
            },
            2000,
            "tester",
            &audit.next("migration.start", Some(ACCT), None, None),
        )
        .await
        .unwrap();
    assert_eq!(job.total, 2);
    let claimed = s
        .claim_migration_items("job-c", "w-1", 3000, 60_000, 10, None)
        .await
        .unwrap();
    let rows: Vec<_> = claimed.iter().map(|c| c.row.clone()).collect();
    assert_eq!(rows, vec![v1.clone(), v2.clone()]);
    let outcome = ItemOutcome::Moved {
        backend: "vault".into(),
        key_ref: "vault/key".into(),
        key_version: 1,
        wrapped_dek: b"new wrap".to_vec(),
    };
    let records: Vec<_> = rows
        .iter()
        .map(|r| audit.next("migration.rewrap", Some(ACCT), Some(&r.shard), Some(1)))
        .collect();
    let items: Vec<ItemCommit<'_>> = rows
        .iter()
        .map(|r| ItemCommit {
            account: &r.account,
            shard: &r.shard,
            version: r.version,
            old_wrapped_dek: &r.wrapped_dek,
            outcome: &outcome,
        })
        .collect();
    s.commit_migration_batch("job-c", "w-1", &items, 4000, &mut Presealed::new(records))
        .await
        .unwrap()
        .unwrap();
    for before in [v1, v2] {
        let after = s
            .get_shard_version(ACCT, &before.shard, Some(v(1)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.wrapped_dek, b"new wrap");
        assert_eq!(after.backend, "vault");
        assert_eq!(
            (
                after.format_version,
                after.key_commitment,
                after.nonce,
                after.ciphertext
            ),
            (
                before.format_version,
                before.key_commitment,
                before.nonce,
                before.ciphertext
            )
        );
    }
}

async fn delete_one_version_keeps_the_others_and_audits_it(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-d");
    account(s, &audit, KeepVersions::Unchanged).await;
    for _ in 0..3 {
        assert_eq!(write(s, &audit, "s", 0).await.unwrap(), Vec::<i64>::new());
    }
    let del = |v: i64| audit.next("shard.version_delete", Some(ACCT), Some("s"), Some(v));
    s.delete_shard_version(ACCT, "s", v(2), &del(2))
        .await
        .unwrap();
    assert_eq!(versions(s, "s").await, vec![1, 3]);
    // Gone: a second delete, another shard, another account are ShardNotFound, unaudited.
    for (account, shard, n) in [
        (ACCT, "s", 2),
        (ACCT, "s", 9),
        (ACCT, "t", 1),
        ("nobody", "s", 1),
    ] {
        let err = s
            .delete_shard_version(account, shard, v(n), &del(n))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::ShardNotFound), "{err}");
    }
    // The latest may go: the newest remaining one is the latest then.
    s.delete_shard_version(ACCT, "s", v(3), &del(3))
        .await
        .unwrap();
    assert_eq!(s.latest_version(ACCT, "s").await.unwrap(), Some(v(1)));
    assert_eq!(
        s.get_shard_version(ACCT, "s", None)
            .await
            .unwrap()
            .unwrap()
            .version,
        v(1)
    );
    s.delete_shard_version(ACCT, "s", v(1), &del(1))
        .await
        .unwrap();
    assert_eq!(s.latest_version(ACCT, "s").await.unwrap(), None);
    assert_eq!(
        audited(s, "chain-d", "shard.version_delete").await,
        vec![2, 3, 1]
    );
}

async fn delete_version_with_unwritable_audit_changes_nothing(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-u");
    account(s, &audit, KeepVersions::Unchanged).await;
    write(s, &audit, "s", 0).await.unwrap();
    write(s, &audit, "s", 0).await.unwrap();
    h.break_audit().await;
    let err = s
        .delete_shard_version(
            ACCT,
            "s",
            v(1),
            &audit.next_detail(
                "shard.version_delete",
                Some(ACCT),
                Some("s"),
                "destroyed_versions=1",
            ),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err}");
    h.repair_audit().await;
    assert_eq!(versions(s, "s").await, vec![1, 2]);
}

async fn retention_keeps_the_newest_versions_in_the_write_transaction(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-r");
    account(s, &audit, KeepVersions::Unchanged).await;
    let mut pruned = Vec::new();
    for _ in 0..5 {
        pruned.push(write(s, &audit, "s", 2).await.unwrap());
    }
    assert_eq!(pruned, vec![vec![], vec![], vec![1], vec![2], vec![3]]);
    assert_eq!(versions(s, "s").await, vec![4, 5]);
    // One audit event per pruned version, each right after its write's own event.
    assert_eq!(audited(s, "chain-r", "shard.prune").await, vec![1, 2, 3]);
    let actions: Vec<String> = s
        .audit_events("chain-r", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{}:{}", e.action, e.version.unwrap_or(0)))
        .collect();
    assert_eq!(
        actions[actions.len() - 4..],
        [
            "shard.put:4",
            "shard.prune:2",
            "shard.put:5",
            "shard.prune:3"
        ]
    );
    // Other shards of the account are not touched; 0 keeps everything.
    for _ in 0..3 {
        assert!(write(s, &audit, "t", 0).await.unwrap().is_empty());
    }
    assert_eq!(versions(s, "t").await, vec![1, 2, 3]);
    assert_eq!(versions(s, "s").await, vec![4, 5]);
    // Shrinking the retention prunes down to it at the next write.
    assert_eq!(write(s, &audit, "t", 1).await.unwrap(), vec![1, 2, 3]);
    assert_eq!(versions(s, "t").await, vec![4]);
}

async fn retention_counts_versions_not_version_numbers(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-g");
    account(s, &audit, KeepVersions::Unchanged).await;
    for _ in 0..4 {
        write(s, &audit, "s", 0).await.unwrap();
    }
    s.delete_shard_version(
        ACCT,
        "s",
        v(3),
        &audit.next("shard.version_delete", Some(ACCT), Some("s"), Some(3)),
    )
    .await
    .unwrap();
    // 1, 2, 4 stored; the write of 5 keeping 3 keeps 2, 4, 5.
    assert_eq!(write(s, &audit, "s", 3).await.unwrap(), vec![1]);
    assert_eq!(versions(s, "s").await, vec![2, 4, 5]);
}

async fn account_keep_versions_overrides_the_default(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-a");
    account(s, &audit, KeepVersions::Set(Some(1))).await;
    assert_eq!(
        s.get_account(ACCT).await.unwrap().unwrap().keep_versions,
        Some(1)
    );
    write(s, &audit, "s", 5).await.unwrap();
    assert_eq!(write(s, &audit, "s", 5).await.unwrap(), vec![1]);
    // A tier change that leaves retention unchanged keeps the override.
    s.put_account(
        ACCT,
        "institutional",
        2000,
        &audit.next("account.put", Some(ACCT), None, None),
    )
    .await
    .unwrap();
    let rec = s.get_account(ACCT).await.unwrap().unwrap();
    assert_eq!(
        (rec.tier.as_str(), rec.keep_versions),
        ("institutional", Some(1))
    );
    // 0 keeps every version whatever the default.
    account(s, &audit, KeepVersions::Set(Some(0))).await;
    for _ in 0..3 {
        assert!(write(s, &audit, "s", 1).await.unwrap().is_empty());
    }
    assert_eq!(versions(s, "s").await, vec![2, 3, 4, 5]);
    // None follows the default again.
    account(s, &audit, KeepVersions::Set(None)).await;
    assert_eq!(
        s.get_account(ACCT).await.unwrap().unwrap().keep_versions,
        None
    );
    assert_eq!(write(s, &audit, "s", 2).await.unwrap(), vec![2, 3, 4]);
    assert_eq!(versions(s, "s").await, vec![5, 6]);
}

async fn retention_with_unwritable_audit_rolls_back_the_write_and_the_prune(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-x");
    account(s, &audit, KeepVersions::Unchanged).await;
    write(s, &audit, "s", 1).await.unwrap();
    h.break_audit().await;
    let err = write(s, &audit, "s", 1).await.unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err}");
    h.repair_audit().await;
    assert_eq!(versions(s, "s").await, vec![1]);
    assert_eq!(write(s, &audit, "s", 1).await.unwrap(), vec![1]);
    assert_eq!(versions(s, "s").await, vec![2]);
}

async fn retention_updates_the_idempotency_record_with_the_pruned_versions(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-i");
    account(s, &audit, KeepVersions::Set(Some(1))).await;
    write(s, &audit, "s", 0).await.unwrap();
    let record = |body: String| IdempotencyRecord {
        scope: "tester PUT /s".into(),
        key: "k-1".into(),
        request_hash: vec![7; 32],
        status: 201,
        body_json: body,
        created_at: 5000,
    };
    let first = record("{\"pruned_versions\":[]}".into());
    let rebuilt = |pruned: &[i64]| record(format!("{{\"pruned_versions\":{pruned:?}}}"));
    let prune = |pruned: &[i64]| {
        pruned
            .iter()
            .map(|v| audit.next("shard.prune", Some(ACCT), Some("s"), Some(*v)))
            .collect()
    };
    let retention = Retention {
        default_keep: 0,
        audit: &prune,
        idem: Some(&rebuilt),
    };
    let row = shard_row(ACCT, "s", 2, "local-1");
    let put = audit.next("shard.put", Some(ACCT), Some("s"), Some(2));
    let idem = IdempotentWrite {
        record: &first,
        expired_before_ms: 0,
    };
    let done = s
        .insert_shard_version_retained(&row, &put, Some(idem), Some(retention))
        .await
        .unwrap();
    assert_eq!(done, Idempotent::Done(vec![1]));
    let stored = s
        .get_idempotency("tester PUT /s", "k-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.body_json, "{\"pruned_versions\":[1]}");
    // A retry replays it, and writes (and prunes) nothing.
    let again = s
        .insert_shard_version_retained(&row, &put, Some(idem), Some(retention))
        .await
        .unwrap();
    assert_eq!(again, Idempotent::Replay(stored));
    assert_eq!(versions(s, "s").await, vec![2]);
}
