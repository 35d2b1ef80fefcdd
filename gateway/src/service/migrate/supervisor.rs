//! [`Supervisor`]: this process's migration workers, one per live job, found by a scan every
//! `poll_interval_ms` or at once when nudged. Each scan also resumes a policy apply's re-tier
//! pass that a crash left due ([`crate::service::retier::resume_due`]).

use super::worker::Worker;
use crate::service::settings::MigrationConfig;
use crate::service::state::{JobRunner, Services};
use shardgate_store::job_state;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Runs workers for every live job of the store; one per process.
pub struct Supervisor {
    state: Services,
    cfg: MigrationConfig,
    worker_id: String,
    active: Mutex<BTreeSet<String>>,
    wake: tokio::sync::Notify,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Scans finished since start ([`Supervisor::scans`]).
    scans: std::sync::atomic::AtomicU64,
    /// Whether this process is running a resumed re-tier pass (one at a time).
    retiering: Arc<std::sync::atomic::AtomicBool>,
}

impl Supervisor {
    /// Start looking for live jobs (at once, then every `poll_interval_ms`).
    pub fn spawn(state: Services, cfg: MigrationConfig) -> Arc<Self> {
        let sup = Arc::new(Self {
            worker_id: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".into()),
                uuid::Uuid::new_v4().simple()
            ),
            state,
            cfg,
            active: Mutex::new(BTreeSet::new()),
            wake: tokio::sync::Notify::new(),
            stopping: Arc::default(),
            scans: std::sync::atomic::AtomicU64::new(0),
            retiering: Arc::default(),
        });
        let weak = Arc::downgrade(&sup);
        let every = Duration::from_millis(sup.cfg.poll_interval_ms.max(50));
        tokio::spawn(async move {
            loop {
                let Some(sup) = weak.upgrade() else { return };
                sup.scan().await;
                sup.scans.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let sleep = tokio::time::sleep(every);
                tokio::select! {
                    () = sleep => {}
                    () = sup.wake.notified() => {}
                }
            }
        });
        sup
    }

    /// Stop claiming: workers finish the item in hand and return (shutdown).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a worker of this process is on job `id` (from the scan that took it until
    /// its worker has returned, in-flight items committed or dropped).
    pub fn working_on(&self, id: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// How many scans for running jobs have finished since start: one that begins after an
    /// event and finishes has seen it (what a test waits on before it checks that nothing
    /// took a job up).
    pub fn scans(&self) -> u64 {
        self.scans.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Look for work now (a job was started or resumed).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    async fn scan(self: &Arc<Self>) {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.resume_retier();
        let jobs = match self
            .state
            .store
            .list_migration_jobs(&[job_state::RUNNING])
            .await
        {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "migration: cannot list jobs");
                return;
            }
        };
        for job in jobs {
            let fresh = self
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(job.id.clone());
            if fresh {
                let sup = self.clone();
                let id = job.id.clone();
                let work = {
                    let (sup, id) = (sup.clone(), id.clone());
                    tokio::spawn(async move {
                        let worker = Worker::new(&sup.state, &sup.cfg, &sup.worker_id)
                            .stopping(sup.stopping.clone());
                        worker.run(&id, |_| {}).await
                    })
                };
                // However the worker ends (done, error, even a panic), the job is free to be
                // picked up again at the next scan: its claims expire with their leases.
                tokio::spawn(async move {
                    match work.await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(job = %id, error = %e, "migration worker stopped");
                        }
                        Err(e) => {
                            tracing::error!(job = %id, panic = e.is_panic(), "migration worker died");
                        }
                    }
                    sup.active
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                });
            }
        }
    }
}

impl Supervisor {
    /// Run a due re-tier pass in the background unless this process already runs one.
    fn resume_retier(&self) {
        use std::sync::atomic::Ordering;
        if self.retiering.swap(true, Ordering::SeqCst) {
            return;
        }
        let (state, holder, flag) = (
            self.state.clone(),
            self.worker_id.clone(),
            self.retiering.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = crate::service::retier::resume_due(&state, &holder).await {
                tracing::warn!(error = %e, "policy retier: a due pass did not finish; it stays due");
            }
            flag.store(false, Ordering::SeqCst);
        });
    }
}

impl JobRunner for Supervisor {
    fn nudge(&self) {
        Supervisor::nudge(self);
    }
    fn stop(&self) {
        Supervisor::stop(self);
    }
    fn working_on(&self, id: &str) -> bool {
        Supervisor::working_on(self, id)
    }
    fn scans(&self) -> u64 {
        Supervisor::scans(self)
    }
}

impl Services {
    /// Start this process's migration workers (idempotent; a no-op when
    /// `migration.workers = false`).
    pub fn start_migration_workers(&self) {
        if !self.migration.workers {
            return;
        }
        self.migrations.get_or_init(|| {
            let runner: Arc<dyn JobRunner> =
                Supervisor::spawn(self.clone(), self.migration.clone());
            runner
        });
    }
}
