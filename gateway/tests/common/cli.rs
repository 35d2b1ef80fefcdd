//! Running the `shardgate` binary from the tests, written once: spawn it with no inherited
//! `SHARDGATE_*` variable (the test controls the whole configuration, and the test script's
//! `SHARDGATE_TEST_*` variables are not the gateway's), wait with a deadline, and collect
//! both outputs without a full pipe blocking the child.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a one-shot command did.
pub(crate) struct CliRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// The exit code (`None` when a signal ended it).
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Whether it exited with status 0.
    pub(crate) fn ok(&self) -> bool {
        self.status.success()
    }
}

/// `shardgate <args>` with no `SHARDGATE_*` variable inherited.
pub(crate) fn shardgate_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(super::shardgate_bin());
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHARDGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Wait for `child` to exit; `None` if it is still running after `timeout`.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `cmd` to its end with no stdin; after `timeout` it is killed and the test fails,
/// naming `what`.
pub(crate) fn run_to_end(mut cmd: Command, timeout: Duration, what: &str) -> CliRun {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let Some(status) = wait_child(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} still running after {timeout:?}");
    };
    CliRun {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// `shardgate <args>` as a test names it in a failure.
pub(crate) fn describe(args: &[&str]) -> String {
    format!("`shardgate {}`", args.join(" "))
}
