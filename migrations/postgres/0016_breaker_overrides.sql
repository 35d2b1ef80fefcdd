-- Operator overrides of backend breakers, cluster-wide (docs/operations.md, "Breakers"):
-- `circuit:open` with a time to live (maintenance) and `circuit:close`. Every replica reads the
-- rows it has not seen every `[breaker] refresh_ms` and applies them; the newest row of a
-- backend wins, and a replica starting applies each backend's newest row that is still in
-- force. Append-only, each with its audit event in the same transaction; ids are assigned
-- max + 1 in the insert (no sequence, so the runtime role needs no sequence privilege).
CREATE TABLE breaker_overrides (
    id         BIGINT NOT NULL PRIMARY KEY CHECK (id >= 1),
    backend    TEXT NOT NULL,
    action     TEXT NOT NULL CHECK (action IN ('open', 'close')),
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX breaker_overrides_backend ON breaker_overrides (backend, id);
