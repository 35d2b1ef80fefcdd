-- The steps of a segment's check (docs/audit-archive.md, "Pacing"): a paced archiver checks
-- a segment's hot rows a step at a time (count, first `prev_tag`, last tag, their tags in
-- order, time range), each step stored here, and recording the segment then takes its checks
-- from the stored steps when they cover it exactly, instead of reading every row in one
-- write transaction (which would hold off every other writer meanwhile). A chain keeps the
-- steps of one segment at most. As with the other audit tables on SQLite, this guards
-- against our own bugs; against someone holding the file, tampering is detected by the
-- anchors, not prevented (SECURITY.md).
CREATE TABLE audit_archive_checks (
    chain_id  TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    from_seq  INTEGER NOT NULL,
    to_seq    INTEGER NOT NULL,
    min_ts_ms INTEGER NOT NULL,
    max_ts_ms INTEGER NOT NULL,
    prev_tag  BLOB NOT NULL,
    last_tag  BLOB NOT NULL,
    tags      BLOB NOT NULL,
    PRIMARY KEY (chain_id, first_seq, from_seq),
    CHECK (first_seq >= 1 AND from_seq >= first_seq AND to_seq >= from_seq)
);
