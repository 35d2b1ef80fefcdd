//! The budget of authentication refusals per client address (issue 25): without it, every
//! request with a bad token costs an audit row and a log line, so an unauthenticated flood
//! could grow the audit table and the log without bound and crowd out the readers.
//!
//! Only a refusal charges an address: requests that authenticate are never counted nor
//! limited, so clients with valid tokens behind one load balancer (one address) keep being
//! served while someone floods through it. Each address (an IPv6 address's /64, which one
//! host usually holds whole) may cause `[limits] refusals_per_peer` refusals per
//! `refusal_window_secs`, each audited as before; past it the address's refused requests
//! answer 429 `rate_limited` with `Retry-After` (the rest of the window) and are neither
//! audited nor logged one by one: when the window ends, ONE `auth` event (outcome
//! `rate_limited`) and one warning say "N refusals from ADDR in W s". A flood thus costs at
//! most `refusals_per_peer + 1` audit rows per address and window.
//!
//! Answers past the budget are held back `refusal_delay_ms` before they are sent (as
//! PostgreSQL's `auth_delay` does; [`RefusalLimiter::hold`]): without it, a flood whose
//! clients wait for each answer is as fast as their CPU, and on a shared machine that CPU is
//! the readers'. At most `max_delayed_refusals` answers are held at once (each holds its
//! connection); past that an answer goes out at once and closes its connection, so holding
//! cannot pin every connection slot either. The 414 of an over-long target is charged to the
//! same budget (it is a refusal too), so a flood of those is held back the same way.
//!
//! Memory is bounded: at most [`MAX_TRACKED_PEERS`] addresses are tracked; refusals from
//! further addresses share one overflow entry (with one budget), so a flood from many
//! addresses cannot grow the table either. Ended windows are swept every half window.

use crate::domain::audit::{Auditor, Event};
use crate::http::settings::Limits;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most addresses tracked at once (about 100 bytes each).
pub const MAX_TRACKED_PEERS: usize = 16_384;

/// Who a refusal is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// An IPv4 address, or an IPv6 address's /64 (the rest zeroed).
    Addr(IpAddr),
    /// Every address past [`MAX_TRACKED_PEERS`].
    Overflow,
}

impl Peer {
    /// The key of a client address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Peer::Addr(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Peer::Addr(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                    Peer::Addr(IpAddr::V6(net))
                }
            },
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Addr(IpAddr::V6(a)) => write!(f, "{a}/64"),
            Peer::Addr(a) => write!(f, "{a}"),
            Peer::Overflow => f.write_str("untracked addresses (table full)"),
        }
    }
}

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the budget: answer 401 and audit it as usual.
    Audit,
    /// Past the budget: answer 429 with `Retry-After: retry_after_secs`, no event of its own.
    Limited {
        /// Seconds until the address's window ends.
        retry_after_secs: u32,
    },
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    refusals: u64,
    limited: u64,
}

/// A window that ended with refusals past the budget: its aggregated event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The address.
    pub peer: Peer,
    /// Refusals in the window.
    pub refusals: u64,
    /// Of which answered 429 without an event of their own.
    pub limited: u64,
}

/// How an answer past the budget is sent ([`RefusalLimiter::hold`]).
#[derive(Debug)]
pub enum Hold {
    /// At once (holding is off).
    Now,
    /// After the delay; the slot is held until [`Held`] drops.
    Delay(Held, Duration),
    /// At once, closing the connection: every slot is taken.
    Close,
}

/// One answer being held back: counted in `shardgate_refusals_held` while it lives.
#[derive(Debug)]
pub struct Held {
    _slot: OwnedSemaphorePermit,
}

impl Held {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("shardgate_refusals_held").increment(1.0);
        Self { _slot: permit }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics::gauge!("shardgate_refusals_held").decrement(1.0);
    }
}

/// The refusal windows of every tracked address.
#[derive(Debug)]
pub struct RefusalLimiter {
    budget: u64,
    window: Duration,
    max_peers: usize,
    windows: Mutex<HashMap<Peer, Window>>,
    audit: Option<Arc<Auditor>>,
    delay: Duration,
    slots: Arc<Semaphore>,
}

impl RefusalLimiter {
    /// The budget `[limits]` asks for, aggregated events written to `audit`, with the sweeper
    /// running; `None` when `refusals_per_peer` is 0 (off).
    pub fn start(limits: &Limits, audit: Arc<Auditor>) -> Option<Arc<Self>> {
        if limits.refusals_per_peer == 0 {
            return None;
        }
        let window = Duration::from_secs(limits.refusal_window_secs.max(1));
        let mut me = Self::new(limits.refusals_per_peer, window, MAX_TRACKED_PEERS).with_hold(
            Duration::from_millis(limits.refusal_delay_ms),
            limits.max_delayed_refusals,
        );
        me.audit = Some(audit);
        let me = Arc::new(me);
        tokio::spawn(sweeper(Arc::downgrade(&me), window));
        Some(me)
    }

    /// A limiter without an auditor or a sweeper (unit tests).
    pub fn new(budget: u32, window: Duration, max_peers: usize) -> Self {
        Self {
            budget: u64::from(budget),
            window,
            max_peers,
            windows: Mutex::new(HashMap::new()),
            audit: None,
            delay: Duration::ZERO,
            slots: Arc::new(Semaphore::new(1)),
        }
    }

    /// Hold answers past the budget back `delay`, at most `max_held` at once.
    pub fn with_hold(mut self, delay: Duration, max_held: usize) -> Self {
        self.delay = delay;
        self.slots = Arc::new(Semaphore::new(max_held.max(1)));
        self
    }

    /// How to send one answer past the budget: after the delay while a slot is free, at once
    /// with its connection closed when none is.
    pub fn hold(&self) -> Hold {
        if self.delay.is_zero() {
            return Hold::Now;
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Hold::Delay(Held::new(permit), self.delay),
            Err(_) => {
                metrics::counter!("shardgate_refusals_closed_total").increment(1);
                Hold::Close
            }
        }
    }

    /// Charge one refusal to `ip` at `now`.
    pub fn charge(&self, ip: IpAddr, now: Instant) -> Verdict {
        let (verdict, ended) = self.charge_inner(Peer::of(ip), now);
        if let Some(e) = ended {
            self.report(e);
        }
        verdict
    }

    fn charge_inner(&self, peer: Peer, now: Instant) -> (Verdict, Option<Ended>) {
        let Ok(mut windows) = self.windows.lock() else {
            // A panic while holding the lock: refuse quietly rather than audit every one.
            return (
                Verdict::Limited {
                    retry_after_secs: 1,
                },
                None,
            );
        };
        let peer = if windows.len() >= self.max_peers && !windows.contains_key(&peer) {
            Peer::Overflow
        } else {
            peer
        };
        let fresh = Window {
            started: now,
            refusals: 0,
            limited: 0,
        };
        let w = windows.entry(peer).or_insert(fresh);
        let mut ended = None;
        if now.saturating_duration_since(w.started) >= self.window {
            let old = std::mem::replace(w, fresh);
            ended = (old.limited > 0).then_some(Ended {
                peer,
                refusals: old.refusals,
                limited: old.limited,
            });
        }
        w.refusals += 1;
        if w.refusals <= self.budget {
            return (Verdict::Audit, ended);
        }
        w.limited += 1;
        let left = (w.started + self.window).saturating_duration_since(now);
        let secs = u32::try_from(left.as_millis().div_ceil(1000)).unwrap_or(u32::MAX);
        (
            Verdict::Limited {
                retry_after_secs: secs.max(1),
            },
            ended,
        )
    }

    /// Remove the windows that ended by `now`; the ones with limited refusals are returned
    /// (and, with an auditor, written as aggregated events).
    pub fn sweep(&self, now: Instant) -> Vec<Ended> {
        let mut ended = Vec::new();
        if let Ok(mut windows) = self.windows.lock() {
            windows.retain(|peer, w| {
                let over = now.saturating_duration_since(w.started) >= self.window;
                if over && w.limited > 0 {
                    ended.push(Ended {
                        peer: *peer,
                        refusals: w.refusals,
                        limited: w.limited,
                    });
                }
                !over
            });
        }
        for e in &ended {
            self.report(*e);
        }
        ended
    }

    /// Addresses tracked now (the overflow entry included).
    pub fn tracked(&self) -> usize {
        self.windows.lock().map_or(0, |w| w.len())
    }

    /// One aggregated event and one warning for a window that went past its budget.
    fn report(&self, e: Ended) {
        let secs = self.window.as_secs();
        let detail = format!(
            "{} refusals from {} in {secs} s; {} of them past the budget, answered 429 rate_limited (414 for over-long targets) without an event of their own",
            e.refusals, e.peer, e.limited
        );
        metrics::counter!("shardgate_auth_refusals_limited_total").increment(e.limited);
        tracing::warn!(peer = %e.peer, refusals = e.refusals, limited = e.limited, window_secs = secs,
            "authentication refusals past the per-address budget");
        if let Some(audit) = &self.audit {
            let id = uuid::Uuid::new_v4().to_string();
            let mut ev = Event::new(&id, "anonymous", "auth").detail(detail);
            ev.outcome = crate::http::error::ErrorCode::RateLimited
                .as_str()
                .to_string();
            audit.record_detached(ev);
        }
    }
}

async fn sweeper(limiter: Weak<RefusalLimiter>, window: Duration) {
    let mut tick = tokio::time::interval((window / 2).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(l) = limiter.upgrade() else { break };
        l.sweep(Instant::now());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn budget_then_limited_then_one_aggregate_per_window() {
        let l = RefusalLimiter::new(3, Duration::from_secs(10), 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.charge(ip("192.0.2.1"), t0), Verdict::Audit);
        }
        for _ in 0..50 {
            assert_eq!(
                l.charge(ip("192.0.2.1"), t0 + Duration::from_millis(2500)),
                Verdict::Limited {
                    retry_after_secs: 8
                }
            );
        }
        // Another address has its own budget.
        assert_eq!(l.charge(ip("192.0.2.2"), t0), Verdict::Audit);
        assert!(l.sweep(t0 + Duration::from_secs(5)).is_empty());
        let ended = l.sweep(t0 + Duration::from_secs(10));
        assert_eq!(
            ended,
            vec![Ended {
                peer: Peer::of(ip("192.0.2.1")),
                refusals: 53,
                limited: 50
            }]
        );
        assert_eq!(l.tracked(), 0);
        // A new window, a new budget.
        assert_eq!(
            l.charge(ip("192.0.2.1"), t0 + Duration::from_secs(11)),
            Verdict::Audit
        );
    }

    #[test]
    fn the_table_is_bounded_and_overflow_shares_one_budget() {
        let l = RefusalLimiter::new(2, Duration::from_secs(10), 8);
        let t0 = Instant::now();
        let mut limited = 0;
        for i in 0..1000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if l.charge(a, t0) != Verdict::Audit {
                limited += 1;
            }
        }
        assert!(l.tracked() <= 9, "{} tracked", l.tracked());
        // 8 tracked addresses once each, then the overflow entry's budget of 2.
        assert_eq!(limited, 1000 - 8 - 2);
    }

    #[tokio::test]
    async fn answers_are_held_while_slots_last_then_sent_at_once_closing() {
        let l = RefusalLimiter::new(1, Duration::from_secs(10), 8);
        assert!(matches!(l.hold(), Hold::Now), "no delay: at once");
        let l = l.with_hold(Duration::from_millis(700), 2);
        let (Hold::Delay(a, d), Hold::Delay(b, _)) = (l.hold(), l.hold()) else {
            panic!("two slots, two held answers");
        };
        assert_eq!(d, Duration::from_millis(700));
        assert!(matches!(l.hold(), Hold::Close), "every slot taken");
        drop(a);
        assert!(matches!(l.hold(), Hold::Delay(..)), "a slot freed");
        drop(b);
    }

    #[test]
    fn ipv6_is_charged_per_64_and_mapped_v4_as_v4() {
        assert_eq!(
            Peer::of(ip("2001:db8:1:2:aaaa::1")),
            Peer::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            Peer::of(ip("2001:db8:1:2::1")),
            Peer::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(Peer::of(ip("::ffff:192.0.2.1")), Peer::of(ip("192.0.2.1")));
        assert_eq!(Peer::of(ip("2001:db8::1")).to_string(), "2001:db8::/64");
    }
}
