//! Tier-migration jobs: re-wrap shard versions onto the backend (and key version) the policy
//! picks now, without touching the shard ciphertext and without plaintext leaving the
//! gateway's memory (nor the gateway's memory at all for KMS -> KMS, via `ReEncrypt`).
//!
//! A job is a row plus a snapshot of items (see `shardgate_store::migration`). Every gateway
//! process runs a supervisor that looks for `running` jobs every `poll_interval_ms` and works
//! on each: claim a batch (lease), re-wrap each item on its target, prove the target opens
//! the new wrap, then commit it with a compare-and-swap on the old wrap, its audit event and
//! the job's counters in one transaction. Killing the process at any point leaves every
//! item either committed or pending (its lease expires), so starting again finishes the job;
//! several processes share one job.

mod supervisor;
mod worker;

pub use supervisor::Supervisor;
pub use worker::{Stop, Worker};

use super::state::Services;
use crate::domain::audit::Origin;
use crate::domain::error::DomainError;
use shardgate_store::{job_state, MigrationJob, MigrationSelector, Transition};

/// Start a job over `selector`, checked against the configuration; returns it as stored.
pub async fn start(
    state: &Services,
    selector: MigrationSelector,
    origin: &Origin,
) -> Result<MigrationJob, DomainError> {
    let id = uuid::Uuid::new_v4().to_string();
    start_with_id(state, &id, selector, origin).await
}

/// [`start`] with a job id chosen by the caller (a tier change answers with the id at once
/// and creates the job, whose snapshot may take a while, in the background).
pub async fn start_with_id(
    state: &Services,
    id: &str,
    selector: MigrationSelector,
    origin: &Origin,
) -> Result<MigrationJob, DomainError> {
    if selector.account.is_some() == selector.from_backend.is_some() {
        return Err(DomainError::Invalid(
            "give exactly one of account and from_backend".into(),
        ));
    }
    if selector.key_version_below.is_some() && selector.from_backend.is_none() {
        return Err(DomainError::Invalid(
            "key_version_below goes with from_backend".into(),
        ));
    }
    if let Some(account) = &selector.account {
        crate::domain::ids::check("account", account)?;
        if state.store.get_account(account).await?.is_none() {
            return Err(DomainError::AccountNotFound(
                "the account does not exist".into(),
            ));
        }
    }
    if let Some(b) = &selector.from_backend {
        if state.backend(b).is_none() {
            return Err(DomainError::Invalid(
                "from_backend names no configured backend".into(),
            ));
        }
    }
    if matches!(selector.key_version_below, Some(v) if v < 1) {
        return Err(DomainError::Invalid(
            "key_version_below must be 1 or more".into(),
        ));
    }
    let mut event = origin
        .event("migration.start")
        .detail(describe(id, &selector));
    event.account = selector.account.clone();
    event.backend = selector.from_backend.clone();
    let mut guard = state.audit.lock().await?;
    let record = guard.begin(&event);
    let result = state
        .store
        .create_migration_job(id, &selector, crate::now_ms(), &origin.actor, &record)
        .await;
    guard.finish(Some(&record), &result).await;
    let job = result?;
    tracing::info!(job = %job.id, total = job.total, "migration job started: {}", describe(&job.id, &selector));
    if let Some(sup) = state.migrations.get() {
        sup.nudge();
    }
    Ok(job)
}

fn describe(id: &str, s: &MigrationSelector) -> String {
    let mut parts = vec![format!("job={id}")];
    if let Some(a) = &s.account {
        parts.push(format!("account={a}"));
    }
    if let Some(b) = &s.from_backend {
        parts.push(format!("from_backend={b}"));
    }
    if let Some(v) = s.key_version_below {
        parts.push(format!("key_version_below={v}"));
    }
    parts.join(" ")
}

/// Pause, resume or cancel: the allowed transitions, audited.
pub async fn transition(
    state: &Services,
    id: &str,
    to: &str,
    origin: &Origin,
) -> Result<MigrationJob, DomainError> {
    let from: &[&str] = match to {
        job_state::PAUSED => &[job_state::RUNNING],
        job_state::RUNNING => &[job_state::PAUSED],
        job_state::CANCELLED => &[job_state::RUNNING, job_state::PAUSED],
        _ => {
            return Err(DomainError::Invalid(
                "a job can be paused, resumed or cancelled".into(),
            ))
        }
    };
    let event = origin
        .event(&format!("migration.{to}"))
        .detail(format!("job={id}"));
    let mut guard = state.audit.lock().await?;
    let record = guard.begin(&event);
    let result = state
        .store
        .set_migration_job_state(id, from, to, crate::now_ms(), &record)
        .await;
    let committed = matches!(result, Ok(Transition::Done(_)));
    // Only a transition that happened consumed the audit record.
    guard.finish(committed.then_some(&record), &result).await;
    match result? {
        Transition::Done(job) => {
            if let Some(sup) = state.migrations.get() {
                sup.nudge();
            }
            Ok(job)
        }
        Transition::NotFound => Err(DomainError::NotFound("no such migration job".into())),
        Transition::WrongState(current) => {
            Err(DomainError::Conflict(format!("the job is {current}")))
        }
    }
}

#[cfg(test)]
mod tests;
