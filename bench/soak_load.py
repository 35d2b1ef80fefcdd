"""The chaos soak's clients (bench/soak.py): worker threads that send a fixed mix of operations
at a fixed total rate to a random live replica (as a load balancer would), each answer checked
by the model (bench/soak_check.py) and logged with its start, end, kind, tier and outcome.

The mix (weights): GET latest or a known version 40, batchGet of 5 cells 10, PUT 15,
read-modify-write PUT with `expected_version` 20 (a GET, then a PUT on what it read: two
clients on one cell race, and only one may win), and 10 on a doomed cell (written twice, then
DELETEd, then read now and then: it must stay gone).
"""

import base64
import http.client
import json
import os
import random
import threading
import time
import urllib.parse
from collections import deque

from soak_check import Model
from soak_cluster import plant

MIX = [("get", 40), ("batch", 10), ("put", 15), ("cas", 20), ("doomed", 10)]


class Client:
    """Keep-alive connections per replica, for one thread."""

    def __init__(self, token, timeout):
        self.token = token
        self.timeout = timeout
        self.conns = {}

    def call(self, base, method, path, body=None):
        """(status, parsed JSON or None, error code); status 0 for a connection failure."""
        conn = self.conns.get(base)
        if conn is None:
            u = urllib.parse.urlsplit(base)
            conn = self.conns[base] = http.client.HTTPConnection(u.hostname, u.port,
                                                                  timeout=self.timeout)
        headers = {"Authorization": "Bearer " + self.token}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            raw = r.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            self.conns.pop(base, None)
            return 0, None, "timeout" if isinstance(e, TimeoutError) else "connection"
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        code = None
        if r.status >= 400:
            code = (doc or {}).get("error", {}).get("code", "http_%d" % r.status) \
                if isinstance(doc, dict) else "http_%d" % r.status
        return r.status, doc, code


class Load:
    def __init__(self, cluster, accounts_per_tier, threads, timeout=25):
        self.cluster = cluster
        self.model = Model()
        self.threads = threads
        self.timeout = timeout
        self.ops = []  # (t0, t1, kind, tier, outcome) with times relative to self.t_start
        self.ops_lock = threading.Lock()
        self.t_start = time.monotonic()
        self.stop_at = None
        self.rate = None
        self.doomed = deque()
        self.doomed_lock = threading.Lock()
        self.doomed_seq = 0
        self.planted = 0
        self.gone = []  # deleted doomed cells
        self.cas_races = {}  # writers acknowledged (0, 1, 2) -> races
        self.accounts = []  # (account, tier)
        for tier in sorted(cluster_tiers(cluster)):
            short = tier.split("-", 1)[1]
            for i in range(accounts_per_tier):
                self.accounts.append(("soak-%s-%03d" % (short, i), tier))
        self.regular = []

    # -- set-up ------------------------------------------------------------------------------

    def setup(self):
        """Accounts, two regular cells each (`cas`, `free`) with one version, and a doomed cell
        per account."""
        c = Client(self.cluster.token, self.timeout)
        base = self.cluster.live_bases()[0]
        for account, tier in self.accounts:
            s, doc, code = c.call(base, "PUT", "/v1/accounts/" + account, {"tier": tier})
            if s not in (200, 201):
                raise SystemExit("creating %s: %s %s" % (account, s, doc))
            for shard in ("cas", "free"):
                cell = self.model.cell(account, shard)
                cell.tier = tier
                if self._put(c, base, cell, None)[0] != "ok":
                    raise SystemExit("first write of %s/%s failed" % (account, shard))
                self.regular.append(cell)
            self.doomed.append(self._new_doomed(account, tier))

    def _new_doomed(self, account, tier):
        self.doomed_seq += 1
        cell = self.model.cell(account, "d%05d" % self.doomed_seq, doomed=True)
        cell.tier = tier
        return cell

    # -- operations --------------------------------------------------------------------------

    def _put(self, c, base, cell, expected):
        payload = os.urandom(24) + b"|" + ("%s/%s" % (cell.account, cell.shard)).encode()
        body = {"shard": base64.b64encode(payload).decode()}
        if expected is not None:
            body["expected_version"] = expected
        if self.planted < 50:  # a sample of shard plaintexts for the secret scan
            self.planted += 1
            plant(body["shard"])
        w = self.model.begin_write(cell, payload, expected)
        s, doc, code = c.call(base, "PUT", "/v1/accounts/%s/shards/%s" % (cell.account,
                                                                           cell.shard), body)
        acked = s in (200, 201) and isinstance(doc, dict) and "version" in doc
        self.model.end_write(cell, w, doc["version"] if acked else None)
        if code == "timeout":
            cell.uncertain = True
        return ("ok" if acked else code or "http_%d" % s), doc

    def _get(self, c, base, cell, version=None):
        t0 = time.monotonic()
        path = "/v1/accounts/%s/shards/%s" % (cell.account, cell.shard)
        if version is not None:
            path += "?version=%d" % version
        s, doc, code = c.call(base, "GET", path)
        if s == 200 and isinstance(doc, dict):
            payload = base64.b64decode(doc["shard"])
            self.model.check_read(cell, t0, doc["version"], payload, 200, version)
            return "ok", doc["version"]
        if s == 404 and code in ("shard_not_found", "version_not_found", "account_not_found"):
            self.model.check_read(cell, t0, None, None, 404, version)
            return "not_found", None
        self._integrity(code, cell)
        return code or "http_%d" % s, None

    def _integrity(self, code, cell):
        if code == "integrity_failure":
            self.model.violation("integrity", "%s/%s: integrity_failure" % (cell.account,
                                                                             cell.shard))

    def op_get(self, c, base):
        cell = random.choice(self.regular)
        version = None
        if random.random() < 0.25:
            with self.model.lock:
                version = random.choice(cell.acked).version if cell.acked else None
        return cell.tier, self._get(c, base, cell, version)[0]

    def op_batch(self, c, base):
        cells = random.sample(self.regular, min(5, len(self.regular)))
        t0 = time.monotonic()
        items = [{"account": x.account, "shard": x.shard} for x in cells]
        s, doc, code = c.call(base, "POST", "/v1/shards:batchGet", {"items": items})
        if s != 200 or not isinstance(doc, dict):
            return "batch", code or "http_%d" % s
        outcome = "ok"
        for cell, res in zip(cells, doc.get("results", [])):
            if "shard" in res:
                self.model.check_read(cell, t0, res["version"], base64.b64decode(res["shard"]),
                                      200)
            else:
                item_code = res.get("error", {}).get("code")
                if item_code in ("shard_not_found", "version_not_found"):
                    self.model.check_read(cell, t0, None, None, 404)
                else:
                    self._integrity(item_code, cell)
                    outcome = "item_" + str(item_code)
        return "batch", outcome

    def op_put(self, c, base):
        cell = random.choice(self.regular)
        return cell.tier, self._put(c, base, cell, None)[0]

    def op_cas(self, c, base):
        """Read, then write on what was read. Half the time two writers race on the same
        `expected_version` through two replicas: at most one may be acknowledged."""
        cells = [x for x in self.regular if x.shard == "cas"]
        cell = random.choice(cells)
        outcome, version = self._get(c, base, cell)
        if outcome != "ok":
            return cell.tier, outcome
        if random.random() < 0.5:
            return cell.tier, self._cas_race(c, base, cell, version)
        outcome, _ = self._put(c, base, cell, version)
        return cell.tier, "conflict" if outcome == "version_conflict" else outcome

    def _cas_race(self, c, base, cell, version):
        other = random.choice(self.cluster.live_bases() or [base])
        got = {}

        def rival():
            got["rival"] = self._put(Client(self.cluster.token, self.timeout), other, cell,
                                     version)[0]

        t = threading.Thread(target=rival)
        t.start()
        mine = self._put(c, base, cell, version)[0]
        t.join()
        outcomes = sorted([mine, got.get("rival", "none")])
        with self.ops_lock:
            self.cas_races[outcomes.count("ok")] = self.cas_races.get(outcomes.count("ok"), 0) + 1
        if "ok" in outcomes:
            return "ok"
        return "conflict" if "version_conflict" in outcomes else outcomes[0]

    def op_doomed(self, c, base):
        with self.doomed_lock:
            gone = random.choice(self.gone) if self.gone and random.random() < 0.2 else None
            cell = None if gone or not self.doomed else self.doomed.popleft()
        if gone is not None:  # deleted: it must stay gone
            return gone.tier, self._get(c, base, gone)[0]
        if cell is None:
            return "doomed", "busy"
        outcome = self._doomed_step(c, base, cell)
        with self.doomed_lock:
            if cell.deleted_at is not None:
                self.gone.append(cell)
            if cell.deleted_at is not None or cell.uncertain:
                # (an uncertain cell is retired, never deleted: a write may still land)
                self.doomed.append(self._new_doomed(cell.account, cell.tier))
            else:
                self.doomed.append(cell)
        return cell.tier, outcome

    def _doomed_step(self, c, base, cell):
        """Write a doomed cell twice, then DELETE it (again, until acknowledged)."""
        if len(cell.acked) < 2 and not cell.delete_tried:
            return self._put(c, base, cell, None)[0]
        self.model.begin_delete(cell)
        s, doc, code = c.call(base, "DELETE", "/v1/accounts/%s/shards/%s" % (cell.account,
                                                                              cell.shard))
        if s == 200 or (s == 404 and code == "shard_not_found"):
            self.model.deleted(cell)
            return "ok"
        return code or "http_%d" % s

    # -- running -----------------------------------------------------------------------------

    def record(self, t0, t1, kind, tier, outcome):
        with self.ops_lock:
            self.ops.append((t0 - self.t_start, t1 - self.t_start, kind, tier, outcome))

    def one(self, c):
        bases = self.cluster.live_bases()
        if not bases:
            time.sleep(0.05)
            return
        base = random.choice(bases)
        kind = random.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        t0 = time.monotonic()
        tier, outcome = getattr(self, "op_" + kind)(c, base)
        self.record(t0, time.monotonic(), kind, tier, outcome)

    def worker(self, closed_loop):
        c = Client(self.cluster.token, self.timeout)
        nxt = time.monotonic()
        while time.monotonic() < self.stop_at:
            if not closed_loop:
                gap = self.threads / self.rate
                nxt += random.expovariate(1.0 / gap) if gap > 0 else 0
                now = time.monotonic()
                if nxt > now:
                    time.sleep(nxt - now)
                elif now - nxt > 1.0:
                    nxt = now  # behind by over a second: do not burst to catch up
            self.one(c)

    def run(self, seconds, rate=None):
        """Run the mix for `seconds`: at `rate` ops/s in all, or closed loop when None.
        Returns the ops/s achieved."""
        self.rate = rate
        self.stop_at = time.monotonic() + seconds
        n0 = len(self.ops)
        ts = [threading.Thread(target=self.worker, args=(rate is None,), daemon=True)
              for _ in range(self.threads)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return (len(self.ops) - n0) / max(time.monotonic() - t0, 1e-9)


def cluster_tiers(cluster):
    from soak_cluster import TIERS
    return TIERS.keys()
