//! The lifecycle state of a KEK version (NIST SP 800-57 terms, as Tink uses them), written
//! once for every crate: backends report a version's state as they see it, the store keeps the
//! state the fleet agrees on (its `key_versions` table holds [`KeyState::as_str`]), the gateway
//! changes it and shows it. Which transitions are allowed is [`KeyState::may_become`].

use std::fmt;
use std::str::FromStr;

/// Lifecycle state of a KEK version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyState {
    /// Wraps new data keys (at most one version per backend), and unwraps.
    Active,
    /// Unwraps only (a rotated-but-not-promoted version, or a retired one).
    DecryptOnly,
    /// Refused for every use; terminal.
    Destroyed,
}

/// A state name that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key state '{0}' (active, decrypt-only or destroyed)")]
pub struct UnknownKeyState(pub String);

impl KeyState {
    /// Every state, in lifecycle order.
    pub const ALL: [KeyState; 3] = [KeyState::Active, KeyState::DecryptOnly, KeyState::Destroyed];

    /// `active`, `decrypt-only` or `destroyed`: the stored and the shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::DecryptOnly => "decrypt-only",
            KeyState::Destroyed => "destroyed",
        }
    }

    /// Whether an operator may move a version from `self` to `to`: active <-> decrypt-only,
    /// decrypt-only -> destroyed. `destroyed` is terminal, and an active version is demoted
    /// before it can be destroyed.
    pub fn may_become(self, to: KeyState) -> bool {
        matches!(
            (self, to),
            (KeyState::Active, KeyState::DecryptOnly)
                | (KeyState::DecryptOnly, KeyState::Active)
                | (KeyState::DecryptOnly, KeyState::Destroyed)
        )
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyState {
    type Err = UnknownKeyState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKeyState(s.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_parse_and_serde() {
        for k in KeyState::ALL {
            assert_eq!(k.as_str().parse::<KeyState>(), Ok(k));
            assert_eq!(k.to_string(), k.as_str());
            let json = serde_json::to_string(&k).expect("a unit variant serialises");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<KeyState>(&json).ok(), Some(k));
        }
        assert!("Active".parse::<KeyState>().is_err());
        assert!("".parse::<KeyState>().is_err());
    }

    #[test]
    fn only_the_lifecycle_transitions_are_allowed() {
        use KeyState::*;
        let allowed: Vec<_> = KeyState::ALL
            .into_iter()
            .flat_map(|a| KeyState::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.may_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Active, DecryptOnly),
                (DecryptOnly, Active),
                (DecryptOnly, Destroyed)
            ]
        );
    }
}
