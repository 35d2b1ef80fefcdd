-- Version retention per account (PostgreSQL): how many versions of each shard a write
-- keeps (older ones are crypto-shredded in the write's transaction); 0 keeps every version,
-- NULL follows the gateway's `[retention] keep_versions`.

ALTER TABLE accounts ADD COLUMN keep_versions BIGINT CHECK (keep_versions >= 0);
