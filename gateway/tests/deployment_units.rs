//! The deployment units in `packaging/` (docs/deployment.md) are checked by the tools their
//! ecosystems use, so that a unit that no longer starts, loses its sandboxing or breaks a
//! manifest fails CI instead of a deploy:
//!
//! * the systemd unit: `systemd-analyze verify` on a copy whose `ExecStart=` names the binary
//!   this test run built (verify refuses a missing binary), and `systemd-analyze security
//!   --offline=true --threshold=20` (overall exposure at most 2.0);
//! * the container recipe: `hadolint`, and `checkov` (framework `dockerfile`);
//! * the Kubernetes manifests: `kubernetes-validate --strict` against the oldest and the newest
//!   Kubernetes it bundles schemas of that we support (the ServiceMonitor CRD has no bundled
//!   schema: its warning is accepted, and must stay the only one), and `checkov
//!   --skip-download` (offline), where every skipped check must carry its reason;
//! * what no tool knows: the ConfigMap's configuration is one the gateway accepts, the
//!   Deployment drains before its listener closes, Secrets are mounted 0440.
//!
//! `scripts/test.sh` installs the tools (`sg_ensure_deploy_tools` in scripts/lib/services.sh:
//! Debian's systemd, pinned PyPI packages in virtualenvs) and names them in
//! `SHARDGATE_TEST_SYSTEMD_ANALYZE`, `SHARDGATE_TEST_HADOLINT`,
//! `SHARDGATE_TEST_KUBERNETES_VALIDATE` and `SHARDGATE_TEST_CHECKOV`; a test whose tool is
//! missing skips loudly (fails in strict mode), as `shardgate_testkit` rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_testkit::require_env;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root, without `..` (checkov's kubernetes runner finds nothing under a
/// directory named with one).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn packaging(rel: &str) -> PathBuf {
    repo().join("packaging").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The Kubernetes manifests, in file-name (apply) order.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(packaging("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 9, "manifests: {files:?}");
    files
}

const UNIT: &str = "systemd/shardgate.service";
const INSTALLED_BINARY: &str = "ExecStart=/usr/local/bin/shardgate ";

/// A copy of the unit (same file name) whose `ExecStart=` runs the binary this build made.
fn unit_with_built_binary(dir: &Path) -> PathBuf {
    let unit = read(&packaging(UNIT));
    assert_eq!(
        unit.matches(INSTALLED_BINARY).count(),
        1,
        "the unit should start {INSTALLED_BINARY:?} once"
    );
    let built = format!("ExecStart={} ", env!("CARGO_BIN_EXE_shardgate"));
    let copy = dir.join("shardgate.service");
    std::fs::write(&copy, unit.replace(INSTALLED_BINARY, &built)).unwrap();
    copy
}

#[test]
fn the_systemd_unit_verifies_with_the_built_binary() {
    let Some(analyze) = require_env("SHARDGATE_TEST_SYSTEMD_ANALYZE") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let copy = unit_with_built_binary(dir.path());
    let out = run(Command::new(&analyze).arg("verify").arg(&copy));
    // verify prints nothing for a clean unit; any line is a warning about it.
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify {}:\n{}",
        copy.display(),
        text(&out)
    );
    // And it does refuse the unit as shipped where no binary is installed: the check above
    // ran on the built binary, not on a unit verify skips.
    if !Path::new("/usr/local/bin/shardgate").exists() {
        let out = run(Command::new(&analyze).arg("verify").arg(packaging(UNIT)));
        assert!(!out.status.success(), "{}", text(&out));
    }
}

#[test]
fn the_systemd_unit_exposure_is_at_most_2_0() {
    let Some(analyze) = require_env("SHARDGATE_TEST_SYSTEMD_ANALYZE") else {
        return;
    };
    let unit = packaging(UNIT);
    let out = run(Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&unit));
    let all = text(&out);
    assert!(out.status.success(), "exposure above 2.0:\n{all}");
    // "→ Overall exposure level for shardgate.service: 1.2 OK 🙂"
    let line = all
        .lines()
        .find(|l| l.contains("Overall exposure level for shardgate.service:"))
        .unwrap_or_else(|| panic!("no overall exposure line:\n{all}"));
    let score: f64 = line
        .rsplit_once(':')
        .unwrap()
        .1
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    assert!(score <= 2.0, "{line}");
}

/// The sandboxing the docs promise, line by line (the exposure score alone would let one of
/// them go if another were added).
#[test]
fn the_systemd_unit_keeps_its_sandboxing() {
    let unit = read(&packaging(UNIT));
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for wanted in [
        "User=shardgate",
        "StateDirectory=shardgate",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "MemoryDenyWriteExecute=yes",
        "LimitCORE=0",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "SystemCallFilter=@system-service",
        "SystemCallArchitectures=native",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "UMask=0077",
    ] {
        assert!(lines.contains(&wanted), "{UNIT} lacks the line {wanted:?}");
    }
    // The only writable place is the state directory: nothing re-opens the file system.
    for loosening in ["ReadWritePaths=", "ProtectSystem=full", "ProtectSystem=no"] {
        assert!(
            !lines.iter().any(|l| l.starts_with(loosening)),
            "{UNIT} has {loosening:?}: put site-specific loosening in a drop-in"
        );
    }
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let Some(hadolint) = require_env("SHARDGATE_TEST_HADOLINT") else {
        return;
    };
    let file = packaging("container/Dockerfile");
    let out = run(Command::new(&hadolint)
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(&file));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "hadolint {}:\n{}",
        file.display(),
        text(&out)
    );
    // What hadolint does not check: a non-root numeric user in the image that runs.
    let recipe = read(&file);
    let last_from = recipe.rfind("\nFROM ").unwrap();
    let runtime = &recipe[last_from..];
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u >= 1000),
        "USER {user}: want a numeric non-root uid"
    );
}

const SERVICE_MONITOR_WARNING: &str =
    "Couldn't find schema for kind ServiceMonitor with api version monitoring.coreos.com/v1";

#[test]
fn the_kubernetes_manifests_validate_strictly() {
    let Some(validate) = require_env("SHARDGATE_TEST_KUBERNETES_VALIDATE") else {
        return;
    };
    let files = manifests();
    // 1.30: the first with the preStop `sleep` action on by default (beta).
    for version in ["1.30", "1.37"] {
        let out = run(Command::new(&validate)
            .args(["--strict", "-k", version])
            .args(&files));
        let all = text(&out);
        assert!(out.status.success(), "kubernetes {version}:\n{all}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut passed = 0;
        for line in stdout.lines() {
            if line.starts_with("INFO ") && line.contains(" passed for resource ") {
                passed += 1;
            } else if line.starts_with("WARN ") && line.contains(SERVICE_MONITOR_WARNING) {
                // Accepted: no schema for the CRD is bundled (docs/deployment.md).
            } else {
                panic!("kubernetes {version}: unexpected line {line:?}:\n{all}");
            }
        }
        // One resource per file, and every one but the ServiceMonitor validated.
        assert_eq!(passed, files.len() - 1, "kubernetes {version}:\n{all}");
    }
}

#[test]
fn the_manifests_and_the_dockerfile_pass_checkov_with_reasoned_skips() {
    let Some(checkov) = require_env("SHARDGATE_TEST_CHECKOV") else {
        return;
    };
    let out = run(Command::new(&checkov)
        .args(["--skip-download", "--output", "json"])
        .args(["--framework", "kubernetes", "dockerfile"])
        .arg("--directory")
        .arg(packaging(""))
        .env("LOG_LEVEL", "WARNING"));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("checkov's output is not JSON ({e}):\n{}", text(&out)));
    let reports = match report {
        serde_json::Value::Array(v) => v,
        one => vec![one],
    };
    let empty = Vec::new();
    // The report holds every passed check with its code: say only what failed.
    let mut failed = String::from_utf8_lossy(&out.stderr).into_owned();
    for r in &reports {
        for c in r["results"]["failed_checks"].as_array().unwrap_or(&empty) {
            failed += &format!(
                "{} {} ({}, {})\n",
                c["check_id"], c["check_name"], c["file_path"], c["resource"]
            );
        }
    }
    let mut frameworks = Vec::new();
    for r in &reports {
        let kind = r["check_type"].as_str().unwrap().to_string();
        let summary = &r["summary"];
        assert_eq!(summary["failed"], 0, "{kind}: failed checks:\n{failed}");
        assert_eq!(summary["parsing_errors"], 0, "{kind}: {summary}\n{failed}");
        assert!(
            summary["passed"].as_u64().unwrap() >= 20,
            "{kind}: too few checks ran: {summary}"
        );
        for skipped in r["results"]["skipped_checks"].as_array().unwrap_or(&empty) {
            let reason = skipped["check_result"]["suppress_comment"]
                .as_str()
                .unwrap_or("")
                .trim();
            assert!(
                reason.len() >= 20,
                "{kind}: {} is skipped in {} without a reason (checkov:skip=ID:reason)",
                skipped["check_id"],
                skipped["file_path"]
            );
        }
        frameworks.push((kind, summary["resource_count"].as_u64().unwrap()));
    }
    frameworks.sort();
    let scanned: Vec<&str> = frameworks.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(scanned, ["dockerfile", "kubernetes"], "{failed}");
    assert!(frameworks[0].1 >= 1, "{frameworks:?}");
    assert!(
        frameworks[1].1 >= manifests().len() as u64,
        "checkov saw fewer resources than there are manifests: {frameworks:?}"
    );
    assert!(
        out.status.success(),
        "checkov exit {:?}\n{failed}",
        out.status.code()
    );
}

/// The TOML inside the ConfigMap's `shardgate.toml: |` block.
fn config_map_toml() -> String {
    let yaml = read(&packaging("kubernetes/20-configmap.yaml"));
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "shardgate.toml: |");
    assert!(lines.next().is_some(), "no shardgate.toml in the ConfigMap");
    let mut toml = String::new();
    for line in lines {
        match line.strip_prefix("    ") {
            Some(rest) => toml.push_str(rest),
            None if line.trim().is_empty() => {}
            None => break,
        }
        toml.push('\n');
    }
    toml
}

#[test]
fn the_kubernetes_config_map_is_a_configuration_the_gateway_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shardgate.toml");
    let toml = config_map_toml();
    assert!(toml.contains("migrate = false"), "{toml}");
    std::fs::write(&file, &toml).unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["policy", "check", "--config"])
        .arg(&file)
        .env_remove("SHARDGATE_LISTEN")
        .env("RUST_LOG", "warn"));
    assert!(out.status.success(), "policy check:\n{}", text(&out));
}

/// The number after `key:` on the first line at or after `from` that has it.
fn number_after(lines: &[&str], from: usize, key: &str) -> u64 {
    lines[from..]
        .iter()
        .find_map(|l| l.trim().strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} after line {from}"))
        .trim()
        .trim_matches('"')
        .parse()
        .unwrap()
}

fn line_of(lines: &[&str], what: &str) -> usize {
    lines
        .iter()
        .position(|l| l.trim() == what)
        .unwrap_or_else(|| panic!("no line {what:?}"))
}

#[test]
fn the_deployment_drains_before_its_listener_closes() {
    let yaml = read(&packaging("kubernetes/50-deployment.yaml"));
    let lines: Vec<&str> = yaml.lines().collect();
    let readiness = line_of(&lines, "readinessProbe:");
    let period = number_after(&lines, readiness, "periodSeconds:");
    let failures = number_after(&lines, readiness, "failureThreshold:");
    let pre_stop = number_after(&lines, line_of(&lines, "preStop:"), "seconds:");
    let grace = number_after(&lines, 0, "terminationGracePeriodSeconds:");
    let shutdown_ms = number_after(
        &config_map_toml().lines().collect::<Vec<_>>(),
        0,
        "shutdown_grace_ms =",
    );
    // Readiness has failed (and the endpoint is gone) before SIGTERM closes the listener.
    assert!(
        pre_stop > period * failures,
        "preStop {pre_stop}s <= readiness {period}s x {failures}"
    );
    // SIGKILL comes only after the preStop sleep and the gateway's own grace period.
    assert!(
        grace > pre_stop + shutdown_ms / 1000,
        "terminationGracePeriodSeconds {grace} <= {pre_stop} + {shutdown_ms} ms"
    );
}

#[test]
fn the_pods_mount_secrets_0440_without_service_links() {
    for file in manifests() {
        let yaml = read(&file);
        let lines: Vec<&str> = yaml.lines().collect();
        if yaml.contains("\n    spec:\n") {
            assert!(
                yaml.contains("enableServiceLinks: false"),
                "{}: pods need enableServiceLinks: false",
                file.display()
            );
            assert!(
                yaml.contains("automountServiceAccountToken: false"),
                "{}",
                file.display()
            );
        }
        for (i, _) in lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.trim() == "secret:")
        {
            let mode = lines[i + 1..]
                .iter()
                .take(3)
                .find_map(|l| l.trim().strip_prefix("defaultMode:"))
                .unwrap_or_else(|| panic!("{}:{}: no defaultMode", file.display(), i + 1));
            assert_eq!(mode.trim(), "0440", "{}:{}", file.display(), i + 1);
        }
    }
}
