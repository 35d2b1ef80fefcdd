//! The tier policy this replica serves, and how it follows the database without a restart.
//!
//! The cluster's policy is a sequence of versions in the database (`policy_versions`): the
//! config file's `[tiers]` and `[policy]` seed version 1 of an empty database and are not
//! read again; later versions come from `policy apply`. Every replica polls the highest
//! version every `[policy] refresh_ms` and swaps it in; requests read the current snapshot
//! without a lock or a query (as [`crate::domain::tokens`] does for tokens).
//!
//! Mixed versions are safe because of three rules (docs/policy-and-migration.md, "Mixed versions"): reads
//! never consult the policy (a stored version names the backend that wrapped it); a replica
//! that meets a tier it does not serve reads the database's head before refusing, so a
//! replica one version behind never refuses a write placed under the newer one; and an apply
//! never removes a tier an account is in, so a replica one version ahead never meets an
//! account whose tier it lost.

use crate::domain::audit::{Auditor, Event};
use arc_swap::ArcSwap;
use shardgate_policy::{Placement, Policy, PolicyDocument, PolicyError};
use shardgate_store::{PolicyVersionRecord, Store, StoreError};
use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// One policy version, validated against this replica's backends.
#[derive(Debug)]
pub struct Served {
    /// Its version number (1, 2, ...).
    pub version: i64,
    /// Hex SHA-256 of its canonical document.
    pub digest: String,
    /// The rules as written.
    pub document: PolicyDocument,
    /// The rules, validated.
    pub policy: Policy,
}

/// Why a stored version cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The database could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored document is not a policy document.
    #[error("policy version {version} in the database is not a policy document: {error}")]
    Malformed {
        /// The version.
        version: i64,
        /// What the parser said.
        error: String,
    },
    /// The stored rules do not hold on this replica (a backend it does not configure).
    #[error("policy version {version} in the database does not hold on this gateway: {error}")]
    Invalid {
        /// The version.
        version: i64,
        /// The first problem.
        error: PolicyError,
    },
}

impl Served {
    /// Validate a stored version against `backends`.
    pub fn from_record(
        record: &PolicyVersionRecord,
        backends: &BTreeSet<String>,
    ) -> Result<Self, LoadError> {
        let document: PolicyDocument =
            serde_json::from_str(&record.document).map_err(|e| LoadError::Malformed {
                version: record.version,
                error: e.to_string(),
            })?;
        let policy = document
            .build(backends)
            .map_err(|error| LoadError::Invalid {
                version: record.version,
                error,
            })?;
        Ok(Self {
            version: record.version,
            digest: document.digest(),
            document,
            policy,
        })
    }
}

/// The policy this replica serves: swapped whole when a newer version is read.
pub struct ServedPolicy {
    current: ArcSwap<Served>,
    backends: BTreeSet<String>,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for ServedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedPolicy")
            .field("version", &self.version())
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

impl ServedPolicy {
    /// Serve `served`, later versions read from `store` and validated against `backends`.
    pub fn new(served: Served, backends: BTreeSet<String>, store: Arc<dyn Store>) -> Self {
        crate::domain::metrics::policy_version(served.version);
        Self {
            current: ArcSwap::from_pointee(served),
            backends,
            store,
        }
    }

    /// The snapshot being served.
    pub fn current(&self) -> Arc<Served> {
        self.current.load_full()
    }

    /// The version being served.
    pub fn version(&self) -> i64 {
        self.current.load().version
    }

    /// The configured backend names every version is validated against.
    pub fn backends(&self) -> &BTreeSet<String> {
        &self.backends
    }

    /// Where the served version places new versions of `account` in `tier`.
    pub fn place(&self, account: &str, tier: &str) -> Result<Placement, PolicyError> {
        self.current.load().policy.place(account, tier)
    }

    /// [`ServedPolicy::place`], but a tier the served version does not know first makes
    /// this replica read the database's head (it may be a version behind): the rule that
    /// lets a replica on N-1 take a write placed under N.
    pub async fn place_fresh(&self, account: &str, tier: &str) -> Result<Placement, PolicyError> {
        match self.place(account, tier) {
            Err(PolicyError::UnknownTier(_)) => {
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "policy: reading the database's version failed");
                }
                self.place(account, tier)
            }
            placed => placed,
        }
    }

    /// Serve the database's highest version if it is newer than the served one: `Some(its
    /// number)` when it was swapped in. A version that does not hold here is an error and
    /// the served one stays.
    pub async fn refresh(&self) -> Result<Option<i64>, LoadError> {
        let served = self.version();
        match self.store.policy_head().await? {
            Some(head) if head > served => {}
            _ => return Ok(None),
        }
        let Some(record) = self.store.policy_version(None).await? else {
            return Ok(None);
        };
        self.adopt(&record).map(Some)
    }

    /// Serve `record` unless a newer version is already served: what an apply does with the
    /// version it committed, without waiting for the next poll.
    pub fn adopt(&self, record: &PolicyVersionRecord) -> Result<i64, LoadError> {
        let next = Arc::new(Served::from_record(record, &self.backends)?);
        let before = self.current.rcu(|cur| {
            if cur.version >= next.version {
                cur.clone()
            } else {
                next.clone()
            }
        });
        if before.version < next.version {
            crate::domain::metrics::policy_version(next.version);
            tracing::info!(
                version = next.version,
                previous = before.version,
                "policy: serving a new version"
            );
        }
        Ok(next.version)
    }

    /// Poll the database every `every` (zero: never) while the policy is alive.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) {
        if every.is_zero() {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(policy) = weak.upgrade() else { return };
                if let Err(e) = policy.refresh().await {
                    tracing::warn!(
                        error = %e,
                        version = policy.version(),
                        "policy: reading the database's version failed; the served version stays"
                    );
                }
            }
        });
    }
}

/// What start-up found: the version to serve, and whether the config file's rules differ
/// from it (they seed an empty database only).
#[derive(Debug)]
pub struct Loaded {
    /// The version to serve.
    pub served: Served,
    /// `true` when this start committed version 1 from the config file.
    pub seeded: bool,
    /// The rules of the config file that differ from the served version (empty: none).
    pub config_differs: Vec<shardgate_policy::RuleChange>,
}

/// The record of `document` as version `version`.
pub fn record_of(document: &PolicyDocument, version: i64, by: &str) -> PolicyVersionRecord {
    PolicyVersionRecord {
        version,
        document: document.canonical_json(),
        digest: document.digest(),
        created_ms: crate::now_ms(),
        created_by: by.to_string(),
    }
}

/// Append `record` as the next version with `event` in the same transaction, holding this
/// process's audit chain. `Conflict` when another apply committed that version first.
pub async fn append_audited(
    store: &dyn Store,
    audit: &Auditor,
    record: &PolicyVersionRecord,
    event: &Event,
) -> Result<(), StoreError> {
    let mut guard = audit
        .lock()
        .await
        .map_err(|e| StoreError::AuditUnavailable(e.to_string()))?;
    let sealed = guard.begin(event);
    let result = store.append_policy_version(record, Some(&sealed)).await;
    guard.finish(Some(&sealed), &result).await;
    result
}

/// The database's highest version, or (on an empty table) `config` committed as version 1.
/// Two replicas seeding at once: one commits, the other serves
/// what it committed.
pub async fn load_or_seed(
    store: &dyn Store,
    config: &PolicyDocument,
    backends: &BTreeSet<String>,
) -> Result<Loaded, LoadError> {
    let mut seeded = false;
    let record = match store.policy_version(None).await? {
        Some(record) => record,
        None => {
            // Not an audit event: no caller asked for it, and the row itself (append-only,
            // `created_by = config seed`, its time and digest) is the record.
            let record = record_of(config, 1, "config seed");
            match store.append_policy_version(&record, None).await {
                Ok(()) => {
                    seeded = true;
                    record
                }
                Err(StoreError::Conflict { .. }) => store
                    .policy_version(None)
                    .await?
                    .ok_or_else(|| StoreError::Internal("policy version 1 vanished".into()))?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let served = Served::from_record(&record, backends)?;
    let config_differs = config.changes_from(&served.document);
    Ok(Loaded {
        served,
        seeded,
        config_differs,
    })
}
