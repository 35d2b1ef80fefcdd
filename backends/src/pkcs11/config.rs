//! The configuration of a pkcs11 backend instance (`[backends.<name>]` with
//! `kind = "pkcs11"`): its fields and defaults, their checks, and reading the PIN from its
//! one source.

use crate::BackendError;
use cryptoki::types::AuthPin;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use zeroize::Zeroizing;

const MAX_POOL: usize = 1000;

fn default_module() -> PathBuf {
    PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
}

fn default_pool_size() -> usize {
    4
}

fn default_checkout_timeout_ms() -> u64 {
    1000
}

/// Who generates the AES-GCM IV of a wrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IvMode {
    /// The host draws a random 96-bit IV and passes it (SoftHSM2 and most HSMs).
    #[default]
    Host,
    /// The HSM generates the IV and writes it back into `CK_GCM_PARAMS.pIv` (CloudHSM).
    Hsm,
}

/// Configuration of one pkcs11 backend instance. The PIN is never inline: it comes from an
/// environment variable or a file of mode 0600.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (CloudHSM: `/opt/cloudhsm/lib/libcloudhsm_pkcs11.so`).
    #[serde(default = "default_module")]
    pub module: PathBuf,
    /// The token's label (CloudHSM: `hsm1`). At least one of label and slot id is needed.
    #[serde(default)]
    pub token_label: Option<String>,
    /// The slot id (slot ids can change; prefer the label).
    #[serde(default)]
    pub slot_id: Option<u64>,
    /// Name of an environment variable holding the user PIN (CloudHSM: `user:password`).
    #[serde(default)]
    pub pin_env: Option<String>,
    /// A file holding the user PIN; refused unless it is private to its owner (0600).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// The KEK's label; version `N` is the object labelled `{kek_label}/v{N}`.
    pub kek_label: String,
    /// Sessions in the pool, 1..=1000 (CloudHSM allows 1,024 sessions per application).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long an operation waits for a free session before answering `Unavailable`.
    #[serde(default = "default_checkout_timeout_ms")]
    pub checkout_timeout_ms: u64,
    /// Who generates the GCM IV: `host` (default) or `hsm` (CloudHSM).
    #[serde(default)]
    pub iv: IvMode,
    /// How often a running backend re-reads the token's KEK versions, so that a version
    /// added by `keys rotate` starts wrapping without a restart (one `C_FindObjects` pass per
    /// interval, never per request). 0 turns it off.
    #[serde(default = "default_key_refresh_interval_ms")]
    pub key_refresh_interval_ms: u64,
}

fn default_key_refresh_interval_ms() -> u64 {
    60_000
}

impl Pkcs11Config {
    /// A config with defaults for everything but the token label and KEK label.
    pub fn new(token_label: &str, kek_label: &str) -> Self {
        Self {
            module: default_module(),
            token_label: Some(token_label.to_string()),
            slot_id: None,
            pin_env: None,
            pin_file: None,
            kek_label: kek_label.to_string(),
            pool_size: default_pool_size(),
            checkout_timeout_ms: default_checkout_timeout_ms(),
            iv: IvMode::Host,
            key_refresh_interval_ms: default_key_refresh_interval_ms(),
        }
    }

    /// Check the invariants (pool size bound, a token selector, one PIN source, a label).
    pub fn validate(&self) -> Result<(), BackendError> {
        let bad = |m: String| Err(BackendError::Internal(format!("pkcs11 config: {m}")));
        if self.kek_label.is_empty() {
            return bad("kek_label is empty".into());
        }
        if !(1..=MAX_POOL).contains(&self.pool_size) {
            return bad(format!(
                "pool_size {} is out of range 1..={MAX_POOL} (CloudHSM allows 1,024 sessions per application)",
                self.pool_size
            ));
        }
        if self.checkout_timeout_ms == 0 {
            return bad("checkout_timeout_ms must be positive".into());
        }
        if self.token_label.is_none() && self.slot_id.is_none() {
            return bad("set token_label or slot_id".into());
        }
        if self.pin_env.is_some() == self.pin_file.is_some() {
            return bad("set exactly one of pin_env and pin_file".into());
        }
        Ok(())
    }
}

/// Read the PIN from the configured source. Errors never carry the PIN.
pub(crate) fn read_pin(cfg: &Pkcs11Config) -> Result<AuthPin, BackendError> {
    let raw: Zeroizing<String> = match (&cfg.pin_env, &cfg.pin_file) {
        (Some(var), None) => Zeroizing::new(std::env::var(var).map_err(|_| {
            BackendError::Internal(format!("PIN environment variable {var} is not set"))
        })?),
        (None, Some(path)) => crate::files::read_secret_text(path).map_err(|e| {
            let why = match e {
                crate::files::SecretFileError::Io(e) => format!("cannot read it: {}", e.kind()),
                refused => refused.to_string(),
            };
            BackendError::Internal(format!("PIN file {}: {why}", path.display()))
        })?,
        _ => {
            return Err(BackendError::Internal(
                "pkcs11 config: set exactly one of pin_env and pin_file".into(),
            ))
        }
    };
    let pin = raw.trim_end_matches(['\r', '\n']);
    if pin.is_empty() {
        return Err(BackendError::Internal("the PIN is empty".into()));
    }
    Ok(AuthPin::from(pin.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn cfg() -> Pkcs11Config {
        let mut c = Pkcs11Config::new("tok", "kek");
        c.pin_env = Some("X".into());
        c
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_fields() {
        let c: Pkcs11Config = toml_like(r#"{"token_label":"t","kek_label":"k","pin_env":"P"}"#);
        assert_eq!(c.pool_size, 4);
        assert_eq!(c.checkout_timeout_ms, 1000);
        assert_eq!(c.iv, IvMode::Host);
        assert_eq!(c.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        let c: Pkcs11Config =
            toml_like(r#"{"token_label":"t","kek_label":"k","pin_env":"P","iv":"hsm"}"#);
        assert_eq!(c.iv, IvMode::Hsm);
        assert!(serde_json::from_str::<Pkcs11Config>(
            r#"{"token_label":"t","kek_label":"k","pin":"1234"}"#
        )
        .is_err());
    }

    fn toml_like(s: &str) -> Pkcs11Config {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn pool_size_is_bounded() {
        let mut c = cfg();
        assert!(c.validate().is_ok());
        c.pool_size = 0;
        assert!(c.validate().is_err());
        c.pool_size = 1001;
        assert!(c.validate().is_err());
        c.pool_size = 1000;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn one_pin_source_is_required() {
        let mut c = cfg();
        c.pin_file = Some("/x".into());
        assert!(c.validate().is_err());
        c.pin_env = None;
        c.pin_file = None;
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_pin_file_others_may_read_is_refused_without_quoting_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "s3cret-pin\n").unwrap();
        let mut c = cfg();
        c.pin_env = None;
        c.pin_file = Some(path.clone());
        for mode in [0o644, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_pin(&c).unwrap_err();
            assert!(err.to_string().contains(&format!("mode {mode:o}")), "{err}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
            assert!(!format!("{err} {err:?}").contains("s3cret"));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(read_pin(&c).unwrap().expose_secret(), "s3cret-pin");
    }

    /// A PIN in a Kubernetes Secret volume (`pin -> ..data/pin`, 0440 with an `fsGroup`).
    #[test]
    fn a_mounted_secret_symlinked_pin_file_is_read() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let ts = dir.path().join("..2026_12_06_00_00_00.1");
        std::fs::create_dir(&ts).unwrap();
        std::fs::write(ts.join("pin"), "s3cret-pin\n").unwrap();
        std::fs::set_permissions(ts.join("pin"), std::fs::Permissions::from_mode(0o440)).unwrap();
        symlink("..2026_12_06_00_00_00.1", dir.path().join("..data")).unwrap();
        symlink("..data/pin", dir.path().join("pin")).unwrap();
        let mut c = cfg();
        c.pin_env = None;
        c.pin_file = Some(dir.path().join("pin"));
        use secrecy::ExposeSecret;
        assert_eq!(read_pin(&c).unwrap().expose_secret(), "s3cret-pin");
    }
}
