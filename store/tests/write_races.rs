//! Shard writes racing changes of their account on PostgreSQL, where a write takes its audit
//! chain only after its row work (see `LateSeal`). (On SQLite a write holds the chain, then
//! the database's one write lock, for its whole transaction: nothing can race it.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{shard_row, v, AuditGen, Harness};
use shardgate_store::{AuditRecord, KeepVersions, LateSeal, Presealed, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

const ACCT: &str = "acct-race";
const CHAIN: &str = "chain-race";

/// Changes the account (as a concurrent writer holding the chain would have just done) at the
/// moment the write asks for its records, then hands them over.
struct ChangeAtSeal {
    store: Arc<dyn Store>,
    change: AuditRecord,
    tier: &'static str,
    keep: KeepVersions,
    give: Vec<AuditRecord>,
}

#[async_trait::async_trait]
impl LateSeal for ChangeAtSeal {
    async fn seal(&mut self, _pruned: &[i64]) -> Result<Vec<AuditRecord>, StoreError> {
        // Bounded: a tier change that waited for the write's locks would hang here forever.
        tokio::time::timeout(
            Duration::from_secs(10),
            self.store
                .put_account_with_retention(ACCT, self.tier, self.keep, 2000, &self.change),
        )
        .await
        .expect("the account change waited for the in-flight write")?;
        Ok(std::mem::take(&mut self.give))
    }
}

async fn setup() -> Option<(Harness, AuditGen)> {
    let h = Harness::postgres().await?;
    let audit = AuditGen::new(CHAIN);
    h.store
        .put_account(
            ACCT,
            "retail",
            1000,
            &audit.next("account.put", Some(ACCT), None, None),
        )
        .await
        .unwrap();
    let v1 = shard_row(ACCT, "s", 1, "local-1");
    h.store
        .insert_shard_version_sealed(
            &v1,
            None,
            None,
            &mut Presealed::new(vec![audit.next(
                "shard.put",
                Some(ACCT),
                Some("s"),
                Some(1),
            )]),
        )
        .await
        .unwrap();
    Some((h, audit))
}

async fn events(h: &Harness) -> i64 {
    let Ok(rows) = h.store.audit_events(CHAIN, 0, 1000).await else {
        panic!("audit events unreadable");
    };
    i64::try_from(rows.len()).unwrap()
}

/// Writes version 2 while `tier` / `keep` are set at its seal; the write's result.
async fn race(
    h: &Harness,
    audit: &AuditGen,
    tier: &'static str,
    keep: KeepVersions,
) -> Result<(), StoreError> {
    let mut seal = ChangeAtSeal {
        store: h.store.clone(),
        change: audit.next("account.put", Some(ACCT), None, None),
        tier,
        keep,
        give: vec![audit.next("shard.put", Some(ACCT), Some("s"), Some(2))],
    };
    h.store
        .insert_shard_version_sealed(&shard_row(ACCT, "s", 2, "local-1"), None, None, &mut seal)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tier_change_during_a_write_makes_it_write_again() {
    let Some((h, audit)) = setup().await else {
        return;
    };
    let before = events(&h).await;
    let r = race(&h, &audit, "gold", KeepVersions::Unchanged).await;
    assert!(matches!(r, Err(StoreError::AccountChanged)), "{r:?}");
    // Nothing of the write is kept; the tier change (and its event) is.
    assert_eq!(h.store.latest_version(ACCT, "s").await.unwrap(), Some(v(1)));
    assert_eq!(
        h.store.get_account(ACCT).await.unwrap().unwrap().tier,
        "gold"
    );
    assert_eq!(events(&h).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retention_change_during_a_write_makes_it_write_again() {
    let Some((h, audit)) = setup().await else {
        return;
    };
    let r = race(&h, &audit, "retail", KeepVersions::Set(Some(1))).await;
    assert!(matches!(r, Err(StoreError::AccountChanged)), "{r:?}");
    assert_eq!(h.store.latest_version(ACCT, "s").await.unwrap(), Some(v(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_account_write_that_changes_nothing_lets_the_write_commit() {
    let Some((h, audit)) = setup().await else {
        return;
    };
    let before = events(&h).await;
    race(&h, &audit, "retail", KeepVersions::Unchanged)
        .await
        .unwrap();
    assert_eq!(h.store.latest_version(ACCT, "s").await.unwrap(), Some(v(2)));
    assert_eq!(events(&h).await, before + 2);
}
