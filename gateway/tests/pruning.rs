//! Version pruning through the HTTP API, on both stores: `DELETE .../versions/{n}` and the
//! `keep_versions` retention (global `[retention]`, per account), their receipts and audit
//! events. Every response is checked against the OpenAPI document.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use axum::body::Body;
use axum::http::{header, Request};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::openapi::OpenApi;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Gw {
    app: axum::Router,
    state: shardgate::AppState,
    tokens: Tokens,
    db: Db,
    api: OpenApi,
    dir: tempfile::TempDir,
}

impl Gw {
    async fn new(kind: StoreKind, keep_versions: u32) -> Option<Gw> {
        let dir = tempfile::tempdir().unwrap();
        let url = common::store_url(kind, dir.path()).await?;
        let tokens = Tokens::new();
        let mut cfg = common::config(dir.path(), &url, &tokens);
        cfg.retention.keep_versions = keep_versions;
        let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
        Some(Gw {
            app: shardgate::router(state.clone()),
            state,
            tokens,
            db: Db::connect(&url).await,
            api: OpenApi::load(),
            dir,
        })
    }

    async fn send(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
        idem: Option<&str>,
    ) -> (u16, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(k) = idem {
            req = req.header("idempotency-key", k);
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let resp = self
            .app
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        self.api
            .check(method, path.split('?').next().unwrap(), status, &v);
        (status, v)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send(&self.tokens.admin, method, path, body, None)
            .await
    }

    async fn account(&self, body: Value) -> Value {
        let (s, v) = self.call("PUT", "/v1/accounts/acct-1", Some(body)).await;
        assert!(s == 200 || s == 201, "{v}");
        v
    }

    async fn put(&self, shard: &str, n: u8) -> Value {
        let (s, v) = self
            .call(
                "PUT",
                &format!("/v1/accounts/acct-1/shards/{shard}"),
                Some(json!({ "shard": B64.encode(data(n)) })),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v
    }

    async fn get(&self, shard: &str, version: Option<i64>) -> (u16, Value) {
        let q = version.map(|v| format!("?version={v}")).unwrap_or_default();
        self.call(
            "GET",
            &format!("/v1/accounts/acct-1/shards/{shard}{q}"),
            None,
        )
        .await
    }

    async fn delete_version(&self, shard: &str, version: &str) -> (u16, Value) {
        self.call(
            "DELETE",
            &format!("/v1/accounts/acct-1/shards/{shard}/versions/{version}"),
            None,
        )
        .await
    }

    async fn stored_versions(&self, shard: &str) -> i64 {
        self.db
            .count(&format!(
                "SELECT COUNT(*) FROM shard_versions WHERE account = 'acct-1' AND shard = '{shard}'"
            ))
            .await
    }

    /// Every audit event with `action`: (version, outcome, "<chain>:<seq>").
    async fn audited(&self, action: &str) -> Vec<(i64, String, String)> {
        let rows = self
            .db
            .all_bytes(&format!(
                "SELECT CAST(version AS TEXT), outcome, chain_id || ':' || CAST(seq AS TEXT) \
                 FROM audit_events WHERE action = '{action}' ORDER BY seq"
            ))
            .await;
        rows.chunks(3)
            .map(|c| {
                let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                (s(&c[0]).parse().unwrap(), s(&c[1]), s(&c[2]))
            })
            .collect()
    }

    async fn audit_verifies(&self) {
        let cfg = common::config(self.dir.path(), "sqlite://unused", &self.tokens);
        let key = shardgate::app::state::audit_key(&cfg).unwrap();
        let report = shardgate::domain::audit::verify(self.state.store.as_ref(), &key)
            .await
            .unwrap();
        assert!(report.events > 0);
    }
}

fn data(n: u8) -> Vec<u8> {
    format!("share {n} of an MPC key, refreshed").into_bytes()
}

fn shard_of(v: &Value) -> Vec<u8> {
    B64.decode(v["shard"].as_str().unwrap()).unwrap()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

both_stores!(
    delete_one_version_answers_a_receipt_and_audits,
    deleting_the_latest_version_falls_back_to_the_newest_remaining,
    global_retention_prunes_at_write_time_with_receipts,
    account_keep_versions_overrides_the_global_setting,
    idempotent_retries_replay_the_receipts,
    delete_version_with_unwritable_audit_destroys_nothing,
);

async fn delete_one_version_answers_a_receipt_and_audits(kind: StoreKind) {
    let Some(gw) = Gw::new(kind, 0).await else {
        return;
    };
    gw.account(json!({"tier": "retail"})).await;
    for n in 1..=3 {
        gw.put("s", n).await;
    }
    let (s, v) = gw.delete_version("s", "2").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["destroyed_versions"], 1);
    let audited = gw.audited("shard.version_delete").await;
    assert_eq!(audited.len(), 1);
    assert_eq!((audited[0].0, audited[0].1.as_str()), (2, "ok"));
    assert_eq!(v["audit_event"].as_str(), Some(audited[0].2.as_str()));
    assert_eq!(gw.stored_versions("s").await, 2);
    // The version is gone; its neighbours still read.
    let (s, v) = gw.get("s", Some(2)).await;
    assert_eq!((s, code(&v)), (404, "version_not_found"));
    for n in [1, 3] {
        let (s, v) = gw.get("s", Some(i64::from(n))).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(shard_of(&v), data(n));
    }
    // Not there (again), or never was.
    for (shard, version, want) in [
        ("s", "2", "version_not_found"),
        ("s", "9", "version_not_found"),
        ("nope", "1", "shard_not_found"),
    ] {
        let (s, v) = gw.delete_version(shard, version).await;
        assert_eq!((s, code(&v)), (404, want), "{shard} v{version}");
    }
    let (s, v) = gw
        .call("DELETE", "/v1/accounts/acct-9/shards/s/versions/1", None)
        .await;
    assert_eq!((s, code(&v)), (404, "account_not_found"));
    for bad in ["0", "-1", "abc", "1.5"] {
        let (s, v) = gw.delete_version("s", bad).await;
        assert_eq!((s, code(&v)), (400, "invalid_request"), "{bad}");
    }
    // shards:delete is required.
    let (s, v) = gw
        .send(
            &gw.tokens.reader,
            "DELETE",
            "/v1/accounts/acct-1/shards/s/versions/1",
            None,
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (403, "forbidden"));
    assert_eq!(gw.stored_versions("s").await, 2);
    gw.audit_verifies().await;
}

async fn deleting_the_latest_version_falls_back_to_the_newest_remaining(kind: StoreKind) {
    let Some(gw) = Gw::new(kind, 0).await else {
        return;
    };
    gw.account(json!({"tier": "retail"})).await;
    gw.put("s", 1).await;
    gw.put("s", 2).await;
    let (s, _) = gw.delete_version("s", "2").await;
    assert_eq!(s, 200);
    let (s, v) = gw.get("s", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["version"].as_i64(), shard_of(&v)), (Some(1), data(1)));
    // The next write numbers from the newest remaining version.
    assert_eq!(gw.put("s", 3).await["version"], 2);
    let (_, v) = gw.get("s", None).await;
    assert_eq!(shard_of(&v), data(3));
    // Deleting every version leaves no shard, as a shard delete does.
    for version in ["1", "2"] {
        let (s, v) = gw.delete_version("s", version).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = gw.get("s", None).await;
    assert_eq!((s, code(&v)), (404, "shard_not_found"));
    let (s, v) = gw.get("s", Some(1)).await;
    assert_eq!((s, code(&v)), (404, "shard_not_found"));
    gw.audit_verifies().await;
}

async fn global_retention_prunes_at_write_time_with_receipts(kind: StoreKind) {
    let Some(gw) = Gw::new(kind, 2).await else {
        return;
    };
    let v = gw.account(json!({"tier": "retail"})).await;
    assert_eq!(
        (
            v["keep_versions"].as_u64(),
            v["keep_versions_source"].as_str()
        ),
        (Some(2), Some("default"))
    );
    let mut answers = Vec::new();
    for n in 1..=4 {
        answers.push(gw.put("s", n).await);
    }
    // No pruning below the limit: the answer keeps its usual shape.
    assert!(answers[0].get("pruned_versions").is_none());
    assert!(answers[1].get("pruned_versions").is_none());
    let prunes = gw.audited("shard.prune").await;
    assert_eq!(
        prunes.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![1, 2],
        "one audit event per pruned version"
    );
    for (answer, (version, outcome, event)) in answers[2..].iter().zip(&prunes) {
        let pruned = answer["pruned_versions"].as_array().unwrap();
        assert_eq!(pruned.len(), 1, "{answer}");
        assert_eq!(pruned[0]["version"].as_i64(), Some(*version));
        assert_eq!(pruned[0]["audit_event"].as_str(), Some(event.as_str()));
        assert_eq!(outcome, "ok");
    }
    assert_eq!(gw.stored_versions("s").await, 2);
    for (version, want) in [(1, 404), (2, 404), (3, 200), (4, 200)] {
        let (s, v) = gw.get("s", Some(version)).await;
        assert_eq!(s, want, "v{version}: {v}");
    }
    let (_, v) = gw.get("s", None).await;
    assert_eq!(shard_of(&v), data(4));
    // The chain holds the write's event and its prune events in order, and verifies.
    gw.audit_verifies().await;
}

async fn account_keep_versions_overrides_the_global_setting(kind: StoreKind) {
    let Some(gw) = Gw::new(kind, 0).await else {
        return;
    };
    let v = gw
        .account(json!({"tier": "retail", "keep_versions": 1}))
        .await;
    assert_eq!(
        (
            v["keep_versions"].as_u64(),
            v["keep_versions_source"].as_str()
        ),
        (Some(1), Some("account"))
    );
    gw.put("s", 1).await;
    let v = gw.put("s", 2).await;
    assert_eq!(v["pruned_versions"][0]["version"], 1);
    assert_eq!(gw.stored_versions("s").await, 1);
    // A tier change without keep_versions leaves it as it is.
    let v = gw.account(json!({"tier": "institutional"})).await;
    assert_eq!(
        (
            v["keep_versions"].as_u64(),
            v["keep_versions_source"].as_str()
        ),
        (Some(1), Some("account"))
    );
    let (s, v) = gw.call("GET", "/v1/accounts/acct-1", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["keep_versions"], 1);
    // 0 keeps every version; null follows the gateway setting again (here: keep all).
    gw.account(json!({"tier": "retail", "keep_versions": 0}))
        .await;
    gw.put("s", 3).await;
    gw.put("s", 4).await;
    assert_eq!(gw.stored_versions("s").await, 3);
    let v = gw
        .account(json!({"tier": "retail", "keep_versions": null}))
        .await;
    assert_eq!(
        (
            v["keep_versions"].as_u64(),
            v["keep_versions_source"].as_str()
        ),
        (Some(0), Some("default"))
    );
    assert!(gw.put("s", 5).await.get("pruned_versions").is_none());
    // The setting is audited with the account write; bad values are refused.
    assert_eq!(
        gw.db
            .count("SELECT COUNT(*) FROM audit_events WHERE action = 'account.put' AND detail LIKE '%keep_versions=1%'")
            .await,
        1
    );
    for bad in [json!(-1), json!("2"), json!(1.5)] {
        let (s, v) = gw
            .call(
                "PUT",
                "/v1/accounts/acct-1",
                Some(json!({"tier": "retail", "keep_versions": bad})),
            )
            .await;
        assert_eq!((s, code(&v)), (400, "invalid_request"), "{bad}");
    }
}

async fn idempotent_retries_replay_the_receipts(kind: StoreKind) {
    let Some(gw) = Gw::new(kind, 1).await else {
        return;
    };
    gw.account(json!({"tier": "retail"})).await;
    gw.put("s", 1).await;
    let body = json!({ "shard": B64.encode(data(2)) });
    let path = "/v1/accounts/acct-1/shards/s";
    let admin = gw.tokens.admin.clone();
    let (s, first) = gw
        .send(&admin, "PUT", path, Some(body.clone()), Some("put-2"))
        .await;
    assert_eq!(s, 201, "{first}");
    assert_eq!(first["pruned_versions"][0]["version"], 1);
    let (s, again) = gw
        .send(&admin, "PUT", path, Some(body), Some("put-2"))
        .await;
    assert_eq!(
        (s, &again),
        (201, &first),
        "the replay carries the same receipts"
    );
    assert_eq!(gw.audited("shard.prune").await.len(), 1);

    gw.put("s", 3).await;
    let vpath = "/v1/accounts/acct-1/shards/s/versions/3";
    let (s, first) = gw.send(&admin, "DELETE", vpath, None, Some("del-3")).await;
    assert_eq!(s, 200, "{first}");
    let (s, again) = gw.send(&admin, "DELETE", vpath, None, Some("del-3")).await;
    assert_eq!((s, &again), (200, &first), "a retried delete is not a 404");
    assert_eq!(gw.audited("shard.version_delete").await.len(), 1);
    gw.audit_verifies().await;
}

async fn delete_version_with_unwritable_audit_destroys_nothing(kind: StoreKind) {
    let Some(gw) = Gw::new(kind, 0).await else {
        return;
    };
    gw.account(json!({"tier": "retail"})).await;
    gw.put("s", 1).await;
    gw.put("s", 2).await;
    gw.db.deny_audit_inserts().await;
    let (s, v) = gw.delete_version("s", "1").await;
    assert_eq!((s, code(&v)), (503, "audit_unavailable"));
    gw.db.allow_audit_inserts().await;
    assert_eq!(gw.stored_versions("s").await, 2);
    let (s, v) = gw.get("s", Some(1)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(shard_of(&v), data(1));
}
