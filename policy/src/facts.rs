//! Tiers from account facts (issue 30, item 5): custody platforms move an account to the HSM
//! tier when it crosses a threshold ($10M under custody, 50k users). An account carries numeric
//! [`Attributes`] set by the platform; the policy's ordered [`TierRule`]s derive its tier from
//! the tier it asked for and those attributes. Pure, like the rest of the crate.

use crate::{is_valid_id, PolicyError, ID_RULE};
use std::collections::{BTreeMap, BTreeSet};

/// Attributes an account may carry at most.
pub const MAX_ATTRIBUTES: usize = 32;

/// Longest attribute name in bytes.
pub const MAX_ATTRIBUTE_NAME: usize = 64;

/// An account's numeric attributes (`{"aum_usd": 12000000, "users": 800}`): names in the id
/// grammar (at most [`MAX_ATTRIBUTE_NAME`] bytes), finite values, at most
/// [`MAX_ATTRIBUTES`] of them. Checked at construction.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct Attributes(BTreeMap<String, f64>);

// Every value is finite (checked at construction), so equality is total.
impl Eq for Attributes {}

impl<'de> serde::Deserialize<'de> for Attributes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, f64>::deserialize(d)?;
        Attributes::new(map).map_err(serde::de::Error::custom)
    }
}

impl Attributes {
    /// Check `map`: the error says what is wrong, in the words an API answer can use.
    pub fn new(map: BTreeMap<String, f64>) -> Result<Self, String> {
        if map.len() > MAX_ATTRIBUTES {
            return Err(format!(
                "at most {MAX_ATTRIBUTES} attributes, got {}",
                map.len()
            ));
        }
        for (name, value) in &map {
            if name.len() > MAX_ATTRIBUTE_NAME || !is_valid_id(name) {
                return Err(format!(
                    "attribute name {name:?} must match {ID_RULE} and be at most {MAX_ATTRIBUTE_NAME} bytes"
                ));
            }
            if !value.is_finite() {
                return Err(format!("attribute {name:?} must be a finite number"));
            }
        }
        Ok(Self(map))
    }

    /// Read back from [`Attributes::canonical_json`] (a stored row).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let map: BTreeMap<String, f64> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Self::new(map)
    }

    /// The JSON object, keys in order: what is stored.
    pub fn canonical_json(&self) -> String {
        // A map of names to finite numbers always serializes.
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".to_string())
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// No attribute set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Name and value, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// `attribute >= at_least`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// The attribute's name.
    pub attribute: String,
    /// The smallest value that meets the threshold.
    pub at_least: f64,
}

/// Accounts that asked for one of the `from` tiers (every tier when `from` is empty) and meet
/// any of the thresholds in `any` are in `tier`. Rules are tried in order; the first that
/// holds decides. An account whose asked-for tier no rule names keeps it: that is how a policy
/// says "an explicit tier wins".
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierRule {
    /// Unique name (shown by `policy explain`, the apply's diff and the audit event).
    pub name: String,
    /// The tier it puts accounts in.
    pub tier: String,
    /// The asked-for tiers it applies to; empty: every tier.
    #[serde(default)]
    pub from: Vec<String>,
    /// Any of these holds.
    pub any: Vec<Threshold>,
}

impl TierRule {
    /// The rule as one line: `big-custody: retail -> institutional when aum_usd >= 10000000 or
    /// users >= 50000`.
    pub fn describe(&self) -> String {
        let from = if self.from.is_empty() {
            "any tier".to_string()
        } else {
            self.from.join("|")
        };
        let when: Vec<String> = self
            .any
            .iter()
            .map(|t| format!("{} >= {}", t.attribute, t.at_least))
            .collect();
        format!(
            "{}: {from} -> {} when {}",
            self.name,
            self.tier,
            when.join(" or ")
        )
    }

    /// The threshold that holds for `attrs`, as words (`aum_usd 12000000 >= 10000000`).
    fn met_by(&self, requested: &str, attrs: &Attributes) -> Option<String> {
        if !self.from.is_empty() && !self.from.iter().any(|t| t == requested) {
            return None;
        }
        self.any.iter().find_map(|t| {
            let v = attrs.get(&t.attribute)?;
            (v >= t.at_least).then(|| format!("{} {v} >= {}", t.attribute, t.at_least))
        })
    }
}

/// The tier an account is in, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// The tier.
    pub tier: String,
    /// `tier rule big-custody (aum_usd 12000000 >= 10000000)`, or `asked for` when no rule
    /// applied.
    pub rule: String,
}

/// The first rule of `rules` that holds for an account that asked for `requested`, else
/// `requested` itself.
pub(crate) fn derive(rules: &[TierRule], requested: &str, attrs: &Attributes) -> Derived {
    for r in rules {
        if let Some(why) = r.met_by(requested, attrs) {
            return Derived {
                tier: r.tier.clone(),
                rule: format!("tier rule {} ({why})", r.name),
            };
        }
    }
    Derived {
        tier: requested.to_string(),
        rule: "asked for".to_string(),
    }
}

/// Every problem of `rules` against the declared `tiers`.
pub(crate) fn check_rules(
    rules: &[TierRule],
    tiers: &BTreeMap<String, String>,
    errors: &mut Vec<PolicyError>,
) {
    let mut names = BTreeSet::new();
    for r in rules {
        let mut bad = |reason: String| {
            errors.push(PolicyError::InvalidTierRule {
                rule: r.name.clone(),
                reason,
            })
        };
        if !is_valid_id(&r.name) {
            bad(format!("its name must match {ID_RULE}"));
        }
        if !names.insert(r.name.as_str()) {
            bad("the name is used twice".into());
        }
        for t in std::iter::once(&r.tier).chain(&r.from) {
            if !tiers.contains_key(t) {
                bad(format!("tier {t:?} is not declared in [tiers]"));
            }
        }
        if r.any.is_empty() {
            bad("it needs at least one threshold in `any`".into());
        }
        for t in &r.any {
            if t.attribute.len() > MAX_ATTRIBUTE_NAME || !is_valid_id(&t.attribute) {
                bad(format!("attribute name {:?} is not valid", t.attribute));
            }
            if !t.at_least.is_finite() {
                bad(format!(
                    "the threshold of {:?} is not a number",
                    t.attribute
                ));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, f64)]) -> Attributes {
        Attributes::new(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()).unwrap()
    }

    fn custody_rule() -> TierRule {
        TierRule {
            name: "big-custody".into(),
            tier: "institutional".into(),
            from: vec!["retail".into()],
            any: vec![
                Threshold {
                    attribute: "aum_usd".into(),
                    at_least: 1e7,
                },
                Threshold {
                    attribute: "users".into(),
                    at_least: 50_000.0,
                },
            ],
        }
    }

    #[test]
    fn any_threshold_met_moves_an_account_of_a_from_tier_and_the_rule_is_named() {
        let rules = [custody_rule()];
        let d = derive(&rules, "retail", &attrs(&[("users", 60_000.0)]));
        assert_eq!(d.tier, "institutional");
        assert_eq!(d.rule, "tier rule big-custody (users 60000 >= 50000)");
        let below = derive(&rules, "retail", &attrs(&[("aum_usd", 9_999_999.0)]));
        assert_eq!(
            (below.tier.as_str(), below.rule.as_str()),
            ("retail", "asked for")
        );
        // A tier the rule does not name keeps the tier asked for: the explicit tier wins.
        let vault = derive(&rules, "vault", &attrs(&[("aum_usd", 5e7)]));
        assert_eq!(vault.tier, "vault");
    }

    #[test]
    fn attributes_are_bounded_named_in_the_id_grammar_and_finite() {
        assert!(Attributes::new([("aum_usd".to_string(), 1.0)].into()).is_ok());
        assert!(Attributes::new([("a b".to_string(), 1.0)].into()).is_err());
        assert!(Attributes::new([("x".to_string(), f64::NAN)].into()).is_err());
        let many = (0..=MAX_ATTRIBUTES)
            .map(|i| (format!("a{i}"), 1.0))
            .collect();
        assert!(Attributes::new(many).is_err());
        let a = attrs(&[("users", 5.0), ("aum_usd", 2.5)]);
        assert_eq!(a.canonical_json(), r#"{"aum_usd":2.5,"users":5.0}"#);
        assert_eq!(Attributes::from_json(&a.canonical_json()).unwrap(), a);
        assert!(serde_json::from_str::<Attributes>(r#"{"bad name": 1}"#).is_err());
    }

    #[test]
    fn rules_name_declared_tiers_and_have_a_threshold() {
        let tiers: BTreeMap<String, String> = [("retail", "local"), ("institutional", "hsm")]
            .iter()
            .map(|(t, b)| (t.to_string(), b.to_string()))
            .collect();
        let mut errors = Vec::new();
        check_rules(&[custody_rule()], &tiers, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let mut bad = custody_rule();
        bad.tier = "gold".into();
        bad.any.clear();
        check_rules(&[bad.clone(), bad], &tiers, &mut errors);
        assert_eq!(errors.len(), 5, "{errors:?}");
    }
}
