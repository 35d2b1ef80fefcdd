//! `shardgate migrate`: start, run, inspect, pause, resume and cancel tier-migration jobs.

use super::args::*;
use crate::app::config::Config;
use crate::app::state::AppState;
use std::process::ExitCode;

/// Open everything a migration command needs (store, backends, audit chain), but no server
/// and no background workers.
pub(crate) async fn migrate_state(config: &ConfigArgs) -> anyhow::Result<AppState> {
    let cfg = Config::load(&config.sources(None))?;
    let (state, _) = AppState::build(&cfg).await?;
    Ok(state)
}

pub(crate) fn print_job(job: &shardgate_store::MigrationJob) {
    println!(
        "job {} {}: {} done, {} failed, {} skipped, {} remaining of {}{}",
        job.id,
        job.state,
        job.done,
        job.failed,
        job.skipped,
        job.remaining(),
        job.total,
        job.last_error
            .as_deref()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default()
    );
}

pub(crate) fn progress_bar(total: i64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(u64::try_from(total).unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

pub(crate) fn show(bar: &indicatif::ProgressBar, job: &shardgate_store::MigrationJob) {
    bar.set_length(u64::try_from(job.total).unwrap_or(0));
    bar.set_position(u64::try_from(job.total - job.remaining()).unwrap_or(0));
    bar.set_message(format!(
        "{}: {} moved, {} failed, {} skipped",
        job.state, job.done, job.failed, job.skipped
    ));
}

pub(crate) async fn run_job(state: &AppState, id: &str) -> anyhow::Result<ExitCode> {
    if state.store.get_migration_job(id).await?.is_none() {
        anyhow::bail!("no such migration job");
    }
    let worker_id = format!("cli-{}", uuid::Uuid::new_v4().simple());
    let worker = crate::service::migrate::Worker::new(state, &state.migration, &worker_id);
    eprintln!("migrate: worker {worker_id} started on job {id}");
    let bar = progress_bar(0);
    let stop = worker
        .run(id, |job| show(&bar, job))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    bar.finish();
    let job = state
        .store
        .get_migration_job(id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no such migration job"))?;
    print_job(&job);
    state.audit.checkpoint().await;
    Ok(match (stop, job.state.as_str()) {
        (_, shardgate_store::job_state::COMPLETED) => ExitCode::SUCCESS,
        _ => ExitCode::from(3),
    })
}

pub(crate) async fn migrate_command(command: MigrateCommand) -> anyhow::Result<ExitCode> {
    use shardgate_store::job_state;
    match command {
        MigrateCommand::Start {
            config,
            account,
            from_backend,
            key_version_below,
            run,
        } => {
            let state = migrate_state(&config).await?;
            let selector = shardgate_store::MigrationSelector {
                account,
                from_backend,
                key_version_below,
            };
            let job = crate::service::migrate::start(
                &state,
                selector,
                &crate::domain::audit::Origin::cli(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            print_job(&job);
            if run {
                return run_job(&state, &job.id).await;
            }
            state.audit.checkpoint().await;
            Ok(ExitCode::SUCCESS)
        }
        MigrateCommand::Run { config, job } => {
            check_job_id(&job)?;
            let state = migrate_state(&config).await?;
            run_job(&state, &job).await
        }
        MigrateCommand::Status { config, job, watch } => {
            check_job_id(&job)?;
            let state = migrate_state(&config).await?;
            let get = || async {
                state
                    .store
                    .get_migration_job(&job)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no such migration job"))
            };
            let mut current = get().await?;
            if watch {
                let bar = progress_bar(current.total);
                while current.state == job_state::RUNNING || current.state == job_state::PAUSED {
                    show(&bar, &current);
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    current = get().await?;
                }
                show(&bar, &current);
                bar.finish();
            }
            print_job(&current);
            let failures = if current.failed > 0 {
                state.store.migration_failures(&job, 100).await?
            } else {
                Vec::new()
            };
            for f in failures {
                println!(
                    "  failed {}/{} v{}: {}",
                    f.account, f.shard, f.version, f.error
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        MigrateCommand::Pause { config, job } => change_job(&config, &job, job_state::PAUSED).await,
        MigrateCommand::Resume { config, job } => {
            change_job(&config, &job, job_state::RUNNING).await
        }
        MigrateCommand::Cancel { config, job } => {
            change_job(&config, &job, job_state::CANCELLED).await
        }
    }
}

/// Refuse a malformed job id before opening anything (as the API answers `invalid_id`), rather
/// than report "no such migration job" for what cannot be one.
pub(crate) fn check_job_id(job: &str) -> anyhow::Result<()> {
    if uuid::Uuid::parse_str(job).is_err() {
        anyhow::bail!("invalid job id: a job id is the UUID `migrate start` prints");
    }
    Ok(())
}

pub(crate) async fn change_job(
    config: &ConfigArgs,
    job: &str,
    to: &str,
) -> anyhow::Result<ExitCode> {
    check_job_id(job)?;
    let state = migrate_state(config).await?;
    let job =
        crate::service::migrate::transition(&state, job, to, &crate::domain::audit::Origin::cli())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    print_job(&job);
    state.audit.checkpoint().await;
    Ok(ExitCode::SUCCESS)
}
