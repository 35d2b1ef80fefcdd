"""Section 16 of BENCHMARKS.md (scripts/bench.sh --only soak, issue 30): the chaos soak, from
results/soak/soak.json (bench/soak.py). Imported by bench/report.py; measures nothing itself."""

import json
import os

SOAK_PREFIX = "chaos soak"
SOAK_HEADING = "## 16. Chaos soak"


def _violations(r, *kinds):
    return sum(r["violations"].get(k, {}).get("count", 0) for k in kinds)


def soak_report(res, machine):
    path = os.path.join(res, "soak", "soak.json")
    if not os.path.exists(path):
        return None
    r = json.load(open(path))
    if "ops" not in r:
        raise SystemExit("the soak did not finish: %s" % path)
    cmd_path = os.path.join(res, "soak", "cmd")
    cmd = open(cmd_path).read().strip() if os.path.exists(cmd_path) else ""
    rss = r.get("rss") or {}
    growth = max((v["growth_pct"] for v in rss.values()), default=None)

    def goal(gid, figure, goal_text, measured, met, unit=""):
        return {"id": "soak_" + gid, "figure": "%s: %s" % (SOAK_PREFIX, figure),
                "goal": goal_text, "measured": measured, "unit": unit, "met": met}

    lost = _violations(r, "lost", "unanswered")
    stale = _violations(r, "stale", "foreign")
    cas = _violations(r, "cas")
    gone = _violations(r, "deleted")
    goals = [
        goal("lost", "acknowledged writes lost", "0", lost, lost == 0),
        goal("stale", "reads older than the last acknowledged version, or of bytes never "
             "written", "0", stale, stale == 0),
        goal("cas", "CAS violations (two writers acknowledged on one expected_version)", "0",
             cas, cas == 0),
        goal("deleted", "deleted versions read back", "0", gone, gone == 0),
        goal("audit", "audit chains that do not verify after the soak", "0",
             0 if r["audit_verify"]["exit"] == 0 else 1, r["audit_verify"]["exit"] == 0),
        goal("rss", "RSS growth after warm-up, replicas never restarted (largest)", "< 10%",
             growth, growth is not None and growth < 10, "%"),
    ]
    section = [SOAK_HEADING, "",
               "Three replicas on a private PostgreSQL cluster and a private moto_server, tiers "
               "on local, pkcs11 (SoftHSM2) and aws-kms, %d accounts; %d client threads at %s "
               "ops/s (70%% of the %s ops/s peak measured first, closed loop), for %.0f s; one "
               "fault every %s s in rotation; a migration job every 30 s. How each fault is "
               "made: bench/soak_faults.py." % (
                   r["accounts"], r["threads"], r["rate_ops_per_s"],
                   r.get("peak_ops_per_s", "n/a"), r["ran_s"],
                   "-".join("%.0f" % x for x in r["fault_every_s"])), "",
               "Command: `%s`" % cmd, "",
               "| figure | value |", "|---|---|",
               "| operations (ops/s achieved) | %d (%.1f/s) |" % (r["ops"], r["ops_per_s"]),
               "| writes attempted / acknowledged | %d / %d |" % (
                   r["model"]["writes_attempted"], r["model"]["writes_acknowledged"]),
               "| cells deleted | %d |" % r["model"]["cells_deleted"],
               "| reads in the final read-back | %d |" % r["read_back"]["reads"],
               "| violations | %s |" % (", ".join("%s: %d" % (k, v["count"]) for k, v in
                                                  r["violations"].items()) or "none"),
               "| audit verify | exit %d |" % r["audit_verify"]["exit"],
               "| CAS races: two writers on one expected_version (writers acknowledged: races) | %s |" % (
                   ", ".join("%s: %d" % kv for kv in sorted(r.get("cas_races", {}).items())) or "none"),
               "| migration jobs (state: count; versions re-wrapped) | %s; %d |" % (
                   _jobs(r["migration_jobs"]), sum(j.get("done") or 0 for j in r["migration_jobs"])),
               "| errors by code (all faults) | %s |" % (", ".join(
                   "%s: %d" % kv for kv in sorted(r["errors_by_code"].items())) or "none"),
               "| RSS after warm-up -> end (never restarted) | %s |" % (", ".join(
                   "%s %.1f -> %.1f MB (%+.1f%%)" % (k, v["after_warmup_kib"] / 1024,
                                                     v["end_kib"] / 1024, v["growth_pct"])
                   for k, v in sorted(rss.items())) or "n/a"),
               "", "Operations by kind (answered as expected / sent): " + ", ".join(
                   "%s %d/%d" % (k, v["ok"], v["n"]) for k, v in sorted(r["by_kind"].items())),
               "", "Each fault: the operations that failed between it and the next one (by their "
               "end), the recovery time (from the fault's start, its own duration included, to "
               "the end of the last failure of the burst it caused: failures less than 3 s "
               "apart), the failures after that burst (background, not this fault's), and the "
               "slowest successful operation:", "",
               "| at (s) | fault | errors | recovery (s) | later errors | slowest ok (s) | codes |",
               "|---|---|---|---|---|---|---|"]
    for f in r["faults"]:
        section.append("| %.1f | %s: %s | %d | %.2f | %d | %.2f | %s |" % (
            f["t"], f["kind"], f["detail"], f["errors"], f["recovery_s"],
            f.get("later_errors", 0), f["slowest_ok_s"],
            ", ".join("%s %d" % kv for kv in sorted(f["error_codes"].items())) or "-"))
    section.append("")
    figures = {k: r[k] for k in ("ops", "ops_per_s", "rate_ops_per_s", "model", "violations",
                                 "errors_by_code", "faults", "rss") if k in r}
    return goals, figures, section


def _jobs(jobs):
    out = {}
    for j in jobs:
        out[j["state"]] = out.get(j["state"], 0) + 1
    return ", ".join("%s: %d" % kv for kv in sorted(out.items())) or "none"
