//! Circuit breaker and bulkhead per backend, over HTTP (in-process gateway, SQLite and
//! PostgreSQL): an `aws-kms` backend reaches moto through the fault proxy, a `local` backend
//! serves another tier next to it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "../../backends/tests/support/fault_proxy.rs"]
#[allow(dead_code)]
mod fault_proxy;

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::moto::OwnMoto;
use common::{StoreKind, Tokens};
use fault_proxy::{Fault, FaultProxy, Rule};
use serde_json::{json, Value};
use shardgate::app::config::BackendConfig;
use std::time::{Duration, Instant};

const DECRYPT: &str = "TrentService.Decrypt";

struct Gw {
    app: axum::Router,
    tokens: Tokens,
    db: Db,
    proxy: FaultProxy,
    _dir: tempfile::TempDir,
}

async fn setup(
    kind: StoreKind,
    max_concurrent: usize,
    max_queue: usize,
    cooldown_ms: u64,
) -> Option<Gw> {
    let endpoint = common::require_env("SHARDGATE_TEST_MOTO_ENDPOINT")?;
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    let proxy = FaultProxy::start(&endpoint).await;
    let mut kms = common::moto_kms_via(&endpoint, proxy.url()).await;
    kms.cache.enabled = false;
    kms.max_attempts = 1;
    kms.call_timeout_ms = 300;
    kms.deadline_ms = 600;
    cfg.backends
        .insert("kms".into(), BackendConfig::AwsKms(kms));
    cfg.tiers.insert("retail".into(), "kms".into());
    cfg.tiers.insert("institutional".into(), "local".into());
    cfg.breaker.failure_threshold = 3;
    cfg.breaker.cooldown_ms = cooldown_ms;
    cfg.breaker.probe_interval_ms = 100;
    // These tests count KMS calls: the probe runs only while the breaker is not closed.
    cfg.breaker.probe_closed = false;
    cfg.breaker.max_concurrent = max_concurrent;
    cfg.breaker.max_queue = max_queue;
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    let gw = Gw {
        app: shardgate::router(state),
        tokens,
        db: Db::connect(&url).await,
        proxy,
        _dir: dir,
    };
    for (account, tier) in [("acct-kms", "retail"), ("acct-local", "institutional")] {
        let (s, v) = gw
            .call(
                "PUT",
                &format!("/v1/accounts/{account}"),
                Some(json!({ "tier": tier })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = gw
            .call(
                "PUT",
                &format!("/v1/accounts/{account}/shards/s1"),
                Some(json!({ "shard": B64.encode(format!("{account} shard")) })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    Some(gw)
}

impl Gw {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        common::call(&self.app, &self.tokens.admin, method, path, body).await
    }

    async fn get(&self, account: &str) -> (StatusCode, Value) {
        self.call("GET", &format!("/v1/accounts/{account}/shards/s1"), None)
            .await
    }

    async fn readyz(&self) -> Value {
        let (s, v) = self.call("GET", "/readyz", None).await;
        assert_eq!(s, StatusCode::OK, "another backend serves: {v}");
        v
    }
}

async fn breaker_opens_fails_fast_and_closes_by_probe(gw: Gw) {
    gw.proxy.set(Fault::Drop);
    for _ in 0..3 {
        let (s, v) = gw.get("acct-kms").await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("backend_unavailable")),
            "{v}"
        );
    }
    let calls = gw.proxy.count(DECRYPT);
    assert_eq!(calls, 3);
    // Open: answered without a KMS call, with a Retry-After a client can honour (whole
    // seconds, at least 1: the rest of the cooldown, rounded up).
    let resp = {
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .uri("/v1/accounts/acct-kms/shards/s1")
            .header("authorization", format!("Bearer {}", gw.tokens.admin))
            .body(axum::body::Body::empty())
            .unwrap();
        gw.app.clone().oneshot(req).await.unwrap()
    };
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .expect("a 503 from an open breaker carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "backend_unavailable", "{v}");
    assert_eq!(gw.proxy.count(DECRYPT), calls);
    // The other backend is unaffected, and the process stays ready.
    let (s, _) = gw.get("acct-local").await;
    assert_eq!(s, StatusCode::OK);
    let r = gw.readyz().await;
    assert_eq!(r["backends"]["kms"]["usable"], false, "{r}");
    assert_eq!(r["backends"]["kms"]["stats"]["breaker_state"], 2, "{r}");
    assert_eq!(r["backends"]["local"]["usable"], true, "{r}");
    // KMS comes back; the synthetic probe closes the breaker with no user traffic.
    gw.proxy.clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.readyz().await;
        if r["backends"]["kms"]["stats"]["breaker_state"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "probe never closed the breaker: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = gw.get("acct-kms").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        B64.decode(v["shard"].as_str().unwrap()).unwrap(),
        b"acct-kms shard"
    );
}

async fn refused_keys_and_tampering_never_open_the_breaker(gw: Gw) {
    gw.proxy.set_rule(Rule {
        fault: Fault::kms("DisabledException"),
        target: Some(DECRYPT.into()),
        remaining: None,
    });
    for _ in 0..5 {
        let (s, _) = gw.get("acct-kms").await;
        assert_eq!(s, StatusCode::BAD_GATEWAY);
    }
    gw.proxy.clear();
    gw.db
        .exec("UPDATE shard_versions SET ciphertext = nonce WHERE account = 'acct-kms'")
        .await;
    for _ in 0..5 {
        let (s, v) = gw.get("acct-kms").await;
        assert_eq!(v["error"]["code"], "integrity_failure", "{v}");
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let r = gw.readyz().await;
    assert_eq!(r["backends"]["kms"]["stats"]["breaker_state"], 0, "{r}");
    assert_eq!(
        r["backends"]["kms"]["stats"]["breaker_opens_total"], 0,
        "{r}"
    );
}

async fn operator_closes_an_open_breaker_audited(gw: Gw) {
    gw.proxy.set(Fault::Drop);
    for _ in 0..3 {
        gw.get("acct-kms").await;
    }
    // Open (KMS still failing, so no probe can close it before the operator does).
    let r = gw.readyz().await;
    assert_eq!(r["backends"]["kms"]["stats"]["breaker_state"], 2, "{r}");
    let (s, v) = gw
        .call("POST", "/v1/admin/backends/kms/circuit:close", None)
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("closed")),
        "{v}"
    );
    gw.proxy.clear();
    let (s, _) = gw.get("acct-kms").await;
    assert_eq!(s, StatusCode::OK);
    let audited = gw
        .db
        .count(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'backend.circuit_close' \
             AND backend = 'kms' AND (detail LIKE 'was open trace_id=%' OR detail LIKE 'was half-open trace_id=%')",
        )
        .await;
    assert_eq!(
        audited, 1,
        "the override is audited with the state it ended"
    );
    let (s, _) = gw
        .call("POST", "/v1/admin/backends/nope/circuit:close", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let req_as_reader = common::call(
        &gw.app,
        &gw.tokens.reader,
        "POST",
        "/v1/admin/backends/kms/circuit:close",
        None,
    )
    .await;
    assert_eq!(req_as_reader.0, StatusCode::FORBIDDEN);
}

async fn a_slow_backend_fills_only_its_own_bulkhead(gw: Gw) {
    // One slot, no queue: a second concurrent call on kms is refused without a KMS call.
    gw.proxy.set(Fault::Latency(Duration::from_millis(250)));
    gw.proxy.reset_counts();
    let gw = std::sync::Arc::new(gw);
    let slow = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.get("acct-kms").await })
    };
    // The slow call has reached KMS (the proxy holds it): it holds the only slot.
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.proxy.count(DECRYPT) == 0 {
        assert!(Instant::now() < deadline, "the slow call never reached KMS");
        tokio::task::yield_now().await;
    }
    let (s, v) = gw.get("acct-kms").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("backend_unavailable")),
        "{v}"
    );
    assert_eq!(
        gw.proxy.count(DECRYPT),
        1,
        "refused at the bulkhead, not sent"
    );
    // Meanwhile the local backend answers as usual.
    let (s, _) = gw.get("acct-local").await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = slow.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = gw.readyz().await;
    assert!(
        r["backends"]["kms"]["stats"]["bulkhead_rejected_total"]
            .as_u64()
            .unwrap()
            >= 1,
        "{r}"
    );
    // Load is not a fault: the breaker stayed closed.
    assert_eq!(r["backends"]["kms"]["stats"]["breaker_state"], 0, "{r}");
}

macro_rules! both_stores {
    ($($name:ident: $conc:expr, $queue:expr, $cool:expr;)*) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some(g) = super::setup(super::StoreKind::Sqlite, $conc, $queue, $cool).await { super::$name(g).await; }
            }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some(g) = super::setup(super::StoreKind::Postgres, $conc, $queue, $cool).await { super::$name(g).await; }
            }
        )* }
    };
}

/// The `Retry-After` seconds of a GET that the open breaker answers itself (503).
async fn retry_after_of_open(gw: &Gw) -> u64 {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .uri("/v1/accounts/acct-kms/shards/s1")
        .header("authorization", format!("Bearer {}", gw.tokens.admin))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = gw.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    resp.headers()
        .get("retry-after")
        .expect("a 503 from an open breaker carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn an_open_breaker_s_retry_after_is_the_rest_of_its_cooldown(gw: Gw) {
    gw.proxy.set(Fault::Drop);
    for _ in 0..3 {
        let (s, v) = gw.get("acct-kms").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    }
    let calls = gw.proxy.count(DECRYPT);
    // A 40 s cooldown began at the third fault: the answer says (nearly) all of it, never 1.
    let first = retry_after_of_open(&gw).await;
    assert!((30..=40).contains(&first), "Retry-After {first}");
    // And counts down.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = retry_after_of_open(&gw).await;
    assert!(later < first && later + 4 >= first, "{first} then {later}");
    assert_eq!(
        gw.proxy.count(DECRYPT),
        calls,
        "the breaker answered itself"
    );
    gw.proxy.clear();
}

both_stores! {
    breaker_opens_fails_fast_and_closes_by_probe: 64, 256, 400;
    refused_keys_and_tampering_never_open_the_breaker: 64, 256, 400;
    operator_closes_an_open_breaker_audited: 64, 256, 400;
    a_slow_backend_fills_only_its_own_bulkhead: 1, 0, 400;
    an_open_breaker_s_retry_after_is_the_rest_of_its_cooldown: 64, 256, 40_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigstopped_moto_opens_the_kms_breaker_and_sigcont_lets_a_probe_close_it() {
    let Some(moto) = OwnMoto::start().await else {
        return;
    };
    let (app, admin, _dir) = moto_gateway(&moto, |kms, breaker| {
        kms.max_attempts = 2;
        kms.call_timeout_ms = 300;
        kms.deadline_ms = 700;
        breaker.cooldown_ms = 500;
        breaker.probe_interval_ms = 100;
        breaker.probe_closed = false;
    })
    .await;
    let get = |account: &'static str| {
        let (app, admin) = (app.clone(), admin.clone());
        async move {
            common::call(
                &app,
                &admin,
                "GET",
                &format!("/v1/accounts/{account}/shards/s1"),
                None,
            )
            .await
        }
    };

    moto.signal("-STOP");
    for _ in 0..3 {
        let (s, v) = get("acct-kms").await;
        assert!(
            s == StatusCode::SERVICE_UNAVAILABLE || s == StatusCode::GATEWAY_TIMEOUT,
            "{s}: {v}"
        );
    }
    // Open: the next one is refused by the breaker itself (its detail says so); local keeps
    // serving; the process stays ready.
    let (s, v) = get("acct-kms").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let (s, _) = get("acct-local").await;
    assert_eq!(s, StatusCode::OK);
    let (s, r) = common::call(&app, &admin, "GET", "/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["backends"]["kms"]["usable"], false, "{r}");
    assert!(
        r["backends"]["kms"]["detail"]
            .as_str()
            .unwrap()
            .contains("circuit open"),
        "{r}"
    );

    moto.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, r) = common::call(&app, &admin, "GET", "/readyz", None).await;
        if r["backends"]["kms"]["stats"]["breaker_state"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no probe closed the breaker: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v) = get("acct-kms").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        B64.decode(v["shard"].as_str().unwrap()).unwrap(),
        b"before the pause"
    );
}

/// An in-process gateway (SQLite) with `kms` on `moto` for tier `retail` and `local` for tier
/// `institutional`, one shard `s1` on each of `acct-kms` and `acct-local`.
async fn moto_gateway(
    moto: &OwnMoto,
    tweak: impl FnOnce(
        &mut shardgate_backends::aws_kms::KmsConfig,
        &mut shardgate::domain::breaker::BreakerConfig,
    ),
) -> (axum::Router, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    let mut kms = common::moto_kms(&moto.endpoint).await;
    kms.cache.enabled = false;
    tweak(&mut kms, &mut cfg.breaker);
    cfg.backends
        .insert("kms".into(), BackendConfig::AwsKms(kms));
    cfg.tiers.insert("retail".into(), "kms".into());
    cfg.tiers.insert("institutional".into(), "local".into());
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    let app = shardgate::router(state);
    let admin = tokens.admin.clone();
    for (account, tier) in [("acct-kms", "retail"), ("acct-local", "institutional")] {
        let (s, _) = common::call(
            &app,
            &admin,
            "PUT",
            &format!("/v1/accounts/{account}"),
            Some(json!({"tier": tier})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, v) = common::call(
            &app,
            &admin,
            "PUT",
            &format!("/v1/accounts/{account}/shards/s1"),
            Some(json!({"shard": B64.encode(b"before the pause")})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    (app, admin, dir)
}

/// GET `acct-local`'s shard `n` times, one after another: every one answers 200.
async fn local_gets(app: &axum::Router, admin: &str, n: usize) {
    for _ in 0..n {
        let (s, v) =
            common::call(app, admin, "GET", "/v1/accounts/acct-local/shards/s1", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

/// Slots of the `kms` bulkhead held plus callers waiting for one, from `/metrics` (stats
/// read without I/O; `/readyz` would ask the stopped KMS for its health).
async fn kms_bulkhead_held(app: &axum::Router, admin: &str) -> (u64, String) {
    let text = common::scrape(app, admin).await;
    let value = |name: &str| -> u64 {
        let prefix = format!("shardgate_backend_{name}{{backend=\"kms\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
    };
    let held = value("bulkhead_in_use") + value("bulkhead_waiting");
    (held, text)
}

/// 200 GETs hang on a SIGSTOPped KMS (its breaker set never to open, so they really wait):
/// once all of them hold or wait for the bulkhead, 101 GETs on `local` are served while none
/// of the hung ones has ended, and every hung GET ends by the deadline its caller's header set
/// (KMS never answers). How fast `local` stays meanwhile is a bench
/// figure, not an assertion here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hung_kms_calls_starve_nothing_else_and_end_by_their_deadline() {
    const HUNG: usize = 200;
    // Generous: the local GETs below must finish while these still hang.
    const DEADLINE_MS: u64 = 10_000;
    let Some(moto) = OwnMoto::start().await else {
        return;
    };
    let (app, admin, _dir) = moto_gateway(&moto, |kms, breaker| {
        kms.max_attempts = 1;
        kms.call_timeout_ms = 60_000;
        kms.deadline_ms = 60_000;
        breaker.failure_threshold = 100_000;
        breaker.max_concurrent = 64;
        breaker.max_queue = 256;
    })
    .await;
    local_gets(&app, &admin, 5).await;

    moto.signal("-STOP");
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut hung = tokio::task::JoinSet::new();
    for _ in 0..HUNG {
        let (app, admin, finished) = (app.clone(), admin.clone(), finished.clone());
        hung.spawn(async move {
            use tower::ServiceExt;
            let req = axum::http::Request::builder()
                .method("GET")
                .uri("/v1/accounts/acct-kms/shards/s1")
                .header("authorization", format!("Bearer {admin}"))
                .header("x-shardgate-deadline-ms", DEADLINE_MS.to_string())
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await;
            finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let v: Value = serde_json::from_slice(&body.unwrap()).unwrap_or(Value::Null);
            (status, v)
        });
    }
    // Every hung GET holds a slot of the kms bulkhead or waits for one.
    let wait = Instant::now() + Duration::from_secs(30);
    loop {
        let (held, text) = kms_bulkhead_held(&app, &admin).await;
        if held == HUNG as u64 {
            break;
        }
        assert!(
            Instant::now() < wait,
            "the KMS GETs never all queued: {held}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    local_gets(&app, &admin, 101).await;
    assert_eq!(
        finished.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "local was served while every KMS GET still hung"
    );
    while let Some(r) = hung.join_next().await {
        // KMS never answers: the deadline ends each (at the bulkhead's wait, 503, or in
        // the call, 504).
        let (status, v) = r.unwrap();
        assert!(
            (status == StatusCode::GATEWAY_TIMEOUT && v["error"]["code"] == "deadline_exceeded")
                || (status == StatusCode::SERVICE_UNAVAILABLE
                    && v["error"]["code"] == "backend_unavailable"),
            "{status}: {v}"
        );
    }
    moto.signal("-CONT");
}
