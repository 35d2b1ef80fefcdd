#!/usr/bin/env python3
"""Migration-job helper of scripts/bench.sh (HTTP API, scope admin). Prints JSON on stdout.

    SG_TOKEN=... migrate.py --base URL tier ACCOUNT TIER     PUT the account's tier; prints the
                                                             answer (with `migration_job`)
    SG_TOKEN=... migrate.py --base URL state JOB             GET /v1/admin/migrations/JOB
    SG_TOKEN=... migrate.py --base URL pause|resume|cancel JOB
    SG_TOKEN=... migrate.py --base URL run ACCOUNT TIER [--poll-ms 100] [--timeout S]
        the throughput figure: PUT the tier (which starts the job), then poll the job until it
        is settled; prints {"job", "state", "total", "done", "failed", "skipped", "seconds",
        "per_sec", "put_seconds", "job_clock_seconds"}. `seconds` is the wall clock from just
        before the PUT to the first poll that sees the job settled (polls every --poll-ms).
        A job that makes no progress for --stall-secs (default 60) is reported, not waited
        for: "state": "stalled", "stalled": true, with how far it got and when it stopped.

With --allow-downgrade, `tier` and `run` confirm a move that lowers the account's protection
(pkcs11 -> aws-kms or local, aws-kms -> local; the token must hold `admin`): a gateway that
refuses it with 409 `downgrade_refused` gets the same PUT again with `"allow_downgrade": true`.
Only then, so a baseline gateway older than the guard (which knows no such field) is asked
exactly as before.
"""

import argparse
import http.client
import json
import os
import sys
import time
import urllib.parse

SETTLED = ("completed", "completed_with_errors", "cancelled", "failed")


class Client:
    def __init__(self, base, token):
        u = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
        self.headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

    def call(self, method, path, body=None, ok=(200, 201, 202)):
        data = None if body is None else json.dumps(body).encode()
        self.conn.request(method, path, body=data, headers=self.headers)
        r = self.conn.getresponse()
        raw = r.read()
        if r.status not in ok:
            sys.exit("%s %s: %d %s" % (method, path, r.status, raw[:300].decode(errors="replace")))
        return json.loads(raw) if raw else {}


def put_tier(c, acct, tier, allow_downgrade):
    """PUT the account's tier; a refused downgrade is confirmed when allowed (see above)."""
    path = "/v1/accounts/" + acct
    if not allow_downgrade:
        return c.call("PUT", path, {"tier": tier})
    ans = c.call("PUT", path, {"tier": tier}, ok=(200, 201, 409))
    if ans.get("error", {}).get("code") == "downgrade_refused":
        ans = c.call("PUT", path, {"tier": tier, "allow_downgrade": True})
    elif "error" in ans:
        sys.exit("PUT %s: %s" % (path, json.dumps(ans)))
    return ans


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--stall-secs", type=float, default=60)
    ap.add_argument("--allow-downgrade", action="store_true")
    ap.add_argument("cmd", choices=["tier", "state", "pause", "resume", "cancel", "run"])
    ap.add_argument("args", nargs="*")
    a = ap.parse_args()
    c = Client(a.base, os.environ["SG_TOKEN"])

    if a.cmd == "tier":
        acct, tier = a.args
        print(json.dumps(put_tier(c, acct, tier, a.allow_downgrade)))
    elif a.cmd == "state":
        print(json.dumps(c.call("GET", "/v1/admin/migrations/" + a.args[0])))
    elif a.cmd in ("pause", "resume", "cancel"):
        print(json.dumps(c.call("POST", "/v1/admin/migrations/%s/%s" % (a.args[0], a.cmd))))
    else:
        acct, tier = a.args
        t0 = time.monotonic()
        ans = put_tier(c, acct, tier, a.allow_downgrade)
        put_secs = time.monotonic() - t0
        job_id = ans.get("migration_job")
        if not job_id:
            sys.exit("PUT /v1/accounts/%s answered no migration_job: %s" % (acct, json.dumps(ans)))
        last, last_t, stalled = None, t0, False
        while True:
            # A tier change answers after at most 1 s; a larger snapshot is still being
            # written then, and the job answers 404 until it is committed.
            j = c.call("GET", "/v1/admin/migrations/" + job_id, ok=(200, 404))
            secs = time.monotonic() - t0
            if j.get("error", {}).get("code") == "not_found":
                if secs > 120:
                    sys.exit("job %s still not created after %.0f s" % (job_id, secs))
                time.sleep(a.poll_ms / 1000.0)
                continue
            if j.get("state") in SETTLED:
                break
            progress = (j.get("done"), j.get("failed"), j.get("skipped"))
            if progress != last:
                last, last_t = progress, time.monotonic()
            elif time.monotonic() - last_t > a.stall_secs:
                stalled = True
                break
            if secs > a.timeout:
                sys.exit("job %s not settled after %.0f s: %s" % (job_id, secs, json.dumps(j)))
            time.sleep(a.poll_ms / 1000.0)
        total = j.get("total") or 0
        clock = None
        if j.get("created_at") and j.get("updated_at"):
            clock = (j["updated_at"] - j["created_at"]) / 1000.0
        if stalled:
            moved = (j.get("done") or 0) + (j.get("failed") or 0) + (j.get("skipped") or 0)
            until = last_t - t0
            print(json.dumps({
                "job": job_id, "account": acct, "tier": tier, "state": "stalled", "stalled": True,
                "job_state": j.get("state"), "total": total, "done": j.get("done"), "failed": j.get("failed"),
                "skipped": j.get("skipped"), "remaining": j.get("remaining"), "last_error": j.get("last_error"),
                "seconds_to_last_progress": round(until, 3), "seconds": round(secs, 3),
                "per_sec_until_stall": round(moved / until, 1) if until else None, "per_sec": None,
                "put_seconds": round(put_secs, 3), "job_clock_seconds": clock,
            }))
            return
        print(json.dumps({
            "job": job_id, "account": acct, "tier": tier, "state": j.get("state"),
            "total": total, "done": j.get("done"), "failed": j.get("failed"), "skipped": j.get("skipped"),
            "last_error": j.get("last_error"), "seconds": round(secs, 3),
            "per_sec": round(total / secs, 1) if secs else None, "put_seconds": round(put_secs, 3),
            "job_clock_seconds": clock,
        }))


if __name__ == "__main__":
    main()
