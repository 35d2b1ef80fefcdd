//! Tier-migration jobs through the gateway (in process, PostgreSQL store) across every
//! backend kind: local -> pkcs11 (SoftHSM2) -> aws-kms (moto) -> local. After each tier
//! change the job moves every version, the rows name the target, and every shard reads back
//! identical.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::gateway::{moto_endpoint, Gw};

async fn settle(gw: &Gw, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = gw
            .call("GET", &format!("/v1/admin/migrations/{job}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        if v["state"] != "running" {
            return v;
        }
        assert!(Instant::now() < deadline, "job never settled: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_move_local_to_pkcs11_to_kms_to_local_and_read_back_identical() {
    let Some(moto) = moto_endpoint("migration_across_kinds") else {
        return;
    };
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&moto)
        .load()
        .await;
    let key = aws_sdk_kms::Client::new(&sdk)
        .create_key()
        .send()
        .await
        .unwrap();
    let key_arn = key.key_metadata().unwrap().arn().unwrap().to_string();
    let keyring = tempfile::tempdir().unwrap();
    let more = format!(
        r#"[backends.local]
kind = "local"
key_file = "{keyring}"
create = true
[backends.kms]
kind = "aws-kms"
key_id = "{key_arn}"
region = "us-east-1"
endpoint_url = "{moto}"
[tiers]
retail = "local"
institutional = "hsm"
cloud = "kms"
[migration]
poll_interval_ms = 200
batch_size = 4
# Unpaced, so each batch of 4 goes to the backends in 2 chunks of 2: one HSM checkout per
# chunk for the wraps and one for the verifies (`rewrap_many_from`, `verify_many`).
rate_per_sec = 1000000
concurrency = 2
"#,
        keyring = keyring.path().join("local.keyring").display()
    );
    let Some(gw) = Gw::start("migration_across_kinds", "pool_size = 2", &more).await else {
        return;
    };
    gw.state.start_migration_workers();
    let (s, v) = gw
        .call(
            "PUT",
            "/v1/accounts/acct-mig",
            Some(json!({"tier": "retail"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let mut shards = Vec::new();
    for i in 0..5 {
        for v in 1..=2 {
            let data = format!("acct-mig/s{i}/v{v} shard bytes").into_bytes();
            let (s, body) = gw
                .call(
                    "PUT",
                    &format!("/v1/accounts/acct-mig/shards/s{i}"),
                    Some(json!({"shard": B64.encode(&data)})),
                )
                .await;
            assert_eq!(
                (s, body["backend"].as_str()),
                (201, Some("local")),
                "{body}"
            );
            shards.push((format!("s{i}"), v, data));
        }
    }
    // hsm -> kms and kms -> local lower the account's protection: each confirmed with
    // `allow_downgrade` (the gateway's token holds `admin`).
    for (tier, backend, downgrade) in [
        ("institutional", "hsm", false),
        ("cloud", "kms", true),
        ("retail", "local", true),
    ] {
        let body = if downgrade {
            json!({"tier": tier, "allow_downgrade": true})
        } else {
            json!({"tier": tier})
        };
        let (s, v) = gw.call("PUT", "/v1/accounts/acct-mig", Some(body)).await;
        assert_eq!((s, v["backend"].as_str()), (200, Some(backend)), "{v}");
        let job = v["migration_job"].as_str().expect("a job").to_string();
        let done = settle(&gw, &job).await;
        assert_eq!(
            (
                done["state"].as_str(),
                done["done"].as_i64(),
                done["failed"].as_i64()
            ),
            (Some("completed"), Some(10), Some(0)),
            "{tier}: {done}"
        );
        for (shard, version, data) in &shards {
            let (s, v) = gw
                .call(
                    "GET",
                    &format!("/v1/accounts/acct-mig/shards/{shard}?version={version}"),
                    None,
                )
                .await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["backend"], backend, "{v}");
            assert_eq!(&B64.decode(v["shard"].as_str().unwrap()).unwrap(), data);
        }
        let (_, acct) = gw.call("GET", "/v1/accounts/acct-mig", None).await;
        assert_eq!(acct["versions_on_other_backends"], 0, "{acct}");
    }
}
