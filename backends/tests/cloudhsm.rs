//! CloudHSM cluster discovery against moto's CloudHSMv2 API. moto creates clusters ACTIVE
//! at once with zero HSMs and has no `CreateHsm`, so these tests use `min_active_hsms = 0`
//! for readiness; the HSM-count rule is unit-tested on parsed clusters in `cloudhsm.rs`.
//! moto's CloudHSMv2 timestamps lack an offset and the Rust SDK rejects them, so the SDK
//! reaches moto through the test proxy, which marks them UTC (see `fault_proxy.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use shardgate_backends::cloudhsm::{CloudHsmConfig, ClusterMonitor};
use std::time::{Duration, Instant};
use support::fault_proxy::FaultProxy;
use support::{moto_endpoint, sdk_config, REGION};

async fn create_cluster(endpoint: &str) -> (aws_sdk_cloudhsmv2::Client, String) {
    let client = aws_sdk_cloudhsmv2::Client::new(&sdk_config(endpoint).await);
    let out = client
        .create_cluster()
        .hsm_type("hsm1.medium")
        .subnet_ids("subnet-12345678")
        .send()
        .await
        .unwrap();
    let id = out.cluster().unwrap().cluster_id().unwrap().to_string();
    (client, id)
}

fn config(cluster_id: &str, endpoint: &str, min_active_hsms: u32) -> CloudHsmConfig {
    CloudHsmConfig {
        cluster_id: cluster_id.to_string(),
        region: REGION.to_string(),
        endpoint_url: Some(endpoint.to_string()),
        min_active_hsms,
        poll_interval_ms: 200,
    }
}

#[tokio::test]
async fn ready_while_active_not_ready_after_delete() {
    let Some(ep) = moto_endpoint("ready_while_active_not_ready_after_delete") else {
        return;
    };
    let proxy = FaultProxy::start(&ep).await;
    let ep = proxy.url();
    let (client, id) = create_cluster(&ep).await;
    let monitor = ClusterMonitor::start(&config(&id, &ep, 0)).await.unwrap();
    let s = monitor.status();
    assert!(s.ready, "{s:?}");
    assert_eq!(s.state.as_deref(), Some("ACTIVE"));
    assert_eq!(s.active_hsms, 0);
    assert_eq!(s.reason, None);

    client
        .delete_cluster()
        .cluster_id(&id)
        .send()
        .await
        .unwrap();
    // The background poll (every 200 ms) notices without being asked: a wait that must
    // end, with a deadline far past the poll interval.
    let deadline = Instant::now() + Duration::from_secs(30);
    while monitor.status().ready {
        assert!(Instant::now() < deadline, "the poller never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = monitor.status();
    assert!(!s.ready);
    let reason = s.reason.unwrap();
    assert!(
        reason.contains("not found") || reason.contains("DELETE"),
        "{reason}"
    );
}

#[tokio::test]
async fn default_minimum_needs_an_active_hsm() {
    let Some(ep) = moto_endpoint("default_minimum_needs_an_active_hsm") else {
        return;
    };
    let proxy = FaultProxy::start(&ep).await;
    let ep = proxy.url();
    let (_client, id) = create_cluster(&ep).await;
    let monitor = ClusterMonitor::start(&config(&id, &ep, 1)).await.unwrap();
    let s = monitor.refresh().await;
    assert!(!s.ready);
    assert_eq!(s.state.as_deref(), Some("ACTIVE"));
    assert!(s.reason.unwrap().contains("0 ACTIVE HSM"));
}

#[tokio::test]
async fn unknown_cluster_is_not_ready() {
    let Some(ep) = moto_endpoint("unknown_cluster_is_not_ready") else {
        return;
    };
    let monitor = ClusterMonitor::start(&config("cluster-doesnotexist", &ep, 0))
        .await
        .unwrap();
    let s = monitor.status();
    assert!(!s.ready);
    assert!(s.reason.unwrap().contains("not found"));
}

#[tokio::test]
async fn unreachable_api_is_not_ready_and_start_still_succeeds() {
    // Gated like the others: the test script also exports the dummy credentials, without
    // which the SDK's provider chain would go looking for instance metadata.
    if moto_endpoint("unreachable_api_is_not_ready_and_start_still_succeeds").is_none() {
        return;
    }
    // A closed loopback port, held for the whole test: bound but never listening (a connect
    // gets a RST), so no parallel test can take it as it could after a bind-then-release.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap().port();
    let monitor =
        ClusterMonitor::start(&config("cluster-x", &format!("http://127.0.0.1:{port}"), 0))
            .await
            .unwrap();
    let s = monitor.status();
    assert!(!s.ready);
    assert!(s.reason.unwrap().contains("DescribeClusters failed"));
}

#[tokio::test]
async fn bad_config_is_refused() {
    let mut c = config("", "http://127.0.0.1:1", 0);
    assert!(ClusterMonitor::start(&c).await.is_err());
    c.cluster_id = "cluster-1".into();
    c.poll_interval_ms = 0;
    assert!(ClusterMonitor::start(&c).await.is_err());
}
