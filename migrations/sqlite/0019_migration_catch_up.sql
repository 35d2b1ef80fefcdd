-- A policy apply's re-wrap jobs look again (docs/policy-and-migration.md, "Writes placed by
-- the version before"): once every replica can have polled the new version and every write
-- in flight across the apply has ended, the job snapshots its selector a second time, so the
-- versions that lagging replicas placed by the old version are moved too. NULL: no second
-- look pending (every job before this migration, and every job started by hand).
ALTER TABLE migration_jobs ADD COLUMN catch_up_at INTEGER;
