//! Account and shard ids in the gateway: exact ASCII bytes `[A-Za-z0-9._:-]{1,128}`, never
//! `.` or `..`, case-sensitive and never normalised (docs/design.md, HTTP API). The grammar is
//! written once, in `shardgate_policy::ids`; here is the check that answers `invalid_id`.

use crate::domain::error::DomainError;

pub use shardgate_policy::ids::{
    is_valid_id as is_valid, is_valid_prefix as is_account_prefix, AccountId, IdKind, ShardId,
    ID_CHARSET, ID_GRAMMAR, ID_RULE, MAX_ID_LEN,
};

/// Check an id, naming which one (`account`, `shard`, `after`...) in the error. The bad value
/// is not echoed: it may be attacker-chosen bytes.
pub fn check(kind: &'static str, id: &str) -> Result<(), DomainError> {
    if is_valid(id) {
        Ok(())
    } else {
        Err(DomainError::InvalidId { kind })
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
