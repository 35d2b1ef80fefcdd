//! Dual control (issue 30, item 4, second half), over HTTP on both stores: with `[approvals]
//! required_for` naming every operation it can hold, an account delete, a policy apply, a key
//! destroy and a confirmed downgrade answer 202 with an approval id and change nothing; the
//! credential that asked can never approve; a second admin credential approves within the TTL
//! and the operation runs (its own answer, or its own refusal, comes back); an approval runs
//! once; an expired one cannot be approved; every step is audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::{StoreKind, Tokens};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use shardgate::app::config::TokenConfig;
use shardgate::service::approvals::ApprovalsConfig;

both_stores!(
    held_operations_run_only_when_a_second_credential_approves,
    an_expired_approval_cannot_be_approved,
);

struct Gw {
    app: axum::Router,
    tokens: Tokens,
    /// A second credential with every scope.
    second: String,
    db: Db,
    _dir: tempfile::TempDir,
}

async fn setup(kind: StoreKind, ttl_secs: u64) -> Option<Gw> {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.backends.insert(
        "local-b".into(),
        common::local_backend(dir.path(), "local-b"),
    );
    let second = shardgate::domain::auth::generate_token()
        .expose_secret()
        .to_string();
    cfg.tokens.push(TokenConfig {
        name: "second".into(),
        sha256: shardgate::domain::auth::hash_token(&second),
        scopes: vec!["*".into()],
        account_prefix: None,
        expires_at: None,
    });
    cfg.approvals = ApprovalsConfig {
        required_for: ["account.delete", "key.destroy", "policy.apply", "downgrade"]
            .map(String::from)
            .to_vec(),
        ttl_secs,
    };
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    Some(Gw {
        app: shardgate::router(state),
        tokens,
        second,
        db: Db::connect(&url).await,
        _dir: dir,
    })
}

impl Gw {
    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        common::call(&self.app, token, method, path, body).await
    }

    /// A 202 of a held operation: its approval id.
    fn held(&self, (s, v): (StatusCode, Value), operation: &str) -> String {
        assert_eq!(
            (s, v["operation"].as_str()),
            (StatusCode::ACCEPTED, Some(operation)),
            "{v}"
        );
        assert!(v["expires_at"].as_str().unwrap().ends_with('Z'), "{v}");
        v["approval"].as_str().unwrap().to_string()
    }

    async fn approve(&self, token: &str, id: &str) -> (StatusCode, Value) {
        self.call(
            token,
            "POST",
            &format!("/v1/admin/approvals/{id}:approve"),
            None,
        )
        .await
    }

    async fn count(&self, action: &str, actor: &str) -> i64 {
        self.db
            .count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE action = '{action}' AND actor = '{actor}'"
            ))
            .await
    }
}

fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

async fn held_operations_run_only_when_a_second_credential_approves(kind: StoreKind) {
    let Some(gw) = setup(kind, 3600).await else {
        return;
    };
    let admin = gw.tokens.admin.clone();
    let (s, v) = gw
        .call(
            &admin,
            "PUT",
            "/v1/accounts/acct-1",
            Some(json!({"tier": "retail"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = gw
        .call(
            &admin,
            "PUT",
            "/v1/accounts/acct-1/shards/s",
            Some(json!({"shard": B64.encode(b"x")})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // An account delete: held, nothing deleted; the asker cannot approve; the second can.
    let id = gw.held(
        gw.call(&admin, "DELETE", "/v1/accounts/acct-1", None).await,
        "account.delete",
    );
    assert_eq!(
        gw.call(&admin, "GET", "/v1/accounts/acct-1", None).await.0,
        StatusCode::OK
    );
    let (s, v) = gw
        .call(
            &gw.second,
            "GET",
            &format!("/v1/admin/approvals/{id}"),
            None,
        )
        .await;
    assert_eq!(
        (s, v["state"].as_str(), v["requested_by"].as_str()),
        (StatusCode::OK, Some("pending"), Some("admin")),
        "{v}"
    );
    assert_eq!(v["summary"], "delete account acct-1", "{v}");
    let (s, v) = gw.approve(&admin, &id).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );
    let (s, v) = gw.approve(&gw.tokens.reader, &id).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );
    assert_eq!(
        gw.call(&admin, "GET", "/v1/accounts/acct-1", None).await.0,
        StatusCode::OK
    );
    let (s, v) = gw.approve(&gw.second, &id).await;
    assert_eq!(
        (s, v["operation"].as_str()),
        (StatusCode::OK, Some("account.delete")),
        "{v}"
    );
    assert_eq!(v["result"]["destroyed_versions"], 1, "{v}");
    assert_eq!(
        gw.call(&admin, "GET", "/v1/accounts/acct-1", None).await.0,
        StatusCode::NOT_FOUND
    );
    // Once only.
    let (s, v) = gw.approve(&gw.second, &id).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, Some("version_conflict")),
        "{v}"
    );
    assert_eq!(gw.count("approval.request", "admin").await, 1);
    assert_eq!(gw.count("approval.approve", "second").await, 1);
    assert_eq!(gw.count("account.delete", "second").await, 1);
    let unknown = uuid::Uuid::new_v4();
    assert_eq!(
        gw.approve(&gw.second, &unknown.to_string()).await.0,
        StatusCode::NOT_FOUND
    );

    // A policy apply: a dry run is never held; the apply is, until approved.
    let policy = json!({"tiers": {"retail": "local-b", "institutional": "local"}});
    let (s, v) = gw
        .call(
            &admin,
            "PUT",
            "/v1/admin/policy",
            Some(json!({"policy": policy, "dry_run": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = gw.held(
        gw.call(
            &admin,
            "PUT",
            "/v1/admin/policy",
            Some(json!({"policy": policy})),
        )
        .await,
        "policy.apply",
    );
    let (_, v) = gw.call(&admin, "GET", "/v1/admin/policy", None).await;
    assert_eq!(v["version"], 1, "{v}");
    let (s, v) = gw.approve(&gw.second, &id).await;
    assert_eq!(
        (s, v["result"]["version"].as_i64()),
        (StatusCode::OK, Some(2)),
        "{v}"
    );

    // A confirmed downgrade (a put with allow_downgrade by an admin) is held; approved, it runs.
    let (s, v) = gw
        .call(
            &admin,
            "PUT",
            "/v1/accounts/acct-2",
            Some(json!({"tier": "retail"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let body = json!({"tier": "institutional", "allow_downgrade": true});
    let id = gw.held(
        gw.call(&admin, "PUT", "/v1/accounts/acct-2", Some(body))
            .await,
        "downgrade",
    );
    let (_, v) = gw.call(&admin, "GET", "/v1/accounts/acct-2", None).await;
    assert_eq!(v["tier"], "retail", "{v}");
    let (s, v) = gw.approve(&gw.second, &id).await;
    assert_eq!(
        (s, v["result"]["tier"].as_str()),
        (StatusCode::OK, Some("institutional")),
        "{v}"
    );
    let (_, v) = gw.call(&admin, "GET", "/v1/accounts/acct-2", None).await;
    assert_eq!(v["tier"], "institutional", "{v}");

    // A key destroy is held; approved, it runs, and its own refusal (the version still wraps
    // a shard) is the answer.
    let shard = json!({"shard": B64.encode(b"y")});
    let (s, v) = gw
        .call(&admin, "PUT", "/v1/accounts/acct-2/shards/s", Some(shard))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let body = json!({"state": "destroyed"});
    let id = gw.held(
        gw.call(&admin, "POST", "/v1/admin/keys/local/1/state", Some(body))
            .await,
        "key.destroy",
    );
    let (s, v) = gw.approve(&gw.second, &id).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, Some("version_conflict")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key version 1"),
        "{v}"
    );
    assert_eq!(gw.count("approval.approve", "second").await, 4);
}

async fn an_expired_approval_cannot_be_approved(kind: StoreKind) {
    let Some(gw) = setup(kind, 1).await else {
        return;
    };
    let admin = gw.tokens.admin.clone();
    let (s, v) = gw
        .call(
            &admin,
            "PUT",
            "/v1/accounts/acct-1",
            Some(json!({"tier": "retail"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = gw.held(
        gw.call(&admin, "DELETE", "/v1/accounts/acct-1", None).await,
        "account.delete",
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let (s, v) = gw.approve(&gw.second, &id).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, Some("version_conflict")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
    assert_eq!(
        gw.call(&admin, "GET", "/v1/accounts/acct-1", None).await.0,
        StatusCode::OK
    );
    assert_eq!(gw.count("approval.approve", "second").await, 0);
}
