//! `shardgate policy`: check a configuration's tier policy, explain one account's placement.

use super::args::*;
use crate::app::config::{Config, Sources};
use std::process::ExitCode;

/// `policy explain`: the rules for one account, from the config (and, without `--tier`, the
/// account's tier from the store).
pub(crate) async fn policy_explain(
    sources: &Sources,
    account: &str,
    tier: Option<String>,
) -> anyhow::Result<ExitCode> {
    if !shardgate_policy::is_valid_id(account) {
        anyhow::bail!("account id must match {}", shardgate_policy::ID_RULE);
    }
    let cfg = Config::load(sources)?;
    let policy = cfg.policy().map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    let tier = match tier {
        Some(t) => t,
        None => {
            let url = cfg.store_url();
            // Connecting to SQLite creates a missing file: a mistyped data dir must not leave
            // an empty database behind, and it certainly holds no account.
            if let Some(path) = crate::cli::backup::sqlite_file(&url) {
                if !path.exists() {
                    anyhow::bail!(
                        "account {account:?} does not exist: there is no database at {} (pass --tier to explain a placement anyway)",
                        path.display()
                    );
                }
            }
            let store = crate::app::state::open_store(&cfg, 1).await?;
            match store.get_account(account).await? {
                Some(record) => record.tier,
                None => anyhow::bail!(
                    "account {account:?} does not exist in the {} store (pass --tier to explain a placement anyway)",
                    store.kind()
                ),
            }
        }
    };
    let explanation = policy
        .explain(account, &tier)
        .map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    println!("{explanation}");
    Ok(ExitCode::SUCCESS)
}

/// `policy check`: every problem on stderr and exit 1, or a one-line summary and exit 0.
pub(crate) fn policy_check(config: &ConfigArgs) -> ExitCode {
    let what = config.config.as_ref().map_or_else(
        || "the embedded default".to_string(),
        |f| f.display().to_string(),
    );
    let cfg = match Config::load(&config.sources(None)) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("policy check failed: {what} is not a valid configuration");
            return ExitCode::FAILURE;
        }
    };
    let backends = cfg.backend_names();
    let builder = cfg.policy_builder();
    let errors = builder.check(&backends);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: policy: {e}");
        }
        eprintln!("policy check failed: {} error(s) in {what}", errors.len());
        return ExitCode::FAILURE;
    }
    let policy = match builder.build(&backends) {
        Ok(p) => p,
        // `check` found nothing, so this does not happen; report it rather than panic.
        Err(e) => {
            eprintln!("error: policy: {e}");
            return ExitCode::FAILURE;
        }
    };
    for w in policy.warnings() {
        eprintln!("warning: policy: {w}");
    }
    println!(
        "ok: {what}: {} backend(s), {} tier(s), {} pin(s), {} rollout(s), {} warning(s)",
        backends.len(),
        policy.tiers().count(),
        policy.pin_count(),
        policy.rollout_count(),
        policy.warnings().len()
    );
    ExitCode::SUCCESS
}
