//! Graceful shutdown of the real binary: SIGTERM under write load (PostgreSQL store) drains
//! the requests in flight and exits 0, and after a restart every write answered 201 reads
//! back identical; a second SIGTERM exits at once while a parked request holds the drain;
//! SIGTERM stops migration workers between items, and a restart resumes their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::Tokens;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn serve(config: &std::path::Path, name: &str) -> (Child, String) {
    let logs = common::log_dir("shutdown");
    let mut child = Command::new(common::shardgate_bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("SHARDGATE_TEST_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(common::child_log(&logs, &format!("{name}.stderr.log")))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("shardgate listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("gateway did not start");
    (child, addr)
}

/// A write answered 201: shard, version, bytes.
type Acked = (String, i64, Vec<u8>);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_write_load_loses_no_acknowledged_write() {
    let Some(url) = common::fresh_pg_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.timeouts.shutdown_grace_ms = 5000;
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);
    let (mut child, base) = serve(&config, "first");
    let client = reqwest::Client::new();
    let r = client
        .put(format!("{base}/v1/accounts/acct-sd"))
        .bearer_auth(&tokens.admin)
        .json(&serde_json::json!({"tier": "retail"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    // Answers other than 201 and the drain's 503: none may come (a 500, a 409, a 400 would
    // be a write broken by the shutdown, not refused by it).
    let unexpected: Arc<Mutex<Vec<u16>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, base, token, acked, stop, unexpected) = (
            client.clone(),
            base.clone(),
            tokens.admin.clone(),
            acked.clone(),
            stop.clone(),
            unexpected.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let data = format!("writer {w} write {n}").into_bytes();
                let shard = format!("w{w}");
                let r = client
                    .put(format!("{base}/v1/accounts/acct-sd/shards/{shard}"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"shard": B64.encode(&data)}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let v: serde_json::Value = r.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .push((shard, v["version"].as_i64().unwrap(), data));
                    }
                    // Refused (503) or cut (no answer) while shutting down: not acknowledged,
                    // nothing promised.
                    Ok(r) if r.status() == 503 => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Ok(r) => unexpected.lock().unwrap().push(r.status().as_u16()),
                }
            }
        }));
    }
    let wait = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 20 {
        assert!(
            Instant::now() < wait,
            "writes never got through before the signal"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = acked.lock().unwrap().len();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    // It exits (a wait that must end: the 5 s grace bounds the drain, and 60 s is far past
    // it); exit 0 below says the drain, not a crash, ended it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "never exited after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(status.success(), "{status:?}");
    assert_eq!(
        *unexpected.lock().unwrap(),
        Vec::<u16>::new(),
        "writes broken by the shutdown"
    );

    let (mut child, base) = serve(&config, "restarted");
    let acked = acked.lock().unwrap().clone();
    for (shard, version, data) in &acked {
        let r = client
            .get(format!(
                "{base}/v1/accounts/acct-sd/shards/{shard}?version={version}"
            ))
            .bearer_auth(&tokens.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{shard} v{version}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(&B64.decode(v["shard"].as_str().unwrap()).unwrap(), data);
    }
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{} writes acknowledged ({before} before the signal)",
        acked.len()
    );
}

/// A request parked in the server (headers sent with `Expect: 100-continue`, the server asked
/// for the body with `100 Continue`, the body never comes) holds the first SIGTERM's drain open
/// for its whole grace period; a second SIGTERM ends the process at once (exit 130, the
/// documented log line) and the parked request is never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_while_a_parked_request_holds_the_drain() {
    use common::served::Served;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(common::StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.log.format = shardgate::app::config::LogFormat::Json;
    // Nothing ends the parked request or the drain by itself within the test's deadlines.
    cfg.timeouts.body_read_ms = 600_000;
    cfg.timeouts.request_ms = 600_000;
    cfg.timeouts.shutdown_grace_ms = 600_000;
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);
    let mut gw = Served::start(&config, "shutdown", "second-sigterm");
    let r = reqwest::Client::new()
        .put(format!("{}/v1/accounts/acct-p", gw.base))
        .bearer_auth(&tokens.admin)
        .json(&serde_json::json!({"tier": "retail"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let addr = gw.base.strip_prefix("http://").unwrap().to_string();
    let mut parked = tokio::net::TcpStream::connect(&addr).await.unwrap();
    parked
        .write_all(
            format!(
                "PUT /v1/accounts/acct-p/shards/s1 HTTP/1.1\r\nHost: {addr}\r\n\
                 Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\nExpect: 100-continue\r\n\r\n",
                tokens.admin
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The handler is reading the body: the server asked for it.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(parked.read(&mut b).await.unwrap(), 1, "closed: {head:?}");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    gw.signal("-TERM");
    gw.wait_logged(
        "shutting down: no new connections; draining requests in flight",
        1,
    )
    .await;
    gw.signal("-TERM");
    let status = gw.wait_exit().await;
    assert_eq!(
        status.code(),
        Some(130),
        "{status:?}: not the second signal's exit"
    );
    assert_eq!(
        gw.logged("second shutdown signal: exiting at once").len(),
        1
    );
    assert!(gw.logged("shut down").is_empty(), "the drain did not end");
    // The parked request got no answer: the connection just closed.
    let mut rest = Vec::new();
    let _ = parked.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

/// SIGTERM while a migration job runs (slowly, on `serve`'s own workers): the process drains
/// and exits 0, leaving the job `running` with its counters matching the rows (each item moved
/// whole or not at all: every moved row is on the target, every other on the source, nothing
/// elsewhere) and every shard readable; a restarted process resumes the job to `completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_migration_workers_and_a_restart_resumes_the_job() {
    use common::db::Db;
    use common::served::{Served, DEADLINE};
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(common::StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.log.format = shardgate::app::config::LogFormat::Json;
    cfg.backends
        .insert("vault".into(), common::local_backend(dir.path(), "vault"));
    cfg.tiers.insert("gold".into(), "vault".into());
    // Slow enough that the job is far from done when the signal comes.
    cfg.migration.rate_per_sec = 2;
    cfg.migration.batch_size = 2;
    cfg.migration.poll_interval_ms = 100;
    // An item left to its lease is free again soon after the restart.
    cfg.migration.lease_ms = 2000;
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);
    let mut gw = Served::start(&config, "shutdown", "migrating");
    let client = reqwest::Client::new();
    let call =
        |base: &str, method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
            let mut r = client
                .request(method, format!("{base}{path}"))
                .bearer_auth(&tokens.admin);
            if let Some(b) = body {
                r = r.json(&b);
            }
            async move {
                let r = r.send().await.unwrap();
                let s = r.status().as_u16();
                (s, r.json::<serde_json::Value>().await.unwrap_or_default())
            }
        };
    let data = |i: usize| format!("shard {i} before the move").into_bytes();
    let (s, _) = call(
        &gw.base,
        reqwest::Method::PUT,
        "/v1/accounts/acct-m",
        Some(serde_json::json!({"tier": "retail"})),
    )
    .await;
    assert_eq!(s, 201);
    for i in 0..N {
        let (s, v) = call(
            &gw.base,
            reqwest::Method::PUT,
            &format!("/v1/accounts/acct-m/shards/s{i:02}"),
            Some(serde_json::json!({"shard": B64.encode(data(i))})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = call(
        &gw.base,
        reqwest::Method::PUT,
        "/v1/accounts/acct-m",
        Some(serde_json::json!({"tier": "gold"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let job = v["migration_job"].as_str().unwrap().to_string();
    let job_path = format!("/v1/admin/migrations/{job}");

    // The workers are moving rows.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, v) = call(&gw.base, reqwest::Method::GET, &job_path, None).await;
        if v["done"].as_i64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the job never progressed: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.signal("-TERM");
    let status = gw.wait_exit().await;
    assert!(status.success(), "{status:?}");
    assert_eq!(gw.logged("shut down").len(), 1);

    // Stopped between items: the job is still running, part-way, and its counters are the rows.
    let db = Db::connect(&url).await;
    let done = db
        .count(&format!(
            "SELECT done FROM migration_jobs WHERE id = '{job}' AND state = 'running' \
         AND failed = 0 AND total = {N}"
        ))
        .await;
    assert!(done >= 2 && done < N as i64, "done {done} of {N}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM shard_versions WHERE backend = 'vault'")
            .await,
        done
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM shard_versions WHERE backend = 'local'")
            .await,
        N as i64 - done
    );
    drop(db);

    // Restarted (no longer slowed): the job resumes and completes; every shard reads back.
    let mut cfg = cfg.clone();
    cfg.migration.rate_per_sec = 100_000;
    common::write_config(&cfg, &config);
    let gw = Served::start(&config, "shutdown", "resumed");
    let deadline = Instant::now() + DEADLINE;
    let v = loop {
        let (_, v) = call(&gw.base, reqwest::Method::GET, &job_path, None).await;
        if v["state"] != "running" {
            break v;
        }
        assert!(Instant::now() < deadline, "the job did not resume: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(
        (v["done"].as_i64(), v["failed"].as_i64()),
        (Some(N as i64), Some(0)),
        "{v}"
    );
    for i in 0..N {
        let (s, v) = call(
            &gw.base,
            reqwest::Method::GET,
            &format!("/v1/accounts/acct-m/shards/s{i:02}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["backend"], "vault", "{v}");
        assert_eq!(B64.decode(v["shard"].as_str().unwrap()).unwrap(), data(i));
    }
}
