//! The API's bodies as Rust types (docs/api.md, /openapi.json). Shard bytes only ever live in
//! [`ShardBytes`]: zeroized on drop, redacted in `Debug`, never `Serialize`d whole.

use serde::Deserialize;
use zeroize::Zeroizing;

/// A shard's bytes: wiped from memory when dropped; `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct ShardBytes(Zeroizing<Vec<u8>>);

impl ShardBytes {
    /// Take ownership of the bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn from_b64(b64: &str) -> Result<Self, crate::Error> {
        use base64::Engine as _;
        let mut out = Zeroizing::new(Vec::new());
        base64::engine::general_purpose::STANDARD
            .decode_vec(b64, &mut out)
            .map_err(|_| crate::Error::Decode("shard bytes are not standard base64".into()))?;
        Ok(Self(out))
    }

    pub(crate) fn to_b64(&self) -> Zeroizing<String> {
        use base64::Engine as _;
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.expose()))
    }
}

impl std::fmt::Debug for ShardBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl From<Vec<u8>> for ShardBytes {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}

/// A shard version read back.
#[derive(Debug, Clone)]
pub struct Shard {
    /// The bytes.
    pub bytes: ShardBytes,
    /// Its version.
    pub version: i64,
    /// The backend that wrapped its data key.
    pub backend: String,
}

/// What a shard write did.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PutShardResponse {
    /// The new version.
    pub version: i64,
    /// The backend that wrapped its data key.
    pub backend: String,
    /// Older versions this write crypto-shredded under the account's retention.
    #[serde(default)]
    pub pruned_versions: Vec<PrunedVersion>,
}

/// A version a write's retention shredded.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PrunedVersion {
    /// The version.
    pub version: i64,
    /// Its audit event.
    pub audit_event: String,
}

/// An account.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Account {
    /// Account id.
    pub account: String,
    /// The tier it is in (the one asked for, or the one a tier rule of the policy put it in
    /// by its attributes).
    pub tier: String,
    /// The tier asked for, when a tier rule put the account in another.
    #[serde(default)]
    pub requested_tier: Option<String>,
    /// Why it is in `tier` (on a put): `asked for`, or the tier rule that decided.
    #[serde(default)]
    pub tier_rule: Option<String>,
    /// Its numeric attributes, when it has any.
    #[serde(default)]
    pub attributes: Option<std::collections::BTreeMap<String, f64>>,
    /// Backend the policy picks for new shard versions.
    pub backend: String,
    /// Whether this request created it (on a put).
    #[serde(default)]
    pub created: Option<bool>,
    /// Number of shards (on a get).
    #[serde(default)]
    pub shard_count: Option<i64>,
    /// Versions still wrapped on another backend (on a get).
    #[serde(default)]
    pub versions_on_other_backends: Option<i64>,
    /// The migration job a tier change started.
    #[serde(default)]
    pub migration_job: Option<String>,
    /// Versions of each shard a write keeps (0 = all).
    pub keep_versions: u32,
    /// Where `keep_versions` comes from (`account`, `tier` or `default`).
    pub keep_versions_source: String,
}

/// What a delete destroyed.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct DeleteReceipt {
    /// Versions destroyed.
    pub destroyed_versions: i64,
    /// Shards destroyed (account deletes).
    #[serde(default)]
    pub destroyed_shards: Option<i64>,
    /// The audit event of the delete.
    pub audit_event: String,
}

/// One shard of a listing.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ShardListEntry {
    /// Shard id.
    pub shard: String,
    /// Latest version.
    pub latest_version: i64,
    /// Backend of the latest version.
    pub backend: String,
}

/// A page of a listing.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ShardPage {
    /// The page.
    pub shards: Vec<ShardListEntry>,
    /// Pass as `after` for the next page; `None` on the last.
    #[serde(default)]
    pub next_after: Option<String>,
}

/// One item of a batch read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BatchItem {
    /// Account id.
    pub account: String,
    /// Shard id.
    pub shard: String,
    /// Version (latest when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

impl BatchItem {
    /// The latest version of a shard.
    pub fn latest(account: impl Into<String>, shard: impl Into<String>) -> Self {
        Self {
            account: account.into(),
            shard: shard.into(),
            version: None,
        }
    }
}

/// A re-wrap job as started.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct StartedMigration {
    /// Job id.
    pub job: String,
    /// Versions it will move.
    pub total: i64,
}

/// What selects the versions a re-wrap job moves (at least one field).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MigrationSelector {
    /// One account's versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Versions wrapped on this backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_backend: Option<String>,
    /// Versions wrapped under a key version below this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_version_below: Option<i64>,
}

/// A version a job could not move.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct MigrationFailure {
    /// Account.
    pub account: String,
    /// Shard.
    pub shard: String,
    /// Version.
    pub version: i64,
    /// Why.
    pub error: String,
}

/// A re-wrap job.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct MigrationJob {
    /// Job id.
    pub job: String,
    /// `running`, `paused`, `cancelled`, `done`, ...
    pub state: String,
    /// Versions selected.
    pub total: i64,
    /// Moved.
    pub done: i64,
    /// Failed.
    pub failed: i64,
    /// Skipped.
    pub skipped: i64,
    /// Left.
    pub remaining: i64,
    /// The last error.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Failures.
    #[serde(default)]
    pub errors: Vec<MigrationFailure>,
    /// Created, unix ms.
    pub created_at: i64,
    /// Last change, unix ms.
    pub updated_at: i64,
    /// A policy apply's job: when (unix ms) it looks once more for versions placed by the
    /// previous policy version; absent once it has.
    #[serde(default)]
    pub catch_up_at: Option<i64>,
}

/// A breaker after an operator's close.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Circuit {
    /// Backend.
    pub backend: String,
    /// Its state now.
    pub state: String,
}

/// Liveness.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// Readiness; the store and backends only with a `metrics` credential.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Readiness {
    /// Whether this process can serve.
    pub ready: bool,
    /// The store's state.
    #[serde(default)]
    pub store: Option<serde_json::Value>,
    /// Each backend's state.
    #[serde(default)]
    pub backends: Option<serde_json::Map<String, serde_json::Value>>,
    /// The cluster policy version the gateway serves (with a `metrics` credential).
    #[serde(default)]
    pub policy_version: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_bytes_never_show_in_debug() {
        let s = ShardBytes::new(b"seed phrase words".to_vec());
        let shown = format!("{s:?}");
        assert!(!shown.contains("seed"), "{shown}");
        assert!(shown.contains("17 bytes"), "{shown}");
    }

    #[test]
    fn shard_bytes_round_trip_base64() {
        let s = ShardBytes::new(vec![0, 1, 2, 255]);
        let back = ShardBytes::from_b64(&s.to_b64()).ok();
        assert_eq!(
            back.as_ref().map(ShardBytes::expose),
            Some(&[0, 1, 2, 255][..])
        );
        assert!(ShardBytes::from_b64("not base64!").is_err());
    }
}
