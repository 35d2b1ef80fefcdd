//! The PostgreSQL database of the crate's own unit tests.

#![allow(clippy::panic)]

/// `SHARDGATE_TEST_DATABASE_URL`; `None` (after a loud notice naming `what`) when it is not
/// set outside CI. With `CI=true` a missing database fails the test: never skipped there.
pub(crate) fn url(what: &str) -> Option<String> {
    match std::env::var("SHARDGATE_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").ok().as_deref() != Some("true"),
                "SHARDGATE_TEST_DATABASE_URL is not set, and CI=true: PostgreSQL tests may not be skipped"
            );
            eprintln!("SKIPPED: SHARDGATE_TEST_DATABASE_URL not set ({what} not run)");
            None
        }
    }
}
