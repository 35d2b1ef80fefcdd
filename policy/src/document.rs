//! The policy as a document: what one version of the cluster's policy holds (tiers, pins,
//! rollouts), in the form it is stored in the database, sent to `PUT /v1/admin/policy` and
//! read from a file by `shardgate policy apply`; and the rule-by-rule difference between two
//! versions, which an apply shows and audits. Pure, like the rest of the crate.

use crate::{Class, Pin, Policy, PolicyBuilder, PolicyError, Rollout, TierRule};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Tiers, pins and rollouts, unvalidated: [`PolicyDocument::build`] validates.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Tier -> backend instance name.
    pub tiers: BTreeMap<String, String>,
    /// Account -> backend, whatever the account's tier.
    #[serde(default)]
    pub pins: Vec<Pin>,
    /// Percentages of a tier on another backend; earlier entries win overlaps.
    #[serde(default)]
    pub rollouts: Vec<Rollout>,
    /// Tier -> priority class under overload (a tier not named is `standard`). Left out of
    /// the canonical JSON when empty, so versions stored before classes keep their digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub priorities: BTreeMap<String, Class>,
    /// Account -> priority class, whatever the account's tier.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub account_priorities: BTreeMap<String, Class>,
    /// Tiers derived from account attributes, in order; left out of the canonical JSON when
    /// empty, as the classes are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tier_rules: Vec<TierRule>,
}

impl PolicyDocument {
    /// The builder of these rules.
    pub fn builder(&self) -> PolicyBuilder {
        PolicyBuilder::new(self.tiers.clone())
            .pins(self.pins.iter().cloned())
            .rollouts(self.rollouts.iter().cloned())
            .priorities(self.priorities.clone(), self.account_priorities.clone())
            .tier_rules(self.tier_rules.iter().cloned())
    }

    /// Validate against the configured backend names and build.
    pub fn build(&self, backends: &BTreeSet<String>) -> Result<Policy, PolicyError> {
        self.builder().build(backends)
    }

    /// The canonical JSON text (keys in a fixed order): what is stored and hashed.
    pub fn canonical_json(&self) -> String {
        // Serializing plain maps, strings and finite numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Hex SHA-256 of [`PolicyDocument::canonical_json`]: equal documents, equal digests.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_json().as_bytes()))
    }

    /// Every rule that differs from `before` to `self`, tiers then pins then rollouts then
    /// priority classes (of tiers, of accounts), each in name order.
    pub fn changes_from(&self, before: &PolicyDocument) -> Vec<RuleChange> {
        let mut out = Vec::new();
        diff_maps(RuleKind::Tier, &before.tiers, &self.tiers, &mut out);
        let pins = |d: &PolicyDocument| -> BTreeMap<String, String> {
            d.pins
                .iter()
                .map(|p| (p.account.clone(), p.backend.clone()))
                .collect()
        };
        diff_maps(RuleKind::Pin, &pins(before), &pins(self), &mut out);
        let rollouts = |d: &PolicyDocument| -> BTreeMap<String, String> {
            d.rollouts
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let rule = format!(
                        "{}% of {} -> {} (order {})",
                        r.percent, r.tier, r.backend, i
                    );
                    (r.name.clone(), rule)
                })
                .collect()
        };
        diff_maps(
            RuleKind::Rollout,
            &rollouts(before),
            &rollouts(self),
            &mut out,
        );
        let classes = |m: &BTreeMap<String, Class>| -> BTreeMap<String, String> {
            m.iter().map(|(k, c)| (k.clone(), c.to_string())).collect()
        };
        diff_maps(
            RuleKind::TierPriority,
            &classes(&before.priorities),
            &classes(&self.priorities),
            &mut out,
        );
        diff_maps(
            RuleKind::AccountPriority,
            &classes(&before.account_priorities),
            &classes(&self.account_priorities),
            &mut out,
        );
        let rules = |d: &PolicyDocument| -> BTreeMap<String, String> {
            d.tier_rules
                .iter()
                .enumerate()
                .map(|(i, r)| (r.name.clone(), format!("{} (order {i})", r.describe())))
                .collect()
        };
        diff_maps(RuleKind::TierRule, &rules(before), &rules(self), &mut out);
        out
    }
}

/// Which kind of rule a [`RuleChange`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// A `[tiers]` entry.
    Tier,
    /// A pin (named by its account).
    Pin,
    /// A rollout (named by its name).
    Rollout,
    /// A tier's priority class (named by the tier).
    TierPriority,
    /// An account's priority class (named by the account).
    AccountPriority,
    /// A tier rule from account attributes (named by its name).
    TierRule,
}

/// One rule added, removed or changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleChange {
    /// Tier, pin or rollout.
    pub kind: RuleKind,
    /// The tier, the pinned account, or the rollout's name.
    pub name: String,
    /// The rule before (`None`: added).
    pub before: Option<String>,
    /// The rule after (`None`: removed).
    pub after: Option<String>,
}

impl std::fmt::Display for RuleChange {
    /// `tier retail: local -> kms`; `(none)` for the missing side of an added or removed rule.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            RuleKind::Tier => "tier",
            RuleKind::Pin => "pin",
            RuleKind::Rollout => "rollout",
            RuleKind::TierPriority => "priority of tier",
            RuleKind::AccountPriority => "priority of account",
            RuleKind::TierRule => "tier rule",
        };
        write!(
            f,
            "{kind} {}: {} -> {}",
            self.name,
            self.before.as_deref().unwrap_or("(none)"),
            self.after.as_deref().unwrap_or("(none)")
        )
    }
}

fn diff_maps(
    kind: RuleKind,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    out: &mut Vec<RuleChange>,
) {
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let (b, a) = (before.get(name), after.get(name));
        if b != a {
            out.push(RuleChange {
                kind,
                name: name.clone(),
                before: b.cloned(),
                after: a.cloned(),
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn doc(tiers: &[(&str, &str)]) -> PolicyDocument {
        PolicyDocument {
            tiers: tiers
                .iter()
                .map(|(t, b)| (t.to_string(), b.to_string()))
                .collect(),
            ..PolicyDocument::default()
        }
    }

    #[test]
    fn equal_documents_have_equal_digests_and_no_changes() {
        let a = doc(&[("retail", "local"), ("vip", "hsm")]);
        let b = doc(&[("vip", "hsm"), ("retail", "local")]);
        assert_eq!(a.digest(), b.digest());
        assert!(a.changes_from(&b).is_empty());
        assert_ne!(a.digest(), doc(&[("retail", "local")]).digest());
    }

    #[test]
    fn changes_name_added_removed_and_changed_rules_in_order() {
        let before = doc(&[("retail", "local"), ("old", "local")]);
        let mut after = doc(&[("retail", "kms"), ("new", "hsm")]);
        after.pins.push(Pin {
            account: "acct-1".into(),
            backend: "hsm".into(),
        });
        let changes = after.changes_from(&before);
        let seen: Vec<(RuleKind, &str, Option<&str>, Option<&str>)> = changes
            .iter()
            .map(|c| {
                (
                    c.kind,
                    c.name.as_str(),
                    c.before.as_deref(),
                    c.after.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (RuleKind::Tier, "new", None, Some("hsm")),
                (RuleKind::Tier, "old", Some("local"), None),
                (RuleKind::Tier, "retail", Some("local"), Some("kms")),
                (RuleKind::Pin, "acct-1", None, Some("hsm")),
            ]
        );
    }

    #[test]
    fn a_document_round_trips_through_its_canonical_json() {
        let mut d = doc(&[("retail", "local")]);
        d.rollouts.push(Rollout {
            name: "p".into(),
            tier: "retail".into(),
            backend: "kms".into(),
            percent: 12.5,
        });
        let back: PolicyDocument = serde_json::from_str(&d.canonical_json()).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<PolicyDocument>(r#"{"tiers":{},"x":1}"#).is_err());
    }

    #[test]
    fn a_document_without_classes_keeps_the_canonical_json_stored_before_classes() {
        // The exact text versions stored before priority classes hash to.
        let d = doc(&[("retail", "local")]);
        assert_eq!(
            d.canonical_json(),
            r#"{"tiers":{"retail":"local"},"pins":[],"rollouts":[]}"#
        );
    }

    #[test]
    fn class_changes_are_listed_after_the_placement_rules_and_build_validates_them() {
        let before = doc(&[("retail", "local"), ("vip", "local")]);
        let mut after = before.clone();
        after.priorities.insert("vip".into(), Class::Critical);
        after
            .account_priorities
            .insert("acct-9".into(), Class::Bulk);
        let changes: Vec<String> = after
            .changes_from(&before)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            changes,
            vec![
                "priority of tier vip: (none) -> critical",
                "priority of account acct-9: (none) -> bulk"
            ]
        );
        let backends: BTreeSet<String> = ["local".to_string()].into();
        let policy = after.build(&backends).unwrap();
        assert_eq!(policy.class_of("acct-1", "vip"), Class::Critical);
        assert_eq!(policy.class_of("acct-9", "vip"), Class::Bulk);
        assert_eq!(policy.class_of("acct-1", "retail"), Class::Standard);
        after.priorities.insert("gone".into(), Class::Bulk);
        after
            .account_priorities
            .insert("bad id".into(), Class::Bulk);
        let errors = after.builder().check(&backends);
        assert_eq!(
            errors,
            vec![
                PolicyError::PriorityUnknownTier {
                    tier: "gone".into()
                },
                PolicyError::InvalidPriorityAccount {
                    account: "bad id".into()
                },
            ]
        );
    }
}
