//! Priority admission over HTTP (issue 30, item 3): an in-process gateway whose `aws-kms`
//! backend reaches moto through the fault proxy, slowed so that a flood of `bulk` reads
//! overloads its bulkhead, beside `critical` reads of a tier's class and of an account's own.
//! Both stores (the class of a read comes from its account's tier, looked up in the store).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "../../backends/tests/support/fault_proxy.rs"]
#[allow(dead_code)]
mod fault_proxy;

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::{StoreKind, Tokens};
use fault_proxy::{Fault, FaultProxy};
use serde_json::{json, Value};
use shardgate::app::config::BackendConfig;
use shardgate_policy::Class;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Gw {
    app: axum::Router,
    tokens: Tokens,
    proxy: FaultProxy,
    _dir: tempfile::TempDir,
}

/// Tiers `vip` (critical) and `batch` (bulk) on one `kms` backend of 2 slots and a queue of
/// 8; `acct-promoted` is in `batch` but critical on its own.
async fn setup(kind: StoreKind) -> Option<Gw> {
    let endpoint = common::require_env("SHARDGATE_TEST_MOTO_ENDPOINT")?;
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    let proxy = FaultProxy::start(&endpoint).await;
    let mut kms = common::moto_kms_via(&endpoint, proxy.url()).await;
    kms.cache.enabled = false;
    cfg.backends
        .insert("kms".into(), BackendConfig::AwsKms(kms));
    for tier in ["vip", "batch"] {
        cfg.tiers.insert(tier.into(), "kms".into());
    }
    cfg.policy.priorities.insert("vip".into(), Class::Critical);
    cfg.policy.priorities.insert("batch".into(), Class::Bulk);
    cfg.policy
        .account_priorities
        .insert("acct-promoted".into(), Class::Critical);
    cfg.breaker.probe_interval_ms = 0;
    cfg.breaker.max_concurrent = 2;
    cfg.breaker.max_queue = 8;
    cfg.breaker.reserve_pct = 25;
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    let gw = Gw {
        app: shardgate::router(state),
        tokens,
        proxy,
        _dir: dir,
    };
    for (account, tier) in [
        ("acct-batch", "batch"),
        ("acct-vip", "vip"),
        ("acct-promoted", "batch"),
    ] {
        let path = format!("/v1/accounts/{account}");
        let (s, v) = gw.call("PUT", &path, Some(json!({ "tier": tier }))).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let body = json!({ "shard": B64.encode(format!("{account} shard")) });
        let (s, v) = gw
            .call("PUT", &format!("{path}/shards/s1"), Some(body))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    Some(gw)
}

impl Gw {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        common::call(&self.app, &self.tokens.admin, method, path, body).await
    }

    /// A GET of the account's shard: status, error code, `Retry-After`.
    async fn get(&self, account: &str) -> (StatusCode, Option<String>, Option<String>) {
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .uri(format!("/v1/accounts/{account}/shards/s1"))
            .header("authorization", format!("Bearer {}", self.tokens.admin))
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|h| h.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let code = v["error"]["code"].as_str().map(str::to_string);
        (status, code, retry_after)
    }
}

async fn a_bulk_flood_is_shed_while_critical_reads_are_all_served(gw: Gw) {
    gw.proxy.set(Fault::Latency(Duration::from_millis(100)));
    let gw = Arc::new(gw);
    let stop = Arc::new(AtomicBool::new(false));
    // 24 clients reading bulk shards back to back: 12 times what the backend serves at once,
    // 3 times its queue.
    let flood: Vec<_> = (0..24)
        .map(|_| {
            let (gw, stop) = (gw.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    seen.push(gw.get("acct-batch").await);
                }
                seen
            })
        })
        .collect();
    // Let the flood fill the bulkhead first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..6 {
        for account in ["acct-vip", "acct-promoted"] {
            let (s, code, _) = gw.get(account).await;
            assert_eq!(
                s,
                StatusCode::OK,
                "critical read {round} of {account} under the flood: {code:?}"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut served = 0;
    let mut shed = 0;
    for task in flood {
        for (s, code, retry_after) in task.await.unwrap() {
            match s {
                StatusCode::OK => served += 1,
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(code.as_deref(), Some("backend_unavailable"));
                    let secs: u64 = retry_after
                        .expect("a shed bulk read says when to retry")
                        .parse()
                        .unwrap();
                    assert!(secs >= 1);
                    shed += 1;
                }
                other => panic!("a bulk read ended {other} ({code:?}), not served or shed"),
            }
        }
    }
    assert!(served > 0, "bulk still gets its share");
    assert!(shed > 0, "the flood overloaded the bulkhead");
    let (s, r) = gw.call("GET", "/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let stats = &r["backends"]["kms"]["stats"];
    assert!(
        stats["bulkhead_shed_bulk_total"].as_u64().unwrap() >= shed,
        "{r}"
    );
    assert_eq!(stats["bulkhead_shed_critical_total"], 0, "{r}");
    gw.proxy.clear();
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_bulk_flood_is_shed_while_critical_reads_are_all_served() {
        if let Some(g) = super::setup(super::StoreKind::Sqlite).await {
            super::a_bulk_flood_is_shed_while_critical_reads_are_all_served(g).await;
        }
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_bulk_flood_is_shed_while_critical_reads_are_all_served() {
        if let Some(g) = super::setup(super::StoreKind::Postgres).await {
            super::a_bulk_flood_is_shed_while_critical_reads_are_all_served(g).await;
        }
    }
}
