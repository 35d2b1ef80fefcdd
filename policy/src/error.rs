//! What can be wrong with a policy ([`PolicyError`]: a rule that cannot be built, a placement
//! for an undeclared tier) and what is allowed but worth an operator's attention
//! ([`PolicyWarning`]), each with the words `shardgate policy check` prints.

use crate::{ID_GRAMMAR, ID_RULE};
use std::fmt;

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
    /// A tier rule that cannot apply as written.
    #[error("tier rule {rule:?}: {reason}")]
    InvalidTierRule {
        /// The rule's name.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A priority class for a tier nobody declared.
    #[error("priority class for tier {tier:?}, which is not declared in [tiers]")]
    PriorityUnknownTier {
        /// The undeclared tier.
        tier: String,
    },
    /// A priority class for an account id that can never match an account.
    #[error(
        "priority class for account {account:?}, which is not a valid account id ({grammar}), so it could never apply",
        grammar = ID_GRAMMAR
    )]
    InvalidPriorityAccount {
        /// The bad id.
        account: String,
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
