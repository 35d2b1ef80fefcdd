//! What the use cases share: the store, the backends behind their breakers and key
//! lifecycle, the policy, the tokens, the audit chain, and the settings of the shard-write and
//! migration use cases. Built once by the composition root (`crate::app::state`), cloned
//! cheaply into every request and job.

use super::settings::{IdempotencyConfig, MigrationConfig, RetentionConfig};
use crate::domain::audit::Auditor;
use crate::domain::breaker::Guarded;
use crate::domain::keys::KeyLifecycle;
use crate::domain::tokens::Tokens;
use shardgate_backends::KeyBackend;
use shardgate_store::Store;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The service state: one `Arc`, cloned into requests and jobs.
#[derive(Clone)]
pub struct Services(Arc<Parts>);

/// The parts of [`Services`].
pub struct Parts {
    /// The database.
    pub store: Arc<dyn Store>,
    /// Backend instances by name, each behind its breaker and bulkhead.
    pub backends: BTreeMap<String, Arc<dyn KeyBackend>>,
    /// The same instances' breakers (operator override, readiness).
    pub breakers: BTreeMap<String, Arc<Guarded>>,
    /// Operators' overrides of those breakers, shared by the cluster.
    pub overrides: Arc<crate::domain::overrides::Overrides>,
    /// Tier, pin and rollout rules: the cluster's policy version this replica serves.
    pub policy: Arc<crate::domain::policy::ServedPolicy>,
    /// Accounts' priority classes, looked up when a bulkhead is contended.
    pub classes: Arc<crate::domain::priority::Classes>,
    /// Token verification: the current tokens and revocations, reloaded without a restart.
    pub auth: Arc<Tokens>,
    /// This process's audit chain.
    pub audit: Arc<Auditor>,
    /// Key lifecycle: key states, wrap counters.
    pub keys: Arc<KeyLifecycle>,
    /// Migration settings.
    pub migration: MigrationConfig,
    /// How long after a policy apply a write placed by the version before it may still
    /// commit: `[policy] refresh_ms` (until every replica has polled the new version) plus
    /// `[timeouts] request_ms` (a write in flight then) plus a second for clocks. An apply's
    /// re-wrap jobs snapshot again once it has passed (`service::policy`).
    pub straggler_window_ms: u64,
    /// How long `Idempotency-Key` answers are replayed.
    pub idempotency: IdempotencyConfig,
    /// Versions kept per shard by default.
    pub retention: RetentionConfig,
    /// Dual control: which operations wait for a second credential.
    pub approvals: super::settings::ApprovalsConfig,
    /// Group commit of shard writes (PostgreSQL with `[store] group_writes`).
    pub write_groups: Option<super::write_group::WriteGroups>,
    /// This process's migration supervisor, once started (`serve` starts it; tests may).
    pub migrations: OnceLock<Arc<dyn JobRunner>>,
    /// The audit archive (search reads archived segments from it; the archiver writes it).
    pub archive: ArchiveRef,
}

/// The audit archive's sink, the prefix of its keys, and the audit key that checks what is
/// read back.
#[derive(Clone)]
pub struct ArchiveRef {
    /// The sink.
    pub sink: Arc<dyn crate::domain::audit::archive::ArchiveSink>,
    /// Key prefix.
    pub prefix: String,
    /// The audit key.
    pub key: Arc<crate::domain::audit::AuditKey>,
    /// How long segments are kept after their newest event (`retention_days`).
    pub retention_ms: i64,
}

impl ArchiveRef {
    /// The sink and prefix as the domain takes them.
    pub fn archive(&self) -> crate::domain::audit::archive::Archive<'_> {
        crate::domain::audit::archive::Archive {
            sink: self.sink.as_ref(),
            prefix: &self.prefix,
        }
    }
}

/// What the use cases need of this process's migration workers (`crate::service::migrate`
/// implements it; [`Services::migrations`] holds the one that runs).
pub trait JobRunner: Send + Sync {
    /// Look for work now (a job was started or resumed).
    fn nudge(&self);
    /// Stop claiming: workers finish the item in hand and return (shutdown).
    fn stop(&self);
    /// Whether a worker of this process is on job `id`.
    fn working_on(&self, id: &str) -> bool;
    /// How many scans for running jobs have finished since start.
    fn scans(&self) -> u64;
}

impl std::ops::Deref for Services {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

impl Services {
    /// From its parts.
    pub fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }

    /// Reload tokens and revocations every `every` and on SIGHUP (`serve` starts it; tests
    /// may). `every` zero: only on SIGHUP.
    pub fn start_token_refresh(&self, every: Duration) {
        self.auth.spawn_refresher(every);
    }

    /// Follow the database's policy version, read every `every` (zero: never); `serve`
    /// starts it (tests may).
    pub fn start_policy_refresh(&self, every: Duration) {
        self.policy.spawn_refresher(every);
    }

    /// Read the operators' breaker overrides every `every` (zero: never); `serve` starts it
    /// (tests may).
    pub fn start_override_refresh(&self, every: Duration) {
        self.overrides.spawn_refresher(every);
    }

    /// Stop this process's migration workers from claiming more work (shutdown).
    pub fn stop_migration_workers(&self) {
        if let Some(sup) = self.migrations.get() {
            sup.stop();
        }
    }

    /// How a read of `accounts` is admitted by a contended bulkhead: by the lowest of their
    /// classes, looked up only then.
    pub fn ask_for(&self, accounts: Vec<String>) -> crate::domain::priority::Ask {
        crate::domain::priority::Ask::Accounts(self.classes.clone(), accounts.into())
    }

    /// The backend instance of that name.
    pub fn backend(&self, name: &str) -> Option<&Arc<dyn KeyBackend>> {
        self.backends.get(name)
    }
}
