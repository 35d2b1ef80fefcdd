//! `pk_select` and `pk_insert`: the database floor of a GET and of a PUT. Plain sqlx on a
//! pool, at the gateway's concurrency: the latest-version primary-key select the gateway's
//! GET makes, on the very rows it reads; and a single-row insert of the same row shape, one
//! autocommit transaction each, with the server's default `synchronous_commit` (the gateway
//! does not change it).

use crate::drive::drive;
use anyhow::{bail, Context, Result};
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use std::sync::Arc;

/// The columns the gateway's store reads (`SHARD_COLUMNS` in `store/src/postgres/shards.rs`).
const COLUMNS: &str = "account, shard, version, format_version, backend, key_ref, key_version, \
                       wrapped_dek, nonce, ciphertext, created_at, created_by, key_commitment";

async fn pool(url: &str, connections: u32) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(connections)
        .min_connections(connections)
        .connect(url)
        .await
        .context("connect to PostgreSQL")
}

/// Latest-version selects of `PREFIX%06d`/`s0` rows (the loaded data set).
pub(crate) async fn pk_select(
    url: &str,
    prefix: &str,
    accounts: usize,
    concurrency: usize,
    seconds: u64,
) -> Result<()> {
    let pool = pool(url, concurrency as u32).await?;
    let sql: Arc<str> = format!(
        "SELECT {COLUMNS} FROM shard_versions \
         WHERE account = $1 AND shard = $2 ORDER BY version DESC LIMIT 1"
    )
    .into();
    let prefix: Arc<str> = prefix.into();
    // Every account of the set must be there, or the figure would time misses.
    let probe = format!("{prefix}{:06}", accounts.saturating_sub(1));
    let found = sqlx::query(&sql)
        .bind(&probe)
        .bind("s0")
        .fetch_optional(&pool)
        .await?;
    if found.is_none() {
        bail!("pk_select: {probe}/s0 is not loaded");
    }
    drive("pk_select", concurrency, seconds, true, move |_| {
        let (pool, sql, prefix) = (pool.clone(), sql.clone(), prefix.clone());
        async move {
            let account = format!("{prefix}{:06}", rand::thread_rng().gen_range(0..accounts));
            let row = sqlx::query(&sql)
                .bind(account)
                .bind("s0")
                .fetch_one(&pool)
                .await?;
            let ct: Vec<u8> = row.try_get("ciphertext")?;
            if ct.is_empty() {
                bail!("empty ciphertext");
            }
            Ok(())
        }
    })
    .await
}

/// Single-row inserts into a table shaped like `shard_versions` (`LIKE ... INCLUDING ALL`:
/// its primary key and index, not its foreign key), created fresh and dropped after.
pub(crate) async fn pk_insert(
    url: &str,
    shard_bytes: usize,
    concurrency: usize,
    seconds: u64,
) -> Result<()> {
    let pool = pool(url, concurrency as u32).await?;
    let table = format!("bench_pk_insert_{}", std::process::id());
    sqlx::query(&format!(
        "CREATE TABLE {table} (LIKE shard_versions INCLUDING ALL)"
    ))
    .execute(&pool)
    .await
    .context("create the insert table (run on the gateway's database)")?;
    let sql: Arc<str> = format!(
        "INSERT INTO {table} ({COLUMNS}) VALUES ($1, $2, 1, 2, 'local', $3, 1, $4, $5, $6, $7, 'bench', $8)"
    )
    .into();
    let out = drive("pk_insert", concurrency, seconds, true, {
        let pool = pool.clone();
        move |i| {
            let (pool, sql) = (pool.clone(), sql.clone());
            async move {
                let (wrapped, nonce, ct, commitment) = {
                    let mut rng = rand::thread_rng();
                    let mut wrapped = vec![0u8; 60];
                    let mut nonce = vec![0u8; 12];
                    let mut ct = vec![0u8; shard_bytes + 16];
                    let mut commitment = vec![0u8; 32];
                    rng.fill(&mut wrapped[..]);
                    rng.fill(&mut nonce[..]);
                    rng.fill(&mut ct[..]);
                    rng.fill(&mut commitment[..]);
                    (wrapped, nonce, ct, commitment)
                };
                sqlx::query(&sql)
                    .bind(format!("bench-{i:09}"))
                    .bind("s0")
                    .bind("0123456789abcdef")
                    .bind(wrapped)
                    .bind(nonce)
                    .bind(ct)
                    .bind(0i64)
                    .bind(commitment)
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        }
    })
    .await;
    let _ = sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await;
    out
}
