//! The cluster's policy in the database, applied live (issue 30, item 1), over HTTP on both
//! stores with real `local` keyrings: the config file seeds version 1 of an empty database
//! and never overrides a newer version; `PUT /v1/admin/policy` measures a change against
//! every account (a dry run commits nothing), commits it as the next version with its audit
//! event and serves it at once; a second gateway on the same database converges by polling
//! and takes a tier it has not polled yet; `migrate` moves exactly the accounts the dry run
//! listed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use shardgate::app::config::Config;
use std::path::Path;
use std::time::{Duration, Instant};

both_stores!(
    a_dry_run_lists_the_moves_and_an_apply_commits_an_audited_version_served_at_once,
    a_second_gateway_converges_and_takes_a_tier_it_has_not_polled_yet,
    a_restart_with_an_older_config_serves_the_database_version,
    an_apply_is_refused_for_a_removed_tier_in_use_a_stale_version_or_a_prefixed_admin,
    an_apply_with_migrate_moves_exactly_the_accounts_the_dry_run_listed,
    widening_a_rollout_under_traffic_moves_exactly_the_accounts_the_dry_run_listed,
    an_apply_job_also_moves_what_a_replica_on_the_old_version_wrote_after_its_snapshot,
    priority_classes_apply_as_rule_changes_that_move_no_account,
);

/// `retail` and `institutional` on `local`; a second keyring `local-b`.
fn config(dir: &Path, url: &str, tokens: &Tokens) -> Config {
    let mut cfg = common::config(dir, url, tokens);
    cfg.backends
        .insert("local-b".into(), common::local_backend(dir, "local-b"));
    cfg.migration.poll_interval_ms = 100;
    // An apply's jobs look again `refresh_ms + request_ms + 1 s` after it (the straggler
    // window): short here, so that they complete in a few seconds.
    cfg.policy.refresh_ms = 200;
    cfg.timeouts.request_ms = 1000;
    cfg
}

async fn gateway(cfg: &Config) -> (axum::Router, shardgate::AppState) {
    let (state, _) = shardgate::AppState::build(cfg).await.unwrap();
    (shardgate::router(state.clone()), state)
}

struct Env {
    dir: tempfile::TempDir,
    url: String,
    tokens: Tokens,
}

async fn env(kind: StoreKind) -> Option<Env> {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    Some(Env {
        dir,
        url,
        tokens: Tokens::new(),
    })
}

impl Env {
    fn config(&self) -> Config {
        config(self.dir.path(), &self.url, &self.tokens)
    }
}

async fn call(
    app: &axum::Router,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    common::call(app, token, method, path, body).await
}

/// The policy body of tiers `pairs` (and no pins or rollouts).
fn tiers(pairs: &[(&str, &str)]) -> Value {
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(t, b)| (t.to_string(), json!(b)))
        .collect();
    json!({ "tiers": map })
}

async fn apply(app: &axum::Router, token: &str, body: Value) -> (StatusCode, Value) {
    call(app, token, "PUT", "/v1/admin/policy", Some(body)).await
}

async fn served_version(app: &axum::Router, token: &str) -> i64 {
    let (s, v) = call(app, token, "GET", "/v1/admin/policy", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["version"].as_i64().unwrap()
}

async fn create(app: &axum::Router, token: &str, account: &str, tier: &str) -> Value {
    let (s, v) = call(
        app,
        token,
        "PUT",
        &format!("/v1/accounts/{account}"),
        Some(json!({ "tier": tier })),
    )
    .await;
    assert!(s == StatusCode::CREATED || s == StatusCode::OK, "{s} {v}");
    v
}

async fn put_shard(app: &axum::Router, token: &str, account: &str) {
    let (s, v) = call(
        app,
        token,
        "PUT",
        &format!("/v1/accounts/{account}/shards/s"),
        Some(json!({ "shard": B64.encode(format!("{account} bytes")) })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

async fn a_dry_run_lists_the_moves_and_an_apply_commits_an_audited_version_served_at_once(
    kind: StoreKind,
) {
    let Some(env) = env(kind).await else { return };
    let (app, _state) = gateway(&env.config()).await;
    let admin = &env.tokens.admin;
    // The config file seeded version 1.
    let (s, v) = call(&app, admin, "GET", "/v1/admin/policy", None).await;
    assert_eq!((s, v["version"].as_i64()), (StatusCode::OK, Some(1)), "{v}");
    assert_eq!(v["policy"]["tiers"]["retail"], "local", "{v}");
    for i in 0..5 {
        create(&app, admin, &format!("acct-r{i}"), "retail").await;
    }
    create(&app, admin, "acct-i0", "institutional").await;
    let next = tiers(&[
        ("retail", "local-b"),
        ("institutional", "local"),
        ("gold", "local-b"),
    ]);
    let (s, dry) = apply(&app, admin, json!({ "policy": next, "dry_run": true })).await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert_eq!(
        (
            dry["applied"].as_bool(),
            dry["from_version"].as_i64(),
            dry["version"].as_i64()
        ),
        (Some(false), Some(1), Some(2)),
        "{dry}"
    );
    assert_eq!(dry["accounts_scanned"], 6, "{dry}");
    assert_eq!(dry["moved_total"], 5, "{dry}");
    assert_eq!(dry["moves"][0]["from_backend"], "local", "{dry}");
    assert_eq!(dry["moves"][0]["to_backend"], "local-b", "{dry}");
    assert_eq!(dry["moves"][0]["downgrade"], false, "{dry}");
    let listed: Vec<&str> = dry["moved_accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        ["acct-r0", "acct-r1", "acct-r2", "acct-r3", "acct-r4"]
    );
    let kinds: Vec<(&str, &str)> = dry["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["name"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("tier", "gold"), ("tier", "retail")]);
    // The dry run committed nothing: still version 1, new retail accounts still on local.
    assert_eq!(served_version(&app, admin).await, 1);
    assert_eq!(
        create(&app, admin, "acct-r9", "retail").await["backend"],
        "local"
    );
    let db = Db::connect(&env.url).await;
    assert_eq!(db.count("SELECT COUNT(*) FROM policy_versions").await, 1);
    // The apply: version 2, audited with the diff, served here at once.
    let (s, done) = apply(&app, admin, json!({ "policy": next })).await;
    assert_eq!(
        (s, done["applied"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{done}"
    );
    assert_eq!(done["moved_total"], 6, "{done}");
    assert_eq!(served_version(&app, admin).await, 2);
    assert_eq!(
        create(&app, admin, "acct-r10", "retail").await["backend"],
        "local-b"
    );
    assert_eq!(
        create(&app, admin, "acct-g", "gold").await["backend"],
        "local-b"
    );
    let audited = db
        .count(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'policy.apply' AND actor = 'admin' \
             AND outcome = 'ok' AND detail LIKE 'version=2 from=1 moved_accounts=6%tier retail: local -> local-b%'",
        )
        .await;
    assert_eq!(audited, 1);
    // The history: version 1 as it was, a version that does not exist, a bad query.
    let (s, v1) = call(&app, admin, "GET", "/v1/admin/policy?version=1", None).await;
    assert_eq!(
        (s, v1["version"].as_i64()),
        (StatusCode::OK, Some(1)),
        "{v1}"
    );
    assert_eq!(v1["policy"]["tiers"]["retail"], "local", "{v1}");
    assert!(v1["policy"]["tiers"].get("gold").is_none(), "{v1}");
    let (s, v) = call(&app, admin, "GET", "/v1/admin/policy?version=9", None).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "{v}"
    );
    let (s, _) = call(&app, admin, "GET", "/v1/admin/policy?versoin=1", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // The same document again: no change, no version.
    let (s, same) = apply(&app, admin, json!({ "policy": next })).await;
    assert_eq!(
        (s, same["applied"].as_bool()),
        (StatusCode::OK, Some(false)),
        "{same}"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM policy_versions").await, 2);
    // /readyz (with a metrics credential) and /metrics report the version.
    let (_, ready) = call(&app, admin, "GET", "/readyz", None).await;
    assert_eq!(ready["policy_version"], 2, "{ready}");
    let metrics = common::scrape(&app, admin).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("shardgate_policy_version ")),
        "{metrics}"
    );
}

async fn a_second_gateway_converges_and_takes_a_tier_it_has_not_polled_yet(kind: StoreKind) {
    let Some(env) = env(kind).await else { return };
    let cfg = env.config();
    let (a, _sa) = gateway(&cfg).await;
    let (b, sb) = gateway(&cfg).await;
    let (c, sc) = gateway(&cfg).await;
    let admin = &env.tokens.admin;
    // B does not poll: a tier only version 2 declares is still placed there, because a tier
    // B does not serve makes it read the database's head before refusing.
    let (s, v) = apply(&a, admin, json!({ "policy": tiers(&[("retail", "local"), ("institutional", "local"), ("gold", "local-b")]) })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(served_version(&a, admin).await, 2);
    assert_eq!(sb.policy.version(), 1);
    assert_eq!(
        create(&b, admin, "acct-g", "gold").await["backend"],
        "local-b"
    );
    assert_eq!(sb.policy.version(), 2);
    // A shard write to that account through C, still on version 1, is placed too.
    assert_eq!(sc.policy.version(), 1);
    put_shard(&c, admin, "acct-g").await;
    assert_eq!(sc.policy.version(), 2);
    // An unknown tier is still refused after that read.
    let (s, v) = call(
        &b,
        admin,
        "PUT",
        "/v1/accounts/acct-x",
        Some(json!({"tier": "platinum"})),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, Some("unknown_tier")),
        "{v}"
    );
    // Polling: version 3 reaches B without a request asking for it.
    sb.start_policy_refresh(Duration::from_millis(100));
    let (s, v) = apply(&a, admin, json!({ "policy": tiers(&[("retail", "local-b"), ("institutional", "local"), ("gold", "local-b")]) })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sb.policy.version() < 3 {
        assert!(
            Instant::now() < deadline,
            "B still serves {}",
            sb.policy.version()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        create(&b, admin, "acct-r", "retail").await["backend"],
        "local-b"
    );
}

async fn a_restart_with_an_older_config_serves_the_database_version(kind: StoreKind) {
    let Some(env) = env(kind).await else { return };
    let cfg = env.config();
    let admin = &env.tokens.admin;
    {
        let (a, _) = gateway(&cfg).await;
        let (s, v) = apply(
            &a,
            admin,
            json!({ "policy": tiers(&[("retail", "local-b"), ("institutional", "local")]) }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    // The same (now older) config file: the database's version 2 is served, not the file's.
    let (again, _) = gateway(&cfg).await;
    let (s, v) = call(&again, admin, "GET", "/v1/admin/policy", None).await;
    assert_eq!((s, v["version"].as_i64()), (StatusCode::OK, Some(2)), "{v}");
    assert_eq!(v["policy"]["tiers"]["retail"], "local-b", "{v}");
    assert_eq!(
        create(&again, admin, "acct-r", "retail").await["backend"],
        "local-b"
    );
    let db = Db::connect(&env.url).await;
    assert_eq!(db.count("SELECT COUNT(*) FROM policy_versions").await, 2);
}

async fn an_apply_is_refused_for_a_removed_tier_in_use_a_stale_version_or_a_prefixed_admin(
    kind: StoreKind,
) {
    let Some(env) = env(kind).await else { return };
    let (app, _) = gateway(&env.config()).await;
    let admin = &env.tokens.admin;
    create(&app, admin, "acct-i", "institutional").await;
    // Removing a tier an account is in.
    let (s, v) = apply(
        &app,
        admin,
        json!({ "policy": tiers(&[("retail", "local")]) }),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("institutional (1)"),
        "{v}"
    );
    // A backend this gateway does not configure.
    let (s, v) = apply(
        &app,
        admin,
        json!({ "policy": tiers(&[("retail", "nope"), ("institutional", "local")]) }),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{v}"
    );
    // A stale expected_version.
    let body = json!({ "policy": tiers(&[("retail", "local-b"), ("institutional", "local")]), "expected_version": 7 });
    let (s, v) = apply(&app, admin, body).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, Some("version_conflict")),
        "{v}"
    );
    // An admin-less token, and unknown fields.
    let body = json!({ "policy": tiers(&[("retail", "local-b"), ("institutional", "local")]) });
    let (s, v) = apply(&app, &env.tokens.prefixed, body.clone()).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );
    let (s, v) = call(&app, &env.tokens.reader, "GET", "/v1/admin/policy", None).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );
    let (s, v) = apply(
        &app,
        admin,
        json!({ "policy": body["policy"], "dryrun": true }),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Nothing was committed by any of them.
    assert_eq!(served_version(&app, admin).await, 1);
    let (s, v) = apply(
        &app,
        admin,
        json!({ "policy": body["policy"], "expected_version": 1 }),
    )
    .await;
    assert_eq!((s, v["version"].as_i64()), (StatusCode::OK, Some(2)), "{v}");
}

async fn an_apply_with_migrate_moves_exactly_the_accounts_the_dry_run_listed(kind: StoreKind) {
    let Some(env) = env(kind).await else { return };
    let (app, state) = gateway(&env.config()).await;
    state.start_migration_workers();
    let admin = &env.tokens.admin;
    for i in 0..40 {
        let account = format!("acct-{i:02}");
        create(&app, admin, &account, "retail").await;
        put_shard(&app, admin, &account).await;
    }
    create(&app, admin, "acct-i", "institutional").await;
    put_shard(&app, admin, "acct-i").await;
    // 30% of retail on local-b.
    let policy = json!({
        "tiers": {"retail": "local", "institutional": "local"},
        "rollouts": [{"name": "b-pilot", "tier": "retail", "backend": "local-b", "percent": 30.0}],
    });
    let (s, dry) = apply(&app, admin, json!({ "policy": policy, "dry_run": true })).await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    let mut listed: Vec<String> = dry["moved_accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(!listed.is_empty() && listed.len() < 40, "{dry}");
    let (s, done) = apply(&app, admin, json!({ "policy": policy, "migrate": true })).await;
    assert_eq!(s, StatusCode::OK, "{done}");
    let jobs = done["migration_jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{done}");
    let job = jobs[0].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, j) = call(
            &app,
            admin,
            "GET",
            &format!("/v1/admin/migrations/{job}"),
            None,
        )
        .await;
        if j["state"] == "completed" {
            assert_eq!(j["done"].as_u64(), Some(listed.len() as u64), "{j}");
            break;
        }
        assert!(Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let db = Db::connect(&env.url).await;
    let mut moved: Vec<String> = db
        .all_bytes("SELECT account FROM shard_versions WHERE backend = 'local-b'")
        .await
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    moved.sort();
    listed.sort();
    assert_eq!(moved, listed);
}

/// The job's state once it is no longer `running` (60 s at most).
async fn finished(app: &axum::Router, admin: &str, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, j) = call(
            app,
            admin,
            "GET",
            &format!("/v1/admin/migrations/{job}"),
            None,
        )
        .await;
        if j["state"] != "running" {
            return j;
        }
        assert!(Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn an_apply_job_also_moves_what_a_replica_on_the_old_version_wrote_after_its_snapshot(
    kind: StoreKind,
) {
    let Some(env) = env(kind).await else { return };
    let cfg = env.config();
    let (a, sa) = gateway(&cfg).await;
    // B does not poll: until it reads the head it places by version 1 (retail on local).
    let (b, sb) = gateway(&cfg).await;
    sa.start_migration_workers();
    let admin = &env.tokens.admin;
    let accounts: Vec<String> = (0..6).map(|i| format!("acct-{i:02}")).collect();
    for account in &accounts {
        create(&a, admin, account, "retail").await;
        put_shard(&a, admin, account).await;
    }
    let body = json!({ "policy": tiers(&[("retail", "local-b"), ("institutional", "local")]), "migrate": true });
    let (s, done) = apply(&a, admin, body).await;
    assert_eq!(s, StatusCode::OK, "{done}");
    let job = done["migration_jobs"][0].as_str().unwrap().to_string();
    // Stragglers: new versions placed by B on the old backend, after the job's snapshot.
    for account in &accounts {
        put_shard(&b, admin, account).await;
    }
    assert_eq!(sb.policy.version(), 1);
    let db = Db::connect(&env.url).await;
    assert_eq!(accounts_on(&db, "local").await, accounts);
    let j = finished(&a, admin, &job).await;
    assert_eq!(j["state"], "completed", "{j}");
    // Moved: the six versions of the snapshot and the six of the second look.
    assert_eq!(
        (j["total"].as_i64(), j["done"].as_i64()),
        (Some(12), Some(12)),
        "{j}"
    );
    assert!(j.get("catch_up_at").is_none(), "{j}");
    assert_eq!(accounts_on(&db, "local").await, Vec::<String>::new());
    assert_eq!(accounts_on(&db, "local-b").await, accounts);
}

/// Accounts with at least one shard version on `backend`, sorted.
async fn accounts_on(db: &Db, backend: &str) -> Vec<String> {
    let mut on: Vec<String> = db
        .all_bytes(&format!(
            "SELECT DISTINCT account FROM shard_versions WHERE backend = '{backend}'"
        ))
        .await
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    on.sort();
    on
}

async fn widening_a_rollout_under_traffic_moves_exactly_the_accounts_the_dry_run_listed(
    kind: StoreKind,
) {
    let Some(env) = env(kind).await else { return };
    let (app, state) = gateway(&env.config()).await;
    state.start_migration_workers();
    let admin = env.tokens.admin.clone();
    let accounts: Vec<String> = (0..30).map(|i| format!("acct-{i:02}")).collect();
    for a in &accounts {
        create(&app, &admin, a, "retail").await;
        put_shard(&app, &admin, a).await;
    }
    let rollout = |percent: f64| {
        json!({
            "tiers": {"retail": "local", "institutional": "local"},
            "rollouts": [{"name": "b-pilot", "tier": "retail", "backend": "local-b", "percent": percent}],
        })
    };
    let (s, v) = apply(
        &app,
        &admin,
        json!({ "policy": rollout(20.0), "migrate": true }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Traffic: new versions of every account's shard, all along, across the commit too: a
    // write placed under the old version and stored after the job's snapshot is taken by the
    // job's second look.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (app, admin, accounts) = (app.clone(), admin.clone(), accounts.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut writes = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for a in &accounts {
                    put_shard(&app, &admin, a).await;
                    writes += 1;
                }
            }
            writes
        })
    };
    // Widened to 50%: the dry run lists the accounts it adds, which the 20% step did not take.
    let (s, dry) = apply(
        &app,
        &admin,
        json!({ "policy": rollout(50.0), "dry_run": true }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    let added: Vec<String> = dry["moved_accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(!added.is_empty(), "{dry}");
    let (s, done) = apply(
        &app,
        &admin,
        json!({ "policy": rollout(50.0), "migrate": true }),
    )
    .await;
    assert_eq!(
        (s, done["moved_accounts"].clone()),
        (StatusCode::OK, dry["moved_accounts"].clone()),
        "{done}"
    );
    let job = done["migration_jobs"][0].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, j) = call(
            &app,
            &admin,
            "GET",
            &format!("/v1/admin/migrations/{job}"),
            None,
        )
        .await;
        if j["state"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = writer.await.unwrap();
    assert!(writes >= 30, "traffic ran: {writes} writes");
    // Every version of exactly the 50% set is on local-b: the 20% set plus what the dry run
    // added, nothing else (monotone widening), old versions re-wrapped, new ones placed there.
    let db = Db::connect(&env.url).await;
    let on_b = accounts_on(&db, "local-b").await;
    let on_local = accounts_on(&db, "local").await;
    assert!(
        on_b.iter().all(|a| !on_local.contains(a)),
        "{on_b:?} vs {on_local:?}"
    );
    for a in &added {
        assert!(on_b.contains(a), "{a} was listed but not moved: {on_b:?}");
    }
    let want: Vec<String> = accounts
        .iter()
        .filter(|a| shardgate_policy::rollout_bucket("b-pilot", a) < 5_000)
        .cloned()
        .collect();
    assert_eq!(on_b, want);
}

async fn priority_classes_apply_as_rule_changes_that_move_no_account(kind: StoreKind) {
    let Some(env) = env(kind).await else { return };
    let (app, state) = gateway(&env.config()).await;
    let admin = &env.tokens.admin;
    create(&app, admin, "acct-i", "institutional").await;
    let mut policy = tiers(&[("retail", "local"), ("institutional", "local")]);
    policy["priorities"] = json!({ "institutional": "critical", "retail": "bulk" });
    policy["account_priorities"] = json!({ "acct-i": "standard" });
    let (s, v) = apply(&app, admin, json!({ "policy": policy.clone() })).await;
    assert_eq!((s, v["version"].as_i64()), (StatusCode::OK, Some(2)), "{v}");
    let kinds: Vec<(&str, &str)> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("tier_priority", "institutional"),
            ("tier_priority", "retail"),
            ("account_priority", "acct-i")
        ],
        "{v}"
    );
    assert_eq!(v["moved_total"], 0, "a class never moves a shard: {v}");
    // Served at once, and read back as written.
    let (s, got) = call(&app, admin, "GET", "/v1/admin/policy", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["policy"]["priorities"], policy["priorities"], "{got}");
    let served = state.services.policy.current();
    use shardgate_policy::Class;
    assert_eq!(
        served.policy.class_of("acct-i", "institutional"),
        Class::Standard
    );
    assert_eq!(
        served.policy.class_of("acct-x", "institutional"),
        Class::Critical
    );
    // A class for a tier the policy does not declare, or an unknown class: 400, nothing kept.
    let mut bad = policy.clone();
    bad["priorities"] = json!({ "gone": "bulk" });
    let (s, v) = apply(&app, admin, json!({ "policy": bad })).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{v}"
    );
    let mut bad = policy;
    bad["priorities"] = json!({ "retail": "urgent" });
    let (s, v) = apply(&app, admin, json!({ "policy": bad })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(served_version(&app, admin).await, 2);
}
