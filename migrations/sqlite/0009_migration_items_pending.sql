-- Claims walk a job's pending items in (account, shard, version) order. In
-- `migration_items_claim` (and the primary key, which the planner may prefer for that order)
-- every item settled so far still lies in the path of each claim: settled rows are filtered
-- out one by one, and the index entries of their earlier `pending` versions stay until a
-- vacuum. Measured on 100,000 items half settled: 19.5 ms per claim through the primary key,
-- 0.08 ms through this index, which holds only pending items.
CREATE INDEX migration_items_pending
    ON migration_items (job_id, account, shard, version) WHERE state = 'pending';
