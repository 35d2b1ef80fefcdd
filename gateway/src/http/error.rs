//! The one map from failures to HTTP: every error code, its status, and its JSON body, and
//! the one conversion of the layers' errors ([`DomainError`], and the store's and backends'
//! own) into answers.

use crate::domain::error::{DomainError, Outcome};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shardgate_backends::BackendError;
use shardgate_store::StoreError;

/// Every error code of the API (DESIGN.md's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: malformed request.
    InvalidRequest,
    /// 400: an id breaks the id grammar.
    InvalidId,
    /// 400: shard bytes are not standard base64.
    InvalidBase64,
    /// 400: zero-length shard.
    EmptyShard,
    /// 400: tier not declared in the config.
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
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 409.
    VersionConflict,
    /// 409: a tier change would lower the account's protection and was not confirmed.
    DowngradeRefused,
    /// 413.
    PayloadTooLarge,
    /// 414: the request target is longer than `[limits] max_uri_bytes`.
    UriTooLong,
    /// 429.
    RateLimited,
    /// 500: a stored envelope does not open (tampering or corruption).
    IntegrityFailure,
    /// 500.
    Internal,
    /// 502: the backend refuses the key.
    KeyUnusable,
    /// 503.
    BackendUnavailable,
    /// 503.
    StoreUnavailable,
    /// 503.
    AuditUnavailable,
    /// 504.
    DeadlineExceeded,
}

impl ErrorCode {
    /// Every code, in the table's order (the OpenAPI document lists them per status).
    pub const ALL: [ErrorCode; 24] = {
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

    /// The HTTP status of the code; the only place statuses of errors are decided.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            InvalidRequest | InvalidId | InvalidBase64 | EmptyShard | UnknownTier => {
                StatusCode::BAD_REQUEST
            }
            Unauthenticated => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            AccountNotFound | ShardNotFound | VersionNotFound | NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            VersionConflict | DowngradeRefused => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UriTooLong => StatusCode::URI_TOO_LONG,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            IntegrityFailure | Internal => StatusCode::INTERNAL_SERVER_ERROR,
            KeyUnusable => StatusCode::BAD_GATEWAY,
            BackendUnavailable | StoreUnavailable | AuditUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
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
        }
    }

    /// Whether answers with this status carry `Retry-After` (429 and 503).
    pub fn status_carries_retry_after(status: StatusCode) -> bool {
        matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        )
    }

    fn retry_after(self) -> Option<u32> {
        Self::status_carries_retry_after(self.status()).then_some(1)
    }
}

/// An API error: a code and a message that never carries secrets or internal error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The code.
    pub code: ErrorCode,
    /// Human-readable, secret-free.
    pub message: String,
    /// `Retry-After` seconds when the code's default (1 s for 429 and 503) is too short.
    retry_after_secs: Option<u32>,
}

/// `{"error":{"code":..,"message":..}}`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inner error object.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code (DESIGN.md table).
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// The same error with `Retry-After: secs` (for codes that carry one: 429 and 503).
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.code.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self
            .code
            .retry_after()
            .map(|d| self.retry_after_secs.unwrap_or(d))
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// Whole seconds for `Retry-After` (RFC 9110: delay-seconds), rounded up: never sooner
/// than the guard can admit a retry, and at least 1.
fn retry_after_secs(ms: u64) -> u32 {
    u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1)
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            // Logged and counted (with the row's backend) where a stored row is opened:
            // `crate::service::integrity::open_error`.
            BackendError::Integrity => ApiError::new(
                ErrorCode::IntegrityFailure,
                "the stored envelope failed its integrity check",
            ),
            BackendError::KeyUnusable(reason) => {
                tracing::warn!(%reason, "backend refused the key");
                ApiError::new(ErrorCode::KeyUnusable, "the backend refused the key")
            }
            // The gateway's key lifecycle: the text is written for the caller.
            BackendError::Refused(message) => ApiError::new(ErrorCode::KeyUnusable, message),
            BackendError::Unavailable(reason) => {
                tracing::warn!(%reason, "backend unavailable");
                ApiError::new(
                    ErrorCode::BackendUnavailable,
                    "the key backend is unavailable",
                )
            }
            BackendError::Shed {
                reason,
                retry_after_ms,
            } => {
                // Not a warning each: a flood turned away would flood the log.
                tracing::debug!(%reason, retry_after_ms, "backend call turned away by its guard");
                ApiError::new(
                    ErrorCode::BackendUnavailable,
                    "the key backend is unavailable",
                )
                .retry_after(retry_after_secs(retry_after_ms))
            }
            BackendError::DeadlineExceeded => {
                ApiError::new(ErrorCode::DeadlineExceeded, "the request deadline passed")
            }
            BackendError::Internal(reason) => {
                tracing::error!(%reason, "backend internal error");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AccountNotFound => {
                ApiError::new(ErrorCode::AccountNotFound, "no such account")
            }
            StoreError::ShardNotFound => ApiError::new(ErrorCode::ShardNotFound, "no such shard"),
            StoreError::Conflict { latest } => ApiError::new(
                ErrorCode::VersionConflict,
                format!(
                    "the shard's latest version is {}",
                    latest.map_or("none".to_string(), |v| v.to_string())
                ),
            ),
            // A shard write retries this itself; only a write that lost every try to tier
            // changes of its account answers it.
            StoreError::AccountChanged => ApiError::new(
                ErrorCode::VersionConflict,
                "the account's tier changed during the write; retry",
            ),
            StoreError::KeyDestroyed {
                backend,
                key_version,
            } => ApiError::new(
                ErrorCode::KeyUnusable,
                crate::domain::keys::destroyed_message(&backend, key_version),
            ),
            StoreError::AuditUnavailable(reason) => {
                tracing::error!(%reason, "audit write failed; request refused");
                metrics::counter!("shardgate_audit_failures_total").increment(1);
                ApiError::new(
                    ErrorCode::AuditUnavailable,
                    "the audit log cannot be written; request refused",
                )
            }
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "store unavailable");
                ApiError::new(ErrorCode::StoreUnavailable, "the store is unavailable")
            }
            StoreError::Internal(reason) => {
                tracing::error!(%reason, "store internal error");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid(m) => ApiError::new(ErrorCode::InvalidRequest, m),
            e @ DomainError::InvalidId { .. } => ApiError::new(ErrorCode::InvalidId, e.to_string()),
            DomainError::Unauthenticated(m) => ApiError::new(ErrorCode::Unauthenticated, m),
            DomainError::Forbidden(m) => ApiError::new(ErrorCode::Forbidden, m),
            DomainError::AccountNotFound(m) => ApiError::new(ErrorCode::AccountNotFound, m),
            e @ DomainError::UnknownTier => ApiError::new(ErrorCode::UnknownTier, e.to_string()),
            e @ DomainError::VersionNotFound => {
                ApiError::new(ErrorCode::VersionNotFound, e.to_string())
            }
            DomainError::NotFound(m) => ApiError::new(ErrorCode::NotFound, m),
            DomainError::Conflict(m) => ApiError::new(ErrorCode::VersionConflict, m),
            DomainError::DowngradeRefused(m) => ApiError::new(ErrorCode::DowngradeRefused, m),
            DomainError::RateLimited {
                message,
                retry_after_secs,
            } => ApiError::new(ErrorCode::RateLimited, message).retry_after(retry_after_secs),
            DomainError::KeyUnusable(m) => ApiError::new(ErrorCode::KeyUnusable, m),
            e @ DomainError::AuditUnavailable => {
                ApiError::new(ErrorCode::AuditUnavailable, e.to_string())
            }
            DomainError::Internal(reason) => {
                tracing::error!(%reason, "internal error");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
            DomainError::Backend(e) => e.into(),
            DomainError::Store(e) => e.into(),
        }
    }
}

impl From<shardgate_policy::InvalidId> for ApiError {
    fn from(e: shardgate_policy::InvalidId) -> Self {
        DomainError::from(e).into()
    }
}

impl Outcome for ApiError {
    fn outcome(&self) -> &str {
        self.code.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::AuditUnavailable,
            ErrorCode::DeadlineExceeded,
            ErrorCode::KeyUnusable,
        ] {
            let json = serde_json::to_value(code).ok();
            assert_eq!(json, Some(serde_json::Value::String(code.as_str().into())));
        }
    }

    #[test]
    fn all_lists_every_code_once() {
        // A new variant breaks this match until it is added here and to `ALL`.
        let index = |c: ErrorCode| -> usize {
            use ErrorCode::*;
            match c {
                InvalidRequest => 0,
                InvalidId => 1,
                InvalidBase64 => 2,
                EmptyShard => 3,
                UnknownTier => 4,
                Unauthenticated => 5,
                Forbidden => 6,
                AccountNotFound => 7,
                ShardNotFound => 8,
                VersionNotFound => 9,
                NotFound => 10,
                MethodNotAllowed => 11,
                VersionConflict => 12,
                DowngradeRefused => 13,
                PayloadTooLarge => 14,
                UriTooLong => 15,
                RateLimited => 16,
                IntegrityFailure => 17,
                Internal => 18,
                KeyUnusable => 19,
                BackendUnavailable => 20,
                StoreUnavailable => 21,
                AuditUnavailable => 22,
                DeadlineExceeded => 23,
            }
        };
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(index(*code), i, "{code:?}");
        }
    }

    #[test]
    fn a_shed_call_s_retry_after_is_its_delay_rounded_up_to_whole_seconds() {
        let secs = |ms| {
            let e = BackendError::Shed {
                reason: "circuit open".into(),
                retry_after_ms: ms,
            };
            let resp = ApiError::from(e).into_response();
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            resp.headers()[header::RETRY_AFTER]
                .to_str()
                .map(str::to_string)
                .unwrap_or_default()
        };
        assert_eq!(secs(0), "1");
        assert_eq!(secs(1), "1");
        assert_eq!(secs(1_000), "1");
        assert_eq!(secs(1_001), "2");
        assert_eq!(secs(599_200), "600");
    }

    #[test]
    fn unavailable_codes_carry_retry_after() {
        let resp = ApiError::new(ErrorCode::StoreUnavailable, "x").into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn domain_outcomes_are_the_codes_their_answers_carry() {
        let cases = vec![
            DomainError::Invalid("x".into()),
            DomainError::InvalidId { kind: "account" },
            DomainError::Unauthenticated("x".into()),
            DomainError::Forbidden("x".into()),
            DomainError::AccountNotFound("x".into()),
            DomainError::UnknownTier,
            DomainError::VersionNotFound,
            DomainError::NotFound("x".into()),
            DomainError::Conflict("x".into()),
            DomainError::DowngradeRefused("x".into()),
            DomainError::RateLimited {
                message: "x".into(),
                retry_after_secs: 2,
            },
            DomainError::KeyUnusable("x".into()),
            DomainError::AuditUnavailable,
            DomainError::Internal("x".into()),
            DomainError::Backend(BackendError::Integrity),
            DomainError::Backend(BackendError::KeyUnusable("x".into())),
            DomainError::Backend(BackendError::Refused("x".into())),
            DomainError::Backend(BackendError::Unavailable("x".into())),
            DomainError::Backend(BackendError::DeadlineExceeded),
            DomainError::Backend(BackendError::Internal("x".into())),
            DomainError::Store(StoreError::AccountNotFound),
            DomainError::Store(StoreError::ShardNotFound),
            DomainError::Store(StoreError::Conflict { latest: Some(3) }),
            DomainError::Store(StoreError::AccountChanged),
            DomainError::Store(StoreError::KeyDestroyed {
                backend: "b".into(),
                key_version: 1,
            }),
            DomainError::Store(StoreError::AuditUnavailable("x".into())),
            DomainError::Store(StoreError::Unavailable("x".into())),
            DomainError::Store(StoreError::Internal("x".into())),
        ];
        for e in cases {
            let outcome = e.outcome();
            assert_eq!(ApiError::from(e).code.as_str(), outcome);
        }
    }

    #[test]
    fn invalid_ids_never_echo_the_value() {
        let e = ApiError::from(DomainError::InvalidId { kind: "shard" });
        assert_eq!(e.code, ErrorCode::InvalidId);
        assert_eq!(
            e.message,
            "shard id must match [A-Za-z0-9._:-]{1,128} and not be '.' or '..'"
        );
    }
}
