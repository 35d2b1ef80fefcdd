//! What a call can fail with: the gateway's answer (its documented error code, message,
//! `Retry-After` and request id), or a failure on the way there. One enum, so a caller
//! matches on codes, not on strings.

use std::time::Duration;

/// The gateway's error codes (docs/design.md, the error table). A code this client does not
/// know yet (a newer gateway) is kept as [`ErrorCode::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: malformed request.
    InvalidRequest,
    /// 400: an id breaks the id grammar.
    InvalidId,
    /// 400: shard bytes are not standard base64.
    InvalidBase64,
    /// 400: zero-length shard.
    EmptyShard,
    /// 400: the tier is not in the served policy.
    UnknownTier,
    /// 401.
    Unauthenticated,
    /// 403.
    Forbidden,
    /// 404.
    AccountNotFound,
    /// 404.
    ShardNotFound,
    /// 404.
    VersionNotFound,
    /// 404: no such route.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 409.
    VersionConflict,
    /// 409: the tier change would lower the account's protection (HSM to KMS or local, KMS
    /// to local); [`crate::Client::put_account_allowing_downgrade`] with an admin credential
    /// confirms it.
    DowngradeRefused,
    /// 413.
    PayloadTooLarge,
    /// 414.
    UriTooLong,
    /// 429: retried by the client within the call's deadline.
    RateLimited,
    /// 500: a stored envelope does not open.
    IntegrityFailure,
    /// 500.
    Internal,
    /// 502: the backend refuses the key.
    KeyUnusable,
    /// 503: retried by the client within the call's deadline.
    BackendUnavailable,
    /// 503: retried by the client within the call's deadline.
    StoreUnavailable,
    /// 503: retried by the client within the call's deadline.
    AuditUnavailable,
    /// 504: the request's deadline passed.
    DeadlineExceeded,
    /// A code this client does not know.
    Other(String),
}

impl ErrorCode {
    /// Every code this client knows.
    const KNOWN: [ErrorCode; 24] = {
        use ErrorCode::*;
        [
            InvalidRequest,
            InvalidId,
            InvalidBase64,
            EmptyShard,
            UnknownTier,
            Unauthenticated,
            Forbidden,
            AccountNotFound,
            ShardNotFound,
            VersionNotFound,
            NotFound,
            MethodNotAllowed,
            VersionConflict,
            DowngradeRefused,
            PayloadTooLarge,
            UriTooLong,
            RateLimited,
            IntegrityFailure,
            Internal,
            KeyUnusable,
            BackendUnavailable,
            StoreUnavailable,
            AuditUnavailable,
            DeadlineExceeded,
        ]
    };

    /// The code of a wire name.
    pub fn from_wire(s: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|c| c.as_str() == s)
            .cloned()
            .unwrap_or_else(|| ErrorCode::Other(s.to_string()))
    }

    /// The wire name (`shard_not_found`, ...).
    pub fn as_str(&self) -> &str {
        use ErrorCode::*;
        match self {
            InvalidRequest => "invalid_request",
            InvalidId => "invalid_id",
            InvalidBase64 => "invalid_base64",
            EmptyShard => "empty_shard",
            UnknownTier => "unknown_tier",
            Unauthenticated => "unauthenticated",
            Forbidden => "forbidden",
            AccountNotFound => "account_not_found",
            ShardNotFound => "shard_not_found",
            VersionNotFound => "version_not_found",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            VersionConflict => "version_conflict",
            DowngradeRefused => "downgrade_refused",
            PayloadTooLarge => "payload_too_large",
            UriTooLong => "uri_too_long",
            RateLimited => "rate_limited",
            IntegrityFailure => "integrity_failure",
            Internal => "internal",
            KeyUnusable => "key_unusable",
            BackendUnavailable => "backend_unavailable",
            StoreUnavailable => "store_unavailable",
            AuditUnavailable => "audit_unavailable",
            DeadlineExceeded => "deadline_exceeded",
            Other(s) => s,
        }
    }

    /// Whether the gateway says "try again later" with this code (429 and 503).
    pub fn is_transient(&self) -> bool {
        use ErrorCode::*;
        matches!(
            self,
            RateLimited | BackendUnavailable | StoreUnavailable | AuditUnavailable
        )
    }
}

/// An error answer of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (0 for an item of a batch read, answered inside its 200).
    pub status: u16,
    /// The documented code.
    pub code: ErrorCode,
    /// The gateway's message (never secret).
    pub message: String,
    /// `Retry-After`, when the answer carried one.
    pub retry_after: Option<Duration>,
    /// The request's `X-Request-Id` (the one to quote to an operator).
    pub request_id: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}: {}", self.status, self.code, self.message)?;
        if let Some(id) = &self.request_id {
            write!(f, " (request {id})")?;
        }
        Ok(())
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The gateway answered with an error (after the retries the call allowed).
    #[error("shardgate: {0}")]
    Api(ApiError),
    /// No answer: connection refused or reset, TLS, a timeout of one attempt.
    #[error("shardgate unreachable: {0}")]
    Transport(String),
    /// The call's deadline passed before an answer that ends it.
    #[error("the call's deadline passed{}", last.as_ref().map(|e| format!(" (last: {e})")).unwrap_or_default())]
    Deadline {
        /// The last failure before the deadline, if there was an attempt.
        last: Option<Box<Error>>,
    },
    /// An answer that is not what the API documents.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The client's own configuration or input is wrong (never sent).
    #[error("invalid client input: {0}")]
    Invalid(String),
}

impl Error {
    /// The gateway's error code, when the gateway answered.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Error::Api(e) => Some(&e.code),
            Error::Deadline { last: Some(e) } => e.code(),
            _ => None,
        }
    }

    /// The gateway's `Retry-After`, when its answer carried one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api(e) => e.retry_after,
            Error::Deadline { last: Some(e) } => e.retry_after(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_and_unknown_codes_are_kept() {
        assert_eq!(
            ErrorCode::from_wire("shard_not_found"),
            ErrorCode::ShardNotFound
        );
        assert_eq!(
            ErrorCode::from_wire("downgrade_refused"),
            ErrorCode::DowngradeRefused
        );
        // A code of a newer gateway is kept as it came.
        assert_eq!(
            ErrorCode::from_wire("approval_required"),
            ErrorCode::Other("approval_required".into())
        );
        for wire in [
            "invalid_id",
            "rate_limited",
            "deadline_exceeded",
            "some_new_code",
        ] {
            assert_eq!(ErrorCode::from_wire(wire).as_str(), wire);
        }
        assert!(ErrorCode::from_wire("store_unavailable").is_transient());
        assert!(!ErrorCode::from_wire("internal").is_transient());
    }

    #[test]
    fn a_deadline_error_still_names_the_last_code() {
        let last = Error::Api(ApiError {
            status: 429,
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(3)),
            request_id: None,
        });
        let e = Error::Deadline {
            last: Some(Box::new(last)),
        };
        assert_eq!(e.code(), Some(&ErrorCode::RateLimited));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    }
}
