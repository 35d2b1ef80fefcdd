//! Archived audit segments, byte for byte (FORMAT.md, "Audit segments"): a contiguous range
//! of one chain's events in the canonical encoding the chain HMACs, zstd-compressed, and a
//! manifest HMAC'd under the audit key that describes it and chains to the previous
//! segment's manifest. Both verify offline with the audit key alone.

use super::super::chain::{
    canonical, keyed_digest, tag_matches, AuditKey, AUDIT_MAGIC, AUDIT_MAGIC_V2,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shardgate_store::{AuditRecord, AuditSegment};
use std::collections::BTreeSet;
use std::io::Read as _;

/// First bytes of a segment object's decompressed payload.
pub const SEGMENT_MAGIC: &[u8; 8] = b"SGSEG001";

/// `format` of a manifest.
pub const MANIFEST_FORMAT: &str = "sgseg1";

/// First word of a manifest's second line, which carries its HMAC.
const MAC_WORD: &str = "sgmac1";

/// Domain label of a manifest's HMAC ([`keyed_digest`]).
const MANIFEST_DOMAIN: &[u8] = b"shardgate audit segment manifest";

/// Largest decompressed segment read back (a segment is cut well below it).
pub const MAX_SEGMENT_BYTES: u64 = 256 << 20;

/// What the prev-tag of a chain's first event, and the previous-manifest hash of its first
/// segment, are.
pub const ZERO_HASH: [u8; 32] = [0u8; 32];

/// A segment or manifest that is not what it claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SegmentError(pub String);

fn bad(why: impl Into<String>) -> SegmentError {
    SegmentError(why.into())
}

/// Where a chain's segments live in the sink: `{prefix}segments/{chain}/`.
pub fn chain_prefix(prefix: &str, chain_id: &str) -> String {
    format!("{prefix}segments/{chain_id}/")
}

/// The object and manifest keys of a segment; they sort by chain and seq.
pub fn segment_keys(prefix: &str, chain_id: &str, first: i64, last: i64) -> (String, String) {
    let base = format!("{}{first:020}-{last:020}", chain_prefix(prefix, chain_id));
    (format!("{base}.sgseg"), format!("{base}.manifest"))
}

/// The manifest of a segment (FORMAT.md, "Audit segments"). Hashes and tags are lower-case
/// hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// Chain id.
    pub chain_id: String,
    /// Seq of the first event.
    pub first_seq: i64,
    /// Seq of the last event.
    pub last_seq: i64,
    /// Events held.
    pub count: i64,
    /// Oldest event time (unix milliseconds).
    pub min_ts_ms: i64,
    /// Newest event time (unix milliseconds).
    pub max_ts_ms: i64,
    /// `prev_tag` of the first event.
    pub prev_tag: String,
    /// Tag of the last event.
    pub last_tag: String,
    /// SHA-256 over the events' tags in seq order.
    pub tags_sha256: String,
    /// Every account an event names, sorted (search skips segments without the account).
    pub accounts: Vec<String>,
    /// Key of the segment object.
    pub object_key: String,
    /// SHA-256 of the segment object as stored (compressed).
    pub object_sha256: String,
    /// Size of the segment object.
    pub object_bytes: u64,
    /// SHA-256 of the chain's previous manifest object (zeros for its first segment).
    pub prev_manifest_sha256: String,
}

impl Manifest {
    /// The manifest object: its JSON on one line, then `sgmac1 <hex HMAC>`.
    pub fn seal(&self, key: &AuditKey) -> Vec<u8> {
        // Serializing a struct of strings and numbers cannot fail.
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mac = keyed_digest(key, MANIFEST_DOMAIN, &[&body]);
        let mut out = body;
        out.extend_from_slice(format!("\n{MAC_WORD} {}\n", hex::encode(mac)).as_bytes());
        out
    }

    /// Parse a manifest object and check its HMAC.
    pub fn open(bytes: &[u8], key: &AuditKey) -> Result<Self, SegmentError> {
        let text = std::str::from_utf8(bytes).map_err(|_| bad("manifest is not UTF-8"))?;
        let mut lines = text.split('\n');
        let (Some(body), Some(mac_line), Some(""), None) =
            (lines.next(), lines.next(), lines.next(), lines.next())
        else {
            return Err(bad("manifest is not two lines"));
        };
        let mac = mac_line
            .strip_prefix(MAC_WORD)
            .and_then(|m| m.strip_prefix(' '))
            .ok_or_else(|| bad("manifest has no HMAC line"))?;
        // Compared as the lower-case hex written, so that the object has one spelling.
        let want = hex::encode(keyed_digest(key, MANIFEST_DOMAIN, &[body.as_bytes()]));
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            mac.as_bytes(),
            want.as_bytes(),
        )) {
            return Err(bad("manifest HMAC mismatch (edited or forged)"));
        }
        let m: Manifest = serde_json::from_str(body).map_err(|e| bad(format!("manifest: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(bad(format!("manifest format {:?} is unknown", m.format)));
        }
        Ok(m)
    }

    /// The `audit_segments` row of this manifest, stored as `manifest_key` with SHA-256
    /// `manifest_sha256`.
    pub fn row(
        &self,
        manifest_key: &str,
        manifest_sha256: &[u8],
        archived_ms: i64,
    ) -> Result<AuditSegment, SegmentError> {
        let h = |name: &str, v: &str| {
            hex::decode(v).map_err(|_| bad(format!("manifest {name} is not hex")))
        };
        Ok(AuditSegment {
            chain_id: self.chain_id.clone(),
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            min_ts_ms: self.min_ts_ms,
            max_ts_ms: self.max_ts_ms,
            prev_tag: h("prev_tag", &self.prev_tag)?,
            last_tag: h("last_tag", &self.last_tag)?,
            tags_sha256: h("tags_sha256", &self.tags_sha256)?,
            object_key: self.object_key.clone(),
            object_sha256: h("object_sha256", &self.object_sha256)?,
            object_bytes: i64::try_from(self.object_bytes).unwrap_or(i64::MAX),
            manifest_key: manifest_key.to_string(),
            manifest_sha256: manifest_sha256.to_vec(),
            prev_manifest_sha256: h("prev_manifest_sha256", &self.prev_manifest_sha256)?,
            archived_ms,
        })
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// The decompressed payload of a segment: the magic, the event count (`u32be`), then per
/// event `u32be length || canonical encoding || 32-byte tag`.
fn payload(records: &[AuditRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + records.len() * 300);
    out.extend_from_slice(SEGMENT_MAGIC);
    let n = u32::try_from(records.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    for r in records {
        let c = canonical(r);
        let len = u32::try_from(c.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&c);
        out.extend_from_slice(&r.tag);
    }
    out
}

/// The size an event takes in a segment's payload (for cutting segments by bytes).
pub fn payload_len(r: &AuditRecord) -> usize {
    4 + canonical(r).len() + r.tag.len()
}

/// The segment object (compressed) of `records`, which are one chain's consecutive events.
pub fn encode_object(records: &[AuditRecord]) -> Result<Vec<u8>, SegmentError> {
    zstd::bulk::compress(&payload(records), 3).map_err(|e| bad(format!("zstd: {e}")))
}

/// The manifest of `records` stored as `object` under `object_key`.
pub fn manifest_for(
    records: &[AuditRecord],
    object_key: &str,
    object: &[u8],
    prev_manifest_sha256: &[u8],
) -> Result<Manifest, SegmentError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(bad("a segment holds at least one event"));
    };
    let accounts: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r.account.as_deref())
        .collect();
    Ok(Manifest {
        format: MANIFEST_FORMAT.into(),
        chain_id: first.chain_id.clone(),
        first_seq: first.seq,
        last_seq: last.seq,
        count: i64::try_from(records.len()).unwrap_or(i64::MAX),
        min_ts_ms: records.iter().map(|r| r.ts_ms).min().unwrap_or(first.ts_ms),
        max_ts_ms: records.iter().map(|r| r.ts_ms).max().unwrap_or(last.ts_ms),
        prev_tag: hex::encode(&first.prev_tag),
        last_tag: hex::encode(&last.tag),
        tags_sha256: hex::encode(tags_sha256(records)),
        accounts: accounts.into_iter().map(str::to_string).collect(),
        object_key: object_key.to_string(),
        object_sha256: hex::encode(sha256(object)),
        object_bytes: object.len() as u64,
        prev_manifest_sha256: hex::encode(prev_manifest_sha256),
    })
}

/// SHA-256 over the tags of `records`, in order.
pub fn tags_sha256(records: &[AuditRecord]) -> Vec<u8> {
    let mut d = Sha256::new();
    for r in records {
        d.update(&r.tag);
    }
    d.finalize().to_vec()
}

/// The events of a segment object, checked against `m` and the audit key: the object's
/// hash, its events' seqs, links and tags, and the manifest's counts, range and digest.
pub fn open_object(
    object: &[u8],
    m: &Manifest,
    key: &AuditKey,
) -> Result<Vec<AuditRecord>, SegmentError> {
    if hex::encode(sha256(object)) != m.object_sha256 {
        return Err(bad(
            "segment object does not match its manifest's SHA-256 (changed or replaced)",
        ));
    }
    let records = decode_object(object)?;
    let fresh = manifest_for(
        &records,
        &m.object_key,
        object,
        &hex::decode(&m.prev_manifest_sha256).unwrap_or_default(),
    )
    .map_err(|e| bad(format!("segment object: {e}")))?;
    if fresh != *m {
        return Err(bad(
            "segment object does not hold what its manifest describes",
        ));
    }
    let mut prev: Option<&AuditRecord> = None;
    for r in &records {
        if r.chain_id != m.chain_id {
            return Err(bad(format!("event {} names another chain", r.seq)));
        }
        if let Some(p) = prev {
            if r.seq != p.seq + 1 || r.prev_tag != p.tag {
                return Err(bad(format!(
                    "event {} does not follow event {}",
                    r.seq, p.seq
                )));
            }
        }
        if !tag_matches(key, r) {
            return Err(bad(format!(
                "event {}: tag mismatch (edited or forged)",
                r.seq
            )));
        }
        prev = Some(r);
    }
    Ok(records)
}

/// Decompress and parse a segment object (no HMAC check: [`open_object`] does that).
pub fn decode_object(object: &[u8]) -> Result<Vec<AuditRecord>, SegmentError> {
    let mut plain = Vec::new();
    zstd::stream::read::Decoder::new(object)
        .map_err(|e| bad(format!("zstd: {e}")))?
        .take(MAX_SEGMENT_BYTES + 1)
        .read_to_end(&mut plain)
        .map_err(|e| bad(format!("segment object is not a zstd frame: {e}")))?;
    if plain.len() as u64 > MAX_SEGMENT_BYTES {
        return Err(bad("segment object decompresses past the size limit"));
    }
    let mut cur = Cursor {
        bytes: &plain,
        at: 0,
    };
    if cur.take(8)? != SEGMENT_MAGIC {
        return Err(bad("segment object does not start with SGSEG001"));
    }
    let n = cur.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let len = cur.u32()? as usize;
        let mut r = decode_canonical(cur.take(len)?)?;
        r.tag = cur.take(32)?.to_vec();
        out.push(r);
    }
    if cur.at != plain.len() {
        return Err(bad("segment object has bytes after its last event"));
    }
    Ok(out)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SegmentError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or_else(|| bad("segment object is cut short"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, SegmentError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, SegmentError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn field(&mut self) -> Result<&'a [u8], SegmentError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Result<String, SegmentError> {
        String::from_utf8(self.field()?.to_vec()).map_err(|_| bad("event field is not UTF-8"))
    }
    fn flag(&mut self) -> Result<bool, SegmentError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad("event has a bad presence byte")),
        }
    }
    fn opt_text(&mut self) -> Result<Option<String>, SegmentError> {
        if self.flag()? {
            self.text().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The event a canonical encoding ([`canonical`]) holds; its `tag` is empty.
pub fn decode_canonical(bytes: &[u8]) -> Result<AuditRecord, SegmentError> {
    let mut c = Cursor { bytes, at: 0 };
    let magic = c.take(8)?;
    let v2 = if magic == AUDIT_MAGIC_V2 {
        true
    } else if magic == AUDIT_MAGIC {
        false
    } else {
        return Err(bad("event does not start with SGAUDIT1 or SGAUDIT2"));
    };
    let mut r = AuditRecord {
        chain_id: c.text()?,
        seq: c.i64()?,
        ts_ms: c.i64()?,
        request_id: c.text()?,
        actor: c.text()?,
        action: c.text()?,
        account: c.opt_text()?,
        shard: c.opt_text()?,
        version: if c.flag()? { Some(c.i64()?) } else { None },
        backend: c.opt_text()?,
        outcome: c.text()?,
        detail: c.text()?,
        credential: None,
        prev_tag: Vec::new(),
        tag: Vec::new(),
    };
    if v2 {
        r.credential = Some(c.text()?);
    }
    r.prev_tag = c.field()?.to_vec();
    if c.at != bytes.len() {
        return Err(bad("event has bytes after its last field"));
    }
    Ok(r)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::audit::tag;

    /// A chain of `n` events, tagged under `key`, with every optional field exercised.
    fn chain(key: &AuditKey, n: i64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for seq in 1..=n {
            let mut r = AuditRecord {
                chain_id: "chain-1".into(),
                seq,
                ts_ms: 1_700_000_000_000 + seq,
                request_id: format!("req-{seq}"),
                actor: "admin".into(),
                action: "shard.get".into(),
                account: (seq % 3 != 0).then(|| format!("acct-{}", seq % 2)),
                shard: (seq % 2 == 0).then(|| "s".into()),
                version: (seq % 2 == 1).then_some(seq),
                backend: Some("local".into()),
                outcome: "ok".into(),
                detail: "ünïcode".into(),
                credential: (seq > 2).then(|| "cred".into()),
                prev_tag: out.last().map_or(ZERO_HASH.to_vec(), |p| p.tag.clone()),
                tag: Vec::new(),
            };
            r.tag = tag(key, &r);
            out.push(r);
        }
        out
    }

    #[test]
    fn a_segment_reads_back_exactly_the_events_it_was_made_of() {
        let key = AuditKey::from_bytes([9; 32]);
        let events = chain(&key, 7);
        for r in &events {
            let mut back = decode_canonical(&canonical(r)).unwrap();
            back.tag = r.tag.clone();
            assert_eq!(&back, r);
        }
        let object = encode_object(&events).unwrap();
        let (okey, _) = segment_keys("p/", "chain-1", 1, 7);
        let m = manifest_for(&events, &okey, &object, &ZERO_HASH).unwrap();
        assert_eq!(m.accounts, ["acct-0", "acct-1"]);
        assert_eq!((m.first_seq, m.last_seq, m.count), (1, 7, 7));
        let sealed = m.seal(&key);
        let opened = Manifest::open(&sealed, &key).unwrap();
        assert_eq!(opened, m);
        assert_eq!(open_object(&object, &opened, &key).unwrap(), events);
    }

    #[test]
    fn a_changed_byte_anywhere_is_refused() {
        let key = AuditKey::from_bytes([9; 32]);
        let events = chain(&key, 5);
        let object = encode_object(&events).unwrap();
        let m = manifest_for(&events, "k", &object, &ZERO_HASH).unwrap();
        let sealed = m.seal(&key);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x20;
            assert!(Manifest::open(&bad, &key).is_err(), "manifest byte {i}");
        }
        assert!(Manifest::open(&sealed, &AuditKey::from_bytes([8; 32])).is_err());
        for i in 0..object.len() {
            let mut bad = object.clone();
            bad[i] ^= 1;
            assert!(open_object(&bad, &m, &key).is_err(), "object byte {i}");
        }
        // A sound object under a manifest describing other events.
        let mut other = m.clone();
        other.count = 4;
        assert!(open_object(&object, &other, &key).is_err());
        // Events whose tags do not verify under the key, with a manifest that matches them.
        let wrong = AuditKey::from_bytes([1; 32]);
        let forged = chain(&wrong, 5);
        let object = encode_object(&forged).unwrap();
        let m = manifest_for(&forged, "k", &object, &ZERO_HASH).unwrap();
        assert!(open_object(&object, &m, &key)
            .unwrap_err()
            .0
            .contains("tag mismatch"));
    }

    #[test]
    fn keys_sort_by_chain_then_seq() {
        let a = segment_keys("", "c", 9, 12).1;
        let b = segment_keys("", "c", 13, 100).1;
        let c = segment_keys("", "c", 101, 102).1;
        assert!(a < b && b < c, "{a} {b} {c}");
    }
}
