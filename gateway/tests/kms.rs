//! The gateway over HTTP with an `aws-kms` backend on a real KMS endpoint (moto), next to a
//! `local` backend: round trips, moved wrapped keys, and reads that never depend on policy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use shardgate::app::config::BackendConfig;

struct Kms {
    app: axum::Router,
    tokens: Tokens,
    db: Db,
    _dir: tempfile::TempDir,
}

async fn setup(kind: StoreKind) -> Option<Kms> {
    let endpoint = common::require_env("SHARDGATE_TEST_MOTO_ENDPOINT")?;
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    let kms = common::moto_kms(&endpoint).await;
    cfg.backends
        .insert("kms".into(), BackendConfig::AwsKms(kms));
    cfg.tiers.insert("retail".into(), "kms".into());
    cfg.tiers.insert("institutional".into(), "local".into());
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    Some(Kms {
        app: shardgate::router(state),
        tokens,
        db: Db::connect(&url).await,
        _dir: dir,
    })
}

impl Kms {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        common::call(&self.app, &self.tokens.admin, method, path, body).await
    }

    async fn put(&self, account: &str, shard: &str, data: &[u8]) -> (StatusCode, Value) {
        let b64 = B64.encode(data);
        common::plant(&b64);
        self.call(
            "PUT",
            &format!("/v1/accounts/{account}/shards/{shard}"),
            Some(json!({ "shard": b64 })),
        )
        .await
    }
}

async fn kms_round_trips_next_to_local(k: Kms) {
    for (account, tier) in [("acct-k", "retail"), ("acct-l", "institutional")] {
        let (s, v) = k
            .call(
                "PUT",
                &format!("/v1/accounts/{account}"),
                Some(json!({ "tier": tier })),
            )
            .await;
        assert!(s.is_success(), "{v}");
    }
    let (s, v) = k.put("acct-k", "s", b"kms-shard-secret-0001").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["backend"], "kms");
    let (_, v) = k.put("acct-l", "s", b"local-shard-secret-01").await;
    assert_eq!(v["backend"], "local");
    let (s, v) = k.call("GET", "/v1/accounts/acct-k/shards/s", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        B64.decode(v["shard"].as_str().unwrap()).unwrap(),
        b"kms-shard-secret-0001"
    );
    assert_eq!(v["backend"], "kms");
    let (s, v) = k
        .call(
            "POST",
            "/v1/shards:batchGet",
            Some(json!({"items":[{"account":"acct-k","shard":"s"},{"account":"acct-l","shard":"s"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["results"][0]["backend"], "kms");
    assert_eq!(v["results"][1]["backend"], "local");
    let (s, v) = k.call("DELETE", "/v1/accounts/acct-k/shards/s", None).await;
    assert_eq!(
        (s, v["destroyed_versions"].as_i64()),
        (StatusCode::OK, Some(1))
    );
    let (s, _) = k.call("GET", "/v1/accounts/acct-k/shards/s", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = k.call("GET", "/readyz", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["backends"]["kms"]["kind"], "aws-kms");
}

async fn kms_wrapped_key_moved_to_another_row_is_an_integrity_failure(k: Kms) {
    k.call("PUT", "/v1/accounts/acct-k", Some(json!({"tier":"retail"})))
        .await;
    k.put("acct-k", "a", b"kms-moved-secret-a").await;
    k.put("acct-k", "b", b"kms-moved-secret-b").await;
    k.db
        .exec(
            "UPDATE shard_versions SET wrapped_dek = (SELECT wrapped_dek FROM shard_versions WHERE shard='a'), \
             nonce = (SELECT nonce FROM shard_versions WHERE shard='a'), \
             ciphertext = (SELECT ciphertext FROM shard_versions WHERE shard='a') WHERE shard='b'",
        )
        .await;
    let (s, v) = k.call("GET", "/v1/accounts/acct-k/shards/b", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("integrity_failure")),
        "{v}"
    );
    assert!(v.get("shard").is_none());
    let (s, _) = k.call("GET", "/v1/accounts/acct-k/shards/a", None).await;
    assert_eq!(s, StatusCode::OK);
}

async fn kms_reads_use_the_recorded_backend_after_a_tier_change(k: Kms) {
    k.call("PUT", "/v1/accounts/acct-k", Some(json!({"tier":"retail"})))
        .await;
    k.put("acct-k", "s", b"kms-then-local-1").await;
    // aws-kms -> local lowers the account's protection: confirmed (the admin token).
    let (s, v) = k
        .call(
            "PUT",
            "/v1/accounts/acct-k",
            Some(json!({"tier":"institutional", "allow_downgrade": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = k.put("acct-k", "s", b"kms-then-local-2").await;
    assert_eq!(v["backend"], "local");
    let (_, v) = k.call("GET", "/v1/accounts/acct-k", None).await;
    assert_eq!(v["versions_on_other_backends"], 1);
    let (_, v) = k
        .call("GET", "/v1/accounts/acct-k/shards/s?version=1", None)
        .await;
    assert_eq!(v["backend"], "kms");
    assert_eq!(
        B64.decode(v["shard"].as_str().unwrap()).unwrap(),
        b"kms-then-local-1"
    );
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
    kms_round_trips_next_to_local,
    kms_wrapped_key_moved_to_another_row_is_an_integrity_failure,
    kms_reads_use_the_recorded_backend_after_a_tier_change,
);
