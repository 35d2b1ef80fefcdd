//! Key lifecycle conformance, run against both stores: states, transitions with their audit
//! events, the destroy guard, and wrap-counter reservations shared by several store
//! instances (replicas) on one database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{shard_row, AuditGen, Harness};
use shardgate_store::{
    KeyState, KeyStateChange, KeyTransition, NewKeyVersion, Reservation, Store, StoreError,
};
use tokio::task::JoinSet;

both_stores!(
    registering_never_makes_two_active_versions,
    promote_demotes_the_previous_active_version_with_one_audit_event,
    destroy_is_refused_while_referenced_then_final,
    no_row_commits_under_a_destroyed_version,
    wrap_reservations_of_two_stores_never_overlap_and_stop_at_the_limit,
    the_last_block_is_cut_at_the_limit,
    a_transition_whose_audit_event_cannot_be_written_changes_nothing,
    a_destroy_racing_writes_never_leaves_a_row_under_the_destroyed_version,
);

const B: &str = "local-1";

fn new(version: i64, state: KeyState) -> NewKeyVersion {
    NewKeyVersion {
        backend: B.to_string(),
        key_version: version,
        key_ref: "ring".to_string(),
        state,
    }
}

fn change(
    version: i64,
    from: KeyState,
    to: KeyState,
    demote: Option<i64>,
) -> KeyStateChange<'static> {
    KeyStateChange {
        backend: B,
        key_version: version,
        from,
        to,
        demote,
        actor: "ops",
        now_ms: 1_800_000_000_000,
    }
}

async fn state_of(store: &dyn Store, version: i64) -> KeyState {
    store
        .list_key_versions()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.backend == B && r.key_version == version)
        .map(|r| r.state)
        .unwrap()
}

async fn key_events(store: &dyn Store, chain: &str) -> usize {
    store
        .audit_events(chain, 0, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == "key.state")
        .count()
}

async fn registering_never_makes_two_active_versions(h: &Harness) {
    let s = h.store.as_ref();
    let added = s
        .register_key_versions(&[new(1, KeyState::Active), new(2, KeyState::Active)], 5)
        .await
        .unwrap();
    assert_eq!(added, 2);
    assert_eq!(state_of(s, 1).await, KeyState::Active);
    assert_eq!(
        state_of(s, 2).await,
        KeyState::DecryptOnly,
        "a second active version is registered decrypt-only"
    );
    // Registering again changes nothing (a replica starting after another).
    let again = s
        .register_key_versions(
            &[new(1, KeyState::DecryptOnly), new(2, KeyState::Active)],
            9,
        )
        .await
        .unwrap();
    assert_eq!(again, 0);
    let rows = s.list_key_versions().await.unwrap();
    assert!(rows
        .iter()
        .all(|r| r.changed_by == "registered" && r.created_ms == 5 && r.reserved_upto == 0));
    assert_eq!(state_of(s, 1).await, KeyState::Active);
}

async fn promote_demotes_the_previous_active_version_with_one_audit_event(h: &Harness) {
    let s = h.store.as_ref();
    let audit = AuditGen::new("chain-k");
    s.register_key_versions(
        &[new(1, KeyState::Active), new(2, KeyState::DecryptOnly)],
        5,
    )
    .await
    .unwrap();
    // The caller saw no active version, but there is one: refused, nothing written.
    let rec = audit.next("key.state", None, None, None);
    let r = s
        .set_key_state(
            &change(2, KeyState::DecryptOnly, KeyState::Active, None),
            &rec,
        )
        .await
        .unwrap();
    assert_eq!(r, KeyTransition::WrongState(KeyState::DecryptOnly));
    assert_eq!(key_events(s, "chain-k").await, 0);
    assert_eq!(state_of(s, 1).await, KeyState::Active);

    let r = s
        .set_key_state(
            &change(2, KeyState::DecryptOnly, KeyState::Active, Some(1)),
            &rec,
        )
        .await
        .unwrap();
    let KeyTransition::Done(done) = r else {
        panic!("promote refused: {r:?}")
    };
    assert_eq!(done.state, KeyState::Active);
    assert_eq!(done.changed_ms, 1_800_000_000_000);
    assert_eq!(done.changed_by, "ops");
    assert_eq!(state_of(s, 1).await, KeyState::DecryptOnly);
    assert_eq!(
        key_events(s, "chain-k").await,
        1,
        "one audit event per change"
    );

    // A stale `from` is refused; so is a transition the state machine does not have.
    let rec2 = audit.next("key.state", None, None, None);
    let r = s
        .set_key_state(
            &change(1, KeyState::Active, KeyState::DecryptOnly, None),
            &rec2,
        )
        .await
        .unwrap();
    assert_eq!(r, KeyTransition::WrongState(KeyState::DecryptOnly));
    let r = s
        .set_key_state(
            &change(2, KeyState::Active, KeyState::Destroyed, None),
            &rec2,
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        KeyTransition::WrongState(KeyState::Active),
        "an active version is never destroyed directly"
    );
    let r = s
        .set_key_state(
            &change(7, KeyState::DecryptOnly, KeyState::Destroyed, None),
            &rec2,
        )
        .await
        .unwrap();
    assert_eq!(r, KeyTransition::NotFound);
    assert_eq!(key_events(s, "chain-k").await, 1);
}

async fn destroy_is_refused_while_referenced_then_final(h: &Harness) {
    let s = h.store.as_ref();
    let audit = AuditGen::new("chain-d");
    s.put_account(
        "acct-1",
        "retail",
        1,
        &audit.next("account.put", None, None, None),
    )
    .await
    .unwrap();
    // `shard_row` wraps under key version 3.
    for shard in ["s1", "s2"] {
        s.insert_shard_version(
            &shard_row("acct-1", shard, 1, B),
            &audit.next("shard.put", Some("acct-1"), Some(shard), Some(1)),
        )
        .await
        .unwrap();
    }
    s.register_key_versions(
        &[new(3, KeyState::DecryptOnly), new(4, KeyState::Active)],
        5,
    )
    .await
    .unwrap();
    let r = s
        .set_key_state(
            &change(3, KeyState::DecryptOnly, KeyState::Destroyed, None),
            &audit.next("key.state", None, None, None),
        )
        .await
        .unwrap();
    assert_eq!(r, KeyTransition::Referenced(2));
    assert_eq!(state_of(s, 3).await, KeyState::DecryptOnly);

    for shard in ["s1", "s2"] {
        let n = s
            .delete_shard("acct-1", shard, &|n| {
                audit.next_detail("shard.delete", Some("acct-1"), Some(shard), &n.to_string())
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    let r = s
        .set_key_state(
            &change(3, KeyState::DecryptOnly, KeyState::Destroyed, None),
            &audit.next("key.state", None, None, None),
        )
        .await
        .unwrap();
    assert!(
        matches!(&r, KeyTransition::Done(k) if k.state == KeyState::Destroyed),
        "{r:?}"
    );
    for to in [KeyState::Active, KeyState::DecryptOnly] {
        let r = s
            .set_key_state(
                &change(3, KeyState::Destroyed, to, Some(4)),
                &audit.next("key.state", None, None, None),
            )
            .await
            .unwrap();
        assert_eq!(
            r,
            KeyTransition::WrongState(KeyState::Destroyed),
            "destroyed is final"
        );
    }
    assert_eq!(state_of(s, 3).await, KeyState::Destroyed);
}

async fn no_row_commits_under_a_destroyed_version(h: &Harness) {
    let s = h.store.as_ref();
    let audit = AuditGen::new("chain-x");
    s.put_account(
        "acct-1",
        "retail",
        1,
        &audit.next("account.put", None, None, None),
    )
    .await
    .unwrap();
    s.register_key_versions(
        &[new(3, KeyState::DecryptOnly), new(4, KeyState::Active)],
        5,
    )
    .await
    .unwrap();
    let r = s
        .set_key_state(
            &change(3, KeyState::DecryptOnly, KeyState::Destroyed, None),
            &audit.next("key.state", None, None, None),
        )
        .await
        .unwrap();
    assert!(matches!(r, KeyTransition::Done(_)));
    // A replica that wrapped under version 3 before it learnt of the destroy.
    let err = s
        .insert_shard_version(
            &shard_row("acct-1", "late", 1, B),
            &audit.next("shard.put", Some("acct-1"), Some("late"), Some(1)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::KeyDestroyed { backend, key_version: 3 } if backend == B),
        "{err:?}"
    );
    assert_eq!(s.latest_version("acct-1", "late").await.unwrap(), None);
    let shard_puts = s
        .audit_events("chain-x", 0, 100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == "shard.put")
        .count();
    assert_eq!(shard_puts, 0, "the refused write left no audit event");
    // Another backend's version 3 is not affected.
    s.insert_shard_version(
        &shard_row("acct-1", "other", 1, "hsm-1"),
        &audit.next("shard.put", Some("acct-1"), Some("other"), Some(1)),
    )
    .await
    .unwrap();
}

async fn wrap_reservations_of_two_stores_never_overlap_and_stop_at_the_limit(h: &Harness) {
    // A second store instance on the same database: another replica.
    let other = shardgate_store::connect(&h.url, 4).await.unwrap();
    let stores = [h.store.clone(), other];
    stores[0]
        .register_key_versions(
            &[new(1, KeyState::Active), new(2, KeyState::DecryptOnly)],
            5,
        )
        .await
        .unwrap();
    const LIMIT: i64 = 1_000;
    const BLOCK: i64 = 64;
    let mut tasks = JoinSet::new();
    for i in 0..24 {
        let store = stores[i % 2].clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            loop {
                match store.reserve_key_wraps(B, 1, BLOCK, LIMIT).await.unwrap() {
                    Reservation::Granted { from, to } => got.push((from, to)),
                    Reservation::Exhausted { reserved } => {
                        assert_eq!(reserved, LIMIT);
                        return got;
                    }
                    Reservation::NotActive => panic!("version 1 is active"),
                }
            }
        });
    }
    let mut ranges = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ranges.extend(r.unwrap());
    }
    ranges.sort_unstable();
    // Contiguous, disjoint, within blocks, and exactly up to the limit.
    let mut at = 0;
    for (from, to) in &ranges {
        assert_eq!(*from, at, "ranges overlap or leave a gap: {ranges:?}");
        assert!(to > from && to - from <= BLOCK);
        at = *to;
    }
    assert_eq!(at, LIMIT);
    assert_eq!(
        stores[1].list_key_versions().await.unwrap()[0].reserved_upto,
        LIMIT
    );
    // Only an active version hands out wraps.
    assert_eq!(
        stores[1]
            .reserve_key_wraps(B, 2, BLOCK, LIMIT)
            .await
            .unwrap(),
        Reservation::NotActive
    );
    assert_eq!(
        stores[1]
            .reserve_key_wraps(B, 9, BLOCK, LIMIT)
            .await
            .unwrap(),
        Reservation::NotActive
    );
}

async fn the_last_block_is_cut_at_the_limit(h: &Harness) {
    let s = h.store.as_ref();
    s.register_key_versions(&[new(1, KeyState::Active)], 5)
        .await
        .unwrap();
    h.exec("UPDATE key_versions SET reserved_upto = 990 WHERE key_version = 1")
        .await;
    assert_eq!(
        s.reserve_key_wraps(B, 1, 64, 1_000).await.unwrap(),
        Reservation::Granted {
            from: 990,
            to: 1_000
        }
    );
    assert_eq!(
        s.reserve_key_wraps(B, 1, 64, 1_000).await.unwrap(),
        Reservation::Exhausted { reserved: 1_000 }
    );
}

async fn a_transition_whose_audit_event_cannot_be_written_changes_nothing(h: &Harness) {
    let s = h.store.as_ref();
    let audit = AuditGen::new("chain-a");
    s.register_key_versions(
        &[new(1, KeyState::Active), new(2, KeyState::DecryptOnly)],
        5,
    )
    .await
    .unwrap();
    h.break_audit().await;
    let err = s
        .set_key_state(
            &change(2, KeyState::DecryptOnly, KeyState::Active, Some(1)),
            &audit.next("key.state", None, None, None),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)), "{err:?}");
    assert_eq!(state_of(s, 1).await, KeyState::Active);
    assert_eq!(state_of(s, 2).await, KeyState::DecryptOnly);
    h.repair_audit().await;
    let r = s
        .set_key_state(
            &change(2, KeyState::DecryptOnly, KeyState::Active, Some(1)),
            &audit.next("key.state", None, None, None),
        )
        .await
        .unwrap();
    assert!(matches!(r, KeyTransition::Done(_)), "{r:?}");
}

async fn a_destroy_racing_writes_never_leaves_a_row_under_the_destroyed_version(h: &Harness) {
    let audit = std::sync::Arc::new(AuditGen::new("chain-r"));
    h.store
        .put_account(
            "acct-1",
            "retail",
            1,
            &audit.next("account.put", None, None, None),
        )
        .await
        .unwrap();
    h.store
        .register_key_versions(&[new(100, KeyState::Active)], 5)
        .await
        .unwrap();
    let mut destroyed_rounds = 0;
    for round in 0..12i64 {
        let version = round + 1;
        h.store
            .register_key_versions(&[new(version, KeyState::DecryptOnly)], 5)
            .await
            .unwrap();
        let mut tasks = JoinSet::new();
        // Writers that wrapped under `version` before they could know of the destroy.
        for w in 0..8 {
            let (store, audit) = (h.store.clone(), audit.clone());
            tasks.spawn(async move {
                // Spread the writers around the destroy.
                tokio::time::sleep(std::time::Duration::from_millis(w * 2)).await;
                let shard = format!("r{version}-w{w}");
                let mut row = shard_row("acct-1", &shard, 1, B);
                row.key_version = version;
                match store
                    .insert_shard_version(
                        &row,
                        &audit.next("shard.put", Some("acct-1"), Some(&shard), Some(1)),
                    )
                    .await
                {
                    Ok(()) | Err(StoreError::KeyDestroyed { .. }) => {}
                    Err(e) => panic!("{e:?}"),
                }
            });
        }
        let (store, audit2) = (h.store.clone(), audit.clone());
        let destroy = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(
                u64::try_from(round).unwrap(),
            ))
            .await;
            store
                .set_key_state(
                    &change(version, KeyState::DecryptOnly, KeyState::Destroyed, None),
                    &audit2.next("key.state", None, None, None),
                )
                .await
                .unwrap()
        });
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let outcome = destroy.await.unwrap();
        let rows = h
            .store
            .key_ref_counts()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.backend == B && c.key_version == version)
            .map_or(0, |c| c.shard_versions);
        match outcome {
            KeyTransition::Done(_) => {
                destroyed_rounds += 1;
                assert_eq!(
                    rows, 0,
                    "round {round}: rows committed under a destroyed version"
                );
            }
            KeyTransition::Referenced(n) => {
                assert!(
                    n > 0 && n <= rows,
                    "round {round}: {n} referenced, {rows} stored"
                );
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    eprintln!("destroy won {destroyed_rounds} of 12 rounds");
}
