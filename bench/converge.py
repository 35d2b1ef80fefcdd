#!/usr/bin/env python3
"""Helper of scripts/bench.sh --only fleet (section 15, issue 30 item 1): how long a policy
version applied through one replica takes to be served by the others.

    SG_TOKEN=... converge.py --base URL --bin SHARDGATE --config CFG --log-dir DIR \\
        --replicas 3 --applies 20 > converge.json

Starts replicas 2..N (`shardgate serve --config CFG`, no SHARDGATE_* variable inherited) beside
the running gateway at --base (replica 1), then --applies times: PUT /v1/admin/policy through
replica 1 (the served policy with the tier `bench-converge` added, then removed, in turn: a
tier no account is in), and polls every other replica's /readyz every 5 ms until it reports
the new `policy_version`. A random pause of 0-1 s between applies spreads them over the
replicas' polling phase. Prints one JSON object: every apply's convergence time per replica
(ms from the PUT's answer), their median, p90 and maximum, and stops the replicas it started.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from priority import call  # noqa: E402  (bench/priority.py: one authenticated request)


def start_replica(binary, config, log_dir, i):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDGATE_")}
    env["RUST_LOG"] = "warn"
    err = open(os.path.join(log_dir, "gateway-converge-%d.stderr" % i), "w")
    p = subprocess.Popen([binary, "serve", "--config", config], stdout=subprocess.PIPE,
                         stderr=err, stdin=subprocess.DEVNULL, env=env, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        if line.startswith("shardgate listening on "):
            return p, line.split("shardgate listening on ", 1)[1].strip()
    p.kill()
    raise SystemExit("replica %d did not start (log: %s)" % (i, err.name))


def served_version(base):
    status, data, _ = call(base, "GET", "/readyz")
    return json.loads(data).get("policy_version") if status == 200 else None


def apply_toggle(base, i):
    status, data, _ = call(base, "GET", "/v1/admin/policy")
    policy = json.loads(data)["policy"]
    if i % 2 == 0:
        policy["tiers"]["bench-converge"] = "local"
    else:
        policy["tiers"].pop("bench-converge", None)
    status, data, _ = call(base, "PUT", "/v1/admin/policy", {"policy": policy})
    if status != 200:
        raise SystemExit("PUT /v1/admin/policy: %d %s" % (status, data[:300]))
    return json.loads(data)["version"]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--applies", type=int, default=20)
    a = ap.parse_args()
    started = [start_replica(a.bin, a.config, a.log_dir, i) for i in range(2, a.replicas + 1)]
    try:
        applies = []
        for i in range(a.applies):
            time.sleep(random.random())
            version = apply_toggle(a.base, i)
            t0 = time.monotonic()
            took = []
            for _, base in started:
                while (served_version(base) or 0) < version:
                    if time.monotonic() - t0 > 60:
                        raise SystemExit("replica %s never served version %d" % (base, version))
                    time.sleep(0.005)
                took.append((time.monotonic() - t0) * 1e3)
            applies.append({"version": version, "ms": took})
            print("[bench] convergence: version %d served by %d other replica(s) after %s ms" % (
                version, len(took), ", ".join("%.0f" % t for t in took)), file=sys.stderr)
        every = [t for x in applies for t in x["ms"]]
        slowest = [max(x["ms"]) for x in applies]
        print(json.dumps({"replicas": a.replicas, "applies": applies,
                          "median_ms": statistics.median(every), "p90_ms": pct(every, 0.9),
                          "max_ms": max(every), "median_all_ms": statistics.median(slowest)}, indent=1))
    finally:
        for p, _ in started:
            p.terminate()
        for p, _ in started:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
