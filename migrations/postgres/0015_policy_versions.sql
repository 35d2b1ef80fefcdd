-- The cluster's tier policy (tiers, pins, rollouts) as versioned rows (docs/policy-and-migration.md, "Policy
-- in the database"). Version 1 is seeded from the config file of the first gateway to start on
-- an empty database; later versions come only from `shardgate policy apply` or
-- `PUT /v1/admin/policy`, each with its audit event in the same transaction. Every replica
-- serves the highest version, polling every `[policy] refresh_ms`. Append-only: a version is
-- never changed or deleted, so the history of what placed which write is kept.
CREATE TABLE policy_versions (
    version    BIGINT NOT NULL PRIMARY KEY CHECK (version >= 1),
    document   TEXT NOT NULL,
    digest     TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
