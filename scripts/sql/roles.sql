-- shardgate on PostgreSQL: the role layout (docs/security.md, "Database least privilege").
--
--   owner  (default shardgate_owner)  owns the tables and runs `shardgate db migrate` (DDL).
--                                     No running gateway connects as it.
--   app    (default shardgate_app)    the gateway's runtime role (`[store] migrate = false`):
--                                     no DDL, owns nothing; on the audit tables SELECT and
--                                     INSERT only, never UPDATE, DELETE or TRUNCATE.
--
-- Run ONCE, as a superuser (or a role with CREATEROLE that may grant on the database),
-- connected to the shardgate database (create it first: `createdb shardgate`):
--
--   psql -X -v ON_ERROR_STOP=1 -d shardgate -f scripts/sql/roles.sql
--   # other names: -v owner=NAME -v app=NAME (and the same -v app=NAME for grants.sql)
--
-- Then give both roles a password (`\password shardgate_owner`, `\password shardgate_app`
-- in psql; never on a command line), run `shardgate db migrate` as the owner role, and
-- apply scripts/sql/grants.sql. Re-running this script changes nothing that is in place.
--
-- A database that an earlier gateway migrated under another role: after this script,
-- `REASSIGN OWNED BY old_role TO shardgate_owner;` (as a superuser, in this database) hands
-- its tables to the owner role.

\set ON_ERROR_STOP on
\if :{?owner}
\else
\set owner shardgate_owner
\endif
\if :{?app}
\else
\set app shardgate_app
\endif
SELECT current_database() AS db \gset

-- Two login roles with no other attribute (no superuser, no CREATEDB/CREATEROLE, no
-- replication, no row-level-security bypass). No password here: see above.
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS', :'owner')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'owner') \gexec
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS', :'app')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app') \gexec

-- Only these two roles (and superusers) connect to the database; nobody makes temporary
-- tables in it.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"owner", :"app";

-- The schema: the owner creates the tables in it, the runtime role only uses it. (PUBLIC has
-- no CREATE here since PostgreSQL 15; this makes it so on older servers too.)
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"owner";
GRANT USAGE ON SCHEMA public TO :"app";
REVOKE CREATE ON SCHEMA public FROM :"app";
