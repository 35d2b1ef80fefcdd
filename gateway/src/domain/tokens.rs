//! The set of tokens a gateway accepts, and how it changes without a restart: tokens from
//! the config file (and the embedded default's admin token file) plus tokens kept in the
//! database, minus revoked ids, reloaded from the database every `[auth] refresh_ms` and at
//! once on SIGHUP. Requests read the current snapshot without a lock or a database query.

use crate::domain::audit::AuditKey;
use crate::domain::auth::{Authenticator, TokenEntry};
use arc_swap::ArcSwap;
use shardgate_store::{Store, StoreError};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// The accepted tokens of this process.
pub struct Tokens {
    from_config: Vec<TokenEntry>,
    store: Arc<dyn Store>,
    key: Arc<AuditKey>,
    current: ArcSwap<Authenticator>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("from_config", &self.from_config.len())
            .field("current", &self.current.load().len())
            .finish()
    }
}

/// What one reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Tokens known (config and database).
    pub tokens: usize,
    /// Revoked ids.
    pub revoked: usize,
}

impl Tokens {
    /// Load the database's tokens and revocations once; fails when the database cannot be
    /// read (a gateway never starts with a partial view of revocations).
    pub async fn load(
        from_config: Vec<TokenEntry>,
        store: Arc<dyn Store>,
        key: Arc<AuditKey>,
    ) -> Result<Self, StoreError> {
        let tokens = Self {
            current: ArcSwap::from_pointee(Authenticator::new(Vec::new())),
            from_config,
            store,
            key,
        };
        tokens.refresh().await?;
        Ok(tokens)
    }

    /// The snapshot requests are checked against.
    pub fn current(&self) -> arc_swap::Guard<Arc<Authenticator>> {
        self.current.load()
    }

    /// Re-read the database's tokens and revocations and swap them in. On error the
    /// previous snapshot stays (a revocation already seen is never forgotten).
    pub async fn refresh(&self) -> Result<Loaded, StoreError> {
        let rows = self.store.tokens().await?;
        let revoked: HashSet<String> = self
            .store
            .token_revocations()
            .await?
            .into_iter()
            .map(|r| r.token_id)
            .collect();
        let mut entries = self.from_config.clone();
        for t in rows {
            match TokenEntry::new(&t.name, &t.sha256, &t.scopes, t.account_prefix.clone()) {
                Some(e) => entries.push(e.expiring(t.expires_ms)),
                // A row the gateway cannot parse grants nothing; say which, not what.
                None => tracing::warn!(token_id = %t.token_id, "ignoring an invalid stored token"),
            }
        }
        let loaded = Loaded {
            tokens: entries.len(),
            revoked: revoked.len(),
        };
        self.current.store(Arc::new(Authenticator::with_revocations(
            entries,
            &revoked,
            Some(self.key.clone()),
        )));
        metrics::gauge!("shardgate_tokens_known").set(loaded.tokens as f64);
        metrics::gauge!("shardgate_tokens_revoked").set(loaded.revoked as f64);
        Ok(loaded)
    }

    /// Reload every `every` (none when zero) and on each SIGHUP, until the process ends.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut hup = hangups();
            let mut tick = (!every.is_zero()).then(|| {
                let mut t = tokio::time::interval(every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                let why = tokio::select! {
                    () = next_tick(&mut tick) => "interval",
                    Some(()) = next_hangup(&mut hup) => "SIGHUP",
                };
                let Some(tokens) = weak.upgrade() else { return };
                match tokens.refresh().await {
                    Ok(l) if why == "SIGHUP" => tracing::info!(
                        tokens = l.tokens,
                        revoked = l.revoked,
                        "tokens reloaded on SIGHUP"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(
                        error = %e,
                        "token reload failed; the previous tokens and revocations stay in force"
                    ),
                }
            }
        });
    }
}

async fn next_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangups() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangups() -> Hangups {
    None
}

#[cfg(unix)]
async fn next_hangup(h: &mut Hangups) -> Option<()> {
    match h {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) -> Option<()> {
    std::future::pending().await
}
