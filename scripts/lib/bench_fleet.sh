# shellcheck shell=bash
# The fleet sections of scripts/bench.sh (issue 30), `--only fleet`, sourced by it after the
# data set is loaded; they use the bench's globals and helpers (BASE, TOKEN, RES, OHA, BIN, CFG,
# DURATION, ROUNDS, start_gateway, stop_gateway, open_loop_regex, ...).
#
#   bench_convergence  section 15: CONVERGE_APPLIES policy applies through the running
#                   gateway beside two more replicas on the same database (bench/converge.py):
#                   how long until the others serve each new version (`[policy] refresh_ms`,
#                   default 2,000)
#
#   bench_priority  section 14: two tiers on the `kms-nocache` backend (every GET is a KMS Decrypt on
#                   moto), `bench-crit` (class critical) and `bench-bulk` (class bulk), applied
#                   live through PUT /v1/admin/policy; the gateway restarted with a bulkhead of
#                   PRIO_SLOTS slots and a queue of PRIO_QUEUE. First the capacity C (critical
#                   GETs, closed loop); then per round: critical GETs alone at C/10 (open loop),
#                   and the same beside a bulk flood offered at 10 x C; then the same flooded
#                   window with the classes removed (the control: everything `standard`).
#                   Goal: critical p99 beside the flood <= 2x alone, 0 critical errors; bulk
#                   gets 503 with Retry-After, never a timeout.

#
#   bench_soak      section 16 (`--only soak`, issue 30): the chaos soak, bench/soak.py, with
#                   a gateway built with the test-only `fault-injection` hook (the hsm-logout
#                   fault): three replicas on a private PostgreSQL cluster and moto, 70% of the
#                   peak for SOAK_SECS (default 600) s, one fault every 20-30 s in rotation

PRIO_ACCOUNTS=${SG_BENCH_PRIO_ACCOUNTS:-200}
PRIO_SLOTS=${SG_BENCH_PRIO_SLOTS:-8}
PRIO_QUEUE=${SG_BENCH_PRIO_QUEUE:-64}
PRIO_FLOOD_CONNS=${SG_BENCH_PRIO_FLOOD_CONNS:-64}
# The capacity C that sets the critical (C/10) and flood (10 x C) rates: measured when unset;
# set it to compare two builds at the same offered load (the measured one is still recorded).
PRIO_CAPACITY=${SG_BENCH_PRIO_CAPACITY:-}
CONVERGE_APPLIES=${SG_BENCH_CONVERGE_APPLIES:-20}
SOAK_SECS=${SG_BENCH_SOAK_SECS:-600}

bench_soak() {
    local S=$RES/soak
    mkdir -p "$S"
    blog "chaos soak: the gateway with the test-only fault-injection hook ($PROFILE)"
    CARGO_TARGET_DIR=$TARGET cargo build --profile "$PROFILE" -p shardgate --features fault-injection
    cp "$TARGET/$PROFILE/shardgate" "$WORK/shardgate-soak"
    # The measured binary again at $BIN (its artifacts are still there: only the copy is redone).
    CARGO_TARGET_DIR=$TARGET cargo build --profile "$PROFILE" -p shardgate
    local cmd=(python3 bench/soak.py --bin "$WORK/shardgate-soak" --out "$S" --duration "$SOAK_SECS")
    echo "scripts/test.sh --run python3 bench/soak.py --bin <dist build with --features fault-injection> --out DIR --duration $SOAK_SECS" >"$S/cmd"
    blog "chaos soak: $SOAK_SECS s (progress every 10 s)"
    bash scripts/test.sh --run "${cmd[@]}" >"$S/soak.log" 2>&1 ||
        { tail -n 40 "$S/soak.log" >&2; sg_die "the chaos soak failed (log: $S/soak.log)"; }
    grep '^\[soak\]' "$S/soak.log" | tail -n 30 >&2
}

bench_convergence() {
    local C=$RES/converge
    mkdir -p "$C"
    echo "SG_TOKEN=\$TOKEN python3 bench/converge.py --base BASE --bin $BIN --config CFG --log-dir LOG --replicas 3 --applies $CONVERGE_APPLIES" >"$C/cmd"
    blog "convergence: $CONVERGE_APPLIES policy applies through one of 3 replicas"
    SG_TOKEN=$TOKEN python3 bench/converge.py --base "$BASE" --bin "$BIN" --config "$CFG" --log-dir "$LOG" \
        --replicas 3 --applies "$CONVERGE_APPLIES" >"$C/converge.json" || sg_die "the convergence figure failed"
}

bench_priority() {
    local P=$RES/priority
    mkdir -p "$P"
    [ -n "$OHA" ] || sg_die "oha is required for the priority figure (cargo install oha)"
    prio() { SG_TOKEN=$TOKEN python3 bench/priority.py --base "$BASE" "$@"; }
    blog "priority: tiers bench-crit (critical) and bench-bulk (bulk) on kms-nocache, applied live"
    prio classes on kms-nocache >"$P/policy-on.json" || sg_die "applying the classes failed"
    SG_TOKEN=$TOKEN python3 bench/load.py --base "$BASE" --accounts "$PRIO_ACCOUNTS" \
        --shard-bytes "$SHARD_BYTES" bench-crit=crit- bench-bulk=bulk- | tee "$P/load.jsonl" >&2 ||
        sg_die "loading the priority data set failed"
    stop_gateway
    start_gateway prio "SHARDGATE_BREAKER__MAX_CONCURRENT=$PRIO_SLOTS" "SHARDGATE_BREAKER__MAX_QUEUE=$PRIO_QUEUE"
    local ids host crit_url bulk_url
    ids=$(ACCOUNTS=$PRIO_ACCOUNTS open_loop_regex)
    host=$(printf '%s' "$BASE" | sed 's/\./[.]/g')
    crit_url="$host/v1/accounts/crit-$ids/shards/s0"
    bulk_url="$host/v1/accounts/bulk-$ids/shards/s0"
    local auth=(-H "Authorization: Bearer $TOKEN")
    "$OHA" --no-tui --output-format json -z 3s -c "$((2 * PRIO_SLOTS))" "${auth[@]}" --rand-regex-url "$crit_url" >/dev/null 2>&1 || true
    blog "priority: capacity (critical GETs, closed loop, $((2 * PRIO_SLOTS)) connections)"
    "$OHA" --no-tui --output-format json -z "${DURATION}s" -c "$((2 * PRIO_SLOTS))" "${auth[@]}" \
        --rand-regex-url "$crit_url" >"$P/capacity.json" 2>"$P/capacity.stderr" || sg_die "oha (capacity) failed"
    local cap crit_rate bulk_rate
    cap=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["summary"]["requestsPerSec"]))' "$P/capacity.json")
    if [ -n "$PRIO_CAPACITY" ]; then
        blog "priority: measured capacity $cap req/s; rates set from SG_BENCH_PRIO_CAPACITY=$PRIO_CAPACITY"
        cap=$PRIO_CAPACITY
    fi
    crit_rate=$((cap / 10 > 0 ? cap / 10 : 1))
    bulk_rate=$((cap * 10))
    blog "priority: capacity $cap req/s; critical at $crit_rate req/s, bulk flood offered at $bulk_rate req/s"
    critical() { # critical NAME: the critical open loop, its JSON in $P
        "$OHA" --no-tui --output-format json -z "${DURATION}s" -q "$crit_rate" -c 4 --latency-correction \
            "${auth[@]}" --rand-regex-url "$crit_url" >"$P/$1.json" 2>"$P/$1.stderr" || sg_die "oha ($1) failed"
    }
    flooded() { # flooded NAME FLOODNAME ROUND: critical beside a bulk flood
        "$OHA" --no-tui --output-format json -z "$((DURATION + 2))s" -q "$bulk_rate" -c "$PRIO_FLOOD_CONNS" \
            "${auth[@]}" --rand-regex-url "$bulk_url" >"$P/$2.json" 2>"$P/$2.stderr" &
        local flood_pid=$!
        sleep 1
        critical "$1"
        [ -z "${3:-}" ] || prio retry-after "$BASE/v1/accounts/bulk-000000/shards/s0" 50 >"$P/retry-after-r$3.json"
        wait "$flood_pid" || sg_die "oha ($2) failed"
    }
    echo "capacity: oha -z ${DURATION}s -c $((2 * PRIO_SLOTS)) <critical set>; critical: oha -z ${DURATION}s -q C/10 -c 4 --latency-correction <critical set>; flood: oha -z $((DURATION + 2))s -q 10C -c $PRIO_FLOOD_CONNS <bulk set>; gateway: SHARDGATE_BREAKER__MAX_CONCURRENT=$PRIO_SLOTS SHARDGATE_BREAKER__MAX_QUEUE=$PRIO_QUEUE" >"$P/cmd"
    for r in $(seq 1 "$ROUNDS"); do
        blog "priority round $r/$ROUNDS: critical alone"
        critical "alone-r$r"
        blog "priority round $r/$ROUNDS: critical beside the bulk flood"
        flooded "flooded-r$r" "flood-r$r" "$r"
    done
    blog "priority: the control, classes removed (everything standard)"
    prio classes off kms-nocache >"$P/policy-off.json" || sg_die "removing the classes failed"
    for r in $(seq 1 "$ROUNDS"); do
        flooded "noclass-r$r" "noclass-flood-r$r"
    done
    prio classes on kms-nocache >/dev/null || true
    curl -s -H @"$WORK/secrets/auth.header" "$BASE/readyz" >"$P/readyz.json" || true
    python3 bench/priority.py summary "$P" "$ROUNDS" | tee "$P/summary.txt" >&2
    stop_gateway
    start_gateway main
}
