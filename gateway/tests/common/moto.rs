//! A moto_server of a test's own (`SHARDGATE_TEST_MOTO_CMD`), for tests that pause it
//! (SIGSTOP) or must not share state with other tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

/// A test's own moto_server (`SHARDGATE_TEST_MOTO_CMD`), so that pausing it with SIGSTOP
/// disturbs no other test. Killed on drop.
pub(crate) struct OwnMoto {
    child: std::process::Child,
    pub(crate) endpoint: String,
}

impl OwnMoto {
    pub(crate) async fn start() -> Option<OwnMoto> {
        let cmd = super::require_env("SHARDGATE_TEST_MOTO_CMD")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut parts = cmd.split_whitespace();
        let child = std::process::Command::new(parts.next().unwrap())
            .args(parts)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "own moto did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(OwnMoto { child, endpoint })
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
