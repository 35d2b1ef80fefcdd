//! `Idempotency-Key` on shard PUT and DELETE, in-process (`shardgate::router`), on BOTH stores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use shardgate::AppState;
use tower::ServiceExt;

struct Harness {
    app: axum::Router,
    tokens: Tokens,
    db: Db,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new(kind: StoreKind, window_secs: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let url = common::store_url(kind, dir.path()).await?;
        let tokens = Tokens::new();
        let mut cfg = common::config(dir.path(), &url, &tokens);
        cfg.idempotency.window_secs = window_secs;
        let (state, _) = AppState::build(&cfg).await.unwrap();
        let h = Self {
            app: shardgate::router(state),
            db: Db::connect(&url).await,
            tokens,
            _dir: dir,
        };
        for account in ["acct-A1", "acct-B1"] {
            let (status, _) = common::call(
                &h.app,
                &h.tokens.admin,
                "PUT",
                &format!("/v1/accounts/{account}"),
                Some(json!({"tier": "retail"})),
            )
            .await;
            assert!(status.is_success(), "{status}");
        }
        Some(h)
    }

    /// A request with an optional `Idempotency-Key`; status, raw body and whether it was a
    /// replay.
    async fn send(
        &self,
        token: &str,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, String, bool) {
        send(&self.app, token, method, path, key, body).await
    }

    async fn count(&self, sql: &str) -> i64 {
        self.db.count(sql).await
    }
}

async fn send(
    app: &axum::Router,
    token: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, String, bool) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap(), replayed)
}

fn shard(bytes: &[u8]) -> Value {
    json!({ "shard": B64.encode(bytes) })
}

fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap();
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

macro_rules! both_stores {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::StoreKind::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::StoreKind::Postgres).await;
                }
            )+
        }
    };
}

both_stores!(
    put_retried_gives_first_answer_and_one_version,
    delete_retried_gives_same_receipt_not_404,
    same_key_different_body_is_409,
    invalid_keys_are_400,
    other_identity_and_other_path_are_independent,
    expired_window_is_a_new_request,
    concurrent_puts_with_one_key_store_one_version,
    account_delete_retried_gives_same_receipt,
);

const PATH: &str = "/v1/accounts/acct-A1/shards/s1";

async fn put_retried_gives_first_answer_and_one_version(kind: StoreKind) {
    let Some(h) = Harness::new(kind, 86_400).await else {
        return;
    };
    let a = &h.tokens.admin;
    let first = h
        .send(a, "PUT", PATH, Some("k-1"), Some(shard(b"one")))
        .await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    assert!(!first.2);
    let again = h
        .send(a, "PUT", PATH, Some("k-1"), Some(shard(b"one")))
        .await;
    assert_eq!(again.0, StatusCode::CREATED);
    assert_eq!(again.1, first.1);
    assert!(again.2, "a replay is marked");
    let v: Value = serde_json::from_str(&again.1).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(
        h.count("SELECT COUNT(*) FROM shard_versions WHERE shard = 's1'")
            .await,
        1
    );
    assert_eq!(
        h.count("SELECT COUNT(*) FROM audit_events WHERE action = 'shard.put'")
            .await,
        1
    );
    // The stored answer carries no shard bytes.
    assert_eq!(
        h.count("SELECT COUNT(*) FROM idempotency_keys WHERE body_json LIKE '%shard\"%'")
            .await,
        0
    );
    // Without a key, a PUT is a new version as before.
    let plain = h.send(a, "PUT", PATH, None, Some(shard(b"one"))).await;
    assert_eq!(plain.0, StatusCode::CREATED);
    assert!(plain.1.contains("\"version\":2"));
}

async fn delete_retried_gives_same_receipt_not_404(kind: StoreKind) {
    let Some(h) = Harness::new(kind, 86_400).await else {
        return;
    };
    let a = &h.tokens.admin;
    for _ in 0..2 {
        assert_eq!(
            h.send(a, "PUT", PATH, None, Some(shard(b"x"))).await.0,
            StatusCode::CREATED
        );
    }
    let first = h.send(a, "DELETE", PATH, Some("del-1"), None).await;
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    assert!(first.1.contains("\"destroyed_versions\":2"));
    let again = h.send(a, "DELETE", PATH, Some("del-1"), None).await;
    assert_eq!(
        (again.0, &again.1, again.2),
        (StatusCode::OK, &first.1, true)
    );
    assert_eq!(
        h.count("SELECT COUNT(*) FROM audit_events WHERE action = 'shard.delete'")
            .await,
        1
    );
    // A new key (or none) is a new request: 404 now.
    let other = h.send(a, "DELETE", PATH, Some("del-2"), None).await;
    assert_eq!(other.0, StatusCode::NOT_FOUND);
    assert_eq!(code(&other.1), "shard_not_found");
}

async fn same_key_different_body_is_409(kind: StoreKind) {
    let Some(h) = Harness::new(kind, 86_400).await else {
        return;
    };
    let a = &h.tokens.admin;
    assert_eq!(
        h.send(a, "PUT", PATH, Some("k"), Some(shard(b"one")))
            .await
            .0,
        StatusCode::CREATED
    );
    let other = h.send(a, "PUT", PATH, Some("k"), Some(shard(b"two"))).await;
    assert_eq!(other.0, StatusCode::CONFLICT);
    assert_eq!(code(&other.1), "version_conflict");
    assert!(other
        .1
        .contains("Idempotency-Key reused with a different request"));
    let cas = h
        .send(
            a,
            "PUT",
            PATH,
            Some("k"),
            Some(json!({"shard": B64.encode(b"one"), "expected_version": 0})),
        )
        .await;
    assert_eq!(cas.0, StatusCode::CONFLICT);
    assert_eq!(
        h.count("SELECT COUNT(*) FROM shard_versions WHERE shard = 's1'")
            .await,
        1
    );
}

async fn invalid_keys_are_400(kind: StoreKind) {
    let Some(h) = Harness::new(kind, 86_400).await else {
        return;
    };
    let a = &h.tokens.admin;
    let long = "k".repeat(129);
    for key in ["", long.as_str(), "tab\tkey"] {
        let r = h.send(a, "PUT", PATH, Some(key), Some(shard(b"one"))).await;
        assert_eq!(r.0, StatusCode::BAD_REQUEST, "key {key:?}");
        assert_eq!(code(&r.1), "invalid_request");
        let r = h.send(a, "DELETE", PATH, Some(key), None).await;
        assert_eq!(r.0, StatusCode::BAD_REQUEST, "key {key:?}");
    }
    let ok = "k".repeat(128);
    let r = h.send(a, "PUT", PATH, Some(&ok), Some(shard(b"one"))).await;
    assert_eq!(r.0, StatusCode::CREATED);
    assert_eq!(h.count("SELECT COUNT(*) FROM shard_versions").await, 1);
}

async fn other_identity_and_other_path_are_independent(kind: StoreKind) {
    let Some(h) = Harness::new(kind, 86_400).await else {
        return;
    };
    let (a, p) = (&h.tokens.admin, &h.tokens.prefixed);
    let r1 = h
        .send(a, "PUT", PATH, Some("shared"), Some(shard(b"one")))
        .await;
    // Another identity, same key and request: its own write (version 2), not a replay.
    let r2 = h
        .send(p, "PUT", PATH, Some("shared"), Some(shard(b"one")))
        .await;
    assert_eq!((r1.0, r2.0), (StatusCode::CREATED, StatusCode::CREATED));
    assert!(r1.1.contains("\"version\":1") && r2.1.contains("\"version\":2"));
    assert!(!r2.2);
    // Another path, same identity and key: independent too.
    let r3 = h
        .send(
            a,
            "PUT",
            "/v1/accounts/acct-A1/shards/s2",
            Some("shared"),
            Some(shard(b"one")),
        )
        .await;
    assert_eq!(r3.0, StatusCode::CREATED);
    assert!(r3.1.contains("\"version\":1") && !r3.2);
    // And DELETE on the same path with the same key is another method.
    let r4 = h.send(a, "DELETE", PATH, Some("shared"), None).await;
    assert_eq!(r4.0, StatusCode::OK);
    assert!(r4.1.contains("\"destroyed_versions\":2"));
    assert_eq!(h.count("SELECT COUNT(*) FROM idempotency_keys").await, 4);
}

async fn expired_window_is_a_new_request(kind: StoreKind) {
    let Some(h) = Harness::new(kind, 1).await else {
        return;
    };
    let a = &h.tokens.admin;
    let r1 = h.send(a, "PUT", PATH, Some("k"), Some(shard(b"one"))).await;
    assert!(r1.1.contains("\"version\":1"));
    let r2 = h.send(a, "PUT", PATH, Some("k"), Some(shard(b"one"))).await;
    assert_eq!(r2.1, r1.1);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r3 = h.send(a, "PUT", PATH, Some("k"), Some(shard(b"one"))).await;
    assert_eq!(r3.0, StatusCode::CREATED);
    assert!(r3.1.contains("\"version\":2") && !r3.2, "{}", r3.1);
    // Within the new window, it replays the new answer.
    let r4 = h.send(a, "PUT", PATH, Some("k"), Some(shard(b"one"))).await;
    assert_eq!((r4.1.as_str(), r4.2), (r3.1.as_str(), true));
}

async fn concurrent_puts_with_one_key_store_one_version(kind: StoreKind) {
    let Some(h) = Harness::new(kind, 86_400).await else {
        return;
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let app = h.app.clone();
        let token = h.tokens.admin.clone();
        tasks.spawn(async move {
            send(
                &app,
                &token,
                "PUT",
                PATH,
                Some("race"),
                Some(shard(b"same")),
            )
            .await
        });
    }
    let mut answers = Vec::new();
    while let Some(j) = tasks.join_next().await {
        answers.push(j.unwrap());
    }
    assert!(
        answers.iter().all(|r| r.0 == StatusCode::CREATED),
        "{answers:?}"
    );
    assert!(answers.iter().all(|r| r.1 == answers[0].1), "{answers:?}");
    assert_eq!(
        answers.iter().filter(|r| !r.2).count(),
        1,
        "exactly one first answer"
    );
    assert!(answers[0].1.contains("\"version\":1"));
    assert_eq!(
        h.count("SELECT COUNT(*) FROM shard_versions WHERE shard = 's1'")
            .await,
        1
    );
    assert_eq!(
        h.count("SELECT COUNT(*) FROM audit_events WHERE action = 'shard.put'")
            .await,
        1
    );
}

async fn account_delete_retried_gives_same_receipt(kind: StoreKind) {
    let Some(h) = Harness::new(kind, 86_400).await else {
        return;
    };
    let a = &h.tokens.admin;
    assert_eq!(
        h.send(a, "PUT", PATH, None, Some(shard(b"x"))).await.0,
        StatusCode::CREATED
    );
    let first = h
        .send(a, "DELETE", "/v1/accounts/acct-A1", Some("acct-del"), None)
        .await;
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    assert!(first.1.contains("\"destroyed_versions\":1"), "{}", first.1);
    let again = h
        .send(a, "DELETE", "/v1/accounts/acct-A1", Some("acct-del"), None)
        .await;
    assert_eq!(
        (again.0, &again.1, again.2),
        (StatusCode::OK, &first.1, true)
    );
    assert_eq!(
        h.count("SELECT COUNT(*) FROM audit_events WHERE action = 'account.delete'")
            .await,
        1
    );
    let plain = h
        .send(a, "DELETE", "/v1/accounts/acct-A1", None, None)
        .await;
    assert_eq!(plain.0, StatusCode::NOT_FOUND);
}
