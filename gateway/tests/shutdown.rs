//! Graceful shutdown of the real binary (PostgreSQL store): SIGTERM under write load drains
//! the requests in flight and exits 0, and after a restart every write answered 201 reads
//! back identical.
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
