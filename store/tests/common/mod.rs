//! Test harness: a fresh, migrated store per test, on a real PostgreSQL database or a real
//! SQLite file, plus raw SQL access for fault injection.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use shardgate_store::postgres::PgStore;
use shardgate_store::sqlite::SqliteStore;
use shardgate_store::{AuditRecord, ShardVersionRow, Store, Version};
use sqlx::Connection;

/// The environment variable naming the PostgreSQL server to test against.
pub(crate) const PG_URL_VAR: &str = "SHARDGATE_TEST_DATABASE_URL";

/// Pool size of the stores under test (the concurrency cases run 32 tasks over it).
pub(crate) const POOL_SIZE: u32 = 8;

/// A fresh database and the store on it.
pub(crate) struct Harness {
    /// The store under test.
    pub store: Arc<dyn Store>,
    /// URL of the database the store uses.
    pub url: String,
    pg: Option<PgDatabase>,
    _dir: Option<tempfile::TempDir>,
}

/// A throw-away PostgreSQL database: dropped when the harness is.
struct PgDatabase {
    admin_url: String,
    name: String,
}

fn pg_base_url() -> Option<String> {
    shardgate_testkit::require_env(PG_URL_VAR)
}

impl Harness {
    /// PostgreSQL: connections to this database left inside a transaction (what a
    /// cancelled write must never leave in the pool). SQLite has no such view: there a
    /// leaked transaction holds the write lock, and the writes after it fail.
    pub(crate) async fn idle_in_transaction(&self) -> i64 {
        if !self.url.starts_with("postgres") {
            return 0;
        }
        use sqlx::Connection as _;
        let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(&mut c)
        .await
        .unwrap()
    }

    /// A migrated store on a new PostgreSQL database, or `None` (after a loud notice) when
    /// `SHARDGATE_TEST_DATABASE_URL` is unset outside CI.
    pub(crate) async fn postgres() -> Option<Harness> {
        let base = pg_base_url()?;
        let mut url = url::Url::parse(&base).expect("SHARDGATE_TEST_DATABASE_URL is not a URL");
        let base_db: String = url
            .path()
            .trim_start_matches('/')
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(24)
            .collect::<String>()
            .to_ascii_lowercase();
        let base_db = if base_db.is_empty() {
            "shardgate".to_string()
        } else {
            base_db
        };
        let name = format!("{base_db}_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&base)
            .await
            .expect("connect to SHARDGATE_TEST_DATABASE_URL");
        // Prefer an ICU (en-US) default collation: ordering and comparison of ids must come
        // from the schema's COLLATE "C", not from a database that happens to be C-collated.
        let icu = format!(
            "CREATE DATABASE \"{name}\" TEMPLATE template0 \
             LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        );
        if sqlx::raw_sql(&icu).execute(&mut admin).await.is_err() {
            sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut admin)
                .await
                .expect("create test database");
        }
        admin.close().await.ok();
        url.set_path(&format!("/{name}"));
        let url = url.to_string();
        let pg = PgDatabase {
            admin_url: base,
            name,
        };
        let store = PgStore::connect(&url, POOL_SIZE)
            .await
            .expect("connect PgStore");
        store.migrate().await.expect("migrate postgres");
        Some(Harness {
            store: Arc::new(store),
            url,
            pg: Some(pg),
            _dir: None,
        })
    }

    /// A migrated store on a new SQLite file in a temp dir.
    pub(crate) async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = SqliteStore::connect(&url, POOL_SIZE)
            .await
            .expect("connect SqliteStore");
        store.migrate().await.expect("migrate sqlite");
        Harness {
            store: Arc::new(store),
            url,
            pg: None,
            _dir: Some(dir),
        }
    }

    /// Run raw SQL (several statements allowed) on the store's database, over a separate
    /// connection.
    pub(crate) async fn exec(&self, sql: &str) {
        if self.pg.is_some() {
            let mut conn = sqlx::PgConnection::connect(&self.url)
                .await
                .expect("connect");
            sqlx::raw_sql(sql)
                .execute(&mut conn)
                .await
                .expect("raw sql");
            conn.close().await.ok();
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url)
                .await
                .expect("connect");
            sqlx::raw_sql(sql)
                .execute(&mut conn)
                .await
                .expect("raw sql");
            conn.close().await.ok();
        }
    }

    /// The states of a migration job's items, in (account, shard, version) order, read over a
    /// separate connection.
    pub(crate) async fn item_states(&self, job: &str) -> Vec<String> {
        assert!(job.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        let sql = format!(
            "SELECT state FROM migration_items WHERE job_id = '{job}' \
             ORDER BY account, shard, version"
        );
        // The same read over either kind of connection.
        macro_rules! read_over {
            ($conn:ty) => {{
                let mut conn = <$conn>::connect(&self.url).await.expect("connect");
                let states = sqlx::query_scalar(&sql)
                    .fetch_all(&mut conn)
                    .await
                    .expect("item states");
                conn.close().await.ok();
                states
            }};
        }
        if self.pg.is_some() {
            read_over!(sqlx::PgConnection)
        } else {
            read_over!(sqlx::SqliteConnection)
        }
    }

    /// Make every insert into `audit_events` fail, with a `BEFORE INSERT` trigger that raises.
    pub(crate) async fn break_audit(&self) {
        if self.pg.is_some() {
            self.exec(
                "CREATE OR REPLACE FUNCTION test_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN RAISE EXCEPTION 'audit_events refuses inserts (test)'; END $$; \
                 CREATE TRIGGER test_audit_refuse BEFORE INSERT ON audit_events \
                 FOR EACH ROW EXECUTE FUNCTION test_audit_refuse();",
            )
            .await;
        } else {
            self.exec(
                "CREATE TRIGGER test_audit_refuse BEFORE INSERT ON audit_events \
                 BEGIN SELECT RAISE(ABORT, 'audit_events refuses inserts (test)'); END;",
            )
            .await;
        }
    }

    /// Undo [`Harness::break_audit`].
    pub(crate) async fn repair_audit(&self) {
        if self.pg.is_some() {
            self.exec("DROP TRIGGER test_audit_refuse ON audit_events")
                .await;
        } else {
            self.exec("DROP TRIGGER test_audit_refuse").await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Drop the PostgreSQL database even when the test panicked. Async work cannot run in
        // `drop`, so use a small runtime on a thread of its own.
        if let Some(pg) = self.pg.take() {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    if let Ok(mut admin) = sqlx::PgConnection::connect(&pg.admin_url).await {
                        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", pg.name);
                        if let Err(e) = sqlx::raw_sql(&sql).execute(&mut admin).await {
                            eprintln!("could not drop test database {}: {e}", pg.name);
                        }
                        admin.close().await.ok();
                    }
                });
            })
            .join();
        }
    }
}

/// Hands out audit records of one chain with consecutive seqs (rolled-back writes leave gaps;
/// the store does not check the chain).
pub(crate) struct AuditGen {
    chain: String,
    seq: AtomicI64,
}

impl AuditGen {
    /// A generator for `chain`, starting at seq 1.
    pub(crate) fn new(chain: &str) -> Self {
        Self {
            chain: chain.to_string(),
            seq: AtomicI64::new(0),
        }
    }

    /// The next record.
    pub(crate) fn next(
        &self,
        action: &str,
        account: Option<&str>,
        shard: Option<&str>,
        version: Option<i64>,
    ) -> AuditRecord {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        record(&self.chain, seq, action, account, shard, version, "")
    }

    /// The next record, with a detail text.
    pub(crate) fn next_detail(
        &self,
        action: &str,
        account: Option<&str>,
        shard: Option<&str>,
        detail: &str,
    ) -> AuditRecord {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        record(&self.chain, seq, action, account, shard, None, detail)
    }
}

/// A dummy sealed record (tags are arbitrary bytes: the store does not verify them).
pub(crate) fn record(
    chain: &str,
    seq: i64,
    action: &str,
    account: Option<&str>,
    shard: Option<&str>,
    version: Option<i64>,
    detail: &str,
) -> AuditRecord {
    AuditRecord {
        chain_id: chain.to_string(),
        seq,
        ts_ms: 1_700_000_000_000 + seq,
        request_id: format!("req-{seq}"),
        actor: "tester".to_string(),
        action: action.to_string(),
        account: account.map(str::to_string),
        shard: shard.map(str::to_string),
        version,
        backend: version.map(|_| "local-1".to_string()),
        outcome: "ok".to_string(),
        detail: detail.to_string(),
        // Half the records carry a credential, so both shapes round-trip.
        credential: (seq % 2 == 0).then(|| format!("cred-{seq}")),
        prev_tag: tag(seq - 1),
        tag: tag(seq),
    }
}

/// 32 arbitrary bytes derived from `seq` (all zero for 0).
pub(crate) fn tag(seq: i64) -> Vec<u8> {
    if seq == 0 {
        return vec![0; 32];
    }
    let mut t = vec![0u8; 32];
    for (i, b) in t.iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8) ^ 0xa5;
    }
    t
}

/// Version `n` (a test's literal).
pub(crate) fn v(n: i64) -> Version {
    Version::new(n).unwrap()
}

/// A stored shard version with recognisable bytes.
pub(crate) fn shard_row(
    account: &str,
    shard: &str,
    version: i64,
    backend: &str,
) -> ShardVersionRow {
    ShardVersionRow {
        account: account.to_string(),
        shard: shard.to_string(),
        version: v(version),
        format_version: 2,
        backend: backend.to_string(),
        key_ref: format!("{backend}/key"),
        key_version: 3,
        wrapped_dek: format!("dek:{account}/{shard}/{version}").into_bytes(),
        nonce: vec![version as u8; 12],
        ciphertext: [
            format!("ct:{account}/{shard}/{version}").as_bytes(),
            &[0u8, 255, 7][..],
        ]
        .concat(),
        key_commitment: Some(vec![(version as u8) ^ 0x3c; 32]),
        created_at: 1_700_000_000_000 + version,
        created_by: "writer".to_string(),
    }
}

/// Generate `postgres::$case` and `sqlite::$case` for every suite function named: one suite,
/// both stores.
#[macro_export]
macro_rules! both_stores {
    ($($case:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(h) = $crate::common::Harness::postgres().await else {
                        return;
                    };
                    super::$case(&h).await;
                }
            )+
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let h = $crate::common::Harness::sqlite().await;
                    super::$case(&h).await;
                }
            )+
        }
    };
}
