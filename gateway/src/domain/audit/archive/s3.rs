//! The S3 archive sink (`[audit.archive] sink = "s3"`): objects in a bucket through
//! `aws-sdk-s3`, with the standard credential chain, an attempt timeout on every call, and
//! an optional endpoint (path-style addressing, for S3-compatible stores and moto).
//!
//! Writes never replace: every PUT carries `If-None-Match: *` (a 412 means an object is
//! already there), so a write that arrives late (a stalled connection whose request runs
//! after the archiver moved on) is harmless. Every PUT carries a SHA-256 request checksum
//! (S3 refuses an Object Lock PUT without one), but the archiver hashes what it reads back
//! itself: moto accepts a wrong checksum. When the bucket has Object Lock, each object is
//! locked until the retention date the archiver gives it.

use super::sink::{ArchiveSink, Put, SinkError};
use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockEnabled, ObjectLockMode};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Largest object [`S3Sink::get`] reads.
const MAX_OBJECT: i64 = 512 << 20;

/// `[audit.archive.s3]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3SinkConfig {
    /// Bucket.
    pub bucket: String,
    /// Region.
    #[serde(default = "d_region")]
    pub region: String,
    /// Endpoint override (S3-compatible stores, moto); path-style addressing when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Timeout of each attempt of each call (the SDK retries up to 3 attempts).
    #[serde(default = "d_attempt_ms")]
    pub attempt_timeout_ms: u64,
    /// Object Lock mode when the bucket has Object Lock: `compliance` (no one can shorten
    /// it) or `governance`.
    #[serde(default = "d_lock_mode")]
    pub object_lock_mode: String,
    /// `--apply-lifecycle`: days after which objects move to STANDARD_IA.
    #[serde(default = "d_ia_days")]
    pub ia_after_days: u32,
    /// `--apply-lifecycle`: days after which objects move to GLACIER_IR (instant retrieval:
    /// verify and search still read them; GLACIER and DEEP_ARCHIVE would need a restore).
    #[serde(default = "d_glacier_ir_days")]
    pub glacier_ir_after_days: u32,
}

fn d_ia_days() -> u32 {
    30
}
fn d_glacier_ir_days() -> u32 {
    90
}

fn d_region() -> String {
    "us-east-1".into()
}
fn d_attempt_ms() -> u64 {
    10_000
}
fn d_lock_mode() -> String {
    "compliance".into()
}

impl S3SinkConfig {
    /// A bucket named, a known lock mode, a timeout above zero.
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket.trim().is_empty() {
            return Err("audit.archive.s3.bucket must be set".into());
        }
        if self.attempt_timeout_ms == 0 {
            return Err("audit.archive.s3.attempt_timeout_ms must be greater than zero".into());
        }
        if !(30..self.glacier_ir_after_days.max(31)).contains(&self.ia_after_days) {
            return Err("audit.archive.s3: ia_after_days must be at least 30 (S3's minimum) and below glacier_ir_after_days".into());
        }
        if !matches!(self.object_lock_mode.as_str(), "compliance" | "governance") {
            return Err(
                "audit.archive.s3.object_lock_mode must be compliance or governance".into(),
            );
        }
        Ok(())
    }
}

/// The lifecycle `--apply-lifecycle` puts on the bucket, for the objects under `prefix`.
pub fn lifecycle(
    prefix: &str,
    cfg: &S3SinkConfig,
    expire_days: u32,
) -> Result<aws_sdk_s3::types::BucketLifecycleConfiguration, String> {
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
        LifecycleRuleFilter, Transition, TransitionStorageClass,
    };
    let days = |d: u32| i32::try_from(d).map_err(|_| format!("{d} days is too many"));
    let transition = |d: u32, class: TransitionStorageClass| -> Result<Transition, String> {
        Ok(Transition::builder()
            .days(days(d)?)
            .storage_class(class)
            .build())
    };
    let rule = LifecycleRule::builder()
        .id("shardgate-audit-archive")
        .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
        .status(ExpirationStatus::Enabled)
        .transitions(transition(
            cfg.ia_after_days,
            TransitionStorageClass::StandardIa,
        )?)
        .transitions(transition(
            cfg.glacier_ir_after_days,
            TransitionStorageClass::GlacierIr,
        )?)
        .expiration(
            LifecycleExpiration::builder()
                .days(days(expire_days)?)
                .build(),
        )
        .build()
        .map_err(|e| e.to_string())?;
    BucketLifecycleConfiguration::builder()
        .rules(rule)
        .build()
        .map_err(|e| e.to_string())
}

/// Objects in an S3 bucket.
pub struct S3Sink {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// The configured lock mode.
    mode: ObjectLockMode,
    /// The lock mode every object gets, when the bucket has Object Lock: asked of the bucket
    /// at the first write (so that a gateway starts while S3 is unreachable).
    lock: tokio::sync::OnceCell<Option<ObjectLockMode>>,
}

impl std::fmt::Debug for S3Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Sink")
            .field("bucket", &self.bucket)
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl S3Sink {
    /// A client for `cfg` (no call is made until the sink is used).
    pub async fn connect(cfg: &S3SinkConfig) -> Result<Self, SinkError> {
        let attempt = Duration::from_millis(cfg.attempt_timeout_ms);
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.region.clone()))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(attempt)
                    .operation_attempt_timeout(attempt)
                    .operation_timeout(attempt * 4)
                    .build(),
            );
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let sdk = loader.load().await;
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.endpoint_url.is_some())
            .build();
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket: cfg.bucket.clone(),
            mode: if cfg.object_lock_mode == "governance" {
                ObjectLockMode::Governance
            } else {
                ObjectLockMode::Compliance
            },
            lock: tokio::sync::OnceCell::new(),
        })
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> SinkError {
        SinkError {
            sink: self.describe(),
            why: format!("{what}: {e}"),
        }
    }

    async fn bucket_has_object_lock(&self) -> Result<bool, SinkError> {
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                == Some(&ObjectLockEnabled::Enabled)),
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => Ok(false),
            Err(e) => Err(self.err("GetObjectLockConfiguration", describe(&e))),
        }
    }

    /// The lock mode objects get: `None` when the bucket has no Object Lock (asked once).
    async fn lock(&self) -> Result<Option<ObjectLockMode>, SinkError> {
        self.lock
            .get_or_try_init(|| async {
                let locked = self.bucket_has_object_lock().await?;
                Ok(locked.then(|| self.mode.clone()))
            })
            .await
            .cloned()
    }

    /// Put `lifecycle` on the bucket (replacing its lifecycle configuration).
    pub async fn apply_lifecycle(
        &self,
        lifecycle: aws_sdk_s3::types::BucketLifecycleConfiguration,
    ) -> Result<(), SinkError> {
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .lifecycle_configuration(lifecycle)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.err("PutBucketLifecycleConfiguration", describe(&e)))
    }

    /// The bucket's lifecycle rules, one line each (empty when it has none).
    pub async fn lifecycle_rules(&self) -> Result<Vec<String>, SinkError> {
        let out = match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.code() == Some("NoSuchLifecycleConfiguration") => return Ok(Vec::new()),
            Err(e) => return Err(self.err("GetBucketLifecycleConfiguration", describe(&e))),
        };
        Ok(out
            .rules()
            .iter()
            .map(|r| {
                let moves: Vec<String> = r
                    .transitions()
                    .iter()
                    .map(|t| {
                        let class = t.storage_class().map_or("?", |c| c.as_str());
                        format!("{class} at {} days", t.days().unwrap_or(0))
                    })
                    .collect();
                let expiry = r.expiration().and_then(|e| e.days()).unwrap_or(0);
                let prefix = r.filter().and_then(|f| f.prefix()).unwrap_or("");
                format!(
                    "{} ({}): prefix {prefix:?}, {}, expire at {expiry} days",
                    r.id().unwrap_or("-"),
                    r.status().as_str(),
                    moves.join(", ")
                )
            })
            .collect())
    }

    /// Whether objects are locked (the bucket has Object Lock).
    pub async fn locks_objects(&self) -> Result<bool, SinkError> {
        Ok(self.lock().await?.is_some())
    }
}

/// An SDK error without the request: its code and message, or what failed.
fn describe<E: ProvideErrorMetadata + std::fmt::Debug, R>(e: &SdkError<E, R>) -> String {
    match e {
        SdkError::ServiceError(s) => format!(
            "{} ({})",
            s.err().code().unwrap_or("error"),
            s.err().message().unwrap_or("no message")
        ),
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(_) => "could not reach the endpoint".into(),
        other => format!("{other}"),
    }
}

fn status<E, R: HasStatus>(e: &SdkError<E, R>) -> Option<u16> {
    match e {
        SdkError::ServiceError(s) => Some(s.raw().status_code()),
        _ => None,
    }
}

/// The HTTP status of a raw response.
trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

#[async_trait]
impl ArchiveSink for S3Sink {
    async fn put_if_absent(
        &self,
        key: &str,
        bytes: &[u8],
        retain_until_ms: Option<i64>,
    ) -> Result<Put, SinkError> {
        let mut put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .body(ByteStream::from(bytes.to_vec()));
        if let (Some(mode), Some(until)) = (self.lock().await?, retain_until_ms) {
            put = put
                .object_lock_mode(mode)
                .object_lock_retain_until_date(aws_smithy_types::DateTime::from_millis(until));
        }
        match put.send().await {
            Ok(_) => Ok(Put::Created),
            Err(e) if status(&e) == Some(412) => Ok(Put::Exists),
            Err(e) => Err(self.err(&format!("PutObject {key}"), describe(&e))),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(self.err(&format!("GetObject {key}"), describe(&e))),
        };
        if out.content_length().unwrap_or(0) > MAX_OBJECT {
            return Err(self.err(key, format!("larger than {MAX_OBJECT} bytes")));
        }
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| self.err(&format!("GetObject {key}"), e))?;
        Ok(Some(body.into_bytes().to_vec()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("ListObjectsV2", describe(&e)))?;
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        out.sort();
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    /// The lifecycle rule (`audit archive --apply-lifecycle`) expires objects, each locked
    /// until its date: the archiver never deletes here (and has no `s3:DeleteObject`).
    fn expires_by_itself(&self) -> bool {
        true
    }
}
