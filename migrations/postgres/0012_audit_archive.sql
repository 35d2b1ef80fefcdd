-- Audit archive (docs/audit-archive.md): segments of a chain written to object storage, and
-- the one way their events leave the hot table.
--
-- `audit_segments` records each archived, read-back segment. Its only writer is
-- `audit_archive_prune`, a SECURITY DEFINER function owned by the schema owner: the runtime
-- role may call it (scripts/sql/grants.sql) but holds neither INSERT on `audit_segments`
-- (else it could fake coverage) nor DELETE on `audit_events`. The function deletes only
-- rows that the segment it records covers exactly: the same count, the same first
-- `prev_tag` and last `tag`, the same SHA-256 over their tags in order, and continuing the
-- chain's previous segment (or starting it at seq 1).
CREATE TABLE audit_segments (
    chain_id             TEXT COLLATE "C" NOT NULL,
    first_seq            BIGINT NOT NULL,
    last_seq             BIGINT NOT NULL,
    event_count          BIGINT NOT NULL,
    min_ts_ms            BIGINT NOT NULL,
    max_ts_ms            BIGINT NOT NULL,
    prev_tag             BYTEA NOT NULL,
    last_tag             BYTEA NOT NULL,
    tags_sha256          BYTEA NOT NULL,
    object_key           TEXT COLLATE "C" NOT NULL,
    object_sha256        BYTEA NOT NULL,
    object_bytes         BIGINT NOT NULL,
    manifest_key         TEXT COLLATE "C" NOT NULL,
    manifest_sha256      BYTEA NOT NULL,
    prev_manifest_sha256 BYTEA NOT NULL,
    archived_ms          BIGINT NOT NULL,
    PRIMARY KEY (chain_id, first_seq),
    CHECK (first_seq >= 1 AND last_seq >= first_seq AND event_count = last_seq - first_seq + 1)
);

-- One archiver at a time across replicas: a lease row, taken and renewed with an expiry.
CREATE TABLE audit_archive_leases (
    name       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);

CREATE FUNCTION audit_archive_prune(
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
    gone   BIGINT;
BEGIN
    -- One segment of a chain at a time.
    PERFORM pg_advisory_xact_lock(hashtextextended('shardgate audit archive ' || p_chain_id, 0));
    SELECT * INTO seg FROM audit_segments WHERE chain_id = p_chain_id AND first_seq = p_first_seq;
    IF FOUND THEN
        IF seg.last_seq = p_last_seq AND seg.manifest_sha256 = p_manifest_sha256 THEN
            RETURN 0; -- recorded by an earlier run: nothing left to do
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
        FROM (SELECT seq, ts_ms, tag FROM audit_events
              WHERE chain_id = p_chain_id AND seq BETWEEN p_first_seq AND p_last_seq
              FOR UPDATE) covered;
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
    DELETE FROM audit_events WHERE chain_id = p_chain_id AND seq BETWEEN p_first_seq AND p_last_seq;
    GET DIAGNOSTICS gone = ROW_COUNT;
    RETURN gone;
END
$$;

REVOKE ALL ON FUNCTION audit_archive_prune(TEXT, BIGINT, BIGINT, BIGINT, BIGINT, BYTEA, BYTEA,
    BYTEA, TEXT, BYTEA, BIGINT, TEXT, BYTEA, BYTEA, BIGINT) FROM PUBLIC;
