#!/usr/bin/env python3
"""Helper of scripts/bench.sh --only priority (section 14, issue 30 item 3).

    SG_TOKEN=... priority.py --base URL classes on|off BACKEND
        apply (PUT /v1/admin/policy) the served policy plus tiers bench-crit and bench-bulk on
        BACKEND, with priority classes critical / bulk ("on") or none ("off"); prints the
        apply's answer
    SG_TOKEN=... priority.py --base URL retry-after URL N
        N GETs of URL (while a flood runs): how many answered 503, and how many of those
        carried a Retry-After of at least 1 s; one JSON object
    priority.py summary DIR ROUNDS
        the figures of DIR's oha results (capacity, alone-rR, flooded-rR, flood-rR,
        noclass-rR, noclass-flood-rR): DIR/priority.json and one line per round
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import urllib.parse

TIERS = {"bench-crit": "critical", "bench-bulk": "bulk"}


def call(base, method, path, body=None):
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    headers = {"Authorization": "Bearer " + os.environ["SG_TOKEN"], "Content-Type": "application/json"}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    r = conn.getresponse()
    data = r.read()
    retry_after = r.getheader("Retry-After")
    conn.close()
    return r.status, data, retry_after


def classes(base, on, backend):
    status, data, _ = call(base, "GET", "/v1/admin/policy")
    if status != 200:
        raise SystemExit("GET /v1/admin/policy: %d %s" % (status, data[:200]))
    policy = json.loads(data)["policy"]
    for tier in TIERS:
        policy["tiers"][tier] = backend
    prios = policy.setdefault("priorities", {})
    for tier, cls in TIERS.items():
        if on:
            prios[tier] = cls
        else:
            prios.pop(tier, None)
    status, data, _ = call(base, "PUT", "/v1/admin/policy", {"policy": policy})
    if status != 200:
        raise SystemExit("PUT /v1/admin/policy: %d %s" % (status, data[:300]))
    print(data.decode())


def retry_after(base, url, n):
    path = urllib.parse.urlsplit(url).path
    shed = with_header = 0
    codes = {}
    for _ in range(n):
        status, _, ra = call(base, "GET", path)
        codes[str(status)] = codes.get(str(status), 0) + 1
        if status == 503:
            shed += 1
            if ra is not None and ra.isdigit() and int(ra) >= 1:
                with_header += 1
    print(json.dumps({"sent": n, "codes": codes, "shed": shed, "shed_with_retry_after": with_header}))


def oha(d, name):
    path = os.path.join(d, name + ".json")
    if not os.path.exists(path):
        return None
    j = json.load(open(path))
    p = j.get("latencyPercentiles") or {}
    codes = j.get("statusCodeDistribution") or {}
    # oha -z ends its window by cancelling the requests still in flight ("aborted due to
    # deadline"): the load generator's cut, not an answer of the gateway.
    cut = {k: v for k, v in (j.get("errorDistribution") or {}).items() if "aborted due to deadline" in k}
    errors = {k: v for k, v in (j.get("errorDistribution") or {}).items() if k not in cut}
    return {"p50_ms": (p.get("p50") or 0) * 1e3, "p99_ms": (p.get("p99") or 0) * 1e3,
            "rps": (j.get("summary") or {}).get("requestsPerSec"), "codes": codes,
            "errors": sum(errors.values()), "error_kinds": errors, "cut_at_window_end": sum(cut.values()),
            "not_ok": sum(v for k, v in codes.items() if k != "200") + sum(errors.values())}


def summary(d, rounds):
    cap = oha(d, "capacity")
    out = {"capacity_rps": cap and cap["rps"], "rounds": []}
    for r in range(1, rounds + 1):
        row = {"round": r}
        for name in ("alone", "flooded", "flood", "noclass", "noclass-flood"):
            row[name] = oha(d, "%s-r%d" % (name, r))
        ra = os.path.join(d, "retry-after-r%d.json" % r)
        row["retry_after"] = json.load(open(ra)) if os.path.exists(ra) else None
        a, f, n = row["alone"], row["flooded"], row["noclass"]
        row["ratio"] = f["p99_ms"] / a["p99_ms"] if a and f and a["p99_ms"] else None
        row["noclass_ratio"] = n["p99_ms"] / a["p99_ms"] if a and n and a["p99_ms"] else None
        out["rounds"].append(row)
        print("[bench] priority r%d: critical p99 %.2f ms alone, %.2f ms beside the bulk flood (%.2fx, %d not ok); "
              "without classes %s; bulk flood %s" % (
                  r, a["p99_ms"], f["p99_ms"], row["ratio"] or 0, f["not_ok"],
                  "n/a" if not n else "%.2f ms p99, %d not ok" % (n["p99_ms"], n["not_ok"]),
                  row["flood"] and row["flood"]["codes"]))
    ratios = [x["ratio"] for x in out["rounds"] if x["ratio"]]
    out["median_ratio"] = statistics.median(ratios) if ratios else None
    json.dump(out, open(os.path.join(d, "priority.json"), "w"), indent=1)
    print("[bench] priority: critical p99 beside a bulk flood / alone, median of %d round(s): %s (goal <= 2x)" % (
        len(ratios), "n/a" if out["median_ratio"] is None else "%.2fx" % out["median_ratio"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base")
    ap.add_argument("what", choices=["classes", "retry-after", "summary"])
    ap.add_argument("args", nargs="*")
    a = ap.parse_args()
    if a.what == "classes":
        classes(a.base, a.args[0] == "on", a.args[1])
    elif a.what == "retry-after":
        retry_after(a.base, a.args[0], int(a.args[1]))
    else:
        summary(a.args[0], int(a.args[1]))


if __name__ == "__main__":
    sys.exit(main())
