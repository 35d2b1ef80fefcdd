"""The audit-archive sections of BENCHMARKS.md/json (issue 28), read from results/archive/
(section 12: scripts/bench.sh --only archive, and `all`) and results/growth/ (section 13:
--only growth). report.py calls archive_report / growth_report and merges them."""

import glob
import json
import os

ARCHIVE_PREFIX = "audit archiver"
ARCHIVE_HEADING = "## 12. Audit archiver"
GROWTH_PREFIX = "audit growth"
GROWTH_HEADING = "## 13. Audit growth"


def _j(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _t(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _med(vals):
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return None
    n = len(vals)
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def _f(v, d=1):
    return "n/a" if v is None else "{:,.{}f}".format(v, d)


def _ratio(a, b):
    return None if a is None or not b else a / b


def _goal(gid, figure, goal, measured, ok):
    return {"id": gid, "unit": "x", "goal": goal, "measured": measured,
            "met": None if measured is None else ok(measured), "figure": figure}


def _p(oha, q):
    v = ((oha or {}).get("latencyPercentiles") or {}).get(q)
    return None if v is None else v * 1e3


def _ckpts(d, w, i):
    """Checkpoints PostgreSQL made during a p99 window, or None when not recorded."""
    a = _j(os.path.join(d, "p99-%s-r%d.db-before.json" % (w, i)))
    b = _j(os.path.join(d, "p99-%s-r%d.db-after.json" % (w, i)))
    if not a or not b:
        return None
    return b["checkpoints"] - a["checkpoints"]


def _autovac(d, w, i):
    """Autovacuum workers running at a p99 window's end, or None when not recorded."""
    b = _j(os.path.join(d, "p99-%s-r%d.db-after.json" % (w, i)))
    return None if not b else b["autovacuum_workers"]


def _n(v):
    return "n/a" if v is None else str(v)


def archive_report(res, machine):
    """(goals, figures, md lines) of section 12, or None when it was not run."""
    d = os.path.join(res, "archive")
    passes = sorted(glob.glob(os.path.join(d, "pass-r*.json")))
    if not passes:
        return None
    rounds = []
    for i in range(1, len(passes) + 1):
        raw = _j(os.path.join(d, "raw-r%d.json" % i)) or {}
        arc = _j(os.path.join(d, "pass-r%d.json" % i)) or {}
        fill = _j(os.path.join(d, "fill-r%d.json" % i)) or {}
        off = _j(os.path.join(d, "p99-off-r%d.json" % i))
        on = _j(os.path.join(d, "p99-on-r%d.json" % i))
        full = _j(os.path.join(d, "p99-full-r%d.json" % i))
        rounds.append({
            "filled": fill.get("events"), "fill_per_sec": fill.get("per_sec"),
            "raw_events": raw.get("events"), "raw_per_sec": raw.get("per_sec"),
            "archived_events": arc.get("events"), "archive_per_sec": arc.get("per_sec"),
            "segments": arc.get("segments"), "bytes": arc.get("bytes"),
            "ratio": _ratio(arc.get("per_sec"), raw.get("per_sec")),
            "p99_off_ms": _p(off, "p99"), "p99_on_ms": _p(on, "p99"),
            "p50_off_ms": _p(off, "p50"), "p50_on_ms": _p(on, "p50"),
            "p99_full_ms": _p(full, "p99"), "p50_full_ms": _p(full, "p50"),
            "p99_ratio": _ratio(_p(on, "p99"), _p(off, "p99")),
            "p99_full_ratio": _ratio(_p(full, "p99"), _p(off, "p99")),
            "checkpoints": {w: _ckpts(d, w, i) for w in ("off", "on", "full")},
            "autovacuum_at_end": {w: _autovac(d, w, i) for w in ("off", "on", "full")},
            "archiver_ran_throughout": all(
                _t(os.path.join(d, "p99-%s-r%d.throughout" % (w, i))) == "true" for w in ("on", "full")),
        })
    p99 = _j(os.path.join(d, "p99.json")) or {}
    final = _j(os.path.join(d, "final.json")) or {}
    verify_ok = _t(os.path.join(d, "verify_ok")) == "true"
    tput = _med([r["ratio"] for r in rounds])
    lat = _med([r["p99_ratio"] for r in rounds])
    lat_full = _med([r["p99_full_ratio"] for r in rounds])
    goals = [
        _goal("archive_throughput", ARCHIVE_PREFIX + ": events/s archived vs a raw loop reading the same rows and "
              "PUTting the same compressed bytes to the same (directory) sink", ">= 0.7x", tput, lambda m: m >= 0.7),
        _goal("archive_get_p99", ARCHIVE_PREFIX + ": GET p99 (local, open loop at half the peak) with an archiver "
              "running at its default pace vs none", "<= 1.3x", lat, lambda m: m <= 1.3),
        {"id": "archive_get_p99_unpaced", "unit": "x", "goal": "reported", "measured": lat_full, "met": None,
         "figure": ARCHIVE_PREFIX + ": GET p99 as above with an unpaced archiver (`--rate 0`) vs none"},
    ]
    figures = {"rounds": rounds, "throughput_ratio": tput, "p99_ratio": lat, "p99_unpaced_ratio": lat_full,
               "p99": p99,
               "final_pass": final, "verify_after_kills_ok": verify_ok,
               "cmd_raw": _t(os.path.join(d, "raw.cmd")), "cmd_pass": _t(os.path.join(d, "pass.cmd")),
               "cmd_fill": _t(os.path.join(d, "fill-r1.cmd"))}
    o = [ARCHIVE_HEADING, "",
         "Each round writes a history of events on a chain of its own through the gateway's audit writer "
         "(`shardgate-bench audit-fill`, stamped over the last 60 days, not timed), vacuums, then runs the raw "
         "loop (`shardgate-bench archive-raw`: every chain's rows read page by page as the archiver reads them, "
         "cut into segments of `segment_max_events`/`segment_max_bytes`, zstd-compressed and PUT to a directory "
         "sink; nothing checked, recorded or deleted), then one `shardgate audit archive --older-than 0s` (tags "
         "checked, object + manifest PUT, both read back and checked, segment recorded once the database has "
         "checked its rows in one statement, then its rows deleted in one call; the next segment is prepared meanwhile). The raw loop reads first each round (the archive needs the rows it reads), so the pass "
         "meets warmer caches; both process the same rows (the bench's own GET events included).", "",
         "| round | events | raw loop events/s | archiver events/s | ratio | segments | bytes written |",
         "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rounds, 1):
        o.append("| %d | %s | %s | %s | %s | %s | %s |" % (
            i, _f(r["archived_events"], 0), _f(r["raw_per_sec"], 0), _f(r["archive_per_sec"], 0),
            _f(r["ratio"], 2) + "x" if r["ratio"] else "n/a", r["segments"], _f(r["bytes"], 0)))
    o += ["", "Median ratio: **%sx** (goal >= 0.7x)." % _f(tput, 2), "",
          "GET p99 with an archiver: oha open loop at %s req/s (half of a closed-loop peak of %s req/s), %s s "
          "windows in three kinds: no archiver; a `shardgate audit archive "
          "--older-than 0s` process at the default pace (`rate_per_sec` = %s events/s: events read 2,000 a page, "
          "a segment's rows checked by the database 2,000 a step before its record, covered rows deleted 2,000 a "
          "call, sleeping between steps) and `nice -n 10`, as "
          "docs/audit-archive.md runs it from a timer beside a busy gateway; the same unpaced (`--rate 0`) at "
          "the gateway's priority. Windows without an archiver and with a paced one alternate (the order "
          "reversed every other round); the unpaced windows come after them all, since each leaves a million "
          "deleted rows behind it. Every window starts once no autovacuum worker runs and after a `CHECKPOINT`; "
          "the table gives the checkpoints PostgreSQL made during each window and whether an autovacuum worker "
          "was running at its end. The archivers work through %s events of history (60 days); each pass is killed with -9 "
          "at the window's end, the next adopts what it left. The archiver is a separate process on the same 2 "
          "cores, as the background task would be a task in the gateway's." % (
              _f(p99.get("rate"), 0), _f(p99.get("peak_rps"), 0), machine.get("duration", "10"),
              _f(p99.get("archive_rate"), 0), _f(p99.get("history"), 0)), "",
          "| round | p50 / p99 without | p50 / p99 paced archiver | ratio | p50 / p99 unpaced | ratio | archivers ran "
          "the whole window | checkpoints in the window, autovacuum at its end (without / paced / unpaced) |",
          "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rounds, 1):
        db = " / ".join("%s, %s" % (_n(r["checkpoints"][w]), {None: "n/a", 0: "no"}.get(r["autovacuum_at_end"][w], "yes"))
                        for w in ("off", "on", "full"))
        o.append("| %d | %s / %s ms | %s / %s ms | %s | %s / %s ms | %s | %s | %s |" % (
            i, _f(r["p50_off_ms"], 2), _f(r["p99_off_ms"], 2), _f(r["p50_on_ms"], 2), _f(r["p99_on_ms"], 2),
            _f(r["p99_ratio"], 2) + "x" if r["p99_ratio"] else "n/a", _f(r["p50_full_ms"], 2),
            _f(r["p99_full_ms"], 2), _f(r["p99_full_ratio"], 2) + "x" if r["p99_full_ratio"] else "n/a",
            "yes" if r["archiver_ran_throughout"] else "no", db))
    o += ["", "Median p99 ratio: **%sx** paced (goal <= 1.3x), %sx unpaced. After the killed passes, one more pass archived "
          "%s events (%s segment(s) adopted from the killed ones) and `shardgate audit verify` over both tiers "
          "said %s." % (_f(lat, 2), _f(lat_full, 2), _f(final.get("events"), 0), final.get("adopted", "n/a"),
                        "OK" if verify_ok else "**BROKEN**"), "",
          "```sh", figures["cmd_fill"] or "", figures["cmd_raw"] or "", figures["cmd_pass"] or "", "```", ""]
    return goals, figures, o


def growth_report(res, machine):
    """(goals, figures, md lines) of section 13, or None when it was not run."""
    d = os.path.join(res, "growth")
    passed = _j(os.path.join(d, "pass.json"))
    if not passed:
        return None
    runs = {}
    for path in glob.glob(os.path.join(res, "runs", "growth-*-get-local-r*", "wrk.out")):
        name = os.path.basename(os.path.dirname(path))
        which, rnd = name.split("-")[1], int(name.rsplit("-r", 1)[1])
        line = next((l for l in open(path) if l.startswith("SGJSON ")), None)
        if line:
            w = json.loads(line[7:])
            runs.setdefault(rnd, {})[which] = w["requests"] / (w["duration_us"] / 1e6)
    rounds = [dict(r=k, **v, ratio=_ratio(v.get("grown"), v.get("fresh"))) for k, v in sorted(runs.items())]
    ratio = _med([r["ratio"] for r in rounds])
    fill = _j(os.path.join(d, "fill.json")) or {}

    def num(name):
        v = _t(os.path.join(d, name))
        return int(v) if v and v.isdigit() else None

    fig = {"rounds": rounds, "ratio": ratio, "fill": fill, "pass": passed,
           "rows_before": num("rows_before"), "rows_after": num("rows_after"),
           "bytes_before": num("bytes_before"), "bytes_after": num("bytes_after"),
           "segments": num("segments"), "archive_bytes": num("archive_bytes"),
           "rows_older_than_hot_days": num("rows_older_than_hot"),
           "cmd_fill": _t(os.path.join(d, "fill.cmd")), "cmd_pass": _t(os.path.join(d, "pass.cmd"))}
    goals = [_goal("growth_get", GROWTH_PREFIX + ": GET req/s (local) with %s audit events of history, all but "
                   "the last 30 days archived, vs a fresh database" % _f(fill.get("events"), 0),
                   ">= 0.9x", ratio, lambda m: m >= 0.9)]
    mb = (lambda b: None if b is None else b / 1048576)
    o = [GROWTH_HEADING, "",
         "A database whose audit trail holds %s events stamped evenly over the last %s days (written through "
         "the gateway's audit writer by `shardgate-bench audit-fill` in %s s, %s events/s), archived by one "
         "`shardgate audit archive --rate 0` (unpaced) at the default `hot_days = 30` to the directory sink, then `VACUUM "
         "(ANALYZE)`; against it, a fresh database holding the same data set (1 shard per account, loaded over "
         "HTTP). One gateway process at a time, the order alternating by round, a warm-up before each." % (
             _f(fill.get("events"), 0), machine.get("growth_span_days", "n/a"),
             _f(fill.get("seconds"), 0), _f(fill.get("per_sec"), 0)), "",
         "| round | fresh GET req/s | grown GET req/s | ratio |", "|---|---|---|---|"]
    for r in rounds:
        o.append("| %d | %s | %s | %s |" % (r["r"], _f(r.get("fresh"), 0), _f(r.get("grown"), 0),
                                            _f(r["ratio"], 2) + "x" if r["ratio"] else "n/a"))
    o += ["", "Median ratio: **%sx** (goal >= 0.9x)." % _f(ratio, 2), "",
          "Archiving took **%s s** (%s events/s; at the default pace of 20,000 events/s it would take "
          "events / 20,000 s): %s events in %s segments, %s MB written. The hot table went "
          "from %s rows (%s MB) to %s rows (%s MB after VACUUM: PostgreSQL keeps the pages and reuses them, so "
          "the table stops growing once `hot_days` of traffic fills it); %s rows older than 30 days stayed hot "
          "(after the first younger event of a chain, which the archiver never passes)." % (
              _f(passed.get("seconds"), 0), _f(passed.get("per_sec"), 0), _f(passed.get("events"), 0),
              fig["segments"], _f(mb(fig["archive_bytes"]), 1), _f(fig["rows_before"], 0),
              _f(mb(fig["bytes_before"]), 1), _f(fig["rows_after"], 0), _f(mb(fig["bytes_after"]), 1),
              _f(fig["rows_older_than_hot_days"], 0)), "",
          "```sh", "scripts/bench.sh --only growth", fig["cmd_fill"] or "", fig["cmd_pass"] or "", "```", ""]
    return goals, fig, o


def previous_section(md_lines, heading):
    """The lines of `heading`'s section in an existing BENCHMARKS.md (to carry it over)."""
    start = next((i for i, l in enumerate(md_lines) if l.startswith(heading)), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(md_lines)) if md_lines[i].startswith("## ")), len(md_lines))
    return md_lines[start:end]
