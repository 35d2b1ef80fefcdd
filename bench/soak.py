#!/usr/bin/env python3
"""Chaos soak (issue 30): three replicas on a private PostgreSQL cluster and a private moto,
with local, pkcs11 (SoftHSM2) and aws-kms tiers, a client mix at a fixed rate, a migration job
now and then, and one fault every FAULT_EVERY seconds in rotation (bench/soak_faults.py). A
checker keeps every acknowledged write (bench/soak_check.py) and afterwards reads everything
back; the audit chains are verified with `shardgate audit verify`.

    scripts/test.sh --run python3 bench/soak.py --bin BIN --out DIR [options]

  --ci                the CI variant: a fixed low rate (--rate, default 25 ops/s), a fault
                      every ~8 s until all six kinds occurred (~2-3 minutes), no RSS figure
  (default)           the benchmark: first the peak (closed loop, --peak-secs), then
                      --duration s at 70% of it, a fault every 20-30 s; the RSS of the
                      replicas never restarted, after warm-up

Without --out, everything goes to $SHARDGATE_TEST_LOG_DIR/soak, which scripts/test.sh's secret
scan reads (the soak plants its admin token, HSM PIN and a sample of shard plaintexts).
BIN must be built with `--features fault-injection` (the hsm-logout fault's hook).
Writes DIR/soak.json (the report) and the cluster's logs under DIR; exits 1 when any check
fails (a lost or stale or foreign read, a CAS violation, a deleted cell that came back, an
audit chain that does not verify, a fault that could not be injected, or, in CI, a kind of
fault that never occurred).
"""

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soak_check  # noqa: E402
from soak_cluster import Cluster  # noqa: E402
from soak_faults import KINDS, Faults, recovery  # noqa: E402
from soak_load import Client, Load  # noqa: E402


def log(msg):
    print("[soak] %s" % msg, file=sys.stderr, flush=True)


def rollout_bucket(name, account):
    """The rollout bucket of docs/policy-and-migration.md: SHA-256(name 0x00 account)[0..8]
    as a big-endian u64, mod 10,000."""
    h = hashlib.sha256(name.encode() + b"\x00" + account.encode()).digest()
    return int.from_bytes(h[:8], "big") % 10000


def migrations(load, stop, every, jobs):
    """Every `every` s, a re-wrap job for a soak-local account that the policy-apply fault
    moves (its `soak-pilot` bucket is below 70%: in the rollout at 70%, or at both 30% and
    70%, so its versions are on local and kms), followed to its end."""
    c = Client(load.cluster.token, 30)
    locals_ = [a for a, t in load.accounts if t == "soak-local"]
    moved = [a for a in locals_ if rollout_bucket("soak-pilot", a) < 7000] or locals_
    while not stop.wait(every):
        bases = load.cluster.live_bases()
        if not bases:
            continue
        account = random.choice(moved)
        s, doc, code = c.call(random.choice(bases), "POST", "/v1/admin/migrations",
                              {"account": account})
        if s != 202:
            jobs.append({"account": account, "state": "not started: %s" % (code or s)})
            continue
        job = {"account": account, "job": doc["job"], "state": "running"}
        jobs.append(job)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not stop.is_set():
            bases = load.cluster.live_bases()
            s, doc, _ = c.call(random.choice(bases), "GET", "/v1/admin/migrations/" + job["job"])
            if s == 200 and doc.get("state") not in ("running", "pending", "paused"):
                job.update({k: doc.get(k) for k in ("state", "total", "done", "failed", "skipped")})
                break
            time.sleep(1)


def sample_rss(cluster, stop, samples, t_start):
    while not stop.wait(2):
        t = time.monotonic() - t_start
        for r in cluster.replicas:
            kib = r.rss_kib()
            if kib is not None:
                samples.append((round(t, 1), r.index, r.starts, kib))


def progress(load, faults, stop, total):
    while not stop.wait(10):
        el = time.monotonic() - load.t_start
        with load.ops_lock:
            n = len(load.ops)
            bad = sum(1 for o in load.ops if o[4] not in ("ok", "not_found", "conflict"))
        log("%4.0f/%d s  %d ops (%.0f/s)  %d not ok  %d faults  violations %d  ETA %.0f s" % (
            el, total, n, n / max(el, 1), bad, len(faults.log),
            sum(len(v) for v in load.model.violations.values()), max(total - el, 0)))


def fault_loop(faults, stop, end_at, every, need_all):
    while time.monotonic() < end_at or (need_all and faults.n < len(KINDS)):
        wait = random.uniform(*every)
        if stop.wait(wait):
            return
        e = faults.inject()
        log("fault %d %s at %.1f s: %s" % (faults.n, e["kind"], e["t"], e["detail"]))


def settle(cluster, client):
    """After the last fault: close every breaker, wait until each replica answers /readyz."""
    for b in ("kms", "hsm", "local"):
        for _ in range(20):
            s, _, _ = client.call(cluster.live_bases()[0], "POST",
                                  "/v1/admin/backends/%s/circuit:close" % b)
            if s == 200:
                break
            time.sleep(0.5)
    for base in cluster.live_bases():
        for _ in range(60):
            s, _, _ = client.call(base, "GET", "/readyz")
            if s == 200:
                break
            time.sleep(1)


def read_back(load):
    """Every cell: its latest version, then every acknowledged version, each read retried
    through 5xx and connection failures; the model checks each answer."""
    cells = list(load.model.cells.values())
    lock = threading.Lock()
    stats = {"reads": 0, "unanswered": 0}

    def read(c, cell, version):
        for attempt in range(30):
            base = random.choice(load.cluster.live_bases())
            outcome, _ = load._get(c, base, cell, version)
            if outcome in ("ok", "not_found"):
                with lock:
                    stats["reads"] += 1
                return
            time.sleep(min(0.2 * (attempt + 1), 2))
        with lock:
            stats["unanswered"] += 1
        load.model.violation("unanswered", "%s/%s version %s: no answer in the read-back" % (
            cell.account, cell.shard, version))

    def worker(part):
        c = Client(load.cluster.token, 30)
        for cell in part:
            read(c, cell, None)
            for v in sorted({w.version for w in cell.acked}):
                read(c, cell, v)

    n = max(1, load.threads)
    ts = [threading.Thread(target=worker, args=(cells[i::n],)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return stats


def rss_figure(samples, replicas, warmup_s):
    """Growth of each never-restarted replica's RSS: the median of its last 5 samples over
    the median of its first 5 after warm-up."""
    out = {}
    for r in replicas:
        if r.starts != 1:
            continue
        xs = [kib for t, i, starts, kib in samples if i == r.index and t >= warmup_s]
        if len(xs) < 10:
            continue
        first = sorted(xs[:5])[2]
        last = sorted(xs[-5:])[2]
        out["replica-%d" % r.index] = {"after_warmup_kib": first, "end_kib": last,
                                       "growth_pct": round(100.0 * (last - first) / first, 2)}
    return out


def summarize(load, faults_log, ops):
    by_kind, by_code = {}, {}
    for o in ops:
        k = by_kind.setdefault(o[2], {"n": 0, "ok": 0})
        k["n"] += 1
        if o[4] in ("ok", "not_found", "conflict"):
            k["ok"] += 1
        else:
            by_code[o[4]] = by_code.get(o[4], 0) + 1
    return by_kind, by_code


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", help="logs and soak.json (default: $SHARDGATE_TEST_LOG_DIR/soak)")
    ap.add_argument("--ci", action="store_true")
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--rate", type=float, default=None)
    ap.add_argument("--peak-secs", type=float, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--accounts-per-tier", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the PostgreSQL data directory")
    a = ap.parse_args()
    if a.ci:
        a.duration = min(a.duration, 60)
        a.rate = a.rate or 25
    threads = a.threads or (6 if a.ci else 16)
    per_tier = a.accounts_per_tier or (4 if a.ci else 12)
    every = (7.0, 9.0) if a.ci else (20.0, 30.0)
    if not a.out:
        if not os.environ.get("SHARDGATE_TEST_LOG_DIR"):
            raise SystemExit("--out DIR, or run it through scripts/test.sh --run")
        a.out = os.path.join(os.environ["SHARDGATE_TEST_LOG_DIR"], "soak")
    os.makedirs(a.out, exist_ok=True)
    # A SIGTERM (CI's time budget) still stops the cluster: PostgreSQL runs detached.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = os.path.abspath(a.out)

    log("checker self-test: caught %s" % ", ".join(soak_check.self_test()))
    log("starting the cluster (PostgreSQL, moto, SoftHSM2, 3 replicas) in %s" % work)
    cluster = Cluster(a.bin, work, 3, pool_size=4, refresh_ms=500 if a.ci else 2000)
    report = {"mode": "ci" if a.ci else "bench", "threads": threads,
              "accounts": per_tier * 3, "fault_every_s": list(every)}
    ok = False
    try:
        load = Load(cluster, per_tier, threads)
        load.setup()
        if a.rate is None:
            log("peak: closed loop, %d threads, %.0f s, no faults" % (threads, a.peak_secs))
            peak = load.run(a.peak_secs)
            a.rate = round(0.7 * peak, 1)
            report["peak_ops_per_s"] = round(peak, 1)
            log("peak %.1f ops/s; the soak runs at %.1f ops/s" % (peak, a.rate))
        report["rate_ops_per_s"] = a.rate
        n_before = len(load.ops)
        load.t_start = time.monotonic()
        with load.ops_lock:
            del load.ops[:n_before]
        faults = Faults(cluster, load.t_start)
        stop = threading.Event()
        jobs, rss = [], []
        helpers = [threading.Thread(target=f, args=args, daemon=True) for f, args in [
            (migrations, (load, stop, 10 if a.ci else 30, jobs)),
            (sample_rss, (cluster, stop, rss, load.t_start)),
            (progress, (load, faults, stop, a.duration)),
        ]]
        for h in helpers:
            h.start()
        runner = threading.Thread(target=load.run, args=(10 ** 6, a.rate), daemon=True)
        load.stop_at = time.monotonic() + 10 ** 6
        runner.start()
        fault_loop(faults, stop, load.t_start + a.duration, every, need_all=a.ci)
        # A quiet stretch after the last fault, so its recovery is measured too.
        time.sleep(10)
        load.stop_at = 0
        runner.join()
        stop.set()
        ran_s = time.monotonic() - load.t_start
        log("load stopped after %.0f s; settling, then reading everything back" % ran_s)
        settle(cluster, Client(cluster.token, 30))
        back = read_back(load)
        load.model.final_cas_check()
        rc, verify_out = cluster.audit_verify()
        ops = list(load.ops)
        by_kind, by_code = summarize(load, faults.log, ops)
        kinds_seen = sorted({f["kind"] for f in faults.log})
        report.update({
            "ran_s": round(ran_s, 1),
            "ops": len(ops),
            "ops_per_s": round(len(ops) / ran_s, 1),
            "by_kind": by_kind,
            "errors_by_code": by_code,
            "model": load.model.counts(),
            "read_back": back,
            "violations": {k: {"count": len(v), "first": v[:10]}
                           for k, v in load.model.violations.items()},
            "faults": recovery(faults.log, ops),
            "fault_kinds": kinds_seen,
            "migration_jobs": jobs,
            "cas_races": {"%d acknowledged" % k: v for k, v in sorted(load.cas_races.items())},
            "audit_verify": {"exit": rc, "output": verify_out},
            "replica_starts": {"replica-%d" % r.index: r.starts for r in cluster.replicas},
        })
        if not a.ci:
            report["rss"] = rss_figure(rss, cluster.replicas, warmup_s=min(120, a.duration / 5))
            report["rss_samples"] = rss
        failures = []
        if load.model.violations:
            failures.append("violations: %s" % {k: len(v) for k, v in
                                                 load.model.violations.items()})
        if rc != 0:
            failures.append("audit verify exited %d" % rc)
        if any(not f["ok"] for f in faults.log):
            failures.append("a fault could not be injected")
        if a.ci and kinds_seen != sorted(KINDS):
            failures.append("fault kinds seen: %s" % kinds_seen)
        if not jobs:
            failures.append("no migration job ran")
        if not load.cas_races:
            failures.append("no CAS race ran")
        report["failures"] = failures
        ok = not failures
    finally:
        with open(os.path.join(work, "soak.json"), "w") as f:
            json.dump(report, f, indent=1)
        cluster.stop(keep=a.keep)
    for line in report_lines(report):
        log(line)
    if not ok:
        log("FAILED: %s" % "; ".join(report.get("failures") or ["the soak did not finish"]))
        sys.exit(1)
    log("OK")


def report_lines(r):
    if "ops" not in r:
        return []
    lines = ["%d ops in %.0f s (%.1f/s at a target of %s/s), %d faults" % (
        r["ops"], r["ran_s"], r["ops_per_s"], r["rate_ops_per_s"], len(r["faults"]))]
    lines.append("model: %s; read-back: %s" % (r["model"], r["read_back"]))
    lines.append("errors by code: %s" % r["errors_by_code"])
    lines.append("CAS races (two writers on one expected_version): %s; migration jobs: %s" % (
        r["cas_races"], [(j["state"], j.get("done"), j.get("total")) for j in
                         r["migration_jobs"]]))
    for f in r["faults"]:
        lines.append("  %-13s at %6.1f s: %4d errors, recovered in %5.2f s (%d later), slowest "
                     "ok %5.2f s  (%s)" % (f["kind"], f["t"], f["errors"], f["recovery_s"],
                                           f["later_errors"], f["slowest_ok_s"],
                                           f["detail"][:120]))
    lines.append("violations: %s" % ({k: v["count"] for k, v in r["violations"].items()} or 0))
    lines.append("audit verify: exit %d" % r["audit_verify"]["exit"])
    if "rss" in r:
        lines.append("RSS (never restarted): %s" % r["rss"])
    return lines


if __name__ == "__main__":
    main()
