-- Tier-migration jobs (PostgreSQL): a job and the shard versions it snapshotted (its items).
--
-- Id columns are COLLATE "C" as in 0001: compared and ordered by their exact bytes. Items
-- carry no foreign key to shard_versions: a shard deleted while a job runs leaves its item,
-- which the next claim settles as skipped.

CREATE TABLE migration_jobs (
    id                    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    -- The selector; NULL = field not set.
    sel_account           TEXT COLLATE "C",
    sel_from_backend      TEXT COLLATE "C",
    sel_key_version_below BIGINT,
    state                 TEXT NOT NULL CHECK (state IN
        ('running', 'paused', 'cancelled', 'completed', 'completed_with_errors')),
    total                 BIGINT NOT NULL DEFAULT 0 CHECK (total >= 0),
    done                  BIGINT NOT NULL DEFAULT 0 CHECK (done >= 0),
    failed                BIGINT NOT NULL DEFAULT 0 CHECK (failed >= 0),
    skipped               BIGINT NOT NULL DEFAULT 0 CHECK (skipped >= 0),
    last_error            TEXT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    created_by            TEXT NOT NULL
);

-- Live jobs are looked up by state at start-up, oldest first.
CREATE INDEX migration_jobs_state ON migration_jobs (state, created_at);

CREATE TABLE migration_items (
    job_id      TEXT COLLATE "C" NOT NULL REFERENCES migration_jobs (id),
    account     TEXT COLLATE "C" NOT NULL,
    shard       TEXT COLLATE "C" NOT NULL,
    version     BIGINT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed', 'skipped')),
    -- Worker holding (or, once settled, that settled) the item, and until when its claim
    -- holds (unix milliseconds); a pending item whose lease expired may be claimed again.
    claimed_by  TEXT,
    lease_until BIGINT,
    error       TEXT,
    PRIMARY KEY (job_id, account, shard, version)
);

-- Claiming scans a job's pending items in (account, shard, version) order; listing failures
-- scans its failed ones the same way.
CREATE INDEX migration_items_claim
    ON migration_items (job_id, state, account, shard, version);
