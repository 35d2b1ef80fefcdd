-- Audit archive (docs/audit-archive.md): segments of a chain written to object storage, and
-- the one way their events leave the hot table. SQLite has no roles: the triggers below
-- guard against our own bugs (an audit row deleted without a recorded segment covering it,
-- a segment row changed); against someone holding the file, tampering is detected by the
-- anchors in the archive, not prevented (SECURITY.md).
CREATE TABLE audit_segments (
    chain_id             TEXT NOT NULL,
    first_seq            INTEGER NOT NULL,
    last_seq             INTEGER NOT NULL,
    event_count          INTEGER NOT NULL,
    min_ts_ms            INTEGER NOT NULL,
    max_ts_ms            INTEGER NOT NULL,
    prev_tag             BLOB NOT NULL,
    last_tag             BLOB NOT NULL,
    tags_sha256          BLOB NOT NULL,
    object_key           TEXT NOT NULL,
    object_sha256        BLOB NOT NULL,
    object_bytes         INTEGER NOT NULL,
    manifest_key         TEXT NOT NULL,
    manifest_sha256      BLOB NOT NULL,
    prev_manifest_sha256 BLOB NOT NULL,
    archived_ms          INTEGER NOT NULL,
    PRIMARY KEY (chain_id, first_seq),
    CHECK (first_seq >= 1 AND last_seq >= first_seq AND event_count = last_seq - first_seq + 1)
);

CREATE TABLE audit_archive_leases (
    name       TEXT NOT NULL PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);

CREATE TRIGGER audit_events_delete_only_archived BEFORE DELETE ON audit_events
WHEN NOT EXISTS (
    SELECT 1 FROM audit_segments s
    WHERE s.chain_id = OLD.chain_id AND OLD.seq BETWEEN s.first_seq AND s.last_seq
)
BEGIN
    SELECT RAISE(ABORT, 'audit event not covered by an archived segment');
END;

CREATE TRIGGER audit_segments_no_update BEFORE UPDATE ON audit_segments
BEGIN
    SELECT RAISE(ABORT, 'audit segments are never changed');
END;

CREATE TRIGGER audit_segments_no_delete BEFORE DELETE ON audit_segments
BEGIN
    SELECT RAISE(ABORT, 'audit segments are never deleted');
END;
