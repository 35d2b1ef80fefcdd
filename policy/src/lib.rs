//! Tier policy for shardgate: which backend instance wraps an account's new shard versions.
//!
//! Pure: no I/O, no HTTP, no SQL. The gateway builds a [`Policy`] from its config, validates
//! it at start-up (and `shardgate policy check` validates a file without starting), and asks
//! it for a [`Placement`] on every write. Reads never consult the policy: they use the backend
//! recorded on the stored row.
//!
//! # Rules, by precedence
//!
//! 1. **Pin** ([`Pin`]): one account always goes to one backend, whatever its tier (a
//!    compliance override). A pin onto the backend the account would get anyway is allowed
//!    and not even a warning: it is what keeps the account there when the tier or a rollout
//!    changes later, which is the point of a pin.
//! 2. **Rollout** ([`Rollout`]): a deterministic percentage of a tier's accounts goes to
//!    another backend, e.g. 5% of `retail` on `kms-new`. Rollouts of one tier are tried in
//!    the order they are declared; the first whose set holds the account wins.
//! 3. **Tier default**: the backend `[tiers]` names for the tier.
//!
//! A tier nobody declared is an error ([`PolicyError::UnknownTier`]), even for a pinned
//! account: a typo must never put an account on some fallback backend.
//!
//! # Which accounts a rollout takes
//!
//! The bucket of an account for a rollout named `N` is
//! `u64::from_be_bytes(SHA-256(N ‖ 0x00 ‖ account)[0..8]) % 10_000` ([`rollout_bucket`]);
//! the account is in a rollout of `p` percent when its bucket is below `p × 100`, so
//! percentages have two decimals. The hash is fixed and documented (never std's
//! `DefaultHasher`, whose output may change between Rust releases and processes), so every
//! replica and every future release agrees. `0x00` cannot occur in a rollout name or an
//! account id, so the encoding is unambiguous; the modulo bias of 2^64 over 10,000 buckets is
//! below 10^-15.
//!
//! Because the bucket does not depend on the percentage, **widening is monotone**: an account
//! in the 5% set is in the 10% set. Widening a rollout only ever moves accounts *onto* its
//! backend. The rollout's name is the salt, so two rollouts draw independent sets; keep the
//! name when widening (a renamed rollout draws a new set). When two rollouts of one tier
//! both hold an account the one declared first wins, so a later rollout's effective share
//! is `p2 × (1 − p1)`; [`Policy::explain`] shows such an account as overridden.
//!
//! # Validation
//!
//! [`PolicyBuilder::build`] refuses, as [`PolicyError`]s: no tiers; a tier, pin or rollout
//! naming a backend that is not configured; a rollout on an undeclared tier; a pin whose
//! account id could never match (outside `[A-Za-z0-9._:-]{1,128}`, or `.`/`..`); two pins for
//! one account; two rollouts of one name; a rollout name outside the id grammar; a percentage
//! that is not a number in `(0, 100]` with at most two decimals; a 0% rollout (it can never
//! take an account); a rollout onto its tier's own default backend (it changes nothing); two
//! rollouts of one tier onto one backend (widen one instead); rollouts of one tier adding up
//! to more than 100%. A rollout of exactly 100% is allowed, since it is the last step of a
//! pilot, but it is reported as a [`PolicyWarning`]: the tier default has become unreachable
//! and the tier itself should now name the backend.
//!
//! # Example
//!
//! Retail accounts on the local keyring, 50% of them piloted on KMS, one account pinned to
//! the HSM. The buckets below were computed outside this crate (Python's `hashlib`), so the
//! example also pins the documented hash:
//!
//! ```
//! use shardgate_policy::{Policy, PolicyError, Rollout};
//! use std::collections::{BTreeMap, BTreeSet};
//!
//! let backends: BTreeSet<String> = ["local", "kms-new", "hsm"].map(String::from).into();
//! let tiers = BTreeMap::from([("retail".to_string(), "local".to_string())]);
//! let policy = Policy::builder(tiers)
//!     .pin("acct-9", "hsm")
//!     .rollout(Rollout {
//!         name: "kms-pilot".into(),
//!         tier: "retail".into(),
//!         backend: "kms-new".into(),
//!         percent: 50.0,
//!     })
//!     .build(&backends)?;
//!
//! // acct-1's bucket is 4424 (< 5000): in the pilot. acct-2's is 8318: not.
//! let p = policy.place("acct-1", "retail")?;
//! assert_eq!(p.backend, "kms-new");
//! assert_eq!(p.rule, "rollout retail:kms-pilot 50.00% (bucket 4424) -> kms-new");
//! assert_eq!(policy.place("acct-2", "retail")?.backend, "local");
//! // A pin wins over the rollout and the tier.
//! assert_eq!(policy.place("acct-9", "retail")?.backend, "hsm");
//! // An undeclared tier is an error, never a fallback.
//! assert_eq!(
//!     policy.place("acct-1", "retial"),
//!     Err(PolicyError::UnknownTier("retial".into()))
//! );
//! # Ok::<(), PolicyError>(())
//! ```

pub mod document;
mod error;
pub mod facts;
pub mod ids;
pub mod key_state;
mod priority;
pub mod version;

pub use document::{PolicyDocument, RuleChange, RuleKind};
pub use error::{PolicyError, PolicyWarning};
pub use facts::{Attributes, Derived, Threshold, TierRule};
pub use ids::{
    is_id_byte, is_valid_id, is_valid_prefix, AccountId, IdKind, InvalidId, ShardId, ID_CHARSET,
    ID_GRAMMAR, ID_RULE, MAX_ID_LEN,
};
pub use key_state::{KeyState, UnknownKeyState};
pub use priority::Class;
use priority::Priorities;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
pub use version::{InvalidVersion, Version};

/// Number of rollout buckets: percentages have two decimals.
pub const BUCKETS: u32 = 10_000;

/// A per-account override: this account's new shard versions go to `backend`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The account id (exact bytes).
    pub account: String,
    /// Backend instance name.
    pub backend: String,
}

/// `percent`% of the accounts of `tier` go to `backend`, chosen by a stable hash.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Unique name; also the hash salt, so keep it when widening.
    pub name: String,
    /// The tier whose accounts it takes.
    pub tier: String,
    /// Backend instance name.
    pub backend: String,
    /// Share of the tier, in (0, 100], at most two decimals.
    pub percent: f64,
}

/// A validated rollout: the percentage in basis points (hundredths of a percent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RolloutRule {
    name: String,
    tier: String,
    backend: String,
    basis_points: u32,
}

impl RolloutRule {
    fn describe(&self, bucket: u32) -> String {
        format!(
            "rollout {}:{} {} (bucket {bucket}) -> {}",
            self.tier,
            self.name,
            percent_text(self.basis_points),
            self.backend
        )
    }
}

/// `500` -> `5.00%`.
fn percent_text(basis_points: u32) -> String {
    format!("{}.{:02}%", basis_points / 100, basis_points % 100)
}

/// The bucket (`0..10_000`) of `account` for the rollout named `rollout`:
/// `u64::from_be_bytes(SHA-256(rollout ‖ 0x00 ‖ account)[0..8]) % 10_000`.
///
/// Stable across processes, replicas and releases: changing it would move accounts between
/// backends, so it is part of the config's meaning (and of docs/policy-and-migration.md).
///
/// ```
/// // python3 -c "import hashlib; d = hashlib.sha256(b'kms-pilot\0acct-9').digest();
/// //             print(int.from_bytes(d[:8], 'big') % 10000)"   -> 2976
/// assert_eq!(shardgate_policy::rollout_bucket("kms-pilot", "acct-9"), 2976);
/// ```
pub fn rollout_bucket(rollout: &str, account: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(rollout.as_bytes());
    h.update([0u8]);
    h.update(account.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The remainder is below 10_000, so the narrowing cannot truncate.
    (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u32
}

/// Percent -> basis points, or why not.
fn basis_points(rollout: &str, percent: f64) -> Result<u32, PolicyError> {
    let invalid = |reason| PolicyError::InvalidPercent {
        rollout: rollout.to_string(),
        percent: percent.to_string(),
        reason,
    };
    if !percent.is_finite() {
        return Err(invalid("not a number"));
    }
    if !(0.0..=100.0).contains(&percent) {
        return Err(invalid("must be between 0 and 100"));
    }
    let scaled = percent * 100.0;
    let rounded = scaled.round();
    // 5.07 * 100 is 506.99999999999994 in binary floating point: tolerate that, refuse a
    // real third decimal (which the buckets could not honour).
    if (scaled - rounded).abs() > 1e-6 {
        return Err(invalid("at most two decimals"));
    }
    // In 0..=10_000 after the checks above.
    let bp = rounded as u32;
    if bp == 0 {
        return Err(PolicyError::ZeroRollout {
            rollout: rollout.to_string(),
        });
    }
    Ok(bp)
}

/// Tier, pin and rollout rules, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    tiers: BTreeMap<String, String>,
    pins: BTreeMap<String, String>,
    /// In declared order: the first that holds an account wins.
    rollouts: Vec<RolloutRule>,
    warnings: Vec<PolicyWarning>,
    priorities: Priorities,
    tier_rules: Vec<TierRule>,
}

/// Which backend a rule picked, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Backend instance name.
    pub backend: String,
    /// Human-readable rule, e.g. `tier retail -> local`,
    /// `pin acct-9 -> hsm` or `rollout retail:kms-pilot 5.00% (bucket 123) -> kms-new`.
    pub rule: String,
}

/// What became of one rule in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This rule picked the backend.
    Chosen,
    /// The rule applies to the account, but one of higher precedence won.
    Overridden {
        /// The winning rule.
        by: String,
    },
    /// The rule does not apply to the account.
    NotMatched {
        /// Why not.
        why: String,
    },
}

/// One rule considered for a placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The rule, in the same words as [`Placement::rule`].
    pub rule: String,
    /// What became of it.
    pub verdict: Verdict,
}

/// Every rule considered for an account, in precedence order, and the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The account.
    pub account: String,
    /// Its tier.
    pub tier: String,
    /// Pin, the tier's rollouts in declared order, tier default.
    pub steps: Vec<Step>,
    /// What [`Policy::place`] answers.
    pub placement: Placement,
    /// The account's priority class ([`Policy::class_of`]).
    pub class: Class,
    /// The rule that decided the class: `account acct-9 -> critical`,
    /// `tier institutional -> critical` or `default -> standard`.
    pub class_rule: String,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "account {} (tier {}):", self.account, self.tier)?;
        for (i, s) in self.steps.iter().enumerate() {
            let what = match &s.verdict {
                Verdict::Chosen => "CHOSEN".to_string(),
                Verdict::Overridden { by } => format!("applies, but overridden by {by}"),
                Verdict::NotMatched { why } => format!("no: {why}"),
            };
            writeln!(f, "  {}. {} -- {what}", i + 1, s.rule)?;
        }
        writeln!(
            f,
            "backend: {} (by {})",
            self.placement.backend, self.placement.rule
        )?;
        write!(f, "priority: {} (by {})", self.class, self.class_rule)
    }
}

/// Collects tiers, pins and rollouts; [`PolicyBuilder::build`] validates them.
#[derive(Debug, Clone, Default)]
pub struct PolicyBuilder {
    tiers: BTreeMap<String, String>,
    pins: Vec<Pin>,
    rollouts: Vec<Rollout>,
    priorities: Priorities,
    tier_rules: Vec<TierRule>,
}

impl PolicyBuilder {
    /// Start from tier -> backend rules.
    pub fn new(tiers: BTreeMap<String, String>) -> Self {
        Self {
            tiers,
            ..Self::default()
        }
    }

    /// Add one pin.
    pub fn pin(mut self, account: impl Into<String>, backend: impl Into<String>) -> Self {
        self.pins.push(Pin {
            account: account.into(),
            backend: backend.into(),
        });
        self
    }

    /// Add pins.
    pub fn pins(mut self, pins: impl IntoIterator<Item = Pin>) -> Self {
        self.pins.extend(pins);
        self
    }

    /// Add one rollout (after those already added: earlier ones win overlaps).
    pub fn rollout(mut self, rollout: Rollout) -> Self {
        self.rollouts.push(rollout);
        self
    }

    /// Add rollouts, in order.
    pub fn rollouts(mut self, rollouts: impl IntoIterator<Item = Rollout>) -> Self {
        self.rollouts.extend(rollouts);
        self
    }

    /// Tier rules from account attributes, in order (the first that holds decides).
    pub fn tier_rules(mut self, rules: impl IntoIterator<Item = TierRule>) -> Self {
        self.tier_rules.extend(rules);
        self
    }

    /// Priority classes by tier and by account (each account's own wins).
    pub fn priorities(
        mut self,
        tiers: BTreeMap<String, Class>,
        accounts: BTreeMap<String, Class>,
    ) -> Self {
        self.priorities = Priorities { tiers, accounts };
        self
    }

    /// Every problem of the rules against the configured `backends`, in a stable order
    /// (tiers, pins, rollouts as declared); empty when [`PolicyBuilder::build`] would succeed.
    pub fn check(&self, backends: &BTreeSet<String>) -> Vec<PolicyError> {
        self.validate(backends).err().unwrap_or_default()
    }

    /// Validate and build. On error, the first problem [`PolicyBuilder::check`] lists.
    pub fn build(self, backends: &BTreeSet<String>) -> Result<Policy, PolicyError> {
        match self.validate(backends) {
            Ok(policy) => Ok(policy),
            Err(mut errors) => Err(if errors.is_empty() {
                // `validate` never fails without a reason; keep a sane answer regardless.
                PolicyError::NoTiers
            } else {
                errors.swap_remove(0)
            }),
        }
    }

    fn validate(&self, backends: &BTreeSet<String>) -> Result<Policy, Vec<PolicyError>> {
        let mut errors = Vec::new();
        self.check_tiers(backends, &mut errors);
        let pins = self.check_pins(backends, &mut errors);
        let (rollouts, warnings) = self.check_rollouts(backends, &mut errors);
        check_rollout_totals(&rollouts, &mut errors);
        self.check_priorities(&mut errors);
        facts::check_rules(&self.tier_rules, &self.tiers, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Policy {
            tiers: self.tiers.clone(),
            pins,
            rollouts,
            warnings,
            priorities: self.priorities.clone(),
            tier_rules: self.tier_rules.clone(),
        })
    }

    /// The priority classes: of declared tiers, and of valid account ids.
    fn check_priorities(&self, errors: &mut Vec<PolicyError>) {
        for tier in self.priorities.tiers.keys() {
            if !self.tiers.contains_key(tier) {
                errors.push(PolicyError::PriorityUnknownTier { tier: tier.clone() });
            }
        }
        for account in self.priorities.accounts.keys() {
            if !is_valid_id(account) {
                errors.push(PolicyError::InvalidPriorityAccount {
                    account: account.clone(),
                });
            }
        }
    }

    /// The tier rules: at least one tier, each naming a configured backend.
    fn check_tiers(&self, backends: &BTreeSet<String>, errors: &mut Vec<PolicyError>) {
        if self.tiers.is_empty() {
            errors.push(PolicyError::NoTiers);
        }
        for (tier, backend) in &self.tiers {
            if !backends.contains(backend) {
                errors.push(PolicyError::UnknownBackend {
                    tier: tier.clone(),
                    backend: backend.clone(),
                });
            }
        }
    }

    /// The pins: a valid account id, a configured backend, one pin per account. The pins
    /// kept (the first of each account).
    fn check_pins(
        &self,
        backends: &BTreeSet<String>,
        errors: &mut Vec<PolicyError>,
    ) -> BTreeMap<String, String> {
        let mut pins: BTreeMap<String, String> = BTreeMap::new();
        for pin in &self.pins {
            if !is_valid_id(&pin.account) {
                errors.push(PolicyError::InvalidPinAccount {
                    account: pin.account.clone(),
                });
            }
            if !backends.contains(&pin.backend) {
                errors.push(PolicyError::PinUnknownBackend {
                    account: pin.account.clone(),
                    backend: pin.backend.clone(),
                });
            }
            // Even two identical pins are refused: the duplicate is a sign of a merge gone
            // wrong, and removing one later must not silently change anything.
            if let Some(first) = pins.get(&pin.account) {
                errors.push(PolicyError::DuplicatePin {
                    account: pin.account.clone(),
                    first: first.clone(),
                    second: pin.backend.clone(),
                });
            } else {
                pins.insert(pin.account.clone(), pin.backend.clone());
            }
        }
        pins
    }

    /// Each rollout on its own and against those before it (name, backend, tier, percent,
    /// overlap): the rules (those with errors too, for the per-tier sum) and the warnings.
    fn check_rollouts(
        &self,
        backends: &BTreeSet<String>,
        errors: &mut Vec<PolicyError>,
    ) -> (Vec<RolloutRule>, Vec<PolicyWarning>) {
        let mut rollouts: Vec<RolloutRule> = Vec::new();
        let mut names = BTreeSet::new();
        let mut warnings = Vec::new();
        for r in &self.rollouts {
            if !is_valid_id(&r.name) {
                errors.push(PolicyError::InvalidRolloutName {
                    rollout: r.name.clone(),
                });
            }
            if !names.insert(r.name.as_str()) {
                errors.push(PolicyError::DuplicateRollout {
                    rollout: r.name.clone(),
                });
            }
            if !backends.contains(&r.backend) {
                errors.push(PolicyError::RolloutUnknownBackend {
                    rollout: r.name.clone(),
                    backend: r.backend.clone(),
                });
            }
            match self.tiers.get(&r.tier) {
                None => {
                    errors.push(PolicyError::RolloutUnknownTier {
                        rollout: r.name.clone(),
                        tier: r.tier.clone(),
                    });
                }
                Some(default) if *default == r.backend => {
                    errors.push(PolicyError::RolloutOntoTierDefault {
                        rollout: r.name.clone(),
                        tier: r.tier.clone(),
                        backend: r.backend.clone(),
                    });
                }
                Some(_) => {}
            }
            let bp = match basis_points(&r.name, r.percent) {
                Ok(bp) => bp,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if let Some(first) = rollouts
                .iter()
                .find(|o| o.tier == r.tier && o.backend == r.backend)
            {
                errors.push(PolicyError::OverlappingRollouts {
                    tier: r.tier.clone(),
                    backend: r.backend.clone(),
                    first: first.name.clone(),
                    second: r.name.clone(),
                });
            }
            if bp == BUCKETS {
                warnings.push(PolicyWarning::FullRollout {
                    rollout: r.name.clone(),
                    tier: r.tier.clone(),
                    backend: r.backend.clone(),
                });
            }
            // Rules with other errors still join the list, so that the per-tier sum below
            // sees them (one report names every problem); the list is dropped on error.
            rollouts.push(RolloutRule {
                name: r.name.clone(),
                tier: r.tier.clone(),
                backend: r.backend.clone(),
                basis_points: bp,
            });
        }
        (rollouts, warnings)
    }
}

/// The rollouts of each tier together: their shares may add up to 100% at most.
fn check_rollout_totals(rollouts: &[RolloutRule], errors: &mut Vec<PolicyError>) {
    let mut per_tier: BTreeMap<&str, u32> = BTreeMap::new();
    for r in rollouts {
        *per_tier.entry(r.tier.as_str()).or_default() += r.basis_points;
    }
    for (tier, total) in per_tier {
        // Past 100% some rollout can never reach its share: whichever comes later is
        // (partly) unreachable.
        if total > BUCKETS {
            errors.push(PolicyError::RolloutsOverfull {
                tier: tier.to_string(),
                total: percent_text(total).trim_end_matches('%').to_string(),
            });
        }
    }
}

impl Policy {
    /// Build and validate tier rules only: every tier must name one of `backends`.
    pub fn new(
        tiers: BTreeMap<String, String>,
        backends: &BTreeSet<String>,
    ) -> Result<Self, PolicyError> {
        PolicyBuilder::new(tiers).build(backends)
    }

    /// A builder for tiers plus pins and rollouts.
    pub fn builder(tiers: BTreeMap<String, String>) -> PolicyBuilder {
        PolicyBuilder::new(tiers)
    }

    /// Whether the tier is declared.
    pub fn has_tier(&self, tier: &str) -> bool {
        self.tiers.contains_key(tier)
    }

    /// Declared tiers.
    pub fn tiers(&self) -> impl Iterator<Item = &str> {
        self.tiers.keys().map(String::as_str)
    }

    /// Number of pins.
    pub fn pin_count(&self) -> usize {
        self.pins.len()
    }

    /// Number of rollouts.
    pub fn rollout_count(&self) -> usize {
        self.rollouts.len()
    }

    /// Allowed but noteworthy rules.
    pub fn warnings(&self) -> &[PolicyWarning] {
        &self.warnings
    }

    /// The backend for an account of `tier`: pin, else the first rollout of the tier that
    /// holds the account, else the tier's backend. Tiers are exact, case-sensitive names: a
    /// typo is an error, never a fallback to some default backend.
    pub fn place(&self, account: &str, tier: &str) -> Result<Placement, PolicyError> {
        let default = self
            .tiers
            .get(tier)
            .ok_or_else(|| PolicyError::UnknownTier(tier.to_string()))?;
        if let Some(backend) = self.pins.get(account) {
            return Ok(pin_placement(account, backend));
        }
        for r in self.rollouts.iter().filter(|r| r.tier == tier) {
            let bucket = rollout_bucket(&r.name, account);
            if bucket < r.basis_points {
                return Ok(Placement {
                    backend: r.backend.clone(),
                    rule: r.describe(bucket),
                });
            }
        }
        Ok(tier_placement(tier, default))
    }

    /// The tier of an account that asked for `requested` and carries `attrs`: the first tier
    /// rule that holds, else `requested` (not checked against the declared tiers: placing
    /// does that).
    pub fn derive_tier(&self, requested: &str, attrs: &Attributes) -> Derived {
        facts::derive(&self.tier_rules, requested, attrs)
    }

    /// Whether any tier rule is declared (without one, every account is in the tier it asked
    /// for).
    pub fn has_tier_rules(&self) -> bool {
        !self.tier_rules.is_empty()
    }

    /// The priority class of `account` of `tier`: its own, else its tier's, else `standard`.
    /// An undeclared tier is `standard` too: the class only orders admission.
    pub fn class_of(&self, account: &str, tier: &str) -> Class {
        self.priorities.decide(account, tier).0
    }

    /// The class of an account the policy names, whatever its tier (`None`: it depends on
    /// the tier).
    pub fn account_class(&self, account: &str) -> Option<Class> {
        self.priorities.accounts.get(account).copied()
    }

    /// Every rule considered for `account` of `tier`, in precedence order, which one won,
    /// and the placement (always the same as [`Policy::place`]).
    pub fn explain(&self, account: &str, tier: &str) -> Result<Explanation, PolicyError> {
        let placement = self.place(account, tier)?;
        let won = |rule: &str| rule == placement.rule;
        let verdict = |rule: &str| {
            if won(rule) {
                Verdict::Chosen
            } else {
                Verdict::Overridden {
                    by: placement.rule.clone(),
                }
            }
        };
        let mut steps = Vec::new();
        match self.pins.get(account) {
            Some(backend) => {
                let rule = pin_placement(account, backend).rule;
                steps.push(Step {
                    verdict: verdict(&rule),
                    rule,
                });
            }
            None => steps.push(Step {
                rule: format!("pins ({} configured)", self.pins.len()),
                verdict: Verdict::NotMatched {
                    why: format!("none for account {account}"),
                },
            }),
        }
        for r in self.rollouts.iter().filter(|r| r.tier == tier) {
            let bucket = rollout_bucket(&r.name, account);
            let rule = r.describe(bucket);
            let v = if bucket < r.basis_points {
                verdict(&rule)
            } else {
                Verdict::NotMatched {
                    why: format!("bucket {bucket} is not below {}", r.basis_points),
                }
            };
            steps.push(Step { rule, verdict: v });
        }
        if let Some(default) = self.tiers.get(tier) {
            let rule = tier_placement(tier, default).rule;
            steps.push(Step {
                verdict: verdict(&rule),
                rule,
            });
        }
        let (class, class_rule) = self.priorities.decide(account, tier);
        Ok(Explanation {
            account: account.to_string(),
            tier: tier.to_string(),
            steps,
            placement,
            class,
            class_rule,
        })
    }
}

fn pin_placement(account: &str, backend: &str) -> Placement {
    Placement {
        backend: backend.to_string(),
        rule: format!("pin {account} -> {backend}"),
    }
}

fn tier_placement(tier: &str, backend: &str) -> Placement {
    Placement {
        backend: backend.to_string(),
        rule: format!("tier {tier} -> {backend}"),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;
