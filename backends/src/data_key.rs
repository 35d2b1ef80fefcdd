use rand::RngCore;
use zeroize::Zeroizing;

/// A 256-bit data key. Zeroized on drop; its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        Self(key)
    }

    /// Take ownership of key bytes (e.g. KMS `Plaintext`). `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(arr)))
    }

    /// The key bytes, for the AES-GCM seal only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Its only field is a `Zeroizing` array, wiped when the key is dropped; the marker lets code
/// that keeps keys (the KMS data-key cache) require the promise of the type it holds.
impl zeroize::ZeroizeOnDrop for DataKey {}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}
