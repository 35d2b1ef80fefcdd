//! Direct SQL access to a test's store, for inspecting and tampering with rows.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sqlx::Row;

/// A raw connection pool to the same database the gateway uses.
pub(crate) enum Db {
    Pg(sqlx::PgPool),
    Lite(sqlx::SqlitePool),
}

impl Db {
    pub(crate) async fn connect(url: &str) -> Self {
        if url.starts_with("postgres") {
            Db::Pg(sqlx::PgPool::connect(url).await.unwrap())
        } else {
            Db::Lite(sqlx::SqlitePool::connect(url).await.unwrap())
        }
    }

    pub(crate) fn is_pg(&self) -> bool {
        matches!(self, Db::Pg(_))
    }

    /// Run a statement (test-controlled SQL only).
    pub(crate) async fn exec(&self, sql: &str) -> u64 {
        match self {
            Db::Pg(p) => sqlx::raw_sql(sql).execute(p).await.unwrap().rows_affected(),
            Db::Lite(p) => sqlx::raw_sql(sql).execute(p).await.unwrap().rows_affected(),
        }
    }

    /// Run a statement that may be refused: the database's message when it is.
    pub(crate) async fn try_exec(&self, sql: &str) -> Result<u64, String> {
        match self {
            Db::Pg(p) => sqlx::raw_sql(sql)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Db::Lite(p) => sqlx::raw_sql(sql)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        }
        .map_err(|e| e.to_string())
    }

    /// Act as someone who holds the database file or a superuser: on SQLite, drop the
    /// trigger that refuses deleting audit rows no archived segment covers (it guards against
    /// our bugs, not against the file's owner; SECURITY.md). A no-op on PostgreSQL, where the
    /// tests connect as a superuser.
    pub(crate) async fn bypass_audit_guard(&self) {
        if !self.is_pg() {
            self.exec("DROP TRIGGER IF EXISTS audit_events_delete_only_archived")
                .await;
        }
    }

    pub(crate) async fn count(&self, sql: &str) -> i64 {
        match self {
            Db::Pg(p) => sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(p)
                .await
                .unwrap(),
            Db::Lite(p) => sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(p)
                .await
                .unwrap(),
        }
    }

    /// Every column of every row of a query, as bytes (text columns as UTF-8).
    pub(crate) async fn all_bytes(&self, sql: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Db::Pg(p) => {
                for row in sqlx::query(sql).fetch_all(p).await.unwrap() {
                    for i in 0..row.len() {
                        if let Ok(b) = row.try_get::<Vec<u8>, _>(i) {
                            out.push(b);
                        } else if let Ok(Some(s)) = row.try_get::<Option<String>, _>(i) {
                            out.push(s.into_bytes());
                        }
                    }
                }
            }
            Db::Lite(p) => {
                for row in sqlx::query(sql).fetch_all(p).await.unwrap() {
                    for i in 0..row.len() {
                        if let Ok(b) = row.try_get::<Vec<u8>, _>(i) {
                            out.push(b);
                        } else if let Ok(Some(s)) = row.try_get::<Option<String>, _>(i) {
                            out.push(s.into_bytes());
                        }
                    }
                }
            }
        }
        out
    }

    /// Make `audit_events` refuse inserts (a `BEFORE INSERT` trigger that raises).
    pub(crate) async fn deny_audit_inserts(&self) {
        if self.is_pg() {
            self.exec(
                "CREATE OR REPLACE FUNCTION sg_deny() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit denied'; END $$ LANGUAGE plpgsql;
                 CREATE TRIGGER sg_deny BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION sg_deny();",
            )
            .await;
        } else {
            self.exec(
                "CREATE TRIGGER sg_deny BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'audit denied'); END;",
            )
            .await;
        }
    }

    pub(crate) async fn allow_audit_inserts(&self) {
        if self.is_pg() {
            self.exec("DROP TRIGGER sg_deny ON audit_events").await;
        } else {
            self.exec("DROP TRIGGER sg_deny").await;
        }
    }
}

/// Does `haystack` contain `needle`?
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
