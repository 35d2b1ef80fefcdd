//! HTTP API v1: routes, the authenticated request context and the JSON body extractor.

use crate::domain::audit::{Event, Origin};
use crate::domain::auth::Caller;
use crate::domain::trace::{TraceContext, TraceId};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::state::AppState;
use crate::http::tls::identity::CertIdentity;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::time::Duration;

/// Header carrying the request id: the client's when well-formed ([`is_valid_request_id`]),
/// otherwise one the gateway generates; echoed on every response.
pub const REQUEST_ID: &str = "x-request-id";

/// The request id decided for a request by [`assign_request_id`] (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// A client-supplied request id is kept only when it is 1 to 64 bytes of `[A-Za-z0-9._-]`:
/// it lands in every log line and audit event of the request, so it must not be able to
/// forge log structure (newlines, quotes), carry a secret-sized blob or grow without bound.
pub fn is_valid_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// W3C trace context header: continued when well-formed ([`TraceContext::of_request`]).
pub const TRACEPARENT: &str = "traceparent";

/// The one place that decides a request's id: the client's `X-Request-Id` when well-formed,
/// else a fresh UUID. It replaces the request header (so everything downstream reads the
/// decided id), is stored as a [`RequestId`] extension for the request's span, and is echoed
/// on the response. The request's trace is decided here too: the `traceparent`'s when
/// well-formed, else a fresh one (a [`TraceContext`] extension).
pub async fn assign_request_id(mut req: Request, next: Next) -> Response {
    let trace = TraceContext::of_request(req.headers().get(TRACEPARENT).map(HeaderValue::as_bytes));
    req.extensions_mut().insert(trace);
    let given = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| v.to_str().is_ok_and(is_valid_request_id))
        .cloned();
    let value = match given {
        Some(v) => Some(v),
        None => HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).ok(),
    };
    let id = value
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    req.headers_mut().remove(REQUEST_ID);
    if let Some(v) = &value {
        req.headers_mut().insert(REQUEST_ID, v.clone());
    }
    req.extensions_mut().insert(RequestId(id));
    let mut resp = next.run(req).await;
    if let Some(v) = value {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Most bytes of a client-chosen string (a path, a method) that reach a log field or an
/// audit detail; see [`bounded`].
pub const LOGGED_BYTES: usize = 256;

/// A client-chosen string as log fields and audit details show it: unchanged up to
/// [`LOGGED_BYTES`]; longer, its first [`LOGGED_BYTES`] bytes, then its length and the first
/// 16 hex digits of its SHA-256 (`/v1/accounts/xxxx...[+61184 bytes, 61440 in all,
/// sha256:0123456789abcdef]`), so that requests stay tellable apart while a long path costs
/// every log line and audit row a bounded size.
pub fn bounded(s: &str) -> Cow<'_, str> {
    if s.len() <= LOGGED_BYTES {
        return Cow::Borrowed(s);
    }
    let mut cut = LOGGED_BYTES;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = Sha256::digest(s.as_bytes());
    Cow::Owned(format!(
        "{}...[+{} bytes, {} in all, sha256:{}]",
        &s[..cut],
        s.len() - cut,
        s.len(),
        hex::encode(&digest[..8])
    ))
}

/// The span every line logged while serving a request is recorded in: it carries the
/// request id and the trace id. Made at ERROR level so that no log filter can disable it
/// while letting the request's warnings through without their ids. The method and path are
/// [`bounded`]. When spans are exported it is the caller's span's child, or the root of
/// the fresh trace with the trace id the log lines show ([`export_span`]).
pub fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.as_str())
        .unwrap_or_default();
    let trace = req.extensions().get::<TraceContext>().copied();
    let make = || {
        tracing::error_span!(
            "request",
            request_id = %id,
            trace_id = trace.map(|t| tracing::field::display(t.trace_id)),
            method = %bounded(req.method().as_str()),
            path = %bounded(req.uri().path()),
        )
    };
    match trace {
        Some(t) if crate::domain::trace::exporting() => export_span(t, make),
        _ => make(),
    }
}

/// The request's span as exported: under the caller's span when the trace was continued;
/// else built at once on this thread so that the exporter's id generator gives it the
/// trace id already decided ([`crate::domain::trace::with_root_trace_id`]).
fn export_span(t: TraceContext, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    match t.parent {
        Some((span_id, flags)) => {
            let span = make();
            let remote = SpanContext::new(
                opentelemetry::trace::TraceId::from_bytes(t.trace_id.0),
                SpanId::from_bytes(span_id),
                TraceFlags::new(flags),
                true,
                TraceState::default(),
            );
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
            span
        }
        None => crate::domain::trace::with_root_trace_id(t.trace_id, || {
            let span = make();
            // Builds the span now (its ids drawn here, on this thread).
            let _ = span.context();
            span
        }),
    }
}

/// Length of a request target as received: path and query (plus scheme and authority in the
/// rare absolute form).
fn target_len(uri: &axum::http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
}

/// 414 `uri_too_long` for a request target over `[limits] max_uri_bytes`, before any other
/// work: no authentication, no audit event, no log line of the request (it is counted in
/// `shardgate_requests_refused_total{reason="uri_too_long"}`). Targets over 65534 bytes
/// never get here: hyper answers those with a bare 414 itself.
pub async fn limit_uri(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let max = state.limits.max_uri_bytes;
    if target_len(req.uri()) > max {
        metrics::counter!("shardgate_requests_refused_total", "reason" => "uri_too_long")
            .increment(1);
        let mut resp = ApiError::new(
            ErrorCode::UriTooLong,
            format!("the request target exceeds {max} bytes"),
        )
        .into_response();
        // A refusal too: charged to the address's budget, held back past it.
        if let (Some(limiter), Some(ip)) = (&state.refusals, peer_ip(req.extensions())) {
            let verdict = limiter.charge(ip, std::time::Instant::now());
            if matches!(verdict, crate::http::refusals::Verdict::Limited { .. }) {
                resp.extensions_mut().insert(PastBudget);
            }
        }
        return resp;
    }
    next.run(req).await
}

/// The client address of a request that came through the listener.
fn peer_ip(ext: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Marks a response that gets no log line of its own: a refusal past its address's budget
/// ([`crate::http::refusals`]), which is counted and reported once per window instead.
#[derive(Debug, Clone, Copy)]
pub struct Quiet;

/// Marks an answer past its address's refusal budget, which [`hold_past_budget`] holds back.
#[derive(Debug, Clone, Copy)]
pub struct PastBudget;

/// Outside every other layer but the request id: an answer past its address's refusal
/// budget is sent after `[limits] refusal_delay_ms`, or at once closing its connection when
/// `max_delayed_refusals` answers are already held ([`crate::http::refusals::Hold`]).
pub async fn hold_past_budget(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    if resp.extensions().get::<PastBudget>().is_none() {
        return resp;
    }
    let Some(limiter) = &state.refusals else {
        return resp;
    };
    match limiter.hold() {
        crate::http::refusals::Hold::Now => {}
        crate::http::refusals::Hold::Delay(held, delay) => {
            tokio::time::sleep(delay).await;
            drop(held);
        }
        crate::http::refusals::Hold::Close => {
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
    }
    resp
}

/// The request log line (tower-http's, at INFO), except for [`Quiet`] responses.
#[derive(Debug, Clone)]
pub struct LogResponse(pub tower_http::trace::DefaultOnResponse);

impl<B> tower_http::trace::OnResponse<B> for LogResponse {
    fn on_response(
        self,
        response: &axum::http::Response<B>,
        latency: Duration,
        span: &tracing::Span,
    ) {
        if response.extensions().get::<Quiet>().is_none() {
            self.0.on_response(response, latency, span);
        }
    }
}

/// An authenticated request: who is calling, and the request id.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The verified caller.
    pub caller: Caller,
    /// Request id.
    pub request_id: String,
    /// The request's trace id ([`assign_request_id`]).
    pub trace_id: Option<TraceId>,
}

impl Ctx {
    /// Who this request is, for the use cases that audit on its behalf.
    pub fn origin(&self) -> Origin {
        Origin {
            actor: self.caller.name.clone(),
            request_id: self.request_id.clone(),
            credential: self.caller.credential.clone(),
            trace_id: self.trace_id,
        }
    }

    /// An audit event for this request.
    pub fn event(&self, action: &str) -> Event {
        self.origin().event(action)
    }
}

fn trace_id(parts: &Parts) -> Option<TraceId> {
    parts.extensions.get::<TraceContext>().map(|t| t.trace_id)
}

fn request_id(parts: &Parts) -> String {
    parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

/// Who is calling: the bearer token, or the connection's verified client certificate.
///
/// - No client certificate (plain HTTP, TLS without mutual TLS, or `client_auth =
///   "optional"` and none presented): the bearer token decides, as always.
/// - A certificate that a `[[tls.clients]]` entry maps: that identity, and no
///   `Authorization` header may come with it. A token as well is two credentials, and which
///   one is the caller would be a guess: the request is refused `unauthenticated` (as two
///   `Authorization` headers are), whatever the token.
/// - A verified certificate that no entry maps: it proved only that the client holds a
///   certificate of the client CA (mutual TLS as a network gate); the bearer token decides,
///   and without one the request is refused `unauthenticated`.
fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, Refused> {
    let mut presented = parts.headers.get_all(header::AUTHORIZATION).iter();
    let first = presented.next();
    if presented.next().is_some() {
        // Two credentials are ambiguous (which one is the caller?): neither counts.
        return Err(Refused::anonymous(
            ApiError::new(
                ErrorCode::Unauthenticated,
                "more than one Authorization header",
            ),
            String::new(),
        ));
    }
    let token = |note: String| {
        state
            .auth
            .current()
            .authenticate(
                first.map(|v| v.to_str().unwrap_or("\u{0}")),
                crate::now_ms(),
            )
            .map_err(|r| Refused {
                error: r.error.into(),
                actor: r.actor,
                credential: r.credential,
                note,
            })
    };
    let Some(peer) = parts.extensions.get::<crate::http::tls::PeerCertificate>() else {
        return token(String::new());
    };
    match peer.identity() {
        CertIdentity::Mapped(caller) if first.is_none() => Ok(caller),
        CertIdentity::Mapped(caller) => Err(Refused::anonymous(
            ApiError::new(
                ErrorCode::Unauthenticated,
                "a client certificate that maps to an identity and a bearer token were both presented: present one",
            ),
            format!("certificate identity {:?} and a bearer token", caller.name),
        )),
        CertIdentity::Unmapped(why) if first.is_none() => Err(Refused::anonymous(
            ApiError::new(
                ErrorCode::Unauthenticated,
                "the client certificate maps to no identity and no bearer token was presented",
            ),
            why,
        )),
        CertIdentity::Unmapped(why) => token(why),
    }
}

/// The caller a request's credential names, if any and valid; `None` otherwise, without an
/// audit event or a rate-limit charge. For routes that answer everyone but tell a caller
/// with a scope more (`/readyz`).
pub fn optional_caller(parts: &Parts, state: &AppState) -> Option<Caller> {
    authenticate(parts, state).ok()
}

/// A refused credential, with what its audit event names.
struct Refused {
    error: ApiError,
    /// The identity of an expired or revoked token, else `anonymous`.
    actor: String,
    /// The presented token's credential id.
    credential: Option<String>,
    /// What the certificate side adds (secret-free).
    note: String,
}

impl Refused {
    fn anonymous(error: ApiError, note: String) -> Self {
        Self {
            error,
            actor: "anonymous".into(),
            credential: None,
            note,
        }
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let rid = request_id(parts);
        match authenticate(parts, state) {
            Ok(caller) => {
                // After authentication: the bucket is the verified credential's.
                if let Some(limiter) = &state.rate_limiter {
                    limiter
                        .check(caller.key())
                        .map_err(IntoResponse::into_response)?;
                }
                Ok(Ctx {
                    caller,
                    request_id: rid,
                    trace_id: trace_id(parts),
                })
            }
            Err(r) => Err(refuse(parts, state, &rid, r)),
        }
    }
}

/// The answer to a refused credential: 401 with an audit event while the client address is
/// within its refusal budget ([`crate::http::refusals`]), past it a quiet 429 with no event of its
/// own. Requests without an address (served in-process, never through the listener) are
/// not budgeted.
fn refuse(parts: &Parts, state: &AppState, rid: &str, r: Refused) -> Response {
    let peer = peer_ip(&parts.extensions);
    if let (Some(limiter), Some(ip)) = (&state.refusals, peer) {
        let verdict = limiter.charge(ip, std::time::Instant::now());
        if let crate::http::refusals::Verdict::Limited { retry_after_secs } = verdict {
            let mut resp = ApiError::new(
                ErrorCode::RateLimited,
                "too many refused credentials from this address; retry after the Retry-After delay",
            )
            .retry_after(retry_after_secs)
            .into_response();
            resp.extensions_mut().insert(Quiet);
            resp.extensions_mut().insert(PastBudget);
            return resp;
        }
    }
    let mut detail = format!(
        "{} {}: {}",
        bounded(parts.method.as_str()),
        bounded(parts.uri.path()),
        r.error.message
    );
    if let Some(ip) = peer {
        detail = format!("{detail} from {ip}");
    }
    if !r.note.is_empty() {
        detail = format!("{detail} ({})", r.note);
    }
    let mut ev = Event::new(rid, &r.actor, "auth").detail(detail);
    ev.credential = r.credential;
    ev.trace_id = trace_id(parts);
    let e = r.error;
    ev.outcome = e.code.as_str().to_string();
    state.audit.record_detached(ev);
    e.into_response()
}

impl Ctx {
    /// Check scope (and account reach); a refusal is audited.
    pub fn require(
        &self,
        state: &AppState,
        scope: crate::domain::auth::Scope,
        account: Option<&str>,
        action: &str,
    ) -> Result<(), ApiError> {
        let r = self.caller.require(scope, account).map_err(ApiError::from);
        self.audit_refusal(state, &r, scope, account, action);
        r
    }

    /// Check scope for an operation with global effect: the caller must carry no account
    /// prefix (the admin rule, SECURITY.md); a refusal is audited.
    pub fn require_global(
        &self,
        state: &AppState,
        scope: crate::domain::auth::Scope,
        action: &str,
    ) -> Result<(), ApiError> {
        let r = self
            .caller
            .require_unprefixed(scope)
            .map_err(ApiError::from);
        self.audit_refusal(state, &r, scope, None, action);
        r
    }

    fn audit_refusal(
        &self,
        state: &AppState,
        r: &Result<(), ApiError>,
        scope: crate::domain::auth::Scope,
        account: Option<&str>,
        action: &str,
    ) {
        if let Err(e) = r {
            let mut ev = self
                .event(action)
                .detail(format!("needs {}", scope.as_str()));
            ev.account = account.map(String::from);
            ev.outcome = e.code.as_str().to_string();
            state.audit.record_detached(ev);
        }
    }
}

/// A JSON body read within the body-size limit and the body-read timeout.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.limits.max_body_bytes;
        let too_large = || {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body exceeds {limit} bytes"),
            )
        };
        if let Some(len) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > limit as u64 {
                return Err(too_large());
            }
        }
        let read = axum::body::to_bytes(req.into_body(), limit);
        let bytes =
            match tokio::time::timeout(Duration::from_millis(state.timeouts.body_read_ms), read)
                .await
            {
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        "request body was not received in time",
                    ))
                }
                Ok(Err(e)) => {
                    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                    while let Some(s) = src {
                        if s.is::<http_body_util::LengthLimitError>() {
                            return Err(too_large());
                        }
                        src = s.source();
                    }
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        "request body could not be read",
                    ));
                }
                Ok(Ok(b)) => b,
            };
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            // serde's message can quote the input (shard bytes): report only where and what kind.
            let what = match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    "is not valid JSON"
                }
                _ => "does not match the expected fields and types",
            };
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "request body {what} (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })
    }
}

/// Map path-extraction failures (e.g. invalid UTF-8 after percent-decoding) to `invalid_id`.
pub fn path_error(_: axum::extract::rejection::PathRejection) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidId,
        format!("path ids must be ASCII {}", crate::domain::ids::ID_GRAMMAR),
    )
}

/// Map query-extraction failures to `invalid_request`.
pub fn query_error(_: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, "invalid query parameters")
}

/// Header by which a caller shortens its request's deadline (milliseconds).
pub const DEADLINE_HEADER: &str = "x-shardgate-deadline-ms";

/// Whole-request deadline: past it the request answers 504 `deadline_exceeded`.
pub async fn deadline(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    // A caller may ask for less time than the configured deadline (never more).
    let asked = req
        .headers()
        .get(DEADLINE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0);
    let limit = Duration::from_millis(asked.map_or(state.timeouts.request_ms, |ms| {
        ms.min(state.timeouts.request_ms)
    }));
    // Backends see a deadline a little earlier than the request's, so a backend that runs
    // out of time answers a typed error the handler can still audit and map, instead of
    // the whole request being cut off below.
    let reserve = (limit / 10).min(Duration::from_millis(100));
    let backend_deadline = std::time::Instant::now() + limit.saturating_sub(reserve);
    let run = shardgate_backends::deadline::scope(backend_deadline, next.run(req));
    match tokio::time::timeout(limit, run).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(ErrorCode::DeadlineExceeded, "the request deadline passed")
            .into_response(),
    }
}

/// Unknown routes. A path under `/v1/accounts/` that matches no route has an empty id or
/// an id with a `/` in it: that is an invalid id, not a missing route.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    if uri.path().starts_with("/v1/accounts/") {
        return ApiError::new(
            ErrorCode::InvalidId,
            format!(
                "ids must match {}; empty ids and '/' are not allowed",
                crate::domain::ids::ID_GRAMMAR
            ),
        );
    }
    ApiError::new(ErrorCode::NotFound, "no such route")
}

/// Known route, unknown method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

/// Every response carries `Cache-Control: no-store` (shard bytes must never be cached).
pub async fn no_store(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A JSON response with a status.
pub fn json<T: serde::Serialize>(status: StatusCode, body: T) -> Response {
    (status, axum::Json(body)).into_response()
}
