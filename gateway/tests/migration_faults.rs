//! Tier-migration jobs onto an `aws-kms` backend whose endpoint is the fault-injecting proxy
//! in front of moto (in-process gateway with its migration workers, both stores):
//! - KMS refuses exactly one `Encrypt` (the wrap of a local -> kms re-wrap) with
//!   `DisabledException`: that row is recorded with a secret-free error, stays on `local` and
//!   reads back identical; every other row moves; the job ends `completed_with_errors`; a
//!   second job with KMS healed moves the last row and ends `completed`.
//! - KMS throttles for a while: each throttled call is retried inside the backend's deadline,
//!   the job completes with no failure.
//! - A worker with several batches in flight (`pipeline`) makes at most `concurrency` backend
//!   calls at once across all of them.
//! - KMS is unavailable when a job starts: the job waits (its rows neither done nor failed)
//!   while the calls fail and then while the breaker they opened refuses them, and completes
//!   once KMS is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[allow(dead_code)]
#[path = "../../backends/tests/support/fault_proxy.rs"]
mod fault_proxy;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::{StoreKind, Tokens};
use fault_proxy::{Fault, FaultProxy, Rule};
use rand::RngCore;
use serde_json::{json, Value};
use shardgate::app::config::BackendConfig;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const ENCRYPT: &str = "TrentService.Encrypt";
const REENCRYPT: &str = "TrentService.ReEncrypt";
const GENERATE: &str = "TrentService.GenerateDataKey";

/// The KMS backend's retry settings here: a call throttled 3 times answers on the 4th
/// attempt, well inside the deadline (backoff at most 25 + 50 + 100 ms).
const MAX_ATTEMPTS: u32 = 4;
const CALL_TIMEOUT_MS: u64 = 400;
const DEADLINE_MS: u64 = 2000;
/// A request that has not answered after this long hangs: the test fails instead of waiting.
const HANG: Duration = Duration::from_secs(60);

struct Fx {
    app: axum::Router,
    tokens: Tokens,
    db: Db,
    proxy: Arc<FaultProxy>,
    dir: tempfile::TempDir,
    /// Shard bytes (raw and base64) and key material, for the secret checks.
    secrets: Mutex<Vec<String>>,
}

/// Backends `local` (tiers `retail`, `institutional`) and `kms` (tier `kms`), the latter on
/// moto through a fresh proxy (the key is created on moto directly, so the proxy sees only
/// the gateway's calls; the data-key cache is off). Workers poll every 200 ms and re-wrap
/// `rate` rows per second, with `concurrency` backend calls and `pipeline` batches in flight.
async fn setup(kind: StoreKind, rate: u32, concurrency: u32, pipeline: u32) -> Option<Fx> {
    setup_with(kind, rate, concurrency, pipeline, |_| {}).await
}

/// [`setup`], with `tweak` applied to the configuration last.
async fn setup_with(
    kind: StoreKind,
    rate: u32,
    concurrency: u32,
    pipeline: u32,
    tweak: impl FnOnce(&mut shardgate::app::config::Config),
) -> Option<Fx> {
    let endpoint = common::require_env("SHARDGATE_TEST_MOTO_ENDPOINT")?;
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    let proxy = FaultProxy::start(&endpoint).await;
    let mut kms = common::moto_kms_via(&endpoint, proxy.url()).await;
    kms.max_attempts = MAX_ATTEMPTS;
    kms.call_timeout_ms = CALL_TIMEOUT_MS;
    kms.deadline_ms = DEADLINE_MS;
    kms.cache.enabled = false;
    cfg.backends
        .insert("kms".into(), BackendConfig::AwsKms(kms));
    cfg.tiers.insert("kms".into(), "kms".into());
    cfg.migration.rate_per_sec = rate;
    cfg.migration.batch_size = 4;
    cfg.migration.concurrency = concurrency;
    cfg.migration.pipeline = pipeline;
    cfg.migration.poll_interval_ms = 200;
    tweak(&mut cfg);
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    state.start_migration_workers();
    let fx = Fx {
        app: shardgate::router(state),
        tokens,
        db: Db::connect(&url).await,
        proxy: Arc::new(proxy),
        dir,
        secrets: Mutex::new(Vec::new()),
    };
    fx.plant_keys();
    Some(fx)
}

impl Fx {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.tokens.admin),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        let resp = tokio::time::timeout(HANG, self.app.clone().oneshot(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path} hung for {HANG:?}"))
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn keep_secret(&self, s: String) {
        common::plant(&s);
        self.secrets.lock().unwrap().push(s);
    }

    fn plant_keys(&self) {
        if let Ok(t) = std::fs::read_to_string(self.dir.path().join("audit.key")) {
            self.keep_secret(t.trim().to_string());
        }
        if let Ok(text) = std::fs::read_to_string(self.dir.path().join("local.keyring")) {
            let v: Value = serde_json::from_str(&text).unwrap();
            for ver in v["versions"].as_array().unwrap() {
                if let Some(k) = ver["key"].as_str() {
                    self.keep_secret(k.to_string());
                }
            }
        }
    }

    /// `text` (an answer, an error message) holds no token, shard or key material.
    fn assert_secret_free(&self, text: &str) {
        for t in [
            &self.tokens.admin,
            &self.tokens.reader,
            &self.tokens.prefixed,
        ] {
            assert!(!text.contains(t.as_str()), "a token in: {text}");
        }
        for s in self.secrets.lock().unwrap().iter() {
            assert!(!text.contains(s.as_str()), "a secret in: {text}");
        }
    }

    /// Create `account` on `tier`; the answer.
    async fn account(&self, account: &str, tier: &str) -> Value {
        let (s, v) = self
            .call(
                "PUT",
                &format!("/v1/accounts/{account}"),
                Some(json!({ "tier": tier })),
            )
            .await;
        assert!(s.is_success(), "{v}");
        v
    }

    /// `n` shards with `versions` versions each, random secret bytes; (shard, version, bytes).
    async fn load(&self, account: &str, n: usize, versions: u32) -> Vec<(String, i64, Vec<u8>)> {
        let mut out = Vec::new();
        for i in 0..n {
            let shard = format!("s{i:02}");
            for v in 1..=versions {
                let mut noise = [0u8; 12];
                rand::thread_rng().fill_bytes(&mut noise);
                let hex: String = noise.iter().map(|b| format!("{b:02x}")).collect();
                let data = format!("mf-shard-{account}-{shard}-v{v}-{hex}").into_bytes();
                let b64 = B64.encode(&data);
                self.keep_secret(String::from_utf8(data.clone()).unwrap());
                self.keep_secret(b64.clone());
                let (s, body) = self
                    .call(
                        "PUT",
                        &format!("/v1/accounts/{account}/shards/{shard}"),
                        Some(json!({ "shard": b64 })),
                    )
                    .await;
                assert_eq!(s, StatusCode::CREATED, "{body}");
                assert_eq!(body["backend"], "local", "{body}");
                out.push((shard.clone(), i64::from(v), data));
            }
        }
        out
    }

    /// Every version reads back identical through the API, from the backend `on` names.
    async fn assert_reads_back(
        &self,
        account: &str,
        shards: &[(String, i64, Vec<u8>)],
        on: impl Fn(&str, i64) -> &'static str,
    ) {
        for (shard, version, data) in shards {
            let (s, v) = self
                .call(
                    "GET",
                    &format!("/v1/accounts/{account}/shards/{shard}?version={version}"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{account}/{shard} v{version}: {v}");
            assert_eq!(
                &B64.decode(v["shard"].as_str().unwrap()).unwrap(),
                data,
                "{account}/{shard} v{version}"
            );
            assert_eq!(
                v["backend"],
                on(shard, *version),
                "{account}/{shard} v{version}"
            );
        }
    }

    async fn job(&self, id: &str) -> Value {
        let (s, v) = self
            .call("GET", &format!("/v1/admin/migrations/{id}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// Poll until the job is no longer running (or `secs` pass).
    async fn settle(&self, id: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.job(id).await;
            if v["state"] != "running" {
                return v;
            }
            assert!(Instant::now() < deadline, "job never settled: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `(shard, version, backend)` of every version of `account`, from the table.
    async fn placement(&self, account: &str) -> Vec<(String, i64, String)> {
        let cells = self
            .db
            .all_bytes(&format!(
                "SELECT shard, CAST(version AS TEXT), backend FROM shard_versions \
                 WHERE account = '{account}' ORDER BY shard, version"
            ))
            .await;
        cells
            .chunks(3)
            .map(|c| {
                let s = |b: &Vec<u8>| String::from_utf8(b.clone()).unwrap();
                (s(&c[0]), s(&c[1]).parse().unwrap(), s(&c[2]))
            })
            .collect()
    }

    /// Nonces and ciphertexts of every version of `account`, in order.
    async fn sealed(&self, account: &str) -> Vec<Vec<u8>> {
        self.db
            .all_bytes(&format!(
                "SELECT nonce, ciphertext FROM shard_versions WHERE account = '{account}' \
                 ORDER BY shard, version"
            ))
            .await
    }

    async fn audited(&self, action: &str, outcome: &str) -> i64 {
        self.db
            .count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE action = '{action}' AND outcome = '{outcome}'"
            ))
            .await
    }

    async fn off_policy(&self, account: &str) -> i64 {
        let (s, v) = self
            .call("GET", &format!("/v1/accounts/{account}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["versions_on_other_backends"].as_i64().unwrap()
    }
}

/// KMS refuses exactly one `Encrypt` (`DisabledException`, which is not retried): the job
/// goes on, ends `completed_with_errors` listing exactly that row with a secret-free message;
/// the row stays on `local` and reads back identical, every other row is on `kms` and reads
/// back identical, and only wrapped keys changed. A second job with KMS healed moves the last
/// row and ends `completed`.
async fn one_refused_encrypt_leaves_its_row_readable_on_local_then_a_second_job_moves_it(fx: Fx) {
    const ACCOUNT: &str = "acct-mf";
    fx.account(ACCOUNT, "retail").await;
    let shards = fx.load(ACCOUNT, 6, 2).await;
    let sealed = fx.sealed(ACCOUNT).await;

    fx.proxy.reset_counts();
    fx.proxy.set_rule(Rule {
        fault: Fault::kms("DisabledException"),
        target: Some(ENCRYPT.into()),
        remaining: Some(1),
    });
    let v = fx.account(ACCOUNT, "kms").await;
    assert_eq!(v["backend"], "kms", "{v}");
    let job = v["migration_job"]
        .as_str()
        .expect("a tier change starts a job")
        .to_string();
    let done = fx.settle(&job, 60).await;
    fx.assert_secret_free(&done.to_string());
    assert_eq!(done["state"], "completed_with_errors", "{done}");
    assert_eq!(
        (
            done["total"].as_i64(),
            done["done"].as_i64(),
            done["failed"].as_i64(),
            done["skipped"].as_i64(),
            done["remaining"].as_i64()
        ),
        (Some(12), Some(11), Some(1), Some(0), Some(0)),
        "{done}"
    );
    // Exactly one row failed: whichever one's wrap was refused (a batch re-wraps several
    // rows at once, so which one reached KMS first is not fixed).
    let errors = done["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{done}");
    let failed = &errors[0];
    assert_eq!(failed["account"].as_str(), Some(ACCOUNT), "{done}");
    let failed_at = (
        failed["shard"].as_str().unwrap().to_string(),
        failed["version"].as_i64().unwrap(),
    );
    assert!(
        shards
            .iter()
            .any(|(shard, v, _)| *shard == failed_at.0 && *v == failed_at.1),
        "{done}"
    );
    let message = failed["error"].as_str().unwrap();
    assert!(
        message.contains("key unusable") && message.contains("DisabledException"),
        "the error says what KMS refused: {message}"
    );
    assert!(
        !message.contains("injected"),
        "KMS's own message text is not passed on: {message}"
    );
    assert_eq!(done["last_error"].as_str(), Some(message), "{done}");
    // Refused once and not retried; the other 11 wrapped and verified once each.
    assert_eq!(fx.proxy.count(ENCRYPT), 12, "{:?}", fx.proxy.counts());
    assert_eq!(fx.proxy.count(REENCRYPT), 11, "{:?}", fx.proxy.counts());
    assert_eq!(fx.proxy.count(GENERATE), 0, "{:?}", fx.proxy.counts());

    // The failed row stayed on local; the others are on kms.
    let on = |shard: &str, version: i64| {
        if (shard, version) == (failed_at.0.as_str(), failed_at.1) {
            "local"
        } else {
            "kms"
        }
    };
    let placement = fx.placement(ACCOUNT).await;
    assert_eq!(placement.len(), 12);
    for (shard, version, backend) in &placement {
        assert_eq!(backend, on(shard, *version), "{shard} v{version}");
    }
    assert_eq!(fx.sealed(ACCOUNT).await, sealed, "only wrapped keys change");
    fx.assert_reads_back(ACCOUNT, &shards, on).await;
    assert_eq!(fx.off_policy(ACCOUNT).await, 1);
    assert_eq!(fx.audited("migration.rewrap", "ok").await, 11);
    assert_eq!(fx.audited("migration.rewrap", "failed").await, 1);
    let ended = fx
        .db
        .count("SELECT COUNT(*) FROM audit_events WHERE action = 'migration.completed_with_errors'")
        .await;
    assert_eq!(ended, 1);

    // KMS healed (the rule was for one call; clear it anyway): a second job moves the rest.
    fx.proxy.clear();
    fx.proxy.reset_counts();
    let (s, v) = fx
        .call(
            "POST",
            "/v1/admin/migrations",
            Some(json!({ "account": ACCOUNT })),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["total"], 12, "{v}");
    let second = v["job"].as_str().unwrap().to_string();
    assert_ne!(second, job);
    let done = fx.settle(&second, 60).await;
    fx.assert_secret_free(&done.to_string());
    assert_eq!(
        (
            done["state"].as_str(),
            done["done"].as_i64(),
            done["failed"].as_i64(),
            done["skipped"].as_i64(),
            done["remaining"].as_i64()
        ),
        (Some("completed"), Some(1), Some(0), Some(11), Some(0)),
        "{done}"
    );
    assert_eq!(done["errors"], json!([]), "{done}");
    assert_eq!(fx.proxy.count(ENCRYPT), 1, "{:?}", fx.proxy.counts());
    assert!(fx
        .placement(ACCOUNT)
        .await
        .iter()
        .all(|(_, _, backend)| backend == "kms"));
    assert_eq!(fx.sealed(ACCOUNT).await, sealed);
    fx.assert_reads_back(ACCOUNT, &shards, |_, _| "kms").await;
    assert_eq!(fx.off_policy(ACCOUNT).await, 0);
    assert_eq!(fx.audited("migration.rewrap", "ok").await, 12);
    // The first job's record of the failure is kept.
    let first = fx.job(&job).await;
    assert_eq!(first["state"], "completed_with_errors");
    assert_eq!(first["errors"].as_array().unwrap().len(), 1);
}

/// Rounds of throttling the driver injects; each throttles the next 3 KMS calls.
const ROUNDS: u32 = 4;

/// KMS throttles for a while: in each of `ROUNDS` rounds the next 3 KMS calls (wrap or verify)
/// answer `ThrottlingException`; the next round starts only after a call has answered, so no
/// operation sees more than 3 in a row, and each is retried inside the backend's deadline.
/// The job slows (every throttled call is made again) but completes with no failure.
async fn throttled_kms_target_slows_but_does_not_fail_the_job(fx: Fx) {
    const ACCOUNT: &str = "acct-mt";
    const N: u64 = 12;
    fx.account(ACCOUNT, "retail").await;
    let shards = fx.load(ACCOUNT, 12, 1).await;
    let sealed = fx.sealed(ACCOUNT).await;
    fx.proxy.reset_counts();

    let total = |p: &FaultProxy| p.counts().values().sum::<u64>();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU32::new(0));
    let driver = {
        let (proxy, stop, rounds) = (fx.proxy.clone(), stop.clone(), rounds.clone());
        tokio::spawn(async move {
            for _ in 0..ROUNDS {
                proxy.set_rule(Rule {
                    fault: Fault::kms("ThrottlingException"),
                    target: None,
                    remaining: Some(3),
                });
                // Counted after arming: 4 more calls mean 3 throttled and at least 1 answered.
                let base = total(&proxy);
                while total(&proxy) < base + 4 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let started = Instant::now();
    let v = fx.account(ACCOUNT, "kms").await;
    let job = v["migration_job"].as_str().unwrap().to_string();
    let done = fx.settle(&job, 60).await;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    driver.await.unwrap();
    fx.proxy.clear();
    eprintln!("throttled job: {took:?}, KMS calls {:?}", fx.proxy.counts());

    assert_eq!(
        rounds.load(Ordering::Relaxed),
        ROUNDS,
        "the job ended before the throttling did: {done}"
    );
    assert_eq!(
        (
            done["state"].as_str(),
            done["done"].as_i64(),
            done["failed"].as_i64(),
            done["remaining"].as_i64()
        ),
        (Some("completed"), Some(12), Some(0), Some(0)),
        "{done}"
    );
    assert_eq!(done["errors"], json!([]), "{done}");
    assert!(done.get("last_error").is_none(), "{done}");
    // One wrap and one verify per row, plus every throttled call made again.
    let wraps = fx.proxy.count(ENCRYPT) + fx.proxy.count(REENCRYPT);
    assert_eq!(
        wraps,
        2 * N + 3 * u64::from(ROUNDS),
        "{:?}",
        fx.proxy.counts()
    );
    assert!(fx
        .placement(ACCOUNT)
        .await
        .iter()
        .all(|(_, _, backend)| backend == "kms"));
    assert_eq!(fx.sealed(ACCOUNT).await, sealed);
    fx.assert_reads_back(ACCOUNT, &shards, |_, _| "kms").await;
    assert_eq!(fx.audited("migration.rewrap", "ok").await, 12);
    assert_eq!(fx.audited("migration.rewrap", "failed").await, 0);
}

/// Backend calls of the worker in flight at once, and its batches in flight.
const PIPELINED: (u32, u32) = (2, 3);

/// A worker with `pipeline` batches in flight makes at most `concurrency` backend calls at
/// once across them (each call holds an HSM session, say): with every KMS `Encrypt` slowed
/// so that calls overlap, the proxy never sees more than `concurrency` wraps and verifies
/// in flight, and sees that many (a batch's chunks run side by side). The job completes.
async fn pipelined_batches_share_the_workers_concurrency(fx: Fx) {
    const ACCOUNT: &str = "acct-mp";
    const N: usize = 24;
    fx.account(ACCOUNT, "retail").await;
    let shards = fx.load(ACCOUNT, N, 1).await;
    fx.proxy.track_in_flight(&[ENCRYPT, REENCRYPT]);
    fx.proxy.set_rule(Rule {
        fault: Fault::Latency(Duration::from_millis(15)),
        target: Some(ENCRYPT.into()),
        remaining: None,
    });
    let v = fx.account(ACCOUNT, "kms").await;
    let job = v["migration_job"].as_str().unwrap().to_string();
    let done = fx.settle(&job, 60).await;
    fx.proxy.clear();
    assert_eq!(
        (done["state"].as_str(), done["done"].as_i64()),
        (Some("completed"), Some(i64::try_from(N).unwrap())),
        "{done}"
    );
    assert_eq!(
        fx.proxy.max_in_flight(),
        u64::from(PIPELINED.0),
        "KMS calls in flight at once, {} batches in flight",
        PIPELINED.1
    );
    fx.assert_reads_back(ACCOUNT, &shards, |_, _| "kms").await;
}

/// KMS goes away (every call dropped) before a local -> kms job starts: the workers' calls
/// fail until the `kms` breaker opens, and then are refused by it; the job waits (still
/// `running`, nothing done, nothing failed) instead of failing its rows. KMS comes back, a
/// probe closes the breaker, and the job completes with every row on `kms`, identical.
async fn a_job_waits_out_an_unavailable_target_and_its_open_breaker_then_completes(fx: Fx) {
    const ACCOUNT: &str = "acct-mw";
    fx.account(ACCOUNT, "retail").await;
    let shards = fx.load(ACCOUNT, 8, 1).await;
    let sealed = fx.sealed(ACCOUNT).await;
    fx.proxy.set(Fault::Drop);
    fx.proxy.reset_counts();
    let v = fx.account(ACCOUNT, "kms").await;
    let id = v["migration_job"].as_str().unwrap().to_string();

    // The outage opened the breaker on the workers' own calls.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, r) = fx.call("GET", "/readyz", None).await;
        if r["backends"]["kms"]["stats"]["breaker_state"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the breaker never opened: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fx.proxy.count(ENCRYPT) >= 3, "{:?}", fx.proxy.counts());
    let v = fx.job(&id).await;
    assert_eq!(
        (&v["state"], &v["done"], &v["failed"], &v["total"]),
        (&json!("running"), &json!(0), &json!(0), &json!(8)),
        "waiting, not failing: {v}"
    );

    fx.proxy.clear();
    let v = fx.settle(&id, 60).await;
    assert_eq!(
        (&v["state"], &v["done"], &v["failed"]),
        (&json!("completed"), &json!(8), &json!(0)),
        "{v}"
    );
    fx.assert_reads_back(ACCOUNT, &shards, |_, _| "kms").await;
    assert_eq!(
        fx.sealed(ACCOUNT).await,
        sealed,
        "only wrapped keys changed"
    );
}

/// One KMS call at a time (one batch in flight, one re-wrap per batch): the throttling test
/// counts on no call overtaking another, so that each operation sees at most one burst of
/// throttles.
const SERIAL: (u32, u32) = (1, 1);

/// A breaker that opens after 3 faults and that the probe closes soon after KMS is back.
fn quick_breaker(cfg: &mut shardgate::app::config::Config) {
    cfg.breaker.failure_threshold = 3;
    cfg.breaker.cooldown_ms = 200;
    cfg.breaker.probe_interval_ms = 100;
    cfg.breaker.probe_closed = false;
}

macro_rules! both_stores {
    ($($name:ident: $rate:expr, $calls:expr;)*) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (c, p) = $calls;
                if let Some(fx) = super::setup(super::StoreKind::Sqlite, $rate, c, p).await { super::$name(fx).await; }
            }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (c, p) = $calls;
                if let Some(fx) = super::setup(super::StoreKind::Postgres, $rate, c, p).await { super::$name(fx).await; }
            }
        )* }
    };
}

both_stores! {
    one_refused_encrypt_leaves_its_row_readable_on_local_then_a_second_job_moves_it: 1000, super::SERIAL;
    throttled_kms_target_slows_but_does_not_fail_the_job: 20, super::SERIAL;
    pipelined_batches_share_the_workers_concurrency: 100_000, super::PIPELINED;
}

/// [`quick_breaker`] opened by one failed call: a worker that finds its target down backs
/// off between batches, so its own calls would take long to reach three faults.
fn one_fault_breaker(cfg: &mut shardgate::app::config::Config) {
    quick_breaker(cfg);
    cfg.breaker.failure_threshold = 1;
}

/// The outage test on both stores, with [`one_fault_breaker`].
mod outage {
    use super::StoreKind;

    async fn run(kind: StoreKind) {
        if let Some(fx) = super::setup_with(kind, 1000, 1, 1, super::one_fault_breaker).await {
            super::a_job_waits_out_an_unavailable_target_and_its_open_breaker_then_completes(fx)
                .await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_a_job_waits_out_an_unavailable_target_and_its_open_breaker_then_completes() {
        run(StoreKind::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_a_job_waits_out_an_unavailable_target_and_its_open_breaker_then_completes() {
        run(StoreKind::Postgres).await;
    }
}
