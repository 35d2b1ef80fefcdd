//! Child-process tests of the command line's everyday habits (issue 29, item 5):
//! `config check` refuses what `serve` refuses and creates nothing, `config print` shows the
//! effective configuration with no secret in it, `--version` names the commit and build date,
//! completions and man pages cover every command (the pages linted by mandoc, which
//! scripts/test.sh installs: `SHARDGATE_TEST_MANDOC`), and listings print RFC 3339 times.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::cli::{describe, run_to_end, shardgate_command, CliRun};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// A token hash for the configs below (never a real token's).
const TOKEN_SHA256: &str = "5a5f0d3cfc1b0d94b6b0b0f1c4a3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5";

/// Run `shardgate <args>` with extra environment, stdout and stderr kept in the log dir.
fn cli_env(args: &[&str], env: &[(&str, &str)], logs: &Path, name: &str) -> CliRun {
    let mut cmd = shardgate_command(args);
    cmd.envs(env.iter().copied());
    let run = run_to_end(cmd, CLI_TIMEOUT, &describe(args));
    std::fs::write(logs.join(format!("{name}.stdout.log")), &run.stdout).unwrap();
    std::fs::write(logs.join(format!("{name}.stderr.log")), &run.stderr).unwrap();
    run
}

fn cli(args: &[&str], logs: &Path, name: &str) -> CliRun {
    cli_env(args, &[], logs, name)
}

/// A config file in `dir`: SQLite `db` (migrated by serve unless `migrate = false`), a
/// local keyring created on demand, one token.
fn write_config(dir: &Path, db: &str, migrate: bool, extra: &str) -> String {
    let d = dir.display();
    let text = format!(
        r#"listen = "127.0.0.1:0"
data_dir = "{d}"
[store]
url = "{db}"
migrate = {migrate}
[backends.local]
kind = "local"
key_file = "{d}/local.keyring"
create = true
[tiers]
retail = "local"
[[tokens]]
name = "ops"
sha256 = "{TOKEN_SHA256}"
scopes = ["*"]
expires_at = "2030-01-02T03:04:05Z"
[audit]
key_file = "{d}/audit.key"
create_key = true
{extra}
"#
    );
    let path = dir.join("shardgate.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn config_check_refuses_what_serve_refuses_and_creates_nothing() {
    let logs = common::log_dir("config_check");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_arg = data.to_str().unwrap();

    // An empty data directory: everything is still to be created, and nothing is.
    let r = cli(&["config", "check", "--data-dir", data_arg], &logs, "empty");
    assert!(r.ok(), "{}{}", r.stdout, r.stderr);
    for what in [
        "data directory",
        "keyring",
        "audit key",
        "admin token",
        "SQLite database",
    ] {
        assert!(
            r.stdout
                .lines()
                .any(|l| l.starts_with("serve would create: ") && l.contains(what)),
            "{what} not listed: {}",
            r.stdout
        );
    }
    assert!(
        r.stdout.contains("ok: the embedded default"),
        "{}",
        r.stdout
    );
    assert!(!data.exists(), "config check created {}", data.display());

    // A keyring others may read: serve refuses it, and so does check, with the same words.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let keyring = data.join("local.keyring");
    shardgate_backends::local::create_if_missing(&keyring).unwrap();
    std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o644)).unwrap();
    let check = cli(
        &["config", "check", "--data-dir", data_arg],
        &logs,
        "keyring-0644",
    );
    let serve = cli(
        &["serve", "--data-dir", data_arg, "--listen", "127.0.0.1:0"],
        &logs,
        "serve-keyring-0644",
    );
    assert!(!serve.ok() && !serve.stdout.contains("listening on"));
    assert!(!check.ok(), "{}", check.stdout);
    let reason = serve.stderr.lines().last().unwrap_or_default().to_string();
    assert!(reason.contains("chmod 600"), "{}", serve.stderr);
    assert!(
        check
            .stderr
            .contains(reason.trim_start_matches("shardgate: ")),
        "check: {}\nserve: {}",
        check.stderr,
        serve.stderr
    );

    // Private: the check passes, opens the keyring read-only and still creates nothing.
    std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
    let r = cli(
        &["config", "check", "--data-dir", data_arg],
        &logs,
        "private",
    );
    assert!(r.ok(), "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("keyring"), "{}", r.stdout);
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), before.len());
}

#[test]
fn config_check_reads_the_schema_and_never_migrates() {
    let logs = common::log_dir("config_check_schema");
    let tmp = tempfile::tempdir().unwrap();
    let db_path = tmp.path().join("empty.db");
    // An empty file is an SQLite database without the schema.
    std::fs::write(&db_path, b"").unwrap();
    let db = format!("sqlite://{}?mode=rwc", db_path.display());

    // `migrate = false`: serve refuses a database without the schema, and so does check.
    let cfg = write_config(tmp.path(), &db, false, "");
    let r = cli(&["config", "check", "--config", &cfg], &logs, "no-migrate");
    assert!(!r.ok(), "{}", r.stdout);
    assert!(r.stderr.contains("no shardgate schema"), "{}", r.stderr);

    // `migrate = true`: serve would migrate it, which check lists and does not do.
    let cfg = write_config(tmp.path(), &db, true, "");
    let r = cli(&["config", "check", "--config", &cfg], &logs, "migrate");
    assert!(r.ok(), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("serve would create: schema migrations"),
        "{}",
        r.stdout
    );
    let r = cli(
        &["config", "check", "--config", &cfg],
        &logs,
        "migrate-again",
    );
    assert!(
        r.stdout.contains("schema migrations"),
        "check migrated the database: {}",
        r.stdout
    );

    // Once migrated (`db migrate`), nothing is left to do.
    let m = cli(&["db", "migrate", "--config", &cfg], &logs, "db-migrate");
    assert!(m.ok(), "{}", m.stderr);
    let r = cli(&["config", "check", "--config", &cfg], &logs, "migrated");
    assert!(r.ok(), "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("schema migrations"), "{}", r.stdout);
}

#[test]
fn config_print_shows_the_effective_config_and_no_secret() {
    let logs = common::log_dir("config_print");
    let tmp = tempfile::tempdir().unwrap();
    let file_secret = "file-planted-Pw-7d1c";
    let env_secret = "env-planted-Pw-93ab";
    let query_secret = "env-planted-Query-55e0";
    for s in [file_secret, env_secret, query_secret] {
        common::plant(s);
    }
    let db = format!("postgres://gw:{file_secret}@127.0.0.1:1/shards");
    let cfg = write_config(tmp.path(), &db, true, "");

    let r = cli(&["config", "print", "--config", &cfg], &logs, "file");
    assert!(r.ok(), "{}", r.stderr);
    let printed: toml::Value = toml::from_str(&r.stdout).unwrap();
    assert_eq!(
        printed["store"]["url"].as_str(),
        Some("postgres://gw:<redacted>@127.0.0.1:1/shards")
    );
    // Defaults are filled in, the file's values kept.
    assert_eq!(printed["listen"].as_str(), Some("127.0.0.1:0"));
    assert!(printed["limits"].as_table().is_some_and(|t| !t.is_empty()));
    assert_eq!(printed["tokens"][0]["name"].as_str(), Some("ops"));

    // The environment overrides the file, and its secrets are redacted as well.
    let env_url =
        format!("postgres://gw:{env_secret}@db.env.example:5432/shards?password={query_secret}");
    let r = cli_env(
        &["config", "print", "--config", &cfg],
        &[
            ("SHARDGATE_STORE__URL", env_url.as_str()),
            ("SHARDGATE_LIMITS__BATCH_MAX_ITEMS", "7"),
        ],
        &logs,
        "env",
    );
    assert!(r.ok(), "{}", r.stderr);
    let printed: toml::Value = toml::from_str(&r.stdout).unwrap();
    assert_eq!(
        printed["store"]["url"].as_str(),
        Some("postgres://gw:<redacted>@db.env.example:5432/shards?password=<redacted>")
    );
    assert_eq!(printed["limits"]["batch_max_items"].as_integer(), Some(7));
    for (name, out) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        for s in [file_secret, env_secret, query_secret, TOKEN_SHA256] {
            assert!(!out.contains(s), "{s} on {name}: {out}");
        }
    }
}

#[test]
fn version_names_the_commit_and_the_build_date() {
    let logs = common::log_dir("version");
    let r = cli(&["--version"], &logs, "version");
    assert!(r.ok(), "{}", r.stderr);
    let line = r.stdout.trim();
    let rest = line
        .strip_prefix(concat!(
            "shardgate ",
            env!("CARGO_PKG_VERSION"),
            " (commit "
        ))
        .unwrap_or_else(|| panic!("{line}"));
    let (commit, rest) = rest.split_once(", built ").unwrap();
    let date = rest.strip_suffix(')').unwrap();
    humantime::parse_rfc3339(date).unwrap_or_else(|e| panic!("{date}: {e}"));
    // Built from a git checkout (CI's clone, a developer's tree): that commit, else `unknown`.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert_eq!(commit, head.as_deref().unwrap_or("unknown"), "{line}");
}

#[test]
fn completions_and_man_pages_cover_every_command() {
    let logs = common::log_dir("completions_man");
    let r = cli(&["completions", "bash"], &logs, "bash");
    assert!(r.ok(), "{}", r.stderr);
    for word in [
        "shardgate",
        "config",
        "check",
        "print",
        "keys",
        "migrate",
        "man",
    ] {
        assert!(r.stdout.contains(word), "bash completion lacks {word}");
    }
    let r = cli(&["completions", "zsh"], &logs, "zsh");
    assert!(
        r.ok() && r.stdout.contains("#compdef shardgate"),
        "{}",
        r.stderr
    );

    let r = cli(&["man"], &logs, "man");
    assert!(r.ok(), "{}", r.stderr);
    assert!(r.stdout.contains("\n.TH shardgate 1"), "{}", r.stdout);
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH SUBCOMMANDS"] {
        assert!(r.stdout.contains(section), "no {section}");
    }
    assert!(r.stdout.contains("shardgate\\-config"), "{}", r.stdout);

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("man1");
    let r = cli(&["man", "--out", out.to_str().unwrap()], &logs, "man-out");
    assert!(r.ok(), "{}", r.stderr);
    for page in ["shardgate", "shardgate-config-check", "shardgate-keys-list"] {
        let file = out.join(format!("{page}.1"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains(&format!(".TH {page} 1")),
            "{}",
            file.display()
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{}", file.display());
    }
    let Some(mandoc) = shardgate_testkit::require_env("SHARDGATE_TEST_MANDOC") else {
        return;
    };
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        let lint = std::process::Command::new(&mandoc)
            .args(["-T", "lint", "-W", "error"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            lint.status.success(),
            "mandoc -T lint {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&lint.stdout),
            String::from_utf8_lossy(&lint.stderr)
        );
    }
}

#[test]
fn listings_print_rfc_3339_times() {
    let logs = common::log_dir("listings_rfc3339");
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", tmp.path().join("db").display());
    let cfg = write_config(tmp.path(), &db, true, "");

    let r = cli(&["token", "list", "--config", &cfg], &logs, "token-list");
    assert!(r.ok(), "{}", r.stderr);
    assert!(
        r.stdout.contains("2030-01-02T03:04:05.000Z"),
        "{}",
        r.stdout
    );

    let r = cli(&["keys", "list", "--config", &cfg], &logs, "keys-list");
    assert!(r.ok(), "{}", r.stderr);
    let row = r
        .stdout
        .lines()
        .find(|l| l.starts_with("local "))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    let changed = row
        .split_whitespace()
        .find(|w| w.ends_with('Z') && w.contains('T'))
        .unwrap_or_else(|| panic!("no RFC 3339 time in {row}"));
    humantime::parse_rfc3339(changed).unwrap();
}
