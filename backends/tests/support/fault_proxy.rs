//! A fault-injecting HTTP/1 reverse proxy for AWS JSON APIs (KMS, CloudHSMv2) in front of
//! moto. Modes switch at runtime: pass-through, answer a real KMS error body, add latency,
//! or drop the connection. Requests are counted per `X-Amz-Target`
//! (e.g. `TrentService.Decrypt`), faulted ones included; for chosen targets, the most requests
//! in flight at once is tracked too.

use http_body_util::{BodyExt, Full};
// `hyper::body::Bytes` is `bytes::Bytes`, re-exported: the gateway's tests include this file
// too (`#[path]`), and the gateway crate does not depend on `bytes` directly.
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the proxy does to a matching request.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// Answer an AWS JSON error without forwarding.
    Error {
        /// HTTP status (400 for client errors, 500 for `KMSInternalException`).
        status: u16,
        /// The error code (`__type` and `x-amzn-ErrorType`).
        code: String,
    },
    /// Wait, then forward.
    Latency(Duration),
    /// Close the connection without answering.
    Drop,
}

impl Fault {
    /// A KMS error as KMS answers it: 500 for `KMSInternalException`, 400 otherwise.
    pub(crate) fn kms(code: &str) -> Self {
        let status = if code == "KMSInternalException" {
            500
        } else {
            400
        };
        Fault::Error {
            status,
            code: code.to_string(),
        }
    }
}

/// A fault, optionally limited to one `X-Amz-Target` and to a number of requests.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// The fault.
    pub fault: Fault,
    /// Only requests with this target (e.g. `TrentService.Decrypt`); `None`: every request.
    pub target: Option<String>,
    /// Apply to this many matching requests, then pass through; `None`: until cleared.
    pub remaining: Option<u32>,
}

struct State {
    upstream: String,
    rule: Mutex<Option<Rule>>,
    counts: Mutex<HashMap<String, u64>>,
    /// Targets whose concurrent requests are tracked (see [`FaultProxy::track_in_flight`]).
    watched: Mutex<Vec<String>>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A running proxy; stops when dropped.
pub(crate) struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listen on 127.0.0.1:0 and forward to `upstream` (e.g. `http://127.0.0.1:5055`).
    pub(crate) async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            rule: Mutex::new(None),
            counts: Mutex::new(HashMap::new()),
            watched: Mutex::new(Vec::new()),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&st), req));
                    // An Err from the service (Fault::Drop) closes the connection unanswered.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// The proxy's base URL, for `endpoint_url`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Apply `fault` to every request until cleared.
    pub(crate) fn set(&self, fault: Fault) {
        self.set_rule(Rule {
            fault,
            target: None,
            remaining: None,
        });
    }

    /// Install a rule (replacing any other).
    pub(crate) fn set_rule(&self, rule: Rule) {
        *self.state.rule.lock().unwrap() = Some(rule);
    }

    /// Back to pass-through.
    pub(crate) fn clear(&self) {
        *self.state.rule.lock().unwrap() = None;
    }

    /// Requests seen with this `X-Amz-Target` (e.g. `TrentService.Decrypt`).
    pub(crate) fn count(&self, target: &str) -> u64 {
        self.state
            .counts
            .lock()
            .unwrap()
            .get(target)
            .copied()
            .unwrap_or(0)
    }

    /// Every target's count.
    pub(crate) fn counts(&self) -> HashMap<String, u64> {
        self.state.counts.lock().unwrap().clone()
    }

    /// Zero every count.
    pub(crate) fn reset_counts(&self) {
        self.state.counts.lock().unwrap().clear();
    }

    /// From now on, track how many requests with one of `targets` are in flight at once
    /// (from arrival to answer, injected latency included); resets the maximum.
    pub(crate) fn track_in_flight(&self, targets: &[&str]) {
        *self.state.watched.lock().unwrap() = targets.iter().map(|t| t.to_string()).collect();
        self.state.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// The most tracked requests in flight at once since [`FaultProxy::track_in_flight`].
    pub(crate) fn max_in_flight(&self) -> u64 {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

/// One tracked request in flight; counted out when dropped (answered, failed or dropped).
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn enter(state: &'a State) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The fault to apply to a request with `target`, consuming one use of a limited rule.
fn pick(state: &State, target: &str) -> Option<Fault> {
    let mut guard = state.rule.lock().unwrap();
    let rule = guard.as_mut()?;
    if rule.target.as_deref().is_some_and(|t| t != target) {
        return None;
    }
    let fault = rule.fault.clone();
    if let Some(n) = rule.remaining.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            *guard = None;
        }
    }
    Some(fault)
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    *state
        .counts
        .lock()
        .unwrap()
        .entry(target.clone())
        .or_insert(0) += 1;
    let watched = state.watched.lock().unwrap().contains(&target);
    let _in_flight = watched.then(|| InFlight::enter(&state));
    match pick(&state, &target) {
        Some(Fault::Error { status, code }) => {
            let body = serde_json::json!({
                "__type": code,
                "message": format!("injected by the test proxy: {code}"),
            })
            .to_string();
            return Ok(Response::builder()
                .status(status)
                .header("content-type", "application/x-amz-json-1.1")
                .header("x-amzn-ErrorType", code.as_str())
                .header("x-amzn-RequestId", "00000000-0000-0000-0000-000000000000")
                .body(Full::new(Bytes::from(body)))?);
        }
        Some(Fault::Drop) => return Err("connection dropped by the test proxy".into()),
        Some(Fault::Latency(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    forward(&state, req).await
}

const HOP: [&str; 4] = [
    "connection",
    "transfer-encoding",
    "content-length",
    "keep-alive",
];

async fn forward(state: &State, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, BoxError> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await?.to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut b = Request::builder()
        .method(parts.method)
        .uri(format!("{}{}", state.upstream, path));
    for (k, v) in &parts.headers {
        if !HOP.contains(&k.as_str()) {
            b = b.header(k, v);
        }
    }
    let resp = state.client.request(b.body(Full::new(bytes))?).await?;
    let (mut rp, rb) = resp.into_parts();
    let rbytes = fix_moto_timestamps(rb.collect().await?.to_bytes());
    for h in HOP {
        rp.headers.remove(h);
    }
    Ok(Response::from_parts(rp, Full::new(rbytes)))
}

/// moto 5's CloudHSMv2 answers timestamps (`CreateTimestamp`, ...) as ISO date-times without
/// an offset (`2026-11-25T14:57:39.682931`), which the Rust SDK rejects as invalid RFC 3339
/// (botocore accepts them). AWS itself answers epoch seconds. The proxy marks such values
/// UTC (`...Z`) so the real SDK can parse moto's answers; every other byte is forwarded as is.
fn fix_moto_timestamps(body: Bytes) -> Bytes {
    fn walk(v: &mut serde_json::Value) -> bool {
        let mut changed = false;
        match v {
            serde_json::Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    if let serde_json::Value::String(s) = val {
                        let naive = k.ends_with("Timestamp")
                            && s.contains('T')
                            && !s.ends_with('Z')
                            && !s
                                .rsplit('T')
                                .next()
                                .is_some_and(|t| t.contains('+') || t.contains('-'));
                        if naive {
                            s.push('Z');
                            changed = true;
                        }
                    } else {
                        changed |= walk(val);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    changed |= walk(item);
                }
            }
            _ => {}
        }
        changed
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    if walk(&mut v) {
        Bytes::from(v.to_string())
    } else {
        body
    }
}
