//! Priority classes: how urgently a backend's bulkhead admits an account's calls when the
//! backend is overloaded (issue 30, item 3). A class comes from the policy: the account's own
//! entry in `account_priorities`, else its tier's in `priorities`, else `standard`. Pure, like
//! the rest of the crate: the bulkhead that honours the class lives in the gateway.

use std::collections::BTreeMap;
use std::fmt;

/// A priority class, lowest first (`Bulk < Standard < Critical`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Background and batch work: shed first, never takes the capacity kept for the others.
    Bulk,
    /// The default of every tier and account the policy does not name.
    Standard,
    /// High-value traffic (e.g. institutional signing): may use every slot of a bulkhead.
    Critical,
}

impl Class {
    /// Every class, lowest first.
    pub const ALL: [Class; 3] = [Class::Bulk, Class::Standard, Class::Critical];

    /// `bulk`, `standard` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Bulk => "bulk",
            Class::Standard => "standard",
            Class::Critical => "critical",
        }
    }

    /// Position in [`Class::ALL`] (0 for `bulk`), for per-class tables.
    pub fn index(self) -> usize {
        match self {
            Class::Bulk => 0,
            Class::Standard => 1,
            Class::Critical => 2,
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The validated class rules of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Priorities {
    pub(crate) tiers: BTreeMap<String, Class>,
    pub(crate) accounts: BTreeMap<String, Class>,
}

impl Priorities {
    /// The class of `account` of `tier`, and the rule that decided it (`account acct-9 ->
    /// critical`, `tier institutional -> critical`, or `default -> standard`).
    pub(crate) fn decide(&self, account: &str, tier: &str) -> (Class, String) {
        if let Some(c) = self.accounts.get(account) {
            return (*c, format!("account {account} -> {c}"));
        }
        if let Some(c) = self.tiers.get(tier) {
            return (*c, format!("tier {tier} -> {c}"));
        }
        (Class::Standard, "default -> standard".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_order_lowest_first_and_read_as_their_config_names() {
        assert!(Class::Bulk < Class::Standard && Class::Standard < Class::Critical);
        for (i, c) in Class::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            let json = serde_json::to_string(c).unwrap_or_default();
            assert_eq!(json, format!("\"{c}\""));
        }
    }

    #[test]
    fn an_account_s_own_class_wins_over_its_tier_s_and_the_default_is_standard() {
        let p = Priorities {
            tiers: [("institutional".to_string(), Class::Critical)].into(),
            accounts: [("acct-9".to_string(), Class::Bulk)].into(),
        };
        assert_eq!(p.decide("acct-9", "institutional").0, Class::Bulk);
        assert_eq!(
            p.decide("acct-1", "institutional"),
            (
                Class::Critical,
                "tier institutional -> critical".to_string()
            )
        );
        assert_eq!(p.decide("acct-1", "retail").0, Class::Standard);
    }
}
