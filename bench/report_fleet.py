"""Sections 14 and 15 of BENCHMARKS.md (scripts/bench.sh --only fleet, issue 30): critical GETs
beside a bulk flood, from results/priority/ (bench/priority.py summary wrote priority.json);
how long a policy apply takes to reach the other replicas, from results/converge/
(bench/converge.py). Imported by bench/report.py; measures nothing itself."""

import json
import os

PRIORITY_PREFIX = "priority under overload"
PRIORITY_HEADING = "## 14. Priority under overload"
CONVERGENCE_PREFIX = "policy convergence"
CONVERGENCE_HEADING = "## 15. Policy convergence across replicas"


def _f(v, d=1):
    return "n/a" if v is None else ("%." + str(d) + "f") % v


def _codes(o):
    if not o:
        return "n/a"
    parts = ["%s: %d" % (k, v) for k, v in sorted(o["codes"].items())]
    if o["errors"]:
        parts += ["%s: %d" % (k, v) for k, v in sorted(o["error_kinds"].items())]
    return ", ".join(parts) or "none"


def _load(res, sub, name):
    """results/SUB/NAME with its `cmd` file's text as "cmd", or None when it was not run."""
    d = os.path.join(res, sub)
    path = os.path.join(d, name)
    if not os.path.exists(path):
        return None
    fig = json.load(open(path))
    cmd_path = os.path.join(d, "cmd")
    fig["cmd"] = open(cmd_path).read().strip() if os.path.exists(cmd_path) else ""
    return fig


def priority_report(res, machine):
    """(goals, figures, md lines) of section 14, or None when it was not run."""
    fig = _load(res, "priority", "priority.json")
    if fig is None:
        return None
    cmd = fig["cmd"]
    rounds = fig["rounds"]
    crit_errors = sum((r["flooded"] or {}).get("not_ok", 0) for r in rounds)
    flood_timeouts = sum((r["flood"] or {}).get("errors", 0) for r in rounds)
    ra = [r["retry_after"] for r in rounds if r.get("retry_after")]
    shed = sum(x["shed"] for x in ra)
    shed_ra = sum(x["shed_with_retry_after"] for x in ra)
    m = fig.get("median_ratio")
    goals = [
        {"id": "priority_critical_p99", "unit": "x", "goal": "<= 2x", "measured": m,
         "met": None if m is None else m <= 2,
         "figure": PRIORITY_PREFIX + ": critical GET p99 beside a bulk flood at 10x capacity vs alone"},
        {"id": "priority_critical_errors", "unit": "", "goal": "0", "measured": crit_errors,
         "met": crit_errors == 0, "figure": PRIORITY_PREFIX + ": critical GETs not answered 200 beside the flood"},
        {"id": "priority_bulk_timeouts", "unit": "", "goal": "0", "measured": flood_timeouts,
         "met": flood_timeouts == 0 and shed_ra == shed,
         "figure": PRIORITY_PREFIX + ": bulk requests that timed out or failed without a status "
                                     "(every shed one carries Retry-After)"},
    ]
    o = [PRIORITY_HEADING, "",
         "Two tiers on the `kms-nocache` backend (every GET is a KMS Decrypt on moto): `bench-crit` of class "
         "`critical` and `bench-bulk` of class `bulk`, applied live (`PUT /v1/admin/policy`), %s accounts each; "
         "the gateway restarted with a bulkhead of %s slots and a queue of %s (`reserve_pct` 25: bulk may hold "
         "half the slots). Capacity C = **%s req/s** (critical GETs, closed loop). Per round: critical GETs alone "
         "at C/10 (oha open loop, 4 connections, latency-corrected), then the same beside a bulk flood offered "
         "at 10 x C (oha open loop, %s connections); then the control: the same flooded windows with the "
         "classes removed (everything `standard`). The load generators, moto, PostgreSQL and the gateway share "
         "the machine's %s cores: what bounds the flooded p99 is CPU, not admission." % (
             machine.get("priority_accounts", "200"), machine.get("priority_slots", "8"),
             machine.get("priority_queue", "64"), _f(fig.get("capacity_rps"), 0),
             machine.get("priority_flood_conns", "64"), machine.get("nproc", "n/a")), "",
         "| round | critical p99 alone | beside the flood | ratio | critical codes flooded | bulk flood req/s "
         "achieved, codes | without classes: critical p99, codes |",
         "|---|---|---|---|---|---|---|"]
    for r in rounds:
        a, f, fl, n = r["alone"] or {}, r["flooded"] or {}, r["flood"] or {}, r["noclass"]
        o.append("| %d | %s ms | %s ms | %s | %s | %s (%s) | %s |" % (
            r["round"], _f(a.get("p99_ms"), 2), _f(f.get("p99_ms"), 2),
            "n/a" if r["ratio"] is None else "%.2fx" % r["ratio"], _codes(f), _f(fl.get("rps"), 0), _codes(fl),
            "n/a" if not n else "%s ms, %s" % (_f(n["p99_ms"], 2), _codes(n))))
    o += ["", "Median ratio: **%s** (goal <= 2x). Sampled during the floods: %d bulk GETs answered 503, %d of them "
          "with a `Retry-After` of at least 1 s. Requests oha cancels when its `-z` window ends (\"aborted due to "
          "deadline\") are the load generator's cut, not counted. The control column is what the same flood does "
          "without classes: critical GETs share the queue with bulk ones and most are shed." % (
              "n/a" if m is None else "%.2fx" % m, shed, shed_ra), "",
          "```sh", "scripts/bench.sh --only fleet", cmd, "```", ""]
    return goals, fig, o


def convergence_report(res, machine):
    """(goals, figures, md lines) of section 15, or None when it was not run."""
    fig = _load(res, "converge", "converge.json")
    if fig is None:
        return None
    cmd = fig["cmd"]
    goals = [{"id": "convergence_all", "unit": " ms", "goal": "reported", "measured": fig.get("median_all_ms"),
              "met": None, "figure": CONVERGENCE_PREFIX + ": a policy apply served by all 3 replicas, median "
                                     "(refresh_ms 2,000)"}]
    o = [CONVERGENCE_HEADING, "",
         "Three gateway processes on one PostgreSQL database at the default `[policy] refresh_ms` = 2,000: the "
         "bench's gateway and two more started beside it (`bench/converge.py`). %d policy applies through the "
         "first (a tier no account is in, added then removed), a random 0-1 s apart; each other replica's "
         "`/readyz` polled every 5 ms until it reports the new `policy_version`. The applying replica serves "
         "the new version at once (it adopts what it commits); the others within one poll interval, as the "
         "design says: this is a figure, not an assertion in any test." % len(fig.get("applies", [])), "",
         "| | median | p90 | max |", "|---|---|---|---|",
         "| one other replica serves it | %s ms | %s ms | %s ms |" % (
             _f(fig.get("median_ms"), 0), _f(fig.get("p90_ms"), 0), _f(fig.get("max_ms"), 0)),
         "| all replicas serve it (per apply, the slower of the two) | %s ms | | |" % _f(fig.get("median_all_ms"), 0),
         "", "```sh", "scripts/bench.sh --only fleet", cmd, "```", ""]
    return goals, fig, o
