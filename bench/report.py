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
"""

import argparse
import json
import os
import re
import statistics

BACKENDS = ["local", "hsm", "kms", "kms-nocache"]

M_DECRYPT = "shardgate_backend_kms_decrypt_calls_total"
M_GDK = "shardgate_backend_kms_generate_data_key_calls_total"
M_HITS = "shardgate_backend_cache_hits_total"
M_MISSES = "shardgate_backend_cache_misses_total"
M_FIND = "shardgate_backend_find_objects_calls_total"
M_POOL_IN_USE = "shardgate_backend_pool_in_use"
M_POOL_SIZE = "shardgate_backend_pool_size"

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

        r["per_1000"] = {
            "kms_decrypt": per_1000(M_DECRYPT),
            "kms_generate_data_key": per_1000(M_GDK),
            "cache_hits": per_1000(M_HITS),
            "cache_misses": per_1000(M_MISSES),
            "find_objects": per_1000(M_FIND),
        }
        r["calls"] = {"kms_decrypt": delta(M_DECRYPT), "find_objects": delta(M_FIND)}
        r["pool_mid_run"] = None
        if mid is not None and (M_POOL_SIZE, b) in mid:
            r["pool_mid_run"] = {"in_use": mid.get((M_POOL_IN_USE, b)), "size": mid[(M_POOL_SIZE, b)]}
        r["metrics_scraped"] = after is not None
        runs.append(r)
    return runs


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    res = a.results
    machine = json.loads(read(os.path.join(res, "machine.json"), "{}"))
    runs = load_runs(res)
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
    r_hsm_local = ratio(get["hsm"]["rps"], get["local"]["rps"])
    r_kms_local = ratio(get["kms"]["rps"], get["local"]["rps"])
    r_kms_onoff = ratio(get["kms"]["rps"], get["kms-nocache"]["rps"])

    # 2. Backend calls per 1,000 GETs (closed-loop runs, /metrics before and after).
    calls = {}
    for b in BACKENDS:
        calls[b] = {k: agg("closed", b, "per_1000", k)
                    for k in ("kms_decrypt", "kms_generate_data_key", "cache_hits", "cache_misses", "find_objects")}
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
    r_batch = ratio(batch_shards, get["hsm"]["rps"])

    # 4. Raw pkcs11: pooled vs per-op login.
    pvl = read(os.path.join(res, "raw", "pool_vs_login.out"), "") or ""
    m1 = re.search(r"^pooled: (\d+) unwraps, ([\d.]+)/s", pvl, re.M)
    m2 = re.search(r"^per-op [^:]*: (\d+) unwraps, ([\d.]+)/s", pvl, re.M)
    pooled = float(m1.group(2)) if m1 else None
    per_op = float(m2.group(2)) if m2 else None
    r_pool = ratio(pooled, per_op)
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

    goals = [
        {"id": "get_hsm_vs_local", "figure": "GET req/s, pkcs11 (hsm) vs local", "goal": ">= 0.9x",
         "measured": r_hsm_local, "unit": "x", "met": None if r_hsm_local is None else r_hsm_local >= 0.9},
        {"id": "get_kms_cache_vs_local", "figure": "GET req/s, aws-kms cache on (hot set) vs local", "goal": ">= 0.9x",
         "measured": r_kms_local, "unit": "x", "met": None if r_kms_local is None else r_kms_local >= 0.9},
        {"id": "kms_decrypt_per_1000_cache_on", "figure": "KMS Decrypt calls per 1,000 GETs, cache on (hot set)",
         "goal": "<= 10", "measured": dec_on, "unit": "", "met": None if dec_on is None else dec_on <= 10},
        {"id": "kms_decrypt_reduction", "figure": "KMS Decrypt calls, cache on vs off", "goal": ">= 99% fewer",
         "measured": None if dec_reduction is None else dec_reduction * 100, "unit": "% fewer",
         "met": None if dec_reduction is None else dec_reduction >= 0.99},
        {"id": "find_objects_per_1000", "figure": "C_FindObjects calls per 1,000 GETs (hsm, after start-up)",
         "goal": "0", "measured": find_hsm, "unit": "", "met": None if find_hsm is None else find_hsm == 0},
        {"id": "batch_vs_single", "figure": "batchGet of %d vs %d single GETs, shards/s, hsm" % (batch_n, batch_n),
         "goal": ">= 4x", "measured": r_batch, "unit": "x", "met": None if r_batch is None else r_batch >= 4},
        {"id": "pool_vs_login_raw", "figure": "pkcs11 raw loop: pooled unwraps vs per-op session+login",
         "goal": ">= 20x", "measured": r_pool, "unit": "x", "met": None if r_pool is None else r_pool >= 20},
        {"id": "pool_vs_login_http", "figure": "over HTTP: hsm GET req/s vs raw per-op-login unwraps/s",
         "goal": "reported", "measured": r_http_vs_login, "unit": "x", "met": None},
        {"id": "kms_p50_added_over_bare_decrypt", "figure":
            "p50 added over a bare Decrypt, cache off: (GET p50 kms-nocache - GET p50 local) - bare Decrypt p50, -c1",
         "goal": "< 1.5 ms", "measured": added_over_bare, "unit": " ms",
         "met": None if added_over_bare is None else added_over_bare < 1.5},
    ]

    figures = {
        "get": get,
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
                       "http_hsm_get_vs_per_op_login": r_http_vs_login, "cmd": pvl_cmd},
        "kms_latency": {"bare_decrypt": kd, "get_p50_ms_c1": {"local": lat_local, "kms-nocache": lat_nocache},
                        "decrypt_path_p50_ms": decrypt_path, "added_over_bare_p50_ms": added_over_bare,
                        "whole_get_over_bare_p50_ms": whole_over_bare, "per_round": per_round,
                        "cmd_bare": kd_cmd, "cmd_get": lat_cmds},
        "load": load,
    }
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
      "figures are medians; %ss warm-up per backend first |" % (
        machine.get("threads", "?"), machine.get("connections", "?"), machine.get("duration", "?"),
        machine.get("rounds", "?"), machine.get("warmup_secs", "?")))
    w("")
    w("The gateway, PostgreSQL, moto_server, SoftHSM2 and wrk share the same %s cores (and other builds may "
      "run at the same time), so absolute numbers drift from run to run: compare the ratios, which are "
      "measured side by side in the same run." % machine.get("nproc", "?"))
    w("")
    w("## Goals")
    w("")
    w("| figure | goal | measured | met? |")
    w("|---|---|---|---|")
    for g in goals:
        m = g["measured"]
        ms = "n/a" if m is None else ("%.2f%s" % (m, g["unit"]) if g["unit"] != "" else "%.2f" % m)
        status = "reported" if g["goal"] == "reported" and m is not None else met(m, lambda _v: g["met"])
        w("| %s | %s | %s | %s |" % (g["figure"], g["goal"], ms, status))
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
    w("| hsm / local | %s | >= 0.9x |" % fmt(r_hsm_local, 2, "x"))
    w("| kms (cache on) / local | %s | >= 0.9x |" % fmt(r_kms_local, 2, "x"))
    w("| kms cache on / cache off | %s | (reported) |" % fmt(r_kms_onoff, 2, "x"))
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
      "so the kms cache starts hot.")
    w("")
    w("| backend | KMS Decrypt | KMS GenerateDataKey | cache hits | cache misses | C_FindObjects | pool in use / size (mid-run) |")
    w("|---|---|---|---|---|---|---|")
    for b in BACKENDS:
        c = calls[b]
        pool = c["pool_mid_run"]
        ps = "n/a" if not pool else "%s / %s" % (fmt(pool["in_use"], 0), fmt(pool["size"], 0))
        w("| %s | %s | %s | %s | %s | %s | %s |" % (b, fmt(c["kms_decrypt"], 2), fmt(c["kms_generate_data_key"], 2),
                                                   fmt(c["cache_hits"], 1), fmt(c["cache_misses"], 2),
                                                   fmt(c["find_objects"], 2), ps))
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
    w("Ratio (shards/s): **%s** (goal >= 4x). A batch counts as not ok when any item carries an error." %
      fmt(r_batch, 2, "x"))
    w("")
    w("```sh")
    if figures["batch"]["cmd"]:
        w(figures["batch"]["cmd"])
    w("```")
    w("")

    w("## 4. pkcs11: pooled sessions vs a login per operation")
    w("")
    w("Raw loop without HTTP or SQL, one thread, its own SoftHSM2 token and key "
      "(`softhsm-tests/examples/pool_vs_login.rs`): pooled unwraps through the backend (pool of 1) vs "
      "open session + C_Login + C_FindObjects + C_Decrypt + C_Logout + close per unwrap, one login at a time.")
    w("")
    w("| | unwraps/s |")
    w("|---|---|")
    w("| pooled (backend) | %s |" % fmt(pooled, 0))
    w("| per-op session + login | %s |" % fmt(per_op, 0))
    w("| ratio | **%s** (goal >= 20x) |" % fmt(r_pool, 1, "x"))
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

    w("## Data set load (informational)")
    w("")
    w("PUT account + PUT shard (durable, audited) + GET back and compare, per account, 8 keep-alive workers.")
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
    w("scripts/bench.sh            # everything above: about 5 minutes with the defaults, after the release build")
    w("```")
    w("")
    w("It builds with `CARGO_TARGET_DIR=${SHARDGATE_BENCH_TARGET:-/tmp/sg-bench-target}`, creates a throw-away "
      "PostgreSQL database, a SoftHSM2 token (`hsm init-key`) and a moto_server with one KMS key, starts the "
      "gateway with backends `local`, `hsm` (pkcs11), `kms` and `kms-nocache` (aws-kms, data-key cache on/off) "
      "on one tier each, and removes all of it on exit.")
    with open(a.md, "w") as f:
        f.write("\n".join(o) + "\n")


if __name__ == "__main__":
    main()
