//! The gateway over HTTP with an `aws-kms` backend whose endpoint is the fault-injecting proxy
//! in front of moto: key refusals moto never answers (disabled key, invalid key state),
//! throttling, and an unreachable or stalled KMS, on both stores. The backend's data-key cache
//! is off, so every read really calls `Decrypt` and no cached key can hide a fault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[allow(dead_code)]
#[path = "../../backends/tests/support/fault_proxy.rs"]
mod fault_proxy;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::{StoreKind, Tokens};
use fault_proxy::{Fault, FaultProxy, Rule};
use serde_json::{json, Value};
use shardgate::app::config::BackendConfig;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const DECRYPT: &str = "TrentService.Decrypt";
const GENERATE: &str = "TrentService.GenerateDataKey";
const ACCOUNT: &str = "acct-kf";

/// The backend's retry settings in these tests.
const MAX_ATTEMPTS: u32 = 4;
const CALL_TIMEOUT_MS: u64 = 400;
const DEADLINE_MS: u64 = 2000;
/// A request that has not answered after this long hangs: the test fails instead of waiting.
const HANG: Duration = Duration::from_secs(60);
/// A stalled KMS answers after this long: twice [`HANG`], so a request that waited the stall
/// out fails as hung (and its answer would be a 200, not the 503/504 expected).
const STALL: Duration = Duration::from_secs(120);

struct Faulty {
    app: axum::Router,
    tokens: Tokens,
    db: Db,
    proxy: FaultProxy,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    fn shard(&self) -> Vec<u8> {
        B64.decode(self.body["shard"].as_str().unwrap()).unwrap()
    }
}

/// A gateway whose `kms` backend (tier `retail`) reaches moto through a fresh proxy, with the
/// account `ACCOUNT` created on it. The key is created on moto directly, so the proxy counts
/// only the gateway's calls.
async fn setup(kind: StoreKind) -> Option<Faulty> {
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
    cfg.tiers.insert("retail".into(), "kms".into());
    // The breaker opens during the outages below; a short cooldown and a fast probe let
    // these tests see recovery in seconds (the breaker itself is pinned in breaker.rs).
    cfg.breaker.cooldown_ms = 200;
    cfg.breaker.probe_interval_ms = 50;
    cfg.breaker.probe_closed = false;
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    let k = Faulty {
        app: shardgate::router(state),
        tokens,
        db: Db::connect(&url).await,
        proxy,
        _dir: dir,
    };
    let a = k
        .call(
            "PUT",
            &format!("/v1/accounts/{ACCOUNT}"),
            Some(json!({ "tier": "retail" })),
        )
        .await;
    assert!(a.status.is_success(), "{}", a.body);
    assert_eq!(a.body["backend"], "kms", "{}", a.body);
    Some(k)
}

impl Faulty {
    /// GET, retried while the backend's breaker still answers 503 (it closes within its
    /// cooldown once KMS is back), for at most 30 s (a wait that must end).
    async fn get_once_healed(&self, shard: &str) -> Answer {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let a = self.get(shard).await;
            if a.status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
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
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn put(&self, shard: &str, data: &[u8]) -> Answer {
        let b64 = B64.encode(data);
        common::plant(&b64);
        self.call(
            "PUT",
            &format!("/v1/accounts/{ACCOUNT}/shards/{shard}"),
            Some(json!({ "shard": b64 })),
        )
        .await
    }

    async fn get(&self, shard: &str) -> Answer {
        self.call(
            "GET",
            &format!("/v1/accounts/{ACCOUNT}/shards/{shard}"),
            None,
        )
        .await
    }

    /// Store a shard while the proxy passes everything through; the proxy's counts are then
    /// reset, so a test counts only what follows.
    async fn stored(&self, shard: &str, data: &[u8]) {
        let a = self.put(shard, data).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        assert_eq!(a.body["backend"], "kms");
        self.proxy.reset_counts();
    }

    /// Audit events of `action` on `shard` with `outcome`.
    async fn audited(&self, action: &str, shard: &str, outcome: &str) -> i64 {
        self.db
            .count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE action = '{action}' \
                 AND account = '{ACCOUNT}' AND shard = '{shard}' AND outcome = '{outcome}'"
            ))
            .await
    }

    /// Stored versions of `shard`, straight from the table.
    async fn stored_versions(&self, shard: &str) -> i64 {
        self.db
            .count(&format!(
                "SELECT COUNT(*) FROM shard_versions WHERE account = '{ACCOUNT}' AND shard = '{shard}'"
            ))
            .await
    }
}

/// Decrypt on this key always answers `code` (a refusal KMS makes and moto does not): the read
/// answers 502 `key_unusable` after exactly one attempt, is audited as a failure, leaks neither
/// shard nor KMS text, and reads again as soon as KMS stops refusing, without a restart.
async fn refused_read_is_502_audited_then_recovers(k: &Faulty, code: &str) {
    let secret = format!("kms-refused-{code}-0001").into_bytes();
    k.stored("s", &secret).await;
    k.proxy.set_rule(Rule {
        fault: Fault::kms(code),
        target: Some(DECRYPT.into()),
        remaining: None,
    });

    let a = k.get("s").await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_GATEWAY, Some("key_unusable")),
        "{code}: {}",
        a.body
    );
    assert!(a.body.get("shard").is_none(), "{}", a.body);
    let text = a.body.to_string();
    assert!(
        !text.contains("injected") && !text.contains(code),
        "the answer carries KMS's error text: {text}"
    );
    assert_eq!(k.proxy.count(DECRYPT), 1, "{code} must not be retried");
    assert_eq!(k.audited("shard.get", "s", "key_unusable").await, 1);
    assert_eq!(k.audited("shard.get", "s", "ok").await, 0);

    k.proxy.clear();
    let a = k.get("s").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.shard(), secret);
    assert_eq!(a.body["version"], 1);
    assert_eq!(k.proxy.count(DECRYPT), 2);
    assert_eq!(k.audited("shard.get", "s", "ok").await, 1);
}

async fn disabled_key_answers_502_audited_then_recovers(k: Faulty) {
    refused_read_is_502_audited_then_recovers(&k, "DisabledException").await;
}

async fn invalid_key_state_answers_502_audited_then_recovers(k: Faulty) {
    refused_read_is_502_audited_then_recovers(&k, "KMSInvalidStateException").await;
}

/// Two transient answers, then KMS answers: the read is retried inside the deadline and
/// succeeds; three `Decrypt` calls in all. The same for a write's `GenerateDataKey`.
async fn short_throttling_burst_is_retried_and_answers_200(k: Faulty) {
    let secret = b"kms-throttled-shard-0001".to_vec();
    k.stored("s", &secret).await;
    for code in ["ThrottlingException", "KMSInternalException"] {
        k.proxy.reset_counts();
        k.proxy.set_rule(Rule {
            fault: Fault::kms(code),
            target: Some(DECRYPT.into()),
            remaining: Some(2),
        });
        let a = k.get("s").await;
        assert_eq!(a.status, StatusCode::OK, "{code}: {}", a.body);
        assert_eq!(a.shard(), secret);
        assert_eq!(k.proxy.count(DECRYPT), 3, "{code}: 2 refused + 1 answered");
    }
    assert_eq!(k.audited("shard.get", "s", "ok").await, 2);

    k.proxy.reset_counts();
    k.proxy.set_rule(Rule {
        fault: Fault::kms("ThrottlingException"),
        target: Some(GENERATE.into()),
        remaining: Some(2),
    });
    let a = k.put("s", b"kms-throttled-shard-0002").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["version"], 2);
    assert_eq!(k.proxy.count(GENERATE), 3);
    let a = k.get("s").await;
    assert_eq!(a.shard(), b"kms-throttled-shard-0002");
}

/// Throttling that never stops: the read gives up after exactly `max_attempts` `Decrypt`
/// calls (the retries end before the deadline: backoff is at most 25+50+100 ms here) with
/// 503 `backend_unavailable` and `Retry-After`, audited; it reads again once KMS answers.
async fn throttling_beyond_the_retries_answers_503_with_retry_after_and_bounded_attempts(
    k: Faulty,
) {
    let secret = b"kms-throttled-forever-01".to_vec();
    k.stored("s", &secret).await;
    k.proxy.set_rule(Rule {
        fault: Fault::kms("ThrottlingException"),
        target: Some(DECRYPT.into()),
        remaining: None,
    });
    let a = k.get("s").await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("backend_unavailable")),
        "{}",
        a.body
    );
    assert!(
        a.headers.contains_key(header::RETRY_AFTER),
        "{:?}",
        a.headers
    );
    assert!(a.body.get("shard").is_none());
    // Exactly max_attempts calls: the attempts, not the deadline, ended the retries.
    assert_eq!(
        k.proxy.count(DECRYPT),
        u64::from(MAX_ATTEMPTS),
        "attempts are bounded by max_attempts"
    );
    assert_eq!(k.audited("shard.get", "s", "backend_unavailable").await, 1);

    k.proxy.clear();
    let a = k.get("s").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.shard(), secret);
    assert_eq!(k.proxy.count(DECRYPT), u64::from(MAX_ATTEMPTS) + 1);
}

/// Send `n` reads of `shards` and one write at once while KMS is unreachable: every one
/// answers 503 `backend_unavailable` (with `Retry-After`) or 504 `deadline_exceeded` while
/// KMS is still down (none waits the outage out: a stalled KMS answers only after
/// [`STALL`], and a request still waiting at [`HANG`] fails the test); the write stores
/// nothing.
async fn all_fail_fast(k: &Faulty, what: &str, shards: &[&str]) {
    let before = k.stored_versions(shards[0]).await;
    let reads = futures::future::join_all(shards.iter().map(|s| k.get(s)));
    let write = k.put(shards[0], b"kms-written-while-down-1");
    let (reads, write) = tokio::join!(reads, write);
    for a in reads.iter().chain(std::iter::once(&write)) {
        match (a.status, a.code()) {
            (StatusCode::SERVICE_UNAVAILABLE, Some("backend_unavailable")) => assert!(
                a.headers.contains_key(header::RETRY_AFTER),
                "{what}: {:?}",
                a.headers
            ),
            (StatusCode::GATEWAY_TIMEOUT, Some("deadline_exceeded")) => {}
            other => panic!("{what}: expected 503/504, got {other:?}: {}", a.body),
        }
        assert!(a.body.get("shard").is_none());
    }
    assert_eq!(
        k.stored_versions(shards[0]).await,
        before,
        "{what}: a failed write stored a version"
    );
    assert!(
        k.proxy.count(DECRYPT) >= shards.len() as u64,
        "{what}: {:?}",
        k.proxy.counts()
    );
}

/// KMS unreachable (the proxy closes every connection, then stalls every request): requests
/// fail with 503/504 while it is down and none waits for it; once the proxy heals, the same
/// gateway reads and writes again.
async fn unreachable_kms_answers_503_or_504_without_waiting_for_it_then_recovers(k: Faulty) {
    let shards = ["s1", "s2", "s3"];
    for s in shards {
        k.stored(s, format!("kms-outage-{s}-secret").as_bytes())
            .await;
    }

    k.proxy.set(Fault::Drop);
    all_fail_fast(&k, "connections dropped", &shards).await;
    k.proxy.clear();
    k.proxy.reset_counts();
    let a = k.get_once_healed("s1").await;
    assert_eq!(a.status, StatusCode::OK, "after the drops: {}", a.body);
    assert_eq!(a.shard(), b"kms-outage-s1-secret");

    k.proxy.set(Fault::Latency(STALL));
    k.proxy.reset_counts();
    all_fail_fast(&k, "KMS stalled", &shards).await;
    k.proxy.clear();

    for s in shards {
        let a = k.get_once_healed(s).await;
        assert_eq!(a.status, StatusCode::OK, "after the stall: {}", a.body);
        assert_eq!(a.shard(), format!("kms-outage-{s}-secret").as_bytes());
    }
    let a = k.put("s1", b"kms-written-after-heal-1").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["version"], 2);
    assert!(k.audited("shard.get", "s1", "ok").await >= 2);
}

/// `GenerateDataKey` refused with `DisabledException`: the write answers 502 `key_unusable`
/// after one attempt and stores nothing (the version list is unchanged); the existing version
/// still reads; once KMS stops refusing, the write succeeds as the next version.
async fn put_on_a_disabled_key_answers_502_and_writes_nothing(k: Faulty) {
    let secret = b"kms-put-disabled-v1-0001".to_vec();
    k.stored("s", &secret).await;
    k.proxy.set_rule(Rule {
        fault: Fault::kms("DisabledException"),
        target: Some(GENERATE.into()),
        remaining: None,
    });

    let a = k.put("s", b"kms-put-disabled-v2-0002").await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_GATEWAY, Some("key_unusable")),
        "{}",
        a.body
    );
    assert_eq!(k.proxy.count(GENERATE), 1, "not retried");
    assert_eq!(k.stored_versions("s").await, 1);
    // The refused write is audited, though nothing was stored.
    assert_eq!(k.audited("shard.put", "s", "key_unusable").await, 1);
    let list = k
        .call("GET", &format!("/v1/accounts/{ACCOUNT}/shards"), None)
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(
        list.body["shards"],
        json!([{"shard": "s", "latest_version": 1, "backend": "kms"}])
    );
    let a = k.get("s").await;
    assert_eq!((a.status, a.shard()), (StatusCode::OK, secret));
    assert_eq!(a.body["version"], 1);

    // A first write of a new shard is refused the same way and leaves no shard behind.
    let a = k.put("fresh", b"kms-put-disabled-fresh-1").await;
    assert_eq!(a.code(), Some("key_unusable"), "{}", a.body);
    assert_eq!(k.stored_versions("fresh").await, 0);
    assert_eq!(k.get("fresh").await.code(), Some("shard_not_found"));

    k.proxy.clear();
    let a = k.put("s", b"kms-put-disabled-v2-0002").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["version"], 2);
    assert_eq!(k.stored_versions("s").await, 2);
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(k) = super::setup(super::StoreKind::Sqlite).await { super::$name(k).await; }
            }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(k) = super::setup(super::StoreKind::Postgres).await { super::$name(k).await; }
            }
        )* }
    };
}

both_stores!(
    disabled_key_answers_502_audited_then_recovers,
    invalid_key_state_answers_502_audited_then_recovers,
    short_throttling_burst_is_retried_and_answers_200,
    throttling_beyond_the_retries_answers_503_with_retry_after_and_bounded_attempts,
    unreachable_kms_answers_503_or_504_without_waiting_for_it_then_recovers,
    put_on_a_disabled_key_answers_502_and_writes_nothing,
);
