//! Crash test of a tier-migration job (PostgreSQL): a child `shardgate migrate run` process is
//! SIGKILLed again and again, at chosen progress counts and at crash points compiled only
//! into test builds (feature `failpoints`: after the wrap, before the commit, after the
//! commit), and restarted each time. At the end every shard reads back identical, no row is
//! on a backend other than source or target, the job is `completed`, and `audit verify`
//! passes. The seed is printed; `SHARDGATE_TEST_CRASH_SEED` replays a run and
//! `SHARDGATE_TEST_CRASH_SHARDS` sets the size (default 10,000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::Tokens;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WINDOWS: [&str; 3] = ["after_wrap", "before_commit", "after_commit"];

/// Items of the job settled so far.
async fn settled(db: &Db, job: &str) -> i64 {
    db.count(&format!(
        "SELECT done + failed + skipped FROM migration_jobs WHERE id = '{job}'"
    ))
    .await
}

fn shard_bytes(i: usize) -> Vec<u8> {
    format!("crash-test shard {i:06}: 0123456789abcdef").into_bytes()
}

/// How one run of the worker ended.
enum Ended {
    /// Killed at a crash point.
    Failpoint(String),
    /// Killed once the job had reached its chosen progress count.
    Progress,
    /// Killed before the worker said it started (does not count).
    StartUp,
    /// Ran to the end by itself.
    Finished(bool),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_survives_repeated_sigkill_and_finishes_identical() {
    let Some(url) = common::fresh_pg_url().await else {
        return;
    };
    let seed: u64 = std::env::var("SHARDGATE_TEST_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("crash test seed: {seed} (SHARDGATE_TEST_CRASH_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = std::env::var("SHARDGATE_TEST_CRASH_SHARDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);

    let Prepared {
        _dir,
        config,
        app,
        token,
        job,
        db,
    } = prepare(&url, n, 700, 100_000).await;

    let logs = common::log_dir("migration_crash");
    let mut landed: BTreeMap<String, u32> = BTreeMap::new();
    let mut counted = 0u32;
    let mut run_no = 0u32;
    let deadline = Instant::now() + Duration::from_secs(600);
    while counted < 24 {
        assert!(
            Instant::now() < deadline,
            "crash loop took too long: {landed:?}"
        );
        run_no += 1;
        let before = settled(&db, &job).await;
        if before >= i64::try_from(n).unwrap() {
            break;
        }
        // Alternate: a crash point with a random skip count, or a progress count to reach.
        let by_failpoint = run_no % 2 == 1;
        let mut cmd = Command::new(common::shardgate_bin());
        cmd.args(["migrate", "run", &job, "--config", config.to_str().unwrap()])
            .env_remove("SHARDGATE_TEST_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Crash points in turn (each window gets kills); where in the stream is random.
        let point = WINDOWS[usize::try_from(run_no / 2).unwrap() % WINDOWS.len()];
        if by_failpoint {
            cmd.env(
                "SHARDGATE_TEST_FAILPOINT",
                format!("{point}:{}", rng.gen_range(1..40)),
            );
        }
        let target = before + rng.gen_range(5..60);
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let log = logs.join(format!("run-{run_no}.stderr"));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(log).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                writeln!(f, "{line}").unwrap();
                let _ = tx.send(line);
            }
        });
        let mut started = false;
        let run_start = Instant::now();
        let ended = loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
                if line.starts_with("migrate: worker") {
                    started = true;
                }
                if let Some(p) = line.strip_prefix("FAILPOINT ") {
                    break Ended::Failpoint(p.to_string());
                }
                continue;
            }
            if let Some(status) = child.try_wait().unwrap() {
                break Ended::Finished(status.success());
            }
            if !by_failpoint && started && settled(&db, &job).await >= target {
                break Ended::Progress;
            }
            if run_start.elapsed() > Duration::from_secs(60) {
                assert!(
                    !started,
                    "run {run_no} started but made no progress in 60 s; see {}",
                    logs.display()
                );
                // Never got going: killed during start-up, which does not count.
                break Ended::StartUp;
            }
        };
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        match ended {
            Ended::Failpoint(p) => {
                *landed.entry(p).or_default() += 1;
                counted += 1;
            }
            Ended::Progress => {
                *landed.entry("progress".into()).or_default() += 1;
                counted += 1;
            }
            Ended::StartUp => {
                *landed.entry("start-up (not counted)".into()).or_default() += 1;
            }
            Ended::Finished(ok) => {
                assert!(ok, "a worker run failed; see {}", logs.display());
                break;
            }
        }
    }
    println!("kills by window: {landed:?}");
    assert!(
        counted >= 20,
        "only {counted} kills landed: {landed:?} (seed {seed}; raise SHARDGATE_TEST_CRASH_SHARDS)"
    );
    for w in WINDOWS {
        assert!(
            landed.get(w).copied().unwrap_or(0) >= 1,
            "no kill landed {w}: {landed:?} (seed {seed})"
        );
    }
    assert!(
        landed.get("progress").copied().unwrap_or(0) >= 1,
        "{landed:?}"
    );

    // Finish the job with an undisturbed run.
    let out = Command::new(common::shardgate_bin())
        .args(["migrate", "run", &job, "--config", config.to_str().unwrap()])
        .env_remove("SHARDGATE_TEST_DATABASE_URL")
        .output()
        .unwrap();
    common::keep_output(&logs, "final-run", &out);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (s, v) = common::call(
        &app,
        &token,
        "GET",
        &format!("/v1/admin/migrations/{job}"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["total"].as_i64(), Some(i64::try_from(n).unwrap()));
    // Never a row on a third backend; every row on the target now.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM shard_versions WHERE backend NOT IN ('local', 'vault')")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM shard_versions WHERE backend = 'vault'")
            .await,
        i64::try_from(n).unwrap()
    );
    // Each row was moved exactly once (a committed move is never repeated).
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events WHERE action = 'migration.rewrap' AND outcome = 'ok'").await
            - db.count("SELECT COUNT(*) FROM audit_events WHERE action = 'migration.rewrap_superseded'").await,
        i64::try_from(n).unwrap()
    );
    for i in 0..n {
        let (s, v) = common::call(
            &app,
            &token,
            "GET",
            &format!("/v1/accounts/acct-crash/shards/s{i:06}"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "s{i:06}: {v}");
        assert_eq!(
            B64.decode(v["shard"].as_str().unwrap()).unwrap(),
            shard_bytes(i)
        );
        assert_eq!(v["backend"], "vault");
    }
    drop(app);
    let out = Command::new(common::shardgate_bin())
        .args(["audit", "verify", "--config", config.to_str().unwrap()])
        .env_remove("SHARDGATE_TEST_DATABASE_URL")
        .output()
        .unwrap();
    common::keep_output(&logs, "audit-verify", &out);
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL-backed account of `n` shards on `local`, moved to tier gold (`vault`) so that a
/// job over all of them exists; no worker runs in this process.
struct Prepared {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    app: axum::Router,
    token: String,
    job: String,
    db: Db,
}

async fn prepare(url: &str, n: usize, lease_ms: u64, rate: u32) -> Prepared {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), url, &tokens);
    cfg.backends
        .insert("vault".into(), common::local_backend(dir.path(), "vault"));
    cfg.tiers.insert("gold".into(), "vault".into());
    cfg.migration.rate_per_sec = rate;
    cfg.migration.batch_size = 8;
    cfg.migration.lease_ms = lease_ms;
    // This process only loads and checks; the children do the work.
    cfg.migration.workers = false;
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);

    // Load through the real API, in this process.
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    let app = shardgate::router(state);
    let token = tokens.admin.clone();
    let (s, v) = common::call(
        &app,
        &token,
        "PUT",
        "/v1/accounts/acct-crash",
        Some(json!({"tier": "retail"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mut loaders = tokio::task::JoinSet::new();
    for part in 0..8usize {
        let (app, token) = (app.clone(), token.clone());
        loaders.spawn(async move {
            for i in (part..n).step_by(8) {
                let (s, v) = common::call(
                    &app,
                    &token,
                    "PUT",
                    &format!("/v1/accounts/acct-crash/shards/s{i:06}"),
                    Some(json!({"shard": B64.encode(shard_bytes(i))})),
                )
                .await;
                assert_eq!(s, StatusCode::CREATED, "{v}");
            }
        });
    }
    while let Some(r) = loaders.join_next().await {
        r.unwrap();
    }
    let (s, v) = common::call(
        &app,
        &token,
        "PUT",
        "/v1/accounts/acct-crash",
        Some(json!({"tier": "gold"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let job = v["migration_job"].as_str().unwrap().to_string();
    let db = Db::connect(url).await;
    Prepared {
        _dir: dir,
        config,
        app,
        token,
        job,
        db,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_worker_processes_move_every_row_exactly_once() {
    // 400 re-wraps/s per process: neither can finish alone before the other has started.
    let Some(url) = common::fresh_pg_url().await else {
        return;
    };
    let n = 1500;
    let p = prepare(&url, n, 30_000, 400).await;
    let spawn = || {
        Command::new(common::shardgate_bin())
            .args([
                "migrate",
                "run",
                &p.job,
                "--config",
                p.config.to_str().unwrap(),
            ])
            .env_remove("SHARDGATE_TEST_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let logs = common::log_dir("migration_two_workers");
    for (i, child) in [a, b].into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        common::keep_output(&logs, &format!("worker-{i}"), &out);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (s, v) = common::call(
        &p.app,
        &p.token,
        "GET",
        &format!("/v1/admin/migrations/{}", p.job),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["state"].as_str(), v["done"].as_i64()),
        (Some("completed"), Some(1500)),
        "{v}"
    );
    let n = i64::try_from(n).unwrap();
    // Every row moved exactly once, and both processes (two audit chains) did part of it.
    let moves = "FROM audit_events WHERE action = 'migration.rewrap' AND outcome = 'ok'";
    assert_eq!(p.db.count(&format!("SELECT COUNT(*) {moves}")).await, n);
    assert_eq!(
        p.db.count(&format!(
            "SELECT COUNT(DISTINCT account || shard || CAST(version AS TEXT)) {moves}"
        ))
        .await,
        n
    );
    assert_eq!(
        p.db.count(&format!("SELECT COUNT(DISTINCT chain_id) {moves}"))
            .await,
        2
    );
    assert_eq!(
        p.db.count("SELECT COUNT(*) FROM shard_versions WHERE backend = 'vault'")
            .await,
        n
    );
    for i in (0..1500).step_by(7) {
        let (s, v) = common::call(
            &p.app,
            &p.token,
            "GET",
            &format!("/v1/accounts/acct-crash/shards/s{i:06}"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            B64.decode(v["shard"].as_str().unwrap()).unwrap(),
            shard_bytes(i)
        );
    }
}
