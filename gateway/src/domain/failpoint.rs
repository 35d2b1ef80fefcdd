//! Crash points for the crash tests (the tier-migration worker, the audit archiver, a policy
//! apply between its commit and its re-tier pass):
//! compiled only with the `failpoints` feature, which only test builds enable.

#[cfg(feature = "failpoints")]
use std::time::Duration;

/// A crash point for the crash tests, compiled only with the `failpoints` feature (test
/// builds): `SHARDGATE_TEST_FAILPOINT=<name>:<n>` makes the n-th pass through `<name>` print
/// `FAILPOINT <name>` and hang, so the test can SIGKILL the process exactly there.
#[cfg(feature = "failpoints")]
pub fn failpoint(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var("SHARDGATE_TEST_FAILPOINT") else {
        return;
    };
    let Some((point, n)) = spec.split_once(':') else {
        return;
    };
    if point != name {
        return;
    }
    let hit = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if n.parse::<u64>().ok() == Some(hit) {
        eprintln!("FAILPOINT {name}");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

#[cfg(not(feature = "failpoints"))]
/// Without the `failpoints` feature (every shipped build): nothing.
#[inline(always)]
pub fn failpoint(_: &str) {}
