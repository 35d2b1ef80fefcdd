//! Shared support for backend integration tests: the moto endpoint and the fault proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

pub mod fault_proxy;

/// The shared moto endpoint, or `None` (test skipped) when unset outside CI. In CI
/// (`CI=true`) a missing moto is a failure.
pub fn moto_endpoint(test: &str) -> Option<String> {
    match std::env::var("SHARDGATE_TEST_MOTO_ENDPOINT") {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: SHARDGATE_TEST_MOTO_ENDPOINT is not set (moto_server is required in CI)");
            }
            eprintln!("SKIPPED: {test}: SHARDGATE_TEST_MOTO_ENDPOINT is not set");
            None
        }
    }
}

/// The region every test uses.
pub const REGION: &str = "us-east-1";

/// SDK config pointed at `endpoint` (credentials from the environment / provider chain).
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .load()
        .await
}

/// A new symmetric KMS key; returns its key id.
pub async fn create_kms_key(endpoint: &str) -> String {
    let client = aws_sdk_kms::Client::new(&sdk_config(endpoint).await);
    let out = client.create_key().send().await.unwrap();
    out.key_metadata().unwrap().key_id().to_string()
}
