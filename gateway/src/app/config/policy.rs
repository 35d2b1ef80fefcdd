//! `[policy]`: the pins, rollouts and priority classes that (with `[tiers]`) seed the cluster's first policy
//! version, and how often a replica reads the database's newest version.

use serde::{Deserialize, Serialize};
use shardgate_policy::{Class, Pin, Rollout, TierRule};
use std::collections::BTreeMap;

/// `[policy]`: the rules that override `[tiers]` for some accounts (see `shardgate-policy`
/// for their precedence, the rollout hash and the validation).
///
/// ```toml
/// [[policy.pins]]
/// account = "acct-9"
/// backend = "hsm"
///
/// [[policy.rollouts]]
/// name = "kms-pilot"
/// tier = "retail"
/// backend = "kms-new"
/// percent = 5.0
///
/// [policy.priorities]          # tier -> class under overload (default: standard)
/// institutional = "critical"
/// archive = "bulk"
///
/// [policy.account_priorities]  # account -> class, whatever its tier
/// "acct-7" = "critical"
///
/// [[policy.tier_rules]]          # tiers from account attributes, first that holds decides
/// name = "big-custody"
/// tier = "institutional"
/// from = ["retail"]              # the asked-for tiers it moves (empty: every tier)
/// any = [{ attribute = "aum_usd", at_least = 10000000 }, { attribute = "users", at_least = 50000 }]
/// ```
///
/// These rules (with `[tiers]`) seed version 1 of an empty database; after that the database
/// holds the cluster's policy and `shardgate policy apply` changes it
/// (docs/policy-and-migration.md, "Policy in the database").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Account -> backend, whatever the account's tier.
    #[serde(default)]
    pub pins: Vec<Pin>,
    /// Percentages of a tier on another backend; earlier entries win overlaps.
    #[serde(default)]
    pub rollouts: Vec<Rollout>,
    /// Tier -> priority class (`critical`, `standard`, `bulk`) that a backend's bulkhead
    /// admits by under overload; a tier not named is `standard`.
    #[serde(default)]
    pub priorities: BTreeMap<String, Class>,
    /// Account -> priority class, whatever the account's tier.
    #[serde(default)]
    pub account_priorities: BTreeMap<String, Class>,
    /// Tiers derived from account attributes, in order (the first that holds decides).
    #[serde(default)]
    pub tier_rules: Vec<TierRule>,
    /// Milliseconds between reads of the database's policy version (0: never; a replica
    /// then serves what it read at start-up and what it applies itself).
    #[serde(default = "default_policy_refresh_ms")]
    pub refresh_ms: u64,
}

fn default_policy_refresh_ms() -> u64 {
    2_000
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            pins: Vec::new(),
            rollouts: Vec::new(),
            priorities: BTreeMap::new(),
            account_priorities: BTreeMap::new(),
            tier_rules: Vec::new(),
            refresh_ms: default_policy_refresh_ms(),
        }
    }
}

impl PolicyConfig {
    /// No pins, rollouts or classes: `[tiers]` alone decides.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
            && self.rollouts.is_empty()
            && self.priorities.is_empty()
            && self.account_priorities.is_empty()
            && self.tier_rules.is_empty()
    }
}
