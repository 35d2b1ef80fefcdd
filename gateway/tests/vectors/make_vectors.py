#!/usr/bin/env python3
"""Independent test vectors for shardgate's audit formats (FORMAT.md §5, "Audit checkpoints").

Computed here from the format description alone, with the standard library (hmac, hashlib),
never with shardgate's code, so that a test comparing shardgate's output with them can fail
when the code drifts from the documented format. Prints Rust constants:

    python3 gateway/tests/vectors/make_vectors.py > gateway/tests/common/vectors.rs

gateway/tests/audit_vectors.rs checks shardgate's `audit::canonical`, `audit::tag`,
`auth::token_id`, `auth::credential_id` and `checkpoints::Checkpoint::line` against them, and
that the committed file is this script's output; token_lifecycle.rs compares the ids the
gateway records with them. Never regenerate after changing the code: change FORMAT.md and
this script first, then the code until the test passes.
"""

import base64
import hashlib
import hmac
import struct

AUDIT_KEY = bytes(range(32))
CHAIN_ID = "3f1c0a52-7d4e-4b8a-9c61-2e5f0d9a7b13"
# Fixed tokens (public: test values only, never secrets).
TOKEN = "sgt_vector-token-0123456789abcdefghijklmnopqrstuvw"
GUESSED_TOKEN = "sgt_not-a-real-token"


def len32(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def len64(b: bytes) -> bytes:
    return struct.pack(">Q", len(b)) + b


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def opt(s):
    return b"\x00" if s is None else b"\x01" + len32(s.encode())


def optint(v):
    return b"\x00" if v is None else b"\x01" + i64(v)


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def credential_id(tid: str) -> str:
    msg = len64(b"shardgate token id") + len64(tid.encode())
    return hmac.new(AUDIT_KEY, msg, hashlib.sha256).digest()[:16].hex()


def canonical(e: dict) -> bytes:
    cred = e["credential"]
    out = b"SGAUDIT2" if cred is not None else b"SGAUDIT1"
    out += len32(e["chain_id"].encode()) + i64(e["seq"]) + i64(e["ts_ms"])
    out += len32(e["request_id"].encode()) + len32(e["actor"].encode())
    out += len32(e["action"].encode())
    out += opt(e["account"]) + opt(e["shard"]) + optint(e["version"]) + opt(e["backend"])
    out += len32(e["outcome"].encode()) + len32(e["detail"].encode())
    if cred is not None:
        out += len32(cred.encode())
    out += len32(e["prev_tag"])
    return out


def tag(e: dict) -> bytes:
    return hmac.new(AUDIT_KEY, canonical(e), hashlib.sha256).digest()


def checkpoint_line(chain_id: str, seq: int, head_tag: bytes, ts_ms: int) -> str:
    msg = (
        len64(b"shardgate audit checkpoint")
        + len64(chain_id.encode())
        + len64(i64(seq))
        + len64(head_tag)
        + len64(i64(ts_ms))
    )
    mac = hmac.new(AUDIT_KEY, msg, hashlib.sha256).hexdigest()
    return f"sgcp1 {chain_id} {seq} {head_tag.hex()} {ts_ms} {mac}\n"


# Event 1: SGAUDIT1 (no credential), every optional field present, a non-ASCII detail
# (lengths count bytes), first of its chain (prev_tag = 32 zero bytes).
EVENT1 = dict(
    chain_id=CHAIN_ID, seq=1, ts_ms=1767225600123, request_id="req-0001", actor="signer",
    action="shard.put", account="acct-1", shard="key-0", version=3, backend="local",
    outcome="ok", detail="café ✓", credential=None, prev_tag=bytes(32),
)
# Event 2: SGAUDIT2 (credential of TOKEN), optional fields absent, chained after event 1.
EVENT2 = dict(
    chain_id=CHAIN_ID, seq=2, ts_ms=1767225600128, request_id="req-0002", actor="anonymous",
    action="auth", account=None, shard=None, version=None, backend=None,
    outcome="unauthenticated", detail="bearer token revoked",
    credential=credential_id(token_id(TOKEN)), prev_tag=tag(EVENT1),
)
CHECKPOINT_TS_MS = 1767225601000


def main() -> None:
    tag2 = tag(EVENT2)
    consts = [
        ("AUDIT_KEY_B64", "the audit key (bytes 0..=31), as its key file holds it",
         base64.b64encode(AUDIT_KEY).decode()),
        ("CHAIN_ID", "chain of both events", CHAIN_ID),
        ("TOKEN", "a fixed token", TOKEN),
        ("TOKEN_SHA256", "SHA-256 of TOKEN, hex", hashlib.sha256(TOKEN.encode()).hexdigest()),
        ("TOKEN_ID", "token id of TOKEN", token_id(TOKEN)),
        ("CREDENTIAL_ID", "credential id of TOKEN_ID under the audit key",
         credential_id(token_id(TOKEN))),
        ("GUESSED_TOKEN", "a token no deployment knows", GUESSED_TOKEN),
        ("GUESSED_TOKEN_ID", "token id of GUESSED_TOKEN", token_id(GUESSED_TOKEN)),
        ("GUESSED_CREDENTIAL_ID", "credential id of GUESSED_TOKEN_ID under the audit key",
         credential_id(token_id(GUESSED_TOKEN))),
        ("EVENT1_CANONICAL", "canonical encoding of event 1 (SGAUDIT1), hex",
         canonical(EVENT1).hex()),
        ("EVENT1_TAG", "tag of event 1, hex", tag(EVENT1).hex()),
        ("EVENT2_CANONICAL", "canonical encoding of event 2 (SGAUDIT2, prev_tag = event 1's tag), hex",
         canonical(EVENT2).hex()),
        ("EVENT2_TAG", "tag of event 2, hex", tag2.hex()),
        ("CHECKPOINT_LINE", "checkpoint of the chain's head (event 2) at CHECKPOINT_TS_MS",
         checkpoint_line(CHAIN_ID, 2, tag2, CHECKPOINT_TS_MS)),
    ]
    print("//! Fixed vectors of the audit formats (FORMAT.md §5, \"Audit checkpoints\"), computed")
    print("//! OUTSIDE shardgate (stdlib hmac/hashlib from the format description) by")
    print("//! gateway/tests/vectors/make_vectors.py, whose output this file is: do not edit.")
    print("#![allow(dead_code)]")
    for name, doc, value in consts:
        print(f"/// {doc}")
        print(f"pub const {name}: &str = {rust_str(value)};")
    print("/// ts_ms of CHECKPOINT_LINE")
    print(f"pub const CHECKPOINT_TS_MS: i64 = {CHECKPOINT_TS_MS};")


def rust_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


if __name__ == "__main__":
    main()
