-- Dual control (docs/security.md, "Dual control"): with `[approvals] required_for`, an account
-- delete, a key destroy, a policy apply or a confirmed downgrade is first stored here as a
-- pending request (202) and runs only once a second, different credential approves it before
-- `expires_ms`. The request's parameters are kept as JSON (no secret: ids, tiers, a policy);
-- each step has its audit event in the same transaction. Rows are never deleted.
CREATE TABLE approvals (
    id                   TEXT NOT NULL PRIMARY KEY,
    operation            TEXT NOT NULL,
    request              TEXT NOT NULL,
    summary              TEXT NOT NULL,
    requested_by         TEXT NOT NULL,
    requested_credential TEXT NOT NULL,
    created_ms           INTEGER NOT NULL,
    expires_ms           INTEGER NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('pending', 'approved')),
    approved_by          TEXT,
    approved_credential  TEXT,
    approved_ms          INTEGER
) STRICT;
