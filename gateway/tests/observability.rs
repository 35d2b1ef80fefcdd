//! Observability of the real binary (a `shardgate serve` process on SQLite):
//!
//! - a fresh gateway's first scrape has every counter and gauge the code emits (found by
//!   reading gateway/src for `counter!`/`gauge!`), each with HELP text and a sample at zero,
//!   the per-backend series of the configured backend, `shardgate_build_info` and the
//!   `process_*` families;
//! - a request's W3C `traceparent` is continued (its trace id in the request's log lines and
//!   audit event, beside the client's `X-Request-Id`), a request without one (or with a
//!   malformed one) gets a fresh trace id, logged the same way;
//! - with `[telemetry] otlp_endpoint`, the request spans arrive at an OTLP/HTTP receiver run
//!   by the test: the continued trace's span under the caller's span, the fresh trace's span
//!   with the trace id its log line shows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::served::{Served, DEADLINE};
use common::Tokens;
use prost::Message as _;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn start(dir: &Path, tokens: &Tokens, name: &str, otlp: Option<String>) -> Served {
    let url = shardgate::app::config::sqlite_url(&dir.join("shardgate.db"));
    let mut cfg = common::config(dir, &url, tokens);
    cfg.log.format = shardgate::app::config::LogFormat::Json;
    cfg.telemetry.otlp_endpoint = otlp;
    let config = dir.join("shardgate.toml");
    common::write_config(&cfg, &config);
    // Spans leave the batch exporter every 100 ms (the default is 5 s).
    Served::start_with_env(
        &config,
        "observability",
        name,
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
}

/// Every family of a scrape: HELP text and samples (name, labels as written, value).
#[derive(Default)]
struct Scrape {
    help: BTreeMap<String, String>,
    samples: Vec<(String, String, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                s.help.insert(name.to_string(), help.to_string());
            } else if !line.starts_with('#') {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let (name, labels) = series.split_once('{').unwrap_or((series, ""));
                s.samples
                    .push((name.to_string(), labels.to_string(), value.parse().unwrap()));
            }
        }
        s
    }

    /// The value of `name` whose labels contain every `key="value"` of `want`.
    fn value(&self, name: &str, want: &[&str]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && want.iter().all(|w| l.contains(w)))
            .map(|(_, _, v)| *v)
    }

    /// The family a sample belongs to (histograms: without `_bucket`, `_sum`, `_count`).
    fn families(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .map(|(n, _, _)| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s).filter(|f| self.help.contains_key(*f)))
                    .unwrap_or(n)
                    .to_string()
            })
            .collect()
    }
}

/// Every metric name the gateway's code hands to `counter!` or `gauge!` as a literal.
fn emitted_families() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for macro_ in ["counter!(", "gauge!("] {
                    for (at, _) in text.match_indices(macro_) {
                        let rest = text[at + macro_.len()..].trim_start();
                        if let Some(name) = rest
                            .strip_prefix('"')
                            .and_then(|r| r.split_once('"'))
                            .map(|(n, _)| n)
                            .filter(|n| n.starts_with("shardgate_"))
                        {
                            out.insert(name.to_string());
                        }
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

async fn scrape(client: &reqwest::Client, base: &str, token: &str) -> Scrape {
    let r = client
        .get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    Scrape::parse(&r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_gateway_exports_every_family_at_zero_with_help() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let gw = start(dir.path(), &tokens, "fresh", None);
    let client = reqwest::Client::new();
    let s = scrape(&client, &gw.base, &tokens.admin).await;
    let families = s.families();

    // Request counts carry the request's labels: they appear with the first request. The
    // two timestamps appear with the first archiver pass and anchor (zero would read 1970).
    // Wraps reserved are per stored key version.
    let later = [
        "shardgate_http_requests_total",
        "shardgate_audit_archive_last_success_timestamp_seconds",
        "shardgate_audit_anchor_timestamp_seconds",
        "shardgate_key_wraps_reserved",
    ];
    let emitted = emitted_families();
    assert!(emitted.len() > 30, "{emitted:?}");
    for name in emitted.iter().filter(|n| !later.contains(&n.as_str())) {
        assert!(families.contains(name), "{name} is not in a fresh scrape");
        assert!(s.help.contains_key(name), "{name} has no HELP");
    }
    // Every family scraped has HELP, the backends' stats and the process's included.
    for name in &families {
        assert!(s.help.contains_key(name), "{name} has no HELP");
    }
    for (name, labels) in [
        (
            "shardgate_integrity_failures_total",
            ["backend=\"local\"", ""],
        ),
        (
            "shardgate_key_wrap_refusals_total",
            ["backend=\"local\"", ""],
        ),
        (
            "shardgate_breaker_transitions_total",
            ["backend=\"local\"", "to=\"open\""],
        ),
        (
            "shardgate_breaker_transitions_total",
            ["backend=\"local\"", "to=\"half-open\""],
        ),
        (
            "shardgate_tls_handshake_failures_total",
            ["reason=\"timeout\"", ""],
        ),
        (
            "shardgate_migration_items_total",
            ["outcome=\"failed\"", ""],
        ),
        ("shardgate_audit_events_total", ["", ""]),
    ] {
        assert_eq!(s.value(name, &labels), Some(0.0), "{name} {labels:?}");
    }

    // Build information: this crate's version and the commit git names (when it can).
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("unknown".to_string(), |o| {
            String::from_utf8(o.stdout).unwrap().trim().to_string()
        });
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    let commit_label = format!("commit=\"{commit}\"");
    assert_eq!(
        s.value("shardgate_build_info", &[&version, &commit_label]),
        Some(1.0),
        "{:?}",
        s.samples.iter().find(|x| x.0 == "shardgate_build_info")
    );

    // The process: CPU time, memory and open files, read at the scrape.
    // (CPU time in clock ticks of 10 ms: a fresh gateway may not have used one yet.)
    assert!(s.value("process_cpu_seconds_total", &[]).unwrap() >= 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = s.value("process_start_time_seconds", &[]).unwrap();
    assert!(
        (now - started).abs() < 600.0,
        "started {started}, now {now}"
    );
    assert!(s.value("process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(s.value("process_open_fds", &[]).unwrap() >= 3.0);
    assert!(s.value("process_max_fds", &[]).unwrap() >= s.value("process_open_fds", &[]).unwrap());
}

/// The `finished processing request` line of the request with this id.
async fn finished(gw: &Served, request_id: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let found = gw
            .logged("finished processing request")
            .into_iter()
            .find(|l| l["span"]["request_id"] == request_id);
        if let Some(l) = found {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "request {request_id} never logged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// PUT an account with these headers; the trace id its log line carries.
async fn put_account(
    gw: &Served,
    tokens: &Tokens,
    account: &str,
    request_id: &str,
    traceparent: Option<&str>,
) -> String {
    let mut req = reqwest::Client::new()
        .put(format!("{}/v1/accounts/{account}", gw.base))
        .bearer_auth(&tokens.admin)
        .header("x-request-id", request_id)
        .json(&serde_json::json!({"tier": "retail"}));
    if let Some(t) = traceparent {
        req = req.header("traceparent", t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-request-id"], request_id);
    let line = finished(gw, request_id).await;
    let trace = line["span"]["trace_id"].as_str().unwrap().to_string();
    assert_eq!(trace.len(), 32, "{line}");
    assert!(trace.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
    assert_eq!(line["spans"][0]["trace_id"], trace.as_str(), "{line}");
    trace
}

/// The stored audit event of `account.put` for `account`: (request_id, detail).
async fn audited(gw: &Served, tokens: &Tokens, account: &str) -> (String, String) {
    let r = reqwest::Client::new()
        .get(format!(
            "{}/v1/admin/audit/events?account={account}&action=account.put",
            gw.base
        ))
        .bearer_auth(&tokens.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{text}");
    let e = &events[0];
    (
        e["request_id"].as_str().unwrap().to_string(),
        e["detail"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_or_started_and_logged_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let gw = start(dir.path(), &tokens, "trace", None);

    // Continued: the caller's trace id, beside the caller's request id.
    let given = format!("00-{TRACE}-{PARENT}-01");
    let t = put_account(&gw, &tokens, "acct-t1", "req-t1", Some(&given)).await;
    assert_eq!(t, TRACE);
    let (rid, detail) = audited(&gw, &tokens, "acct-t1").await;
    assert_eq!(rid, "req-t1");
    assert!(detail.ends_with(&format!(" trace_id={TRACE}")), "{detail}");

    // No traceparent, and a malformed one: fresh trace ids, each its own.
    let fresh = put_account(&gw, &tokens, "acct-t2", "req-t2", None).await;
    let bad = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    let fresh2 = put_account(&gw, &tokens, "acct-t3", "req-t3", Some(&bad)).await;
    for f in [&fresh, &fresh2] {
        assert_ne!(f, TRACE);
    }
    assert_ne!(fresh, fresh2);
    let (_, detail) = audited(&gw, &tokens, "acct-t2").await;
    assert!(detail.ends_with(&format!(" trace_id={fresh}")), "{detail}");
    // The audit chain still verifies with the trace ids in it.
    let config = dir.path().join("shardgate.toml");
    let args = ["audit", "verify", "--config", config.to_str().unwrap()];
    let run = common::cli::run_to_end(
        common::cli::shardgate_command(&args),
        DEADLINE,
        &common::cli::describe(&args),
    );
    assert!(run.ok(), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("audit ok: "), "{}", run.stdout);
}

/// A test OTLP/HTTP receiver: every span posted to `/v1/traces`, decoded.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
}

impl Receiver {
    async fn start(&self) -> String {
        use axum::routing::post;
        let me = self.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: axum::body::Bytes| async move {
                let req = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body)
                    .unwrap();
                let mut spans = me.spans.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        spans.extend(ss.spans);
                    }
                }
                axum::http::StatusCode::OK
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    /// Wait for the `request` span of this trace.
    async fn span_of(&self, trace: &str) -> opentelemetry_proto::tonic::trace::v1::Span {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let found = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| hex::encode(&s.trace_id) == trace && s.name == "request")
                .cloned();
            if let Some(s) = found {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no span of trace {trace} arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_over_otlp() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let gw = start(dir.path(), &tokens, "otlp", Some(endpoint));

    let given = format!("00-{TRACE}-{PARENT}-01");
    put_account(&gw, &tokens, "acct-o1", "req-o1", Some(&given)).await;
    let span = receiver.span_of(TRACE).await;
    assert_eq!(hex::encode(&span.parent_span_id), PARENT);
    assert_ne!(hex::encode(&span.span_id), PARENT);

    // A fresh trace: its root span has the trace id the log line shows.
    let fresh = put_account(&gw, &tokens, "acct-o2", "req-o2", None).await;
    let span = receiver.span_of(&fresh).await;
    assert!(span.parent_span_id.is_empty(), "{span:?}");
}
