//! The `shardgate` command line: serve the gateway and run its operator tasks.

use clap::{Args, Parser, Subcommand};
use secrecy::ExposeSecret;
use shardgate::config::{BackendConfig, Config, LogFormat, Sources};
use shardgate::state::AppState;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// shardgate: store and fetch MPC wallet key shards, envelope-encrypted under keys held in a
/// local keyring, AWS KMS or an HSM.
#[derive(Parser)]
#[command(name = "shardgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML configuration file. Without one, the embedded default is used: SQLite and a
    /// local keyring in the data directory, tiers `retail` and `institutional`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory of the embedded default (database, keyring, audit key, admin token).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    fn sources(&self, listen: Option<SocketAddr>) -> Sources {
        Sources {
            file: self.config.clone(),
            data_dir: self.data_dir.clone(),
            listen,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (default: 127.0.0.1:8080, data in ./shardgate-data).
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Address to listen on.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Database tasks.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Key-encryption-key versions of a backend.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// HSM (pkcs11 backend) tasks.
    Hsm {
        #[command(subcommand)]
        command: HsmCommand,
    },
    /// The tier policy: tiers, per-account pins and percentage rollouts.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Tier-migration jobs: re-wrap shard versions onto the backend the policy picks now.
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
    /// Copy an SQLite store to a new file while gateways keep serving (a consistent
    /// snapshot). A PostgreSQL store is backed up with `pg_dump -Fc` instead. Keyring files,
    /// the audit key and KEK references are not in the copy: it lists them.
    Backup {
        #[command(flatten)]
        config: ConfigArgs,
        /// The new backup file (an existing path is refused, never overwritten).
        #[arg(long, value_name = "PATH")]
        to: PathBuf,
    },
}

#[derive(Subcommand)]
enum MigrateCommand {
    /// Start a job (running gateways pick it up; `--run` also works on it here, with a
    /// progress bar, until it is settled).
    Start {
        #[command(flatten)]
        config: ConfigArgs,
        /// Move this account's versions to where the policy places them now.
        #[arg(
            long,
            conflicts_with = "from_backend",
            required_unless_present = "from_backend"
        )]
        account: Option<String>,
        /// Move every version wrapped by this backend instance.
        #[arg(long)]
        from_backend: Option<String>,
        /// With --from-backend: also re-wrap versions whose key version is below N.
        // `requires` alone lets `--account X --key-version-below N` through (clap does not
        // require an argument that conflicts with one given), so refuse it explicitly.
        #[arg(long, requires = "from_backend", conflicts_with = "account")]
        key_version_below: Option<i64>,
        /// Work on the job in this process until it is settled.
        #[arg(long)]
        run: bool,
    },
    /// Work on a live job in this process until it is settled (progress bar).
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// Job id.
        job: String,
    },
    /// Show a job (with --watch: a progress bar until it is settled).
    Status {
        #[command(flatten)]
        config: ConfigArgs,
        /// Job id.
        job: String,
        /// Follow it until it is no longer running.
        #[arg(long)]
        watch: bool,
    },
    /// Pause a running job.
    Pause {
        #[command(flatten)]
        config: ConfigArgs,
        /// Job id.
        job: String,
    },
    /// Resume a paused job.
    Resume {
        #[command(flatten)]
        config: ConfigArgs,
        /// Job id.
        job: String,
    },
    /// Cancel a job (moved rows stay moved).
    Cancel {
        #[command(flatten)]
        config: ConfigArgs,
        /// Job id.
        job: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print every rule considered for an account, and which one picks its backend.
    Explain {
        #[command(flatten)]
        config: ConfigArgs,
        /// Account id (exact bytes).
        #[arg(long)]
        account: String,
        /// The tier to place the account in. Without it, the account's tier is read from
        /// the configured store, and an account that does not exist is an error.
        #[arg(long)]
        tier: Option<String>,
    },
    /// Validate a configuration (every key, and the policy's rules against its backends)
    /// without opening a backend or the store. Exits non-zero on any error.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum HsmCommand {
    /// Create the backend's key-encryption key in the HSM (version 1): an AES-256 token
    /// object, sensitive, never extractable, encrypt/decrypt only.
    InitKey {
        #[command(flatten)]
        config: ConfigArgs,
        /// Backend instance name (a `pkcs11` backend).
        #[arg(long)]
        backend: String,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Apply pending migrations (serve also does this at start-up unless `[store] migrate =
    /// false`). Run it as the database role that owns the tables; with a PostgreSQL role
    /// layout, then apply scripts/sql/grants.sql (README, "Database least privilege").
    Migrate {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token: prints it ONCE, and either the config lines holding only its SHA-256,
    /// or (with --save) stores that hash in the database, where every gateway picks it up
    /// within `[auth] refresh_ms` (or at once on SIGHUP).
    Create {
        /// Comma-separated scopes: accounts:read, accounts:write, accounts:delete,
        /// shards:read, shards:write, shards:delete, admin, metrics, or `*` for all.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Restrict the token to accounts whose id starts with these exact bytes.
        #[arg(long)]
        account_prefix: Option<String>,
        /// Identity name recorded in the audit log.
        #[arg(long, default_value = "token")]
        name: String,
        /// The token is refused after this long (e.g. `90d`, `12h`).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<humantime::Duration>,
        /// Store the hash in the configured database instead of printing config lines.
        #[arg(long)]
        save: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Every token (config file, admin token file, database): id, name, scopes, expiry,
    /// revocation. Never a token or its hash.
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Revoke a token by id (from `token list`), config-file tokens included: every gateway
    /// refuses it within `[auth] refresh_ms`, or at once on SIGHUP.
    Revoke {
        #[command(flatten)]
        config: ConfigArgs,
        /// Token id (16 hex digits).
        id: String,
        /// Why (recorded with the revocation; no secrets).
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new key version that every reader can unwrap with but nothing wraps with yet.
    /// Distribute the keyring file to every replica, then `keys promote`.
    Rotate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Backend instance name.
        #[arg(long)]
        backend: String,
    },
    /// Make a version the wrapping version of every replica (the previous one becomes
    /// decrypt-only): a state change in the database, audited, also written to the keyring
    /// file of a `local` backend.
    Promote {
        #[command(flatten)]
        config: ConfigArgs,
        /// Backend instance name.
        #[arg(long)]
        backend: String,
        /// The version to promote.
        #[arg(long)]
        version: u32,
    },
    /// List every key version of every backend: state, last change, shard versions wrapped
    /// under it, wraps reserved.
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Change a key version's state: active, decrypt-only or destroyed (audited). Destroying
    /// is refused while shard versions reference it, and is final; for a `local` backend it
    /// also erases the version's key bytes from the keyring file.
    State {
        #[command(flatten)]
        config: ConfigArgs,
        /// Backend instance name.
        #[arg(long)]
        backend: String,
        /// The key version.
        #[arg(long)]
        version: u32,
        /// The new state: active, decrypt-only or destroyed.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Re-check every audit chain, and hold each against its latest checkpoint; exits 2
    /// naming the first broken event, a chain cut short or a missing chain.
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
        /// Checkpoint files of the replicas (`audit-checkpoints` in each data directory).
        /// Default: this configuration's own file, when it exists.
        #[arg(long, value_name = "PATH", num_args = 1..)]
        checkpoints: Vec<PathBuf>,
    },
    /// Print the `credential` value the audit log records for a token (an HMAC of its id
    /// under this deployment's audit key), to find the events a token made. Give the token
    /// id, or pipe the token itself on stdin.
    CredentialId {
        #[command(flatten)]
        config: ConfigArgs,
        /// Token id (16 hex digits, from `token list`); without it, the token is read from
        /// stdin.
        #[arg(long)]
        token_id: Option<String>,
    },
}

impl Command {
    /// Where this command reads its configuration from, if it reads one.
    fn config_sources(&self) -> Option<Sources> {
        let args = match self {
            Command::Serve { config, listen } => return Some(config.sources(*listen)),
            Command::Token {
                command: TokenCommand::Create { save: false, .. },
            } => return None,
            Command::Token {
                command:
                    TokenCommand::Create { config, .. }
                    | TokenCommand::List { config }
                    | TokenCommand::Revoke { config, .. },
            }
            | Command::Db {
                command: DbCommand::Migrate { config },
            }
            | Command::Keys {
                command:
                    KeysCommand::Rotate { config, .. }
                    | KeysCommand::Promote { config, .. }
                    | KeysCommand::List { config }
                    | KeysCommand::State { config, .. },
            }
            | Command::Audit {
                command:
                    AuditCommand::Verify { config, .. } | AuditCommand::CredentialId { config, .. },
            }
            | Command::Hsm {
                command: HsmCommand::InitKey { config, .. },
            }
            | Command::Policy {
                command: PolicyCommand::Explain { config, .. } | PolicyCommand::Check { config },
            }
            | Command::Backup { config, .. }
            | Command::Migrate {
                command:
                    MigrateCommand::Start { config, .. }
                    | MigrateCommand::Run { config, .. }
                    | MigrateCommand::Status { config, .. }
                    | MigrateCommand::Pause { config, .. }
                    | MigrateCommand::Resume { config, .. }
                    | MigrateCommand::Cancel { config, .. },
            } => config,
        };
        Some(args.sources(None))
    }
}

/// The log format the command's configuration asks for. Read before the command runs, so
/// that its first line is already in that format; a configuration that does not load falls
/// back to the default here and is reported by the command itself. Loading it before
/// `main` hardens the process is fine: the configuration holds no secret (token hashes,
/// key and PIN file paths, PIN variable names).
fn log_format(cli: &Cli) -> LogFormat {
    cli.command
        .config_sources()
        .and_then(|s| Config::load(&s).ok())
        .map(|c| c.log.format)
        .unwrap_or_default()
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format.is_json() {
        // Event fields at the top level; the request span (with `request_id`) in `span`
        // and every enclosing span in `spans`.
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        // Colour codes only for a person at a terminal, never into a file or a collector.
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(log_format(&cli));
    // Every subcommand, before any secret is read, any file created or any thread started:
    // `keys`, `migrate`, `hsm`, `backup`, `audit` and `token` handle key material as much
    // as `serve` does, and every file any of them creates (the SQLite database and its
    // -wal/-shm files included) is born private.
    shardgate::hygiene::harden();
    shardgate::hygiene::private_files();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shardgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shardgate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, listen } => serve(config.sources(listen)).await,
        Command::Db {
            command: DbCommand::Migrate { config },
        } => {
            let cfg = Config::load(&config.sources(None))?;
            // Always migrates, whatever `[store] migrate` says: run it as the migration role.
            let store = shardgate::state::open_store(&cfg, 2).await?;
            store.migrate().await?;
            println!("migrations applied ({})", store.kind());
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command } => token(command).await,
        Command::Keys { command } => keys(command).await,
        Command::Hsm {
            command: HsmCommand::InitKey { config, backend },
        } => {
            let cfg = Config::load(&config.sources(None))?;
            let Some(BackendConfig::Pkcs11(entry)) = cfg.backends.get(&backend) else {
                anyhow::bail!("no pkcs11 backend named {backend:?} in the configuration");
            };
            let v = shardgate_backends::pkcs11::init_key(&entry.hsm)?;
            println!(
                "key-encryption key {}/v{v} of backend {backend} is in the HSM (sensitive, not extractable).",
                entry.hsm.kek_label
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    config,
                    account,
                    tier,
                },
        } => policy_explain(&config.sources(None), &account, tier).await,
        Command::Policy {
            command: PolicyCommand::Check { config },
        } => Ok(policy_check(&config)),
        Command::Migrate { command } => migrate_command(command).await,
        Command::Backup { config, to } => {
            let cfg = Config::load(&config.sources(None))?;
            let written = shardgate::backup::backup(&cfg, &to).await?;
            println!(
                "backup written: {} ({} bytes, one consistent snapshot of the database)",
                written.path.display(),
                written.bytes
            );
            println!("not in the backup; keep these with it (README, \"Backup and restore\"):");
            for line in shardgate::backup::kept_elsewhere(&cfg, config.config.as_deref()) {
                println!("  {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::CredentialId { config, token_id },
        } => {
            let cfg = Config::load(&config.sources(None))?;
            let key = shardgate::state::audit_key(&cfg)?;
            let id = match token_id {
                Some(id) => id.trim().to_ascii_lowercase(),
                None => {
                    // The token itself, from stdin, so it never sits in shell history.
                    let mut line = zeroize::Zeroizing::new(String::new());
                    std::io::stdin().read_line(&mut line)?;
                    shardgate::auth::token_id(&shardgate::auth::hash_token(line.trim()))
                }
            };
            println!("{}", shardgate::auth::credential_id(&key, &id));
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    config,
                    checkpoints,
                },
        } => audit_verify(&config, checkpoints).await,
    }
}

/// `audit verify`: every chain, held against the latest checkpoints of `files` (default:
/// this configuration's checkpoint file when it exists).
async fn audit_verify(config: &ConfigArgs, mut files: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    use shardgate::audit::VerifyError;
    let cfg = Config::load(&config.sources(None))?;
    let key = shardgate::state::audit_key(&cfg)?;
    if files.is_empty() && cfg.checkpoint_file().exists() {
        files.push(cfg.checkpoint_file());
    }
    let latest = match shardgate::checkpoints::read_latest(&files, &key) {
        Ok(l) => l,
        Err(b) => {
            println!("AUDIT BROKEN: {b}");
            return Ok(ExitCode::from(2));
        }
    };
    let store = shardgate::state::open_store(&cfg, 2).await?;
    shardgate::state::prepare_schema(&cfg, store.as_ref()).await?;
    match shardgate::audit::verify_with(store.as_ref(), &key, &latest).await {
        Ok(r) => {
            println!(
                "audit ok: {} chain(s), {} event(s) verified, {} checkpointed chain(s) from {} file(s)",
                r.chains,
                r.events,
                r.checkpoints,
                files.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Broken(b)) => {
            println!("AUDIT BROKEN: {b}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

async fn serve(sources: Sources) -> anyhow::Result<ExitCode> {
    // `main` has hardened the process already (core dumps, dumpable, umask).
    let cfg = Config::load(&sources)?;
    // Before anything is opened: a bad certificate or key stops start-up with its reason.
    let tls = cfg
        .tls
        .as_ref()
        .map(shardgate::tls::Tls::load)
        .transpose()?;
    // Bind before anything is created: a port in use must not leave a new data directory,
    // keyring, audit key and admin token behind, and its error names the address.
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let (state, startup) = AppState::build(&cfg).await?;
    let addr = listener.local_addr()?;
    if let Some(path) = &startup.admin_token_file {
        let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        println!(
            "admin token ({}) in {}",
            if startup.created_admin_token {
                "new"
            } else {
                "existing"
            },
            shown.display()
        );
    }
    // Listening before the address is announced, and from then on: a signal never finds the
    // default action, and a second signal sent right after the first is never missed.
    let mut signals = ShutdownSignals::new();
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("shardgate listening on {scheme}://{addr}");
    tracing::info!(%addr, %scheme, store = state.store.kind(), backends = ?state.backends.keys().collect::<Vec<_>>(), "serving");
    // SIGHUP re-reads the configuration and reloads its [tls] section (certificates, key,
    // client CA, [[tls.clients]]); nothing else of the configuration changes without a
    // restart. Installed with or without TLS, so a SIGHUP never kills the gateway.
    tokio::spawn(shardgate::tls::reload_on_hangup(tls.clone(), move || {
        Config::load(&sources)
            .map(|c| c.tls)
            .map_err(|e| e.to_string())
    }));
    state.start_migration_workers();
    state.start_token_refresh(&cfg.auth);
    let audit = state.audit.clone();
    let timeouts = cfg.timeouts.clone();
    let first = async move {
        signals.recv().await;
        tracing::info!("shutting down: no new connections; draining requests in flight");
        // A second signal during the drain means "now".
        tokio::spawn(async move {
            signals.recv().await;
            tracing::warn!("second shutdown signal: exiting at once");
            std::process::exit(130);
        });
    };
    shardgate::server::serve_with_tls(
        listener,
        shardgate::app(state.clone()),
        &timeouts,
        cfg.limits.max_connections,
        tls,
        first,
    )
    .await;
    // Workers stop claiming; an item in flight is either committed or left to its lease.
    state.stop_migration_workers();
    audit.checkpoint().await;
    tracing::info!("shut down");
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT (Ctrl-C), each one listener for the life of the process, so a signal
/// that arrives while nobody waits for it is kept for the next `recv`.
struct ShutdownSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = one(&mut self.term) => {},
            () = one(&mut self.int) => {},
        }
    }
}

async fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    use shardgate::token_admin;
    match command {
        TokenCommand::Create {
            scopes,
            account_prefix,
            name,
            expires_in,
            save,
            config,
        } => {
            token_admin::validate(&name, &scopes, account_prefix.as_deref())?;
            let expires_ms = expires_in
                .map(|d| {
                    i64::try_from(d.as_millis()).map(|ms| shardgate::now_ms().saturating_add(ms))
                })
                .transpose()?;
            let token = shardgate::auth::generate_token();
            let hash = shardgate::auth::hash_token(token.expose_secret());
            if save {
                let cfg = Config::load(&config.sources(None))?;
                let store = shardgate::state::open_store(&cfg, 2).await?;
                shardgate::state::prepare_schema(&cfg, store.as_ref()).await?;
                let id = token_admin::save(
                    store.as_ref(),
                    &name,
                    &hash,
                    &scopes,
                    account_prefix,
                    expires_ms,
                    shardgate::now_ms(),
                )
                .await?;
                println!("token (shown once; store it now):");
                println!("{}", token.expose_secret());
                println!();
                println!("saved as id {id}: every gateway accepts it within [auth] refresh_ms (or at once on SIGHUP)");
                return Ok(ExitCode::SUCCESS);
            }
            println!("token (shown once; store it now):");
            println!("{}", token.expose_secret());
            println!();
            println!("add to the config file:");
            println!("[[tokens]]");
            println!("name = {}", toml::Value::String(name));
            println!("sha256 = \"{hash}\"");
            let scopes: Vec<toml::Value> = scopes.into_iter().map(toml::Value::String).collect();
            println!("scopes = {}", toml::Value::Array(scopes));
            if let Some(p) = account_prefix {
                println!("account_prefix = {}", toml::Value::String(p));
            }
            if let Some(ms) = expires_ms {
                println!("expires_at = \"{}\"", format_ms(ms));
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { config } => {
            let cfg = Config::load(&config.sources(None))?;
            let store = shardgate::state::open_store(&cfg, 2).await?;
            shardgate::state::prepare_schema(&cfg, store.as_ref()).await?;
            let now = shardgate::now_ms();
            println!(
                "{:<17} {:<20} {:<11} {:<8} {:<21} SCOPES [PREFIX]",
                "ID", "NAME", "SOURCE", "STATE", "EXPIRES"
            );
            for t in token_admin::list(&cfg, store.as_ref()).await? {
                let state = if t.revoked_ms.is_some() {
                    "revoked"
                } else if t.expires_ms.is_some_and(|e| now >= e) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<17} {:<20} {:<11} {:<8} {:<21} {}{}",
                    t.id,
                    t.name,
                    t.source.as_str(),
                    state,
                    t.expires_ms
                        .map(format_ms)
                        .unwrap_or_else(|| "never".into()),
                    t.scopes.join(","),
                    t.account_prefix
                        .map(|p| format!(" [{p}]"))
                        .unwrap_or_default(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { config, id, reason } => {
            let cfg = Config::load(&config.sources(None))?;
            let store = shardgate::state::open_store(&cfg, 2).await?;
            shardgate::state::prepare_schema(&cfg, store.as_ref()).await?;
            let now = shardgate::now_ms();
            if token_admin::revoke(&cfg, store.as_ref(), &id, &reason, now).await? {
                println!(
                    "token {id} revoked: every gateway refuses it within [auth] refresh_ms ({} ms here), or at once on SIGHUP",
                    cfg.auth.refresh_ms
                );
            } else {
                println!("token {id} was already revoked");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn format_ms(ms: i64) -> String {
    let since = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + since).to_string()
}

async fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    let (config, backend, change) = match command {
        KeysCommand::Rotate { config, backend } => return keys_rotate(&config, &backend),
        KeysCommand::List { config } => return keys_list(&config).await,
        KeysCommand::Promote {
            config,
            backend,
            version,
        } => (config, backend, (version, "active".to_string())),
        KeysCommand::State {
            config,
            backend,
            version,
            to,
        } => (config, backend, (version, to)),
    };
    let (version, to) = change;
    let cfg = Config::load(&config.sources(None))?;
    if !cfg.backends.contains_key(&backend) {
        anyhow::bail!("no backend named {backend:?} in the configuration");
    }
    let (state, _) = AppState::build(&cfg).await?;
    let answer = shardgate::keys::transition(
        &state,
        &backend,
        i64::from(version),
        &to,
        &shardgate::audit::Origin::cli(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    state.audit.checkpoint().await;
    if !answer.changed {
        println!("key version {version} of backend {backend} is already {to}.");
    } else {
        println!(
            "key version {version} of backend {backend} is now {to}{} (audit event {}).",
            answer
                .demoted
                .map(|d| format!("; version {d} is decrypt-only"))
                .unwrap_or_default(),
            answer.audit_event.as_deref().unwrap_or("-")
        );
    }
    // The keyring file follows the database, so that it describes itself (FORMAT.md) and a
    // destroyed version's key bytes leave the file that is distributed to the replicas.
    if let Some(BackendConfig::Local { key_file, .. }) = cfg.backends.get(&backend) {
        // The database already holds the change: a file that cannot follow is reported, not
        // a failure of the command.
        let synced = (|| -> Result<bool, shardgate_backends::local::KeyringError> {
            let mut keyring = shardgate_backends::local::Keyring::load(key_file)?;
            let before = keyring.versions();
            match to.as_str() {
                "active" => keyring.promote(version)?,
                "decrypt-only" => keyring.demote(version)?,
                _ => keyring.destroy(version)?,
            }
            let changed = keyring.versions() != before;
            if changed {
                keyring.save(key_file)?;
            }
            Ok(changed)
        })();
        match synced {
            Ok(true) if to == "destroyed" => println!(
                "its key bytes are erased from {}: copy this file to every replica.",
                key_file.display()
            ),
            Ok(_) => {}
            Err(e) => eprintln!("warning: the keyring file was not updated: {e}"),
        }
    }
    if to == "active" {
        println!("every replica wraps new data keys with it within [keys] refresh_interval_ms.");
    }
    Ok(ExitCode::SUCCESS)
}

async fn keys_list(config: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&config.sources(None))?;
    let (state, _) = AppState::build(&cfg).await?;
    let keys = shardgate::keys::list(&state)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    println!(
        "{:<16} {:>7} {:<13} {:>14} {:>14} {:<5} changed",
        "backend", "version", "state", "shard_versions", "wraps_reserved", "here"
    );
    for k in keys {
        println!(
            "{:<16} {:>7} {:<13} {:>14} {:>14} {:<5} {} by {}",
            k.backend,
            k.version,
            k.state,
            k.shard_versions,
            k.wraps_reserved
                .map_or_else(|| "-".to_string(), |w| w.to_string()),
            if k.held_here { "yes" } else { "no" },
            k.changed_ms,
            k.changed_by
        );
    }
    let c = state.keys.config();
    println!(
        "wraps: warning at {} reserved, refused at {} (per version)",
        c.wrap_warn_at, c.wrap_limit
    );
    Ok(ExitCode::SUCCESS)
}

fn keys_rotate(config: &ConfigArgs, backend: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&config.sources(None))?;
    let key_file = match cfg.backends.get(backend) {
        Some(BackendConfig::Local { key_file, .. }) => key_file,
        Some(BackendConfig::Pkcs11(entry)) => {
            let v = shardgate_backends::pkcs11::rotate_key(&entry.hsm)?;
            println!(
                "created {}/v{v} in the HSM (decrypt-only: every replica can unwrap with it).",
                entry.hsm.kek_label
            );
            println!("make it the wrapping version:");
            println!("  shardgate keys promote --backend {backend} --version {v}");
            return Ok(ExitCode::SUCCESS);
        }
        Some(BackendConfig::AwsKms(_)) => {
            anyhow::bail!("aws-kms keys rotate inside KMS (enable automatic rotation on the key)")
        }
        None => anyhow::bail!("no backend named {backend:?} in the configuration"),
    };
    let mut keyring = shardgate_backends::local::Keyring::load(key_file)?;
    let v = keyring.rotate();
    keyring.save(key_file)?;
    println!("added key version {v} to backend {backend} (decrypt-only).");
    println!("copy {} to every replica, then run:", key_file.display());
    println!("  shardgate keys promote --backend {backend} --version {v}");
    Ok(ExitCode::SUCCESS)
}

/// `policy explain`: the rules for one account, from the config (and, without `--tier`, the
/// account's tier from the store).
async fn policy_explain(
    sources: &Sources,
    account: &str,
    tier: Option<String>,
) -> anyhow::Result<ExitCode> {
    if !shardgate_policy::is_valid_id(account) {
        anyhow::bail!("account id must match [A-Za-z0-9._:-]{{1,128}} and not be '.' or '..'");
    }
    let cfg = Config::load(sources)?;
    let policy = cfg.policy().map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    let tier = match tier {
        Some(t) => t,
        None => {
            let url = cfg.store_url();
            // Connecting to SQLite creates a missing file: a mistyped data dir must not leave
            // an empty database behind, and it certainly holds no account.
            if let Some(path) = shardgate::backup::sqlite_file(&url) {
                if !path.exists() {
                    anyhow::bail!(
                        "account {account:?} does not exist: there is no database at {} (pass --tier to explain a placement anyway)",
                        path.display()
                    );
                }
            }
            let store = shardgate::state::open_store(&cfg, 1).await?;
            match store.get_account(account).await? {
                Some(record) => record.tier,
                None => anyhow::bail!(
                    "account {account:?} does not exist in the {} store (pass --tier to explain a placement anyway)",
                    store.kind()
                ),
            }
        }
    };
    let explanation = policy
        .explain(account, &tier)
        .map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    println!("{explanation}");
    Ok(ExitCode::SUCCESS)
}

/// `policy check`: every problem on stderr and exit 1, or a one-line summary and exit 0.
fn policy_check(config: &ConfigArgs) -> ExitCode {
    let what = config.config.as_ref().map_or_else(
        || "the embedded default".to_string(),
        |f| f.display().to_string(),
    );
    let cfg = match Config::load(&config.sources(None)) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("policy check failed: {what} is not a valid configuration");
            return ExitCode::FAILURE;
        }
    };
    let backends = cfg.backend_names();
    let builder = cfg.policy_builder();
    let errors = builder.check(&backends);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: policy: {e}");
        }
        eprintln!("policy check failed: {} error(s) in {what}", errors.len());
        return ExitCode::FAILURE;
    }
    let policy = match builder.build(&backends) {
        Ok(p) => p,
        // `check` found nothing, so this does not happen; report it rather than panic.
        Err(e) => {
            eprintln!("error: policy: {e}");
            return ExitCode::FAILURE;
        }
    };
    for w in policy.warnings() {
        eprintln!("warning: policy: {w}");
    }
    println!(
        "ok: {what}: {} backend(s), {} tier(s), {} pin(s), {} rollout(s), {} warning(s)",
        backends.len(),
        policy.tiers().count(),
        policy.pin_count(),
        policy.rollout_count(),
        policy.warnings().len()
    );
    ExitCode::SUCCESS
}

/// Open everything a migration command needs (store, backends, audit chain), but no server
/// and no background workers.
async fn migrate_state(config: &ConfigArgs) -> anyhow::Result<AppState> {
    let cfg = Config::load(&config.sources(None))?;
    let (state, _) = AppState::build(&cfg).await?;
    Ok(state)
}

fn print_job(job: &shardgate_store::MigrationJob) {
    println!(
        "job {} {}: {} done, {} failed, {} skipped, {} remaining of {}{}",
        job.id,
        job.state,
        job.done,
        job.failed,
        job.skipped,
        job.remaining(),
        job.total,
        job.last_error
            .as_deref()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default()
    );
}

fn progress_bar(total: i64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(u64::try_from(total).unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn show(bar: &indicatif::ProgressBar, job: &shardgate_store::MigrationJob) {
    bar.set_length(u64::try_from(job.total).unwrap_or(0));
    bar.set_position(u64::try_from(job.total - job.remaining()).unwrap_or(0));
    bar.set_message(format!(
        "{}: {} moved, {} failed, {} skipped",
        job.state, job.done, job.failed, job.skipped
    ));
}

async fn run_job(state: &AppState, id: &str) -> anyhow::Result<ExitCode> {
    if state.store.get_migration_job(id).await?.is_none() {
        anyhow::bail!("no such migration job");
    }
    let worker_id = format!("cli-{}", uuid::Uuid::new_v4().simple());
    let worker = shardgate::jobs::migrate::Worker::new(state, &state.migration, &worker_id);
    eprintln!("migrate: worker {worker_id} started on job {id}");
    let bar = progress_bar(0);
    let stop = worker
        .run(id, |job| show(&bar, job))
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    bar.finish();
    let job = state
        .store
        .get_migration_job(id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no such migration job"))?;
    print_job(&job);
    state.audit.checkpoint().await;
    Ok(match (stop, job.state.as_str()) {
        (_, shardgate_store::job_state::COMPLETED) => ExitCode::SUCCESS,
        _ => ExitCode::from(3),
    })
}

async fn migrate_command(command: MigrateCommand) -> anyhow::Result<ExitCode> {
    use shardgate_store::job_state;
    match command {
        MigrateCommand::Start {
            config,
            account,
            from_backend,
            key_version_below,
            run,
        } => {
            let state = migrate_state(&config).await?;
            let selector = shardgate_store::MigrationSelector {
                account,
                from_backend,
                key_version_below,
            };
            let job =
                shardgate::jobs::migrate::start(&state, selector, &shardgate::audit::Origin::cli())
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            print_job(&job);
            if run {
                return run_job(&state, &job.id).await;
            }
            state.audit.checkpoint().await;
            Ok(ExitCode::SUCCESS)
        }
        MigrateCommand::Run { config, job } => {
            check_job_id(&job)?;
            let state = migrate_state(&config).await?;
            run_job(&state, &job).await
        }
        MigrateCommand::Status { config, job, watch } => {
            check_job_id(&job)?;
            let state = migrate_state(&config).await?;
            let get = || async {
                state
                    .store
                    .get_migration_job(&job)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no such migration job"))
            };
            let mut current = get().await?;
            if watch {
                let bar = progress_bar(current.total);
                while current.state == job_state::RUNNING || current.state == job_state::PAUSED {
                    show(&bar, &current);
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    current = get().await?;
                }
                show(&bar, &current);
                bar.finish();
            }
            print_job(&current);
            let failures = if current.failed > 0 {
                state.store.migration_failures(&job, 100).await?
            } else {
                Vec::new()
            };
            for f in failures {
                println!(
                    "  failed {}/{} v{}: {}",
                    f.account, f.shard, f.version, f.error
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        MigrateCommand::Pause { config, job } => change_job(&config, &job, job_state::PAUSED).await,
        MigrateCommand::Resume { config, job } => {
            change_job(&config, &job, job_state::RUNNING).await
        }
        MigrateCommand::Cancel { config, job } => {
            change_job(&config, &job, job_state::CANCELLED).await
        }
    }
}

/// Refuse a malformed job id before opening anything (as the API answers `invalid_id`), rather
/// than report "no such migration job" for what cannot be one.
fn check_job_id(job: &str) -> anyhow::Result<()> {
    if uuid::Uuid::parse_str(job).is_err() {
        anyhow::bail!("invalid job id: a job id is the UUID `migrate start` prints");
    }
    Ok(())
}

async fn change_job(config: &ConfigArgs, job: &str, to: &str) -> anyhow::Result<ExitCode> {
    check_job_id(job)?;
    let state = migrate_state(config).await?;
    let job =
        shardgate::jobs::migrate::transition(&state, job, to, &shardgate::audit::Origin::cli())
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    print_job(&job);
    state.audit.checkpoint().await;
    Ok(ExitCode::SUCCESS)
}
