-- Idempotency keys (PostgreSQL): the first answer of a PUT/DELETE made with an
-- `Idempotency-Key`, stored in the same transaction as the write it answers.
--
-- `scope` is the caller identity + method + path, so one identity's key never collides with
-- another's. `body_json` never carries shard bytes. Records older than the configured window
-- are ignored, replaced by a new write with the same key, and purged.

CREATE TABLE idempotency_keys (
    scope        TEXT COLLATE "C" NOT NULL,
    key          TEXT COLLATE "C" NOT NULL,
    request_hash BYTEA NOT NULL,
    status       INTEGER NOT NULL,
    body_json    TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);

-- Purging scans by age.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
