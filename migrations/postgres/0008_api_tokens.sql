-- Token lifecycle (PostgreSQL). Tokens kept in the database (hashes only, never the token)
-- and revocations of any token, from the database or a config file: every replica reloads
-- both every `[auth] refresh_secs` and on SIGHUP, so a new or revoked token takes effect
-- everywhere without a restart. A token id is the first 16 hex digits of the token's SHA-256.
CREATE TABLE api_tokens (
    token_id       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name           TEXT NOT NULL,
    sha256         TEXT COLLATE "C" NOT NULL UNIQUE,
    scopes         TEXT NOT NULL,
    account_prefix TEXT COLLATE "C",
    created_ms     BIGINT NOT NULL,
    expires_ms     BIGINT
);

CREATE TABLE token_revocations (
    token_id   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    revoked_ms BIGINT NOT NULL,
    reason     TEXT NOT NULL
);

-- Which credential made the request: HMAC-SHA256 of its token id under the deployment's
-- audit key (FORMAT.md, "Audit events"), so the table names no token id itself.
ALTER TABLE audit_events ADD COLUMN credential TEXT;
