//! The `shardgate` command line: [`main`] parses the command ([`args`]), sets up logging and
//! the process's hygiene, and runs the command; each command's work is in its own module.

mod args;
mod audit;
mod audit_export;
mod audit_tiers;
pub mod backup;
mod config;
mod generate;
mod keys;
mod logging;
mod migrate;
mod policy;
mod serve;
mod telemetry;
mod token;
pub mod token_admin;

use crate::app::config::{BackendConfig, Config};
use args::*;
use audit::*;
use clap::Parser;
use keys::*;
use logging::*;
use migrate::*;
use policy::*;
use serve::*;
use std::process::ExitCode;
use token::*;

/// A stored time (unix milliseconds) as every human listing prints it: RFC 3339, UTC,
/// milliseconds (`2026-12-06T21:43:10.123Z`).
pub(crate) fn timestamp(ms: i64) -> String {
    let since = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + since).to_string()
}

/// Run the command line: what the binary's `main` does.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let exporter = init_logging(log_setup(&cli));
    // Every subcommand, before any secret is read, any file created or any thread started:
    // `keys`, `migrate`, `hsm`, `backup`, `audit` and `token` handle key material as much
    // as `serve` does, and every file any of them creates (the SQLite database and its
    // -wal/-shm files included) is born private.
    crate::domain::hygiene::harden();
    crate::domain::hygiene::private_files();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shardgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shardgate: {e}");
            ExitCode::FAILURE
        }
    };
    // The spans of the last requests, before the process ends.
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    code
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, listen } => serve(config.sources(listen)).await,
        Command::Config {
            command: ConfigCommand::Check { config, listen },
        } => Ok(config::config_check(&config, listen).await),
        Command::Config {
            command: ConfigCommand::Print { config },
        } => config::config_print(&config.sources(None)),
        Command::Completions { shell } => generate::completions(shell),
        Command::Man { out } => generate::man(out.as_deref()),
        Command::Db {
            command: DbCommand::Migrate { config },
        } => {
            let cfg = Config::load(&config.sources(None))?;
            // Always migrates, whatever `[store] migrate` says: run it as the migration role.
            let store = crate::app::state::open_store(&cfg, 2).await?;
            store.migrate().await?;
            println!("migrations applied ({})", store.kind());
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command } => token(command).await,
        Command::Keys { command } => keys(command).await,
        Command::Hsm {
            command: HsmCommand::InitKey { config, backend },
        } => {
            let cfg = Config::load(&config.sources(None))?;
            let Some(BackendConfig::Pkcs11(entry)) = cfg.backends.get(&backend) else {
                anyhow::bail!("no pkcs11 backend named {backend:?} in the configuration");
            };
            let v = shardgate_backends::pkcs11::init_key(&entry.hsm)?;
            println!(
                "key-encryption key {}/v{v} of backend {backend} is in the HSM (sensitive, not extractable).",
                entry.hsm.kek_label
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    config,
                    account,
                    tier,
                },
        } => policy_explain(&config.sources(None), &account, tier).await,
        Command::Policy {
            command: PolicyCommand::Check { config },
        } => Ok(policy_check(&config)),
        Command::Policy {
            command:
                PolicyCommand::Apply {
                    config,
                    file,
                    dry_run,
                    migrate,
                    allow_downgrade,
                    expected_version,
                },
        } => {
            let req = crate::service::policy::ApplyRequest {
                document: read_policy_file(&file)?,
                expected_version,
                dry_run,
                migrate,
                allow_downgrade,
            };
            policy_apply(&config, req).await
        }
        Command::Migrate { command } => migrate_command(command).await,
        Command::Backup { config, to } => {
            let cfg = Config::load(&config.sources(None))?;
            let written = crate::cli::backup::backup(&cfg, &to).await?;
            println!(
                "backup written: {} ({} bytes, one consistent snapshot of the database)",
                written.path.display(),
                written.bytes
            );
            println!("not in the backup; keep these with it (docs/backup.md):");
            for line in crate::cli::backup::kept_elsewhere(&cfg, config.config.as_deref()) {
                println!("  {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => audit_command(command).await,
    }
}
