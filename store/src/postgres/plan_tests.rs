//! The migration statements' plans, pinned by how many items they read. A batch commit's
//! item check and settlement must read about as many items as the batch holds, whatever the planner's
//! statistics say: planned for a job far smaller than it is (statistics taken before its
//! snapshot, or an average over many small jobs), it once walked every pending item of the
//! job per batch, which made a 100,000-item job spend most of its database time there. A
//! claim that goes on from the worker's last item must not step over the items before it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sqlx::{Connection, PgConnection, Row};

use super::migration::{claim_items_sql, SETTLE_HELD_ITEMS_SQL};
use super::PgStore;
use crate::Store;

const ITEMS: usize = 5000;
const BATCH: usize = 16;

/// A new, migrated database with one running job of `ITEMS` pending items, the first `BATCH`
/// held by worker `w`, and statistics taken while the job had no items; `None` (after a loud
/// notice) without `SHARDGATE_TEST_DATABASE_URL` outside CI.
async fn stale_statistics_job() -> Option<(PgConnection, String, String)> {
    let base = crate::test_db::url("PostgreSQL plan test")?;
    let name = format!("sg_plans_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&base).await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&format!("/{name}"));
    let store = PgStore::connect(url.as_str(), 1).await.unwrap();
    store.migrate().await.unwrap();
    drop(store);
    let mut conn = PgConnection::connect(url.as_str()).await.unwrap();
    sqlx::raw_sql(&format!(
        "INSERT INTO migration_jobs (id, state, created_at, updated_at, created_by) \
             VALUES ('big', 'running', 0, 0, 'test'); \
         ANALYZE migration_items; \
         INSERT INTO migration_items (job_id, account, shard, version, state) \
             SELECT 'big', 'acct', 's' || lpad(g::TEXT, 6, '0'), 1, 'pending' \
             FROM generate_series(1, {ITEMS}) g; \
         UPDATE migration_items SET claimed_by = 'w', lease_until = 1 \
             WHERE shard <= 's{BATCH:06}';"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    Some((conn, base, name))
}

async fn drop_database(conn: PgConnection, base: &str, name: &str) {
    conn.close().await.ok();
    let mut admin = PgConnection::connect(base).await.unwrap();
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// `EXPLAIN ANALYZE` of `execute` (an `EXECUTE` of statement `prepare`) with the generic plan,
/// the one a pooled connection's statement cache ends up using; run in a transaction that is
/// rolled back.
async fn generic_plan(conn: &mut PgConnection, prepare: &str, execute: &str) -> Vec<String> {
    let mut tx = conn.begin().await.unwrap();
    sqlx::raw_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(prepare).execute(&mut *tx).await.unwrap();
    let rows = sqlx::raw_sql(&format!("EXPLAIN (ANALYZE, TIMING OFF) {execute}"))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    let plan = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0).unwrap())
        .collect();
    tx.rollback().await.unwrap();
    plan
}

/// The most item rows one node of `plan` produced (rows x loops of every node on
/// `migration_items` or one of its indexes) plus the rows its filters dropped.
fn items_read(plan: &[String]) -> u64 {
    let mut most = 0;
    let mut removed = 0;
    for line in plan {
        if let Some(n) = line.split("Rows Removed by Filter: ").nth(1) {
            removed += n.trim().parse::<u64>().unwrap();
        }
        if !line.contains("migration_items") {
            continue;
        }
        let Some(actual) = line.split("(actual ").nth(1) else {
            continue;
        };
        let field = |name: &str| -> u64 {
            let v = actual.split(&format!("{name}=")).nth(1).unwrap();
            v.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        most = most.max(field("rows") * field("loops"));
    }
    most + removed
}

fn text_array(items: impl Iterator<Item = String>) -> String {
    format!("'{{{}}}'", items.collect::<Vec<_>>().join(","))
}

#[tokio::test]
async fn batch_settlement_reads_only_the_batch_whatever_the_statistics() {
    let Some((mut conn, base, name)) = stale_statistics_job().await else {
        return;
    };
    let accounts = text_array((0..BATCH).map(|_| "acct".to_string()));
    let shards = text_array((1..=BATCH).map(|i| format!("s{i:06}")));
    let versions = text_array((0..BATCH).map(|_| "1".to_string()));
    let states = text_array((0..BATCH).map(|_| "done".to_string()));
    let errors = text_array((0..BATCH).map(|_| "NULL".to_string()));
    let plan = generic_plan(
        &mut conn,
        &format!(
            "PREPARE settle(TEXT, TEXT[], TEXT[], BIGINT[], TEXT[], TEXT[], TEXT) AS \
             {SETTLE_HELD_ITEMS_SQL}"
        ),
        &format!(
            "EXECUTE settle('big', {accounts}, {shards}, {versions}, {states}, {errors}, 'w')"
        ),
    )
    .await;
    let read = items_read(&plan);
    assert!(
        read <= 2 * BATCH as u64,
        "the settlement of {BATCH} items read {read} of {ITEMS}:\n{}",
        plan.join("\n")
    );
    // ... one probe per item, each finding its item as this worker's.
    assert!(
        plan.iter()
            .any(|l| l.contains("on migration_items")
                && l.contains(&format!("rows=1 loops={BATCH})"))),
        "the settlement did not find each of the {BATCH} items by one probe:\n{}",
        plan.join("\n")
    );
    drop_database(conn, &base, &name).await;
}

#[tokio::test]
async fn claim_past_a_key_reads_only_what_it_claims_whatever_was_settled_before() {
    let Some((mut conn, base, name)) = stale_statistics_job().await else {
        return;
    };
    // The first half of the job is settled; settled items stay in the primary key.
    let half = ITEMS / 2;
    sqlx::raw_sql(&format!(
        "UPDATE migration_items SET state = 'done', lease_until = NULL \
         WHERE shard <= 's{half:06}'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let plan = generic_plan(
        &mut conn,
        &format!(
            "SET LOCAL enable_bitmapscan = off; \
             PREPARE claim(TEXT, TEXT, BIGINT, BIGINT, BIGINT, TEXT, TEXT, BIGINT) AS {}",
            claim_items_sql(true)
        ),
        &format!("EXECUTE claim('big', 'w2', 10, 100, {BATCH}, 'acct', 's{half:06}', 1)"),
    )
    .await;
    let read = items_read(&plan);
    assert!(
        read <= 2 * BATCH as u64,
        "a claim of {BATCH} past item {half} read {read} of {ITEMS}:\n{}",
        plan.join("\n")
    );
    // ... and it did claim a whole batch.
    assert!(
        plan.iter()
            .any(|l| l.contains("Update on migration_items")
                && l.contains(&format!("rows={BATCH} "))),
        "the claim did not claim {BATCH} items:\n{}",
        plan.join("\n")
    );
    drop_database(conn, &base, &name).await;
}
