//! Tier policy for shardgate: which backend instance wraps an account's shards.
//!
//! Pure: no I/O, no HTTP, no SQL. The gateway builds a [`Policy`] from its config, validates
//! it at start-up, and asks it for a placement on every write. For now rules are by tier
//! only; per-account pins and percentage rollouts come with the policy issue.

use std::collections::{BTreeMap, BTreeSet};

/// Policy errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The tier is not declared in the config.
    #[error("unknown tier {0:?}")]
    UnknownTier(String),
    /// A rule names a backend the config does not define.
    #[error("tier {tier:?} names backend {backend:?}, which is not configured")]
    UnknownBackend {
        /// The tier.
        tier: String,
        /// The missing backend.
        backend: String,
    },
    /// No tier is declared at all.
    #[error("no tiers are declared")]
    NoTiers,
}

/// Tier -> backend rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    tiers: BTreeMap<String, String>,
}

/// Which backend a rule picked, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Backend instance name.
    pub backend: String,
    /// Human-readable rule, e.g. `tier retail -> local`.
    pub rule: String,
}

impl Policy {
    /// Build and validate: every tier must name one of `backends`.
    pub fn new(
        tiers: BTreeMap<String, String>,
        backends: &BTreeSet<String>,
    ) -> Result<Self, PolicyError> {
        if tiers.is_empty() {
            return Err(PolicyError::NoTiers);
        }
        for (tier, backend) in &tiers {
            if !backends.contains(backend) {
                return Err(PolicyError::UnknownBackend {
                    tier: tier.clone(),
                    backend: backend.clone(),
                });
            }
        }
        Ok(Self { tiers })
    }

    /// Whether the tier is declared.
    pub fn has_tier(&self, tier: &str) -> bool {
        self.tiers.contains_key(tier)
    }

    /// Declared tiers.
    pub fn tiers(&self) -> impl Iterator<Item = &str> {
        self.tiers.keys().map(String::as_str)
    }

    /// The backend for an account of `tier`. Tiers are exact, case-sensitive names: a typo
    /// is an error, never a fallback to some default backend.
    pub fn place(&self, _account: &str, tier: &str) -> Result<Placement, PolicyError> {
        let backend = self
            .tiers
            .get(tier)
            .ok_or_else(|| PolicyError::UnknownTier(tier.to_string()))?;
        Ok(Placement {
            backend: backend.clone(),
            rule: format!("tier {tier} -> {backend}"),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn backends() -> BTreeSet<String> {
        ["local".to_string(), "kms".to_string()]
            .into_iter()
            .collect()
    }

    fn tiers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn tier_picks_its_backend() {
        let p = Policy::new(tiers(&[("retail", "kms"), ("dev", "local")]), &backends()).unwrap();
        assert_eq!(p.place("a", "retail").unwrap().backend, "kms");
        assert_eq!(p.place("a", "dev").unwrap().backend, "local");
    }

    #[test]
    fn unknown_tier_is_an_error_not_a_fallback() {
        let p = Policy::new(tiers(&[("retail", "kms")]), &backends()).unwrap();
        assert_eq!(
            p.place("a", "Retail"),
            Err(PolicyError::UnknownTier("Retail".into()))
        );
    }

    #[test]
    fn tier_naming_missing_backend_is_rejected() {
        let err = Policy::new(tiers(&[("retail", "hsm")]), &backends()).unwrap_err();
        assert!(matches!(err, PolicyError::UnknownBackend { .. }));
    }

    #[test]
    fn empty_policy_is_rejected() {
        assert_eq!(
            Policy::new(BTreeMap::new(), &backends()),
            Err(PolicyError::NoTiers)
        );
    }
}
