//! `Idempotency-Key` on shard and account writes: the key resolved to its scope and request
//! hash, the record stored with the write's answer, and the replay of that answer.

use super::api::Ctx;
use super::error::{ApiError, ErrorCode};
use super::state::AppState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use shardgate_store::IdempotencyRecord;
use std::sync::atomic::{AtomicI64, Ordering};
use tracing::Instrument as _;

/// The request header naming a retry-safe write.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Set on an answer replayed from an earlier request with the same `Idempotency-Key`.
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// How often (at most) a process purges expired idempotency records, in milliseconds.
const IDEMPOTENCY_PURGE_EVERY_MS: i64 = 60_000;

/// A write request's `Idempotency-Key`, resolved to its scope (caller identity + method +
/// path) and request hash.
///
/// A retry with the same key, scope and request gets the first answer again (same status
/// and body, plus `Idempotent-Replayed: true`) for `[idempotency] window_secs`; the same key
/// with another request is 409 `version_conflict`. The record commits in the same
/// transaction as the write, so there is never a write without its key or a key without
/// its write. Two concurrent requests with one key: exactly one writes; the other waits for
/// it (on the key's row in PostgreSQL, on the write lock in SQLite, and on this process's
/// audit chain lock) and then replays its answer. Only successful answers are stored: a
/// failed request may be retried with the same key.
pub(crate) struct IdemKey {
    scope: String,
    key: String,
    hash: Vec<u8>,
    now_ms: i64,
    pub(crate) expired_before_ms: i64,
}

impl IdemKey {
    /// The key of the request, if it carries one; 400 `invalid_request` if it is not 1 to
    /// 128 printable ASCII characters. `request` lists the fields that define the request
    /// (the hash is length-prefixed, salted with the scope and key).
    pub(crate) fn from_headers(
        state: &AppState,
        headers: &HeaderMap,
        ctx: &Ctx,
        method: &str,
        path: &str,
        request: &[&[u8]],
    ) -> Result<Option<IdemKey>, ApiError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let invalid = || {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "Idempotency-Key must be 1 to 128 printable ASCII characters",
            )
        };
        if values.next().is_some() {
            return Err(invalid());
        }
        let key = value.to_str().map_err(|_| invalid())?;
        if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(invalid());
        }
        // The credential, not the identity name: tokens sharing a name never share keys.
        let caller = ctx.caller.key();
        let scope = format!("{}:{caller} {method} {path}", caller.len());
        // Keyed (audit key, not in the database): the stored hash covers the shard bytes,
        // and a plain hash would let someone with database access test guesses of them.
        let parts: Vec<&[u8]> = [scope.as_bytes(), key.as_bytes()]
            .into_iter()
            .chain(request.iter().copied())
            .collect();
        let hash = state
            .audit
            .keyed_digest(b"shardgate idempotency request v1", &parts);
        let now_ms = crate::now_ms();
        let window_ms =
            i64::try_from(state.idempotency.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Ok(Some(IdemKey {
            scope,
            key: key.to_string(),
            hash,
            now_ms,
            expired_before_ms: now_ms.saturating_sub(window_ms),
        }))
    }

    /// The record to store with the write's answer.
    pub(crate) fn record(
        &self,
        status: StatusCode,
        body: &impl Serialize,
    ) -> Result<IdempotencyRecord, ApiError> {
        Ok(IdempotencyRecord {
            scope: self.scope.clone(),
            key: self.key.clone(),
            request_hash: self.hash.clone(),
            status: i32::from(status.as_u16()),
            body_json: serde_json::to_string(body)
                .map_err(|_| ApiError::new(ErrorCode::Internal, "answer not serialisable"))?,
            created_at: self.now_ms,
        })
    }

    /// The stored answer, when a live record of this key exists.
    pub(crate) async fn lookup(&self, state: &AppState) -> Result<Option<Response>, ApiError> {
        match state.store.get_idempotency(&self.scope, &self.key).await? {
            Some(rec) if rec.created_at >= self.expired_before_ms => self.replay(rec).map(Some),
            _ => Ok(None),
        }
    }

    /// Answer a retry with the first answer, or 409 if the key was used for another request.
    pub(crate) fn replay(&self, rec: IdempotencyRecord) -> Result<Response, ApiError> {
        if rec.request_hash != self.hash {
            return Err(ApiError::new(
                ErrorCode::VersionConflict,
                "Idempotency-Key reused with a different request",
            ));
        }
        let status = u16::try_from(rec.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "stored answer is malformed"))?;
        Response::builder()
            .status(status)
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENT_REPLAYED, "true")
            .body(axum::body::Body::from(rec.body_json))
            .map_err(|_| ApiError::new(ErrorCode::Internal, "stored answer is malformed"))
    }

    /// Records created before this (unix milliseconds) no longer count.
    pub(crate) fn expired_before_ms(&self) -> i64 {
        self.expired_before_ms
    }

    /// Purge expired records, at most once a minute per process, off the request path.
    pub(crate) fn purge_now_and_then(&self, state: &AppState) {
        static LAST: AtomicI64 = AtomicI64::new(0);
        let last = LAST.load(Ordering::Relaxed);
        if self.now_ms - last < IDEMPOTENCY_PURGE_EVERY_MS
            || LAST
                .compare_exchange(last, self.now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let store = state.store.clone();
        let before = self.expired_before_ms;
        tokio::spawn(
            async move {
                if let Err(e) = store.purge_idempotency(before).await {
                    tracing::warn!(error = %e, "purging expired idempotency records failed");
                }
            }
            .in_current_span(),
        );
    }
}
