//! The admin rule (SECURITY.md): an admin operation on one account checks the token's
//! account prefix; an operation with global effect (key state, key listing, backend-wide
//! migrations, breakers) needs a token WITHOUT a prefix. New credentials can no longer pair
//! `admin` with a prefix, so the rule is pinned with a token row such as an older release
//! stored (written straight to the token table). And every event an admin request causes
//! records the request's credential.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use axum::http::StatusCode;
use common::db::Db;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use shardgate::AppState;

struct Gw {
    app: axum::Router,
    state: AppState,
    tokens: Tokens,
    db: Db,
    _dir: tempfile::TempDir,
}

impl Gw {
    async fn start(kind: StoreKind) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let url = common::store_url(kind, dir.path()).await?;
        let tokens = Tokens::new();
        let mut cfg = common::config(dir.path(), &url, &tokens);
        // Workers would race the assertions on job states: jobs stay as started.
        cfg.migration.workers = false;
        let (state, _) = AppState::build(&cfg).await.unwrap();
        Some(Self {
            app: shardgate::router(state.clone()),
            state,
            tokens,
            db: Db::connect(&url).await,
            _dir: dir,
        })
    }

    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        common::call(&self.app, token, method, path, body).await
    }

    async fn account_with_shard(&self, account: &str) {
        let (s, v) = self
            .call(
                &self.tokens.admin,
                "PUT",
                &format!("/v1/accounts/{account}"),
                Some(json!({"tier": "retail"})),
            )
            .await;
        assert!(s.is_success(), "{v}");
        let (s, v) = self
            .call(
                &self.tokens.admin,
                "PUT",
                &format!("/v1/accounts/{account}/shards/s1"),
                Some(json!({"shard": "c2hhcmQ="})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// A token row as an older release stored it: every scope, and an account prefix.
    async fn legacy_prefixed_admin(&self) -> String {
        let token = format!("sgt_legacy_{}", uuid::Uuid::new_v4().simple());
        common::plant(&token);
        let sha256 = shardgate::domain::auth::hash_token(&token);
        self.state
            .store
            .insert_token(&shardgate_store::TokenRecord {
                token_id: shardgate::domain::auth::token_id(&sha256),
                name: "legacy-prefixed".into(),
                sha256,
                scopes: vec!["*".into()],
                account_prefix: Some("acct-A".into()),
                created_ms: 0,
                expires_ms: None,
            })
            .await
            .unwrap();
        self.state.auth.refresh().await.unwrap();
        token
    }
}

fn forbidden(r: &(StatusCode, Value), what: &str) {
    assert_eq!(r.0, StatusCode::FORBIDDEN, "{what}: {}", r.1);
    assert_eq!(r.1["error"]["code"], "forbidden", "{what}: {}", r.1);
}

async fn a_prefixed_admin_reaches_only_its_accounts_and_nothing_global(kind: StoreKind) {
    let Some(gw) = Gw::start(kind).await else {
        return;
    };
    gw.account_with_shard("acct-A1").await;
    gw.account_with_shard("other-1").await;
    let p = gw.legacy_prefixed_admin().await;
    let admin = gw.tokens.admin.clone();

    // Per-account operations: inside the prefix yes, outside no.
    let r = gw
        .call(
            &p,
            "POST",
            "/v1/admin/migrations",
            Some(json!({"account": "other-1"})),
        )
        .await;
    forbidden(&r, "migration of another account");
    let r = gw
        .call(
            &p,
            "POST",
            "/v1/admin/migrations",
            Some(json!({"account": "acct-A1"})),
        )
        .await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.1);
    let own_job = r.1["job"].as_str().unwrap().to_string();
    let r = gw
        .call(&p, "GET", &format!("/v1/admin/migrations/{own_job}"), None)
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);

    // Global effect: refused, whatever the body.
    let r = gw
        .call(
            &p,
            "POST",
            "/v1/admin/migrations",
            Some(json!({"from_backend": "local"})),
        )
        .await;
    forbidden(&r, "backend-wide migration");
    forbidden(
        &gw.call(&p, "GET", "/v1/admin/keys", None).await,
        "key listing",
    );
    let r = gw
        .call(
            &p,
            "POST",
            "/v1/admin/keys/local/1/state",
            Some(json!({"state": "decrypt-only"})),
        )
        .await;
    forbidden(&r, "key state");
    let r = gw
        .call(&p, "POST", "/v1/admin/backends/local/circuit:close", None)
        .await;
    forbidden(&r, "breaker override");
    // Another account's job, and a backend-wide job, are out of its reach too.
    let r = gw
        .call(
            &admin,
            "POST",
            "/v1/admin/migrations",
            Some(json!({"account": "other-1"})),
        )
        .await;
    let other_job = r.1["job"].as_str().unwrap().to_string();
    let r = gw
        .call(
            &admin,
            "POST",
            "/v1/admin/migrations",
            Some(json!({"from_backend": "local"})),
        )
        .await;
    let wide_job = r.1["job"].as_str().unwrap().to_string();
    for job in [&other_job, &wide_job] {
        forbidden(
            &gw.call(&p, "GET", &format!("/v1/admin/migrations/{job}"), None)
                .await,
            "read a job",
        );
        let r = gw
            .call(
                &p,
                "POST",
                &format!("/v1/admin/migrations/{job}/cancel"),
                None,
            )
            .await;
        forbidden(&r, "cancel a job");
    }

    // Nothing global changed: the key is still active and every account still writes.
    let (s, keys) = gw.call(&admin, "GET", "/v1/admin/keys", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(keys["keys"][0]["state"], "active", "{keys}");
    let (s, v) = gw
        .call(
            &admin,
            "PUT",
            "/v1/accounts/other-1/shards/s2",
            Some(json!({"shard": "c2hhcmQ="})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // The refusals are audited (detached, so waited for), naming the credential.
    let sql = "SELECT COUNT(*) FROM audit_events WHERE actor = 'legacy-prefixed' \
               AND outcome = 'forbidden' AND credential IS NOT NULL";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut refused = gw.db.count(sql).await;
    while refused < 9 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        refused = gw.db.count(sql).await;
    }
    assert_eq!(refused, 9, "every refusal audited with its credential");
}

async fn every_event_of_an_admin_request_records_its_credential(kind: StoreKind) {
    let Some(gw) = Gw::start(kind).await else {
        return;
    };
    let admin = gw.tokens.admin.clone();
    gw.account_with_shard("acct-A1").await;
    let r = gw
        .call(
            &admin,
            "POST",
            "/v1/admin/migrations",
            Some(json!({"account": "acct-A1"})),
        )
        .await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.1);
    let job = r.1["job"].as_str().unwrap().to_string();
    for step in ["pause", "resume", "cancel"] {
        let (s, v) = gw
            .call(
                &admin,
                "POST",
                &format!("/v1/admin/migrations/{job}/{step}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{step}: {v}");
    }
    let (s, v) = gw
        .call(&admin, "GET", &format!("/v1/admin/migrations/{job}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = gw
        .call(
            &admin,
            "POST",
            "/v1/admin/backends/local/circuit:close",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = gw
        .call(
            &admin,
            "POST",
            "/v1/admin/keys/local/1/state",
            Some(json!({"state": "decrypt-only"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A tier change starts its re-wrap job in the background, on the request's behalf.
    let (s, v) = gw
        .call(
            &admin,
            "PUT",
            "/v1/accounts/acct-A1",
            Some(json!({"tier": "institutional"})),
        )
        .await;
    assert!(s.is_success(), "{v}");

    let actions = [
        "migration.start",
        "migration.paused",
        "migration.running",
        "migration.cancelled",
        "backend.circuit_close",
        "key.state",
    ];
    for action in actions {
        let n = gw
            .db
            .count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE actor = 'admin' AND action = '{action}'"
            ))
            .await;
        assert!(n >= 1, "no {action} event");
    }
    let credentials = gw
        .db
        .all_bytes("SELECT DISTINCT credential FROM audit_events WHERE actor = 'admin'")
        .await;
    assert_eq!(credentials.len(), 1, "one credential made every event");
    assert_eq!(
        credentials[0].len(),
        32,
        "a credential id (128 bits in hex)"
    );
    let unnamed = gw
        .db
        .count("SELECT COUNT(*) FROM audit_events WHERE actor = 'admin' AND credential IS NULL")
        .await;
    assert_eq!(unnamed, 0, "an admin event without its credential");
}

both_stores!(
    a_prefixed_admin_reaches_only_its_accounts_and_nothing_global,
    every_event_of_an_admin_request_records_its_credential,
);
