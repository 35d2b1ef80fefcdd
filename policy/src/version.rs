//! Shard versions: one type from the HTTP request to the AAD. A version is 1, 2, ... up to
//! `i64::MAX`, the largest the store's `BIGINT` column holds, so every conversion at an edge
//! is checked once, here: [`Version::new`] for a number from a request or a row, [`Version::get`]
//! for a row or a response, [`Version::to_be_bytes`] for the AAD (FORMAT.md: `u64be`, which for
//! a version is the same eight bytes either way).

/// A shard version, checked at construction: at least 1, at most `i64::MAX`.
///
/// ```
/// use shardgate_policy::Version;
/// let v = Version::new(2)?;
/// assert_eq!((v.get(), v.next().map(Version::get)), (2, Some(3)));
/// assert_eq!(v.to_be_bytes(), [0, 0, 0, 0, 0, 0, 0, 2]);
/// assert!(Version::new(0).is_err() && Version::try_from(u64::MAX).is_err());
/// assert_eq!(serde_json::to_string(&v).unwrap(), "2");
/// assert!(serde_json::from_str::<Version>("0").is_err());
/// # Ok::<(), shardgate_policy::InvalidVersion>(())
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "i64", into = "i64")]
pub struct Version(i64);

/// A number that is not a shard version (below 1, or above `i64::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("version must be 1 or more")]
pub struct InvalidVersion;

impl Version {
    /// The first version of a shard.
    pub const FIRST: Version = Version(1);

    /// `n`, if it is a version.
    pub const fn new(n: i64) -> Result<Version, InvalidVersion> {
        if n >= 1 {
            Ok(Version(n))
        } else {
            Err(InvalidVersion)
        }
    }

    /// The number, as the store's column and the API's JSON hold it.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// The version after this one, if there is one.
    pub const fn next(self) -> Option<Version> {
        match self.0.checked_add(1) {
            Some(n) => Some(Version(n)),
            None => None,
        }
    }

    /// The AAD's `u64be` (FORMAT.md); equal to the `i64` big-endian bytes of a version.
    pub const fn to_be_bytes(self) -> [u8; 8] {
        self.0.unsigned_abs().to_be_bytes()
    }
}

impl TryFrom<i64> for Version {
    type Error = InvalidVersion;
    fn try_from(n: i64) -> Result<Self, InvalidVersion> {
        Version::new(n)
    }
}

impl TryFrom<u64> for Version {
    type Error = InvalidVersion;
    fn try_from(n: u64) -> Result<Self, InvalidVersion> {
        i64::try_from(n)
            .map_err(|_| InvalidVersion)
            .and_then(Version::new)
    }
}

impl From<Version> for i64 {
    fn from(v: Version) -> i64 {
        v.0
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edges_of_the_range_are_checked() {
        assert_eq!(Version::new(0), Err(InvalidVersion));
        assert_eq!(Version::new(-1), Err(InvalidVersion));
        assert_eq!(Version::new(1), Ok(Version::FIRST));
        assert_eq!(Version::new(i64::MAX).map(Version::next), Ok(None));
        assert_eq!(Version::try_from(1u64 << 63), Err(InvalidVersion));
        assert_eq!(
            Version::try_from(u64::try_from(i64::MAX).unwrap_or(0)).map(Version::get),
            Ok(i64::MAX)
        );
    }

    #[test]
    fn the_aad_bytes_are_the_u64_big_endian_of_the_number() {
        for n in [1_i64, 2, 255, 256, i64::MAX] {
            let v = Version::new(n).unwrap_or(Version::FIRST);
            assert_eq!(v.to_be_bytes(), u64::try_from(n).unwrap_or(0).to_be_bytes());
        }
    }
}
