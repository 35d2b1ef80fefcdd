//! Backup and restore with the real binary (docs/backup.md).
//!
//! PostgreSQL: a gateway serves accounts with several shards and versions (a deleted shard and
//! a deleted account among them, and versions wrapped before and after a keyring rotation);
//! `pg_dump -Fc` runs while it keeps serving writes; `pg_restore` fills a NEW database; a NEW
//! gateway on it, with copies of the same keyring and audit key, reads every stored version
//! back byte-identical, the deleted shard and account stay 404, and `shardgate audit verify`
//! passes. With any other keyring the restored shards do not open: another deployment's
//! keyring answers 502 `key_unusable`, the same keyring id with other key bytes 500
//! `integrity_failure`, and a copy of the keyring taken before the rotation opens the older
//! versions only. Another audit key fails `audit verify`.
//!
//! SQLite: `shardgate backup --to` while the gateway serves writes; a fresh gateway on the copy
//! reads every version identical and `audit verify` passes; a backup to an existing path fails
//! and leaves that file untouched; a PostgreSQL store is refused with a pointer to `pg_dump`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::cli::{run_to_end, shardgate_command, wait_child, CliRun};
use common::Tokens;
use rand::{Rng, RngCore};
use secrecy::SecretString;
use serde_json::Value;
use shardgate_client::{Client, PutOptions, RetryPolicy, ShardBytes};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// (account, shard, version) -> the bytes written.
type Versions = BTreeMap<(String, String, i64), Vec<u8>>;

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A `shardgate serve` child process; killed when dropped.
struct Gateway {
    child: Child,
    base: String,
    name: String,
    stderr_path: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// `shardgate serve --config FILE`, once it prints its address. Output goes to `logs`.
    fn serve(config: &Path, logs: &Path, name: &str) -> Gateway {
        let stderr_path = logs.join(format!("{name}.stderr.log"));
        let mut child = shardgate_command(&["serve", "--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stdout_log = logs.join(format!("{name}.stdout.log"));
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut log = std::fs::File::create(stdout_log).unwrap();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if let Some(addr) = line.strip_prefix("shardgate listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let mut gw = Gateway {
            child,
            base: String::new(),
            name: name.to_string(),
            stderr_path,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(base) => gw.base = base,
            Err(_) => panic!(
                "{name}: not listening within {START_TIMEOUT:?}; stderr:\n{}",
                gw.stderr()
            ),
        }
        gw
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, and the clean exit that writes the last audit checkpoint.
    fn stop(mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let status = wait_child(&mut self.child, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{}: still running after SIGTERM", self.name));
        assert!(
            status.success(),
            "{}: {status:?}; stderr:\n{}",
            self.name,
            self.stderr()
        );
    }
}

/// What a one-shot command did.
/// Run a command to completion (in `block_in_place`, so the runtime's other tasks, such as
/// the writers that keep the gateway busy, go on), its output kept in `logs/name.*.log`.
fn run(cmd: Command, logs: &Path, name: &str) -> CliRun {
    tokio::task::block_in_place(|| {
        let r = run_to_end(cmd, CLI_TIMEOUT, name);
        std::fs::write(logs.join(format!("{name}.stdout.log")), &r.stdout).unwrap();
        std::fs::write(logs.join(format!("{name}.stderr.log")), &r.stderr).unwrap();
        r
    })
}

fn cli(args: &[&str], config: &Path, logs: &Path, name: &str) -> CliRun {
    let mut cmd = shardgate_command(args);
    cmd.args(["--config", config.to_str().unwrap()]);
    run(cmd, logs, name)
}

/// `shardgate audit verify` exits 0: the number of chains it checked.
fn audit_verifies(config: &Path, logs: &Path, name: &str) -> u64 {
    let r = cli(&["audit", "verify"], config, logs, name);
    assert!(
        r.ok(),
        "audit verify failed ({:?}):\n{}{}",
        r.status,
        r.stdout,
        r.stderr
    );
    // "audit ok: N chain(s), M event(s) verified"
    r.stdout
        .strip_prefix("audit ok: ")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected audit verify output: {}", r.stdout))
}

// ---------------------------------------------------------------------------------------------
// Secrets and files
// ---------------------------------------------------------------------------------------------

/// Plant every key of a keyring file and the audit key: no log may ever hold them.
fn plant_keys(dir: &Path) {
    if let Ok(t) = std::fs::read_to_string(dir.join("audit.key")) {
        common::plant(t.trim());
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("local.keyring")) {
        let v: Value = serde_json::from_str(&text).unwrap();
        for ver in v["versions"].as_array().unwrap() {
            if let Some(k) = ver["key"].as_str() {
                common::plant(k);
            }
        }
    }
}

/// Copy a private file, keeping it private (`fs::copy` keeps the mode bits).
fn copy_private(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(to).unwrap().permissions().mode() & 0o077,
        0
    );
}

/// A config for a restored deployment in `dir`: the same tokens, `store_url`, and keyring and
/// audit key files that must already be there (`create = false`: a missing file is an error,
/// not a fresh key that silently opens nothing).
fn restored_config(dir: &Path, store_url: &str, tokens: &Tokens) -> PathBuf {
    let mut cfg = common::config(dir, store_url, tokens);
    for b in cfg.backends.values_mut() {
        if let shardgate::app::config::BackendConfig::Local { create, .. } = b {
            *create = false;
        }
    }
    cfg.audit.create_key = false;
    let path = dir.join("shardgate.toml");
    common::write_config(&cfg, &path);
    path
}

/// A keyring file with the same id and versions as `from` but other key bytes.
fn same_id_other_bytes(from: &Path, to: &Path) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(from).unwrap()).unwrap();
    for ver in v["versions"].as_array_mut().unwrap() {
        let mut k = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        ver["key"] = Value::String(B64.encode(k));
    }
    shardgate::domain::files::write_private(
        to,
        serde_json::to_string_pretty(&v).unwrap().as_bytes(),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// Normal API use, through the Rust client (no retries: a refused write fails the test as
/// it did when this was raw HTTP).
struct Api {
    client: Client,
}

impl Api {
    fn new(gw: &Gateway, token: &str) -> Api {
        let client = Client::builder(&gw.base)
            .bearer_token(SecretString::from(token.to_string()))
            .retry(RetryPolicy::none())
            .build()
            .unwrap();
        Api { client }
    }

    async fn account(&self, account: &str, tier: &str) {
        let a = self.client.put_account(account, tier).await.unwrap();
        assert_eq!(a.created, Some(true), "{a:?}");
    }

    async fn put(&self, account: &str, shard: &str, data: &[u8]) -> i64 {
        let bytes = ShardBytes::new(data.to_vec());
        let put = self
            .client
            .put_shard(account, shard, &bytes, PutOptions::default());
        put.await.unwrap().version
    }

    async fn get(&self, account: &str, shard: &str, version: Option<i64>) -> Read {
        self.client.get_shard(account, shard, version).await
    }
}

type Read = Result<shardgate_client::Shard, shardgate_client::Error>;

/// The status and error code of a refused read (200 and "" for one that was served).
fn outcome<T>(r: &Result<T, shardgate_client::Error>) -> (u16, String) {
    match r {
        Ok(_) => (200, String::new()),
        Err(shardgate_client::Error::Api(e)) => (e.status, e.code.as_str().to_string()),
        Err(e) => panic!("no answer: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The data set
// ---------------------------------------------------------------------------------------------

/// What was written and what must stay gone.
#[derive(Default)]
struct DataSet {
    versions: Versions,
    deleted_shards: Vec<(String, String)>,
    deleted_accounts: Vec<String>,
}

fn random_shard(len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut b);
    // Short ones are planted (base64) for the log scan; a 64 KiB line would only slow it.
    if len <= 1024 {
        common::plant(&B64.encode(&b));
    }
    b
}

impl DataSet {
    async fn put(&mut self, api: &Api, account: &str, shard: &str, len: usize) {
        let data = random_shard(len);
        let v = api.put(account, shard, &data).await;
        self.versions
            .insert((account.to_string(), shard.to_string(), v), data);
    }

    /// Two accounts with several shards and versions (sizes from 32 B to the 64 KiB limit,
    /// ids with `.` and `:`), a deleted shard and a deleted account.
    async fn load(&mut self, api: &Api) {
        api.account("acct-A", "retail").await;
        api.account("acct-B", "institutional").await;
        api.account("acct-gone", "retail").await;
        for _ in 0..3 {
            let len = rand::thread_rng().gen_range(32..2048);
            self.put(api, "acct-A", "s1", len).await;
        }
        self.put(api, "acct-A", "s2", 64 * 1024).await;
        self.put(api, "acct-B", "k:1", 32).await;
        self.put(api, "acct-B", "k:1", 33).await;
        self.put(api, "acct-B", "k.2", 1000).await;
        // Deleted before the backup: the restore must not bring it back.
        for _ in 0..2 {
            let data = random_shard(48);
            api.put("acct-A", "s-deleted", &data).await;
        }
        api.client
            .delete_shard("acct-A", "s-deleted", None)
            .await
            .unwrap();
        self.deleted_shards
            .push(("acct-A".into(), "s-deleted".into()));
        let data = random_shard(40);
        api.put("acct-gone", "x", &data).await;
        api.client.delete_account("acct-gone", None).await.unwrap();
        self.deleted_accounts.push("acct-gone".into());
    }
}

/// Writers (and readers) that keep the gateway busy while the backup runs. Every write goes to
/// a new shard `live-N` of `acct-live` whose bytes are a function of N, so any version a
/// backup holds can be checked whether or not its answer arrived before the snapshot.
struct Traffic {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const LIVE: &str = "acct-live";

fn live_bytes(n: u64) -> Vec<u8> {
    format!("live shard {n} ").repeat(4).into_bytes()
}

fn live_n(shard: &str) -> Option<u64> {
    shard.strip_prefix("live-")?.parse().ok()
}

impl Traffic {
    async fn start(gw: &Gateway, token: &str) -> Traffic {
        let api = Api::new(gw, token);
        api.account(LIVE, "retail").await;
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (api, stop, acked, next) = (
                Api::new(gw, token),
                stop.clone(),
                acked.clone(),
                next.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let shard = format!("live-{n}");
                    assert_eq!(api.put(LIVE, &shard, &live_bytes(n)).await, 1);
                    acked.lock().unwrap().push(n);
                    api.get(LIVE, &shard, None).await.unwrap();
                }
            }));
        }
        // Some traffic before the backup starts, so that it has something to prove.
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.lock().unwrap().len() < 20 {
            assert!(Instant::now() < deadline, "no write got through");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Traffic { stop, acked, tasks }
    }

    fn acked(&self) -> BTreeSet<u64> {
        self.acked.lock().unwrap().iter().copied().collect()
    }

    /// Wait until a write beyond the first `n` is answered 201: the gateway still takes
    /// writes (a wait that must end: 30 s).
    async fn one_more_acked(&self, n: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acked.lock().unwrap().len() <= n {
            assert!(Instant::now() < deadline, "no write answered {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop; how many writes were answered 201 in all.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let n = self.acked.lock().unwrap().len();
        n
    }
}

/// Every `(account, shard, version)` stored in a database.
async fn stored_versions(url: &str) -> BTreeSet<(String, String, i64)> {
    let db = common::db::Db::connect(url).await;
    let cols = db
        .all_bytes("SELECT account, shard, CAST(version AS TEXT) FROM shard_versions")
        .await;
    assert_eq!(cols.len() % 3, 0);
    cols.chunks(3)
        .map(|c| {
            (
                String::from_utf8(c[0].clone()).unwrap(),
                String::from_utf8(c[1].clone()).unwrap(),
                std::str::from_utf8(&c[2]).unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// The restored deployment reads back every version the database holds, each identical to what
/// was written; holds every version of `data` and every live write answered before the
/// backup began; and the deleted shard and account stay gone. Returns how many versions it read.
async fn check_restored(
    api: &Api,
    url: &str,
    data: &DataSet,
    acked_before_backup: &BTreeSet<u64>,
) -> usize {
    let stored = stored_versions(url).await;
    for key in data.versions.keys() {
        assert!(stored.contains(key), "{key:?} is missing from the restore");
    }
    for n in acked_before_backup {
        let key = (LIVE.to_string(), format!("live-{n}"), 1);
        assert!(
            stored.contains(&key),
            "live-{n} was answered 201 before the backup began but is not in it"
        );
    }
    for (account, shard, version) in &stored {
        let want = if account == LIVE {
            let n = live_n(shard).unwrap_or_else(|| panic!("unexpected shard {shard}"));
            assert_eq!(*version, 1, "{shard}");
            live_bytes(n)
        } else {
            data.versions
                .get(&(account.clone(), shard.clone(), *version))
                .unwrap_or_else(|| panic!("{account}/{shard} v{version} was never written"))
                .clone()
        };
        let got = api.get(account, shard, Some(*version)).await;
        let got = got.unwrap_or_else(|e| panic!("{account}/{shard} v{version}: {e}"));
        assert_eq!(
            got.bytes.expose(),
            &want[..],
            "{account}/{shard} v{version} differs"
        );
        assert_eq!(got.version, *version);
    }
    // The latest version is what a GET without a version answers.
    let mut latest: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (a, s, v) in data.versions.keys() {
        let e = latest.entry((a.as_str(), s.as_str())).or_default();
        *e = (*e).max(*v);
    }
    for ((a, s), v) in latest {
        let got = api.get(a, s, None).await.unwrap();
        assert_eq!(got.version, v, "{a}/{s}");
    }
    for (account, shard) in &data.deleted_shards {
        assert!(!stored.iter().any(|(a, s, _)| a == account && s == shard));
        let r = api.get(account, shard, None).await;
        assert_eq!(
            outcome(&r),
            (404, "shard_not_found".into()),
            "{account}/{shard}"
        );
    }
    for account in &data.deleted_accounts {
        let r = api.client.get_account(account).await;
        assert_eq!(outcome(&r), (404, "account_not_found".into()), "{account}");
    }
    stored.len()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// Databases this test created; dropped (forcibly, so lingering connections do not stop it)
/// when it ends, however it ends.
struct PgDatabases {
    admin_url: String,
    names: Vec<String>,
}

impl PgDatabases {
    fn new() -> Option<PgDatabases> {
        Some(PgDatabases {
            admin_url: common::require_env("SHARDGATE_TEST_DATABASE_URL")?,
            names: Vec::new(),
        })
    }

    /// A new empty database: its URL.
    async fn fresh(&mut self) -> String {
        let url = common::fresh_pg_url().await.unwrap();
        let name = url.rsplit_once('/').unwrap().1.to_string();
        self.names.push(name);
        url
    }
}

impl Drop for PgDatabases {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let names = std::mem::take(&mut self.names);
        // Drop runs inside the test's runtime: use a runtime of our own on another thread.
        let _ = std::thread::spawn(move || {
            use sqlx::Connection;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
                for name in names {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    if let Err(e) = sqlx::query(&sql).execute(&mut conn).await {
                        eprintln!("could not drop test database {name}: {e}");
                    }
                }
            });
        })
        .join();
    }
}

/// A PostgreSQL client tool: `$SHARDGATE_TEST_PG_BINDIR/NAME`, else `NAME` on the PATH. A
/// missing tool fails the test in CI and skips it loudly elsewhere.
fn pg_tool(name: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(dir) = std::env::var("SHARDGATE_TEST_PG_BINDIR") {
        candidates.push(Path::new(&dir).join(name));
    }
    candidates.push(PathBuf::from(name));
    for c in candidates {
        let works = Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            return Some(c);
        }
    }
    common::skip(&format!(
        "{name} not found in $SHARDGATE_TEST_PG_BINDIR or on the PATH (install the PostgreSQL client)"
    ));
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_dump_restores_into_a_fresh_database_and_gateway() {
    let Some(mut dbs) = PgDatabases::new() else {
        return;
    };
    let (Some(pg_dump), Some(pg_restore)) = (pg_tool("pg_dump"), pg_tool("pg_restore")) else {
        return;
    };
    let logs = common::log_dir("backup_restore-pg");
    let tokens = Tokens::new();

    // The original deployment.
    let original = tempfile::tempdir().unwrap();
    let db1 = dbs.fresh().await;
    let config1 = original.path().join("shardgate.toml");
    common::write_config(&common::config(original.path(), &db1, &tokens), &config1);
    let gw = Gateway::serve(&config1, &logs, "original-1");
    plant_keys(original.path());
    let mut data = DataSet::default();
    data.load(&Api::new(&gw, &tokens.admin)).await;
    gw.stop();

    // A keyring copy taken now is older than the dump will be: it misses the next version.
    let stale = tempfile::tempdir().unwrap();
    copy_private(
        &original.path().join("local.keyring"),
        &stale.path().join("local.keyring"),
    );
    for (args, name) in [
        (&["keys", "rotate", "--backend", "local"][..], "keys-rotate"),
        (
            &["keys", "promote", "--backend", "local", "--version", "2"][..],
            "keys-promote",
        ),
    ] {
        let r = cli(args, &config1, &logs, name);
        assert!(r.ok(), "{name}: {}{}", r.stdout, r.stderr);
    }
    plant_keys(original.path());

    // A second gateway process (a second audit chain) wraps with key version 2.
    let gw = Gateway::serve(&config1, &logs, "original-2");
    let api = Api::new(&gw, &tokens.admin);
    let before_rotation: BTreeSet<_> = data.versions.keys().cloned().collect();
    data.put(&api, "acct-A", "s1", 100).await;
    data.put(&api, "acct-B", "after-rotation", 64).await;
    data.put(&api, "acct-B", "after-rotation", 65).await;
    let rotated: BTreeSet<_> = data
        .versions
        .keys()
        .filter(|k| !before_rotation.contains(*k))
        .cloned()
        .collect();
    assert_eq!(rotated.len(), 3);

    // pg_dump while the gateway keeps serving writes and reads.
    let traffic = Traffic::start(&gw, &tokens.admin).await;
    let acked_before_dump = traffic.acked();
    let dump = original.path().join("shardgate.dump");
    let mut cmd = Command::new(&pg_dump);
    cmd.args(["-Fc", "--file"])
        .arg(&dump)
        .arg(format!("--dbname={db1}"));
    let r = run(cmd, &logs, "pg_dump");
    assert!(r.ok(), "pg_dump: {}", r.stderr);
    // Writes went on through the dump: one more is answered after it than before it began.
    let acked_after_dump = traffic.acked().len();
    traffic
        .one_more_acked(acked_after_dump, "after the dump")
        .await;
    let written = traffic.stop().await;
    gw.stop();
    // The keyring (and audit key) copied after the dump: every version it references.
    let restored = tempfile::tempdir().unwrap();
    for f in ["local.keyring", "audit.key"] {
        copy_private(&original.path().join(f), &restored.path().join(f));
    }

    // pg_restore into a NEW empty database; a NEW gateway on it with the same files.
    let db2 = dbs.fresh().await;
    let mut cmd = Command::new(&pg_restore);
    cmd.args(["--exit-on-error", "--single-transaction", "--no-owner"])
        .arg(format!("--dbname={db2}"))
        .arg(&dump);
    let r = run(cmd, &logs, "pg_restore");
    assert!(r.ok(), "pg_restore: {}", r.stderr);
    std::fs::remove_file(&dump).unwrap();

    let config2 = restored_config(restored.path(), &db2, &tokens);
    let gw = Gateway::serve(&config2, &logs, "restored");
    let api = Api::new(&gw, &tokens.admin);
    let read = check_restored(&api, &db2, &data, &acked_before_dump).await;
    // The restore is a live deployment: it takes new writes after the restored versions.
    let v = api.put("acct-A", "s1", b"written after the restore").await;
    assert_eq!(v, 5);
    gw.stop();
    // One chain per process that wrote events: original-1, `keys promote` (its key.state
    // event; `keys rotate` writes none), original-2 (a prefix: the dump's snapshot), and the
    // restored gateway. A chain lost in the dump or restore would leave 3.
    let chains = audit_verifies(&config2, &logs, "audit-verify-restored");
    assert_eq!(chains, 4, "{chains} chains");
    println!(
        "restored {read} versions ({} of the data set, {} live writes before the dump, {written} in all); {chains} audit chains verify",
        data.versions.len(),
        acked_before_dump.len()
    );

    // The negative side: the dump alone, with any other keyring, opens nothing (or not all).
    // Another deployment's keyring (what a `create = true` config makes when the file was
    // not restored): every version answers 502 key_unusable.
    let other = tempfile::tempdir().unwrap();
    let mut cfg = common::config(other.path(), &db2, &tokens);
    cfg.audit.key_file = Some(restored.path().join("audit.key"));
    cfg.audit.create_key = false;
    let config_other = other.path().join("shardgate.toml");
    common::write_config(&cfg, &config_other);
    let gw = Gateway::serve(&config_other, &logs, "other-keyring");
    plant_keys(other.path());
    let api = Api::new(&gw, &tokens.admin);
    for (account, shard, version) in data.versions.keys() {
        let r = api.get(account, shard, Some(*version)).await;
        assert_eq!(
            outcome(&r),
            (502, "key_unusable".into()),
            "{account}/{shard} v{version}"
        );
    }
    gw.stop();

    // The same keyring id with other key bytes (a corrupted or forged file): 500
    // integrity_failure, never other bytes.
    same_id_other_bytes(
        &restored.path().join("local.keyring"),
        &other.path().join("local.keyring"),
    );
    plant_keys(other.path());
    let gw = Gateway::serve(&config_other, &logs, "forged-keyring");
    let api = Api::new(&gw, &tokens.admin);
    for (account, shard, version) in data.versions.keys() {
        let r = api.get(account, shard, Some(*version)).await;
        assert_eq!(
            outcome(&r),
            (500, "integrity_failure".into()),
            "{account}/{shard} v{version}"
        );
    }
    gw.stop();

    // The keyring copied before the rotation: versions wrapped with key version 1 open, those
    // wrapped with version 2 answer 502 key_unusable.
    std::fs::remove_file(other.path().join("local.keyring")).unwrap();
    copy_private(
        &stale.path().join("local.keyring"),
        &other.path().join("local.keyring"),
    );
    let gw = Gateway::serve(&config_other, &logs, "stale-keyring");
    let api = Api::new(&gw, &tokens.admin);
    for ((account, shard, version), want) in &data.versions {
        let r = api.get(account, shard, Some(*version)).await;
        if rotated.contains(&(account.clone(), shard.clone(), *version)) {
            assert_eq!(
                outcome(&r),
                (502, "key_unusable".into()),
                "{account}/{shard} v{version}"
            );
        } else {
            let got = r.unwrap_or_else(|e| panic!("{account}/{shard} v{version}: {e}"));
            assert_eq!(got.bytes.expose(), &want[..]);
        }
    }
    gw.stop();
    // Those gateways' own chains are sound too (same audit key).
    assert!(audit_verifies(&config2, &logs, "audit-verify-after-negatives") >= chains + 3);

    // Without the audit key the log cannot be verified: another key breaks the first event.
    let no_audit_key = tempfile::tempdir().unwrap();
    let cfg = common::config(no_audit_key.path(), &db2, &tokens);
    let config_no_key = no_audit_key.path().join("shardgate.toml");
    common::write_config(&cfg, &config_no_key);
    let r = cli(
        &["audit", "verify"],
        &config_no_key,
        &logs,
        "audit-verify-other-key",
    );
    plant_keys(no_audit_key.path());
    assert_eq!(r.status.code(), Some(2), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("AUDIT BROKEN"), "{}", r.stdout);
}

// ---------------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_online_backup_restores_into_a_fresh_gateway() {
    let logs = common::log_dir("backup_restore-sqlite");
    let tokens = Tokens::new();
    let original = tempfile::tempdir().unwrap();
    let db1 = shardgate::app::config::sqlite_url(&original.path().join("shardgate.db"));
    let config1 = original.path().join("shardgate.toml");
    common::write_config(&common::config(original.path(), &db1, &tokens), &config1);
    let gw = Gateway::serve(&config1, &logs, "original");
    plant_keys(original.path());
    let mut data = DataSet::default();
    data.load(&Api::new(&gw, &tokens.admin)).await;

    // `shardgate backup` while the gateway serves writes and reads.
    let traffic = Traffic::start(&gw, &tokens.admin).await;
    let acked_before_backup = traffic.acked();
    let restored = tempfile::tempdir().unwrap();
    let copy = restored.path().join("shardgate.db");
    let r = cli(
        &["backup", "--to", copy.to_str().unwrap()],
        &config1,
        &logs,
        "backup",
    );
    assert!(r.ok(), "backup: {}{}", r.stdout, r.stderr);
    // Writes went on through the backup: one more is answered after it than before it began.
    let acked_after_backup = traffic.acked().len();
    traffic
        .one_more_acked(acked_after_backup, "after the backup")
        .await;
    let written = traffic.stop().await;
    // It says where the copy is and what is not in it.
    assert!(r.stdout.contains(copy.to_str().unwrap()), "{}", r.stdout);
    for f in ["local.keyring", "audit.key"] {
        let path = original.path().join(f);
        assert!(
            r.stdout.contains(path.to_str().unwrap()),
            "the output does not name {f}:\n{}",
            r.stdout
        );
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "backup file mode {mode:o}");
    }

    // An existing path is refused, and left exactly as it was.
    let existing = restored.path().join("existing.db");
    std::fs::write(&existing, b"an older backup, not to be lost").unwrap();
    let mtime = std::fs::metadata(&existing).unwrap().modified().unwrap();
    let r = cli(
        &["backup", "--to", existing.to_str().unwrap()],
        &config1,
        &logs,
        "backup-existing",
    );
    assert!(!r.ok(), "a backup over an existing file succeeded");
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(&existing).unwrap(),
        b"an older backup, not to be lost"
    );
    assert_eq!(
        std::fs::metadata(&existing).unwrap().modified().unwrap(),
        mtime
    );
    // The same for the live database itself.
    let live_db = original.path().join("shardgate.db");
    let before = std::fs::metadata(&live_db).unwrap().len();
    let r = cli(
        &["backup", "--to", live_db.to_str().unwrap()],
        &config1,
        &logs,
        "backup-onto-itself",
    );
    assert!(
        !r.ok() && r.stderr.contains("already exists"),
        "{}",
        r.stderr
    );
    assert!(std::fs::metadata(&live_db).unwrap().len() >= before);
    gw.stop();

    // A fresh gateway on the copy with the same keyring and audit key.
    for f in ["local.keyring", "audit.key"] {
        copy_private(&original.path().join(f), &restored.path().join(f));
    }
    let db2 = shardgate::app::config::sqlite_url(&copy);
    let config2 = restored_config(restored.path(), &db2, &tokens);
    let gw = Gateway::serve(&config2, &logs, "restored");
    let api = Api::new(&gw, &tokens.admin);
    let read = check_restored(&api, &db2, &data, &acked_before_backup).await;
    gw.stop();
    let chains = audit_verifies(&config2, &logs, "audit-verify-restored");
    assert!(chains >= 2, "{chains} chains");
    println!(
        "restored {read} versions ({} of the data set, {} live writes before the backup, {written} in all); {chains} audit chains verify",
        data.versions.len(),
        acked_before_backup.len()
    );
}

/// `shardgate backup` on a PostgreSQL store points to `pg_dump` and writes nothing, without
/// needing the server (nothing listens on the configured port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_a_postgres_store_points_to_pg_dump() {
    let logs = common::log_dir("backup_restore-pg-refused");
    let tokens = Tokens::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shardgate.toml");
    common::write_config(
        &common::config(dir.path(), "postgres://nobody@127.0.0.1:1/none", &tokens),
        &config,
    );
    let to = dir.path().join("backup.db");
    let r = cli(
        &["backup", "--to", to.to_str().unwrap()],
        &config,
        &logs,
        "backup-postgres",
    );
    assert!(!r.ok());
    assert!(r.stderr.contains("pg_dump -Fc"), "{}", r.stderr);
    assert!(!to.exists());
}
