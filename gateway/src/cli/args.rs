//! The command line's grammar (clap): every command, its arguments and their help text.

use crate::app::config::Sources;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// shardgate: store and fetch MPC wallet key shards, envelope-encrypted under keys held in a
/// local keyring, AWS KMS or an HSM.
/// `--version`: the crate version, the git commit and the build date (gateway/build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SHARDGATE_GIT_COMMIT"),
    ", built ",
    env!("SHARDGATE_BUILD_DATE"),
    ")"
);

#[derive(Parser)]
#[command(name = "shardgate", version = VERSION, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Args, Clone)]
pub(crate) struct ConfigArgs {
    /// TOML configuration file. Without one, the embedded default is used: SQLite and a
    /// local keyring in the data directory, tiers `retail` and `institutional`.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Data directory of the embedded default (database, keyring, audit key, admin token).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    pub(crate) fn sources(&self, listen: Option<SocketAddr>) -> Sources {
        Sources {
            file: self.config.clone(),
            data_dir: self.data_dir.clone(),
            listen,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the gateway (default: 127.0.0.1:8080, data in ./shardgate-data).
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Address to listen on.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Check or print the configuration without starting the gateway.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, or write one page per command into a directory.
    Man {
        /// Write `shardgate.1`, `shardgate-keys.1`, `shardgate-keys-list.1`, ... into DIR.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
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
pub(crate) enum ConfigCommand {
    /// Everything `serve` would refuse, found without starting it: the configuration, TLS
    /// files, the policy, every backend (opened: key files, HSM login, KMS key), tokens, the
    /// audit key, the store (connected; its schema read, never migrated). Binds nothing,
    /// creates nothing: lists what `serve` would create. Exits non-zero on any error.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        /// The listen address `serve` would be given.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Print the effective configuration (file or embedded default, `SHARDGATE_*`
    /// environment, defaults) as TOML, with secrets redacted: passwords in URLs, token
    /// hashes.
    Print {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum MigrateCommand {
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
pub(crate) enum PolicyCommand {
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
    /// Commit FILE's tiers, pins and rollouts as the cluster's next policy version, after
    /// showing which accounts it moves; every replica serves it within `[policy] refresh_ms`.
    /// FILE is TOML with the config file's keys (`[tiers]`, `[[policy.pins]]`,
    /// `[[policy.rollouts]]`; other keys are ignored, so a config file will do) or, named
    /// `*.json`, the `policy` object of `PUT /v1/admin/policy`.
    Apply {
        #[command(flatten)]
        config: ConfigArgs,
        /// The policy file.
        file: PathBuf,
        /// Show the change; commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Start the re-wrap jobs of the moved accounts' shard versions.
        #[arg(long)]
        migrate: bool,
        /// Confirm moves that lower accounts' protection.
        #[arg(long)]
        allow_downgrade: bool,
        /// Apply only if this is still the served version.
        #[arg(long)]
        expected_version: Option<i64>,
    },
}

#[derive(Subcommand)]
pub(crate) enum HsmCommand {
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
pub(crate) enum DbCommand {
    /// Apply pending migrations (serve also does this at start-up unless `[store] migrate =
    /// false`). Run it as the database role that owns the tables; with a PostgreSQL role
    /// layout, then apply scripts/sql/grants.sql (docs/security.md, "Database least privilege").
    Migrate {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
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
pub(crate) enum KeysCommand {
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
pub(crate) enum ArchiveCommand {
    /// Show the archive: its sink, the segments and bytes recorded, the oldest hot event,
    /// and for S3 whether objects are locked and the bucket's lifecycle rules (read back).
    Status {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Re-check every audit chain across its archived segments and hot rows, and hold each
    /// against its latest checkpoint; exits 2 naming the first broken event or segment, a
    /// chain cut short or a missing chain.
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
        /// Checkpoint files of the replicas (`audit-checkpoints` in each data directory).
        /// Default: this configuration's own file, when it exists.
        #[arg(long, value_name = "PATH", num_args = 1..)]
        checkpoints: Vec<PathBuf>,
        /// Start each chain's archived part at its last segment whose oldest event is at or
        /// before this time (RFC 3339 or unix milliseconds), trusting that segment's manifest
        /// HMAC instead of walking from the chain's first event.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
    },
    /// Archive every chain's events older than `--older-than` (default: `[audit.archive]
    /// hot_days`) to the archive sink, then delete them from the hot table: one pass.
    Archive {
        #[command(subcommand)]
        command: Option<ArchiveCommand>,
        #[command(flatten)]
        config: ConfigArgs,
        /// Keep events younger than this in the hot table (e.g. `30d`, `12h`, `0s`).
        #[arg(long, value_name = "DURATION")]
        older_than: Option<humantime::Duration>,
        /// Most events archived per second (default: `[audit.archive] rate_per_sec`; 0: as
        /// fast as it goes, for a maintenance window).
        #[arg(long, value_name = "N")]
        rate: Option<u64>,
        /// Before the pass, put the lifecycle configuration on the S3 bucket (STANDARD_IA at
        /// `ia_after_days`, GLACIER_IR at `glacier_ir_after_days`, expiry at `retention_days`).
        #[arg(long)]
        apply_lifecycle: bool,
    },
    /// Search the audit trail across the hot table and the archive: matching events as
    /// NDJSON on stdout, ordered by time, chain and seq.
    Search {
        #[command(flatten)]
        config: ConfigArgs,
        /// Events of this account.
        #[arg(long)]
        account: Option<String>,
        /// Events of this shard.
        #[arg(long)]
        shard: Option<String>,
        /// Events of this action (e.g. `shard.get`).
        #[arg(long)]
        action: Option<String>,
        /// Events with this outcome (`ok` or an error code).
        #[arg(long)]
        outcome: Option<String>,
        /// At or after this time (RFC 3339 or unix milliseconds).
        #[arg(long)]
        from: Option<String>,
        /// Before this time (RFC 3339 or unix milliseconds).
        #[arg(long)]
        to: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// For auditors: write the events of an account (and time range) to a new directory,
    /// with the archived segments that hold them and the chains' latest anchors, so that
    /// they verify offline with the audit key (FORMAT.md).
    Export {
        #[command(flatten)]
        config: ConfigArgs,
        /// The account.
        #[arg(long)]
        account: String,
        /// At or after this time (RFC 3339 or unix milliseconds).
        #[arg(long)]
        from: Option<String>,
        /// Before this time (RFC 3339 or unix milliseconds).
        #[arg(long)]
        to: Option<String>,
        /// The directory to create (it must not exist).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
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
    pub(crate) fn config_sources(&self) -> Option<Sources> {
        let args = match self {
            Command::Serve { config, listen }
            | Command::Config {
                command: ConfigCommand::Check { config, listen },
            } => return Some(config.sources(*listen)),
            Command::Completions { .. } | Command::Man { .. } => return None,
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
                    AuditCommand::Verify { config, .. }
                    | AuditCommand::Archive {
                        command: Some(ArchiveCommand::Status { config }),
                        ..
                    }
                    | AuditCommand::Archive {
                        command: None,
                        config,
                        ..
                    }
                    | AuditCommand::Search { config, .. }
                    | AuditCommand::Export { config, .. }
                    | AuditCommand::CredentialId { config, .. },
            }
            | Command::Hsm {
                command: HsmCommand::InitKey { config, .. },
            }
            | Command::Policy {
                command:
                    PolicyCommand::Explain { config, .. }
                    | PolicyCommand::Check { config }
                    | PolicyCommand::Apply { config, .. },
            }
            | Command::Backup { config, .. }
            | Command::Config {
                command: ConfigCommand::Print { config },
            }
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
