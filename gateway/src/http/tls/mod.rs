//! TLS and mutual TLS on the listener (rustls, with the aws-lc-rs provider the AWS SDK
//! already builds).
//!
//! [`Tls`] holds the settings in force: the rustls `ServerConfig` (server certificate chain
//! and key, and with a `client_ca_file` a client-certificate verifier) and the
//! `[[tls.clients]]` mapping ([`identity`]). Each accepted connection takes the settings of
//! the moment for its handshake; [`Tls::reload`] (SIGHUP: [`reload_on_hangup`]) builds new
//! settings and swaps them in whole, so new handshakes use them while open connections keep
//! the certificates they were set up with. A reload that fails (a missing or malformed file,
//! a key that does not match its certificate, a key file readable by others) changes
//! nothing and is logged; it never stops the gateway.
//!
//! A verified client certificate's names are read once per connection ([`PeerCertificate`],
//! a request extension); the mapping to an identity is looked up per request in the mapping
//! in force, so removing a `[[tls.clients]]` entry and reloading shuts that client out of
//! its open connections too, from their next request.

pub mod identity;

pub mod config;

use arc_swap::ArcSwap;
use config::TlsConfig;
use identity::{CertIdentity, CertNames, ClientMap};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS settings cannot be loaded. Messages name files, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("tls: {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificates and key do not make a server configuration.
    #[error("tls: {0}")]
    Invalid(String),
}

fn file_error(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The settings in force.
struct Live {
    server: Arc<ServerConfig>,
    clients: ClientMap,
    /// Whether client certificates are verified (a `client_ca_file` is configured).
    mutual: bool,
}

/// The listener's TLS settings; cheap to clone (all clones see reloads).
#[derive(Clone)]
pub struct Tls(Arc<ArcSwap<Live>>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self.0.load();
        f.debug_struct("Tls")
            .field("mutual", &live.mutual)
            .field("clients", &live.clients.len())
            .finish()
    }
}

impl Tls {
    /// Read the files a `[tls]` section names and build the settings.
    pub fn load(cfg: &TlsConfig) -> Result<Self, TlsError> {
        let live = build(cfg)?;
        Ok(Self(Arc::new(ArcSwap::from_pointee(live))))
    }

    /// Re-read the files and swap the new settings in; on error the settings in force stay.
    pub fn reload(&self, cfg: &TlsConfig) -> Result<(), TlsError> {
        let live = build(cfg)?;
        self.0.store(Arc::new(live));
        Ok(())
    }

    /// An acceptor with the settings in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.load().server.clone())
    }

    /// The verified client certificate of a finished handshake, if one was presented.
    pub fn peer(&self, conn: &rustls::ServerConnection) -> Option<PeerCertificate> {
        if !self.0.load().mutual {
            return None;
        }
        let leaf = conn.peer_certificates()?.first()?;
        Some(PeerCertificate {
            names: Arc::new(CertNames::parse(leaf)),
            tls: self.clone(),
        })
    }

    /// Number of `[[tls.clients]]` entries in force.
    pub fn client_entries(&self) -> usize {
        self.0.load().clients.len()
    }
}

/// A connection's verified client certificate (inserted into each of its requests).
#[derive(Clone)]
pub struct PeerCertificate {
    names: Arc<CertNames>,
    tls: Tls,
}

impl std::fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("subject", &self.names.subject)
            .finish()
    }
}

impl PeerCertificate {
    /// Who the certificate is under the `[[tls.clients]]` entries in force now.
    pub fn identity(&self) -> CertIdentity {
        self.tls.0.load().clients.identify(&self.names)
    }

    /// The certificate's subject (printable ASCII).
    pub fn subject(&self) -> &str {
        &self.names.subject
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not PEM {what}: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            path,
            format!("no PEM CERTIFICATE in it ({what})"),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = crate::domain::files::read_secret(path).map_err(|e| match e {
        crate::domain::files::SecretFileError::Io(e) => file_error(path, e.to_string()),
        refused => file_error(path, format!("private key file {refused}")),
    })?;
    // The PEM parser's own messages can quote a line of the file: report only the kind.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        file_error(
            path,
            match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "no PEM private key in it (PKCS#8, PKCS#1 or SEC1)"
                }
                _ => "malformed PEM private key",
            },
        )
    })
}

fn build(cfg: &TlsConfig) -> Result<Live, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = read_certs(&cfg.cert_file, "server certificate chain")?;
    let key = read_key(&cfg.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(ca_file, "client CA certificates")? {
                roots
                    .add(ca)
                    .map_err(|e| file_error(ca_file, format!("unusable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if cfg.requires_client_cert() {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| file_error(ca_file, format!("client CA: {e}")))?,
            )
        }
    };
    let leaf = chain.first().cloned();
    let mut server = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::Invalid(format!(
            "{} and {} do not make a certificate and its key: {e}",
            cfg.cert_file.display(),
            cfg.key_file.display()
        ))
    })?;
    // The listener speaks HTTP/1.1 only.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    if let Some(leaf) = leaf {
        log_leaf(&cfg.cert_file, &leaf);
    }
    Ok(Live {
        server: Arc::new(server),
        clients: ClientMap::new(&cfg.clients),
        mutual: cfg.client_ca_file.is_some(),
    })
}

/// Log the server certificate's subject and expiry (a warning once it has expired).
fn log_leaf(path: &Path, der: &[u8]) {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return;
    };
    let not_after = cert.validity().not_after;
    let subject = CertNames::parse(der).subject;
    if cert.validity().is_valid() {
        tracing::info!(file = %path.display(), %subject, not_after = %not_after, "TLS server certificate loaded");
    } else {
        tracing::warn!(file = %path.display(), %subject, not_after = %not_after, "TLS server certificate is outside its validity period");
    }
}

/// Reload the TLS settings on every SIGHUP, until the process ends. `reread` loads the
/// configuration again and returns its `[tls]` section. Nothing here stops the gateway:
/// every failure is logged and leaves the settings in force as they are.
pub async fn reload_on_hangup<F>(tls: Option<Tls>, reread: F)
where
    F: Fn() -> Result<Option<TlsConfig>, String> + Send + 'static,
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: TLS settings will not reload");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let outcome = match (&tls, reread()) {
            (_, Err(e)) => {
                tracing::error!(error = %e, "SIGHUP: the configuration does not load; TLS settings unchanged");
                "failed"
            }
            (None, Ok(None)) => {
                tracing::info!("SIGHUP: TLS is not configured; nothing to reload");
                "unchanged"
            }
            (None, Ok(Some(_))) => {
                tracing::warn!("SIGHUP: the configuration now has a [tls] section; restart the gateway to serve TLS");
                "unchanged"
            }
            (Some(_), Ok(None)) => {
                tracing::error!("SIGHUP: the configuration has no [tls] section any more; keeping the TLS settings in force (restart to serve plain HTTP)");
                "failed"
            }
            (Some(tls), Ok(Some(cfg))) => match tls.reload(&cfg) {
                Ok(()) => {
                    tracing::info!(
                        clients = tls.client_entries(),
                        mutual = cfg.client_ca_file.is_some(),
                        "SIGHUP: TLS settings reloaded; new connections use them"
                    );
                    "reloaded"
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS reload failed; the settings in force stay");
                    "failed"
                }
            },
        };
        metrics::counter!("shardgate_tls_reloads_total", "outcome" => outcome).increment(1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::config::{ClientAuth, TlsClientConfig};
    use super::*;

    struct Files {
        _dir: tempfile::TempDir,
        cfg: TlsConfig,
    }

    /// A self-signed server certificate and its key (0600), and a client CA file.
    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TlsConfig {
            cert_file: dir.path().join("server.pem"),
            key_file: dir.path().join("server.key"),
            client_ca_file: Some(dir.path().join("ca.pem")),
            client_auth: Some(ClientAuth::Required),
            clients: vec![TlsClientConfig {
                name: "signer".into(),
                subject_cn: Some("signer".into()),
                dns: None,
                uri: None,
                email: None,
                scopes: vec!["shards:read".into()],
                account_prefix: None,
            }],
        };
        write_pair(&cfg, "gateway");
        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_string()]).unwrap();
        std::fs::write(cfg.client_ca_file.as_ref().unwrap(), ca.cert.pem()).unwrap();
        Files { _dir: dir, cfg }
    }

    fn write_pair(cfg: &TlsConfig, name: &str) -> rcgen::CertifiedKey<rcgen::KeyPair> {
        let pair = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        std::fs::write(&cfg.cert_file, pair.cert.pem()).unwrap();
        crate::domain::files::write_private(
            &cfg.key_file,
            pair.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        pair
    }

    fn server_ptr(tls: &Tls) -> *const ServerConfig {
        Arc::as_ptr(&tls.0.load().server)
    }

    #[test]
    fn good_files_load_and_reload_swaps_the_settings() {
        let f = files();
        let tls = Tls::load(&f.cfg).unwrap();
        assert_eq!(tls.client_entries(), 1);
        let before = server_ptr(&tls);
        write_pair(&f.cfg, "gateway-2");
        let mut cfg = f.cfg.clone();
        cfg.clients.clear();
        tls.reload(&cfg).unwrap();
        assert_ne!(server_ptr(&tls), before);
        assert_eq!(tls.client_entries(), 0);
    }

    #[test]
    fn a_failed_reload_keeps_the_settings_in_force() {
        let f = files();
        let tls = Tls::load(&f.cfg).unwrap();
        let before = server_ptr(&tls);
        let mut cfg = f.cfg.clone();
        cfg.clients.clear();
        // Missing, not PEM, a key of another certificate, a CA file without certificates.
        cfg.cert_file = f.cfg.cert_file.with_extension("missing");
        assert!(tls.reload(&cfg).is_err());
        std::fs::write(&f.cfg.cert_file, "garbage").unwrap();
        assert!(tls.reload(&f.cfg).is_err());
        let pair = write_pair(&f.cfg, "gateway");
        let other = rcgen::generate_simple_self_signed(vec!["other".to_string()]).unwrap();
        crate::domain::files::write_private(
            &f.cfg.key_file,
            other.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let e = tls.reload(&f.cfg).unwrap_err().to_string();
        assert!(e.contains("do not make a certificate and its key"), "{e}");
        crate::domain::files::write_private(
            &f.cfg.key_file,
            pair.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        std::fs::write(f.cfg.client_ca_file.as_ref().unwrap(), "").unwrap();
        assert!(tls.reload(&f.cfg).is_err());
        assert_eq!(server_ptr(&tls), before);
        assert_eq!(tls.client_entries(), 1);
    }

    #[test]
    fn a_key_file_others_may_read_is_refused_without_quoting_it() {
        use std::os::unix::fs::PermissionsExt;
        let f = files();
        std::fs::set_permissions(&f.cfg.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Tls::load(&f.cfg).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        // A key file that is not PEM: the message names the file, never its content.
        std::fs::set_permissions(&f.cfg.key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secret =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBieXRlcw=!!\n-----END PRIVATE KEY-----\n";
        crate::domain::files::write_private(&f.cfg.key_file, secret.as_bytes()).unwrap();
        let e = Tls::load(&f.cfg).unwrap_err().to_string();
        assert!(e.contains("server.key"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
    }

    /// The key in a Kubernetes Secret volume: `server.key -> ..data/server.key`, mode 0440
    /// (`defaultMode: 0440` with an `fsGroup`). It loads through the links.
    #[test]
    fn a_mounted_secret_symlinked_key_file_loads() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let f = files();
        let mount = f._dir.path().join("mount");
        let ts = mount.join("..2026_12_06_00_00_00.1");
        std::fs::create_dir_all(&ts).unwrap();
        std::fs::rename(&f.cfg.key_file, ts.join("server.key")).unwrap();
        std::fs::set_permissions(
            ts.join("server.key"),
            std::fs::Permissions::from_mode(0o440),
        )
        .unwrap();
        symlink("..2026_12_06_00_00_00.1", mount.join("..data")).unwrap();
        symlink("..data/server.key", mount.join("server.key")).unwrap();
        let mut cfg = f.cfg.clone();
        cfg.key_file = mount.join("server.key");
        Tls::load(&cfg).unwrap();
        // A group that may write it is refused.
        std::fs::set_permissions(
            ts.join("server.key"),
            std::fs::Permissions::from_mode(0o460),
        )
        .unwrap();
        let e = Tls::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("group may write"), "{e}");
    }

    #[test]
    fn without_a_client_ca_no_peer_certificate_is_read() {
        let f = files();
        let mut cfg = f.cfg.clone();
        cfg.client_ca_file = None;
        cfg.client_auth = None;
        cfg.clients.clear();
        let tls = Tls::load(&cfg).unwrap();
        assert!(!tls.0.load().mutual);
        assert!(format!("{tls:?}").contains("mutual: false"));
    }
}
