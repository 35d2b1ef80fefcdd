//! `shardgate config check` and `config print`: what `serve` would refuse, found without
//! starting it, and the configuration it would run (file + `SHARDGATE_*` + defaults) with
//! every secret redacted.

use super::args::ConfigArgs;
use crate::app::config::Sources;
use std::net::SocketAddr;
use std::process::ExitCode;

/// What replaces a secret in `config print`.
pub(crate) const REDACTED: &str = "<redacted>";

/// Keys whose value is a secret (or the hash of one) wherever they appear. `pin_env` and
/// `pin_file` name where a secret is, not the secret, and are printed.
const SECRET_KEYS: &[&str] = &[
    "password",
    "secret",
    "secret_access_key",
    "session_token",
    "pin",
    "token",
    "sha256",
];

/// Query parameters of a URL that carry a secret.
const SECRET_PARAMS: &[&str] = &["password", "secret", "token", "sslpassword"];

/// `config check`: load the configuration and its TLS material as `serve` does, then run
/// `serve`'s start-up checks in check mode ([`crate::app::state::check`]): backends opened
/// read-only, the store connected and its schema read, nothing bound, created or migrated.
pub(crate) async fn config_check(config: &ConfigArgs, listen: Option<SocketAddr>) -> ExitCode {
    let what = config.config.as_ref().map_or_else(
        || "the embedded default".to_string(),
        |f| f.display().to_string(),
    );
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        eprintln!("config check failed: serve would refuse {what}");
        ExitCode::FAILURE
    };
    let (cfg, _tls) = match super::serve::load_for_serve(&config.sources(listen)) {
        Ok(loaded) => loaded,
        Err(e) => return fail(&e),
    };
    let startup = match crate::app::state::check(&cfg).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    for line in &startup.would_create {
        println!("serve would create: {line}");
    }
    println!(
        "ok: {what}: listen {}, {} backend(s), {} tier(s), store {}",
        cfg.listen,
        cfg.backends.len(),
        cfg.tiers.len(),
        store_kind(&cfg.store_url())
    );
    ExitCode::SUCCESS
}

fn store_kind(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    }
}

/// `config print`: the effective configuration as TOML, secrets redacted.
pub(crate) fn config_print(sources: &Sources) -> anyhow::Result<ExitCode> {
    let cfg = crate::app::config::Config::load(sources)?;
    print!("{}", effective_toml(&cfg)?);
    Ok(ExitCode::SUCCESS)
}

/// The configuration as TOML with every secret replaced by [`REDACTED`].
pub(crate) fn effective_toml(cfg: &crate::app::config::Config) -> anyhow::Result<String> {
    let mut value = toml::Value::try_from(cfg)?;
    redact(&mut value);
    Ok(toml::to_string(&value)?)
}

/// Replace secrets in place: the values of [`SECRET_KEYS`], and passwords inside URLs.
pub(crate) fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                if SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str()) {
                    *v = toml::Value::String(REDACTED.into());
                } else {
                    redact(v);
                }
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(redact),
        toml::Value::String(s) => {
            if let Some(clean) = redact_url(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

/// A URL with its userinfo password and secret query parameters redacted, or `None` when
/// there is nothing to redact.
pub(crate) fn redact_url(s: &str) -> Option<String> {
    let scheme_end = s.find("://")? + 3;
    let (head, rest) = s.split_at(scheme_end);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut changed = false;
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => {
                changed = true;
                format!("{user}:{REDACTED}@{host}")
            }
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                        changed = true;
                        format!("{k}={REDACTED}")
                    }
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    changed.then(|| format!("{head}{authority}{tail}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn urls_lose_their_passwords_and_keep_the_rest() {
        assert_eq!(
            redact_url("postgres://gw:s3cret@db.example:5432/shards?sslmode=verify-full").unwrap(),
            "postgres://gw:<redacted>@db.example:5432/shards?sslmode=verify-full"
        );
        assert_eq!(
            redact_url("postgres://db/x?user=gw&password=s3cret").unwrap(),
            "postgres://db/x?user=gw&password=<redacted>"
        );
        // A user without a password, and a URL without secrets, are left alone.
        assert_eq!(redact_url("postgres://gw@db/x"), None);
        assert_eq!(redact_url("sqlite:///data/shardgate.db?mode=rwc"), None);
        assert_eq!(redact_url("not a url"), None);
    }

    #[test]
    fn secret_keys_are_redacted_at_any_depth() {
        let mut v: toml::Value = toml::from_str(
            r#"
            a = "postgres://u:p4ss@h/d"
            [[tokens]]
            name = "ops"
            sha256 = "abcd"
            [backends.hsm]
            pin_env = "HSM_PIN"
            pin = "1234"
            "#,
        )
        .unwrap();
        redact(&mut v);
        let text = toml::to_string(&v).unwrap();
        for secret in ["p4ss", "abcd", "1234"] {
            assert!(!text.contains(secret), "{secret} printed: {text}");
        }
        // Where a secret lives is not a secret.
        assert!(text.contains("HSM_PIN") && text.contains("ops"), "{text}");
    }
}
