-- Key lifecycle (PostgreSQL): the state of every KEK version of every backend instance (NIST
-- SP 800-57: active, decrypt-only, destroyed) and its wrap counter.
--
-- The database, not a keyring file, is where replicas agree on which version wraps: at most
-- one `active` version per backend (the partial unique index), `decrypt-only` versions still
-- unwrap, `destroyed` is terminal and is refused for every use. `reserved_upto` counts wraps
-- handed out in blocks to replicas (a replica reserves a block with one UPDATE and counts
-- inside it in memory), so the AES-GCM random-nonce bound is enforced across replicas
-- without a write per wrap.

CREATE TABLE key_versions (
    backend       TEXT COLLATE "C" NOT NULL,
    key_version   BIGINT NOT NULL CHECK (key_version >= 0),
    key_ref       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('active', 'decrypt-only', 'destroyed')),
    created_ms    BIGINT NOT NULL,
    changed_ms    BIGINT NOT NULL,
    changed_by    TEXT NOT NULL,
    reserved_upto BIGINT NOT NULL DEFAULT 0 CHECK (reserved_upto >= 0),
    PRIMARY KEY (backend, key_version)
);

CREATE UNIQUE INDEX key_versions_one_active ON key_versions (backend) WHERE state = 'active';

-- References per (backend, key version) are counted before a version may be destroyed, and
-- listed by `GET /v1/admin/keys`; the index also serves every lookup by backend alone, which
-- the 0001 index did.
CREATE INDEX shard_versions_backend_key ON shard_versions (backend, key_version);
DROP INDEX shard_versions_backend;
