//! The gateway in this process (`shardgate::router`, PostgreSQL store) on a pkcs11 backend over
//! a real SoftHSM2 token, under HSM faults seen through HTTP: a held pool (503 +
//! `Retry-After`), a `C_Logout` under traffic, the token deleted and re-created from outside,
//! pool gauges in `/metrics` and `/readyz`, and readiness that follows a moto CloudHSM
//! cluster. In-process so that the test-only hooks (`fault-injection`) reach the live
//! backend; the process still holds ONE PKCS#11 context: the gateway's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

#[path = "../../backends/tests/support/fault_proxy.rs"]
#[allow(dead_code)]
mod fault_proxy;

use axum::http::header;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::gateway::{moto_endpoint, Gw, HELPER, HSM_TIER, KEK};

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
    // It waited for a session (a lower bound: a timer never fires early), and the checkout
    // timeout ended the wait: the session is still held, and the request deadline would
    // have answered 504 `deadline_exceeded`, not 503.
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
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
    // Reads answered 200 so far, by every reader: traffic must flow between the faults.
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    for t in 0..8usize {
        let (gw, shards, stop, served) = (gw.clone(), shards.clone(), stop.clone(), served.clone());
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
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    // Before each logout and after the last, reads get through again (a generous deadline
    // for each: counts, not timings, say that traffic recovered).
    let reads_flow = || {
        let served = served.clone();
        async move {
            let mark = served.load(std::sync::atomic::Ordering::Relaxed);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while served.load(std::sync::atomic::Ordering::Relaxed) < mark + 20 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "reads stopped getting through"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    for _ in 0..5 {
        reads_flow().await;
        gw.hsm().inject_logout().await.unwrap();
    }
    reads_flow().await;
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
    assert!(
        ok >= 120,
        "six rounds of at least 20 reads each got through: {ok}"
    );
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

/// One recoverable session loss (the token logged out under the pool) is the pool's business:
/// the pool logs in again, at most the request that met it fails, and the breaker, which
/// counts consecutive faults, never opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_recoverable_session_loss_does_not_open_the_breaker() {
    let Some(gw) = Gw::start("one_logout", "pool_size = 2", HSM_TIER).await else {
        return;
    };
    let shards = gw.load("inst-one", 4).await;
    let rec0 = gw.hsm().pool_status().recoveries;
    gw.hsm().inject_logout().await.unwrap();
    let mut failed = 0;
    for round in 0..5 {
        for (k, data) in shards.iter().enumerate() {
            let (s, v) = gw.get("inst-one", k).await;
            if s == 200 {
                assert_eq!(&B64.decode(v["shard"].as_str().unwrap()).unwrap(), data);
            } else {
                assert_eq!(
                    (s, round),
                    (503, 0),
                    "only the first reads may meet the loss: {v}"
                );
                failed += 1;
            }
        }
    }
    assert!(failed <= 1, "{failed} reads failed after one session loss");
    assert!(gw.hsm().pool_status().recoveries > rec0);
    let (s, v) = gw.call("GET", "/readyz", None).await;
    assert_eq!(s, 200);
    let stats = &v["backends"]["hsm"]["stats"];
    assert_eq!(stats["breaker_state"], 0, "{v}");
    assert_eq!(stats["breaker_opens_total"], 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_deleted_and_recreated_answers_503_then_serves_again_without_restart() {
    let keyring = tempfile::tempdir().unwrap();
    let Some(gw) = Gw::start(
        "token_recreate_http",
        "pool_size = 2\ncheckout_timeout_ms = 500",
        // A second, healthy backend: one backend's outage must not make the process unready.
        &format!(
            // The breaker opens while the token is gone: a short cooldown lets recovery show.
            "[backends.local]\nkind = \"local\"\nkey_file = \"{}\"\ncreate = true\n{HSM_TIER}retail = \"local\"\n[breaker]\ncooldown_ms = 200\nprobe_interval_ms = 50\nprobe_closed = false\n",
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
