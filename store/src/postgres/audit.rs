//! The audit trail on PostgreSQL: inserting sealed records (one, or many in one
//! statement), registering a chain, and reading chains, their heads and their events.

use sqlx::postgres::PgConnection;
use sqlx::{Postgres, Row};

use super::{audit_err, map_err, PgStore};
use crate::rows::{audit_from_row, AUDIT_COLUMNS};
use crate::{AuditRecord, StoreError};

pub(super) async fn insert_audit(
    conn: &mut PgConnection,
    a: &AuditRecord,
) -> Result<(), StoreError> {
    insert_audit_row(conn, a).await.map_err(audit_err)
}

async fn insert_audit_row(conn: &mut PgConnection, a: &AuditRecord) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO audit_events ({AUDIT_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    ))
    .bind(&a.chain_id)
    .bind(a.seq)
    .bind(a.ts_ms)
    .bind(&a.request_id)
    .bind(&a.actor)
    .bind(&a.action)
    .bind(&a.account)
    .bind(&a.shard)
    .bind(a.version)
    .bind(&a.backend)
    .bind(&a.outcome)
    .bind(&a.detail)
    .bind(&a.prev_tag)
    .bind(&a.tag)
    .bind(&a.credential)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Insert several audit records in one statement (one round trip for a batch).
pub(super) async fn insert_audits(
    conn: &mut PgConnection,
    records: &[&AuditRecord],
) -> Result<(), StoreError> {
    insert_audit_rows(conn, records).await.map_err(audit_err)
}

/// [`insert_audits`], with the driver's error (for [`HeldConn::finish`]).
///
/// [`HeldConn::finish`]: crate::held_conns::HeldConn::finish
async fn insert_audit_rows(
    conn: &mut PgConnection,
    records: &[&AuditRecord],
) -> Result<(), sqlx::Error> {
    match records {
        [] => Ok(()),
        [one] => insert_audit_row(conn, one).await,
        _ => {
            let sql = format!(
                "INSERT INTO audit_events ({AUDIT_COLUMNS}) {}",
                audit_rows_sql(1)
            );
            bind_audit_rows(sqlx::query(&sql), records)
                .execute(conn)
                .await
                .map(|_| ())
        }
    }
}

/// `SELECT * FROM unnest(...)` of audit records, one array parameter per column of
/// `AUDIT_COLUMNS` from `$first` on (bound by [`bind_audit_rows`]).
pub(super) fn audit_rows_sql(first: usize) -> String {
    const TYPES: [&str; 15] = [
        "TEXT", "BIGINT", "BIGINT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "BIGINT", "TEXT",
        "TEXT", "TEXT", "BYTEA", "BYTEA", "TEXT",
    ];
    let params = TYPES
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}[]", first + i))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT * FROM unnest({params})")
}

/// Bind `records` as the arrays of [`audit_rows_sql`].
pub(super) fn bind_audit_rows<'q>(
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    records: &[&'q AuditRecord],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    let col = |f: fn(&AuditRecord) -> &str| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    let opt =
        |f: fn(&AuditRecord) -> Option<&str>| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    q.bind(col(|r| &r.chain_id))
        .bind(records.iter().map(|r| r.seq).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.ts_ms).collect::<Vec<_>>())
        .bind(col(|r| &r.request_id))
        .bind(col(|r| &r.actor))
        .bind(col(|r| &r.action))
        .bind(opt(|r| r.account.as_deref()))
        .bind(opt(|r| r.shard.as_deref()))
        .bind(records.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(opt(|r| r.backend.as_deref()))
        .bind(col(|r| &r.outcome))
        .bind(col(|r| &r.detail))
        .bind(
            records
                .iter()
                .map(|r| r.prev_tag.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(records.iter().map(|r| r.tag.as_slice()).collect::<Vec<_>>())
        .bind(opt(|r| r.credential.as_deref()))
}

/// [`Store::append_audit`](crate::Store::append_audit).
pub(super) async fn append_audit(
    store: &PgStore,
    records: &[AuditRecord],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    // One statement outside any transaction: a multi-row INSERT is atomic on its own and
    // durable at its implicit commit, in one round trip where BEGIN, INSERT and COMMIT
    // take three. Every read waits for this write (its event must be durable first), and
    // with a single writer a GET waits for the write in flight and then its own: each
    // round trip is a wake-up of the server on shared cores.
    let records: Vec<&AuditRecord> = records.iter().collect();
    let mut held = store.held.get().await.map_err(audit_err)?;
    let result = insert_audit_rows(held.conn(), &records).await;
    held.finish(&result);
    result.map_err(audit_err)
}

/// [`Store::register_chain`](crate::Store::register_chain).
pub(super) async fn register_chain(
    store: &PgStore,
    chain_id: &str,
    started_ms: i64,
    host: &str,
) -> Result<(), StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO audit_chains (chain_id, started_ms, host) VALUES ($1, $2, $3) \
         ON CONFLICT (chain_id) DO NOTHING",
    )
    .bind(chain_id)
    .bind(started_ms)
    .bind(host)
    .execute(&store.pool)
    .await
    .map_err(audit_err)?
    .rows_affected();
    if inserted == 1 {
        return Ok(());
    }
    // Already there: fine if it is the same registration (a retried call), an error if
    // another process uses the same chain id.
    let same = sqlx::query(
        "SELECT 1 FROM audit_chains WHERE chain_id = $1 AND started_ms = $2 AND host = $3",
    )
    .bind(chain_id)
    .bind(started_ms)
    .bind(host)
    .fetch_optional(&store.pool)
    .await
    .map_err(map_err)?
    .is_some();
    if same {
        Ok(())
    } else {
        Err(StoreError::Internal(format!(
            "audit chain {chain_id} is already registered by another process"
        )))
    }
}

/// [`Store::audit_head`](crate::Store::audit_head).
pub(super) async fn audit_head(
    store: &PgStore,
    chain_id: &str,
) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
    let row = sqlx::query(
        "SELECT seq, tag FROM (\
           SELECT seq, tag FROM (SELECT seq, tag FROM audit_events WHERE chain_id = $1 \
                                 ORDER BY seq DESC LIMIT 1) hot \
           UNION ALL \
           SELECT seq, tag FROM (SELECT last_seq AS seq, last_tag AS tag FROM audit_segments \
                                 WHERE chain_id = $1 ORDER BY first_seq DESC LIMIT 1) archived\
         ) heads ORDER BY seq DESC LIMIT 1",
    )
    .bind(chain_id)
    .fetch_optional(&store.pool)
    .await
    .map_err(map_err)?;
    row.map(|r| -> Result<(i64, Vec<u8>), sqlx::Error> {
        Ok((r.try_get("seq")?, r.try_get("tag")?))
    })
    .transpose()
    .map_err(map_err)
}

/// [`Store::audit_chains`](crate::Store::audit_chains).
pub(super) async fn audit_chains(store: &PgStore) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar::<_, String>(
        "SELECT chain_id FROM audit_chains \
         UNION SELECT DISTINCT chain_id FROM audit_events \
         UNION SELECT DISTINCT chain_id FROM audit_segments \
         ORDER BY 1",
    )
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)
}

/// [`Store::audit_events`](crate::Store::audit_events).
pub(super) async fn audit_events(
    store: &PgStore,
    chain_id: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_events \
         WHERE chain_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    ))
    .bind(chain_id)
    .bind(after_seq)
    .bind(limit.max(0))
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(audit_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)
}
