//! Bearer-token authentication: tokens are configured as SHA-256 hashes with scopes, an
//! optional account prefix and an optional expiry; the presented token is hashed and compared
//! in constant time against every known hash (no early exit, so timing reveals nothing), then
//! refused when it has expired or its id is revoked. Where the set of tokens comes from and
//! how it is reloaded is [`crate::domain::tokens`].

use crate::domain::audit::{keyed_digest, AuditKey};
use crate::domain::error::DomainError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
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
    /// `audit:read`: search the audit trail (an account prefix bounds what it sees).
    AuditRead,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 9] = [
        Scope::AccountsRead,
        Scope::AccountsWrite,
        Scope::AccountsDelete,
        Scope::ShardsRead,
        Scope::ShardsWrite,
        Scope::ShardsDelete,
        Scope::Admin,
        Scope::Metrics,
        Scope::AuditRead,
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
            Scope::AuditRead => "audit:read",
        }
    }
}

/// A known token (hash only).
#[derive(Debug, Clone)]
pub struct TokenEntry {
    /// Identity name.
    pub name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
    account_prefix: Option<String>,
    expires_ms: Option<i64>,
}

/// Length of a token id in hex digits: 64 bits of the token's SHA-256.
pub const TOKEN_ID_HEX: usize = 16;

/// The id of a token given its hex SHA-256: its first 16 hex digits. Ids name tokens in
/// `token list` and `token revoke`; the audit log records only their HMAC
/// ([`credential_id`]).
pub fn token_id(sha256_hex: &str) -> String {
    sha256_hex
        .get(..TOKEN_ID_HEX)
        .unwrap_or(sha256_hex)
        .to_ascii_lowercase()
}

/// What the audit log records of a credential: HMAC-SHA256 of its token id under the
/// deployment's audit key (domain `shardgate token id`), first 128 bits in hex. Someone
/// with the audit table alone can neither recover the id nor test a guess; an investigator
/// with the key computes it with `shardgate audit credential-id`.
pub fn credential_id(key: &AuditKey, token_id: &str) -> String {
    let d = keyed_digest(key, b"shardgate token id", &[token_id.as_bytes()]);
    hex::encode(d.get(..16).unwrap_or(&d))
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
            expires_ms: None,
        })
    }

    /// The same token, valid until `expires_ms` (unix milliseconds) when given.
    pub fn expiring(mut self, expires_ms: Option<i64>) -> Self {
        self.expires_ms = expires_ms;
        self
    }

    /// Its token id.
    pub fn id(&self) -> String {
        token_id(&hex::encode(self.hash))
    }
}

/// The admin rule, checked wherever a credential is made (`token create`, `[[tokens]]`,
/// `[[tls.clients]]`): `admin` (also through `*`) never goes with an account prefix, because
/// admin operations with global effect cannot be bounded by one. `Err` is the message.
pub fn check_admin_prefix_rule(
    scopes: &[String],
    account_prefix: Option<&str>,
) -> Result<(), String> {
    if account_prefix.is_none() {
        return Ok(());
    }
    if scopes.iter().any(|s| s == "*") {
        return Err("scope '*' includes admin, which cannot go with an account prefix: list the scopes the token needs, or drop the prefix".into());
    }
    if scopes.iter().any(|s| s == Scope::Admin.as_str()) {
        return Err("the admin scope cannot go with an account prefix (admin operations with global effect need a token without one): make a separate admin token".into());
    }
    Ok(())
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token identity name (recorded in audit; never the token).
    pub name: String,
    scopes: Vec<Scope>,
    account_prefix: Option<String>,
    /// The credential's [`credential_id`], recorded with every audit event of the request.
    pub credential: Option<String>,
    /// What per-caller state keys on ([`Caller::key`]).
    key: String,
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
            credential: None,
            key: format!("identity:{name}"),
        }
    }

    /// The same caller, its per-caller state keyed on `key` (e.g. a certificate entry's
    /// matcher, which no other entry shares).
    pub fn keyed(mut self, key: String) -> Self {
        self.key = key;
        self
    }

    /// What rate-limit buckets and idempotency scopes key on: one credential, never a name
    /// that several credentials may share (two tokens both called `token` are two callers).
    /// A bearer token's [`credential_id`] (its token id when no audit key is known: tools
    /// and unit tests); a certificate identity's entry.
    pub fn key(&self) -> &str {
        &self.key
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

    /// The caller's account prefix, if it carries one.
    pub fn account_prefix(&self) -> Option<&str> {
        self.account_prefix.as_deref()
    }

    /// Whether the caller carries an account prefix.
    pub fn is_prefixed(&self) -> bool {
        self.account_prefix.is_some()
    }

    /// `forbidden` unless the caller holds `scope` and carries NO account prefix: the rule
    /// for operations with global effect (key state, backend-wide migrations, breakers, key
    /// listing), which no account prefix can bound.
    pub fn require_unprefixed(&self, scope: Scope) -> Result<(), DomainError> {
        self.require(scope, None)?;
        if self.is_prefixed() {
            return Err(DomainError::Forbidden(
                "this operation has global effect: it needs a token without an account prefix"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `forbidden` unless the caller holds `scope` (and reaches `account`, when given).
    pub fn require(&self, scope: Scope, account: Option<&str>) -> Result<(), DomainError> {
        if !self.has(scope) {
            return Err(DomainError::Forbidden(format!(
                "this identity lacks the {} scope",
                scope.as_str()
            )));
        }
        if let Some(a) = account {
            if !self.reaches(a) {
                return Err(DomainError::Forbidden(
                    "this identity may not reach that account".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Verifies bearer tokens against one snapshot of the known tokens and revocations.
#[derive(Debug, Clone)]
pub struct Authenticator {
    tokens: Vec<Known>,
    key: Option<std::sync::Arc<AuditKey>>,
}

#[derive(Debug, Clone)]
struct Known {
    entry: TokenEntry,
    revoked: bool,
    credential: Option<String>,
}

/// Why a presented credential was refused, with what the audit event of the refusal names.
#[derive(Debug)]
pub struct Refusal {
    /// The answer (always [`DomainError::Unauthenticated`]: 401 `unauthenticated`).
    pub error: DomainError,
    /// The identity whose token it was (expired or revoked), else `anonymous`.
    pub actor: String,
    /// The presented token's [`credential_id`], when a token was presented.
    pub credential: Option<String>,
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
    /// From entries, without revocations or credential ids (tests, tools).
    pub fn new(tokens: Vec<TokenEntry>) -> Self {
        Self::with_revocations(tokens, &HashSet::new(), None)
    }

    /// From entries and the revoked token ids; with the audit key, callers carry their
    /// [`credential_id`].
    pub fn with_revocations(
        tokens: Vec<TokenEntry>,
        revoked: &HashSet<String>,
        key: Option<std::sync::Arc<AuditKey>>,
    ) -> Self {
        let tokens = tokens
            .into_iter()
            .map(|entry| {
                let id = entry.id();
                Known {
                    revoked: revoked.contains(&id),
                    credential: key.as_deref().map(|k| credential_id(k, &id)),
                    entry,
                }
            })
            .collect();
        Self { tokens, key }
    }

    /// Number of known tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The caller a presented `Authorization` header value belongs to, at `now_ms`.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        now_ms: i64,
    ) -> Result<Caller, Refusal> {
        let refuse = |m: &str, actor: &str, credential: Option<String>| Refusal {
            error: DomainError::Unauthenticated(m.to_string()),
            actor: actor.to_string(),
            credential,
        };
        let Some(value) = authorization else {
            return Err(refuse("missing bearer token", "anonymous", None));
        };
        // The scheme is case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer`, `BEARER`.
        let Some(token) = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
        else {
            return Err(refuse(
                "authorization must be a bearer token",
                "anonymous",
                None,
            ));
        };
        let token = SecretString::from(token.trim().to_string());
        let presented: [u8; 32] = Sha256::digest(token.expose_secret().as_bytes()).into();
        let mut found: Option<&Known> = None;
        for known in &self.tokens {
            // Visit every entry whatever matched, so timing does not depend on which did.
            let eq: bool = known.entry.hash.ct_eq(&presented).into();
            if eq && found.is_none() {
                found = Some(known);
            }
        }
        let Some(known) = found else {
            let credential = self
                .key
                .as_deref()
                .map(|k| credential_id(k, &token_id(&hex::encode(presented))));
            return Err(refuse("invalid bearer token", "anonymous", credential));
        };
        let entry = &known.entry;
        if known.revoked {
            return Err(refuse(
                "bearer token revoked",
                &entry.name,
                known.credential.clone(),
            ));
        }
        if entry.expires_ms.is_some_and(|at| now_ms >= at) {
            return Err(refuse(
                "bearer token expired",
                &entry.name,
                known.credential.clone(),
            ));
        }
        let key = match &known.credential {
            Some(c) => format!("credential:{c}"),
            None => format!("token:{}", entry.id()),
        };
        Ok(Caller {
            name: entry.name.clone(),
            scopes: entry.scopes.clone(),
            account_prefix: entry.account_prefix.clone(),
            credential: known.credential.clone(),
            key,
        })
    }
}

#[cfg(test)]
mod tests;
