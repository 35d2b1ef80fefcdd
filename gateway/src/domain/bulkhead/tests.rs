//! The bulkhead's admission by class, with no backend: permits held and released by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::domain::priority::{scoped, Ask};
use futures::FutureExt as _;
use std::sync::{Arc, Mutex};

async fn enter_as(b: &Bulkhead, class: Class) -> Result<Permit<'_>, BackendError> {
    scoped(Ask::Known(class), b.enter()).await
}

fn is_shed(r: &Result<Permit<'_>, BackendError>) -> bool {
    matches!(r, Err(BackendError::Shed { .. }))
}

#[test]
fn reserve_pct_keeps_slots_for_the_higher_classes_and_every_class_gets_one() {
    assert_eq!(shares(64, 25), (32, 48));
    assert_eq!(shares(4, 25), (2, 3));
    assert_eq!(shares(10, 0), (10, 10));
    // Too few slots to reserve any: every class may use the one there is.
    assert_eq!(shares(1, 25), (1, 1));
    // Past 50% nothing would be left to bulk: read as 50.
    assert_eq!(shares(8, 90), shares(8, 50));
}

#[tokio::test]
async fn a_bulk_flood_leaves_the_reserved_slots_to_standard_and_critical_calls() {
    let b = Bulkhead::new(4, 4, 25);
    let _b1 = enter_as(&b, Class::Bulk).await.unwrap();
    let _b2 = enter_as(&b, Class::Bulk).await.unwrap();
    // Two free slots, but not for bulk: a third bulk call waits.
    assert!(enter_as(&b, Class::Bulk).now_or_never().is_none());
    let _s = enter_as(&b, Class::Standard)
        .now_or_never()
        .expect("standard is admitted at once")
        .unwrap();
    // Three slots held below critical: a second standard call waits, a critical one runs.
    assert!(enter_as(&b, Class::Standard).now_or_never().is_none());
    let _c = enter_as(&b, Class::Critical)
        .now_or_never()
        .expect("critical is admitted at once")
        .unwrap();
    assert_eq!(b.in_use(), 4);
}

#[tokio::test]
async fn a_call_cancelled_while_it_waits_leaves_no_count_behind() {
    let b = Bulkhead::new(1, 1, 25);
    let held = enter_as(&b, Class::Critical).await.unwrap();
    for _ in 0..5 {
        // Polled once (it joins the queue), then dropped: a client that hung up.
        assert!(enter_as(&b, Class::Critical).now_or_never().is_none());
    }
    assert_eq!(b.waiting(), 0);
    assert_eq!(b.rejected(), 0);
    drop(held);
    assert!(enter_as(&b, Class::Critical).await.is_ok());
}

#[tokio::test]
async fn the_lowest_class_is_shed_first_and_a_freed_slot_goes_to_the_highest_waiting() {
    // One slot, queue of 10: bulk may wait while fewer than 5 wait, standard fewer than 9.
    let b = Arc::new(Bulkhead::new(1, 10, 25));
    let held = enter_as(&b, Class::Bulk).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let spawn = |class: Class| {
        let (b, order) = (b.clone(), order.clone());
        tokio::spawn(async move {
            let p = enter_as(&b, class).await;
            if p.is_ok() {
                order.lock().unwrap().push(class);
            }
            tokio::task::yield_now().await;
            p.is_ok()
        })
    };
    for _ in 0..5 {
        tasks.push(spawn(Class::Bulk));
    }
    while b.waiting() < 5 {
        tokio::task::yield_now().await;
    }
    // The bulk share of the queue is full: the next bulk call is refused at once...
    let refused = enter_as(&b, Class::Bulk).await;
    assert!(is_shed(&refused), "bulk past its share is shed");
    assert_eq!(b.shed_of(Class::Bulk), 1);
    // ... while standard and critical calls may still wait.
    tasks.push(spawn(Class::Standard));
    tasks.push(spawn(Class::Critical));
    while b.waiting() < 7 {
        tokio::task::yield_now().await;
    }
    drop(held);
    for t in tasks {
        assert!(t.await.unwrap(), "every queued call is admitted in the end");
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(
        &order[..2],
        &[Class::Critical, Class::Standard],
        "{order:?}"
    );
    assert_eq!(b.shed_of(Class::Standard) + b.shed_of(Class::Critical), 0);
}

#[test]
fn a_full_bulkhead_drains_in_the_queue_s_share_of_recent_call_time() {
    // 256 waiting behind 64 running, 20 ms a call, 64 at a time: 5 rounds, 100 ms.
    assert_eq!(drain_time(256, 64, 20_000), Duration::from_millis(100));
    // One slot, nothing waiting, 2 s a call: the running call's 2 s.
    assert_eq!(drain_time(0, 1, 2_000_000), Duration::from_secs(2));
    assert_eq!(drain_time(10, 0, 1_000), Duration::from_millis(11));
}
