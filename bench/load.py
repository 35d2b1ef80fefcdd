#!/usr/bin/env python3
"""Loader of scripts/bench.sh: creates the fixed data set through the gateway's HTTP API.

For each TIER=PREFIX argument: accounts PREFIX000000 .. PREFIX{N-1} on that tier, each with
one shard `s0` of --shard-bytes random bytes (PUT account, PUT shard, then GET it back and
compare, which also warms a backend's read cache with every data key). Keep-alive
connections, one per worker thread. Prints one JSON object per tier on stdout.

    SG_TOKEN=... load.py --base http://127.0.0.1:PORT --accounts 1000 --shard-bytes 64 \
        bench-local=local- bench-hsm=hsm- ...

With --shards-per-account S > 1 (the migration data sets), each account gets shards
s000000 .. s{S-1} (PUT only, not read back), the accounts created first, then the shards
spread over the workers.
"""

import argparse
import base64
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor


class Client(threading.local):
    def __init__(self, base, token):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
        self.conn = None

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, body=data, headers=self.headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise RuntimeError("unreachable")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--shard-bytes", type=int, default=64)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--shards-per-account", type=int, default=1)
    ap.add_argument("sets", nargs="+", metavar="TIER=PREFIX")
    a = ap.parse_args()
    client = Client(a.base, os.environ["SG_TOKEN"])

    def one(tier, prefix, i):
        acct = "%s%06d" % (prefix, i)
        s, body = client.call("PUT", "/v1/accounts/" + acct, {"tier": tier})
        if s not in (200, 201):
            return "PUT account %s: %d %s" % (acct, s, body[:200])
        shard = os.urandom(a.shard_bytes)
        b64 = base64.b64encode(shard).decode()
        s, body = client.call("PUT", "/v1/accounts/%s/shards/s0" % acct, {"shard": b64})
        if s != 201:
            return "PUT shard %s/s0: %d %s" % (acct, s, body[:200])
        s, body = client.call("GET", "/v1/accounts/%s/shards/s0" % acct)
        if s != 200 or json.loads(body).get("shard") != b64:
            return "GET %s/s0: %d (shard differs or error)" % (acct, s)
        return None

    def account(tier, prefix, i):
        acct = "%s%06d" % (prefix, i)
        s, body = client.call("PUT", "/v1/accounts/" + acct, {"tier": tier})
        return None if s in (200, 201) else "PUT account %s: %d %s" % (acct, s, body[:200])

    def shard(prefix, job):
        i, k = job
        acct, sid = "%s%06d" % (prefix, i), "s%06d" % k
        b64 = base64.b64encode(os.urandom(a.shard_bytes)).decode()
        s, body = client.call("PUT", "/v1/accounts/%s/shards/%s" % (acct, sid), {"shard": b64})
        return None if s == 201 else "PUT shard %s/%s: %d %s" % (acct, sid, s, body[:200])

    failed = False
    many = a.shards_per_account > 1
    with ThreadPoolExecutor(max_workers=a.workers) as pool:
        for spec in a.sets:
            tier, prefix = spec.split("=", 1)
            t = time.monotonic()
            if many:
                errors = [e for e in pool.map(lambda i: account(tier, prefix, i), range(a.accounts)) if e]
                jobs = ((i, k) for i in range(a.accounts) for k in range(a.shards_per_account))
                errors += [e for e in pool.map(lambda j: shard(prefix, j), jobs, chunksize=64) if e]
            else:
                errors = [e for e in pool.map(lambda i: one(tier, prefix, i), range(a.accounts)) if e]
            secs = time.monotonic() - t
            shards = a.accounts * a.shards_per_account
            print(json.dumps({
                "tier": tier, "prefix": prefix, "accounts": a.accounts,
                "shards_per_account": a.shards_per_account,
                "shard_bytes": a.shard_bytes, "seconds": round(secs, 3),
                "accounts_per_sec": round(a.accounts / secs, 1),
                "shards_per_sec": round(shards / secs, 1),
                "errors": len(errors), "first_error": errors[0] if errors else None,
            }), flush=True)
            failed = failed or bool(errors)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
