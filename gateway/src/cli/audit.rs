//! `shardgate audit verify`: re-check every chain, and hold each against its checkpoints.

use super::args::*;
use crate::app::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// `audit verify`: every chain, held against the latest checkpoints of `files` (default:
/// this configuration's checkpoint file when it exists).
pub(crate) async fn audit_verify(
    config: &ConfigArgs,
    mut files: Vec<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use crate::domain::audit::VerifyError;
    let cfg = Config::load(&config.sources(None))?;
    let key = crate::app::state::audit_key(&cfg)?;
    if files.is_empty() && cfg.checkpoint_file().exists() {
        files.push(cfg.checkpoint_file());
    }
    let latest = match crate::domain::audit::checkpoints::read_latest(&files, &key) {
        Ok(l) => l,
        Err(b) => {
            println!("AUDIT BROKEN: {b}");
            return Ok(ExitCode::from(2));
        }
    };
    let store = crate::app::state::open_store(&cfg, 2).await?;
    crate::app::state::prepare_schema(&cfg, store.as_ref()).await?;
    match crate::domain::audit::verify_with(store.as_ref(), &key, &latest).await {
        Ok(r) => {
            println!(
                "audit ok: {} chain(s), {} event(s) verified, {} checkpointed chain(s) from {} file(s)",
                r.chains,
                r.events,
                r.checkpoints,
                files.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Broken(b)) => {
            println!("AUDIT BROKEN: {b}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}
