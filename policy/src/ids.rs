//! Account and shard ids: exact ASCII bytes `[A-Za-z0-9._:-]{1,128}`, never `.` or `..`,
//! case-sensitive and never normalised (docs/design.md, HTTP API). The ONE place the grammar
//! is written: the gateway's checks, the policy's pins and rollouts, account prefixes and every
//! message that states the grammar use what is here.
//!
//! [`AccountId`] and [`ShardId`] are ids checked at construction: code that holds one need not
//! check it again.

/// Longest id in bytes.
pub const MAX_ID_LEN: usize = 128;

/// The bytes of an id, as messages state them; [`is_id_byte`] is the same set.
macro_rules! charset {
    () => {
        "[A-Za-z0-9._:-]"
    };
}

/// The bytes of an id as messages state them.
pub const ID_CHARSET: &str = charset!();

/// The grammar as messages state it.
pub const ID_GRAMMAR: &str = concat!(charset!(), "{1,128}");

/// The rule as messages state it: the grammar, and the two names it excludes.
pub const ID_RULE: &str = concat!(charset!(), "{1,128} and not be '.' or '..'");

/// Whether `b` may appear in an id.
pub fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

/// Whether `id` is a valid account or shard id: `[A-Za-z0-9._:-]{1,128}`, except `.` and `..`.
///
/// ```
/// use shardgate_policy::is_valid_id;
/// assert!(is_valid_id("acct-1") && is_valid_id("x.y_z:1-2") && is_valid_id("..."));
/// assert!(!is_valid_id("") && !is_valid_id("..") && !is_valid_id("a/b"));
/// assert!(!is_valid_id("ünïcode") && !is_valid_id(&"a".repeat(129)));
/// ```
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id.bytes().all(is_id_byte)
}

/// Whether `p` is a valid account prefix (of tokens and client certificates): non-empty id
/// bytes. A prefix may be longer than an id, and may be `.`: it only ever narrows.
pub fn is_valid_prefix(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(is_id_byte)
}

/// Which id a message names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// An account id.
    Account,
    /// A shard id.
    Shard,
}

impl IdKind {
    /// `account` or `shard`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdKind::Account => "account",
            IdKind::Shard => "shard",
        }
    }
}

impl std::fmt::Display for IdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An id that breaks the grammar. The bad value is not kept: it may be attacker-chosen bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind} id must match {rule}", rule = ID_RULE)]
pub struct InvalidId {
    /// Which id.
    pub kind: IdKind,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The id, if `id` is valid.
            pub fn parse(id: impl Into<String>) -> Result<Self, InvalidId> {
                let id = id.into();
                if is_valid_id(&id) {
                    Ok(Self(id))
                } else {
                    Err(InvalidId { kind: $kind })
                }
            }

            /// The id's bytes.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as a `String`.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An account id, checked at construction.
    AccountId,
    IdKind::Account
);
id_type!(
    /// A shard id, checked at construction.
    ShardId,
    IdKind::Shard
);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_at_construction() {
        assert_eq!(AccountId::parse("acct-1").unwrap().as_str(), "acct-1");
        assert_eq!(
            ShardId::parse("a/b").unwrap_err(),
            InvalidId {
                kind: IdKind::Shard
            }
        );
        assert!(AccountId::parse("..").is_err());
    }

    #[test]
    fn the_message_states_the_rule_and_never_the_value() {
        let e = AccountId::parse("évil").unwrap_err();
        assert_eq!(
            e.to_string(),
            "account id must match [A-Za-z0-9._:-]{1,128} and not be '.' or '..'"
        );
    }

    #[test]
    fn prefixes_are_id_bytes() {
        assert!(is_valid_prefix("acct-") && is_valid_prefix("."));
        assert!(!is_valid_prefix("") && !is_valid_prefix("a/"));
    }
}
