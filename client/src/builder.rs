//! Building a [`Client`]: where the gateway is, how to authenticate (a bearer token, a client
//! certificate for mutual TLS, or both), which CA to trust, the default deadline of a call,
//! the retry policy, and the gateway's `[limits] batch_max_items`.

use crate::retry::RetryPolicy;
use crate::transport::Client;
use crate::Error;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Settings of a [`Client`]; [`Client::builder`] starts one.
pub struct ClientBuilder {
    base_url: String,
    token: Option<SecretString>,
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    deadline: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    batch_max_items: usize,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("deadline", &self.deadline)
            .field("retry", &self.retry)
            .field("batch_max_items", &self.batch_max_items)
            .finish()
    }
}

impl ClientBuilder {
    pub(crate) fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            token: None,
            ca_pem: None,
            identity: None,
            deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            retry: RetryPolicy::default(),
            // The gateway's default `[limits] batch_max_items`.
            batch_max_items: 100,
        }
    }

    /// Authenticate with a bearer token (`shardgate token create`).
    pub fn bearer_token(mut self, token: SecretString) -> Self {
        self.token = Some(token);
        self
    }

    /// Trust this CA (PEM) for the gateway's certificate instead of the web PKI roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Present this certificate chain and key (PEM) for mutual TLS.
    pub fn client_identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: Zeroizing<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem));
        self
    }

    /// The deadline of every call (default 10 s): retries stop at it, and each attempt tells
    /// the gateway what is left of it in `x-shardgate-deadline-ms`.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How long one connection attempt may take (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The retry policy (default: 4 attempts, 50 ms base, 2 s cap).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The gateway's `[limits] batch_max_items` (default 100): longer batch reads are sent in
    /// chunks of this size.
    pub fn batch_max_items(mut self, n: usize) -> Self {
        self.batch_max_items = n.max(1);
        self
    }

    /// The client.
    pub fn build(self) -> Result<Client, Error> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(Error::Invalid(format!(
                "base URL must start with http:// or https://: {}",
                self.base_url
            )));
        }
        let tls = tls_config(self.ca_pem.as_deref(), self.identity.as_ref())?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(self.connect_timeout)
            .build()
            .map_err(|e| Error::Invalid(format!("HTTP client: {e}")))?;
        Ok(Client::new(
            http,
            self.base_url,
            self.token,
            (self.deadline, self.retry, self.batch_max_items),
        ))
    }
}

/// rustls on aws-lc-rs: the CA (or the web PKI roots) and the client identity, if any.
fn tls_config(
    ca_pem: Option<&[u8]>,
    identity: Option<&(Vec<u8>, Zeroizing<Vec<u8>>)>,
) -> Result<rustls::ClientConfig, Error> {
    let bad = |what: &str| Error::Invalid(what.to_string());
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|_| bad("the CA PEM does not parse"))?;
                roots
                    .add(cert)
                    .map_err(|_| bad("the CA certificate is not usable"))?;
            }
            if roots.is_empty() {
                return Err(bad("the CA PEM holds no certificate"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| bad("TLS protocol versions"))?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad("the client certificate PEM does not parse"))?;
            // Never the parser's error: it could quote the key.
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|_| bad("the client key PEM does not parse"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|_| bad("the client certificate and key do not match"))
        }
    }
}
