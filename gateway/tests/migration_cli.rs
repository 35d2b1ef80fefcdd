//! The `shardgate migrate` CLI as a child process, on both stores: `start` prints the job and
//! exits 0 (no worker runs it here: `migration.workers = false`), `status` prints the counts,
//! `pause` / `resume` / `cancel` change the state (and refuse a transition that is not
//! allowed, naming the current state), `start --from-backend --key-version-below --run`
//! works a KEK rotation to `completed` in the CLI process, `status --watch` on a settled job
//! returns without waiting for a change, and bad input exits non-zero with a clear message
//! and writes nothing.
//!
//! Shards are loaded and read back through an in-process gateway on the same store and
//! config. Every CLI output is kept and checked for tokens, shard bytes and key material
//! (which are also planted for the test script's log scan).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::cli::{describe, run_to_end, shardgate_command, CliRun};
use common::db::Db;
use common::{StoreKind, Tokens};
use rand::RngCore;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tower::ServiceExt;

/// How long a one-shot CLI command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

impl CliRun {
    /// The `job <id> <state>: ...` line's id and state.
    fn job_line(&self) -> (String, String) {
        let line = self
            .stdout
            .lines()
            .find(|l| l.starts_with("job "))
            .unwrap_or_else(|| panic!("no `job ...` line in:\n{}", self.stdout));
        let mut parts = line.split_whitespace().skip(1);
        let id = parts.next().unwrap().to_string();
        let state = parts.next().unwrap().trim_end_matches(':').to_string();
        (id, state)
    }
}

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    app: axum::Router,
    /// The in-process gateway's state (its migration workers).
    state: shardgate::AppState,
    tokens: Tokens,
    db: Db,
    logs: PathBuf,
    /// Every CLI output so far, for the secret check.
    outputs: Mutex<Vec<String>>,
    /// Every shard written (raw and base64), for the secret check.
    secrets: Mutex<Vec<String>>,
    runs: Mutex<u32>,
}

/// A store, a config (one `local` backend, tiers `retail` and `institutional`) with
/// `migration.workers = false` written for the CLI, and an in-process gateway on both.
async fn setup(kind: StoreKind, test: &str) -> Option<Env> {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.migration.workers = false;
    cfg.migration.poll_interval_ms = 200;
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    // A no-op here (workers = false): no process runs the jobs the CLI starts.
    state.start_migration_workers();
    let env = Env {
        config,
        app: shardgate::router(state.clone()),
        state,
        tokens,
        db: Db::connect(&url).await,
        logs: common::log_dir(&format!("migration_cli-{test}-{kind:?}")),
        outputs: Mutex::new(Vec::new()),
        secrets: Mutex::new(Vec::new()),
        runs: Mutex::new(0),
        dir,
    };
    env.plant_keys();
    Some(env)
}

impl Env {
    /// Run `shardgate <args> --config F` to completion, with no `SHARDGATE_*` variable
    /// inherited; outputs go to the log dir and are kept for the secret check.
    fn cli(&self, args: &[&str]) -> CliRun {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", self.config.to_str().unwrap()]);
        self.cli_raw(&all)
    }

    fn cli_raw(&self, args: &[&str]) -> CliRun {
        // The child runs while this worker thread waits: let tokio move its other tasks.
        tokio::task::block_in_place(|| self.cli_blocking(args))
    }

    fn cli_blocking(&self, args: &[&str]) -> CliRun {
        let run = run_to_end(shardgate_command(args), CLI_TIMEOUT, &describe(args));
        let n = {
            let mut runs = self.runs.lock().unwrap();
            *runs += 1;
            *runs
        };
        let name = format!(
            "{n:02}-{}",
            args.iter().take(2).copied().collect::<Vec<_>>().join("-")
        );
        std::fs::write(self.logs.join(format!("{name}.stdout.log")), &run.stdout).unwrap();
        std::fs::write(self.logs.join(format!("{name}.stderr.log")), &run.stderr).unwrap();
        let mut outputs = self.outputs.lock().unwrap();
        outputs.push(run.stdout.clone());
        outputs.push(run.stderr.clone());
        run
    }

    /// A failing CLI run: non-zero exit, nothing on stdout, and stderr naming `what`.
    fn refused(&self, args: &[&str], what: &str) -> CliRun {
        let r = self.cli(args);
        assert!(
            !r.ok(),
            "`{}` must fail; stdout:\n{}\nstderr:\n{}",
            args.join(" "),
            r.stdout,
            r.stderr
        );
        assert!(
            r.stderr.contains(what),
            "`{}`: stderr does not say {what:?}:\n{}",
            args.join(" "),
            r.stderr
        );
        assert!(
            !r.stdout.contains("job "),
            "`{}` printed a job:\n{}",
            args.join(" "),
            r.stdout
        );
        r
    }

    fn plant_keys(&self) {
        let audit_key = self.dir.path().join("audit.key");
        if let Ok(t) = std::fs::read_to_string(audit_key) {
            self.keep_secret(t.trim().to_string());
        }
        let keyring = self.dir.path().join("local.keyring");
        if let Ok(text) = std::fs::read_to_string(keyring) {
            let v: Value = serde_json::from_str(&text).unwrap();
            for ver in v["versions"].as_array().unwrap() {
                if let Some(k) = ver["key"].as_str() {
                    self.keep_secret(k.to_string());
                }
            }
        }
    }

    fn keep_secret(&self, s: String) {
        common::plant(&s);
        self.secrets.lock().unwrap().push(s);
    }

    /// No CLI output so far holds a token, a shard (raw or base64) or key material.
    fn assert_no_secret_in_outputs(&self) {
        self.plant_keys();
        let outputs = self.outputs.lock().unwrap();
        let secrets = self.secrets.lock().unwrap();
        let tokens = [
            &self.tokens.admin,
            &self.tokens.reader,
            &self.tokens.prefixed,
        ];
        assert!(!outputs.is_empty());
        for out in outputs.iter() {
            for t in tokens {
                assert!(!out.contains(t.as_str()), "a token in CLI output:\n{out}");
            }
            for s in secrets.iter() {
                assert!(!out.contains(s.as_str()), "a secret in CLI output:\n{out}");
            }
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.tokens.admin),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn account(&self, account: &str) {
        let (s, v) = self
            .call(
                "PUT",
                &format!("/v1/accounts/{account}"),
                Some(json!({ "tier": "retail" })),
            )
            .await;
        assert!(s.is_success(), "{v}");
        assert_eq!(v["backend"], "local", "{v}");
    }

    /// `n` shards with `versions` versions each, random secret bytes; (shard, version, bytes).
    async fn load(&self, account: &str, n: usize, versions: u32) -> Vec<(String, i64, Vec<u8>)> {
        let mut out = Vec::new();
        for i in 0..n {
            let shard = format!("s{i:02}");
            for v in 1..=versions {
                let mut noise = [0u8; 12];
                rand::thread_rng().fill_bytes(&mut noise);
                let data = format!("cli-shard-{account}-{shard}-v{v}-{}", hex(&noise)).into_bytes();
                let b64 = B64.encode(&data);
                self.keep_secret(String::from_utf8(data.clone()).unwrap());
                self.keep_secret(b64.clone());
                let (s, body) = self
                    .call(
                        "PUT",
                        &format!("/v1/accounts/{account}/shards/{shard}"),
                        Some(json!({ "shard": b64 })),
                    )
                    .await;
                assert_eq!(s, StatusCode::CREATED, "{body}");
                assert_eq!(body["version"], i64::from(v));
                out.push((shard.clone(), i64::from(v), data));
            }
        }
        out
    }

    async fn assert_reads_back(&self, account: &str, shards: &[(String, i64, Vec<u8>)]) {
        for (shard, version, data) in shards {
            let (s, v) = self
                .call(
                    "GET",
                    &format!("/v1/accounts/{account}/shards/{shard}?version={version}"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{account}/{shard} v{version}: {v}");
            assert_eq!(&B64.decode(v["shard"].as_str().unwrap()).unwrap(), data);
        }
    }

    async fn job_state(&self, id: &str) -> String {
        let v = self
            .db
            .all_bytes(&format!(
                "SELECT state FROM migration_jobs WHERE id = '{id}'"
            ))
            .await;
        assert_eq!(v.len(), 1, "job {id} not found");
        String::from_utf8(v[0].clone()).unwrap()
    }

    async fn count(&self, sql: &str) -> i64 {
        self.db.count(sql).await
    }

    /// Nonces and ciphertexts of every version of `account`, in order.
    async fn sealed(&self, account: &str) -> Vec<Vec<u8>> {
        self.db
            .all_bytes(&format!(
                "SELECT nonce, ciphertext FROM shard_versions WHERE account = '{account}' \
                 ORDER BY shard, version"
            ))
            .await
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `start --account` prints the job id and `running` and exits 0; nobody works on it
/// (`workers = false`); `status` prints the counts; pause / resume / cancel move it through
/// its states, each audited once, and refused transitions exit non-zero naming the state.
async fn start_status_pause_resume_cancel(env: Env) {
    env.account("acct-cli").await;
    let shards = env.load("acct-cli", 5, 2).await;

    let r = env.cli(&["migrate", "start", "--account", "acct-cli"]);
    assert!(r.ok(), "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let (job, state) = r.job_line();
    assert!(uuid::Uuid::parse_str(&job).is_ok(), "job id {job:?}");
    assert_eq!(state, "running", "{}", r.stdout);
    assert!(
        r.stdout
            .contains("0 done, 0 failed, 0 skipped, 10 remaining of 10"),
        "{}",
        r.stdout
    );
    assert_eq!(env.job_state(&job).await, "running");

    // Nothing can run it: the `start` process has exited (with nothing done), and the
    // in-process gateway has no migration workers (`workers = false`).
    assert!(
        env.state.migrations.get().is_none(),
        "migration workers started with workers = false"
    );
    let r = env.cli(&["migrate", "status", &job]);
    assert!(r.ok(), "{}", r.stderr);
    assert_eq!(r.job_line(), (job.clone(), "running".to_string()));
    assert!(
        r.stdout
            .contains("0 done, 0 failed, 0 skipped, 10 remaining of 10"),
        "{}",
        r.stdout
    );
    // The CLI and the API agree.
    let (s, v) = env
        .call("GET", &format!("/v1/admin/migrations/{job}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["state"].as_str(),
            v["remaining"].as_i64(),
            v["total"].as_i64()
        ),
        (Some("running"), Some(10), Some(10)),
        "{v}"
    );

    let r = env.cli(&["migrate", "pause", &job]);
    assert!(r.ok(), "{}", r.stderr);
    assert_eq!(r.job_line(), (job.clone(), "paused".to_string()));
    assert_eq!(env.job_state(&job).await, "paused");

    let r = env.refused(&["migrate", "pause", &job], "the job is paused");
    assert_ne!(r.status.code(), Some(0));
    assert_eq!(env.job_state(&job).await, "paused");

    let r = env.cli(&["migrate", "resume", &job]);
    assert!(r.ok(), "{}", r.stderr);
    assert_eq!(r.job_line(), (job.clone(), "running".to_string()));
    assert_eq!(env.job_state(&job).await, "running");

    let r = env.cli(&["migrate", "cancel", &job]);
    assert!(r.ok(), "{}", r.stderr);
    assert_eq!(r.job_line(), (job.clone(), "cancelled".to_string()));
    assert_eq!(env.job_state(&job).await, "cancelled");

    env.refused(&["migrate", "resume", &job], "the job is cancelled");
    env.refused(&["migrate", "cancel", &job], "the job is cancelled");
    env.refused(&["migrate", "pause", &job], "the job is cancelled");
    assert_eq!(env.job_state(&job).await, "cancelled");

    // A cancelled job is settled: --watch answers without waiting for a change (one that
    // waited would never exit; `cli` fails past CLI_TIMEOUT).
    let r = env.cli(&["migrate", "status", &job, "--watch"]);
    assert!(r.ok(), "{}", r.stderr);
    assert_eq!(r.job_line(), (job.clone(), "cancelled".to_string()));
    assert!(r.stdout.contains("10 remaining of 10"), "{}", r.stdout);

    // Exactly the transitions that happened are audited, once each.
    for action in [
        "migration.start",
        "migration.paused",
        "migration.running",
        "migration.cancelled",
    ] {
        let n = env
            .count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE action = '{action}'"
            ))
            .await;
        assert_eq!(n, 1, "{action}");
    }
    // Nothing moved; everything reads back.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM audit_events WHERE action = 'migration.rewrap'")
            .await,
        0
    );
    env.assert_reads_back("acct-cli", &shards).await;
    env.assert_no_secret_in_outputs();
}

/// A KEK rotation through the CLI: `keys rotate` + `keys promote`, then `migrate start
/// --from-backend local --key-version-below 2 --run` works the job to `completed` in the CLI
/// process and exits 0 with every version re-wrapped (key version 2, ciphertext untouched);
/// `status --watch` then answers without waiting; the audit chains verify.
async fn kek_rotation_runs_to_completed_in_the_cli(env: Env) {
    env.account("acct-k1").await;
    env.account("acct-k2").await;
    let one = env.load("acct-k1", 4, 2).await;
    let two = env.load("acct-k2", 3, 1).await;
    let sealed = (env.sealed("acct-k1").await, env.sealed("acct-k2").await);

    let r = env.cli(&["keys", "rotate", "--backend", "local"]);
    assert!(r.ok(), "{}", r.stderr);
    let r = env.cli(&["keys", "promote", "--backend", "local", "--version", "2"]);
    assert!(r.ok(), "{}", r.stderr);
    env.plant_keys();

    let r = env.cli(&[
        "migrate",
        "start",
        "--from-backend",
        "local",
        "--key-version-below",
        "2",
        "--run",
    ]);
    assert!(r.ok(), "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    // `start` prints the new job, then the settled one.
    let lines: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("job ")).collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert!(lines[0].contains(" running: "), "{}", r.stdout);
    assert!(
        lines[1].contains(" completed: 11 done, 0 failed, 0 skipped, 0 remaining of 11"),
        "{}",
        r.stdout
    );
    // Not on a terminal, the progress is a log line with a rate and an ETA, and the job's
    // times are RFC 3339.
    assert!(
        r.stderr
            .lines()
            .any(|l| l.starts_with("migrate: job ") && l.contains("/s, ETA ")),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("  created 20") && l.contains("Z by ")),
        "{}",
        r.stdout
    );
    let job = lines[0].split_whitespace().nth(1).unwrap().to_string();
    assert!(lines[1].contains(&job));

    // Every row moved, in the database.
    assert_eq!(env.job_state(&job).await, "completed");
    assert_eq!(
        env.count(&format!(
            "SELECT done FROM migration_jobs WHERE id = '{job}'"
        ))
        .await,
        11
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM shard_versions").await, 11);
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM shard_versions WHERE backend = 'local' AND key_version = 2"
        )
        .await,
        11
    );
    assert_eq!(
        env.count(&format!(
            "SELECT COUNT(*) FROM migration_items WHERE job_id = '{job}' AND state = 'done'"
        ))
        .await,
        11
    );
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'migration.rewrap' AND outcome = 'ok'"
        )
        .await,
        11
    );
    assert_eq!(
        (env.sealed("acct-k1").await, env.sealed("acct-k2").await),
        sealed,
        "only the wrapped data keys change"
    );
    // The in-process gateway (loaded before the rotation) reads every version back.
    env.assert_reads_back("acct-k1", &one).await;
    env.assert_reads_back("acct-k2", &two).await;

    // Settled: --watch answers with the final counts without waiting for a change (one
    // that waited would never exit; `cli` fails past CLI_TIMEOUT).
    let r = env.cli(&["migrate", "status", &job, "--watch"]);
    assert!(r.ok(), "{}", r.stderr);
    assert_eq!(r.job_line(), (job.clone(), "completed".to_string()));
    assert!(
        r.stdout
            .contains("11 done, 0 failed, 0 skipped, 0 remaining of 11"),
        "{}",
        r.stdout
    );

    // The same selector again finds nothing below version 2: an empty job, completed.
    let r = env.cli(&[
        "migrate",
        "start",
        "--from-backend",
        "local",
        "--key-version-below",
        "2",
        "--run",
    ]);
    assert!(r.ok(), "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains(" completed: 0 done, 0 failed, 0 skipped, 0 remaining of 0"),
        "{}",
        r.stdout
    );

    // A settled job cannot be paused.
    env.refused(&["migrate", "pause", &job], "the job is completed");

    let r = env.cli(&["audit", "verify"]);
    assert!(r.ok(), "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    env.assert_no_secret_in_outputs();
}

/// Bad input exits non-zero with a clear message, and writes no job, no item and no
/// migration audit event.
async fn bad_input_is_refused_and_writes_nothing(env: Env) {
    env.account("acct-bad").await;
    let shards = env.load("acct-bad", 2, 1).await;
    let before_audit = env
        .count("SELECT COUNT(*) FROM audit_events WHERE action LIKE 'migration.%'")
        .await;
    assert_eq!(before_audit, 0);

    // Argument errors (clap): exit 2 with a usage error.
    for (args, what) in [
        (
            vec![
                "migrate",
                "start",
                "--account",
                "acct-bad",
                "--from-backend",
                "local",
            ],
            "cannot be used with",
        ),
        (vec!["migrate", "start"], "required"),
        (
            vec![
                "migrate",
                "start",
                "--account",
                "acct-bad",
                "--key-version-below",
                "2",
            ],
            "cannot be used with",
        ),
        (
            vec![
                "migrate",
                "start",
                "--from-backend",
                "local",
                "--key-version-below",
                "x",
            ],
            "invalid value",
        ),
    ] {
        let r = env.refused(&args, what);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {}", r.stderr);
    }

    // Checked against the configuration and the store.
    let random_job = uuid::Uuid::new_v4().to_string();
    for (args, what) in [
        (
            vec!["migrate", "start", "--from-backend", "nope"],
            "from_backend names no configured backend",
        ),
        (
            vec!["migrate", "start", "--account", "acct-missing"],
            "the account does not exist",
        ),
        // Ids are exact bytes: another case is another account.
        (
            vec!["migrate", "start", "--account", "ACCT-BAD"],
            "the account does not exist",
        ),
        (vec!["migrate", "start", "--account", "bad/id"], "account"),
        (
            vec![
                "migrate",
                "start",
                "--from-backend",
                "local",
                "--key-version-below",
                "0",
            ],
            "key_version_below must be 1 or more",
        ),
        (vec!["migrate", "status", "not-a-job"], "invalid job id"),
        (
            vec!["migrate", "status", "not-a-job", "--watch"],
            "invalid job id",
        ),
        (
            vec!["migrate", "pause", "../../etc/passwd"],
            "invalid job id",
        ),
        (vec!["migrate", "resume", "not a job"], "invalid job id"),
        (vec!["migrate", "cancel", ""], "invalid job id"),
        (vec!["migrate", "run", "not-a-job"], "invalid job id"),
        (
            vec!["migrate", "status", &random_job],
            "no such migration job",
        ),
        (
            vec!["migrate", "pause", &random_job],
            "no such migration job",
        ),
        (vec!["migrate", "run", &random_job], "no such migration job"),
    ] {
        let r = env.refused(&args, what);
        assert_eq!(r.status.code(), Some(1), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("shardgate: ") || r.stderr.contains("\nshardgate: "),
            "{args:?}: {}",
            r.stderr
        );
    }

    // No worker claims to start on a job that does not exist.
    let r = env.refused(&["migrate", "run", &random_job], "no such migration job");
    assert!(!r.stderr.contains("migrate: worker"), "{}", r.stderr);

    // A config that does not exist is refused before anything is opened.
    let missing = env.dir.path().join("missing.toml");
    let r = env.cli_raw(&[
        "migrate",
        "start",
        "--account",
        "acct-bad",
        "--config",
        missing.to_str().unwrap(),
    ]);
    assert!(!r.ok(), "{}", r.stdout);
    assert!(r.stderr.contains("missing.toml"), "{}", r.stderr);

    assert_eq!(env.count("SELECT COUNT(*) FROM migration_jobs").await, 0);
    assert_eq!(env.count("SELECT COUNT(*) FROM migration_items").await, 0);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM audit_events WHERE action LIKE 'migration.%'")
            .await,
        0
    );
    env.assert_reads_back("acct-bad", &shards).await;
    env.assert_no_secret_in_outputs();
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(env) = super::setup(super::StoreKind::Sqlite, stringify!($name)).await {
                    super::$name(env).await;
                }
            }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(env) = super::setup(super::StoreKind::Postgres, stringify!($name)).await {
                    super::$name(env).await;
                }
            }
        )* }
    };
}

both_stores!(
    start_status_pause_resume_cancel,
    kek_rotation_runs_to_completed_in_the_cli,
    bad_input_is_refused_and_writes_nothing,
);
