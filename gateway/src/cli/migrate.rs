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
    println!(
        "  created {} by {}, updated {}",
        super::timestamp(job.created_at),
        job.created_by,
        super::timestamp(job.updated_at)
    );
}

/// How often the non-terminal progress line is printed.
const LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A job's progress: on a terminal an indicatif bar with rate and ETA; otherwise (a log, a
/// CI job) one line every [`LINE_EVERY`] with the same figures.
pub(crate) struct Progress {
    bar: indicatif::ProgressBar,
    /// When the first figures arrived and how many items were settled then: the rate
    /// counts only what this process saw move, not what was done before it watched.
    first: Option<(std::time::Instant, u64)>,
    last_line: Option<std::time::Instant>,
}

impl Progress {
    pub(crate) fn new(total: i64) -> Self {
        let bar = indicatif::ProgressBar::new(u64::try_from(total).unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Self {
            bar,
            first: None,
            last_line: None,
        }
    }

    pub(crate) fn show(&mut self, job: &shardgate_store::MigrationJob) {
        let total = u64::try_from(job.total).unwrap_or(0);
        let pos = u64::try_from(job.total - job.remaining()).unwrap_or(0);
        self.bar.set_length(total);
        self.bar.set_position(pos);
        self.bar.set_message(format!(
            "{}: {} moved, {} failed, {} skipped",
            job.state, job.done, job.failed, job.skipped
        ));
        let now = std::time::Instant::now();
        let (t0, pos0) = *self.first.get_or_insert_with(|| {
            // What was settled before this process watched is not this rate.
            self.bar.reset_eta();
            (now, pos)
        });
        if self.bar.is_hidden() && self.last_line.is_none_or(|t| now - t >= LINE_EVERY) {
            self.last_line = Some(now);
            let (rate, eta) =
                rate_and_eta(now - t0, pos.saturating_sub(pos0), total - pos.min(total));
            eprintln!(
                "migrate: job {} {}: {pos}/{total} settled, {rate}, ETA {eta}",
                job.id, job.state
            );
        }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish();
    }
}

/// `12.5/s` and `1m 20s` (or `-` before anything moved) from what moved in `elapsed`.
pub(crate) fn rate_and_eta(
    elapsed: std::time::Duration,
    moved: u64,
    remaining: u64,
) -> (String, String) {
    let secs = elapsed.as_secs_f64();
    if moved == 0 || secs <= 0.0 {
        let eta = if remaining == 0 { "0s" } else { "-" };
        return ("0.0/s".into(), eta.into());
    }
    let rate = moved as f64 / secs;
    let eta = std::time::Duration::from_secs((remaining as f64 / rate).ceil() as u64);
    (
        format!("{rate:.1}/s"),
        humantime::format_duration(eta).to_string(),
    )
}

pub(crate) async fn run_job(state: &AppState, id: &str) -> anyhow::Result<ExitCode> {
    if state.store.get_migration_job(id).await?.is_none() {
        anyhow::bail!("no such migration job");
    }
    let worker_id = format!("cli-{}", uuid::Uuid::new_v4().simple());
    let worker = crate::service::migrate::Worker::new(state, &state.migration, &worker_id);
    eprintln!("migrate: worker {worker_id} started on job {id}");
    let mut progress = Progress::new(0);
    let stop = worker
        .run(id, |job| progress.show(job))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    progress.finish();
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
                let mut progress = Progress::new(current.total);
                while current.state == job_state::RUNNING || current.state == job_state::PAUSED {
                    progress.show(&current);
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    current = get().await?;
                }
                progress.show(&current);
                progress.finish();
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

#[cfg(test)]
mod tests {
    use super::rate_and_eta;
    use std::time::Duration;

    #[test]
    fn rate_and_eta_from_what_moved() {
        assert_eq!(
            rate_and_eta(Duration::from_secs(10), 50, 100),
            ("5.0/s".to_string(), "20s".to_string())
        );
        assert_eq!(
            rate_and_eta(Duration::from_secs(10), 0, 100),
            ("0.0/s".to_string(), "-".to_string())
        );
        assert_eq!(
            rate_and_eta(Duration::from_secs(2), 3, 0),
            ("1.5/s".to_string(), "0s".to_string())
        );
    }
}
