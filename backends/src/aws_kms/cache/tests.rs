//! Unit tests of the KMS data-key cache (`cache.rs`): hits, expiry, bounds, zeroizing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use std::sync::atomic::AtomicUsize;

/// A value that records when its last copy is dropped (the point at which a `DataKey`
/// zeroizes its bytes).
#[derive(Clone)]
struct Tracked {
    id: u32,
    _guard: Arc<DropLog>,
}
struct DropLog {
    id: u32,
    log: Arc<Mutex<Vec<u32>>>,
}
impl Drop for DropLog {
    fn drop(&mut self) {
        self.log.lock().unwrap().push(self.id);
    }
}
fn tracked(id: u32, log: &Arc<Mutex<Vec<u32>>>) -> Tracked {
    Tracked {
        id,
        _guard: Arc::new(DropLog {
            id,
            log: Arc::clone(log),
        }),
    }
}

fn cfg(max_entries: usize, max_age_ms: u64, max_uses: u64) -> KmsCacheConfig {
    KmsCacheConfig {
        enabled: true,
        max_entries,
        max_age_ms,
        max_uses,
    }
}

#[test]
fn key_binds_every_field() {
    let k = cache_key("a", b"blob", b"id");
    assert_ne!(k, cache_key("b", b"blob", b"id"));
    assert_ne!(k, cache_key("a", b"blob2", b"id"));
    assert_ne!(k, cache_key("a", b"blob", b"id2"));
    assert_ne!(cache_key("ab", b"c", b""), cache_key("a", b"bc", b""));
}

#[tokio::test]
async fn hit_after_miss_and_counters() {
    let c = DekCache::<u32>::new(cfg(10, 60_000, 100));
    let calls = AtomicUsize::new(0);
    let k = cache_key("k", b"b", b"i");
    for _ in 0..5 {
        let v = c
            .get_or_fetch(&k, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(7)
            })
            .await
            .unwrap();
        assert_eq!(v, 7);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.entries), (4, 1, 1));
}

#[tokio::test]
async fn errors_are_not_cached() {
    let c = DekCache::<u32>::new(cfg(10, 60_000, 100));
    let k = cache_key("k", b"b", b"i");
    let r = c.get_or_fetch(&k, || async { Err::<u32, _>("down") }).await;
    assert_eq!(r, Err("down"));
    let r = c.get_or_fetch(&k, || async { Ok::<_, &str>(3) }).await;
    assert_eq!(r, Ok(3));
}

#[tokio::test]
async fn concurrent_misses_coalesce() {
    let c = Arc::new(DekCache::<u32>::new(cfg(10, 60_000, 100)));
    let calls = Arc::new(AtomicUsize::new(0));
    let k = cache_key("k", b"b", b"i");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, calls) = (Arc::clone(&c), Arc::clone(&calls));
        tasks.push(tokio::spawn(async move {
            c.get_or_fetch(&k, || {
                let calls = Arc::clone(&calls);
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, ()>(9)
                }
            })
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(9));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(c.stats().misses, 1);
    assert_eq!(c.stats().hits, 7);
}

#[tokio::test]
async fn concurrent_misses_share_one_failure() {
    let c = Arc::new(DekCache::<u32>::new(cfg(10, 60_000, 100)));
    let calls = Arc::new(AtomicUsize::new(0));
    let k = cache_key("k", b"b", b"i");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, calls) = (Arc::clone(&c), Arc::clone(&calls));
        tasks.push(tokio::spawn(async move {
            c.get_or_fetch(&k, || {
                let calls = Arc::clone(&calls);
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<u32, _>("unavailable")
                }
            })
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Err("unavailable"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "waiters share the failure");
    assert_eq!(c.stats().entries, 0);
    // Not cached: the next read fetches again.
    let r = c.get_or_fetch(&k, || async { Ok::<_, &str>(5) }).await;
    assert_eq!(r, Ok(5));
}

#[tokio::test]
async fn max_uses_forces_refetch_and_drops_value() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let c = DekCache::<Tracked>::new(cfg(10, 60_000, 3));
    let k = cache_key("k", b"b", b"i");
    let n = AtomicUsize::new(0);
    let fetch = || {
        let id = n.fetch_add(1, Ordering::SeqCst) as u32;
        let log = Arc::clone(&log);
        async move { Ok::<_, ()>(tracked(id, &log)) }
    };
    for _ in 0..3 {
        assert_eq!(c.get_or_fetch(&k, fetch).await.unwrap().id, 0);
    }
    // Used up on the third read: evicted, and the value's last copy is gone.
    assert_eq!(*log.lock().unwrap(), vec![0]);
    assert_eq!(c.get_or_fetch(&k, fetch).await.unwrap().id, 1);
    assert_eq!(n.load(Ordering::SeqCst), 2);
    assert!(c.stats().evictions >= 1);
}

#[tokio::test]
async fn max_age_forces_refetch_and_drops_value() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let c = DekCache::<Tracked>::new(cfg(10, 50, 1000));
    let k = cache_key("k", b"b", b"i");
    let n = AtomicUsize::new(0);
    let fetch = || {
        let id = n.fetch_add(1, Ordering::SeqCst) as u32;
        let log = Arc::clone(&log);
        async move { Ok::<_, ()>(tracked(id, &log)) }
    };
    assert_eq!(c.get_or_fetch(&k, fetch).await.unwrap().id, 0);
    assert_eq!(c.get_or_fetch(&k, fetch).await.unwrap().id, 0);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(c.get_or_fetch(&k, fetch).await.unwrap().id, 1);
    assert_eq!(*log.lock().unwrap(), vec![0], "expired entry dropped");
    assert_eq!(c.stats().evictions, 1);
}

#[tokio::test]
async fn capacity_evicts_oldest_and_drops_value() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let c = DekCache::<Tracked>::new(cfg(2, 60_000, 1000));
    for id in 0..3u32 {
        let k = cache_key("k", &id.to_be_bytes(), b"i");
        let log2 = Arc::clone(&log);
        c.get_or_fetch(&k, || {
            let log = Arc::clone(&log2);
            async move { Ok::<_, ()>(tracked(id, &log)) }
        })
        .await
        .unwrap();
    }
    assert_eq!(*log.lock().unwrap(), vec![0]);
    let s = c.stats();
    assert_eq!((s.entries, s.evictions), (2, 1));
}

#[tokio::test]
async fn cached_data_keys_promise_zeroize_on_drop_and_used_up_entries_leave() {
    // What the cache holds is a `DataKey`, whose type promises to wipe its bytes on drop
    // (checked at compile time: the bound fails if the promise is withdrawn); an entry
    // used up is removed, so the cache's copy is dropped.
    fn assert_zeroize_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    assert_zeroize_on_drop::<crate::DataKey>();
    let c = DekCache::<crate::DataKey>::new(cfg(1, 60_000, 1));
    let k = cache_key("k", b"b", b"i");
    let v = c
        .get_or_fetch(&k, || async { Ok::<_, ()>(crate::DataKey::generate()) })
        .await
        .unwrap();
    drop(v);
    assert_eq!(c.stats().entries, 0, "used-up entry removed");
}
