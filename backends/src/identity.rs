//! What a wrapped data key and a ciphertext are bound to ([`ShardIdentity`]), and its two
//! encodings: the AAD and the KMS encryption context (FORMAT.md). Every backend binds to it.

use shardgate_policy::Version;

/// The envelope format version this code writes (FORMAT.md §1, "Format versions"): 2, an
/// envelope with a key commitment. Readers also accept format 1 (no commitment).
pub const FORMAT_VERSION: u8 = 2;

/// What a ciphertext and its wrapped data key are bound to: a shard version of an account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardIdentity {
    /// Envelope format version.
    pub format_version: u8,
    /// Account id (exact bytes).
    pub account: String,
    /// Shard id (exact bytes).
    pub shard: String,
    /// Shard version.
    pub version: Version,
}

impl ShardIdentity {
    /// An identity at the current [`FORMAT_VERSION`].
    pub fn new(account: impl Into<String>, shard: impl Into<String>, version: Version) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            account: account.into(),
            shard: shard.into(),
            version,
        }
    }

    /// The canonical AAD (FORMAT.md): the ASCII magic `SGID`, then
    /// `u8 format_version`, `u32be len || account`, `u32be len || shard`, `u64be version`.
    /// Length prefixes make the encoding injective, so no two identities share an AAD.
    pub fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 1 + 8 + self.account.len() + self.shard.len() + 8);
        out.extend_from_slice(b"SGID");
        out.push(self.format_version);
        push_field(&mut out, self.account.as_bytes());
        push_field(&mut out, self.shard.as_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out
    }

    /// The same identity as a KMS encryption context (FORMAT.md lists the keys).
    pub fn encryption_context(&self) -> Vec<(&'static str, String)> {
        vec![
            ("shardgate:format", self.format_version.to_string()),
            ("shardgate:account", self.account.clone()),
            ("shardgate:shard", self.shard.clone()),
            ("shardgate:version", self.version.to_string()),
        ]
    }
}

fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Ids are at most 128 bytes; a longer field cannot occur, but saturate rather than wrap.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn aad_is_byte_exact() {
        let id = ShardIdentity::new("ab", "c", Version::new(2).unwrap());
        let expected: Vec<u8> = [
            b"SGID".as_slice(),
            &[2],
            &[0, 0, 0, 2],
            b"ab",
            &[0, 0, 0, 1],
            b"c",
            &[0, 0, 0, 0, 0, 0, 0, 2],
        ]
        .concat();
        assert_eq!(id.aad(), expected);
    }

    #[test]
    fn shifting_bytes_between_fields_changes_aad() {
        let a = ShardIdentity::new("ab", "c", Version::FIRST);
        let b = ShardIdentity::new("a", "bc", Version::FIRST);
        assert_ne!(a.aad(), b.aad());
    }
}
