//! The `[tls]` section: the server's certificate and key, and the clients mutual TLS maps to
//! identities. Its check returns the message; `crate::app::config` wraps it.

use crate::domain::ids::is_account_prefix;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// `[tls]`: serve HTTPS, and with `client_ca_file` verify client certificates (mutual
/// TLS) and map them to identities (`[[tls.clients]]`).
///
/// ```toml
/// [tls]
/// cert_file = "/etc/shardgate/server.pem"      # chain, leaf first
/// key_file = "/etc/shardgate/server.key"       # mode 0600
/// client_ca_file = "/etc/shardgate/clients-ca.pem"
/// client_auth = "required"                     # or "optional"
///
/// [[tls.clients]]
/// name = "signer-eu"
/// subject_cn = "signer-eu.internal"
/// scopes = ["shards:read", "shards:write"]
/// account_prefix = "acct-eu-"
/// ```
///
/// SIGHUP re-reads the configuration's `[tls]` section and the files it names; new
/// handshakes use them, open connections keep theirs (`crate::http::tls`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1); refused unless mode 0600 or
    /// stricter.
    pub key_file: PathBuf,
    /// CA certificates (PEM) client certificates are verified against. Setting it turns on
    /// mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client must present a certificate (`required`, the default with a
    /// `client_ca_file`) or may connect without one and use a bearer token (`optional`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// Verified client certificates -> identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<TlsClientConfig>,
}

/// Whether mutual TLS requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// The handshake fails without a certificate from `client_ca_file`.
    Required,
    /// A client may connect without a certificate (and authenticate with a bearer token);
    /// a certificate it does present must still verify.
    Optional,
}

/// One `[[tls.clients]]` entry: which verified client certificate is which identity, with
/// the same scopes and account reach a `[[tokens]]` entry carries. Exactly one of
/// `subject_cn`, `dns`, `uri` and `email` names the certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsClientConfig {
    /// Identity recorded in the audit log and used as the rate-limit bucket.
    pub name: String,
    /// The subject's common name (the subject must carry exactly one CN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_cn: Option<String>,
    /// A DNS name among the certificate's subject alternative names (ASCII case ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// A URI among the subject alternative names (e.g. a SPIFFE id), exact bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// An email address (rfc822Name) among the subject alternative names, exact bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Scopes; `*` grants every scope.
    pub scopes: Vec<String>,
    /// When set, the identity only reaches accounts whose id starts with these exact bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_prefix: Option<String>,
}

impl TlsConfig {
    /// Structural checks that need no I/O (the files are read by `crate::http::tls`).
    pub fn validate(&self) -> Result<(), String> {
        let invalid = |m: String| Err(format!("tls: {m}"));
        if self.client_ca_file.is_none() {
            if self.client_auth.is_some() {
                return invalid("client_auth needs client_ca_file (the CA client certificates are verified against)".into());
            }
            if !self.clients.is_empty() {
                return invalid("[[tls.clients]] needs client_ca_file: only verified client certificates map to identities".into());
            }
        }
        let mut seen = BTreeSet::new();
        for c in &self.clients {
            if c.name.is_empty() || c.name.len() > 128 || c.name.chars().any(char::is_control) {
                return invalid(format!(
                    "client name {:?} must be 1 to 128 characters without control characters",
                    c.name
                ));
            }
            let matchers = [
                ("subject_cn", &c.subject_cn),
                ("dns", &c.dns),
                ("uri", &c.uri),
                ("email", &c.email),
            ];
            let given: Vec<_> = matchers
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
                .collect();
            let [(kind, value)] = given.as_slice() else {
                return invalid(format!(
                    "client {:?} must name its certificate by exactly one of subject_cn, dns, uri, email",
                    c.name
                ));
            };
            if value.is_empty() {
                return invalid(format!("client {:?}: {kind} is empty", c.name));
            }
            let key = if *kind == "dns" {
                value.to_ascii_lowercase()
            } else {
                (*value).clone()
            };
            if !seen.insert((*kind, key)) {
                return invalid(format!(
                    "client {:?}: another entry already maps {kind} {value:?}",
                    c.name
                ));
            }
            for s in &c.scopes {
                if s != "*" && crate::domain::auth::Scope::parse(s).is_none() {
                    return invalid(format!("client {:?}: unknown scope {s:?}", c.name));
                }
            }
            if let Some(p) = &c.account_prefix {
                if !is_account_prefix(p) {
                    return invalid(format!(
                        "client {:?}: account_prefix must be non-empty {}",
                        c.name,
                        crate::domain::ids::ID_CHARSET
                    ));
                }
            }
            if let Err(m) =
                crate::domain::auth::check_admin_prefix_rule(&c.scopes, c.account_prefix.as_deref())
            {
                return invalid(format!("client {:?}: {m}", c.name));
            }
        }
        Ok(())
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.client_ca_file.is_some()
            && self.client_auth.unwrap_or(ClientAuth::Required) == ClientAuth::Required
    }
}
