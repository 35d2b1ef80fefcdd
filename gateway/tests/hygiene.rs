//! `shardgate serve` runs without core dumps (checked from outside, in /proc).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn serve_disables_core_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::shardgate_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("SHARDGATE_TEST_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(common::child_log(
            &common::log_dir("hygiene"),
            "serve.stderr.log",
        ))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("shardgate listening on ") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the gateway did not start");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
}

/// The core-file limit of a running process, from /proc: `(soft, hard)`.
fn core_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[4].to_string(), fields[5].to_string())
}

/// Not dumpable: its /proc entries then belong to root. Only observable when the test does
/// not run as root (root owns them anyway); the core limit above is set in the same call.
fn assert_not_dumpable(pid: u32, what: &str) {
    use std::os::unix::fs::MetadataExt;
    if rustix::process::geteuid().is_root() {
        return;
    }
    let owner = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
    assert_eq!(owner, 0, "{what}: still dumpable");
}

/// A `shardgate` child with no `SHARDGATE_*` variable of the test's environment.
fn shardgate(args: &[&str]) -> Command {
    let mut cmd = Command::new(common::shardgate_bin());
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHARDGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Hardening ran only in `serve`. Every other subcommand that reads key material is caught
/// while it is still running: those that open the store wait on a PostgreSQL "server" (a
/// listener that accepts and never answers), `audit credential-id` waits for the token on
/// stdin after loading the audit key. Each must already have no core dumps.
#[test]
fn every_subcommand_disables_core_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let logs = common::log_dir("hygiene");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let url = format!(
        "postgres://shardgate@{}/shardgate?sslmode=disable",
        silent.local_addr().unwrap()
    );
    let commands: [&[&str]; 5] = [
        &["keys", "list"],
        &["token", "list"],
        &["migrate", "status", "00000000-0000-4000-8000-000000000000"],
        &["db", "migrate"],
        &["audit", "verify"],
    ];
    for (i, args) in commands.into_iter().enumerate() {
        let what = args.join(" ");
        let mut child = shardgate(args)
            .args(["--data-dir", data_arg])
            .env("SHARDGATE_STORE__URL", &url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(common::child_log(
                &logs,
                &format!("subcommand-{i}.stderr.log"),
            ))
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let held = loop {
            match silent.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(st) = child.try_wait().unwrap() {
                        panic!("{what}: exited ({st}) before connecting to the store");
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{what}: never connected"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let limit = core_limit(child.id());
        assert_not_dumpable(child.id(), &what);
        let _ = child.kill();
        let _ = child.wait();
        drop(held);
        assert_eq!(limit, ("0".into(), "0".into()), "{what}");
    }

    // `audit credential-id` loads (here: creates, in a data dir of its own) the audit key,
    // then reads stdin.
    let data = dir.path().join("data-credential-id");
    let mut child = shardgate(&["audit", "credential-id", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(common::child_log(&logs, "credential-id.stderr.log"))
        .spawn()
        .unwrap();
    let key = data.join("audit.key");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !key.exists() || std::fs::metadata(&key).unwrap().len() == 0 {
        assert!(std::time::Instant::now() < deadline, "no audit key");
        std::thread::sleep(Duration::from_millis(20));
    }
    let limit = core_limit(child.id());
    assert_not_dumpable(child.id(), "audit credential-id");
    drop(child.stdin.take());
    let _ = child.wait();
    assert_eq!(limit, ("0".into(), "0".into()), "audit credential-id");
}
