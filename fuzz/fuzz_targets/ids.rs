//! The id grammar (docs/design.md: ASCII `[A-Za-z0-9._:-]{1,128}`, not `.` or `..`, exact bytes):
//! the gateway's `ids::is_valid` (the policy crate's `is_valid_id`, where the grammar is written
//! once), the policy crate's `AccountId::parse` and a reference written
//! from the grammar must agree on every input; `ids::check` never echoes the input; every
//! valid id is usable unescaped in a request path.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn reference(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id.bytes().all(
            |b| matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b':' | b'-'),
        )
}

fn check(id: &str) {
    let valid = shardgate::domain::ids::is_valid(id);
    assert_eq!(valid, reference(id), "ids::is_valid({id:?})");
    assert_eq!(
        valid,
        shardgate_policy::AccountId::parse(id).is_ok(),
        "policy::AccountId::parse({id:?})"
    );
    match shardgate::domain::ids::check("account", id) {
        Ok(()) => {
            assert!(valid);
            // Valid ids need no escaping in a path, and round-trip through it unchanged.
            let path = format!("/v1/accounts/{id}/shards/{id}");
            let uri: axum::http::Uri = path.parse().expect("a valid id is a valid path segment");
            assert_eq!(uri.path(), path);
        }
        Err(e) => {
            assert!(!valid);
            // As the HTTP layer answers it.
            let e = shardgate::http::error::ApiError::from(e);
            assert_eq!(e.code, shardgate::http::error::ErrorCode::InvalidId);
            // A fixed message: the attacker-chosen bytes are never echoed.
            assert_eq!(
                e.message,
                "account id must match [A-Za-z0-9._:-]{1,128} and not be '.' or '..'"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(s) => check(s),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
