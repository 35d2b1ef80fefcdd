//! Files on disk, through the `shardgate` binary on the embedded default (issue 25): every
//! file of a fresh data dir is private once `serve` has served a PUT; names planted in the
//! data dir (a dangling symlink, a file others may read) are never written through and stop
//! start-up; Kubernetes-style Secret volumes (symlinks, 0440) load; an empty admin token file
//! stops start-up. The rules themselves are unit-tested in `backends/src/files.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A serving child, killed when dropped.
struct Served {
    child: Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `shardgate serve --data-dir DATA`: `Ok` once it listens, `Err(stderr)` when it exits.
fn serve(data: &Path, name: &str) -> Result<Served, String> {
    let logs = common::log_dir("files");
    let stderr_path = logs.join(format!("{name}.stderr.log"));
    let mut cmd = Command::new(common::shardgate_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHARDGATE_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(common::child_log(&logs, &format!("{name}.stderr.log")))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("shardgate listening on http://") {
                    let base = format!("http://{}", addr.trim());
                    return Ok(Served { child, base });
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                assert!(
                    !status.success(),
                    "{name}: serve exited 0 without listening"
                );
                return Err(std::fs::read_to_string(&stderr_path).unwrap());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("{name}: neither listening nor exited within {START_TIMEOUT:?}");
            }
        }
    }
}

fn private_dir(path: &Path) {
    std::fs::DirBuilder::new().mode(0o700).create(path).unwrap();
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn audit_key_text() -> String {
    format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    )
}

/// PUT an account and a shard with `token`; both must succeed.
async fn put_account_and_shard(base: &str, token: &str) {
    let client = reqwest::Client::new();
    let resp = client
        .put(format!("{base}/v1/accounts/acct-1"))
        .bearer_auth(token)
        .json(&serde_json::json!({"tier": "retail"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "PUT account: {}", resp.status());
    let shard = base64::engine::general_purpose::STANDARD.encode([42u8; 48]);
    let resp = client
        .put(format!("{base}/v1/accounts/acct-1/shards/s1"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "shard": shard }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED, "PUT shard");
}

/// `shardgate.db` (and its -wal/-shm) were created 0644 inside the 0700 data dir.
#[tokio::test]
async fn every_file_of_a_fresh_data_dir_is_private_after_a_put() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gw = serve(&data, "fresh").unwrap();
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    common::plant(token.trim());
    put_account_and_shard(&gw.base, token.trim()).await;
    // Checked while it runs, so the -wal and -shm files are there.
    let mut seen = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.mode() & 0o7777;
            if meta.is_dir() {
                assert_eq!(mode, 0o700, "{}", path.display());
                stack.push(path);
            } else {
                assert!(meta.is_file(), "{} is not a regular file", path.display());
                assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
                seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    seen.sort();
    for name in [
        "admin.token",
        "audit.key",
        "local.keyring",
        "shardgate.db",
        "shardgate.db-wal",
    ] {
        assert!(seen.iter().any(|s| s == name), "no {name} in {seen:?}");
    }
    assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o7777, 0o700);
}

/// An empty `admin.token` made the SHA-256 of "" an admin token with every scope.
#[test]
fn an_empty_admin_token_file_stops_start_up() {
    for (i, content) in ["", "\n", "  \n"].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        private_dir(&data);
        write_mode(&data.join("admin.token"), content.as_bytes(), 0o600);
        let stderr = serve(&data, &format!("empty-token-{i}"))
            .err()
            .unwrap_or_else(|| panic!("served with admin.token = {content:?}"));
        assert!(
            stderr.contains("admin.token") && stderr.contains("is empty"),
            "{stderr}"
        );
    }
}

/// The names the embedded default creates in its data dir. A dangling symlink planted at
/// one was written through (`admin.token`, `audit.key`) or replaced by a fresh file
/// (`local.keyring`); now start-up stops and the link's target is never created. A file
/// others may read at one is refused, named, and left as it is.
#[test]
fn names_planted_in_the_data_dir_are_never_written_through() {
    for name in ["admin.token", "audit.key", "local.keyring"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        private_dir(&data);
        let target = dir.path().join(format!("attacker-{name}"));
        symlink(&target, data.join(name)).unwrap();
        let stderr = serve(&data, &format!("dangling-{name}"))
            .err()
            .unwrap_or_else(|| panic!("served with a dangling symlink at {name}"));
        assert!(
            !target.exists(),
            "{name}: wrote through the planted symlink"
        );
        let meta = std::fs::symlink_metadata(data.join(name)).unwrap();
        assert!(
            meta.file_type().is_symlink(),
            "{name}: the link was replaced"
        );
        assert!(stderr.contains(name), "{name}: {stderr}");

        std::fs::remove_file(data.join(name)).unwrap();
        write_mode(&data.join(name), b"planted\n", 0o644);
        let stderr = serve(&data, &format!("readable-{name}"))
            .err()
            .unwrap_or_else(|| panic!("served with a world-readable {name}"));
        assert!(
            stderr.contains(&data.join(name).display().to_string())
                && stderr.contains("others may read it"),
            "{name}: {stderr}"
        );
        assert!(
            !stderr.contains("planted"),
            "{name}: quoted the file: {stderr}"
        );
        assert_eq!(std::fs::read(data.join(name)).unwrap(), b"planted\n");
        let mode = std::fs::metadata(data.join(name)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o644, "{name}: the file was changed");
    }
}

/// A data dir laid out like a Kubernetes Secret volume (`NAME -> ..data/NAME`,
/// `..data -> ..TIMESTAMP`, files 0440 with an `fsGroup`): the keyring, the audit key and
/// the admin token load through the links, and the gateway serves.
#[tokio::test]
async fn secrets_mounted_as_symlinks_with_mode_0440_load() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    private_dir(&data);
    let ts = data.join("..2026_12_06_00_00_00.1");
    private_dir(&ts);
    shardgate_backends::local::create_if_missing(&ts.join("local.keyring")).unwrap();
    std::fs::set_permissions(
        ts.join("local.keyring"),
        std::fs::Permissions::from_mode(0o440),
    )
    .unwrap();
    write_mode(&ts.join("audit.key"), audit_key_text().as_bytes(), 0o440);
    let token = {
        use secrecy::ExposeSecret;
        shardgate::domain::auth::generate_token()
            .expose_secret()
            .to_string()
    };
    common::plant(&token);
    write_mode(
        &ts.join("admin.token"),
        format!("{token}\n").as_bytes(),
        0o440,
    );
    symlink("..2026_12_06_00_00_00.1", data.join("..data")).unwrap();
    let mut links: Vec<PathBuf> = Vec::new();
    for name in ["local.keyring", "audit.key", "admin.token"] {
        symlink(format!("..data/{name}"), data.join(name)).unwrap();
        links.push(data.join(name));
    }
    let gw = serve(&data, "mounted").unwrap_or_else(|stderr| panic!("refused: {stderr}"));
    put_account_and_shard(&gw.base, &token).await;
    for link in links {
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(meta.file_type().is_symlink(), "{} replaced", link.display());
    }
}
