#!/usr/bin/env bash
# Gateway CPU per GET of two builds of the gateway (e.g. the `release` and `dist` profiles),
# side by side in one run, with the bench's method (scripts/bench.sh: wrk closed loop on the
# local backend over PostgreSQL, CPU = the gateway's utime + stime from /proc over the window,
# divided by the requests wrk counted). A quick figure for docs/deployment.md ("Build
# profiles"); `scripts/bench.sh --only compare --baseline-profile release` is the full A/B.
#
#   scripts/bench_profiles.sh NAME=BINARY NAME=BINARY [--rounds R] [--duration S]
#
# e.g. scripts/bench_profiles.sh release=/tmp/t/release/shardgate dist=/tmp/t/dist/shardgate
# Needs PostgreSQL at $SG_PG_HOST:$SG_PG_PORT (scripts/lib/services.sh) and wrk; creates and
# drops a database of its own. Prints one line per window and the medians per binary.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$SCRIPT_DIR/.."
# shellcheck source=scripts/lib/common.sh
source "$SCRIPT_DIR/lib/common.sh"
# shellcheck source=scripts/lib/services.sh
source "$SCRIPT_DIR/lib/services.sh"

ROUNDS=3 DURATION=10 ACCOUNTS=1000 THREADS=2 CONNS=16
declare -a NAMES=() BINS=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        *=*) NAMES+=("${1%%=*}"); BINS+=("${1#*=}"); shift ;;
        *) sg_die "usage: scripts/bench_profiles.sh NAME=BINARY NAME=BINARY [--rounds R] [--duration S]" ;;
    esac
done
[ "${#NAMES[@]}" -ge 2 ] || sg_die "give two or more NAME=BINARY"
sg_ensure_postgres || sg_die "PostgreSQL is required"
command -v wrk >/dev/null || sg_die "wrk is required (apt-get install wrk)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sg-profiles.XXXXXXXX")
DB="shardgate_profiles_$$"
GW_PID=""
cleanup() {
    [ -z "$GW_PID" ] || { kill "$GW_PID" 2>/dev/null; wait "$GW_PID" 2>/dev/null || true; }
    sg_psql_admin -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
sg_psql_admin -c "CREATE DATABASE $DB" >/dev/null
cat >"$WORK/cfg.toml" <<EOF
listen = "127.0.0.1:0"
data_dir = "$WORK/data"
admin_token_file = "$WORK/data/admin.token"
[store]
url = "postgres://postgres@$SG_PG_HOST:$SG_PG_PORT/$DB?sslmode=disable"
max_connections = 16
[backends.local]
kind = "local"
key_file = "$WORK/data/local.keyring"
create = true
[tiers]
bench-local = "local"
[audit]
key_file = "$WORK/data/audit.key"
create_key = true
EOF
start() {
    env -u RUST_LOG RUST_LOG=warn "$1" serve --config "$WORK/cfg.toml" >"$WORK/gw.out" 2>"$WORK/gw.err" </dev/null &
    GW_PID=$!
    BASE=""
    for _ in $(seq 1 120); do
        BASE=$(sed -n 's/^shardgate listening on //p' "$WORK/gw.out" | head -n1)
        [ -n "$BASE" ] && return 0
        sleep 0.25
    done
    cat "$WORK/gw.err" >&2
    sg_die "$1 did not start"
}
stop() { kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; GW_PID=""; }
ticks() { awk '{ print $14 + $15 }' "/proc/$GW_PID/stat"; }
get() { # SECONDS -> requests (every answer a 200, or the run fails)
    SG_TOKEN=$TOKEN SG_PREFIX=local- SG_ACCOUNTS=$ACCOUNTS SG_MODE=get wrk "-t$THREADS" "-c$CONNS" \
        "-d${1}s" --timeout 10s -s bench/wrk.lua "$BASE" >"$WORK/wrk.out"
    ! grep -q "Non-2xx\|Socket errors" "$WORK/wrk.out" || { cat "$WORK/wrk.out" >&2; sg_die "GETs failed"; }
    awk '/requests in/ { print $1 }' "$WORK/wrk.out"
}

start "${BINS[0]}"
TOKEN=$(cat "$WORK/data/admin.token")
SG_TOKEN=$TOKEN python3 bench/load.py --base "$BASE" --accounts "$ACCOUNTS" --shard-bytes 64 bench-local=local- >/dev/null
stop
TCK=$(getconf CLK_TCK)
declare -A ALL=()
for r in $(seq 1 "$ROUNDS"); do
    order=("${!NAMES[@]}")
    [ $((r % 2)) = 1 ] || order=($(printf '%s\n' "${order[@]}" | tac))
    for i in "${order[@]}"; do
        start "${BINS[$i]}"
        get 2 >/dev/null # warm-up
        t0=$(ticks)
        n=$(get "$DURATION")
        t1=$(ticks)
        stop
        us=$(awk -v t=$((t1 - t0)) -v k="$TCK" -v n="$n" 'BEGIN { printf "%.1f", t / k * 1e6 / n }')
        echo "round $r ${NAMES[$i]}: $n GETs in ${DURATION}s, gateway CPU ${us} µs/GET"
        ALL[${NAMES[$i]}]+="$us "
    done
done
for name in "${NAMES[@]}"; do
    # shellcheck disable=SC2086
    echo "${name}: median gateway CPU $(printf '%s\n' ${ALL[$name]} | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }') µs/GET (rounds: ${ALL[$name]})"
done
