//! `shardgate policy`: check a configuration's tier policy, explain one account's placement,
//! apply a new policy version to the cluster.

use super::args::*;
use crate::app::config::{Config, Sources};
use crate::service::policy::{ApplyRequest, PolicyChange};
use shardgate_policy::PolicyDocument;
use std::path::Path;
use std::process::ExitCode;

/// The largest policy file read (a policy of many pins is still far below it).
const MAX_POLICY_FILE: u64 = 16 << 20;

/// `policy explain`: the rules for one account, from the policy version the database serves
/// (the config file's rules when the database holds none yet), and (without `--tier`) the
/// account's tier from the store.
pub(crate) async fn policy_explain(
    sources: &Sources,
    account: &str,
    tier: Option<String>,
) -> anyhow::Result<ExitCode> {
    if !shardgate_policy::is_valid_id(account) {
        anyhow::bail!("account id must match {}", shardgate_policy::ID_RULE);
    }
    let cfg = Config::load(sources)?;
    let store = existing_store(&cfg).await?;
    let (policy, source) = match &store {
        Some(store) => match store.policy_version(None).await? {
            Some(record) => {
                let served =
                    crate::domain::policy::Served::from_record(&record, &cfg.backend_names())?;
                (
                    served.policy,
                    format!("policy version {} (database)", served.version),
                )
            }
            None => (
                cfg.policy()?,
                "the config file (the database holds no version yet)".into(),
            ),
        },
        None => (cfg.policy()?, "the config file (no database yet)".into()),
    };
    let tier = match (tier, &store) {
        (Some(t), _) => t,
        (None, None) => anyhow::bail!(
            "account {account:?} does not exist: there is no database at the configured path (pass --tier to explain a placement anyway)"
        ),
        (None, Some(store)) => match store.get_account(account).await? {
            Some(record) => {
                // The tier rules decide from the tier asked for and the attributes.
                let d = crate::service::retier::derived(&policy, &record);
                let asked = record.requested_tier.as_deref().unwrap_or(&record.tier);
                println!(
                    "tier {} (by {}; asked for {asked}; attributes {})",
                    d.tier, d.rule, record.attributes
                );
                d.tier
            }
            None => anyhow::bail!(
                "account {account:?} does not exist in the {} store (pass --tier to explain a placement anyway)",
                store.kind()
            ),
        },
    };
    let explanation = policy
        .explain(account, &tier)
        .map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    println!("{explanation}");
    println!("(rules of {source})");
    Ok(ExitCode::SUCCESS)
}

/// The configured store, unless it is a SQLite file that does not exist: connecting would
/// create it, and a mistyped data dir must not leave an empty database behind.
async fn existing_store(
    cfg: &Config,
) -> anyhow::Result<Option<std::sync::Arc<dyn shardgate_store::Store>>> {
    if let Some(path) = crate::cli::backup::sqlite_file(&cfg.store_url()) {
        if !path.exists() {
            return Ok(None);
        }
    }
    Ok(Some(crate::app::state::open_store(cfg, 1).await?))
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

/// The policy in `file`: TOML with the config file's keys (`[tiers]`, `[[policy.pins]]`,
/// `[[policy.rollouts]]`, `[policy.priorities]`, `[policy.account_priorities]`, anything else
/// ignored), or JSON (`*.json`) shaped as the `policy`
/// object of `PUT /v1/admin/policy`.
pub(crate) fn read_policy_file(file: &Path) -> anyhow::Result<PolicyDocument> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
        .take(MAX_POLICY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if text.len() as u64 > MAX_POLICY_FILE {
        anyhow::bail!("{}: larger than {MAX_POLICY_FILE} bytes", file.display());
    }
    if file.extension().is_some_and(|e| e == "json") {
        return serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a policy document: {e}", file.display()));
    }
    #[derive(serde::Deserialize)]
    struct FileRules {
        #[serde(default)]
        tiers: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        policy: Option<crate::app::config::PolicyConfig>,
    }
    let rules: FileRules = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a policy file: {e}", file.display()))?;
    let policy = rules.policy.unwrap_or_default();
    Ok(PolicyDocument {
        tiers: rules.tiers,
        pins: policy.pins,
        rollouts: policy.rollouts,
        priorities: policy.priorities,
        account_priorities: policy.account_priorities,
        tier_rules: policy.tier_rules,
    })
}

/// `policy apply`: measure the file's policy against every account, print the change, and
/// commit it unless `--dry-run`.
pub(crate) async fn policy_apply(
    config: &ConfigArgs,
    req: ApplyRequest,
) -> anyhow::Result<ExitCode> {
    let dry_run = req.dry_run;
    let state = super::migrate::migrate_state(config).await?;
    let origin = crate::domain::audit::Origin::cli();
    let change = crate::service::policy::apply(&state, req, &origin).await?;
    print_change(&change, dry_run);
    Ok(ExitCode::SUCCESS)
}

fn print_change(c: &PolicyChange, dry_run: bool) {
    let head = if c.changes.is_empty() {
        format!(
            "policy version {}: no rule changes, nothing committed",
            c.from_version
        )
    } else if dry_run {
        format!(
            "policy version {} -> {} (dry run: nothing committed)",
            c.from_version, c.version
        )
    } else {
        format!(
            "policy version {} -> {} committed",
            c.from_version, c.version
        )
    };
    println!("{head}");
    for r in &c.changes {
        println!("  {r}");
    }
    println!(
        "accounts: {} scanned, {} change backend, {} change tier by tier rules",
        c.accounts_scanned,
        c.moved_total(),
        c.tier_changes
    );
    for m in &c.moves {
        println!(
            "  {} accounts of tier {}: {} -> {} by {}{}",
            m.accounts,
            m.tier,
            m.from_backend,
            m.to_backend,
            m.rule,
            if m.downgrade { " [downgrade]" } else { "" }
        );
    }
    for job in &c.migration_jobs {
        println!("migration job {job} started (shardgate migrate status {job})");
    }
}
