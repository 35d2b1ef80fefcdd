# shellcheck shell=bash
# The fuzz smoke run of scripts/test.sh: build the cargo-fuzz crate in fuzz/ and run each of
# its targets for a short while (stable toolchain, no sanitizer: `-s none`). Source after
# common.sh. docs/security.md ("Hardening") documents longer runs.

SG_FUZZ_TARGETS=(open_row ids config)

# cargo-fuzz on PATH, installed from crates.io when missing (strict mode: a failed install is
# a failure, like any other component).
sg_ensure_cargo_fuzz() {
    if cargo fuzz --version >/dev/null 2>&1; then
        sg_log "cargo-fuzz: $(cargo fuzz --version 2>/dev/null | head -n1)"
        return 0
    fi
    sg_log "cargo-fuzz missing: cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked >&2 || true
    if ! cargo fuzz --version >/dev/null 2>&1; then
        sg_missing "cargo-fuzz is not available and could not be installed (cargo install cargo-fuzz)."
        return 1
    fi
    sg_log "cargo-fuzz: $(cargo fuzz --version 2>/dev/null | head -n1)"
}

# $1: seconds per target; $2: a directory for the corpora and each target's full output
# (fresh per run). Builds every target once, then runs each; returns non-zero when a build
# fails or any target finds a crash, a panic, an input over the RSS limit or a hang
# (libFuzzer exits non-zero; the input is kept under fuzz/artifacts/TARGET/).
sg_fuzz_smoke() {
    local secs=$1 out=$2 rc=0 t seeds dict log
    # Instrumented builds never share the suite's target dir (other RUSTFLAGS would make
    # cargo rebuild one or the other every time).
    local target_dir
    if [ -n "${CARGO_TARGET_DIR:-}" ]; then
        target_dir="$CARGO_TARGET_DIR/fuzz"
    else
        target_dir="$REPO_ROOT/fuzz/target"
    fi
    sg_log "fuzz: building ${SG_FUZZ_TARGETS[*]} (target dir $target_dir)"
    if ! (cd "$REPO_ROOT/fuzz" && CARGO_TARGET_DIR="$target_dir" cargo fuzz build -s none -a); then
        sg_log "fuzz: build failed"
        return 1
    fi
    for t in "${SG_FUZZ_TARGETS[@]}"; do
        mkdir -p "$out/corpus/$t"
        log="$out/$t.log"
        seeds=() dict=()
        [ -d "$REPO_ROOT/fuzz/seeds/$t" ] && seeds=("$REPO_ROOT/fuzz/seeds/$t")
        [ -f "$REPO_ROOT/fuzz/dicts/$t.dict" ] && dict=("-dict=$REPO_ROOT/fuzz/dicts/$t.dict")
        sg_log "fuzz: $t for ${secs}s (output: $log)"
        if (cd "$REPO_ROOT/fuzz" && CARGO_TARGET_DIR="$target_dir" cargo fuzz run -s none -a "$t" \
            "$out/corpus/$t" "${seeds[@]}" -- -max_total_time="$secs" -timeout=10 \
            -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}") >"$log" 2>&1; then
            grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" | sed "s/^/fuzz: $t: /" || true
        else
            tail -n 60 "$log"
            sg_log "fuzz: $t FAILED (the input is in fuzz/artifacts/$t/; replay: cd fuzz && cargo fuzz run -s none $t artifacts/$t/<file>)"
            rc=1
        fi
    done
    return "$rc"
}
