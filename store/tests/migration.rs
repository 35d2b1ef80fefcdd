//! Tier-migration job storage, run against both stores: every case below becomes
//! `postgres::<case>` and `sqlite::<case>` (see conformance.rs for the PostgreSQL setup).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{shard_row, AuditGen, Harness};
use shardgate_store::{
    job_state, ClaimedItem, CommitResult, ItemCommit, ItemKey, ItemOutcome, LateSeal,
    MigrationFailure, MigrationJob, MigrationSelector, Presealed, ShardVersionRow, Store,
    StoreError, Transition, Version,
};
use tokio::task::JoinSet;

both_stores!(
    batch_commits_every_outcome_in_one_transaction,
    failed_seal_rolls_the_whole_batch_back,
    batch_with_an_item_not_held_changes_nothing,
    batch_loses_to_a_pause,
    catch_up_adds_versions_stored_after_the_snapshot_once_when_due,
    create_snapshots_matching_versions_for_each_selector,
    create_duplicate_id_is_refused_without_audit,
    claim_returns_rows_and_current_tier_in_order,
    claim_respects_leases,
    claim_after_a_key_goes_on_past_it,
    claim_never_returns_settled_items,
    claim_nothing_unless_running,
    commit_moved_replaces_only_the_wrap,
    commit_compare_and_swap_loses_to_a_changed_row,
    deleted_shard_is_skipped,
    failed_items_record_errors_and_are_listed,
    not_claimed_for_other_worker_or_settled_item,
    set_state_transitions_wrong_state_not_found,
    list_jobs_by_state_oldest_first,
    every_write_leaves_exactly_one_audit_event,
    audit_failure_rolls_back_every_write,
    concurrent_workers_settle_every_item_exactly_once,
    cancelled_calls_leave_no_open_transaction,
);

const A: &str = "acct-a";
const B: &str = "acct-b";
const CHAIN: &str = "chain-mig";

/// An item's (account, shard, version).
type Key = (String, String, Version);

fn sel(account: Option<&str>, from: Option<&str>, below: Option<i64>) -> MigrationSelector {
    MigrationSelector {
        account: account.map(str::to_string),
        from_backend: from.map(str::to_string),
        key_version_below: below,
    }
}

fn moved(worker: &str, row: &ShardVersionRow) -> ItemOutcome {
    ItemOutcome::Moved {
        backend: "target-1".to_string(),
        key_ref: format!("target-1/key/{worker}"),
        key_version: 9,
        wrapped_dek: format!("new:{worker}:{}/{}/{}", row.account, row.shard, row.version)
            .into_bytes(),
    }
}

async fn put(s: &dyn Store, audit: &AuditGen, account: &str, tier: &str) {
    s.put_account(
        account,
        tier,
        1000,
        &audit.next("account.put", Some(account), None, None),
    )
    .await
    .unwrap();
}

/// Store a version with a chosen backend and key version.
async fn insert(
    s: &dyn Store,
    audit: &AuditGen,
    account: &str,
    shard: &str,
    version: i64,
    backend: &str,
    key_version: i64,
) -> ShardVersionRow {
    let mut row = shard_row(account, shard, version, backend);
    row.key_version = key_version;
    s.insert_shard_version(
        &row,
        &audit.next("shard.put", Some(account), Some(shard), Some(version)),
    )
    .await
    .unwrap();
    row
}

async fn create(
    s: &dyn Store,
    audit: &AuditGen,
    id: &str,
    selector: MigrationSelector,
) -> MigrationJob {
    s.create_migration_job(
        id,
        &selector,
        2000,
        "operator",
        &audit.next_detail("migration.create", None, None, id),
    )
    .await
    .unwrap()
}

async fn claim(s: &dyn Store, job: &str, worker: &str, now: i64, limit: i64) -> Vec<ClaimedItem> {
    s.claim_migration_items(job, worker, now, 1000, limit, None)
        .await
        .unwrap()
}

async fn commit(
    s: &dyn Store,
    audit: &AuditGen,
    job: &str,
    worker: &str,
    row: &ShardVersionRow,
    outcome: &ItemOutcome,
) -> Result<CommitResult, StoreError> {
    s.commit_migration_item(
        job,
        worker,
        &row.account,
        &row.shard,
        row.version,
        &row.wrapped_dek,
        outcome,
        3000,
        &audit.next(
            "migration.commit",
            Some(&row.account),
            Some(&row.shard),
            Some(row.version.get()),
        ),
    )
    .await
}

async fn set_state(
    s: &dyn Store,
    audit: &AuditGen,
    job: &str,
    from: &[&str],
    to: &str,
) -> Result<Transition, StoreError> {
    s.set_migration_job_state(
        job,
        from,
        to,
        4000,
        &audit.next_detail("migration.state", None, None, to),
    )
    .await
}

async fn job(s: &dyn Store, id: &str) -> MigrationJob {
    s.get_migration_job(id).await.unwrap().unwrap()
}

fn keys(items: &[ClaimedItem]) -> Vec<Key> {
    items
        .iter()
        .map(|c| (c.row.account.clone(), c.row.shard.clone(), c.row.version))
        .collect()
}

fn key(account: &str, shard: &str, version: i64) -> Key {
    (account.to_string(), shard.to_string(), v(version))
}

async fn event_count(s: &dyn Store, chain: &str) -> usize {
    s.audit_events(chain, 0, 100_000).await.unwrap().len()
}

async fn count_actions(s: &dyn Store, chain: &str, action: &str) -> usize {
    s.audit_events(chain, 0, 100_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == action)
        .count()
}

/// Version `n` (a test's literal).
fn v(n: i64) -> Version {
    Version::new(n).unwrap()
}

async fn row(s: &dyn Store, account: &str, shard: &str, version: Version) -> ShardVersionRow {
    s.get_shard_version(account, shard, Some(version))
        .await
        .unwrap()
        .unwrap()
}

/// Two accounts: A has s1 v1 (local, kv 1), s1 v2 (kms, kv 3), s2 v1 (local, kv 3),
/// s3 v1 (local, kv 2); B has x v1 (local, kv 1), x v2 (local, kv 5).
async fn fixture(s: &dyn Store, audit: &AuditGen) {
    put(s, audit, A, "retail").await;
    put(s, audit, B, "institutional").await;
    insert(s, audit, A, "s1", 1, "local-1", 1).await;
    insert(s, audit, A, "s1", 2, "kms-1", 3).await;
    insert(s, audit, A, "s2", 1, "local-1", 3).await;
    insert(s, audit, A, "s3", 1, "local-1", 2).await;
    insert(s, audit, B, "x", 1, "local-1", 1).await;
    insert(s, audit, B, "x", 2, "local-1", 5).await;
}

// ---------------------------------------------------------------------------------------

async fn create_snapshots_matching_versions_for_each_selector(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;

    let cases: Vec<(&str, MigrationSelector, Vec<Key>)> = vec![
        (
            "by-account",
            sel(Some(A), None, None),
            vec![
                key(A, "s1", 1),
                key(A, "s1", 2),
                key(A, "s2", 1),
                key(A, "s3", 1),
            ],
        ),
        (
            "by-backend",
            sel(None, Some("local-1"), None),
            vec![
                key(A, "s1", 1),
                key(A, "s2", 1),
                key(A, "s3", 1),
                key(B, "x", 1),
                key(B, "x", 2),
            ],
        ),
        (
            "kek-rotation",
            sel(None, Some("local-1"), Some(3)),
            vec![key(A, "s1", 1), key(A, "s3", 1), key(B, "x", 1)],
        ),
        (
            "account-and-backend",
            sel(Some(A), Some("kms-1"), None),
            vec![key(A, "s1", 2)],
        ),
        ("no-match", sel(None, Some("LOCAL-1"), None), vec![]),
        ("unknown-account", sel(Some("nobody"), None, None), vec![]),
    ];
    for (id, selector, expected) in &cases {
        let created = create(s, &audit, id, selector.clone()).await;
        assert_eq!(created.id, *id);
        assert_eq!(created.selector, *selector);
        assert_eq!(created.state, job_state::RUNNING);
        assert_eq!(created.total, expected.len() as i64, "{id}");
        assert_eq!(
            (created.done, created.failed, created.skipped),
            (0, 0, 0),
            "{id}"
        );
        assert_eq!(created.last_error, None);
        assert_eq!((created.created_at, created.updated_at), (2000, 2000));
        assert_eq!(created.created_by, "operator");
        assert_eq!(created.remaining(), expected.len() as i64);
        assert_eq!(job(s, id).await, created);
    }
    // Versions stored after the snapshot are not part of any job.
    insert(s, &audit, A, "late", 1, "local-1", 1).await;
    for (id, _, expected) in &cases {
        let items = claim(s, id, "w", 5000, 100).await;
        assert_eq!(keys(&items), *expected, "{id}");
    }
    assert_eq!(
        count_actions(s, CHAIN, "migration.create").await,
        cases.len()
    );
}

async fn create_duplicate_id_is_refused_without_audit(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    let first = create(s, &audit, "job", sel(Some(A), None, None)).await;
    let before = event_count(s, CHAIN).await;
    let err = s
        .create_migration_job(
            "job",
            &sel(Some(B), None, None),
            9000,
            "other",
            &audit.next_detail("migration.create", None, None, "job"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Internal(_)), "{err:?}");
    assert_eq!(job(s, "job").await, first);
    assert_eq!(event_count(s, CHAIN).await, before);
    // Its items are still only A's.
    let items = claim(s, "job", "w", 5000, 100).await;
    assert!(items.iter().all(|c| c.row.account == A));
    assert_eq!(items.len(), 4);
}

async fn claim_returns_rows_and_current_tier_in_order(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(None, Some("local-1"), None)).await;
    // The tier is read at claim time, not at job creation.
    s.put_account(
        B,
        "gold",
        1500,
        &audit.next("account.put", Some(B), None, None),
    )
    .await
    .unwrap();

    let first = claim(s, "job", "w1", 5000, 2).await;
    assert_eq!(keys(&first), vec![key(A, "s1", 1), key(A, "s2", 1)]);
    let second = claim(s, "job", "w1", 5000, 2).await;
    assert_eq!(keys(&second), vec![key(A, "s3", 1), key(B, "x", 1)]);
    let third = claim(s, "job", "w1", 5000, 2).await;
    assert_eq!(keys(&third), vec![key(B, "x", 2)]);
    assert!(claim(s, "job", "w1", 5000, 2).await.is_empty());
    // A zero or negative limit claims nothing.
    assert!(s
        .claim_migration_items("job", "w9", 1_000_000, 10, 0, None)
        .await
        .unwrap()
        .is_empty());

    for c in first.iter().chain(&second).chain(&third) {
        // Every column as stored.
        assert_eq!(
            c.row,
            row(s, &c.row.account, &c.row.shard, c.row.version).await
        );
        let expected_tier = if c.row.account == A { "retail" } else { "gold" };
        assert_eq!(c.tier, expected_tier);
    }
    // Claiming writes no audit events and changes no counters.
    assert_eq!(count_actions(s, CHAIN, "migration.commit").await, 0);
    let j = job(s, "job").await;
    assert_eq!((j.done, j.failed, j.skipped, j.remaining()), (0, 0, 0, 5));
}

async fn claim_respects_leases(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(Some(A), None, None)).await;

    // w1 holds everything until 5000 + 1000.
    let held = claim(s, "job", "w1", 5000, 100).await;
    assert_eq!(held.len(), 4);
    assert!(claim(s, "job", "w2", 5000, 100).await.is_empty());
    assert!(claim(s, "job", "w2", 5999, 100).await.is_empty());
    // Its own valid lease is not handed out again either.
    assert!(claim(s, "job", "w1", 5500, 100).await.is_empty());

    // w1 settles one item before its lease runs out.
    let r0 = held[0].row.clone();
    assert_eq!(
        commit(s, &audit, "job", "w1", &r0, &moved("w1", &r0))
            .await
            .unwrap(),
        CommitResult::Committed
    );

    // The lease expired (lease_until <= now): w2 takes over the other three.
    let taken = claim(s, "job", "w2", 6000, 100).await;
    assert_eq!(keys(&taken), keys(&held[1..]));
    // w1 lost them: its commits change nothing.
    let r1 = held[1].row.clone();
    let before = event_count(s, CHAIN).await;
    assert_eq!(
        commit(s, &audit, "job", "w1", &r1, &moved("w1", &r1))
            .await
            .unwrap(),
        CommitResult::NotClaimed
    );
    assert_eq!(row(s, A, &r1.shard, r1.version).await, r1);
    assert_eq!(event_count(s, CHAIN).await, before);
    assert_eq!(
        commit(s, &audit, "job", "w2", &r1, &moved("w2", &r1))
            .await
            .unwrap(),
        CommitResult::Committed
    );

    // w2's lease on the remaining two expires without anyone else claiming them: w2 may
    // still commit late.
    let r2 = held[2].row.clone();
    assert_eq!(
        commit(s, &audit, "job", "w2", &r2, &moved("w2", &r2))
            .await
            .unwrap(),
        CommitResult::Committed
    );
    // ... and the last one goes to whoever claims after the expiry.
    let last = claim(s, "job", "w3", 7000, 100).await;
    assert_eq!(keys(&last), keys(&held[3..]));
    let j = job(s, "job").await;
    assert_eq!((j.done, j.remaining()), (3, 1));
}

async fn claim_after_a_key_goes_on_past_it(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(None, Some("local-1"), None)).await;
    let after = |account: &str, shard: &str, version: i64| ItemKey {
        account: account.to_string(),
        shard: shard.to_string(),
        version: v(version),
    };
    let claim_after = |k: ItemKey, limit: i64| async move {
        s.claim_migration_items("job", "w1", 5000, 1000, limit, Some(&k))
            .await
            .unwrap()
    };

    // Strictly past the key, in key order, across accounts and versions.
    let past = claim_after(after(A, "s2", 1), 2).await;
    assert_eq!(keys(&past), vec![key(A, "s3", 1), key(B, "x", 1)]);
    // A key between items (no such item) starts at the next one.
    let next = claim_after(after(B, "x", 1), 10).await;
    assert_eq!(keys(&next), vec![key(B, "x", 2)]);
    // Nothing past the last item; the ones before the key are still there for a claim
    // without one.
    assert!(claim_after(after(B, "x", 2), 10).await.is_empty());
    let rest = claim(s, "job", "w1", 5000, 10).await;
    assert_eq!(keys(&rest), vec![key(A, "s1", 1), key(A, "s2", 1)]);
    // Past the key, leases still hold: everything is w1's until 6000, then anyone's.
    assert!(claim_after(after(A, "s1", 1), 10).await.is_empty());
    let expired = s
        .claim_migration_items("job", "w2", 6000, 1000, 10, Some(&after(A, "s1", 1)))
        .await
        .unwrap();
    assert_eq!(
        keys(&expired),
        vec![
            key(A, "s2", 1),
            key(A, "s3", 1),
            key(B, "x", 1),
            key(B, "x", 2)
        ]
    );
    let j = job(s, "job").await;
    assert_eq!((j.total, j.remaining()), (5, 5));
}

async fn claim_never_returns_settled_items(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(None, Some("local-1"), None)).await;
    let items = claim(s, "job", "w", 5000, 100).await;
    assert_eq!(items.len(), 5);
    let outcomes = [
        moved("w", &items[0].row),
        ItemOutcome::Skipped,
        ItemOutcome::Failed {
            error: "kms refused".to_string(),
        },
    ];
    for (c, outcome) in items.iter().zip(&outcomes) {
        assert_eq!(
            commit(s, &audit, "job", "w", &c.row, outcome)
                .await
                .unwrap(),
            CommitResult::Committed
        );
    }
    // Long after every lease expired, only the two unsettled items come back.
    let again = claim(s, "job", "w2", 1_000_000, 100).await;
    assert_eq!(keys(&again), keys(&items[3..]));
    for c in &again {
        commit(s, &audit, "job", "w2", &c.row, &ItemOutcome::Skipped)
            .await
            .unwrap();
    }
    assert!(claim(s, "job", "w3", 2_000_000, 100).await.is_empty());
    let j = job(s, "job").await;
    assert_eq!(
        (j.total, j.done, j.skipped, j.failed, j.remaining()),
        (5, 1, 3, 1, 0)
    );
}

async fn claim_nothing_unless_running(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(Some(A), None, None)).await;
    assert!(claim(s, "nope", "w", 5000, 100).await.is_empty());

    // Claimed while running, then paused: claims are empty and commits change nothing.
    let held = claim(s, "job", "w", 5000, 1).await;
    assert_eq!(held.len(), 1);
    set_state(s, &audit, "job", &[job_state::RUNNING], job_state::PAUSED)
        .await
        .unwrap();
    assert!(claim(s, "job", "w", 1_000_000, 100).await.is_empty());
    let r = held[0].row.clone();
    let before = event_count(s, CHAIN).await;
    assert_eq!(
        commit(s, &audit, "job", "w", &r, &moved("w", &r))
            .await
            .unwrap(),
        CommitResult::NotClaimed
    );
    assert_eq!(row(s, A, &r.shard, r.version).await, r);
    assert_eq!(event_count(s, CHAIN).await, before);
    let j = job(s, "job").await;
    assert_eq!((j.done, j.skipped, j.failed), (0, 0, 0));

    // Resumed: claims cut short by the pause are released, so their items are claimable at
    // once rather than after their leases; the old holder's late commit changes nothing.
    set_state(s, &audit, "job", &[job_state::PAUSED], job_state::RUNNING)
        .await
        .unwrap();
    assert_eq!(
        commit(s, &audit, "job", "w", &r, &moved("w", &r))
            .await
            .unwrap(),
        CommitResult::NotClaimed
    );
    assert_eq!(row(s, A, &r.shard, r.version).await, r);
    let again = claim(s, "job", "w2", 5000, 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].row, r);
    assert_eq!(
        commit(s, &audit, "job", "w2", &r, &moved("w2", &r))
            .await
            .unwrap(),
        CommitResult::Committed
    );
    assert_eq!(claim(s, "job", "w", 5000, 1).await.len(), 1);

    // Cancelled: nothing is claimed any more, whatever the leases say.
    set_state(
        s,
        &audit,
        "job",
        &[job_state::RUNNING, job_state::PAUSED],
        job_state::CANCELLED,
    )
    .await
    .unwrap();
    assert!(claim(s, "job", "w", 1_000_000, 100).await.is_empty());
    assert!(claim(s, "job", "w2", 1_000_000, 100).await.is_empty());
    // Moved rows stay moved; the rest stay where they are.
    assert_eq!(row(s, A, &r.shard, r.version).await.backend, "target-1");
    assert_eq!(row(s, A, "s2", v(1)).await.backend, "local-1");
}

async fn commit_moved_replaces_only_the_wrap(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(Some(A), Some("local-1"), None)).await;
    let before_all: Vec<ShardVersionRow> = {
        let mut v = Vec::new();
        for (a, sh, ver) in [
            (A, "s1", 1),
            (A, "s1", 2),
            (A, "s2", 1),
            (A, "s3", 1),
            (B, "x", 1),
            (B, "x", 2),
        ] {
            v.push(row(s, a, sh, Version::new(ver).unwrap()).await);
        }
        v
    };
    let items = claim(s, "job", "w", 5000, 1).await;
    assert_eq!(keys(&items), vec![key(A, "s1", 1)]);
    let old = items[0].row.clone();
    let outcome = ItemOutcome::Moved {
        backend: "hsm-1".to_string(),
        key_ref: "hsm-1/label".to_string(),
        key_version: 42,
        wrapped_dek: vec![1, 2, 3, 0, 255],
    };
    assert_eq!(
        commit(s, &audit, "job", "w", &old, &outcome).await.unwrap(),
        CommitResult::Committed
    );
    let now = row(s, A, "s1", v(1)).await;
    let mut expected = old.clone();
    expected.backend = "hsm-1".to_string();
    expected.key_ref = "hsm-1/label".to_string();
    expected.key_version = 42;
    expected.wrapped_dek = vec![1, 2, 3, 0, 255];
    // Nonce, ciphertext, format, creation time and writer are untouched.
    assert_eq!(now, expected);
    // Every other version is untouched.
    for r in &before_all[1..] {
        assert_eq!(&row(s, &r.account, &r.shard, r.version).await, r);
    }
    let j = job(s, "job").await;
    assert_eq!((j.total, j.done, j.skipped, j.failed), (3, 1, 0, 0));
    assert_eq!(j.updated_at, 3000);
    assert_eq!(j.last_error, None);
    assert_eq!(count_actions(s, CHAIN, "migration.commit").await, 1);
}

async fn commit_compare_and_swap_loses_to_a_changed_row(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    // Two jobs over the same versions: whichever commits second finds the wrap changed.
    create(s, &audit, "job-1", sel(Some(A), Some("local-1"), None)).await;
    create(s, &audit, "job-2", sel(None, Some("local-1"), Some(3))).await;
    let a = claim(s, "job-1", "w1", 5000, 1).await;
    let b = claim(s, "job-2", "w2", 5000, 1).await;
    assert_eq!(keys(&a), vec![key(A, "s1", 1)]);
    assert_eq!(keys(&b), keys(&a));
    assert_eq!(a[0].row, b[0].row);
    let original = a[0].row.clone();

    assert_eq!(
        commit(s, &audit, "job-2", "w2", &original, &moved("w2", &original))
            .await
            .unwrap(),
        CommitResult::Committed
    );
    let winner = row(s, A, "s1", v(1)).await;
    assert_eq!(winner.wrapped_dek, b"new:w2:acct-a/s1/1".to_vec());

    let before = event_count(s, CHAIN).await;
    assert_eq!(
        commit(s, &audit, "job-1", "w1", &original, &moved("w1", &original))
            .await
            .unwrap(),
        CommitResult::RowChanged
    );
    // Not overwritten; counted as skipped; the settlement is audited.
    assert_eq!(row(s, A, "s1", v(1)).await, winner);
    let j = job(s, "job-1").await;
    assert_eq!((j.done, j.skipped, j.failed), (0, 1, 0));
    assert_eq!(event_count(s, CHAIN).await, before + 1);
    // Settled: committing it again does nothing.
    assert_eq!(
        commit(s, &audit, "job-1", "w1", &original, &moved("w1", &original))
            .await
            .unwrap(),
        CommitResult::NotClaimed
    );
    assert_eq!(job(s, "job-1").await, j);
    assert_eq!(row(s, A, "s1", v(1)).await, winner);
}

async fn deleted_shard_is_skipped(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(Some(A), None, None)).await;
    // s1 (two versions) is deleted after the snapshot, before any claim.
    s.delete_shard(A, "s1", &|n| {
        audit.next_detail("shard.delete", Some(A), Some("s1"), &n.to_string())
    })
    .await
    .unwrap();
    let items = claim(s, "job", "w", 5000, 100).await;
    assert_eq!(keys(&items), vec![key(A, "s2", 1), key(A, "s3", 1)]);
    let j = job(s, "job").await;
    assert_eq!((j.total, j.skipped, j.done, j.remaining()), (4, 2, 0, 2));
    assert_eq!(j.updated_at, 5000);
    // The skipped items are settled: not claimable while the others are held.
    assert!(claim(s, "job", "w2", 5500, 100).await.is_empty());

    // s2 deleted after its claim: the commit finds no row and counts it skipped.
    s.delete_shard(A, "s2", &|n| {
        audit.next_detail("shard.delete", Some(A), Some("s2"), &n.to_string())
    })
    .await
    .unwrap();
    let r = items[0].row.clone();
    assert_eq!(
        commit(s, &audit, "job", "w", &r, &moved("w", &r))
            .await
            .unwrap(),
        CommitResult::RowChanged
    );
    assert_eq!(
        s.get_shard_version(A, "s2", Some(v(1))).await.unwrap(),
        None
    );
    let j = job(s, "job").await;
    assert_eq!((j.skipped, j.done, j.remaining()), (3, 0, 1));
    // Long after every lease expired, only the one unsettled item comes back.
    let again = claim(s, "job", "w2", 1_000_000, 100).await;
    assert_eq!(keys(&again), vec![key(A, "s3", 1)]);
}

async fn failed_items_record_errors_and_are_listed(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(None, Some("local-1"), None)).await;
    let items = claim(s, "job", "w", 5000, 100).await;
    assert_eq!(items.len(), 5);
    // Fail x v2 first, then s1 v1: failures list in key order, last_error is the latest.
    let fail = |e: &str| ItemOutcome::Failed {
        error: e.to_string(),
    };
    let rx2 = items[4].row.clone();
    let rs1 = items[0].row.clone();
    assert_eq!(
        commit(s, &audit, "job", "w", &rx2, &fail("kms throttled"))
            .await
            .unwrap(),
        CommitResult::Committed
    );
    assert_eq!(
        job(s, "job").await.last_error.as_deref(),
        Some("kms throttled")
    );
    assert_eq!(
        commit(s, &audit, "job", "w", &rs1, &fail("hsm refused"))
            .await
            .unwrap(),
        CommitResult::Committed
    );
    // Later successes keep the last error.
    let rs2 = items[1].row.clone();
    commit(s, &audit, "job", "w", &rs2, &moved("w", &rs2))
        .await
        .unwrap();
    let j = job(s, "job").await;
    assert_eq!((j.failed, j.done, j.skipped), (2, 1, 0));
    assert_eq!(j.last_error.as_deref(), Some("hsm refused"));
    // Failed rows stay on their source, untouched.
    assert_eq!(row(s, B, "x", v(2)).await, rx2);
    assert_eq!(row(s, A, "s1", v(1)).await, rs1);

    let failures = s.migration_failures("job", 100).await.unwrap();
    assert_eq!(
        failures,
        vec![
            MigrationFailure {
                account: A.to_string(),
                shard: "s1".to_string(),
                version: v(1),
                error: "hsm refused".to_string(),
            },
            MigrationFailure {
                account: B.to_string(),
                shard: "x".to_string(),
                version: v(2),
                error: "kms throttled".to_string(),
            },
        ]
    );
    assert_eq!(s.migration_failures("job", 1).await.unwrap(), failures[..1]);
    assert!(s.migration_failures("job", 0).await.unwrap().is_empty());
    assert!(s.migration_failures("nope", 10).await.unwrap().is_empty());
    // A failed item is settled: not claimed again, not committable again.
    assert_eq!(
        commit(s, &audit, "job", "w", &rs1, &moved("w", &rs1))
            .await
            .unwrap(),
        CommitResult::NotClaimed
    );
    let again = claim(s, "job", "w", 1_000_000, 100).await;
    assert_eq!(keys(&again), vec![key(A, "s3", 1), key(B, "x", 1)]);
}

async fn not_claimed_for_other_worker_or_settled_item(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(Some(A), None, None)).await;
    let held = claim(s, "job", "w1", 5000, 1).await;
    let r = held[0].row.clone();
    let snapshot = job(s, "job").await;
    let before = event_count(s, CHAIN).await;

    // Another worker, an item nobody claimed, unknown items and jobs: nothing changes.
    let unclaimed = row(s, A, "s2", v(1)).await;
    let mut unknown = r.clone();
    unknown.shard = "zzz".to_string();
    for (job_id, worker, target) in [
        ("job", "w2", &r),
        ("job", "", &r),
        ("job", "w1", &unclaimed),
        ("job", "w1", &unknown),
        ("nope", "w1", &r),
    ] {
        for outcome in [
            moved(worker, target),
            ItemOutcome::Skipped,
            ItemOutcome::Failed {
                error: "x".to_string(),
            },
        ] {
            assert_eq!(
                commit(s, &audit, job_id, worker, target, &outcome)
                    .await
                    .unwrap(),
                CommitResult::NotClaimed,
                "{job_id} {worker} {} {outcome:?}",
                target.shard
            );
        }
    }
    assert_eq!(job(s, "job").await, snapshot);
    assert_eq!(row(s, A, "s1", v(1)).await, r);
    assert_eq!(row(s, A, "s2", v(1)).await, unclaimed);
    assert_eq!(event_count(s, CHAIN).await, before);
    assert!(s.migration_failures("job", 10).await.unwrap().is_empty());

    // The holder commits; committing twice is idempotent.
    assert_eq!(
        commit(s, &audit, "job", "w1", &r, &moved("w1", &r))
            .await
            .unwrap(),
        CommitResult::Committed
    );
    let after = job(s, "job").await;
    let moved_row = row(s, A, "s1", v(1)).await;
    assert_eq!(after.done, 1);
    for outcome in [moved("w1", &r), ItemOutcome::Skipped] {
        assert_eq!(
            commit(s, &audit, "job", "w1", &r, &outcome).await.unwrap(),
            CommitResult::NotClaimed
        );
    }
    // Even with the new wrap as the expected value (a retried commit).
    let mut retried = r.clone();
    retried.wrapped_dek = moved_row.wrapped_dek.clone();
    assert_eq!(
        commit(s, &audit, "job", "w1", &retried, &moved("w1", &r))
            .await
            .unwrap(),
        CommitResult::NotClaimed
    );
    assert_eq!(job(s, "job").await, after);
    assert_eq!(row(s, A, "s1", v(1)).await, moved_row);
    assert_eq!(event_count(s, CHAIN).await, before + 1);
}

async fn set_state_transitions_wrong_state_not_found(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    let created = create(s, &audit, "job", sel(Some(A), None, None)).await;
    let live = [job_state::RUNNING, job_state::PAUSED];

    let Transition::Done(paused) =
        set_state(s, &audit, "job", &[job_state::RUNNING], job_state::PAUSED)
            .await
            .unwrap()
    else {
        panic!("pause refused");
    };
    let mut expected = created.clone();
    expected.state = job_state::PAUSED.to_string();
    expected.updated_at = 4000;
    assert_eq!(paused, expected);
    assert_eq!(job(s, "job").await, expected);

    // Pausing a paused job: WrongState with the current state, nothing changes.
    assert_eq!(
        set_state(s, &audit, "job", &[job_state::RUNNING], job_state::PAUSED)
            .await
            .unwrap(),
        Transition::WrongState(job_state::PAUSED.to_string())
    );
    assert_eq!(
        set_state(s, &audit, "job", &[], job_state::RUNNING)
            .await
            .unwrap(),
        Transition::WrongState(job_state::PAUSED.to_string())
    );
    assert!(matches!(
        set_state(s, &audit, "job", &[job_state::PAUSED], job_state::RUNNING)
            .await
            .unwrap(),
        Transition::Done(j) if j.state == job_state::RUNNING
    ));
    assert!(matches!(
        set_state(s, &audit, "job", &live, job_state::CANCELLED)
            .await
            .unwrap(),
        Transition::Done(j) if j.state == job_state::CANCELLED
    ));
    // Final states stay final for callers that only allow live ones.
    assert_eq!(
        set_state(s, &audit, "job", &live, job_state::RUNNING)
            .await
            .unwrap(),
        Transition::WrongState(job_state::CANCELLED.to_string())
    );
    assert_eq!(
        set_state(s, &audit, "missing", &live, job_state::PAUSED)
            .await
            .unwrap(),
        Transition::NotFound
    );
    // Job ids compare exactly.
    assert_eq!(
        set_state(s, &audit, "JOB", &live, job_state::PAUSED)
            .await
            .unwrap(),
        Transition::NotFound
    );
    // Completion of another job.
    create(s, &audit, "job-2", sel(Some(B), None, None)).await;
    assert!(matches!(
        set_state(s, &audit, "job-2", &[job_state::RUNNING], job_state::COMPLETED_WITH_ERRORS)
            .await
            .unwrap(),
        Transition::Done(j) if j.state == job_state::COMPLETED_WITH_ERRORS
    ));
    // Exactly the four changes were audited.
    assert_eq!(count_actions(s, CHAIN, "migration.state").await, 4);
}

async fn list_jobs_by_state_oldest_first(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    for (id, at) in [("j-c", 3), ("j-a", 1), ("j-b", 2), ("j-d", 4)] {
        s.create_migration_job(
            id,
            &sel(Some(A), None, None),
            at,
            "op",
            &audit.next_detail("migration.create", None, None, id),
        )
        .await
        .unwrap();
    }
    set_state(s, &audit, "j-b", &[job_state::RUNNING], job_state::PAUSED)
        .await
        .unwrap();
    set_state(
        s,
        &audit,
        "j-d",
        &[job_state::RUNNING],
        job_state::COMPLETED,
    )
    .await
    .unwrap();
    let ids = |jobs: Vec<MigrationJob>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s
            .list_migration_jobs(&[job_state::RUNNING, job_state::PAUSED])
            .await
            .unwrap()),
        ["j-a", "j-b", "j-c"]
    );
    assert_eq!(
        ids(s.list_migration_jobs(&[job_state::RUNNING]).await.unwrap()),
        ["j-a", "j-c"]
    );
    assert_eq!(
        ids(s
            .list_migration_jobs(&[job_state::COMPLETED])
            .await
            .unwrap()),
        ["j-d"]
    );
    assert!(s.list_migration_jobs(&[]).await.unwrap().is_empty());
    assert!(s
        .list_migration_jobs(&[job_state::CANCELLED])
        .await
        .unwrap()
        .is_empty());
    let all = s
        .list_migration_jobs(&[
            job_state::RUNNING,
            job_state::PAUSED,
            job_state::COMPLETED,
            job_state::CANCELLED,
        ])
        .await
        .unwrap();
    assert_eq!(ids(all.clone()), ["j-a", "j-b", "j-c", "j-d"]);
    for j in all {
        assert_eq!(job(s, &j.id).await, j);
    }
}

async fn every_write_leaves_exactly_one_audit_event(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new("chain-setup");
    fixture(s, &audit).await;
    // Migration writes go to their own chain, so the count is theirs alone.
    let m = AuditGen::new(CHAIN);
    let mut expected = 0;
    create(s, &m, "job", sel(Some(A), None, None)).await;
    expected += 1;
    assert_eq!(event_count(s, CHAIN).await, expected);
    create(s, &m, "empty", sel(Some("nobody"), None, None)).await;
    expected += 1;
    assert_eq!(event_count(s, CHAIN).await, expected);

    // Claims are not audited (the commits are).
    let items = claim(s, "job", "w", 5000, 100).await;
    assert_eq!(event_count(s, CHAIN).await, expected);
    let outcomes = [
        moved("w", &items[0].row),
        ItemOutcome::Skipped,
        ItemOutcome::Failed {
            error: "e".to_string(),
        },
    ];
    for (c, outcome) in items.iter().zip(&outcomes) {
        commit(s, &m, "job", "w", &c.row, outcome).await.unwrap();
        expected += 1;
        assert_eq!(event_count(s, CHAIN).await, expected, "{outcome:?}");
    }
    // RowChanged is a settlement too.
    let last = items[3].row.clone();
    let mut stale = last.clone();
    stale.wrapped_dek = b"stale".to_vec();
    assert_eq!(
        commit(s, &m, "job", "w", &stale, &moved("w", &last))
            .await
            .unwrap(),
        CommitResult::RowChanged
    );
    expected += 1;
    assert_eq!(event_count(s, CHAIN).await, expected);
    assert_eq!(row(s, A, &last.shard, last.version).await, last);
    // NotClaimed, WrongState and NotFound write nothing.
    commit(s, &m, "job", "w", &last, &ItemOutcome::Skipped)
        .await
        .unwrap();
    set_state(s, &m, "job", &[job_state::PAUSED], job_state::RUNNING)
        .await
        .unwrap();
    set_state(s, &m, "missing", &[job_state::RUNNING], job_state::PAUSED)
        .await
        .unwrap();
    assert_eq!(event_count(s, CHAIN).await, expected);
    set_state(s, &m, "job", &[job_state::RUNNING], job_state::COMPLETED)
        .await
        .unwrap();
    expected += 1;
    assert_eq!(event_count(s, CHAIN).await, expected);
    // The stored events are exactly the records handed in.
    let actions: Vec<String> = s
        .audit_events(CHAIN, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "migration.create",
            "migration.create",
            "migration.commit",
            "migration.commit",
            "migration.commit",
            "migration.commit",
            "migration.state",
        ]
    );
}

async fn audit_failure_rolls_back_every_write(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;

    h.break_audit().await;
    let err = s
        .create_migration_job(
            "job",
            &sel(Some(A), None, None),
            2000,
            "op",
            &audit.next_detail("migration.create", None, None, "job"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    assert_eq!(s.get_migration_job("job").await.unwrap(), None);
    assert!(claim(s, "job", "w", 5000, 100).await.is_empty());
    h.repair_audit().await;

    // The same id can be created once audit works again (nothing was left behind).
    let created = create(s, &audit, "job", sel(Some(A), None, None)).await;
    assert_eq!(created.total, 4);
    let items = claim(s, "job", "w", 5000, 100).await;
    assert_eq!(items.len(), 4);

    h.break_audit().await;
    let r = items[0].row.clone();
    let outcomes = [
        moved("w", &r),
        ItemOutcome::Skipped,
        ItemOutcome::Failed {
            error: "boom".to_string(),
        },
    ];
    for outcome in &outcomes {
        let err = commit(s, &audit, "job", "w", &r, outcome)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    }
    // The wrap is not replaced, no counter moved, no failure recorded.
    assert_eq!(row(s, A, "s1", v(1)).await, r);
    assert_eq!(job(s, "job").await, created);
    assert!(s.migration_failures("job", 10).await.unwrap().is_empty());
    // A stale-wrap commit (RowChanged) rolls back too.
    let mut stale = items[1].row.clone();
    stale.wrapped_dek = b"stale".to_vec();
    let err = commit(s, &audit, "job", "w", &stale, &moved("w", &items[1].row))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    assert_eq!(job(s, "job").await, created);

    let err = set_state(s, &audit, "job", &[job_state::RUNNING], job_state::PAUSED)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    assert_eq!(job(s, "job").await.state, job_state::RUNNING);
    h.repair_audit().await;

    // The items are still w's and pending: the commit goes through now.
    assert_eq!(
        commit(s, &audit, "job", "w", &r, &moved("w", &r))
            .await
            .unwrap(),
        CommitResult::Committed
    );
    assert_eq!(
        row(s, A, "s1", v(1)).await.wrapped_dek,
        b"new:w:acct-a/s1/1".to_vec()
    );
    let stale_item = &items[1].row;
    assert_eq!(
        commit(s, &audit, "job", "w", stale_item, &ItemOutcome::Skipped)
            .await
            .unwrap(),
        CommitResult::Committed
    );
    let j = job(s, "job").await;
    assert_eq!((j.done, j.skipped, j.failed), (1, 1, 0));
}

async fn concurrent_workers_settle_every_item_exactly_once(h: &Harness) {
    let audit = Arc::new(AuditGen::new(CHAIN));
    let s = &*h.store;
    put(s, &audit, A, "retail").await;
    put(s, &audit, B, "retail").await;
    // 200 items: 50 shards x 2 versions in each of two accounts.
    for account in [A, B] {
        for n in 0..50 {
            let shard = format!("s{n:03}");
            insert(s, &audit, account, &shard, 1, "local-1", 1).await;
            insert(s, &audit, account, &shard, 2, "local-1", 1).await;
        }
    }
    let created = create(s, &audit, "job", sel(None, Some("local-1"), None)).await;
    assert_eq!(created.total, 200);

    // Two "processes" (separate pools on the same database), two workers each.
    let other = shardgate_store::connect(&h.url, common::POOL_SIZE)
        .await
        .unwrap();
    let mut tasks = JoinSet::new();
    for w in 0..4 {
        let store: Arc<dyn Store> = if w % 2 == 0 {
            h.store.clone()
        } else {
            other.clone()
        };
        let audit = audit.clone();
        tasks.spawn(async move {
            let worker = format!("worker-{w}");
            let mut committed = Vec::new();
            let mut idle = 0;
            loop {
                let items = store
                    .claim_migration_items("job", &worker, 5000, 600_000, 7, None)
                    .await
                    .unwrap();
                if items.is_empty() {
                    let j = store.get_migration_job("job").await.unwrap().unwrap();
                    if j.remaining() == 0 {
                        break;
                    }
                    // Others still hold unsettled items.
                    idle += 1;
                    assert!(idle < 10_000, "{worker} starved: {j:?}");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                for c in items {
                    let result = commit(
                        &*store,
                        &audit,
                        "job",
                        &worker,
                        &c.row,
                        &moved(&worker, &c.row),
                    )
                    .await
                    .unwrap();
                    assert_eq!(result, CommitResult::Committed, "{worker} {:?}", c.row);
                    committed.push((c.row.account, c.row.shard, c.row.version));
                }
            }
            (worker, committed)
        });
    }
    let mut by_key: BTreeMap<Key, String> = BTreeMap::new();
    let mut per_worker = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (worker, committed) = joined.unwrap();
        per_worker.push((worker.clone(), committed.len()));
        for k in committed {
            assert!(
                by_key.insert(k.clone(), worker.clone()).is_none(),
                "{k:?} committed twice"
            );
        }
    }
    assert_eq!(by_key.len(), 200, "{per_worker:?}");

    let j = job(s, "job").await;
    assert_eq!(
        (j.total, j.done, j.skipped, j.failed, j.remaining()),
        (200, 200, 0, 0, 0)
    );
    // Each row carries the wrap of the worker that committed it, and was moved once.
    for ((account, shard, version), worker) in &by_key {
        let r = row(s, account, shard, *version).await;
        assert_eq!(
            r.wrapped_dek,
            format!("new:{worker}:{account}/{shard}/{version}").into_bytes()
        );
        assert_eq!(r.key_ref, format!("target-1/key/{worker}"));
        assert_eq!(r.nonce, vec![version.get() as u8; 12]);
    }
    let commits: Vec<Key> = s
        .audit_events(CHAIN, 0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "migration.commit")
        .map(|e| (e.account.unwrap(), e.shard.unwrap(), v(e.version.unwrap())))
        .collect();
    assert_eq!(commits.len(), 200);
    let distinct: BTreeSet<_> = commits.into_iter().collect();
    assert_eq!(distinct.len(), 200);
    assert!(claim(s, "job", "late", 10_000_000, 100).await.is_empty());
}

async fn cancelled_calls_leave_no_open_transaction(h: &Harness) {
    let audit = Arc::new(AuditGen::new(CHAIN));
    let s = &*h.store;
    put(s, &audit, A, "retail").await;
    for n in 0..100 {
        insert(s, &audit, A, &format!("s{n:03}"), 1, "local-1", 1).await;
    }
    create(s, &audit, "job", sel(Some(A), None, None)).await;
    // Drop claims and commits at every stage (before, during, after BEGIN/statements/COMMIT).
    for round in 0..150u64 {
        let store = h.store.clone();
        let audit = audit.clone();
        let fut = async move {
            let worker = format!("w{}", round % 3);
            let items = store
                .claim_migration_items("job", &worker, 5000 + round as i64, 1, 2, None)
                .await?;
            for c in items {
                commit(
                    &*store,
                    &audit,
                    "job",
                    &worker,
                    &c.row,
                    &moved(&worker, &c.row),
                )
                .await?;
            }
            Ok::<_, StoreError>(())
        };
        let _ = tokio::time::timeout(Duration::from_micros(round * 53 % 3000), fut).await;
    }
    // No pooled connection may hold a transaction (PostgreSQL shows it; in SQLite it would
    // hold the write lock, and the burst of writes on every connection below would fail).
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
            for round in 0..3 {
                let to = if (i + round) % 2 == 0 {
                    job_state::PAUSED
                } else {
                    job_state::RUNNING
                };
                set_state(
                    &*store,
                    &audit,
                    "job",
                    &[job_state::RUNNING, job_state::PAUSED],
                    to,
                )
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
    set_state(
        s,
        &audit,
        "job",
        &[job_state::RUNNING, job_state::PAUSED],
        job_state::RUNNING,
    )
    .await
    .unwrap();
    // Whatever committed did so whole: counters, rows and audit events agree.
    let j = job(s, "job").await;
    let mut moved_rows = 0;
    for n in 0..100 {
        let r = row(s, A, &format!("s{n:03}"), v(1)).await;
        if r.backend == "target-1" {
            moved_rows += 1;
        }
    }
    assert_eq!(j.done, moved_rows);
    assert_eq!(
        count_actions(s, CHAIN, "migration.commit").await as i64,
        j.done
    );
    // And the rest of the job still runs to the end.
    loop {
        let items = claim(s, "job", "finisher", 10_000_000, 50).await;
        if items.is_empty() {
            break;
        }
        for c in items {
            assert_eq!(
                commit(
                    s,
                    &audit,
                    "job",
                    "finisher",
                    &c.row,
                    &moved("finisher", &c.row)
                )
                .await
                .unwrap(),
                CommitResult::Committed
            );
        }
    }
    let j = job(s, "job").await;
    assert_eq!((j.done, j.remaining()), (100, 0));
}

/// Commits `outcomes` for `items` as one batch, with one chained record each.
async fn commit_batch(
    s: &dyn Store,
    audit: &AuditGen,
    job: &str,
    worker: &str,
    rows: &[ShardVersionRow],
    outcomes: &[ItemOutcome],
) -> Result<Option<Vec<CommitResult>>, StoreError> {
    let records: Vec<_> = rows
        .iter()
        .map(|r| {
            audit.next(
                "migration.commit",
                Some(&r.account),
                Some(&r.shard),
                Some(r.version.get()),
            )
        })
        .collect();
    let items = item_commits(rows, outcomes);
    s.commit_migration_batch(job, worker, &items, 3000, &mut Presealed::new(records))
        .await
}

/// One batch item per row, with its outcome.
fn item_commits<'a>(
    rows: &'a [ShardVersionRow],
    outcomes: &'a [ItemOutcome],
) -> Vec<ItemCommit<'a>> {
    rows.iter()
        .zip(outcomes)
        .map(|(r, outcome)| ItemCommit {
            account: &r.account,
            shard: &r.shard,
            version: r.version,
            old_wrapped_dek: &r.wrapped_dek,
            outcome,
        })
        .collect()
}

/// A [`LateSeal`] that counts its calls and refuses (the chain stayed busy), or hands out
/// the wrong number of records.
struct RefusingSeal {
    calls: usize,
    give: Option<Vec<shardgate_store::AuditRecord>>,
}

#[async_trait::async_trait]
impl LateSeal for RefusingSeal {
    async fn seal(
        &mut self,
        _pruned: &[i64],
    ) -> Result<Vec<shardgate_store::AuditRecord>, StoreError> {
        self.calls += 1;
        match self.give.take() {
            Some(records) => Ok(records),
            None => Err(StoreError::AuditUnavailable("chain busy".into())),
        }
    }
}

async fn failed_seal_rolls_the_whole_batch_back(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(Some(A), None, None)).await;
    let items = claim(s, "job", "w", 5000, 100).await;
    let rows: Vec<ShardVersionRow> = items.iter().map(|c| c.row.clone()).collect();
    let outcomes: Vec<ItemOutcome> = rows.iter().map(|r| moved("w", r)).collect();
    let commits = item_commits(&rows, &outcomes);
    let before_events = event_count(s, CHAIN).await;
    let before_job = job(s, "job").await;
    // Refused, then too few records: both roll back every row written before the seal.
    let one_short = vec![audit.next("migration.rewrap", Some(A), None, None)];
    for give in [None, Some(one_short)] {
        let mut seal = RefusingSeal { calls: 0, give };
        let err = s
            .commit_migration_batch("job", "w", &commits, 3000, &mut seal)
            .await
            .expect_err("the seal failed");
        assert!(
            matches!(
                err,
                StoreError::AuditUnavailable(_) | StoreError::Internal(_)
            ),
            "{err:?}"
        );
        assert_eq!(seal.calls, 1);
        for r in &rows {
            assert_eq!(&row(s, A, &r.shard, r.version).await, r);
        }
        assert_eq!(job(s, "job").await, before_job);
        assert_eq!(event_count(s, CHAIN).await, before_events);
    }
    // The items are still this worker's: the same batch commits on the next try.
    let results = commit_batch(s, &audit, "job", "w", &rows, &outcomes)
        .await
        .unwrap()
        .expect("still held by w");
    assert!(results.iter().all(|r| *r == CommitResult::Committed));
    assert_eq!(job(s, "job").await.done, i64::try_from(rows.len()).unwrap());
}

async fn batch_commits_every_outcome_in_one_transaction(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(Some(A), None, None)).await;
    let items = claim(s, "job", "w", 5000, 100).await;
    assert_eq!(items.len(), 4);
    let before = event_count(s, CHAIN).await;
    let mut rows: Vec<ShardVersionRow> = items.iter().map(|c| c.row.clone()).collect();
    // The second item's wrap changed since the claim: its compare-and-swap must lose.
    let current_second = rows[1].clone();
    rows[1].wrapped_dek = b"stale".to_vec();
    let outcomes = [
        moved("w", &rows[0]),
        moved("w", &rows[1]),
        ItemOutcome::Failed {
            error: "kms said no".to_string(),
        },
        ItemOutcome::Skipped,
    ];
    let results = commit_batch(s, &audit, "job", "w", &rows, &outcomes)
        .await
        .unwrap()
        .expect("the batch is held by w");
    assert_eq!(
        results,
        vec![
            CommitResult::Committed,
            CommitResult::RowChanged,
            CommitResult::Committed,
            CommitResult::Committed
        ]
    );
    let first = row(s, A, &rows[0].shard, rows[0].version).await;
    assert_eq!(first.backend, "target-1");
    assert_eq!(
        first.wrapped_dek,
        format!("new:w:{}/{}/{}", A, rows[0].shard, rows[0].version).into_bytes()
    );
    assert_eq!(first.ciphertext, items[0].row.ciphertext);
    assert_eq!(first.nonce, items[0].row.nonce);
    assert_eq!(
        row(s, A, &rows[1].shard, rows[1].version).await,
        current_second
    );
    let j = job(s, "job").await;
    assert_eq!((j.done, j.skipped, j.failed), (1, 2, 1));
    assert_eq!(j.last_error.as_deref(), Some("kms said no"));
    // Each item's state says the same: the one whose compare-and-swap lost is skipped.
    assert_eq!(
        h.item_states("job").await,
        ["done", "skipped", "failed", "skipped"]
    );
    assert_eq!(event_count(s, CHAIN).await, before + 4);
    let failures = s.migration_failures("job", 10).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].shard, rows[2].shard);
    // Settled: the same batch again is refused as a whole.
    assert_eq!(
        commit_batch(s, &audit, "job", "w", &rows, &outcomes)
            .await
            .unwrap(),
        None
    );
    assert_eq!(job(s, "job").await, j);
    assert_eq!(event_count(s, CHAIN).await, before + 4);
}

async fn batch_with_an_item_not_held_changes_nothing(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(Some(A), None, None)).await;
    let mine = claim(s, "job", "w1", 5000, 2).await;
    let theirs = claim(s, "job", "w2", 5000, 1).await;
    let unclaimed = claim(s, "job", "w3", 5000, 0).await;
    assert!(unclaimed.is_empty());
    let snapshot = job(s, "job").await;
    let before = event_count(s, CHAIN).await;
    let originals: Vec<ShardVersionRow> =
        mine.iter().chain(&theirs).map(|c| c.row.clone()).collect();
    let outcomes: Vec<ItemOutcome> = originals.iter().map(|r| moved("w1", r)).collect();
    // Two items held by w1 and one by w2: w1's batch is all or nothing.
    assert_eq!(
        commit_batch(s, &audit, "job", "w1", &originals, &outcomes)
            .await
            .unwrap(),
        None
    );
    assert_eq!(job(s, "job").await, snapshot);
    assert_eq!(event_count(s, CHAIN).await, before);
    for r in &originals {
        assert_eq!(&row(s, A, &r.shard, r.version).await, r);
    }
    // Its own items alone commit.
    assert_eq!(
        commit_batch(s, &audit, "job", "w1", &originals[..2], &outcomes[..2])
            .await
            .unwrap(),
        Some(vec![CommitResult::Committed; 2])
    );
    assert_eq!(job(s, "job").await.done, 2);
    assert_eq!(event_count(s, CHAIN).await, before + 2);
}

async fn batch_loses_to_a_pause(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    create(s, &audit, "job", sel(Some(A), None, None)).await;
    let items = claim(s, "job", "w", 5000, 3).await;
    let rows: Vec<ShardVersionRow> = items.iter().map(|c| c.row.clone()).collect();
    let outcomes: Vec<ItemOutcome> = rows.iter().map(|r| moved("w", r)).collect();
    set_state(s, &audit, "job", &[job_state::RUNNING], job_state::PAUSED)
        .await
        .unwrap();
    let snapshot = job(s, "job").await;
    let before = event_count(s, CHAIN).await;
    assert_eq!(
        commit_batch(s, &audit, "job", "w", &rows, &outcomes)
            .await
            .unwrap(),
        None
    );
    assert_eq!(job(s, "job").await, snapshot);
    assert_eq!(event_count(s, CHAIN).await, before);
    for r in &rows {
        assert_eq!(&row(s, A, &r.shard, r.version).await, r);
    }
}

async fn catch_up_adds_versions_stored_after_the_snapshot_once_when_due(h: &Harness) {
    let s = &*h.store;
    let audit = AuditGen::new(CHAIN);
    fixture(s, &audit).await;
    let created = create(s, &audit, "job", sel(None, Some("local-1"), None)).await;
    assert_eq!((created.total, created.catch_up_at), (5, None));
    // Nothing scheduled: nothing due.
    assert_eq!(s.catch_up_migration_job("job", 9000).await.unwrap(), None);
    s.schedule_migration_catch_up("job", 8000).await.unwrap();
    assert_eq!(job(s, "job").await.catch_up_at, Some(8000));
    // A straggler (placed on the old backend after the snapshot), and a version elsewhere.
    insert(s, &audit, A, "late", 1, "local-1", 1).await;
    insert(s, &audit, B, "elsewhere", 1, "kms-1", 1).await;
    // Not yet due.
    assert_eq!(s.catch_up_migration_job("job", 7999).await.unwrap(), None);
    assert_eq!(job(s, "job").await.total, 5);
    // Half the snapshot already settled: those items stay as they are.
    let items = claim(s, "job", "w", 5000, 2).await;
    let rows: Vec<ShardVersionRow> = items.iter().map(|c| c.row.clone()).collect();
    let outcomes: Vec<ItemOutcome> = rows.iter().map(|r| moved("w", r)).collect();
    commit_batch(s, &audit, "job", "w", &rows, &outcomes)
        .await
        .unwrap();
    // Due: the straggler alone is added (the moved ones are no longer on local-1, the
    // pending ones are held already), once.
    assert_eq!(
        s.catch_up_migration_job("job", 8000).await.unwrap(),
        Some(1)
    );
    let after = job(s, "job").await;
    assert_eq!((after.total, after.done, after.catch_up_at), (6, 2, None));
    assert_eq!(after.remaining(), 4);
    assert_eq!(s.catch_up_migration_job("job", 9000).await.unwrap(), None);
    assert_eq!(job(s, "job").await.total, 6);
    let rest = claim(s, "job", "w2", 9000, 100).await;
    assert!(
        keys(&rest).contains(&key(A, "late", 1)),
        "{:?}",
        keys(&rest)
    );
    assert_eq!(rest.len(), 4);
    assert!(matches!(
        s.schedule_migration_catch_up("nope", 1).await,
        Err(StoreError::Internal(_))
    ));
}
