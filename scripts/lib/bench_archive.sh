# shellcheck shell=bash
# The audit-archive sections of scripts/bench.sh (issue 28), sourced by it after the data set
# is loaded; it uses the bench's globals and helpers (BIN, BENCH_BIN, CFG, PG_URL, WORK, RES,
# start_gateway, run_wrk, vacuum_db, ...).
#
#   bench_archive   section 12: archive throughput against the raw read-compress-PUT loop
#                   (--archive-events per round), and GET p99 (oha, open loop at half the
#                   peak) with and without an archiver running
#   bench_growth    section 13: GET throughput on a database whose audit history holds
#                   --growth-events events, all but the last hot_days archived, against a
#                   fresh database with the same data set; how long archiving them took

# The archiver's default pace (gateway/src/app/config.rs, d_archive_rate); SG_BENCH_ARCHIVE_RATE
# runs the paced windows at another one (to compare paces; BENCHMARKS.md shows the default).
ARCHIVE_RATE=${SG_BENCH_ARCHIVE_RATE:-20000}

# The paced archiver's niceness (docs/audit-archive.md: a timer's pass runs at Nice=10).
ARCHIVER_NICE=${SG_BENCH_ARCHIVER_NICE:-10}

# The audit CLI on the bench's config. A short lease: the p99 windows end a pass with kill -9,
# and the next window's pass must not wait out a minute-long lease.
audit_cli() { "${GW_ENV[@]}" SHARDGATE_AUDIT__ARCHIVE__LEASE_SECS=2 "$BIN" audit "$@" --config "$CFG"; }

# fill NAME EVENTS SPAN_DAYS: chained events on a new chain, stamped back over SPAN_DAYS.
fill() {
    local name=$1 n=$2 span=$3
    echo "$BENCH_BIN audit-fill --url \$PG_URL --audit-key \$DATA/audit.key --events $n --span-days $span" >"$name.cmd"
    "$BENCH_BIN" audit-fill --url "$PG_URL" --audit-key "$WORK/data/audit.key" --events "$n" \
        --span-days "$span" >"$name.json" 2>"$name.stderr" || { tail "$name.stderr" >&2; sg_die "audit-fill failed"; }
    blog "  fill: $(cat "$name.json")"
}

# archive_pass NAME [--older-than D]: one `shardgate audit archive`, timed; NAME.json.
archive_pass() {
    local name=$1
    shift
    local t0 t1
    t0=$(date +%s.%N)
    audit_cli archive "$@" >"$name.out" 2>"$name.stderr" || { tail "$name.stderr" >&2; sg_die "audit archive failed"; }
    t1=$(date +%s.%N)
    python3 - "$name" "$t0" "$t1" <<'PY'
import json, re, sys
name, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
out = open(name + ".out").read()
m = re.search(r"(\d+) segment\(s\) recorded \((\d+) adopted.*?, (\d+) event\(s\) moved out of the hot table, (\d+) byte", out)
if not m:
    sys.exit("no summary line in " + name + ".out: " + out)
segs, adopted, events, written = (int(x) for x in m.groups())
s = t1 - t0
json.dump({"segments": segs, "adopted": adopted, "events": events, "bytes": written, "seconds": s,
           "per_sec": events / s if s > 0 else None}, open(name + ".json", "w"))
PY
    blog "  archive pass: $(cat "$name.json")"
}

pg_scalar() {
    psql -X -w -qAt -v ON_ERROR_STOP=1 -h "$SG_PG_HOST" -p "$SG_PG_PORT" -U postgres -d "${2:-$DB_NAME}" -c "$1"
}

# quiet_db: wait (up to 5 min) until no autovacuum worker runs on the bench's database, then
# CHECKPOINT, so that every p99 window starts from the same state: an unpaced window deletes
# a million rows or more, and the autovacuum and checkpoints that follow would otherwise
# land in whichever window comes next.
quiet_db() {
    local i
    for i in $(seq 1 300); do
        [ "$(pg_scalar "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")" = 0 ] && break
        sleep 1
    done
    pg_scalar 'CHECKPOINT' >/dev/null
}

# db_activity: checkpoints so far and autovacuum workers running now, as JSON fields.
db_activity() {
    printf '"checkpoints": %s, "autovacuum_workers": %s' \
        "$(pg_scalar 'SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter')" \
        "$(pg_scalar "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")"
}

# oha_get NAME RATE: GET local at RATE req/s for DURATION, open loop, into NAME.json.
oha_get() {
    local name=$1 rate=$2 url
    url="$(printf '%s' "$BASE" | sed 's/\./[.]/g')/v1/accounts/$(prefix_of local)$(open_loop_regex)/shards/s0"
    echo "oha --no-tui --output-format json -z ${DURATION}s -q $rate -c $CONNS --latency-correction -H 'Authorization: Bearer \$TOKEN' --rand-regex-url '$url'" >"$name.cmd"
    "$OHA" --no-tui --output-format json -z "${DURATION}s" -q "$rate" -c "$CONNS" --latency-correction \
        -H "Authorization: Bearer $TOKEN" --rand-regex-url "$url" >"$name.json" 2>"$name.stderr" ||
        { cat "$name.stderr" >&2; sg_die "oha failed: $name"; }
    blog "  $(basename "$name"): $(oha_summary "$name.json")"
}

bench_archive() {
    local arc=$RES/archive r peak rate per_sec need
    mkdir -p "$arc"
    blog "archive: $ROUNDS round(s) of $ARCHIVE_EVENTS events: the raw loop (read, cut, compress, PUT to a directory), then \`shardgate audit archive --older-than 0s\` (directory sink)"
    for r in $(seq 1 "$ROUNDS"); do
        fill "$arc/fill-r$r" "$ARCHIVE_EVENTS" 60
        vacuum_db
        rm -rf "$WORK/raw-archive"
        echo "$BENCH_BIN archive-raw --url \$PG_URL --dir \$WORK/raw-archive --older-than-secs 0" >"$arc/raw.cmd"
        "$BENCH_BIN" archive-raw --url "$PG_URL" --dir "$WORK/raw-archive" --older-than-secs 0 \
            >"$arc/raw-r$r.json" 2>"$arc/raw-r$r.stderr" || { tail "$arc/raw-r$r.stderr" >&2; sg_die "archive-raw failed"; }
        blog "  raw loop: $(cat "$arc/raw-r$r.json")"
        echo "shardgate audit archive --older-than 0s --rate 0 --config \$CFG" >"$arc/pass.cmd"
        archive_pass "$arc/pass-r$r" --older-than 0s --rate 0
    done
    rm -rf "$WORK/raw-archive"

    # GET p99 with and without an archiver at the default pace (`[audit.archive]
    # rate_per_sec`), and unpaced: enough history for every "on" window to archive throughout
    # (the pass is killed with -9 at the window's end, as an operator's kill would).
    run_wrk "arc-peak-local" warmup local get "$THREADS" "$CONNS" "$DURATION" 0
    peak=$(python3 -c 'import json,sys; l=[x for x in open(sys.argv[1]) if x.startswith("SGJSON ")][0]; w=json.loads(l[7:]); print(int(w["requests"] / (w["duration_us"] / 1e6)))' "$RES/runs/arc-peak-local/wrk.out")
    rate=$((peak / 2))
    per_sec=$(python3 -c 'import json,sys; print(int(max(json.load(open(f))["per_sec"] for f in sys.argv[1:])))' "$arc"/pass-r*.json)
    need=$(((DURATION + 3) * (per_sec + ARCHIVE_RATE) * ROUNDS))
    blog "archive: GET p99 (local, $rate req/s open loop, half of $peak) with no archiver, one at $ARCHIVE_RATE events/s (the default) and one unpaced; $need events of history first"
    echo "{\"peak_rps\": $peak, \"rate\": $rate, \"history\": $need, \"archive_rate\": $ARCHIVE_RATE}" >"$arc/p99.json"
    fill "$arc/fill-p99" "$need" 60
    vacuum_db
    # No archiver and a paced one alternate (the order reversed every other round); the
    # unpaced windows come last, since each leaves a million deleted rows behind it.
    local windows=()
    for r in $(seq 1 "$ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then windows+=("off $r" "on $r"); else windows+=("on $r" "off $r"); fi
    done
    for r in $(seq 1 "$ROUNDS"); do windows+=("full $r"); done
    local spec w name
    for spec in "${windows[@]}"; do
        w=${spec% *} r=${spec#* } name="$arc/p99-${spec% *}-r${spec#* }"
        quiet_db
        echo "{$(db_activity)}" >"$name.db-before.json"
        if [ "$w" = off ]; then
            oha_get "$name" "$rate"
            echo "{$(db_activity)}" >"$name.db-after.json"
            continue
        fi
        # "on": as docs/audit-archive.md deploys it beside a busy gateway (a timer's pass at
        # Nice=10 and the default pace); "full": unpaced at the gateway's priority.
        local pace=() niceness=$ARCHIVER_NICE
        [ "$w" = full ] && pace=(--rate 0) && niceness=0
        # Not through audit_cli: a backgrounded function is a subshell, and $! would not
        # be the archiver.
        nice -n "$niceness" "${GW_ENV[@]}" SHARDGATE_AUDIT__ARCHIVE__LEASE_SECS=2 "$BIN" audit archive --older-than 0s "${pace[@]}" \
            --config "$CFG" >"$name.archiver.out" 2>&1 &
        ARC_PID=$!
        sleep 1
        oha_get "$name" "$rate"
        echo "{$(db_activity)}" >"$name.db-after.json"
        if kill -0 "$ARC_PID" 2>/dev/null; then echo true >"$name.throughout"; else echo false >"$name.throughout"; fi
        kill -9 "$ARC_PID" 2>/dev/null || true
        wait "$ARC_PID" 2>/dev/null || true
        ARC_PID=""
        sleep 3 # the killed pass's lease runs out
    done
    # What the killed passes left is adopted by the next one; then the whole trail verifies.
    archive_pass "$arc/final" --older-than 0s --rate 0
    if audit_cli verify >"$arc/verify.out" 2>&1; then echo true >"$arc/verify_ok"; else echo false >"$arc/verify_ok"; fi
    blog "  audit verify after the killed passes: $(tail -n1 "$arc/verify.out")"
}

bench_growth() {
    local gro=$RES/growth r fresh_url hot_before
    mkdir -p "$gro"
    # The fresh database: the same data set, no history. Its gateway has a data dir of its
    # own (its anchors), the same keyring and audit key files.
    FRESH_DB=${DB_NAME}_fresh
    sg_pg_create_db "$FRESH_DB" || sg_die "could not create database $FRESH_DB"
    fresh_url="postgres://postgres@$SG_PG_HOST:$SG_PG_PORT/$FRESH_DB?sslmode=disable"
    mkdir -p "$WORK/data-fresh"
    local fresh_env=("SHARDGATE_STORE__URL=$fresh_url" "SHARDGATE_DATA_DIR=$WORK/data-fresh")
    stop_gateway
    start_gateway growth-fresh-load "${fresh_env[@]}"
    SG_TOKEN=$TOKEN python3 bench/load.py --base "$BASE" --accounts "$ACCOUNTS" \
        --shard-bytes "$SHARD_BYTES" "bench-local=$(prefix_of local)" >"$gro/fresh-load.jsonl" ||
        sg_die "loading the fresh database failed"
    stop_gateway
    psql -X -w -q -h "$SG_PG_HOST" -p "$SG_PG_PORT" -U postgres -d "$FRESH_DB" -c 'VACUUM (ANALYZE)' >&2

    blog "growth: $GROWTH_EVENTS audit events over $GROWTH_SPAN_DAYS days, then \`shardgate audit archive\` (hot_days 30)"
    fill "$gro/fill" "$GROWTH_EVENTS" "$GROWTH_SPAN_DAYS"
    hot_before=$(pg_scalar 'SELECT count(*) FROM audit_events')
    pg_scalar "SELECT pg_total_relation_size('audit_events')" >"$gro/bytes_before"
    echo "$hot_before" >"$gro/rows_before"
    # Unpaced: how long the machine takes (the default pace would spread it over
    # events / rate_per_sec seconds).
    echo "shardgate audit archive --rate 0 --config \$CFG" >"$gro/pass.cmd"
    archive_pass "$gro/pass" --rate 0
    vacuum_db
    pg_scalar 'SELECT count(*) FROM audit_events' >"$gro/rows_after"
    pg_scalar "SELECT pg_total_relation_size('audit_events')" >"$gro/bytes_after"
    pg_scalar 'SELECT count(*) FROM audit_segments' >"$gro/segments"
    pg_scalar "SELECT count(*) FROM audit_events WHERE ts_ms < (extract(epoch from now()) * 1000)::bigint - 30::bigint * 86400000" >"$gro/rows_older_than_hot"
    du -sb "$WORK/data/audit-archive" | cut -f1 >"$gro/archive_bytes"
    blog "  hot rows $(cat "$gro/rows_before") -> $(cat "$gro/rows_after") ($(cat "$gro/bytes_before") -> $(cat "$gro/bytes_after") bytes), $(cat "$gro/segments") segments"

    blog "growth: GET local, fresh vs grown database, $ROUNDS round(s), order alternating"
    for r in $(seq 1 "$ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then order=(fresh grown); else order=(grown fresh); fi
        for which in "${order[@]}"; do
            if [ "$which" = fresh ]; then start_gateway "growth-$which-r$r" "${fresh_env[@]}"; else start_gateway "growth-$which-r$r"; fi
            run_wrk "growth-warmup-$which-r$r" warmup local get "$THREADS" "$CONNS" "$WARMUP_SECS" "$r"
            run_wrk "growth-$which-get-local-r$r" "growth_$which" local get "$THREADS" "$CONNS" "$DURATION" "$r"
            stop_gateway
        done
    done
}
