//! [`DomainError`]: why a use case or a domain rule failed, in words that hold whatever the
//! transport. The HTTP layer maps it to a status and an error code once
//! (`crate::http::error`); audit events name it by [`DomainError::outcome`].

use shardgate_backends::BackendError;
use shardgate_store::StoreError;

/// Why a use case failed. Messages are written for the caller: never a secret, never
/// internal error text (the store's and backends' own errors keep theirs for the log, and the
/// HTTP layer answers them with fixed messages).
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The request is malformed or asks for something the rules refuse.
    #[error("{0}")]
    Invalid(String),
    /// An id breaks the id grammar; `kind` is `account` or `shard`. The bad value is not kept:
    /// it may be attacker-chosen bytes.
    #[error("{kind} id must match {rule}", rule = shardgate_policy::ID_RULE)]
    InvalidId {
        /// Which id.
        kind: &'static str,
    },
    /// No credential, or one that is not (or no longer) valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such account.
    #[error("{0}")]
    AccountNotFound(String),
    /// The tier is not one the served policy version declares (after reading the database's
    /// newest version).
    #[error("the tier is not declared in the served policy version (GET /v1/admin/policy)")]
    UnknownTier,
    /// The shard exists but not that version of it.
    #[error("no such version of the shard")]
    VersionNotFound,
    /// No such thing (a job, a backend, a key version), named in the message.
    #[error("{0}")]
    NotFound(String),
    /// The state changed under the request (a job's state, a key's state, a version).
    #[error("{0}")]
    Conflict(String),
    /// A tier change would lower the account's protection (its new placement's backend kind
    /// ranks below the current one's, [`crate::domain::protection`]) and the request did not
    /// confirm it: nothing was changed.
    #[error("{0}")]
    DowngradeRefused(String),
    /// The caller is over its request rate; retry after `retry_after_secs`.
    #[error("{message}")]
    RateLimited {
        /// What the caller reads.
        message: String,
        /// Seconds until a retry can pass.
        retry_after_secs: u32,
    },
    /// The backend (or the gateway's key lifecycle) refuses the key.
    #[error("{0}")]
    KeyUnusable(String),
    /// The audit log cannot be written, so the request is refused (fail closed).
    #[error("the audit log cannot be written; request refused")]
    AuditUnavailable,
    /// Something that cannot happen did.
    #[error("internal error: {0}")]
    Internal(String),
    /// A key backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DomainError {
    /// The outcome an audit event records for this failure: the snake_case name of the
    /// contract's error table (DESIGN.md), the same word the HTTP answer carries.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_request",
            Self::InvalidId { .. } => "invalid_id",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::AccountNotFound(_) => "account_not_found",
            Self::UnknownTier => "unknown_tier",
            Self::VersionNotFound => "version_not_found",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "version_conflict",
            Self::DowngradeRefused(_) => "downgrade_refused",
            Self::RateLimited { .. } => "rate_limited",
            Self::KeyUnusable(_) => "key_unusable",
            Self::AuditUnavailable => "audit_unavailable",
            Self::Internal(_) => "internal",
            Self::Backend(e) => match e {
                BackendError::Integrity => "integrity_failure",
                BackendError::KeyUnusable(_) | BackendError::Refused(_) => "key_unusable",
                BackendError::Unavailable(_) | BackendError::Shed { .. } => "backend_unavailable",
                BackendError::DeadlineExceeded => "deadline_exceeded",
                BackendError::Internal(_) => "internal",
            },
            Self::Store(e) => match e {
                StoreError::AccountNotFound => "account_not_found",
                StoreError::ShardNotFound => "shard_not_found",
                StoreError::Conflict { .. } | StoreError::AccountChanged => "version_conflict",
                StoreError::KeyDestroyed { .. } => "key_unusable",
                StoreError::AuditUnavailable(_) => "audit_unavailable",
                StoreError::Unavailable(_) => "store_unavailable",
                StoreError::Internal(_) => "internal",
            },
        }
    }
}

/// What an audit event's outcome is read from: a domain failure, or an HTTP layer's answer.
pub trait Outcome {
    /// The snake_case outcome word.
    fn outcome(&self) -> &str;
}

impl Outcome for DomainError {
    fn outcome(&self) -> &str {
        DomainError::outcome(self)
    }
}

impl From<shardgate_policy::InvalidId> for DomainError {
    fn from(e: shardgate_policy::InvalidId) -> Self {
        DomainError::InvalidId {
            kind: e.kind.as_str(),
        }
    }
}

/// Shorthand for domain results.
pub type DomainResult<T> = Result<T, DomainError>;
