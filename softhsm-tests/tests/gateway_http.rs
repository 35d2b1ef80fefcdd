//! The real gateway (child process, PostgreSQL store) on a pkcs11 backend over a SoftHSM2
//! token, its KEK provisioned by `shardgate hsm init-key`: HTTP round trips, and a wrapped
//! DEK swapped in SQL refused by the HSM as an integrity failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use shardgate_softhsm_tests::{module, TestToken};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::gateway::fresh_pg;

fn shardgate_bin() -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/shardgate; with a separate
    // `build.build-dir` the binary is in the workspace's own target/<profile> instead.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let mut bin = profile_dir.join("shardgate");
    if !bin.exists() {
        let profile = profile_dir.file_name().unwrap();
        bin = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(profile)
            .join("shardgate");
    }
    assert!(
        bin.exists(),
        "{} is missing: build the gateway (cargo build -p shardgate) or run the workspace suite",
        bin.display()
    );
    bin
}

fn plant(secret: &str) {
    if let Ok(dir) = std::env::var("SHARDGATE_TEST_LOG_DIR") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(&dir).join("planted-secrets.txt"))
            .unwrap();
        writeln!(f, "{secret}").unwrap();
    }
}

fn log_dir() -> PathBuf {
    let base = std::env::var("SHARDGATE_TEST_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("shardgate-test-logs"));
    let d = base.join(format!("softhsm-http-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(config: &Path, logs: &Path) -> (Gateway, String) {
    let mut child = Command::new(shardgate_bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("SHARDGATE_TEST_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(logs.join("gateway.stderr")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out_log = logs.join("gateway.stdout");
    std::thread::spawn(move || {
        let mut f = std::fs::File::create(out_log).unwrap();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            writeln!(f, "{line}").unwrap();
            if let Some(addr) = line.strip_prefix("shardgate listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let gw = Gateway(child);
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("gateway did not start; see {}", logs.display()));
    (gw, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_serves_shards_through_the_hsm_and_refuses_swapped_keys() {
    let Some(module) = module("gateway_http") else {
        return;
    };
    let Some(pg) = fresh_pg().await else { return };
    let token = TestToken::new(&module, "sg-http");
    plant(&token.pin);
    let hsm = token.config("kek");
    let logs = log_dir();
    let dir = token.dir.path();
    let api_token = format!("sgt_http_{}", uuid::Uuid::new_v4().simple());
    plant(&api_token);
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(api_token.as_bytes()));
    let config = dir.join("shardgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
data_dir = "{dir}"
[store]
url = "{pg}"
[backends.hsm]
kind = "pkcs11"
module = "{module}"
token_label = "{label}"
pin_file = "{pin_file}"
kek_label = "kek"
pool_size = 4
[tiers]
institutional = "hsm"
[[tokens]]
name = "hsm-test"
sha256 = "{hash}"
scopes = ["*"]
[audit]
key_file = "{dir}/audit.key"
create_key = true
"#,
            dir = dir.display(),
            module = module.display(),
            label = token.label,
            pin_file = hsm.pin_file.as_ref().unwrap().display(),
        ),
    )
    .unwrap();

    // Serving refuses a token without its KEK, naming what is missing.
    let out = Command::new(shardgate_bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("SHARDGATE_TEST_DATABASE_URL")
        .output()
        .unwrap();
    // Kept for the run's secret scan, like the serving gateway's log.
    std::fs::write(logs.join("serve-without-kek.stderr"), &out.stderr).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kek"), "{err}");
    assert!(!err.contains(&token.pin));

    let init = Command::new(shardgate_bin())
        .args([
            "hsm",
            "init-key",
            "--backend",
            "hsm",
            "--config",
            config.to_str().unwrap(),
        ])
        .env_remove("SHARDGATE_TEST_DATABASE_URL")
        .output()
        .unwrap();
    std::fs::write(logs.join("init-key.stderr"), &init.stderr).unwrap();
    std::fs::write(logs.join("init-key.stdout"), &init.stdout).unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(String::from_utf8_lossy(&init.stdout).contains("kek/v1"));

    let (_gw, addr) = start(&config, &logs);
    let base = addr.clone();
    let c = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = c
            .request(method, format!("{base}{path}"))
            .bearer_auth(&api_token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, v) = call(
        reqwest::Method::PUT,
        "/v1/accounts/inst-1",
        Some(json!({"tier":"institutional"})),
    )
    .await;
    assert_eq!((s, v["backend"].as_str()), (201, Some("hsm")), "{v}");
    let mut shards = Vec::new();
    for i in 0..3u8 {
        let data: Vec<u8> = (0..48).map(|j| j ^ (i * 37) ^ 0xA5).collect();
        let b64 = B64.encode(&data);
        plant(&b64);
        let (s, v) = call(
            reqwest::Method::PUT,
            &format!("/v1/accounts/inst-1/shards/s{i}"),
            Some(json!({"shard": b64})),
        )
        .await;
        assert_eq!((s, v["backend"].as_str()), (201, Some("hsm")), "{v}");
        shards.push(data);
    }
    for (i, data) in shards.iter().enumerate() {
        let (s, v) = call(
            reqwest::Method::GET,
            &format!("/v1/accounts/inst-1/shards/s{i}"),
            None,
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(&B64.decode(v["shard"].as_str().unwrap()).unwrap(), data);
    }
    let (s, v) = call(
        reqwest::Method::POST,
        "/v1/shards:batchGet",
        Some(json!({"items":[{"account":"inst-1","shard":"s2"},{"account":"inst-1","shard":"s0"},{"account":"inst-1","shard":"nope"}]})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        B64.decode(v["results"][0]["shard"].as_str().unwrap())
            .unwrap(),
        shards[2]
    );
    assert_eq!(
        B64.decode(v["results"][1]["shard"].as_str().unwrap())
            .unwrap(),
        shards[0]
    );
    assert_eq!(v["results"][2]["error"]["code"], "shard_not_found");

    // A wrapped DEK swapped onto another row is refused inside the HSM.
    let pool = sqlx::PgPool::connect(&pg).await.unwrap();
    sqlx::raw_sql(
        "UPDATE shard_versions SET wrapped_dek = (SELECT wrapped_dek FROM shard_versions WHERE shard='s0') WHERE shard='s1'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (s, v) = call(reqwest::Method::GET, "/v1/accounts/inst-1/shards/s1", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (500, Some("integrity_failure")),
        "{v}"
    );
    assert!(v.get("shard").is_none());
    // ...and that tampering did not take the backend down.
    let (s, _) = call(reqwest::Method::GET, "/v1/accounts/inst-1/shards/s2", None).await;
    assert_eq!(s, 200);
    let (s, v) = call(reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["backends"]["hsm"]["usable"], true, "{v}");

    let (s, v) = call(
        reqwest::Method::DELETE,
        "/v1/accounts/inst-1/shards/s0",
        None,
    )
    .await;
    assert_eq!((s, v["destroyed_versions"].as_i64()), (200, Some(1)));
    let (s, _) = call(reqwest::Method::GET, "/v1/accounts/inst-1/shards/s0", None).await;
    assert_eq!(s, 404);

    for f in ["gateway.stderr", "gateway.stdout"] {
        let text = std::fs::read_to_string(logs.join(f)).unwrap_or_default();
        assert!(!text.contains(&token.pin), "the PIN reached {f}");
    }
}
