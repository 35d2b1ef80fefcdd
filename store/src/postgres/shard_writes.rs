//! Shard version writes on PostgreSQL: one write (checked, inserted and pruned in its own
//! transaction, sealed under the caller's audit chain) and a group of writes (tried in one
//! statement, else in one transaction that answers each write apart).

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;

use super::audit::{audit_rows_sql, bind_audit_rows, insert_audits};
use super::idempotency::{idem_claim, idem_update};
use super::keys::refuse_destroyed;
use super::shards::{bind_shard_rows, latest, SHARD_COLUMNS};
use super::{audit_err, is_foreign_key_violation, is_unique_violation, map_err, PgStore};
use crate::rows::AUDIT_COLUMNS;
use crate::Version;
use crate::{
    AuditRecord, GroupedWrite, Idempotent, IdempotentWrite, LateSeal, Prune, ShardVersionRow,
    StoreError,
};

impl PgStore {
    /// A group of shard writes (`rows`: in key order) in ONE statement outside any
    /// transaction, its audit records sealed up front: one round trip, where the
    /// transaction below takes four (begin, insert, audit insert, commit). All or nothing:
    /// `true` when every write was stored with its record; `false` when any write would be
    /// refused (its account gone or changed, its version no longer next, its key version
    /// destroyed) or another transaction inserted one of its keys meanwhile, and then
    /// nothing was stored and the caller's transaction sorts the writes out (sealing again).
    ///
    /// The chain is held for the whole statement, so (as in the transaction) no other
    /// writer of an account row is in flight, and the account check sees every change that
    /// committed before it. Without `ON CONFLICT`, a key inserted by another transaction
    /// fails the statement (a unique violation), and a failed statement stores nothing.
    async fn insert_group_at_once(
        &self,
        writes: &[GroupedWrite<'_>],
        rows: &[&ShardVersionRow],
        seal: &mut dyn LateSeal,
    ) -> Result<bool, StoreError> {
        let all: Vec<usize> = (0..writes.len()).collect();
        let records = seal.seal_rows(&all).await?;
        if records.len() != writes.len() {
            return Err(StoreError::Internal(format!(
                "{} audit records sealed for a group of {} writes",
                records.len(),
                writes.len()
            )));
        }
        let sql = format!(
            "WITH r AS (SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], \
                     $4::SMALLINT[], $5::TEXT[], $6::TEXT[], $7::BIGINT[], $8::BYTEA[], \
                     $9::BYTEA[], $10::BYTEA[], $11::BYTEA[], $12::BIGINT[], $13::TEXT[]) \
                   WITH ORDINALITY AS r(account, shard, version, format_version, backend, \
                        key_ref, key_version, wrapped_dek, nonce, ciphertext, \
                        key_commitment, created_at, created_by, idx)), \
                  e AS (SELECT * FROM unnest($14::TEXT[], $15::TEXT[], $16::BIGINT[]) \
                        AS e(account, tier, keep_versions)), \
                  a AS (SELECT account, tier, keep_versions FROM accounts \
                        WHERE account = ANY($14::TEXT[]) ORDER BY account FOR SHARE), \
                  refused AS (SELECT 1 FROM r \
                        WHERE NOT EXISTS (SELECT 1 FROM accounts x WHERE x.account = r.account) \
                           OR (SELECT MAX(s.version) FROM shard_versions s \
                               WHERE s.account = r.account AND s.shard = r.shard) \
                              IS DISTINCT FROM NULLIF(r.version - 1, 0) \
                           OR EXISTS (SELECT 1 FROM key_versions k \
                                      WHERE k.backend = r.backend \
                                        AND k.key_version = r.key_version \
                                        AND k.state = 'destroyed') \
                        UNION ALL \
                        SELECT 1 FROM e LEFT JOIN a ON a.account = e.account \
                        WHERE a.account IS NULL OR a.tier <> e.tier \
                           OR a.keep_versions IS DISTINCT FROM e.keep_versions), \
                  ok AS (SELECT NOT EXISTS (SELECT 1 FROM refused) AS ok), \
                  ins AS (INSERT INTO shard_versions ({SHARD_COLUMNS}) \
                          SELECT r.account, r.shard, r.version, r.format_version, r.backend, \
                                 r.key_ref, r.key_version, r.wrapped_dek, r.nonce, \
                                 r.ciphertext, r.key_commitment, r.created_at, r.created_by \
                          FROM r WHERE (SELECT ok FROM ok) ORDER BY r.idx RETURNING 1), \
                  aud AS (INSERT INTO audit_events ({AUDIT_COLUMNS}) \
                          SELECT * FROM ({}) x WHERE (SELECT ok FROM ok) RETURNING 1) \
             SELECT (SELECT ok FROM ok) AS ok, (SELECT COUNT(*) FROM ins) AS inserted, \
                    (SELECT COUNT(*) FROM aud) AS audited",
            audit_rows_sql(17)
        );
        let record_refs: Vec<&AuditRecord> = records.iter().collect();
        let q = bind_shard_rows(sqlx::query(&sql), rows)
            .bind(
                writes
                    .iter()
                    .map(|w| w.row.account.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(writes.iter().map(|w| w.tier).collect::<Vec<_>>())
            .bind(writes.iter().map(|w| w.keep_versions).collect::<Vec<_>>());
        let done = match bind_audit_rows(q, &record_refs)
            .fetch_one(&self.group_pool)
            .await
        {
            Ok(done) => done,
            // The server refused the statement (e.g. a key another transaction inserted):
            // it stored nothing.
            Err(sqlx::Error::Database(e)) => {
                tracing::debug!(error = %e, "a group of writes refused at once; stored by a transaction");
                return Ok(false);
            }
            // Whether it committed is unknown.
            Err(e) => return Err(audit_err(e)),
        };
        let ok: bool = done.try_get("ok").map_err(map_err)?;
        let inserted: i64 = done.try_get("inserted").map_err(map_err)?;
        let audited: i64 = done.try_get("audited").map_err(map_err)?;
        let n = i64::try_from(writes.len()).unwrap_or(i64::MAX);
        if ok && (inserted != n || audited != n) {
            // Cannot happen (each insert inserts every row or fails the statement), and it
            // committed: the caller reads the chain head back.
            return Err(StoreError::AuditUnavailable(format!(
                "a group of {n} writes stored {inserted} rows and {audited} audit records"
            )));
        }
        Ok(ok)
    }
}

/// [`Store::insert_shard_version_sealed`](crate::Store::insert_shard_version_sealed).
pub(super) async fn insert_shard_version_sealed(
    store: &PgStore,
    row: &ShardVersionRow,
    idem: Option<IdempotentWrite<'_>>,
    retention: Option<Prune<'_>>,
    seal: &mut dyn LateSeal,
) -> Result<Idempotent<Vec<i64>>, StoreError> {
    let mut tx = store.begin().await?;
    if let Some(w) = idem {
        if let Some(existing) = idem_claim(&mut tx, w.record, w.expired_before_ms).await? {
            return Ok(Idempotent::Replay(existing));
        }
    }
    // The account's tier and retention, and the shard's latest version, read without a
    // lock: the account row is locked (shared) only under the audit chain, below. A
    // write that waited for the chain holding that row would stall a tier change that
    // holds the chain and waits for the row, and every writer behind it. The insert's
    // foreign key holds the row's key (KEY SHARE) meanwhile, which a tier change
    // (NO KEY UPDATE) does not wait for; an account delete does, and then this write's
    // wait for the chain runs out and it rolls back (deletes are rare).
    let expected = if row.version == Version::FIRST {
        None
    } else {
        Some(row.version.get() - 1)
    };
    // Read and insert in one round trip: the row goes in only if the shard's latest
    // version is still the one this write numbered itself after.
    let read = insert_if_next(&mut tx, row, expected).await;
    let read = match read {
        Ok(r) => r,
        Err(e) if is_unique_violation(&e) => {
            // A concurrent writer stored this version first (we waited for its commit).
            drop(tx);
            let latest = latest(&store.pool, &row.account, &row.shard)
                .await
                .unwrap_or(Some(row.version.get()));
            return Err(StoreError::Conflict { latest });
        }
        Err(e) if is_foreign_key_violation(&e) => return Err(StoreError::AccountNotFound),
        Err(e) => return Err(map_err(e)),
    };
    let Some(read) = read else {
        return Err(StoreError::AccountNotFound);
    };
    let tier: String = read.try_get("tier").map_err(map_err)?;
    let account_keep: Option<i64> = read.try_get("keep_versions").map_err(map_err)?;
    let current: Option<i64> = read.try_get("latest").map_err(map_err)?;
    let inserted: i64 = read.try_get("inserted").map_err(map_err)?;
    if inserted != 1 {
        return Err(StoreError::Conflict { latest: current });
    }
    refuse_destroyed(&mut tx, &[row.backend.as_str()], &[row.key_version]).await?;
    let pruned = prune_older(&mut tx, row, account_keep, retention).await?;
    // Only the account check, the audit insert and the commit run under the caller's
    // audit chain (see `LateSeal`): concurrent writes do everything above at the same
    // time.
    let records = match seal.seal(&pruned).await {
        Ok(r) => r,
        Err(e) => {
            // Now, not on drop: the row locks taken above must not wait for the pooled
            // connection's next use (an account delete may be waiting for them).
            tx.rollback().await.map_err(map_err)?;
            return Err(e);
        }
    };
    crate::check_write_records(&records, &pruned)?;
    // Every writer of an account row holds the chain for its whole transaction, so no
    // tier or retention change is in flight now and any later one waits for this
    // commit. One that committed since the read above changed what this write was
    // placed and pruned by: nothing is kept, and the caller writes again.
    let now: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT tier, keep_versions FROM accounts WHERE account = $1 FOR SHARE")
            .bind(&row.account)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
    if now != Some((tier, account_keep)) {
        tx.rollback().await.map_err(map_err)?;
        return Err(StoreError::AccountChanged);
    }
    let records: Vec<&AuditRecord> = records.iter().collect();
    insert_audits(&mut tx, &records).await?;
    if let (Some(_), Some(build)) = (idem, retention.and_then(|r| r.idem)) {
        idem_update(&mut tx, &build(&pruned)).await?;
    }
    tx.commit().await.map_err(map_err)?;
    Ok(Idempotent::Done(pruned))
}

/// Insert `row` only if the shard's latest version is still `expected`, in the round trip
/// that reads the account's tier and retention and that latest version (`None`: no
/// such account).
async fn insert_if_next(
    conn: &mut PgConnection,
    row: &ShardVersionRow,
    expected: Option<i64>,
) -> Result<Option<PgRow>, sqlx::Error> {
    sqlx::query(&format!(
        "WITH a AS (SELECT tier, keep_versions FROM accounts WHERE account = $1), \
              cur AS (SELECT MAX(version) AS latest FROM shard_versions \
                      WHERE account = $1 AND shard = $2), \
              ins AS (INSERT INTO shard_versions ({SHARD_COLUMNS}) \
                      SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 \
                      FROM a, cur WHERE cur.latest IS NOT DISTINCT FROM $14 \
                      RETURNING 1) \
         SELECT a.tier, a.keep_versions, cur.latest, (SELECT COUNT(*) FROM ins) AS inserted \
         FROM a, cur"
    ))
    .bind(&row.account)
    .bind(&row.shard)
    .bind(row.version.get())
    .bind(row.format_version)
    .bind(&row.backend)
    .bind(&row.key_ref)
    .bind(row.key_version)
    .bind(&row.wrapped_dek)
    .bind(&row.nonce)
    .bind(&row.ciphertext)
    .bind(&row.key_commitment)
    .bind(row.created_at)
    .bind(&row.created_by)
    .bind(expected)
    .fetch_optional(&mut *conn)
    .await
}

/// Apply `retention` to the shard `row` was just inserted into: the versions it deleted,
/// in order (none without retention).
async fn prune_older(
    conn: &mut PgConnection,
    row: &ShardVersionRow,
    account_keep: Option<i64>,
    retention: Option<Prune<'_>>,
) -> Result<Vec<i64>, StoreError> {
    let mut pruned = Vec::new();
    if let Some(retention) = retention {
        let keep = account_keep.unwrap_or(retention.default_keep);
        if keep > 0 {
            // Every version but the newest `keep` (counted, not numbered: a shard may
            // have gaps where versions were deleted), the one just inserted included.
            pruned = sqlx::query_scalar(
                "DELETE FROM shard_versions WHERE account = $1 AND shard = $2 \
                 AND version NOT IN (SELECT version FROM shard_versions \
                     WHERE account = $1 AND shard = $2 ORDER BY version DESC LIMIT $3) \
                 RETURNING version",
            )
            .bind(&row.account)
            .bind(&row.shard)
            .bind(keep)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
            pruned.sort_unstable();
        }
    }
    Ok(pruned)
}

/// [`Store::insert_shard_versions_grouped`](crate::Store::insert_shard_versions_grouped).
pub(super) async fn insert_shard_versions_grouped(
    store: &PgStore,
    writes: &[GroupedWrite<'_>],
    seal: &mut dyn LateSeal,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let (order, rows) = key_order(writes)?;
    if store.insert_group_at_once(writes, &rows, seal).await? {
        return Ok((0..writes.len()).map(|_| Ok(())).collect());
    }
    // A generic plan, made once per connection: left to choose, PostgreSQL plans this
    // statement anew at every call (its custom plans look cheaper than a generic one
    // that cannot know the arrays' length), which cost more CPU than running it.
    let mut tx = store
        .begin_with(Some(
            "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan",
        ))
        .await?;
    let checked = check_and_insert(&mut tx, &rows).await?;
    if checked.len() != rows.len() {
        // Now, not on drop: the inserted rows hold locks until the rollback arrives.
        tx.rollback().await.map_err(map_err)?;
        return Err(StoreError::Internal(format!(
            "a group of {} writes was checked as {}",
            rows.len(),
            checked.len()
        )));
    }
    let (answers, mut stored) = answers_from(writes, &order, &checked)?;
    if stored.is_empty() {
        tx.rollback().await.map_err(map_err)?;
        return Ok(answers);
    }
    stored.sort_unstable();
    // Only the account re-check, the audit insert and the commit run under the chain.
    let records = match seal.seal_rows(&stored).await {
        Ok(r) => r,
        Err(e) => {
            tx.rollback().await.map_err(map_err)?;
            return Err(e);
        }
    };
    if records.len() != stored.len() {
        // Now, not on drop: the inserted rows hold locks until the rollback arrives.
        tx.rollback().await.map_err(map_err)?;
        return Err(StoreError::Internal(format!(
            "{} audit records sealed for {} stored writes",
            records.len(),
            stored.len()
        )));
    }
    let (changed, audited) = audit_unless_changed(&mut tx, writes, &stored, &records).await?;
    if changed > 0 {
        tx.rollback().await.map_err(map_err)?;
        return Err(StoreError::AccountChanged);
    }
    if usize::try_from(audited).ok() != Some(records.len()) {
        // Now, not on drop: the inserted rows hold locks until the rollback arrives.
        tx.rollback().await.map_err(map_err)?;
        return Err(StoreError::AuditUnavailable(format!(
            "{audited} of {} audit records inserted",
            records.len()
        )));
    }
    tx.commit().await.map_err(map_err)?;
    Ok(answers)
}

/// The writes' indexes sorted by key, and their rows in that order; refused when two
/// writes are of one shard.
fn key_order<'a>(
    writes: &[GroupedWrite<'a>],
) -> Result<(Vec<usize>, Vec<&'a ShardVersionRow>), StoreError> {
    // Inserted in key order: two groups (of this replica or another) that share keys
    // queue for them in the same order instead of deadlocking.
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (writes[a].row, writes[b].row);
        (a.account.as_str(), a.shard.as_str()).cmp(&(b.account.as_str(), b.shard.as_str()))
    });
    let rows: Vec<&ShardVersionRow> = order.iter().map(|&i| writes[i].row).collect();
    if rows
        .windows(2)
        .any(|w| w[0].account == w[1].account && w[0].shard == w[1].shard)
    {
        // Their answers could not be told apart below.
        return Err(StoreError::Internal(
            "a group holds two writes of one shard".to_string(),
        ));
    }
    Ok((order, rows))
}

/// Check every row of the group and insert those that pass, in one round trip: a row per
/// write (`idx`: its place in `rows`) telling whether it was inserted and, if not, why.
async fn check_and_insert(
    conn: &mut PgConnection,
    rows: &[&ShardVersionRow],
) -> Result<Vec<PgRow>, StoreError> {
    // One round trip for every row: each checked (account, latest version, destroyed
    // key; scalar subqueries, each one index probe, where EXISTS could become a scan
    // and hash of the whole table) and inserted only if it passes; a key another transaction inserted meanwhile
    // is skipped (ON CONFLICT waits for that commit), not an error that would undo the
    // whole group.
    bind_shard_rows(
        sqlx::query(&format!(
            "WITH r AS (SELECT * FROM unnest($1::INT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], \
                 $5::SMALLINT[], $6::TEXT[], $7::TEXT[], $8::BIGINT[], $9::BYTEA[], \
                 $10::BYTEA[], $11::BYTEA[], $12::BYTEA[], $13::BIGINT[], $14::TEXT[]) \
               AS r(idx, account, shard, version, format_version, backend, key_ref, \
                    key_version, wrapped_dek, nonce, ciphertext, key_commitment, \
                    created_at, created_by)), \
              c AS (SELECT r.idx, \
                      COALESCE((SELECT true FROM accounts a \
                                WHERE a.account = r.account), false) AS has_account, \
                      (SELECT MAX(s.version) FROM shard_versions s \
                        WHERE s.account = r.account AND s.shard = r.shard) AS latest, \
                      COALESCE((SELECT true FROM key_versions k \
                                WHERE k.backend = r.backend \
                                  AND k.key_version = r.key_version \
                                  AND k.state = 'destroyed'), false) AS destroyed \
                    FROM r), \
              ins AS (INSERT INTO shard_versions ({SHARD_COLUMNS}) \
                      SELECT r.account, r.shard, r.version, r.format_version, r.backend, \
                             r.key_ref, r.key_version, r.wrapped_dek, r.nonce, \
                             r.ciphertext, r.key_commitment, r.created_at, r.created_by \
                      FROM r JOIN c ON c.idx = r.idx \
                      WHERE c.has_account AND NOT c.destroyed \
                        AND c.latest IS NOT DISTINCT FROM NULLIF(r.version - 1, 0) \
                      ORDER BY r.idx \
                      ON CONFLICT (account, shard, version) DO NOTHING \
                      RETURNING account, shard) \
         SELECT c.idx, c.has_account, c.latest, c.destroyed, \
                EXISTS (SELECT 1 FROM ins WHERE ins.account = r.account \
                        AND ins.shard = r.shard) AS inserted \
         FROM c JOIN r ON r.idx = c.idx ORDER BY c.idx"
        ))
        .bind(
            (0..rows.len())
                .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        ),
        rows,
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)
}

/// Each write's answer, in the writes' order.
type Answers = Vec<Result<(), StoreError>>;

/// Each write's answer from its checked row (`order`: the writes' indexes in the rows'
/// order), and the indexes of the writes stored.
fn answers_from(
    writes: &[GroupedWrite<'_>],
    order: &[usize],
    checked: &[PgRow],
) -> Result<(Answers, Vec<usize>), StoreError> {
    let mut answers: Answers = (0..writes.len()).map(|_| Ok(())).collect();
    let mut stored = Vec::new();
    for (pos, c) in checked.iter().enumerate() {
        let i = order[pos];
        let row = writes[i].row;
        let inserted: bool = c.try_get("inserted").map_err(map_err)?;
        answers[i] = if inserted {
            stored.push(i);
            Ok(())
        } else if !c.try_get::<bool, _>("has_account").map_err(map_err)? {
            Err(StoreError::AccountNotFound)
        } else if c.try_get::<bool, _>("destroyed").map_err(map_err)? {
            Err(StoreError::KeyDestroyed {
                backend: row.backend.clone(),
                key_version: row.key_version,
            })
        } else {
            // Either the latest version moved on before the statement, or another
            // transaction inserted this very version during it (then it is the latest).
            let latest: Option<i64> = c.try_get("latest").map_err(map_err)?;
            Err(StoreError::Conflict {
                latest: if latest == Some(row.version.get() - 1)
                    || (latest.is_none() && row.version == Version::FIRST)
                {
                    Some(row.version.get())
                } else {
                    latest
                },
            })
        };
    }
    Ok((answers, stored))
}

/// Insert the stored writes' audit `records` unless an account of theirs changed since
/// the writes read it (one round trip): how many accounts changed, and how many records
/// went in.
async fn audit_unless_changed(
    conn: &mut PgConnection,
    writes: &[GroupedWrite<'_>],
    stored: &[usize],
    records: &[AuditRecord],
) -> Result<(i64, i64), StoreError> {
    // As a single write's (see `insert_shard_version_sealed`): every writer of an account
    // row holds the chain for its whole transaction, so none is in flight now; one that
    // committed since the writers read their accounts undoes the group. The audit rows go
    // in only when no account changed, in the same round trip.
    let sql = format!(
        "WITH e AS (SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[]) \
                    AS e(account, tier, keep_versions)), \
              a AS (SELECT account, tier, keep_versions FROM accounts \
                    WHERE account = ANY($1::TEXT[]) ORDER BY account FOR SHARE), \
              bad AS (SELECT 1 FROM e LEFT JOIN a ON a.account = e.account \
                      WHERE a.account IS NULL OR a.tier <> e.tier \
                         OR a.keep_versions IS DISTINCT FROM e.keep_versions), \
              ins AS (INSERT INTO audit_events ({AUDIT_COLUMNS}) {} \
                      WHERE NOT EXISTS (SELECT 1 FROM bad) RETURNING 1) \
         SELECT (SELECT COUNT(*) FROM bad) AS changed, (SELECT COUNT(*) FROM ins) AS audited",
        audit_rows_sql(4)
    );
    let record_refs: Vec<&AuditRecord> = records.iter().collect();
    let q = sqlx::query(&sql)
        .bind(
            stored
                .iter()
                .map(|&i| writes[i].row.account.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(stored.iter().map(|&i| writes[i].tier).collect::<Vec<_>>())
        .bind(
            stored
                .iter()
                .map(|&i| writes[i].keep_versions)
                .collect::<Vec<_>>(),
        );
    let done = bind_audit_rows(q, &record_refs)
        .fetch_one(&mut *conn)
        .await
        .map_err(audit_err)?;
    let changed: i64 = done.try_get("changed").map_err(map_err)?;
    let audited: i64 = done.try_get("audited").map_err(map_err)?;
    Ok((changed, audited))
}
