//! The PostgreSQL database of the crate's own unit tests.

/// `SHARDGATE_TEST_DATABASE_URL`; `None` (after a loud, counted skip naming `what`) when it is
/// not set. In strict mode (CI, `SHARDGATE_TEST_STRICT=1`) a missing database fails the test
/// (`shardgate_testkit::skip`).
pub(crate) fn url(what: &str) -> Option<String> {
    let url = std::env::var("SHARDGATE_TEST_DATABASE_URL").unwrap_or_default();
    if url.trim().is_empty() {
        shardgate_testkit::skip(&format!(
            "SHARDGATE_TEST_DATABASE_URL is not set ({what} not run)"
        ));
        return None;
    }
    Some(url.trim().to_string())
}
