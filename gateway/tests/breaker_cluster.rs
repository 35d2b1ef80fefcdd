//! Breakers, cluster-wide (issue 30, item 2), over HTTP with in-process gateways on one
//! database (both stores): an operator's `circuit:open` (maintenance, with a time to live)
//! and `circuit:close` reach every replica within the refresh interval, a replica starting
//! during a maintenance window applies it, and the window ends by itself; and the synthetic
//! probe also runs while the breaker is closed, so a dead backend (KMS on moto behind the
//! fault proxy) is found before any request finds it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

#[path = "../../backends/tests/support/fault_proxy.rs"]
#[allow(dead_code)]
mod fault_proxy;

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::{StoreKind, Tokens};
use fault_proxy::{Fault, FaultProxy};
use serde_json::{json, Value};
use shardgate::app::config::{BackendConfig, Config};
use std::time::{Duration, Instant};

both_stores!(an_operator_s_circuit_open_reaches_every_replica_and_ends_by_itself,);

const DEADLINE: Duration = Duration::from_secs(30);

async fn gateway(cfg: &Config) -> (axum::Router, shardgate::AppState) {
    let (state, _) = shardgate::AppState::build(cfg).await.unwrap();
    (shardgate::router(state.clone()), state)
}

/// A GET of the account's shard: status, `Retry-After` seconds (if any), body.
async fn get(app: &axum::Router, token: &str) -> (StatusCode, Option<u64>, Value) {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .uri("/v1/accounts/acct-1/shards/s")
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        retry,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Poll `app`'s GET until its status is `want`.
async fn until_status(app: &axum::Router, token: &str, want: StatusCode, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (s, _, v) = get(app, token).await;
        if s == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {s} {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn circuit(
    app: &axum::Router,
    token: &str,
    op: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    common::call(
        app,
        token,
        "POST",
        &format!("/v1/admin/backends/local/circuit:{op}"),
        body,
    )
    .await
}

async fn an_operator_s_circuit_open_reaches_every_replica_and_ends_by_itself(kind: StoreKind) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = common::store_url(kind, dir.path()).await else {
        return;
    };
    let tokens = Tokens::new();
    let admin = &tokens.admin;
    let cfg = common::config(dir.path(), &url, &tokens);
    let (a, sa) = gateway(&cfg).await;
    let (b, sb) = gateway(&cfg).await;
    sa.start_override_refresh(Duration::from_millis(100));
    sb.start_override_refresh(Duration::from_millis(100));
    let (s, v) = common::call(
        &a,
        admin,
        "PUT",
        "/v1/accounts/acct-1",
        Some(json!({"tier": "retail"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = common::call(
        &a,
        admin,
        "PUT",
        "/v1/accounts/acct-1/shards/s",
        Some(json!({"shard": B64.encode(b"bytes")})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Refusals first: bad ttl, unknown backend, no admin scope.
    let (s, v) = circuit(&a, admin, "open", Some(json!({"ttl_secs": 0}))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{v}"
    );
    let (s, _) = common::call(
        &a,
        admin,
        "POST",
        "/v1/admin/backends/nope/circuit:open",
        Some(json!({"ttl_secs": 5})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = circuit(&a, &tokens.reader, "open", Some(json!({"ttl_secs": 5}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(get(&b, admin).await.0, StatusCode::OK);

    // A ten-minute window opened on A: A refuses at once with the rest as Retry-After,
    // B within its refresh, and a replica started now applies it at start.
    let (s, v) = circuit(&a, admin, "open", Some(json!({"ttl_secs": 600}))).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("forced-open")),
        "{v}"
    );
    let (s, retry, v) = get(&a, admin).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("backend_unavailable")),
        "{v}"
    );
    let retry = retry.unwrap();
    assert!((590..=600).contains(&retry), "Retry-After {retry}");
    until_status(
        &b,
        admin,
        StatusCode::SERVICE_UNAVAILABLE,
        "B sees the open",
    )
    .await;
    let (c, _sc) = gateway(&cfg).await;
    assert_eq!(
        get(&c, admin).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "C applies it at start"
    );

    // Closed on B: A follows.
    let (s, v) = common::call(
        &b,
        admin,
        "POST",
        "/v1/admin/backends/local/circuit:close",
        None,
    )
    .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("closed")),
        "{v}"
    );
    assert_eq!(get(&b, admin).await.0, StatusCode::OK);
    until_status(&a, admin, StatusCode::OK, "A sees the close").await;

    // A one-second window ends by itself everywhere.
    let (s, v) = circuit(&b, admin, "open", Some(json!({"ttl_secs": 1}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until_status(
        &a,
        admin,
        StatusCode::SERVICE_UNAVAILABLE,
        "A sees the short open",
    )
    .await;
    until_status(&a, admin, StatusCode::OK, "A's window ends").await;
    until_status(&b, admin, StatusCode::OK, "B's window ends").await;

    let db = Db::connect(&url).await;
    let events = |action: &str| {
        format!("SELECT COUNT(*) FROM audit_events WHERE action = '{action}' AND backend = 'local' AND actor = 'admin'")
    };
    assert_eq!(db.count(&events("backend.circuit_open")).await, 2);
    assert_eq!(db.count(&events("backend.circuit_close")).await, 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM breaker_overrides").await, 3);
}

/// The probe while closed: a KMS behind a proxy that drops every connection opens its
/// breaker with no request at all (three probe faults), and `/readyz` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_breaker_s_probe_finds_a_dead_backend_before_any_request() {
    let Some(endpoint) = common::require_env("SHARDGATE_TEST_MOTO_ENDPOINT") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    let proxy = FaultProxy::start(&endpoint).await;
    let mut kms = common::moto_kms(&endpoint).await;
    kms.endpoint_url = Some(proxy.url());
    kms.cache.enabled = false;
    kms.max_attempts = 1;
    kms.call_timeout_ms = 300;
    kms.deadline_ms = 600;
    cfg.backends
        .insert("kms".into(), BackendConfig::AwsKms(kms));
    cfg.breaker.failure_threshold = 3;
    cfg.breaker.cooldown_ms = 600_000;
    cfg.breaker.probe_interval_ms = 100;
    assert!(
        cfg.breaker.probe_closed,
        "probing while closed is the default"
    );
    let (app, _state) = gateway(&cfg).await;
    proxy.set(Fault::Drop);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, r) = common::call(&app, &tokens.admin, "GET", "/readyz", None).await;
        if r["backends"]["kms"]["stats"]["breaker_state"] == 2 {
            assert_eq!(r["backends"]["kms"]["usable"], false, "{r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the probe never opened the breaker: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
