-- Audit archive: check a segment's hot rows a step at a time (docs/audit-archive.md,
-- "Pacing"). Until now `audit_archive_record` checked a segment's rows (count, first
-- `prev_tag`, last tag, SHA-256 over their tags in order, time range) in one statement: for a
-- segment of 50,000 events, 60-90 ms of one core on this project's bench machine, in one
-- burst beside the requests the database serves, once a segment even when the archiver is
-- paced. Now a paced archiver calls `audit_archive_check` for a step of the segment at a time
-- (2,000 rows), each step stored in `audit_archive_checks`; `audit_archive_record` then
-- makes the same checks from the stored steps (their tags concatenated: 64 KB a step) when
-- they cover the segment exactly, and reads the rows themselves otherwise (an unpaced pass,
-- an earlier release's `audit_archive_prune`).
--
-- Why stored steps are as good as reading the rows at record time: the steps are written only
-- by `audit_archive_check` (SECURITY DEFINER; the runtime role holds no privilege on the
-- table), each from the rows themselves, each continuing the one before from the segment's
-- first seq; and the rows of a segment not yet recorded can no longer change: the runtime
-- role cannot update or delete audit rows, the primary key keeps a seq from being written
-- twice, and `audit_archive_delete` only deletes rows recorded segments cover. A chain keeps
-- the steps of one segment at most: a check from a segment's first seq drops the chain's
-- earlier steps, and recording a segment drops them too.
CREATE TABLE audit_archive_checks (
    chain_id  TEXT COLLATE "C" NOT NULL,
    first_seq BIGINT NOT NULL,
    from_seq  BIGINT NOT NULL,
    to_seq    BIGINT NOT NULL,
    min_ts_ms BIGINT NOT NULL,
    max_ts_ms BIGINT NOT NULL,
    prev_tag  BYTEA NOT NULL,
    last_tag  BYTEA NOT NULL,
    tags      BYTEA NOT NULL,
    PRIMARY KEY (chain_id, first_seq, from_seq),
    CHECK (first_seq >= 1 AND from_seq >= first_seq AND to_seq >= from_seq)
);
REVOKE ALL ON audit_archive_checks FROM PUBLIC;

-- Check the rows `p_from_seq..=p_to_seq` of the segment that starts at `p_first_seq`: all
-- hot, stored as a step; the rows checked. Refused (SG001) when a row is missing, the range
-- is not in the segment or longer than 100,000 rows, or it does not continue the steps
-- stored so far; the same step again answers as the first time did.
CREATE FUNCTION audit_archive_check(
    p_chain_id TEXT, p_first_seq BIGINT, p_from_seq BIGINT, p_to_seq BIGINT
) RETURNS BIGINT
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    n      BIGINT;
    lo     BIGINT;
    hi     BIGINT;
    t      BYTEA;
    first_prev BYTEA;
    last_t BYTEA;
    done   BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('shardgate audit archive ' || p_chain_id, 0));
    IF p_first_seq IS NULL OR p_from_seq IS NULL OR p_to_seq IS NULL OR p_first_seq < 1
       OR p_from_seq < p_first_seq OR p_to_seq < p_from_seq OR p_to_seq - p_from_seq >= 100000 THEN
        RAISE EXCEPTION 'audit check %:%: % to % is not a step of the segment',
            p_chain_id, p_first_seq, p_from_seq, p_to_seq USING ERRCODE = 'SG001';
    END IF;
    IF p_from_seq = p_first_seq THEN
        DELETE FROM audit_archive_checks WHERE chain_id = p_chain_id;
    ELSE
        SELECT max(to_seq) INTO done FROM audit_archive_checks
            WHERE chain_id = p_chain_id AND first_seq = p_first_seq;
        IF done IS DISTINCT FROM p_from_seq - 1 THEN
            SELECT to_seq - from_seq + 1 INTO n FROM audit_archive_checks
                WHERE chain_id = p_chain_id AND first_seq = p_first_seq
                  AND from_seq = p_from_seq AND to_seq = p_to_seq;
            IF FOUND THEN
                RETURN n; -- checked by an earlier call
            END IF;
            RAISE EXCEPTION 'audit check %:%: % does not continue the rows checked so far',
                p_chain_id, p_first_seq, p_from_seq USING ERRCODE = 'SG001';
        END IF;
    END IF;
    SELECT count(*), min(ts_ms), max(ts_ms), string_agg(tag, ''::bytea ORDER BY seq)
        INTO n, lo, hi, t
        FROM audit_events
        WHERE chain_id = p_chain_id AND seq BETWEEN p_from_seq AND p_to_seq;
    IF n <> p_to_seq - p_from_seq + 1 THEN
        RAISE EXCEPTION 'audit events %:%..% are not all in the hot table',
            p_chain_id, p_from_seq, p_to_seq USING ERRCODE = 'SG001';
    END IF;
    SELECT prev_tag INTO first_prev FROM audit_events
        WHERE chain_id = p_chain_id AND seq = p_from_seq;
    SELECT tag INTO last_t FROM audit_events WHERE chain_id = p_chain_id AND seq = p_to_seq;
    INSERT INTO audit_archive_checks VALUES (
        p_chain_id, p_first_seq, p_from_seq, p_to_seq, lo, hi, first_prev, last_t, t);
    RETURN n;
END
$$;

REVOKE ALL ON FUNCTION audit_archive_check(TEXT, BIGINT, BIGINT, BIGINT) FROM PUBLIC;

-- `audit_archive_record` as in migration 0021, taking its checks from the stored steps
-- when they cover the segment exactly, and dropping the chain's steps once it is recorded.
CREATE OR REPLACE FUNCTION audit_archive_record(
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
    chunks BIGINT;
    staged_from BIGINT;
    staged_to BIGINT;
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
    SELECT count(*), sum(to_seq - from_seq + 1), min(min_ts_ms), max(max_ts_ms),
           sha256(string_agg(tags, ''::bytea ORDER BY from_seq)), min(from_seq), max(to_seq)
        INTO chunks, n, lo, hi, digest, staged_from, staged_to
        FROM audit_archive_checks WHERE chain_id = p_chain_id AND first_seq = p_first_seq;
    IF chunks > 0 AND staged_from = p_first_seq AND staged_to = p_last_seq THEN
        -- Checked a step at a time by audit_archive_check: its steps are contiguous from
        -- p_first_seq, and the rows they read can no longer change (see above).
        SELECT prev_tag INTO first_prev FROM audit_archive_checks
            WHERE chain_id = p_chain_id AND first_seq = p_first_seq AND from_seq = p_first_seq;
        SELECT last_tag INTO last_t FROM audit_archive_checks
            WHERE chain_id = p_chain_id AND first_seq = p_first_seq AND to_seq = p_last_seq;
    ELSE
        SELECT count(*), min(ts_ms), max(ts_ms), sha256(string_agg(tag, ''::bytea ORDER BY seq))
            INTO n, lo, hi, digest
            FROM audit_events
            WHERE chain_id = p_chain_id AND seq BETWEEN p_first_seq AND p_last_seq;
        SELECT prev_tag INTO first_prev FROM audit_events
            WHERE chain_id = p_chain_id AND seq = p_first_seq;
        SELECT tag INTO last_t FROM audit_events WHERE chain_id = p_chain_id AND seq = p_last_seq;
    END IF;
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
    DELETE FROM audit_archive_checks WHERE chain_id = p_chain_id;
    RETURN n;
END
$$;
