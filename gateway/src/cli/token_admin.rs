//! What `shardgate token create --save`, `token list` and `token revoke` do to a
//! deployment's tokens: tokens kept in the database (hash only) and revocations of any
//! token id, which every replica picks up on its next reload ([`crate::domain::tokens`]).

use crate::app::config::Config;
use crate::domain::auth::{hash_token, token_id, Scope, TokenEntry};
use shardgate_store::{Store, StoreError, TokenRecord};
use std::collections::BTreeMap;

/// Where a listed token is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[[tokens]]` of the config file.
    Config,
    /// The embedded default's admin token file.
    AdminFile,
    /// The database (`token create --save`).
    Database,
}

impl Source {
    /// As shown by `token list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::AdminFile => "admin-file",
            Source::Database => "database",
        }
    }
}

/// One row of `token list`: never the token, never its full hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Token id.
    pub id: String,
    /// Identity name.
    pub name: String,
    /// Where it is configured.
    pub source: Source,
    /// Scope names.
    pub scopes: Vec<String>,
    /// Account prefix.
    pub account_prefix: Option<String>,
    /// Expiry, unix milliseconds.
    pub expires_ms: Option<i64>,
    /// Revocation time, unix milliseconds.
    pub revoked_ms: Option<i64>,
}

/// Token administration errors. Messages name ids and names, never tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenAdminError {
    /// Store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A token id that no config file or database token has.
    #[error("no token has id {0:?} (see `shardgate token list`)")]
    UnknownId(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
}

/// Every token of the deployment (config file, admin file, database) with its state.
pub async fn list(cfg: &Config, store: &dyn Store) -> Result<Vec<Listed>, TokenAdminError> {
    let revoked: BTreeMap<String, i64> = store
        .token_revocations()
        .await?
        .into_iter()
        .map(|r| (r.token_id, r.revoked_ms))
        .collect();
    let mut out = Vec::new();
    for t in &cfg.tokens {
        out.push(Listed {
            id: token_id(&t.sha256),
            name: t.name.clone(),
            source: Source::Config,
            scopes: t.scopes.clone(),
            account_prefix: t.account_prefix.clone(),
            expires_ms: t
                .expires_ms()
                .map_err(|e| TokenAdminError::Invalid(e.to_string()))?,
            revoked_ms: None,
        });
    }
    if let Some(path) = &cfg.admin_token_file {
        if let Ok(text) = crate::domain::files::read_secret_text(path) {
            out.push(Listed {
                id: token_id(&hash_token(text.trim())),
                name: "admin".into(),
                source: Source::AdminFile,
                scopes: vec!["*".into()],
                account_prefix: None,
                expires_ms: None,
                revoked_ms: None,
            });
        }
    }
    for t in store.tokens().await? {
        out.push(Listed {
            id: t.token_id,
            name: t.name,
            source: Source::Database,
            scopes: t.scopes,
            account_prefix: t.account_prefix,
            expires_ms: t.expires_ms,
            revoked_ms: None,
        });
    }
    for l in &mut out {
        l.revoked_ms = revoked.get(&l.id).copied();
    }
    Ok(out)
}

/// Revoke a token id known to the deployment. `Ok(false)` when it was already revoked.
pub async fn revoke(
    cfg: &Config,
    store: &dyn Store,
    id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<bool, TokenAdminError> {
    let id = id.trim().to_ascii_lowercase();
    if !list(cfg, store).await?.iter().any(|l| l.id == id) {
        return Err(TokenAdminError::UnknownId(id));
    }
    Ok(store.revoke_token(&id, now_ms, reason).await?)
}

/// Store a token's hash in the database (`token create --save`); returns its id.
pub async fn save(
    store: &dyn Store,
    name: &str,
    token_sha256: &str,
    scopes: &[String],
    account_prefix: Option<String>,
    expires_ms: Option<i64>,
    now_ms: i64,
) -> Result<String, TokenAdminError> {
    validate(name, scopes, account_prefix.as_deref())?;
    TokenEntry::new(name, token_sha256, scopes, account_prefix.clone())
        .ok_or_else(|| TokenAdminError::Invalid("token hash must be 64 hex characters".into()))?;
    let id = token_id(token_sha256);
    store
        .insert_token(&TokenRecord {
            token_id: id.clone(),
            name: name.to_string(),
            sha256: token_sha256.to_ascii_lowercase(),
            scopes: scopes.to_vec(),
            account_prefix,
            created_ms: now_ms,
            expires_ms,
        })
        .await?;
    Ok(id)
}

/// Scopes, prefix and name a token may carry.
pub fn validate(
    name: &str,
    scopes: &[String],
    account_prefix: Option<&str>,
) -> Result<(), TokenAdminError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(TokenAdminError::Invalid(
            "token name must be 1-128 printable characters".into(),
        ));
    }
    if scopes.is_empty() {
        return Err(TokenAdminError::Invalid("a token needs a scope".into()));
    }
    for s in scopes {
        if s != "*" && Scope::parse(s).is_none() {
            return Err(TokenAdminError::Invalid(format!("unknown scope {s:?}")));
        }
    }
    if let Some(p) = account_prefix {
        if !crate::app::config::is_account_prefix(p) {
            return Err(TokenAdminError::Invalid(format!(
                "account prefix must be non-empty {}",
                crate::domain::ids::ID_CHARSET
            )));
        }
    }
    crate::domain::auth::check_admin_prefix_rule(scopes, account_prefix)
        .map_err(TokenAdminError::Invalid)
}
