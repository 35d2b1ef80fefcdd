# shellcheck shell=bash
# The test runner of scripts/test.sh: cargo-nextest, installed from crates.io when missing.
# Several tests need a process of their own (they set process-wide state: environment,
# signal handlers, rlimits), which nextest gives every test and `cargo test` does not, so a
# run without it is not a run of the suite. Source after common.sh.

# The version installed when cargo-nextest is missing (builds with the workspace's rustc).
SG_CARGO_NEXTEST_VERSION=0.9.143

# cargo-nextest on PATH, installed when missing. Returns 1 when it is not available (strict
# mode: exits, like any other missing component). SHARDGATE_TEST_NO_NEXTEST=1 is the explicit
# opt-out (returns 1 without installing anything).
sg_ensure_cargo_nextest() {
    if [ "${SHARDGATE_TEST_NO_NEXTEST:-}" = 1 ]; then
        sg_log "SHARDGATE_TEST_NO_NEXTEST=1: cargo test instead of cargo-nextest (tests that need a process of their own may interfere)"
        return 1
    fi
    if cargo nextest --version >/dev/null 2>&1; then
        sg_log "test runner: $(cargo nextest --version 2>/dev/null | head -n1)"
        return 0
    fi
    sg_log "cargo-nextest missing: cargo install --locked cargo-nextest --version $SG_CARGO_NEXTEST_VERSION (several minutes)"
    cargo install --locked cargo-nextest --version "$SG_CARGO_NEXTEST_VERSION" >&2 || true
    if ! cargo nextest --version >/dev/null 2>&1; then
        sg_missing "cargo-nextest is not available and could not be installed (cargo install --locked cargo-nextest); SHARDGATE_TEST_NO_NEXTEST=1 runs cargo test instead."
        return 1
    fi
    sg_log "test runner: $(cargo nextest --version 2>/dev/null | head -n1)"
}
