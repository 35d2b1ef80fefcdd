//! The priority class of a backend call, carried from the use case that makes it to the
//! bulkhead that admits it ([`crate::domain::breaker`]), which honours it only when the
//! backend is contended (issue 30, item 3).
//!
//! A use case runs its backend calls inside [`scoped`]: a write knows its class (it placed the
//! account by its tier), a migration job's re-wraps are `bulk`, and a read names its accounts,
//! whose class is looked up only if the bulkhead has no free slot: a read does not load its
//! account, and an uncontended call must not pay a query for a class nobody asks for. The
//! lookup reads the served policy (an account's own class wins and needs no query) and the
//! account's tier, cached for [`TIER_TTL`] in a bounded map.

use crate::domain::policy::ServedPolicy;
use shardgate_policy::Class;
use shardgate_store::Store;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a looked-up tier is trusted: a tier change reaches the class within this.
pub const TIER_TTL: Duration = Duration::from_secs(5);

/// Accounts whose tier is cached at most; past it the map starts over (bounded memory).
const MAX_CACHED: usize = 65_536;

/// How the class of the calls in a scope is known.
#[derive(Clone)]
pub enum Ask {
    /// Known when the call is made.
    Known(Class),
    /// The accounts a read serves: the lowest class among them, looked up on contention, so
    /// a batch cannot raise its low-class items by adding one critical item.
    Accounts(Arc<Classes>, Arc<[String]>),
}

tokio::task_local! {
    static ASK: Ask;
}

/// Run `f` with its backend calls admitted as `ask` says.
pub async fn scoped<F: Future>(ask: Ask, f: F) -> F::Output {
    ASK.scope(ask, f).await
}

/// The class of the backend call running now: `standard` outside every scope (the breaker's
/// probe, health checks).
pub async fn current() -> Class {
    match ASK.try_with(Ask::clone) {
        Err(_) => Class::Standard,
        Ok(Ask::Known(c)) => c,
        Ok(Ask::Accounts(classes, accounts)) => classes.lowest(&accounts).await,
    }
}

/// Looks up accounts' classes: the served policy, and each account's tier (cached).
pub struct Classes {
    store: Arc<dyn Store>,
    policy: Arc<ServedPolicy>,
    tiers: Mutex<HashMap<String, (String, Instant)>>,
}

impl Classes {
    /// Over this replica's store and served policy.
    pub fn new(store: Arc<dyn Store>, policy: Arc<ServedPolicy>) -> Arc<Self> {
        Arc::new(Self {
            store,
            policy,
            tiers: Mutex::new(HashMap::new()),
        })
    }

    /// The lowest class among `accounts` (`standard` for none).
    pub async fn lowest(&self, accounts: &[String]) -> Class {
        let mut lowest: Option<Class> = None;
        for a in accounts {
            let c = self.of(a).await;
            lowest = Some(lowest.map_or(c, |l| l.min(c)));
            if lowest == Some(Class::Bulk) {
                break;
            }
        }
        lowest.unwrap_or(Class::Standard)
    }

    /// The class of one account. An account the store cannot name now (gone, or the store
    /// failing) is `standard`: the class only orders admission, it never refuses.
    pub async fn of(&self, account: &str) -> Class {
        let served = self.policy.current();
        if let Some(c) = served.policy.account_class(account) {
            return c;
        }
        match self.tier_of(account).await {
            Some(tier) => served.policy.class_of(account, &tier),
            None => Class::Standard,
        }
    }

    async fn tier_of(&self, account: &str) -> Option<String> {
        let now = Instant::now();
        if let Some((tier, at)) = self.cache().get(account) {
            if now.duration_since(*at) < TIER_TTL {
                return Some(tier.clone());
            }
        }
        let record = self.store.get_account(account).await.ok().flatten()?;
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(account.to_string(), (record.tier.clone(), now));
        Some(record.tier)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        // A panic while holding it leaves a usable map: take it anyway.
        self.tiers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scope_s_known_class_is_current_and_outside_every_scope_it_is_standard() {
        assert_eq!(current().await, Class::Standard);
        let inner = scoped(Ask::Known(Class::Bulk), async { current().await }).await;
        assert_eq!(inner, Class::Bulk);
        assert_eq!(current().await, Class::Standard);
    }
}
