//! The composition root: the store, the backends, the policy, the authenticator and the
//! auditor, opened once from a [`Config`] and composed into the service state
//! ([`Services`]) and the HTTP state ([`AppState`]).

use crate::app::config::{BackendConfig, Config};
use crate::domain::audit::{AuditKey, Auditor};
use crate::domain::auth::{hash_token, TokenEntry};
pub use crate::http::state::{AppState, HttpParts};
use crate::service::state::{Parts, Services};
use secrecy::{ExposeSecret, SecretString};
use shardgate_backends::local::LocalBackend;
use shardgate_backends::KeyBackend;
use shardgate_policy::Policy;
use shardgate_store::Store;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Most writes stored by one group commit: far more than the connections a client pool
/// keeps busy, few enough that one statement's arrays stay small.
const WRITE_GROUP_MAX: usize = 64;

/// Group workers: one group does its row work while the other holds the audit chain.
const WRITE_GROUP_WORKERS: usize = 2;

/// Why the gateway cannot start. Messages name files and settings, never secrets.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Config problem.
    #[error(transparent)]
    Config(#[from] crate::app::config::ConfigError),
    /// Store problem.
    #[error("store: {0}")]
    Store(#[from] shardgate_store::StoreError),
    /// A keyring or key file.
    #[error("backend {name}: {reason}")]
    Backend {
        /// Backend instance.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Audit key.
    #[error(transparent)]
    AuditKey(#[from] crate::domain::audit::AuditKeyError),
    /// The audit archive sink could not be opened.
    #[error(transparent)]
    ArchiveSink(#[from] crate::domain::audit::archive::SinkError),
    /// Policy.
    #[error("policy: {0}")]
    Policy(#[from] shardgate_policy::PolicyError),
    /// The database's policy version cannot be served.
    #[error("policy: {0}")]
    PolicyLoad(#[from] crate::domain::policy::LoadError),
    /// Files.
    #[error("{0}")]
    Io(String),
}

/// What start-up created, for the operator.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    /// The admin token file, when the embedded default uses one.
    pub admin_token_file: Option<PathBuf>,
    /// Whether a new admin token was generated.
    pub created_admin_token: bool,
    /// [`Mode::Check`]: what `serve` would create (directories, keyrings, the audit key, the
    /// admin token, the SQLite database) or change (pending migrations), one line each.
    pub would_create: Vec<String>,
}

/// Whether start-up may create what is missing (`serve` and the commands that build the
/// state) or only checks (`config check`). Both run the same code, in the same order: in
/// `Check` mode nothing is created or migrated, what `Start` would create is noted in
/// [`Startup::would_create`], and everything that exists is opened read-only and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create what is missing (keyrings marked `create`, the audit key, the admin token,
    /// directories), migrate the schema.
    Start,
    /// Create nothing, migrate nothing.
    Check,
}

/// Open every backend a config names (creating keyrings marked `create`).
pub async fn open_backends(
    cfg: &Config,
) -> Result<BTreeMap<String, Arc<dyn KeyBackend>>, StartError> {
    open_backends_in(cfg, Mode::Start, &mut Startup::default()).await
}

/// [`open_backends`]; in [`Mode::Check`] a missing keyring marked `create` is noted, not
/// created (and not opened).
async fn open_backends_in(
    cfg: &Config,
    mode: Mode,
    startup: &mut Startup,
) -> Result<BTreeMap<String, Arc<dyn KeyBackend>>, StartError> {
    let mut out: BTreeMap<String, Arc<dyn KeyBackend>> = BTreeMap::new();
    for (name, b) in &cfg.backends {
        let err = |reason: String| StartError::Backend {
            name: name.clone(),
            reason,
        };
        let backend: Arc<dyn KeyBackend> = match b {
            BackendConfig::Local {
                key_file,
                reload_interval_ms,
                create,
            } => {
                if *create && mode == Mode::Check && key_file.symlink_metadata().is_err() {
                    startup
                        .would_create
                        .push(format!("backend {name}: keyring {}", key_file.display()));
                    continue;
                }
                if *create {
                    ensure_private_dir(key_file.parent())?;
                    if shardgate_backends::local::create_if_missing(key_file)
                        .map_err(|e| err(e.to_string()))?
                    {
                        tracing::info!(backend = %name, file = %key_file.display(), "created keyring");
                    }
                }
                Arc::new(
                    LocalBackend::open(name, key_file, Duration::from_millis(*reload_interval_ms))
                        .map_err(|e| err(e.to_string()))?,
                )
            }
            BackendConfig::Pkcs11(entry) => {
                let (n, hsm) = (name.clone(), entry.hsm.clone());
                // Loading the module, logging in and filling the pool block: keep them off
                // the async workers.
                let backend = tokio::task::spawn_blocking(move || {
                    shardgate_backends::pkcs11::Pkcs11Backend::open(&n, &hsm)
                })
                .await
                .map_err(|e| err(format!("start-up task failed: {e}")))?
                .map_err(|e| err(e.to_string()))?;
                let backend: Arc<dyn KeyBackend> = Arc::new(backend);
                match &entry.cloudhsm {
                    None => backend,
                    Some(c) => {
                        let monitor = shardgate_backends::cloudhsm::ClusterMonitor::start(c)
                            .await
                            .map_err(|e| err(e.to_string()))?;
                        Arc::new(shardgate_backends::cluster_gate::ClusterGated::new(
                            backend, monitor,
                        ))
                    }
                }
            }
            BackendConfig::AwsKms(kms) => Arc::new(
                shardgate_backends::aws_kms::KmsBackend::open(name, kms)
                    .await
                    .map_err(|e| err(e.to_string()))?,
            ),
        };
        out.insert(name.clone(), backend);
    }
    Ok(out)
}

fn ensure_private_dir(dir: Option<&std::path::Path>) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(|e| StartError::Io(format!("cannot create {}: {e}", d.display())))?;
    }
    Ok(())
}

/// The database password of `[store] password_file`: a private file
/// ([`crate::domain::files::read_secret`]: 0600, or 0640/0440 for a group; it may be a symlink), one
/// trailing newline ignored. Error texts name the file, never its content.
pub fn store_password(cfg: &Config) -> Result<Option<SecretString>, StartError> {
    let Some(path) = &cfg.store.password_file else {
        return Ok(None);
    };
    let what = || format!("store password file {}", path.display());
    let text = crate::domain::files::read_secret(path).map_err(|e| match e {
        crate::domain::files::SecretFileError::Io(e) => {
            StartError::Io(format!("{}: cannot read: {e}", what()))
        }
        refused => StartError::Io(format!("{}: {refused}", what())),
    })?;
    let mut bytes: &[u8] = &text;
    bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if bytes.is_empty() {
        return Err(StartError::Io(format!("{} is empty", what())));
    }
    if bytes.contains(&b'\n') {
        return Err(StartError::Io(format!(
            "{} holds more than one line: it must hold the password alone",
            what()
        )));
    }
    let password = std::str::from_utf8(bytes)
        .map_err(|_| StartError::Io(format!("{} is not UTF-8", what())))?;
    Ok(Some(SecretString::from(password.to_string())))
}

/// Connect to the configured store (with the password of `[store] password_file`), without
/// migrating or checking the schema.
pub async fn open_store(cfg: &Config, max_connections: u32) -> Result<Arc<dyn Store>, StartError> {
    let url = cfg.store_url();
    let password = store_password(cfg)?;
    if password.is_none() && shardgate_store::postgres::url_has_password(&url) {
        tracing::warn!(
            "the store url carries the database password: move it to [store] password_file (a 0600 file) so that it is in no configuration or environment variable"
        );
    }
    let pool = shardgate_store::PoolOptions {
        max_connections,
        held_connections: cfg.store.held_connections,
    };
    Ok(shardgate_store::connect_with_options(
        &url,
        password.as_ref().map(ExposeSecret::expose_secret),
        pool,
    )
    .await?)
}

/// Bring the schema up to date (`[store] migrate = true`, the default), or, for a runtime
/// role that runs no DDL (`migrate = false`), check that it is current and that the role
/// holds what it needs, warning when it could also rewrite the audit log.
pub async fn prepare_schema(cfg: &Config, store: &dyn Store) -> Result<(), StartError> {
    if cfg.store.migrate {
        store.migrate().await?;
        return Ok(());
    }
    let check = store.check_schema().await?;
    if !check.audit_writable.is_empty() {
        tracing::warn!(
            privileges = %check.audit_writable.join(", "),
            "[store] migrate = false, but the database role may rewrite the audit log: connect as a runtime role without UPDATE/DELETE/TRUNCATE on the audit tables (docs/security.md, \"Database least privilege\")"
        );
    }
    if !check.newer_migrations.is_empty() {
        tracing::warn!(
            versions = ?check.newer_migrations,
            "the database has migrations this build does not know (migrated by a newer shardgate)"
        );
    }
    Ok(())
}

/// The archive sink a config names (`[audit.archive] sink`: the directory, or S3).
pub async fn archive_sink(
    cfg: &Config,
) -> Result<Arc<dyn crate::domain::audit::archive::ArchiveSink>, StartError> {
    use crate::domain::audit::archive::{DirSink, S3Sink};
    match &cfg.audit.archive.s3 {
        Some(s3) if cfg.audit.archive.sink == "s3" => Ok(Arc::new(S3Sink::connect(s3).await?)),
        _ => Ok(Arc::new(DirSink::new(cfg.archive_dir()))),
    }
}

/// Start the background audit archiver when `[audit.archive] enabled`; its lease holder is
/// this process's audit chain id (unique per process).
pub async fn start_audit_archiver(cfg: &Config, state: &AppState) -> Result<(), StartError> {
    let a = &cfg.audit.archive;
    if !a.enabled {
        return Ok(());
    }
    let settings = crate::service::audit_archive::ArchiverSettings {
        keep_hot: Duration::from_secs(u64::from(a.hot_days) * 86_400),
        interval: Duration::from_secs(a.interval_secs),
        max_events: a.segment_max_events,
        max_bytes: a.segment_max_bytes,
        lease_ms: i64::try_from(a.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        prefix: a.prefix.clone(),
        retention: Duration::from_secs(u64::from(a.retention_days) * 86_400),
        rate_per_sec: a.rate_per_sec,
    };
    crate::service::audit_archive::spawn_archiver(
        state.store.clone(),
        state.archive.sink.clone(),
        (state.archive.key.clone(), state.audit.clone()),
        settings,
        format!("gateway:{}", state.audit.chain_id()),
    );
    tracing::info!(sink = %a.sink, hot_days = a.hot_days, "audit archiver started");
    Ok(())
}

/// Start this process's audit chain as `[audit]` says (queues, batches, checkpoints to
/// the config's checkpoint file).
pub async fn start_auditor(
    cfg: &Config,
    store: Arc<dyn Store>,
    key: Arc<AuditKey>,
) -> Result<Arc<Auditor>, shardgate_store::StoreError> {
    Auditor::start(
        store,
        key,
        (cfg.audit.queue_capacity, cfg.audit.detached_queue_capacity),
        cfg.audit.batch_max,
        Duration::from_secs(cfg.audit.checkpoint_interval_secs),
        Some(cfg.checkpoint_file()),
    )
    .await
}

/// The audit key a config names (created when `audit.create_key`).
pub fn audit_key(cfg: &Config) -> Result<AuditKey, StartError> {
    audit_key_in(cfg, Mode::Start, &mut Startup::default())?
        .ok_or_else(|| StartError::Io("the audit key was not created".into()))
}

/// [`audit_key`]; in [`Mode::Check`] a missing key that `audit.create_key` would create is
/// noted (`None`).
fn audit_key_in(
    cfg: &Config,
    mode: Mode,
    startup: &mut Startup,
) -> Result<Option<AuditKey>, StartError> {
    let path = cfg.audit_key_file();
    if cfg.audit.create_key && mode == Mode::Check && path.symlink_metadata().is_err() {
        startup
            .would_create
            .push(format!("audit key {}", path.display()));
        return Ok(None);
    }
    if cfg.audit.create_key {
        ensure_private_dir(path.parent())?;
        AuditKey::create_if_missing(&path)?;
    }
    Ok(Some(AuditKey::load(&path)?))
}

/// The tokens of the config file and the admin token file (creating the latter when the
/// embedded default needs one).
pub fn config_tokens(cfg: &Config, startup: &mut Startup) -> Result<Vec<TokenEntry>, StartError> {
    config_tokens_in(cfg, Mode::Start, startup)
}

/// [`config_tokens`]; in [`Mode::Check`] a missing admin token file is noted, not created.
fn config_tokens_in(
    cfg: &Config,
    mode: Mode,
    startup: &mut Startup,
) -> Result<Vec<TokenEntry>, StartError> {
    let mut entries = Vec::new();
    for t in &cfg.tokens {
        let e = TokenEntry::new(&t.name, &t.sha256, &t.scopes, t.account_prefix.clone())
            .ok_or_else(|| StartError::Io(format!("token {:?} is invalid", t.name)))?;
        entries.push(e.expiring(t.expires_ms()?));
    }
    if let Some(path) = &cfg.admin_token_file {
        startup.admin_token_file = Some(path.clone());
        if mode == Mode::Check && path.symlink_metadata().is_err() {
            startup
                .would_create
                .push(format!("admin token {}", path.display()));
            return Ok(entries);
        }
        ensure_private_dir(path.parent())?;
        startup.created_admin_token = create_admin_token(path)?;
        let entry = admin_token_entry(path)?;
        entries.push(entry);
    }
    if entries.is_empty() {
        return Err(StartError::Io(
            "no tokens are configured: shardgate never starts without authentication".into(),
        ));
    }
    Ok(entries)
}

/// Create the embedded default's admin token file unless anything is at its name (a file,
/// or a symlink, even a dangling one: never replaced, never written through). Returns
/// whether it created one.
fn create_admin_token(path: &std::path::Path) -> Result<bool, StartError> {
    if path.symlink_metadata().is_ok() {
        return Ok(false);
    }
    let token = crate::domain::auth::generate_token();
    let line = Zeroizing::new(format!("{}\n", token.expose_secret()));
    match crate::domain::files::create_private(path, line.as_bytes()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(StartError::Io(format!(
            "cannot write {}: {e}",
            path.display()
        ))),
    }
}

/// The admin token file's entry (every scope). Refused: a file others may read
/// ([`crate::domain::files::read_secret`]) and an empty one, which would make the SHA-256 of the
/// empty string an admin token.
fn admin_token_entry(path: &std::path::Path) -> Result<TokenEntry, StartError> {
    let shown = || format!("admin token file {}", path.display());
    let text = crate::domain::files::read_secret_text(path).map_err(|e| match e {
        crate::domain::files::SecretFileError::Io(e) => {
            StartError::Io(format!("{}: cannot read: {e}", shown()))
        }
        refused => StartError::Io(format!("{}: {refused}", shown())),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(StartError::Io(format!(
            "{} is empty: put a token in it (or delete it and a new one is generated)",
            shown()
        )));
    }
    let all = vec!["*".to_string()];
    TokenEntry::new("admin", &hash_token(token), &all, None)
        .ok_or_else(|| StartError::Io("admin token entry".into()))
}

/// What the first half of start-up opened ([`open_parts`]). In [`Mode::Check`] the audit key
/// and the store are `None` when `serve` would create them.
struct Opened {
    guarded_backends: BTreeMap<String, Arc<dyn KeyBackend>>,
    breakers: BTreeMap<String, Arc<crate::domain::breaker::Guarded>>,
    from_config: Vec<TokenEntry>,
    key: Option<Arc<AuditKey>>,
    sink: Arc<dyn crate::domain::audit::archive::ArchiveSink>,
    store: Option<Arc<dyn Store>>,
}

/// Every check `serve` makes before it serves, in its order, shared by `serve`
/// ([`Mode::Start`]) and `config check` ([`Mode::Check`]): the policy against the backend
/// names, the backends (opened: key files, HSM login, KMS key), the tokens, the audit key,
/// the archive sink, the store (connected) and its schema (migrated, or in `Check` mode,
/// read: a schema behind this build is noted when `serve` would migrate it, refused when
/// `[store] migrate = false`).
async fn open_parts(cfg: &Config, mode: Mode, startup: &mut Startup) -> Result<Opened, StartError> {
    if cfg.admin_token_file.is_some() || cfg.store.url.is_none() {
        if mode == Mode::Start {
            ensure_private_dir(Some(&cfg.data_dir))?;
        } else if !cfg.data_dir.exists() {
            startup
                .would_create
                .push(format!("data directory {}", cfg.data_dir.display()));
        }
    }
    // Rules are checked against the configured backend names before any backend is
    // opened: a typo in a rule fails fast, before an HSM login or a KMS call.
    // (These rules seed an empty database; a database's own version is checked once read.)
    let policy: Policy = cfg.policy()?;
    for w in policy.warnings() {
        tracing::warn!("policy: {w}");
    }
    let mut guarded_backends = BTreeMap::new();
    let mut breakers = BTreeMap::new();
    for (name, b) in open_backends_in(cfg, mode, startup).await? {
        let guarded = crate::domain::breaker::Guarded::new(b, cfg.breaker.clone());
        guarded_backends.insert(name.clone(), guarded.clone() as Arc<dyn KeyBackend>);
        breakers.insert(name, guarded);
    }
    let from_config = config_tokens_in(cfg, mode, startup)?;
    let key = audit_key_in(cfg, mode, startup)?.map(Arc::new);
    let sink = archive_sink(cfg).await?;
    let store = match mode {
        Mode::Start => {
            let store = open_store(cfg, cfg.store.max_connections).await?;
            prepare_schema(cfg, store.as_ref()).await?;
            Some(store)
        }
        Mode::Check => check_store(cfg, startup).await?,
    };
    Ok(Opened {
        guarded_backends,
        breakers,
        from_config,
        key,
        sink,
        store,
    })
}

/// [`Mode::Check`]'s store: a missing SQLite file is noted (connecting would create it);
/// otherwise one connection, and the schema read ([`Store::check_schema`]), never migrated.
async fn check_store(
    cfg: &Config,
    startup: &mut Startup,
) -> Result<Option<Arc<dyn Store>>, StartError> {
    let url = cfg.store_url();
    if let Some(path) = crate::app::config::sqlite_file(&url) {
        if !path.exists() {
            startup
                .would_create
                .push(format!("SQLite database {}", path.display()));
            return Ok(None);
        }
    }
    let store = open_store(cfg, 1).await?;
    match store.check_schema().await {
        Ok(check) => {
            if !check.newer_migrations.is_empty() {
                tracing::warn!(
                    versions = ?check.newer_migrations,
                    "the database has migrations this build does not know (migrated by a newer shardgate)"
                );
            }
        }
        // With `migrate = true`, a schema that is missing or behind is what `serve`
        // migrates at start (the store's own texts say which case this is); anything else
        // (a dirty or altered migration) stops `serve` as it stops this check.
        Err(e)
            if cfg.store.migrate
                && (e.to_string().contains("no shardgate schema")
                    || e.to_string().contains("schema is behind")) =>
        {
            startup
                .would_create
                .push(format!("schema migrations ({} store)", store.kind()));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Some(store))
}

/// The policy version to serve: the database's highest, or the config file's rules committed
/// as version 1 of an empty database. Config rules that differ from a stored version are
/// logged, never applied: `shardgate policy apply` changes the cluster's policy.
async fn serve_policy(
    cfg: &Config,
    store: Arc<dyn Store>,
) -> Result<Arc<crate::domain::policy::ServedPolicy>, StartError> {
    use crate::domain::policy::{load_or_seed, ServedPolicy};
    let backends = cfg.backend_names();
    let loaded = load_or_seed(store.as_ref(), &cfg.policy_document(), &backends).await?;
    let version = loaded.served.version;
    if loaded.seeded {
        tracing::info!(
            version,
            "policy: the config file's rules seeded the database"
        );
    } else if !loaded.config_differs.is_empty() {
        let changes: Vec<String> = loaded
            .config_differs
            .iter()
            .take(20)
            .map(ToString::to_string)
            .collect();
        tracing::warn!(
            version,
            differences = loaded.config_differs.len(),
            first = %changes.join("; "),
            "policy: the config file's [tiers]/[policy] differ from the database's version, which is \
             served; the file only seeds an empty database (change the policy with `shardgate policy apply`)"
        );
    }
    for w in loaded.served.policy.warnings() {
        tracing::warn!(version, "policy: {w}");
    }
    Ok(Arc::new(ServedPolicy::new(loaded.served, backends, store)))
}

/// `config check`: everything `serve` checks before it serves ([`open_parts`] in
/// [`Mode::Check`]), without binding, creating, migrating or writing anything.
pub async fn check(cfg: &Config) -> Result<Startup, StartError> {
    let mut startup = Startup::default();
    open_parts(cfg, Mode::Check, &mut startup).await?;
    Ok(startup)
}

impl AppState {
    /// Build everything: connect to the store and migrate it (or, with `[store] migrate =
    /// false`, check its schema and privileges: [`prepare_schema`]), open backends, load
    /// tokens and the audit key, and start this process's audit chain.
    pub async fn build(cfg: &Config) -> Result<(Self, Startup), StartError> {
        let mut startup = Startup::default();
        crate::domain::metrics::handle();
        crate::domain::metrics::register_backends(cfg.backends.keys());
        let Opened {
            guarded_backends,
            breakers,
            from_config,
            key,
            sink,
            store,
        } = open_parts(cfg, Mode::Start, &mut startup).await?;
        let (Some(key), Some(store)) = (key, store) else {
            return Err(StartError::Io(
                "start-up opened no audit key or store".into(),
            ));
        };
        let archive = crate::service::state::ArchiveRef {
            sink,
            prefix: cfg.audit.archive.prefix.clone(),
            key: key.clone(),
            retention_ms: i64::from(cfg.audit.archive.retention_days).saturating_mul(86_400_000),
        };
        let auth = Arc::new(
            crate::domain::tokens::Tokens::load(from_config, store.clone(), key.clone()).await?,
        );
        let audit = start_auditor(cfg, store.clone(), key).await?;
        let policy = serve_policy(cfg, store.clone()).await?;
        let overrides = Arc::new(
            crate::domain::overrides::Overrides::start(store.clone(), breakers.clone()).await?,
        );
        // Every use of a backend goes through the key lifecycle (outside its breaker: a
        // refused key version is not a backend fault).
        let keys = crate::domain::keys::KeyLifecycle::start(
            store.clone(),
            guarded_backends.clone(),
            cfg.keys.clone(),
        )
        .await?;
        let backends: BTreeMap<String, Arc<dyn KeyBackend>> = guarded_backends
            .into_iter()
            .map(|(name, b)| {
                let b: Arc<dyn KeyBackend> =
                    Arc::new(crate::domain::keys::Lifecycled::new(b, keys.clone()));
                (name, b)
            })
            .collect();
        let write_groups = (cfg.store.group_writes && store.groups_writes()).then(|| {
            crate::service::write_group::WriteGroups::start(
                store.clone(),
                audit.clone(),
                WRITE_GROUP_MAX,
                WRITE_GROUP_WORKERS,
            )
        });
        audit.anchor_to(archive.sink.clone(), archive.prefix.clone());
        let classes = crate::domain::priority::Classes::new(store.clone(), policy.clone());
        let services = Services::new(Parts {
            write_groups,
            store,
            backends,
            keys,
            breakers,
            overrides,
            policy,
            classes,
            auth,
            audit: audit.clone(),
            migration: cfg.migration.clone(),
            straggler_window_ms: cfg
                .policy
                .refresh_ms
                .saturating_add(cfg.timeouts.request_ms)
                .saturating_add(1000),
            idempotency: cfg.idempotency.clone(),
            retention: cfg.retention.clone(),
            approvals: cfg.approvals.clone(),
            migrations: std::sync::OnceLock::new(),
            archive,
        });
        let state = AppState::new(HttpParts {
            services,
            limits: cfg.limits.clone(),
            rate_limiter: crate::http::ratelimit::IdentityLimiter::from_limits(&cfg.limits),
            refusals: crate::http::refusals::RefusalLimiter::start(&cfg.limits, audit),
            timeouts: cfg.timeouts.clone(),
        });
        Ok((state, startup))
    }
}
