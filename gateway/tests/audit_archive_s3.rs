//! The S3 archive sink against moto's S3 through the real `aws-sdk-s3` (SQLite store): a
//! pass archives into a bucket with Object Lock (every object locked in compliance mode
//! until its newest event + `retention_days`), `audit verify` reads the chain back across
//! the bucket and the hot table, a replaced object is named, an object squatting on a
//! segment's key is never taken for it, and a moto that stops answering (SIGSTOP) mid-pass
//! fails the pass without pruning anything; after SIGCONT its late writes change nothing and
//! the next pass finishes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use aws_sdk_s3::primitives::ByteStream;
use common::cli::{describe, run_to_end, shardgate_command, CliRun};
use common::db::Db;
use common::moto::OwnMoto;
use common::{StoreKind, Tokens};
use serde_json::json;
use shardgate::app::config::Config;
use shardgate::domain::audit::archive::{Archive, S3Sink, S3SinkConfig};
use shardgate::service::audit_archive::{run_pass, ArchivePass};
use std::path::PathBuf;
use std::time::Duration;

const SEGMENT: i64 = 4;

async fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A fresh bucket with Object Lock on `endpoint`: its name.
async fn locked_bucket(endpoint: &str) -> String {
    let bucket = format!("sg-audit-{}", uuid::Uuid::new_v4().simple());
    s3_client(endpoint)
        .await
        .create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    bucket
}

struct Env {
    _dir: tempfile::TempDir,
    cfg: Config,
    config: PathBuf,
    app: axum::Router,
    tokens: Tokens,
    db: Db,
}

async fn setup(endpoint: &str, bucket: &str, attempt_ms: u64) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.audit.archive.segment_max_events = SEGMENT as usize;
    cfg.audit.archive.sink = "s3".into();
    cfg.audit.archive.prefix = "audit/".into();
    cfg.audit.archive.s3 = Some(S3SinkConfig {
        bucket: bucket.to_string(),
        region: "us-east-1".into(),
        endpoint_url: Some(endpoint.to_string()),
        attempt_timeout_ms: attempt_ms,
        object_lock_mode: "compliance".into(),
        ia_after_days: 30,
        glacier_ir_after_days: 90,
    });
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    Env {
        config,
        app: shardgate::router(state),
        tokens,
        db: Db::connect(&url).await,
        cfg,
        _dir: dir,
    }
}

impl Env {
    fn cli(&self, args: &[&str]) -> CliRun {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", self.config.to_str().unwrap()]);
        tokio::task::block_in_place(|| {
            run_to_end(
                shardgate_command(&all),
                Duration::from_secs(60),
                &describe(&all),
            )
        })
    }

    async fn traffic(&self, n: usize) {
        let t = &self.tokens.admin;
        let (s, _) = common::call(
            &self.app,
            t,
            "PUT",
            "/v1/accounts/acct-s3",
            Some(json!({"tier": "retail"})),
        )
        .await;
        assert!(s.is_success());
        for i in 0..n {
            let path = format!("/v1/accounts/acct-s3/shards/s{i}");
            let body = Some(json!({"shard": "c2hhcmQ="}));
            let (s, v) = common::call(&self.app, t, "PUT", &path, body).await;
            assert!(s.is_success(), "{v}");
        }
    }

    async fn hot(&self) -> i64 {
        self.db.count("SELECT COUNT(*) FROM audit_events").await
    }

    async fn archived(&self) -> i64 {
        self.db
            .count("SELECT CAST(COALESCE(SUM(event_count), 0) AS BIGINT) FROM audit_segments")
            .await
    }

    async fn pass(&self) -> Result<u64, String> {
        let key = shardgate::app::state::audit_key(&self.cfg).unwrap();
        let sink = S3Sink::connect(self.cfg.audit.archive.s3.as_ref().unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let store = shardgate::app::state::open_store(&self.cfg, 2)
            .await
            .unwrap();
        let pass = ArchivePass {
            cutoff_ms: shardgate::now_ms() + 1,
            max_events: SEGMENT as usize,
            max_bytes: 1 << 20,
            holder: "s3-test".into(),
            lease_ms: 1,
            retention_ms: 86_400_000,
            rate_per_sec: 0,
        };
        let archive = Archive {
            sink: &sink,
            prefix: "audit/",
        };
        run_pass(store.as_ref(), archive, &key, &pass, None, &|_| {})
            .await
            .map(|r| r.events)
            .map_err(|e| e.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_to_a_locked_bucket_verifies_and_names_a_replaced_object() {
    let Some(endpoint) = common::require_env("SHARDGATE_TEST_MOTO_ENDPOINT") else {
        return;
    };
    let bucket = locked_bucket(&endpoint).await;
    let env = setup(&endpoint, &bucket, 5_000).await;
    env.traffic(9).await;
    let total = env.hot().await;
    // An object squatting on the first segment's key (a late or foreign write): the pass
    // must not take it for the segment, and must prune nothing.
    let client = s3_client(&endpoint).await;
    let chain: String = {
        let rows = env
            .db
            .all_bytes("SELECT chain_id FROM audit_events LIMIT 1")
            .await;
        String::from_utf8(rows[0].clone()).unwrap()
    };
    let squat = format!("audit/segments/{chain}/{:020}-{:020}.manifest", 1, SEGMENT);
    client
        .put_object()
        .bucket(&bucket)
        .key(&squat)
        .body(ByteStream::from_static(b"not a manifest"))
        .send()
        .await
        .unwrap();
    let run = env.cli(&["audit", "archive", "--older-than", "0s"]);
    assert!(!run.ok(), "{}", run.stdout);
    assert!(run.stderr.contains("manifest"), "{}", run.stderr);
    assert_eq!((env.hot().await, env.archived().await), (total, 0));
    // Moved aside (a locked version stays; a delete marker hides it), the pass runs.
    client
        .delete_object()
        .bucket(&bucket)
        .key(&squat)
        .send()
        .await
        .unwrap();
    let run = env.cli(&["audit", "archive", "--older-than", "0s"]);
    assert!(run.ok(), "{}\n{}", run.stdout, run.stderr);
    assert_eq!((env.hot().await, env.archived().await), (0, total));

    // Every object is locked in compliance mode until its newest event + retention_days.
    let objects = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("audit/segments/")
        .send()
        .await
        .unwrap();
    let keys: Vec<String> = objects
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    let segments = (total + SEGMENT - 1) / SEGMENT;
    assert_eq!(keys.len() as i64, 2 * segments, "{keys:?}");
    let head = client
        .head_object()
        .bucket(&bucket)
        .key(&keys[0])
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.object_lock_mode(),
        Some(&aws_sdk_s3::types::ObjectLockMode::Compliance)
    );
    let until = head
        .object_lock_retain_until_date()
        .unwrap()
        .to_millis()
        .unwrap();
    let years = (until - shardgate::now_ms()) as f64 / (365.25 * 86_400_000.0);
    assert!((6.9..7.1).contains(&years), "{years} years");

    let run = env.cli(&["audit", "verify"]);
    assert!(run.ok(), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains(&format!("({total} from {segments} archived segment(s))")),
        "{}",
        run.stdout
    );
    // The lifecycle, applied and read back by `audit archive status`.
    let run = env.cli(&["audit", "archive", "status"]);
    assert!(run.ok(), "{}", run.stderr);
    assert!(
        run.stdout.contains("object lock: on") && run.stdout.contains("lifecycle: none"),
        "{}",
        run.stdout
    );
    let run = env.cli(&[
        "audit",
        "archive",
        "--apply-lifecycle",
        "--older-than",
        "1h",
    ]);
    assert!(run.ok(), "{}", run.stderr);
    let run = env.cli(&["audit", "archive", "status"]);
    assert!(run.ok(), "{}", run.stderr);
    for want in [
        format!("archived: {segments} segment(s)"),
        "lifecycle: shardgate-audit-archive (Enabled): prefix \"audit/\", STANDARD_IA at 30 days, GLACIER_IR at 90 days, expire at 2557 days".to_string(),
    ] {
        assert!(run.stdout.contains(&want), "want {want:?} in {}", run.stdout);
    }
    // A new version over a segment object (a lock keeps old versions, not the key's
    // current one): verify names it.
    let object = keys.iter().find(|k| k.ends_with(".sgseg")).unwrap();
    client
        .put_object()
        .bucket(&bucket)
        .key(object)
        .body(ByteStream::from_static(b"replaced"))
        .send()
        .await
        .unwrap();
    let run = env.cli(&["audit", "verify"]);
    assert_eq!(run.code(), Some(2), "{}\n{}", run.stdout, run.stderr);
    let name = object.rsplit('/').next().unwrap();
    assert!(
        run.stdout.contains(name) && run.stdout.contains("does not match"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_s3_fails_the_pass_without_pruning_and_late_writes_change_nothing() {
    let Some(moto) = OwnMoto::start().await else {
        return;
    };
    let bucket = locked_bucket(&moto.endpoint).await;
    let env = setup(&moto.endpoint, &bucket, 500).await;
    // Four segments' worth: two recorded before the stop, two after it.
    env.traffic(13).await;
    let total = env.hot().await;
    // The client is built (and the bucket's lock read) first; moto stops answering right
    // after the pass recorded its first segment.
    let key = shardgate::app::state::audit_key(&env.cfg).unwrap();
    let sink = S3Sink::connect(env.cfg.audit.archive.s3.as_ref().unwrap())
        .await
        .unwrap();
    assert!(sink.locks_objects().await.unwrap());
    let store = shardgate::app::state::open_store(&env.cfg, 2)
        .await
        .unwrap();
    let pass = ArchivePass {
        cutoff_ms: shardgate::now_ms() + 1,
        max_events: SEGMENT as usize,
        max_bytes: 1 << 20,
        holder: "stopped".into(),
        lease_ms: 1,
        retention_ms: 86_400_000,
        rate_per_sec: 0,
    };
    let archive = Archive {
        sink: &sink,
        prefix: "audit/",
    };
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let stop_once = |_: &shardgate_store::AuditSegment| {
        if !stopped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            moto.signal("-STOP");
        }
    };
    let err = run_pass(store.as_ref(), archive, &key, &pass, None, &stop_once)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("timed out") || err.contains("could not reach"),
        "{err}"
    );
    // Two segments recorded: the first, and the second, which was uploaded and read back
    // while the first was recorded (before the stop); nothing after them pruned.
    assert_eq!(
        (env.hot().await, env.archived().await),
        (total - 2 * SEGMENT, 2 * SEGMENT)
    );
    // Resumed: the requests it queued run now (late writes); the next pass finishes, with
    // nothing written twice.
    moto.signal("-CONT");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moved = env.pass().await.unwrap();
    assert_eq!(moved, u64::try_from(total - 2 * SEGMENT).unwrap());
    assert_eq!((env.hot().await, env.archived().await), (0, total));
    let run = env.cli(&["audit", "verify"]);
    assert!(run.ok(), "{}\n{}", run.stdout, run.stderr);
}
