-- shardgate on PostgreSQL: the runtime role's table privileges (docs/security.md, "Database least
-- privilege"). The whole set, and nothing more: it is `RUNTIME_PRIVILEGES` in
-- store/src/schema.rs, and the gateway checks at start-up (`[store] migrate = false`) that it
-- holds every one of them. A test applies this file and compares the two.
--
-- Run after EVERY `shardgate db migrate` (a migration may add a table), as the owner role or
-- a superuser, connected to the shardgate database:
--
--   psql -X -v ON_ERROR_STOP=1 -d shardgate -f scripts/sql/grants.sql   # -v app=NAME
--
-- Nothing the gateway does at runtime updates or deletes an audit row directly: pruned shard
-- versions get NEW audit events, and events leave the hot table only once archived, through
-- the SECURITY DEFINER functions `audit_archive_delete` and `audit_archive_prune` (owned by
-- the owner role). So the audit
-- tables are append-only for the runtime role: SELECT and INSERT, no UPDATE, DELETE or
-- TRUNCATE.

\set ON_ERROR_STOP on
\if :{?app}
\else
\set app shardgate_app
\endif

BEGIN;

-- Start from nothing on every table and sequence of the schema (also PUBLIC's), so that
-- what follows is the complete set.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC, :"app";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC, :"app";

-- Accounts, shard versions (written, re-wrapped by tier migration, crypto-shredded by
-- deletes and retention) and idempotency records (claimed, answered, purged).
GRANT SELECT, INSERT, UPDATE, DELETE ON accounts, shard_versions, idempotency_keys TO :"app";

-- Tier-migration jobs and their items: created, claimed and settled; never deleted.
GRANT SELECT, INSERT, UPDATE ON migration_jobs, migration_items TO :"app";

-- The audit log: append-only.
GRANT SELECT, INSERT ON audit_events, audit_chains TO :"app";

-- Policy versions (docs/policy.md): appended by `policy apply`, never changed or deleted.
GRANT SELECT, INSERT ON policy_versions TO :"app";

-- Re-tier passes of policy applies: recorded due before the version commits, marked done
-- when every account was re-derived.
GRANT SELECT, INSERT, UPDATE ON policy_retier TO :"app";

-- Operator overrides of backend breakers (circuit:open / circuit:close): appended, never
-- changed or deleted.
GRANT SELECT, INSERT ON breaker_overrides TO :"app";

-- Dual-control requests (docs/security.md, "Dual control"): stored, then approved once; never
-- deleted.
GRANT SELECT, INSERT, UPDATE ON approvals TO :"app";

-- The audit archive (docs/audit-archive.md): archived segments are read only; the one way
-- a segment is recorded is the SECURITY DEFINER function `audit_archive_record` (or
-- `audit_archive_prune`, which also deletes its rows: kept for an earlier release), which
-- checks that the segment covers exactly those rows; the one way hot rows leave is
-- `audit_archive_delete`, which deletes only rows a recorded segment covers. A paced archiver
-- checks a segment's rows a step at a time first through `audit_archive_check`, which alone
-- writes the steps `audit_archive_record` then trusts (`audit_archive_checks`: no privilege
-- here). The lease keeps one archiver at a time.
GRANT SELECT ON audit_segments TO :"app";
GRANT SELECT, INSERT, UPDATE ON audit_archive_leases TO :"app";
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC, :"app";
GRANT EXECUTE ON FUNCTION audit_archive_prune(TEXT, BIGINT, BIGINT, BIGINT, BIGINT, BYTEA, BYTEA,
    BYTEA, TEXT, BYTEA, BIGINT, TEXT, BYTEA, BYTEA, BIGINT) TO :"app";
GRANT EXECUTE ON FUNCTION audit_archive_record(TEXT, BIGINT, BIGINT, BIGINT, BIGINT, BYTEA, BYTEA,
    BYTEA, TEXT, BYTEA, BIGINT, TEXT, BYTEA, BYTEA, BIGINT) TO :"app";
GRANT EXECUTE ON FUNCTION audit_archive_delete(TEXT, BIGINT) TO :"app";
GRANT EXECUTE ON FUNCTION audit_archive_check(TEXT, BIGINT, BIGINT, BIGINT) TO :"app";

-- KEK versions: registered when first seen, moved through active / decrypt-only / destroyed
-- by the admin API, wrap counters advanced in reserved blocks; never deleted.
GRANT SELECT, INSERT, UPDATE ON key_versions TO :"app";

-- API tokens and revocations: reloaded by every gateway, written only by the owner role
-- (`shardgate token create --save`, `shardgate token revoke`), so the runtime role's
-- credentials can neither mint a token nor undo a revocation.
GRANT SELECT ON api_tokens, token_revocations TO :"app";

-- Read at start-up to check that the schema is current; migrations run as the owner.
GRANT SELECT ON _sqlx_migrations TO :"app";

COMMIT;
