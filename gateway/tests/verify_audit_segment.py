#!/usr/bin/env python3
"""Verify one archived audit segment with the audit key alone: Python's standard library and
`zstandard`, nothing of shardgate's (FORMAT.md, "Audit segments").

usage: verify_audit_segment.py AUDIT_KEY_FILE MANIFEST OBJECT

Prints the segment's events as JSON (one object: chain, range, and per event its seq, time,
action, account, shard, version and outcome); exits 1 naming the first check that failed.
"""
import base64
import hashlib
import hmac
import json
import struct
import sys

import zstandard


def len64(b):
    return struct.pack(">Q", len(b)) + b


class Reader:
    def __init__(self, b):
        self.b, self.at = b, 0

    def take(self, n):
        if self.at + n > len(self.b):
            raise ValueError("cut short")
        out = self.b[self.at:self.at + n]
        self.at += n
        return out

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def field(self):
        return self.take(self.u32())

    def text(self):
        return self.field().decode("utf-8")

    def opt(self, read):
        flag = self.take(1)[0]
        if flag not in (0, 1):
            raise ValueError("bad presence byte")
        return read() if flag else None


def event(canonical):
    r = Reader(canonical)
    magic = r.take(8)
    if magic not in (b"SGAUDIT1", b"SGAUDIT2"):
        raise ValueError("not an audit event")
    e = {"chain_id": r.text(), "seq": r.i64(), "ts_ms": r.i64(), "request_id": r.text(),
         "actor": r.text(), "action": r.text(), "account": r.opt(r.text),
         "shard": r.opt(r.text), "version": r.opt(r.i64), "backend": r.opt(r.text),
         "outcome": r.text(), "detail": r.text()}
    if magic == b"SGAUDIT2":
        e["credential"] = r.text()
    e["prev_tag"] = r.field()
    if r.at != len(canonical):
        raise ValueError("bytes after the last field")
    return e


def fail(why):
    print(f"SEGMENT BROKEN: {why}", file=sys.stderr)
    sys.exit(1)


def main(key_file, manifest_file, object_file):
    key = base64.b64decode(open(key_file).read().strip())
    manifest = open(manifest_file, "rb").read()
    parts = manifest.split(b"\n")
    if len(parts) != 3 or parts[2] != b"" or not parts[1].startswith(b"sgmac1 "):
        fail("manifest is not two lines")
    body, mac = parts[0], parts[1][7:].decode()
    want = hmac.new(key, len64(b"shardgate audit segment manifest") + len64(body), hashlib.sha256)
    if not hmac.compare_digest(mac, want.hexdigest()):
        fail("manifest HMAC mismatch")
    m = json.loads(body)
    if m["format"] != "sgseg1":
        fail("unknown manifest format")
    obj = open(object_file, "rb").read()
    if hashlib.sha256(obj).hexdigest() != m["object_sha256"] or len(obj) != m["object_bytes"]:
        fail("object does not match its manifest")
    payload = zstandard.ZstdDecompressor().decompressobj().decompress(obj)
    r = Reader(payload)
    if r.take(8) != b"SGSEG001":
        fail("object is not a segment")
    n = r.u32()
    prev, tags, events, accounts = bytes.fromhex(m["prev_tag"]), b"", [], set()
    for _ in range(n):
        canonical = r.field()
        tag = r.take(32)
        if not hmac.compare_digest(hmac.new(key, canonical, hashlib.sha256).digest(), tag):
            fail("event tag mismatch")
        e = event(canonical)
        expect = m["first_seq"] + len(events)
        if e["prev_tag"] != prev or e["seq"] != expect or e["chain_id"] != m["chain_id"]:
            fail(f"event {e['seq']} does not follow the previous one")
        prev, tags = tag, tags + tag
        if e["account"] is not None:
            accounts.add(e["account"])
        events.append({k: e[k] for k in ("seq", "ts_ms", "action", "account", "shard",
                                         "version", "outcome")})
    if r.at != len(payload):
        fail("bytes after the last event")
    checks = [
        (n == m["count"] and events and events[-1]["seq"] == m["last_seq"], "count or range"),
        (prev.hex() == m["last_tag"], "last tag"),
        (hashlib.sha256(tags).hexdigest() == m["tags_sha256"], "tags digest"),
        (sorted(accounts) == m["accounts"], "accounts"),
        (min(e["ts_ms"] for e in events) == m["min_ts_ms"], "time range"),
        (max(e["ts_ms"] for e in events) == m["max_ts_ms"], "time range"),
    ]
    for ok, what in checks:
        if not ok:
            fail(f"manifest {what} does not match the events")
    print(json.dumps({"chain_id": m["chain_id"], "first_seq": m["first_seq"],
                      "last_seq": m["last_seq"], "events": events}))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
