//! Group commit of shard writes on PostgreSQL (`Store::insert_shard_versions_grouped`): each
//! write of a group is stored or refused on its own, only the stored ones are audited, and a
//! change of an account under the group undoes all of it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{shard_row, v, AuditGen, Harness};
use shardgate_store::{
    AuditRecord, GroupedWrite, KeyState, KeyStateChange, KeyTransition, LateSeal, NewKeyVersion,
    Presealed, ShardVersionRow, Store, StoreError,
};

const CHAIN: &str = "chain-group";

/// Seals one record per stored write, and remembers which writes each call asked for (a
/// store may seal again after an attempt that stored nothing; the last call's records are
/// the stored ones).
struct RowSeal<'a> {
    audit: &'a AuditGen,
    writes: Vec<(String, String, i64)>,
    asked: Vec<Vec<usize>>,
}

#[async_trait::async_trait]
impl LateSeal for RowSeal<'_> {
    async fn seal(&mut self, _pruned: &[i64]) -> Result<Vec<AuditRecord>, StoreError> {
        panic!("a group seals rows, not one write");
    }

    async fn seal_rows(&mut self, rows: &[usize]) -> Result<Vec<AuditRecord>, StoreError> {
        self.asked.push(rows.to_vec());
        Ok(rows
            .iter()
            .map(|&i| {
                let (a, s, v) = &self.writes[i];
                self.audit.next("shard.put", Some(a), Some(s), Some(*v))
            })
            .collect())
    }
}

fn seal_for<'a>(audit: &'a AuditGen, rows: &[ShardVersionRow]) -> RowSeal<'a> {
    RowSeal {
        audit,
        writes: rows
            .iter()
            .map(|r| (r.account.clone(), r.shard.clone(), r.version.get()))
            .collect(),
        asked: Vec::new(),
    }
}

fn grouped<'a>(rows: &'a [ShardVersionRow], tier: &'static str) -> Vec<GroupedWrite<'a>> {
    rows.iter()
        .map(|row| GroupedWrite {
            row,
            tier,
            keep_versions: None,
        })
        .collect()
}

async fn shard_puts(store: &dyn Store) -> Vec<(String, i64)> {
    store
        .audit_events(CHAIN, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "shard.put")
        .map(|e| (e.shard.unwrap_or_default(), e.version.unwrap_or_default()))
        .collect()
}

async fn setup() -> Option<(Harness, AuditGen)> {
    let h = Harness::postgres().await?;
    let audit = AuditGen::new(CHAIN);
    for a in ["acct-a", "acct-b"] {
        h.store
            .put_account(
                a,
                "retail",
                1000,
                &audit.next("account.put", Some(a), None, None),
            )
            .await
            .unwrap();
    }
    h.store
        .insert_shard_version_sealed(
            &shard_row("acct-a", "s", 1, "hsm-1"),
            None,
            None,
            &mut Presealed::new(vec![audit.next(
                "shard.put",
                Some("acct-a"),
                Some("s"),
                Some(1),
            )]),
        )
        .await
        .unwrap();
    Some((h, audit))
}

#[tokio::test]
async fn a_group_stores_each_write_and_refuses_each_alone() {
    let Some((h, audit)) = setup().await else {
        return;
    };
    let s = h.store.as_ref();
    // Version 3 of local-1 is destroyed (nothing references it).
    s.register_key_versions(
        &[NewKeyVersion {
            backend: "local-1".into(),
            key_version: 3,
            key_ref: "ring".into(),
            state: KeyState::DecryptOnly,
        }],
        5,
    )
    .await
    .unwrap();
    let destroyed = s
        .set_key_state(
            &KeyStateChange {
                backend: "local-1",
                key_version: 3,
                from: KeyState::DecryptOnly,
                to: KeyState::Destroyed,
                demote: None,
                actor: "ops",
                now_ms: 1_800_000_000_000,
            },
            &audit.next("key.state", None, None, None),
        )
        .await
        .unwrap();
    assert!(matches!(destroyed, KeyTransition::Done(_)));
    let rows = vec![
        shard_row("acct-b", "new", 1, "hsm-1"),
        shard_row("acct-a", "s", 2, "hsm-1"),
        // Numbered after a version that does not exist.
        shard_row("acct-a", "t", 3, "hsm-1"),
        shard_row("acct-none", "s", 1, "hsm-1"),
        // Wrapped under the destroyed key version (shard_row's key version is 3).
        shard_row("acct-b", "late", 1, "local-1"),
        // A second new shard of an account already in the group.
        shard_row("acct-b", "z", 1, "hsm-1"),
    ];
    let mut seal = seal_for(&audit, &rows);
    let answers = s
        .insert_shard_versions_grouped(&grouped(&rows, "retail"), &mut seal)
        .await
        .unwrap();
    assert_eq!(answers.len(), rows.len());
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    assert!(answers[1].is_ok(), "{:?}", answers[1]);
    assert!(
        matches!(answers[2], Err(StoreError::Conflict { latest: None })),
        "{:?}",
        answers[2]
    );
    assert!(
        matches!(answers[3], Err(StoreError::AccountNotFound)),
        "{:?}",
        answers[3]
    );
    assert!(
        matches!(&answers[4], Err(StoreError::KeyDestroyed { backend, key_version: 3 }) if backend == "local-1"),
        "{:?}",
        answers[4]
    );
    assert!(answers[5].is_ok(), "{:?}", answers[5]);
    // Tried at once as a whole (which stored nothing: some writes are refused), then
    // sealed for the stored writes only, in the group's order.
    assert_eq!(seal.asked, vec![vec![0, 1, 2, 3, 4, 5], vec![0, 1, 5]]);
    assert_eq!(s.latest_version("acct-b", "new").await.unwrap(), Some(v(1)));
    assert_eq!(s.latest_version("acct-a", "s").await.unwrap(), Some(v(2)));
    assert_eq!(s.latest_version("acct-a", "t").await.unwrap(), None);
    assert_eq!(s.latest_version("acct-b", "late").await.unwrap(), None);
    let stored = s
        .get_shard_version("acct-a", "s", Some(v(2)))
        .await
        .unwrap();
    assert_eq!(stored.as_ref(), Some(&rows[1]));
    assert_eq!(
        shard_puts(s).await,
        vec![
            ("s".to_string(), 1),
            ("new".to_string(), 1),
            ("s".to_string(), 2),
            ("z".to_string(), 1)
        ]
    );

    // The same versions again: each is now a conflict naming the stored latest; nothing is
    // audited (the records of the attempt at once are not stored).
    let again = vec![
        shard_row("acct-b", "new", 1, "hsm-1"),
        shard_row("acct-a", "s", 2, "hsm-1"),
    ];
    let mut seal = seal_for(&audit, &again);
    let answers = s
        .insert_shard_versions_grouped(&grouped(&again, "retail"), &mut seal)
        .await
        .unwrap();
    assert!(matches!(
        answers[0],
        Err(StoreError::Conflict { latest: Some(1) })
    ));
    assert!(matches!(
        answers[1],
        Err(StoreError::Conflict { latest: Some(2) })
    ));
    assert_eq!(seal.asked, vec![vec![0, 1]]);
    assert_eq!(shard_puts(s).await.len(), 4);
}

#[tokio::test]
async fn a_group_that_passes_as_a_whole_is_sealed_once() {
    let Some((h, audit)) = setup().await else {
        return;
    };
    let s = h.store.as_ref();
    let rows = vec![
        shard_row("acct-b", "new", 1, "hsm-1"),
        shard_row("acct-a", "s", 2, "hsm-1"),
        shard_row("acct-a", "t", 1, "hsm-1"),
    ];
    let mut seal = seal_for(&audit, &rows);
    let answers = s
        .insert_shard_versions_grouped(&grouped(&rows, "retail"), &mut seal)
        .await
        .unwrap();
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(seal.asked, vec![vec![0, 1, 2]]);
    for r in &rows {
        let stored = s
            .get_shard_version(&r.account, &r.shard, Some(r.version))
            .await
            .unwrap();
        assert_eq!(stored.as_ref(), Some(r));
    }
    // One record per write, in the group's order (not the key order the rows went in by).
    assert_eq!(
        shard_puts(s).await,
        vec![
            ("s".to_string(), 1),
            ("new".to_string(), 1),
            ("s".to_string(), 2),
            ("t".to_string(), 1)
        ]
    );
}

#[tokio::test]
async fn a_key_another_transaction_inserts_meanwhile_is_refused_alone() {
    use sqlx::Connection as _;
    let Some((h, audit)) = setup().await else {
        return;
    };
    let s = h.store.clone();
    // Another writer inserts acct-a/s version 2 and holds its transaction open.
    let mut other = sqlx::PgConnection::connect(&h.url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO shard_versions (account, shard, version, format_version, backend, \
         key_ref, key_version, wrapped_dek, nonce, ciphertext, created_at, created_by) \
         VALUES ('acct-a', 's', 2, 1, 'hsm-1', 'k', 1, '\\x01', '\\x02', '\\x03', 1, 'other')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let rows = vec![
        shard_row("acct-a", "s", 2, "hsm-1"),
        shard_row("acct-b", "new", 1, "hsm-1"),
    ];
    let group = {
        let rows = rows.clone();
        let audit = AuditGen::new("chain-group-2");
        tokio::spawn(async move {
            let mut seal = seal_for(&audit, &rows);
            let answers = s
                .insert_shard_versions_grouped(&grouped(&rows, "retail"), &mut seal)
                .await;
            (answers, seal.asked)
        })
    };
    // The group's statement waits for that transaction's key (PostgreSQL shows a backend
    // of this database waiting on a lock), which then commits.
    let mut watcher = sqlx::PgConnection::connect(&h.url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && !group.is_finished(),
            "the group's statement never waited for the other transaction's key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!group.is_finished());
    tx.commit().await.unwrap();
    let (answers, asked) = group.await.unwrap();
    let answers = answers.unwrap();
    assert!(
        matches!(answers[0], Err(StoreError::Conflict { latest: Some(2) })),
        "{:?}",
        answers[0]
    );
    assert!(answers[1].is_ok(), "{:?}", answers[1]);
    // The attempt at once failed as a whole; the transaction stored the other write.
    assert_eq!(asked, vec![vec![0, 1], vec![1]]);
    let s = h.store.as_ref();
    assert_eq!(
        s.get_shard_version("acct-b", "new", Some(v(1)))
            .await
            .unwrap()
            .as_ref(),
        Some(&rows[1])
    );
    let theirs = s
        .get_shard_version("acct-a", "s", Some(v(2)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(theirs.created_by, "other");
    drop(audit);
}

#[tokio::test]
async fn an_account_changed_since_the_writers_read_it_undoes_the_whole_group() {
    let Some((h, audit)) = setup().await else {
        return;
    };
    let s = h.store.as_ref();
    let rows = vec![
        shard_row("acct-a", "s", 2, "hsm-1"),
        shard_row("acct-b", "new", 1, "hsm-1"),
    ];
    // acct-b was read on another tier: its tier changed since.
    let writes = vec![
        GroupedWrite {
            row: &rows[0],
            tier: "retail",
            keep_versions: None,
        },
        GroupedWrite {
            row: &rows[1],
            tier: "gold",
            keep_versions: None,
        },
    ];
    let mut seal = seal_for(&audit, &rows);
    let r = s.insert_shard_versions_grouped(&writes, &mut seal).await;
    assert!(matches!(r, Err(StoreError::AccountChanged)), "{r:?}");
    assert_eq!(s.latest_version("acct-a", "s").await.unwrap(), Some(v(1)));
    assert_eq!(s.latest_version("acct-b", "new").await.unwrap(), None);
    assert_eq!(
        shard_puts(s).await.len(),
        1,
        "only the setup's write is audited"
    );

    // So does a retention change.
    let writes = vec![GroupedWrite {
        row: &rows[0],
        tier: "retail",
        keep_versions: Some(5),
    }];
    let mut seal = seal_for(&audit, &rows[..1]);
    let r = s.insert_shard_versions_grouped(&writes, &mut seal).await;
    assert!(matches!(r, Err(StoreError::AccountChanged)), "{r:?}");
    assert_eq!(s.latest_version("acct-a", "s").await.unwrap(), Some(v(1)));
}

#[tokio::test]
async fn a_group_never_holds_two_writes_of_one_shard() {
    let Some((h, audit)) = setup().await else {
        return;
    };
    let rows = vec![
        shard_row("acct-a", "s", 2, "hsm-1"),
        shard_row("acct-a", "s", 3, "hsm-1"),
    ];
    let mut seal = seal_for(&audit, &rows);
    let r = h
        .store
        .insert_shard_versions_grouped(&grouped(&rows, "retail"), &mut seal)
        .await;
    assert!(matches!(r, Err(StoreError::Internal(_))), "{r:?}");
    assert_eq!(
        h.store.latest_version("acct-a", "s").await.unwrap(),
        Some(v(1))
    );
}

#[tokio::test]
async fn sqlite_does_not_group_writes() {
    let h = Harness::sqlite().await;
    assert!(!h.store.groups_writes());
}
