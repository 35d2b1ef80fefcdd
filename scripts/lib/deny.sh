# shellcheck shell=bash
# The supply-chain check of scripts/test.sh: `cargo deny check bans licenses sources` against
# deny.toml (denied crates, tolerated duplicates with their reasons, the license allow-list,
# crates.io as the only source). Source after common.sh.
#
# Advisories are NOT checked: `cargo deny check advisories` fetches the RustSec database
# from GitHub, which this project's machines and CI cannot reach (docs/security.md, "Supply chain").

# The version installed when cargo-deny is missing (builds with rustc >= 1.88).
SG_CARGO_DENY_VERSION=0.20.2

# cargo-deny on PATH, installed from crates.io when missing (strict mode: a failed install
# is a failure, like any other component).
sg_ensure_cargo_deny() {
    if cargo deny --version >/dev/null 2>&1; then
        sg_log "cargo-deny: $(cargo deny --version 2>/dev/null | head -n1)"
        return 0
    fi
    sg_log "cargo-deny missing: cargo install --locked cargo-deny --version $SG_CARGO_DENY_VERSION (a few minutes)"
    cargo install --locked cargo-deny --version "$SG_CARGO_DENY_VERSION" >&2 || true
    if ! cargo deny --version >/dev/null 2>&1; then
        sg_missing "cargo-deny is not available and could not be installed (cargo install --locked cargo-deny)."
        return 1
    fi
    sg_log "cargo-deny: $(cargo deny --version 2>/dev/null | head -n1)"
}

# Every crate of Cargo.lock is downloaded from crates.io first (cargo-deny reads their
# manifests and license files, including those of other platforms' crates), then the check
# runs with --frozen: Cargo.lock unchanged, no network at all.
sg_deny_check() {
    (cd "$REPO_ROOT" && cargo fetch --locked --quiet) || {
        sg_log "cargo fetch --locked failed"
        return 1
    }
    (cd "$REPO_ROOT" && cargo deny --frozen check bans licenses sources)
}
