//! Child-process tests of the `shardgate` binary: the embedded default, crash durability of
//! read audit events, `audit verify` against database-level tampering, key rotation through
//! the CLI, `token create`, start-up refusals and graceful shutdown.
//!
//! Every gateway runs as a real child process on a port the kernel picks (`--listen
//! 127.0.0.1:0`, address read back from its stdout); its stderr and stdout go to files under
//! `common::log_dir(..)`, which the test script scans for the secrets planted here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::cli::{describe, run_to_end, shardgate_command, wait_child, CliRun};
use common::db::Db;
use common::{StoreKind, Tokens};
use rand::RngCore;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a gateway may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a one-shot CLI command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A serving `shardgate` child. Dropping it kills it (SIGKILL) and reaps it.
struct Gateway {
    child: Child,
    /// `http://127.0.0.1:PORT`
    base: String,
    addr: std::net::SocketAddr,
    /// Stdout lines printed before the listening line.
    banner: Vec<String>,
    stderr_path: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Start `shardgate <args>` and wait for `shardgate listening on http://ADDR`.
    fn start(args: &[&str], cwd: Option<&Path>, logs: &Path, name: &str) -> Gateway {
        Gateway::start_env(args, cwd, logs, name, &[])
    }

    /// [`Gateway::start`] with extra environment variables.
    fn start_env(
        args: &[&str],
        cwd: Option<&Path>,
        logs: &Path,
        name: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let stderr_path = logs.join(format!("{name}.stderr.log"));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = shardgate_command(args);
        cmd.envs(env.iter().copied());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut gw = Gateway {
            child,
            base: String::new(),
            addr: "127.0.0.1:1".parse().unwrap(),
            banner: Vec::new(),
            stderr_path,
        };
        // Keep draining stdout to a log file for the child's whole life.
        let (tx, rx) = mpsc::channel::<String>();
        let stdout_log = logs.join(format!("{name}.stdout.log"));
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(stdout_log).unwrap();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("shardgate listening on http://") {
                        gw.addr = addr.trim().parse().unwrap();
                        gw.base = format!("http://{}", gw.addr);
                        break;
                    }
                    gw.banner.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "{name}: no listening line within {START_TIMEOUT:?}; stderr:\n{}",
                    gw.stderr()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = gw.wait_exit(Duration::from_secs(5));
                    panic!(
                        "{name}: exited ({status:?}) before listening; stderr:\n{}",
                        gw.stderr()
                    )
                }
            }
        }
        assert_ne!(
            gw.addr.port(),
            0,
            "the printed address must carry the real port"
        );
        gw
    }

    /// Start `shardgate serve --config FILE`.
    fn serve(config: &Path, logs: &Path, name: &str) -> Gateway {
        Gateway::start(
            &["serve", "--config", config.to_str().unwrap()],
            None,
            logs,
            name,
        )
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM failed");
    }

    fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Wait for the child to exit; `None` if it is still running after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }

    fn api(&self) -> Api {
        Api {
            client: reqwest::Client::new(),
            base: self.base.clone(),
        }
    }
}

/// Run `shardgate <args>` to completion (killed after [`CLI_TIMEOUT`]). Its stderr always
/// goes to the log dir; its stdout too unless `secret_stdout` (e.g. `token create`).
fn cli(args: &[&str], logs: &Path, name: &str, secret_stdout: bool) -> CliRun {
    let run = run_to_end(shardgate_command(args), CLI_TIMEOUT, &describe(args));
    std::fs::write(logs.join(format!("{name}.stderr.log")), &run.stderr).unwrap();
    if !secret_stdout {
        std::fs::write(logs.join(format!("{name}.stdout.log")), &run.stdout).unwrap();
    }
    run
}

/// `shardgate audit verify --config F`.
fn audit_verify(config: &Path, logs: &Path, name: &str) -> CliRun {
    cli(
        &["audit", "verify", "--config", config.to_str().unwrap()],
        logs,
        name,
        false,
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    /// The Rust client as `token` (normal API use; no retries, so a refusal fails the test).
    fn client(&self, token: &str) -> shardgate_client::Client {
        shardgate_client::Client::builder(&self.base)
            .bearer_token(secrecy::SecretString::from(token.to_string()))
            .retry(shardgate_client::RetryPolicy::none())
            .build()
            .unwrap()
    }

    async fn put_account(&self, token: &str, account: &str) {
        let put = self.client(token).put_account(account, "retail").await;
        put.unwrap_or_else(|e| panic!("PUT account {account}: {e}"));
    }

    /// PUT a shard through the client.
    async fn put_shard(
        &self,
        token: &str,
        account: &str,
        shard: &str,
        bytes: &[u8],
    ) -> Result<shardgate_client::PutShardResponse, shardgate_client::Error> {
        let bytes = shardgate_client::ShardBytes::new(bytes.to_vec());
        let opts = shardgate_client::PutOptions::default();
        self.client(token)
            .put_shard(account, shard, &bytes, opts)
            .await
    }

    /// GET a shard through the client.
    async fn get_shard(
        &self,
        token: &str,
        account: &str,
        shard: &str,
    ) -> Result<shardgate_client::Shard, shardgate_client::Error> {
        self.client(token).get_shard(account, shard, None).await
    }

    /// PUT a shard that must be stored; answers its version.
    async fn must_put(&self, token: &str, account: &str, shard: &str, bytes: &[u8]) -> i64 {
        let put = self.put_shard(token, account, shard, bytes).await;
        let put = put.unwrap_or_else(|e| panic!("PUT {account}/{shard}: {e}"));
        assert_eq!(put.backend, "local", "{put:?}");
        put.version
    }

    /// GET a shard that must come back equal to `expected`.
    async fn must_get(&self, token: &str, account: &str, shard: &str, expected: &[u8]) {
        let got = self.get_shard(token, account, shard).await;
        let got = got.unwrap_or_else(|e| panic!("GET {account}/{shard}: {e}"));
        // Never print shard bytes: lengths only (ShardBytes' Debug shows only the length).
        assert!(
            got.bytes.expose() == expected,
            "GET {account}/{shard} answered different bytes ({} vs {} bytes put)",
            got.bytes.len(),
            expected.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets, configs, stores
// ---------------------------------------------------------------------------------------------

/// A random shard, planted (base64) for the log scan.
fn random_shard(len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    rand::rngs::OsRng.fill_bytes(&mut b);
    common::plant(&B64.encode(&b));
    b
}

/// A printable shard, planted raw and as base64.
fn printable_shard() -> Vec<u8> {
    let s = format!("plaintext-shard-{}", uuid::Uuid::new_v4().simple());
    common::plant(&s);
    common::plant(&B64.encode(s.as_bytes()));
    s.into_bytes()
}

/// Plant the key material of a data dir: the audit key and every keyring version's key.
fn plant_key_files(audit_key: &Path, keyring: &Path) {
    if let Ok(t) = std::fs::read_to_string(audit_key) {
        common::plant(t.trim());
    }
    for k in keyring_keys(keyring) {
        common::plant(&k);
    }
}

/// The base64 keys of a keyring file.
fn keyring_keys(keyring: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(keyring) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&text).unwrap();
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ver| ver["key"].as_str().map(String::from))
        .collect()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A test environment: temp dir, store URL, tokens, config file.
struct Env {
    dir: tempfile::TempDir,
    url: String,
    tokens: Tokens,
    cfg: shardgate::app::config::Config,
    config_path: PathBuf,
}

impl Env {
    /// `None` when PostgreSQL is skipped (outside CI without a database URL).
    async fn new(kind: StoreKind) -> Option<Env> {
        let dir = tempfile::tempdir().unwrap();
        let url = common::store_url(kind, dir.path()).await?;
        let tokens = Tokens::new();
        let cfg = common::config(dir.path(), &url, &tokens);
        let config_path = dir.path().join("shardgate.toml");
        common::write_config(&cfg, &config_path);
        Some(Env {
            dir,
            url,
            tokens,
            cfg,
            config_path,
        })
    }

    fn rewrite_config(&self) {
        common::write_config(&self.cfg, &self.config_path);
    }

    fn keyring(&self) -> PathBuf {
        self.dir.path().join("local.keyring")
    }

    fn audit_key(&self) -> PathBuf {
        self.dir.path().join("audit.key")
    }

    fn plant_keys(&self) {
        plant_key_files(&self.audit_key(), &self.keyring());
    }

    fn config_arg(&self) -> &str {
        self.config_path.to_str().unwrap()
    }
}

/// Two `#[tokio::test]`s, one per store, running one async body.
macro_rules! store_tests {
    ($(#[$attr:meta])* $body:ident => $sqlite:ident, $postgres:ident) => {
        #[tokio::test]
        $(#[$attr])*
        async fn $sqlite() {
            $body(StoreKind::Sqlite).await;
        }

        #[tokio::test]
        $(#[$attr])*
        async fn $postgres() {
            $body(StoreKind::Postgres).await;
        }
    };
}

// ---------------------------------------------------------------------------------------------
// 1. Embedded default
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn embedded_default_starts_from_empty_dir_and_serves_with_printed_token() {
    let logs = common::log_dir("embedded_default");
    let root = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let args = [
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    let gw = Gateway::start(&args, Some(cwd.path()), &logs, "first");
    assert_eq!(gw.addr.ip().to_string(), "127.0.0.1");

    // The printed token path is the data dir's admin.token.
    let line = gw
        .banner
        .iter()
        .find(|l| l.starts_with("admin token "))
        .unwrap_or_else(|| panic!("no admin token line in {:?}", gw.banner));
    let printed = line
        .strip_prefix("admin token (new) in ")
        .unwrap_or_else(|| panic!("first start must create the token: {line:?}"));
    let token_path = PathBuf::from(printed);
    assert_eq!(
        std::fs::canonicalize(&token_path).unwrap(),
        std::fs::canonicalize(data.join("admin.token")).unwrap()
    );
    let keyring = data.join("local.keyring");
    let audit_key = data.join("audit.key");
    plant_key_files(&audit_key, &keyring);
    for f in [&token_path, &keyring, &audit_key] {
        assert_eq!(mode(f), 0o600, "{} must be mode 0600", f.display());
    }
    assert_eq!(mode(&data) & 0o077, 0, "the data dir must be private");
    let text = std::fs::read_to_string(&token_path).unwrap();
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "the token file must be one line"
    );
    let token = text.trim().to_string();
    common::plant(&token);
    assert!(!token.is_empty() && !token.contains(char::is_whitespace));
    // Nothing is written to the working directory when --data-dir is given.
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "serve wrote into its working directory"
    );

    let api = gw.api();
    // No token, a wrong token: 401 unauthenticated.
    let (st, body) = api
        .call(reqwest::Method::GET, "/v1/accounts/acct-1", None, None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    let (st, body) = api
        .call(
            reqwest::Method::GET,
            "/v1/accounts/acct-1",
            Some("sg_not-a-real-token"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");

    // The printed token works: account, shard, read back identical.
    api.put_account(&token, "acct-1").await;
    let shard = random_shard(48);
    assert_eq!(api.must_put(&token, "acct-1", "s1", &shard).await, 1);
    api.must_get(&token, "acct-1", "s1", &shard).await;

    // A restart reuses the same token and data.
    drop(gw);
    let gw = Gateway::start(&args, Some(cwd.path()), &logs, "second");
    assert!(
        gw.banner
            .iter()
            .any(|l| l.starts_with("admin token (existing) in ")),
        "second start must reuse the token: {:?}",
        gw.banner
    );
    assert_eq!(std::fs::read_to_string(&token_path).unwrap(), text);
    gw.api().must_get(&token, "acct-1", "s1", &shard).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Read events survive SIGKILL
// ---------------------------------------------------------------------------------------------

async fn sigkill_after_n_gets(kind: StoreKind) {
    const N: i64 = 40;
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let logs = common::log_dir(&format!("sigkill_after_gets_{kind:?}"));
    let mut gw = Gateway::serve(&env.config_path, &logs, "gateway");
    env.plant_keys();
    let api = gw.api();
    let admin = &env.tokens.admin;
    api.put_account(admin, "acct-k").await;
    let shard = random_shard(64);
    api.must_put(admin, "acct-k", "s1", &shard).await;
    for _ in 0..N {
        api.must_get(admin, "acct-k", "s1", &shard).await;
    }
    // No grace: the process dies right after the last answer.
    gw.sigkill();

    let db = Db::connect(&env.url).await;
    let reads = db
        .count(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'shard.get' AND outcome = 'ok' \
             AND account = 'acct-k' AND shard = 's1'",
        )
        .await;
    assert_eq!(
        reads, N,
        "every answered read must have its audit event durably recorded"
    );
    // The killed process's chain is intact.
    let v = audit_verify(&env.config_path, &logs, "verify");
    assert_eq!(v.code(), Some(0), "{}\n{}", v.stdout, v.stderr);
    assert!(
        v.stdout.contains(&format!("{} event(s)", N + 2)),
        "{}",
        v.stdout
    );
}

store_tests!(sigkill_after_n_gets =>
    sigkill_after_n_gets_keeps_every_read_event_sqlite,
    sigkill_after_n_gets_keeps_every_read_event_postgres);

// ---------------------------------------------------------------------------------------------
// 3. audit verify against database-level tampering
// ---------------------------------------------------------------------------------------------

/// Six events through a child gateway (account put, 3 shard puts, 2 gets), stopped with
/// SIGTERM; `audit verify` passes. Answers the env, a db handle and the chain id.
async fn audited_store(kind: StoreKind, logs: &Path) -> Option<(Env, Db, String)> {
    let env = Env::new(kind).await?;
    let mut gw = Gateway::serve(&env.config_path, logs, "gateway");
    env.plant_keys();
    let api = gw.api();
    let admin = &env.tokens.admin;
    api.put_account(admin, "acct-audit").await;
    let shards: Vec<Vec<u8>> = (0..3).map(|_| random_shard(32)).collect();
    for (i, s) in shards.iter().enumerate() {
        api.must_put(admin, "acct-audit", &format!("s{}", i + 1), s)
            .await;
    }
    api.must_get(admin, "acct-audit", "s1", &shards[0]).await;
    api.must_get(admin, "acct-audit", "s2", &shards[1]).await;
    gw.sigterm();
    let st = gw.wait_exit(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "gateway exit: {st:?}");
    drop(gw);

    let db = Db::connect(&env.url).await;
    let actions: Vec<String> = db
        .all_bytes("SELECT action FROM audit_events ORDER BY seq")
        .await
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "account.put",
            "shard.put",
            "shard.put",
            "shard.put",
            "shard.get",
            "shard.get"
        ],
        "events in request order, seq 1..6"
    );
    let seqs = db
        .count("SELECT COUNT(*) FROM audit_events WHERE seq BETWEEN 1 AND 6")
        .await;
    assert_eq!(seqs, 6);
    let chains = db
        .all_bytes("SELECT DISTINCT chain_id FROM audit_events")
        .await;
    assert_eq!(chains.len(), 1, "one gateway process, one chain");
    let chain = String::from_utf8(chains[0].clone()).unwrap();

    let v = audit_verify(&env.config_path, logs, "verify-clean");
    assert_eq!(v.code(), Some(0), "{}\n{}", v.stdout, v.stderr);
    assert!(
        v.stdout
            .starts_with("audit ok: 1 chain(s), 6 event(s) verified"),
        "{}",
        v.stdout
    );
    Some((env, db, chain))
}

/// `audit verify` must exit 2 naming `<chain>:<seq>`.
fn assert_broken_at(env: &Env, logs: &Path, name: &str, chain: &str, seq: i64) {
    let v = audit_verify(&env.config_path, logs, name);
    assert_eq!(
        v.code(),
        Some(2),
        "{name}: audit verify must fail; stdout: {} stderr: {}",
        v.stdout,
        v.stderr
    );
    let expected = format!("AUDIT BROKEN: audit chain broken at event {chain}:{seq}: ");
    assert!(
        v.stdout.starts_with(&expected),
        "{name}: expected {expected:?}, got {:?}",
        v.stdout
    );
}

fn random_tag_sql(db: &Db) -> &'static str {
    if db.is_pg() {
        "decode(md5(random()::text) || md5(random()::text), 'hex')"
    } else {
        "randomblob(32)"
    }
}

/// Insert a forged `shard.get` at `seq`, copying the shape of the event at `from_seq` and
/// chaining it to that event's tag (what someone with database access can read), with a
/// tag they cannot compute.
async fn insert_forged(db: &Db, seq: i64, from_seq: i64, prev_tag_sql: &str) {
    let n = db
        .exec(&format!(
            "INSERT INTO audit_events (chain_id, seq, ts_ms, request_id, actor, action, account, \
             shard, version, backend, outcome, detail, prev_tag, tag) \
             SELECT chain_id, {seq}, ts_ms + 1, 'forged-request', 'admin', 'shard.get', account, \
             's1', 1, 'local', 'ok', '', {prev_tag_sql}, {} FROM audit_events WHERE seq = {from_seq}",
            random_tag_sql(db)
        ))
        .await;
    assert_eq!(n, 1);
}

async fn audit_verify_passes(kind: StoreKind) {
    let logs = common::log_dir(&format!("audit_verify_passes_{kind:?}"));
    let Some((env, db, _)) = audited_store(kind, &logs).await else {
        return;
    };
    // A second process appends its own chain; both verify.
    let gw = Gateway::serve(&env.config_path, &logs, "gateway-2");
    let got = gw
        .api()
        .get_shard(&env.tokens.admin, "acct-audit", "s3")
        .await
        .unwrap();
    assert!(!got.bytes.is_empty());
    drop(gw);
    assert_eq!(
        db.count("SELECT COUNT(DISTINCT chain_id) FROM audit_events")
            .await,
        2
    );
    let v = audit_verify(&env.config_path, &logs, "verify-two-chains");
    assert_eq!(v.code(), Some(0), "{}\n{}", v.stdout, v.stderr);
    assert!(
        v.stdout
            .starts_with("audit ok: 2 chain(s), 7 event(s) verified"),
        "{}",
        v.stdout
    );
}

store_tests!(audit_verify_passes =>
    audit_verify_passes_untampered_log_sqlite,
    audit_verify_passes_untampered_log_postgres);

async fn audit_verify_detects_edit(kind: StoreKind) {
    let logs = common::log_dir(&format!("audit_verify_edit_{kind:?}"));
    let Some((env, db, chain)) = audited_store(kind, &logs).await else {
        return;
    };
    // Outcome of seq 3 (a shard.put) rewritten.
    assert_eq!(
        db.exec("UPDATE audit_events SET outcome = 'forbidden' WHERE seq = 3")
            .await,
        1
    );
    assert_broken_at(&env, &logs, "verify-outcome", &chain, 3);
    // Undone, the log verifies again: the failure was the edit.
    db.exec("UPDATE audit_events SET outcome = 'ok' WHERE seq = 3")
        .await;
    let v = audit_verify(&env.config_path, &logs, "verify-restored");
    assert_eq!(v.code(), Some(0), "{}\n{}", v.stdout, v.stderr);
    // The account of seq 3 rewritten.
    db.exec("UPDATE audit_events SET account = 'acct-other' WHERE seq = 3")
        .await;
    assert_broken_at(&env, &logs, "verify-account", &chain, 3);
    db.exec("UPDATE audit_events SET account = 'acct-audit' WHERE seq = 3")
        .await;
    // A timestamp of seq 5 moved by one millisecond.
    db.exec("UPDATE audit_events SET ts_ms = ts_ms + 1 WHERE seq = 5")
        .await;
    assert_broken_at(&env, &logs, "verify-ts", &chain, 5);
}

store_tests!(audit_verify_detects_edit =>
    audit_verify_detects_edit_sqlite,
    audit_verify_detects_edit_postgres);

async fn audit_verify_detects_delete(kind: StoreKind) {
    let logs = common::log_dir(&format!("audit_verify_delete_{kind:?}"));
    let Some((env, db, chain)) = audited_store(kind, &logs).await else {
        return;
    };
    db.bypass_audit_guard().await;
    assert_eq!(db.exec("DELETE FROM audit_events WHERE seq = 3").await, 1);
    assert_broken_at(&env, &logs, "verify-gap", &chain, 3);
    // Closing the gap (renumbering the rest down) does not hide it either.
    db.exec("UPDATE audit_events SET seq = seq + 1000 WHERE seq > 3")
        .await;
    db.exec("UPDATE audit_events SET seq = seq - 1001 WHERE seq > 1000")
        .await;
    assert_eq!(
        db.count("SELECT MAX(seq) FROM audit_events").await,
        5,
        "renumbered 1..5"
    );
    assert_broken_at(&env, &logs, "verify-renumbered", &chain, 3);
}

store_tests!(audit_verify_detects_delete =>
    audit_verify_detects_delete_sqlite,
    audit_verify_detects_delete_postgres);

async fn audit_verify_detects_insert(kind: StoreKind) {
    let logs = common::log_dir(&format!("audit_verify_insert_{kind:?}"));
    let Some((env, db, chain)) = audited_store(kind, &logs).await else {
        return;
    };
    // Appended after the head, chained to the real head's tag.
    insert_forged(&db, 7, 6, "tag").await;
    assert_broken_at(&env, &logs, "verify-appended", &chain, 7);
    db.bypass_audit_guard().await;
    db.exec("DELETE FROM audit_events WHERE seq = 7").await;
    let v = audit_verify(&env.config_path, &logs, "verify-restored");
    assert_eq!(v.code(), Some(0), "{}\n{}", v.stdout, v.stderr);

    // Inserted in the middle: seq 3.. shifted up, the forgery at 3 chained to seq 2.
    db.exec("UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 3")
        .await;
    db.exec("UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1000")
        .await;
    insert_forged(&db, 3, 2, "tag").await;
    assert_eq!(db.count("SELECT COUNT(*) FROM audit_events").await, 7);
    assert_broken_at(&env, &logs, "verify-inserted", &chain, 3);
}

store_tests!(audit_verify_detects_insert =>
    audit_verify_detects_insert_sqlite,
    audit_verify_detects_insert_postgres);

async fn audit_verify_detects_reorder(kind: StoreKind) {
    let logs = common::log_dir(&format!("audit_verify_reorder_{kind:?}"));
    let Some((env, db, chain)) = audited_store(kind, &logs).await else {
        return;
    };
    // Swap events 2 and 3 (through a temporary seq).
    db.exec("UPDATE audit_events SET seq = -2 WHERE seq = 2")
        .await;
    db.exec("UPDATE audit_events SET seq = 2 WHERE seq = 3")
        .await;
    db.exec("UPDATE audit_events SET seq = 3 WHERE seq = -2")
        .await;
    assert_eq!(db.count("SELECT COUNT(*) FROM audit_events").await, 6);
    assert_broken_at(&env, &logs, "verify-swapped", &chain, 2);
}

store_tests!(audit_verify_detects_reorder =>
    audit_verify_detects_reorder_sqlite,
    audit_verify_detects_reorder_postgres);

/// A forged event stored before the chain's first event (seq 0, or negative) must not be
/// invisible to `audit verify`.
async fn audit_verify_detects_insert_before_first(kind: StoreKind) {
    let logs = common::log_dir(&format!("audit_verify_insert_seq0_{kind:?}"));
    let Some((env, db, chain)) = audited_store(kind, &logs).await else {
        return;
    };
    let zeros = if db.is_pg() {
        "decode(repeat('00', 32), 'hex')"
    } else {
        "zeroblob(32)"
    };
    insert_forged(&db, 0, 1, zeros).await;
    assert_eq!(db.count("SELECT COUNT(*) FROM audit_events").await, 7);
    assert_broken_before_first(&env, &logs, "verify-seq0", &chain, 0);
    db.exec("UPDATE audit_events SET seq = -1 WHERE seq = 0")
        .await;
    assert_broken_before_first(&env, &logs, "verify-seq-neg", &chain, -1);
}

/// Broken at the forged event (`<chain>:<forged>`) or at event 1 (which it precedes).
fn assert_broken_before_first(env: &Env, logs: &Path, name: &str, chain: &str, forged: i64) {
    let v = audit_verify(&env.config_path, logs, name);
    assert_eq!(
        v.code(),
        Some(2),
        "{name}: audit verify must fail; stdout: {} stderr: {}",
        v.stdout,
        v.stderr
    );
    let at = |seq: i64| format!("AUDIT BROKEN: audit chain broken at event {chain}:{seq}: ");
    assert!(
        v.stdout.starts_with(&at(forged)) || v.stdout.starts_with(&at(1)),
        "{name}: expected event {forged} or 1 named, got {:?}",
        v.stdout
    );
}

// A forged event stored below seq 1 (where a naive pager never looks) is caught.
store_tests!(
    audit_verify_detects_insert_before_first =>
    audit_verify_detects_insert_before_first_event_sqlite,
    audit_verify_detects_insert_before_first_event_postgres);

// ---------------------------------------------------------------------------------------------
// 4. Key rotation through the CLI
// ---------------------------------------------------------------------------------------------

async fn key_version(db: &Db, shard: &str) -> i64 {
    db.count(&format!(
        "SELECT key_version FROM shard_versions WHERE account = 'acct-r' AND shard = '{shard}'"
    ))
    .await
}

#[tokio::test]
async fn rotated_key_unwraps_but_wraps_only_after_promote() {
    let logs = common::log_dir("rotate_promote");
    let env = Env::new(StoreKind::Sqlite).await.unwrap();
    // common::config sets reload_interval_ms = 0: every use re-checks the keyring file.
    let gw = Gateway::serve(&env.config_path, &logs, "gateway");
    env.plant_keys();
    let api = gw.api();
    let admin = &env.tokens.admin;
    let db = Db::connect(&env.url).await;
    api.put_account(admin, "acct-r").await;
    let s1 = random_shard(32);
    let s2 = printable_shard();
    let s3 = random_shard(100);

    api.must_put(admin, "acct-r", "s1", &s1).await;
    assert_eq!(key_version(&db, "s1").await, 1);

    let r = cli(
        &[
            "keys",
            "rotate",
            "--backend",
            "local",
            "--config",
            env.config_arg(),
        ],
        &logs,
        "rotate",
        false,
    );
    assert_eq!(r.code(), Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("added key version 2"), "{}", r.stdout);
    env.plant_keys();
    assert_eq!(keyring_keys(&env.keyring()).len(), 2);
    assert_eq!(mode(&env.keyring()), 0o600, "rotate keeps the keyring 0600");

    api.must_put(admin, "acct-r", "s2", &s2).await;
    assert_eq!(
        key_version(&db, "s2").await,
        1,
        "a rotated (decrypt-only) version must not wrap yet"
    );

    let r = cli(
        &[
            "keys",
            "promote",
            "--backend",
            "local",
            "--version",
            "2",
            "--config",
            env.config_arg(),
        ],
        &logs,
        "promote",
        false,
    );
    assert_eq!(r.code(), Some(0), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        mode(&env.keyring()),
        0o600,
        "promote keeps the keyring 0600"
    );

    api.must_put(admin, "acct-r", "s3", &s3).await;
    assert_eq!(
        key_version(&db, "s3").await,
        2,
        "after promote, new data keys are wrapped with version 2"
    );

    // Every version still unwraps: 1 is decrypt-only now, 2 active.
    api.must_get(admin, "acct-r", "s1", &s1).await;
    api.must_get(admin, "acct-r", "s2", &s2).await;
    api.must_get(admin, "acct-r", "s3", &s3).await;

    // A promote of a version that does not exist fails and changes nothing.
    let before = std::fs::read(env.keyring()).unwrap();
    let r = cli(
        &[
            "keys",
            "promote",
            "--backend",
            "local",
            "--version",
            "9",
            "--config",
            env.config_arg(),
        ],
        &logs,
        "promote-missing",
        false,
    );
    assert_ne!(r.code(), Some(0), "promoting a missing version must fail");
    assert!(std::fs::read(env.keyring()).unwrap() == before);
    for k in keyring_keys(&env.keyring()) {
        assert!(!r.stdout.contains(&k) && !r.stderr.contains(&k));
    }
}

/// `keys state` / `keys list` through the CLI: a retired version is destroyed (audited, in
/// the database), its key bytes leave the keyring file, and nothing brings it back.
#[tokio::test]
async fn keys_state_destroys_a_retired_version_and_erases_it_from_the_keyring() {
    let logs = common::log_dir("keys_state_destroy");
    let env = Env::new(StoreKind::Sqlite).await.unwrap();
    let run = |args: &[&str], name: &str| {
        let mut all = args.to_vec();
        all.extend(["--config", env.config_arg()]);
        cli(&all, &logs, name, false)
    };
    // The first command that opens the configuration creates the keyring (version 1).
    let r = run(&["keys", "list"], "list-first");
    assert_eq!(r.code(), Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("active"), "{}", r.stdout);
    let r = run(&["keys", "rotate", "--backend", "local"], "rotate");
    assert_eq!(r.code(), Some(0), "{}\n{}", r.stdout, r.stderr);
    env.plant_keys();
    let before = keyring_keys(&env.keyring());
    assert_eq!(before.len(), 2);
    // An active version is never destroyed in one step.
    let r = run(
        &[
            "keys",
            "state",
            "--backend",
            "local",
            "--version",
            "1",
            "--to",
            "destroyed",
        ],
        "destroy-active",
    );
    assert_ne!(r.code(), Some(0), "{}", r.stdout);
    assert!(r.stderr.contains("is active"), "{}", r.stderr);
    let r = run(
        &["keys", "promote", "--backend", "local", "--version", "2"],
        "promote",
    );
    assert_eq!(r.code(), Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("version 1 is decrypt-only"),
        "{}",
        r.stdout
    );
    let r = run(
        &[
            "keys",
            "state",
            "--backend",
            "local",
            "--version",
            "1",
            "--to",
            "destroyed",
        ],
        "destroy",
    );
    assert_eq!(r.code(), Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("erased"), "{}", r.stdout);
    assert_eq!(mode(&env.keyring()), 0o600);
    let after = keyring_keys(&env.keyring());
    assert_eq!(
        after,
        vec![before[1].clone()],
        "only version 2 keeps its key bytes"
    );
    let r = run(&["keys", "list"], "list");
    assert_eq!(r.code(), Some(0), "{}", r.stderr);
    let line = |v: &str| {
        r.stdout
            .lines()
            .find(|l| l.split_whitespace().take(2).eq(["local", v]))
            .unwrap_or_else(|| panic!("no line for v{v}: {}", r.stdout))
            .to_string()
    };
    assert!(
        line("1").contains("destroyed") && line("1").contains("by cli"),
        "{}",
        r.stdout
    );
    assert!(line("2").contains("active"), "{}", r.stdout);
    let r = run(
        &[
            "keys",
            "state",
            "--backend",
            "local",
            "--version",
            "1",
            "--to",
            "active",
        ],
        "revive",
    );
    assert_ne!(r.code(), Some(0), "destroyed is final: {}", r.stdout);
    for k in &before {
        assert!(!r.stdout.contains(k) && !r.stderr.contains(k));
    }
}

/// `keys promote` rewrites the keyring with the same length as the rotated one ("active" and
/// "decrypt-only" swap places). On a filesystem with coarse timestamps (or when a deployment
/// tool preserves mtimes), the promoted file can carry the rotated file's mtime: the running
/// gateway must still notice the promote.
#[tokio::test]
async fn promote_is_seen_even_when_the_keyring_mtime_is_unchanged() {
    let logs = common::log_dir("promote_same_mtime");
    let env = Env::new(StoreKind::Sqlite).await.unwrap();
    let gw = Gateway::serve(&env.config_path, &logs, "gateway");
    env.plant_keys();
    let api = gw.api();
    let admin = &env.tokens.admin;
    let db = Db::connect(&env.url).await;
    api.put_account(admin, "acct-r").await;
    let r = cli(
        &[
            "keys",
            "rotate",
            "--backend",
            "local",
            "--config",
            env.config_arg(),
        ],
        &logs,
        "rotate",
        false,
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr);
    env.plant_keys();
    let rotated = std::fs::metadata(env.keyring()).unwrap();
    // The gateway loads the rotated keyring (it wraps with version 1 still).
    let s1 = random_shard(32);
    api.must_put(admin, "acct-r", "s1", &s1).await;
    assert_eq!(key_version(&db, "s1").await, 1);

    let r = cli(
        &[
            "keys",
            "promote",
            "--backend",
            "local",
            "--version",
            "2",
            "--config",
            env.config_arg(),
        ],
        &logs,
        "promote",
        false,
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr);
    let promoted = std::fs::metadata(env.keyring()).unwrap();
    assert_eq!(promoted.len(), rotated.len(), "same length after promote");
    // Same timestamp as the rotated file (a coarse-timestamp filesystem, `cp -p`, ...).
    std::fs::File::options()
        .write(true)
        .open(env.keyring())
        .unwrap()
        .set_modified(rotated.modified().unwrap())
        .unwrap();

    let s2 = random_shard(32);
    api.must_put(admin, "acct-r", "s2", &s2).await;
    assert_eq!(
        key_version(&db, "s2").await,
        2,
        "the promoted version must wrap new data keys"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. token create
// ---------------------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct TokenBlock {
    tokens: Vec<shardgate::app::config::TokenConfig>,
}

#[tokio::test]
async fn token_create_prints_a_working_token_once() {
    let logs = common::log_dir("token_create");
    let mut env = Env::new(StoreKind::Sqlite).await.unwrap();
    let r = cli(
        &[
            "token",
            "create",
            "--scopes",
            "shards:read",
            "--name",
            "ci-reader",
        ],
        &logs,
        "token-create",
        true,
    );
    assert_eq!(r.code(), Some(0), "stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("token ("))
        .expect("a token header line");
    let token = lines[at + 1].trim().to_string();
    common::plant(&token);
    assert!(token.len() >= 32, "a token of at least 256 bits");
    assert_eq!(
        r.stdout.matches(token.as_str()).count(),
        1,
        "the token is printed exactly once"
    );
    assert!(!r.stderr.contains(&token), "the token is never on stderr");
    let block_start = lines
        .iter()
        .position(|l| l.trim() == "[[tokens]]")
        .expect("a [[tokens]] block");
    let block = lines[block_start..].join("\n");
    assert!(!block.contains(&token), "the config block holds no token");
    let parsed: TokenBlock = toml::from_str(&block).unwrap();
    assert_eq!(parsed.tokens.len(), 1);
    let entry = parsed.tokens.into_iter().next().unwrap();
    assert_eq!(entry.name, "ci-reader");
    assert_eq!(entry.scopes, ["shards:read"]);
    assert_eq!(entry.account_prefix, None);
    assert_eq!(entry.sha256, shardgate::domain::auth::hash_token(&token));

    env.cfg.tokens.push(entry);
    env.rewrite_config();
    let gw = Gateway::serve(&env.config_path, &logs, "gateway");
    env.plant_keys();
    let api = gw.api();
    api.put_account(&env.tokens.admin, "acct-t").await;
    let shard = random_shard(40);
    api.must_put(&env.tokens.admin, "acct-t", "s1", &shard)
        .await;

    // shards:read only: a PUT is 403 forbidden, a GET 200.
    let other = random_shard(40);
    let err = api
        .put_shard(&token, "acct-t", "s1", &other)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&shardgate_client::ErrorCode::Forbidden),
        "{err}"
    );
    api.must_get(&token, "acct-t", "s1", &shard).await;

    // The audit log names the token's identity, never the token.
    let db = Db::connect(&env.url).await;
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM audit_events WHERE actor = 'ci-reader' AND action = 'shard.get' \
             AND outcome = 'ok'"
        )
        .await,
        1
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM audit_events WHERE actor = 'ci-reader' AND action = 'shard.put' \
             AND outcome = 'forbidden'"
        )
        .await,
        1
    );
    // The forbidden PUT stored nothing.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM shard_versions WHERE account = 'acct-t'")
            .await,
        1
    );
    drop(gw);
}

// ---------------------------------------------------------------------------------------------
// 6, 7. Start-up refusals
// ---------------------------------------------------------------------------------------------

/// Serve must exit non-zero within the CLI timeout; answers its stderr.
fn serve_must_refuse(args: &[&str], logs: &Path, name: &str) -> CliRun {
    let r = cli(args, logs, name, false);
    assert!(
        !r.status.success(),
        "{name}: serve must refuse to start; stdout: {}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("listening on"),
        "{name}: must not listen: {}",
        r.stdout
    );
    r
}

#[tokio::test]
async fn serve_refuses_group_readable_keyring() {
    let logs = common::log_dir("refuse_keyring_mode");
    let env = Env::new(StoreKind::Sqlite).await.unwrap();
    shardgate_backends::local::create_if_missing(&env.keyring()).unwrap();
    env.plant_keys();
    let keys = keyring_keys(&env.keyring());
    assert_eq!(keys.len(), 1);
    chmod(&env.keyring(), 0o644);

    let args = ["serve", "--config", env.config_arg()];
    let r = serve_must_refuse(&args, &logs, "serve-keyring-0644");
    let keyring = env.keyring().display().to_string();
    assert!(
        r.stderr.contains(&keyring),
        "stderr must name the key file: {}",
        r.stderr
    );
    assert!(r.stderr.contains("chmod 600"), "{}", r.stderr);
    for k in &keys {
        assert!(
            !r.stderr.contains(k.as_str()) && !r.stdout.contains(k.as_str()),
            "key bytes printed"
        );
    }
    // Refused when its group may write it (0660; group-READABLE 0640 is allowed, for
    // Secret volumes with an `fsGroup`), and the file was not "fixed" silently.
    chmod(&env.keyring(), 0o660);
    serve_must_refuse(&args, &logs, "serve-keyring-0660");
    assert_eq!(mode(&env.keyring()), 0o660);

    // The same for the audit key.
    chmod(&env.keyring(), 0o600);
    std::fs::write(env.audit_key(), format!("{}\n", B64.encode([7u8; 32]))).unwrap();
    chmod(&env.audit_key(), 0o644);
    let r = serve_must_refuse(&args, &logs, "serve-audit-key-0644");
    assert!(
        r.stderr.contains(&env.audit_key().display().to_string()) && r.stderr.contains("chmod 600"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(&B64.encode([7u8; 32])));
    // With both private it starts.
    chmod(&env.audit_key(), 0o600);
    let gw = Gateway::serve(&env.config_path, &logs, "serve-private");
    drop(gw);
}

#[tokio::test]
async fn serve_refuses_config_without_tokens() {
    let logs = common::log_dir("refuse_no_tokens");
    let mut env = Env::new(StoreKind::Sqlite).await.unwrap();
    env.cfg.tokens.clear();
    env.cfg.admin_token_file = None;
    env.rewrite_config();
    let r = serve_must_refuse(&["serve", "--config", env.config_arg()], &logs, "serve");
    assert!(
        r.stderr.contains("never starts without authentication"),
        "{}",
        r.stderr
    );
    // A data dir flag does not bring the embedded default's admin token back.
    let data = env.dir.path().join("data");
    let r = serve_must_refuse(
        &[
            "serve",
            "--config",
            env.config_arg(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &logs,
        "serve-data-dir",
    );
    assert!(
        r.stderr.contains("never starts without authentication"),
        "{}",
        r.stderr
    );
    assert!(!data.join("admin.token").exists());
}

/// The test script exports `SHARDGATE_TEST_*` variables (database URL, log dir, ...) to every
/// process it starts; they belong to the tests, and config.rs means to ignore them. A
/// gateway started under the script must still start.
#[tokio::test]
async fn serve_ignores_the_test_scripts_environment() {
    let logs = common::log_dir("test_env_ignored");
    let env = Env::new(StoreKind::Sqlite).await.unwrap();
    let gw = Gateway::start_env(
        &["serve", "--config", env.config_arg()],
        None,
        &logs,
        "gateway",
        &[
            ("SHARDGATE_TEST_LOG_DIR", logs.to_str().unwrap()),
            ("SHARDGATE_TEST_STRICT", "1"),
        ],
    );
    env.plant_keys();
    let (st, _) = gw
        .api()
        .call(reqwest::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(st, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// 8. Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let logs = common::log_dir("sigterm_drain");
    let mut env = Env::new(StoreKind::Sqlite).await.unwrap();
    // A grace period far longer than the exit deadline below (a wait that must end): an
    // exit within it is a real drain, not the grace timer running out.
    env.cfg.timeouts.shutdown_grace_ms = 300_000;
    env.rewrite_config();
    let mut gw = Gateway::serve(&env.config_path, &logs, "gateway");
    env.plant_keys();
    let api = gw.api();
    let admin = env.tokens.admin.clone();
    api.put_account(&admin, "acct-d").await;
    // The client keeps an idle keep-alive connection open across the shutdown.
    let (st, _) = api.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(st, StatusCode::OK);

    // A PUT in flight: its handler is reading the body (the server asked for it with
    // `100 Continue`) and half of it is sent before SIGTERM.
    let shard = printable_shard();
    let body = json!({"shard": B64.encode(&shard)}).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut conn = std::net::TcpStream::connect(gw.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "PUT /v1/accounts/acct-d/shards/s1 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        gw.addr,
        body.len()
    )
    .unwrap();
    conn.flush().unwrap();
    let mut interim = [0u8; 25];
    conn.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.write_all(first.as_bytes()).unwrap();
    conn.flush().unwrap();
    gw.sigterm();
    // The drain has begun once new connections are refused (a wait that must end: 30 s);
    // then the process is still there, held by the request in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(gw.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting new connections 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    conn.write_all(rest.as_bytes()).unwrap();
    conn.flush().unwrap();
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.1 201"),
        "the request in flight must complete: {:?}",
        response.lines().next()
    );

    // Once the request is answered the drain ends: exit 0, long before the grace timer.
    let st = gw.wait_exit(Duration::from_secs(60));
    assert!(
        st.is_some_and(|s| s.success()),
        "must exit 0 once drained, before the 300 s grace: {st:?}; stderr:\n{}",
        gw.stderr()
    );
    let stderr = gw.stderr();
    assert!(
        stderr.contains("audit checkpoint"),
        "the chain head is logged at shutdown: {stderr}"
    );
    drop(gw);

    let db = Db::connect(&env.url).await;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM shard_versions WHERE account = 'acct-d' AND shard = 's1'")
            .await,
        1
    );
    let v = audit_verify(&env.config_path, &logs, "verify");
    assert_eq!(v.code(), Some(0), "{}\n{}", v.stdout, v.stderr);
}

// ---------------------------------------------------------------------------------------------
// Checkpoints outside the database, read-only commands, start-up habits (issue: attacker and
// new-user findings)
// ---------------------------------------------------------------------------------------------

async fn audit_verify_sees_a_cut_tail_and_a_deleted_chain(kind: StoreKind) {
    let logs = common::log_dir(&format!("audit_verify_cut_tail_{kind:?}"));
    let Some((env, db, chain)) = audited_store(kind, &logs).await else {
        return;
    };
    // The gateway checkpointed its head (seq 6) at shutdown, outside the database.
    let file = env.dir.path().join("audit-checkpoints");
    let lines = std::fs::read_to_string(&file).unwrap();
    assert!(lines.contains(&format!(" {chain} 6 ")), "{lines}");
    assert_eq!(mode(&file), 0o600);

    // The last event deleted: every remaining event still chains, but the head is behind.
    db.bypass_audit_guard().await;
    assert_eq!(db.exec("DELETE FROM audit_events WHERE seq = 6").await, 1);
    assert_broken_at(&env, &logs, "verify-cut-tail", &chain, 6);
    // The same head is also an anchor in the archive (audit-archive/anchors/): with the
    // file gone it still catches the cut.
    let moved = env.dir.path().join("replica-1-checkpoints");
    std::fs::rename(&file, &moved).unwrap();
    assert_broken_at(&env, &logs, "verify-cut-tail-anchored", &chain, 6);
    // Held against the files named on the command line (other replicas' too); without any
    // checkpoint or anchor the cut is invisible, which is what they are for.
    let archive = env.dir.path().join("audit-archive");
    std::fs::rename(&archive, env.dir.path().join("archive-elsewhere")).unwrap();
    let v = audit_verify(&env.config_path, &logs, "verify-no-checkpoints");
    assert_eq!(v.code(), Some(0), "{}\n{}", v.stdout, v.stderr);
    let config = env.config_path.to_str().unwrap();
    let named = |name: &str| {
        cli(
            &[
                "audit",
                "verify",
                "--config",
                config,
                "--checkpoints",
                moved.to_str().unwrap(),
            ],
            &logs,
            name,
            false,
        )
    };
    let v = named("verify-named-checkpoints");
    assert_eq!(v.code(), Some(2), "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("behind its checkpoint"), "{}", v.stdout);

    // Every event of the chain, then its registry row too.
    db.exec("DELETE FROM audit_events").await;
    let v = named("verify-events-gone");
    assert_eq!(v.code(), Some(2), "{}\n{}", v.stdout, v.stderr);
    assert!(
        v.stdout.starts_with(&format!(
            "AUDIT BROKEN: audit chain broken at event {chain}:1: "
        )),
        "{}",
        v.stdout
    );
    db.exec("DELETE FROM audit_chains").await;
    let v = named("verify-chain-gone");
    assert_eq!(v.code(), Some(2), "{}\n{}", v.stdout, v.stderr);
    assert!(
        v.stdout.contains("chain missing from the database"),
        "{}",
        v.stdout
    );

    // A checkpoint line edited to hide the cut (seq 6 -> 0) fails its HMAC.
    let text = std::fs::read_to_string(&moved).unwrap();
    std::fs::write(
        &moved,
        text.replace(&format!(" {chain} 6 "), &format!(" {chain} 0 ")),
    )
    .unwrap();
    let v = named("verify-edited-checkpoint");
    assert_eq!(v.code(), Some(2), "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("HMAC mismatch"), "{}", v.stdout);
}

store_tests!(audit_verify_sees_a_cut_tail_and_a_deleted_chain =>
    audit_verify_sees_a_cut_tail_and_a_deleted_chain_sqlite,
    audit_verify_sees_a_cut_tail_and_a_deleted_chain_postgres);

async fn read_only_commands_open_no_audit_chain(kind: StoreKind) {
    let logs = common::log_dir(&format!("read_only_no_chain_{kind:?}"));
    let Some((env, db, _)) = audited_store(kind, &logs).await else {
        return;
    };
    let config = env.config_path.to_str().unwrap();
    let before = db.count("SELECT COUNT(*) FROM audit_chains").await;
    assert_eq!(before, 1);
    for args in [
        vec!["keys", "list", "--config", config],
        vec!["token", "list", "--config", config],
        vec![
            "policy",
            "explain",
            "--config",
            config,
            "--account",
            "acct-audit",
        ],
        vec!["audit", "verify", "--config", config],
    ] {
        let name = format!("read-only-{}-{}", args[0], args[1]);
        let r = cli(&args, &logs, &name, false);
        assert_eq!(r.code(), Some(0), "{args:?}: {}\n{}", r.stdout, r.stderr);
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_chains").await,
        before,
        "a read-only command registered an audit chain"
    );
}

store_tests!(read_only_commands_open_no_audit_chain =>
    read_only_commands_open_no_audit_chain_sqlite,
    read_only_commands_open_no_audit_chain_postgres);

#[test]
fn serve_on_a_port_in_use_names_the_address_and_creates_nothing() {
    let logs = common::log_dir("port_in_use");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let r = cli(
        &[
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &addr,
        ],
        &logs,
        "port-in-use",
        false,
    );
    assert_eq!(r.code(), Some(1), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&addr),
        "the error names {addr}: {}",
        r.stderr
    );
    assert!(!data.exists(), "a refused start created its data directory");
}

#[test]
fn kubernetes_service_link_variables_do_not_stop_serve() {
    let logs = common::log_dir("service_links");
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let args = [
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    // What Kubernetes injects into every pod for a Service named `shardgate`.
    let env = [
        ("SHARDGATE_PORT", "tcp://10.96.0.12:8080"),
        ("SHARDGATE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
        ("SHARDGATE_SERVICE_HOST", "10.96.0.12"),
    ];
    let gw = Gateway::start_env(&args, None, &logs, "service-links", &env);
    let stderr = gw.stderr();
    assert!(
        stderr.contains("SHARDGATE_PORT"),
        "one warning names them: {stderr}"
    );
    assert!(stderr.contains("SHARDGATE_SERVICE_HOST"), "{stderr}");
}

#[test]
fn token_create_refuses_admin_with_an_account_prefix() {
    let logs = common::log_dir("token_admin_prefix");
    for scopes in ["*", "admin", "shards:read,admin"] {
        let r = cli(
            &[
                "token",
                "create",
                "--name",
                "t",
                "--scopes",
                scopes,
                "--account-prefix",
                "acct-",
            ],
            &logs,
            "token-admin-prefix",
            true,
        );
        assert_ne!(r.code(), Some(0), "{scopes}: {}", r.stdout);
        assert!(
            r.stderr.contains("account prefix"),
            "{scopes}: {}",
            r.stderr
        );
    }
    let r = cli(
        &[
            "token",
            "create",
            "--name",
            "t",
            "--scopes",
            "shards:read",
            "--account-prefix",
            "acct-",
        ],
        &logs,
        "token-prefix-ok",
        true,
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr);
}
