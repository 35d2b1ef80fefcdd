//! The audit search of the hot table ([`Store::search_audit`](crate::Store::search_audit)),
//! written once for both stores: only the filters given become SQL, so the planner sees
//! `account = ?` and can use the `(account, ts_ms)` index.

use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::rows::AUDIT_COLUMNS;

/// What to search for: every filter that is `Some` must hold. Results are ordered by
/// `(ts_ms, chain_id, seq)` and start after `after`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Events of this account.
    pub account: Option<String>,
    /// Only events whose account starts with this (events naming no account excluded).
    pub account_prefix: Option<String>,
    /// Events of this shard.
    pub shard: Option<String>,
    /// Events of this action (`shard.get`, ...).
    pub action: Option<String>,
    /// Events with this outcome (`ok` or an error code).
    pub outcome: Option<String>,
    /// At or after this time (unix milliseconds).
    pub from_ms: Option<i64>,
    /// Before this time (unix milliseconds).
    pub to_ms: Option<i64>,
    /// Strictly after this `(ts_ms, chain_id, seq)`.
    pub after: Option<(i64, String, i64)>,
    /// Most events returned.
    pub limit: i64,
}

/// The search as one statement on `DB`.
pub(crate) fn search_sql<'a, DB>(q: &'a AuditQuery) -> QueryBuilder<'a, DB>
where
    DB: Database,
    String: Encode<'a, DB> + Type<DB>,
    &'a str: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new(format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE 1 = 1"
    ));
    for (column, value) in [
        ("account", &q.account),
        ("shard", &q.shard),
        ("action", &q.action),
        ("outcome", &q.outcome),
    ] {
        if let Some(v) = value {
            qb.push(format!(" AND {column} = ")).push_bind(v.as_str());
        }
    }
    if let Some(p) = &q.account_prefix {
        qb.push(" AND account IS NOT NULL AND substr(account, 1, length(")
            .push_bind(p.as_str())
            .push(")) = ")
            .push_bind(p.as_str());
    }
    if let Some(from) = q.from_ms {
        qb.push(" AND ts_ms >= ").push_bind(from);
    }
    if let Some(to) = q.to_ms {
        qb.push(" AND ts_ms < ").push_bind(to);
    }
    if let Some((ts, chain, seq)) = &q.after {
        qb.push(" AND (ts_ms, chain_id, seq) > (")
            .push_bind(*ts)
            .push(", ")
            .push_bind(chain.as_str())
            .push(", ")
            .push_bind(*seq)
            .push(")");
    }
    qb.push(" ORDER BY ts_ms, chain_id, seq LIMIT ")
        .push_bind(q.limit.max(0));
    qb
}
