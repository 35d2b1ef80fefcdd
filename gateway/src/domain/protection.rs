//! How well a backend kind protects an account's keys, and the downgrade rule built on it
//! (issue 30, guarded destructive operations): a tier change that moves an account's new
//! versions to a backend kind of lower protection (HSM to KMS or local; KMS to local) is a
//! downgrade, which the gateway refuses unless an admin confirms it. Pure: the use case
//! (`service::accounts::put`) finds the placements, this module judges them.

use std::fmt;

/// The protection a backend kind gives the KEKs, lowest first: the order is the rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protection {
    /// `local`: a keyring file on the gateway's host.
    Local,
    /// `aws-kms`: a cloud KMS key.
    Kms,
    /// `pkcs11`: an HSM.
    Hsm,
}

impl Protection {
    /// The protection of a backend kind (`KeyBackend::kind()`); `None` for a kind this rule
    /// does not know.
    pub fn of_kind(kind: &str) -> Option<Protection> {
        match kind {
            "local" => Some(Protection::Local),
            "aws-kms" => Some(Protection::Kms),
            "pkcs11" => Some(Protection::Hsm),
            _ => None,
        }
    }
}

/// Where an account's new versions go, as the rule sees it: the backend kind of its placement,
/// or `Unknown` when its tier is no longer declared (the protection it had cannot be told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed<'a> {
    /// The placement's backend kind.
    Kind(&'a str),
    /// The account's tier is no longer in the policy.
    Unknown,
}

impl fmt::Display for Placed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placed::Kind(kind) => f.write_str(kind),
            Placed::Unknown => f.write_str("unknown (its tier is no longer declared)"),
        }
    }
}

/// Whether moving an account's placement from `from` to `to` lowers its protection.
///
/// - A lower rank is a downgrade; the same kind or the same rank (another instance of the
///   same kind, e.g. one `local` keyring to another) and a higher rank are not.
/// - Fail closed where the rule cannot tell: an unknown current placement (an undeclared
///   tier) or an unknown current kind counts as the highest protection, an unknown target
///   kind as the lowest, so such a move is a downgrade unless it goes to an HSM.
pub fn is_downgrade(from: Placed<'_>, to: &str) -> bool {
    let from = match from {
        Placed::Kind(kind) if kind == to => return false,
        Placed::Kind(kind) => Protection::of_kind(kind).unwrap_or(Protection::Hsm),
        Placed::Unknown => Protection::Hsm,
    };
    let to = Protection::of_kind(to).unwrap_or(Protection::Local);
    to < from
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protection_ranks_pkcs11_over_aws_kms_over_local() {
        assert!(Protection::Hsm > Protection::Kms);
        assert!(Protection::Kms > Protection::Local);
        assert_eq!(Protection::of_kind("pkcs11"), Some(Protection::Hsm));
        assert_eq!(Protection::of_kind("aws-kms"), Some(Protection::Kms));
        assert_eq!(Protection::of_kind("local"), Some(Protection::Local));
        assert_eq!(Protection::of_kind("vault"), None);
    }

    #[test]
    fn a_move_to_a_lower_kind_is_a_downgrade() {
        for (from, to) in [
            ("pkcs11", "aws-kms"),
            ("pkcs11", "local"),
            ("aws-kms", "local"),
        ] {
            assert!(is_downgrade(Placed::Kind(from), to), "{from} -> {to}");
        }
    }

    #[test]
    fn upgrades_and_same_rank_moves_are_not_downgrades() {
        for (from, to) in [
            ("local", "aws-kms"),
            ("local", "pkcs11"),
            ("aws-kms", "pkcs11"),
            ("local", "local"),
            ("aws-kms", "aws-kms"),
            ("pkcs11", "pkcs11"),
        ] {
            assert!(!is_downgrade(Placed::Kind(from), to), "{from} -> {to}");
        }
    }

    #[test]
    fn an_unknown_placement_or_kind_fails_closed() {
        // An undeclared current tier: only a move to an HSM needs no confirmation.
        assert!(is_downgrade(Placed::Unknown, "local"));
        assert!(is_downgrade(Placed::Unknown, "aws-kms"));
        assert!(!is_downgrade(Placed::Unknown, "pkcs11"));
        // An unknown kind ranks highest as the source, lowest as the target.
        assert!(is_downgrade(Placed::Kind("future-hsm"), "aws-kms"));
        assert!(is_downgrade(Placed::Kind("pkcs11"), "future-hsm"));
        assert!(!is_downgrade(Placed::Kind("future-hsm"), "future-hsm"));
    }

    #[test]
    fn an_unknown_placement_says_why() {
        assert_eq!(Placed::Kind("pkcs11").to_string(), "pkcs11");
        assert!(Placed::Unknown.to_string().contains("no longer declared"));
    }
}
