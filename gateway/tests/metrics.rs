//! `/metrics` (in-process gateway, SQLite): each event the metric families describe is made
//! to happen (writes, reads, a 404, an unknown route, KMS calls through moto, a breaker that
//! opens on a dead KMS endpoint and is closed by an operator, audit writes), then one scrape is
//! parsed by a strict Prometheus text-format parser and every family is checked for its
//! labels and counts, and for bounded labels: no account or shard id anywhere in the scrape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use shardgate::app::config::BackendConfig;
use std::collections::{BTreeMap, BTreeSet};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// A strict parser of the Prometheus text exposition format 0.0.4. (prometheus-parse does not
// fit: its sample regex stops at the first `}`, so it drops every sample whose label value holds
// a route template such as `/v1/accounts/{account}`.) Anything it does not understand panics.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: Option<String>,
    samples: Vec<Sample>,
}

#[derive(Debug, Default)]
struct Scrape {
    families: BTreeMap<String, Family>,
}

fn is_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn parse_value(s: &str, line: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample value {s:?} in {line:?}")),
    }
}

/// `{a="x",b="y\"z"}` starting at `rest` (after the metric name); returns labels and what
/// follows the closing brace.
fn parse_labels<'a>(rest: &'a str, line: &str) -> (BTreeMap<String, String>, &'a str) {
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    assert_eq!(chars.next().map(|c| c.1), Some('{'), "{line:?}");
    loop {
        let Some(&(i, c)) = chars.peek() else {
            panic!("unterminated label set in {line:?}")
        };
        if c == '}' {
            chars.next();
            return (labels, &rest[i + 1..]);
        }
        // Label name up to '='.
        let start = i;
        let mut eq = None;
        for (j, c) in chars.by_ref() {
            if c == '=' {
                eq = Some(j);
                break;
            }
        }
        let eq = eq.unwrap_or_else(|| panic!("label without '=' in {line:?}"));
        let name = &rest[start..eq];
        assert!(is_label_name(name), "bad label name {name:?} in {line:?}");
        assert_eq!(
            chars.next().map(|c| c.1),
            Some('"'),
            "label value not quoted in {line:?}"
        );
        let mut value = String::new();
        loop {
            match chars.next().map(|c| c.1) {
                Some('"') => break,
                Some('\\') => match chars.next().map(|c| c.1) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some('\n') | None => panic!("unterminated label value in {line:?}"),
                Some(c) => value.push(c),
            }
        }
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "duplicate label {name} in {line:?}"
        );
        match chars.peek().map(|c| c.1) {
            Some(',') => {
                chars.next();
            }
            Some('}') => {}
            other => panic!("expected ',' or '}}' after a label, got {other:?} in {line:?}"),
        }
    }
}

fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("HELP") => {
                    let name = parts.next().unwrap_or_default();
                    assert!(is_metric_name(name), "{line:?}");
                    scrape.families.entry(name.into()).or_default().help =
                        Some(parts.next().unwrap_or_default().to_string());
                }
                Some("TYPE") => {
                    let name = parts.next().unwrap_or_default();
                    let kind = parts.next().unwrap_or_default();
                    assert!(is_metric_name(name), "{line:?}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{line:?}"
                    );
                    let fam = scrape.families.entry(name.into()).or_default();
                    assert!(fam.kind.is_empty(), "second TYPE line for {name}");
                    fam.kind = kind.to_string();
                }
                _ => {}
            }
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..end];
        assert!(is_metric_name(name), "bad metric name in {line:?}");
        let (labels, rest) = if line[end..].starts_with('{') {
            parse_labels(&line[end..], line)
        } else {
            (BTreeMap::new(), &line[end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or_default(), line);
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("bad timestamp in {line:?}"));
        }
        assert!(fields.next().is_none(), "trailing fields in {line:?}");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    // Each sample to its family: its own name, or the histogram/summary it is a part of.
    for s in samples {
        let family = ["_bucket", "_sum", "_count", ""]
            .iter()
            .filter_map(|suffix| s.name.strip_suffix(suffix))
            .find(|base| {
                scrape.families.get(*base).is_some_and(|f| {
                    !f.kind.is_empty()
                        && (*base == s.name || f.kind == "histogram" || f.kind == "summary")
                })
            })
            .unwrap_or_else(|| panic!("sample {} has no TYPE line", s.name))
            .to_string();
        scrape.families.get_mut(&family).unwrap().samples.push(s);
    }
    for (name, f) in &scrape.families {
        assert!(!f.kind.is_empty(), "{name}: HELP without TYPE");
        if f.kind == "histogram" {
            check_histogram(name, f);
        }
    }
    scrape
}

/// Buckets ascend, are cumulative, end at `+Inf`, and `_count` equals the `+Inf` bucket.
fn check_histogram(name: &str, f: &Family) {
    let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for s in &f.samples {
        let mut key = s.labels.clone();
        if s.name.ends_with("_bucket") {
            let le = key
                .remove("le")
                .unwrap_or_else(|| panic!("{name}: bucket without le"));
            series
                .entry(key)
                .or_default()
                .push((parse_value(&le, name), s.value));
        } else if s.name.ends_with("_count") {
            counts.insert(key, s.value);
        }
    }
    assert!(!series.is_empty(), "{name}: histogram without buckets");
    for (labels, buckets) in series {
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{name}{labels:?}: buckets out of order or not cumulative: {buckets:?}"
        );
        let last = buckets.last().unwrap();
        assert!(last.0.is_infinite(), "{name}{labels:?}: no +Inf bucket");
        assert_eq!(
            counts.get(&labels),
            Some(&last.1),
            "{name}{labels:?}: _count"
        );
    }
}

impl Scrape {
    fn family(&self, name: &str, kind: &str) -> &Family {
        let f = self
            .families
            .get(name)
            .unwrap_or_else(|| panic!("family {name} missing; have {:?}", self.families.keys()));
        assert_eq!(f.kind, kind, "{name}");
        // The gateway's own families are described; backend stats are named after the stat.
        if !name.starts_with("shardgate_backend_") || name.ends_with("_seconds") {
            assert!(f.help.is_some(), "{name} has no HELP line");
        }
        f
    }

    /// The value of the one sample of `name` whose labels include `want` (summed over the
    /// rest of its labels).
    fn value(&self, family: &str, name: &str, want: &[(&str, &str)]) -> f64 {
        let f = &self.families[family];
        let matching: Vec<&Sample> = f
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .collect();
        assert!(
            !matching.is_empty(),
            "no {name} sample with {want:?}; have {:#?}",
            f.samples
                .iter()
                .filter(|s| s.name == name)
                .map(|s| &s.labels)
                .collect::<Vec<_>>()
        );
        matching.iter().map(|s| s.value).sum()
    }
}

#[test]
fn the_parser_is_strict() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{route=\"/v1/{x}\",b=\"q\\\"\"} 3\n";
    let s = parse(ok);
    assert_eq!(s.families["a_total"].samples[0].labels["route"], "/v1/{x}");
    assert_eq!(s.families["a_total"].samples[0].labels["b"], "q\"");
    for bad in [
        "# TYPE a counter\na{b=\"c} 1\n",
        "# TYPE a counter\na{b=c} 1\n",
        "# TYPE a counter\na 1 2 3\n",
        "# TYPE a counter\na one\n",
        "b 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n",
    ] {
        let r = std::panic::catch_unwind(|| parse(bad));
        assert!(r.is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

const ACCOUNT_LOCAL: &str = "acct-mx7f3a-local";
const ACCOUNT_KMS: &str = "acct-mx7f3a-kms";
const ACCOUNT_DEAD: &str = "acct-mx7f3a-dead";
const SHARD: &str = "shard-mx91c2";
const MISSING_SHARD: &str = "shard-mx91c2-missing";

struct Gw {
    app: axum::Router,
    token: String,
}

impl Gw {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn expect(&self, method: &str, path: &str, body: Option<Value>, want: StatusCode) {
        let (s, text) = self.call(method, path, body).await;
        assert_eq!(s, want, "{method} {path}: {text}");
    }
}

/// A port nothing listens on, held for as long as the socket lives: the "dead" KMS endpoint
/// answers every call with a refused connection, a backend fault that counts against its
/// breaker. The socket is bound but never listens (a connect gets a RST), so no parallel
/// test can take the port meanwhile, as it could after a bind-then-release.
fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_family_is_scraped_with_bounded_labels() {
    let Some(moto) = common::require_env("SHARDGATE_TEST_MOTO_ENDPOINT") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    let kms = common::moto_kms(&moto).await;
    let mut dead = kms.clone();
    let (_held, dead_port) = closed_port();
    dead.endpoint_url = Some(format!("http://127.0.0.1:{dead_port}"));
    dead.cache.enabled = false;
    dead.max_attempts = 1;
    dead.call_timeout_ms = 300;
    dead.deadline_ms = 600;
    cfg.backends
        .insert("kms".into(), BackendConfig::AwsKms(kms));
    cfg.backends
        .insert("kms-dead".into(), BackendConfig::AwsKms(dead));
    cfg.tiers.insert("institutional".into(), "kms".into());
    cfg.tiers.insert("gold".into(), "kms-dead".into());
    cfg.breaker.failure_threshold = 2;
    cfg.breaker.cooldown_ms = 600_000;
    cfg.breaker.probe_interval_ms = 0;
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    let gw = Gw {
        app: shardgate::router(state),
        token: tokens.admin.clone(),
    };
    let shard_bytes = b"metrics-test shard bytes 5d1e0c77a9";
    common::plant(&B64.encode(shard_bytes));

    // Accounts (no backend call), writes and reads on local and KMS.
    for (account, tier) in [
        (ACCOUNT_LOCAL, "retail"),
        (ACCOUNT_KMS, "institutional"),
        (ACCOUNT_DEAD, "gold"),
    ] {
        gw.expect(
            "PUT",
            &format!("/v1/accounts/{account}"),
            Some(json!({ "tier": tier })),
            StatusCode::CREATED,
        )
        .await;
    }
    for account in [ACCOUNT_LOCAL, ACCOUNT_KMS] {
        let path = format!("/v1/accounts/{account}/shards/{SHARD}");
        let body = json!({ "shard": B64.encode(shard_bytes) });
        gw.expect("PUT", &path, Some(body), StatusCode::CREATED)
            .await;
        for _ in 0..2 {
            gw.expect("GET", &path, None, StatusCode::OK).await;
        }
    }
    // A 404 on a known route, and a path no route matches.
    gw.expect(
        "GET",
        &format!("/v1/accounts/{ACCOUNT_LOCAL}/shards/{MISSING_SHARD}"),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    gw.expect("GET", "/v2/nothing", None, StatusCode::NOT_FOUND)
        .await;
    // Two refused connections open the dead backend's breaker; the third is refused by it.
    let dead_path = format!("/v1/accounts/{ACCOUNT_DEAD}/shards/{SHARD}");
    for _ in 0..3 {
        let body = json!({ "shard": B64.encode(shard_bytes) });
        gw.expect(
            "PUT",
            &dead_path,
            Some(body),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
    }
    gw.expect(
        "POST",
        "/v1/admin/backends/kms-dead/circuit:close",
        None,
        StatusCode::OK,
    )
    .await;
    // Every backend's health (op "health").
    gw.expect("GET", "/readyz", None, StatusCode::OK).await;

    let (s, text) = gw.call("GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    std::fs::write(common::log_dir("metrics").join("scrape.txt"), &text).unwrap();
    let m = parse(&text);

    // Requests: by method, route template, status and the backend that served them.
    let shard_route = "/v1/accounts/{account}/shards/{shard}";
    let requests = m.family("shardgate_http_requests_total", "counter");
    for s in &requests.samples {
        let keys: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["backend", "method", "route", "status"]),
            "{s:?}"
        );
    }
    let count = |method, route, status, backend| {
        m.value(
            "shardgate_http_requests_total",
            "shardgate_http_requests_total",
            &[
                ("method", method),
                ("route", route),
                ("status", status),
                ("backend", backend),
            ],
        )
    };
    assert_eq!(count("PUT", "/v1/accounts/{account}", "201", "none"), 3.0);
    assert_eq!(count("PUT", shard_route, "201", "local"), 1.0);
    assert_eq!(count("GET", shard_route, "200", "local"), 2.0);
    assert_eq!(count("PUT", shard_route, "201", "kms"), 1.0);
    assert_eq!(count("GET", shard_route, "200", "kms"), 2.0);
    assert_eq!(count("GET", shard_route, "404", "none"), 1.0);
    assert_eq!(count("GET", "unmatched", "404", "none"), 1.0);
    assert_eq!(count("PUT", shard_route, "503", "kms-dead"), 3.0);
    let duration = m.family("shardgate_http_request_duration_seconds", "histogram");
    assert!(duration
        .samples
        .iter()
        .all(|s| s.labels.contains_key("status") && s.labels.contains_key("backend")));
    assert_eq!(
        m.value(
            "shardgate_http_request_duration_seconds",
            "shardgate_http_request_duration_seconds_count",
            &[
                ("method", "GET"),
                ("route", shard_route),
                ("status", "200"),
                ("backend", "kms")
            ],
        ),
        2.0
    );

    // Backend operations, timed in the breaker wrapper of every backend.
    m.family("shardgate_backend_op_duration_seconds", "histogram");
    let ops = |backend, op| {
        m.value(
            "shardgate_backend_op_duration_seconds",
            "shardgate_backend_op_duration_seconds_count",
            &[("backend", backend), ("op", op)],
        )
    };
    for backend in ["local", "kms"] {
        assert_eq!(ops(backend, "generate_data_key"), 1.0, "{backend}");
        assert_eq!(ops(backend, "unwrap"), 2.0, "{backend}");
        assert!(ops(backend, "health") >= 1.0, "{backend}");
    }
    // Two calls reached the dead backend; the third was refused by its open breaker.
    assert_eq!(ops("kms-dead", "generate_data_key"), 2.0);

    // Breakers: state gauges of every backend and the transitions of the dead one.
    m.family("shardgate_breaker_transitions_total", "counter");
    let transitions = |to| {
        m.value(
            "shardgate_breaker_transitions_total",
            "shardgate_breaker_transitions_total",
            &[("backend", "kms-dead"), ("to", to)],
        )
    };
    assert_eq!(transitions("open"), 1.0);
    assert_eq!(transitions("closed"), 1.0);
    m.family("shardgate_backend_breaker_state", "gauge");
    m.family("shardgate_backend_breaker_opens_total", "counter");
    for backend in ["local", "kms", "kms-dead"] {
        let state = m.value(
            "shardgate_backend_breaker_state",
            "shardgate_backend_breaker_state",
            &[("backend", backend)],
        );
        assert_eq!(state, 0.0, "{backend} is closed again");
        for gauge in [
            "shardgate_backend_bulkhead_in_use",
            "shardgate_backend_bulkhead_waiting",
        ] {
            m.family(gauge, "gauge");
            assert_eq!(m.value(gauge, gauge, &[("backend", backend)]), 0.0);
        }
    }
    assert_eq!(
        m.value(
            "shardgate_backend_breaker_opens_total",
            "shardgate_backend_breaker_opens_total",
            &[("backend", "kms-dead")],
        ),
        1.0
    );

    // KMS calls and the data-key cache (published from the backend's stats at scrape time).
    for family in [
        "shardgate_backend_kms_generate_data_key_calls_total",
        "shardgate_backend_kms_decrypt_calls_total",
        "shardgate_backend_cache_hits_total",
        "shardgate_backend_cache_misses_total",
    ] {
        m.family(family, "counter");
    }
    let kms = |family| m.value(family, family, &[("backend", "kms")]);
    assert_eq!(
        kms("shardgate_backend_kms_generate_data_key_calls_total"),
        1.0
    );
    assert!(
        kms("shardgate_backend_cache_hits_total") + kms("shardgate_backend_cache_misses_total")
            >= 2.0,
        "each read consults the data-key cache"
    );
    assert!(
        kms("shardgate_backend_cache_hits_total") >= 1.0,
        "the second read is a hit"
    );

    // Audit: the batching writer's queue and write latency.
    m.family("shardgate_audit_queue_depth", "gauge");
    m.family("shardgate_audit_queue_capacity", "gauge");
    assert_eq!(
        m.value(
            "shardgate_audit_queue_depth",
            "shardgate_audit_queue_depth",
            &[]
        ),
        0.0
    );
    assert_eq!(
        m.value(
            "shardgate_audit_queue_capacity",
            "shardgate_audit_queue_capacity",
            &[]
        ),
        4096.0
    );
    m.family("shardgate_audit_write_duration_seconds", "histogram");
    assert!(
        m.value(
            "shardgate_audit_write_duration_seconds",
            "shardgate_audit_write_duration_seconds_count",
            &[("outcome", "ok")],
        ) >= 4.0,
        "four reads and the operator's override were audited through the writer"
    );
    m.family("shardgate_audit_events_total", "counter");

    // Bounded labels: only these names, and no id the test used anywhere in the scrape.
    // `version` is a KEK version number (`shardgate_key_wraps_reserved`): a handful per
    // configured backend, or the gateway's version (`shardgate_build_info`, with `commit`);
    // `reason` a fixed word (refusals, TLS handshakes), registered at zero from start-up.
    let allowed = [
        "backend", "method", "route", "status", "op", "to", "outcome", "le", "version", "commit",
        "reason",
    ];
    for (name, f) in &m.families {
        for s in &f.samples {
            for (k, v) in &s.labels {
                assert!(allowed.contains(&k.as_str()), "{name}: label {k}");
                for id in [
                    ACCOUNT_LOCAL,
                    ACCOUNT_KMS,
                    ACCOUNT_DEAD,
                    SHARD,
                    "mx7f3a",
                    "mx91c2",
                ] {
                    assert!(!v.contains(id), "{name}: label {k}={v:?} holds an id");
                }
            }
        }
    }
    for id in ["mx7f3a", "mx91c2"] {
        assert!(!text.contains(id), "an id is in the scrape");
    }
}
