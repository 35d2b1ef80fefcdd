//! Three replicas, one database (issue 30, item 6): three `shardgate serve` child processes on
//! one PostgreSQL database, each polling the cluster's policy and breaker overrides every
//! 200 ms. A policy applied through one is served by all three (the test waits against a
//! generous deadline; how fast is a bench figure, not an assertion here), an account created
//! through one in a tier only the new version declares is written through the others, and an
//! operator's `circuit:open` through one is seen by all, as is the `circuit:close` that ends it;
//! an account delete held for approval through one is approved through another replica by a
//! second credential. Three replicas started at once on one SoftHSM2 file token share a
//! pkcs11 tier, and one killed with SIGKILL restarts beside the other two, which keep serving;
//! the test build's fault hook logs one out of the HSM, and its pool logs in again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::served::{Served, DEADLINE};
use common::Tokens;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Replica {
    served: Served,
    http: reqwest::Client,
    token: String,
}

impl Replica {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.token, method, path, body).await
    }

    async fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.served.base);
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn policy_version(&self) -> i64 {
        let (s, v) = self.call("GET", "/readyz", None).await;
        assert_eq!(s, 200, "{v}");
        v["policy_version"].as_i64().unwrap()
    }

    async fn get_status(&self, account: &str) -> u16 {
        self.call("GET", &format!("/v1/accounts/{account}/shards/s"), None)
            .await
            .0
    }
}

/// What every replica must come to show.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// `/readyz` reports this policy version.
    PolicyVersion(i64),
    /// A GET of this account's shard answers this status.
    GetStatus(&'static str, u16),
}

impl Check {
    async fn holds(self, r: &Replica) -> bool {
        match self {
            Check::PolicyVersion(v) => r.policy_version().await == v,
            Check::GetStatus(account, status) => r.get_status(account).await == status,
        }
    }
}

/// Poll until `check` holds on every replica.
async fn until_all(replicas: &[Replica], check: Check) {
    let deadline = Instant::now() + DEADLINE;
    for (i, r) in replicas.iter().enumerate() {
        while !check.holds(r).await {
            assert!(Instant::now() < deadline, "replica {i}: {check:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_converge_on_policy_applies_and_breaker_overrides() {
    let Some(url) = common::fresh_pg_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.backends.insert(
        "local-b".into(),
        common::local_backend(dir.path(), "local-b"),
    );
    cfg.policy.refresh_ms = 200;
    cfg.breaker.refresh_ms = 200;
    cfg.log.format = shardgate::app::config::LogFormat::Json;
    // Dual control of account deletes, with a second admin credential to approve them.
    let second = shardgate::domain::auth::generate_token()
        .expose_secret()
        .to_string();
    cfg.tokens.push(shardgate::app::config::TokenConfig {
        name: "second".into(),
        sha256: shardgate::domain::auth::hash_token(&second),
        scopes: vec!["*".into()],
        account_prefix: None,
        expires_at: None,
    });
    cfg.approvals.required_for = vec!["account.delete".into()];
    let path = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &path);
    // Started one after the other: the first creates the keyrings the others then open.
    let replicas: Vec<Replica> = (0..3)
        .map(|i| Replica {
            served: Served::start(&path, "replicas", &format!("replica-{i}")),
            http: reqwest::Client::new(),
            token: tokens.admin.clone(),
        })
        .collect();
    for r in &replicas {
        assert_eq!(r.policy_version().await, 1);
    }

    // A policy applied through replica 0 reaches 1 and 2.
    let next = json!({"policy": {"tiers": {"retail": "local-b", "institutional": "local", "gold": "local-b"}}});
    let (s, v) = replicas[0]
        .call("PUT", "/v1/admin/policy", Some(next))
        .await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(2)), "{v}");
    until_all(&replicas, Check::PolicyVersion(2)).await;
    // An account in the new tier, created through 1, written through 2, read through 0.
    let (s, v) = replicas[1]
        .call("PUT", "/v1/accounts/acct-g", Some(json!({"tier": "gold"})))
        .await;
    assert_eq!((s, v["backend"].as_str()), (201, Some("local-b")), "{v}");
    let body = json!({"shard": B64.encode(b"gold bytes")});
    let (s, v) = replicas[2]
        .call("PUT", "/v1/accounts/acct-g/shards/s", Some(body))
        .await;
    assert_eq!((s, v["backend"].as_str()), (201, Some("local-b")), "{v}");
    assert_eq!(replicas[0].get_status("acct-g").await, 200);

    // A maintenance window opened through 2 is seen by all; closed through 0, by all.
    let (s, v) = replicas[2]
        .call(
            "POST",
            "/v1/admin/backends/local-b/circuit:open",
            Some(json!({"ttl_secs": 600})),
        )
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("forced-open")), "{v}");
    until_all(&replicas, Check::GetStatus("acct-g", 503)).await;
    let (s, v) = replicas[0]
        .call("POST", "/v1/admin/backends/local-b/circuit:close", None)
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("closed")), "{v}");
    until_all(&replicas, Check::GetStatus("acct-g", 200)).await;

    // A delete asked through 0 is approved through 2 by another credential; 1 sees it done.
    let (s, v) = replicas[0]
        .call("DELETE", "/v1/accounts/acct-g", None)
        .await;
    assert_eq!(
        (s, v["operation"].as_str()),
        (202, Some("account.delete")),
        "{v}"
    );
    let id = v["approval"].as_str().unwrap().to_string();
    assert_eq!(replicas[1].get_status("acct-g").await, 200);
    let approve = format!("/v1/admin/approvals/{id}:approve");
    let (s, v) = replicas[2].call("POST", &approve, None).await;
    assert_eq!(
        s, 403,
        "the asking credential cannot approve, on any replica: {v}"
    );
    let (s, v) = replicas[2].call_as(&second, "POST", &approve, None).await;
    assert_eq!(
        (s, v["result"]["destroyed_versions"].as_i64()),
        (200, Some(1)),
        "{v}"
    );
    let (s, _) = replicas[1].call("GET", "/v1/accounts/acct-g", None).await;
    assert_eq!(s, 404);
    for r in &replicas {
        r.served.signal("-TERM");
    }
}

/// A SoftHSM2 file token of its own: its config file, label and PIN file (0600).
struct SoftHsm {
    conf: std::path::PathBuf,
    label: String,
    pin_file: std::path::PathBuf,
}

impl SoftHsm {
    fn init(dir: &std::path::Path) -> SoftHsm {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let pin = B64.encode(rand::random::<[u8; 12]>());
        let out = std::process::Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", "sg-replicas"])
            .args(["--so-pin", &format!("so-{pin}"), "--pin", &pin])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.join("hsm.pin");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pin_file)
            .unwrap();
        writeln!(f, "{pin}").unwrap();
        SoftHsm {
            conf,
            label: "sg-replicas".into(),
            pin_file,
        }
    }
}

/// `shardgate hsm init-key` on the config's `hsm` backend.
fn init_kek(config: &std::path::Path, hsm: &SoftHsm) {
    let mut cmd = std::process::Command::new(common::shardgate_bin());
    cmd.args(["hsm", "init-key", "--backend", "hsm", "--config"])
        .arg(config)
        .env("SOFTHSM2_CONF", &hsm.conf);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHARDGATE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_softhsm_token_and_one_killed_restarts_beside_the_others() {
    let Some(module) = common::require_env("SHARDGATE_TEST_SOFTHSM_MODULE") else {
        return;
    };
    let Some(url) = common::fresh_pg_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::init(dir.path());
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    let mut p11 = shardgate_backends::pkcs11::Pkcs11Config::new(&hsm.label, "kek");
    p11.module = module.into();
    p11.pin_file = Some(hsm.pin_file.clone());
    p11.pool_size = 2;
    cfg.backends.insert(
        "hsm".into(),
        shardgate::app::config::BackendConfig::Pkcs11(shardgate::app::config::Pkcs11Entry {
            hsm: p11,
            cloudhsm: None,
        }),
    );
    cfg.tiers.insert("custody".into(), "hsm".into());
    cfg.log.format = shardgate::app::config::LogFormat::Json;
    let path = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &path);
    init_kek(&path, &hsm);
    // The keyrings exist before the three start at once (only the token is contended).
    let conf = hsm.conf.to_str().unwrap().to_string();
    drop(Served::start_with_env(
        &path,
        "replicas_hsm",
        "first",
        &[("SOFTHSM2_CONF", &conf)],
    ));
    let start = |name: String| {
        let (path, conf) = (path.clone(), conf.clone());
        std::thread::spawn(move || {
            Served::start_with_env(&path, "replicas_hsm", &name, &[("SOFTHSM2_CONF", &conf)])
        })
    };
    let started: Vec<_> = (0..3).map(|i| start(format!("replica-{i}"))).collect();
    let mut replicas: Vec<Replica> = started
        .into_iter()
        .map(|t| Replica {
            served: t.join().unwrap(),
            http: reqwest::Client::new(),
            token: tokens.admin.clone(),
        })
        .collect();
    // Written through 0 on the HSM, read through 1 and 2.
    let (s, v) = replicas[0]
        .call(
            "PUT",
            "/v1/accounts/acct-h",
            Some(json!({"tier": "custody"})),
        )
        .await;
    assert_eq!((s, v["backend"].as_str()), (201, Some("hsm")), "{v}");
    let body = json!({"shard": B64.encode(b"hsm bytes")});
    let (s, v) = replicas[0]
        .call("PUT", "/v1/accounts/acct-h/shards/s", Some(body))
        .await;
    assert_eq!((s, v["backend"].as_str()), (201, Some("hsm")), "{v}");
    for r in &replicas[1..] {
        let (s, v) = r.call("GET", "/v1/accounts/acct-h/shards/s", None).await;
        assert_eq!(
            (s, v["shard"].as_str()),
            (200, Some(B64.encode(b"hsm bytes").as_str()))
        );
    }
    // Replica 1 killed and restarted while 0 and 2 serve reads of the token.
    replicas[1].served.signal("-KILL");
    replicas[1].served.wait_exit().await;
    let restarted = start("replica-1-restarted".into());
    loop {
        for r in [&replicas[0], &replicas[2]] {
            assert_eq!(r.get_status("acct-h").await, 200);
        }
        if restarted.is_finished() {
            break;
        }
    }
    replicas[1].served = restarted.join().unwrap();
    let body = json!({"shard": B64.encode(b"hsm bytes 2")});
    let (s, v) = replicas[1]
        .call("PUT", "/v1/accounts/acct-h/shards/s", Some(body))
        .await;
    assert_eq!((s, v["version"].as_i64()), (201, Some(2)), "{v}");
    fault_hook_logs_a_replica_out_and_its_pool_logs_in_again(&replicas, &tokens).await;
    for r in &replicas {
        assert_eq!(r.get_status("acct-h").await, 200);
        r.served.signal("-TERM");
    }
}

/// The chaos soak's hsm-logout fault (the test build's `fault-injection` hook): `C_Logout`
/// inside one replica; its next read of the token still answers 200 (the pool logs in
/// again); the hook is admin-only and for pkcs11 backends only.
async fn fault_hook_logs_a_replica_out_and_its_pool_logs_in_again(
    replicas: &[Replica],
    tokens: &Tokens,
) {
    let hook = "/v1/admin/backends/hsm/fault:logout";
    let (s, v) = replicas[0]
        .call_as(&tokens.reader, "POST", hook, None)
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = replicas[0].call("POST", hook, None).await;
    assert_eq!((s, v["fault"].as_str()), (200, Some("logout")), "{v}");
    let (s, v) = replicas[0]
        .call("GET", "/v1/accounts/acct-h/shards/s", None)
        .await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(2)), "{v}");
    let (s, v) = replicas[0]
        .call("POST", "/v1/admin/backends/local/fault:logout", None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
    let (s, v) = replicas[0]
        .call("POST", "/v1/admin/backends/nope/fault:logout", None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
}
