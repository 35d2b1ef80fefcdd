"""The chaos soak's faults (bench/soak.py), one at a time, in rotation:

  kill          SIGKILL of the last replica (the others are never restarted, so their RSS
                is comparable), started again at once
  pg-restart    the private PostgreSQL cluster stopped as a crash would (`-m immediate`)
                and started again
  moto-stop     moto_server SIGSTOPped for 5 s (it keeps accepting connections and answers
                nothing), then SIGCONTed
  hsm-logout    `C_Logout` inside replica 1 or 2 (in turn): POST
                /v1/admin/backends/hsm/fault:logout, the admin-only hook of a gateway built
                with the cargo feature `fault-injection` (PKCS#11 login state is per process)
  policy-apply  PUT /v1/admin/policy: the rollout `soak-pilot` (tier soak-local onto kms)
                between 70 and 30 percent, in turn (accounts change backend under traffic;
                back to 30% is a downgrade, kms -> local, confirmed with allow_downgrade)
  breaker-open  POST /v1/admin/backends/{kms,hsm,local}/circuit:open {"ttl_secs": 5}, in
                turn, through a random replica: every replica refuses that backend for 5 s
"""

import random
import signal
import time

from soak_load import Client

KINDS = ["kill", "pg-restart", "moto-stop", "hsm-logout", "policy-apply", "breaker-open"]
BREAKER_TARGETS = ["kms", "hsm", "local"]


class Faults:
    def __init__(self, cluster, t_start):
        self.cluster = cluster
        self.t_start = t_start
        self.log = []
        self.n = 0
        self.client = Client(cluster.token, 30)

    def now(self):
        return time.monotonic() - self.t_start

    def inject(self):
        kind = KINDS[self.n % len(KINDS)]
        turn = self.n // len(KINDS)
        self.n += 1
        t0 = self.now()
        try:
            detail = getattr(self, "f_" + kind.replace("-", "_"))(turn)
            ok = True
        except Exception as e:  # a fault that could not be injected fails the soak
            detail, ok = "FAILED: %s" % e, False
        entry = {"kind": kind, "t": round(t0, 3), "took_s": round(self.now() - t0, 3),
                 "detail": detail, "ok": ok}
        self.log.append(entry)
        return entry

    def f_kill(self, turn):
        r = self.cluster.replicas[-1]
        r.kill()
        t = time.monotonic()
        r.start()
        return "replica %d killed, serving again after %.2f s" % (r.index, time.monotonic() - t)

    def f_pg_restart(self, turn):
        self.cluster.pg.restart()
        return "PostgreSQL stopped (immediate) and started"

    def f_moto_stop(self, turn):
        self.cluster.moto.signal(signal.SIGSTOP)
        try:
            time.sleep(5)
        finally:
            self.cluster.moto.signal(signal.SIGCONT)
        return "moto_server stopped for 5 s"

    def admin(self, method, path, body=None, base=None, attempts=20):
        """An admin call through a live replica, retried while the cluster is recovering from
        the previous fault (5xx, connection errors)."""
        last = None
        for _ in range(attempts):
            b = base or random.choice(self.cluster.live_bases())
            s, doc, code = self.client.call(b, method, path, body)
            if 200 <= s < 300:
                return doc
            last = (s, code, doc)
            if s and s < 500:
                break
            time.sleep(0.5)
        raise RuntimeError("%s %s: %s" % (method, path, last))

    def f_hsm_logout(self, turn):
        r = self.cluster.replicas[turn % min(2, len(self.cluster.replicas))]
        self.admin("POST", "/v1/admin/backends/hsm/fault:logout", base=r.base, attempts=5)
        return "replica %d logged out of the HSM" % r.index

    def f_policy_apply(self, turn):
        doc = self.admin("GET", "/v1/admin/policy")
        policy = doc["policy"]
        percent = 70.0 if turn % 2 == 0 else 30.0
        rollouts = [r for r in policy.get("rollouts", []) if r.get("name") != "soak-pilot"]
        rollouts.append({"name": "soak-pilot", "tier": "soak-local", "backend": "kms",
                         "percent": percent})
        policy["rollouts"] = rollouts
        # Back to 30% moves accounts from kms to local: a downgrade, refused without this
        # (409 downgrade_refused; the admin token may confirm it).
        out = self.admin("PUT", "/v1/admin/policy", {"policy": policy, "allow_downgrade": True})
        return "policy version %s: rollout soak-pilot at %.0f%%" % (out.get("version"), percent)

    def f_breaker_open(self, turn):
        backend = BREAKER_TARGETS[turn % len(BREAKER_TARGETS)]
        self.admin("POST", "/v1/admin/backends/%s/circuit:open" % backend, {"ttl_secs": 5})
        return "breaker of %s forced open for 5 s" % backend


def recovery(faults, ops, expected_ok=("ok", "not_found", "conflict", "busy", "retired"),
             gap=3.0):
    """Per fault: the failed operations that ENDED in its window (from its start to the next
    fault's: an operation in flight when the next fault strikes fails because of that one),
    by code; the recovery time, from the fault's start to the end of the last failure of the
    burst it caused (failures less than `gap` s apart, the first within `gap` s of the
    fault's own end), 0 when it caused none; the failures after that burst (`later_errors`:
    background, not this fault's); and the slowest successful operation of the window."""
    out = []
    for i, f in enumerate(faults):
        start = f["t"]
        end = faults[i + 1]["t"] if i + 1 < len(faults) else float("inf")
        failed = sorted(o[1] for o in ops if start <= o[1] < end and o[4] not in expected_ok)
        codes = {}
        for o in ops:
            if start <= o[1] < end and o[4] not in expected_ok:
                codes[o[4]] = codes.get(o[4], 0) + 1
        last = start + f.get("took_s", 0)
        in_burst = 0
        for t in failed:
            if t > last + gap:
                break
            last = max(last, t)
            in_burst += 1
        rec = (last - start) if in_burst else 0.0
        slowest = max((o[1] - o[0] for o in ops if start <= o[1] < end and o[4] == "ok"),
                      default=0)
        out.append(dict(f, errors=len(failed), error_codes=codes, recovery_s=round(rec, 2),
                        later_errors=len(failed) - in_burst, slowest_ok_s=round(slowest, 2)))
    return out
