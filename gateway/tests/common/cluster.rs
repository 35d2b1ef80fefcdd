//! A throwaway PostgreSQL cluster of a test's own (initdb/pg_ctl from
//! `$SHARDGATE_TEST_PG_BINDIR`) on a free port, run as the `postgres` user when we are root
//! (PostgreSQL refuses to run as root). Its Unix socket is in its data directory.
//!
//! PostgreSQL cannot listen on port 0, so the port is picked beforehand, and a parallel test
//! may take it before the server binds it: the first start retries on another port when the
//! server reports "address in use".
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The cluster; stopped (immediately) when dropped.
pub(crate) struct Cluster {
    pub bindir: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    /// Whether the server has started once (later starts keep the port clients know).
    started: bool,
    /// Extra `-c name=value` server settings of every start.
    settings: Vec<String>,
    _dir: tempfile::TempDir,
}

fn is_root() -> bool {
    std::env::var("USER").as_deref() == Ok("root")
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false)
}

/// Run a server binary as the `postgres` user when we are root; panics when it fails.
fn as_postgres(bin: &Path, args: &[&str]) -> Output {
    let out = run_as_postgres(bin, args);
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a server binary as the `postgres` user when we are root, whatever its exit status.
fn run_as_postgres(bin: &Path, args: &[&str]) -> Output {
    if is_root() {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin)
            .args(args)
            .output()
    } else {
        Command::new(bin).args(args).output()
    }
    .unwrap()
}

/// A port that was free a moment ago (a candidate: see the module doc).
fn candidate_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How many ports the first start tries before it gives up.
const PORT_ATTEMPTS: usize = 20;

impl Cluster {
    /// initdb (trust authentication) and start; `None` when skipped outside CI.
    pub(crate) fn start() -> Option<Cluster> {
        let mut c = Self::init()?;
        c.up();
        Some(c)
    }

    /// initdb only (trust authentication, superuser `postgres`): configure, then [`up`].
    ///
    /// [`up`]: Cluster::up
    pub(crate) fn init() -> Option<Cluster> {
        let bindir = PathBuf::from(super::require_env("SHARDGATE_TEST_PG_BINDIR")?);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        // The cluster's files must belong to the user that runs it.
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status();
        }
        let port = candidate_port();
        as_postgres(
            &bindir.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        Some(Cluster {
            bindir,
            data,
            port,
            started: false,
            settings: Vec::new(),
            _dir: dir,
        })
    }

    /// A server setting (`name=value`) for every later start.
    pub(crate) fn set(&mut self, setting: &str) {
        self.settings.push(setting.to_string());
    }

    /// Write a file into the data directory, mode 0600, owned by the server's user.
    pub(crate) fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.data.join(name);
        shardgate::domain::files::write_private(&path, contents).unwrap();
        if is_root() {
            let st = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&path)
                .status()
                .unwrap();
            assert!(st.success());
        }
        path
    }

    /// Start the server. The first start moves to another port while the picked one turns out
    /// to be taken ("address in use"); a restart keeps the port the clients were given.
    pub(crate) fn up(&mut self) {
        let log = self.data.join("server.log");
        for attempt in 1.. {
            let mut opts = format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {}",
                self.port,
                self.data.display()
            );
            for s in &self.settings {
                opts.push_str(&format!(" -c {s}"));
            }
            let logged_before = std::fs::read(&log).map(|l| l.len()).unwrap_or(0);
            let pg_ctl = self.bindir.join("pg_ctl");
            let args = [
                "-D",
                self.data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ];
            let out = run_as_postgres(&pg_ctl, &args);
            if out.status.success() {
                self.started = true;
                return;
            }
            let logged = std::fs::read(&log).unwrap_or_default();
            let new = String::from_utf8_lossy(logged.get(logged_before..).unwrap_or_default());
            let in_use = new.contains("Address already in use") || new.contains("could not bind");
            if in_use && !self.started && attempt < PORT_ATTEMPTS {
                eprintln!("port {} taken meanwhile; trying another", self.port);
                self.port = candidate_port();
                continue;
            }
            panic!(
                "{} {args:?}: {}{}\nserver log:\n{new}",
                pg_ctl.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Stop at once, as a crash would (no checkpoint, connections cut).
    pub(crate) fn down(&self) {
        as_postgres(
            &self.bindir.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Superuser `postgres` over TCP on 127.0.0.1 (needs a trust line for it in pg_hba).
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Superuser `postgres` over the Unix socket, database `db`.
    pub(crate) fn socket_url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost/{db}?host={}&port={}",
            self.data.display(),
            self.port
        )
    }

    /// `psql` as superuser over the Unix socket on database `db`, stopping at the first error;
    /// `stdin` is the script. Panics when psql fails.
    pub(crate) fn psql(&self, db: &str, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "psql {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pg_ctl = self.bindir.join("pg_ctl");
        let args = ["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"];
        let _ = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_ctl)
                .args(args)
                .output()
        } else {
            Command::new(pg_ctl).args(args).output()
        };
    }
}
