//! Unit tests of the worker's pacing.

use super::worker::{chunk_len, claim_size};
use std::time::Duration;

#[test]
fn a_paced_job_claims_what_falls_due_within_the_span() {
    assert_eq!(claim_size(128, 500), 16);
    assert_eq!(claim_size(128, 1000), 32);
    assert_eq!(claim_size(8, 700), 8);
    assert_eq!(claim_size(128, 10), 1);
    assert_eq!(claim_size(0, 500), 1);
}

#[test]
fn an_unpaced_job_claims_whole_batches() {
    assert_eq!(claim_size(128, 1_000_000), 128);
    assert_eq!(claim_size(128, u32::MAX), 128);
}

#[test]
fn a_paced_job_rewraps_one_item_per_call() {
    // The default rate (500/s): items 2 ms apart.
    assert_eq!(chunk_len(Duration::from_millis(2), 128, 4), 1);
    assert_eq!(chunk_len(Duration::from_millis(20), 128, 4), 1);
}

#[test]
fn items_due_together_share_a_call() {
    // 1,000 re-wraps/s: two items fall due within the window.
    assert_eq!(chunk_len(Duration::from_millis(1), 128, 4), 2);
    assert_eq!(chunk_len(Duration::from_micros(100), 128, 4), 20);
}

#[test]
fn an_unpaced_batch_is_spread_over_concurrency_chunks() {
    assert_eq!(chunk_len(Duration::from_micros(1), 128, 4), 32);
    assert_eq!(chunk_len(Duration::ZERO, 128, 4), 32);
    assert_eq!(chunk_len(Duration::ZERO, 130, 4), 33);
    assert_eq!(chunk_len(Duration::ZERO, 3, 4), 1);
    assert_eq!(chunk_len(Duration::ZERO, 0, 4), 1);
    assert_eq!(chunk_len(Duration::ZERO, 128, 0), 128);
}
