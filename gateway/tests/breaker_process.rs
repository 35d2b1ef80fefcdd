//! The circuit breaker of the real binary, over HTTP (SQLite store), as
//! docs/operations.md ("Resilience", "Probes, shutdown and alerts") describes it:
//! - after the cooldown the breaker is `half-open` and exactly one trial reaches the backend
//!   (counted at the fault proxy in front of moto) while every other request is refused with
//!   503 + `Retry-After`; a failed trial reopens it with the cooldown doubled (each time, as the
//!   warning's `cooldown_ms` says), a successful one closes it;
//! - a breaker not closed for longer than `stuck_warn_after_ms` logs the documented warning.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../backends/tests/support/fault_proxy.rs"]
#[allow(dead_code)]
mod fault_proxy;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::served::{Served, DEADLINE};
use common::{StoreKind, Tokens};
use fault_proxy::{Fault, FaultProxy};
use serde_json::{json, Value};
use shardgate::app::config::BackendConfig;
use shardgate_backends::aws_kms::KmsConfig;
use std::time::{Duration, Instant};

const DECRYPT: &str = "TrentService.Decrypt";

/// A config in `dir` (SQLite, JSON logs) whose tier `retail` is on an `aws-kms` backend
/// `kms` at `endpoint`; `tweak` adjusts the KMS and breaker settings.
async fn kms_config(
    dir: &std::path::Path,
    tokens: &Tokens,
    key_arn: String,
    endpoint: String,
    tweak: impl FnOnce(&mut KmsConfig, &mut shardgate::domain::breaker::BreakerConfig),
) -> std::path::PathBuf {
    let url = common::store_url(StoreKind::Sqlite, dir).await.unwrap();
    let mut cfg = common::config(dir, &url, tokens);
    cfg.log.format = shardgate::app::config::LogFormat::Json;
    let mut kms = KmsConfig::new(key_arn, "us-east-1");
    kms.endpoint_url = Some(endpoint);
    kms.cache.enabled = false;
    kms.max_attempts = 1;
    tweak(&mut kms, &mut cfg.breaker);
    cfg.backends
        .insert("kms".into(), BackendConfig::AwsKms(kms));
    cfg.tiers.insert("retail".into(), "kms".into());
    let path = dir.join("shardgate.toml");
    common::write_config(&cfg, &path);
    path
}

/// One value of a metric of the `/metrics` text whose labels include every `labels` pair
/// (0 when absent).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map_or(0.0, |l| {
            l.rsplit(' ').next().unwrap().trim().parse().unwrap()
        })
}

struct Client {
    http: reqwest::Client,
    base: String,
    admin: String,
}

impl Client {
    async fn get_shard(&self) -> reqwest::Response {
        self.http
            .get(format!("{}/v1/accounts/acct-kms/shards/s1", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
    }

    async fn scrape(&self) -> String {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    async fn breaker_state(&self) -> f64 {
        metric(
            &self.scrape().await,
            "shardgate_backend_breaker_state",
            &[("backend", "kms")],
        )
    }

    async fn transitions(&self, to: &str) -> f64 {
        metric(
            &self.scrape().await,
            "shardgate_breaker_transitions_total",
            &[("backend", "kms"), ("to", to)],
        )
    }

    /// A GET refused by the breaker itself: 503 `backend_unavailable` with a `Retry-After`
    /// of whole seconds, at least 1.
    async fn assert_refused(&self) {
        let r = self.get_shard().await;
        assert_eq!(r.status(), 503);
        let retry: u64 = r
            .headers()
            .get("retry-after")
            .expect("a 503 of the breaker carries Retry-After")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1, "{retry}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "backend_unavailable", "{v}");
    }
}

/// Send GETs (each in its own task) until one reaches KMS: the half-open trial. The GETs
/// sent before the cooldown ended were refused by the open breaker without a KMS call.
/// Returns the trial's task, still running (the proxy holds its call).
async fn start_trial(
    c: &std::sync::Arc<Client>,
    proxy: &FaultProxy,
) -> tokio::task::JoinHandle<reqwest::StatusCode> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let before = proxy.count(DECRYPT);
        let task = {
            let c = c.clone();
            tokio::spawn(async move { c.get_shard().await.status() })
        };
        loop {
            if proxy.count(DECRYPT) > before {
                assert_eq!(proxy.count(DECRYPT), before + 1, "one trial, not more");
                return task;
            }
            if task.is_finished() {
                assert_eq!(task.await.unwrap(), 503, "refused while open");
                break;
            }
            assert!(Instant::now() < deadline, "no trial ever reached KMS");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(Instant::now() < deadline, "no trial ever reached KMS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_sends_one_trial_and_a_failed_trial_reopens_with_a_doubled_cooldown() {
    let Some(endpoint) = common::require_env("SHARDGATE_TEST_MOTO_ENDPOINT") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let proxy = FaultProxy::start(&endpoint).await;
    let config = kms_config(
        dir.path(),
        &tokens,
        common::create_kms_key(&endpoint).await,
        proxy.url(),
        |kms, breaker| {
            // A held call fails by the backend's own timeout (a fault of the backend).
            kms.call_timeout_ms = 1000;
            kms.deadline_ms = 1500;
            breaker.failure_threshold = 3;
            breaker.cooldown_ms = 200;
            breaker.max_cooldown_ms = 60_000;
            // No synthetic probe: every trial is a request, so the proxy counts them all.
            breaker.probe_interval_ms = 0;
        },
    )
    .await;
    let gw = Served::start(&config, "breaker_process", "half-open");
    let c = std::sync::Arc::new(Client {
        http: reqwest::Client::new(),
        base: gw.base.clone(),
        admin: tokens.admin.clone(),
    });
    let r = c
        .http
        .put(format!("{}/v1/accounts/acct-kms", c.base))
        .bearer_auth(&c.admin)
        .json(&json!({"tier": "retail"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .http
        .put(format!("{}/v1/accounts/acct-kms/shards/s1", c.base))
        .bearer_auth(&c.admin)
        .json(&json!({"shard": B64.encode(b"kms shard")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Three faults in a row open the breaker.
    proxy.set(Fault::Drop);
    for _ in 0..3 {
        assert_eq!(c.get_shard().await.status(), 503);
    }
    assert_eq!(proxy.count(DECRYPT), 3);
    assert_eq!(c.breaker_state().await, 2.0, "open");
    gw.wait_logged("circuit opened", 1).await;

    // Each trial is held by the proxy until the backend's call timeout fails it.
    proxy.set(Fault::Latency(Duration::from_secs(600)));
    for round in 1..=2u32 {
        let trial = start_trial(&c, &proxy).await;
        let calls = proxy.count(DECRYPT);
        assert_eq!(
            c.breaker_state().await,
            1.0,
            "half-open while the trial runs"
        );
        assert_eq!(c.transitions("half-open").await, f64::from(round));
        // Every other request meanwhile is refused without a KMS call.
        for _ in 0..3 {
            c.assert_refused().await;
        }
        assert_eq!(proxy.count(DECRYPT), calls, "exactly one trial reached KMS");
        let status = trial.await.unwrap();
        assert!(status == 503 || status == 504, "{status}");
        // Failed: open again, its cooldown doubled on each failed trial (200 -> 400 -> 800).
        assert_eq!(c.breaker_state().await, 2.0, "reopened");
        assert_eq!(c.transitions("open").await, f64::from(round + 1));
        let reopened = gw
            .wait_logged("circuit reopened after a failed trial", round as usize)
            .await;
        let last = &reopened[round as usize - 1];
        assert_eq!(last["backend"], "kms", "{last}");
        assert_eq!(last["cooldown_ms"], 200 * 2u64.pow(round), "{last}");
    }

    // KMS is back: the next trial succeeds and closes the breaker.
    proxy.clear();
    let trial = start_trial(&c, &proxy).await;
    assert_eq!(trial.await.unwrap(), 200);
    gw.wait_logged("circuit closed after a successful trial", 1)
        .await;
    assert_eq!(c.breaker_state().await, 0.0, "closed");
    let r = c.get_shard().await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        B64.decode(v["shard"].as_str().unwrap()).unwrap(),
        b"kms shard"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_open_longer_than_stuck_warn_after_ms_logs_the_warning() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    // A port held bound but never listening: every connection to "KMS" is refused at once.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap().port();
    let config = kms_config(
        dir.path(),
        &tokens,
        "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000".into(),
        format!("http://127.0.0.1:{port}"),
        |kms, breaker| {
            kms.call_timeout_ms = 1000;
            kms.deadline_ms = 1000;
            breaker.failure_threshold = 1;
            // Open for the whole test: no trial is ever admitted, the probe is refused.
            breaker.cooldown_ms = 600_000;
            breaker.max_cooldown_ms = 600_000;
            breaker.probe_interval_ms = 50;
            breaker.probe_closed = false;
            breaker.stuck_warn_after_ms = 200;
        },
    )
    .await;
    let gw = Served::start(&config, "breaker_process", "stuck");
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{}/v1/accounts/acct-kms", gw.base))
        .bearer_auth(&tokens.admin)
        .json(&json!({"tier": "retail"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .put(format!("{}/v1/accounts/acct-kms/shards/s1", gw.base))
        .bearer_auth(&tokens.admin)
        .json(&json!({"shard": B64.encode(b"never stored")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    gw.wait_logged("circuit opened", 1).await;
    let warned = gw
        .wait_logged("circuit not closed for a long time", 1)
        .await;
    let w = &warned[0];
    assert_eq!(
        (&w["level"], &w["backend"], &w["state"]),
        (&json!("WARN"), &json!("kms"), &json!("open")),
        "{w}"
    );
    drop(held);
}
