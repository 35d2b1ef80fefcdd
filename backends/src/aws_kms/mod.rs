//! The `aws-kms` backend: data keys from KMS `GenerateDataKey`, unwrapped with `Decrypt`.
//!
//! Every call carries the shard identity as the KMS encryption context
//! ([`ShardIdentity::encryption_context`], keys `shardgate:format`, `shardgate:account`,
//! `shardgate:shard`, `shardgate:version`; FORMAT.md), so a wrapped key copied to another
//! row does not open. `Decrypt` pins the configured `KeyId`, so a blob wrapped under another
//! key is refused. Reads go through a bounded, single-flight data-key cache ([`cache`]).
//!
//! Error mapping (KMS error code → [`BackendError`]):
//! - `ThrottlingException`, `KMSInternalException`, `DependencyTimeoutException`,
//!   `KeyUnavailableException`, any other 5xx, attempt timeouts and connection failures are
//!   retried (exponential backoff, full jitter, at most `max_attempts` attempts inside the
//!   `deadline_ms` budget), then [`BackendError::Unavailable`], or
//!   [`BackendError::DeadlineExceeded`] when the budget ran out.
//! - `InvalidCiphertextException` → [`BackendError::Integrity`]. KMS (and moto 5) answer it
//!   for a blob presented with another encryption context, i.e. a wrapped key moved to another
//!   account, shard or version, and for a tampered blob.
//! - `IncorrectKeyException`, `AccessDeniedException`, `DisabledException`,
//!   `KMSInvalidStateException`, `NotFoundException`, `InvalidKeyUsageException` →
//!   [`BackendError::KeyUnusable`], not retried. AWS answers `IncorrectKeyException` for a blob
//!   wrapped under another key than the pinned `KeyId`; moto 5 answers
//!   `AccessDeniedException` there (and for a blob whose embedded key id was altered). Both
//!   are "wrong key" (502 `key_unusable`), not tampering of a row: a moved row keeps its key
//!   and differs in context, which both answer with `InvalidCiphertextException`.

pub mod cache;
pub mod retry;

use crate::{
    BackendError, DataKey, Health, KekVersion, KeyBackend, ShardIdentity, Stat, WrappedKey,
};
use async_trait::async_trait;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyState};
use cache::{cache_key, DekCache};
pub use cache::{CacheStats, KmsCacheConfig};
use retry::{Attempt, GaveUp, RetryPolicy};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use zeroize::Zeroizing;

/// KMS reports one logical version per key (it rotates key material internally and every
/// blob names what it needs), so every wrap carries this version.
pub const KMS_KEY_VERSION: u32 = 1;

/// Configuration of one `aws-kms` backend instance. Credentials come from the standard AWS
/// provider chain (environment, profile, web identity, ECS/IMDS), never from this file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsConfig {
    /// Key id, key ARN, alias name (`alias/...`) or alias ARN. Pinned on every `Decrypt`.
    pub key_id: String,
    /// AWS region of the key.
    pub region: String,
    /// Endpoint override (VPC endpoint; moto in tests).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Timeout of one KMS call attempt.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Attempts per operation for transient failures (the first included).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Budget of one operation, retries and backoff included; past it the operation answers
    /// [`BackendError::DeadlineExceeded`].
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// The read cache of unwrapped data keys.
    #[serde(default)]
    pub cache: KmsCacheConfig,
    /// How long a health answer (`DescribeKey`, asked by `/readyz`) is reused, so that
    /// readiness probes cannot turn into KMS traffic; 0 asks KMS every time.
    #[serde(default = "default_health_cache_ms")]
    pub health_cache_ms: u64,
}

fn default_health_cache_ms() -> u64 {
    5000
}

fn default_call_timeout_ms() -> u64 {
    2000
}
fn default_max_attempts() -> u32 {
    3
}
fn default_deadline_ms() -> u64 {
    5000
}

impl KmsConfig {
    /// A config with defaults for everything but the key and region.
    pub fn new(key_id: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            key_id: key_id.into(),
            region: region.into(),
            endpoint_url: None,
            call_timeout_ms: default_call_timeout_ms(),
            max_attempts: default_max_attempts(),
            deadline_ms: default_deadline_ms(),
            cache: KmsCacheConfig::default(),
            health_cache_ms: default_health_cache_ms(),
        }
    }

    fn validate(&self) -> Result<(), BackendError> {
        let bad = |m: &str| Err(BackendError::Internal(format!("aws-kms config: {m}")));
        if self.key_id.trim().is_empty() {
            return bad("key_id is empty");
        }
        if self.region.trim().is_empty() {
            return bad("region is empty");
        }
        if self.call_timeout_ms == 0 {
            return bad("call_timeout_ms must be > 0");
        }
        if !(1..=20).contains(&self.max_attempts) {
            return bad("max_attempts must be between 1 and 20");
        }
        if self.deadline_ms < self.call_timeout_ms {
            return bad("deadline_ms must be >= call_timeout_ms");
        }
        if self.cache.enabled && self.cache.max_entries == 0 {
            return bad("cache.max_entries must be > 0 when the cache is enabled");
        }
        Ok(())
    }
}

/// An AWS KMS key as a KEK backend.
pub struct KmsBackend {
    name: String,
    key_id: String,
    region: String,
    endpoint_url: Option<String>,
    client: aws_sdk_kms::Client,
    policy: RetryPolicy,
    cache: Option<DekCache<DataKey>>,
    decrypt_calls: AtomicU64,
    generate_calls: AtomicU64,
    encrypt_calls: AtomicU64,
    reencrypt_calls: AtomicU64,
    /// The key ARN KMS answered for this instance's wraps (learned from the first answer:
    /// the configured `key_id` may be an alias).
    answered_key_ref: std::sync::OnceLock<String>,
    /// The last `DescribeKey` answer and when it came: health is asked by every `/readyz`
    /// probe, which must not turn into KMS traffic (`health_cache_ms`).
    health_cache: tokio::sync::Mutex<Option<(std::time::Instant, Health)>>,
    health_ttl: Duration,
    describe_calls: AtomicU64,
}

impl std::fmt::Debug for KmsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsBackend")
            .field("name", &self.name)
            .field("key_id", &self.key_id)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .finish_non_exhaustive()
    }
}

type Ctx = HashMap<String, String>;

fn context(id: &ShardIdentity) -> Ctx {
    id.encryption_context()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// Map one failed SDK call to a retry decision (see the module docs for the table).
fn classify<E, R>(err: SdkError<E, R>) -> Attempt<BackendError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("unknown").to_string();
            classify_code(&code)
        }
        SdkError::TimeoutError(_) => Attempt::Transient("KMS call timed out".into()),
        SdkError::DispatchFailure(_) => Attempt::Transient("KMS connection failed".into()),
        SdkError::ResponseError(_) => {
            Attempt::Transient("KMS response unreadable or interrupted".into())
        }
        SdkError::ConstructionFailure(_) => Attempt::Fatal(BackendError::Internal(
            "KMS request could not be built".into(),
        )),
        _ => Attempt::Fatal(BackendError::Internal("KMS call failed".into())),
    }
}

/// The code table, separated for unit tests.
fn classify_code(code: &str) -> Attempt<BackendError> {
    match code {
        "ThrottlingException"
        | "KMSInternalException"
        | "DependencyTimeoutException"
        | "KeyUnavailableException"
        | "ServiceUnavailableException"
        | "InternalFailure" => Attempt::Transient(format!("KMS answered {code}")),
        "InvalidCiphertextException" => Attempt::Fatal(BackendError::Integrity),
        "IncorrectKeyException"
        | "AccessDeniedException"
        | "DisabledException"
        | "KMSInvalidStateException"
        | "NotFoundException"
        | "InvalidKeyUsageException" => Attempt::Fatal(BackendError::KeyUnusable(code.into())),
        other => Attempt::Fatal(BackendError::Internal(format!("KMS answered {other}"))),
    }
}

fn gave_up(g: GaveUp) -> BackendError {
    match g {
        GaveUp::Deadline => BackendError::DeadlineExceeded,
        GaveUp::Exhausted(why) => BackendError::Unavailable(why),
    }
}

/// Take the SDK's plaintext buffer, copy it into a [`DataKey`], and wipe the buffer.
fn take_plaintext(p: Option<Blob>) -> Result<DataKey, BackendError> {
    let bytes = Zeroizing::new(p.map(Blob::into_inner).unwrap_or_default());
    // A blob that opens to anything but 32 bytes was not made by this backend for this row.
    DataKey::from_slice(&bytes).ok_or(BackendError::Integrity)
}

/// `(region, account)` of a key ARN (`arn:<partition>:kms:<region>:<account>:key/...`); `None`
/// for a bare key id or alias name, whose account is the caller's own.
fn arn_region_account(key_id: &str) -> Option<(&str, &str)> {
    let mut parts = key_id.splitn(6, ':');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("arn"), Some(_), Some("kms"), Some(region), Some(account)) => Some((region, account)),
        _ => None,
    }
}

/// Whether `ReEncrypt` can move a wrap from `src`'s key to `dst`'s: one endpoint, one region,
/// and (where both ARNs say) one account. Otherwise the caller falls back to unwrap + wrap.
fn reencrypt_reaches(src: &KmsBackend, dst: &KmsBackend) -> bool {
    if src.region != dst.region || src.endpoint_url != dst.endpoint_url {
        return false;
    }
    match (
        arn_region_account(&src.key_id),
        arn_region_account(&dst.key_id),
    ) {
        (Some((r1, a1)), Some((r2, a2))) => r1 == r2 && a1 == a2,
        (Some((r, _)), None) | (None, Some((r, _))) => r == dst.region,
        (None, None) => true,
    }
}

impl KmsBackend {
    /// Build the client (standard credential chain, `region`, optional endpoint override, SDK
    /// retries off: this backend retries itself). Makes no KMS call.
    pub async fn open(name: &str, cfg: &KmsConfig) -> Result<Self, BackendError> {
        cfg.validate()?;
        let call_timeout = Duration::from_millis(cfg.call_timeout_ms);
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.region.clone()))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(call_timeout)
                    .operation_attempt_timeout(call_timeout)
                    .build(),
            );
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let sdk = loader.load().await;
        let client = aws_sdk_kms::Client::new(&sdk);
        Ok(Self {
            name: name.to_string(),
            key_id: cfg.key_id.clone(),
            region: cfg.region.clone(),
            endpoint_url: cfg.endpoint_url.clone(),
            client,
            policy: RetryPolicy {
                max_attempts: cfg.max_attempts,
                attempt_timeout: call_timeout,
                budget: Duration::from_millis(cfg.deadline_ms),
                base_backoff: Duration::from_millis(25),
                max_backoff: Duration::from_millis(1000),
            },
            cache: cfg.cache.enabled.then(|| DekCache::new(cfg.cache.clone())),
            decrypt_calls: AtomicU64::new(0),
            generate_calls: AtomicU64::new(0),
            encrypt_calls: AtomicU64::new(0),
            reencrypt_calls: AtomicU64::new(0),
            answered_key_ref: std::sync::OnceLock::new(),
            health_cache: tokio::sync::Mutex::new(None),
            health_ttl: Duration::from_millis(cfg.health_cache_ms),
            describe_calls: AtomicU64::new(0),
        })
    }

    /// Cache counters plus the number of `Decrypt` operations sent.
    pub fn cache_stats(&self) -> CacheStats {
        let mut s = self.cache.as_ref().map(DekCache::stats).unwrap_or_default();
        s.decrypt_calls = self.decrypt_calls.load(Ordering::Relaxed);
        s
    }

    /// The key reference of a wrap KMS answered (its key ARN, else the configured id), noted
    /// for [`KeyBackend::holds_key_ref`].
    fn key_ref_of(&self, answered: Option<String>) -> String {
        let key_ref = answered.unwrap_or_else(|| self.key_id.clone());
        let _ = self.answered_key_ref.set(key_ref.clone());
        key_ref
    }

    /// The configured key id (as given: id, ARN or alias).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The configured region.
    pub fn region(&self) -> &str {
        &self.region
    }

    async fn decrypt_uncached(
        &self,
        id: &ShardIdentity,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, BackendError> {
        self.decrypt_calls.fetch_add(1, Ordering::Relaxed);
        let ctx = context(id);
        self.policy
            .run(|| {
                let req = self
                    .client
                    .decrypt()
                    .key_id(&self.key_id)
                    .ciphertext_blob(Blob::new(wrapped.blob.clone()))
                    .set_encryption_context(Some(ctx.clone()));
                async move {
                    let mut out = req.send().await.map_err(classify)?;
                    take_plaintext(out.plaintext.take()).map_err(Attempt::Fatal)
                }
            })
            .await
            .map_err(gave_up)?
    }

    /// `ReEncrypt` from `src`'s key to this backend's key: the DEK never leaves KMS.
    async fn reencrypt_from(
        &self,
        src: &KmsBackend,
        id: &ShardIdentity,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        only_version(wrapped.key_version)?;
        self.reencrypt_calls.fetch_add(1, Ordering::Relaxed);
        let ctx = context(id);
        let out = self
            .policy
            .run(|| {
                let req = self
                    .client
                    .re_encrypt()
                    .ciphertext_blob(Blob::new(wrapped.blob.clone()))
                    .source_key_id(&src.key_id)
                    .set_source_encryption_context(Some(ctx.clone()))
                    .destination_key_id(&self.key_id)
                    .set_destination_encryption_context(Some(ctx.clone()));
                async move { req.send().await.map_err(classify) }
            })
            .await
            .map_err(gave_up)??;
        Ok(WrappedKey {
            key_ref: self.key_ref_of(out.key_id),
            key_version: KMS_KEY_VERSION,
            blob: out
                .ciphertext_blob
                .map(Blob::into_inner)
                .ok_or_else(|| BackendError::Internal("ReEncrypt returned no blob".into()))?,
        })
    }
}

/// A KMS backend has one KEK version, [`KMS_KEY_VERSION`].
fn only_version(version: u32) -> Result<(), BackendError> {
    if version == KMS_KEY_VERSION {
        Ok(())
    } else {
        Err(BackendError::KeyUnusable(format!(
            "an aws-kms backend has only key version {KMS_KEY_VERSION}, not {version}"
        )))
    }
}

#[async_trait]
impl KeyBackend for KmsBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "aws-kms"
    }

    /// Wraps record the key ARN KMS answers. It is recognised when the configured `key_id`
    /// is that ARN or the bare key id in it, or once this process has seen KMS answer it (a
    /// key configured by alias is known after its first wrap).
    fn holds_key_ref(&self, key_ref: &str) -> bool {
        key_ref == self.key_id
            || self.answered_key_ref.get().is_some_and(|k| k == key_ref)
            || (key_ref.starts_with("arn:")
                && key_ref
                    .rsplit_once(":key/")
                    .is_some_and(|(_, id)| id == self.key_id))
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    async fn generate_data_key(
        &self,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        self.generate_calls.fetch_add(1, Ordering::Relaxed);
        let ctx = context(id);
        let mut out = self
            .policy
            .run(|| {
                let req = self
                    .client
                    .generate_data_key()
                    .key_id(&self.key_id)
                    .key_spec(DataKeySpec::Aes256)
                    .set_encryption_context(Some(ctx.clone()));
                async move { req.send().await.map_err(classify) }
            })
            .await
            .map_err(gave_up)??;
        let dek = take_plaintext(out.plaintext.take()).map_err(|_| {
            BackendError::Internal("GenerateDataKey returned a key of the wrong size".into())
        })?;
        let blob = out
            .ciphertext_blob
            .take()
            .map(Blob::into_inner)
            .ok_or_else(|| BackendError::Internal("GenerateDataKey returned no blob".into()))?;
        Ok((
            dek,
            WrappedKey {
                key_ref: self.key_ref_of(out.key_id.take()),
                key_version: KMS_KEY_VERSION,
                blob,
            },
        ))
    }

    async fn wrap(&self, id: &ShardIdentity, dek: &DataKey) -> Result<WrappedKey, BackendError> {
        self.encrypt_calls.fetch_add(1, Ordering::Relaxed);
        let ctx = context(id);
        let out = self
            .policy
            .run(|| {
                // The SDK takes the plaintext by value and does not zeroize its request copy.
                let req = self
                    .client
                    .encrypt()
                    .key_id(&self.key_id)
                    .plaintext(Blob::new(dek.expose().to_vec()))
                    .set_encryption_context(Some(ctx.clone()));
                async move { req.send().await.map_err(classify) }
            })
            .await
            .map_err(gave_up)??;
        Ok(WrappedKey {
            key_ref: self.key_ref_of(out.key_id),
            key_version: KMS_KEY_VERSION,
            blob: out
                .ciphertext_blob
                .map(Blob::into_inner)
                .ok_or_else(|| BackendError::Internal("Encrypt returned no blob".into()))?,
        })
    }

    async fn unwrap(
        &self,
        id: &ShardIdentity,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, BackendError> {
        // The row's key version is checked as other backends check theirs: a database
        // writer must not sidestep a `destroyed` version by renumbering a row.
        only_version(wrapped.key_version)?;
        match &self.cache {
            Some(cache) => {
                let key = cache_key(&self.key_id, &wrapped.blob, &id.aad());
                cache
                    .get_or_fetch(&key, || self.decrypt_uncached(id, wrapped))
                    .await
            }
            None => self.decrypt_uncached(id, wrapped).await,
        }
    }

    async fn verify(&self, id: &ShardIdentity, wrapped: &WrappedKey) -> Result<(), BackendError> {
        only_version(wrapped.key_version)?;
        self.reencrypt_from(self, id, wrapped).await.map(drop)
    }

    /// One version: KMS rotates key material inside the key, under the same ARN.
    fn kek_versions(&self) -> Vec<KekVersion> {
        vec![KekVersion {
            key_ref: self
                .answered_key_ref
                .get()
                .cloned()
                .unwrap_or_else(|| self.key_id.clone()),
            version: KMS_KEY_VERSION,
            state: crate::KeyState::Active,
        }]
    }

    async fn generate_data_key_under(
        &self,
        version: u32,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        only_version(version)?;
        self.generate_data_key(id).await
    }

    async fn rewrap_from_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        only_version(version)?;
        self.rewrap_from(id, source, wrapped).await
    }

    async fn rewrap_from(
        &self,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        if let Some(src) = source.as_any().and_then(|a| a.downcast_ref::<KmsBackend>()) {
            if reencrypt_reaches(src, self) {
                return self.reencrypt_from(src, id, wrapped).await;
            }
        }
        // Another kind, or a key ReEncrypt cannot reach: unwrap + wrap, DEK dropped at once.
        let dek = source.unwrap(id, wrapped).await?;
        let out = self.wrap(id, &dek).await;
        drop(dek);
        out
    }

    fn stats(&self) -> Vec<Stat> {
        let c = self.cache_stats();
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            Stat::new("kms_decrypt_calls_total", c.decrypt_calls),
            Stat::new("kms_generate_data_key_calls_total", n(&self.generate_calls)),
            Stat::new("kms_encrypt_calls_total", n(&self.encrypt_calls)),
            Stat::new("kms_reencrypt_calls_total", n(&self.reencrypt_calls)),
            Stat::new("kms_describe_key_calls_total", n(&self.describe_calls)),
            Stat::new("cache_hits_total", c.hits),
            Stat::new("cache_misses_total", c.misses),
            Stat::new("cache_evictions_total", c.evictions),
            Stat::new("cache_entries", c.entries),
        ]
    }

    async fn health(&self) -> Health {
        // One probe at a time; callers meanwhile wait for its answer, then share it.
        let mut cached = self.health_cache.lock().await;
        if let Some((at, h)) = cached.as_ref() {
            if at.elapsed() < self.health_ttl {
                return h.clone();
            }
        }
        let h = self.describe_health().await;
        *cached = Some((std::time::Instant::now(), h.clone()));
        h
    }
}

impl KmsBackend {
    /// `DescribeKey` of the configured key, as a [`Health`].
    async fn describe_health(&self) -> Health {
        self.describe_calls.fetch_add(1, Ordering::Relaxed);
        let probe = tokio::time::timeout(
            self.policy.attempt_timeout,
            self.client.describe_key().key_id(&self.key_id).send(),
        )
        .await;
        match probe {
            Ok(Ok(out)) => {
                let state = out.key_metadata().and_then(|m| m.key_state());
                match state {
                    Some(KeyState::Enabled) => Health {
                        usable: true,
                        detail: format!("KMS key {} enabled", self.key_id),
                    },
                    other => Health {
                        usable: false,
                        detail: format!(
                            "KMS key {} state {}",
                            self.key_id,
                            other.map(|s| s.as_str()).unwrap_or("unknown")
                        ),
                    },
                }
            }
            Ok(Err(e)) => {
                let detail = match classify(e) {
                    Attempt::Transient(why) => format!("KMS unavailable: {why}"),
                    Attempt::Fatal(err) => err.to_string(),
                };
                Health {
                    usable: false,
                    detail,
                }
            }
            Err(_) => Health {
                usable: false,
                detail: "KMS unavailable: DescribeKey timed out".into(),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn arns_name_their_region_and_account() {
        assert_eq!(
            arn_region_account("arn:aws:kms:eu-west-1:111122223333:key/abc"),
            Some(("eu-west-1", "111122223333"))
        );
        assert_eq!(
            arn_region_account("arn:aws:kms:eu-west-1:111122223333:alias/x"),
            Some(("eu-west-1", "111122223333"))
        );
        assert_eq!(arn_region_account("alias/x"), None);
        assert_eq!(
            arn_region_account("1234abcd-12ab-34cd-56ef-1234567890ab"),
            None
        );
    }

    async fn open_key(key_id: &str, region: &str) -> KmsBackend {
        KmsBackend::open("k", &KmsConfig::new(key_id, region))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn reencrypt_reaches_only_within_one_account_and_region() {
        let a = open_key("arn:aws:kms:eu-west-1:111122223333:key/a", "eu-west-1").await;
        let same_account = open_key("arn:aws:kms:eu-west-1:111122223333:key/c", "eu-west-1").await;
        let other_account = open_key("arn:aws:kms:eu-west-1:444455556666:key/b", "eu-west-1").await;
        let alias = open_key("alias/shards", "eu-west-1").await;
        let other_region = open_key("alias/shards", "us-east-1").await;
        assert!(reencrypt_reaches(&a, &same_account));
        assert!(!reencrypt_reaches(&a, &other_account));
        assert!(reencrypt_reaches(&a, &alias));
        assert!(!reencrypt_reaches(&alias, &other_region));
    }

    fn fatal(code: &str) -> Option<BackendError> {
        match classify_code(code) {
            Attempt::Fatal(e) => Some(e),
            Attempt::Transient(_) => None,
        }
    }

    #[test]
    fn code_table() {
        for c in ["ThrottlingException", "KMSInternalException"] {
            assert!(fatal(c).is_none(), "{c} is retried");
        }
        assert_eq!(
            fatal("InvalidCiphertextException"),
            Some(BackendError::Integrity)
        );
        for c in [
            "IncorrectKeyException",
            "AccessDeniedException",
            "DisabledException",
            "KMSInvalidStateException",
            "NotFoundException",
        ] {
            assert!(
                matches!(fatal(c), Some(BackendError::KeyUnusable(_))),
                "{c}"
            );
        }
        assert!(matches!(
            fatal("ValidationException"),
            Some(BackendError::Internal(_))
        ));
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let cfg: KmsConfig =
            serde_json::from_str(r#"{"key_id":"alias/x","region":"us-east-1"}"#).unwrap();
        assert_eq!(cfg, KmsConfig::new("alias/x", "us-east-1"));
        assert_eq!(cfg.call_timeout_ms, 2000);
        assert!(cfg.cache.enabled);
        assert!(
            serde_json::from_str::<KmsConfig>(r#"{"key_id":"k","region":"r","nope":1}"#).is_err()
        );
        assert!(serde_json::from_str::<KmsConfig>(
            r#"{"key_id":"k","region":"r","cache":{"nope":1}}"#
        )
        .is_err());
    }

    #[test]
    fn config_validation() {
        assert!(KmsConfig::new("", "r").validate().is_err());
        assert!(KmsConfig::new("k", "").validate().is_err());
        let mut c = KmsConfig::new("k", "r");
        c.max_attempts = 0;
        assert!(c.validate().is_err());
        let mut c = KmsConfig::new("k", "r");
        c.deadline_ms = 10;
        assert!(c.validate().is_err());
        assert!(KmsConfig::new("k", "r").validate().is_ok());
    }
}
