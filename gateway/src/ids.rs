//! Account and shard ids: exact ASCII bytes `[A-Za-z0-9._:-]{1,128}`, never `.` or `..`,
//! case-sensitive and never normalised (DESIGN.md, HTTP API).

use crate::error::{ApiError, ErrorCode};

/// Longest id in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Whether `id` is a valid account or shard id.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Check an id, naming which one (`account` or `shard`) in the error. The bad value is not
/// echoed: it may be attacker-chosen bytes.
pub fn check(kind: &str, id: &str) -> Result<(), ApiError> {
    if is_valid(id) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidId,
            format!("{kind} id must match [A-Za-z0-9._:-]{{1,128}} and not be '.' or '..'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        for ok in ["a", "acct-A", "x.y_z:1-2", "...", &"a".repeat(128)] {
            assert!(is_valid(ok), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "%2e%2e",
            "é",
            "a b",
            "a\0",
            &"a".repeat(129),
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }
}
