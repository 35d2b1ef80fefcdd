//! Searching the audit trail by account, shard, action, outcome and time, as one ordered
//! answer across the hot table and the archived segments (docs/audit-archive.md, "Search").
//!
//! Events are ordered by `(ts_ms, chain_id, seq)`; a page holds at most `limit` and names a
//! cursor (the last event's position) when more may follow. Archived segments are chosen by
//! the database's record of them (time range) and their manifest (accounts), read back and
//! checked (hash, HMACs) before any of their events is returned. A page reads at most
//! [`MAX_SEGMENTS_PER_PAGE`] segments; past that it stops where the next unread segment could
//! hold earlier events, and the cursor continues from there.

use crate::domain::audit::archive::segment::{open_object, Manifest};
use crate::domain::audit::archive::{Archive, SinkError};
use crate::domain::audit::AuditKey;
use shardgate_store::{AuditQuery, AuditRecord, AuditSegment, Store, StoreError};

/// Most segments one page reads.
pub const MAX_SEGMENTS_PER_PAGE: usize = 32;

/// Most events one page returns.
pub const MAX_LIMIT: i64 = 10_000;

/// Where a page ends: the last event's `(ts_ms, chain_id, seq)`, as text
/// `<ts_ms>.<seq>.<chain_id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub i64, pub String, pub i64);

impl Cursor {
    /// Its text form.
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.0, self.2, self.1)
    }

    /// Parse the text form; `None` when it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '.');
        let ts = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let chain = parts.next()?;
        // Chain ids are UUIDs in their hyphenated lower-case form.
        let uuid = uuid::Uuid::parse_str(chain).ok()?;
        (uuid.hyphenated().to_string() == chain).then(|| Self(ts, chain.to_string(), seq))
    }

    /// Before every event at `ts_ms` and after every earlier one: the greatest chain id
    /// (chain ids are lower-case UUIDs) and seq.
    fn before(ts_ms: i64) -> Self {
        Self(
            ts_ms - 1,
            uuid::Uuid::max().hyphenated().to_string(),
            i64::MAX,
        )
    }

    fn of(r: &AuditRecord) -> Self {
        Self(r.ts_ms, r.chain_id.clone(), r.seq)
    }

    fn key(r: &AuditRecord) -> (i64, &str, i64) {
        (r.ts_ms, r.chain_id.as_str(), r.seq)
    }
}

/// Where an event was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The database.
    Hot,
    /// An archived segment.
    Archived,
}

/// One page of a search.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The events, in order, with where each was found.
    pub events: Vec<(AuditRecord, Tier)>,
    /// Where the next page starts, when more may follow.
    pub next: Option<Cursor>,
    /// Archived segments read.
    pub segments_read: usize,
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// An archived segment did not verify: nothing of it is returned.
    #[error("archived segment {key}: {why} (run `shardgate audit verify`)")]
    Corrupt {
        /// Its manifest key.
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// Whether `r` passes the filters of `q` (the archived events' filter; the hot table's is SQL).
fn matches(q: &AuditQuery, r: &AuditRecord) -> bool {
    let eq =
        |want: &Option<String>, got: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == got);
    eq(&q.account, r.account.as_deref())
        && eq(&q.shard, r.shard.as_deref())
        && eq(&q.action, Some(r.action.as_str()))
        && eq(&q.outcome, Some(r.outcome.as_str()))
        && q.account_prefix.as_deref().is_none_or(|p| {
            r.account
                .as_deref()
                .is_some_and(|a| a.as_bytes().starts_with(p.as_bytes()))
        })
        && q.from_ms.is_none_or(|f| r.ts_ms >= f)
        && q.to_ms.is_none_or(|t| r.ts_ms < t)
        && q.after
            .as_ref()
            .is_none_or(|(ts, c, s)| Cursor::key(r) > (*ts, c.as_str(), *s))
}

/// Segments (of every chain) whose time range overlaps the query's, oldest first: as many
/// as one page can read, and the one that ends it.
async fn candidates(store: &dyn Store, q: &AuditQuery) -> Result<Vec<AuditSegment>, StoreError> {
    let lo = q.after.as_ref().map(|a| a.0).max(q.from_ms);
    let limit = i64::try_from(MAX_SEGMENTS_PER_PAGE + 1).unwrap_or(i64::MAX);
    store.audit_segments_between(lo, q.to_ms, limit).await
}

/// The events of one archived segment that match `q`, checked against the audit key.
/// A segment whose retention has ended (its newest event older than `expired_before_ms`) and
/// that is gone from the sink (deleted by the archiver, expired by a lifecycle rule) holds
/// nothing; one gone before its time fails the search.
async fn read_segment(
    archive: Archive<'_>,
    key: &AuditKey,
    seg: &AuditSegment,
    (q, expired_before_ms): (&AuditQuery, i64),
) -> Result<Vec<AuditRecord>, SearchError> {
    let corrupt = |why: String| SearchError::Corrupt {
        key: seg.manifest_key.clone(),
        why,
    };
    let expired = seg.max_ts_ms < expired_before_ms;
    let Some(bytes) = archive.sink.get(&seg.manifest_key).await? else {
        return if expired {
            Ok(Vec::new())
        } else {
            Err(corrupt("missing from the sink".into()))
        };
    };
    let m = Manifest::open(&bytes, key).map_err(|e| corrupt(e.to_string()))?;
    let wanted = q
        .account
        .as_ref()
        .is_none_or(|a| m.accounts.binary_search(a).is_ok());
    if !wanted {
        return Ok(Vec::new());
    }
    let Some(object) = archive.sink.get(&m.object_key).await? else {
        return if expired {
            Ok(Vec::new())
        } else {
            Err(corrupt("its object is missing from the sink".into()))
        };
    };
    let events = open_object(&object, &m, key).map_err(|e| corrupt(e.to_string()))?;
    Ok(events.into_iter().filter(|r| matches(q, r)).collect())
}

/// One page: at most `q.limit` events after `q.after`, across both tiers, in order. Segments
/// kept `retention_ms` past their newest event may be gone from the sink.
pub async fn search(
    store: &dyn Store,
    archive: Archive<'_>,
    key: &AuditKey,
    q: &AuditQuery,
    retention_ms: i64,
) -> Result<Page, SearchError> {
    let expired_before_ms = crate::now_ms().saturating_sub(retention_ms);
    let limit = usize::try_from(q.limit.clamp(1, MAX_LIMIT)).unwrap_or(1);
    let mut found: Vec<(AuditRecord, Tier)> = store
        .search_audit(&AuditQuery {
            limit: i64::try_from(limit).unwrap_or(MAX_LIMIT),
            ..q.clone()
        })
        .await?
        .into_iter()
        .map(|r| (r, Tier::Hot))
        .collect();
    let mut more = found.len() == limit;
    // A full hot page: hot events past its last one were not read, so the page ends there.
    let hot_last = more.then(|| Cursor::of(&found[limit - 1].0));
    let within = |found: &mut Vec<(AuditRecord, Tier)>| {
        if let Some(h) = &hot_last {
            found.retain(|(r, _)| Cursor::key(r) <= (h.0, h.1.as_str(), h.2));
        }
    };
    // Events at or past `bound` cannot make the page: a segment starting after it is skipped.
    let bound =
        |found: &Vec<(AuditRecord, Tier)>| (found.len() >= limit).then(|| found[limit - 1].0.ts_ms);
    let mut page = Page::default();
    // In order, each event once: a segment's rows stay hot from its record until the
    // archiver's deletes reach them, so an event may come from both tiers (the archived
    // copy, checked against the sink, is kept).
    let sort = |found: &mut Vec<(AuditRecord, Tier)>| {
        found.sort_by(|a, b| {
            (Cursor::key(&a.0), a.1 == Tier::Hot).cmp(&(Cursor::key(&b.0), b.1 == Tier::Hot))
        });
        found.dedup_by(|later, earlier| Cursor::key(&later.0) == Cursor::key(&earlier.0));
    };
    for seg in candidates(store, q).await? {
        if bound(&found).is_some_and(|b| seg.min_ts_ms > b) {
            break;
        }
        if page.segments_read == MAX_SEGMENTS_PER_PAGE {
            // The rest could hold events from this segment's start on: stop before it. With
            // nothing before it, the page is empty and the cursor resumes at its start.
            found.retain(|(r, _)| r.ts_ms < seg.min_ts_ms);
            within(&mut found);
            page.next = Some(
                found
                    .last()
                    .map(|(r, _)| Cursor::of(r))
                    .unwrap_or_else(|| Cursor::before(seg.min_ts_ms)),
            );
            page.events = found;
            return Ok(page);
        }
        page.segments_read += 1;
        found.extend(
            read_segment(archive, key, &seg, (q, expired_before_ms))
                .await?
                .into_iter()
                .map(|r| (r, Tier::Archived)),
        );
        sort(&mut found);
        if found.len() > limit {
            found.truncate(limit);
            more = true;
        }
    }
    sort(&mut found);
    within(&mut found);
    if found.len() > limit {
        found.truncate(limit);
        more = true;
    }
    page.next = if more {
        found.last().map(|(r, _)| Cursor::of(r))
    } else {
        None
    };
    page.events = found;
    Ok(page)
}

impl From<SearchError> for crate::domain::error::DomainError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Store(e) => Self::Store(e),
            SearchError::Sink(e) => Self::Store(StoreError::Unavailable(e.to_string())),
            e @ SearchError::Corrupt { .. } => Self::Internal(e.to_string()),
        }
    }
}

/// One page for a caller, audited with `event` (its detail says how many events were
/// returned and how many archived segments were read) before the answer.
pub async fn page_for(
    state: &super::state::Services,
    q: &AuditQuery,
    event: crate::domain::audit::Event,
) -> Result<Page, crate::domain::error::DomainError> {
    let page = search(
        state.store.as_ref(),
        state.archive.archive(),
        &state.archive.key,
        q,
        state.archive.retention_ms,
    )
    .await?;
    state
        .audit
        .record(event.detail(format!(
            "returned={} segments_read={}",
            page.events.len(),
            page.segments_read
        )))
        .await?;
    Ok(page)
}

/// One line of the answer: an audit event as the chain records it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEventView {
    /// Chain (one per gateway process).
    pub chain_id: String,
    /// Position in the chain.
    pub seq: i64,
    /// Unix milliseconds.
    pub ts_ms: i64,
    /// Request id.
    pub request_id: String,
    /// Token identity, or `anonymous`.
    pub actor: String,
    /// e.g. `shard.get`.
    pub action: String,
    /// Account, if any.
    pub account: Option<String>,
    /// Shard, if any.
    pub shard: Option<String>,
    /// Version, if any.
    pub version: Option<i64>,
    /// Backend, if any.
    pub backend: Option<String>,
    /// `ok` or an error code.
    pub outcome: String,
    /// Free text.
    pub detail: String,
    /// The credential's id under the audit key, if one was presented.
    pub credential: Option<String>,
    /// The previous event's tag (hex): the link the chain checks.
    pub prev_tag: String,
    /// The event's tag (hex): what `audit verify` checks.
    pub tag: String,
    /// `hot` (the database) or `archived` (a segment in the archive).
    pub tier: &'static str,
}

impl AuditEventView {
    /// The view of an event found in `tier`.
    pub fn of(r: AuditRecord, tier: Tier) -> Self {
        Self {
            tag: hex::encode(&r.tag),
            prev_tag: hex::encode(&r.prev_tag),
            chain_id: r.chain_id,
            seq: r.seq,
            ts_ms: r.ts_ms,
            request_id: r.request_id,
            actor: r.actor,
            action: r.action,
            account: r.account,
            shard: r.shard,
            version: r.version,
            backend: r.backend,
            outcome: r.outcome,
            detail: r.detail,
            credential: r.credential,
            tier: match tier {
                Tier::Hot => "hot",
                Tier::Archived => "archived",
            },
        }
    }
}

/// A time given as RFC 3339 (`2026-03-01T00:00:00Z`) or unix milliseconds.
pub fn time_ms(name: &str, v: &str) -> Result<i64, crate::domain::error::DomainError> {
    use crate::domain::error::DomainError;
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    let invalid = |why: &str| DomainError::Invalid(format!("{name} {why}"));
    let t = humantime::parse_rfc3339_weak(v)
        .map_err(|_| invalid("must be RFC 3339 or unix milliseconds"))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| invalid("is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| invalid("is too far away"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_refuses_what_is_not_one() {
        let chain = uuid::Uuid::new_v4().to_string();
        let c = Cursor(1_700_000_000_123, chain.clone(), 42);
        assert_eq!(Cursor::parse(&c.encode()), Some(c));
        assert!(Cursor::parse(&Cursor::before(5).encode()).is_some());
        let upper = format!("1.2.{}", chain.to_uppercase());
        for bad in [
            "",
            "1.2",
            "x.2.c",
            "1.x.c",
            "1.2.",
            "1.2.c/d",
            "1.2.c.d",
            upper.as_str(),
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
