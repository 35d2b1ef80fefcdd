-- Audit archive in two steps (docs/audit-archive.md, "Pacing"): record a segment, then delete
-- the hot rows it covers a chunk at a time, so that a busy database never spends one long
-- burst of work on a 50,000-event segment beside the requests it serves.
--
-- `audit_archive_record` is `audit_archive_prune` (migration 0012) without its DELETE: the
-- same checks (the rows are exactly the segment's: count, first `prev_tag`, last `tag`,
-- SHA-256 over their tags in order, time range; it continues the chain's previous segment or
-- starts the chain), the same advisory lock, and it stays the only writer of
-- `audit_segments`. It takes no row locks: the runtime role cannot update or delete audit
-- rows, and the two functions below serialize on the chain's advisory lock.
--
-- `audit_archive_delete` deletes the chain's hot rows in the `p_limit` seqs from its oldest
-- hot row on, but only those recorded segments cover (segments are contiguous from seq 1,
-- so "covered" is `1 <= seq <= the last recorded segment's last_seq`), and nothing else.
--
-- `audit_archive_prune` stays for replicas of an earlier release during a rolling upgrade,
-- redefined below as the two in one transaction, so that its checks live in one place.
CREATE FUNCTION audit_archive_record(
    p_chain_id TEXT, p_first_seq BIGINT, p_last_seq BIGINT,
    p_min_ts_ms BIGINT, p_max_ts_ms BIGINT,
    p_prev_tag BYTEA, p_last_tag BYTEA, p_tags_sha256 BYTEA,
    p_object_key TEXT, p_object_sha256 BYTEA, p_object_bytes BIGINT,
    p_manifest_key TEXT, p_manifest_sha256 BYTEA, p_prev_manifest_sha256 BYTEA,
    p_archived_ms BIGINT
) RETURNS BIGINT
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    zero   CONSTANT BYTEA := decode(repeat('00', 32), 'hex');
    seg    audit_segments%ROWTYPE;
    n      BIGINT;
    lo     BIGINT;
    hi     BIGINT;
    digest BYTEA;
    first_prev BYTEA;
    last_t BYTEA;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('shardgate audit archive ' || p_chain_id, 0));
    SELECT * INTO seg FROM audit_segments WHERE chain_id = p_chain_id AND first_seq = p_first_seq;
    IF FOUND THEN
        IF seg.last_seq = p_last_seq AND seg.manifest_sha256 = p_manifest_sha256 THEN
            RETURN 0; -- recorded by an earlier run
        END IF;
        RAISE EXCEPTION 'audit segment %:% is already recorded with another range or manifest',
            p_chain_id, p_first_seq USING ERRCODE = 'SG001';
    END IF;
    SELECT * INTO seg FROM audit_segments WHERE chain_id = p_chain_id
        ORDER BY first_seq DESC LIMIT 1;
    IF FOUND THEN
        IF seg.last_seq + 1 <> p_first_seq OR seg.last_tag <> p_prev_tag
           OR seg.manifest_sha256 <> p_prev_manifest_sha256 THEN
            RAISE EXCEPTION 'audit segment %:% does not continue the chain''s archived segments',
                p_chain_id, p_first_seq USING ERRCODE = 'SG001';
        END IF;
    ELSIF p_first_seq <> 1 OR p_prev_tag <> zero OR p_prev_manifest_sha256 <> zero THEN
        RAISE EXCEPTION 'audit segment %:% does not start its chain', p_chain_id, p_first_seq
            USING ERRCODE = 'SG001';
    END IF;
    SELECT count(*), min(ts_ms), max(ts_ms), sha256(string_agg(tag, ''::bytea ORDER BY seq))
        INTO n, lo, hi, digest
        FROM audit_events
        WHERE chain_id = p_chain_id AND seq BETWEEN p_first_seq AND p_last_seq;
    SELECT prev_tag INTO first_prev FROM audit_events
        WHERE chain_id = p_chain_id AND seq = p_first_seq;
    SELECT tag INTO last_t FROM audit_events WHERE chain_id = p_chain_id AND seq = p_last_seq;
    IF n <> p_last_seq - p_first_seq + 1 OR first_prev IS DISTINCT FROM p_prev_tag
       OR last_t IS DISTINCT FROM p_last_tag OR digest IS DISTINCT FROM p_tags_sha256
       OR lo IS DISTINCT FROM p_min_ts_ms OR hi IS DISTINCT FROM p_max_ts_ms THEN
        RAISE EXCEPTION 'audit events %:%..% are not the ones the segment holds',
            p_chain_id, p_first_seq, p_last_seq USING ERRCODE = 'SG001';
    END IF;
    INSERT INTO audit_segments VALUES (
        p_chain_id, p_first_seq, p_last_seq, n, p_min_ts_ms, p_max_ts_ms, p_prev_tag, p_last_tag,
        p_tags_sha256, p_object_key, p_object_sha256, p_object_bytes, p_manifest_key,
        p_manifest_sha256, p_prev_manifest_sha256, p_archived_ms);
    RETURN n;
END
$$;

CREATE FUNCTION audit_archive_delete(p_chain_id TEXT, p_limit BIGINT) RETURNS BIGINT
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    upto BIGINT;
    lo   BIGINT;
    hi   BIGINT;
    gone BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('shardgate audit archive ' || p_chain_id, 0));
    SELECT last_seq INTO upto FROM audit_segments WHERE chain_id = p_chain_id
        ORDER BY first_seq DESC LIMIT 1;
    IF NOT FOUND OR p_limit IS NULL OR p_limit < 1 THEN
        RETURN 0;
    END IF;
    SELECT min(seq) INTO lo FROM audit_events WHERE chain_id = p_chain_id AND seq >= 1;
    IF lo IS NULL OR lo > upto THEN
        RETURN 0;
    END IF;
    -- One range of the primary key, as the archiver's reads go: `p_limit` seqs from the
    -- oldest (fewer rows where seqs are missing), never past the recorded segments.
    hi := CASE WHEN p_limit > upto - lo THEN upto ELSE lo + p_limit - 1 END;
    DELETE FROM audit_events WHERE chain_id = p_chain_id AND seq BETWEEN lo AND hi;
    GET DIAGNOSTICS gone = ROW_COUNT;
    RETURN gone;
END
$$;

CREATE OR REPLACE FUNCTION audit_archive_prune(
    p_chain_id TEXT, p_first_seq BIGINT, p_last_seq BIGINT,
    p_min_ts_ms BIGINT, p_max_ts_ms BIGINT,
    p_prev_tag BYTEA, p_last_tag BYTEA, p_tags_sha256 BYTEA,
    p_object_key TEXT, p_object_sha256 BYTEA, p_object_bytes BIGINT,
    p_manifest_key TEXT, p_manifest_sha256 BYTEA, p_prev_manifest_sha256 BYTEA,
    p_archived_ms BIGINT
) RETURNS BIGINT
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    n BIGINT;
BEGIN
    n := audit_archive_record(p_chain_id, p_first_seq, p_last_seq, p_min_ts_ms, p_max_ts_ms,
        p_prev_tag, p_last_tag, p_tags_sha256, p_object_key, p_object_sha256, p_object_bytes,
        p_manifest_key, p_manifest_sha256, p_prev_manifest_sha256, p_archived_ms);
    IF n = 0 THEN
        RETURN 0; -- recorded by an earlier run
    END IF;
    RETURN audit_archive_delete(p_chain_id, n);
END
$$;

REVOKE ALL ON FUNCTION audit_archive_record(TEXT, BIGINT, BIGINT, BIGINT, BIGINT, BYTEA, BYTEA,
    BYTEA, TEXT, BYTEA, BIGINT, TEXT, BYTEA, BYTEA, BIGINT) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_archive_delete(TEXT, BIGINT) FROM PUBLIC;
