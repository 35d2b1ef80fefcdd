//! Build metadata for `--version` and `shardgate_build_info`: the git commit the binary was built from and the build date.
fn main() {
    println!("cargo:rustc-env=SHARDGATE_GIT_COMMIT={}", git_commit());
    println!("cargo:rustc-env=SHARDGATE_BUILD_DATE={}", build_date());
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}

/// `git rev-parse --short=12 HEAD` of the checkout the crate is built in, or `unknown` (a
/// source tarball, no git). Rebuilt when HEAD moves: `.git/HEAD` and the ref it names.
fn git_commit() -> String {
    let Some(git_dir) = git_dir() else {
        return "unknown".into();
    };
    let head = git_dir.join("HEAD");
    println!("cargo:rerun-if-changed={}", head.display());
    if let Ok(text) = std::fs::read_to_string(&head) {
        if let Some(r) = text.trim().strip_prefix("ref: ") {
            // A worktree's refs live in the main checkout's git dir (its `commondir`).
            let common = std::fs::read_to_string(git_dir.join("commondir"))
                .map_or_else(|_| git_dir.clone(), |c| git_dir.join(c.trim()));
            println!("cargo:rerun-if-changed={}", common.join(r).display());
            println!(
                "cargo:rerun-if-changed={}",
                common.join("packed-refs").display()
            );
        }
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".into())
}

/// The `.git` directory above the crate (a worktree's `.git` file names its own git dir).
fn git_dir() -> Option<std::path::PathBuf> {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let mut dir = Some(std::path::PathBuf::from(manifest));
    while let Some(d) = dir {
        let dot = d.join(".git");
        if dot.is_dir() {
            return Some(dot);
        }
        if dot.is_file() {
            let text = std::fs::read_to_string(&dot).ok()?;
            let path = text.trim().strip_prefix("gitdir: ")?;
            return Some(d.join(path));
        }
        dir = d.parent().map(std::path::Path::to_path_buf);
    }
    None
}

/// The build date, RFC 3339 (UTC, seconds): `SOURCE_DATE_EPOCH` when set (reproducible
/// builds), else now.
fn build_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
        });
    rfc3339(secs)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (days to a civil date: Howard Hinnant's algorithm).
fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
