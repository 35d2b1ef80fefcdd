//! Bearer-token authentication: tokens are configured as SHA-256 hashes with scopes and an
//! optional account prefix; the presented token is hashed and compared in constant time
//! against every configured hash (no early exit, so timing reveals nothing).

use crate::error::{ApiError, ErrorCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Token prefix, so leaked tokens are easy to grep for in secret scanners.
pub const TOKEN_PREFIX: &str = "sgt_";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `accounts:read`
    AccountsRead,
    /// `accounts:write`
    AccountsWrite,
    /// `accounts:delete`
    AccountsDelete,
    /// `shards:read`
    ShardsRead,
    /// `shards:write`
    ShardsWrite,
    /// `shards:delete`
    ShardsDelete,
    /// `admin`
    Admin,
    /// `metrics`
    Metrics,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 8] = [
        Scope::AccountsRead,
        Scope::AccountsWrite,
        Scope::AccountsDelete,
        Scope::ShardsRead,
        Scope::ShardsWrite,
        Scope::ShardsDelete,
        Scope::Admin,
        Scope::Metrics,
    ];

    /// Parse the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|sc| sc.as_str() == s)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AccountsRead => "accounts:read",
            Scope::AccountsWrite => "accounts:write",
            Scope::AccountsDelete => "accounts:delete",
            Scope::ShardsRead => "shards:read",
            Scope::ShardsWrite => "shards:write",
            Scope::ShardsDelete => "shards:delete",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }
}

/// A configured token (hash only).
#[derive(Debug, Clone)]
pub struct TokenEntry {
    /// Identity name.
    pub name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
    account_prefix: Option<String>,
}

impl TokenEntry {
    /// From a hex hash and scope names (`*` = all). `None` if the hash or a scope is bad.
    pub fn new(
        name: &str,
        sha256_hex: &str,
        scopes: &[String],
        account_prefix: Option<String>,
    ) -> Option<Self> {
        let hash: [u8; 32] = hex::decode(sha256_hex).ok()?.try_into().ok()?;
        let mut parsed = Vec::new();
        for s in scopes {
            if s == "*" {
                parsed.extend(Scope::ALL);
            } else {
                parsed.push(Scope::parse(s)?);
            }
        }
        parsed.sort();
        parsed.dedup();
        Some(Self {
            name: name.to_string(),
            hash,
            scopes: parsed,
            account_prefix,
        })
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token identity name (recorded in audit; never the token).
    pub name: String,
    scopes: Vec<Scope>,
    account_prefix: Option<String>,
}

impl Caller {
    /// A caller authenticated by other means than a bearer token (e.g. a client
    /// certificate), with the same scopes and account reach a token would carry.
    pub fn new(name: &str, scopes: &[Scope], account_prefix: Option<String>) -> Self {
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        Self {
            name: name.to_string(),
            scopes,
            account_prefix,
        }
    }

    /// Whether the caller holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether the caller may reach `account` (exact-byte prefix).
    pub fn reaches(&self, account: &str) -> bool {
        self.account_prefix
            .as_deref()
            .is_none_or(|p| account.as_bytes().starts_with(p.as_bytes()))
    }

    /// `forbidden` unless the caller holds `scope` (and reaches `account`, when given).
    pub fn require(&self, scope: Scope, account: Option<&str>) -> Result<(), ApiError> {
        if !self.has(scope) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this identity lacks the {} scope", scope.as_str()),
            ));
        }
        if let Some(a) = account {
            if !self.reaches(a) {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "this identity may not reach that account",
                ));
            }
        }
        Ok(())
    }
}

/// Verifies bearer tokens.
#[derive(Debug, Clone)]
pub struct Authenticator {
    tokens: Vec<TokenEntry>,
}

/// SHA-256 of a token, lower-case hex (what the config stores).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token (256 bits).
pub fn generate_token() -> SecretString {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut());
    SecretString::from(format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(raw.as_ref())
    ))
}

impl Authenticator {
    /// From configured entries.
    pub fn new(tokens: Vec<TokenEntry>) -> Self {
        Self { tokens }
    }

    /// Number of configured tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The caller a presented `Authorization` header value belongs to.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let unauth = |m: &str| ApiError::new(ErrorCode::Unauthenticated, m);
        let value = authorization.ok_or_else(|| unauth("missing bearer token"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| unauth("authorization must be a bearer token"))?;
        let token = SecretString::from(token.trim().to_string());
        let presented: [u8; 32] = Sha256::digest(token.expose_secret().as_bytes()).into();
        let mut found: Option<&TokenEntry> = None;
        for entry in &self.tokens {
            // Visit every entry whatever matched, so timing does not depend on which did.
            let eq: bool = entry.hash.ct_eq(&presented).into();
            if eq && found.is_none() {
                found = Some(entry);
            }
        }
        let entry = found.ok_or_else(|| unauth("invalid bearer token"))?;
        Ok(Caller {
            name: entry.name.clone(),
            scopes: entry.scopes.clone(),
            account_prefix: entry.account_prefix.clone(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn auth_with(token: &str, scopes: &[&str], prefix: Option<&str>) -> Authenticator {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        Authenticator::new(vec![TokenEntry::new(
            "t",
            &hash_token(token),
            &scopes,
            prefix.map(String::from),
        )
        .unwrap()])
    }

    #[test]
    fn right_token_authenticates_and_scopes_apply() {
        let a = auth_with("sgt_abc", &["shards:read"], None);
        let c = a.authenticate(Some("Bearer sgt_abc")).unwrap();
        assert!(c.require(Scope::ShardsRead, Some("x")).is_ok());
        assert_eq!(
            c.require(Scope::ShardsWrite, None).unwrap_err().code,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn wrong_or_missing_token_is_unauthenticated() {
        let a = auth_with("sgt_abc", &["*"], None);
        for h in [
            None,
            Some("Bearer sgt_abd"),
            Some("Basic x"),
            Some("Bearer "),
        ] {
            assert_eq!(
                a.authenticate(h).unwrap_err().code,
                ErrorCode::Unauthenticated
            );
        }
    }

    #[test]
    fn prefix_is_exact_bytes() {
        let a = auth_with("sgt_abc", &["*"], Some("acct-A"));
        let c = a.authenticate(Some("Bearer sgt_abc")).unwrap();
        assert!(c.reaches("acct-A1"));
        assert!(!c.reaches("acct-a1"));
        assert!(!c.reaches("acct-"));
    }

    #[test]
    fn generated_tokens_are_distinct_and_prefixed() {
        let a = generate_token();
        let b = generate_token();
        assert!(a.expose_secret().starts_with(TOKEN_PREFIX));
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(!format!("{a:?}").contains(a.expose_secret()));
    }
}
