//! One call, end to end: the request with its headers (bearer token, the deadline left,
//! one request id across attempts, the idempotency key), the attempts the retry policy
//! allows within the call's deadline, and the error body turned into [`ApiError`].

use crate::error::{ApiError, ErrorCode};
use crate::retry::{Repeat, RetryPolicy};
use crate::{ClientBuilder, Error};
use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::Method;
use secrecy::{ExposeSecret as _, SecretString};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client of one gateway. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    deadline: Duration,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    token: Option<SecretString>,
    retry: RetryPolicy,
    batch_max_items: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .field("token", &self.inner.token.as_ref().map(|_| "<redacted>"))
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// One request, before it is sent.
pub(crate) struct Call {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Vec<(&'static str, String)>,
    /// JSON body.
    pub(crate) body: Option<Vec<u8>>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) repeat: Repeat,
}

impl Call {
    pub(crate) fn new(method: Method, path: String, repeat: Repeat) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            body: None,
            idempotency_key: None,
            repeat,
        }
    }
}

impl Client {
    /// Start building a client of the gateway at `base_url` (`https://host:port`).
    pub fn builder(base_url: &str) -> ClientBuilder {
        ClientBuilder::new(base_url)
    }

    pub(crate) fn new(
        http: reqwest::Client,
        base: String,
        token: Option<SecretString>,
        (deadline, retry, batch_max_items): (Duration, RetryPolicy, usize),
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                base,
                token,
                retry,
                batch_max_items,
            }),
            deadline,
        }
    }

    /// The same client with another deadline for its calls.
    pub fn with_deadline(&self, deadline: Duration) -> Self {
        Self {
            inner: self.inner.clone(),
            deadline,
        }
    }

    pub(crate) fn batch_max_items(&self) -> usize {
        self.inner.batch_max_items
    }

    /// Send `call` (retried where safe) and return the successful answer.
    pub(crate) async fn send(&self, call: &Call) -> Result<reqwest::Response, Error> {
        let until = Instant::now() + self.deadline;
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut last: Option<Error> = None;
        for attempt in 1..=self.inner.retry.max_attempts.max(1) {
            let left = until.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(1) {
                break;
            }
            let err = match self.attempt(call, &request_id, left).await {
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            };
            let (retryable, retry_after) = match &err {
                Error::Api(e) => (
                    call.repeat == Repeat::Safe && e.code.is_transient(),
                    e.retry_after,
                ),
                Error::Transport(_) => (call.repeat == Repeat::Safe, None),
                _ => (false, None),
            };
            if !retryable || attempt == self.inner.retry.max_attempts {
                return Err(err);
            }
            let wait = self.inner.retry.backoff(attempt, retry_after);
            if Instant::now() + wait >= until {
                // Waiting would outlive the call: the caller gets the answer as it is.
                return Err(err);
            }
            last = Some(err);
            tokio::time::sleep(wait).await;
        }
        Err(Error::Deadline {
            last: last.map(Box::new),
        })
    }

    async fn attempt(
        &self,
        call: &Call,
        request_id: &str,
        left: Duration,
    ) -> Result<reqwest::Response, Error> {
        let url = format!("{}{}", self.inner.base, call.path);
        let mut req = self
            .inner
            .http
            .request(call.method.clone(), url)
            .timeout(left)
            .header("x-request-id", request_id)
            .header(
                "x-shardgate-deadline-ms",
                left.as_millis().max(1).to_string(),
            );
        if !call.query.is_empty() {
            req = req.query(&call.query);
        }
        if let Some(token) = &self.inner.token {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                .map_err(|_| Error::Invalid("the token is not a valid header value".into()))?;
            v.set_sensitive(true);
            req = req.header(AUTHORIZATION, v);
        }
        if let Some(key) = &call.idempotency_key {
            req = req.header("idempotency-key", key);
        }
        if let Some(body) = &call.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                Error::Deadline {
                    last: Some(Box::new(Error::Transport(e.without_url().to_string()))),
                }
            } else {
                Error::Transport(e.without_url().to_string())
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(Error::Api(api_error(resp).await))
    }
}

/// The error answer as the API documents it; an answer without the error body keeps its
/// status and a code from it.
async fn api_error(resp: reqwest::Response) -> ApiError {
    let status = resp.status().as_u16();
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let retry_after = header(RETRY_AFTER)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let request_id = header(reqwest::header::HeaderName::from_static("x-request-id"));
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().map_or_else(
        || ErrorCode::Other(format!("http_{status}")),
        ErrorCode::from_wire,
    );
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ApiError {
        status,
        code,
        message,
        retry_after,
        request_id,
    }
}

/// A successful answer's JSON body.
pub(crate) async fn json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
) -> Result<T, Error> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Error::Transport(e.without_url().to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
}
