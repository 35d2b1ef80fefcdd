//! The signing services' routes: accounts, shards and batch reads. Reads are retried; shard
//! writes and deletes carry an `Idempotency-Key` (the caller's, or a fresh one per call), so
//! they are retried too and a retry never makes a second version.

use crate::retry::Repeat;
use crate::transport::{json, Call, Client};
use crate::types::{
    Account, BatchItem, DeleteReceipt, PutShardResponse, Shard, ShardBytes, ShardPage,
};
use crate::{ApiError, Error, ErrorCode};
use reqwest::Method;
use serde::Deserialize;

/// Percent-encode one path segment (ids are checked by the gateway, not here: an id it
/// refuses comes back as `invalid_id`).
pub(crate) fn seg(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Options of a shard write.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Compare-and-swap: the version the caller last saw (0: the shard must not exist).
    pub expected_version: Option<i64>,
    /// The write's `Idempotency-Key` (a fresh UUID when `None`): pass the same key to repeat
    /// a write whose answer was lost, across processes.
    pub idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct WireShard {
    shard: zeroize::Zeroizing<String>,
    version: i64,
    backend: String,
}

impl WireShard {
    fn open(self) -> Result<Shard, Error> {
        Ok(Shard {
            bytes: ShardBytes::from_b64(&self.shard)?,
            version: self.version,
            backend: self.backend,
        })
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireResult {
    Shard(WireShard),
    Error { error: WireError },
}

#[derive(Deserialize)]
struct WireError {
    code: String,
    message: String,
}

fn fresh_key(given: Option<String>) -> String {
    given.unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

impl Client {
    /// Create an account in `tier`, or move it to `tier` (`PUT /v1/accounts/{account}`; not
    /// retried: a tier change can start a migration).
    pub async fn put_account(&self, account: &str, tier: &str) -> Result<Account, Error> {
        self.send_account_put(account, &serde_json::json!({ "tier": tier }))
            .await
    }

    /// `PUT /v1/accounts/{account}` with `request` as its body (not retried: see
    /// [`Client::put_account`]).
    async fn send_account_put(
        &self,
        account: &str,
        request: &serde_json::Value,
    ) -> Result<Account, Error> {
        let mut call = Call::new(
            Method::PUT,
            format!("/v1/accounts/{}", seg(account)),
            Repeat::Unsafe,
        );
        call.body = Some(body(request)?);
        json(self.send(&call).await?).await
    }

    /// [`Client::put_account`], confirming a move that lowers the account's protection
    /// (`"allow_downgrade": true`; HSM to KMS or local, KMS to local): the gateway refuses
    /// such a move with `downgrade_refused` otherwise, and with `forbidden` unless the
    /// credential holds `admin`. Not retried, as `put_account`.
    pub async fn put_account_allowing_downgrade(
        &self,
        account: &str,
        tier: &str,
    ) -> Result<Account, Error> {
        let request = serde_json::json!({ "tier": tier, "allow_downgrade": true });
        self.send_account_put(account, &request).await
    }

    /// [`Client::put_account`] with the account's numeric attributes (`aum_usd`, `users`, ...),
    /// replacing the ones it had: the policy's tier rules may put it in another tier than
    /// `tier` by them (the answer's `tier`, `requested_tier` and `tier_rule` say). Not retried,
    /// as `put_account`.
    pub async fn put_account_with_attributes(
        &self,
        account: &str,
        tier: &str,
        attributes: &std::collections::BTreeMap<String, f64>,
    ) -> Result<Account, Error> {
        let request = serde_json::json!({ "tier": tier, "attributes": attributes });
        self.send_account_put(account, &request).await
    }

    /// An account (`GET /v1/accounts/{account}`).
    pub async fn get_account(&self, account: &str) -> Result<Account, Error> {
        let call = Call::new(
            Method::GET,
            format!("/v1/accounts/{}", seg(account)),
            Repeat::Safe,
        );
        json(self.send(&call).await?).await
    }

    /// Crypto-shred every shard of an account, and the account.
    pub async fn delete_account(
        &self,
        account: &str,
        idempotency_key: Option<String>,
    ) -> Result<DeleteReceipt, Error> {
        let mut call = Call::new(
            Method::DELETE,
            format!("/v1/accounts/{}", seg(account)),
            Repeat::Safe,
        );
        call.idempotency_key = Some(fresh_key(idempotency_key));
        json(self.send(&call).await?).await
    }

    /// Store a new version of a shard.
    pub async fn put_shard(
        &self,
        account: &str,
        shard: &str,
        bytes: &ShardBytes,
        opts: PutOptions,
    ) -> Result<PutShardResponse, Error> {
        let mut call = Call::new(Method::PUT, shard_path(account, shard), Repeat::Safe);
        let b64 = bytes.to_b64();
        let mut body = serde_json::Map::new();
        body.insert(
            "shard".into(),
            serde_json::Value::String(b64.as_str().to_string()),
        );
        if let Some(v) = opts.expected_version {
            body.insert("expected_version".into(), v.into());
        }
        let mut value = serde_json::Value::Object(body);
        call.body = Some(self::body(&value)?);
        zeroize_json(&mut value);
        call.idempotency_key = Some(fresh_key(opts.idempotency_key));
        let resp = self.send(&call).await;
        if let Some(b) = call.body.as_mut() {
            zeroize::Zeroize::zeroize(b);
        }
        json(resp?).await
    }

    /// A shard's latest version, or `version`.
    pub async fn get_shard(
        &self,
        account: &str,
        shard: &str,
        version: Option<i64>,
    ) -> Result<Shard, Error> {
        let mut call = Call::new(Method::GET, shard_path(account, shard), Repeat::Safe);
        if let Some(v) = version {
            call.query.push(("version", v.to_string()));
        }
        json::<WireShard>(self.send(&call).await?).await?.open()
    }

    /// A page of an account's shards, after `after` (`limit` at most).
    pub async fn list_shards(
        &self,
        account: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<ShardPage, Error> {
        let mut call = Call::new(
            Method::GET,
            format!("/v1/accounts/{}/shards", seg(account)),
            Repeat::Safe,
        );
        if let Some(a) = after {
            call.query.push(("after", a.to_string()));
        }
        if let Some(l) = limit {
            call.query.push(("limit", l.to_string()));
        }
        json(self.send(&call).await?).await
    }

    /// Crypto-shred every version of a shard.
    pub async fn delete_shard(
        &self,
        account: &str,
        shard: &str,
        idempotency_key: Option<String>,
    ) -> Result<DeleteReceipt, Error> {
        let mut call = Call::new(Method::DELETE, shard_path(account, shard), Repeat::Safe);
        call.idempotency_key = Some(fresh_key(idempotency_key));
        json(self.send(&call).await?).await
    }

    /// Crypto-shred one version of a shard.
    pub async fn delete_shard_version(
        &self,
        account: &str,
        shard: &str,
        version: i64,
        idempotency_key: Option<String>,
    ) -> Result<DeleteReceipt, Error> {
        let path = format!("{}/versions/{version}", shard_path(account, shard));
        let mut call = Call::new(Method::DELETE, path, Repeat::Safe);
        call.idempotency_key = Some(fresh_key(idempotency_key));
        json(self.send(&call).await?).await
    }

    /// Read many shards (`POST /v1/shards:batchGet`), in chunks of the gateway's
    /// `batch_max_items`: one result per item, in order; an item the gateway could not
    /// serve is its [`ApiError`] (the call fails only when a whole chunk does).
    pub async fn batch_get(
        &self,
        items: &[BatchItem],
    ) -> Result<Vec<Result<Shard, ApiError>>, Error> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(self.batch_max_items()) {
            let mut call = Call::new(Method::POST, "/v1/shards:batchGet".into(), Repeat::Safe);
            call.body = Some(body(&serde_json::json!({ "items": chunk }))?);
            #[derive(Deserialize)]
            struct Wire {
                results: Vec<WireResult>,
            }
            let wire: Wire = json(self.send(&call).await?).await?;
            if wire.results.len() != chunk.len() {
                return Err(Error::Decode(format!(
                    "{} results for {} items",
                    wire.results.len(),
                    chunk.len()
                )));
            }
            for r in wire.results {
                out.push(match r {
                    WireResult::Shard(s) => Ok(s.open()?),
                    WireResult::Error { error } => Err(ApiError {
                        status: 0,
                        code: ErrorCode::from_wire(&error.code),
                        message: error.message,
                        retry_after: None,
                        request_id: None,
                    }),
                });
            }
        }
        Ok(out)
    }
}

fn shard_path(account: &str, shard: &str) -> String {
    format!("/v1/accounts/{}/shards/{}", seg(account), seg(shard))
}

pub(crate) fn body(v: &serde_json::Value) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::Invalid(e.to_string()))
}

/// Wipe the strings of a JSON value that held shard bytes.
fn zeroize_json(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(m) = v {
        for (_, s) in m.iter_mut() {
            if let serde_json::Value::String(s) = s {
                zeroize::Zeroize::zeroize(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(seg("acct-1.a_b"), "acct-1.a_b");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
