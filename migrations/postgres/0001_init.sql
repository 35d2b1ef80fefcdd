-- shardgate initial schema (PostgreSQL).
--
-- Every id column is COLLATE "C": ids are compared, ordered and paginated by their exact
-- bytes, case-sensitively, whatever the database's default collation is.

CREATE TABLE accounts (
    account    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    tier       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- One immutable row per stored shard version. No ON DELETE CASCADE: deleting an account
-- deletes its versions explicitly, in the same transaction, and counts them.
CREATE TABLE shard_versions (
    account        TEXT COLLATE "C" NOT NULL REFERENCES accounts (account),
    shard          TEXT COLLATE "C" NOT NULL,
    version        BIGINT NOT NULL CHECK (version >= 1),
    format_version SMALLINT NOT NULL,
    backend        TEXT COLLATE "C" NOT NULL,
    key_ref        TEXT NOT NULL,
    key_version    BIGINT NOT NULL,
    wrapped_dek    BYTEA NOT NULL,
    nonce          BYTEA NOT NULL,
    ciphertext     BYTEA NOT NULL,
    created_at     BIGINT NOT NULL,
    created_by     TEXT NOT NULL,
    PRIMARY KEY (account, shard, version)
);

-- Tier migration looks versions up by the backend that wrapped them.
CREATE INDEX shard_versions_backend ON shard_versions (backend);

-- Append-only audit log: one hash chain per gateway process.
CREATE TABLE audit_events (
    chain_id   TEXT COLLATE "C" NOT NULL,
    seq        BIGINT NOT NULL,
    ts_ms      BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    account    TEXT COLLATE "C",
    shard      TEXT COLLATE "C",
    version    BIGINT,
    backend    TEXT,
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_tag   BYTEA NOT NULL,
    tag        BYTEA NOT NULL,
    PRIMARY KEY (chain_id, seq)
);

-- Chains as registered at process start (so a chain whose events were all deleted is
-- still known to `audit verify`).
CREATE TABLE audit_chains (
    chain_id   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    started_ms BIGINT NOT NULL,
    host       TEXT NOT NULL
);
