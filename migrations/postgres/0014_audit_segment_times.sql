-- Audit search across the archive (GET /v1/admin/audit/events): the segments of every chain
-- that meet a time range, oldest first, a page's worth at a time (Store::audit_segments_between),
-- without reading every chain's segments. Ordered scans start from the oldest segment; a
-- search far into the history finds its first segments through max_ts_ms.
CREATE INDEX audit_segments_min_ts ON audit_segments (min_ts_ms, chain_id, first_seq);
CREATE INDEX audit_segments_max_ts ON audit_segments (max_ts_ms);
