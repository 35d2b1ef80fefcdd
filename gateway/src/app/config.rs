//! Configuration: one TOML file plus `SHARDGATE_*` environment overrides, or, with no file,
//! the embedded default (SQLite + `local` keyring in a data directory).
//!
//! Environment keys map onto the file's keys with `__` between levels:
//! `SHARDGATE_LISTEN`, `SHARDGATE_STORE__URL`, `SHARDGATE_LIMITS__MAX_SHARD_BYTES`, ...
//! Lists take a whole TOML array:
//! `SHARDGATE_POLICY__PINS='[{account="acct-9", backend="hsm"}]'`.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use shardgate_policy::{Policy, PolicyBuilder, PolicyDocument, PolicyError};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

// The sections that the layers below own, named here because this file combines them.
pub use crate::domain::ids::is_account_prefix;
pub use crate::http::settings::{Limits, Timeouts};
pub use crate::http::tls::config::{ClientAuth, TlsClientConfig, TlsConfig};
pub use crate::service::settings::{IdempotencyConfig, MigrationConfig, RetentionConfig};
pub use policy::PolicyConfig;
pub use telemetry::TelemetryConfig;

/// Default data directory of the embedded default.
pub const DEFAULT_DATA_DIR: &str = "./shardgate-data";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory for the embedded default's files (and relative paths' base).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The database.
    #[serde(default)]
    pub store: StoreConfig,
    /// Named backend instances.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// Tier name -> backend instance name.
    #[serde(default)]
    pub tiers: BTreeMap<String, String>,
    /// Per-account pins and percentage rollouts, on top of `tiers`.
    #[serde(default, skip_serializing_if = "PolicyConfig::is_empty")]
    pub policy: PolicyConfig,
    /// API tokens (hashes only).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Size limits.
    #[serde(default)]
    pub limits: Limits,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Tier-migration workers.
    #[serde(default)]
    pub migration: MigrationConfig,
    /// Circuit breaker and bulkhead of every backend instance.
    #[serde(default)]
    pub breaker: crate::domain::breaker::BreakerConfig,
    /// Dual control: operations that need a second credential's approval.
    #[serde(default)]
    pub approvals: crate::service::approvals::ApprovalsConfig,
    /// `Idempotency-Key` handling of PUT and DELETE.
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
    /// Log output.
    #[serde(default)]
    pub log: LogConfig,
    /// Version retention.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Token reloading.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Key lifecycle: state refresh and the wrap counter.
    #[serde(default)]
    pub keys: crate::domain::keys::KeysConfig,
    /// When set, also accept the token in this file (the embedded default's admin token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// TLS (and mutual TLS) on the listener; without it the listener speaks plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Span export (OTLP); off unless `otlp_endpoint` is set.
    #[serde(default, skip_serializing_if = "TelemetryConfig::is_empty")]
    pub telemetry: TelemetryConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

/// Database settings.
///
/// ```toml
/// [store]
/// url = "postgres://shardgate_app@db.internal:5432/shardgate?sslmode=verify-full&sslrootcert=/etc/shardgate/db-ca.pem"
/// password_file = "/run/secrets/shardgate-db"
/// migrate = false
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://…` or `sqlite://…`; default `sqlite://<data_dir>/shardgate.db`. TLS
    /// settings go in the URL (`sslmode=verify-full&sslrootcert=…`); the password does not
    /// (`password_file`).
    #[serde(default)]
    pub url: Option<String>,
    /// Pool size.
    #[serde(default = "default_pool")]
    pub max_connections: u32,
    /// PostgreSQL only: a file (mode 0600 or stricter) holding the database password; one
    /// trailing newline is ignored. The URL must then carry no password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Apply pending migrations at start-up (`serve`, `audit verify`, `migrate …`). `false`
    /// for a runtime role that may not run DDL: start-up then only checks that the schema is
    /// current and the role holds its privileges, and `shardgate db migrate` is run
    /// separately under the migration role.
    #[serde(default = "default_migrate")]
    pub migrate: bool,
    /// PostgreSQL only: concurrent shard writes commit in groups, one transaction, one hold
    /// of the audit chain and one WAL flush per group (see `write_group`). `false`: each
    /// write commits alone (for comparison; slower under concurrency).
    #[serde(default = "default_group_writes")]
    pub group_writes: bool,
    /// PostgreSQL only: up to half of `max_connections` again are kept apart from the pool
    /// for the hot one-statement reads (a GET's select, the reads' audit insert), reused
    /// without sqlx's round trip on release. `false`: they use the pool (for comparison).
    #[serde(default = "default_held_connections")]
    pub held_connections: bool,
}

fn default_pool() -> u32 {
    16
}

fn default_migrate() -> bool {
    true
}

fn default_group_writes() -> bool {
    true
}

fn default_held_connections() -> bool {
    true
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: default_pool(),
            password_file: None,
            migrate: default_migrate(),
            group_writes: default_group_writes(),
            held_connections: default_held_connections(),
        }
    }
}

/// A backend instance, tagged by `kind`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum BackendConfig {
    /// AES-256 keyring file.
    #[serde(rename = "local")]
    Local {
        /// Keyring file (mode 0600).
        key_file: PathBuf,
        /// How often to look for a changed keyring file, in milliseconds.
        #[serde(default = "default_reload_ms")]
        reload_interval_ms: u64,
        /// Create the keyring file if it does not exist.
        #[serde(default)]
        create: bool,
    },
    /// An HSM over PKCS#11 (SoftHSM2, AWS CloudHSM).
    #[serde(rename = "pkcs11")]
    Pkcs11(Pkcs11Entry),
    /// An AWS KMS key.
    #[serde(rename = "aws-kms")]
    AwsKms(shardgate_backends::aws_kms::KmsConfig),
}

/// A `pkcs11` backend instance: the HSM settings, and optionally the CloudHSM cluster whose
/// state gates its readiness.
#[derive(Debug, Clone, Serialize)]
pub struct Pkcs11Entry {
    /// Module, token, PIN source, KEK label, pool.
    #[serde(flatten)]
    pub hsm: shardgate_backends::pkcs11::Pkcs11Config,
    /// CloudHSM cluster discovery (`DescribeClusters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudhsm: Option<shardgate_backends::cloudhsm::CloudHsmConfig>,
}

// Not `#[serde(flatten)]`: flatten silently accepts unknown keys, and a typo in an HSM
// section must be an error. Split off `cloudhsm`, then the rest must be exactly the HSM
// settings (whose type denies unknown fields).
impl<'de> Deserialize<'de> for Pkcs11Entry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let cloudhsm = map
            .remove("cloudhsm")
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| D::Error::custom(format!("cloudhsm: {e}")))?;
        let hsm =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
        Ok(Self { hsm, cloudhsm })
    }
}

fn default_reload_ms() -> u64 {
    1000
}

/// A token: its SHA-256 (hex), scopes and optional account prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Identity recorded in the audit log (never the token).
    pub name: String,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
    /// Scopes; `*` grants every scope.
    pub scopes: Vec<String>,
    /// When set, the token only reaches accounts whose id starts with these exact bytes.
    #[serde(default)]
    pub account_prefix: Option<String>,
    /// When set (RFC 3339, e.g. `2027-01-31T00:00:00Z`), the token is refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl TokenConfig {
    /// `expires_at` in unix milliseconds.
    pub fn expires_ms(&self) -> Result<Option<i64>, ConfigError> {
        self.expires_at
            .as_deref()
            .map(|t| {
                parse_time_ms(t).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "token {:?}: expires_at {t:?} is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z)",
                        self.name
                    ))
                })
            })
            .transpose()
    }
}

/// An RFC 3339 time in unix milliseconds.
pub fn parse_time_ms(t: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339_weak(t).ok()?;
    let d = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// `[auth]`: how often every replica re-reads the tokens and revocations kept in the
/// database (`shardgate token create --save`, `shardgate token revoke`). SIGHUP re-reads
/// them at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Milliseconds between reloads (0: only on SIGHUP). A revocation takes effect on every
    /// replica within this time.
    pub refresh_ms: u64,
}

impl AuthConfig {
    /// The reload interval (zero: only on SIGHUP).
    pub fn refresh_every(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.refresh_ms)
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { refresh_ms: 5_000 }
    }
}

/// `[log]`: how log lines are written (to stderr). The level filter is `RUST_LOG`
/// (default `info`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json`, `text` or `auto` (the default).
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text when stderr is a terminal (a person is reading), JSON otherwise (a collector is).
    #[default]
    Auto,
    /// One JSON object per line, with the request id of the request it was logged in.
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    /// Whether to write JSON, resolving `auto` against whether stderr is a terminal.
    pub fn is_json(self) -> bool {
        match self {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

/// Audit settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// File holding the base64 HMAC key (mode 0600). NOT in the database.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Create the key file if missing.
    #[serde(default)]
    pub create_key: bool,
    /// Reads waiting for their audit event; past it, 503 `audit_unavailable`.
    #[serde(default = "d_queue")]
    pub queue_capacity: usize,
    /// Detached events (refusals, which no request waits for) queued for writing; past it
    /// they are dropped and counted. Their own queue: they never take a read's place.
    #[serde(default = "d_detached_queue")]
    pub detached_queue_capacity: usize,
    /// Most events written in one transaction.
    #[serde(default = "d_batch_events")]
    pub batch_max: usize,
    /// Seconds between chain-head checkpoints (a log line and a line in `checkpoint_file`).
    #[serde(default = "d_checkpoint")]
    pub checkpoint_interval_secs: u64,
    /// Append-only file of this replica's chain heads, read by `audit verify
    /// --checkpoints` (default: `audit-checkpoints` in the data directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_file: Option<PathBuf>,
    /// Archiving older events to a write-once sink (docs/audit-archive.md).
    #[serde(default)]
    pub archive: AuditArchiveConfig,
}

/// `[audit.archive]`: which events leave the hot table, how they are cut into segments, and
/// where the segments go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditArchiveConfig {
    /// Run the archiver in the gateway (one replica at a time holds its lease). `shardgate
    /// audit archive` runs one pass either way.
    #[serde(default)]
    pub enabled: bool,
    /// Events younger than this many days stay in the hot table.
    #[serde(default = "d_hot_days")]
    pub hot_days: u32,
    /// Seconds between the background archiver's passes.
    #[serde(default = "d_archive_interval")]
    pub interval_secs: u64,
    /// Most events in one segment.
    #[serde(default = "d_segment_events")]
    pub segment_max_events: usize,
    /// Most bytes (uncompressed) in one segment.
    #[serde(default = "d_segment_bytes")]
    pub segment_max_bytes: usize,
    /// Seconds an archiver's lease lasts without renewal (renewed at every segment): how
    /// long another replica waits to take over from one that died.
    #[serde(default = "d_archive_lease")]
    pub lease_secs: u64,
    /// Most events archived per second, on average (0: as fast as it goes). An archiver at
    /// full speed takes a core and the database's time from the requests (GET p99 x4 at half
    /// the peak on 2 cores: BENCHMARKS.md section 12); the default is 4x the audit events of
    /// 5,000 GET/s, so a hot table catches up while traffic goes on.
    #[serde(default = "d_archive_rate")]
    pub rate_per_sec: u64,
    /// Where segments go: `dir` (the directory sink, the default) or `s3` (`[audit.archive.s3]`).
    #[serde(default = "d_archive_sink")]
    pub sink: String,
    /// Days a segment is kept after its newest event (S3 Object Lock retain-until, when the
    /// bucket has Object Lock, and the lifecycle expiry; the directory sink's segments are
    /// deleted by the archiver after it). Default 2,557: seven years.
    #[serde(default = "d_retention_days")]
    pub retention_days: u32,
    /// The S3 sink, for `sink = "s3"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<crate::domain::audit::archive::S3SinkConfig>,
    /// Directory sink (default: `audit-archive` in the data directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Prefix of every object key (empty, or ending with `/`).
    #[serde(default)]
    pub prefix: String,
}

fn d_hot_days() -> u32 {
    30
}
fn d_archive_interval() -> u64 {
    300
}
fn d_archive_sink() -> String {
    "dir".into()
}
fn d_retention_days() -> u32 {
    2557
}
fn d_archive_lease() -> u64 {
    60
}
fn d_archive_rate() -> u64 {
    20_000
}
fn d_segment_events() -> usize {
    50_000
}
fn d_segment_bytes() -> usize {
    32 << 20
}

impl AuditArchiveConfig {
    /// Every bound above zero, a prefix that names a folder.
    fn validate(&self) -> Result<(), String> {
        if self.segment_max_events == 0
            || self.segment_max_bytes == 0
            || self.interval_secs == 0
            || self.lease_secs == 0
        {
            return Err(
                "audit.archive: segment_max_events, segment_max_bytes, interval_secs and lease_secs must be greater than zero"
                    .into(),
            );
        }
        match (self.sink.as_str(), &self.s3) {
            ("dir", _) => {}
            ("s3", Some(s3)) => s3.validate()?,
            ("s3", None) => {
                return Err(
                    "audit.archive.sink = \"s3\" needs an [audit.archive.s3] section".into(),
                )
            }
            (other, _) => {
                return Err(format!(
                    "audit.archive.sink {other:?} must be \"dir\" or \"s3\""
                ))
            }
        }
        let plain = self
            .prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        if !self.prefix.is_empty()
            && (!plain
                || !self.prefix.ends_with('/')
                || self.prefix.starts_with('/')
                || self.prefix.contains(".."))
        {
            return Err(format!(
                "audit.archive.prefix {:?} must be empty or a relative folder ending with '/' (A-Z a-z 0-9 . _ - /)",
                self.prefix
            ));
        }
        Ok(())
    }
}

impl Default for AuditArchiveConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            hot_days: d_hot_days(),
            interval_secs: d_archive_interval(),
            segment_max_events: d_segment_events(),
            segment_max_bytes: d_segment_bytes(),
            lease_secs: d_archive_lease(),
            rate_per_sec: d_archive_rate(),
            sink: d_archive_sink(),
            retention_days: d_retention_days(),
            s3: None,
            dir: None,
            prefix: String::new(),
        }
    }
}

fn d_queue() -> usize {
    4096
}
fn d_detached_queue() -> usize {
    1024
}
fn d_batch_events() -> usize {
    256
}
fn d_checkpoint() -> u64 {
    60
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            key_file: None,
            create_key: false,
            queue_capacity: d_queue(),
            detached_queue_capacity: d_detached_queue(),
            batch_max: d_batch_events(),
            checkpoint_interval_secs: d_checkpoint(),
            checkpoint_file: None,
            archive: AuditArchiveConfig::default(),
        }
    }
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an override does not parse or has an unknown key.
    #[error("configuration: {0}")]
    Parse(String),
    /// The configuration is incomplete or inconsistent.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Where the configuration comes from (CLI flags).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config FILE`.
    pub file: Option<PathBuf>,
    /// `--data-dir DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--listen ADDR`.
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// The embedded default for a data directory: SQLite + a `local` keyring (created if
    /// missing), tiers `retail` and `institutional` on it, admin token from `admin.token`.
    pub fn embedded(data_dir: &Path) -> Self {
        let mut backends = BTreeMap::new();
        backends.insert(
            "local".to_string(),
            BackendConfig::Local {
                key_file: data_dir.join("local.keyring"),
                reload_interval_ms: default_reload_ms(),
                create: true,
            },
        );
        let tiers = [("retail", "local"), ("institutional", "local")]
            .into_iter()
            .map(|(t, b)| (t.to_string(), b.to_string()))
            .collect();
        Self {
            listen: default_listen(),
            data_dir: data_dir.to_path_buf(),
            store: StoreConfig {
                url: Some(sqlite_url(&data_dir.join("shardgate.db"))),
                max_connections: 8,
                ..StoreConfig::default()
            },
            backends,
            tiers,
            policy: PolicyConfig::default(),
            tokens: Vec::new(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            audit: AuditConfig {
                key_file: Some(data_dir.join("audit.key")),
                create_key: true,
                ..AuditConfig::default()
            },
            migration: MigrationConfig::default(),
            breaker: crate::domain::breaker::BreakerConfig::default(),
            idempotency: IdempotencyConfig::default(),
            log: LogConfig::default(),
            retention: RetentionConfig::default(),
            auth: AuthConfig::default(),
            keys: crate::domain::keys::KeysConfig::default(),
            admin_token_file: Some(data_dir.join("admin.token")),
            tls: None,
            telemetry: TelemetryConfig::default(),
            approvals: crate::service::approvals::ApprovalsConfig::default(),
        }
    }

    /// Load from the sources: the file (or the embedded default when there is none), then
    /// `SHARDGATE_*` environment overrides, then flags.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        Self::load_with_env(sources, Env::prefixed("SHARDGATE_"))
    }

    fn load_with_env(sources: &Sources, env: Env) -> Result<Self, ConfigError> {
        // Only variables that name a configuration section or key are configuration:
        // `SHARDGATE_TEST_*` belongs to the test scripts, and Kubernetes injects
        // `SHARDGATE_PORT=tcp://...` (service links) into every pod when a Service is named
        // `shardgate`. Those are ignored with one warning; a misspelt key INSIDE a section
        // (`SHARDGATE_LIMITS__MAX_BODYBYTES`) is still an error, as in a file.
        let top = top_level_keys();
        let mut ignored = Vec::new();
        for (k, _) in env.clone().split("__").iter() {
            let first = k
                .as_str()
                .split('.')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !first.starts_with("test_") && !top.contains(&first.as_str()) {
                ignored.push(format!(
                    "SHARDGATE_{}",
                    k.as_str().replace('.', "__").to_ascii_uppercase()
                ));
            }
        }
        if !ignored.is_empty() {
            tracing::warn!(variables = ?ignored, "ignoring SHARDGATE_* environment variables that are not configuration keys");
        }
        let env = env.split("__").filter(move |k| {
            let first = k
                .as_str()
                .split('.')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            top.contains(&first.as_str())
        });
        let mut fig = match &sources.file {
            Some(file) => {
                if !file.exists() {
                    return Err(ConfigError::Invalid(format!(
                        "config file {} does not exist",
                        file.display()
                    )));
                }
                Figment::new().merge(Toml::file_exact(file))
            }
            None => {
                // The data dir decides the embedded default's paths, so resolve it first.
                let data_dir = sources
                    .data_dir
                    .clone()
                    .or_else(|| std::env::var_os("SHARDGATE_DATA_DIR").map(PathBuf::from))
                    .unwrap_or_else(default_data_dir);
                Figment::new().merge(Serialized::defaults(Config::embedded(&data_dir)))
            }
        };
        fig = fig.merge(env);
        if let Some(dir) = &sources.data_dir {
            fig = fig.merge(Serialized::default("data_dir", dir));
        }
        if let Some(listen) = &sources.listen {
            fig = fig.merge(Serialized::default("listen", listen));
        }
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The store URL (default: SQLite in the data dir).
    pub fn store_url(&self) -> String {
        self.store
            .url
            .clone()
            .unwrap_or_else(|| sqlite_url(&self.data_dir.join("shardgate.db")))
    }

    /// The audit key file (default: `audit.key` in the data dir).
    pub fn audit_key_file(&self) -> PathBuf {
        self.audit
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit.key"))
    }

    /// This replica's audit checkpoint file (default: `audit-checkpoints` in the data dir).
    pub fn checkpoint_file(&self) -> PathBuf {
        self.audit
            .checkpoint_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-checkpoints"))
    }

    /// The directory archive sink (default: `audit-archive` in the data dir).
    pub fn archive_dir(&self) -> PathBuf {
        self.audit
            .archive
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-archive"))
    }

    /// Names of the configured backend instances.
    pub fn backend_names(&self) -> BTreeSet<String> {
        self.backends.keys().cloned().collect()
    }

    /// Tiers, pins and rollouts, not yet validated ([`PolicyBuilder::check`] lists every
    /// problem; [`Config::policy`] builds).
    pub fn policy_builder(&self) -> PolicyBuilder {
        Policy::builder(self.tiers.clone())
            .pins(self.policy.pins.iter().cloned())
            .rollouts(self.policy.rollouts.iter().cloned())
            .priorities(
                self.policy.priorities.clone(),
                self.policy.account_priorities.clone(),
            )
            .tier_rules(self.policy.tier_rules.iter().cloned())
    }

    /// The config file's tiers, pins, rollouts and priority classes as a policy document: what seeds version 1
    /// of an empty database.
    pub fn policy_document(&self) -> PolicyDocument {
        PolicyDocument {
            tiers: self.tiers.clone(),
            pins: self.policy.pins.clone(),
            rollouts: self.policy.rollouts.clone(),
            priorities: self.policy.priorities.clone(),
            account_priorities: self.policy.account_priorities.clone(),
            tier_rules: self.policy.tier_rules.clone(),
        }
    }

    /// The validated policy over the configured backend names. No backend is opened: this
    /// is what `shardgate policy check` and `policy explain` use without touching an HSM.
    pub fn policy(&self) -> Result<Policy, PolicyError> {
        self.policy_builder().build(&self.backend_names())
    }

    /// Structural checks that need no I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.backends.is_empty() {
            return Err(ConfigError::Invalid("no backends are configured".into()));
        }
        for name in self.backends.keys() {
            if !crate::domain::ids::is_valid(name) {
                return Err(ConfigError::Invalid(format!(
                    "backend name {name:?} must match {}",
                    crate::domain::ids::ID_GRAMMAR
                )));
            }
        }
        self.limits.validate().map_err(ConfigError::Invalid)?;
        self.telemetry.validate().map_err(ConfigError::Invalid)?;
        if let Some(op) = self.approvals.unknown_operation() {
            return Err(ConfigError::Invalid(format!(
                "[approvals] required_for: unknown operation {op:?} (one of {})",
                crate::service::approvals::OPERATIONS.join(", ")
            )));
        }
        self.audit
            .archive
            .validate()
            .map_err(ConfigError::Invalid)?;
        if self.idempotency.window_secs == 0 {
            return Err(ConfigError::Invalid(
                "idempotency.window_secs must be greater than zero".into(),
            ));
        }
        for t in &self.tokens {
            if t.sha256.len() != 64 || hex::decode(&t.sha256).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "token {:?}: sha256 must be 64 hex characters",
                    t.name
                )));
            }
            t.expires_ms()?;
            for s in &t.scopes {
                if s != "*" && crate::domain::auth::Scope::parse(s).is_none() {
                    return Err(ConfigError::Invalid(format!(
                        "token {:?}: unknown scope {s:?}",
                        t.name
                    )));
                }
            }
            if let Some(p) = &t.account_prefix {
                if !is_account_prefix(p) {
                    return Err(ConfigError::Invalid(format!(
                        "token {:?}: account_prefix must be non-empty {}",
                        t.name,
                        crate::domain::ids::ID_CHARSET
                    )));
                }
            }
            crate::domain::auth::check_admin_prefix_rule(&t.scopes, t.account_prefix.as_deref())
                .map_err(|m| ConfigError::Invalid(format!("token {:?}: {m}", t.name)))?;
        }
        if self.store.password_file.is_some() {
            let url = self.store_url();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::Invalid(
                    "store.password_file applies to a postgres:// store url only".into(),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate().map_err(ConfigError::Invalid)?;
        }
        let cert_identities = self.tls.as_ref().is_some_and(|t| !t.clients.is_empty());
        if self.tokens.is_empty() && self.admin_token_file.is_none() && !cert_identities {
            return Err(ConfigError::Invalid(
                "no tokens are configured: shardgate never starts without authentication (create one with `shardgate token create`, or map client certificates with [[tls.clients]])".into(),
            ));
        }
        Ok(())
    }
}

/// The top-level keys of [`Config`], read from its `Deserialize` implementation (the field
/// list serde passes to `deserialize_struct`), so the list cannot drift from the struct.
fn top_level_keys() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("field probe"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Self::Error::custom("field probe"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    static KEYS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let mut fields: &'static [&'static str] = &[];
        let _ = Config::deserialize(Probe(&mut fields));
        fields
    })
}

/// A sqlx SQLite URL for a path, creating the file if needed.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// The file of a `sqlite:` URL, unless it is in memory.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:" && !url.contains("mode=memory"))
        .then(|| PathBuf::from(path))
}

mod policy;
mod telemetry;

#[cfg(test)]
mod tests;
