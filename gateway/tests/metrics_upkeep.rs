//! The process's metrics recorder must not hold on to histogram samples when nobody scrapes
//! `/metrics`: it queued every sample until a scrape drained it, and the chaos soak's
//! unscraped replicas grew by ~1 MB a minute. The recorder's own upkeep now drains them.
//!
//! This binary measures the live heap with dhat's counting allocator, so it holds this test
//! alone (the allocator is process-wide).

use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Histogram samples recorded; kept, they would hold at least 8 bytes each.
const SAMPLES: u64 = 400_000;

#[test]
fn histogram_samples_are_drained_without_a_scrape() {
    let _profiler = dhat::Profiler::builder().testing().build();
    assert!(
        shardgate::domain::metrics::handle().is_some(),
        "the recorder installs"
    );
    let record = |i: u64| {
        metrics::histogram!("shardgate_http_request_duration_seconds",
            "method" => "GET", "route" => "/upkeep-test", "status" => "200", "backend" => "none")
        .record(i as f64 * 1e-6);
    };
    record(0);
    let before = dhat::HeapStats::get().curr_bytes as u64;
    for i in 0..SAMPLES {
        record(i);
    }
    let kept = SAMPLES * 8;
    let grown = |now: u64| now.saturating_sub(before);
    assert!(
        grown(dhat::HeapStats::get().curr_bytes as u64) >= kept / 2,
        "the samples are queued before an upkeep (else this test measures nothing)"
    );
    // No scrape from here on: only the recorder's upkeep may drain the queue. A sample now
    // and then lets the epoch-based reclamation of drained blocks run.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = dhat::HeapStats::get().curr_bytes as u64;
        if grown(now) < kept / 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} bytes of histogram samples still held a minute after they were recorded",
            grown(now)
        );
        record(1);
        std::thread::sleep(Duration::from_millis(100));
    }
}
