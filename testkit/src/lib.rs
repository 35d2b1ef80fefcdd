//! The one rule for tests whose component (PostgreSQL, moto, SoftHSM2, a tool) is missing.
//!
//! Every crate's tests used to decide on their own whether a missing component skips the test
//! or fails it, with different rules (some honoured only `CI=true`), and a skipped test
//! reported PASS. This crate is the single place for that decision, a dev-dependency of every
//! crate with such tests (and a dependency of the test-only `shardgate-softhsm-tests`), so it
//! never reaches a release build:
//!
//! * [`strict`] has the truth table of `sg_is_strict` in `scripts/lib/common.sh`: `CI` is one
//!   of `true`, `TRUE`, `True`, `1`, `yes`, or `SHARDGATE_TEST_STRICT=1`.
//! * [`skip`] panics in strict mode; otherwise it prints a loud `SKIPPED:` notice and appends
//!   one line (`binary<TAB>test<TAB>why`) to `$SHARDGATE_TEST_LOG_DIR/skipped-tests.txt`, which
//!   `scripts/test.sh` counts as skipped (not passed) in its closing line.

use std::io::Write as _;
use std::path::Path;

/// The file in `$SHARDGATE_TEST_LOG_DIR` that lists skipped tests, one line each.
pub const SKIP_FILE: &str = "skipped-tests.txt";

/// The strictness rule on explicit values of `CI` and `SHARDGATE_TEST_STRICT` (`None`: unset).
/// Same truth table as `sg_is_strict` in `scripts/lib/common.sh`.
pub fn strict_from(ci: Option<&str>, shardgate_test_strict: Option<&str>) -> bool {
    matches!(ci, Some("true" | "TRUE" | "True" | "1" | "yes")) || shardgate_test_strict == Some("1")
}

/// Whether a missing component must fail the test (CI, or `SHARDGATE_TEST_STRICT=1`) rather
/// than skip it.
pub fn strict() -> bool {
    let ci = std::env::var("CI").ok();
    let st = std::env::var("SHARDGATE_TEST_STRICT").ok();
    strict_from(ci.as_deref(), st.as_deref())
}

/// The running test's name: libtest runs each test on a thread named after it.
fn test_name() -> String {
    match std::thread::current().name() {
        Some(n) if n != "main" => n.to_string(),
        _ => "<unknown test>".to_string(),
    }
}

/// The test binary's name without cargo's `-<hash>` suffix.
fn binary_name() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(Path::file_stem)
        .and_then(|s| s.to_str())
        .unwrap_or("<unknown binary>");
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => stem.to_string(),
    }
}

/// The running test cannot run because `why` (e.g. "SHARDGATE_TEST_MOTO_ENDPOINT is not
/// set"): panics in strict mode; otherwise prints a loud notice and records the skip in
/// `$SHARDGATE_TEST_LOG_DIR/skipped-tests.txt` (when that variable is set). The caller then
/// returns without testing anything.
#[allow(clippy::panic)] // failing the test is this function's job in strict mode
pub fn skip(why: &str) {
    let test = test_name();
    // Some callers name the test themselves: say it once.
    let why = why.strip_prefix(&format!("{test}: ")).unwrap_or(why);
    let why = why.replace(['\t', '\n'], " ");
    if strict() {
        panic!(
            "{test}: {why}; strict mode (CI or SHARDGATE_TEST_STRICT=1) never skips a test: \
             run the suite through scripts/test.sh"
        );
    }
    eprintln!();
    eprintln!("**************************************************************");
    eprintln!("SKIPPED: {test}: {why} (run scripts/test.sh to provide it)");
    eprintln!("**************************************************************");
    if let Some(dir) = std::env::var_os("SHARDGATE_TEST_LOG_DIR").filter(|d| !d.is_empty()) {
        let line = format!("{}\t{test}\t{why}\n", binary_name());
        // One write of one short line to an O_APPEND file: lines of parallel tests do not mix.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(&dir).join(SKIP_FILE))
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "cannot record the skip in {}: {e}",
                Path::new(&dir).display()
            );
        }
    }
}

/// A non-empty (trimmed) environment variable the test needs, or `None` after [`skip`]
/// ("NAME is not set").
pub fn require_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
        _ => {
            skip(&format!("{name} is not set"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strict_from;

    /// The truth table of `sg_is_strict` (scripts/lib/common.sh), row by row.
    #[test]
    fn strictness_truth_table() {
        let strict_ci = ["true", "TRUE", "True", "1", "yes"];
        let lax_ci = ["", "false", "0", "no", "YES", "tRue", " true", "2"];
        for ci in strict_ci {
            for st in [None, Some(""), Some("0"), Some("1"), Some("true")] {
                assert!(strict_from(Some(ci), st), "CI={ci} STRICT={st:?}");
            }
        }
        for ci in lax_ci.iter().map(|c| Some(*c)).chain([None]) {
            assert!(strict_from(ci, Some("1")), "CI={ci:?} STRICT=1");
            for st in [
                None,
                Some(""),
                Some("0"),
                Some("true"),
                Some("yes"),
                Some(" 1"),
            ] {
                assert!(!strict_from(ci, st), "CI={ci:?} STRICT={st:?}");
            }
        }
    }
}
