//! The audit archive on both stores with the directory sink (the embedded default), through
//! the real binary: `shardgate audit archive` moves old events into segments and out of the
//! hot table, `shardgate audit verify` reads each chain across its archived segments and hot
//! rows as one chain and names any tampering (a changed byte, an edited manifest, a missing,
//! moved or replaced segment), a pass SIGKILLed at every step and run again loses and
//! duplicates nothing, the database refuses to let an audit row go without a segment
//! covering it (SQLite trigger, PostgreSQL SECURITY DEFINER function), a second archiver
//! waits for the first one's lease, and the directory sink's segments whose retention ended
//! are deleted by the archiver (audited, oldest first, never a chain's newest, never one
//! whose retention has not ended, idempotently after a kill).
//!
//! Events are made by an in-process gateway on the same store and config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[macro_use]
mod common;

use common::cli::{describe, run_to_end, shardgate_command, CliRun};
use common::db::Db;
use common::{StoreKind, Tokens};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Events per segment in these tests.
const SEGMENT: i64 = 4;

struct Env {
    /// `audit:read` under the account prefix `acct-A`.
    auditor: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    app: axum::Router,
    state: shardgate::AppState,
    tokens: Tokens,
    db: Db,
    logs: PathBuf,
    runs: std::sync::Mutex<u32>,
}

async fn setup(kind: StoreKind, test: &str) -> Option<Env> {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.audit.archive.segment_max_events = SEGMENT as usize;
    cfg.audit.archive.lease_secs = 1;
    let auditor = {
        use secrecy::ExposeSecret;
        shardgate::domain::auth::generate_token()
            .expose_secret()
            .to_string()
    };
    common::plant(&auditor);
    cfg.tokens.push(shardgate::app::config::TokenConfig {
        name: "auditor-A".into(),
        sha256: shardgate::domain::auth::hash_token(&auditor),
        scopes: vec!["audit:read".into()],
        account_prefix: Some("acct-A".into()),
        expires_at: None,
    });
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    Some(Env {
        auditor,
        config,
        app: shardgate::router(state.clone()),
        state,
        tokens,
        db: Db::connect(&url).await,
        logs: common::log_dir(&format!("audit_archive-{test}-{kind:?}")),
        runs: std::sync::Mutex::new(0),
        dir,
    })
}

impl Env {
    /// `shardgate <args> --config F` to its end; outputs kept in the log dir.
    fn cli(&self, args: &[&str]) -> CliRun {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", self.config.to_str().unwrap()]);
        let run = tokio::task::block_in_place(|| {
            run_to_end(shardgate_command(&all), CLI_TIMEOUT, &describe(&all))
        });
        self.keep(args, &run.stdout, &run.stderr);
        run
    }

    fn keep(&self, args: &[&str], stdout: &str, stderr: &str) {
        let n = {
            let mut runs = self.runs.lock().unwrap();
            *runs += 1;
            *runs
        };
        let name = format!(
            "{n:03}-{}",
            args.iter().take(2).copied().collect::<Vec<_>>().join("-")
        );
        std::fs::write(self.logs.join(format!("{name}.stdout.log")), stdout).unwrap();
        std::fs::write(self.logs.join(format!("{name}.stderr.log")), stderr).unwrap();
    }

    /// `audit archive --older-than 0s`, which must succeed: its summary line.
    fn archive_all(&self) -> String {
        // Events of this millisecond are not older than the cutoff yet.
        std::thread::sleep(Duration::from_millis(5));
        let run = self.cli(&["audit", "archive", "--older-than", "0s"]);
        assert!(run.ok(), "archive failed:\n{}\n{}", run.stdout, run.stderr);
        run.stdout
    }

    /// `audit verify`: exit code and stdout.
    fn verify(&self) -> (Option<i32>, String) {
        let run = self.cli(&["audit", "verify"]);
        (run.code(), format!("{}{}", run.stdout, run.stderr))
    }

    fn assert_verifies(&self) -> String {
        let (code, out) = self.verify();
        assert_eq!(code, Some(0), "{out}");
        out
    }

    fn assert_broken(&self, what: &str, needle: &str) {
        let (code, out) = self.verify();
        assert_eq!(code, Some(2), "{what}: {out}");
        assert!(
            out.contains("AUDIT BROKEN") && out.contains(needle),
            "{what}: want {needle:?} in {out}"
        );
    }

    /// Requests that each write one audit event: an account, then `n` shards written and
    /// read back.
    async fn traffic(&self, tag: &str, n: usize) {
        let t = &self.tokens.admin;
        let (s, v) = common::call(
            &self.app,
            t,
            "PUT",
            "/v1/accounts/acct-arch",
            Some(json!({"tier": "retail"})),
        )
        .await;
        assert!(s.is_success(), "{s}: {v}");
        for i in 0..n {
            let path = format!("/v1/accounts/acct-arch/shards/{tag}-{i}");
            let body = json!({"shard": "c2hhcmQ="});
            let (s, v) = common::call(&self.app, t, "PUT", &path, Some(body)).await;
            assert!(s.is_success(), "{s}: {v}");
            let (s, v) = common::call(&self.app, t, "GET", &path, None).await;
            assert!(s.is_success(), "{s}: {v}");
        }
    }

    async fn hot(&self) -> i64 {
        self.db.count("SELECT COUNT(*) FROM audit_events").await
    }

    /// Hot rows no recorded segment covers (a segment's rows stay hot from its record until
    /// the archiver's deletes reach them).
    async fn hot_uncovered(&self) -> i64 {
        self.db
            .count(
                "SELECT COUNT(*) FROM audit_events e WHERE e.seq > COALESCE(\
                 (SELECT MAX(s.last_seq) FROM audit_segments s WHERE s.chain_id = e.chain_id), 0)",
            )
            .await
    }

    async fn archived(&self) -> (i64, i64) {
        (
            self.db.count("SELECT COUNT(*) FROM audit_segments").await,
            self.db
                .count("SELECT CAST(COALESCE(SUM(event_count), 0) AS BIGINT) FROM audit_segments")
                .await,
        )
    }

    fn archive_dir(&self) -> PathBuf {
        self.dir.path().join("audit-archive")
    }

    /// Every file of the archive directory, relative, sorted.
    fn archive_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.archive_dir()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(
                        p.strip_prefix(self.archive_dir())
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        out.sort();
        out
    }

    /// The segment files (`.sgseg`, `.manifest`) of the archive, in key order.
    fn segment_files(&self, ext: &str) -> Vec<PathBuf> {
        self.archive_files()
            .into_iter()
            .filter(|f| f.ends_with(ext))
            .map(|f| self.archive_dir().join(f))
            .collect()
    }
}

fn writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn archive_moves_old_events_out_and_verify_reads_one_chain_across_tiers(kind: StoreKind) {
    let Some(env) = setup(kind, "tiers").await else {
        return;
    };
    env.traffic("a", 6).await;
    let first = env.hot().await;
    assert!(first >= 13, "{first}");
    let out = env.archive_all();
    assert_eq!(env.hot().await, 0, "{out}");
    let (segments, events) = env.archived().await;
    assert_eq!(events, first);
    assert_eq!(segments, (first + SEGMENT - 1) / SEGMENT);
    assert!(
        out.contains(&format!("{segments} segment(s) recorded")),
        "{out}"
    );
    // Every object is a read-only file.
    for f in env.archive_files() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.archive_dir().join(&f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400, "{f}");
    }
    // The chain goes on in the hot table, and verifies as one across both tiers.
    env.traffic("b", 2).await;
    let hot = env.hot().await;
    assert!(hot >= 5, "{hot}");
    let out = env.assert_verifies();
    assert!(
        out.contains(&format!(
            "{} event(s) verified ({first} from {segments} archived segment(s))",
            first + hot
        )),
        "{out}"
    );
    // Nothing old enough: nothing archived, nothing changed.
    let run = env.cli(&["audit", "archive", "--older-than", "1h"]);
    assert!(
        run.ok() && run.stdout.contains("0 segment(s) recorded"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(env.hot().await, hot);
    // Archiving again continues the segment chain.
    env.archive_all();
    assert_eq!(env.hot().await, 0);
    assert_eq!(env.archived().await.1, first + hot);
    env.traffic("c", 1).await;
    env.assert_verifies();
}

async fn tampering_with_the_archive_is_named(kind: StoreKind) {
    let Some(env) = setup(kind, "tamper").await else {
        return;
    };
    env.traffic("a", 6).await;
    env.archive_all();
    env.traffic("b", 1).await;
    env.assert_verifies();
    let objects = env.segment_files(".sgseg");
    let manifests = env.segment_files(".manifest");
    assert!(objects.len() >= 4 && manifests.len() == objects.len());
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();

    // One changed byte in a segment object.
    let original = std::fs::read(&objects[1]).unwrap();
    let mut changed = original.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    writable(&objects[1]);
    std::fs::write(&objects[1], &changed).unwrap();
    env.assert_broken(
        "a changed segment byte",
        &format!("{}: segment object does not match", name(&objects[1])),
    );
    std::fs::write(&objects[1], &original).unwrap();
    env.assert_verifies();

    // An edited manifest (a wider time range).
    let original = std::fs::read_to_string(&manifests[1]).unwrap();
    writable(&manifests[1]);
    std::fs::write(
        &manifests[1],
        original.replacen("\"min_ts_ms\":", "\"min_ts_ms\":1", 1),
    )
    .unwrap();
    env.assert_broken("an edited manifest", "HMAC mismatch");
    std::fs::write(&manifests[1], &original).unwrap();
    env.assert_verifies();

    // A segment removed from the middle, then its files put back in another's place.
    let hidden = env.dir.path().join("hidden");
    std::fs::create_dir(&hidden).unwrap();
    for p in [&objects[1], &manifests[1]] {
        std::fs::rename(p, hidden.join(name(p))).unwrap();
    }
    env.assert_broken("a removed segment", "archived segments missing");
    let other = manifests[2].with_file_name(format!(
        "{}.moved.manifest",
        name(&manifests[1]).trim_end_matches(".manifest")
    ));
    std::fs::rename(&manifests[2], &other).unwrap();
    std::fs::copy(hidden.join(name(&manifests[1])), &manifests[2]).unwrap();
    env.assert_broken("a reordered segment", "stored under another segment's key");
    std::fs::remove_file(&manifests[2]).unwrap();
    std::fs::rename(&other, &manifests[2]).unwrap();
    for p in [&objects[1], &manifests[1]] {
        std::fs::rename(hidden.join(name(p)), p).unwrap();
    }
    env.assert_verifies();

    // The newest segment removed: the database recorded it.
    let n = objects.len() - 1;
    for p in [&objects[n], &manifests[n]] {
        std::fs::rename(p, hidden.join(name(p))).unwrap();
    }
    env.assert_broken("the newest segment removed", "is missing from the sink");
    for p in [&objects[n], &manifests[n]] {
        std::fs::rename(hidden.join(name(p)), p).unwrap();
    }
    env.assert_verifies();
}

async fn the_database_lets_no_audit_row_go_without_a_segment_covering_it(kind: StoreKind) {
    let Some(env) = setup(kind, "guard").await else {
        return;
    };
    env.traffic("a", 3).await;
    let before = env.hot().await;
    // A plain delete is refused (SQLite: the trigger; PostgreSQL: this test's superuser
    // could, so the runtime role's refusal is in db_privileges.rs; the function is tested).
    if !env.db.is_pg() {
        let err = env
            .db
            .try_exec("DELETE FROM audit_events WHERE seq = 1")
            .await
            .unwrap_err();
        assert!(err.contains("not covered by an archived segment"), "{err}");
    }
    // A forged segment: rows 1..3 claimed with a digest that is not theirs.
    let forged = if env.db.is_pg() {
        "SELECT audit_archive_record(chain_id, 1, 3, 0, 0, prev_tag, tag, sha256(tag), 'k', tag, 1, 'm', tag, prev_tag, 0) \
         FROM audit_events WHERE seq = 1"
            .to_string()
    } else {
        "INSERT INTO audit_segments SELECT chain_id, 1, 3, 3, 0, 0, prev_tag, tag, tag, 'k', tag, 1, 'm', tag, prev_tag, 0 \
         FROM audit_events WHERE seq = 1; DELETE FROM audit_events WHERE seq <= 3"
            .to_string()
    };
    let refused = env.db.try_exec(&forged).await;
    if env.db.is_pg() {
        let err = refused.unwrap_err();
        assert!(err.contains("are not the ones the segment holds"), "{err}");
        assert_eq!(env.hot().await, before);
    } else {
        // SQLite cannot tell a forged row from a real one: the archive catches it (verify).
        refused.unwrap();
        env.assert_broken("a forged segment row", "missing from the sink");
    }
    let err = env
        .db
        .try_exec("UPDATE audit_segments SET last_seq = 99")
        .await;
    if !env.db.is_pg() {
        assert!(err.unwrap_err().contains("never changed"));
    }
}

async fn a_second_archiver_waits_for_the_first_ones_lease(kind: StoreKind) {
    let Some(env) = setup(kind, "lease").await else {
        return;
    };
    env.traffic("a", 2).await;
    let until = shardgate::now_ms() + 60_000;
    env.db
        .exec(&format!(
            "INSERT INTO audit_archive_leases (name, holder, expires_ms) VALUES ('audit-archiver', 'elsewhere', {until})"
        ))
        .await;
    let run = env.cli(&["audit", "archive", "--older-than", "0s"]);
    assert!(!run.ok(), "{}", run.stdout);
    assert!(
        run.stderr.contains("another archiver holds the lease"),
        "{}",
        run.stderr
    );
    assert_eq!(env.archived().await, (0, 0));
    env.db
        .exec("UPDATE audit_archive_leases SET expires_ms = 0")
        .await;
    env.archive_all();
    assert_eq!(env.hot().await, 0);
}

/// Crash points of the archiver, in the order a segment passes them.
const POINTS: [&str; 6] = [
    "archive_after_object",
    "archive_after_manifest",
    "archive_after_read_back",
    "archive_after_check",
    "archive_after_record",
    "archive_after_delete",
];

/// Run `audit archive --older-than 0s` with the crash point `point:n`; SIGKILL it there.
/// `false` when it finished without reaching the point.
fn killed_at(env: &Env, point: &str, n: u32) -> bool {
    let config = env.config.to_str().unwrap();
    let args = ["audit", "archive", "--older-than", "0s", "--config", config];
    let mut cmd = shardgate_command(&args);
    cmd.env("SHARDGATE_TEST_FAILPOINT", format!("{point}:{n}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let hit = line.starts_with("FAILPOINT ");
            let _ = tx.send(line);
            if hit {
                break;
            }
        }
    });
    let deadline = Instant::now() + CLI_TIMEOUT;
    let mut lines = Vec::new();
    loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
            let hit = line.starts_with("FAILPOINT ");
            lines.push(line);
            if hit {
                let _ = child.kill();
                let _ = child.wait();
                env.keep(&["kill", point], "", &lines.join("\n"));
                return true;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            env.keep(&["ended", point], "", &lines.join("\n"));
            assert!(status.success(), "archive run failed: {}", lines.join("\n"));
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "archive run hung: {}",
            lines.join("\n")
        );
    }
}

async fn an_archiver_killed_at_every_step_loses_and_duplicates_nothing(kind: StoreKind) {
    let Some(env) = setup(kind, "kill").await else {
        return;
    };
    env.traffic("a", 24).await;
    let total = env.hot().await;
    let mut kills = 0;
    for n in 1..=3 {
        for point in POINTS {
            let killed = tokio::task::block_in_place(|| killed_at(&env, point, n));
            kills += u32::from(killed);
            // Whatever was cut short, nothing is lost or doubled, and the chain verifies.
            let (_, archived) = env.archived().await;
            assert_eq!(
                archived + env.hot_uncovered().await,
                total,
                "after {point}:{n}"
            );
            env.assert_verifies();
            // The killed run's lease runs out before the next one starts.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    assert!(kills >= 10, "only {kills} runs reached their crash point");
    env.archive_all();
    let (segments, archived) = env.archived().await;
    assert_eq!((archived, env.hot().await), (total, 0));
    assert_eq!(segments, (total + SEGMENT - 1) / SEGMENT);
    // One object and one manifest per recorded segment: nothing written twice.
    assert_eq!(env.segment_files(".sgseg").len() as i64, segments);
    assert_eq!(env.segment_files(".manifest").len() as i64, segments);
    env.assert_verifies();
}

async fn background_archivers_on_two_replicas_archive_each_event_once(kind: StoreKind) {
    let Some(env) = setup(kind, "background").await else {
        return;
    };
    let mut cfg: shardgate::app::config::Config =
        toml::from_str(&std::fs::read_to_string(&env.config).unwrap()).unwrap();
    cfg.audit.archive.enabled = true;
    cfg.audit.archive.hot_days = 0;
    cfg.audit.archive.interval_secs = 1;
    let mut apps = vec![env.app.clone()];
    for _ in 0..2 {
        let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
        shardgate::app::state::start_audit_archiver(&cfg, &state)
            .await
            .unwrap();
        apps.push(shardgate::router(state));
    }
    // Traffic on every replica while both archivers run.
    let t = &env.tokens.admin;
    let (s, _) = common::call(
        &apps[0],
        t,
        "PUT",
        "/v1/accounts/acct-bg",
        Some(json!({"tier": "retail"})),
    )
    .await;
    assert!(s.is_success());
    for i in 0..12 {
        let app = &apps[i % apps.len()];
        let path = format!("/v1/accounts/acct-bg/shards/s{i}");
        let (s, v) = common::call(app, t, "PUT", &path, Some(json!({"shard": "c2hhcmQ="}))).await;
        assert!(s.is_success(), "{v}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.hot().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the archivers left {} hot events",
            env.hot().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every chain's events, each once: as many as the chains' heads say.
    let total = env
        .db
        .count("SELECT CAST(COALESCE(SUM(head), 0) AS BIGINT) FROM (SELECT MAX(last_seq) AS head FROM audit_segments GROUP BY chain_id) h")
        .await;
    let (segments, archived) = env.archived().await;
    assert!(total >= 13, "{total}");
    assert_eq!(archived, total);
    assert_eq!(env.segment_files(".manifest").len() as i64, segments);
    let out = env.assert_verifies();
    assert!(
        out.contains(&format!("({total} from {segments} archived segment(s))")),
        "{out}"
    );
}

async fn anchors_in_the_archive_catch_a_cut_tail_without_any_checkpoint_file(kind: StoreKind) {
    let Some(env) = setup(kind, "anchors").await else {
        return;
    };
    env.traffic("a", 4).await;
    env.archive_all();
    env.traffic("b", 2).await;
    env.state.audit.checkpoint().await;
    // Only the archive holds the head now.
    std::fs::remove_file(env.dir.path().join("audit-checkpoints")).unwrap();
    let anchors = env.segment_files(".anchor");
    assert_eq!(anchors.len(), 1, "{anchors:?}");
    let out = env.assert_verifies();
    assert!(out.contains("1 anchored chain(s)"), "{out}");
    // An idle chain writes no second anchor; a moved head does.
    env.state.audit.checkpoint().await;
    assert_eq!(env.segment_files(".anchor").len(), 1);
    // An edited anchor is named.
    let original = std::fs::read_to_string(&anchors[0]).unwrap();
    writable(&anchors[0]);
    let edited = original.replacen(" 1", " 2", 1);
    assert_ne!(edited, original);
    std::fs::write(&anchors[0], &edited).unwrap();
    env.assert_broken("an edited anchor", ".anchor");
    std::fs::write(&anchors[0], &original).unwrap();
    env.assert_verifies();
    // The newest hot events deleted (the database rewritten by someone who can): the
    // chain's head is behind its anchor.
    env.db.bypass_audit_guard().await;
    let head = env.db.count("SELECT MAX(seq) FROM audit_events").await;
    env.db
        .exec(&format!(
            "DELETE FROM audit_events WHERE seq >= {}",
            head - 1
        ))
        .await;
    env.assert_broken("a cut hot tail", "behind its checkpoint");
}

async fn verify_from_a_date_and_after_expired_segments_trusts_the_first_manifest_left(
    kind: StoreKind,
) {
    let Some(env) = setup(kind, "from").await else {
        return;
    };
    env.traffic("a", 2).await;
    env.archive_all();
    let second_start = shardgate::now_ms();
    std::thread::sleep(Duration::from_millis(5));
    env.traffic("b", 4).await;
    env.archive_all();
    let (objects, manifests) = (env.segment_files(".sgseg"), env.segment_files(".manifest"));
    assert!(objects.len() >= 3);
    // The first segment gone: the database recorded it, its retention has not ended.
    let hidden = env.dir.path().join("hidden");
    std::fs::create_dir(&hidden).unwrap();
    for p in [&objects[0], &manifests[0]] {
        std::fs::rename(p, hidden.join(p.file_name().unwrap())).unwrap();
    }
    env.assert_broken("the first segment removed", "archived segments missing");
    // `--from` a time after it: the walk starts at the last segment starting before that
    // time, trusting its manifest.
    let run = env.cli(&["audit", "verify", "--from", &second_start.to_string()]);
    assert_eq!(run.code(), Some(0), "{}{}", run.stdout, run.stderr);
    // Expired (retention 0 days): a missing prefix of recorded, expired segments is fine.
    let mut cfg: shardgate::app::config::Config =
        toml::from_str(&std::fs::read_to_string(&env.config).unwrap()).unwrap();
    cfg.audit.archive.retention_days = 0;
    common::write_config(&cfg, &env.config);
    env.assert_verifies();
    // But not a segment missing after the first one left.
    for p in [&objects[2], &manifests[2]] {
        std::fs::rename(p, hidden.join(p.file_name().unwrap())).unwrap();
    }
    env.assert_broken("a middle segment removed", "archived segments missing");
}

/// `[audit.archive] retention_days` in the config file the CLI reads.
fn set_retention_days(env: &Env, days: u32) {
    let mut cfg: shardgate::app::config::Config =
        toml::from_str(&std::fs::read_to_string(&env.config).unwrap()).unwrap();
    cfg.audit.archive.retention_days = days;
    common::write_config(&cfg, &env.config);
}

/// The segment files (manifests and objects) of `chain` in the archive, in key order.
fn chain_files(env: &Env, chain: &str) -> Vec<String> {
    let dir = format!("segments/{chain}/");
    env.archive_files()
        .into_iter()
        .filter(|f| f.starts_with(&dir))
        .collect()
}

/// The `audit.archive.expire` events since `from_ms` (both tiers, through `audit search`):
/// actor and detail of each.
fn expire_events(env: &Env, from_ms: i64) -> Vec<(String, String)> {
    let from = from_ms.to_string();
    let run = env.cli(&[
        "audit",
        "search",
        "--action",
        "audit.archive.expire",
        "--from",
        &from,
    ]);
    assert!(run.ok(), "{}{}", run.stdout, run.stderr);
    // Keyed by event id: one seen in both tiers (archived while the search ran) counts once.
    let events: std::collections::BTreeMap<(String, i64), (String, String)> = run
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let at = |k: &str| v[k].as_str().unwrap().to_string();
            (event_id(&v), (at("actor"), at("detail")))
        })
        .collect();
    events.into_values().collect()
}

async fn expired_segments_are_deleted_audited_and_the_chain_still_verifies(kind: StoreKind) {
    let Some(env) = setup(kind, "expire").await else {
        return;
    };
    let chain = env.state.audit.chain_id().to_string();
    env.traffic("a", 6).await;
    // Retention not reached (the default, seven years): archiving deletes nothing.
    let out = env.archive_all();
    assert!(out.contains(", 0 expired segment(s) deleted"), "{out}");
    let files = chain_files(&env, &chain);
    let (segments, events) = env.archived().await;
    assert!(segments >= 4, "{segments}");
    assert_eq!(files.len() as i64, 2 * segments, "{files:?}");
    let since = shardgate::now_ms();
    assert!(expire_events(&env, since).is_empty());
    // Retention 0 days: every segment's newest event is past it; all but the chain's newest
    // segment go, oldest first, manifests and objects alike; the database keeps every row.
    set_retention_days(&env, 0);
    std::thread::sleep(Duration::from_millis(5));
    let out = env.archive_all();
    let gone = segments - 1;
    assert!(
        out.contains(&format!(", {gone} expired segment(s) deleted")),
        "{out}"
    );
    let newest = &files[files.len() - 2..];
    assert_eq!(chain_files(&env, &chain), newest, "{out}");
    assert_eq!(env.archived().await, (segments, events));
    // The deletion is audited (by the operator's command, naming the chain, the seq range,
    // how many segments and the sink) before anything was deleted.
    let last_gone = env
        .db
        .count(&format!(
            "SELECT MAX(last_seq) FROM audit_segments WHERE chain_id = '{chain}' AND first_seq < (SELECT MAX(first_seq) FROM audit_segments WHERE chain_id = '{chain}')"
        ))
        .await;
    let audited = expire_events(&env, since);
    assert_eq!(audited.len(), 1, "{audited:?}");
    let (actor, detail) = &audited[0];
    assert_eq!(actor, "cli");
    for want in [
        format!("chain={chain} "),
        format!("seqs=1..{last_gone} "),
        format!("segments={gone} "),
        format!("objects={} ", 2 * gone),
        format!("sink=dir:{}", env.archive_dir().display()),
    ] {
        assert!(detail.contains(&want), "want {want:?} in {detail}");
    }
    // The chain verifies from its first manifest left.
    env.assert_verifies();
    // A search from the start of time skips what retention deleted: it answers every event
    // the kept segments and the hot table hold, and none of the deleted ones.
    let run = env.cli(&["audit", "search", "--from", "0"]);
    assert!(run.ok(), "{}{}", run.stdout, run.stderr);
    let seqs: Vec<i64> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["chain_id"] == chain.as_str())
        .map(|v| v["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.first(), Some(&(last_gone + 1)), "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // Another pass finds nothing more to delete: no deletion, no event.
    let out = env.archive_all();
    assert!(out.contains(", 0 expired segment(s) deleted"), "{out}");
    assert_eq!(expire_events(&env, since).len(), 1);
    assert_eq!(chain_files(&env, &chain), newest);
    // Once the chain has a newer segment, the one kept goes too; across both tiers the
    // chain still verifies.
    env.traffic("b", 1).await;
    let out = env.archive_all();
    assert!(out.contains(", 1 expired segment(s) deleted"), "{out}");
    assert!(!chain_files(&env, &chain).contains(&newest[0]));
    env.traffic("c", 1).await;
    env.assert_verifies();
}

async fn a_segment_whose_retention_has_not_ended_is_never_deleted(kind: StoreKind) {
    let Some(env) = setup(kind, "unexpired").await else {
        return;
    };
    let chain = env.state.audit.chain_id().to_string();
    env.traffic("a", 8).await;
    env.archive_all();
    let files = chain_files(&env, &chain);
    let segments = env.archived().await.0;
    assert!(segments >= 4, "{segments}");
    // The second segment's newest event a day ahead (a clock that jumped): with 0 days of
    // retention it has not expired, so it and every segment after it stay, even older ones.
    if !env.db.is_pg() {
        env.db
            .exec("DROP TRIGGER IF EXISTS audit_segments_no_update")
            .await;
    }
    let ahead = shardgate::now_ms() + 86_400_000;
    env.db
        .exec(&format!(
            "UPDATE audit_segments SET max_ts_ms = {ahead} WHERE chain_id = '{chain}' AND first_seq = {}",
            SEGMENT + 1
        ))
        .await;
    set_retention_days(&env, 0);
    std::thread::sleep(Duration::from_millis(5));
    let out = env.archive_all();
    assert!(out.contains(", 1 expired segment(s) deleted"), "{out}");
    assert_eq!(chain_files(&env, &chain), files[2..], "{out}");
    env.assert_verifies();
    // Again: nothing more goes while that segment's retention has not ended.
    let out = env.archive_all();
    assert!(out.contains(", 0 expired segment(s) deleted"), "{out}");
    assert_eq!(chain_files(&env, &chain), files[2..]);
}

async fn the_background_archiver_deletes_expired_segments_audited_as_itself(kind: StoreKind) {
    let Some(env) = setup(kind, "expire-background").await else {
        return;
    };
    let chain = env.state.audit.chain_id().to_string();
    env.traffic("a", 6).await;
    env.archive_all();
    let files = chain_files(&env, &chain);
    assert!(files.len() >= 6, "{files:?}");
    let since = shardgate::now_ms();
    let mut cfg: shardgate::app::config::Config =
        toml::from_str(&std::fs::read_to_string(&env.config).unwrap()).unwrap();
    cfg.audit.archive.enabled = true;
    cfg.audit.archive.hot_days = 0;
    cfg.audit.archive.interval_secs = 1;
    cfg.audit.archive.retention_days = 0;
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    shardgate::app::state::start_audit_archiver(&cfg, &state)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while chain_files(&env, &chain) != files[files.len() - 2..] {
        assert!(
            Instant::now() < deadline,
            "the background archiver left {:?}",
            chain_files(&env, &chain)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its event (written on the replica's own chain before it deleted anything) names it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mine = loop {
        let mine: Vec<_> = expire_events(&env, since)
            .into_iter()
            .filter(|(_, d)| d.contains(&format!("chain={chain} ")))
            .collect();
        if !mine.is_empty() || Instant::now() > deadline {
            break mine;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0].0, "audit-archiver");
    assert!(
        mine[0]
            .1
            .contains(&format!("segments={} ", files.len() / 2 - 1)),
        "{mine:?}"
    );
}

async fn expiry_killed_between_event_manifest_and_object_is_finished_by_the_next_pass(
    kind: StoreKind,
) {
    let Some(env) = setup(kind, "expire-kill").await else {
        return;
    };
    let chain = env.state.audit.chain_id().to_string();
    env.traffic("a", 6).await;
    env.archive_all();
    let files = chain_files(&env, &chain);
    let segments = env.archived().await.0;
    assert!(segments >= 3, "{segments}");
    let since = shardgate::now_ms();
    set_retention_days(&env, 0);
    std::thread::sleep(Duration::from_millis(5));
    // Killed once its event is written: nothing deleted yet, the event names what was
    // about to go.
    assert!(tokio::task::block_in_place(|| killed_at(
        &env,
        "expire_after_event",
        1
    )));
    assert_eq!(chain_files(&env, &chain), files);
    assert_eq!(expire_events(&env, since).len(), 1);
    env.assert_verifies();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Killed between the first segment's manifest and its object: a stray object is left,
    // never a manifest without its object, and the chain verifies.
    assert!(tokio::task::block_in_place(|| killed_at(
        &env,
        "expire_after_manifest",
        1
    )));
    assert!(files[0].ends_with(".manifest") && files[1].ends_with(".sgseg"));
    assert_eq!(chain_files(&env, &chain), files[1..]);
    env.assert_verifies();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The next pass deletes the stray object and the rest, audited again; then nothing is
    // left to delete and a further pass deletes nothing and writes no event.
    let out = env.archive_all();
    assert!(
        out.contains(&format!(", {} expired segment(s) deleted", segments - 1)),
        "{out}"
    );
    assert_eq!(chain_files(&env, &chain), files[files.len() - 2..]);
    let audited = expire_events(&env, since);
    assert_eq!(audited.len(), 3, "{audited:?}");
    let out = env.archive_all();
    assert!(out.contains(", 0 expired segment(s) deleted"), "{out}");
    assert_eq!(expire_events(&env, since).len(), 3);
    assert_eq!(chain_files(&env, &chain), files[files.len() - 2..]);
    env.assert_verifies();
}

/// `GET /v1/admin/audit/events?{query}` with `token`: status, the NDJSON lines, the next cursor.
async fn search(
    app: &axum::Router,
    token: &str,
    query: &str,
) -> (
    axum::http::StatusCode,
    Vec<serde_json::Value>,
    Option<String>,
) {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .uri(format!("/v1/admin/audit/events?{query}"))
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let next = resp
        .headers()
        .get("x-shardgate-next-cursor")
        .map(|v| v.to_str().unwrap().to_string());
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let lines = if status.is_success() {
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    } else {
        vec![serde_json::from_slice(&body).unwrap()]
    };
    (status, lines, next)
}

/// Every page of a search: the events' `(chain_id, seq)` and the tiers seen.
async fn all_pages(
    app: &axum::Router,
    token: &str,
    query: &str,
) -> (Vec<(String, i64)>, Vec<String>) {
    let (mut got, mut tiers, mut cursor) = (Vec::new(), Vec::new(), None::<String>);
    loop {
        let q = match &cursor {
            Some(c) => format!("{query}&cursor={c}"),
            None => query.to_string(),
        };
        let (s, lines, next) = search(app, token, &q).await;
        assert_eq!(s, axum::http::StatusCode::OK, "{lines:?}");
        for l in &lines {
            got.push(event_id(l));
            tiers.push(l["tier"].as_str().unwrap().to_string());
        }
        match next {
            Some(n) => cursor = Some(n),
            None => return (got, tiers),
        }
    }
}

async fn search_across_the_archive_boundary_returns_each_event_once_in_order(kind: StoreKind) {
    let Some(env) = setup(kind, "search").await else {
        return;
    };
    let t = &env.tokens.admin;
    for account in ["acct-A1", "acct-B1"] {
        let (s, _) = common::call(
            &env.app,
            t,
            "PUT",
            &format!("/v1/accounts/{account}"),
            Some(json!({"tier": "retail"})),
        )
        .await;
        assert!(s.is_success());
        for i in 0..5 {
            let path = format!("/v1/accounts/{account}/shards/s{i}");
            let (s, _) = common::call(
                &env.app,
                t,
                "PUT",
                &path,
                Some(json!({"shard": "c2hhcmQ="})),
            )
            .await;
            assert!(s.is_success());
        }
    }
    // An event naming no account.
    let (s, _) = common::call(&env.app, t, "GET", "/v1/admin/keys", None).await;
    assert!(s.is_success());
    env.archive_all();
    assert_eq!(env.hot().await, 0);
    for i in 0..3 {
        for account in ["acct-A1", "acct-B1"] {
            let path = format!("/v1/accounts/{account}/shards/s{i}");
            let (s, _) = common::call(&env.app, t, "GET", &path, None).await;
            assert!(s.is_success());
        }
    }
    let until = shardgate::now_ms() + 1;
    // What the chains hold, in order, read from the database and the archive independently.
    let mut want: Vec<(i64, String, i64, Option<String>)> = Vec::new();
    for line in env.cli(&["audit", "verify"]).stdout.lines() {
        assert!(line.starts_with("audit ok"), "{line}");
    }
    let hot: Vec<(i64, String, i64, Option<String>)> = {
        let rows = env.db.all_bytes("SELECT CAST(ts_ms AS TEXT) || ' ' || chain_id || ' ' || CAST(seq AS TEXT) || ' ' || COALESCE(account, '-') FROM audit_events").await;
        rows.iter().map(|r| parse_row(r)).collect()
    };
    want.extend(hot);
    let archived_objects = env.segment_files(".sgseg");
    let key_file = env.dir.path().join("audit.key");
    let key = shardgate::domain::audit::AuditKey::load(&key_file).unwrap();
    for (m, o) in env.segment_files(".manifest").iter().zip(&archived_objects) {
        let manifest =
            shardgate::domain::audit::archive::Manifest::open(&std::fs::read(m).unwrap(), &key)
                .unwrap();
        let events = shardgate::domain::audit::archive::segment::open_object(
            &std::fs::read(o).unwrap(),
            &manifest,
            &key,
        )
        .unwrap();
        want.extend(
            events
                .into_iter()
                .map(|r| (r.ts_ms, r.chain_id, r.seq, r.account)),
        );
    }
    want.retain(|w| w.0 < until);
    want.sort();
    assert!(want.len() >= 18, "{}", want.len());
    let ids = |w: &[(i64, String, i64, Option<String>)]| -> Vec<(String, i64)> {
        w.iter().map(|(_, c, s, _)| (c.clone(), *s)).collect()
    };

    // Everything, three events a page: each event once, in order, from both tiers.
    let (got, tiers) = all_pages(&env.app, t, &format!("limit=3&to={until}")).await;
    assert_eq!(got, ids(&want));
    assert!(tiers.contains(&"hot".to_string()) && tiers.contains(&"archived".to_string()));
    // One account, across the boundary.
    let a1: Vec<_> = want
        .iter()
        .filter(|w| w.3.as_deref() == Some("acct-A1"))
        .cloned()
        .collect();
    let (got, _) = all_pages(&env.app, t, &format!("account=acct-A1&limit=2&to={until}")).await;
    assert_eq!(got, ids(&a1));
    // A token under the prefix acct-A sees acct-A1's events only: not acct-B1's, not those
    // naming no account; asking for another account is refused.
    let (got, _) = all_pages(&env.app, &env.auditor, &format!("limit=4&to={until}")).await;
    assert_eq!(got, ids(&a1));
    let (s, _, _) = search(&env.app, &env.auditor, "account=acct-B1").await;
    assert_eq!(s, axum::http::StatusCode::FORBIDDEN);
    let (s, _, _) = search(&env.app, &env.tokens.reader, "").await;
    assert_eq!(s, axum::http::StatusCode::FORBIDDEN);
    for bad in [
        "limit=0",
        "limit=10001",
        "cursor=nope",
        "from=yesterday",
        "account=bad%20id",
        "extra=1",
    ] {
        let (s, _, _) = search(&env.app, t, bad).await;
        assert_eq!(s, axum::http::StatusCode::BAD_REQUEST, "{bad}");
    }
    // The CLI gives the same events, as NDJSON.
    let run = env.cli(&[
        "audit",
        "search",
        "--account",
        "acct-A1",
        "--to",
        &until.to_string(),
    ]);
    assert!(run.ok(), "{}", run.stderr);
    let got: Vec<(String, i64)> = ndjson_ids(&run.stdout);
    assert_eq!(got, ids(&a1));

    // The auditor's export: the same events, the segments holding the archived ones (each
    // verifies with the key alone), the chain's anchor; never into an existing directory.
    env.state.audit.checkpoint().await;
    let out = env.dir.path().join("export-A1");
    let out_s = out.to_str().unwrap();
    let until_s = until.to_string();
    let run = env.cli(&[
        "audit",
        "export",
        "--account",
        "acct-A1",
        "--to",
        &until_s,
        "--out",
        out_s,
    ]);
    assert!(run.ok(), "{}", run.stderr);
    let exported: Vec<(String, i64)> =
        ndjson_ids(&std::fs::read_to_string(out.join("events.ndjson")).unwrap());
    assert_eq!(exported, ids(&a1));
    let mut seen = Vec::new();
    let mut stack = vec![out.join("segments")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".manifest") {
                let m = shardgate::domain::audit::archive::Manifest::open(
                    &std::fs::read(&p).unwrap(),
                    &key,
                )
                .unwrap();
                let object = p.with_file_name(m.object_key.rsplit('/').next().unwrap());
                let events = shardgate::domain::audit::archive::segment::open_object(
                    &std::fs::read(object).unwrap(),
                    &m,
                    &key,
                )
                .unwrap();
                seen.extend(
                    events
                        .into_iter()
                        .filter(|r| r.account.as_deref() == Some("acct-A1"))
                        .map(|r| (r.chain_id, r.seq)),
                );
            }
        }
    }
    seen.sort();
    let mut archived_a1: Vec<(String, i64)> = std::fs::read_to_string(out.join("events.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["tier"] == "archived")
        .map(|v| event_id(&v))
        .collect();
    archived_a1.sort();
    assert!(!seen.is_empty());
    assert_eq!(
        seen, archived_a1,
        "the exported segments hold exactly the archived events"
    );
    assert!(std::fs::read_dir(out.join("anchors"))
        .unwrap()
        .next()
        .is_some());
    let again = env.cli(&["audit", "export", "--account", "acct-A1", "--out", out_s]);
    assert!(
        !again.ok() && again.stderr.contains("must not exist"),
        "{}",
        again.stderr
    );
}

/// An event line's `(chain_id, seq)`.
async fn a_recorded_segment_whose_rows_are_still_hot_is_searched_and_verified_once(
    kind: StoreKind,
) {
    let Some(env) = setup(kind, "drain").await else {
        return;
    };
    env.traffic("a", 6).await;
    let total = env.hot().await;
    // Killed after its first segment is recorded, before any of its rows is deleted.
    assert!(tokio::task::block_in_place(|| killed_at(
        &env,
        "archive_after_record",
        1
    )));
    assert_eq!(env.archived().await, (1, SEGMENT));
    assert_eq!(env.hot().await, total);
    assert_eq!(env.hot_uncovered().await, total - SEGMENT);
    env.assert_verifies();
    // The covered events are in both tiers: a search returns each once, in order.
    let until = shardgate::now_ms() + 1;
    // The searches' own events come after `until`.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (got, tiers) = all_pages(&env.app, &env.tokens.admin, &format!("limit=3&to={until}")).await;
    let mut once = got.clone();
    once.dedup();
    assert_eq!(got, once, "{tiers:?}");
    assert_eq!(got.len() as i64, total);
    assert_eq!(
        tiers.iter().filter(|t| *t == "archived").count() as i64,
        SEGMENT
    );
    // The next pass deletes what the killed one recorded, then archives the rest (the
    // searches' own events too).
    let total = env.hot().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.archive_all();
    assert_eq!((env.archived().await.1, env.hot().await), (total, 0));
    env.assert_verifies();
}

fn event_id(v: &serde_json::Value) -> (String, i64) {
    (
        v["chain_id"].as_str().unwrap().to_string(),
        v["seq"].as_i64().unwrap(),
    )
}

/// The `(chain_id, seq)` of every line of an NDJSON answer.
fn ndjson_ids(text: &str) -> Vec<(String, i64)> {
    text.lines()
        .map(|l| event_id(&serde_json::from_str(l).unwrap()))
        .collect()
}

fn parse_row(r: &[u8]) -> (i64, String, i64, Option<String>) {
    let text = String::from_utf8(r.to_vec()).unwrap();
    let mut parts = text.split(' ');
    let ts = parts.next().unwrap().parse().unwrap();
    let chain = parts.next().unwrap().to_string();
    let seq = parts.next().unwrap().parse().unwrap();
    let account = parts.next().unwrap();
    (
        ts,
        chain,
        seq,
        (account != "-").then(|| account.to_string()),
    )
}

both_stores!(
    archive_moves_old_events_out_and_verify_reads_one_chain_across_tiers,
    tampering_with_the_archive_is_named,
    the_database_lets_no_audit_row_go_without_a_segment_covering_it,
    a_second_archiver_waits_for_the_first_ones_lease,
    an_archiver_killed_at_every_step_loses_and_duplicates_nothing,
    background_archivers_on_two_replicas_archive_each_event_once,
    search_across_the_archive_boundary_returns_each_event_once_in_order,
    a_recorded_segment_whose_rows_are_still_hot_is_searched_and_verified_once,
    anchors_in_the_archive_catch_a_cut_tail_without_any_checkpoint_file,
    verify_from_a_date_and_after_expired_segments_trusts_the_first_manifest_left,
    expired_segments_are_deleted_audited_and_the_chain_still_verifies,
    a_segment_whose_retention_has_not_ended_is_never_deleted,
    the_background_archiver_deletes_expired_segments_audited_as_itself,
    expiry_killed_between_event_manifest_and_object_is_finished_by_the_next_pass,
);
