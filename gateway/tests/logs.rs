//! Structured logs of the real binary: with `[log] format = "json"`, every line `serve` writes
//! is one JSON object; every line logged while serving a request carries that request's id
//! (the caller's `X-Request-Id` when well-formed, else a generated UUID, echoed on the
//! response); no token or shard byte ever reaches the log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `shardgate serve --config FILE` with no inherited `SHARDGATE_*` variable; stderr (the log)
/// and stdout go to files in `logs`. Returns the child and its base URL.
fn serve(config: &Path, logs: &Path) -> (Child, String) {
    let mut cmd = Command::new(common::shardgate_bin());
    cmd.args(["serve", "--config", config.to_str().unwrap()]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHARDGATE_") {
            cmd.env_remove(k);
        }
    }
    let stderr = std::fs::File::create(logs.join("gateway.stderr.log")).unwrap();
    let mut child = cmd
        .env("RUST_LOG", "info,shardgate=debug,tower_http=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let out_log = logs.join("gateway.stdout.log");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::create(out_log).unwrap();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(f, "{line}");
            if let Some(addr) = line.strip_prefix("shardgate listening on ") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway did not start");
    (child, base)
}

/// The `request_id` of the innermost span of a JSON log line that has one.
fn request_id_of(line: &Value) -> Option<String> {
    line["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .chain(std::iter::once(&line["span"]))
        .find_map(|s| s["request_id"].as_str().map(String::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_and_never_a_secret() {
    let logs = common::log_dir("logs_json");
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.log.format = shardgate::app::config::LogFormat::Json;
    // No probe lines from an idle breaker between the requests.
    cfg.breaker.probe_interval_ms = 0;
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);

    let shard = b"log-test shard: 8e0b1c5a-never-in-a-log";
    let shard_b64 = B64.encode(shard);
    let bogus = format!("sg_{}", uuid::Uuid::new_v4().simple());
    common::plant(&shard_b64);
    common::plant(std::str::from_utf8(shard).unwrap());
    common::plant(&bogus);

    let (mut child, base) = serve(&config, &logs);
    let client = reqwest::Client::new();
    let admin = tokens.admin.clone();
    let send = |method: reqwest::Method, path: &str, id: Option<&str>, token: &str| {
        let mut req = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        req
    };
    let echoed = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .expect("every response carries its request id")
            .to_str()
            .unwrap()
            .to_string()
    };

    // Well-formed ids are kept and echoed.
    let good = [
        "req-account.1_A",
        "req-put-7",
        "req-get-8",
        "req-close-9",
        "req-unauth-10",
    ];
    let r = send(
        reqwest::Method::PUT,
        "/v1/accounts/acct-log",
        Some(good[0]),
        &admin,
    )
    .json(&json!({"tier": "retail"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(echoed(&r), good[0]);
    let r = send(
        reqwest::Method::PUT,
        "/v1/accounts/acct-log/shards/s1",
        Some(good[1]),
        &admin,
    )
    .json(&json!({ "shard": shard_b64 }))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(echoed(&r), good[1]);
    let r = send(
        reqwest::Method::GET,
        "/v1/accounts/acct-log/shards/s1",
        Some(good[2]),
        &admin,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echoed(&r), good[2]);
    // The handler itself logs here (an operator override is a warning).
    let r = send(
        reqwest::Method::POST,
        "/v1/admin/backends/local/circuit:close",
        Some(good[3]),
        &admin,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echoed(&r), good[3]);
    let r = send(
        reqwest::Method::GET,
        "/v1/accounts/acct-log",
        Some(good[4]),
        &bogus,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(echoed(&r), good[4]);

    // Malformed ids are replaced by a generated UUID (never logged, never echoed).
    let too_long = "x".repeat(200);
    let malformed = [
        "has space",
        too_long.as_str(),
        "quote\"and{brace}",
        "",
        "semi;colon",
    ];
    let mut generated = Vec::new();
    for bad in malformed {
        let r = send(
            reqwest::Method::GET,
            "/v1/accounts/acct-log/shards/s1",
            Some(bad),
            &admin,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "{bad:?}");
        let id = echoed(&r);
        assert_ne!(id, bad);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id:?} for {bad:?}");
        assert!(!generated.contains(&id), "a fresh id per request");
        generated.push(id);
    }
    // No header at all: generated too.
    let r = send(reqwest::Method::GET, "/healthz", None, &admin)
        .send()
        .await
        .unwrap();
    assert!(uuid::Uuid::parse_str(&echoed(&r)).is_ok());
    generated.push(echoed(&r));

    // Stop it gracefully so every line is written.
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the gateway did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }

    let text = std::fs::read_to_string(logs.join("gateway.stderr.log")).unwrap();
    let mut lines = Vec::new();
    for raw in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(raw).unwrap_or_else(|e| panic!("not a JSON line ({e}): {raw:?}"));
        for key in ["timestamp", "level", "target"] {
            assert!(v[key].is_string(), "{key} missing: {raw}");
        }
        lines.push(v);
    }
    assert!(
        lines.iter().any(|l| l["message"] == "serving"),
        "start-up is logged too:\n{text}"
    );

    // Every line logged inside a request (the HTTP trace lines, handler warnings) has its id.
    for l in &lines {
        let target = l["target"].as_str().unwrap();
        let in_request = target.starts_with("tower_http")
            || l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "request"));
        if in_request {
            let id = request_id_of(l).unwrap_or_default();
            assert!(
                good.contains(&id.as_str()) || generated.contains(&id),
                "a request line without a known request id: {l}"
            );
        }
    }
    let with_id = |id: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| request_id_of(l).as_deref() == Some(id))
            .collect()
    };
    for id in good
        .iter()
        .copied()
        .chain(generated.iter().map(String::as_str))
    {
        let mine = with_id(id);
        assert!(
            mine.iter()
                .any(|l| l["message"] == "finished processing request"),
            "no response line for request {id}:\n{text}"
        );
        assert!(
            mine.iter()
                .any(|l| l["message"] == "started processing request"),
            "no request line for {id}"
        );
    }
    assert!(
        with_id(good[3])
            .iter()
            .any(|l| l["message"] == "circuit closed by an operator" && l["level"] == "WARN"),
        "the handler's warning carries the request id:\n{text}"
    );

    // Nothing a caller chose as an id unless it was well-formed; never a secret.
    let stdout = std::fs::read_to_string(logs.join("gateway.stdout.log")).unwrap();
    for (name, log) in [("stderr", &text), ("stdout", &stdout)] {
        for bad in ["has space", too_long.as_str(), "quote", "semi;colon"] {
            assert!(!log.contains(bad), "{name} holds a malformed id {bad:?}");
        }
        for secret in [
            tokens.admin.as_str(),
            tokens.reader.as_str(),
            tokens.prefixed.as_str(),
            bogus.as_str(),
            shard_b64.as_str(),
            std::str::from_utf8(shard).unwrap(),
        ] {
            assert!(!log.contains(secret), "{name} holds a secret");
        }
    }
}

#[test]
fn text_format_is_one_setting_away() {
    // `SHARDGATE_LOG__FORMAT` overrides the file, like every other setting: the same gateway
    // logs plain text lines (with the request id in the span) when asked to.
    let logs = common::log_dir("logs_text");
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let url = shardgate::app::config::sqlite_url(&dir.path().join("t.db"));
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.log.format = shardgate::app::config::LogFormat::Json;
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);
    let mut cmd = Command::new(common::shardgate_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHARDGATE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(["audit", "verify", "--config", config.to_str().unwrap()])
        .env("SHARDGATE_LOG__FORMAT", "text")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    std::fs::write(logs.join("audit-verify.stderr.log"), &stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.is_empty(), "debug logging of sqlx at least");
    assert!(
        stderr.lines().all(|l| !l.trim_start().starts_with('{')),
        "text format asked for: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal"
    );
}
