#!/usr/bin/env bash
# The benchmark command of shardgate: builds the gateway in the `dist` profile, starts it on a
# throw-away PostgreSQL database with one backend instance per kind (local; pkcs11 on a
# SoftHSM2 token it creates; aws-kms on moto_server, data-key cache on and off), loads a fixed
# data set through the HTTP API, drives GETs with wrk, runs the raw baselines, and writes
# BENCHMARKS.md + BENCHMARKS.json at the repo root. Every figure is measured side by side in
# the same run: on this shared machine absolute numbers drift, ratios much less.
#
#   scripts/bench.sh [--accounts N] [--shard-bytes B] [--duration S] [--rounds R]
#                    [--threads T] [--connections C] [--out DIR] [--keep-logs]
#                    [--only all|migration|flood|compare|archive|growth|fleet|soak] [--migration-shards N]
#                    [--migration-rate R]
#                    [--baseline REV | --baseline-env VAR=VALUE | --baseline-profile P]
#                    [--archive-events N] [--growth-events N] [--growth-span-days D]
#
#   --accounts N      accounts per backend tier, one shard `s0` each (default 1000)
#   --shard-bytes B   shard size in bytes (default 64)
#   --duration S      seconds of each measured wrk run (default 10)
#   --rounds R        measured rounds (each backend, batch, latency); figures are medians (default 3)
#   --threads T / --connections C   wrk closed-loop settings (default 2 / 16)
#   --out DIR         where BENCHMARKS.md/json go (default: the repo root)
#   --keep-logs       keep the gateway/moto logs and raw results (kept anyway when a step fails)
#   --only migration  only the tier-migration figures (issue 5); the other sections of an
#                     existing BENCHMARKS.md/json in --out are kept as they are (default: all)
#   --only flood      only the readers-under-an-unauthenticated-flood figure (issue 25): its
#                     goal row and section 11 of BENCHMARKS.md/json in --out are replaced, the
#                     rest kept as it is
#   --only compare    this tree's gateway against the one built from --baseline REV, in one run
#                     on one database and data set: GET (local, pkcs11), batchGet (pkcs11), PUT
#                     (local) and a migration job of --migration-shards shards, each binary in
#                     turn, the order alternating by round; its goal rows and section of
#                     BENCHMARKS.md/json in --out are replaced, the rest kept as it is
#   --only archive    only the audit archiver figures (issue 28, section 12: archive throughput
#                     against a raw read-compress-PUT loop, GET p99 with an archiver running);
#                     part of `all` too
#   --only growth     only the audit growth figure (section 13: GET throughput with
#                     --growth-events archived audit events against a fresh database, and how
#                     long archiving them takes; not part of `all`: ~35 minutes here)
#   --only fleet      only the fleet figures (issue 30; scripts/lib/bench_fleet.sh; not part
#                     of `all`: ~5 minutes): section 14, critical GET p99 beside a bulk flood
#                     at 10x capacity vs alone, on the aws-kms backend with a small bulkhead;
#                     section 15, how long a policy apply takes to reach two other replicas
#   --only soak       only the chaos soak (issue 30, section 16; not part of `all`: ~15
#                     minutes): bench/soak.py, three replicas of a build with the test-only
#                     `fault-injection` hook, 70% of the peak for SG_BENCH_SOAK_SECS (600) s,
#                     one fault every 20-30 s in rotation, the checker's read-back at the end
#   --archive-events N   history events archived per round of section 12 (default 1000000)
#   --growth-events N    audit history of section 13 (default 10000000), stamped evenly over
#                     --growth-span-days D (default 300), so all but the last 30 days (hot_days)
#                     are archived
#   --baseline REV    the commit --only compare measures against (git rev; built in a worktree
#                     of its own with CARGO_TARGET_DIR=$SHARDGATE_BENCH_TARGET-baseline)
#   --baseline-env VAR=VALUE   instead: the baseline is this tree's binary with one more
#                     setting, e.g. SHARDGATE_STORE__HELD_CONNECTIONS=false
#   --baseline-profile P   instead: the baseline is this tree built in cargo profile P (e.g.
#                     `release`, the quick profile of `cargo run --release`) against the
#                     measured `dist` build: what the fat-LTO profile is worth per request
#   --migration-shards N  shards of the local -> pkcs11 throughput job, on one account, loaded
#                     over HTTP (default 100000, issue 5's size: loading them takes about 3.5 of
#                     the whole bench's ~15 minutes on 2 cores; 20000 saves about 5 minutes)
#   --migration-rate R    the throughput job's [migration] rate_per_sec, high enough not to be
#                     the limit (default 1000000); the latency figure runs at the default (500)
#
# Environment:
#   SHARDGATE_BENCH_TARGET  cargo target dir of the build (default /tmp/sg-bench-target,
#                           separate from the debug builds' target/ so neither blocks the other)
#
# Every binary is built with `--profile dist` (fat LTO, one codegen unit: the release
# artifacts' profile, Cargo.toml), as every figure in bench/history.md was: the quick
# `release` profile of the README's `cargo run --release` is not what is deployed.
#
# Layout (issue 7 extends it): bench/ holds the helpers: wrk.lua (GET / batchGet driver),
# load.py (data-set loader), report.py (writes the report from the raw results), and the
# `shardgate-bench` crate (baselines without HTTP: bare KMS Decrypt, ...). Each measured run
# leaves a directory results/runs/NAME/ with cmd, meta.json, wrk.out and /metrics scrapes
# before, in the middle of and after the run; report.py only reads those.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$REPO_ROOT"

# shellcheck source=scripts/lib/common.sh
source "$SCRIPT_DIR/lib/common.sh"
# shellcheck source=scripts/lib/services.sh
source "$SCRIPT_DIR/lib/services.sh"

ACCOUNTS=1000
SHARD_BYTES=64
DURATION=10
ROUNDS=3
THREADS=2
CONNS=16
BATCH=10
WARMUP_SECS=2
RAW_UNWRAPS=5000
DECRYPT_N=100000
OUT_DIR=$REPO_ROOT
KEEP_LOGS=0
ONLY=all
MIG_SHARDS=100000
MIG_RATE=1000000
MIG_DEFAULT_RATE=500 # the gateway's default [migration] rate_per_sec (gateway/src/service/settings.rs)
TARGET=${SHARDGATE_BENCH_TARGET:-/tmp/sg-bench-target}
BASELINE=""
BASELINE_ENV=""
BASELINE_PROFILE=""
# The measured profile (Cargo.toml: fat LTO, one codegen unit).
PROFILE=dist
ARCHIVE_EVENTS=1000000
GROWTH_EVENTS=10000000
GROWTH_SPAN_DAYS=300

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
ORIG_ARGS=("$@")
num() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || sg_die "$1 needs a positive integer, got '${2:-}'"; echo "$2"; }
while [ "$#" -gt 0 ]; do
    case "$1" in
        --accounts) ACCOUNTS=$(num "$1" "${2:-}"); shift 2 ;;
        --shard-bytes) SHARD_BYTES=$(num "$1" "${2:-}"); shift 2 ;;
        --duration) DURATION=$(num "$1" "${2:-}"); shift 2 ;;
        --rounds) ROUNDS=$(num "$1" "${2:-}"); shift 2 ;;
        --threads) THREADS=$(num "$1" "${2:-}"); shift 2 ;;
        --connections) CONNS=$(num "$1" "${2:-}"); shift 2 ;;
        --out) OUT_DIR=${2:?--out needs a directory}; shift 2 ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        --only)
            case "${2:-}" in all | migration | flood | compare | archive | growth | fleet | soak) ONLY=$2 ;; *) sg_die "--only is all, migration, flood, compare, archive, growth, fleet or soak, got '${2:-}'" ;; esac
            shift 2 ;;
        --migration-shards) MIG_SHARDS=$(num "$1" "${2:-}"); shift 2 ;;
        --migration-rate) MIG_RATE=$(num "$1" "${2:-}"); shift 2 ;;
        --archive-events) ARCHIVE_EVENTS=$(num "$1" "${2:-}"); shift 2 ;;
        --growth-events) GROWTH_EVENTS=$(num "$1" "${2:-}"); shift 2 ;;
        --growth-span-days) GROWTH_SPAN_DAYS=$(num "$1" "${2:-}"); shift 2 ;;
        --baseline) BASELINE=${2:?--baseline needs a git revision}; shift 2 ;;
        --baseline-env) BASELINE_ENV=${2:?--baseline-env needs VAR=VALUE}; shift 2 ;;
        --baseline-profile) BASELINE_PROFILE=${2:?--baseline-profile needs a cargo profile}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) sg_die "unknown argument: $1 (see scripts/bench.sh --help)" ;;
    esac
done
[ "$ACCOUNTS" -le 999999 ] || sg_die "--accounts is at most 999999 (ids are PREFIX%06d)"
[ "$MIG_SHARDS" -le 999999 ] || sg_die "--migration-shards is at most 999999 (ids are s%06d)"
[ "$MIG_RATE" -le 4294967295 ] || sg_die "--migration-rate is at most 4294967295"
if [ "$ONLY" = migration ] && [ ! -f "$OUT_DIR/BENCHMARKS.json" ]; then
    sg_die "--only migration keeps the other figures of $OUT_DIR/BENCHMARKS.json, which does not exist: run the whole bench once"
fi
if [ "$ONLY" = compare ]; then
    if [ -n "$BASELINE_PROFILE" ]; then
        [ -z "$BASELINE$BASELINE_ENV" ] || sg_die "--baseline-profile excludes --baseline and --baseline-env"
        [[ "$BASELINE_PROFILE" =~ ^[a-z][a-z0-9_-]*$ ]] && [ "$BASELINE_PROFILE" != "$PROFILE" ] ||
            sg_die "--baseline-profile is a cargo profile other than $PROFILE, got '$BASELINE_PROFILE'"
        BASELINE_REV="this tree with profile $BASELINE_PROFILE"
    elif [ -n "$BASELINE_ENV" ]; then
        [ -z "$BASELINE" ] || sg_die "--baseline and --baseline-env exclude each other"
        [[ "$BASELINE_ENV" =~ ^SHARDGATE_[A-Z0-9_]+=.*$ ]] || sg_die "--baseline-env is SHARDGATE_VAR=VALUE, got '$BASELINE_ENV'"
        BASELINE_REV="this tree with $BASELINE_ENV"
    else
        [ -n "$BASELINE" ] || sg_die "--only compare needs --baseline REV or --baseline-env VAR=VALUE"
        BASELINE_REV=$(git rev-parse --verify --quiet "$BASELINE^{commit}") || sg_die "--baseline: no commit '$BASELINE'"
    fi
fi
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

blog() { printf '[bench] %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Per-run state and cleanup (also on Ctrl-C / TERM). Background jobs of this non-interactive
# script ignore SIGINT, so the trap is what stops them.
# ---------------------------------------------------------------------------------------------
WORK="" DB_NAME="" GW_PID="" SG_MOTO_PID="" MID_PID="" STATE_FILE="" OK=0 NULL_PID="" ARC_PID=""
STATE_DIR="${TMPDIR:-/tmp}/shardgate-bench-state-$(id -u)"

# shellcheck disable=SC2317 # invoked by the traps
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM HUP
    [ -n "$MID_PID" ] && { pkill -P "$MID_PID" 2>/dev/null; kill "$MID_PID" 2>/dev/null; }
    [ -n "$GW_PID" ] && sg_stop_pid "$GW_PID"
    [ -n "$NULL_PID" ] && sg_stop_pid "$NULL_PID"
    [ -n "$ARC_PID" ] && kill -9 "$ARC_PID" 2>/dev/null
    [ -n "$SG_MOTO_PID" ] && sg_stop_pid "$SG_MOTO_PID"
    [ -n "$DB_NAME" ] && sg_pg_drop_db_family "$DB_NAME"
    [ -n "$STATE_FILE" ] && rm -f "$STATE_FILE"
    [ -n "${BASELINE_TREE:-}" ] && git worktree remove --force "$BASELINE_TREE" 2>/dev/null
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        # The token, the HSM PIN and the keys live in $WORK/secrets: never kept.
        rm -rf "$WORK/secrets" "$WORK/softhsm" "$WORK/data" "$WORK/tmp"
        # Kept on a failure (to read why), removed on success and on Ctrl-C / TERM / HUP.
        if [ "$KEEP_LOGS" != 1 ] && { [ "$OK" = 1 ] || [ "$rc" -ge 129 ]; }; then
            rm -rf "$WORK"
        else
            blog "logs and raw results kept in: $WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# A run killed with SIGKILL leaves its database and processes behind: sweep runs whose script
# process is gone.
sweep_stale_runs() {
    mkdir -p "$STATE_DIR" && chmod 700 "$STATE_DIR"
    local f pid moto gw
    for f in "$STATE_DIR"/shardgate_bench_*; do
        [ -f "$f" ] || continue
        pid="" moto="" gw=""
        read -r pid moto gw <"$f" || true
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then continue; fi
        blog "cleaning up after a dead bench run: $(basename "$f")"
        sg_pg_drop_db_family "$(basename "$f")"
        for p in $moto $gw; do
            if [ -r "/proc/$p/cmdline" ] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -Eq 'moto|shardgate'; then
                sg_stop_pid "$p"
            fi
        done
        rm -f "$f"
    done
}
write_state() { [ -z "$STATE_FILE" ] || echo "$$ ${SG_MOTO_PID:-} ${GW_PID:-}" >"$STATE_FILE"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sg-bench.XXXXXXXX")
chmod 700 "$WORK"
mkdir -p "$WORK/secrets" "$WORK/softhsm/tokens" "$WORK/data" "$WORK/tmp" "$WORK/logs" "$WORK/results/runs"
LOG=$WORK/logs
RES=$WORK/results

# ---------------------------------------------------------------------------------------------
# 1. Components and build
# ---------------------------------------------------------------------------------------------
sg_ensure_softhsm || sg_die "SoftHSM2 is required (apt-get install softhsm2)"
sg_ensure_moto || sg_die "moto_server is required (pip install 'moto[server]>=5,<6')"
sg_ensure_postgres || sg_die "PostgreSQL is required on $SG_PG_HOST:$SG_PG_PORT"
if ! command -v wrk >/dev/null 2>&1; then
    sg_apt_install wrk || true
fi
command -v wrk >/dev/null 2>&1 || sg_die "wrk is required (apt-get install wrk)"
command -v curl >/dev/null 2>&1 || sg_apt_install curl || sg_die "curl is required"
# oha (open-loop latency) and inferno (flamegraphs) come from crates.io, built once.
export PATH="$PATH:$HOME/.cargo/bin"
if ! command -v oha >/dev/null 2>&1 && case $ONLY in all | flood | archive | fleet) true ;; *) false ;; esac; then
    blog "installing oha (cargo install oha --locked; once)"
    cargo install oha --locked >&2 || sg_die "oha is required for the open-loop figure (cargo install oha)"
fi
if ! command -v inferno-flamegraph >/dev/null 2>&1 && [ "$ONLY" = all ]; then
    blog "installing inferno (cargo install inferno --locked; once)"
    cargo install inferno --locked >&2 || blog "inferno could not be installed: no flamegraphs"
fi
sweep_stale_runs

blog "$PROFILE build (CARGO_TARGET_DIR=$TARGET)"
# Separate invocations: the example turns on the backends' test-only `fault-injection`
# feature (a softhsm-tests dev-dependency), which must not reach the measured gateway binary.
CARGO_TARGET_DIR=$TARGET cargo build --profile "$PROFILE" -p shardgate
CARGO_TARGET_DIR=$TARGET cargo build --profile "$PROFILE" -p shardgate-bench
[ "$ONLY" != all ] || CARGO_TARGET_DIR=$TARGET cargo build --profile "$PROFILE" -p shardgate-softhsm-tests --example pool_vs_login
BIN=$TARGET/$PROFILE/shardgate
if [ "$ONLY" = compare ] && [ -n "$BASELINE_PROFILE" ]; then
    blog "baseline build: this tree, profile $BASELINE_PROFILE (CARGO_TARGET_DIR=$TARGET)"
    CARGO_TARGET_DIR=$TARGET cargo build --profile "$BASELINE_PROFILE" -p shardgate
    cp "$TARGET/$BASELINE_PROFILE/shardgate" "$WORK/shardgate-$BASELINE_PROFILE"
    cp "$BIN" "$WORK/shardgate-$PROFILE"
    declare -A CMP_BIN=([new]="$WORK/shardgate-$PROFILE" [old]="$WORK/shardgate-$BASELINE_PROFILE")
    declare -A CMP_ENV=([new]="SHARDGATE_MIGRATION__RATE_PER_SEC=$MIG_RATE" [old]="SHARDGATE_MIGRATION__RATE_PER_SEC=$MIG_RATE")
elif [ "$ONLY" = compare ] && [ -n "$BASELINE_ENV" ]; then
    cp "$BIN" "$WORK/shardgate-new"
    declare -A CMP_BIN=([new]="$WORK/shardgate-new" [old]="$WORK/shardgate-new")
    declare -A CMP_ENV=([new]="SHARDGATE_MIGRATION__RATE_PER_SEC=$MIG_RATE" [old]="$BASELINE_ENV")
elif [ "$ONLY" = compare ]; then
    # The baseline from a worktree of its own, in a target dir of its own: cargo's metadata
    # hash of a path package does not depend on its path, so a shared target dir would link
    # one checkout's crates into the other's binary.
    BASELINE_TREE=$WORK/baseline-src
    blog "baseline build: $BASELINE_REV (CARGO_TARGET_DIR=$TARGET-baseline)"
    git worktree add --detach "$BASELINE_TREE" "$BASELINE_REV" >&2
    # A commit from before the `dist` profile built its artifacts with `--release`, which was
    # then the same fat-LTO profile.
    BASELINE_BUILD=$PROFILE
    grep -q "^\[profile\.$PROFILE\]" "$BASELINE_TREE/Cargo.toml" || BASELINE_BUILD=release
    (cd "$BASELINE_TREE" && CARGO_TARGET_DIR=$TARGET-baseline cargo build --profile "$BASELINE_BUILD" -p shardgate)
    cp "$TARGET-baseline/$BASELINE_BUILD/shardgate" "$WORK/shardgate-baseline"
    cp "$BIN" "$WORK/shardgate-new"
    git worktree remove --force "$BASELINE_TREE"
    BASELINE_TREE=""
    declare -A CMP_BIN=([new]="$WORK/shardgate-new" [old]="$WORK/shardgate-baseline")
    declare -A CMP_ENV=([new]="SHARDGATE_MIGRATION__RATE_PER_SEC=$MIG_RATE" [old]="SHARDGATE_MIGRATION__RATE_PER_SEC=$MIG_RATE")
fi
BENCH_BIN=$TARGET/$PROFILE/shardgate-bench
POOL_VS_LOGIN=$TARGET/$PROFILE/examples/pool_vs_login

# The gateway reads SHARDGATE_* as config overrides: run it with none of ours. (An array,
# not a function: a backgrounded function is a subshell, and $! would not be the gateway.)
GW_ENV=(env)
for v in $(compgen -e); do
    case "$v" in SHARDGATE_*) GW_ENV+=(-u "$v") ;; esac
done
# As docs/operations.md ("Production notes") recommends for a deployment: glibc's malloc otherwise keeps one arena per
# thread that ever allocated (the runtime's and spawn_blocking's), which holds memory after a
# load peak has passed (RSS idle after the runs: 30.4 MB without, 29.5 MB with; what the cap
# costs HSM-heavy throughput: bench/history.md, stops 22 and 23). SG_BENCH_MALLOC_ARENA_MAX=N
# sets another cap; 0 runs with glibc's default.
ARENAS=${SG_BENCH_MALLOC_ARENA_MAX:-2}
[ "$ARENAS" = 0 ] || GW_ENV+=(MALLOC_ARENA_MAX="$ARENAS")

# ---------------------------------------------------------------------------------------------
# 2. PostgreSQL database, moto + KMS key, SoftHSM2 token
# ---------------------------------------------------------------------------------------------
DB_NAME="shardgate_bench_$(sg_rand_hex)"
STATE_FILE="$STATE_DIR/$DB_NAME"
write_state
sg_pg_create_db "$DB_NAME" || sg_die "could not create database $DB_NAME"
# Loopback, so no TLS (sqlx would otherwise negotiate it with a server that has ssl=on): the
# gateway and the floors use this same URL, so both skip it alike. TLS to a remote database is
# set up as in docs/security.md ("Database least privilege": sslmode=verify-full).
PG_URL="postgres://postgres@$SG_PG_HOST:$SG_PG_PORT/$DB_NAME?sslmode=disable"

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
unset AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_PROFILE AWS_ENDPOINT_URL
sg_start_moto "$LOG/moto_server.log" || sg_die "moto_server did not start (log: $LOG/moto_server.log)"
write_state
MOTO_URL="http://127.0.0.1:$SG_MOTO_PORT"
KMS_KEY_ARN=$("$BENCH_BIN" kms-create-key --endpoint "$MOTO_URL" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key_arn"])')
blog "KMS key on moto: $KMS_KEY_ARN"

HSM_LABEL=sg-bench
HSM_PIN=$(sg_rand_hex)$(sg_rand_hex)
HSM_SO_PIN=$(sg_rand_hex)$(sg_rand_hex)
export SOFTHSM2_CONF=$WORK/softhsm/softhsm2.conf
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
    "$WORK/softhsm/tokens" >"$SOFTHSM2_CONF"
softhsm2-util --init-token --free --label "$HSM_LABEL" --so-pin "$HSM_SO_PIN" --pin "$HSM_PIN" >"$LOG/softhsm-init.log"
(umask 077 && printf '%s\n' "$HSM_PIN" >"$WORK/secrets/hsm.pin")

# ---------------------------------------------------------------------------------------------
# 3. Config (one tier per backend instance), admin token, KEK, gateway
# ---------------------------------------------------------------------------------------------
TOKEN="sgt_bench_$(sg_rand_hex)$(sg_rand_hex)$(sg_rand_hex)$(sg_rand_hex)"
TOKEN_SHA=$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)
(umask 077 && printf 'Authorization: Bearer %s\n' "$TOKEN" >"$WORK/secrets/auth.header")
CFG=$WORK/shardgate.toml
BACKENDS=(local hsm kms kms-nocache)
cat >"$CFG" <<EOF
# Written by scripts/bench.sh
listen = "127.0.0.1:0"
data_dir = "$WORK/data"

[store]
url = "$PG_URL"
max_connections = 16

[backends.local]
kind = "local"
key_file = "$WORK/data/local.keyring"
create = true

[backends.hsm]
kind = "pkcs11"
module = "$SG_SOFTHSM_MODULE"
token_label = "$HSM_LABEL"
pin_file = "$WORK/secrets/hsm.pin"
kek_label = "shardgate-kek"
pool_size = 8

[backends.kms]
kind = "aws-kms"
key_id = "$KMS_KEY_ARN"
region = "us-east-1"
endpoint_url = "$MOTO_URL"
[backends.kms.cache]
enabled = true
max_entries = 10000
max_age_ms = 300000
max_uses = 100000

[backends.kms-nocache]
kind = "aws-kms"
key_id = "$KMS_KEY_ARN"
region = "us-east-1"
endpoint_url = "$MOTO_URL"
[backends.kms-nocache.cache]
enabled = false

[tiers]
bench-local = "local"
bench-hsm = "hsm"
bench-kms = "kms"
bench-kms-nocache = "kms-nocache"

[[tokens]]
name = "bench-admin"
sha256 = "$TOKEN_SHA"
scopes = ["*"]

[limits]
batch_max_items = 100

[audit]
key_file = "$WORK/data/audit.key"
create_key = true
EOF

blog "provisioning the HSM KEK"
"${GW_ENV[@]}" "$BIN" hsm init-key --backend hsm --config "$CFG" >"$LOG/init-key.log" 2>&1 ||
    { cat "$LOG/init-key.log" >&2; sg_die "shardgate hsm init-key failed"; }

# start_gateway TAG [VAR=VALUE ...]: the gateway with extra environment overrides (e.g. the
# migration rate); logs $LOG/gateway-TAG.{stdout,stderr}; sets GW_PID and BASE.
start_gateway() {
    local tag=$1
    shift
    "${GW_ENV[@]}" RUST_LOG=warn "$@" "$BIN" serve --config "$CFG" \
        >"$LOG/gateway-$tag.stdout" 2>"$LOG/gateway-$tag.stderr" </dev/null &
    GW_PID=$!
    write_state
    BASE=""
    for _ in $(seq 1 120); do
        BASE=$(sed -n 's/^shardgate listening on //p' "$LOG/gateway-$tag.stdout" | head -n1)
        [ -n "$BASE" ] && break
        kill -0 "$GW_PID" 2>/dev/null || break
        sleep 0.25
    done
    if [ -z "$BASE" ]; then
        tail -n 30 "$LOG/gateway-$tag.stderr" >&2 || true
        sg_die "the gateway did not start (logs: $LOG)"
    fi
    blog "gateway $tag (pid $GW_PID) on $BASE"
    curl -sf -o "$RES/readyz-$tag.json" "$BASE/readyz" || sg_die "gateway not ready: $(cat "$RES/readyz-$tag.json" 2>/dev/null)"
}
stop_gateway() {
    sg_stop_pid "$GW_PID"
    GW_PID=""
    write_state
}
start_gateway main

scrape_metrics() { curl -s -m 5 -H @"$WORK/secrets/auth.header" "$BASE/metrics" >"$1" 2>/dev/null || true; }
CLK_TCK=$(getconf CLK_TCK)
gw_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/${RUN_PID:-$GW_PID}/stat" 2>/dev/null || echo 0; }
# utime + stime of every PostgreSQL process (server and backends), in clock ticks ("postgres"
# holds no space, so the fields count from the left; cat skips processes that just ended, and
# its non-zero status then must not end the bench under pipefail).
pg_cpu_ticks() { { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '$2 == "(postgres)" { t += $14 + $15 } END { print t + 0 }'; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/${1:-$GW_PID}/status" 2>/dev/null || echo 0; }
mkdir -p "$RES/rss"
sleep 1
rss_kb >"$RES/rss/idle_fresh_kb"

# ---------------------------------------------------------------------------------------------
# 4. Data set
# ---------------------------------------------------------------------------------------------
prefix_of() { echo "$1-"; } # backend instance name -> account id prefix of its data set
load_sets=()
LOAD_BACKENDS=("${BACKENDS[@]}")
# Only the migration figures: the GETs next to the job read the hsm set.
[ "$ONLY" = migration ] && LOAD_BACKENDS=(hsm)
# Only the flood figure: its readers read the local set.
[ "$ONLY" = flood ] && LOAD_BACKENDS=(local)
# The compare figures: GET on local and hsm, batchGet on hsm, PUT on local.
[ "$ONLY" = compare ] && LOAD_BACKENDS=(local hsm)
# The archive figures read the local set.
case $ONLY in archive | growth | fleet | soak) LOAD_BACKENDS=(local) ;; esac
for b in "${LOAD_BACKENDS[@]}"; do load_sets+=("bench-$b=$(prefix_of "$b")"); done
LOAD_CMD="SG_TOKEN=\$TOKEN python3 bench/load.py --base $BASE --accounts $ACCOUNTS --shard-bytes $SHARD_BYTES ${load_sets[*]}"
blog "loading $ACCOUNTS accounts x 1 shard of $SHARD_BYTES B per backend tier (${LOAD_BACKENDS[*]})"
echo "$LOAD_CMD" >"$RES/load.cmd"
SG_TOKEN=$TOKEN python3 bench/load.py --base "$BASE" --accounts "$ACCOUNTS" \
    --shard-bytes "$SHARD_BYTES" "${load_sets[@]}" | tee "$RES/load.jsonl" >&2 ||
    sg_die "loading the data set failed (see above; logs: $LOG)"
# As pgbench does before its runs: vacuum and analyze what was just loaded, so autovacuum of
# those rows (two cores here) does not land in a measured window, and plans see the real
# table sizes.
vacuum_db() {
    blog "VACUUM (ANALYZE) of the bench database"
    psql -X -w -q -v ON_ERROR_STOP=1 -h "$SG_PG_HOST" -p "$SG_PG_PORT" -U postgres -d "$DB_NAME" \
        -c 'VACUUM (ANALYZE)' >&2 || sg_die "VACUUM of $DB_NAME failed"
}
vacuum_db

# ---------------------------------------------------------------------------------------------
# 5. wrk runs. run_wrk NAME KIND BACKEND MODE THREADS CONNS SECONDS ROUND
#    KIND: warmup | closed (peak rate) | latency (-c1) | batch
# ---------------------------------------------------------------------------------------------
run_wrk() {
    local name=$1 kind=$2 backend=$3 mode=$4 t=$5 c=$6 secs=$7 round=$8
    local dir=$RES/runs/$name prefix cmd
    prefix=$(prefix_of "$backend")
    mkdir -p "$dir"
    local base=${RUN_BASE:-$BASE}
    cmd="SG_TOKEN=\$TOKEN SG_PREFIX=$prefix SG_ACCOUNTS=$ACCOUNTS SG_MODE=$mode SG_BATCH=$BATCH SG_SHARD_BYTES=$SHARD_BYTES wrk -t$t -c$c -d${secs}s --latency -s bench/wrk.lua $base"
    echo "$cmd" >"$dir/cmd"
    python3 -c 'import json,sys; k=sys.argv[1::2]; v=sys.argv[2::2]; print(json.dumps(dict(zip(k, v))))' \
        name "$name" kind "$kind" backend "$backend" mode "$mode" threads "$t" connections "$c" \
        seconds "$secs" round "$round" batch "$BATCH" >"$dir/meta.json"
    echo "${RUN_TARGET:-gateway}" >"$dir/target"
    [ -n "${RUN_PID:-}" ] || scrape_metrics "$dir/metrics.before"
    gw_cpu_ticks >"$dir/cpu.before"
    pg_cpu_ticks >"$dir/pg_cpu.before"
    (sleep "$(awk -v s="$secs" 'BEGIN { print s / 2 }')" && rss_kb "${RUN_PID:-$GW_PID}" >"$dir/rss_kb.mid" &&
        { [ -n "${RUN_PID:-}" ] || scrape_metrics "$dir/metrics.mid"; }) &
    MID_PID=$!
    SG_TOKEN=$TOKEN SG_PREFIX=$prefix SG_ACCOUNTS=$ACCOUNTS SG_MODE=$mode SG_BATCH=$BATCH SG_SHARD_BYTES=$SHARD_BYTES \
        wrk "-t$t" "-c$c" "-d${secs}s" --timeout 10s --latency -s bench/wrk.lua "$base" >"$dir/wrk.out" 2>&1 ||
        { cat "$dir/wrk.out" >&2; sg_die "wrk failed: $name"; }
    wait "$MID_PID" 2>/dev/null || true
    MID_PID=""
    gw_cpu_ticks >"$dir/cpu.after"
    pg_cpu_ticks >"$dir/pg_cpu.after"
    echo "$CLK_TCK" >"$dir/clk_tck"
    [ -n "${RUN_PID:-}" ] || scrape_metrics "$dir/metrics.after"
    python3 - "$dir" <<'PY' >&2
import json, sys
d = sys.argv[1]
line = next((l for l in open(d + "/wrk.out") if l.startswith("SGJSON ")), None)
if line is None:
    sys.exit("no SGJSON line in " + d + "/wrk.out")
r = json.loads(line[7:])
m = json.load(open(d + "/meta.json"))
rps = r["requests"] / (r["duration_us"] / 1e6)
print("[bench] %-28s %9.1f req/s  p50 %6.2f ms  p99 %7.2f ms  not-ok %d" % (
    m["name"], rps, r["latency_us"]["p50"] / 1e3, r["latency_us"]["p99"] / 1e3,
    r["not_ok"] + sum(r["errors"].values())))
PY
}

blog "warm-up (${WARMUP_SECS}s per backend; not reported)"
for b in "${LOAD_BACKENDS[@]}"; do
    run_wrk "warmup-get-$b" warmup "$b" get "$THREADS" "$CONNS" "$WARMUP_SECS" 0
done
# oha (open-loop figures) and what its runs share.
OHA=$(command -v oha || true)
oha_summary() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); p=d["latencyPercentiles"]; print("p50 %.2f ms, p99 %.2f ms, status %s" % (p["p50"]*1e3, p["p99"]*1e3, d.get("statusCodeDistribution")))' "$1"; }
# The account ids of the loaded local set, 000000 .. ACCOUNTS-1, as a regex oha expands.
open_loop_regex() {
    python3 - "$ACCOUNTS" <<'PY'
import sys
n = int(sys.argv[1]) - 1  # largest id
s = "%06d" % n
alts = []
# ids <= s: for each position, a smaller digit there followed by anything, plus s itself.
for i, ch in enumerate(s):
    if ch != "0":
        alts.append(s[:i] + ("[0-%d]" % (int(ch) - 1) if ch != "1" else "0") + "[0-9]" * (len(s) - i - 1))
alts.append(s)
print("(" + "|".join(alts) + ")")
PY
}

mkdir -p "$RES/raw"
if [ "$ONLY" = all ]; then
run_wrk "warmup-batch-hsm" warmup hsm batch "$THREADS" "$CONNS" "$WARMUP_SECS" 0

# The floors of a GET and a PUT, measured in every round next to the gateway's figures:
# null_route (the HTTP floor, its own process on the gateway's server code), pk_select and
# pk_insert (plain sqlx on the gateway's database), audit_insert (the gateway's audit writer
# without HTTP), raw_unwrap_local (keyring unwrap + shard open, no HTTP, no SQL).
"$BENCH_BIN" null-route --listen 127.0.0.1:0 --shard-bytes "$SHARD_BYTES" >"$LOG/null-route.stdout" 2>"$LOG/null-route.stderr" &
NULL_PID=$!
NULL_BASE=""
for _ in $(seq 1 40); do
    NULL_BASE=$(sed -n 's/.*"listening":"\([^"]*\)".*/http:\/\/\1/p' "$LOG/null-route.stdout" | head -n1)
    [ -n "$NULL_BASE" ] && break
    sleep 0.25
done
[ -n "$NULL_BASE" ] || sg_die "null-route did not start: $(cat "$LOG/null-route.stderr")"
blog "null_route (pid $NULL_PID) on $NULL_BASE"
floor() { # floor NAME ROUND ARGS...: one shardgate-bench baseline, its JSON in raw/
    local name=$1 r=$2
    shift 2
    echo "$BENCH_BIN $name $*" | sed "s#$PG_URL#\$PG_URL#; s#$WORK/data#\$DATA#" >"$RES/raw/$name.cmd"
    "$BENCH_BIN" "$name" "$@" >"$RES/raw/$name-r$r.json" || sg_die "shardgate-bench $name failed"
    blog "$name-r$r: $(cat "$RES/raw/$name-r$r.json")"
}
run_floors() { # run_floors ROUND
    local r=$1
    RUN_PID=$NULL_PID RUN_BASE=$NULL_BASE RUN_TARGET=null_route \
        run_wrk "null-route-r$r" null_route local get "$THREADS" "$CONNS" "$DURATION" "$r"
    floor pk-select "$r" --url "$PG_URL" --prefix "$(prefix_of local)" --accounts "$ACCOUNTS" \
        --concurrency "$CONNS" --seconds "$DURATION"
    floor audit-insert "$r" --url "$PG_URL" --concurrency "$CONNS" --seconds "$DURATION"
    floor raw-unwrap-local "$r" --keyring "$WORK/data/local.keyring" --shard-bytes "$SHARD_BYTES" \
        --threads "$(nproc)" --seconds "$DURATION"
    run_wrk "put-local-r$r" put local put "$THREADS" "$CONNS" "$DURATION" "$r"
    floor pk-insert "$r" --url "$PG_URL" --shard-bytes "$SHARD_BYTES" --concurrency "$CONNS" --seconds "$DURATION"
}

# Open loop: GETs on the local set at half of this round's closed-loop peak, with oha's
# latency correction (a request is timed from when it was due, not when a connection was free).
run_open_loop() { # run_open_loop ROUND
    local r=$1 peak rate dir=$RES/runs/open-local-r$1 url
    peak=$(python3 -c 'import json,sys; l=[x for x in open(sys.argv[1]) if x.startswith("SGJSON ")][0]; w=json.loads(l[7:]); print(int(w["requests"] / (w["duration_us"] / 1e6)))' "$RES/runs/get-local-r$r/wrk.out")
    rate=$((peak / 2))
    mkdir -p "$dir"
    # A regex that oha expands: the dots of the address as [.] (oha does not honour \.).
    url="$(printf '%s' "$BASE" | sed 's/\./[.]/g')/v1/accounts/$(prefix_of local)$(open_loop_regex)/shards/s0"
    echo "oha --no-tui --output-format json -z ${DURATION}s -q $rate -c $CONNS --latency-correction -H 'Authorization: Bearer \$TOKEN' --rand-regex-url '$url'" >"$dir/cmd"
    echo "{\"peak_rps\": $peak, \"rate\": $rate, \"round\": $r}" >"$dir/open.json"
    # The gateway's own histograms around the run: how long it held the requests (server
    # side) and how long they waited for their audit events.
    scrape_metrics "$dir/metrics.before"
    "$OHA" --no-tui --output-format json -z "${DURATION}s" -q "$rate" -c "$CONNS" --latency-correction \
        -H "Authorization: Bearer $TOKEN" --rand-regex-url "$url" \
        >"$dir/oha.json" 2>"$dir/oha.stderr" || { cat "$dir/oha.stderr" >&2; sg_die "oha failed"; }
    scrape_metrics "$dir/metrics.after"
    blog "open-local-r$r: $rate req/s offered (half of $peak): $(oha_summary "$dir/oha.json")"
    # The control: the same oha run on null_route (nothing behind the routes), the floor of
    # this machine and load generator at that rate.
    url="$(printf '%s' "$NULL_BASE" | sed 's/\./[.]/g')/v1/accounts/$(prefix_of local)$(open_loop_regex)/shards/s0"
    echo "oha --no-tui --output-format json -z ${DURATION}s -q $rate -c $CONNS --latency-correction --rand-regex-url '$url'" >"$dir/null.cmd"
    "$OHA" --no-tui --output-format json -z "${DURATION}s" -q "$rate" -c "$CONNS" --latency-correction \
        --rand-regex-url "$url" >"$dir/null-oha.json" 2>"$dir/null-oha.stderr" ||
        { cat "$dir/null-oha.stderr" >&2; sg_die "oha (null_route) failed"; }
    blog "open-null-r$r: $rate req/s offered: $(oha_summary "$dir/null-oha.json")"
}
DECRYPT_CMD="$BENCH_BIN kms-decrypt --endpoint $MOTO_URL --key-id \$KMS_KEY_ARN --n $DECRYPT_N --seconds $DURATION"
for r in $(seq 1 "$ROUNDS"); do
    # Each round starts at another backend, so that a drift of the machine does not always
    # favour the same one.
    order=("${BACKENDS[@]:$(((r - 1) % ${#BACKENDS[@]}))}" "${BACKENDS[@]:0:$(((r - 1) % ${#BACKENDS[@]}))}")
    blog "round $r/$ROUNDS: closed loop, wrk -t$THREADS -c$CONNS -d${DURATION}s (${order[*]})"
    for b in "${order[@]}"; do
        run_wrk "get-$b-r$r" closed "$b" get "$THREADS" "$CONNS" "$DURATION" "$r"
    done
    run_wrk "batch$BATCH-hsm-r$r" batch hsm batch "$THREADS" "$CONNS" "$DURATION" "$r"
    blog "round $r/$ROUNDS: floors (null_route, pk_select, audit_insert, raw_unwrap_local; PUT vs pk_insert)"
    run_floors "$r"
    blog "round $r/$ROUNDS: open loop at half the local peak (oha)"
    run_open_loop "$r"
    # One connection: GET on local, the bare Decrypt, GET on kms-nocache, back to back.
    blog "round $r/$ROUNDS: latency at one connection, wrk -t1 -c1 -d${DURATION}s; bare KMS Decrypt"
    run_wrk "lat-local-r$r" latency local get 1 1 "$DURATION" "$r"
    echo "$DECRYPT_CMD" >"$RES/raw/kms_decrypt.cmd"
    "$BENCH_BIN" kms-decrypt --endpoint "$MOTO_URL" --key-id "$KMS_KEY_ARN" --n "$DECRYPT_N" \
        --seconds "$DURATION" >"$RES/raw/kms_decrypt-r$r.json" || sg_die "shardgate-bench kms-decrypt failed"
    blog "kms-decrypt-r$r (bare, Rust SDK): $(cat "$RES/raw/kms_decrypt-r$r.json")"
    run_wrk "lat-kms-nocache-r$r" latency kms-nocache get 1 1 "$DURATION" "$r"
done

# ---------------------------------------------------------------------------------------------
# 5b. Memory: RSS idle (after the runs, settled), with 1,000 idle keep-alive connections; the
#     peak under load is the largest mid-run reading of the closed-loop GET runs.
# ---------------------------------------------------------------------------------------------
sg_stop_pid "$NULL_PID"
NULL_PID=""
blog "RSS: idle, then with 1000 idle keep-alive connections"
sleep 2
rss_kb >"$RES/rss/idle_kb"
IDLE_IN=$WORK/tmp/idle-conns.in
mkfifo "$IDLE_IN"
python3 bench/idle_conns.py "$BASE" 1000 <"$IDLE_IN" >"$RES/rss/idle_conns.out" 2>&1 &
IDLE_PY=$!
exec 7>"$IDLE_IN"
for _ in $(seq 1 240); do
    grep -q '^ready' "$RES/rss/idle_conns.out" 2>/dev/null && break
    kill -0 "$IDLE_PY" 2>/dev/null || break
    sleep 0.25
done
grep -q '^ready 1000' "$RES/rss/idle_conns.out" || sg_die "idle connections: $(cat "$RES/rss/idle_conns.out")"
sleep 2
rss_kb >"$RES/rss/conns_1000_kb"
exec 7>&-
wait "$IDLE_PY" || sg_die "idle connections: $(cat "$RES/rss/idle_conns.out")"
blog "  RSS idle $(cat "$RES/rss/idle_kb") kB; 1000 idle connections $(cat "$RES/rss/conns_1000_kb") kB ($(tail -n1 "$RES/rss/idle_conns.out"))"

# ---------------------------------------------------------------------------------------------
# 5c. Profiles: the gateway at peak GET load on each backend, sampled by perf (cpu-clock,
#     DWARF call graphs), folded and drawn by inferno into flamegraphs/get-BACKEND.svg next to
#     BENCHMARKS.md. Not a measured run (perf costs the gateway CPU).
# ---------------------------------------------------------------------------------------------
FLAME_DIR=$OUT_DIR/flamegraphs
# 5 s of samples (about 2,500 at 499 Hz per busy thread) draw the same picture as 10 s did, and
# unwinding them (perf script, DWARF) takes half as long: the profiles took 2.5 of the bench's
# 15 minutes with 10 s each.
PROFILE_SECS=5
if ! command -v perf >/dev/null 2>&1; then sg_apt_install linux-perf || true; fi
INFERNO_COLLAPSE=$(command -v inferno-collapse-perf || echo "$HOME/.cargo/bin/inferno-collapse-perf")
INFERNO_FLAME=$(command -v inferno-flamegraph || echo "$HOME/.cargo/bin/inferno-flamegraph")
if command -v perf >/dev/null 2>&1 && [ -x "$INFERNO_FLAME" ] && [ -x "$INFERNO_COLLAPSE" ]; then
    mkdir -p "$FLAME_DIR"
    for b in local hsm kms; do
        blog "profile: GET on $b under wrk -t$THREADS -c$CONNS"
        SG_TOKEN=$TOKEN SG_PREFIX=$(prefix_of "$b") SG_ACCOUNTS=$ACCOUNTS SG_MODE=get \
            wrk "-t$THREADS" "-c$CONNS" "-d$((PROFILE_SECS + 2))s" -s bench/wrk.lua "$BASE" >"$RES/raw/flame-$b.wrk" 2>&1 &
        FLAME_WRK=$!
        sleep 1
        perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$GW_PID" -o "$WORK/tmp/perf-$b.data" \
            -- sleep "$PROFILE_SECS" >"$LOG/perf-$b.log" 2>&1 || blog "  perf record failed: $(tail -n2 "$LOG/perf-$b.log")"
        wait "$FLAME_WRK" || true
        if perf script -i "$WORK/tmp/perf-$b.data" 2>>"$LOG/perf-$b.log" | "$INFERNO_COLLAPSE" >"$WORK/tmp/folded-$b.txt" 2>>"$LOG/perf-$b.log" &&
            "$INFERNO_FLAME" --title "shardgate GET, $b backend (wrk -t$THREADS -c$CONNS; perf cpu-clock 499 Hz)" \
                <"$WORK/tmp/folded-$b.txt" >"$FLAME_DIR/get-$b.svg" 2>>"$LOG/perf-$b.log"; then
            cp "$WORK/tmp/folded-$b.txt" "$RES/raw/folded-$b.txt"
            blog "  wrote $FLAME_DIR/get-$b.svg"
        else
            blog "  no flamegraph for $b: $(tail -n2 "$LOG/perf-$b.log")"
        fi
        rm -f "$WORK/tmp/perf-$b.data"
    done
    echo "perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p \$GATEWAY_PID -- sleep $PROFILE_SECS (under wrk -t$THREADS -c$CONNS GETs); perf script | inferno-collapse-perf | inferno-flamegraph" >"$RES/raw/flame.cmd"
else
    blog "profiles skipped: perf or inferno (cargo install inferno) is missing"
fi

# ---------------------------------------------------------------------------------------------
# 6. Raw baselines (no HTTP, no SQL)
# ---------------------------------------------------------------------------------------------
blog "raw: pkcs11 pooled unwraps vs per-op session+login+find+decrypt+logout+close ($RAW_UNWRAPS)"
echo "SHARDGATE_TEST_SOFTHSM_MODULE=$SG_SOFTHSM_MODULE $POOL_VS_LOGIN $RAW_UNWRAPS" >"$RES/raw/pool_vs_login.cmd"
# Its own token in a temp dir of its own (TMPDIR: removed with $WORK).
env -u SOFTHSM2_CONF TMPDIR="$WORK/tmp" SHARDGATE_TEST_SOFTHSM_MODULE="$SG_SOFTHSM_MODULE" \
    "$POOL_VS_LOGIN" "$RAW_UNWRAPS" >"$RES/raw/pool_vs_login.out" 2>&1 ||
    { cat "$RES/raw/pool_vs_login.out" >&2; sg_die "pool_vs_login failed"; }
cat "$RES/raw/pool_vs_login.out" >&2
fi # ONLY=all

# ---------------------------------------------------------------------------------------------
# 6b. Readers under an unauthenticated flood (issue 25): the p50 of legitimate GETs (local set,
#     oha open loop at FLOOD_RATE req/s, 4 connections) alone, then while two oha floods run
#     from the same address as fast as they go: bad tokens on paths just under
#     [limits] max_uri_bytes (refused: audited up to the per-address budget, then 429), and
#     60 KB paths (414 before any work). Goal: flooded p50 <= 2x the quiet one. Also counted:
#     the `auth` audit rows and the gateway log bytes each flood window added.
# ---------------------------------------------------------------------------------------------
FLOOD_RATE=200
FLOOD_CONNS=32
if [ "$ONLY" = all ] || [ "$ONLY" = flood ]; then
    FLOOD=$RES/flood
    mkdir -p "$FLOOD"
    [ -n "$OHA" ] || sg_die "oha is required for the flood figure (cargo install oha)"
    flood_url="$(printf '%s' "$BASE" | sed 's/\./[.]/g')/v1/accounts/$(prefix_of local)$(open_loop_regex)/shards/s0"
    long_path() { python3 -c 'import sys; p="/v1/accounts/flood/shards/"; print(p + "x" * (int(sys.argv[1]) - len(p)))' "$1"; }
    NEAR_CAP=$BASE$(long_path 8000)
    OVER_CAP=$BASE$(long_path 61440)
    auth_rows() { sg_psql_admin -d "$DB_NAME" -c "SELECT count(*) FROM audit_events WHERE action = 'auth'" 2>/dev/null || echo 0; }
    gw_log_bytes() { stat -c %s "$LOG/gateway-main.stderr" 2>/dev/null || echo 0; }
    flood_readers() { # flood_readers NAME: the legitimate readers' open loop, its JSON in $FLOOD
        "$OHA" --no-tui --output-format json -z "${DURATION}s" -q "$FLOOD_RATE" -c 4 --latency-correction \
            -H "Authorization: Bearer $TOKEN" --rand-regex-url "$flood_url" >"$FLOOD/$1.json" 2>"$FLOOD/$1.stderr" ||
            { cat "$FLOOD/$1.stderr" >&2; sg_die "oha (flood readers) failed"; }
    }
    echo "readers: oha --no-tui -z ${DURATION}s -q $FLOOD_RATE -c 4 --latency-correction -H 'Authorization: Bearer \$TOKEN' --rand-regex-url '<local set>'; flood: oha -z $((DURATION + 2))s -c $FLOOD_CONNS -H 'Authorization: Bearer sgt_bad' BASE/<8000-byte path> and BASE/<61440-byte path>" >"$FLOOD/cmd"
    for r in $(seq 1 "$ROUNDS"); do
        blog "flood round $r/$ROUNDS: readers alone ($FLOOD_RATE req/s)"
        flood_readers "quiet-r$r"
        rows0=$(auth_rows) log0=$(gw_log_bytes)
        blog "flood round $r/$ROUNDS: readers while bad tokens flood (2 x oha -c $FLOOD_CONNS)"
        "$OHA" --no-tui --output-format json -z "$((DURATION + 2))s" -c "$FLOOD_CONNS" \
            -H "Authorization: Bearer sgt_bad_$(sg_rand_hex)" "$NEAR_CAP" >"$FLOOD/flood-near-r$r.json" 2>/dev/null &
        FLOOD_A=$!
        "$OHA" --no-tui --output-format json -z "$((DURATION + 2))s" -c "$FLOOD_CONNS" \
            -H "Authorization: Bearer sgt_bad_$(sg_rand_hex)" "$OVER_CAP" >"$FLOOD/flood-over-r$r.json" 2>/dev/null &
        FLOOD_B=$!
        sleep 1
        flood_readers "flooded-r$r"
        wait "$FLOOD_A" "$FLOOD_B" || true
        echo "{\"auth_rows\": $(($(auth_rows) - rows0)), \"log_bytes\": $(($(gw_log_bytes) - log0))}" >"$FLOOD/cost-r$r.json"
        blog "  quiet: $(oha_summary "$FLOOD/quiet-r$r.json")"
        blog "  flooded: $(oha_summary "$FLOOD/flooded-r$r.json")"
        blog "  floods: near cap $(oha_summary "$FLOOD/flood-near-r$r.json"); over cap $(oha_summary "$FLOOD/flood-over-r$r.json"); cost $(cat "$FLOOD/cost-r$r.json")"
    done
    python3 - "$FLOOD" "$ROUNDS" <<'PY' | tee "$FLOOD/summary.txt" >&2
import json, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
def p50(name):
    return json.load(open("%s/%s.json" % (d, name)))["latencyPercentiles"]["p50"] * 1e3
def sent(name):
    return sum(json.load(open("%s/%s.json" % (d, name))).get("statusCodeDistribution", {}).values())
ratios = []
for r in range(1, rounds + 1):
    q, f = p50("quiet-r%d" % r), p50("flooded-r%d" % r)
    ratios.append(f / q)
    cost = json.load(open("%s/cost-r%d.json" % (d, r)))
    print("[bench] flood r%d: readers p50 %.2f ms quiet, %.2f ms flooded (%.2fx); flood requests %d near the cap + %d over it cost %d auth audit rows, %d log bytes" % (
        r, q, f, f / q, sent("flood-near-r%d" % r), sent("flood-over-r%d" % r), cost["auth_rows"], cost["log_bytes"]))
m = statistics.median(ratios)
print("[bench] flood: readers' p50 under the flood / alone, median of %d round(s): %.2fx (goal <= 2x)%s" % (
    rounds, m, "" if m <= 2 else "  ABOVE THE GOAL"))
json.dump({"ratios": ratios, "median_ratio": m}, open(d + "/flood.json", "w"))
PY
fi

# ---------------------------------------------------------------------------------------------
# 7. Tier migration (issue 5), local -> pkcs11, on accounts of their own:
#    a. p99 of GETs on the hsm set (other accounts; the pkcs11 backend the job wraps on) with
#       a job running at the default rate vs none. One job on account mig-lat-000000, paused
#       outside the "job" windows, resumed for each; its state is recorded before and after
#       every window (it must be running, and still have work left, for the whole window).
#    b. throughput of a job of --migration-shards shards on mig-tput-000000 (gateway restarted
#       with rate_per_sec = --migration-rate) vs the raw loop of the same calls without HTTP
#       or database (shardgate-bench migrate-raw), on the same keyring file and token; in
#       --rounds rounds (the shards moved back to local between them), the median ratio.
# ---------------------------------------------------------------------------------------------
if [ "$ONLY" = all ] || [ "$ONLY" = migration ]; then
MIG=$RES/migration
mkdir -p "$MIG"
mig() { SG_TOKEN=$TOKEN python3 bench/migrate.py --base "$BASE" "$@"; }
jfield() { python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1]))' "$1"; }
# Job windows + the settling second around each, with room to spare.
LAT_SHARDS=$((ROUNDS * (DURATION + 4) * MIG_DEFAULT_RATE + 3000))
blog "migration: loading 1 account x $LAT_SHARDS shards (latency job) and 1 account x $MIG_SHARDS shards (throughput job), $SHARD_BYTES B, tier bench-local"
# 16 loader workers: 20% more shards/s than 8 (2,700 vs 2,250/s, alternated), a quarter of the
# migration section's set-up time.
MIG_LOAD_CMD="SG_TOKEN=\$TOKEN python3 bench/load.py --base $BASE --workers 16 --accounts 1 --shards-per-account N --shard-bytes $SHARD_BYTES bench-local=mig-lat- | bench-local=mig-tput-"
echo "$MIG_LOAD_CMD" >"$MIG/load.cmd"
SG_TOKEN=$TOKEN python3 bench/load.py --base "$BASE" --workers 16 --accounts 1 --shards-per-account "$LAT_SHARDS" \
    --shard-bytes "$SHARD_BYTES" bench-local=mig-lat- | tee "$MIG/load.jsonl" >&2 ||
    sg_die "loading the migration data set failed"
SG_TOKEN=$TOKEN python3 bench/load.py --base "$BASE" --workers 16 --accounts 1 --shards-per-account "$MIG_SHARDS" \
    --shard-bytes "$SHARD_BYTES" bench-local=mig-tput- | tee -a "$MIG/load.jsonl" >&2 ||
    sg_die "loading the migration data set failed"
vacuum_db

# a. Latency: job at the default rate (this gateway has no [migration] settings).
blog "migration: p99 of GETs (hsm set) with a job at the default rate ($MIG_DEFAULT_RATE/s) vs none, $ROUNDS round(s)"
mig tier mig-lat-000000 bench-hsm >"$MIG/lat-start.json"
LAT_JOB=$(jfield migration_job <"$MIG/lat-start.json")
[ -n "$LAT_JOB" ] && [ "$LAT_JOB" != None ] || sg_die "no migration job started: $(cat "$MIG/lat-start.json")"
mig pause "$LAT_JOB" >/dev/null
echo "$LAT_JOB" >"$MIG/lat-job"
lat_window() { # lat_window off|on ROUND
    local on=$1 r=$2
    if [ "$on" = on ]; then
        mig resume "$LAT_JOB" >/dev/null
        sleep 1 # the worker picks it up at once (a resume nudges it); let it reach its pace
    fi
    mig state "$LAT_JOB" >"$MIG/lat-$on-r$r.before.json"
    run_wrk "mig-$on-hsm-r$r" "mig_$on" hsm get "$THREADS" "$CONNS" "$DURATION" "$r"
    mig state "$LAT_JOB" >"$MIG/lat-$on-r$r.after.json"
    if [ "$on" = on ]; then
        mig pause "$LAT_JOB" >/dev/null
        blog "  job during mig-on-hsm-r$r: $(jfield state <"$MIG/lat-on-r$r.before.json") -> $(jfield state <"$MIG/lat-on-r$r.after.json"), done $(jfield done <"$MIG/lat-on-r$r.before.json") -> $(jfield done <"$MIG/lat-on-r$r.after.json") of $(jfield total <"$MIG/lat-on-r$r.after.json")"
    fi
}
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then lat_window off "$r"; lat_window on "$r"; else lat_window on "$r"; lat_window off "$r"; fi
done
mig cancel "$LAT_JOB" >"$MIG/lat-end.json"

# b. Throughput: restart with a rate that is not the limit; the raw loop first, on the idle gateway.
stop_gateway
start_gateway migrate "SHARDGATE_MIGRATION__RATE_PER_SEC=$MIG_RATE"
RAW_MIG_CMD="$BENCH_BIN migrate-raw --keyring \$DATA/local.keyring --module $SG_SOFTHSM_MODULE --token-label $HSM_LABEL --pin-file \$PIN_FILE --kek-label shardgate-kek --pool-size 8 --n $MIG_SHARDS"
echo "$RAW_MIG_CMD" >"$MIG/raw.cmd"
blog "migration: raw loop, $MIG_SHARDS x (unwrap local, wrap pkcs11, unwrap pkcs11), no HTTP or database"
"$BENCH_BIN" migrate-raw --keyring "$WORK/data/local.keyring" --module "$SG_SOFTHSM_MODULE" \
    --token-label "$HSM_LABEL" --pin-file "$WORK/secrets/hsm.pin" --kek-label shardgate-kek \
    --pool-size 8 --n "$MIG_SHARDS" >"$MIG/raw.json" || sg_die "shardgate-bench migrate-raw failed"
blog "  raw: $(cat "$MIG/raw.json")"
# The same calls as the job's at this rate: its batches go to the backends in chunks of
# batch_size / concurrency items (512 / 2 by default: gateway/src/service/settings.rs, chunk_len in
# gateway/src/service/migrate/worker.rs).
RAW_CHUNK=256
echo "$RAW_MIG_CMD --batch $RAW_CHUNK" >"$MIG/raw-batched.cmd"
blog "migration: raw loop, $MIG_SHARDS items in calls of $RAW_CHUNK (rewrap_many_from, verify_many), no HTTP or database"
"$BENCH_BIN" migrate-raw --keyring "$WORK/data/local.keyring" --module "$SG_SOFTHSM_MODULE" \
    --token-label "$HSM_LABEL" --pin-file "$WORK/secrets/hsm.pin" --kek-label shardgate-kek \
    --pool-size 8 --n "$MIG_SHARDS" --batch "$RAW_CHUNK" >"$MIG/raw-batched.json" ||
    sg_die "shardgate-bench migrate-raw --batch failed"
blog "  raw (batched): $(cat "$MIG/raw-batched.json")"
blog "migration: job of $MIG_SHARDS shards, local -> pkcs11 (rate_per_sec $MIG_RATE)"
echo "SHARDGATE_MIGRATION__RATE_PER_SEC=$MIG_RATE shardgate serve --config ...; SG_TOKEN=\$TOKEN python3 bench/migrate.py --base $BASE run mig-tput-000000 bench-hsm" >"$MIG/job.cmd"
scrape_metrics "$MIG/metrics.before"
echo "$CLK_TCK" >"$MIG/clk_tck"
# mig_job SUFFIX: the measured job (local -> pkcs11), its CPU (gateway, PostgreSQL) around it.
mig_job() {
    local sfx=$1
    gw_cpu_ticks >"$MIG/cpu$sfx.before"
    pg_cpu_ticks >"$MIG/pg_cpu$sfx.before"
    mig run mig-tput-000000 bench-hsm >"$MIG/job$sfx.json" || sg_die "the throughput job failed"
    gw_cpu_ticks >"$MIG/cpu$sfx.after"
    pg_cpu_ticks >"$MIG/pg_cpu$sfx.after"
    blog "  job: $(cat "$MIG/job$sfx.json")"
    grep -q '"stalled": true' "$MIG/job$sfx.json" && blog "  WARNING: the job stalled (no progress for 60 s); reported as such"
    return 0
}
mig_job ""
scrape_metrics "$MIG/metrics.after"
# More rounds of the pair (batched raw loop, then the job), as for every other ratio: the
# shards go back to local first (the same job the other way, not measured), so each round
# moves the same 100,000 shards local -> pkcs11.
for r in $(seq 2 "$ROUNDS"); do
    blog "migration round $r/$ROUNDS: the shards back to local (not measured), then the raw loop and the job"
    mig --allow-downgrade run mig-tput-000000 bench-local >"$MIG/job-back-r$r.json" || sg_die "the job back to local failed"
    "$BENCH_BIN" migrate-raw --keyring "$WORK/data/local.keyring" --module "$SG_SOFTHSM_MODULE" \
        --token-label "$HSM_LABEL" --pin-file "$WORK/secrets/hsm.pin" --kek-label shardgate-kek \
        --pool-size 8 --n "$MIG_SHARDS" --batch "$RAW_CHUNK" >"$MIG/raw-batched-r$r.json" ||
        sg_die "shardgate-bench migrate-raw --batch failed"
    blog "  raw (batched): $(cat "$MIG/raw-batched-r$r.json")"
    mig_job "-r$r"
done
curl -s -H @"$WORK/secrets/auth.header" "$BASE/v1/accounts/mig-tput-000000" >"$MIG/account-after.json" || true
fi # ONLY != flood

# ---------------------------------------------------------------------------------------------
# 7b. Compare (--only compare): this tree's binary ("new") against --baseline's ("old") on the
#     same database and data set. Each round runs both, one after the other, the order
#     alternating; each run starts its own gateway process with the migration rate not the
#     limit. A round of one binary: a warm-up, GET local, GET hsm, batchGet hsm, PUT local
#     (wrk), then a job moving --migration-shards shards local -> pkcs11 (measured) and back
#     (not measured), then VACUUM (ANALYZE). Every figure's ratio is new / old of the same
#     round; the report gives the median of the rounds.
# ---------------------------------------------------------------------------------------------
if [ "$ONLY" = compare ]; then
    CMP=$RES/compare
    mkdir -p "$CMP"
    echo "$BASELINE_REV" >"$CMP/baseline_rev"
    git rev-parse HEAD >"$CMP/new_rev"
    mig() { SG_TOKEN=$TOKEN python3 bench/migrate.py --base "$BASE" "$@"; }
    blog "compare: loading 1 account x $MIG_SHARDS shards (migration job), tier bench-local"
    SG_TOKEN=$TOKEN python3 bench/load.py --base "$BASE" --workers 16 --accounts 1 --shards-per-account "$MIG_SHARDS" \
        --shard-bytes "$SHARD_BYTES" bench-local=mig-tput- | tee "$CMP/load.jsonl" >&2 ||
        sg_die "loading the migration data set failed"
    vacuum_db
    stop_gateway
    for r in $(seq 1 "$ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then order=(new old); else order=(old new); fi
        for which in "${order[@]}"; do
            blog "compare round $r/$ROUNDS: $which ($(basename "${CMP_BIN[$which]}"))"
            BIN=${CMP_BIN[$which]}
            # (with --baseline-env, the old arm's extra setting beside the rate)
            start_gateway "$which-r$r" "SHARDGATE_MIGRATION__RATE_PER_SEC=$MIG_RATE" "${CMP_ENV[$which]}"
            run_wrk "cmp-warmup-$which-r$r" warmup local get "$THREADS" "$CONNS" "$WARMUP_SECS" "$r"
            run_wrk "cmp-$which-get-local-r$r" "cmp_$which" local get "$THREADS" "$CONNS" "$DURATION" "$r"
            run_wrk "cmp-$which-get-hsm-r$r" "cmp_$which" hsm get "$THREADS" "$CONNS" "$DURATION" "$r"
            run_wrk "cmp-$which-batch-hsm-r$r" "cmp_$which" hsm batch "$THREADS" "$CONNS" "$DURATION" "$r"
            run_wrk "cmp-$which-put-local-r$r" "cmp_$which" local put "$THREADS" "$CONNS" "$DURATION" "$r"
            gw_cpu_ticks >"$CMP/job-$which-r$r.cpu.before"
            mig run mig-tput-000000 bench-hsm >"$CMP/job-$which-r$r.json" || sg_die "the compare job ($which) failed"
            gw_cpu_ticks >"$CMP/job-$which-r$r.cpu.after"
            echo "$CLK_TCK" >"$CMP/clk_tck"
            blog "  job ($which): $(cat "$CMP/job-$which-r$r.json")"
            mig --allow-downgrade run mig-tput-000000 bench-local >"$CMP/job-back-$which-r$r.json" || sg_die "the job back to local failed"
            stop_gateway
            # The two jobs rewrote every row of the job's account twice, and the PUTs added
            # versions: vacuum now, or autovacuum of them lands in the next binary's window
            # (seen: PUT rounds 0.74x-1.17x with 100,000-shard jobs and no vacuum between).
            vacuum_db
        done
    done
    echo "scripts/bench.sh${ORIG_ARGS[*]:+ ${ORIG_ARGS[*]}}" >"$CMP/cmd"
fi

# ---------------------------------------------------------------------------------------------
# 7c. Audit archive (issue 28): scripts/lib/bench_archive.sh. Section 12 in `all` and
#     `--only archive`, section 13 only with `--only growth`.
# ---------------------------------------------------------------------------------------------
# shellcheck source=scripts/lib/bench_archive.sh
source "$SCRIPT_DIR/lib/bench_archive.sh"
case $ONLY in all | archive) bench_archive ;; growth) bench_growth ;; esac

# ---------------------------------------------------------------------------------------------
# 7d. A fleet (issue 30): scripts/lib/bench_fleet.sh, `--only fleet`: priority under overload
#     (section 14), policy convergence across replicas (section 15).
# ---------------------------------------------------------------------------------------------
# shellcheck source=scripts/lib/bench_fleet.sh
source "$SCRIPT_DIR/lib/bench_fleet.sh"
if [ "$ONLY" = fleet ]; then
    bench_priority
    bench_convergence
fi
[ "$ONLY" != soak ] || bench_soak

# ---------------------------------------------------------------------------------------------
# 8. Report
# ---------------------------------------------------------------------------------------------
ver() { "$@" 2>/dev/null | head -n1 || true; }
python3 -c 'import json,sys; k=sys.argv[1::2]; v=sys.argv[2::2]; print(json.dumps(dict(zip(k, v)), indent=1))' \
    date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    git_rev "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    git_dirty "$(if git diff --quiet HEAD -- 2>/dev/null; then echo no; else echo yes; fi)" \
    nproc "$(nproc)" \
    malloc_arena_max "$ARENAS" \
    cpu_model "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)" \
    mem_total "$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" \
    kernel "$(uname -r)" \
    rustc "$(ver rustc --version)" \
    postgres "$(sg_psql_admin -c 'SHOW server_version' 2>/dev/null || echo unknown)" \
    softhsm2 "$(ver softhsm2-util --version)" \
    moto "${SG_MOTO_VERSION:-unknown}" \
    wrk "$(ver wrk --version | awk '{ print $2 }')" \
    accounts "$ACCOUNTS" shard_bytes "$SHARD_BYTES" duration "$DURATION" rounds "$ROUNDS" \
    threads "$THREADS" connections "$CONNS" batch "$BATCH" warmup_secs "$WARMUP_SECS" \
    raw_unwraps "$RAW_UNWRAPS" decrypt_n "$DECRYPT_N" \
    elapsed_seconds "$SECONDS" only "$ONLY" migration_shards "$MIG_SHARDS" migration_rate "$MIG_RATE" \
    migration_default_rate "$MIG_DEFAULT_RATE" migration_lat_shards "${LAT_SHARDS:-0}" \
    archive_events "$ARCHIVE_EVENTS" growth_events "$GROWTH_EVENTS" growth_span_days "$GROWTH_SPAN_DAYS" \
    priority_accounts "$PRIO_ACCOUNTS" priority_slots "$PRIO_SLOTS" priority_queue "$PRIO_QUEUE" \
    priority_flood_conns "$PRIO_FLOOD_CONNS" converge_applies "$CONVERGE_APPLIES" \
    command "scripts/bench.sh${ORIG_ARGS[*]:+ ${ORIG_ARGS[*]}}" >"$RES/machine.json"
REPORT_ARGS=()
[ "$ONLY" = migration ] && REPORT_ARGS=(--only-migration)
[ "$ONLY" = flood ] && REPORT_ARGS=(--only-flood)
[ "$ONLY" = compare ] && REPORT_ARGS=(--only-compare)
[ "$ONLY" = archive ] && REPORT_ARGS=(--only-archive)
[ "$ONLY" = growth ] && REPORT_ARGS=(--only-growth)
[ "$ONLY" = fleet ] && REPORT_ARGS=(--only-fleet)
[ "$ONLY" = soak ] && REPORT_ARGS=(--only-soak)
[ "$ONLY" = flood ] && blog "flood figure: $(tail -n1 "$RES/flood/summary.txt")"
python3 bench/report.py --results "$RES" --md "$OUT_DIR/BENCHMARKS.md" --json "$OUT_DIR/BENCHMARKS.json" "${REPORT_ARGS[@]}"
blog "wrote $OUT_DIR/BENCHMARKS.md and $OUT_DIR/BENCHMARKS.json"
OK=1
