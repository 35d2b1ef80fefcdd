//! Build metadata for `--version` and `shardgate_build_info`: the git commit the binary was built from and the build date.
//!
//! `SHARDGATE_GIT_COMMIT`: `git rev-parse --short=12 HEAD`, or `unknown` outside a git
//! checkout (a source tarball, a container build without `.git`). `SHARDGATE_BUILD_DATE`:
//! RFC 3339 (UTC, seconds), from `SOURCE_DATE_EPOCH` when it is set (reproducible builds),
//! else the time of the build.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Re-run when HEAD moves (a commit, a checkout) or the reproducible date changes, and
    // not on every source change.
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &r]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let when = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap_or_else(SystemTime::now);
    let date = humantime::format_rfc3339_seconds(when);
    println!("cargo:rustc-env=SHARDGATE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=SHARDGATE_BUILD_DATE={date}");
}
