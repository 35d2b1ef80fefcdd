//! Test support shared by the gateway's integration tests: real stores, planted secrets,
//! log directories, tokens.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub(crate) mod cli;
pub(crate) mod cluster;
pub(crate) mod db;
pub(crate) mod moto;
pub(crate) mod openapi;
pub(crate) mod served;
// Generated (the script's output verbatim, which the audit_vectors test checks): not formatted.
#[rustfmt::skip]
#[allow(unreachable_pub)]
pub mod vectors;

use shardgate::app::config::{AuditConfig, BackendConfig, Config, Limits, Timeouts, TokenConfig};
use shardgate::domain::auth::hash_token;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The one strictness/skip rule of every crate's tests (`testkit/`): a missing component
/// fails the test in strict mode (CI, `SHARDGATE_TEST_STRICT=1`), otherwise the test skips
/// loudly and the skip is counted by scripts/test.sh.
/// A non-empty environment variable the test needs, or `None` after a counted skip.
pub(crate) fn require_env(name: &str) -> Option<String> {
    shardgate_testkit::require_env(name)
}

/// The test cannot run because `why`: fails in strict mode, otherwise a loud, counted skip.
pub(crate) fn skip(why: &str) {
    shardgate_testkit::skip(why)
}

/// Record a secret the suite plants, so the test script can prove no log holds it.
pub(crate) fn plant(secret: &str) {
    if let Ok(dir) = std::env::var("SHARDGATE_TEST_LOG_DIR") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(&dir).join("planted-secrets.txt"))
            .unwrap();
        writeln!(f, "{secret}").unwrap();
    }
}

/// A directory for a test's logs: under `$SHARDGATE_TEST_LOG_DIR` when set (scanned for
/// planted secrets at the end of the run), else a temp dir that is kept.
pub(crate) fn log_dir(test: &str) -> PathBuf {
    let base = std::env::var("SHARDGATE_TEST_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("shardgate-test-logs"));
    let dir = base.join(format!("{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A file in a test's log directory for a child process's output (so the run's secret scan
/// reads everything a child gateway logged).
pub(crate) fn child_log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).unwrap()
}

/// Keep a finished child's output in the log dir (`NAME.stdout.log`, `NAME.stderr.log`).
pub(crate) fn keep_output(dir: &Path, name: &str, out: &std::process::Output) {
    std::fs::write(dir.join(format!("{name}.stdout.log")), &out.stdout).unwrap();
    std::fs::write(dir.join(format!("{name}.stderr.log")), &out.stderr).unwrap();
}

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    Sqlite,
    Postgres,
}

/// A fresh PostgreSQL database (its URL), or `None` when skipped outside CI.
pub(crate) async fn fresh_pg_url() -> Option<String> {
    use sqlx::Connection;
    let base = require_env("SHARDGATE_TEST_DATABASE_URL")?;
    let (prefix, dbname) = base.rsplit_once('/').unwrap();
    let dbname = dbname.split('?').next().unwrap();
    let name = format!(
        "{dbname}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .unwrap();
    Some(format!("{prefix}/{name}"))
}

/// The store URL for a kind (`None` when PostgreSQL is skipped).
pub(crate) async fn store_url(kind: StoreKind, dir: &Path) -> Option<String> {
    match kind {
        StoreKind::Sqlite => Some(shardgate::app::config::sqlite_url(&dir.join("test.db"))),
        StoreKind::Postgres => fresh_pg_url().await,
    }
}

/// Tokens every test config carries.
pub(crate) struct Tokens {
    /// Every scope.
    pub admin: String,
    /// shards:read only.
    pub reader: String,
    /// Every scope but `admin`, only accounts starting with `acct-A`.
    pub prefixed: String,
}

impl Tokens {
    pub(crate) fn new() -> Self {
        let t = Self {
            admin: shardgate_token(),
            reader: shardgate_token(),
            prefixed: shardgate_token(),
        };
        plant(&t.admin);
        plant(&t.reader);
        plant(&t.prefixed);
        t
    }

    pub(crate) fn config(&self) -> Vec<TokenConfig> {
        vec![
            TokenConfig {
                name: "admin".into(),
                sha256: hash_token(&self.admin),
                scopes: vec!["*".into()],
                account_prefix: None,
                expires_at: None,
            },
            TokenConfig {
                name: "reader".into(),
                sha256: hash_token(&self.reader),
                scopes: vec!["shards:read".into()],
                account_prefix: None,
                expires_at: None,
            },
            TokenConfig {
                name: "prefixed".into(),
                sha256: hash_token(&self.prefixed),
                // Every scope but admin, which never goes with a prefix (the admin rule).
                scopes: [
                    "accounts:read",
                    "accounts:write",
                    "accounts:delete",
                    "shards:read",
                    "shards:write",
                    "shards:delete",
                    "metrics",
                ]
                .map(String::from)
                .to_vec(),
                account_prefix: Some("acct-A".into()),
                expires_at: None,
            },
        ]
    }
}

fn shardgate_token() -> String {
    use secrecy::ExposeSecret;
    shardgate::domain::auth::generate_token()
        .expose_secret()
        .to_string()
}

/// A full config in `dir` for a store URL: one `local` backend, tiers `retail` and
/// `institutional`, the test tokens.
pub(crate) fn config(dir: &Path, store_url: &str, tokens: &Tokens) -> Config {
    let mut backends = BTreeMap::new();
    backends.insert("local".to_string(), local_backend(dir, "local"));
    let tiers = [("retail", "local"), ("institutional", "local")]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        store: shardgate::app::config::StoreConfig {
            url: Some(store_url.to_string()),
            max_connections: 8,
            ..shardgate::app::config::StoreConfig::default()
        },
        backends,
        tiers,
        policy: shardgate::app::config::PolicyConfig::default(),
        migration: shardgate::app::config::MigrationConfig::default(),
        breaker: shardgate::domain::breaker::BreakerConfig::default(),
        idempotency: shardgate::app::config::IdempotencyConfig::default(),
        log: shardgate::app::config::LogConfig::default(),
        retention: shardgate::app::config::RetentionConfig::default(),
        auth: shardgate::app::config::AuthConfig::default(),
        keys: shardgate::domain::keys::KeysConfig::default(),
        tokens: tokens.config(),
        limits: Limits::default(),
        timeouts: Timeouts::default(),
        audit: AuditConfig {
            key_file: Some(dir.join("audit.key")),
            create_key: true,
            ..AuditConfig::default()
        },
        admin_token_file: None,
        tls: None,
        telemetry: shardgate::app::config::TelemetryConfig::default(),
        approvals: shardgate::service::approvals::ApprovalsConfig::default(),
    }
}

/// Write a config as TOML (for child-process tests).
pub(crate) fn write_config(cfg: &Config, path: &Path) {
    std::fs::write(path, toml::to_string(cfg).unwrap()).unwrap();
}

/// Path of the built `shardgate` binary.
pub(crate) fn shardgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shardgate"))
}

/// A KMS client on `endpoint` (moto), region us-east-1, credentials from the environment.
pub(crate) async fn kms_client(endpoint: &str) -> aws_sdk_kms::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_kms::Client::new(&conf)
}

/// A new symmetric key on `endpoint`; its ARN.
pub(crate) async fn create_kms_key(endpoint: &str) -> String {
    let key = kms_client(endpoint)
        .await
        .create_key()
        .send()
        .await
        .unwrap();
    key.key_metadata().unwrap().arn().unwrap().to_string()
}

/// An `aws-kms` backend on `endpoint` (moto) with a new key of its own; callers tune the rest.
pub(crate) async fn moto_kms(endpoint: &str) -> shardgate_backends::aws_kms::KmsConfig {
    let mut kms =
        shardgate_backends::aws_kms::KmsConfig::new(create_kms_key(endpoint).await, "us-east-1");
    kms.endpoint_url = Some(endpoint.to_string());
    kms
}

/// An `aws-kms` backend with a new key created on `endpoint` (moto) directly, whose calls go
/// through `via` (a fault proxy in front of moto, which so sees only the gateway's calls).
pub(crate) async fn moto_kms_via(
    endpoint: &str,
    via: String,
) -> shardgate_backends::aws_kms::KmsConfig {
    let mut kms = moto_kms(endpoint).await;
    kms.endpoint_url = Some(via);
    kms
}

/// A `local` backend whose keyring `NAME.keyring` in `dir` is created on first start.
pub(crate) fn local_backend(dir: &Path, name: &str) -> BackendConfig {
    BackendConfig::Local {
        key_file: dir.join(format!("{name}.keyring")),
        reload_interval_ms: 0,
        create: true,
    }
}

/// One request to the in-process app with a bearer token; the status and the JSON body
/// (`Null` when the body is not JSON).
pub(crate) async fn call(
    app: &axum::Router,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (axum::http::StatusCode, serde_json::Value) {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        ))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// `both_stores!(test_a, test_b)`: each `async fn test_a(kind: StoreKind)` of the calling file
/// runs once on SQLite and once on PostgreSQL (`#[macro_use] mod common;`).
#[allow(unused_macros)]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::StoreKind::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::StoreKind::Postgres).await;
                }
            )*
        }
    };
}

/// One `/metrics` scrape of the in-process app (Prometheus text).
pub(crate) async fn scrape(app: &axum::Router, token: &str) -> String {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .uri("/metrics")
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}
