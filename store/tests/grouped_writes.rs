//! Group commit of shard writes on PostgreSQL (`Store::insert_shard_versions_grouped`): each
//! write of a group is stored or refused on its own, only the stored ones are audited, and a
//! change of an account under the group undoes all of it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{shard_row, AuditGen, Harness};
use shardgate_store::{
    AuditRecord, GroupedWrite, KeyStateChange, KeyTransition, LateSeal, NewKeyVersion, Presealed,
    ShardVersionRow, Store, StoreError,
};

const CHAIN: &str = "chain-group";

/// Seals one record per stored write, and remembers which writes it was asked for.
struct RowSeal<'a> {
    audit: &'a AuditGen,
    writes: Vec<(String, String, i64)>,
    asked: Option<Vec<usize>>,
}

#[async_trait::async_trait]
impl LateSeal for RowSeal<'_> {
    async fn seal(&mut self, _pruned: &[i64]) -> Result<Vec<AuditRecord>, StoreError> {
        panic!("a group seals rows, not one write");
    }

    async fn seal_rows(&mut self, rows: &[usize]) -> Result<Vec<AuditRecord>, StoreError> {
        self.asked = Some(rows.to_vec());
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
            .map(|r| (r.account.clone(), r.shard.clone(), r.version))
            .collect(),
        asked: None,
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
            state: "decrypt-only".into(),
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
                from: "decrypt-only",
                to: "destroyed",
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
    // Sealed for the stored writes only, in the group's order.
    assert_eq!(seal.asked, Some(vec![0, 1, 5]));
    assert_eq!(s.latest_version("acct-b", "new").await.unwrap(), Some(1));
    assert_eq!(s.latest_version("acct-a", "s").await.unwrap(), Some(2));
    assert_eq!(s.latest_version("acct-a", "t").await.unwrap(), None);
    assert_eq!(s.latest_version("acct-b", "late").await.unwrap(), None);
    let stored = s.get_shard_version("acct-a", "s", Some(2)).await.unwrap();
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
    // sealed or audited.
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
    assert_eq!(seal.asked, None);
    assert_eq!(shard_puts(s).await.len(), 4);
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
    assert_eq!(s.latest_version("acct-a", "s").await.unwrap(), Some(1));
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
    assert_eq!(s.latest_version("acct-a", "s").await.unwrap(), Some(1));
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
        Some(1)
    );
}

#[tokio::test]
async fn sqlite_does_not_group_writes() {
    let h = Harness::sqlite().await;
    assert!(!h.store.groups_writes());
}
