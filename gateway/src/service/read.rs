//! Reading shards: one version ([`fetch`], `GET .../shards/{shard}`) or many at once
//! ([`fetch_many`], `POST /v1/shards:batchGet`). Both go through the same stages: check the
//! ids and the version, load the stored row (a miss names what is missing: [`not_found`]),
//! find the row's backend (never the policy's), unwrap the data key, open the envelope, and
//! turn a failure to open into its verdict ([`super::integrity`]). The batch loads every row
//! in one query and unwraps once per backend; the caller audits every outcome.

use super::integrity::{open_error, row_backend, unconfigured_backend};
use super::state::Services;
use crate::domain::auth::{Caller, Scope};
use crate::domain::envelope;
use crate::domain::error::DomainError;
use crate::domain::ids::{AccountId, ShardId};
use crate::domain::priority;
use shardgate_backends::{BackendError, Version};
use shardgate_store::{ShardVersionRow, StoreError};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// A decrypted shard version. Plaintext stays in zeroizing memory.
pub struct Opened {
    /// The shard's bytes.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Its version.
    pub version: Version,
    /// The backend that wraps its data key.
    pub backend: String,
}

/// One item of a batch read.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// Account id (unchecked).
    pub account: &'a str,
    /// Shard id (unchecked).
    pub shard: &'a str,
    /// Version (unchecked), or the latest.
    pub version: Option<i64>,
}

/// The version of a request, checked: `version must be 1 or more` unless it is.
pub fn check_version(version: Option<i64>) -> Result<Option<Version>, DomainError> {
    version
        .map(Version::new)
        .transpose()
        .map_err(|e| DomainError::Invalid(e.to_string()))
}

/// The outcome of opening `row` with its unwrapped data key (or the unwrap's failure).
fn opened(
    state: &Services,
    row: &ShardVersionRow,
    plaintext: Result<Zeroizing<Vec<u8>>, BackendError>,
) -> Result<Opened, DomainError> {
    plaintext
        .map(|plaintext| Opened {
            plaintext,
            version: row.version,
            backend: row.backend.clone(),
        })
        .map_err(|e| open_error(state, row, e))
}

/// Read and open one version; the caller audits the outcome.
pub async fn fetch(
    state: &Services,
    account: &AccountId,
    shard: &ShardId,
    version: Option<Version>,
) -> Result<Opened, DomainError> {
    let row = load(state, account, shard, version).await?;
    let backend = row_backend(state, &row)?;
    let plaintext = priority::scoped(
        state.ask_for(vec![account.to_string()]),
        envelope::open(backend.as_ref(), &row),
    )
    .await;
    opened(state, &row, plaintext)
}

/// The stored row of one version, or the not-found error that names what is missing.
pub async fn load(
    state: &Services,
    account: &AccountId,
    shard: &ShardId,
    version: Option<Version>,
) -> Result<ShardVersionRow, DomainError> {
    match state
        .store
        .get_shard_version(account, shard, version)
        .await?
    {
        Some(row) => Ok(row),
        None => Err(not_found(state, account, shard, version).await),
    }
}

/// What is missing when no row answers: the version, the shard, or the whole account.
pub async fn not_found(
    state: &Services,
    account: &AccountId,
    shard: &ShardId,
    version: Option<Version>,
) -> DomainError {
    if version.is_some() {
        if let Ok(Some(_)) = state.store.latest_version(account, shard).await {
            return DomainError::VersionNotFound;
        }
    }
    match state.store.get_account(account).await {
        Ok(None) => StoreError::AccountNotFound.into(),
        Ok(Some(_)) => StoreError::ShardNotFound.into(),
        Err(e) => e.into(),
    }
}

/// Read many versions at once, one result per item in order: rows first (ONE query), then
/// ONE `unwrap_many` per backend (an HSM pays one session checkout for the whole batch), then
/// the shard seals. An item the caller may not reach, or with a bad id or version, fails on
/// its own. Only a store failure of the rows' query fails the whole batch.
pub async fn fetch_many(
    state: &Services,
    caller: &Caller,
    items: &[Wanted<'_>],
) -> Result<Vec<Result<Opened, DomainError>>, DomainError> {
    let mut opened_at: Vec<Option<Result<Opened, DomainError>>> =
        items.iter().map(|_| None).collect();
    let mut wanted = Vec::with_capacity(items.len());
    let mut wanted_at = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match checked(caller, item) {
            Ok(ids) => {
                wanted.push(ids);
                wanted_at.push(i);
            }
            Err(e) => opened_at[i] = Some(Err(e)),
        }
    }
    let keys: Vec<_> = wanted
        .iter()
        .map(|(a, s, v)| (a.to_string(), s.to_string(), *v))
        .collect();
    let mut rows: Vec<Option<ShardVersionRow>> = items.iter().map(|_| None).collect();
    let found = state.store.get_shard_versions(&keys).await?;
    for ((i, (account, shard, version)), row) in wanted_at.into_iter().zip(&wanted).zip(found) {
        match row {
            Some(r) => rows[i] = Some(r),
            None => opened_at[i] = Some(Err(not_found(state, account, shard, *version).await)),
        }
    }
    open_by_backend(state, &rows, &mut opened_at).await;
    Ok(opened_at
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(DomainError::Internal("item was not processed".into()))))
        .collect())
}

/// One batch item's ids and version, checked in the order the answer names the first fault
/// (account id, shard id, the caller's reach, version).
fn checked(
    caller: &Caller,
    item: &Wanted<'_>,
) -> Result<(AccountId, ShardId, Option<Version>), DomainError> {
    let account = AccountId::parse(item.account)?;
    let shard = ShardId::parse(item.shard)?;
    caller.require(Scope::ShardsRead, Some(account.as_str()))?;
    Ok((account, shard, check_version(item.version)?))
}

/// Unwrap the data keys of `rows` with one call per backend and open each row into its slot.
async fn open_by_backend(
    state: &Services,
    rows: &[Option<ShardVersionRow>],
    opened_at: &mut [Option<Result<Opened, DomainError>>],
) {
    let mut by_backend: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        if let Some(r) = row {
            by_backend.entry(r.backend.as_str()).or_default().push(i);
        }
    }
    for (name, indices) in by_backend {
        let Some(backend) = state.backend(name).cloned() else {
            // Not configured: each row's own verdict (a misfiled row is an integrity failure).
            for i in indices {
                if let Some(row) = rows[i].as_ref() {
                    opened_at[i] = Some(Err(unconfigured_backend(state, row)));
                }
            }
            continue;
        };
        let mut pending = Vec::with_capacity(indices.len());
        let mut pairs = Vec::with_capacity(indices.len());
        for i in indices {
            let Some(row) = rows[i].as_ref() else {
                continue;
            };
            match envelope::wrapped_of(row) {
                Ok(pair) => {
                    pending.push(i);
                    pairs.push(pair);
                }
                Err(e) => opened_at[i] = Some(Err(open_error(state, row, e))),
            }
        }
        let accounts: std::collections::BTreeSet<&str> = pending
            .iter()
            .filter_map(|i| rows[*i].as_ref().map(|r| r.account.as_str()))
            .collect();
        let ask = state.ask_for(accounts.into_iter().map(str::to_string).collect());
        let deks = priority::scoped(ask, backend.unwrap_many(&pairs)).await;
        if deks.len() != pending.len() {
            tracing::error!(backend = %name, "unwrap_many answered a different number of results");
        }
        for (i, dek) in pending.into_iter().zip(deks) {
            let Some(row) = rows[i].as_ref() else {
                continue;
            };
            let plaintext = dek.and_then(|dek| envelope::open_with(&dek, row));
            opened_at[i] = Some(opened(state, row, plaintext));
        }
    }
}
