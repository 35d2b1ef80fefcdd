-- shardgate initial schema (SQLite).
--
-- Text comparison uses SQLite's default BINARY collation: ids are compared, ordered and
-- paginated by their exact bytes, case-sensitively.

CREATE TABLE accounts (
    account    TEXT NOT NULL PRIMARY KEY,
    tier       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- One immutable row per stored shard version. No ON DELETE CASCADE: deleting an account
-- deletes its versions explicitly, in the same transaction, and counts them.
CREATE TABLE shard_versions (
    account        TEXT NOT NULL REFERENCES accounts (account),
    shard          TEXT NOT NULL,
    version        INTEGER NOT NULL CHECK (version >= 1),
    format_version INTEGER NOT NULL,
    backend        TEXT NOT NULL,
    key_ref        TEXT NOT NULL,
    key_version    INTEGER NOT NULL,
    wrapped_dek    BLOB NOT NULL,
    nonce          BLOB NOT NULL,
    ciphertext     BLOB NOT NULL,
    created_at     INTEGER NOT NULL,
    created_by     TEXT NOT NULL,
    PRIMARY KEY (account, shard, version)
) STRICT;

-- Tier migration looks versions up by the backend that wrapped them.
CREATE INDEX shard_versions_backend ON shard_versions (backend);

-- Append-only audit log: one hash chain per gateway process.
CREATE TABLE audit_events (
    chain_id   TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    ts_ms      INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    account    TEXT,
    shard      TEXT,
    version    INTEGER,
    backend    TEXT,
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_tag   BLOB NOT NULL,
    tag        BLOB NOT NULL,
    PRIMARY KEY (chain_id, seq)
) STRICT;

-- Chains as registered at process start (so a chain whose events were all deleted is
-- still known to `audit verify`).
CREATE TABLE audit_chains (
    chain_id   TEXT NOT NULL PRIMARY KEY,
    started_ms INTEGER NOT NULL,
    host       TEXT NOT NULL
) STRICT;
