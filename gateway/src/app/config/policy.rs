//! `[policy]`: the pins and rollouts that (with `[tiers]`) seed the cluster's first policy
//! version, and how often a replica reads the database's newest version.

use serde::{Deserialize, Serialize};
use shardgate_policy::{Pin, Rollout};

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
            refresh_ms: default_policy_refresh_ms(),
        }
    }
}

impl PolicyConfig {
    /// No pins and no rollouts: `[tiers]` alone decides.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty() && self.rollouts.is_empty()
    }
}
