//! The `[limits]` and `[timeouts]` sections: what one HTTP caller may send and how long the
//! server waits for it. Their checks return the message; `crate::app::config` wraps it.

use serde::{Deserialize, Serialize};

/// Size limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body in bytes.
    #[serde(default = "d_body")]
    pub max_body_bytes: usize,
    /// Largest shard in bytes (decoded).
    #[serde(default = "d_shard")]
    pub max_shard_bytes: usize,
    /// Most items in one batchGet.
    #[serde(default = "d_batch")]
    pub batch_max_items: usize,
    /// Largest page of the shard list.
    #[serde(default = "d_page")]
    pub list_max_limit: i64,
    /// Requests per second one authenticated identity (token name) may make, as a token
    /// bucket refilled at this rate; past it, 429 `rate_limited` with `Retry-After`. `0`
    /// (the default) turns the limit off.
    #[serde(default)]
    pub rate_per_identity_per_sec: u32,
    /// Requests an identity may make at once after being idle (the bucket's size); `0` (the
    /// default) means one second's worth, `rate_per_identity_per_sec`.
    #[serde(default)]
    pub rate_per_identity_burst: u32,
    /// Longest request target (path and query) in bytes; longer ones answer 414
    /// `uri_too_long` before any other work (no authentication, audit event or log line).
    /// At most 65534: hyper itself answers a bare 414 past that.
    #[serde(default = "d_uri")]
    pub max_uri_bytes: usize,
    /// Authentication refusals one client address (an IPv6 address's /64) may cause per
    /// `refusal_window_secs`, each audited; past it the address's refused requests answer 429
    /// `rate_limited` and cost one aggregated audit event per window. Requests that
    /// authenticate are never charged nor limited by it. `0` turns the budget off.
    #[serde(default = "d_refusals")]
    pub refusals_per_peer: u32,
    /// The window of `refusals_per_peer`, in seconds.
    #[serde(default = "d_refusal_window")]
    pub refusal_window_secs: u64,
    /// How long an answer past an address's refusal budget (its 429, or the 414 of an
    /// over-long target) is held back before it is sent, in milliseconds, as PostgreSQL's
    /// `auth_delay` does: a flood that waits for its answers then costs one answer per
    /// connection and delay instead of the CPU its clients can drive. `0` answers at once.
    #[serde(default = "d_refusal_delay")]
    pub refusal_delay_ms: u64,
    /// Answers held back at once (each holds its connection); past it, an answer past the
    /// budget is sent at once and its connection closed (`Connection: close`).
    #[serde(default = "d_delayed_refusals")]
    pub max_delayed_refusals: usize,
    /// Most connections open at once; past it new connections wait in the listen backlog
    /// (not accepted) until one closes.
    #[serde(default = "d_connections")]
    pub max_connections: usize,
}

fn d_body() -> usize {
    1024 * 1024
}
fn d_shard() -> usize {
    64 * 1024
}
fn d_batch() -> usize {
    100
}
fn d_page() -> i64 {
    1000
}
fn d_uri() -> usize {
    8 * 1024
}
fn d_refusals() -> u32 {
    20
}
fn d_refusal_window() -> u64 {
    10
}
fn d_connections() -> usize {
    10_000
}
fn d_refusal_delay() -> u64 {
    1_000
}
fn d_delayed_refusals() -> usize {
    1_024
}

impl Limits {
    /// The checks of `[limits]` alone.
    pub fn validate(&self) -> Result<(), String> {
        let invalid = |m: &str| Err(m.to_string());
        if self.max_shard_bytes == 0 || self.batch_max_items == 0 {
            return invalid("limits must be greater than zero");
        }
        if self.rate_per_identity_per_sec == 0 && self.rate_per_identity_burst != 0 {
            return invalid("limits.rate_per_identity_burst needs limits.rate_per_identity_per_sec (0 turns the rate limit off)");
        }
        if self.list_max_limit < 1 {
            return invalid("limits.list_max_limit must be at least 1");
        }
        if !(256..=65_534).contains(&self.max_uri_bytes) {
            // Above 65534 hyper answers a bare 414 itself; below 256 ids no longer fit.
            return invalid("limits.max_uri_bytes must be between 256 and 65534");
        }
        if self.refusals_per_peer > 0 && self.refusal_window_secs == 0 {
            return invalid("limits.refusal_window_secs must be at least 1");
        }
        if self.max_connections == 0 {
            return invalid("limits.max_connections must be at least 1");
        }
        if self.refusal_delay_ms > 60_000 {
            return invalid("limits.refusal_delay_ms must be at most 60000");
        }
        if self.max_delayed_refusals == 0 {
            return invalid("limits.max_delayed_refusals must be at least 1");
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: d_body(),
            max_shard_bytes: d_shard(),
            batch_max_items: d_batch(),
            list_max_limit: d_page(),
            rate_per_identity_per_sec: 0,
            rate_per_identity_burst: 0,
            max_uri_bytes: d_uri(),
            refusals_per_peer: d_refusals(),
            refusal_window_secs: d_refusal_window(),
            max_connections: d_connections(),
            refusal_delay_ms: d_refusal_delay(),
            max_delayed_refusals: d_delayed_refusals(),
        }
    }
}

/// Timeouts in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Time to receive a request's headers.
    #[serde(default = "d_header")]
    pub header_read_ms: u64,
    /// Time to receive a request's body.
    #[serde(default = "d_body_read")]
    pub body_read_ms: u64,
    /// Time for the whole request, after which it answers 504 `deadline_exceeded`.
    #[serde(default = "d_request")]
    pub request_ms: u64,
    /// How long a keep-alive connection may sit idle between requests before it is closed
    /// (longer than a load balancer's own idle timeout, so the balancer closes first).
    #[serde(default = "d_keepalive_idle")]
    pub keepalive_idle_ms: u64,
    /// How long a graceful shutdown waits for requests in flight.
    #[serde(default = "d_shutdown")]
    pub shutdown_grace_ms: u64,
}

fn d_header() -> u64 {
    10_000
}
fn d_body_read() -> u64 {
    10_000
}
fn d_request() -> u64 {
    30_000
}
fn d_keepalive_idle() -> u64 {
    120_000
}
fn d_shutdown() -> u64 {
    10_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read_ms: d_header(),
            body_read_ms: d_body_read(),
            request_ms: d_request(),
            keepalive_idle_ms: d_keepalive_idle(),
            shutdown_grace_ms: d_shutdown(),
        }
    }
}
