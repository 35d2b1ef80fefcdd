//! A `shardgate serve` child process for tests of the running server: its base URL, its JSON
//! log lines (stderr, kept in the test's log directory, so the run's secret scan reads them),
//! signals, and its exit. Killed on drop when still running.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a wait that must end may take (a generous deadline, never a measured bound).
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// A running gateway.
pub(crate) struct Served {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its stderr: one JSON object per line.
    pub log: PathBuf,
}

impl Served {
    /// `shardgate serve --config CONFIG`, with no `SHARDGATE_*` variable inherited (the test
    /// controls the whole configuration); stderr goes to `<log_dir(test)>/<name>.stderr.log`.
    /// Returns once it prints the address it listens on.
    pub(crate) fn start(config: &Path, test: &str, name: &str) -> Served {
        Self::start_with_env(config, test, name, &[])
    }

    /// [`Served::start`] with these variables set for the child as well.
    pub(crate) fn start_with_env(
        config: &Path,
        test: &str,
        name: &str,
        env: &[(&str, &str)],
    ) -> Served {
        let log = super::log_dir(test).join(format!("{name}.stderr.log"));
        let mut cmd = Command::new(super::shardgate_bin());
        cmd.args(["serve", "--config", config.to_str().unwrap()]);
        cmd.envs(env.iter().copied());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SHARDGATE_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("shardgate listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let base = rx.recv_timeout(DEADLINE).unwrap_or_else(|_| {
            panic!(
                "gateway did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Served { child, base, log }
    }

    /// `kill -SIG pid` (`sig` like `-TERM`).
    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Every JSON log line written so far.
    pub(crate) fn logs(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The log lines whose `message` is `message`.
    pub(crate) fn logged(&self, message: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["message"] == message)
            .collect()
    }

    /// Wait (up to [`DEADLINE`]) until at least `n` lines with `message` were logged; them.
    pub(crate) async fn wait_logged(&self, message: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.logged(message);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} x {message:?} never logged; got {}:\n{}",
                got.len(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait (up to [`DEADLINE`]) for the process to exit.
    pub(crate) async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the gateway did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
