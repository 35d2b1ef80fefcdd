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

pub mod ids;
pub mod key_state;

pub use ids::{
    is_id_byte, is_valid_id, is_valid_prefix, AccountId, IdKind, InvalidId, ShardId, ID_CHARSET,
    ID_GRAMMAR, ID_RULE, MAX_ID_LEN,
};
pub use key_state::{KeyState, UnknownKeyState};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Number of rollout buckets: percentages have two decimals.
pub const BUCKETS: u32 = 10_000;

/// Policy errors: a rule that cannot be built, or a placement for an undeclared tier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The tier is not declared in the config.
    #[error("unknown tier {0:?}")]
    UnknownTier(String),
    /// A tier names a backend the config does not define.
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
    /// A pin names a backend the config does not define.
    #[error("pin for account {account:?} names backend {backend:?}, which is not configured")]
    PinUnknownBackend {
        /// The pinned account.
        account: String,
        /// The missing backend.
        backend: String,
    },
    /// A pin's account id can never match an account.
    #[error(
        "pin account {account:?} is not a valid account id ({grammar}, not '.' or '..'), so it could never apply",
        grammar = ID_GRAMMAR
    )]
    InvalidPinAccount {
        /// The bad id.
        account: String,
    },
    /// Two pins for one account: which one applies would depend on their order.
    #[error("account {account:?} is pinned twice (to {first:?} and to {second:?})")]
    DuplicatePin {
        /// The account.
        account: String,
        /// Backend of the first pin.
        first: String,
        /// Backend of the second pin.
        second: String,
    },
    /// A rollout names a backend the config does not define.
    #[error("rollout {rollout:?} names backend {backend:?}, which is not configured")]
    RolloutUnknownBackend {
        /// The rollout.
        rollout: String,
        /// The missing backend.
        backend: String,
    },
    /// A rollout is on a tier nobody declared.
    #[error("rollout {rollout:?} is on tier {tier:?}, which is not declared in [tiers]")]
    RolloutUnknownTier {
        /// The rollout.
        rollout: String,
        /// The undeclared tier.
        tier: String,
    },
    /// A rollout name is empty or outside the id grammar.
    #[error("rollout name {rollout:?} must match {rule}", rule = ID_RULE)]
    InvalidRolloutName {
        /// The bad name.
        rollout: String,
    },
    /// Two rollouts share a name, and so would share a hash salt.
    #[error("rollout name {rollout:?} is used twice")]
    DuplicateRollout {
        /// The name.
        rollout: String,
    },
    /// A percentage that is not a number in (0, 100] with at most two decimals.
    #[error("rollout {rollout:?}: percent {percent} is invalid: {reason}")]
    InvalidPercent {
        /// The rollout.
        rollout: String,
        /// The value as written.
        percent: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A 0% rollout can never take an account.
    #[error("rollout {rollout:?} is 0%: it can never apply (remove it)")]
    ZeroRollout {
        /// The rollout.
        rollout: String,
    },
    /// A rollout onto its tier's own default backend changes nothing.
    #[error(
        "rollout {rollout:?} moves tier {tier:?} onto {backend:?}, which is already that tier's backend"
    )]
    RolloutOntoTierDefault {
        /// The rollout.
        rollout: String,
        /// Its tier.
        tier: String,
        /// The tier's own backend.
        backend: String,
    },
    /// Two rollouts of one tier onto one backend overlap: one rule, widened, says the same.
    #[error(
        "rollouts {first:?} and {second:?} both move tier {tier:?} onto {backend:?}: widen one instead"
    )]
    OverlappingRollouts {
        /// The tier.
        tier: String,
        /// The shared target backend.
        backend: String,
        /// The rollout declared first.
        first: String,
        /// The rollout declared later.
        second: String,
    },
    /// Rollouts of one tier asking for more than every account.
    #[error("rollouts of tier {tier:?} add up to {total}%, more than 100%")]
    RolloutsOverfull {
        /// The tier.
        tier: String,
        /// The sum, two decimals.
        total: String,
    },
}

/// Something allowed but worth an operator's attention (`shardgate policy check` prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyWarning {
    /// A 100% rollout: the tier's own backend is never picked any more.
    FullRollout {
        /// The rollout.
        rollout: String,
        /// Its tier.
        tier: String,
        /// The rollout's backend.
        backend: String,
    },
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyWarning::FullRollout {
                rollout,
                tier,
                backend,
            } => write!(
                f,
                "rollout {rollout:?} takes 100% of tier {tier:?}: the tier's own backend is unreachable; set {tier} = {backend:?} in [tiers] and remove the rollout"
            ),
        }
    }
}

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    tiers: BTreeMap<String, String>,
    pins: BTreeMap<String, String>,
    /// In declared order: the first that holds an account wins.
    rollouts: Vec<RolloutRule>,
    warnings: Vec<PolicyWarning>,
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
        write!(
            f,
            "backend: {} (by {})",
            self.placement.backend, self.placement.rule
        )
    }
}

/// Collects tiers, pins and rollouts; [`PolicyBuilder::build`] validates them.
#[derive(Debug, Clone, Default)]
pub struct PolicyBuilder {
    tiers: BTreeMap<String, String>,
    pins: Vec<Pin>,
    rollouts: Vec<Rollout>,
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
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Policy {
            tiers: self.tiers.clone(),
            pins,
            rollouts,
            warnings,
        })
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
        Ok(Explanation {
            account: account.to_string(),
            tier: tier.to_string(),
            steps,
            placement,
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
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn backends() -> BTreeSet<String> {
        ["local", "kms", "kms-new", "hsm"]
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn tiers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn rollout(name: &str, tier: &str, backend: &str, percent: f64) -> Rollout {
        Rollout {
            name: name.into(),
            tier: tier.into(),
            backend: backend.into(),
            percent,
        }
    }

    fn retail() -> PolicyBuilder {
        Policy::builder(tiers(&[("retail", "local"), ("institutional", "hsm")]))
    }

    /// An account id whose bucket for `rollout` satisfies `pred` (searched, so the tests
    /// do not hard-code hash outputs except in `bucket_is_the_documented_sha256`).
    fn account_where(rollout: &str, pred: impl Fn(u32) -> bool) -> String {
        (0..100_000)
            .map(|i| format!("acct-{i}"))
            .find(|a| pred(rollout_bucket(rollout, a)))
            .unwrap()
    }

    #[test]
    fn tier_picks_its_backend() {
        let p = Policy::new(tiers(&[("retail", "kms"), ("dev", "local")]), &backends()).unwrap();
        assert_eq!(p.place("a", "retail").unwrap().backend, "kms");
        assert_eq!(p.place("a", "dev").unwrap().backend, "local");
        assert_eq!(p.place("a", "dev").unwrap().rule, "tier dev -> local");
        assert!(p.has_tier("dev") && !p.has_tier("Dev"));
        assert_eq!(p.tiers().collect::<Vec<_>>(), ["dev", "retail"]);
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
    fn unknown_tier_is_an_error_even_for_a_pinned_account() {
        let p = retail().pin("acct-9", "hsm").build(&backends()).unwrap();
        assert_eq!(
            p.place("acct-9", "retial"),
            Err(PolicyError::UnknownTier("retial".into()))
        );
        assert!(p.explain("acct-9", "retial").is_err());
    }

    #[test]
    fn tier_naming_missing_backend_is_rejected() {
        let err = Policy::new(tiers(&[("retail", "hsm2")]), &backends()).unwrap_err();
        assert_eq!(
            err,
            PolicyError::UnknownBackend {
                tier: "retail".into(),
                backend: "hsm2".into()
            }
        );
    }

    #[test]
    fn empty_policy_is_rejected() {
        assert_eq!(
            Policy::new(BTreeMap::new(), &backends()),
            Err(PolicyError::NoTiers)
        );
    }

    #[test]
    fn bucket_is_the_documented_sha256() {
        // SHA-256("kms-pilot\0acct-1"), first 8 bytes big-endian, mod 10_000, computed here
        // the long way so a change of the scheme cannot pass unnoticed.
        let digest = Sha256::digest(b"kms-pilot\x00acct-1");
        let n = u64::from_be_bytes(digest[..8].try_into().unwrap());
        assert_eq!(rollout_bucket("kms-pilot", "acct-1"), (n % 10_000) as u32);
        // And a pinned value (computed independently): every replica and release must agree
        // on it forever.
        assert_eq!(rollout_bucket("kms-pilot", "acct-1"), KNOWN_BUCKET);
        // The salt matters: another rollout name draws another set.
        let differ = (0..200)
            .filter(|i| {
                let a = format!("a{i}");
                rollout_bucket("x", &a) != rollout_bucket("y", &a)
            })
            .count();
        assert!(differ > 190, "{differ}");
    }

    /// `rollout_bucket("kms-pilot", "acct-1")`, pinned (see the test above).
    const KNOWN_BUCKET: u32 = 4_424;

    #[test]
    fn pin_beats_rollout_and_tier() {
        let acct = account_where("pilot", |b| b < 5_000);
        let p = retail()
            .pin(acct.clone(), "hsm")
            .rollout(rollout("pilot", "retail", "kms-new", 50.0))
            .build(&backends())
            .unwrap();
        let pl = p.place(&acct, "retail").unwrap();
        assert_eq!(pl.backend, "hsm");
        assert_eq!(pl.rule, format!("pin {acct} -> hsm"));
        // A pin holds whatever the tier.
        assert_eq!(p.place(&acct, "institutional").unwrap().backend, "hsm");
        // Other accounts are untouched by the pin.
        assert_ne!(
            p.place("someone-else", "institutional").unwrap().backend,
            "kms-new"
        );
    }

    #[test]
    fn pin_onto_the_backend_the_account_gets_anyway_is_allowed() {
        let p = retail().pin("acct-9", "local").build(&backends()).unwrap();
        assert!(p.warnings().is_empty());
        assert_eq!(
            p.place("acct-9", "retail").unwrap().rule,
            "pin acct-9 -> local"
        );
    }

    #[test]
    fn rollout_takes_accounts_below_its_bucket_threshold() {
        let p = retail()
            .rollout(rollout("kms-pilot", "retail", "kms-new", 5.0))
            .build(&backends())
            .unwrap();
        let inside = account_where("kms-pilot", |b| b < 500);
        let outside = account_where("kms-pilot", |b| b >= 500);
        let pl = p.place(&inside, "retail").unwrap();
        let b = rollout_bucket("kms-pilot", &inside);
        assert_eq!(pl.backend, "kms-new");
        assert_eq!(
            pl.rule,
            format!("rollout retail:kms-pilot 5.00% (bucket {b}) -> kms-new")
        );
        assert_eq!(
            p.place(&outside, "retail").unwrap(),
            Placement {
                backend: "local".into(),
                rule: "tier retail -> local".into()
            }
        );
        // The rollout is only for its tier.
        assert_eq!(p.place(&inside, "institutional").unwrap().backend, "hsm");
    }

    #[test]
    fn rollout_bucket_edges_are_exact() {
        let acct = account_where("edge", |b| b > 0 && b < 9_999);
        let b = rollout_bucket("edge", &acct);
        let at = |bp: u32| {
            retail()
                .rollout(rollout("edge", "retail", "kms", f64::from(bp) / 100.0))
                .build(&backends())
                .unwrap()
                .place(&acct, "retail")
                .unwrap()
                .backend
        };
        assert_eq!(at(b), "local", "bucket == threshold is outside");
        assert_eq!(at(b + 1), "kms", "bucket < threshold is inside");
    }

    #[test]
    fn two_decimal_percentages_are_honoured() {
        let p = retail()
            .rollout(rollout("fine", "retail", "kms", 0.07))
            .build(&backends())
            .unwrap();
        let a = account_where("fine", |b| b < 7);
        let pl = p.place(&a, "retail").unwrap();
        assert!(pl.rule.contains("0.07%"), "{}", pl.rule);
        assert_eq!(pl.backend, "kms");
    }

    #[test]
    fn earlier_rollout_wins_an_overlap() {
        let a = (0..100_000)
            .map(|i| format!("acct-{i}"))
            .find(|a| rollout_bucket("first", a) < 3_000 && rollout_bucket("second", a) < 3_000)
            .unwrap();
        let p = retail()
            .rollout(rollout("first", "retail", "kms", 30.0))
            .rollout(rollout("second", "retail", "kms-new", 30.0))
            .build(&backends())
            .unwrap();
        assert_eq!(p.place(&a, "retail").unwrap().backend, "kms");
        let e = p.explain(&a, "retail").unwrap();
        assert_eq!(e.steps[1].verdict, Verdict::Chosen);
        assert!(matches!(e.steps[2].verdict, Verdict::Overridden { .. }));
        // Swap the order: the other one wins.
        let p = retail()
            .rollout(rollout("second", "retail", "kms-new", 30.0))
            .rollout(rollout("first", "retail", "kms", 30.0))
            .build(&backends())
            .unwrap();
        assert_eq!(p.place(&a, "retail").unwrap().backend, "kms-new");
    }

    #[test]
    fn explain_lists_every_rule_and_the_winner() {
        let a = account_where("pilot", |b| b < 2_000);
        let p = retail()
            .pin(a.clone(), "hsm")
            .rollout(rollout("pilot", "retail", "kms-new", 20.0))
            .rollout(rollout("other-tier", "institutional", "kms", 50.0))
            .build(&backends())
            .unwrap();
        let e = p.explain(&a, "retail").unwrap();
        assert_eq!(e.placement, p.place(&a, "retail").unwrap());
        let rules: Vec<&str> = e.steps.iter().map(|s| s.rule.as_str()).collect();
        let b = rollout_bucket("pilot", &a);
        assert_eq!(
            rules,
            [
                format!("pin {a} -> hsm"),
                format!("rollout retail:pilot 20.00% (bucket {b}) -> kms-new"),
                "tier retail -> local".to_string(),
            ]
        );
        assert_eq!(e.steps[0].verdict, Verdict::Chosen);
        let by = format!("pin {a} -> hsm");
        assert_eq!(e.steps[1].verdict, Verdict::Overridden { by: by.clone() });
        assert_eq!(e.steps[2].verdict, Verdict::Overridden { by });
        let text = e.to_string();
        assert!(
            text.contains("CHOSEN") && text.contains("backend: hsm"),
            "{text}"
        );

        // No pin, outside the rollout: the tier default wins and the rest say why not.
        let out = account_where("pilot", |b| b >= 2_000);
        let e = p.explain(&out, "retail").unwrap();
        assert!(matches!(&e.steps[0].verdict, Verdict::NotMatched { why } if why.contains(&out)));
        assert!(
            matches!(&e.steps[1].verdict, Verdict::NotMatched { why } if why.contains("not below 2000"))
        );
        assert_eq!(e.steps[2].verdict, Verdict::Chosen);
        assert_eq!(e.placement.backend, "local");
    }

    // ----- validation: one test per error -----

    fn only_error(b: PolicyBuilder) -> PolicyError {
        let errors = b.check(&backends());
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = b.build(&backends()).unwrap_err();
        assert_eq!(e, errors[0]);
        e
    }

    #[test]
    fn pin_onto_unknown_backend() {
        assert_eq!(
            only_error(retail().pin("acct-1", "hsm9")),
            PolicyError::PinUnknownBackend {
                account: "acct-1".into(),
                backend: "hsm9".into()
            }
        );
    }

    #[test]
    fn pin_of_an_impossible_account_id() {
        for bad in ["", "..", "a b", "é", &"a".repeat(129)] {
            assert_eq!(
                only_error(retail().pin(bad, "hsm")),
                PolicyError::InvalidPinAccount {
                    account: bad.into()
                }
            );
        }
    }

    #[test]
    fn two_pins_for_one_account() {
        assert_eq!(
            only_error(retail().pin("acct-1", "hsm").pin("acct-1", "kms")),
            PolicyError::DuplicatePin {
                account: "acct-1".into(),
                first: "hsm".into(),
                second: "kms".into()
            }
        );
        // Even identical ones.
        assert!(matches!(
            only_error(retail().pin("acct-1", "hsm").pin("acct-1", "hsm")),
            PolicyError::DuplicatePin { .. }
        ));
        // Ids are exact bytes: these are two accounts.
        assert!(retail()
            .pin("acct-a", "hsm")
            .pin("acct-A", "kms")
            .build(&backends())
            .is_ok());
    }

    #[test]
    fn rollout_onto_unknown_backend() {
        assert_eq!(
            only_error(retail().rollout(rollout("p", "retail", "nope", 5.0))),
            PolicyError::RolloutUnknownBackend {
                rollout: "p".into(),
                backend: "nope".into()
            }
        );
    }

    #[test]
    fn rollout_on_undeclared_tier() {
        assert_eq!(
            only_error(retail().rollout(rollout("p", "Retail", "kms", 5.0))),
            PolicyError::RolloutUnknownTier {
                rollout: "p".into(),
                tier: "Retail".into()
            }
        );
    }

    #[test]
    fn rollout_with_bad_name() {
        for bad in ["", ".", "a/b", "with space"] {
            assert_eq!(
                only_error(retail().rollout(rollout(bad, "retail", "kms", 5.0))),
                PolicyError::InvalidRolloutName {
                    rollout: bad.into()
                }
            );
        }
    }

    #[test]
    fn two_rollouts_of_one_name() {
        assert_eq!(
            only_error(
                retail()
                    .rollout(rollout("p", "retail", "kms", 5.0))
                    .rollout(rollout("p", "institutional", "kms", 5.0))
            ),
            PolicyError::DuplicateRollout {
                rollout: "p".into()
            }
        );
    }

    #[test]
    fn rollout_of_zero_percent() {
        for zero in [0.0, -0.0] {
            assert_eq!(
                only_error(retail().rollout(rollout("p", "retail", "kms", zero))),
                PolicyError::ZeroRollout {
                    rollout: "p".into()
                }
            );
        }
    }

    #[test]
    fn rollout_percent_out_of_range_or_too_precise() {
        for (bad, why) in [
            (f64::NAN, "not a number"),
            (f64::INFINITY, "not a number"),
            (-1.0, "between 0 and 100"),
            (100.01, "between 0 and 100"),
            (5.005, "two decimals"),
            (0.001, "two decimals"),
        ] {
            let e = only_error(retail().rollout(rollout("p", "retail", "kms", bad)));
            assert!(
                matches!(&e, PolicyError::InvalidPercent { reason, .. } if reason.contains(why)),
                "{bad}: {e:?}"
            );
        }
        // Binary floating point noise is not a third decimal.
        for ok in [5.07, 0.01, 33.33, 99.99, 100.0] {
            assert!(
                retail()
                    .rollout(rollout("p", "retail", "kms", ok))
                    .build(&backends())
                    .is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn rollout_onto_the_tiers_own_backend() {
        assert_eq!(
            only_error(retail().rollout(rollout("p", "retail", "local", 5.0))),
            PolicyError::RolloutOntoTierDefault {
                rollout: "p".into(),
                tier: "retail".into(),
                backend: "local".into()
            }
        );
    }

    #[test]
    fn two_rollouts_of_one_tier_onto_one_backend() {
        assert_eq!(
            only_error(
                retail()
                    .rollout(rollout("a", "retail", "kms", 5.0))
                    .rollout(rollout("b", "retail", "kms", 5.0))
            ),
            PolicyError::OverlappingRollouts {
                tier: "retail".into(),
                backend: "kms".into(),
                first: "a".into(),
                second: "b".into()
            }
        );
        // The same backend on two different tiers is fine.
        assert!(retail()
            .rollout(rollout("a", "retail", "kms", 5.0))
            .rollout(rollout("b", "institutional", "kms", 5.0))
            .build(&backends())
            .is_ok());
    }

    #[test]
    fn rollouts_of_one_tier_over_100_percent() {
        assert_eq!(
            only_error(
                retail()
                    .rollout(rollout("a", "retail", "kms", 60.0))
                    .rollout(rollout("b", "retail", "kms-new", 40.01))
            ),
            PolicyError::RolloutsOverfull {
                tier: "retail".into(),
                total: "100.01".into()
            }
        );
        // Exactly 100% in total is allowed (no warning: no single rollout is full).
        let p = retail()
            .rollout(rollout("a", "retail", "kms", 60.0))
            .rollout(rollout("b", "retail", "kms-new", 40.0))
            .build(&backends())
            .unwrap();
        assert!(p.warnings().is_empty());
        // Sums are per tier.
        assert!(retail()
            .rollout(rollout("a", "retail", "kms", 60.0))
            .rollout(rollout("b", "institutional", "kms-new", 60.0))
            .build(&backends())
            .is_ok());
    }

    #[test]
    fn full_rollout_is_a_warning_not_an_error() {
        let p = retail()
            .rollout(rollout("all", "retail", "kms", 100.0))
            .build(&backends())
            .unwrap();
        assert_eq!(
            p.warnings(),
            [PolicyWarning::FullRollout {
                rollout: "all".into(),
                tier: "retail".into(),
                backend: "kms".into()
            }]
        );
        assert!(p.warnings()[0].to_string().contains("retail = \"kms\""));
        for i in 0..500 {
            assert_eq!(p.place(&format!("a{i}"), "retail").unwrap().backend, "kms");
        }
    }

    #[test]
    fn check_lists_every_problem_in_order() {
        let b = Policy::builder(tiers(&[("retail", "gone")]))
            .pin("acct-1", "nope")
            .pin("acct-1", "hsm")
            .rollout(rollout("p", "ghost", "kms", 0.0));
        let errors = b.check(&backends());
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(matches!(errors[0], PolicyError::UnknownBackend { .. }));
        assert!(matches!(errors[1], PolicyError::PinUnknownBackend { .. }));
        assert!(matches!(errors[2], PolicyError::DuplicatePin { .. }));
        assert!(matches!(errors[3], PolicyError::RolloutUnknownTier { .. }));
        assert!(matches!(errors[4], PolicyError::ZeroRollout { .. }));
        assert_eq!(b.build(&backends()).unwrap_err(), errors[0]);
        assert!(retail().check(&backends()).is_empty());
    }

    #[test]
    fn error_messages_name_the_rule() {
        let e = only_error(retail().rollout(rollout("p", "retail", "local", 5.0)));
        assert_eq!(
            e.to_string(),
            "rollout \"p\" moves tier \"retail\" onto \"local\", which is already that tier's backend"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn policy(name: &str, basis_points: u32) -> Policy {
        let tiers = [("retail", "local")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let backends = ["local", "kms-new"].into_iter().map(String::from).collect();
        Policy::builder(tiers)
            .rollout(Rollout {
                name: name.into(),
                tier: "retail".into(),
                backend: "kms-new".into(),
                percent: f64::from(basis_points) / 100.0,
            })
            .build(&backends)
            .unwrap()
    }

    fn on_rollout(p: &Policy, account: &str) -> bool {
        p.place(account, "retail").unwrap().backend == "kms-new"
    }

    /// Deterministic pseudo-random ids from a seed (splitmix64), so that one proptest case
    /// can draw 20,000 ids without 20,000 shrinkable values.
    fn ids(seed: u64, n: usize) -> Vec<String> {
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        (0..n)
            .map(|_| {
                let len = 4 + (next() % 40) as usize;
                (0..len)
                    .map(|_| char::from(ALPHABET[(next() % ALPHABET.len() as u64) as usize]))
                    .collect()
            })
            .collect()
    }

    proptest! {
        #[test]
        fn rollout_is_stable_and_widening_is_monotone(
            account in "[A-Za-z0-9._:-]{1,128}",
            name in "[a-z0-9-]{1,20}",
            p in 1u32..=10_000,
            q in 1u32..=10_000,
        ) {
            let (p, q) = (p.min(q), p.max(q));
            let small = policy(&name, p);
            // Same answer twice, including from an independently built policy.
            let first = small.place(&account, "retail").unwrap();
            prop_assert_eq!(&first, &small.place(&account, "retail").unwrap());
            prop_assert_eq!(&first, &policy(&name, p).place(&account, "retail").unwrap());
            // In at p% => in at any q >= p.
            if on_rollout(&small, &account) {
                prop_assert!(on_rollout(&policy(&name, q), &account));
            }
            // And explain always agrees with place.
            prop_assert_eq!(small.explain(&account, "retail").unwrap().placement, first);
        }

    }

    proptest! {
        // 20,000 hashes per case: fewer cases keep the debug-build run short.
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn rollout_is_roughly_proportional(seed in any::<u64>(), p in 1u32..=10_000) {
            let ids = ids(seed, 20_000);
            let pol = policy("pilot", p);
            let inside = ids.iter().filter(|a| on_rollout(&pol, a)).count();
            let share = inside as f64 / ids.len() as f64 * 100.0;
            let want = f64::from(p) / 100.0;
            prop_assert!((share - want).abs() <= 1.5, "asked {want}%, got {share}%");
        }

        #[test]
        fn bucket_spread_is_uniform_enough(seed in any::<u64>()) {
            // Every tenth of the bucket range gets its share of 20,000 ids (10% ± 1.5%):
            // a biased hash would pass a single-threshold test at some p and fail here.
            let mut deciles = [0u32; 10];
            for a in ids(seed, 20_000) {
                deciles[(rollout_bucket("spread", &a) / 1_000) as usize] += 1;
            }
            for (i, n) in deciles.iter().enumerate() {
                let share = f64::from(*n) / 200.0;
                prop_assert!((share - 10.0).abs() <= 1.5, "decile {i}: {share}%");
            }
        }
    }
}
