//! `shardgate token`: create, list and revoke tokens.

use super::args::*;
use crate::app::config::Config;
use secrecy::ExposeSecret;
use std::process::ExitCode;

pub(crate) async fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    use crate::cli::token_admin;
    match command {
        TokenCommand::Create {
            scopes,
            account_prefix,
            name,
            expires_in,
            save,
            config,
        } => {
            token_admin::validate(&name, &scopes, account_prefix.as_deref())?;
            let expires_ms = expires_in
                .map(|d| i64::try_from(d.as_millis()).map(|ms| crate::now_ms().saturating_add(ms)))
                .transpose()?;
            let token = crate::domain::auth::generate_token();
            let hash = crate::domain::auth::hash_token(token.expose_secret());
            if save {
                let cfg = Config::load(&config.sources(None))?;
                let store = crate::app::state::open_store(&cfg, 2).await?;
                crate::app::state::prepare_schema(&cfg, store.as_ref()).await?;
                let id = token_admin::save(
                    store.as_ref(),
                    &name,
                    &hash,
                    &scopes,
                    account_prefix,
                    expires_ms,
                    crate::now_ms(),
                )
                .await?;
                println!("token (shown once; store it now):");
                println!("{}", token.expose_secret());
                println!();
                println!("saved as id {id}: every gateway accepts it within [auth] refresh_ms (or at once on SIGHUP)");
                return Ok(ExitCode::SUCCESS);
            }
            println!("token (shown once; store it now):");
            println!("{}", token.expose_secret());
            println!();
            println!("add to the config file:");
            println!("[[tokens]]");
            println!("name = {}", toml::Value::String(name));
            println!("sha256 = \"{hash}\"");
            let scopes: Vec<toml::Value> = scopes.into_iter().map(toml::Value::String).collect();
            println!("scopes = {}", toml::Value::Array(scopes));
            if let Some(p) = account_prefix {
                println!("account_prefix = {}", toml::Value::String(p));
            }
            if let Some(ms) = expires_ms {
                println!("expires_at = \"{}\"", format_ms(ms));
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { config } => {
            let cfg = Config::load(&config.sources(None))?;
            let store = crate::app::state::open_store(&cfg, 2).await?;
            crate::app::state::prepare_schema(&cfg, store.as_ref()).await?;
            let now = crate::now_ms();
            println!(
                "{:<17} {:<20} {:<11} {:<8} {:<24} SCOPES [PREFIX]",
                "ID", "NAME", "SOURCE", "STATE", "EXPIRES"
            );
            for t in token_admin::list(&cfg, store.as_ref()).await? {
                let state = if t.revoked_ms.is_some() {
                    "revoked"
                } else if t.expires_ms.is_some_and(|e| now >= e) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<17} {:<20} {:<11} {:<8} {:<24} {}{}",
                    t.id,
                    t.name,
                    t.source.as_str(),
                    state,
                    t.expires_ms
                        .map(super::timestamp)
                        .unwrap_or_else(|| "never".into()),
                    t.scopes.join(","),
                    t.account_prefix
                        .map(|p| format!(" [{p}]"))
                        .unwrap_or_default(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { config, id, reason } => {
            let cfg = Config::load(&config.sources(None))?;
            let store = crate::app::state::open_store(&cfg, 2).await?;
            crate::app::state::prepare_schema(&cfg, store.as_ref()).await?;
            let now = crate::now_ms();
            if token_admin::revoke(&cfg, store.as_ref(), &id, &reason, now).await? {
                println!(
                    "token {id} revoked: every gateway refuses it within [auth] refresh_ms ({} ms here), or at once on SIGHUP",
                    cfg.auth.refresh_ms
                );
            } else {
                println!("token {id} was already revoked");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn format_ms(ms: i64) -> String {
    let since = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + since).to_string()
}
