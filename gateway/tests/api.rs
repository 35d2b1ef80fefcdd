//! The HTTP API suite, run in-process (`tower::ServiceExt::oneshot` on `shardgate::router`)
//! against BOTH stores: every case runs once on SQLite and once on PostgreSQL. Every
//! response is validated against the OpenAPI document.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::{contains, Db};
use common::openapi::OpenApi;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use shardgate::AppState;
use tower::ServiceExt;

struct Harness {
    app: axum::Router,
    state: AppState,
    tokens: Tokens,
    db: Db,
    api: OpenApi,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: Value,
    text: String,
}

impl Resp {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

impl Harness {
    async fn new(kind: StoreKind) -> Option<Self> {
        Self::with(kind, |_| {}).await
    }

    async fn with(
        kind: StoreKind,
        tweak: impl FnOnce(&mut shardgate::app::config::Config),
    ) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let url = common::store_url(kind, dir.path()).await?;
        let tokens = Tokens::new();
        let mut cfg = common::config(dir.path(), &url, &tokens);
        tweak(&mut cfg);
        let (state, _) = AppState::build(&cfg).await.unwrap();
        let db = Db::connect(&url).await;
        Some(Self {
            app: shardgate::router(state.clone()),
            state,
            tokens,
            db,
            api: OpenApi::load(),
            _dir: dir,
        })
    }

    async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/json"));
        let json: Value = if is_json {
            serde_json::from_str(&text).unwrap()
        } else {
            Value::Null
        };
        let p = path.split('?').next().unwrap();
        self.api.check(method, p, status.as_u16(), &json);
        assert_eq!(
            headers
                .get(header::CACHE_CONTROL)
                .map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{method} {path}"
        );
        if !status.is_success() {
            assert!(
                json["error"]["code"].is_string(),
                "error without code: {text}"
            );
        }
        Resp {
            status,
            headers,
            json,
            text,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        self.raw(method, path, token, bytes).await
    }

    fn admin(&self) -> &str {
        &self.tokens.admin
    }

    async fn account(&self, account: &str) {
        let r = self
            .call(
                "PUT",
                &format!("/v1/accounts/{account}"),
                Some(self.admin()),
                Some(json!({"tier":"retail"})),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.text);
    }

    async fn put(&self, account: &str, shard: &str, bytes: &[u8]) -> Resp {
        let b64 = B64.encode(bytes);
        common::plant(&b64);
        self.call(
            "PUT",
            &format!("/v1/accounts/{account}/shards/{shard}"),
            Some(self.admin()),
            Some(json!({ "shard": b64 })),
        )
        .await
    }

    async fn get(&self, account: &str, shard: &str) -> Resp {
        self.get_at(account, shard, "").await
    }

    async fn get_version(
        &self,
        account: &str,
        shard: &str,
        version: impl std::fmt::Display,
    ) -> Resp {
        self.get_at(account, shard, &format!("?version={version}"))
            .await
    }

    /// `audit verify` of every chain, under the test config's audit key; panics if broken.
    async fn verify_audit(&self) -> shardgate::domain::audit::VerifyReport {
        let key = shardgate::app::state::audit_key(&common::config(
            self._dir.path(),
            "sqlite://unused",
            &self.tokens,
        ))
        .unwrap();
        shardgate::domain::audit::verify(self.state.store.as_ref(), &key)
            .await
            .unwrap()
    }

    async fn get_at(&self, account: &str, shard: &str, query: &str) -> Resp {
        self.call(
            "GET",
            &format!("/v1/accounts/{account}/shards/{shard}{query}"),
            Some(self.admin()),
            None,
        )
        .await
    }
}

fn secret(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 0x80)
        .collect()
}

fn decoded(r: &Resp) -> Vec<u8> {
    B64.decode(r.json["shard"].as_str().unwrap()).unwrap()
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(h) = super::Harness::new(super::StoreKind::Sqlite).await {
                        super::$name(h).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(h) = super::Harness::new(super::StoreKind::Postgres).await {
                        super::$name(h).await;
                    }
                }
            )*
        }
    };
}

both_stores!(
    put_then_get_roundtrips_at_every_size,
    oversized_empty_and_bad_base64_shards_are_refused,
    bad_ids_are_invalid_id,
    unknown_tier_is_refused_and_tier_change_is_reported,
    shards_need_an_existing_account,
    stored_bytes_never_contain_the_plaintext,
    swapped_ciphertext_or_wrapped_key_fails_with_integrity_error,
    version_history_and_compare_and_swap,
    concurrent_writers_end_with_a_consistent_history,
    concurrent_writes_of_many_shards_each_get_one_audit_event,
    concurrent_creates_with_expected_zero_have_one_winner,
    delete_shard_shreds_every_version_and_audits,
    delete_account_shreds_every_shard,
    list_pages_by_exact_bytes_without_shard_bytes,
    auth_failures_are_401_and_403_and_audited,
    account_prefix_token_never_reaches_beyond_its_prefix,
    tokens_never_appear_in_audit_rows,
    read_with_unwritable_audit_is_refused_and_recovers,
    write_with_unwritable_audit_stores_nothing,
    batch_get_answers_in_order_with_per_item_errors,
    account_get_counts_shards,
    health_ready_and_unknown_routes,
    every_audit_event_verifies,
    stored_shard_decrypts_with_the_format_md_recipe,
    batch_get_isolates_a_tampered_item,
);

async fn batch_get_isolates_a_tampered_item(h: Harness) {
    h.account("acct-1").await;
    for s in ["a", "b", "c"] {
        h.put("acct-1", s, format!("batch-tamper-{s}").as_bytes())
            .await;
    }
    h.db
        .exec("UPDATE shard_versions SET wrapped_dek = (SELECT wrapped_dek FROM shard_versions WHERE shard='a') WHERE shard='b'")
        .await;
    // A key reference no configured backend holds: key_unusable. (A rewritten `backend`
    // column is an integrity failure: attacks.rs.)
    h.db.exec("UPDATE shard_versions SET key_ref = 'nowhere' WHERE shard='c'")
        .await;
    let r = h
        .call(
            "POST",
            "/v1/shards:batchGet",
            Some(h.admin()),
            Some(json!({"items":[
                {"account":"acct-1","shard":"c"},
                {"account":"acct-1","shard":"b"},
                {"account":"acct-1","shard":"a"}
            ]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let res = r.json["results"].as_array().unwrap();
    assert_eq!(res[0]["error"]["code"], "key_unusable");
    assert_eq!(res[1]["error"]["code"], "integrity_failure");
    assert_eq!(
        B64.decode(res[2]["shard"].as_str().unwrap()).unwrap(),
        b"batch-tamper-a"
    );
    assert_eq!(
        h.db.count("SELECT COUNT(*) FROM audit_events WHERE action='shard.batch_get' AND outcome='integrity_failure'").await,
        1
    );
}

async fn put_then_get_roundtrips_at_every_size(h: Harness) {
    h.account("acct-1").await;
    for (i, n) in [1usize, 32, 64 * 1024].into_iter().enumerate() {
        let shard = format!("s{n}");
        let data = secret(n, i as u8);
        let r = h.put("acct-1", &shard, &data).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json["version"], 1);
        assert_eq!(r.json["backend"], "local");
        let g = h.get("acct-1", &shard).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(decoded(&g), data);
        assert_eq!(g.json["version"], 1);
    }
}

async fn oversized_empty_and_bad_base64_shards_are_refused(h: Harness) {
    h.account("acct-1").await;
    let r = h.put("acct-1", "big", &secret(64 * 1024 + 1, 3)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let r = h.put("acct-1", "empty", b"").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "empty_shard")
    );
    for bad in ["not base64!", "aGVsbG8", "aGVs bG8=", "aGVsbG8=="] {
        let r = h
            .call(
                "PUT",
                "/v1/accounts/acct-1/shards/b",
                Some(h.admin()),
                Some(json!({ "shard": bad })),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_base64"),
            "{bad}"
        );
    }
    // A body over the request limit is refused before it is parsed.
    let huge = vec![b' '; 1024 * 1024 + 10];
    let r = h
        .raw("PUT", "/v1/accounts/acct-1/shards/b", Some(h.admin()), huge)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let r = h
        .raw(
            "PUT",
            "/v1/accounts/acct-1/shards/b",
            Some(h.admin()),
            b"{\"shard\":".to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let r = h
        .call(
            "PUT",
            "/v1/accounts/acct-1/shards/b",
            Some(h.admin()),
            Some(json!({"shard":"aGk=","extra":1})),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    assert_eq!(h.db.count("SELECT COUNT(*) FROM shard_versions").await, 0);
}

async fn bad_ids_are_invalid_id(h: Harness) {
    h.account("acct-1").await;
    let long = "a".repeat(129);
    for bad in [
        ".",
        "..",
        "%2e%2e",
        "%2E.",
        long.as_str(),
        "",
        "%C3%A9",
        "a%2Fb",
        "a/b",
        "a%20b",
    ] {
        let r = h
            .call(
                "PUT",
                &format!("/v1/accounts/acct-1/shards/{bad}"),
                Some(h.admin()),
                Some(json!({"shard":"aGk="})),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_id"),
            "shard {bad:?}: {}",
            r.text
        );
        let r = h
            .call(
                "PUT",
                &format!("/v1/accounts/{bad}"),
                Some(h.admin()),
                Some(json!({"tier":"retail"})),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_id"),
            "account {bad:?}: {}",
            r.text
        );
    }
    let ok = "a".repeat(128);
    let r = h.put("acct-1", &ok, b"x").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(h.db.count("SELECT COUNT(*) FROM accounts").await, 1);
}

async fn unknown_tier_is_refused_and_tier_change_is_reported(h: Harness) {
    let r = h
        .call(
            "PUT",
            "/v1/accounts/acct-1",
            Some(h.admin()),
            Some(json!({"tier":"Retail"})),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "unknown_tier")
    );
    assert_eq!(h.db.count("SELECT COUNT(*) FROM accounts").await, 0);
    let r = h
        .call(
            "PUT",
            "/v1/accounts/acct-1",
            Some(h.admin()),
            Some(json!({"tier":"retail"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json["backend"], "local");
    let r = h
        .call(
            "PUT",
            "/v1/accounts/acct-1",
            Some(h.admin()),
            Some(json!({"tier":"institutional"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["created"], false);
    let r = h
        .call("GET", "/v1/accounts/acct-1", Some(h.admin()), None)
        .await;
    assert_eq!(r.json["tier"], "institutional");
}

async fn shards_need_an_existing_account(h: Harness) {
    let r = h.put("acct-none", "s", b"data").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "account_not_found")
    );
    let r = h.get("acct-none", "s").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "account_not_found")
    );
    h.account("acct-1").await;
    let r = h.get("acct-1", "s").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "shard_not_found")
    );
    // acct-A and acct-a are two accounts.
    h.account("acct-A").await;
    h.put("acct-A", "s", b"upper").await;
    let r = h.get("acct-a", "s").await;
    assert_eq!(r.code(), "account_not_found");
}

async fn stored_bytes_never_contain_the_plaintext(h: Harness) {
    h.account("acct-1").await;
    let data = b"PLAINTEXT-MARKER-0123456789abcdef-PLAINTEXT-MARKER".to_vec();
    common::plant(std::str::from_utf8(&data).unwrap());
    h.put("acct-1", "s", &data).await;
    let b64 = B64.encode(&data);
    let cols = h.db.all_bytes("SELECT * FROM shard_versions").await;
    assert!(!cols.is_empty());
    for c in
        h.db.all_bytes("SELECT * FROM shard_versions")
            .await
            .into_iter()
            .chain(h.db.all_bytes("SELECT * FROM audit_events").await)
    {
        assert!(!contains(&c, &data[..16]), "plaintext stored");
        assert!(!contains(&c, b64.as_bytes()), "base64 plaintext stored");
    }
}

async fn swapped_ciphertext_or_wrapped_key_fails_with_integrity_error(h: Harness) {
    h.account("acct-1").await;
    h.account("acct-2").await;
    h.put("acct-1", "s", &secret(40, 1)).await;
    h.put("acct-1", "s", &secret(40, 2)).await;
    h.put("acct-2", "s", &secret(40, 3)).await;
    h.put("acct-1", "t", &secret(40, 4)).await;
    let copy = |col: &str, from: (&str, &str, i64), to: (&str, &str, i64)| {
        format!(
            "UPDATE shard_versions SET {col} = (SELECT {col} FROM shard_versions WHERE account='{}' AND shard='{}' AND version={}) WHERE account='{}' AND shard='{}' AND version={}",
            from.0, from.1, from.2, to.0, to.1, to.2
        )
    };
    // Another account's whole envelope onto acct-2/s v1.
    for col in ["ciphertext", "nonce", "wrapped_dek"] {
        h.db.exec(&copy(col, ("acct-1", "s", 1), ("acct-2", "s", 1)))
            .await;
    }
    let r = h.get("acct-2", "s").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::INTERNAL_SERVER_ERROR, "integrity_failure")
    );
    assert!(r.json.get("shard").is_none());
    // Another version's ciphertext only.
    h.db.exec(&copy("ciphertext", ("acct-1", "s", 1), ("acct-1", "s", 2)))
        .await;
    let r = h
        .call(
            "GET",
            "/v1/accounts/acct-1/shards/s?version=2",
            Some(h.admin()),
            None,
        )
        .await;
    assert_eq!(r.code(), "integrity_failure");
    // Another shard's wrapped DEK only.
    h.db.exec(&copy("wrapped_dek", ("acct-1", "s", 1), ("acct-1", "t", 1)))
        .await;
    let r = h.get("acct-1", "t").await;
    assert_eq!(r.code(), "integrity_failure");
    // Untouched rows still read, and the failures are audited.
    let r = h
        .call(
            "GET",
            "/v1/accounts/acct-1/shards/s?version=1",
            Some(h.admin()),
            None,
        )
        .await;
    assert_eq!(decoded(&r), secret(40, 1));
    assert_eq!(
        h.db.count("SELECT COUNT(*) FROM audit_events WHERE outcome = 'integrity_failure'")
            .await,
        3
    );
}

async fn version_history_and_compare_and_swap(h: Harness) {
    h.account("acct-1").await;
    for v in 1..=3u8 {
        let r = h.put("acct-1", "s", &secret(33, v)).await;
        assert_eq!(r.json["version"], v);
    }
    for v in 1..=3u8 {
        let r = h.get_version("acct-1", "s", v).await;
        assert_eq!(decoded(&r), secret(33, v));
    }
    assert_eq!(h.get("acct-1", "s").await.json["version"], 3);
    let r = h
        .call(
            "GET",
            "/v1/accounts/acct-1/shards/s?version=4",
            Some(h.admin()),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "version_not_found")
    );
    for bad in ["0", "-1", "x"] {
        let r = h.get_version("acct-1", "s", bad).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{bad}"
        );
    }
    let put_cas = |expected: i64, seed: u8| {
        let b64 = B64.encode(secret(20, seed));
        common::plant(&b64);
        h.call(
            "PUT",
            "/v1/accounts/acct-1/shards/s",
            Some(h.admin()),
            Some(json!({"shard": b64, "expected_version": expected})),
        )
    };
    let r = put_cas(3, 9).await;
    assert_eq!(
        (r.status, r.json["version"].as_i64()),
        (StatusCode::CREATED, Some(4))
    );
    let r = put_cas(3, 10).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "version_conflict")
    );
    assert_eq!(decoded(&h.get("acct-1", "s").await), secret(20, 9));
    let r = h
        .call(
            "PUT",
            "/v1/accounts/acct-1/shards/new",
            Some(h.admin()),
            Some(json!({"shard":"aGk=","expected_version":0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        h.db.count("SELECT COUNT(*) FROM shard_versions WHERE shard = 's'")
            .await,
        4
    );
}

async fn concurrent_writers_end_with_a_consistent_history(h: Harness) {
    h.account("acct-1").await;
    let h = std::sync::Arc::new(h);
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let r = h.put("acct-1", "hot", &secret(24, i)).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            (r.json["version"].as_i64().unwrap(), i)
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    let mut versions: Vec<i64> = got.iter().map(|(v, _)| *v).collect();
    versions.sort();
    assert_eq!(versions, (1..=32).collect::<Vec<_>>());
    for (v, seed) in got {
        let r = h.get_version("acct-1", "hot", v).await;
        assert_eq!(decoded(&r), secret(24, seed), "version {v}");
    }
}

/// Many writers at once (on PostgreSQL they commit in groups, see `write_group`): every
/// write is stored once, readable, and audited by exactly one event naming its version, and
/// the chain verifies.
async fn concurrent_writes_of_many_shards_each_get_one_audit_event(h: Harness) {
    for a in 0..3 {
        h.account(&format!("acct-{a}")).await;
    }
    let h = std::sync::Arc::new(h);
    let mut tasks = Vec::new();
    for i in 0..48u8 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let (account, shard) = (format!("acct-{}", i % 3), format!("s{}", i % 8));
            let r = h.put(&account, &shard, &secret(20, i)).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            (account, shard, r.json["version"].as_i64().unwrap(), i)
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    for (account, shard, v, seed) in &got {
        let r = h.get_version(account, shard, v).await;
        assert_eq!(decoded(&r), secret(20, *seed), "{account}/{shard} v{v}");
        let events =
            h.db.count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE action = 'shard.put' \
                 AND account = '{account}' AND shard = '{shard}' AND version = {v}"
            ))
            .await;
        assert_eq!(events, 1, "{account}/{shard} v{v}");
    }
    // 48 writes over 24 shards (each written twice): versions 1 and 2 of each.
    assert_eq!(h.db.count("SELECT COUNT(*) FROM shard_versions").await, 48);
    assert_eq!(
        h.db.count("SELECT COUNT(*) FROM audit_events WHERE action = 'shard.put'")
            .await,
        48
    );
    h.verify_audit().await;
}

async fn concurrent_creates_with_expected_zero_have_one_winner(h: Harness) {
    h.account("acct-1").await;
    let h = std::sync::Arc::new(h);
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let b64 = B64.encode(secret(16, i));
            h.call(
                "PUT",
                "/v1/accounts/acct-1/shards/once",
                Some(h.admin()),
                Some(json!({"shard": b64, "expected_version": 0})),
            )
            .await
            .status
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(h.db.count("SELECT COUNT(*) FROM shard_versions").await, 1);
}

async fn delete_shard_shreds_every_version_and_audits(h: Harness) {
    h.account("acct-1").await;
    for i in 0..3 {
        h.put("acct-1", "s", &secret(10, i)).await;
    }
    h.put("acct-1", "keep", b"keep-me").await;
    let r = h
        .call(
            "DELETE",
            "/v1/accounts/acct-1/shards/s",
            Some(h.admin()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["destroyed_versions"], 3);
    let event = r.json["audit_event"].as_str().unwrap().to_string();
    let (chain, seq) = event.rsplit_once(':').unwrap();
    assert_eq!(
        h.db.count(&format!("SELECT COUNT(*) FROM audit_events WHERE chain_id='{chain}' AND seq={seq} AND action='shard.delete' AND detail LIKE 'destroyed_versions=3 trace_id=%'")).await,
        1
    );
    for v in ["", "?version=1", "?version=3"] {
        let r = h
            .call(
                "GET",
                &format!("/v1/accounts/acct-1/shards/s{v}"),
                Some(h.admin()),
                None,
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::NOT_FOUND, "shard_not_found"),
            "{v}"
        );
    }
    assert_eq!(
        h.db.count("SELECT COUNT(*) FROM shard_versions WHERE shard='s'")
            .await,
        0
    );
    assert_eq!(h.get("acct-1", "keep").await.status, StatusCode::OK);
    let r = h
        .call(
            "DELETE",
            "/v1/accounts/acct-1/shards/s",
            Some(h.admin()),
            None,
        )
        .await;
    assert_eq!(r.code(), "shard_not_found");
}

async fn delete_account_shreds_every_shard(h: Harness) {
    h.account("acct-1").await;
    h.account("acct-2").await;
    for s in ["a", "b"] {
        h.put("acct-1", s, b"one").await;
        h.put("acct-1", s, b"two").await;
    }
    h.put("acct-2", "a", b"other").await;
    let r = h
        .call("DELETE", "/v1/accounts/acct-1", Some(h.admin()), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["destroyed_versions"], 4);
    assert_eq!(r.json["destroyed_shards"], 2);
    assert!(r.json["audit_event"].as_str().unwrap().contains(':'));
    assert_eq!(
        h.db.count("SELECT COUNT(*) FROM shard_versions WHERE account='acct-1'")
            .await,
        0
    );
    assert_eq!(
        h.db.count("SELECT COUNT(*) FROM accounts WHERE account='acct-1'")
            .await,
        0
    );
    assert_eq!(h.get("acct-1", "a").await.code(), "account_not_found");
    assert_eq!(
        h.call("GET", "/v1/accounts/acct-1", Some(h.admin()), None)
            .await
            .code(),
        "account_not_found"
    );
    assert_eq!(h.get("acct-2", "a").await.status, StatusCode::OK);
    assert_eq!(
        h.db.count(
            "SELECT COUNT(*) FROM audit_events WHERE action='account.delete' AND account='acct-1'"
        )
        .await,
        1
    );
}

async fn list_pages_by_exact_bytes_without_shard_bytes(h: Harness) {
    h.account("acct-1").await;
    let ids = ["a", "B", "b", "a.1", "a:2", "A", "_", "-", "z9", "Z9", "0"];
    for id in ids {
        h.put("acct-1", id, format!("LISTSECRET-{id}").as_bytes())
            .await;
    }
    let mut expected: Vec<&str> = ids.to_vec();
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(a) => format!("?limit=4&after={a}"),
            None => "?limit=4".to_string(),
        };
        let r = h
            .call(
                "GET",
                &format!("/v1/accounts/acct-1/shards{q}"),
                Some(h.admin()),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(!r.text.contains(&B64.encode(b"LISTSECRET")[..8]));
        for s in r.json["shards"].as_array().unwrap() {
            assert!(s.get("shard").unwrap().is_string());
            assert_eq!(s["latest_version"], 1);
            seen.push(s["shard"].as_str().unwrap().to_string());
        }
        match r.json["next_after"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    let r = h
        .call(
            "GET",
            "/v1/accounts/acct-1/shards?limit=0",
            Some(h.admin()),
            None,
        )
        .await;
    assert_eq!(r.code(), "invalid_request");
    let r = h
        .call(
            "GET",
            "/v1/accounts/acct-none/shards",
            Some(h.admin()),
            None,
        )
        .await;
    assert_eq!(r.code(), "account_not_found");
}

async fn auth_failures_are_401_and_403_and_audited(h: Harness) {
    h.account("acct-1").await;
    h.put("acct-1", "s", b"authsecret-123456").await;
    let r = h
        .call("GET", "/v1/accounts/acct-1/shards/s", None, None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let r = h
        .call(
            "GET",
            "/v1/accounts/acct-1/shards/s",
            Some("sgt_wrong"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    // The reader may read shards but not write them or read accounts.
    let reader = h.tokens.reader.clone();
    let r = h
        .call("GET", "/v1/accounts/acct-1/shards/s", Some(&reader), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h
        .call(
            "PUT",
            "/v1/accounts/acct-1/shards/s",
            Some(&reader),
            Some(json!({"shard":"aGk="})),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let r = h
        .call("DELETE", "/v1/accounts/acct-1", Some(&reader), None)
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"));
    assert_eq!(h.db.count("SELECT COUNT(*) FROM shard_versions").await, 1);
    // Refusals are audited (queued without waiting): poll for them.
    let mut found = (0, 0);
    for _ in 0..50 {
        found = (
            h.db.count("SELECT COUNT(*) FROM audit_events WHERE outcome='unauthenticated'")
                .await,
            h.db.count(
                "SELECT COUNT(*) FROM audit_events WHERE outcome='forbidden' AND actor='reader'",
            )
            .await,
        );
        if found == (2, 2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(found, (2, 2));
}

async fn account_prefix_token_never_reaches_beyond_its_prefix(h: Harness) {
    for a in ["acct-A1", "acct-a1", "acct-B1"] {
        h.account(a).await;
        h.put(a, "s", format!("prefix-secret-{a}").as_bytes()).await;
    }
    let p = h.tokens.prefixed.clone();
    let r = h
        .call("GET", "/v1/accounts/acct-A1/shards/s", Some(&p), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Percent-encoding is transport: `acct-%61` is `acct-a`, outside the prefix.
    for a in ["acct-a1", "acct-B1", "acct-%61%31", "acct%2DA1"] {
        let r = h
            .call("GET", &format!("/v1/accounts/{a}/shards/s"), Some(&p), None)
            .await;
        if a == "acct%2DA1" {
            // `acct-A1` after decoding: inside the prefix, and readable.
            assert_eq!(r.status, StatusCode::OK);
            continue;
        }
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{a}"
        );
        assert!(r.json.get("shard").is_none());
    }
    let r = h
        .call("POST", "/v1/shards:batchGet", Some(&p), Some(json!({"items":[{"account":"acct-A1","shard":"s"},{"account":"acct-a1","shard":"s"}]})))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json["results"][0]["shard"].is_string());
    assert_eq!(r.json["results"][1]["error"]["code"], "forbidden");
    let r = h
        .call(
            "PUT",
            "/v1/accounts/acct-B2",
            Some(&p),
            Some(json!({"tier":"retail"})),
        )
        .await;
    assert_eq!(r.code(), "forbidden");
}

async fn tokens_never_appear_in_audit_rows(h: Harness) {
    h.account("acct-1").await;
    h.put("acct-1", "s", b"x").await;
    h.get("acct-1", "s").await;
    h.call(
        "GET",
        "/v1/accounts/acct-1/shards/s",
        Some("sgt_not_a_real_token_but_secret"),
        None,
    )
    .await;
    // The refusal's event is written detached: wait for it, so the check below reads it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while h
        .db
        .count("SELECT COUNT(*) FROM audit_events WHERE action = 'auth'")
        .await
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal was never audited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let rows = h.db.all_bytes("SELECT * FROM audit_events").await;
    assert!(rows.len() > 10);
    for t in [
        &h.tokens.admin,
        &h.tokens.reader,
        &h.tokens.prefixed,
        &"sgt_not_a_real_token_but_secret".to_string(),
    ] {
        for c in &rows {
            assert!(!contains(c, t.as_bytes()), "a token reached the audit log");
            assert!(!contains(
                c,
                shardgate::domain::auth::hash_token(t).as_bytes()
            ));
        }
    }
}

async fn read_with_unwritable_audit_is_refused_and_recovers(h: Harness) {
    h.account("acct-1").await;
    h.put("acct-1", "s", b"audit-guarded-secret").await;
    h.db.deny_audit_inserts().await;
    let r = h.get("acct-1", "s").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable")
    );
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    assert!(r.json.get("shard").is_none());
    assert!(!r.text.contains(&B64.encode(b"audit-guarded-secret")));
    let r = h
        .call(
            "POST",
            "/v1/shards:batchGet",
            Some(h.admin()),
            Some(json!({"items":[{"account":"acct-1","shard":"s"}]})),
        )
        .await;
    assert_eq!(r.code(), "audit_unavailable");
    h.db.allow_audit_inserts().await;
    let r = h.get("acct-1", "s").await;
    assert_eq!(r.status, StatusCode::OK);
    h.verify_audit().await;
}

async fn write_with_unwritable_audit_stores_nothing(h: Harness) {
    h.account("acct-1").await;
    h.put("acct-1", "s", b"v1").await;
    h.db.deny_audit_inserts().await;
    let r = h.put("acct-1", "s", b"v2").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable")
    );
    let r = h
        .call(
            "DELETE",
            "/v1/accounts/acct-1/shards/s",
            Some(h.admin()),
            None,
        )
        .await;
    assert_eq!(r.code(), "audit_unavailable");
    let r = h
        .call("DELETE", "/v1/accounts/acct-1", Some(h.admin()), None)
        .await;
    assert_eq!(r.code(), "audit_unavailable");
    assert_eq!(h.db.count("SELECT COUNT(*) FROM shard_versions").await, 1);
    assert_eq!(h.db.count("SELECT COUNT(*) FROM accounts").await, 1);
    h.db.allow_audit_inserts().await;
    let r = h.put("acct-1", "s", b"v2").await;
    assert_eq!(r.json["version"], 2);
}

async fn batch_get_answers_in_order_with_per_item_errors(h: Harness) {
    h.account("acct-1").await;
    h.put("acct-1", "a", b"batch-a").await;
    h.put("acct-1", "a", b"batch-a2").await;
    h.put("acct-1", "b", b"batch-b").await;
    let r = h
        .call(
            "POST",
            "/v1/shards:batchGet",
            Some(h.admin()),
            Some(json!({"items":[
                {"account":"acct-1","shard":"b"},
                {"account":"acct-1","shard":"a","version":1},
                {"account":"acct-1","shard":"missing"},
                {"account":"..","shard":"a"},
                {"account":"acct-1","shard":"a"},
                {"account":"acct-1","shard":"a","version":9}
            ]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let res = r.json["results"].as_array().unwrap();
    assert_eq!(res.len(), 6);
    assert_eq!(
        B64.decode(res[0]["shard"].as_str().unwrap()).unwrap(),
        b"batch-b"
    );
    assert_eq!(
        B64.decode(res[1]["shard"].as_str().unwrap()).unwrap(),
        b"batch-a"
    );
    assert_eq!(res[2]["error"]["code"], "shard_not_found");
    assert_eq!(res[3]["error"]["code"], "invalid_id");
    assert_eq!(res[4]["version"], 2);
    assert_eq!(res[5]["error"]["code"], "version_not_found");
    assert_eq!(
        h.db.count("SELECT COUNT(*) FROM audit_events WHERE action='shard.batch_get'")
            .await,
        6
    );
    let items: Vec<Value> = (0..101)
        .map(|_| json!({"account":"acct-1","shard":"a"}))
        .collect();
    let r = h
        .call(
            "POST",
            "/v1/shards:batchGet",
            Some(h.admin()),
            Some(json!({ "items": items })),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let reader = h.tokens.reader.clone();
    let r = h
        .call(
            "POST",
            "/v1/shards:batchGet",
            Some(&reader),
            Some(json!({"items":[{"account":"acct-1","shard":"a"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

async fn account_get_counts_shards(h: Harness) {
    h.account("acct-1").await;
    h.put("acct-1", "a", b"1").await;
    h.put("acct-1", "a", b"2").await;
    h.put("acct-1", "b", b"3").await;
    let r = h
        .call("GET", "/v1/accounts/acct-1", Some(h.admin()), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["shard_count"], 2);
    assert_eq!(r.json["versions_on_other_backends"], 0);
    assert_eq!(r.json["tier"], "retail");
    assert_eq!(r.json["backend"], "local");
}

async fn health_ready_and_unknown_routes(h: Harness) {
    let r = h.call("GET", "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    // Without a credential, or with one lacking `metrics`: the status alone, no backend
    // names, breaker states or figures.
    for token in [None, Some(h.tokens.reader.as_str())] {
        let r = h.call("GET", "/readyz", token, None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json, serde_json::json!({"ready": true}), "{}", r.json);
    }
    let r = h
        .call("GET", "/readyz", Some("sgt_not-a-token"), None)
        .await;
    assert_eq!(r.json, serde_json::json!({"ready": true}), "{}", r.json);
    // With `metrics`: the detail.
    let r = h.call("GET", "/readyz", Some(h.admin()), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["ready"], true);
    assert_eq!(r.json["backends"]["local"]["usable"], true);
    assert_eq!(r.json["store"]["ok"], true);
    let r = h.call("GET", "/v2/nothing", Some(h.admin()), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let r = h.call("POST", "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = h.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json["openapi"].as_str().unwrap().starts_with("3."));
    let r = h.call("GET", "/metrics", Some(h.admin()), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text.contains("shardgate_http_requests_total"),
        "{}",
        r.text
    );
    let reader = h.tokens.reader.clone();
    let r = h.call("GET", "/metrics", Some(&reader), None).await;
    assert_eq!(r.code(), "forbidden");
    let r = h.call("GET", "/metrics", None, None).await;
    assert_eq!(r.code(), "unauthenticated");
}

async fn stored_shard_decrypts_with_the_format_md_recipe(h: Harness) {
    // Only the keyring file, the row and a standard AES-GCM library: no shardgate code.
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use aes_gcm::{Aes256Gcm, Nonce};
    h.account("acct-1").await;
    let data = secret(77, 5);
    h.put("acct-1", "s:1", &data).await;
    let cols = h
        .db
        .all_bytes("SELECT key_ref, wrapped_dek, nonce, ciphertext, key_commitment FROM shard_versions WHERE account='acct-1'")
        .await;
    let (key_ref, wrapped, nonce, ct, stored) = (&cols[0], &cols[1], &cols[2], &cols[3], &cols[4]);
    let ring: Value =
        serde_json::from_slice(&std::fs::read(h._dir.path().join("local.keyring")).unwrap())
            .unwrap();
    assert_eq!(ring["id"].as_str().unwrap().as_bytes(), key_ref.as_slice());
    let kek = B64
        .decode(ring["versions"][0]["key"].as_str().unwrap())
        .unwrap();
    let mut aad = b"SGID\x02".to_vec();
    for f in [b"acct-1".as_slice(), b"s:1".as_slice()] {
        aad.extend_from_slice(&(f.len() as u32).to_be_bytes());
        aad.extend_from_slice(f);
    }
    aad.extend_from_slice(&1u64.to_be_bytes());
    let dek = Aes256Gcm::new_from_slice(&kek)
        .unwrap()
        .decrypt(
            Nonce::from_slice(&wrapped[..12]),
            Payload {
                msg: &wrapped[12..],
                aad: &aad,
            },
        )
        .unwrap();
    // Format 2: the key commitment (FORMAT.md §3a) of that data key is the stored one.
    {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&dek).unwrap();
        mac.update(b"shardgate commit key");
        let commit_key = mac.finalize().into_bytes();
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&commit_key).unwrap();
        mac.update(&aad);
        assert_eq!(mac.finalize().into_bytes().as_slice(), stored.as_slice());
    }
    let plain = Aes256Gcm::new_from_slice(&dek)
        .unwrap()
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .unwrap();
    assert_eq!(plain, data);
}

async fn every_audit_event_verifies(h: Harness) {
    h.account("acct-1").await;
    for i in 0..5 {
        h.put("acct-1", "s", &[i + 1; 8]).await;
        h.get("acct-1", "s").await;
    }
    h.call(
        "DELETE",
        "/v1/accounts/acct-1/shards/s",
        Some(h.admin()),
        None,
    )
    .await;
    let report = h.verify_audit().await;
    assert_eq!(report.events, 12);
    assert_eq!(report.chains, 1);
}

#[test]
fn openapi_document_lists_every_route() {
    let api = OpenApi::load();
    let paths: Vec<&String> = api.doc["paths"].as_object().unwrap().keys().collect();
    for p in [
        "/v1/accounts/{account}",
        "/v1/accounts/{account}/shards",
        "/v1/accounts/{account}/shards/{shard}",
        "/v1/accounts/{account}/shards/{shard}/versions/{version}",
        "/v1/shards:batchGet",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(
            paths.iter().any(|x| x.as_str() == p),
            "{p} missing from {paths:?}"
        );
    }
    assert_eq!(
        api.doc["paths"]["/v1/accounts/{account}/shards/{shard}"]["put"]["responses"]["409"]
            ["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
}
