//! The gateway in this process (`shardgate::app`, PostgreSQL store) on a pkcs11 backend over
//! a real SoftHSM2 token, under HSM faults seen through HTTP: a held pool (503 +
//! `Retry-After`), a `C_Logout` under traffic, the token deleted and re-created from outside,
//! pool gauges in `/metrics` and `/readyz`, and readiness that follows a moto CloudHSM
//! cluster. In-process so that the test-only hooks (`fault-injection`) reach the live
//! backend; the process still holds ONE PKCS#11 context: the gateway's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../backends/tests/support/fault_proxy.rs"]
#[allow(dead_code)]
mod fault_proxy;

use axum::body::Body;
use axum::http::{header, Request};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use shardgate::config::{Config, Sources};
use shardgate::AppState;
use shardgate_backends::pkcs11::Pkcs11Backend;
use shardgate_softhsm_tests::{module, TestToken};
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const HELPER: &str = env!("CARGO_BIN_EXE_sg-softhsm-helper");
const KEK: [u8; 32] = [0x5Au8; 32];

async fn fresh_pg() -> Option<String> {
    let base = match std::env::var("SHARDGATE_TEST_DATABASE_URL") {
        Ok(v) if !v.is_empty() => v,
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("SHARDGATE_TEST_DATABASE_URL is not set under CI=true");
            }
            println!("SKIPPED: SHARDGATE_TEST_DATABASE_URL is not set");
            return None;
        }
    };
    let (prefix, db) = base.rsplit_once('/').unwrap();
    let name = format!(
        "{}_{}",
        db.split('?').next().unwrap(),
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .unwrap();
    Some(format!("{prefix}/{name}"))
}

fn moto_endpoint(test: &str) -> Option<String> {
    match std::env::var("SHARDGATE_TEST_MOTO_ENDPOINT") {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: SHARDGATE_TEST_MOTO_ENDPOINT is not set (moto is required in CI)");
            }
            println!("SKIPPED: {test}: SHARDGATE_TEST_MOTO_ENDPOINT is not set");
            None
        }
    }
}

/// A gateway (in this process) on a fresh token whose KEK `kek/v1` has known bytes, so the
/// token can be re-created with the same key from outside.
struct Gw {
    app: axum::Router,
    state: AppState,
    token: TestToken,
    api_token: String,
}

impl Gw {
    /// `extra` is appended to the `[backends.hsm]` table (pool size, timeouts, cloudhsm...);
    /// `more` is appended to the file (other backends, tiers).
    async fn start(test: &str, extra: &str, more: &str) -> Option<Gw> {
        let module = module(test)?;
        let pg = fresh_pg().await?;
        let token = TestToken::new(&module, "sg-faults");
        token.create_key(HELPER, "kek/v1", &KEK, false, true);
        let hsm = token.config("kek");
        let dir = token.dir.path();
        let api_token = format!("sgt_faults_{}", uuid::Uuid::new_v4().simple());
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(api_token.as_bytes()));
        let config = dir.join("shardgate.toml");
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:0"
data_dir = "{dir}"
[store]
url = "{pg}"
[backends.hsm]
kind = "pkcs11"
module = "{module}"
token_label = "{label}"
pin_file = "{pin_file}"
kek_label = "kek"
{extra}
{more}
[[tokens]]
name = "faults-test"
sha256 = "{hash}"
scopes = ["*"]
[audit]
key_file = "{dir}/audit.key"
create_key = true
"#,
                dir = dir.display(),
                module = module.display(),
                label = token.label,
                pin_file = hsm.pin_file.as_ref().unwrap().display(),
            ),
        )
        .unwrap();
        let cfg = Config::load(&Sources {
            file: Some(config),
            ..Sources::default()
        })
        .unwrap();
        let (state, _) = AppState::build(&cfg).await.unwrap();
        Some(Gw {
            app: shardgate::app(state.clone()),
            state,
            token,
            api_token,
        })
    }

    fn hsm(&self) -> &Pkcs11Backend {
        self.state
            .backend("hsm")
            .unwrap()
            .as_any()
            .and_then(|a| a.downcast_ref::<Pkcs11Backend>())
            .expect("the hsm backend is a Pkcs11Backend")
    }

    async fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, axum::http::HeaderMap, Vec<u8>) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.api_token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, bytes.to_vec())
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (s, _, b) = self.call_raw(method, path, body).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// Create `acct` on the hsm tier and store `n` shards; returns their bytes.
    async fn load(&self, acct: &str, n: usize) -> Vec<Vec<u8>> {
        let (s, v) = self
            .call(
                "PUT",
                &format!("/v1/accounts/{acct}"),
                Some(json!({"tier": "institutional"})),
            )
            .await;
        assert_eq!((s, v["backend"].as_str()), (201, Some("hsm")), "{v}");
        let mut out = Vec::new();
        for i in 0..n {
            let data: Vec<u8> = (0..40u8)
                .map(|j| j.wrapping_mul(7) ^ u8::try_from(i % 256).unwrap())
                .collect();
            let (s, v) = self
                .call(
                    "PUT",
                    &format!("/v1/accounts/{acct}/shards/s{i}"),
                    Some(json!({"shard": B64.encode(&data)})),
                )
                .await;
            assert_eq!(s, 201, "{v}");
            out.push(data);
        }
        out
    }

    async fn get(&self, acct: &str, i: usize) -> (u16, Value) {
        self.call("GET", &format!("/v1/accounts/{acct}/shards/s{i}"), None)
            .await
    }

    async fn metrics(&self) -> String {
        let (s, _, b) = self.call_raw("GET", "/metrics", None).await;
        assert_eq!(s, 200);
        String::from_utf8(b).unwrap()
    }
}

const HSM_TIER: &str = "[tiers]\ninstitutional = \"hsm\"\n";

/// The value of `name{backend="hsm"}` in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{backend=\"hsm\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_pool_answers_503_with_retry_after_within_the_checkout_timeout() {
    let Some(gw) = Gw::start(
        "held_pool_503",
        "pool_size = 1\ncheckout_timeout_ms = 300",
        HSM_TIER,
    )
    .await
    else {
        return;
    };
    let shards = gw.load("inst-held", 1).await;
    let hold = gw.hsm().hold_checkout().await.unwrap();
    let start = Instant::now();
    let (s, headers, body) = gw
        .call_raw("GET", "/v1/accounts/inst-held/shards/s0", None)
        .await;
    let waited = start.elapsed();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("backend_unavailable")),
        "{v}"
    );
    assert!(headers.contains_key(header::RETRY_AFTER), "{headers:?}");
    assert!(v.get("shard").is_none());
    // It waited for a session, but not much longer than the configured 300 ms.
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "shardgate_backend_pool_in_use"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "shardgate_backend_pool_size"), Some(1.0), "{m}");

    drop(hold);
    let (s, v) = gw.get("inst-held", 0).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(B64.decode(v["shard"].as_str().unwrap()).unwrap(), shards[0]);
    // Pool exhaustion is load, not a fault: no recovery was started.
    assert_eq!(gw.hsm().pool_status().recoveries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_under_http_traffic_recovers_and_never_returns_a_wrong_shard() {
    let Some(gw) = Gw::start("logout_http", "pool_size = 4", HSM_TIER).await else {
        return;
    };
    let gw = Arc::new(gw);
    let shards = Arc::new(gw.load("inst-lo", 16).await);
    let rec0 = gw.hsm().pool_status().recoveries;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..8usize {
        let (gw, shards, stop) = (gw.clone(), shards.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let (mut ok, mut unavailable) = (0u32, 0u32);
            let mut i = t;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let k = i % shards.len();
                let (s, v) = gw.get("inst-lo", k).await;
                match s {
                    200 => {
                        let got = B64.decode(v["shard"].as_str().unwrap()).unwrap();
                        assert_eq!(got, shards[k], "a wrong shard came back for s{k}");
                        ok += 1;
                    }
                    503 => {
                        assert_eq!(v["error"]["code"], "backend_unavailable", "{v}");
                        unavailable += 1;
                    }
                    other => panic!("GET s{k} answered {other}: {v}"),
                }
                i += 1;
            }
            (ok, unavailable)
        }));
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        gw.hsm().inject_logout().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut unavailable) = (0, 0);
    for r in readers {
        let (o, u) = r.await.unwrap();
        ok += o;
        unavailable += u;
    }
    println!("ok {ok}, unavailable {unavailable}");
    let st = gw.hsm().pool_status();
    assert!(st.recoveries > rec0, "no recovery counted: {st:?}");
    assert_eq!(st.session_overlaps, 0);
    assert!(ok > 100, "too little traffic got through: {ok}");
    // Recovered: every shard reads back, and the backend is ready.
    for (k, data) in shards.iter().enumerate() {
        let (s, v) = gw.get("inst-lo", k).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(&B64.decode(v["shard"].as_str().unwrap()).unwrap(), data);
    }
    let (s, v) = gw.call("GET", "/readyz", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["backends"]["hsm"]["usable"], true, "{v}");
    assert!(
        v["backends"]["hsm"]["stats"]["pool_recoveries_total"]
            .as_u64()
            .unwrap()
            > rec0,
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_deleted_and_recreated_answers_503_then_serves_again_without_restart() {
    let keyring = tempfile::tempdir().unwrap();
    let Some(gw) = Gw::start(
        "token_recreate_http",
        "pool_size = 2\ncheckout_timeout_ms = 500",
        // A second, healthy backend: one backend's outage must not make the process unready.
        &format!(
            "[backends.local]\nkind = \"local\"\nkey_file = \"{}/local.keyring\"\ncreate = true\n{HSM_TIER}retail = \"local\"\n",
            keyring.path().join("local.keyring").display()
        ),
    )
    .await
    else {
        return;
    };
    let shards = gw.load("inst-tok", 4).await;
    let rec0 = gw.hsm().pool_status().recoveries;

    gw.token.delete();
    for k in 0..shards.len() {
        let (s, headers, body) = gw
            .call_raw("GET", &format!("/v1/accounts/inst-tok/shards/s{k}"), None)
            .await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (503, Some("backend_unavailable")),
            "{v}"
        );
        assert!(headers.contains_key(header::RETRY_AFTER));
    }
    let (s, v) = gw.call("GET", "/readyz", None).await;
    assert_eq!(s, 200, "the local backend still serves: {v}");
    assert_eq!(v["backends"]["hsm"]["usable"], false, "{v}");
    assert_eq!(v["backends"]["local"]["usable"], true, "{v}");

    // Re-created from outside with the same label and a re-imported KEK.
    gw.token.init();
    gw.token.create_key(HELPER, "kek/v1", &KEK, false, true);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = gw.get("inst-tok", 0).await;
        if s == 200 {
            assert_eq!(B64.decode(v["shard"].as_str().unwrap()).unwrap(), shards[0]);
            break;
        }
        assert_eq!(s, 503, "{v}");
        assert!(Instant::now() < deadline, "never recovered: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (k, data) in shards.iter().enumerate() {
        let (s, v) = gw.get("inst-tok", k).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(&B64.decode(v["shard"].as_str().unwrap()).unwrap(), data);
    }
    // And new writes wrap on the re-created token.
    let (s, v) = gw
        .call(
            "PUT",
            "/v1/accounts/inst-tok/shards/s0",
            Some(json!({"shard": B64.encode(b"after the token came back")})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = gw.get("inst-tok", 0).await;
    assert_eq!(s, 200);
    assert_eq!(
        B64.decode(v["shard"].as_str().unwrap()).unwrap(),
        b"after the token came back"
    );
    assert!(gw.hsm().pool_status().recoveries > rec0);
    let (_, v) = gw.call("GET", "/readyz", None).await;
    assert_eq!(v["backends"]["hsm"]["usable"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_path_makes_no_find_objects_calls_and_metrics_show_the_pool() {
    let Some(gw) = Gw::start("no_finds", "pool_size = 4", HSM_TIER).await else {
        return;
    };
    let shards = gw.load("inst-find", 10).await;
    let before = gw.metrics().await;
    let finds0 = metric(&before, "shardgate_backend_find_objects_calls_total").unwrap();
    assert_eq!(metric(&before, "shardgate_backend_pool_size"), Some(4.0));
    assert!(finds0 >= 1.0, "start-up finds the KEK: {before}");
    for n in 0..1000usize {
        let k = n % shards.len();
        let (s, _) = gw.get("inst-find", k).await;
        assert_eq!(s, 200);
    }
    let items: Vec<Value> = (0..10)
        .map(|i| json!({"account": "inst-find", "shard": format!("s{i}")}))
        .collect();
    let (s, v) = gw
        .call(
            "POST",
            "/v1/shards:batchGet",
            Some(json!({ "items": items })),
        )
        .await;
    assert_eq!(s, 200);
    for (i, data) in shards.iter().enumerate() {
        assert_eq!(
            &B64.decode(v["results"][i]["shard"].as_str().unwrap())
                .unwrap(),
            data
        );
    }
    let after = gw.metrics().await;
    assert_eq!(
        metric(&after, "shardgate_backend_find_objects_calls_total"),
        Some(finds0),
        "C_FindObjects ran on the hot path"
    );
    assert_eq!(gw.hsm().pool_status().find_calls as f64, finds0);
    assert_eq!(metric(&after, "shardgate_backend_pool_in_use"), Some(0.0));
    let (s, v) = gw.call("GET", "/readyz", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["backends"]["hsm"]["stats"]["pool_size"], 4, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_a_moto_cloudhsm_cluster_while_readyz_stays_200() {
    let Some(moto) = moto_endpoint("readiness_follows_cloudhsm") else {
        return;
    };
    // moto's CloudHSMv2 timestamps carry no offset; the proxy marks them UTC for the SDK.
    let proxy = fault_proxy::FaultProxy::start(&moto).await;
    let ep = proxy.url();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&ep)
        .load()
        .await;
    let client = aws_sdk_cloudhsmv2::Client::new(&sdk);
    let cluster = client
        .create_cluster()
        .hsm_type("hsm1.medium")
        .subnet_ids("subnet-12345678")
        .send()
        .await
        .unwrap();
    let cluster_id = cluster.cluster().unwrap().cluster_id().unwrap().to_string();
    let keyring = tempfile::tempdir().unwrap();
    let Some(gw) = Gw::start(
        "readiness_follows_cloudhsm",
        &format!(
            "pool_size = 2\n[backends.hsm.cloudhsm]\ncluster_id = \"{cluster_id}\"\nregion = \"us-east-1\"\nendpoint_url = \"{ep}\"\nmin_active_hsms = 0\npoll_interval_ms = 200\n"
        ),
        &format!(
            "[backends.local]\nkind = \"local\"\nkey_file = \"{}\"\ncreate = true\n{HSM_TIER}retail = \"local\"\n",
            keyring.path().join("local.keyring").display()
        ),
    )
    .await
    else {
        return;
    };
    let (s, v) = gw.call("GET", "/readyz", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["backends"]["hsm"]["usable"], true, "{v}");
    assert!(
        v["backends"]["hsm"]["detail"]
            .as_str()
            .unwrap()
            .contains("ACTIVE"),
        "{v}"
    );
    assert_eq!(
        v["backends"]["hsm"]["stats"]["cloudhsm_cluster_ready"], 1,
        "{v}"
    );

    client
        .delete_cluster()
        .cluster_id(&cluster_id)
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (s, v) = gw.call("GET", "/readyz", None).await;
        // Another backend can serve: the process stays in the load balancer.
        assert_eq!(s, 200, "{v}");
        if v["backends"]["hsm"]["usable"] == false {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never followed the cluster: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let detail = v["backends"]["hsm"]["detail"].as_str().unwrap();
    assert!(detail.contains("cluster not ready"), "{detail}");
    assert!(
        detail.contains("not found") || detail.contains("DELETE"),
        "{detail}"
    );
    assert_eq!(v["backends"]["local"]["usable"], true, "{v}");
    assert_eq!(v["ready"], true, "{v}");
}
