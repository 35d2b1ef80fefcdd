//! `docs/shardgate.example.toml` is the commented example configuration the docs point
//! newcomers to (docs/configuration.md). An example that no longer loads, or whose comments
//! state defaults the code no longer has, is worse than none; these tests keep it honest:
//!
//! - the real binary accepts it: `shardgate policy check --config docs/shardgate.example.toml`
//!   exits 0 with its `ok:` line and the counts the example declares (1 backend, 2 tiers, 1
//!   pin, 0 rollouts, 0 warnings);
//! - the real binary serves it as written (`shardgate serve --config ...` in an empty working
//!   directory creates the data directory, keyring, audit key and admin token, answers
//!   `/healthz`, and places an account of tier `retail` on `local`);
//! - parsed through the same `Config::load` the binary calls, every section the example
//!   spells out equals the configuration's defaults (the values it writes are the defaults
//!   its comments name), apart from the keys it sets on purpose.
//!
//! Every child runs without inherited `SHARDGATE_*` variables: the file is the whole
//! configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::cli::{run_to_end, shardgate_command};
use shardgate::app::config::{BackendConfig, Config, Sources};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a one-shot CLI command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the gateway may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The example, as an absolute path (the tests run in `gateway/`).
fn example() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/shardgate.example.toml");
    std::fs::canonicalize(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `shardgate <args>` in `cwd`, with no inherited `SHARDGATE_*` variable.
fn shardgate(args: &[&str], cwd: &Path) -> Command {
    let mut cmd = shardgate_command(args);
    cmd.current_dir(cwd);
    cmd
}

/// Run a one-shot command to its end (killed after [`CLI_TIMEOUT`]): status, stdout, stderr.
fn run(cmd: Command) -> (ExitStatus, String, String) {
    let r = run_to_end(cmd, CLI_TIMEOUT, "shardgate");
    (r.status, r.stdout, r.stderr)
}

#[test]
fn policy_check_accepts_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let path = example();
    let (status, stdout, stderr) = run(shardgate(
        &["policy", "check", "--config", path.to_str().unwrap()],
        dir.path(),
    ));
    assert!(
        status.success(),
        "policy check must exit 0 ({status:?}); stdout: {stdout}\nstderr: {stderr}"
    );
    let line = stdout.trim_end();
    assert!(
        line.starts_with("ok: "),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        line.ends_with(": 1 backend(s), 2 tier(s), 1 pin(s), 0 rollout(s), 0 warning(s)"),
        "the counts of what the example declares; stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(!stderr.contains("warning: policy"), "{stderr}");
    // `policy check` opens nothing: no data directory appears.
    assert!(!dir.path().join("shardgate-data").exists());
}

/// A serving gateway; dropping it kills and reaps it.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`): the whole answer.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

#[test]
fn serve_starts_from_the_example_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = example();
    let stderr_path = dir.path().join("serve.stderr.log");
    let mut cmd = shardgate(
        &[
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut gw = Serving(cmd.spawn().unwrap());
    let stdout = gw.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let deadline = Instant::now() + START_TIMEOUT;
    let addr: SocketAddr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(a) = line.strip_prefix("shardgate listening on http://") {
                    break a.trim().parse().unwrap();
                }
            }
            Err(e) => panic!(
                "no listening line ({e:?}); exit: {:?}; stderr:\n{}",
                gw.0.try_wait(),
                stderr()
            ),
        }
    };

    // The relative paths of the example, under the working directory.
    let data = dir.path().join("shardgate-data");
    for f in ["local.keyring", "audit.key", "admin.token", "shardgate.db"] {
        assert!(
            data.join(f).exists(),
            "{f} was not created; stderr:\n{}",
            stderr()
        );
    }

    let health = http(addr, "GET", "/healthz", None, "");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    // The admin token file authenticates, and the tiers and the pin place on `local`.
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let token = token.trim();
    for account in ["acct-1", "acct-9"] {
        let put = http(
            addr,
            "PUT",
            &format!("/v1/accounts/{account}"),
            Some(token),
            r#"{"tier":"retail"}"#,
        );
        assert!(put.starts_with("HTTP/1.1 20"), "{account}: {put}");
        assert!(put.contains(r#""backend":"local""#), "{account}: {put}");
    }
    drop(gw);
}

/// Loads a configuration file the way the binary does (`Config::load`, environment included).
fn load(path: &Path) -> Config {
    Config::load(&Sources {
        file: Some(path.to_path_buf()),
        ..Sources::default()
    })
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_example_states_the_defaults() {
    let cfg = load(&example());

    // What the example sets on purpose.
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(cfg.data_dir, Path::new("./shardgate-data"));
    assert_eq!(
        cfg.admin_token_file.as_deref(),
        Some(Path::new("./shardgate-data/admin.token"))
    );
    assert_eq!(cfg.backends.len(), 1, "{:?}", cfg.backends.keys());
    match &cfg.backends["local"] {
        BackendConfig::Local {
            key_file,
            reload_interval_ms,
            create,
        } => {
            assert_eq!(key_file, Path::new("./shardgate-data/local.keyring"));
            assert_eq!(*reload_interval_ms, 1000);
            assert!(*create);
        }
        other => panic!("backend local: {other:?}"),
    }
    assert_eq!(cfg.tiers.len(), 2);
    assert_eq!(cfg.tiers["retail"], "local");
    assert_eq!(cfg.tiers["institutional"], "local");
    assert_eq!(cfg.policy.pins.len(), 1);
    assert!(cfg.policy.rollouts.is_empty());
    let policy = cfg.policy().unwrap();
    assert!(policy.warnings().is_empty());
    assert_eq!(policy.place("acct-9", "retail").unwrap().backend, "local");
    assert!(cfg.tokens.is_empty());
    assert!(cfg.tls.is_none());
    assert!(cfg.store.url.is_none(), "the embedded default store");
    assert!(
        cfg.store_url().starts_with("sqlite://"),
        "{}",
        cfg.store_url()
    );
    assert_eq!(
        cfg.audit.key_file.as_deref(),
        Some(Path::new("./shardgate-data/audit.key"))
    );
    assert!(cfg.audit.create_key);

    // Everything else the example writes is the default its comments name: the same file with
    // only the required keys loads to the same values.
    let dir = tempfile::tempdir().unwrap();
    let minimal = dir.path().join("minimal.toml");
    std::fs::write(
        &minimal,
        "admin_token_file = \"t\"\n\
         [backends.local]\nkind = \"local\"\nkey_file = \"k\"\n\
         [tiers]\nretail = \"local\"\n",
    )
    .unwrap();
    let defaults = load(&minimal);
    let mut a = serde_json::to_value(&cfg).unwrap();
    let mut b = serde_json::to_value(&defaults).unwrap();
    for v in [&mut a, &mut b] {
        let top = v.as_object_mut().unwrap();
        for k in [
            "backends",
            "tiers",
            "policy",
            "tokens",
            "admin_token_file",
            "tls",
        ] {
            top.remove(k);
        }
        let audit = top.get_mut("audit").unwrap().as_object_mut().unwrap();
        for k in ["key_file", "create_key", "checkpoint_file"] {
            audit.remove(k);
        }
    }
    assert_eq!(
        a,
        b,
        "docs/shardgate.example.toml writes a value that is not the default (left: the example, right: the defaults)"
    );
}
