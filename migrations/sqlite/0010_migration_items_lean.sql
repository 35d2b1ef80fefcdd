-- As on PostgreSQL (see its 0010): `migration_items_claim` (job, state, key) is replaced by a
-- partial index of failed items, the only reader it had left; claims read
-- `migration_items_pending`. Each settled or claimed item then updates one index fewer.
DROP INDEX migration_items_claim;
CREATE INDEX migration_items_failed
    ON migration_items (job_id, account, shard, version) WHERE state = 'failed';
