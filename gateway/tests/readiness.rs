//! `/readyz` answers 503 only when this process cannot serve at all: here, no backend is
//! usable (the only one is a KMS endpoint where nothing listens). The status goes to anyone;
//! which backend is down, only to a caller holding `metrics`. (The store-down case is pinned
//! in `db_restart.rs`, on a private PostgreSQL that is stopped.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::{StoreKind, Tokens};
use serde_json::json;
use shardgate::app::config::BackendConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_when_no_backend_is_usable() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    // A port held bound but never listening: every connection is refused at once.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap().port();
    let mut kms = shardgate_backends::aws_kms::KmsConfig::new(
        "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
        "us-east-1",
    );
    kms.endpoint_url = Some(format!("http://127.0.0.1:{port}"));
    kms.max_attempts = 1;
    kms.call_timeout_ms = 500;
    kms.deadline_ms = 500;
    cfg.backends.clear();
    cfg.backends
        .insert("kms".into(), BackendConfig::AwsKms(kms));
    for backend in cfg.tiers.values_mut() {
        *backend = "kms".into();
    }
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    let app = shardgate::router(state);

    let (s, v) = common::call(&app, "", "GET", "/readyz", None).await;
    assert_eq!(
        (s, v),
        (StatusCode::SERVICE_UNAVAILABLE, json!({"ready": false}))
    );
    let (s, v) = common::call(&app, &tokens.admin, "GET", "/readyz", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["store"]["ok"], true, "{v}");
    assert_eq!(v["backends"]["kms"]["usable"], false, "{v}");
    drop(held);
}
