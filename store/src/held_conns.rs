//! Connections kept for hot single statements outside any transaction, reused without
//! sqlx's release ping.
//!
//! sqlx tests every pooled connection as it goes back to its pool with a round trip to the
//! server (`Sync` / `ReadyForQuery`), whatever the connection did. For the hot one-statement
//! reads (a GET's select, a write's account read) and the reads' batched audit insert (one
//! autocommit statement) that round trip costs nearly as much as the statement: the bench's
//! GET profile showed `return_to_pool` + `ping` at 12-13% of the gateway's CPU, beside the
//! server's wake-up to answer it. The ping is there for connections left in an unknown state
//! (a future dropped mid-query, an error); a statement that ran to completion leaves none, so
//! its connection goes straight back to a short list kept here.
//!
//! The connections kept here are taken from the pool and detached from it (the pool may open
//! others in their place), so they never starve the pool's transactions: the store opens at
//! most `max_connections` for the pool plus `cap` kept here. When `cap` are out, further
//! statements use the pool as usual.
//! - A connection whose statement did not complete (the caller's future was dropped, or an
//!   I/O, protocol or decoding error) is closed, never reused; after an error the server
//!   answered (a constraint, a cancelled statement) it is ready for the next and kept.
//! - A connection idle here for [`IDLE_PING_AFTER`] is pinged before use, as the pool's own
//!   `before_acquire` does; one that fails its ping is closed and replaced.
//! - A connection kept for [`REPLACE_AFTER`] is closed after its next statement and replaced
//!   (what the pool's `max_lifetime` does for its own).
//!
//! Whether it still pays is measured, not assumed: `[store] held_connections = false` sends
//! every statement through the pool, and `scripts/bench.sh --only compare --baseline-env
//! SHARDGATE_STORE__HELD_CONNECTIONS=false` compares the two in one run (BENCHMARKS.md; after
//! the store split of issue 27: GET local 1.34x req/s at 0.75x gateway CPU per request, PUT
//! 1.20x). The seam to sqlx is small and public: `PoolConnection::detach`, `Connection::ping`
//! and `PgConnection`; the tests below pin what an upgrade could change (reuse, the cap, a
//! statement dropped midway, errors, the idle ping) and run in CI.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Connection, Postgres};

/// A connection idle here this long is pinged before its next statement.
pub(crate) const IDLE_PING_AFTER: Duration = Duration::from_secs(1);

/// A connection kept this long is closed after its next statement and replaced.
pub(crate) const REPLACE_AFTER: Duration = Duration::from_secs(300);

struct Kept {
    conn: PgConnection,
    opened_at: Instant,
    idle_since: Instant,
}

/// The kept connections of one pool.
pub(crate) struct HeldConns {
    pool: PgPool,
    idle: Mutex<Vec<Kept>>,
    /// Connections kept here, idle or out: at most `cap`.
    open: AtomicUsize,
    cap: usize,
}

impl std::fmt::Debug for HeldConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldConns")
            .field("cap", &self.cap)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

enum Slot {
    Kept {
        conn: PgConnection,
        opened_at: Instant,
    },
    Pooled(PoolConnection<Postgres>),
}

impl HeldConns {
    /// Keep at most `cap` connections opened from `pool` (0: every read uses the pool).
    pub(crate) fn new(pool: PgPool, cap: usize) -> Self {
        Self {
            pool,
            idle: Mutex::new(Vec::with_capacity(cap)),
            open: AtomicUsize::new(0),
            cap,
        }
    }

    /// How many connections may be kept here.
    #[cfg(test)]
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// A connection for one statement: a kept one (pinged first if it sat idle), a new kept
    /// one, or (with `cap` out) one of the pool's. Hand the statement's result to
    /// [`HeldConn::finish`].
    pub(crate) async fn get(&self) -> Result<HeldConn<'_>, sqlx::Error> {
        while let Some(kept) = self.pop() {
            let idle_for = kept.idle_since.elapsed();
            // Out (not completed) before the ping: a failed ping, or this future dropped
            // during it, closes the connection and frees its place.
            let mut out = self.out(Slot::Kept {
                conn: kept.conn,
                opened_at: kept.opened_at,
            });
            if idle_for < IDLE_PING_AFTER || out.conn().ping().await.is_ok() {
                return Ok(out);
            }
        }
        if self.open.fetch_add(1, Ordering::AcqRel) < self.cap {
            let place = Place {
                open: &self.open,
                taken: false,
            };
            let conn = self.pool.acquire().await?;
            place.take();
            return Ok(self.out(Slot::Kept {
                conn: conn.detach(),
                opened_at: Instant::now(),
            }));
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        Ok(self.out(Slot::Pooled(self.pool.acquire().await?)))
    }

    fn out(&self, slot: Slot) -> HeldConn<'_> {
        HeldConn {
            slot: Some(slot),
            home: self,
            completed: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        // A poisoned lock only means another thread panicked while pushing or popping: the
        // Vec itself is intact.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pop(&self) -> Option<Kept> {
        self.lock().pop()
    }

    /// Close a kept connection (a graceful `Terminate` on the runtime when there is one) and
    /// free its place.
    fn close(&self, conn: PgConnection) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        close_detached(conn);
    }
}

fn close_detached(conn: PgConnection) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            // The server ends the session either way; nothing to do about an error here.
            let _ = conn.close().await;
        });
    } else {
        drop(conn);
    }
}

impl Drop for HeldConns {
    fn drop(&mut self) {
        let idle = std::mem::take(
            self.idle
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for kept in idle {
            close_detached(kept.conn);
        }
    }
}

/// A place among the `cap` reserved for a connection being opened: freed again unless taken
/// (the open failed, or the caller's future was dropped while it waited).
struct Place<'a> {
    open: &'a AtomicUsize,
    taken: bool,
}

impl Place<'_> {
    fn take(mut self) {
        self.taken = true;
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.taken {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One connection out of [`HeldConns`] for one statement.
pub(crate) struct HeldConn<'a> {
    slot: Option<Slot>,
    home: &'a HeldConns,
    completed: bool,
}

impl HeldConn<'_> {
    /// The connection, to run the statement on.
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        match self.slot.as_mut() {
            Some(Slot::Kept { conn, .. }) => conn,
            Some(Slot::Pooled(conn)) => conn,
            // `slot` is only taken in `drop`.
            None => unreachable_conn(),
        }
    }

    /// Done with the statement that gave `result`: reusable after a success or an error the
    /// server answered (a constraint, a cancelled statement: the exchange ended with the
    /// server ready for the next); closed after anything else (I/O, protocol, decoding).
    pub(crate) fn finish<T>(mut self, result: &Result<T, sqlx::Error>) {
        self.completed = matches!(result, Ok(_) | Err(sqlx::Error::Database(_)));
    }
}

#[cold]
#[allow(clippy::panic)] // Only reachable if `conn` were called after `drop`, which Rust forbids.
fn unreachable_conn() -> ! {
    panic!("held connection used after release")
}

impl Drop for HeldConn<'_> {
    fn drop(&mut self) {
        match self.slot.take() {
            None => {}
            Some(Slot::Pooled(conn)) => release_pooled(conn),
            Some(Slot::Kept { conn, opened_at }) => {
                if self.completed
                    && !conn.is_in_transaction()
                    && opened_at.elapsed() < REPLACE_AFTER
                {
                    self.home.lock().push(Kept {
                        conn,
                        opened_at,
                        idle_since: Instant::now(),
                    });
                } else {
                    self.home.close(conn);
                }
            }
        }
    }
}

/// Give a connection back to sqlx's pool. Its drop handler spawns the release on the current
/// tokio runtime and panics without one: then the connection is closed instead.
fn release_pooled(conn: PoolConnection<Postgres>) {
    if tokio::runtime::Handle::try_current().is_ok() {
        drop(conn);
    } else {
        drop(conn.leak());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use sqlx::postgres::PgPoolOptions;

    /// A pool on the test database; `None` (after a loud notice) without
    /// `SHARDGATE_TEST_DATABASE_URL` outside CI.
    async fn pool(max: u32) -> Option<PgPool> {
        let url = crate::test_db::url("held connection test")?;
        Some(
            PgPoolOptions::new()
                .max_connections(max)
                .test_before_acquire(false)
                .connect(&url)
                .await
                .unwrap(),
        )
    }

    async fn backend_pid(held: &HeldConns) -> i32 {
        let mut c = held.get().await.unwrap();
        let pid = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(c.conn())
            .await;
        c.finish(&pid);
        pid.unwrap()
    }

    fn held_count(held: &HeldConns) -> usize {
        held.idle.lock().unwrap().len()
    }

    fn open_count(held: &HeldConns) -> usize {
        held.open.load(Ordering::Acquire)
    }

    #[tokio::test]
    async fn a_completed_read_keeps_its_connection_for_the_next() {
        let Some(pool) = pool(4).await else { return };
        let held = HeldConns::new(pool.clone(), 2);
        let first = backend_pid(&held).await;
        assert_eq!(held_count(&held), 1);
        for _ in 0..5 {
            assert_eq!(backend_pid(&held).await, first);
        }
        assert_eq!(open_count(&held), 1);
        // Detached: the pool does not count it, and may open others in its place.
        assert_eq!(pool.size(), 0);
    }

    #[tokio::test]
    async fn kept_connections_never_starve_the_pool() {
        let Some(pool) = pool(2).await else { return };
        let held = HeldConns::new(pool.clone(), 2);
        let out = vec![held.get().await.unwrap(), held.get().await.unwrap()];
        for mut c in out {
            let r = sqlx::query("SELECT 1").execute(c.conn()).await;
            c.finish(&r);
            r.unwrap();
        }
        assert_eq!(held_count(&held), 2);
        // Both of the pool's own connections are still there for transactions.
        let a = tokio::time::timeout(Duration::from_secs(2), pool.begin())
            .await
            .expect("pool starved")
            .unwrap();
        let b = tokio::time::timeout(Duration::from_secs(2), pool.begin())
            .await
            .expect("pool starved")
            .unwrap();
        a.commit().await.unwrap();
        b.commit().await.unwrap();
    }

    #[tokio::test]
    async fn a_statement_dropped_midway_closes_its_connection() {
        let Some(pool) = pool(4).await else { return };
        let held = HeldConns::new(pool.clone(), 2);
        let pid = {
            let mut c = held.get().await.unwrap();
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(c.conn())
                .await
                .unwrap();
            let slow = sqlx::query("SELECT pg_sleep(2)").execute(c.conn());
            assert!(tokio::time::timeout(Duration::from_millis(100), slow)
                .await
                .is_err());
            pid
            // `c` dropped without `finish`.
        };
        assert_eq!(
            held_count(&held),
            0,
            "an interrupted connection is not kept"
        );
        assert_eq!(open_count(&held), 0, "its place is free again");
        let next = backend_pid(&held).await;
        assert_ne!(next, pid);
    }

    #[tokio::test]
    async fn an_error_the_server_answered_keeps_the_connection_other_errors_close_it() {
        let Some(pool) = pool(4).await else { return };
        let held = HeldConns::new(pool.clone(), 2);
        let first = backend_pid(&held).await;
        let mut c = held.get().await.unwrap();
        let r = sqlx::query("SELECT 1 / 0").execute(c.conn()).await;
        assert!(matches!(r, Err(sqlx::Error::Database(_))));
        c.finish(&r);
        assert_eq!(backend_pid(&held).await, first);
        let c = held.get().await.unwrap();
        c.finish(&Err::<(), _>(sqlx::Error::Protocol("lost track".into())));
        assert_eq!(held_count(&held), 0);
        assert_eq!(open_count(&held), 0);
        assert_ne!(backend_pid(&held).await, first);
    }

    #[tokio::test]
    async fn beyond_cap_reads_use_the_pool() {
        let Some(pool) = pool(6).await else { return };
        let held = HeldConns::new(pool.clone(), 2);
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(held.get().await.unwrap());
        }
        assert_eq!(open_count(&held), 2);
        for mut c in conns {
            let r = sqlx::query("SELECT 1").execute(c.conn()).await;
            c.finish(&r);
            r.unwrap();
        }
        assert_eq!(held_count(&held), 2);
        // The other two went back to sqlx's pool (its release runs in a spawned task).
        for _ in 0..50 {
            if pool.num_idle() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pool.num_idle(), 2);
    }

    #[tokio::test]
    async fn a_connection_killed_while_idle_is_replaced_after_its_ping() {
        let Some(pool) = pool(4).await else { return };
        let held = HeldConns::new(pool.clone(), 2);
        let first = backend_pid(&held).await;
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(first)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(killed);
        tokio::time::sleep(IDLE_PING_AFTER + Duration::from_millis(200)).await;
        let second = backend_pid(&held).await;
        assert_ne!(second, first);
        assert_eq!(open_count(&held), 1);
    }

    #[tokio::test]
    async fn cap_zero_holds_nothing() {
        let Some(pool) = pool(2).await else { return };
        let held = HeldConns::new(pool.clone(), 0);
        backend_pid(&held).await;
        assert_eq!(held_count(&held), 0);
        assert_eq!(open_count(&held), 0);
    }
}
