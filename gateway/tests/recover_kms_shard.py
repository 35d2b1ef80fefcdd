#!/usr/bin/env python3
"""Recover one shard stored with the `aws-kms` backend, independently of shardgate's code.

Uses only what FORMAT.md documents (sections 1, 2, 3 and 4b), the stdlib `sqlite3` module,
boto3 and `cryptography`:

1. read the row (account, shard, version) of `shard_versions` from the SQLite store file;
2. KMS `Decrypt` of `wrapped_dek` with `KeyId = key_ref` and the encryption context
   {shardgate:format, shardgate:account, shardgate:shard, shardgate:version};
3. format 2: check the key commitment (section 3a) of that data key against the stored one;
4. open `ciphertext` with AES-256-GCM under that data key, `nonce`, and the identity AAD.

Prints the shard as standard base64 on stdout and exits 0; on any failure (no such row, KMS
refusal, a tag that does not verify) prints the reason on stderr and exits non-zero, never
printing partial plaintext. Credentials and region come from boto3's usual chain
(`AWS_ACCESS_KEY_ID`, `AWS_REGION`/`AWS_DEFAULT_REGION`, ...).

    recover_kms_shard.py --db shardgate.db --account A --shard S [--version N]
                         [--endpoint http://127.0.0.1:5055] [--region us-east-1]
"""

import argparse
import base64
import hashlib
import hmac
import os
import sqlite3
import struct
import sys

import boto3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def identity(fmt: int, account: bytes, shard: bytes, version: int) -> bytes:
    """FORMAT.md section 1: the canonical identity, used as AES-GCM AAD."""
    return (
        b"SGID"
        + bytes([fmt])
        + struct.pack(">I", len(account))
        + account
        + struct.pack(">I", len(shard))
        + shard
        + struct.pack(">Q", version)
    )


def commitment(dek: bytes, aad: bytes) -> bytes:
    """FORMAT.md section 3a: HMAC-SHA256 under HMAC-SHA256(DEK, "shardgate commit key")."""
    commit_key = hmac.new(dek, b"shardgate commit key", hashlib.sha256).digest()
    return hmac.new(commit_key, aad, hashlib.sha256).digest()


def encryption_context(fmt: int, account: str, shard: str, version: int) -> dict:
    """FORMAT.md section 4b: the KMS encryption context (decimal / exact strings)."""
    return {
        "shardgate:format": str(fmt),
        "shardgate:account": account,
        "shardgate:shard": shard,
        "shardgate:version": str(version),
    }


def read_row(db: str, account: str, shard: str, version):
    # Read-only: recovery never writes to the store.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        sql = (
            "SELECT account, shard, version, format_version, key_ref, key_version, "
            "wrapped_dek, nonce, ciphertext, key_commitment FROM shard_versions "
            "WHERE account = ? AND shard = ?"
        )
        params = [account, shard]
        if version is None:
            sql += " ORDER BY version DESC LIMIT 1"
        else:
            sql += " AND version = ?"
            params.append(version)
        return conn.execute(sql, params).fetchone()
    finally:
        conn.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="the SQLite store file")
    p.add_argument("--account", required=True)
    p.add_argument("--shard", required=True)
    p.add_argument("--version", type=int, help="default: the latest version")
    p.add_argument("--endpoint", help="KMS endpoint override (moto in tests)")
    p.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    args = p.parse_args()

    row = read_row(args.db, args.account, args.shard, args.version)
    if row is None:
        print("no such shard version", file=sys.stderr)
        return 2
    (account, shard, version, fmt, key_ref, _key_version, wrapped_dek, nonce, ciphertext,
     key_commitment) = row
    if fmt not in (1, 2):
        print(f"unsupported format_version {fmt}", file=sys.stderr)
        return 2

    kms = boto3.client("kms", region_name=args.region, endpoint_url=args.endpoint)
    try:
        out = kms.decrypt(
            CiphertextBlob=bytes(wrapped_dek),
            KeyId=key_ref,
            EncryptionContext=encryption_context(fmt, account, shard, version),
        )
    except kms.exceptions.ClientError as e:
        print(f"KMS Decrypt refused: {e.response['Error'].get('Code')}", file=sys.stderr)
        return 3
    dek = out["Plaintext"]
    if len(dek) != 32:
        print(f"data key of {len(dek)} bytes, expected 32", file=sys.stderr)
        return 3

    aad = identity(fmt, account.encode("ascii"), shard.encode("ascii"), version)
    if fmt == 2 and (
        key_commitment is None
        or not hmac.compare_digest(commitment(dek, aad), bytes(key_commitment))
    ):
        print("key commitment mismatch: this is not the row's data key", file=sys.stderr)
        return 4
    if fmt == 1 and key_commitment is not None:
        print("a format 1 row carries a key commitment", file=sys.stderr)
        return 4
    try:
        plaintext = AESGCM(dek).decrypt(bytes(nonce), bytes(ciphertext), aad)
    except InvalidTag:
        print("AES-GCM tag check failed: the row does not open under its identity", file=sys.stderr)
        return 4
    sys.stdout.write(base64.b64encode(plaintext).decode("ascii") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
