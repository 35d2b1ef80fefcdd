//! `shardgate keys`: list key versions, rotate keyrings and HSM keys, change key states.

use super::args::*;
use crate::app::config::{BackendConfig, Config};
use crate::app::state::AppState;
use shardgate_backends::KeyState;
use std::process::ExitCode;

pub(crate) async fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    let (config, backend, change) = match command {
        KeysCommand::Rotate { config, backend } => return keys_rotate(&config, &backend),
        KeysCommand::List { config } => return keys_list(&config).await,
        KeysCommand::Promote {
            config,
            backend,
            version,
        } => (config, backend, (version, "active".to_string())),
        KeysCommand::State {
            config,
            backend,
            version,
            to,
        } => (config, backend, (version, to)),
    };
    let (version, to) = change;
    let cfg = Config::load(&config.sources(None))?;
    if !cfg.backends.contains_key(&backend) {
        anyhow::bail!("no backend named {backend:?} in the configuration");
    }
    let to = crate::service::keys_admin::parse_state(&to).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (state, _) = AppState::build(&cfg).await?;
    let answer = crate::service::keys_admin::transition(
        &state,
        &backend,
        i64::from(version),
        to,
        &crate::domain::audit::Origin::cli(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    state.audit.checkpoint().await;
    if !answer.changed {
        println!("key version {version} of backend {backend} is already {to}.");
    } else {
        println!(
            "key version {version} of backend {backend} is now {to}{} (audit event {}).",
            answer
                .demoted
                .map(|d| format!("; version {d} is decrypt-only"))
                .unwrap_or_default(),
            answer.audit_event.as_deref().unwrap_or("-")
        );
    }
    // The keyring file follows the database, so that it describes itself (FORMAT.md) and a
    // destroyed version's key bytes leave the file that is distributed to the replicas.
    if let Some(BackendConfig::Local { key_file, .. }) = cfg.backends.get(&backend) {
        // The database already holds the change: a file that cannot follow is reported, not
        // a failure of the command.
        let synced = (|| -> Result<bool, shardgate_backends::local::KeyringError> {
            let mut keyring = shardgate_backends::local::Keyring::load(key_file)?;
            let before = keyring.versions();
            match to {
                KeyState::Active => keyring.promote(version)?,
                KeyState::DecryptOnly => keyring.demote(version)?,
                KeyState::Destroyed => keyring.destroy(version)?,
            }
            let changed = keyring.versions() != before;
            if changed {
                keyring.save(key_file)?;
            }
            Ok(changed)
        })();
        match synced {
            Ok(true) if to == KeyState::Destroyed => println!(
                "its key bytes are erased from {}: copy this file to every replica.",
                key_file.display()
            ),
            Ok(_) => {}
            Err(e) => eprintln!("warning: the keyring file was not updated: {e}"),
        }
    }
    if to == KeyState::Active {
        println!("every replica wraps new data keys with it within [keys] refresh_interval_ms.");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn keys_list(config: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&config.sources(None))?;
    let (state, _) = AppState::build(&cfg).await?;
    let keys = crate::service::keys_admin::list(&state)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "{:<16} {:>7} {:<13} {:>14} {:>14} {:<5} changed",
        "backend", "version", "state", "shard_versions", "wraps_reserved", "here"
    );
    for k in keys {
        println!(
            "{:<16} {:>7} {:<13} {:>14} {:>14} {:<5} {} by {}",
            k.backend,
            k.version,
            k.state,
            k.shard_versions,
            k.wraps_reserved
                .map_or_else(|| "-".to_string(), |w| w.to_string()),
            if k.held_here { "yes" } else { "no" },
            super::timestamp(k.changed_ms),
            k.changed_by
        );
    }
    let c = state.keys.config();
    println!(
        "wraps: warning at {} reserved, refused at {} (per version)",
        c.wrap_warn_at, c.wrap_limit
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn keys_rotate(config: &ConfigArgs, backend: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&config.sources(None))?;
    let key_file = match cfg.backends.get(backend) {
        Some(BackendConfig::Local { key_file, .. }) => key_file,
        Some(BackendConfig::Pkcs11(entry)) => {
            let v = shardgate_backends::pkcs11::rotate_key(&entry.hsm)?;
            println!(
                "created {}/v{v} in the HSM (decrypt-only: every replica can unwrap with it).",
                entry.hsm.kek_label
            );
            println!("make it the wrapping version:");
            println!("  shardgate keys promote --backend {backend} --version {v}");
            return Ok(ExitCode::SUCCESS);
        }
        Some(BackendConfig::AwsKms(_)) => {
            anyhow::bail!("aws-kms keys rotate inside KMS (enable automatic rotation on the key)")
        }
        None => anyhow::bail!("no backend named {backend:?} in the configuration"),
    };
    let mut keyring = shardgate_backends::local::Keyring::load(key_file)?;
    let v = keyring.rotate();
    keyring.save(key_file)?;
    println!("added key version {v} to backend {backend} (decrypt-only).");
    println!("copy {} to every replica, then run:", key_file.display());
    println!("  shardgate keys promote --backend {backend} --version {v}");
    Ok(ExitCode::SUCCESS)
}
