-- Envelope format 2 (SQLite): the 32-byte commitment to a version's data key
-- (FORMAT.md §3a). NULL on format 1 rows, which were written before it existed. A re-wrap
-- never changes it; the gateway checks it (and its presence, by format) on every read.

ALTER TABLE shard_versions ADD COLUMN key_commitment BLOB;
