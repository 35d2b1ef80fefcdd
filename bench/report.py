#!/usr/bin/env python3
"""Report of scripts/bench.sh: reads the raw results of one run and writes BENCHMARKS.md and
BENCHMARKS.json. It measures nothing itself, so it can be re-run on a kept results directory
(`scripts/bench.sh --keep-logs`, then `bench/report.py --results DIR/results --md .. --json ..`).

Results layout (written by scripts/bench.sh):
  machine.json                 machine, versions, parameters, the command
  load.jsonl, load.cmd         the data-set loader's summary per tier, its command
  runs/NAME/meta.json          kind (warmup|closed|batch|latency), backend, wrk settings, round
  runs/NAME/cmd, wrk.out       the exact wrk command, its output (a `SGJSON {...}` line)
  runs/NAME/metrics.{before,mid,after}   /metrics scrapes (Prometheus text)
  runs/NAME/cpu.{before,after}, clk_tck  gateway process CPU ticks (utime+stime)
  raw/kms_decrypt.{json,cmd}   bare KMS Decrypt latency (shardgate-bench kms-decrypt)
  raw/pool_vs_login.{out,cmd}  pkcs11 pooled unwraps vs per-op login (softhsm-tests example)
  migration/                   tier-migration figures: raw.json and raw-batched.json
                               (shardgate-bench migrate-raw, single calls / --batch),
                               job.json (bench/migrate.py run), lat-{on,off}-rN.{before,after}.json
                               (job state around the GET runs of kind mig_on / mig_off), load.jsonl,
                               *.cmd

With --only-migration (scripts/bench.sh --only migration), only the migration goals, figures
and section of the existing --json / --md files are replaced; the rest is kept. The same with
--only-flood (scripts/bench.sh --only flood) for the flood figure (results/flood/), and with
--only-compare (scripts/bench.sh --only compare --baseline REV) for the A/B of this tree's
binary against a baseline's (results/compare/ and the runs of kind cmp_new / cmp_old).
"""

import argparse
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report_archive  # noqa: E402  (bench/report_archive.py, next to this file)
import report_fleet  # noqa: E402  (bench/report_fleet.py)
import report_soak  # noqa: E402  (bench/report_soak.py)

BACKENDS = ["local", "hsm", "kms", "kms-nocache"]

M_DECRYPT = "shardgate_backend_kms_decrypt_calls_total"
M_GDK = "shardgate_backend_kms_generate_data_key_calls_total"
M_HITS = "shardgate_backend_cache_hits_total"
M_MISSES = "shardgate_backend_cache_misses_total"
M_FIND = "shardgate_backend_find_objects_calls_total"
# The part of M_FIND made by the periodic KEK refresh task, off every request's path.
M_FIND_BG = "shardgate_backend_find_objects_background_calls_total"
M_POOL_IN_USE = "shardgate_backend_pool_in_use"
M_POOL_SIZE = "shardgate_backend_pool_size"
M_GROUP = "shardgate_write_group_size"

LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def parse_metrics(text):
    """{(name, backend label or None): summed value}, or None when there was no scrape."""
    if not text:
        return None
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(2) or ""))
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        key = (m.group(1), labels.get("backend"))
        out[key] = out.get(key, 0.0) + v
    return out


def hist_delta(before, after, name, want=None):
    """Bucket counts {le: count} of histogram `name` (series whose labels include every pair
    of `want`) gained between two scrapes' texts, or None without both scrapes."""
    if not before or not after:
        return None

    def buckets(text):
        out = {}
        for line in text.splitlines():
            m = LINE.match(line)
            if not m or m.group(1) != name + "_bucket":
                continue
            labels = dict(LABEL.findall(m.group(2) or ""))
            if any(labels.get(k) != v for k, v in (want or {}).items()):
                continue
            try:
                le, v = float(labels["le"]), float(m.group(3))
            except (KeyError, ValueError):
                continue
            out[le] = out.get(le, 0.0) + v
        return out

    b, a = buckets(before), buckets(after)
    return {le: a[le] - b.get(le, 0.0) for le in a}


def hist_share_within(h, le):
    """Share of a bucket delta's observations at most `le` seconds."""
    if not h:
        return None
    total = h.get(float("inf"), 0.0)
    return h.get(le, 0.0) / total if total > 0 else None


def hist_over(h, le):
    """How many of a bucket delta's observations took more than `le` seconds."""
    if not h:
        return None
    return h.get(float("inf"), 0.0) - h.get(le, 0.0)


def hist_bound(h, q):
    """The smallest bucket bound (ms) holding at least the share `q`: an upper bound of the
    q-quantile."""
    if not h:
        return None
    total = h.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for le in sorted(h):
        if h[le] >= q * total:
            return le * 1e3
    return None


def load_runs(res):
    runs = []
    rdir = os.path.join(res, "runs")
    for name in sorted(os.listdir(rdir)):
        d = os.path.join(rdir, name)
        meta = json.loads(read(os.path.join(d, "meta.json"), "{}") or "{}")
        line = next((l for l in (read(os.path.join(d, "wrk.out"), "") or "").splitlines()
                     if l.startswith("SGJSON ")), None)
        if not meta or line is None:
            continue
        w = json.loads(line[len("SGJSON "):])
        secs = w["duration_us"] / 1e6
        r = {
            "name": name,
            "kind": meta["kind"],
            "backend": meta["backend"],
            "mode": meta["mode"],
            "round": int(meta["round"]),
            "threads": int(meta["threads"]),
            "connections": int(meta["connections"]),
            "seconds": secs,
            "requests": w["requests"],
            "rps": w["requests"] / secs if secs else 0.0,
            "p50_ms": w["latency_us"]["p50"] / 1e3,
            "p90_ms": w["latency_us"]["p90"] / 1e3,
            "p99_ms": w["latency_us"]["p99"] / 1e3,
            "max_ms": w["latency_us"]["max"] / 1e3,
            "not_ok": w["not_ok"] + sum(w["errors"].values()),
            "socket_errors": w["errors"],
            "cmd": (read(os.path.join(d, "cmd"), "") or "").strip(),
        }
        try:
            tck = float(read(os.path.join(d, "clk_tck"), "100"))
            ticks = float(read(os.path.join(d, "cpu.after"))) - float(read(os.path.join(d, "cpu.before")))
            r["gateway_cpu_us_per_req"] = ticks / tck * 1e6 / r["requests"] if r["requests"] else None
        except (TypeError, ValueError):
            r["gateway_cpu_us_per_req"] = None
        try:
            tck = float(read(os.path.join(d, "clk_tck"), "100"))
            pg = float(read(os.path.join(d, "pg_cpu.after"))) - float(read(os.path.join(d, "pg_cpu.before")))
            r["pg_cpu_us_per_req"] = pg / tck * 1e6 / r["requests"] if r["requests"] else None
        except (TypeError, ValueError):
            r["pg_cpu_us_per_req"] = None
        try:
            r["rss_kb_mid"] = int(read(os.path.join(d, "rss_kb.mid"), "").strip())
        except ValueError:
            r["rss_kb_mid"] = None
        before = parse_metrics(read(os.path.join(d, "metrics.before")))
        after = parse_metrics(read(os.path.join(d, "metrics.after")))
        mid = parse_metrics(read(os.path.join(d, "metrics.mid")))
        b = r["backend"]

        def delta(metric):
            if after is None or (metric, b) not in after:
                return None
            return after[(metric, b)] - (before or {}).get((metric, b), 0.0)

        def per_1000(metric):
            v = delta(metric)
            return None if v is None or not r["requests"] else v * 1000.0 / r["requests"]

        def hot_finds():
            total, bg = delta(M_FIND), delta(M_FIND_BG)
            return None if total is None else total - (bg or 0.0)

        r["per_1000"] = {
            "kms_decrypt": per_1000(M_DECRYPT),
            "kms_generate_data_key": per_1000(M_GDK),
            "cache_hits": per_1000(M_HITS),
            "cache_misses": per_1000(M_MISSES),
            "find_objects": (None if hot_finds() is None or not r["requests"]
                             else hot_finds() * 1000.0 / r["requests"]),
            "find_objects_background": per_1000(M_FIND_BG),
        }
        r["calls"] = {"kms_decrypt": delta(M_DECRYPT), "find_objects": hot_finds(),
                      "find_objects_background": delta(M_FIND_BG)}
        r["pool_mid_run"] = None
        if mid is not None and (M_POOL_SIZE, b) in mid:
            r["pool_mid_run"] = {"in_use": mid.get((M_POOL_IN_USE, b)), "size": mid[(M_POOL_SIZE, b)]}
        r["metrics_scraped"] = after is not None
        # Shard writes per group commit (unlabelled histogram; PUT runs on PostgreSQL).
        def unlabelled(metric):
            if after is None or (metric, None) not in after:
                return None
            return after[(metric, None)] - (before or {}).get((metric, None), 0.0)
        groups, grouped = unlabelled(M_GROUP + "_count"), unlabelled(M_GROUP + "_sum")
        r["write_group_size"] = grouped / groups if groups and grouped is not None else None
        runs.append(r)
    return runs


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def rounds_text(vals):
    """ " (rounds a, b, c)": per-round ratios beside their median."""
    vals = [v for v in vals if v is not None]
    return " (rounds %s)" % ", ".join("%.2f" % v for v in vals) if vals else ""


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(v, digits=1, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return ("%." + str(digits) + "f%s") % (v, unit)
    return "%s%s" % (v, unit)


def met(v, ok):
    return "n/a" if v is None else ("yes" if ok(v) else "**NO**")


# ---------------------------------------------------------------------------------------------
# Tier migration (issue 5): results/migration/ and the mig_off / mig_on wrk runs.
# ---------------------------------------------------------------------------------------------
MIG_PREFIX = "tier migration"  # every migration goal's figure starts with it (merge mode)
MIG_HEADING = "## 6. Tier migration"


def jread(path):
    try:
        return json.loads(read(path, "") or "null")
    except ValueError:
        return None


def migration_report(res, runs, machine):
    """(goals, figures, md lines) of the migration figures, or None when they were not run."""
    mdir = os.path.join(res, "migration")
    if not os.path.isdir(mdir):
        return None
    raw = jread(os.path.join(mdir, "raw.json")) or {}
    job = jread(os.path.join(mdir, "job.json")) or {}
    acct = jread(os.path.join(mdir, "account-after.json")) or {}
    loads = [json.loads(l) for l in (read(os.path.join(mdir, "load.jsonl"), "") or "").splitlines() if l.strip()]
    rawb = jread(os.path.join(mdir, "raw-batched.json")) or {}
    raw_ps, rawb_ps, job_ps = raw.get("per_sec"), rawb.get("per_sec"), job.get("per_sec")
    # The goal's raw loop makes the job's own calls: since the worker sends a batch to the
    # backends in chunks (one HSM checkout per chunk), that is the batched loop; the loop of
    # single calls (how a hand-written client calls) is shown beside it.
    r_tput = ratio(job_ps, rawb_ps)
    r_single = ratio(job_ps, raw_ps)
    job_ok = job.get("state") == "completed" and job.get("failed") == 0
    stalled = bool(job.get("stalled"))
    def per_item(stem, total):
        """CPU µs per job item of the processes counted in `<stem>.before` / `.after` (ticks)."""
        try:
            tck = float(read(os.path.join(mdir, "clk_tck"), "100"))
            ticks = float(read(os.path.join(mdir, stem + ".after"))) - float(read(os.path.join(mdir, stem + ".before")))
            return ticks / tck * 1e6 / total if total else None
        except (TypeError, ValueError):
            return None

    # What the cores allow at the job's CPU per item (gateway + PostgreSQL), against the raw
    # loop's rate: the ratio the job could reach with every core busy all the time.
    ncpu = int(machine.get("nproc") or 0) or None
    # Rounds of the pair (batched raw loop, then the job): round 1's files have no suffix.
    tput_rounds = []
    suffixes = [("", 1)] + sorted(
        (("-r%s" % m.group(1), int(m.group(1))) for m in
         (re.match(r"job-r(\d+)\.json$", f) for f in os.listdir(mdir)) if m), key=lambda x: x[1])
    for sfx, n in suffixes:
        j = jread(os.path.join(mdir, "job%s.json" % sfx)) or {}
        rb = jread(os.path.join(mdir, "raw-batched%s.json" % sfx)) or {}
        gw, pg = per_item("cpu" + sfx, j.get("total")), per_item("pg_cpu" + sfx, j.get("total"))
        cpu = gw + pg if gw is not None and pg is not None else None
        cap = ncpu * 1e6 / cpu if ncpu and cpu else None
        tput_rounds.append({
            "round": n, "job_per_sec": j.get("per_sec"), "raw_per_sec": rb.get("per_sec"),
            "ratio": ratio(j.get("per_sec"), rb.get("per_sec")), "state": j.get("state"),
            "ok": j.get("state") == "completed" and j.get("failed") == 0 and not j.get("stalled"),
            "gateway_cpu_us_per_item": gw, "postgres_cpu_us_per_item": pg,
            "raw_cpu_us_per_item": rb.get("cpu_us_per_item"),
            "cpu_bound_per_sec": cap, "cpu_bound_ratio": ratio(cap, rb.get("per_sec")),
            "job_vs_cpu_bound": ratio(j.get("per_sec"), cap)})
    if len(tput_rounds) > 1:
        # The goal's ratio: the median of the rounds' (each pair back to back).
        r_tput = med([x["ratio"] for x in tput_rounds])
        job_ok = job_ok and all(x["ok"] for x in tput_rounds)
    cpu_per_item = med([x["gateway_cpu_us_per_item"] for x in tput_rounds])
    pg_per_item = med([x["postgres_cpu_us_per_item"] for x in tput_rounds])
    rawb_cpu = med([x["raw_cpu_us_per_item"] for x in tput_rounds])
    job_cpu = cpu_per_item + pg_per_item if cpu_per_item is not None and pg_per_item is not None else None
    ceiling_ps = med([x["cpu_bound_per_sec"] for x in tput_rounds])
    r_ceiling = med([x["cpu_bound_ratio"] for x in tput_rounds])
    r_of_cap = med([x["job_vs_cpu_bound"] for x in tput_rounds])
    shards = int(machine.get("migration_shards") or job.get("total") or 0)
    default_rate = machine.get("migration_default_rate", "500")

    # Latency: p99 of the hsm-set GETs with the job running vs paused, per round.
    rounds = sorted({r["round"] for r in runs if r["kind"] in ("mig_on", "mig_off")})
    per_round = []
    for i in rounds:
        on = [r for r in runs if r["kind"] == "mig_on" and r["round"] == i]
        off = [r for r in runs if r["kind"] == "mig_off" and r["round"] == i]
        b = jread(os.path.join(mdir, "lat-on-r%d.before.json" % i)) or {}
        a = jread(os.path.join(mdir, "lat-on-r%d.after.json" % i)) or {}
        secs = on[0]["seconds"] if on else None
        moved = (a.get("done", 0) or 0) - (b.get("done", 0) or 0) if a and b else None
        running = b.get("state") == "running" and a.get("state") == "running" and (a.get("remaining") or 0) > 0
        per_round.append({
            "round": i,
            "off": {k: off[0][k] for k in ("rps", "p50_ms", "p99_ms", "not_ok")} if off else None,
            "on": {k: on[0][k] for k in ("rps", "p50_ms", "p99_ms", "not_ok")} if on else None,
            "job_before": {k: b.get(k) for k in ("state", "done", "remaining", "total")},
            "job_after": {k: a.get(k) for k in ("state", "done", "remaining", "total")},
            "job_running_whole_window": running,
            "job_rewraps_per_sec_in_window": moved / secs if moved is not None and secs else None,
        })
    p99_on = med([x["on"]["p99_ms"] for x in per_round if x["on"]])
    p99_off = med([x["off"]["p99_ms"] for x in per_round if x["off"]])
    r_p99 = ratio(p99_on, p99_off)
    all_running = bool(per_round) and all(x["job_running_whole_window"] for x in per_round)
    lat_cmd = next((r["cmd"] for r in runs if r["kind"] == "mig_on"), None)

    goals = [
        {"id": "migration_job_vs_raw", "figure":
            "%s: job re-wraps/s vs a raw loop of the same calls, %s items per call (local -> pkcs11, %s shards)" % (MIG_PREFIX, rawb.get("batch", "?"), "{:,}".format(shards)),
         "goal": ">= 0.7x", "measured": r_tput, "unit": "x",
         "met": None if r_tput is None or not job_ok else r_tput >= 0.7},
        {"id": "migration_get_p99_job_vs_none", "figure":
            "%s: GET p99 (hsm set) with a job at the default %s/s vs no job" % (MIG_PREFIX, default_rate),
         "goal": "<= 1.5x", "measured": r_p99, "unit": "x",
         "met": None if r_p99 is None or not all_running else r_p99 <= 1.5},
    ]
    figures = {
        "measured": {k: machine.get(k) for k in ("date", "git_rev", "git_dirty", "command")},
        "throughput": {"shards": shards, "shard_bytes": machine.get("shard_bytes"),
                       "rate_per_sec": machine.get("migration_rate"), "job": job, "raw": raw,
                       "raw_batched": rawb, "ratio": r_tput, "ratio_vs_single_calls": r_single,
                       "job_ok": job_ok, "gateway_cpu_us_per_item": cpu_per_item,
                       "postgres_cpu_us_per_item": pg_per_item,
                       "raw_batched_cpu_us_per_item": rawb_cpu,
                       "cpu_bound_per_sec": ceiling_ps, "cpu_bound_ratio": r_ceiling,
                       "rounds": tput_rounds,
                       "account_after": acct,
                       "cmd_job": (read(os.path.join(mdir, "job.cmd"), "") or "").strip(),
                       "cmd_raw": (read(os.path.join(mdir, "raw.cmd"), "") or "").strip(),
                       "cmd_raw_batched": (read(os.path.join(mdir, "raw-batched.cmd"), "") or "").strip()},
        "latency": {"default_rate_per_sec": default_rate, "job_shards": machine.get("migration_lat_shards"),
                    "p99_ms_job": p99_on, "p99_ms_no_job": p99_off, "ratio": r_p99,
                    "p50_ms_job": med([x["on"]["p50_ms"] for x in per_round if x["on"]]),
                    "p50_ms_no_job": med([x["off"]["p50_ms"] for x in per_round if x["off"]]),
                    "rps_job": med([x["on"]["rps"] for x in per_round if x["on"]]),
                    "rps_no_job": med([x["off"]["rps"] for x in per_round if x["off"]]),
                    "job_running_whole_windows": all_running, "per_round": per_round, "cmd": lat_cmd},
        "load": loads,
        "cmd_load": (read(os.path.join(mdir, "load.cmd"), "") or "").strip(),
    }

    lat = figures["latency"]
    o = []
    w = o.append
    w("%s (local -> pkcs11)" % MIG_HEADING)
    w("")
    w("Measured by `%s` on %s (git `%s`%s)." % (
        machine.get("command", "scripts/bench.sh"), machine.get("date", "?"), machine.get("git_rev", "?"),
        ", with uncommitted changes" if machine.get("git_dirty") == "yes" else ""))
    w("Each job moves one account's shards of %s B from the `local` backend to `hsm` (pkcs11, SoftHSM2, "
      "pool 8): `PUT /v1/accounts/{id}` to tier `bench-hsm` starts it; PostgreSQL store; a worker claims "
      "a batch (`[migration] batch_size`, default 512), re-wraps it in up to `concurrency` (default 2) "
      "chunks at once, each one call per step (unwrap on local, wrap on pkcs11 on one HSM checkout, "
      "verify = unwrap on pkcs11 on one checkout; at the default rate a chunk is one item) and commits the batch in one "
      "transaction with one audit event per item, taking the audit chain only for the audit insert and "
      "the commit; `pipeline` (default 3) batches are in flight at once, sharing the worker's "
      "`concurrency` backend calls." % machine.get("shard_bytes", "?"))
    w("")
    w("**Throughput.** The gateway is restarted with `SHARDGATE_MIGRATION__RATE_PER_SEC=%s` so the rate "
      "does not bound it; the job's time runs from the `PUT` to the first poll (every 100 ms) that "
      "sees it settled. The raw loops (`shardgate-bench migrate-raw`, `bench/src/main.rs`) make the same "
      "backend calls for as many shard identities, one call after another, with `LocalBackend` and "
      "`Pkcs11Backend` on the gateway's keyring file and token, without HTTP or database, on the idle "
      "gateway just before the job: the goal's loop as the job calls them at this rate (`rewrap_many_from` "
      "local -> pkcs11, then `verify_many` on pkcs11, %s items per call), and beside it the loop of single "
      "calls (`rewrap_from`, then `verify`, one item at a time)." % (machine.get("migration_rate", "?"), rawb.get("batch", "?")))
    w("")
    w("| | shards | seconds | re-wraps/s | state |")
    w("|---|---|---|---|---|")
    w("| raw loop, %s items per call (no HTTP, no database) | %s | %s | %s | |" % (
        rawb.get("batch", "?"), rawb.get("n", "n/a"), fmt(rawb.get("seconds"), 2), fmt(rawb_ps, 0)))
    w("| raw loop, single calls | %s | %s | %s | |" % (
        raw.get("n", "n/a"), fmt(raw.get("seconds"), 2), fmt(raw_ps, 0)))
    w("| migration job | %s | %s | %s | %s (done %s, failed %s, skipped %s) |" % (
        job.get("total", "n/a"), fmt(job.get("seconds"), 2), fmt(job_ps, 0), job.get("state", "n/a"),
        job.get("done", "?"), job.get("failed", "?"), job.get("skipped", "?")))
    w("| **job / raw (batched, the job's calls)**%s | | | **%s** (goal >= 0.7x) | |" % (
        ", median of the %d rounds below (the rows above: round 1)" % len(tput_rounds) if len(tput_rounds) > 1 else "",
        fmt(r_tput, 2, "x")))
    w("| job / raw (single calls) | | | %s | |" % fmt(r_single, 2, "x"))
    w("")
    extra = []
    if job.get("put_seconds") is not None:
        extra.append("the `PUT` that snapshots the job's items took %s s of it" % fmt(job["put_seconds"], 2))
    if cpu_per_item is not None:
        extra.append("gateway CPU %s µs per item" % fmt(cpu_per_item, 0))
    if pg_per_item is not None:
        extra.append("PostgreSQL CPU %s µs per item" % fmt(pg_per_item, 0))
    if acct.get("versions_on_other_backends") is not None:
        extra.append("afterwards the account reports %s shard versions off its policy backend"
                     % acct["versions_on_other_backends"])
    if stalled:
        w("**The job stalled**: it made no progress from %s s after the `PUT` on (%s of %s done, state `%s`, "
          "%s re-wraps/s until then); the bench stopped waiting %s s later. No throughput ratio is given."
          % (fmt(job.get("seconds_to_last_progress"), 1), job.get("done"), job.get("total"), job.get("job_state"),
             fmt(job.get("per_sec_until_stall"), 0), fmt((job.get("seconds") or 0) - (job.get("seconds_to_last_progress") or 0), 0)))
        w("")
    elif extra:
        w("In the job's time: " + "; ".join(extra) + ".")
        w("")
    if len(tput_rounds) > 1:
        w("Rounds (each: the batched raw loop, then the job, back to back; between rounds the shards go back "
          "to `local` by the same job the other way, not measured). The goal's ratio is their median.")
        w("")
        w("| round | raw loop re-wraps/s | job re-wraps/s | job / raw | state | CPU µs per item: raw loop | "
          "job: gateway | job: PostgreSQL | cores' cap / raw |")
        w("|---|---|---|---|---|---|---|---|---|")
        for x in tput_rounds:
            w("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                x["round"], fmt(x["raw_per_sec"], 0), fmt(x["job_per_sec"], 0), fmt(x["ratio"], 2, "x"),
                x["state"], fmt(x["raw_cpu_us_per_item"], 0), fmt(x["gateway_cpu_us_per_item"], 0),
                fmt(x["postgres_cpu_us_per_item"], 0), fmt(x["cpu_bound_ratio"], 2, "x")))
        w("| **median** | | | **%s** (goal >= 0.7x) | | | | | |" % fmt(r_tput, 2, "x"))
        w("")
    if r_ceiling is not None and not stalled:
        w("**What bounds it here%s.** The raw loop runs on one thread and spends %s µs of CPU per item (SoftHSM2 "
          "inside it). The job spends %s µs per item in the gateway and %s µs in PostgreSQL (every PostgreSQL "
          "process, from /proc): the claim, the compare-and-swap of each row, the settlement of each item and "
          "one audit event per item, each a row written durably. At %s µs of CPU per item, %s cores allow at "
          "most %s re-wraps/s with every core busy all the time: **%s** of the raw loop's rate%s."
          % (" (medians of the rounds)" if len(tput_rounds) > 1 else "", fmt(rawb_cpu, 0), fmt(cpu_per_item, 0), fmt(pg_per_item, 0), fmt(job_cpu, 0),
             ncpu, fmt(ceiling_ps, 0), fmt(r_ceiling, 2, "x"),
             ", below the goal whatever the scheduling" if r_ceiling < 0.7 else
             "; the job reaches %s of that bound" % fmt(r_of_cap, 2, "x")))
        w("")
    w("```sh")
    for k in ("cmd_raw_batched", "cmd_raw", "cmd_job"):
        if figures["throughput"][k]:
            w(figures["throughput"][k])
    w("```")
    w("")
    w("**GET latency next to a job.** Closed-loop GETs on the hsm set (other accounts than the one "
      "migrated, on the backend the job wraps on), same wrk settings as section 1, while a job of %s shards "
      "runs at the default `rate_per_sec` (%s) vs while it is paused (no job running). One job, resumed for "
      "each \"job\" window (1 s before wrk starts) and paused after it; the order alternates per round. "
      "Its state is read before and after each window: it must be `running` with work left at both ends."
      % (lat["job_shards"] or "?", default_rate))
    w("")
    w("| round | no job: req/s | p50 ms | p99 ms | job: req/s | p50 ms | p99 ms | job state before -> after | re-wraps/s in window |")
    w("|---|---|---|---|---|---|---|---|---|")
    for x in per_round:
        off, on = x["off"] or {}, x["on"] or {}
        jb, ja = x["job_before"], x["job_after"]
        w("| %d | %s | %s | %s | %s | %s | %s | %s (%s left) -> %s (%s left)%s | %s |" % (
            x["round"], fmt(off.get("rps"), 0), fmt(off.get("p50_ms"), 2), fmt(off.get("p99_ms"), 2),
            fmt(on.get("rps"), 0), fmt(on.get("p50_ms"), 2), fmt(on.get("p99_ms"), 2),
            jb.get("state"), jb.get("remaining"), ja.get("state"), ja.get("remaining"),
            "" if x["job_running_whole_window"] else " **not running throughout**",
            fmt(x["job_rewraps_per_sec_in_window"], 0)))
    w("| **median** | %s | %s | %s | %s | %s | %s | | |" % (
        fmt(lat["rps_no_job"], 0), fmt(lat["p50_ms_no_job"], 2), fmt(p99_off, 2),
        fmt(lat["rps_job"], 0), fmt(lat["p50_ms_job"], 2), fmt(p99_on, 2)))
    w("")
    w("p99 with the job / without: **%s** (goal <= 1.5x)%s." % (
        fmt(r_p99, 2, "x"), "" if all_running else "; **the job was not running for every window, so this is not a valid measurement**"))
    w("")
    w("```sh")
    w("SG_TOKEN=$TOKEN python3 bench/migrate.py --base URL tier mig-lat-000000 bench-hsm   # then pause; resume/pause around each job window")
    if lat_cmd:
        w(lat_cmd)
    w("```")
    w("")
    if loads:
        # Runs before stop 23 loaded with the loader's default of 8 workers.
        m = re.search(r"--workers (\d+)", figures.get("cmd_load") or "")
        w("Data sets (PUT shard over HTTP, durable and audited, %s keep-alive workers, not read back; then "
          "`VACUUM (ANALYZE)` of the database):" % (m.group(1) if m else "8"))
        w("")
        w("| account | shards | seconds | shards/s | errors |")
        w("|---|---|---|---|---|")
        for l in loads:
            w("| %s000000 | %s | %s | %s | %s |" % (l["prefix"], l["accounts"] * l.get("shards_per_account", 1),
                                                l["seconds"], l.get("shards_per_sec", "?"), l["errors"]))
        w("")
        w("```sh")
        w(figures["cmd_load"])
        w("```")
        w("")
    return goals, figures, o


# Readers under an unauthenticated flood (issue 25): results/flood/.
FLOOD_PREFIX = "readers under an unauthenticated flood"
FLOOD_HEADING = "## 11. Readers under an unauthenticated flood"


def flood_report(res):
    """(goals, figures, md lines) of the flood figure, or None when it was not run."""
    d = os.path.join(res, "flood")
    summary = jread(os.path.join(d, "flood.json"))
    if not summary:
        return None
    rounds = []
    for r in range(1, len(summary["ratios"]) + 1):
        def oha(name):
            return jread(os.path.join(d, "%s-r%d.json" % (name, r))) or {}

        def p(name, q):
            v = (oha(name).get("latencyPercentiles") or {}).get(q)
            return None if v is None else v * 1e3

        def sent(name):
            return sum((oha(name).get("statusCodeDistribution") or {}).values())

        def codes(name):
            return ", ".join("%s: %s" % kv for kv in sorted((oha(name).get("statusCodeDistribution") or {}).items()))

        cost = jread(os.path.join(d, "cost-r%d.json" % r)) or {}
        rounds.append({"quiet_p50_ms": p("quiet", "p50"), "flooded_p50_ms": p("flooded", "p50"),
                       "quiet_p99_ms": p("quiet", "p99"), "flooded_p99_ms": p("flooded", "p99"),
                       "flooded_codes": codes("flooded"),
                       "flood_near_cap": sent("flood-near"), "flood_near_codes": codes("flood-near"),
                       "flood_over_cap": sent("flood-over"), "flood_over_codes": codes("flood-over"),
                       "auth_rows": cost.get("auth_rows"), "log_bytes": cost.get("log_bytes")})
    m = summary["median_ratio"]
    goals = [{"id": "flood_readers_p50", "unit": "x", "goal": "<= 2x", "measured": m, "met": m <= 2,
              "figure": FLOOD_PREFIX + ": readers' GET p50 (local, 200 req/s open loop) flooded vs alone"}]
    figures = {"median_ratio": m, "ratios": summary["ratios"], "rounds": rounds,
               "cmd": (read(os.path.join(d, "cmd"), "") or "").strip()}
    o = [FLOOD_HEADING, "",
         "Legitimate readers (oha open loop, 200 GET/s, 4 connections, local set, valid token) alone, then "
         "while two closed-loop oha floods of 32 connections each run from the same address as fast as they "
         "go: bad tokens on request targets just under `[limits] max_uri_bytes` (audited up to the address's "
         "refusal budget, then 429) and 60 KB targets (414). Answers past the budget are held back "
         "`[limits] refusal_delay_ms` (default 1 s). Cost: `auth` audit rows and gateway log bytes added "
         "during each flood window.", "",
         "| round | readers p50 alone | p50 flooded | ratio | p99 alone / flooded | readers' codes flooded "
         "| flood requests (near cap / over cap) | auth rows | log bytes |",
         "|---|---|---|---|---|---|---|---|---|"]
    for i, (r, x) in enumerate(zip(rounds, summary["ratios"]), 1):
        o.append("| %d | %s ms | %s ms | %.2fx | %s / %s ms | %s | %s (%s) / %s (%s) | %s | %s |" % (
            i, fmt(r["quiet_p50_ms"], 2), fmt(r["flooded_p50_ms"], 2), x, fmt(r["quiet_p99_ms"], 2),
            fmt(r["flooded_p99_ms"], 2), r["flooded_codes"], r["flood_near_cap"], r["flood_near_codes"],
            r["flood_over_cap"], r["flood_over_codes"], r["auth_rows"], r["log_bytes"]))
    o += ["", "Median ratio: **%.2fx** (goal <= 2x). Commands: `%s`." % (m, figures["cmd"]), "",
          "Before answers past the budget were held back (`0260183`, the previous session), the same bench measured 27.06x (readers' p50 0.60-0.63 ms alone, 16.35-19.52 ms flooded): the flood clients and the gateway's ~14k refusals/s took both cores. Not measured here: an open-loop flood over more connections than `max_delayed_refusals`, whose answers past the held ones go out at once and close their connections.", ""]
    return goals, figures, o


def merge_flood(a, res, machine):
    """--only-flood: replace the flood goal, figures and section of the existing
    BENCHMARKS.json/md, keeping everything else as it is."""
    fl = flood_report(res)
    if fl is None:
        raise SystemExit("no flood results in " + res)
    goals, figures, section = fl
    # Into an --out of its own too: a bare goals table to start from.
    prev = json.loads(read(a.json, "{}") or "{}")
    prev["goals"] = [g for g in prev.get("goals", []) if not g["id"].startswith("flood_")] + goals
    prev.setdefault("figures", {})["flood"] = figures
    prev["machine_flood"] = machine
    with open(a.json, "w") as f:
        json.dump(prev, f, indent=1)
        f.write("\n")
    lines = (read(a.md, "") or "").splitlines()
    if "## Goals" not in lines:
        lines = ["# Benchmarks", "", "## Goals", "", "| figure | goal | measured | met? |", "|---|---|---|---|",
                 ""] + lines
    lines = merge_goals_and_section(lines, FLOOD_PREFIX, goals, FLOOD_HEADING, section)
    with open(a.md, "w") as f:
        f.write("\n".join(lines) + "\n")


def merge_archive(a, res, machine, which):
    """--only-archive / --only-growth / --only-fleet (priority, convergence): replace that section's goals, figures and section of
    the existing BENCHMARKS.json/md, keeping everything else as it is."""
    build, prefix, heading = {
        "archive": (report_archive.archive_report, report_archive.ARCHIVE_PREFIX, report_archive.ARCHIVE_HEADING),
        "growth": (report_archive.growth_report, report_archive.GROWTH_PREFIX, report_archive.GROWTH_HEADING),
        "priority": (report_fleet.priority_report, report_fleet.PRIORITY_PREFIX, report_fleet.PRIORITY_HEADING),
        "convergence": (report_fleet.convergence_report, report_fleet.CONVERGENCE_PREFIX,
                        report_fleet.CONVERGENCE_HEADING),
        "soak": (report_soak.soak_report, report_soak.SOAK_PREFIX, report_soak.SOAK_HEADING),
    }[which]
    got = build(res, machine)
    if got is None:
        raise SystemExit("no %s results in %s" % (which, res))
    goals, figures, section = got
    gid = which + "_"
    prev = json.loads(read(a.json, "{}") or "{}")
    prev["goals"] = [g for g in prev.get("goals", []) if not g["id"].startswith(gid)] + goals
    prev.setdefault("figures", {})[which] = figures
    prev["machine_" + which] = machine
    with open(a.json, "w") as f:
        json.dump(prev, f, indent=1)
        f.write("\n")
    lines = (read(a.md, "") or "").splitlines()
    if "## Goals" not in lines:
        lines = ["# Benchmarks", "", "## Goals", "", "| figure | goal | measured | met? |", "|---|---|---|---|",
                 ""] + lines
    lines = merge_goals_and_section(lines, prefix, goals, heading, section)
    with open(a.md, "w") as f:
        f.write("\n".join(lines) + "\n")


def goal_row(g):
    m = g["measured"]
    ms = "n/a" if m is None else ("%.2f%s" % (m, g["unit"]) if g["unit"] != "" else "%.2f" % m)
    status = "reported" if g["goal"] == "reported" and m is not None else met(m, lambda _v: g["met"])
    return "| %s | %s | %s | %s |" % (g["figure"], g["goal"], ms, status)


def merge_goals_and_section(lines, prefix, goals, heading, section):
    """Replace the goal rows starting with `prefix` (appended after the goals table's last
    row) and the section under `heading` (or put it before the data-set load) in `lines`."""
    lines = [l for l in lines if not l.startswith("| " + prefix)]
    try:
        i = lines.index("## Goals") + 1
        while i < len(lines) and not lines[i].startswith("|"):
            i += 1
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        lines[i:i] = [goal_row(g) for g in goals]
    except ValueError:
        raise SystemExit("no '## Goals' table")
    old = next((i for i, l in enumerate(lines) if l.startswith(heading)), None)
    if old is not None:
        end = next((i for i in range(old + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        del lines[old:end]
        at = old
    else:
        at = next((i for i, l in enumerate(lines) if l.startswith("## Data set load") or l.startswith("## Reproduce")),
                  len(lines))
    lines[at:at] = section
    return lines


def merge_migration(a, res, machine, runs):
    """--only-migration: replace the migration goals, figures, runs and section of the
    existing BENCHMARKS.json/md, keeping everything else as it is."""
    mig = migration_report(res, runs, machine)
    if mig is None:
        raise SystemExit("no migration results in " + res)
    goals, figures, section = mig
    with open(a.json) as f:
        prev = json.load(f)
    prev["goals"] = [g for g in prev.get("goals", []) if not g["id"].startswith("migration_")] + goals
    prev.setdefault("figures", {})["migration"] = figures
    prev["runs"] = [r for r in prev.get("runs", []) if not r["kind"].startswith("mig_")] + \
        [r for r in runs if r["kind"].startswith("mig_")]
    prev["machine_migration"] = machine
    with open(a.json, "w") as f:
        json.dump(prev, f, indent=1)
        f.write("\n")
    lines = merge_goals_and_section((read(a.md, "") or "").splitlines(), MIG_PREFIX, goals, MIG_HEADING, section)
    with open(a.md, "w") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# Compare (scripts/bench.sh --only compare --baseline REV): results/compare/ and the cmp_new /
# cmp_old wrk runs. Each figure's ratio is new / old of the same round; the median of rounds.
# ---------------------------------------------------------------------------------------------
CMP_PREFIX = "A/B against"  # every compare goal's figure starts with it, then the baseline


def cmp_label(base_rev):
    """`639bde3` for a commit; for --baseline-env ("this tree with VAR=VALUE"), itself with
    the setting."""
    if base_rev.startswith("this tree with profile "):
        return "itself built with `--profile %s`" % base_rev[len("this tree with profile "):]
    if base_rev.startswith("this tree with "):
        return "itself with `%s`" % base_rev[len("this tree with "):]
    return "`%s`" % base_rev[:7]


CMP_FIGURES = [  # (key, label, backend, mode)
    ("get_local", "GET local", "local", "get"),
    ("get_hsm", "GET pkcs11 (hsm)", "hsm", "get"),
    ("batch_hsm", "batchGet of 10, pkcs11 (hsm)", "hsm", "batch"),
    ("put_local", "PUT local (durable, audited)", "local", "put"),
]


def compare_report(res, runs):
    """(goals, figures, md lines) of --only compare, or None when it was not run."""
    d = os.path.join(res, "compare")
    base_rev = (read(os.path.join(d, "baseline_rev"), "") or "").strip()
    if not base_rev:
        return None
    new_rev = (read(os.path.join(d, "new_rev"), "") or "").strip()
    tck = float(read(os.path.join(d, "clk_tck"), "100") or 100)

    def run(which, backend, mode, r):
        return next((x for x in runs if x["kind"] == "cmp_" + which and x["backend"] == backend
                     and x["mode"] == mode and x["round"] == r), None)

    def job(which, r):
        j = jread(os.path.join(d, "job-%s-r%d.json" % (which, r))) or {}
        try:
            ticks = float(read(os.path.join(d, "job-%s-r%d.cpu.after" % (which, r)))) - \
                float(read(os.path.join(d, "job-%s-r%d.cpu.before" % (which, r))))
            j["cpu_us_per_item"] = ticks / tck * 1e6 / j["total"] if j.get("total") else None
        except (TypeError, ValueError):
            j["cpu_us_per_item"] = None
        return j

    rounds = sorted({x["round"] for x in runs if x["kind"] == "cmp_new"})
    label = cmp_label(base_rev)
    prefix = "%s %s" % (CMP_PREFIX, label)
    rows, goals, figures = [], [], {"baseline_rev": base_rev, "new_rev": new_rev, "rounds": {},
                                     "prefix": prefix, "heading": "## A/B: this tree against %s" % label}
    for key, fname, backend, mode in CMP_FIGURES:
        per = []
        for r in rounds:
            n, o = run("new", backend, mode, r), run("old", backend, mode, r)
            if n and o:
                per.append({"round": r, "new_rps": n["rps"], "old_rps": o["rps"], "ratio": ratio(n["rps"], o["rps"]),
                            "new_cpu_us": n["gateway_cpu_us_per_req"], "old_cpu_us": o["gateway_cpu_us_per_req"],
                            "cpu_ratio": ratio(n["gateway_cpu_us_per_req"], o["gateway_cpu_us_per_req"]),
                            "new_not_ok": n["not_ok"], "old_not_ok": o["not_ok"]})
        figures["rounds"][key] = per
        rows.append((fname, "req/s", per, "new_rps", "old_rps", "ratio", "cpu_ratio"))
    per = []
    for r in rounds:
        n, o = job("new", r), job("old", r)
        per.append({"round": r, "new_rps": n.get("per_sec"), "old_rps": o.get("per_sec"),
                    "ratio": ratio(n.get("per_sec"), o.get("per_sec")),
                    "new_cpu_us": n.get("cpu_us_per_item"), "old_cpu_us": o.get("cpu_us_per_item"),
                    "cpu_ratio": ratio(n.get("cpu_us_per_item"), o.get("cpu_us_per_item")),
                    "new_not_ok": n.get("failed"), "old_not_ok": o.get("failed")})
    figures["rounds"]["migration"] = per
    rows.append(("tier migration job, local -> pkcs11", "shards/s", per, "new_rps", "old_rps", "ratio", "cpu_ratio"))
    o = [figures["heading"], "",
         "This tree's gateway (`%s`, new) against %s (old), in one run, on one database and data "
         "set; each round runs both one after the other (a gateway process each), the order "
         "alternating by round. Ratios are new / old of the same round; the goal column is the median of "
         "the rounds. Gateway CPU per request is the process's utime + stime over the run." % (new_rev[:7], label),
         "", "| figure | old (median) | new (median) | new / old (rounds) | gateway CPU per op, new / old |",
         "|---|---|---|---|---|"]
    for name, unit, per, nk, ok_, rk, ck in rows:
        m, c = med([p[rk] for p in per]), med([p[ck] for p in per])
        o.append("| %s | %s %s | %s %s | %s%s | %s%s |" % (
            name, fmt(med([p[ok_] for p in per])), unit, fmt(med([p[nk] for p in per])), unit,
            fmt(m, 3, "x"), rounds_text([p[rk] for p in per]), fmt(c, 3, "x"), rounds_text([p[ck] for p in per])))
        gid = "compare_%s_%s" % ("".join(c for c in label if c.isalnum()).lower(),
                                 name.split(",")[0].lower().replace(" ", "_").replace("(", "").replace(")", ""))
        goals.append({"id": gid, "unit": "x", "goal": ">= 0.95x", "measured": m, "met": m is not None and m >= 0.95,
                      "figure": "%s: %s, %s new / old" % (prefix, name, unit)})
    figures["cmd"] = (read(os.path.join(d, "cmd"), "") or "").strip()
    o += ["", "Goal: every figure within 5%% of the baseline's (new / old >= 0.95x). Command: `%s`." % figures["cmd"], ""]
    return goals, figures, o


def merge_compare(a, res, machine, runs):
    """--only-compare: replace the compare goals, figures and section of the existing
    BENCHMARKS.json/md, keeping everything else as it is."""
    cmp_ = compare_report(res, runs)
    if cmp_ is None:
        raise SystemExit("no compare results in " + res)
    goals, figures, section = cmp_
    prev = json.loads(read(a.json, "{}") or "{}")
    keep = [g for g in prev.get("goals", []) if not g["figure"].startswith(figures["prefix"] + ":")]
    prev["goals"] = keep + goals
    prev.setdefault("figures", {}).setdefault("compare", {})[figures["baseline_rev"]] = figures
    prev.setdefault("machine_compare", {})[figures["baseline_rev"]] = machine
    with open(a.json, "w") as f:
        json.dump(prev, f, indent=1)
        f.write("\n")
    lines = (read(a.md, "") or "").splitlines()
    if "## Goals" not in lines:
        lines = ["# Benchmarks", "", "## Goals", "", "| figure | goal | measured | met? |", "|---|---|---|---|",
                 ""] + lines
    lines = merge_goals_and_section(lines, figures["prefix"] + ":", goals, figures["heading"], section)
    with open(a.md, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--only-migration", action="store_true")
    ap.add_argument("--only-flood", action="store_true")
    ap.add_argument("--only-compare", action="store_true")
    ap.add_argument("--only-archive", action="store_true")
    ap.add_argument("--only-growth", action="store_true")
    ap.add_argument("--only-fleet", action="store_true")
    ap.add_argument("--only-soak", action="store_true")
    a = ap.parse_args()
    res = a.results
    machine = json.loads(read(os.path.join(res, "machine.json"), "{}"))
    if a.only_flood:
        merge_flood(a, res, machine)
        return
    if a.only_archive or a.only_growth:
        merge_archive(a, res, machine, "archive" if a.only_archive else "growth")
        return
    if a.only_soak:
        merge_archive(a, res, machine, "soak")
        return
    if a.only_fleet:
        merge_archive(a, res, machine, "priority")
        merge_archive(a, res, machine, "convergence")
        return
    runs = load_runs(res)
    if a.only_compare:
        merge_compare(a, res, machine, runs)
        return
    if a.only_migration:
        merge_migration(a, res, machine, runs)
        return
    mig = migration_report(res, runs, machine)
    flood = flood_report(res)
    archive = report_archive.archive_report(res, machine)
    # Section 13 runs only with --only growth: a full run keeps the last one.
    prev_json = json.loads(read(a.json, "{}") or "{}")
    growth_goals = [g for g in prev_json.get("goals", []) if g["id"].startswith(("growth_", "priority_", "convergence_", "soak_"))]
    prev_md = (read(a.md, "") or "").splitlines()
    growth_section = report_archive.previous_section(prev_md, report_archive.GROWTH_HEADING)
    # Sections 14 and 15 run only with --only fleet: a full run keeps the last ones too.
    priority_section = (report_archive.previous_section(prev_md, report_fleet.PRIORITY_HEADING) +
                        report_archive.previous_section(prev_md, report_fleet.CONVERGENCE_HEADING) +
                        report_archive.previous_section(prev_md, report_soak.SOAK_HEADING))
    load = [json.loads(l) for l in (read(os.path.join(res, "load.jsonl"), "") or "").splitlines() if l.strip()]

    def pick(kind, backend):
        return [r for r in runs if r["kind"] == kind and r["backend"] == backend]

    def agg(kind, backend, key, sub=None):
        rs = pick(kind, backend)
        if sub:
            return med([r[key][sub] for r in rs])
        return med([r[key] for r in rs])

    # 1. GET throughput per backend (closed loop).
    get = {}
    for b in BACKENDS:
        rs = pick("closed", b)
        get[b] = {
            "rps": agg("closed", b, "rps"),
            "p50_ms": agg("closed", b, "p50_ms"),
            "p99_ms": agg("closed", b, "p99_ms"),
            "not_ok": sum(r["not_ok"] for r in rs),
            "requests": sum(r["requests"] for r in rs),
            "gateway_cpu_us_per_req": agg("closed", b, "gateway_cpu_us_per_req"),
            "cmd": rs[0]["cmd"] if rs else None,
        }
    # Throughput ratios: per round (its runs are back to back), then the median over rounds,
    # so a drift of the machine between rounds does not pair one round's fast run with
    # another's slow one.
    def by_round(runs_a, runs_b, scale=1.0):
        b = {r["round"]: r["rps"] for r in runs_b}
        return [ratio(r["rps"] * scale, b.get(r["round"])) for r in sorted(runs_a, key=lambda r: r["round"])
                if b.get(r["round"]) is not None and r.get("rps") is not None]

    rounds_hsm_local = by_round(pick("closed", "hsm"), pick("closed", "local"))
    rounds_kms_local = by_round(pick("closed", "kms"), pick("closed", "local"))
    r_hsm_local = med(rounds_hsm_local)
    r_kms_local = med(rounds_kms_local)
    r_kms_onoff = ratio(get["kms"]["rps"], get["kms-nocache"]["rps"])

    # 2. Backend calls per 1,000 GETs (closed-loop runs, /metrics before and after).
    calls = {}
    for b in BACKENDS:
        calls[b] = {k: agg("closed", b, "per_1000", k)
                    for k in ("kms_decrypt", "kms_generate_data_key", "cache_hits", "cache_misses", "find_objects",
                          "find_objects_background")}
        pools = [r["pool_mid_run"] for r in pick("closed", b) if r["pool_mid_run"]]
        calls[b]["pool_mid_run"] = pools[0] if pools else None
    metrics_present = any(r["metrics_scraped"] for r in runs)
    dec_on = calls["kms"]["kms_decrypt"]
    dec_off = calls["kms-nocache"]["kms_decrypt"]
    dec_reduction = (1.0 - dec_on / dec_off) if dec_on is not None and dec_off else None
    find_hsm = calls["hsm"]["find_objects"]

    # 3. Batch of N vs N single GETs, hsm tier.
    batch_runs = pick("batch", "hsm")
    batch_n = int(machine.get("batch", 10))
    batch_rps = agg("batch", "hsm", "rps")
    batch_shards = batch_rps * batch_n if batch_rps is not None else None
    rounds_batch = by_round(batch_runs, pick("closed", "hsm"), batch_n)
    r_batch = med(rounds_batch)

    # 4. Raw pkcs11: pooled vs per-op login.
    pvl = read(os.path.join(res, "raw", "pool_vs_login.out"), "") or ""
    m1 = re.search(r"^raw pooled: (\d+) unwraps, ([\d.]+)/s", pvl, re.M)
    m2 = re.search(r"^per-op [^:]*: (\d+) unwraps, ([\d.]+)/s", pvl, re.M)
    m3 = re.search(r"^backend pooled: (\d+) unwraps, ([\d.]+)/s", pvl, re.M)
    pooled = float(m1.group(2)) if m1 else None
    per_op = float(m2.group(2)) if m2 else None
    backend_pooled = float(m3.group(2)) if m3 else None
    r_pool = ratio(pooled, per_op)
    r_backend_pool = ratio(backend_pooled, per_op)
    r_http_vs_login = ratio(get["hsm"]["rps"], per_op)
    pvl_cmd = (read(os.path.join(res, "raw", "pool_vs_login.cmd"), "") or "").strip()

    # 5. Latency at one connection; bare Decrypt.
    kds = [json.loads(read(os.path.join(res, "raw", f), "{}") or "{}")
           for f in sorted(os.listdir(os.path.join(res, "raw"))) if re.match(r"kms_decrypt-r\d+\.json$", f)]
    kd = {k: med([x.get(k) for x in kds]) for k in ("n", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "per_sec")}
    kd["rounds"] = kds
    kd_cmd = (read(os.path.join(res, "raw", "kms_decrypt.cmd"), "") or "").strip()
    bare_p50 = kd.get("p50_ms")
    lat_local = agg("latency", "local", "p50_ms")
    lat_nocache = agg("latency", "kms-nocache", "p50_ms")
    # Differences are taken within each round (the three runs are back to back), then the
    # median over rounds: the machine drifts between rounds more than within one.
    per_round = []
    for i, k in enumerate(kds, start=1):
        lo = [r["p50_ms"] for r in pick("latency", "local") if r["round"] == i]
        nc = [r["p50_ms"] for r in pick("latency", "kms-nocache") if r["round"] == i]
        if lo and nc and k.get("p50_ms") is not None:
            per_round.append({"round": i, "get_local": lo[0], "get_nocache": nc[0], "bare": k["p50_ms"],
                              "decrypt_path": nc[0] - lo[0], "added_over_bare": nc[0] - lo[0] - k["p50_ms"],
                              "whole_over_bare": nc[0] - k["p50_ms"]})
    decrypt_path = med([x["decrypt_path"] for x in per_round])
    added_over_bare = med([x["added_over_bare"] for x in per_round])
    whole_over_bare = med([x["whole_over_bare"] for x in per_round])
    lat_cmds = {b: (pick("latency", b)[0]["cmd"] if pick("latency", b) else None) for b in ("local", "kms-nocache")}

    # 7. Floors: CPU per GET (gateway + PostgreSQL) vs the sum of the floors' CPU per op;
    #    PUT vs pk_insert.
    rawdir = os.path.join(res, "raw")

    def floor(name):
        xs = [jread(os.path.join(rawdir, f)) or {} for f in sorted(os.listdir(rawdir))
              if re.match(re.escape(name) + r"-r\d+\.json$", f)]
        return {"per_sec": med([x.get("per_sec") for x in xs]),
                "cpu_us_per_op": med([x.get("cpu_us_per_op") for x in xs]),
                "rounds": xs, "cmd": (read(os.path.join(rawdir, name + ".cmd"), "") or "").strip()}

    pk_select, pk_insert = floor("pk-select"), floor("pk-insert")
    audit_ins, raw_local = floor("audit-insert"), floor("raw-unwrap-local")
    null_runs = pick("null_route", "local")
    null_route = {"per_sec": agg("null_route", "local", "rps"),
                  "cpu_us_per_op": agg("null_route", "local", "gateway_cpu_us_per_req"),
                  "cmd": null_runs[0]["cmd"] if null_runs else None}

    def total_cpu(r):
        g, p = r.get("gateway_cpu_us_per_req"), r.get("pg_cpu_us_per_req")
        return None if g is None or p is None else g + p

    get_local_cpu = med([total_cpu(r) for r in pick("closed", "local")])
    get_local_gw_cpu = agg("closed", "local", "gateway_cpu_us_per_req")
    get_local_pg_cpu = agg("closed", "local", "pg_cpu_us_per_req")
    parts = [null_route["cpu_us_per_op"], pk_select["cpu_us_per_op"], audit_ins["cpu_us_per_op"],
             raw_local["cpu_us_per_op"]]
    floor_sum = sum(parts) if all(v is not None for v in parts) else None
    r_cpu = ratio(get_local_cpu, floor_sum)
    put_runs = pick("put", "local")
    put = {"rps": agg("put", "local", "rps"), "p50_ms": agg("put", "local", "p50_ms"),
           "p99_ms": agg("put", "local", "p99_ms"), "not_ok": sum(r["not_ok"] for r in put_runs),
           "cpu_us_per_req": med([total_cpu(r) for r in put_runs]),
           "group": med([r.get("write_group_size") for r in put_runs]),
           "cmd": put_runs[0]["cmd"] if put_runs else None}
    pk_by_round = {}
    for f in sorted(os.listdir(rawdir)):
        m = re.match(r"pk-insert-r(\d+)\.json$", f)
        if m:
            pk_by_round[int(m.group(1))] = (jread(os.path.join(rawdir, f)) or {}).get("per_sec")
    rounds_put = by_round(put_runs, [{"round": k, "rps": v} for k, v in pk_by_round.items() if v])
    r_put = med(rounds_put)

    # What bounds the pkcs11 goals on this machine: the gateway, PostgreSQL and the load
    # generator share its cores, so a request's CPU bounds its rate. SoftHSM2's own decrypt
    # (the raw pooled loop: C_DecryptInit + C_Decrypt on 2 threads, one per core) is a cost no
    # design of ours removes; set beside the CPU a goal leaves for it.
    cores = float(machine.get("nproc") or 2)
    softhsm_us = cores * 1e6 / pooled if pooled else None
    get_hsm_cpu = med([total_cpu(r) for r in pick("closed", "hsm")])
    batch_cpu = med([total_cpu(r) for r in pick("batch", "hsm")])
    batch_shard_cpu = batch_cpu / batch_n if batch_cpu is not None and batch_n else None
    bounds = {
        "softhsm_decrypt_cpu_us": softhsm_us,
        "get_local_cpu_us": get_local_cpu,
        "get_hsm_cpu_us": get_hsm_cpu,
        # 0.9x of local's rate leaves local's CPU / 0.9 per request: this much for the HSM.
        "hsm_budget_for_0_9x_us": get_local_cpu / 0.9 - get_local_cpu if get_local_cpu else None,
        "batch_cpu_us_per_shard": batch_shard_cpu,
        # 4x the shards/s of single GETs leaves a quarter of a single GET's CPU per shard.
        "batch_budget_for_4x_us": get_hsm_cpu / 4 if get_hsm_cpu else None,
        "audit_insert_cpu_us": audit_ins["cpu_us_per_op"],
    }

    # 8. Open loop at half the peak (oha, latency-corrected).
    opens = []
    for name in sorted(os.listdir(os.path.join(res, "runs"))):
        if not name.startswith("open-local-r"):
            continue
        d = os.path.join(res, "runs", name)
        meta, out = jread(os.path.join(d, "open.json")) or {}, jread(os.path.join(d, "oha.json")) or {}
        pct = out.get("latencyPercentiles") or {}
        summ = out.get("summary") or {}
        if pct.get("p50") is None:
            continue
        null = (jread(os.path.join(d, "null-oha.json")) or {}).get("latencyPercentiles") or {}
        before, after = read(os.path.join(d, "metrics.before")), read(os.path.join(d, "metrics.after"))
        served = hist_delta(before, after, "shardgate_http_request_duration_seconds",
                            {"method": "GET", "route": "/v1/accounts/{account}/shards/{shard}"})
        waited = hist_delta(before, after, "shardgate_audit_wait_seconds")
        opens.append({"round": meta.get("round"), "peak_rps": meta.get("peak_rps"), "rate": meta.get("rate"),
                      "rps": summ.get("requestsPerSec"), "success_rate": summ.get("successRate"),
                      "p50_ms": pct["p50"] * 1e3, "p99_ms": pct["p99"] * 1e3,
                      "p99_over_p50": pct["p99"] / pct["p50"] if pct["p50"] else None,
                      "status": out.get("statusCodeDistribution"),
                      "null_p50_ms": null["p50"] * 1e3 if null.get("p50") is not None else None,
                      "null_p99_ms": null["p99"] * 1e3 if null.get("p99") is not None else None,
                      "null_p99_over_p50": null["p99"] / null["p50"] if null.get("p50") else None,
                      "server_within_ms": {str(ms): hist_share_within(served, ms / 1e3) for ms in (1, 2.5, 5)},
                      "server_over_25ms": hist_over(served, 0.025),
                      "server_max_bound_ms": hist_bound(served, 1.0),
                      "audit_over_25ms": hist_over(waited, 0.025),
                      "slowest_ms": summ["slowest"] * 1e3 if summ.get("slowest") is not None else None,
                      "server_p50_bound_ms": hist_bound(served, 0.5),
                      "server_p99_bound_ms": hist_bound(served, 0.99),
                      "audit_wait_p50_bound_ms": hist_bound(waited, 0.5),
                      "audit_wait_p99_bound_ms": hist_bound(waited, 0.99),
                      "cmd": (read(os.path.join(d, "cmd"), "") or "").strip(),
                      "null_cmd": (read(os.path.join(d, "null.cmd"), "") or "").strip()})
    r_open = med([x["p99_over_p50"] for x in opens])

    # 9. Memory.
    def kb(name):
        try:
            return int((read(os.path.join(res, "rss", name), "") or "").strip())
        except ValueError:
            return None
    rss_peak = max([r["rss_kb_mid"] for r in runs if r["kind"] == "closed" and r.get("rss_kb_mid")] or [0]) or None
    rss = {"idle_fresh_mb": None if kb("idle_fresh_kb") is None else kb("idle_fresh_kb") / 1024,
           "idle_mb": None if kb("idle_kb") is None else kb("idle_kb") / 1024,
           "conns_1000_mb": None if kb("conns_1000_kb") is None else kb("conns_1000_kb") / 1024,
           "peak_get_mb": None if rss_peak is None else rss_peak / 1024,
           "idle_conns": (read(os.path.join(res, "rss", "idle_conns.out"), "") or "").strip()}

    # 10. Profiles: the leaf frames with the most samples in each flamegraph's folded stacks.
    profiles = {}
    for b in ("local", "hsm", "kms"):
        folded = read(os.path.join(rawdir, "folded-%s.txt" % b))
        if not folded:
            continue
        leaves, incl, total = {}, {}, 0
        for line in folded.splitlines():
            stack, _, n = line.rpartition(" ")
            try:
                n = int(n)
            except ValueError:
                continue
            frames = stack.split(";")
            leaves[frames[-1]] = leaves.get(frames[-1], 0) + n
            for f in set(frames):
                incl[f] = incl.get(f, 0) + n
            total += n
        top = sorted(leaves.items(), key=lambda kv: -kv[1])[:12]
        # Inclusive shares of the project's own functions (and the store/HSM calls they make).
        ours = sorted(((f, n) for f, n in incl.items()
                       if re.match(r"<?(shardgate|sqlx_core::pool|sqlx_postgres::connection::PgConnection as "
                                   r"sqlx_core::connection::Connection>::ping|C_Decrypt|C_Encrypt)", f)),
                      key=lambda kv: -kv[1])[:10]
        profiles[b] = {"weight": total, "svg": "flamegraphs/get-%s.svg" % b,
                       "top_leaves": [{"frame": f, "share": n / total if total else None} for f, n in top],
                       "top_inclusive_ours": [{"frame": f, "share": n / total if total else None} for f, n in ours]}
    flame_cmd = (read(os.path.join(rawdir, "flame.cmd"), "") or "").strip()

    goals = [
        {"id": "get_cpu_vs_floors", "figure": "GET local: CPU per request (gateway + PostgreSQL) vs null_route + "
            "pk_select + audit_insert + raw_unwrap_local CPU per op", "goal": "<= 1.3x", "measured": r_cpu,
         "unit": "x", "met": None if r_cpu is None else r_cpu <= 1.3},
        {"id": "get_hsm_vs_local", "figure": "GET req/s, pkcs11 (hsm) vs local", "goal": ">= 0.9x",
         "measured": r_hsm_local, "unit": "x", "met": None if r_hsm_local is None else r_hsm_local >= 0.9},
        {"id": "get_kms_cache_vs_local", "figure": "GET req/s, aws-kms cache on (hot set) vs local", "goal": ">= 0.9x",
         "measured": r_kms_local, "unit": "x", "met": None if r_kms_local is None else r_kms_local >= 0.9},
        {"id": "kms_decrypt_per_1000_cache_on", "figure": "KMS Decrypt calls per 1,000 GETs, cache on (hot set)",
         "goal": "<= 10", "measured": dec_on, "unit": "", "met": None if dec_on is None else dec_on <= 10},
        {"id": "kms_decrypt_reduction", "figure": "KMS Decrypt calls, cache on vs off", "goal": ">= 99% fewer",
         "measured": None if dec_reduction is None else dec_reduction * 100, "unit": "% fewer",
         "met": None if dec_reduction is None else dec_reduction >= 0.99},
        {"id": "find_objects_per_1000", "figure": "C_FindObjects calls per 1,000 GETs on the hot path (hsm, after start-up)",
         "goal": "0", "measured": find_hsm, "unit": "", "met": None if find_hsm is None else find_hsm == 0},
        {"id": "batch_vs_single", "figure": "batchGet of %d vs %d single GETs, shards/s, hsm" % (batch_n, batch_n),
         "goal": ">= 4x", "measured": r_batch, "unit": "x", "met": None if r_batch is None else r_batch >= 4},
        {"id": "pool_vs_login_raw", "figure": "pkcs11 raw loop: pooled C_Decrypt (2 threads) vs per-op session+login",
         "goal": ">= 20x", "measured": r_pool, "unit": "x", "met": None if r_pool is None else r_pool >= 20},
        {"id": "pool_vs_login_backend", "figure": "pkcs11 backend unwraps (pool 8, 16 tasks) vs per-op session+login",
         "goal": "reported", "measured": r_backend_pool, "unit": "x", "met": None},
        {"id": "pool_vs_login_http", "figure": "over HTTP: hsm GET req/s vs raw per-op-login unwraps/s",
         "goal": "reported", "measured": r_http_vs_login, "unit": "x", "met": None},
        {"id": "kms_p50_added_over_bare_decrypt", "figure":
            "p50 added over a bare Decrypt, cache off: (GET p50 kms-nocache - GET p50 local) - bare Decrypt p50, -c1",
         "goal": "< 1.5 ms", "measured": added_over_bare, "unit": " ms",
         "met": None if added_over_bare is None else added_over_bare < 1.5},
        {"id": "put_vs_pk_insert", "figure": "PUT (durable, audited, local) req/s vs pk_insert ops/s, same concurrency",
         "goal": ">= 0.5x", "measured": r_put, "unit": "x", "met": None if r_put is None else r_put >= 0.5},
        {"id": "open_loop_p99_over_p50", "figure": "GET local at 50% of peak, open loop: p99 / p50",
         "goal": "<= 3", "measured": r_open, "unit": "", "met": None if r_open is None else r_open <= 3},
        {"id": "rss_idle", "figure": "RSS idle (after the runs)", "goal": "<= 30 MB",
         "measured": rss["idle_mb"], "unit": " MB", "met": None if rss["idle_mb"] is None else rss["idle_mb"] <= 30},
        {"id": "rss_1000_conns", "figure": "RSS with 1,000 idle keep-alive connections", "goal": "<= 100 MB",
         "measured": rss["conns_1000_mb"], "unit": " MB",
         "met": None if rss["conns_1000_mb"] is None else rss["conns_1000_mb"] <= 100},
        {"id": "rss_peak_get", "figure": "RSS at peak GET load (largest mid-run reading)", "goal": "<= 150 MB",
         "measured": rss["peak_get_mb"], "unit": " MB",
         "met": None if rss["peak_get_mb"] is None else rss["peak_get_mb"] <= 150},
    ]
    if mig:
        goals += mig[0]
    if flood:
        goals += flood[0]
    if archive:
        goals += archive[0]
    goals += growth_goals

    figures = {
        "get": get,
        "bounds": bounds,
        "ratios": {"hsm_vs_local": r_hsm_local, "kms_cache_vs_local": r_kms_local,
                   "kms_cache_on_vs_off": r_kms_onoff},
        "calls_per_1000_gets": calls,
        "metrics_present": metrics_present,
        "kms_decrypt_reduction": dec_reduction,
        "batch": {"n": batch_n, "rps": batch_rps, "shards_per_sec": batch_shards,
                  "single_get_rps_hsm": get["hsm"]["rps"], "ratio": r_batch,
                  "p50_ms": agg("batch", "hsm", "p50_ms"), "p99_ms": agg("batch", "hsm", "p99_ms"),
                  "not_ok": sum(r["not_ok"] for r in batch_runs),
                  "cmd": batch_runs[0]["cmd"] if batch_runs else None},
        "pkcs11_raw": {"pooled_per_sec": pooled, "per_op_login_per_sec": per_op, "ratio": r_pool,
                       "backend_pooled_per_sec": backend_pooled, "backend_ratio": r_backend_pool,
                       "http_hsm_get_vs_per_op_login": r_http_vs_login, "cmd": pvl_cmd},
        "kms_latency": {"bare_decrypt": kd, "get_p50_ms_c1": {"local": lat_local, "kms-nocache": lat_nocache},
                        "decrypt_path_p50_ms": decrypt_path, "added_over_bare_p50_ms": added_over_bare,
                        "whole_get_over_bare_p50_ms": whole_over_bare, "per_round": per_round,
                        "cmd_bare": kd_cmd, "cmd_get": lat_cmds},
        "load": load,
        "floors": {"null_route": null_route, "pk_select": pk_select, "audit_insert": audit_ins,
                   "raw_unwrap_local": raw_local, "pk_insert": pk_insert, "floor_sum_cpu_us": floor_sum,
                   "get_local_cpu_us": get_local_cpu, "get_local_gateway_cpu_us": get_local_gw_cpu,
                   "get_local_postgres_cpu_us": get_local_pg_cpu, "ratio": r_cpu},
        "put": dict(put, pk_insert_per_sec=pk_insert["per_sec"], ratio=r_put),
        "open_loop": {"rounds": opens, "p99_over_p50": r_open},
        "rss": rss,
        "profiles": dict(profiles, cmd=flame_cmd),
    }
    if mig:
        figures["migration"] = mig[1]
    if flood:
        figures["flood"] = flood[1]
    if archive:
        figures["archive"] = archive[1]
    for kept in ("growth", "priority", "convergence"):
        if kept in prev_json.get("figures", {}):
            figures[kept] = prev_json["figures"][kept]
    with open(a.json, "w") as f:
        json.dump({"machine": machine, "goals": goals, "figures": figures, "runs": runs}, f, indent=1)
        f.write("\n")

    # ------------------------------------------------------------------ BENCHMARKS.md
    o = []
    w = o.append
    w("# Benchmarks")
    w("")
    w("Written by `%s` (the one bench command; `scripts/bench.sh --help` for its flags). "
      "Raw numbers: [BENCHMARKS.json](BENCHMARKS.json)." % machine.get("command", "scripts/bench.sh"))
    w("")
    w("| | |")
    w("|---|---|")
    w("| date | %s |" % machine.get("date", "?"))
    w("| git rev | `%s`%s |" % (machine.get("git_rev", "?"),
                              " (with uncommitted changes)" if machine.get("git_dirty") == "yes" else ""))
    w("| machine | %s cores (`nproc`), %s, %s RAM, Linux %s |" % (
        machine.get("nproc", "?"), machine.get("cpu_model", "?"), machine.get("mem_total", "?"), machine.get("kernel", "?")))
    w("| parts | PostgreSQL %s, %s, moto %s, wrk %s, %s |" % (
        machine.get("postgres", "?"), "SoftHSM2 " + machine.get("softhsm2", "?"),
        machine.get("moto", "?"), machine.get("wrk", "?"), machine.get("rustc", "?")))
    w("| data set | %s accounts x 1 shard of %s B per backend tier (local, hsm, kms, kms-nocache), loaded over HTTP |" % (
        machine.get("accounts", "?"), machine.get("shard_bytes", "?")))
    w("| load | closed loop `wrk -t%s -c%s -d%ss` keep-alive, random shard of the tier's set per request; %s round(s), "
      "figures are medians; a throughput ratio is the median of its per-round ratios (a round's runs are back to back); %ss warm-up per backend first |" % (
        machine.get("threads", "?"), machine.get("connections", "?"), machine.get("duration", "?"),
        machine.get("rounds", "?"), machine.get("warmup_secs", "?")))
    w("")
    w("The gateway, PostgreSQL, moto_server, SoftHSM2 and wrk share the same %s cores (and other builds may "
      "run at the same time), so absolute numbers drift from run to run: compare the ratios, which are "
      "measured side by side in the same run." % machine.get("nproc", "?"))
    w("")
    # Runs from before the field was recorded all capped the arenas at 2.
    arenas = machine.get("malloc_arena_max", "2")
    w("PostgreSQL is reached over loopback without TLS (`sslmode=disable`), by the gateway and the floors "
      "alike; the gateway runs with %s." % (
          "`MALLOC_ARENA_MAX=%s`, as docs/operations.md's production notes recommend" % arenas
          if arenas and arenas != "0" else
          "glibc's default malloc arenas (no `MALLOC_ARENA_MAX`; see docs/operations.md's production notes)"))
    w("")
    w("## Goals")
    w("")
    w("| figure | goal | measured | met? |")
    w("|---|---|---|---|")
    for g in goals:
        w(goal_row(g))
    if not metrics_present or dec_on is None or find_hsm is None:
        w("")
        w("`n/a`: the gateway's `/metrics` did not expose the backend call counters "
          "(`%s`, `%s`, ...) when this ran." % (M_DECRYPT, M_FIND))
    w("")

    w("## 1. GET throughput per backend (closed loop)")
    w("")
    w("| backend | kind | req/s | p50 ms | p99 ms | not 200 | gateway CPU µs/req |")
    w("|---|---|---|---|---|---|---|")
    kinds = {"local": "local keyring", "hsm": "pkcs11 (SoftHSM2, pool 8)",
             "kms": "aws-kms on moto, cache on (hot set)", "kms-nocache": "aws-kms on moto, cache off"}
    for b in BACKENDS:
        g = get[b]
        w("| %s | %s | %s | %s | %s | %s | %s |" % (b, kinds[b], fmt(g["rps"], 0), fmt(g["p50_ms"], 2),
                                                   fmt(g["p99_ms"], 2), g["not_ok"],
                                                   fmt(g["gateway_cpu_us_per_req"], 0)))
    w("")
    w("| ratio | measured | goal |")
    w("|---|---|---|")
    w("| hsm / local | %s%s | >= 0.9x |" % (fmt(r_hsm_local, 2, "x"), rounds_text(rounds_hsm_local)))
    w("| kms (cache on) / local | %s%s | >= 0.9x |" % (fmt(r_kms_local, 2, "x"), rounds_text(rounds_kms_local)))
    w("| kms cache on / cache off | %s | (reported) |" % fmt(r_kms_onoff, 2, "x"))
    w("")
    if bounds["softhsm_decrypt_cpu_us"] and bounds["hsm_budget_for_0_9x_us"] and bounds["get_hsm_cpu_us"]:
        w("**What bounds hsm / local here.** The gateway, PostgreSQL and wrk share %s cores, so a request's "
          "CPU bounds the rate: a local GET costs %s µs (gateway + PostgreSQL), an hsm GET %s µs. At 0.9x "
          "of local's rate an hsm GET may cost local / 0.9, i.e. %s µs more than a local one, for the whole "
          "pkcs11 path; SoftHSM2's own C_DecryptInit + C_Decrypt costs %s µs of CPU in the raw pooled loop "
          "(section 4: %s cores / its rate) before any checkout, thread hop or HTTP. %s The rest of the "
          "gap (%s µs measured over local, beyond SoftHSM2's) is the checkout and the hop to a blocking "
          "thread." % (
              fmt(cores, 0), fmt(get_local_cpu, 0), fmt(get_hsm_cpu, 0),
              fmt(bounds["hsm_budget_for_0_9x_us"], 0), fmt(softhsm_us, 0), fmt(cores, 0),
              "So the goal is out of reach of this token on this machine, whatever the gateway does "
              "with it. (Most of SoftHSM2's cost is its file object store, not the AES: every "
              "`C_DecryptInit` re-reads the key object's generation file, `flamegraphs/get-hsm.svg`. "
              "A session-object copy of the KEK, `C_CopyObject` with `CKA_TOKEN=false`, would skip "
              "those reads, but the production HSM, AWS CloudHSM, keeps its keys in memory and its "
              "PKCS#11 library, Client SDK 5, does not offer `C_CopyObject`: the gateway uses the "
              "token object, as it must there.)"
              if softhsm_us > bounds["hsm_budget_for_0_9x_us"] else
              "SoftHSM2's cost fits in that budget: the goal is within reach.",
              fmt(get_hsm_cpu - get_local_cpu - softhsm_us, 0)))
        w("")
    w("Commands (`$TOKEN`: the run's admin token; the port is the run's):")
    w("")
    w("```sh")
    for b in BACKENDS:
        if get[b]["cmd"]:
            w(get[b]["cmd"])
    w("```")
    w("")

    w("## 2. Backend calls per 1,000 GETs")
    w("")
    w("From the gateway's `/metrics` (scope `metrics`) scraped before and after each closed-loop run "
      "above; counters are labelled by backend instance. Every loaded shard was read once by the loader, "
      "so the kms cache starts hot. The pkcs11 backend re-reads its KEK versions every "
      "`key_refresh_interval_ms` in a background task (so a version rotated in by another replica is "
      "seen): those find passes never run on a request and are counted apart.")
    w("")
    w("| backend | KMS Decrypt | KMS GenerateDataKey | cache hits | cache misses | C_FindObjects (hot path) | C_FindObjects (background refresh) | pool in use / size (mid-run) |")
    w("|---|---|---|---|---|---|---|---|")
    for b in BACKENDS:
        c = calls[b]
        pool = c["pool_mid_run"]
        ps = "n/a" if not pool else "%s / %s" % (fmt(pool["in_use"], 0), fmt(pool["size"], 0))
        w("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            b, fmt(c["kms_decrypt"], 2), fmt(c["kms_generate_data_key"], 2), fmt(c["cache_hits"], 1),
            fmt(c["cache_misses"], 2), fmt(c["find_objects"], 2), fmt(c["find_objects_background"], 2), ps))
    w("")
    w("Decrypt calls with the cache on vs off: %s fewer (goal >= 99%%)." %
      ("n/a" if dec_reduction is None else "%.2f%%" % (dec_reduction * 100)))
    w("")

    w("## 3. batchGet of %d vs %d single GETs (hsm tier)" % (batch_n, batch_n))
    w("")
    w("| | req/s | shards/s | p50 ms | p99 ms | not ok |")
    w("|---|---|---|---|---|---|")
    w("| single GET | %s | %s | %s | %s | %s |" % (fmt(get["hsm"]["rps"], 0), fmt(get["hsm"]["rps"], 0),
                                                 fmt(get["hsm"]["p50_ms"], 2), fmt(get["hsm"]["p99_ms"], 2),
                                                 get["hsm"]["not_ok"]))
    w("| batchGet of %d | %s | %s | %s | %s | %s |" % (batch_n, fmt(batch_rps, 0), fmt(batch_shards, 0),
                                                     fmt(figures["batch"]["p50_ms"], 2),
                                                     fmt(figures["batch"]["p99_ms"], 2), figures["batch"]["not_ok"]))
    w("")
    w("Ratio (shards/s): **%s**%s (goal >= 4x). A batch counts as not ok when any item carries an error." %
      (fmt(r_batch, 2, "x"), rounds_text(rounds_batch)))
    w("")
    if bounds["batch_cpu_us_per_shard"] and bounds["softhsm_decrypt_cpu_us"] and bounds["audit_insert_cpu_us"]:
        w("**What bounds it here.** Per shard, a batch costs %s µs of CPU (gateway + PostgreSQL) and a "
          "single hsm GET %s µs; on shared cores 4x the shards/s leaves %s µs per shard. Two costs every "
          "shard of a batch still pays are SoftHSM2's decrypt, %s µs (section 4), and its own durable "
          "audit event (a read is answered only once its event is recorded), %s µs at the audit writer's "
          "floor (section 7): %s µs together, %s." % (
              fmt(batch_shard_cpu, 0), fmt(get_hsm_cpu, 0), fmt(bounds["batch_budget_for_4x_us"], 0),
              fmt(softhsm_us, 0), fmt(audit_ins["cpu_us_per_op"], 0),
              fmt(softhsm_us + audit_ins["cpu_us_per_op"], 0),
              "more than the budget: out of reach on this machine (SoftHSM2's share: section 1)"
              if softhsm_us + audit_ins["cpu_us_per_op"] > bounds["batch_budget_for_4x_us"] else
              "within the budget: the rest of the cost is ours to cut"))
        w("")
    w("```sh")
    if figures["batch"]["cmd"]:
        w(figures["batch"]["cmd"])
    w("```")
    w("")

    w("## 4. pkcs11: pooled sessions vs a login per operation")
    w("")
    w("Loops without HTTP or SQL on their own SoftHSM2 token and key "
      "(`softhsm-tests/examples/pool_vs_login.rs`): `raw_unwrap_pkcs11` = C_DecryptInit + C_Decrypt of a "
      "wrapped data key on logged-in sessions opened once, one per thread, 2 threads (the cores); "
      "the backend = `Pkcs11Backend::unwrap` (pool 8, spawn_blocking) from 16 concurrent tasks on a "
      "2-thread runtime; `login_per_request` = open session + C_Login + C_FindObjects + C_Decrypt + "
      "C_Logout + close per unwrap, one login at a time (a login is process-wide in PKCS#11).")
    w("")
    w("| | unwraps/s |")
    w("|---|---|")
    w("| raw pooled C_Decrypt (`raw_unwrap_pkcs11`) | %s |" % fmt(pooled, 0))
    w("| backend pooled | %s |" % fmt(backend_pooled, 0))
    w("| per-op session + login (`login_per_request`) | %s |" % fmt(per_op, 0))
    w("| ratio raw pooled / per-op | **%s** (goal >= 20x) |" % fmt(r_pool, 1, "x"))
    w("| ratio backend pooled / per-op | %s (reported) |" % fmt(r_backend_pool, 1, "x"))
    w("| over HTTP: hsm GET req/s / per-op login unwraps/s | %s (reported) |" % fmt(r_http_vs_login, 1, "x"))
    w("")
    w("```sh")
    w(pvl_cmd)
    w("```")
    w("")

    w("## 5. KMS Decrypt latency, cache off")
    w("")
    w("One connection (`wrk -t1 -c1`), so latency is not queueing. The bare Decrypt is the Rust AWS SDK "
      "calling moto in a loop (`bench/src/main.rs`, one client, same blob and EncryptionContext shape "
      "as the backend's).")
    w("")
    w("| | p50 ms | p99 ms |")
    w("|---|---|---|")
    w("| bare `Decrypt` to moto (Rust SDK, %s calls) | %s | %s |" % (fmt(kd.get("n"), 0), fmt(bare_p50, 3),
                                                                  fmt(kd.get("p99_ms"), 3)))
    w("| GET, local, -c1 | %s | %s |" % (fmt(lat_local, 3), fmt(agg("latency", "local", "p99_ms"), 3)))
    w("| GET, kms-nocache, -c1 | %s | %s |" % (fmt(lat_nocache, 3), fmt(agg("latency", "kms-nocache", "p99_ms"), 3)))
    w("| Decrypt path in a GET: kms-nocache - local (median of rounds) | %s | |" % fmt(decrypt_path, 3))
    w("| **added over a bare Decrypt**: (kms-nocache - local) - bare | **%s** (goal < 1.5 ms) | |" % fmt(added_over_bare, 3))
    w("| whole GET over a bare Decrypt: kms-nocache - bare | %s | |" % fmt(whole_over_bare, 3))
    w("")
    if per_round:
        w("Differences are taken within each round (back-to-back runs), then the median over rounds. "
          "Per round, p50 ms: " + "; ".join(
              "r%d: local %.2f, bare %.2f, kms-nocache %.2f -> added %.2f" % (
                  x["round"], x["get_local"], x["bare"], x["get_nocache"], x["added_over_bare"])
              for x in per_round) + ".")
        w("")
    if added_over_bare is not None and added_over_bare < 0:
        w("A negative difference means the Decrypt inside a GET measured no slower than the bare loop: "
          "the noise of this shared machine is larger than what the gateway adds; "
          "`scripts/bench.sh --rounds 3 --duration 20` narrows it.")
        w("")
    w("```sh")
    w(kd_cmd)
    for b in ("local", "kms-nocache"):
        if lat_cmds[b]:
            w(lat_cmds[b])
    w("```")
    w("")

    if mig:
        o.extend(mig[2])

    w("## 7. What a GET and a PUT cost beyond their floors (local backend)")
    w("")
    w("CPU per operation from /proc (utime + stime, every thread) over each timed window: for the gateway "
      "runs, the gateway process plus every PostgreSQL process; for each floor, its own process plus every "
      "PostgreSQL process (the load generator is never counted). Floors (`shardgate-bench`, `bench/src/`): "
      "`null_route` = the shard routes on the gateway's own server code with nothing behind them (same JSON "
      "shape and size, no auth, SQL, crypto or audit), driven by the same wrk command; `pk_select` = the "
      "gateway's latest-version select on the same rows, plain sqlx (a query on the pool, which sqlx "
      "follows with a ping round trip as the connection goes back; the gateway's one-statement reads skip "
      "that ping, `store/src/held_conns.rs`), %s connections; `audit_insert` = the "
      "gateway's audit writer (`Auditor::record`, its batching included), one event per op, %s callers; "
      "`raw_unwrap_local` = keyring unwrap + shard open via `envelope::open`, one task per core; "
      "`pk_insert` = single-row autocommit inserts of the same row shape, %s connections, default "
      "`synchronous_commit` (the gateway's). Medians of the rounds." % (
          machine.get("connections", "?"), machine.get("connections", "?"), machine.get("connections", "?")))
    w("")
    w("| | ops/s | CPU µs per op |")
    w("|---|---|---|")
    w("| GET, local (gateway + PostgreSQL) | %s | **%s** (gateway %s + PostgreSQL %s) |" % (
        fmt(get["local"]["rps"], 0), fmt(get_local_cpu, 0), fmt(get_local_gw_cpu, 0), fmt(get_local_pg_cpu, 0)))
    w("| `null_route` | %s | %s |" % (fmt(null_route["per_sec"], 0), fmt(null_route["cpu_us_per_op"], 0)))
    w("| `pk_select` | %s | %s |" % (fmt(pk_select["per_sec"], 0), fmt(pk_select["cpu_us_per_op"], 0)))
    w("| `audit_insert` | %s | %s |" % (fmt(audit_ins["per_sec"], 0), fmt(audit_ins["cpu_us_per_op"], 0)))
    w("| `raw_unwrap_local` | %s | %s |" % (fmt(raw_local["per_sec"], 0), fmt(raw_local["cpu_us_per_op"], 1)))
    w("| sum of the floors | | **%s** |" % fmt(floor_sum, 0))
    w("| **GET / floors** | | **%s** (goal <= 1.3x) |" % fmt(r_cpu, 2, "x"))
    w("| PUT, local (durable, audited; gateway + PostgreSQL) | %s | %s |" % (fmt(put["rps"], 0), fmt(put["cpu_us_per_req"], 0)))
    w("| `pk_insert` | %s | %s |" % (fmt(pk_insert["per_sec"], 0), fmt(pk_insert["cpu_us_per_op"], 0)))
    w("| **PUT / pk_insert**, ops/s | **%s**%s (goal >= 0.5x) | |" % (fmt(r_put, 2, "x"), rounds_text(rounds_put)))
    w("")
    if put["cpu_us_per_req"] and pk_insert["cpu_us_per_op"] and pk_insert["per_sec"]:
        # With every core busy and nothing serialised, a PUT's CPU bounds its rate.
        put_ceiling = cores * 1e6 / put["cpu_us_per_req"]
        w("**What bounds PUT here.** A PUT costs %s µs of CPU (gateway + PostgreSQL), %s the %s µs "
          "of a `pk_insert`: with all %s cores busy for PUTs alone it could reach %s/s, %s of "
          "`pk_insert`'s rate%s. Concurrent PUTs commit in groups (%s writes per group in these runs, "
          "from `shardgate_write_group_size`): one transaction, one hold of the audit chain, one audit "
          "insert and one WAL flush per group (`[store] group_writes`; `bench/history.md`, stop 18). "
          "What each PUT still pays alone is the HTTP request, its read of its account and latest "
          "version (placement and numbering come before the envelope is sealed), the envelope and "
          "audit crypto, and its rows in the group's statements: the checked insert of its version "
          "and, under the chain, the re-check of its account (a shared row lock) and its audit row. "
          "A `pk_insert` is one single-row autocommit statement." % (
              fmt(put["cpu_us_per_req"], 0), fmt(put["cpu_us_per_req"] / pk_insert["cpu_us_per_op"], 1, "x"),
              fmt(pk_insert["cpu_us_per_op"], 0), fmt(cores, 0), fmt(put_ceiling, 0),
              fmt(put_ceiling / pk_insert["per_sec"], 2, "x"),
              ": the goal is out of reach on this machine at this CPU per write"
              if put_ceiling / pk_insert["per_sec"] < 0.5 else
              (" if the cores were saturated; measured, PUTs kept %s of the %s cores busy (%s/s x %s µs), "
               "so at this concurrency a PUT is bound by its latency (its read, then the group's round "
               "trips and WAL flush), not by CPU" % (
                   fmt(put["rps"] * put["cpu_us_per_req"] / 1e6, 1), fmt(cores, 0),
                   fmt(put["rps"], 0), fmt(put["cpu_us_per_req"], 0))),
              fmt(put["group"], 1)))
        w("")
    w("```sh")
    for c in (null_route["cmd"], pk_select["cmd"], audit_ins["cmd"], raw_local["cmd"], put["cmd"], pk_insert["cmd"]):
        if c:
            w(c)
    w("```")
    w("")

    w("## 8. Latency at half the peak rate, open loop")
    w("")
    w("oha offers GETs on the local set at a fixed rate of half the same round's closed-loop peak (`get-local`), "
      "with `--latency-correction`: a request is timed from when it was due, so a stall is not hidden by "
      "the requests it delayed (coordinated omission).")
    w("")
    w("| round | peak req/s | offered req/s | achieved req/s | success | p50 ms | p99 ms | p99 / p50 |")
    w("|---|---|---|---|---|---|---|---|")
    for x in opens:
        w("| %s | %s | %s | %s | %s | %s | %s | %s |" % (x["round"], x["peak_rps"], x["rate"], fmt(x["rps"], 0),
                                                   fmt(x["success_rate"], 4), fmt(x["p50_ms"], 2), fmt(x["p99_ms"], 2),
                                                   fmt(x["p99_over_p50"], 2)))
    w("| **median** | | | | | | | **%s** (goal <= 3) |" % fmt(r_open, 2))
    w("")
    if any(x.get("null_p50_ms") is not None for x in opens):
        w("**What the tail is made of.** The same oha run at the same rate on `null_route` (the floor of this "
          "machine and load generator: nothing behind the routes), and the gateway's own histograms over the "
          "gateway run (bucket bounds, so \"<= 2.5\" means between 1 and 2.5 ms): how long it held the GETs, "
          "and how long they waited for their audit events to be durable (the batch write in flight when they "
          "queued, then their own).")
        w("")
        w("| round | null_route p50 ms | p99 ms | p99 / p50 | gateway GETs held: p50 ms | p99 ms | "
          "share within 1 / 2.5 / 5 ms | audit wait: p50 ms | p99 ms |")
        w("|---|---|---|---|---|---|---|---|---|")

        def bound(v):
            return "n/a" if v is None else "<= %g" % v

        def share(x):
            sw = x.get("server_within_ms") or {}
            vals = [sw.get(k) for k in ("1", "2.5", "5")]
            return " / ".join("n/a" if v is None else "%.1f%%" % (100 * v) for v in vals)

        for x in opens:
            w("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                x["round"], fmt(x.get("null_p50_ms"), 2), fmt(x.get("null_p99_ms"), 2),
                fmt(x.get("null_p99_over_p50"), 2), bound(x.get("server_p50_bound_ms")),
                bound(x.get("server_p99_bound_ms")), share(x), bound(x.get("audit_wait_p50_bound_ms")),
                bound(x.get("audit_wait_p99_bound_ms"))))
        w("")
        within = [((x.get("server_within_ms") or {}).get("2.5"), x.get("p99_ms")) for x in opens]
        within = [(a, b) for a, b in within if a is not None and b is not None]
        if within:
            inside = all(a >= 0.99 for a, _ in within)
            w("**What bounds it here.** The gateway held %s of the GETs (per round) for at most 2.5 ms, from "
              "the request's arrival at its router to the response (its own histogram), while oha saw a p99 of "
              "%s ms%s. Measured beside this bench (`bench/history.md`, stop 22; `vmstat`): at half the peak "
              "the 2 cores are about two thirds busy, with about 8 context switches per GET (oha, the "
              "gateway's connection task, the PostgreSQL backend of its read, the audit writer and its "
              "backend, and back); p99 / p50 is the same at a quarter of the peak as at half (so not "
              "queueing), with PostgreSQL's `fsync` off as on (not the disk), and with oha at a higher "
              "priority than the gateway (not the load generator being starved). The same oha run against "
              "`null_route` (one process, no database) keeps a p99 of %s ms." % (
                  " / ".join("%.1f%%" % (100 * a) for a, _ in within),
                  " / ".join("%.2f" % b for _, b in within),
                  ": the gateway's own p99 is at most 2.5 ms in every round, and the rest of oha's p99 is "
                  "time outside the handler, waiting to be scheduled" if inside else "",
                  " / ".join(fmt(x.get("null_p99_ms"), 2) for x in opens)))
            w("")
        stalled = [x for x in opens if (x.get("server_over_25ms") or 0) > 0]
        if stalled:
            # With latency correction, a stall that holds every connection makes each request due
            # during it late: at rate R, a stall of S seconds delays about R * S requests.
            same = all(x.get("audit_over_25ms") == x.get("server_over_25ms") for x in stalled)
            w("**Stalls.** In %s the gateway itself held %s GETs for more than 25 ms (up to <= %s ms), "
              "and %s reads waited more than 25 ms for their audit event to be durable (a read is "
              "answered only once its event is in PostgreSQL)%s With oha's 16 connections all held by "
              "such a stall, every request due during it counts as late, so stalls adding up to 100 ms "
              "in a 10 s run (1%% of its requests) set oha's p99 (slowest request: %s ms)." % (
                  "round " + " / ".join(str(x["round"]) for x in stalled) if len(stalled) < len(opens)
                  else "every round (" + " / ".join(str(x["round"]) for x in stalled) + ")",
                  " / ".join(fmt(x.get("server_over_25ms"), 0) for x in stalled),
                  " / ".join(fmt(x.get("server_max_bound_ms"), 0) for x in stalled),
                  " / ".join(fmt(x.get("audit_over_25ms"), 0) for x in stalled),
                  ": as many as were held that long, so these are stalls of the audit writer's "
                  "PostgreSQL insert and commit (the disk is shared with the checkpoints of what the "
                  "bench wrote before, and with the machine's other tenants)." if same else ".",
                  " / ".join(fmt(x.get("slowest_ms"), 0) for x in stalled)))
            w("")
    if opens:
        w("```sh")
        w(opens[0]["cmd"])
        if opens[0].get("null_cmd"):
            w(opens[0]["null_cmd"])
        w("```")
        w("")

    w("## 9. Memory (gateway RSS)")
    w("")
    w("| state | RSS MB | goal |")
    w("|---|---|---|")
    w("| just started (no request yet) | %s | |" % fmt(rss["idle_fresh_mb"], 1))
    w("| idle after the runs above | %s | <= 30 |" % fmt(rss["idle_mb"], 1))
    w("| 1,000 idle keep-alive connections (`bench/idle_conns.py`: one GET /healthz each, then idle) | %s | <= 100 |" % fmt(rss["conns_1000_mb"], 1))
    w("| peak GET load (largest VmRSS read mid-run of the closed-loop GET runs) | %s | <= 150 |" % fmt(rss["peak_get_mb"], 1))
    w("")
    if rss["idle_conns"]:
        w("Idle-connection holder: `%s`." % rss["idle_conns"].replace("\n", "; "))
        w("")

    w("## 10. Profiles")
    w("")
    if profiles:
        w("Flamegraphs of the gateway at peak GET load (not a measured run; perf costs CPU): "
          + ", ".join("[%s](%s)" % (b, p["svg"]) for b, p in profiles.items()) + ". The leaf frames with the "
          "most samples (self time):")
        w("")
        for b, p in profiles.items():
            w("**%s**, self: %s" % (b, "; ".join(
                "`%s` %.1f%%" % (t["frame"][:80].replace("`", "'"), (t["share"] or 0) * 100) for t in p["top_leaves"][:8])))
            w("")
            w("**%s**, inclusive (our functions, the pool, the HSM): %s" % (b, "; ".join(
                "`%s` %.1f%%" % (t["frame"][:90].replace("`", "'"), (t["share"] or 0) * 100)
                for t in p["top_inclusive_ours"])))
            w("")
        w("```sh")
        w(flame_cmd)
        w("```")
    else:
        w("No profile in this run (perf or inferno missing).")
    w("")

    if flood:
        o.extend(flood[2])
    if archive:
        o.extend(archive[2])
    o.extend(growth_section + ([""] if growth_section and growth_section[-1] != "" else []))
    o.extend(priority_section + ([""] if priority_section and priority_section[-1] != "" else []))

    w("## Data set load (informational)")
    w("")
    w("PUT account + PUT shard (durable, audited) + GET back and compare, per account, 8 keep-alive workers; then `VACUUM (ANALYZE)` of the database, as pgbench does before its runs, so autovacuum of the loaded rows does not land in a measured window.")
    w("")
    w("| tier | accounts | seconds | accounts/s | errors |")
    w("|---|---|---|---|---|")
    for l in load:
        w("| %s | %s | %s | %s | %s |" % (l["tier"], l["accounts"], l["seconds"], l["accounts_per_sec"], l["errors"]))
    w("")
    w("```sh")
    w((read(os.path.join(res, "load.cmd"), "") or "").strip())
    w("```")
    w("")
    w("## Reproduce")
    w("")
    w("```sh")
    w("scripts/bench.sh                      # everything above%s" % (
        ": %.0f minutes for this run, `dist` build included" % (float(machine["elapsed_seconds"]) / 60)
        if machine.get("elapsed_seconds") else ", after the `dist` build"))
    w("scripts/bench.sh --only migration     # only section 6; keeps the other figures of BENCHMARKS.md/json")
    w("scripts/bench.sh --only migration --migration-shards 20000   # the same with a smaller job")
    w("scripts/bench.sh --only flood         # only section 11; keeps the other figures of BENCHMARKS.md/json")
    w("scripts/bench.sh --only archive       # only section 12 (also part of the whole run)")
    w("scripts/bench.sh --only growth        # only section 13 (not part of the whole run: ~35 minutes)")
    w("scripts/bench.sh --only fleet         # only sections 14 and 15 (not part of the whole run: ~5 minutes)")
    w("```")
    w("")
    w("It builds with `CARGO_TARGET_DIR=${SHARDGATE_BENCH_TARGET:-/tmp/sg-bench-target}`, creates a throw-away "
      "PostgreSQL database, a SoftHSM2 token (`hsm init-key`) and a moto_server with one KMS key, starts the "
      "gateway with backends `local`, `hsm` (pkcs11), `kms` and `kms-nocache` (aws-kms, data-key cache on/off) "
      "on one tier each, and removes all of it on exit.")
    # The hand-kept record of what each change did (a run cannot know its own "before").
    history = os.path.join(os.path.dirname(os.path.abspath(__file__)), "history.md")
    if os.path.exists(history):
        w("")
        w(open(history).read().rstrip("\n"))
    with open(a.md, "w") as f:
        f.write("\n".join(o) + "\n")


if __name__ == "__main__":
    main()
