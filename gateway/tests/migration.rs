//! Tier-migration jobs through the HTTP API (in-process gateway with its migration workers,
//! both stores): a tier change moves every version and the shards read back identical,
//! KEK rotation within `local`, local -> aws-kms -> local on moto, pause / resume / cancel,
//! failing rows, reads that keep working and user writes that win while a job runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use shardgate::app::config::BackendConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

struct Gw {
    app: axum::Router,
    state: shardgate::AppState,
    tokens: Tokens,
    db: Db,
    dir: tempfile::TempDir,
}

/// Backends `local` (tier retail) and `vault` (a second local keyring, tier gold), plus
/// `kms` (tier kms) on moto when `with_kms`. Workers poll fast; `rate` re-wraps per second.
async fn setup(kind: StoreKind, rate: u32, with_kms: bool) -> Option<Gw> {
    let moto = if with_kms {
        Some(common::require_env("SHARDGATE_TEST_MOTO_ENDPOINT")?)
    } else {
        None
    };
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.backends
        .insert("vault".into(), common::local_backend(dir.path(), "vault"));
    cfg.tiers.insert("gold".into(), "vault".into());
    if let Some(endpoint) = moto {
        let kms = common::moto_kms(&endpoint).await;
        cfg.backends
            .insert("kms".into(), BackendConfig::AwsKms(kms));
        cfg.tiers.insert("kms".into(), "kms".into());
    }
    cfg.migration.rate_per_sec = rate;
    cfg.migration.poll_interval_ms = 200;
    cfg.migration.batch_size = 4;
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    state.start_migration_workers();
    Some(Gw {
        app: shardgate::router(state.clone()),
        state,
        tokens,
        db: Db::connect(&url).await,
        dir,
    })
}

impl Gw {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        common::call(&self.app, &self.tokens.admin, method, path, body).await
    }

    async fn account(&self, account: &str, tier: &str) -> Value {
        self.account_with(account, json!({ "tier": tier })).await
    }

    /// [`Gw::account`] confirming a move that lowers the account's protection (the admin
    /// token holds `admin`).
    async fn account_downgraded(&self, account: &str, tier: &str) -> Value {
        self.account_with(account, json!({ "tier": tier, "allow_downgrade": true }))
            .await
    }

    async fn account_with(&self, account: &str, body: Value) -> Value {
        let (s, v) = self
            .call("PUT", &format!("/v1/accounts/{account}"), Some(body))
            .await;
        assert!(s == StatusCode::CREATED || s == StatusCode::OK, "{v}");
        v
    }

    fn data(account: &str, shard: &str, version: u32) -> Vec<u8> {
        format!("{account}/{shard}/v{version}: secret shard bytes").into_bytes()
    }

    async fn put(&self, account: &str, shard: &str, data: &[u8]) -> i64 {
        let (s, v) = self
            .call(
                "PUT",
                &format!("/v1/accounts/{account}/shards/{shard}"),
                Some(json!({ "shard": B64.encode(data) })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["version"].as_i64().unwrap()
    }

    async fn get(&self, account: &str, shard: &str, version: Option<i64>) -> (StatusCode, Value) {
        let q = version.map(|v| format!("?version={v}")).unwrap_or_default();
        self.call(
            "GET",
            &format!("/v1/accounts/{account}/shards/{shard}{q}"),
            None,
        )
        .await
    }

    async fn read(&self, account: &str, shard: &str, version: i64) -> Vec<u8> {
        let (s, v) = self.get(account, shard, Some(version)).await;
        assert_eq!(s, StatusCode::OK, "{account}/{shard} v{version}: {v}");
        B64.decode(v["shard"].as_str().unwrap()).unwrap()
    }

    /// `n` shards with `versions` versions each; returns (shard, version, bytes).
    async fn load(&self, account: &str, n: usize, versions: u32) -> Vec<(String, i64, Vec<u8>)> {
        let mut out = Vec::new();
        for i in 0..n {
            let shard = format!("s{i:03}");
            for v in 1..=versions {
                let data = Self::data(account, &shard, v);
                let got = self.put(account, &shard, &data).await;
                assert_eq!(got, i64::from(v));
                out.push((shard.clone(), got, data));
            }
        }
        out
    }

    async fn job(&self, id: &str) -> Value {
        let (s, v) = self
            .call("GET", &format!("/v1/admin/migrations/{id}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// Poll until the job is no longer running (or `secs` pass).
    async fn settle(&self, id: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.job(id).await;
            if v["state"] != "running" {
                return v;
            }
            assert!(Instant::now() < deadline, "job never settled: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// This process's migration workers.
    fn supervisor(&self) -> &dyn shardgate::service::state::JobRunner {
        self.state
            .migrations
            .get()
            .expect("the migration workers were started")
            .as_ref()
    }

    /// Wait until no worker of this process is on job `id` any more (its in-flight items
    /// committed or dropped), then until a whole scan for running jobs has begun and ended
    /// after that: from then on, whatever that scan would have taken up it has.
    async fn workers_let_go(&self, id: &str) {
        let sup = self.supervisor();
        let deadline = Instant::now() + Duration::from_secs(30);
        while sup.working_on(id) {
            assert!(Instant::now() < deadline, "a worker kept job {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The scan running now may have begun before the worker let go: wait for the next.
        let scans = sup.scans();
        while sup.scans() < scans + 2 {
            assert!(Instant::now() < deadline, "the workers stopped scanning");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until a write of this gateway waits for the held audit chain; on PostgreSQL,
    /// where a write holding rows waits a bounded time, also until writes gave up on it, rolled
    /// back and tried again twice more than `busy_since` (`Auditor::chain_busy_count`).
    async fn chain_met_by_a_write(&self, busy_since: u64) {
        let audit = &self.state.audit;
        let deadline = Instant::now() + Duration::from_secs(30);
        while audit.chain_waiters() == 0
            || (self.db.is_pg() && audit.chain_busy_count() < busy_since + 2)
        {
            assert!(Instant::now() < deadline, "no write met the held chain");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn backends_of(&self, account: &str) -> Vec<String> {
        strings(
            &self.db,
            &format!(
                "SELECT backend FROM shard_versions WHERE account = '{account}' ORDER BY shard, version"
            ),
        )
        .await
    }

    async fn sealed_bytes(&self, account: &str) -> Vec<Vec<u8>> {
        let mut out = self
            .db
            .all_bytes(&format!(
                "SELECT nonce FROM shard_versions WHERE account = '{account}' ORDER BY shard, version"
            ))
            .await;
        out.extend(
            self.db
                .all_bytes(&format!(
                    "SELECT ciphertext FROM shard_versions WHERE account = '{account}' ORDER BY shard, version"
                ))
                .await,
        );
        out
    }
}

/// No gap in any audit chain: every event from 1 to the head is stored once.
async fn assert_chains_gapless(db: &Db) {
    let counts = strings(
        db,
        "SELECT CAST(COUNT(*) AS TEXT) || ' ' || CAST(MAX(seq) AS TEXT) FROM audit_events GROUP BY chain_id",
    )
    .await;
    for c in counts {
        let (n, max) = c.split_once(' ').unwrap();
        assert_eq!(n, max, "a chain has a gap");
    }
}

async fn strings(db: &Db, sql: &str) -> Vec<String> {
    db.all_bytes(sql)
        .await
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect()
}

async fn tier_change_moves_every_version_and_reads_back_identical(gw: Gw) {
    gw.account("acct-m", "retail").await;
    let shards = gw.load("acct-m", 6, 2).await;
    let sealed = gw.sealed_bytes("acct-m").await;
    let v = gw.account("acct-m", "gold").await;
    assert_eq!(v["backend"], "vault");
    let job = v["migration_job"]
        .as_str()
        .expect("a tier change starts a job")
        .to_string();
    let done = gw.settle(&job, 30).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(
        (done["total"].as_i64(), done["done"].as_i64()),
        (Some(12), Some(12))
    );
    assert_eq!(done["failed"], 0);
    for (shard, version, data) in &shards {
        assert_eq!(&gw.read("acct-m", shard, *version).await, data);
    }
    assert!(gw.backends_of("acct-m").await.iter().all(|b| b == "vault"));
    // Only the wrapped DEK moved: nonces and ciphertexts are byte-identical.
    assert_eq!(gw.sealed_bytes("acct-m").await, sealed);
    let (_, acct) = gw.call("GET", "/v1/accounts/acct-m", None).await;
    assert_eq!(acct["versions_on_other_backends"], 0, "{acct}");
    // One audit event per re-wrapped row, and the job's start and end.
    let rewraps = gw
        .db
        .count("SELECT COUNT(*) FROM audit_events WHERE action = 'migration.rewrap' AND outcome = 'ok'")
        .await;
    assert_eq!(rewraps, 12);
    for action in ["migration.start", "migration.completed"] {
        let n = gw
            .db
            .count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE action = '{action}'"
            ))
            .await;
        assert_eq!(n, 1, "{action}");
    }
    // Running the same job's selector again finds nothing to move.
    let (s, v) = gw
        .call(
            "POST",
            "/v1/admin/migrations",
            Some(json!({"account": "acct-m"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let again = gw.settle(v["job"].as_str().unwrap(), 30).await;
    assert_eq!(
        (again["done"].as_i64(), again["skipped"].as_i64()),
        (Some(0), Some(12)),
        "{again}"
    );
}

async fn kek_rotation_rewraps_versions_below_the_new_key(gw: Gw) {
    gw.account("acct-k", "retail").await;
    let shards = gw.load("acct-k", 8, 1).await;
    let keyring = gw.dir.path().join("local.keyring");
    let mut k = shardgate_backends::local::Keyring::load(&keyring).unwrap();
    let v2 = k.rotate();
    k.save(&keyring).unwrap();
    // The wrapping version is the key lifecycle's (the database's) decision, not the file's.
    let (s, v) = gw
        .call(
            "POST",
            &format!("/v1/admin/keys/local/{v2}/state"),
            Some(json!({"state": "active"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = gw
        .call(
            "POST",
            "/v1/admin/migrations",
            Some(json!({"from_backend": "local", "key_version_below": v2})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["total"], 8);
    let done = gw.settle(v["job"].as_str().unwrap(), 30).await;
    assert_eq!(
        (done["state"].as_str(), done["done"].as_i64()),
        (Some("completed"), Some(8)),
        "{done}"
    );
    let versions = gw
        .db
        .count(&format!(
            "SELECT COUNT(*) FROM shard_versions WHERE account = 'acct-k' AND key_version = {v2}"
        ))
        .await;
    assert_eq!(versions, 8);
    for (shard, version, data) in &shards {
        assert_eq!(&gw.read("acct-k", shard, *version).await, data);
    }
}

async fn pause_resume_cancel_and_a_failing_row(gw: Gw) {
    gw.account("acct-p", "retail").await;
    let shards = gw.load("acct-p", 24, 1).await;
    // One row that cannot be unwrapped on its source: the job records it and goes on.
    gw.db
        .exec("UPDATE shard_versions SET wrapped_dek = nonce WHERE account = 'acct-p' AND shard = 's005'")
        .await;
    let v = gw.account("acct-p", "gold").await;
    let job = v["migration_job"].as_str().unwrap().to_string();
    let (s, paused) = gw
        .call("POST", &format!("/v1/admin/migrations/{job}/pause"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{paused}");
    assert_eq!(paused["state"], "paused");
    // In-flight items finish and the worker lets go of the job; then a whole scan for
    // running jobs passes it over: nothing moves while paused.
    gw.workers_let_go(&job).await;
    let before = gw.job(&job).await;
    gw.workers_let_go(&job).await;
    let after = gw.job(&job).await;
    assert_eq!(
        (&before["state"], &before["remaining"]),
        (&after["state"], &after["remaining"]),
        "{before} {after}"
    );
    assert_eq!(after["state"], "paused", "{after}");
    assert!(after["remaining"].as_i64().unwrap() > 0, "{after}");
    let (s, again) = gw
        .call("POST", &format!("/v1/admin/migrations/{job}/pause"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{again}");
    let (s, resumed) = gw
        .call("POST", &format!("/v1/admin/migrations/{job}/resume"), None)
        .await;
    assert_eq!(
        (s, resumed["state"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    let done = gw.settle(&job, 30).await;
    assert_eq!(done["state"], "completed_with_errors", "{done}");
    assert_eq!(
        (done["done"].as_i64(), done["failed"].as_i64()),
        (Some(23), Some(1))
    );
    assert_eq!(done["errors"][0]["shard"], "s005", "{done}");
    assert!(done["last_error"].as_str().is_some());
    // The failed row stayed on its source; every other shard reads back on the target.
    let failed_backend = strings(
        &gw.db,
        "SELECT backend FROM shard_versions WHERE account = 'acct-p' AND shard = 's005'",
    )
    .await;
    assert_eq!(failed_backend, vec!["local".to_string()]);
    for (shard, version, data) in shards.iter().filter(|(s, _, _)| s != "s005") {
        assert_eq!(&gw.read("acct-p", shard, *version).await, data);
    }

    // Cancel: moved rows stay moved, the rest stay readable where they are.
    gw.account("acct-c", "retail").await;
    let shards = gw.load("acct-c", 30, 1).await;
    let job = gw.account("acct-c", "gold").await["migration_job"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, cancelled) = gw
        .call("POST", &format!("/v1/admin/migrations/{job}/cancel"), None)
        .await;
    assert_eq!(
        (s, cancelled["state"].as_str()),
        (StatusCode::OK, Some("cancelled")),
        "{cancelled}"
    );
    // The worker lets go of the cancelled job (its in-flight items settled), and no later
    // scan takes it up again.
    gw.workers_let_go(&job).await;
    let end = gw.job(&job).await;
    assert_eq!(end["state"], "cancelled");
    assert!(
        end["remaining"].as_i64().unwrap() > 0,
        "cancel came too late to test: {end}"
    );
    for (shard, version, data) in &shards {
        assert_eq!(&gw.read("acct-c", shard, *version).await, data);
    }
    let (s, _) = gw
        .call("POST", &format!("/v1/admin/migrations/{job}/resume"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
}

async fn reads_keep_working_and_a_user_write_wins_during_a_job(gw: Gw) {
    gw.account("acct-r", "retail").await;
    let shards = Arc::new(gw.load("acct-r", 30, 1).await);
    let gw = Arc::new(gw);
    let job = gw.account("acct-r", "gold").await["migration_job"]
        .as_str()
        .unwrap()
        .to_string();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (gw, shards, stop) = (gw.clone(), shards.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (shard, version, data) in shards.iter() {
                    assert_eq!(&gw.read("acct-r", shard, *version).await, data);
                    reads += 1;
                }
            }
            reads
        })
    };
    // A user write to a shard the job has not reached yet (the job moves s000 first).
    let new = b"written by the user while the job runs".to_vec();
    assert_eq!(gw.put("acct-r", "s029", &new).await, 2);
    let done = gw.settle(&job, 60).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.await.unwrap();
    assert!(reads > 30, "the reader barely ran: {reads}");
    assert_eq!(done["state"], "completed", "{done}");
    let (s, v) = gw.get("acct-r", "s029", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["version"].as_i64(), v["backend"].as_str()),
        (Some(2), Some("vault"))
    );
    assert_eq!(B64.decode(v["shard"].as_str().unwrap()).unwrap(), new);
    assert_eq!(gw.read("acct-r", "s029", 1).await, shards[29].2);
}

async fn a_batch_commit_waits_out_a_busy_audit_chain(gw: Gw) {
    gw.account("acct-c", "retail").await;
    let shards = gw.load("acct-c", 40, 1).await;
    let job = gw.account("acct-c", "gold").await["migration_job"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = gw
        .call("POST", &format!("/v1/admin/migrations/{job}/pause"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A batch claimed before the pause and committed after the resume finds its claims
    // freed and settles its items one at a time, each waiting on the whole chain without
    // rolling back: let it go first, so what meets the held chain below is a batch commit.
    gw.workers_let_go(&job).await;
    let (s, v) = gw
        .call("POST", &format!("/v1/admin/migrations/{job}/resume"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Held for several times a batch's bounded wait: every commit in that time rolls back
    // and is tried again; none may land without the chain. (A batch may have committed
    // between the resume and the hold; counted straight from the database, as an audited
    // admin read would need the chain.)
    let held = gw.state.audit.lock().await.unwrap();
    let busy = gw.state.audit.chain_busy_count();
    let done_sql = format!("SELECT done FROM migration_jobs WHERE id = '{job}'");
    let done_held = gw.db.count(&done_sql).await;
    assert!(done_held < 40, "the job finished before the chain was held");
    // A batch commit waits for the held chain (on PostgreSQL, two gave up and rolled back
    // meanwhile), and the job's count did not move.
    gw.chain_met_by_a_write(busy).await;
    assert_eq!(gw.db.count(&done_sql).await, done_held);
    drop(held);
    let end = gw.settle(&job, 60).await;
    assert_eq!(end["state"], "completed", "{end}");
    assert_eq!(end["done"].as_i64(), Some(40), "{end}");
    for (shard, version, data) in &shards {
        assert_eq!(&gw.read("acct-c", shard, *version).await, data);
    }
    assert!(gw.backends_of("acct-c").await.iter().all(|b| b == "vault"));
    assert_chains_gapless(&gw.db).await;
}

async fn shard_writes_wait_out_a_busy_chain_and_race_tier_changes(gw: Gw) {
    gw.account("acct-w", "retail").await;
    let gw = Arc::new(gw);
    // A write takes the chain only for its audit insert and commit: while the chain is held
    // it cannot finish, and it finishes once the chain is free.
    let held = gw.state.audit.lock().await.unwrap();
    let busy = gw.state.audit.chain_busy_count();
    let put = {
        let gw = gw.clone();
        tokio::spawn(async move {
            gw.put("acct-w", "held", b"written while the chain was held")
                .await
        })
    };
    // The write waits for the held chain (on PostgreSQL it rolled back and tried again,
    // twice) and has not finished.
    gw.chain_met_by_a_write(busy).await;
    assert!(
        !put.is_finished(),
        "a write committed without the audit chain"
    );
    drop(held);
    assert_eq!(put.await.unwrap(), 1);
    assert_eq!(
        gw.read("acct-w", "held", 1).await,
        b"written while the chain was held"
    );
    // Writes take the chain after their row work, holding only the account row's key
    // meanwhile (their foreign key); a tier change takes the chain, then that row, without
    // waiting for them. A write overtaken by a tier change writes again under the new tier,
    // and every write and every tier change succeeds.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let gw = gw.clone();
        tasks.spawn(async move {
            if i % 6 == 5 {
                let tier = if i % 12 == 5 { "gold" } else { "retail" };
                gw.account("acct-w", tier).await;
            } else {
                let data = format!("race {i}").into_bytes();
                let v = gw.put("acct-w", &format!("r{i:02}"), &data).await;
                assert_eq!(gw.read("acct-w", &format!("r{i:02}"), v).await, data);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_chains_gapless(&gw.db).await;
}

async fn local_to_kms_and_back(gw: Gw) {
    gw.account("acct-kms", "retail").await;
    let shards = gw.load("acct-kms", 5, 2).await;
    // Back to local is a downgrade (aws-kms -> local): confirmed.
    for (tier, backend, downgrade) in [("kms", "kms", false), ("retail", "local", true)] {
        let v = if downgrade {
            gw.account_downgraded("acct-kms", tier).await
        } else {
            gw.account("acct-kms", tier).await
        };
        let job = v["migration_job"].as_str().unwrap().to_string();
        let done = gw.settle(&job, 60).await;
        assert_eq!(
            (done["state"].as_str(), done["done"].as_i64()),
            (Some("completed"), Some(10)),
            "{done}"
        );
        assert!(gw
            .backends_of("acct-kms")
            .await
            .iter()
            .all(|b| b == backend));
        for (shard, version, data) in &shards {
            assert_eq!(&gw.read("acct-kms", shard, *version).await, data);
        }
    }
}

async fn bad_requests_are_refused(gw: Gw) {
    for body in [
        json!({}),
        json!({"account": "a", "from_backend": "local"}),
        json!({"account": "acct-x", "key_version_below": 2}),
        json!({"from_backend": "nope"}),
        json!({"from_backend": "local", "key_version_below": 0}),
        json!({"from_backend": "local", "extra": 1}),
    ] {
        let (s, v) = gw
            .call("POST", "/v1/admin/migrations", Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    let (s, v) = gw
        .call(
            "POST",
            "/v1/admin/migrations",
            Some(json!({"account": "missing"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("account_not_found"))
    );
    let (s, _) = gw
        .call("GET", "/v1/admin/migrations/not-a-uuid", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = gw
        .call(
            "GET",
            &format!("/v1/admin/migrations/{}", uuid::Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Admin only.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/admin/migrations")
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", gw.tokens.reader),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"from_backend": "local"}).to_string()))
        .unwrap();
    let resp = gw.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

macro_rules! both_stores {
    ($($name:ident: $rate:expr, $kms:expr;)*) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some(g) = super::setup(super::StoreKind::Sqlite, $rate, $kms).await { super::$name(g).await; }
            }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some(g) = super::setup(super::StoreKind::Postgres, $rate, $kms).await { super::$name(g).await; }
            }
        )* }
    };
}

both_stores! {
    tier_change_moves_every_version_and_reads_back_identical: 1000, false;
    kek_rotation_rewraps_versions_below_the_new_key: 1000, false;
    pause_resume_cancel_and_a_failing_row: 10, false;
    reads_keep_working_and_a_user_write_wins_during_a_job: 20, false;
    a_batch_commit_waits_out_a_busy_audit_chain: 20, false;
    shard_writes_wait_out_a_busy_chain_and_race_tier_changes: 1000, false;
    local_to_kms_and_back: 1000, true;
    bad_requests_are_refused: 1000, false;
}
