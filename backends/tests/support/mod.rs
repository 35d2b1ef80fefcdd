//! Shared support for backend integration tests: the moto endpoint and the fault proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

pub(crate) mod fault_proxy;

/// The shared moto endpoint, or `None` (test skipped, counted) when unset. In strict mode (CI,
/// `SHARDGATE_TEST_STRICT=1`) a missing moto is a failure (`shardgate_testkit::skip`).
pub(crate) fn moto_endpoint(test: &str) -> Option<String> {
    let v = std::env::var("SHARDGATE_TEST_MOTO_ENDPOINT").unwrap_or_default();
    if v.trim().is_empty() {
        shardgate_testkit::skip(&format!("{test}: SHARDGATE_TEST_MOTO_ENDPOINT is not set"));
        return None;
    }
    Some(v.trim().to_string())
}

/// The region every test uses.
pub(crate) const REGION: &str = "us-east-1";

/// SDK config pointed at `endpoint` (credentials from the environment / provider chain).
pub(crate) async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .load()
        .await
}

/// A new symmetric KMS key; returns its key id.
pub(crate) async fn create_kms_key(endpoint: &str) -> String {
    let client = aws_sdk_kms::Client::new(&sdk_config(endpoint).await);
    let out = client.create_key().send().await.unwrap();
    out.key_metadata().unwrap().key_id().to_string()
}
