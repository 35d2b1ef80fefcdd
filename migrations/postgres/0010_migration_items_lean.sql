-- A job writes each of its items twice (the claim, then the settlement), and every write of
-- an item that is not HOT adds an entry to each of the table's indexes. Measured on a
-- 100,000-item local -> pkcs11 job, these writes were most of PostgreSQL's time per item.
--
-- `migration_items_claim` (job, state, key) served two readers: claims, which now read
-- `migration_items_pending`, and the listing of a job's failures, which gets a partial index
-- of its own that holds only failed items.
DROP INDEX migration_items_claim;
CREATE INDEX migration_items_failed
    ON migration_items (job_id, account, shard, version) WHERE state = 'failed';

-- Room on each page for the claim's new row version: a claim changes no indexed column (nor
-- the state the partial indexes test), so with free space on the page it is a HOT update,
-- which writes no index entry at all. A snapshot fills its pages to the brim otherwise.
ALTER TABLE migration_items SET (fillfactor = 50);
