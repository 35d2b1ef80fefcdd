//! A PostgreSQL restart under traffic (a private cluster, so parallel tests are not
//! disturbed): requests answer 503/504 while it is down and recover after, with no restart of
//! the gateway; every write answered 201 reads back; nothing is half-written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::cluster::Cluster;
use common::Tokens;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// PostgreSQL cannot bind port 0, so a private cluster's port is picked beforehand and may be
/// taken by the time the server starts: the first start then moves to another port.
#[test]
fn private_cluster_moves_off_a_port_taken_before_its_first_start() {
    let Some(mut cluster) = Cluster::init() else {
        return;
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    cluster.port = taken_port;
    cluster.up();
    assert_ne!(cluster.port, taken_port);
    let out = cluster.psql("postgres", &["-t", "-A"], "SELECT 1;");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    // A restart keeps the port the clients were given.
    let port = cluster.port;
    cluster.down();
    cluster.up();
    assert_eq!(cluster.port, port);
}

/// A write answered 201: shard, version, bytes.
type Acked = (String, i64, Vec<u8>);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_traffic_gives_503s_then_full_recovery() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &cluster.url(), &tokens);
    cfg.timeouts.request_ms = 1500;
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    let app = shardgate::router(state);
    let admin = tokens.admin.clone();
    let (s, v) = common::call(
        &app,
        &admin,
        "PUT",
        "/v1/accounts/acct-db",
        Some(json!({"tier": "retail"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Writers and readers run through the whole outage.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let statuses: Arc<Mutex<Vec<u16>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (app, admin, acked, statuses, stop) = (
            app.clone(),
            admin.clone(),
            acked.clone(),
            statuses.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            // Until one of this writer's PUTs is acknowledged, its shard may not exist:
            // a first PUT refused by the outage leaves nothing, so its GET is a 404.
            let mut stored = false;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let shard = format!("w{w}");
                let data = format!("writer {w} write {n}").into_bytes();
                let (s, v) = common::call(
                    &app,
                    &admin,
                    "PUT",
                    &format!("/v1/accounts/acct-db/shards/{shard}"),
                    Some(json!({"shard": B64.encode(&data)})),
                )
                .await;
                statuses.lock().unwrap().push(s.as_u16());
                match s.as_u16() {
                    201 => {
                        stored = true;
                        acked.lock().unwrap().push((
                            shard.clone(),
                            v["version"].as_i64().unwrap(),
                            data,
                        ))
                    }
                    503 | 504 => {
                        let code = v["error"]["code"].as_str().unwrap_or("");
                        assert!(
                            [
                                "store_unavailable",
                                "audit_unavailable",
                                "deadline_exceeded"
                            ]
                            .contains(&code),
                            "{v}"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!("PUT answered {other}: {v}"),
                }
                let (s, v) = common::call(
                    &app,
                    &admin,
                    "GET",
                    &format!("/v1/accounts/acct-db/shards/{shard}"),
                    None,
                )
                .await;
                let fine = [200, 503, 504].contains(&s.as_u16())
                    || (!stored && s == StatusCode::NOT_FOUND);
                assert!(fine, "GET answered {s} (stored: {stored}): {v}");
            }
        }));
    }
    let wait = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < wait,
            "no write got through before the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = acked.lock().unwrap().len();
    // Only answers given after the server went down count as noticing the outage.
    cluster.down();
    let from = statuses.lock().unwrap().len();
    let wait = Instant::now() + Duration::from_secs(30);
    let during = loop {
        let during = statuses.lock().unwrap()[from..]
            .iter()
            .filter(|s| **s >= 500)
            .count();
        if during > 0 {
            break during;
        }
        assert!(Instant::now() < wait, "no request noticed the outage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // This process cannot serve at all without its store: /readyz says 503 (to anyone).
    let (s, v) = common::call(&app, "", "GET", "/readyz", None).await;
    assert_eq!(
        (s, &v),
        (StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false}))
    );
    cluster.up();
    // Recovery without restarting the gateway: writes succeed again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mark = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < mark + 20 {
        assert!(Instant::now() < deadline, "the gateway never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (s, v) = common::call(&app, "", "GET", "/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "ready again once the store is back: {v}");

    // Every write answered 201 reads back exactly.
    let acked = acked.lock().unwrap().clone();
    for (shard, version, data) in &acked {
        let (s, v) = common::call(
            &app,
            &admin,
            "GET",
            &format!("/v1/accounts/acct-db/shards/{shard}?version={version}"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{shard} v{version}: {v}");
        assert_eq!(&B64.decode(v["shard"].as_str().unwrap()).unwrap(), data);
    }
    // Nothing half-written: every stored version opens (a write answered 5xx either
    // committed whole or not at all), and versions have no gaps.
    let db = common::db::Db::connect(&cluster.url()).await;
    for w in 0..4 {
        let latest = db
            .count(&format!(
                "SELECT COALESCE(MAX(version), 0) FROM shard_versions WHERE shard = 'w{w}'"
            ))
            .await;
        let rows = db
            .count(&format!(
                "SELECT COUNT(*) FROM shard_versions WHERE shard = 'w{w}'"
            ))
            .await;
        assert_eq!(rows, latest, "w{w} has gaps");
        for version in 1..=latest {
            let (s, v) = common::call(
                &app,
                &admin,
                "GET",
                &format!("/v1/accounts/acct-db/shards/w{w}?version={version}"),
                None,
            )
            .await;
            assert_eq!(s, StatusCode::OK, "w{w} v{version}: {v}");
        }
    }
    println!(
        "acked writes: {} ({} before the outage); 5xx answers once it began: {during} (at first)",
        acked.len(),
        before
    );
}
