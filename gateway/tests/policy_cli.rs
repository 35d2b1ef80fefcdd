//! Child-process tests of `shardgate policy check` and `shardgate policy explain`: the real
//! binary, a real config file, and (for `explain` without `--tier`) a real store holding the
//! account, written through the HTTP API in-process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use axum::body::Body;
use axum::http::{header, Request};
use common::cli::{describe, run_to_end, shardgate_command, CliRun};
use common::{StoreKind, Tokens};
use shardgate::app::config::Config;
use shardgate_policy::{rollout_bucket, Pin, Rollout};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tower::ServiceExt;

/// How long a one-shot CLI command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);

/// Run `shardgate <args>` with no inherited `SHARDGATE_*` variable (the test controls the
/// whole configuration) plus `env`; killed after [`CLI_TIMEOUT`]. Output goes to the log dir.
fn cli(args: &[&str], env: &[(&str, &str)], logs: &Path, name: &str) -> CliRun {
    let mut cmd = shardgate_command(args);
    cmd.envs(env.iter().copied());
    let run = run_to_end(cmd, CLI_TIMEOUT, &describe(args));
    std::fs::write(logs.join(format!("{name}.stdout.log")), &run.stdout).unwrap();
    std::fs::write(logs.join(format!("{name}.stderr.log")), &run.stderr).unwrap();
    run
}

fn assert_fails(r: &CliRun, what: &str) {
    assert!(
        !r.status.success(),
        "{what}: must exit non-zero; stdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
}

fn assert_ok(r: &CliRun, what: &str) {
    assert!(
        r.status.success(),
        "{what}: must exit 0 ({:?}); stdout: {}\nstderr: {}",
        r.status,
        r.stdout,
        r.stderr
    );
}

/// A config with two `local` backends (`local` and `local-new`), tiers `retail` and
/// `institutional` on `local`, and the given policy rules.
struct Setup {
    dir: tempfile::TempDir,
    tokens: Tokens,
    cfg: Config,
    path: PathBuf,
}

impl Setup {
    async fn new(kind: StoreKind) -> Option<Setup> {
        let dir = tempfile::tempdir().unwrap();
        let url = common::store_url(kind, dir.path()).await?;
        let tokens = Tokens::new();
        let mut cfg = common::config(dir.path(), &url, &tokens);
        cfg.backends.insert(
            "local-new".into(),
            common::local_backend(dir.path(), "local-new"),
        );
        let path = dir.path().join("shardgate.toml");
        common::write_config(&cfg, &path);
        Some(Setup {
            dir,
            tokens,
            cfg,
            path,
        })
    }

    fn with_rules(mut self, pins: &[(&str, &str)], rollouts: Vec<Rollout>) -> Self {
        self.cfg.policy.pins = pins
            .iter()
            .map(|(a, b)| Pin {
                account: a.to_string(),
                backend: b.to_string(),
            })
            .collect();
        self.cfg.policy.rollouts = rollouts;
        common::write_config(&self.cfg, &self.path);
        self
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

fn rollout(name: &str, tier: &str, backend: &str, percent: f64) -> Rollout {
    Rollout {
        name: name.into(),
        tier: tier.into(),
        backend: backend.into(),
        percent,
    }
}

/// An account id whose bucket for `rollout` satisfies `pred`.
fn account_where(rollout: &str, pred: impl Fn(u32) -> bool) -> String {
    (0..100_000)
        .map(|i| format!("acct-{i}"))
        .find(|a| pred(rollout_bucket(rollout, a)))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// policy check
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn check_accepts_a_valid_config_with_a_one_line_summary() {
    let logs = common::log_dir("policy_check_ok");
    let s = Setup::new(StoreKind::Sqlite).await.unwrap().with_rules(
        &[("acct-9", "local-new")],
        vec![rollout("pilot", "retail", "local-new", 5.0)],
    );
    let r = cli(&["policy", "check", "--config", s.arg()], &[], &logs, "ok");
    assert_ok(&r, "policy check");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", r.stdout);
    assert!(
        lines[0].starts_with("ok: ")
            && lines[0].contains("2 backend(s), 2 tier(s), 1 pin(s), 1 rollout(s), 0 warning(s)"),
        "{}",
        lines[0]
    );
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    // Checking opens nothing: no keyring was created for either backend.
    assert!(!s.dir.path().join("local.keyring").exists());
    assert!(!s.dir.path().join("local-new.keyring").exists());
}

#[tokio::test]
async fn check_names_every_broken_rule_and_fails() {
    let logs = common::log_dir("policy_check_rules");
    let s = Setup::new(StoreKind::Sqlite).await.unwrap().with_rules(
        &[("acct-9", "local-new"), ("acct-9", "local")],
        vec![
            rollout("pilot", "retail", "kms-missing", 5.0),
            rollout("zero", "institutional", "local-new", 0.0),
            rollout("same", "retail", "local", 10.0),
            rollout("ghost", "Retail", "local-new", 10.0),
        ],
    );
    let r = cli(
        &["policy", "check", "--config", s.arg()],
        &[],
        &logs,
        "rules",
    );
    assert_fails(&r, "policy check with broken rules");
    assert_eq!(r.status.code(), Some(1));
    for needle in [
        "account \"acct-9\" is pinned twice",
        "rollout \"pilot\" names backend \"kms-missing\", which is not configured",
        "rollout \"zero\" is 0%",
        "rollout \"same\" moves tier \"retail\" onto \"local\", which is already that tier's backend",
        "rollout \"ghost\" is on tier \"Retail\", which is not declared",
        "policy check failed: 5 error(s)",
    ] {
        assert!(r.stderr.contains(needle), "missing {needle:?} in:\n{}", r.stderr);
    }
    assert!(!r.stdout.starts_with("ok"), "{}", r.stdout);

    // Rollouts of one tier adding up past 100%.
    let s = s.with_rules(
        &[],
        vec![
            rollout("a", "retail", "local-new", 60.0),
            rollout("b", "retail", "other", 50.0),
        ],
    );
    let mut cfg = s.cfg.clone();
    cfg.backends
        .insert("other".into(), common::local_backend(s.dir.path(), "other"));
    common::write_config(&cfg, &s.path);
    let r = cli(
        &["policy", "check", "--config", s.arg()],
        &[],
        &logs,
        "overfull",
    );
    assert_fails(&r, "rollouts over 100%");
    assert!(
        r.stderr
            .contains("rollouts of tier \"retail\" add up to 110.00%, more than 100%"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn check_fails_on_the_rest_of_the_config_too() {
    let logs = common::log_dir("policy_check_parse");
    let s = Setup::new(StoreKind::Sqlite)
        .await
        .unwrap()
        .with_rules(&[], vec![rollout("pilot", "retail", "local-new", 5.0)]);

    // A typo inside a rollout.
    let text = std::fs::read_to_string(&s.path).unwrap();
    assert!(text.contains("percent = 5.0"), "{text}");
    std::fs::write(&s.path, text.replace("percent = 5.0", "percnt = 5.0")).unwrap();
    let r = cli(
        &["policy", "check", "--config", s.arg()],
        &[],
        &logs,
        "typo",
    );
    assert_fails(&r, "typo in a rollout");
    assert!(r.stderr.contains("percnt"), "{}", r.stderr);
    assert!(r.stderr.contains("policy check failed"), "{}", r.stderr);

    // A problem outside the policy: a token hash that is not 64 hex characters.
    std::fs::write(&s.path, &text).unwrap();
    let mut cfg = s.cfg.clone();
    cfg.tokens[0].sha256 = "abc".into();
    common::write_config(&cfg, &s.path);
    let r = cli(
        &["policy", "check", "--config", s.arg()],
        &[],
        &logs,
        "token",
    );
    assert_fails(&r, "bad token hash");
    assert!(r.stderr.contains("sha256 must be 64 hex"), "{}", r.stderr);

    // No such file.
    let missing = s.dir.path().join("nope.toml");
    let r = cli(
        &["policy", "check", "--config", missing.to_str().unwrap()],
        &[],
        &logs,
        "missing",
    );
    assert_fails(&r, "missing file");
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
}

#[tokio::test]
async fn check_warns_about_a_full_rollout_but_passes() {
    let logs = common::log_dir("policy_check_warn");
    let s = Setup::new(StoreKind::Sqlite)
        .await
        .unwrap()
        .with_rules(&[], vec![rollout("all", "retail", "local-new", 100.0)]);
    let r = cli(
        &["policy", "check", "--config", s.arg()],
        &[],
        &logs,
        "warn",
    );
    assert_ok(&r, "100% rollout");
    assert!(
        r.stderr
            .contains("warning: policy: rollout \"all\" takes 100%"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("1 warning(s)"), "{}", r.stdout);
}

#[tokio::test]
async fn check_sees_environment_overrides() {
    let logs = common::log_dir("policy_check_env");
    let s = Setup::new(StoreKind::Sqlite).await.unwrap();
    let r = cli(
        &["policy", "check", "--config", s.arg()],
        &[],
        &logs,
        "plain",
    );
    assert_ok(&r, "no rules");
    assert!(r.stdout.contains("0 pin(s), 0 rollout(s)"), "{}", r.stdout);
    // A pin from the environment onto a backend the file does not define.
    let r = cli(
        &["policy", "check", "--config", s.arg()],
        &[(
            "SHARDGATE_POLICY__PINS",
            r#"[{account="acct-Env", backend="hsm"}]"#,
        )],
        &logs,
        "env-bad",
    );
    assert_fails(&r, "env pin onto a missing backend");
    assert!(
        r.stderr
            .contains("pin for account \"acct-Env\" names backend \"hsm\""),
        "{}",
        r.stderr
    );
    // And a good rollout from the environment counts.
    let r = cli(
        &["policy", "check", "--config", s.arg()],
        &[(
            "SHARDGATE_POLICY__ROLLOUTS",
            r#"[{name="env-pilot", tier="institutional", backend="local-new", percent=2.5}]"#,
        )],
        &logs,
        "env-good",
    );
    assert_ok(&r, "env rollout");
    assert!(r.stdout.contains("0 pin(s), 1 rollout(s)"), "{}", r.stdout);
}

// ---------------------------------------------------------------------------------------------
// policy explain --tier
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn explain_with_tier_names_the_winning_rule() {
    let logs = common::log_dir("policy_explain_tier");
    let inside = account_where("pilot", |b| b < 3_000);
    let outside = account_where("pilot", |b| b >= 3_000);
    let s = Setup::new(StoreKind::Sqlite).await.unwrap().with_rules(
        &[("acct-9", "local-new")],
        vec![rollout("pilot", "retail", "local-new", 30.0)],
    );
    let explain = |account: &str, tier: &str, name: &str| {
        cli(
            &[
                "policy",
                "explain",
                "--config",
                s.arg(),
                "--account",
                account,
                "--tier",
                tier,
            ],
            &[],
            &logs,
            name,
        )
    };

    // Pin: wins over the rollout and the tier.
    let r = explain("acct-9", "retail", "pin");
    assert_ok(&r, "explain pinned");
    assert!(
        r.stdout.contains("pin acct-9 -> local-new -- CHOSEN"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("tier retail -> local -- applies, but overridden by pin acct-9 -> local-new"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("backend: local-new (by pin acct-9 -> local-new)"),
        "{}",
        r.stdout
    );

    // Rollout: the bucket is the documented hash.
    let b = rollout_bucket("pilot", &inside);
    let r = explain(&inside, "retail", "rollout-in");
    assert_ok(&r, "explain rollout");
    let rule = format!("rollout retail:pilot 30.00% (bucket {b}) -> local-new");
    assert!(
        r.stdout.contains(&format!("{rule} -- CHOSEN")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains(&format!("backend: local-new (by {rule})")),
        "{}",
        r.stdout
    );

    // Outside the rollout: the tier default, and why the rollout did not apply.
    let b = rollout_bucket("pilot", &outside);
    let r = explain(&outside, "retail", "rollout-out");
    assert_ok(&r, "explain default");
    assert!(
        r.stdout
            .contains(&format!("no: bucket {b} is not below 3000")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("backend: local (by tier retail -> local)"),
        "{}",
        r.stdout
    );
    // No class named for the tier or the account: the default, and explain says so.
    assert!(
        r.stdout
            .contains("priority: standard (by default -> standard)"),
        "{}",
        r.stdout
    );

    // The rollout is for retail only.
    let r = explain(&inside, "institutional", "other-tier");
    assert_ok(&r, "explain institutional");
    assert!(!r.stdout.contains("rollout"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("backend: local (by tier institutional -> local)"),
        "{}",
        r.stdout
    );

    // An undeclared tier is an error, even for a pinned account.
    let r = explain("acct-9", "Retail", "unknown-tier");
    assert_fails(&r, "unknown tier");
    assert!(r.stderr.contains("unknown tier \"Retail\""), "{}", r.stderr);

    // An id outside the grammar is refused.
    let r = explain("a/b", "retail", "bad-id");
    assert_fails(&r, "bad account id");
    assert!(r.stderr.contains("account id must match"), "{}", r.stderr);
}

#[tokio::test]
async fn explain_refuses_an_invalid_policy() {
    let logs = common::log_dir("policy_explain_invalid");
    let s = Setup::new(StoreKind::Sqlite)
        .await
        .unwrap()
        .with_rules(&[("acct-1", "nowhere")], vec![]);
    let r = cli(
        &[
            "policy",
            "explain",
            "--config",
            s.arg(),
            "--account",
            "acct-1",
            "--tier",
            "retail",
        ],
        &[],
        &logs,
        "explain",
    );
    assert_fails(&r, "explain with a broken policy");
    assert!(
        r.stderr.contains("names backend \"nowhere\""),
        "{}",
        r.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// policy explain, tier from the store
// ---------------------------------------------------------------------------------------------

/// PUT an account through the HTTP API of an in-process gateway on the same config.
async fn create_account(s: &Setup, account: &str, tier: &str) {
    let (state, _) = shardgate::AppState::build(&s.cfg).await.unwrap();
    let req = Request::builder()
        .method("PUT")
        .uri(format!("/v1/accounts/{account}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", s.tokens.admin))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!("{{\"tier\":\"{tier}\"}}")))
        .unwrap();
    let resp = shardgate::router(state).oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 201, "PUT account {account}");
}

async fn explain_reads_the_tier_from_the_store(kind: StoreKind) {
    let logs = common::log_dir(&format!("policy_explain_store_{kind:?}"));
    let Some(s) = Setup::new(kind).await else {
        return;
    };
    let inside = account_where("inst-pilot", |b| b < 5_000);
    let s = s.with_rules(
        &[],
        vec![rollout("inst-pilot", "institutional", "local-new", 50.0)],
    );
    create_account(&s, &inside, "institutional").await;
    create_account(&s, "acct-retail", "retail").await;

    let explain = |account: &str, name: &str| {
        cli(
            &[
                "policy",
                "explain",
                "--config",
                s.arg(),
                "--account",
                account,
            ],
            &[],
            &logs,
            name,
        )
    };
    let r = explain(&inside, "institutional");
    assert_ok(&r, "explain from store");
    assert!(r.stdout.contains("(tier institutional)"), "{}", r.stdout);
    let b = rollout_bucket("inst-pilot", &inside);
    assert!(
        r.stdout.contains(&format!(
            "backend: local-new (by rollout institutional:inst-pilot 50.00% (bucket {b}) -> local-new)"
        )),
        "{}",
        r.stdout
    );

    let r = explain("acct-retail", "retail");
    assert_ok(&r, "explain retail from store");
    assert!(r.stdout.contains("(tier retail)"), "{}", r.stdout);
    // No tier rule applies: the tier is the one the account asked for, and explain says so.
    assert!(
        r.stdout
            .contains("tier retail (by asked for; asked for retail; attributes {})"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("backend: local (by tier retail -> local)"),
        "{}",
        r.stdout
    );

    // Ids are exact bytes: a different case is another, missing account.
    let r = explain("ACCT-retail", "missing");
    assert_fails(&r, "missing account");
    assert!(
        r.stderr.contains("account \"ACCT-retail\" does not exist"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
}

#[tokio::test]
async fn explain_reads_the_tier_from_sqlite() {
    explain_reads_the_tier_from_the_store(StoreKind::Sqlite).await;
}

#[tokio::test]
async fn explain_reads_the_tier_from_postgres() {
    explain_reads_the_tier_from_the_store(StoreKind::Postgres).await;
}

#[tokio::test]
async fn explain_without_a_database_says_the_account_does_not_exist() {
    let logs = common::log_dir("policy_explain_no_db");
    let s = Setup::new(StoreKind::Sqlite).await.unwrap();
    let db = s.dir.path().join("test.db");
    assert!(!db.exists());
    let r = cli(
        &[
            "policy",
            "explain",
            "--config",
            s.arg(),
            "--account",
            "acct-1",
        ],
        &[],
        &logs,
        "no-db",
    );
    assert_fails(&r, "no database");
    assert!(
        r.stderr.contains("account \"acct-1\" does not exist"),
        "{}",
        r.stderr
    );
    // Explaining did not create an empty database as a side effect.
    assert!(!db.exists());
}

// ---------------------------------------------------------------------------------------------
// policy apply
// ---------------------------------------------------------------------------------------------

/// `policy apply FILE --dry-run` shows the accounts a file's rules move and commits nothing;
/// without it the file becomes the next version, which `policy explain` and a gateway started
/// with the OLD config file both use (the file seeds an empty database only).
#[tokio::test]
async fn apply_shows_the_change_then_commits_the_next_version() {
    let logs = common::log_dir("policy_apply");
    let Some(s) = Setup::new(StoreKind::Sqlite).await else {
        return;
    };
    create_account(&s, "acct-r1", "retail").await;
    create_account(&s, "acct-r2", "retail").await;
    create_account(&s, "acct-i1", "institutional").await;
    let file = s.dir.path().join("next.toml");
    std::fs::write(
        &file,
        "[tiers]\nretail = \"local-new\"\ninstitutional = \"local\"\n\n\
         [[policy.pins]]\naccount = \"acct-i1\"\nbackend = \"local-new\"\n",
    )
    .unwrap();
    let apply = |extra: &[&str], name: &str| {
        let mut args = vec![
            "policy",
            "apply",
            file.to_str().unwrap(),
            "--config",
            s.arg(),
        ];
        args.extend_from_slice(extra);
        cli(&args, &[], &logs, name)
    };
    let r = apply(&["--dry-run"], "dry-run");
    assert_ok(&r, "dry run");
    assert!(
        r.stdout
            .contains("policy version 1 -> 2 (dry run: nothing committed)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("accounts: 3 scanned, 3 change backend"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("2 accounts of tier retail: local -> local-new by tier retail -> local-new"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("pin acct-i1: (none) -> local-new"),
        "{}",
        r.stdout
    );
    let explain = |name: &str| {
        cli(
            &[
                "policy",
                "explain",
                "--config",
                s.arg(),
                "--account",
                "acct-r1",
            ],
            &[],
            &logs,
            name,
        )
    };
    let r = explain("explain-v1");
    assert_ok(&r, "explain v1");
    assert!(
        r.stdout
            .contains("backend: local (by tier retail -> local)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("(rules of policy version 1 (database))"),
        "{}",
        r.stdout
    );

    let r = apply(&[], "apply");
    assert_ok(&r, "apply");
    assert!(
        r.stdout.contains("policy version 1 -> 2 committed"),
        "{}",
        r.stdout
    );
    let r = explain("explain-v2");
    assert_ok(&r, "explain v2");
    assert!(
        r.stdout
            .contains("backend: local-new (by tier retail -> local-new)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("(rules of policy version 2 (database))"),
        "{}",
        r.stdout
    );
    // Applying it again changes nothing; a stale --expected-version is refused.
    let r = apply(&[], "again");
    assert_ok(&r, "again");
    assert!(
        r.stdout
            .contains("policy version 2: no rule changes, nothing committed"),
        "{}",
        r.stdout
    );
    let r = apply(&["--expected-version", "1"], "stale");
    assert_fails(&r, "stale expected version");
    assert!(r.stderr.contains("not 1"), "{}", r.stderr);
    // A gateway started with the old config file serves version 2.
    let (state, _) = shardgate::AppState::build(&s.cfg).await.unwrap();
    assert_eq!(state.policy.version(), 2);
    assert_eq!(
        state.policy.place("acct-r2", "retail").unwrap().backend,
        "local-new"
    );
}

/// A `policy apply` killed between committing its version and its re-tier pass leaves the
/// pass due, and a running replica's migration supervisor finishes it: the account the new
/// tier rule derives moves once (audited as `policy retier`), the other stays, and the pass
/// is marked done.
#[tokio::test]
async fn a_re_tier_pass_cut_by_a_crash_after_the_commit_is_finished_by_a_running_replica() {
    for kind in [StoreKind::Sqlite, StoreKind::Postgres] {
        let Some(mut s) = Setup::new(kind).await else {
            continue;
        };
        s.cfg.migration.poll_interval_ms = 100;
        common::write_config(&s.cfg, &s.path);
        resumed_pass(&s, &format!("{kind:?}")).await;
    }
}

async fn resumed_pass(s: &Setup, name: &str) {
    use common::served::{Served, DEADLINE};
    let logs = common::log_dir("policy_retier_resumed");
    let gw = Served::start(&s.path, "policy_retier_resumed", name);
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Option<serde_json::Value>| {
        let mut req = http
            .request(method, format!("{}{path}", gw.base))
            .bearer_auth(&s.tokens.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    for (account, users) in [("acct-big", 60_000), ("acct-small", 10)] {
        let body = serde_json::json!({"tier": "retail", "attributes": {"users": users}});
        let (st, v) = call(
            reqwest::Method::PUT,
            format!("/v1/accounts/{account}"),
            Some(body),
        )
        .await;
        assert_eq!(st, 201, "{v}");
    }
    let file = s.dir.path().join("rules.toml");
    std::fs::write(
        &file,
        "[tiers]\nretail = \"local\"\ninstitutional = \"local-new\"\n\n\
         [[policy.tier_rules]]\nname = \"big-custody\"\ntier = \"institutional\"\n\
         from = [\"retail\"]\nany = [{ attribute = \"users\", at_least = 50000 }]\n",
    )
    .unwrap();
    // The apply stops right after its commit (the crash point prints and hangs), and dies.
    let mut cmd = shardgate_command(&[
        "policy",
        "apply",
        file.to_str().unwrap(),
        "--config",
        s.arg(),
    ]);
    cmd.env("SHARDGATE_TEST_FAILPOINT", "policy_after_commit:1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("FAILPOINT policy_after_commit") {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    std::fs::write(logs.join(format!("{name}-apply.stderr.log")), &seen).unwrap();
    assert!(
        seen.contains("FAILPOINT policy_after_commit"),
        "the apply never reached its crash point: {seen}"
    );
    // The replica's supervisor finds the pass due and runs it.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let (_, v) = call(reqwest::Method::GET, "/v1/accounts/acct-big".into(), None).await;
        if v["tier"] == "institutional" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cut pass was never finished: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, v) = call(reqwest::Method::GET, "/v1/accounts/acct-small".into(), None).await;
    assert_eq!(v["tier"], "retail", "{v}");
    let db = common::db::Db::connect(s.cfg.store.url.as_deref().unwrap()).await;
    let moves = "SELECT COUNT(*) FROM audit_events WHERE action = 'account.put' \
                 AND actor = 'policy retier' AND detail LIKE '%by=tier rule big-custody%policy_version=2%'";
    assert_eq!(db.count(moves).await, 1);
    let due = "SELECT COUNT(*) FROM policy_retier WHERE done_ms IS NULL";
    while db.count(due).await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the finished pass is still due"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
