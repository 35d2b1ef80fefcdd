//! Test support for the SoftHSM2 integration tests of the pkcs11 backend.
//!
//! Each test creates its own token in a temp dir ([`TestToken::new`]): a `softhsm2.conf`
//! pointing at `<tmp>/tokens`, `SOFTHSM2_CONF` set for the process before the module is
//! loaded, and `softhsm2-util --init-token`. The module path comes from
//! `SHARDGATE_TEST_SOFTHSM_MODULE`; when it is unset, [`module`] answers `None` (the test
//! skips, counted: `shardgate_testkit::skip`), except in strict mode (CI,
//! `SHARDGATE_TEST_STRICT=1`), where it fails.
//!
//! One PKCS#11 context per process and one `SOFTHSM2_CONF` per process: run the tests with
//! `cargo nextest run` (one process per test). A second token in one process fails loudly.

#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use shardgate_backends::pkcs11::Pkcs11Config;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// The SoftHSM2 module under test, or `None` (after printing `SKIPPED`) when not configured.
/// Panics in strict mode (CI, `SHARDGATE_TEST_STRICT=1`) when the module is not configured.
pub fn module(test: &str) -> Option<PathBuf> {
    match std::env::var_os("SHARDGATE_TEST_SOFTHSM_MODULE") {
        Some(m) if !m.is_empty() => Some(PathBuf::from(m)),
        _ => {
            shardgate_testkit::skip(&format!("{test}: SHARDGATE_TEST_SOFTHSM_MODULE is not set"));
            None
        }
    }
}

static TOKEN_MADE: AtomicBool = AtomicBool::new(false);

/// A SoftHSM2 token of its own in a temp dir.
pub struct TestToken {
    /// The temp dir (tokens, conf, PIN file).
    pub dir: tempfile::TempDir,
    /// The token label.
    pub label: String,
    /// The user PIN.
    pub pin: String,
    /// The SO PIN.
    pub so_pin: String,
    /// The module.
    pub module: PathBuf,
    conf: PathBuf,
}

impl TestToken {
    /// Create the token (and point this process's `SOFTHSM2_CONF` at it).
    pub fn new(module: &Path, label: &str) -> Self {
        assert!(
            !TOKEN_MADE.swap(true, Ordering::SeqCst),
            "one SoftHSM2 token per test process: run these tests with cargo nextest"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("tokens")).expect("tokens dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .expect("write conf");
        // Before the module is loaded in this process (by the first backend call).
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let tok = Self {
            dir,
            label: label.to_string(),
            pin: "user-pin-7291".into(),
            so_pin: "so-pin-5531".into(),
            module: module.to_path_buf(),
            conf,
        };
        tok.init();
        tok
    }

    /// Run `softhsm2-util` with this token's conf; panics on failure.
    pub fn util(&self, args: &[&str]) {
        let out = Command::new("softhsm2-util")
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("run softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `softhsm2-util --init-token --free` with this token's label and PINs.
    pub fn init(&self) {
        self.util(&[
            "--init-token",
            "--free",
            "--label",
            &self.label,
            "--so-pin",
            &self.so_pin,
            "--pin",
            &self.pin,
        ]);
    }

    /// `softhsm2-util --delete-token` (from outside this process).
    pub fn delete(&self) {
        self.util(&["--delete-token", "--token", &self.label]);
    }

    /// A backend config for this token: PIN in a 0600 file, host IVs.
    pub fn config(&self, kek_label: &str) -> Pkcs11Config {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let pin_file = self.dir.path().join("pin");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&pin_file)
            .expect("pin file");
        writeln!(f, "{}", self.pin).expect("write pin");
        let mut cfg = Pkcs11Config::new(&self.label, kek_label);
        cfg.module = self.module.clone();
        cfg.pin_file = Some(pin_file);
        cfg
    }

    /// Create an AES-256 key object with the given value from ANOTHER process (the
    /// `sg-softhsm-helper` binary: `env!("CARGO_BIN_EXE_sg-softhsm-helper")`), e.g. to
    /// re-import a known KEK or to plant a badly configured one.
    pub fn create_key(
        &self,
        helper: &str,
        object_label: &str,
        value: &[u8; 32],
        extractable: bool,
        sensitive: bool,
    ) {
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        let mut flags = Vec::new();
        if extractable {
            flags.push("extractable");
        }
        if !sensitive {
            flags.push("not-sensitive");
        }
        let flags = if flags.is_empty() {
            "-".to_string()
        } else {
            flags.join(",")
        };
        let out = Command::new(helper)
            .args([
                self.module.to_str().expect("utf-8 module path"),
                &self.label,
                &self.pin,
                object_label,
                &hex,
                &flags,
            ])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("run helper");
        assert!(
            out.status.success(),
            "helper: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
