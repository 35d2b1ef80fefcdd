#!/usr/bin/env bash
# Run every test of shardgate against real components: SoftHSM2, moto_server (AWS KMS and
# CloudHSMv2 APIs) and PostgreSQL. Installs / starts what is missing, gives the run a
# throw-away database and a private moto_server, runs the whole suite, then scans every log for
# the secrets the tests planted.
#
#   scripts/test.sh                      everything (nextest + doc tests)
#   scripts/test.sh -E 'test(foo)'       extra arguments go to `cargo nextest run` (doc tests
#   scripts/test.sh -p shardgate-policy  are skipped when extra arguments are given; with -p,
#                                        --workspace is left out and the gateway binary the
#                                        tests start is built first)
#   scripts/test.sh --run CMD [ARGS...]  set up the same environment, run CMD instead of the
#                                        suite (output teed and secret-scanned like the suite)
#
# Environment switches:
#   CI=true                       a component that cannot be installed/started is a failure
#   SHARDGATE_TEST_STRICT=1       the same outside CI
#   SHARDGATE_TEST_SETUP_ONLY=1   set up (install, database, moto), print the environment, run
#                                 the secret scan, clean up; no cargo
#   SHARDGATE_TEST_NEXTEST_PROFILE  nextest profile (default: ci from .config/nextest.toml)
#   SHARDGATE_TEST_NO_NEXTEST=1   use `cargo test --workspace` instead of cargo-nextest (which is
#                                 otherwise installed when missing; several tests need the
#                                 process of their own that nextest gives each test)
#   SHARDGATE_TEST_FUZZ_SECS      seconds each fuzz target runs after the suite (default 30; 0
#                                 skips the fuzz smoke run; it only runs without extra arguments)
#   (without extra arguments, `cargo deny check bans licenses sources` also runs: deny.toml)
#
# Exported to the tests:
#   SHARDGATE_TEST_DATABASE_URL   postgres://postgres@127.0.0.1:5432/shardgate_test_XXXXXXXX
#                                 (tests may create databases named shardgate_test_XXXXXXXX_*;
#                                 all of them are dropped at exit)
#   SHARDGATE_TEST_MOTO_ENDPOINT  http://127.0.0.1:PORT (+ AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
#                                 AWS_DEFAULT_REGION, AWS_REGION dummies)
#   SHARDGATE_TEST_MOTO_CMD       command that starts another moto_server (append -H 127.0.0.1 -p PORT)
#   SHARDGATE_TEST_SOFTHSM_MODULE /usr/lib/softhsm/libsofthsm2.so
#   SHARDGATE_TEST_PG_BINDIR      directory of initdb/pg_ctl/postgres (private clusters)
#   SHARDGATE_TEST_LOG_DIR        fresh directory for logs; kept after the run. Tests append
#                                 every secret they plant, one per line, to planted-secrets.txt
#   SHARDGATE_TEST_SYSTEMD_ANALYZE, SHARDGATE_TEST_HADOLINT, SHARDGATE_TEST_KUBERNETES_VALIDATE,
#   SHARDGATE_TEST_CHECKOV        the tools that check packaging/ (gateway/tests/deployment_units.rs;
#                                 virtualenvs under ~/.cache/shardgate/deploy-tools)
#   SHARDGATE_TEST_MANDOC         mandoc, which lints the generated man pages (gateway/tests/cli_habits.rs)
#   SHARDGATE_TEST_STRICT=1       when a missing component must fail the tests instead of
#                                 skipping them (set in CI)
# A test that skips (component missing, outside strict mode) appends a line to
# $SHARDGATE_TEST_LOG_DIR/skipped-tests.txt (shardgate-testkit): the closing line counts it as
# skipped, not passed, and in strict mode any such line fails the run.
# A component that is not available outside CI has its variable UNSET: tests skip loudly.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$REPO_ROOT"

# shellcheck source=scripts/lib/common.sh
source "$SCRIPT_DIR/lib/common.sh"
# shellcheck source=scripts/lib/services.sh
source "$SCRIPT_DIR/lib/services.sh"
# shellcheck source=scripts/lib/secret-scan.sh
source "$SCRIPT_DIR/lib/secret-scan.sh"
# shellcheck source=scripts/lib/fuzz.sh
source "$SCRIPT_DIR/lib/fuzz.sh"
# shellcheck source=scripts/lib/deny.sh
source "$SCRIPT_DIR/lib/deny.sh"
# shellcheck source=scripts/lib/nextest.sh
source "$SCRIPT_DIR/lib/nextest.sh"

RUN_CMD=()
if [ "${1:-}" = "--run" ]; then
    shift
    [ "$#" -gt 0 ] || sg_die "--run needs a command"
    RUN_CMD=("$@")
    set --
fi

# ---------------------------------------------------------------------------------------------
# Per-run state, cleanup trap
# ---------------------------------------------------------------------------------------------
SG_DB_NAME=""
SG_MOTO_PID=""
SG_STATE_FILE=""
SG_STATE_DIR="${TMPDIR:-/tmp}/shardgate-test-state-$(id -u)"
LOG_DIR=""

# shellcheck disable=SC2317 # invoked by the traps
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM HUP
    if [ -n "$SG_MOTO_PID" ]; then
        sg_stop_pid "$SG_MOTO_PID"
    fi
    if [ -n "$SG_DB_NAME" ]; then
        sg_pg_drop_db_family "$SG_DB_NAME"
    fi
    [ -n "$SG_STATE_FILE" ] && rm -f "$SG_STATE_FILE"
    if [ -n "$LOG_DIR" ]; then
        sg_log "logs kept in: $LOG_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# A run killed with SIGKILL leaves its database (and maybe its moto_server) behind: clean up
# after runs of this user whose script process is gone.
sweep_stale_runs() {
    mkdir -p "$SG_STATE_DIR"
    chmod 700 "$SG_STATE_DIR" 2>/dev/null || true
    local f pid moto db
    for f in "$SG_STATE_DIR"/shardgate_test_*; do
        [ -f "$f" ] || continue
        pid="" moto=""
        read -r pid moto <"$f" || true
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            continue # still running
        fi
        db=$(basename "$f")
        sg_log "cleaning up after a dead run: database $db"
        if [ "$PG_OK" = 1 ]; then
            sg_pg_drop_db_family "$db"
        fi
        if [ -n "$moto" ] && [ -r "/proc/$moto/cmdline" ] && tr '\0' ' ' <"/proc/$moto/cmdline" | grep -q moto; then
            sg_stop_pid "$moto"
        fi
        rm -f "$f"
    done
}

write_state() {
    [ -n "$SG_STATE_FILE" ] || return 0
    echo "$$ ${SG_MOTO_PID:-}" >"$SG_STATE_FILE"
}

# ---------------------------------------------------------------------------------------------
# 0. Log directory first (moto logs there)
# ---------------------------------------------------------------------------------------------
LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/shardgate-test-logs.XXXXXXXX")
chmod 700 "$LOG_DIR"
export SHARDGATE_TEST_LOG_DIR="$LOG_DIR"
sg_log "log directory: $LOG_DIR"
if [ "$SG_STRICT" = 1 ]; then
    export SHARDGATE_TEST_STRICT=1
    sg_log "strict mode (CI=${CI:-} SHARDGATE_TEST_STRICT=${SHARDGATE_TEST_STRICT:-}): every component is required"
fi

# ---------------------------------------------------------------------------------------------
# 1. Components
# ---------------------------------------------------------------------------------------------
SOFTHSM_OK=1 MOTO_OK=1 PG_OK=1
sg_ensure_softhsm || SOFTHSM_OK=0
sg_ensure_moto || MOTO_OK=0
sg_ensure_postgres || PG_OK=0
sg_ensure_openapi_validator || true
sg_ensure_zstandard || true
sg_ensure_deploy_tools || true
sg_ensure_python_client_tools || true
sg_ensure_mandoc || true

# The runner (only when the suite runs): cargo-nextest, installed when missing (strict mode:
# exits when it cannot be); SHARDGATE_TEST_NO_NEXTEST=1 opts out explicitly.
USE_NEXTEST=0
if [ "${SHARDGATE_TEST_SETUP_ONLY:-}" != 1 ] && [ "${#RUN_CMD[@]}" -eq 0 ]; then
    if sg_ensure_cargo_nextest; then
        USE_NEXTEST=1
    else
        sg_log "test runner: cargo test"
    fi
fi

sweep_stale_runs

# ---------------------------------------------------------------------------------------------
# 2. Throw-away database
# ---------------------------------------------------------------------------------------------
unset SHARDGATE_TEST_DATABASE_URL SHARDGATE_TEST_MOTO_ENDPOINT SHARDGATE_TEST_MOTO_CMD \
    SHARDGATE_TEST_PG_BINDIR
if [ "$PG_OK" = 1 ]; then
    db="shardgate_test_$(sg_rand_hex)"
    SG_STATE_FILE="$SG_STATE_DIR/$db"
    SG_DB_NAME=$db # set before creating: the trap drops whatever got created
    write_state
    if sg_pg_create_db "$db"; then
        export SHARDGATE_TEST_DATABASE_URL="postgres://postgres@$SG_PG_HOST:$SG_PG_PORT/$db"
        bindir=$(sg_pg_bindir)
        if [ -n "$bindir" ]; then
            export SHARDGATE_TEST_PG_BINDIR="$bindir"
        fi
    else
        PG_OK=0
        sg_missing "could not create the test database $db." || true
    fi
fi

# ---------------------------------------------------------------------------------------------
# 3. moto_server
# ---------------------------------------------------------------------------------------------
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_DEFAULT_REGION=us-east-1
export AWS_REGION=us-east-1
unset AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_PROFILE AWS_ENDPOINT_URL
if [ "$MOTO_OK" = 1 ]; then
    if sg_start_moto "$LOG_DIR/moto_server.log"; then
        write_state
        export SHARDGATE_TEST_MOTO_ENDPOINT="http://127.0.0.1:$SG_MOTO_PORT"
        export SHARDGATE_TEST_MOTO_CMD="${SG_MOTO_CMD[*]}"
    else
        MOTO_OK=0
        sg_missing "moto_server did not start (log: $LOG_DIR/moto_server.log)." || true
    fi
fi

# ---------------------------------------------------------------------------------------------
# 4. SoftHSM2
# ---------------------------------------------------------------------------------------------
if [ "$SOFTHSM_OK" = 1 ]; then
    export SHARDGATE_TEST_SOFTHSM_MODULE="$SG_SOFTHSM_MODULE"
else
    unset SHARDGATE_TEST_SOFTHSM_MODULE
fi

sg_log "environment for the tests:"
for v in SHARDGATE_TEST_DATABASE_URL SHARDGATE_TEST_MOTO_ENDPOINT SHARDGATE_TEST_MOTO_CMD \
    SHARDGATE_TEST_SOFTHSM_MODULE SHARDGATE_TEST_PG_BINDIR SHARDGATE_TEST_LOG_DIR \
    SHARDGATE_TEST_OPENAPI_PYTHON SHARDGATE_TEST_SYSTEMD_ANALYZE SHARDGATE_TEST_HADOLINT \
    SHARDGATE_TEST_KUBERNETES_VALIDATE SHARDGATE_TEST_CHECKOV SHARDGATE_TEST_PYTHON_CLIENT_BIN \
    SHARDGATE_TEST_STRICT AWS_DEFAULT_REGION; do
    sg_log "  $v=${!v:-<unset>}"
done
if [ "$SOFTHSM_OK$MOTO_OK$PG_OK" != 111 ]; then
    sg_warn_loud "Running WITHOUT:$([ "$SOFTHSM_OK" = 1 ] || echo ' SoftHSM2')$([ "$MOTO_OK" = 1 ] || echo ' moto')$([ "$PG_OK" = 1 ] || echo ' PostgreSQL')." \
        "Tests that need those components skip. This run does NOT prove they work."
fi

# ---------------------------------------------------------------------------------------------
# 5./6. The suite
# ---------------------------------------------------------------------------------------------
OUT="$LOG_DIR/test-output.log"
TEST_RC=0

# Runs "$@" with its output (stdout+stderr) printed and appended to $OUT; records a failure.
run_logged() {
    local rc
    printf '\n[shardgate-test] $ %s\n' "$*" | tee -a "$OUT" >&2
    set +e
    "$@" 2>&1 | tee -a "$OUT"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -ne 0 ]; then
        sg_log "exit status $rc: $*"
        TEST_RC=$rc
    fi
}

# --workspace unless the caller picks packages (`scripts/test.sh -p shardgate-policy`).
scope_args=(--workspace)
for a in "$@"; do
    case "$a" in -p | -p* | --package | --package=* | --workspace | --all) scope_args=() ;; esac
done

# A scoped run builds the gateway binary that tests of other packages start (softhsm-tests'
# gateway_http runs target/debug/shardgate; cargo builds only the tested packages' own
# binaries). With the features a whole run's test build gives it (gateway's dev-dependency
# on itself enables failpoints), so that alternating runs do not rebuild it.
if [ "${SHARDGATE_TEST_SETUP_ONLY:-}" != 1 ] && [ "${#RUN_CMD[@]}" -eq 0 ] && [ "${#scope_args[@]}" -eq 0 ]; then
    run_logged cargo build -p shardgate --bins --features failpoints,fault-injection
fi

if [ "${SHARDGATE_TEST_SETUP_ONLY:-}" = 1 ]; then
    sg_log "SHARDGATE_TEST_SETUP_ONLY=1: setup done, not running cargo"
elif [ "${#RUN_CMD[@]}" -gt 0 ]; then
    run_logged "${RUN_CMD[@]}"
elif [ "$USE_NEXTEST" = 1 ]; then
    profile_args=()
    if [ -n "${SHARDGATE_TEST_NEXTEST_PROFILE:-}" ]; then
        profile_args=(--profile "$SHARDGATE_TEST_NEXTEST_PROFILE")
    elif grep -qs '^\[profile\.ci\]' .config/nextest.toml; then
        profile_args=(--profile ci)
    fi
    run_logged cargo nextest run "${scope_args[@]}" --no-fail-fast "${profile_args[@]}" "$@"
    if [ "$#" -eq 0 ]; then
        run_logged cargo test --workspace --doc --no-fail-fast
    else
        sg_log "extra arguments given: doc tests skipped (run without arguments for every test)"
    fi
else
    # cargo test runs unit, integration and doc tests in one go.
    run_logged cargo test "${scope_args[@]}" --no-fail-fast "$@"
fi

# ---------------------------------------------------------------------------------------------
# 6b. Fuzz smoke run (after the suite; only for a whole run): every target keeps building and
#     finds nothing in SHARDGATE_TEST_FUZZ_SECS seconds. A crash fails the run.
# ---------------------------------------------------------------------------------------------
FUZZ_SECS=${SHARDGATE_TEST_FUZZ_SECS:-30}
if [ "${SHARDGATE_TEST_SETUP_ONLY:-}" != 1 ] && [ "${#RUN_CMD[@]}" -eq 0 ] && [ "$#" -eq 0 ]; then
    if [ "$FUZZ_SECS" = 0 ]; then
        sg_log "SHARDGATE_TEST_FUZZ_SECS=0: fuzz smoke run skipped"
    elif sg_ensure_cargo_fuzz; then
        # (outside strict mode a cargo-fuzz that cannot be installed was a loud skip)
        run_logged sg_fuzz_smoke "$FUZZ_SECS" "$LOG_DIR/fuzz"
    fi
elif [ "$#" -gt 0 ]; then
    sg_log "extra arguments given: fuzz smoke run skipped"
fi

# ---------------------------------------------------------------------------------------------
# 6c. Supply chain (only for a whole run): cargo deny check bans licenses sources (deny.toml;
#     no advisories: their database cannot be fetched here).
# ---------------------------------------------------------------------------------------------
if [ "${SHARDGATE_TEST_SETUP_ONLY:-}" != 1 ] && [ "${#RUN_CMD[@]}" -eq 0 ] && [ "$#" -eq 0 ]; then
    if sg_ensure_cargo_deny; then
        run_logged sg_deny_check
    fi
fi

# ---------------------------------------------------------------------------------------------
# 7. Secret scan
# ---------------------------------------------------------------------------------------------
SCAN_RC=0
sg_secret_scan "$LOG_DIR" || SCAN_RC=$?

# ---------------------------------------------------------------------------------------------
# 8. Summary and status
# ---------------------------------------------------------------------------------------------
# One plain closing line with the counts of every runner's summary lines in the output:
# nextest "Summary [..] N tests run: P passed, F failed, S skipped", and libtest
# "test result: ok. P passed; F failed; I ignored; ...". The runners count a test that
# skipped itself (shardgate_testkit::skip: a missing component) as passed: those, one per
# distinct binary + test in skipped-tests.txt, move from passed to skipped.
SKIP_FILE="$LOG_DIR/skipped-tests.txt"
SELF_SKIPPED=0
if [ -s "$SKIP_FILE" ]; then
    SELF_SKIPPED=$(cut -f1,2 "$SKIP_FILE" | sort -u | wc -l)
    sg_log "$SELF_SKIPPED test(s) skipped for a missing component (list: $SKIP_FILE):"
    cut -f1,2 "$SKIP_FILE" | sort -u | head -n 20 | sed 's/\t/ /; s/^/[shardgate-test]   /' >&2
fi
if [ -f "$OUT" ]; then
    counts=$(awk '
        /Summary \[.*\] +[0-9\/]+ tests? run:/ {
            line = $0; sub(/.* tests? run:/, "", line)
            n = split(line, parts, ",")
            for (i = 1; i <= n; i++) {
                if (match(parts[i], /[0-9]+ passed/)) p += substr(parts[i], RSTART, RLENGTH) + 0
                else if (match(parts[i], /[0-9]+ (failed|timed out)/)) f += substr(parts[i], RSTART, RLENGTH) + 0
                else if (match(parts[i], /[0-9]+ skipped/)) s += substr(parts[i], RSTART, RLENGTH) + 0
            }
            seen = 1
        }
        /^test result: (ok|FAILED)\. [0-9]+ passed; [0-9]+ failed; [0-9]+ ignored/ {
            split($0, w, " ")
            p += w[4]; f += w[6]; s += w[8]; seen = 1
        }
        END { if (seen) printf "%d passed, %d failed, %d skipped\n", p - self, f, s + self }
    ' self="$SELF_SKIPPED" "$OUT")
    if [ -n "$counts" ]; then
        echo "tests: $counts"
    fi
fi
if [ "$SCAN_RC" -ne 0 ]; then
    sg_log "FAILED: the secret scan found planted secrets in the logs (see above)"
fi
if [ "$TEST_RC" -ne 0 ]; then
    sg_log "FAILED: tests failed (exit $TEST_RC); output: $OUT"
fi
SKIP_RC=0
if [ "$SG_STRICT" = 1 ] && [ "$SELF_SKIPPED" -gt 0 ]; then
    sg_log "FAILED: strict mode, but $SELF_SKIPPED test(s) skipped (see $SKIP_FILE)"
    SKIP_RC=1
fi
if [ "$TEST_RC" -ne 0 ]; then
    exit "$TEST_RC"
elif [ "$SCAN_RC" -ne 0 ] || [ "$SKIP_RC" -ne 0 ]; then
    exit 1
fi
sg_log "OK"
exit 0
