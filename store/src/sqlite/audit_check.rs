//! A segment's check a step at a time on SQLite (`Store::check_audit_range`): the checks
//! PostgreSQL's `audit_archive_check` makes, made here, and the stored steps that recording
//! the segment (`audit_archive::record_audit_segment`) then reads instead of every row of the
//! segment in one write transaction, which would hold off every other writer meanwhile.

use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnection;
use sqlx::Row;

use super::{map_err, SqliteStore};
use crate::{AuditSegment, StoreError, MAX_AUDIT_CHECK_STEP};

fn refused(chain_id: &str, first_seq: i64, why: String) -> StoreError {
    StoreError::Internal(format!("audit check {chain_id}:{first_seq}: {why}"))
}

/// [`Store::check_audit_range`](crate::Store::check_audit_range).
pub(super) async fn check_audit_range(
    store: &SqliteStore,
    chain_id: &str,
    first_seq: i64,
    (from, to): (i64, i64),
) -> Result<u64, StoreError> {
    if first_seq < 1 || from < first_seq || to < from || to - from >= MAX_AUDIT_CHECK_STEP {
        return Err(refused(
            chain_id,
            first_seq,
            format!("{from} to {to} is not a step of the segment"),
        ));
    }
    let mut tx = store.begin_write().await?;
    if from == first_seq {
        sqlx::query("DELETE FROM audit_archive_checks WHERE chain_id = ?1")
            .bind(chain_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
    } else if let Some(done) = earlier(&mut tx, chain_id, first_seq, (from, to)).await? {
        return Ok(done);
    }
    let step = read_step(&mut tx, chain_id, (from, to))
        .await?
        .ok_or_else(|| {
            refused(
                chain_id,
                first_seq,
                format!("events {from}..{to} are not all hot"),
            )
        })?;
    sqlx::query(
        "INSERT INTO audit_archive_checks \
         (chain_id, first_seq, from_seq, to_seq, min_ts_ms, max_ts_ms, prev_tag, last_tag, tags) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(chain_id)
    .bind(first_seq)
    .bind(from)
    .bind(to)
    .bind(step.min_ts_ms)
    .bind(step.max_ts_ms)
    .bind(&step.prev_tag)
    .bind(&step.last_tag)
    .bind(&step.tags)
    .execute(&mut *tx)
    .await
    .map_err(map_err)?;
    tx.commit().await.map_err(map_err)?;
    Ok(u64::try_from(to - from + 1).unwrap_or(0))
}

/// A step that does not start the segment: `None` when it continues the steps stored so
/// far, the rows it checked when this very step was stored before; refused otherwise.
async fn earlier(
    conn: &mut SqliteConnection,
    chain_id: &str,
    first_seq: i64,
    (from, to): (i64, i64),
) -> Result<Option<u64>, StoreError> {
    let (done, same): (Option<i64>, i64) = sqlx::query_as(
        "SELECT MAX(to_seq), COUNT(*) FILTER (WHERE from_seq = ?3 AND to_seq = ?4) \
         FROM audit_archive_checks WHERE chain_id = ?1 AND first_seq = ?2",
    )
    .bind(chain_id)
    .bind(first_seq)
    .bind(from)
    .bind(to)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)?;
    if done == Some(from - 1) {
        Ok(None)
    } else if same > 0 {
        Ok(Some(u64::try_from(to - from + 1).unwrap_or(0)))
    } else {
        Err(refused(
            chain_id,
            first_seq,
            format!("{from} does not continue the rows checked so far"),
        ))
    }
}

/// What a step (or a whole segment) of hot rows holds: time range, first `prev_tag`, last
/// tag, and every tag in seq order.
struct Step {
    min_ts_ms: i64,
    max_ts_ms: i64,
    prev_tag: Vec<u8>,
    last_tag: Vec<u8>,
    tags: Vec<u8>,
}

impl Step {
    fn empty(capacity: usize) -> Self {
        Self {
            min_ts_ms: i64::MAX,
            max_ts_ms: i64::MIN,
            prev_tag: Vec::new(),
            last_tag: Vec::new(),
            tags: Vec::with_capacity(capacity),
        }
    }
}

/// The hot rows `from..=to` of the chain; `None` unless every one is there.
async fn read_step(
    conn: &mut SqliteConnection,
    chain_id: &str,
    (from, to): (i64, i64),
) -> Result<Option<Step>, StoreError> {
    let rows = sqlx::query(
        "SELECT ts_ms, prev_tag, tag FROM audit_events \
         WHERE chain_id = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY seq",
    )
    .bind(chain_id)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    if i64::try_from(rows.len()).ok() != Some(to - from + 1) {
        return Ok(None);
    }
    let mut step = Step::empty(rows.len() * 32);
    for (i, row) in rows.iter().enumerate() {
        let ts: i64 = row.try_get("ts_ms").map_err(map_err)?;
        let tag: Vec<u8> = row.try_get("tag").map_err(map_err)?;
        if i == 0 {
            step.prev_tag = row.try_get("prev_tag").map_err(map_err)?;
        }
        step.min_ts_ms = step.min_ts_ms.min(ts);
        step.max_ts_ms = step.max_ts_ms.max(ts);
        step.tags.extend_from_slice(&tag);
        step.last_tag = tag;
    }
    Ok(Some(step))
}

/// Whether the hot rows `s` names are exactly the ones it holds: from the stored steps when
/// they cover `s` exactly, else from the rows themselves.
pub(super) async fn covers(
    conn: &mut SqliteConnection,
    s: &AuditSegment,
) -> Result<bool, StoreError> {
    let step = match staged(conn, s).await? {
        Some(step) => step,
        None => match read_step(conn, &s.chain_id, (s.first_seq, s.last_seq)).await? {
            Some(step) => step,
            None => return Ok(false),
        },
    };
    Ok(
        Sha256::digest(&step.tags).as_slice() == s.tags_sha256.as_slice()
            && step.prev_tag == s.prev_tag
            && step.last_tag == s.last_tag
            && step.min_ts_ms == s.min_ts_ms
            && step.max_ts_ms == s.max_ts_ms,
    )
}

/// The stored steps of `s` merged into one, when they run from its first seq to its last.
async fn staged(conn: &mut SqliteConnection, s: &AuditSegment) -> Result<Option<Step>, StoreError> {
    let rows = sqlx::query(
        "SELECT from_seq, to_seq, min_ts_ms, max_ts_ms, prev_tag, last_tag, tags \
         FROM audit_archive_checks WHERE chain_id = ?1 AND first_seq = ?2 ORDER BY from_seq",
    )
    .bind(&s.chain_id)
    .bind(s.first_seq)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let mut next = s.first_seq;
    let mut all: Option<Step> = None;
    for row in &rows {
        let (from, to): (i64, i64) = (
            row.try_get("from_seq").map_err(map_err)?,
            row.try_get("to_seq").map_err(map_err)?,
        );
        if from != next {
            return Ok(None);
        }
        next = to + 1;
        let tags: Vec<u8> = row.try_get("tags").map_err(map_err)?;
        let step = all.get_or_insert_with(|| Step::empty(0));
        if from == s.first_seq {
            step.prev_tag = row.try_get("prev_tag").map_err(map_err)?;
        }
        step.min_ts_ms = step
            .min_ts_ms
            .min(row.try_get("min_ts_ms").map_err(map_err)?);
        step.max_ts_ms = step
            .max_ts_ms
            .max(row.try_get("max_ts_ms").map_err(map_err)?);
        step.last_tag = row.try_get("last_tag").map_err(map_err)?;
        step.tags.extend_from_slice(&tags);
    }
    Ok(all.filter(|_| next == s.last_seq + 1))
}

/// Drop the chain's stored steps (its segment is recorded).
pub(super) async fn forget(conn: &mut SqliteConnection, chain_id: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM audit_archive_checks WHERE chain_id = ?1")
        .bind(chain_id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(())
}
