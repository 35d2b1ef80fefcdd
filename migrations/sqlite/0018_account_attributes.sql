-- Tiers from account facts (docs/policy-and-migration.md, "Tiers from account attributes"):
-- the numeric attributes the platform set on an account (a canonical JSON object; '{}' for
-- none) and the tier it asked for (NULL: the same as `tier`, as for every account put before
-- tier rules). `tier` stays the tier the account is in, which placement, shard writes, the
-- downgrade guard and the re-wrap jobs read: the policy's tier rules derive it from these two.
ALTER TABLE accounts ADD COLUMN attributes TEXT NOT NULL DEFAULT '{}';
ALTER TABLE accounts ADD COLUMN requested_tier TEXT;
