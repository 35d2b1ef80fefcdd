//! An in-process gateway (`shardgate::router`, PostgreSQL store) on a pkcs11 backend over a
//! fresh SoftHSM2 token, shared by the HTTP-level HSM tests. In-process so that test-only
//! hooks (`fault-injection`) reach the live backend; the process still holds ONE PKCS#11
//! context: the gateway's.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::http::{header, Request};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use shardgate::app::config::{Config, Sources};
use shardgate::AppState;
use shardgate_backends::pkcs11::Pkcs11Backend;
use shardgate_softhsm_tests::{module, TestToken};
use sqlx::Connection;
use tower::ServiceExt;

pub(crate) const HSM_TIER: &str = "[tiers]\ninstitutional = \"hsm\"\n";

pub(crate) const HELPER: &str = env!("CARGO_BIN_EXE_sg-softhsm-helper");
pub(crate) const KEK: [u8; 32] = [0x5Au8; 32];

pub(crate) async fn fresh_pg() -> Option<String> {
    let base = shardgate_testkit::require_env("SHARDGATE_TEST_DATABASE_URL")?;
    let (prefix, db) = base.rsplit_once('/').unwrap();
    let name = format!(
        "{}_{}",
        db.split('?').next().unwrap(),
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .unwrap();
    Some(format!("{prefix}/{name}"))
}

pub(crate) fn moto_endpoint(test: &str) -> Option<String> {
    let v = std::env::var("SHARDGATE_TEST_MOTO_ENDPOINT").unwrap_or_default();
    if v.trim().is_empty() {
        shardgate_testkit::skip(&format!("{test}: SHARDGATE_TEST_MOTO_ENDPOINT is not set"));
        return None;
    }
    Some(v.trim().to_string())
}

/// A gateway (in this process) on a fresh token whose KEK `kek/v1` has known bytes, so the
/// token can be re-created with the same key from outside.
pub(crate) struct Gw {
    pub app: axum::Router,
    pub state: AppState,
    pub token: TestToken,
    pub api_token: String,
}

impl Gw {
    /// `extra` is appended to the `[backends.hsm]` table (pool size, timeouts, cloudhsm...);
    /// `more` is appended to the file (other backends, tiers).
    pub(crate) async fn start(test: &str, extra: &str, more: &str) -> Option<Gw> {
        let module = module(test)?;
        let pg = fresh_pg().await?;
        let token = TestToken::new(&module, "sg-faults");
        token.create_key(HELPER, "kek/v1", &KEK, false, true);
        let hsm = token.config("kek");
        let dir = token.dir.path();
        let api_token = format!("sgt_faults_{}", uuid::Uuid::new_v4().simple());
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(api_token.as_bytes()));
        let config = dir.join("shardgate.toml");
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:0"
data_dir = "{dir}"
[store]
url = "{pg}"
[backends.hsm]
kind = "pkcs11"
module = "{module}"
token_label = "{label}"
pin_file = "{pin_file}"
kek_label = "kek"
{extra}
{more}
[[tokens]]
name = "faults-test"
sha256 = "{hash}"
scopes = ["*"]
[audit]
key_file = "{dir}/audit.key"
create_key = true
"#,
                dir = dir.display(),
                module = module.display(),
                label = token.label,
                pin_file = hsm.pin_file.as_ref().unwrap().display(),
            ),
        )
        .unwrap();
        let cfg = Config::load(&Sources {
            file: Some(config),
            ..Sources::default()
        })
        .unwrap();
        let (state, _) = AppState::build(&cfg).await.unwrap();
        Some(Gw {
            app: shardgate::router(state.clone()),
            state,
            token,
            api_token,
        })
    }

    pub(crate) fn hsm(&self) -> &Pkcs11Backend {
        self.state
            .backend("hsm")
            .unwrap()
            .as_any()
            .and_then(|a| a.downcast_ref::<Pkcs11Backend>())
            .expect("the hsm backend is a Pkcs11Backend")
    }

    pub(crate) async fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, axum::http::HeaderMap, Vec<u8>) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.api_token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, bytes.to_vec())
    }

    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (s, _, b) = self.call_raw(method, path, body).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// Create `acct` on the hsm tier and store `n` shards; returns their bytes.
    pub(crate) async fn load(&self, acct: &str, n: usize) -> Vec<Vec<u8>> {
        let (s, v) = self
            .call(
                "PUT",
                &format!("/v1/accounts/{acct}"),
                Some(json!({"tier": "institutional"})),
            )
            .await;
        assert_eq!((s, v["backend"].as_str()), (201, Some("hsm")), "{v}");
        let mut out = Vec::new();
        for i in 0..n {
            let data: Vec<u8> = (0..40u8)
                .map(|j| j.wrapping_mul(7) ^ u8::try_from(i % 256).unwrap())
                .collect();
            let (s, v) = self
                .call(
                    "PUT",
                    &format!("/v1/accounts/{acct}/shards/s{i}"),
                    Some(json!({"shard": B64.encode(&data)})),
                )
                .await;
            assert_eq!(s, 201, "{v}");
            out.push(data);
        }
        out
    }

    pub(crate) async fn get(&self, acct: &str, i: usize) -> (u16, Value) {
        self.call("GET", &format!("/v1/accounts/{acct}/shards/s{i}"), None)
            .await
    }

    pub(crate) async fn metrics(&self) -> String {
        let (s, _, b) = self.call_raw("GET", "/metrics", None).await;
        assert_eq!(s, 200);
        String::from_utf8(b).unwrap()
    }
}
