"""The chaos soak's checker (bench/soak.py): a model of every write the clients attempted and
every one the gateway acknowledged, checked against every read, and at the end against a
read-back of everything.

Cells are (account, shard). Every payload is unique (a random nonce), so the bytes a read
returns name the write that produced them. The rules:

  lost write        an acknowledged version that is not readable with its bytes (a read of
                    it, or the final read-back, answers 404 or other bytes)
  stale read        a latest read that returns a version below the highest one acknowledged
                    before the read began
  foreign bytes     bytes no client ever sent for that cell, or an acknowledged write's
                    bytes under another version number
  cas violation     two writes acknowledged on one `expected_version` of a cell, or an
                    acknowledged `expected_version = N` write whose version is not N + 1, or
                    two acknowledged writes given one version number
  deleted returned  a cell whose DELETE was acknowledged answers 200 to a read that began
                    after the acknowledgement
"""

import bisect
import threading
import time
from collections import defaultdict


class Write:
    __slots__ = ("payload", "expected", "t0", "t1", "version", "acked")

    def __init__(self, payload, expected, t0):
        self.payload = payload
        self.expected = expected
        self.t0 = t0
        self.t1 = None
        self.version = None
        self.acked = False


class Cell:
    def __init__(self, account, shard, doomed):
        self.account = account
        self.shard = shard
        self.doomed = doomed
        self.writes = {}  # payload -> Write
        self.acked = []  # Writes acknowledged, in ack order
        # The same, indexed: ack times (increasing), the highest version acknowledged up to
        # each, and the write of each acknowledged version (reads check in O(log n)).
        self.ack_times = []
        self.ack_max = []
        self.by_version = {}
        self.deleted_at = None  # monotonic time the DELETE was acknowledged
        self.delete_tried = False
        self.uncertain = False  # a write timed out: it may still be committing

    def floor_at(self, t0):
        """Highest version acknowledged before t0."""
        i = bisect.bisect_left(self.ack_times, t0)
        return self.ack_max[i - 1] if i else 0

    def latest_acked(self):
        return max((w.version for w in self.acked), default=0)


class Model:
    def __init__(self):
        self.lock = threading.Lock()
        self.cells = {}
        self.violations = defaultdict(list)

    def cell(self, account, shard, doomed=False):
        key = (account, shard)
        with self.lock:
            c = self.cells.get(key)
            if c is None:
                c = self.cells[key] = Cell(account, shard, doomed)
            return c

    def violation(self, kind, text):
        with self.lock:
            self.violations[kind].append(text)

    # -- writes ------------------------------------------------------------------------------

    def begin_write(self, cell, payload, expected):
        w = Write(payload, expected, time.monotonic())
        with self.lock:
            cell.writes[payload] = w
        return w

    def end_write(self, cell, w, version):
        """version: the acknowledged version, or None when the write was not acknowledged."""
        with self.lock:
            w.t1 = time.monotonic()
            if version is None:
                return
            w.version = version
            w.acked = True
            cell.acked.append(w)
            cell.ack_times.append(w.t1)
            cell.ack_max.append(max(version, cell.ack_max[-1] if cell.ack_max else 0))
            cell.by_version.setdefault(version, w)
        if w.expected is not None and version != w.expected + 1:
            self.violation("cas", "%s/%s: expected_version %d acknowledged as version %d" % (
                cell.account, cell.shard, w.expected, version))

    # -- reads -------------------------------------------------------------------------------

    def check_read(self, cell, t0, version, payload, status, asked_version=None):
        """One answer to a read that began at t0: status 200 with (version, payload), or 404."""
        name = "%s/%s" % (cell.account, cell.shard)
        with self.lock:
            deleted = cell.deleted_at is not None and cell.deleted_at < t0
            delete_tried = cell.delete_tried
            floor = cell.floor_at(t0)
            w = cell.writes.get(payload) if payload is not None else None
            asked = cell.by_version.get(asked_version) if asked_version is not None else None
            if asked is not None and not asked.t1 < t0:
                asked = None  # acknowledged only after the read began
        if status == 404:
            if deleted or delete_tried:
                return  # (an unacknowledged DELETE may have run)
            if asked is not None:
                self.violation("lost", "%s: version %d answered 404" % (name, asked_version))
            elif asked_version is None and floor > 0:
                self.violation("lost", "%s: latest answered 404 with version %d acknowledged"
                               % (name, floor))
            return
        if deleted:
            self.violation("deleted", "%s: answered version %s after its DELETE" % (name, version))
            return
        if w is None:
            self.violation("foreign", "%s: version %s holds bytes never written" % (name, version))
            return
        if w.acked and w.version != version:
            self.violation("foreign", "%s: bytes of version %d answered as version %s" % (
                name, w.version, version))
            return
        if asked_version is None and version < floor:
            self.violation("stale", "%s: latest read answered version %d, %d was acknowledged "
                           "before it began" % (name, version, floor))
        if asked_version is not None:
            if version != asked_version:
                self.violation("foreign", "%s: asked version %d, answered %s" % (
                    name, asked_version, version))
            if asked is not None and asked.payload != payload:
                self.violation("lost", "%s: version %d answered other bytes" % (name, asked_version))

    # -- deletes -----------------------------------------------------------------------------

    def begin_delete(self, cell):
        with self.lock:
            cell.delete_tried = True

    def deleted(self, cell):
        with self.lock:
            cell.deleted_at = time.monotonic()

    # -- the end -----------------------------------------------------------------------------

    def final_cas_check(self):
        """Two acknowledged writes on one expected_version, or on one version number."""
        for c in list(self.cells.values()):
            by_expected = defaultdict(int)
            by_version = defaultdict(int)
            for w in c.acked:
                by_version[w.version] += 1
                if w.expected is not None:
                    by_expected[w.expected] += 1
            for e, n in by_expected.items():
                if n > 1:
                    self.violation("cas", "%s/%s: %d writes acknowledged on expected_version %d"
                                   % (c.account, c.shard, n, e))
            for v, n in by_version.items():
                if n > 1:
                    self.violation("cas", "%s/%s: %d writes acknowledged as version %d" % (
                        c.account, c.shard, n, v))

    def counts(self):
        with self.lock:
            acked = sum(len(c.acked) for c in self.cells.values())
            attempted = sum(len(c.writes) for c in self.cells.values())
            deleted = sum(1 for c in self.cells.values() if c.deleted_at is not None)
            return {"cells": len(self.cells), "writes_attempted": attempted,
                    "writes_acknowledged": acked, "cells_deleted": deleted}


def self_test():
    """The checker catches what it is for: each rule is fed one history that breaks it (and
    the clean histories beside them must pass). Run by bench/soak.py before every soak."""
    m = Model()
    c = m.cell("a", "s")
    t = time.monotonic

    def write(cell, payload, expected, version):
        w = m.begin_write(cell, payload, expected)
        m.end_write(cell, w, version)
        return w

    write(c, b"one", None, 1)
    write(c, b"two", 1, 2)
    m.check_read(c, t(), 2, b"two", 200)  # clean
    m.check_read(c, t(), 1, b"one", 200, asked_version=1)  # clean
    assert not m.violations, dict(m.violations)
    m.check_read(c, t(), 1, b"one", 200)  # latest read below an acknowledged version
    assert list(m.violations) == ["stale"], dict(m.violations)
    m.check_read(c, t(), 3, b"never", 200)
    assert "foreign" in m.violations
    m.check_read(c, t(), None, None, 404, asked_version=2)
    assert "lost" in m.violations
    write(c, b"three", 2, 3)
    write(c, b"three-b", 2, 3)  # two writers both acknowledged on expected_version 2
    m.final_cas_check()
    assert "cas" in m.violations
    d = m.cell("a", "doomed", doomed=True)
    write(d, b"d1", None, 1)
    m.begin_delete(d)
    m.deleted(d)
    m.check_read(d, t(), None, None, 404)  # clean
    before = len(m.violations.get("deleted", []))
    m.check_read(d, t(), 1, b"d1", 200)
    assert len(m.violations.get("deleted", [])) == before + 1
    return sorted(m.violations)
